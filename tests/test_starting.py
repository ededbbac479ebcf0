"""A client waits a moment for a daemon that is starting (acp/starting.py), and only then."""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import trio

import acp.client
from acp.client import Client, TrioClient
from acp.errors import AlreadyRunning, DaemonUnavailable
from acp.net.ipc_server import LOCK_RETRY, DaemonLock
from acp.starting import daemon_process, home_of, is_daemon_argv, lock_held, starting


@pytest.mark.parametrize(
    ("argv", "is_daemon"),
    [
        (["/usr/bin/python3", "/root/.local/bin/acp", "daemon"], True),
        (["/srv/.venv/bin/python", "-m", "acp.cli", "daemon", "--port", "0"], True),
        (["python3.11", "-X", "dev", "-u", "-m", "acp.cli", "daemon"], True),
        (["/usr/bin/python3", "-u", "/opt/acp/bin/acp", "daemon", "--no-mdns"], True),
        (["acp", "daemon"], True),
        (["/usr/bin/python3", "/root/.local/bin/acp", "status"], False),
        (["/usr/bin/python3", "/root/.local/bin/acp", "send", "bob", "daemon"], False),
        (["ssh", "host", "acp", "daemon"], False),
        (["python3", "-c", "print(1)", "daemon"], False),
        (["python3", "-m", "pytest", "daemon"], False),
        (["bash"], False),
    ],
)
def test_which_processes_are_acp_daemons(argv: list[str], is_daemon: bool) -> None:
    cmdline = b"\0".join(a.encode() for a in argv) + b"\0"
    assert is_daemon_argv(cmdline) is is_daemon


def test_the_home_a_process_uses(tmp_path: Path) -> None:
    assert home_of({"HOME": "/home/u"}, "/") == "/home/u/.acp"
    assert home_of({"HOME": "/home/u", "ACP_HOME": "~/a"}, "/") == "/home/u/a"
    assert home_of({"HOME": "/home/u", "ACP_HOME": "rel"}, "/srv") == "/srv/rel"
    assert home_of({"HOME": "/h", "ACP_HOME": str(tmp_path)}, "/") == str(tmp_path.resolve())


def _fake_proc(root: Path, pid: int, argv: list[str], env: dict[str, str], cwd: Path) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (d / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
    (d / "cwd").symlink_to(cwd)


def test_a_daemon_process_is_found_by_its_acp_home(tmp_path: Path) -> None:
    proc, home, other = tmp_path / "proc", tmp_path / "home", tmp_path / "other"
    daemon = ["/usr/bin/python3", "/x/bin/acp", "daemon"]
    _fake_proc(proc, 101, daemon, {"HOME": "/h", "ACP_HOME": str(other)}, tmp_path)
    _fake_proc(
        proc, 102, ["/usr/bin/python3", "/x/bin/acp", "status"], {"ACP_HOME": "home"}, tmp_path
    )
    (proc / "self").mkdir()
    assert daemon_process(home, proc=proc) is None
    _fake_proc(proc, 103, daemon, {"HOME": "/h", "ACP_HOME": "home"}, tmp_path)  # relative
    assert daemon_process(home, proc=proc) == 103
    assert daemon_process(other, proc=proc) == 101
    assert daemon_process(home, proc=tmp_path / "no-proc") is None


def test_lock_held(tmp_path: Path) -> None:
    path = tmp_path / "acp.lock"
    assert not lock_held(path)  # no file
    path.write_text("1\n")
    assert not lock_held(path)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert lock_held(path)
        assert starting(tmp_path) == f"the holder of {path}"
    finally:
        os.close(fd)
    assert not lock_held(path) and starting(tmp_path) is None


def _hold_lock(home: Path) -> int:
    fd = os.open(home / "acp.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _listen_later(path: Path, delay: float) -> tuple[threading.Thread, list[socket.socket]]:
    """Bind and listen on ``path`` after ``delay`` seconds, as a daemon that is starting does."""
    made: list[socket.socket] = []

    def run() -> None:
        time.sleep(delay)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.listen(1)
        made.append(s)

    t = threading.Thread(target=run)
    t.start()
    return t, made


def test_no_daemon_fails_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DaemonUnavailable, match="not running"):
        Client(tmp_path).connect()
    assert time.monotonic() - started < 1.0


def test_a_client_waits_for_a_daemon_that_is_starting(tmp_path: Path) -> None:
    fd = _hold_lock(tmp_path)
    t, made = _listen_later(tmp_path / "acp.sock", 0.3)
    try:
        c = Client(tmp_path)
        c.connect()  # the socket appears 0.3 s later: no DaemonUnavailable
        c.close()
    finally:
        t.join()
        os.close(fd)
        for s in made:
            s.close()


def test_a_client_gives_up_on_a_daemon_that_never_opens_its_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(acp.client, "STARTING_WAIT", 0.3)
    fd = _hold_lock(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(DaemonUnavailable, match=r"has not opened .* \(still starting"):
            Client(tmp_path).connect()
        assert 0.3 <= time.monotonic() - started < 2.0
    finally:
        os.close(fd)


async def test_the_trio_client_waits_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fd = _hold_lock(tmp_path)
    t, made = _listen_later(tmp_path / "acp.sock", 0.3)
    try:
        c = TrioClient(tmp_path)
        await c.connect()  # the socket appears 0.3 s later: no DaemonUnavailable
        await c.aclose()
        await trio.to_thread.run_sync(t.join)
        made.pop().close()
        (tmp_path / "acp.sock").unlink()  # refused now, and the lock still held
        monkeypatch.setattr(acp.client, "STARTING_WAIT", 0.2)
        with pytest.raises(DaemonUnavailable, match=r"has not opened .* \(still starting"):
            await TrioClient(tmp_path).connect()
    finally:
        await trio.to_thread.run_sync(t.join)
        os.close(fd)
        for s in made:
            s.close()
    with pytest.raises(DaemonUnavailable, match="not running"):
        await TrioClient(tmp_path / "nobody").connect()


def test_the_daemon_lock_outlasts_a_clients_probe(tmp_path: Path) -> None:
    """A client's probe holds a shared lock for an instant: the daemon tries again past it."""
    probe = os.open(tmp_path / "acp.lock", os.O_RDONLY | os.O_CREAT, 0o600)
    fcntl.flock(probe, fcntl.LOCK_SH)
    timer = threading.Timer(LOCK_RETRY / 4, os.close, (probe,))
    timer.start()
    lock = DaemonLock(tmp_path)
    try:
        lock.acquire()
        assert (tmp_path / "acp.lock").read_text() == f"{os.getpid()}\n"
        second = DaemonLock(tmp_path)
        with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
            second.acquire()
    finally:
        timer.join()
        lock.release()
