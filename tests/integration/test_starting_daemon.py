"""`acp daemon & acp status` works: a client waits for a daemon that is starting (README, Quick start).

The daemon opens acp.sock some 0.3 s after it starts, and `acp status` gets there sooner; the
client sees an `acp daemon` process for its ACP_HOME (acp/starting.py) and waits up to 3 s. With
no daemon, or one that dies while starting, it fails with exit 69 without waiting the 3 s out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from integration_harness import REPO

SCRIPT = Path(sys.executable).parent / "acp"  # the console script, as a user runs it
ACP = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "acp.cli"]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACP_")}
    env["ACP_HOME"] = str(home)
    return env


def _daemon(home: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [*ACP, "daemon", "--no-mdns", "--port", "0"],
            env=_env(home),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def _status(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ACP, "status", "--json"],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_status_right_after_the_daemon_was_started(tmp_path: Path) -> None:
    home, log = tmp_path / "home", tmp_path / "daemon.log"
    for _ in range(3):
        daemon = _daemon(home, log)
        try:
            out = _status(home)  # at once: the daemon has not opened its socket yet
            assert out.returncode == 0, f"{out.stderr}\n{log.read_text()}"
            assert f'"pid": {daemon.pid}' in out.stdout or f'"pid":{daemon.pid}' in out.stdout
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(10) == 0, log.read_text()


def test_no_daemon_or_one_that_fails_to_start_is_reported_at_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    started = time.monotonic()
    out = _status(home)
    assert out.returncode == 69 and "not running" in out.stderr, out.stderr
    assert time.monotonic() - started < 2.0

    home.mkdir(mode=0o700)
    (home / "config.toml").write_text("port = [\n")  # exit 78 after its imports
    daemon = _daemon(home, tmp_path / "daemon.log")
    try:
        started = time.monotonic()
        out = _status(home)
        waited = time.monotonic() - started
        assert out.returncode == 69, out.stderr
        assert waited < 2.5, f"waited {waited:.1f} s for a daemon that had exited"
    finally:
        assert daemon.wait(10) == 78
