"""README.md as a newcomer runs it: its install line, its Quick start and its Python example.

- The install line runs as root with no `sudo` anywhere on PATH, in a fresh HOME, with the real
  pipx; then the Quick start (`acp daemon &` and at once `acp status`) runs in a new login shell,
  which finds `acp` only because `pipx ensurepath` put `~/.local/bin` on its PATH; the man page is
  where `man` looks. The same line with `sudo` on PATH must go through it (stubs record that).
- The Python example of "From a program" runs, verbatim, in a fresh venv that `pip install`ed this
  clone, against a daemon with a peer named bob that answers it.

These tests run inside .ci/run's network namespace, where no package index answers, so .ci/run
fetches every wheel they need into .ci/wheels first (ACP_TEST_WHEELS; with the Python pipx uses in
its PYTHON file), and pip installs from there alone (PIP_NO_INDEX, PIP_FIND_LINKS). apt-get, the
one step that needs the network, is a stub that records its arguments: .ci/run installed pipx.
Without the wheels they are skipped; under CI=true they fail instead.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from integration_harness import Fleet

from acp.client import query_envelope
from acp.starting import daemon_process

pytestmark = pytest.mark.install

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
RUN_DAEMON = " && ~/.local/bin/acp daemon"
INSTALL_TIMEOUT = 300


# -- README.md, as text ------------------------------------------------------------------------


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.S | re.M)
    assert match, f"README.md has no section {title!r}"
    return match.group(1)


def _install_line() -> str:
    """The install part of README's first line: all but the `&& ~/.local/bin/acp daemon`."""
    first = _blocks(README, "sh")[0].splitlines()[0]
    line = first.split("  #")[0].rstrip()  # a trailing comment, if any
    assert line.endswith(RUN_DAEMON), f"README's first line no longer ends with {RUN_DAEMON!r}"
    return line[: -len(RUN_DAEMON)]


# -- the wheels .ci/run fetched, and the environment a fresh machine has -----------------------


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (under CI these tests must run, not be skipped)")
    pytest.skip(reason)


def _wheels() -> tuple[Path, str]:
    """The wheel directory .ci/run filled, and the Python they were built for."""
    wheels = Path(os.environ.get("ACP_TEST_WHEELS") or ROOT / ".ci" / "wheels")
    if not (wheels / "PYTHON").is_file():
        _unavailable(f"no wheels in {wheels}: `bash .ci/run` fetches them before it runs pytest")
    return wheels, (wheels / "PYTHON").read_text().strip()


def _pip_env(wheels: Path) -> dict[str, str]:
    """pip installs from ``wheels`` alone, and keeps the user's cache (built wheels are reused)."""
    return {
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheels),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip"),
    }


def _path_without(name: str, farm: Path) -> list[str]:
    """The usual PATH, with ``name`` in none of its directories: a directory that has it is
    replaced by one of symlinks to everything else in it."""
    dirs = []
    for d in SYSTEM_PATH:
        if not (Path(d) / name).exists():
            dirs.append(d)
            continue
        copy = farm / d.strip("/").replace("/", "-")
        copy.mkdir(parents=True)
        for entry in os.scandir(d):
            if entry.name != name:
                (copy / entry.name).symlink_to(entry.path)
        dirs.append(str(copy))
    return dirs


def _clone(dest: Path) -> Path:
    """A copy of this checkout as a clone would have it (tracked files, and new ones that are not
    ignored): pip and pipx build in the source tree, so each test builds its own copy, and neither
    leaves anything in the checkout nor trips over another build there."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode("utf-8", "surrogateescape")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: the usual suspects out
        skip = shutil.ignore_patterns(".git", ".venv", ".ci", "build", "*.egg-info", "*cache*")
        shutil.copytree(ROOT, dest, ignore=skip)
        return dest
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _stub(directory: Path, name: str, body: str) -> None:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        args,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=INSTALL_TIMEOUT,
        **kwargs,  # type: ignore[call-overload]
    )
    assert out.returncode == 0, f"{args} exited {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def _stop_daemon(acp_home: Path) -> None:
    """Whatever daemon is left for ``acp_home`` (the Quick start's, if its shell failed)."""
    pid = daemon_process(acp_home)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while daemon_process(acp_home) == pid and time.monotonic() < deadline:
            time.sleep(0.05)


def _pipx_version() -> tuple[int, ...]:
    out = _run(["pipx", "--version"])
    return tuple(int(p) for p in re.findall(r"\d+", out.stdout)[:2])


# -- the tests ---------------------------------------------------------------------------------


def test_readme_install_line_as_root_without_sudo_then_quick_start(tmp_path: Path) -> None:
    wheels, python = _wheels()
    if shutil.which("pipx") is None:
        _unavailable("pipx is not installed (.ci/run installs it)")
    assert os.getuid() == 0, ".ci/run runs pytest as root (or mapped to root)"
    home, stubs = tmp_path / "home", tmp_path / "stubs"
    home.mkdir()
    _stub(stubs, "apt-get", f'echo "uid=$(id -u) apt-get $*" >> {tmp_path}/apt.log')
    path = _path_without("sudo", tmp_path / "path")
    env = {
        "HOME": str(home),
        "PATH": ":".join([str(stubs), *path]),
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "PIPX_DEFAULT_PYTHON": python,  # what pipx uses anyway: the wheels were built for it
        **_pip_env(wheels),
    }
    assert subprocess.run(["sh", "-c", "command -v sudo"], env=env).returncode != 0

    clone = _clone(tmp_path / "acp")
    _run(["sh", "-c", _install_line()], cwd=clone, env=env)

    assert (tmp_path / "apt.log").read_text().splitlines() == [
        "uid=0 apt-get update",
        "uid=0 apt-get install -y pipx",
    ]
    assert (home / ".local" / "bin" / "acp").exists()

    # the man page: linked into ~/.local/share/man by pipx >= 1.5, else in acp's venv (README)
    venvs = _run(["pipx", "environment", "--value", "PIPX_LOCAL_VENVS"], env=env).stdout.strip()
    page = Path(venvs) / "acp-daemon" / "share" / "man" / "man1" / "acp.1"
    assert page.read_text() == (clone / "man" / "acp.1").read_text()
    linked = home / ".local" / "share" / "man" / "man1" / "acp.1"
    if _pipx_version() >= (1, 5):
        assert linked.exists(), "pipx >= 1.5 links man pages into ~/.local/share/man"
    if shutil.which("man") is not None:
        if linked.exists():  # `man acp` finds it from PATH (~/.local/bin -> ~/.local/share/man)
            man_env = {**env, "PATH": f"{home}/.local/bin:{env['PATH']}"}
            found = _run(["man", "-w", "acp"], env=man_env).stdout.strip()
            assert Path(found).resolve() == linked.resolve()
        found = _run(["man", "-M", str(page.parents[1]), "-w", "acp"], env=env).stdout.strip()
        assert Path(found) == page

    # Quick start, in a new login shell: `acp` is on its PATH only through `pipx ensurepath`
    quick = _blocks(_section("Quick start on one machine"), "sh")[0]
    assert quick.startswith("acp daemon &")
    script = "set -e\ntrap 'kill $! 2>/dev/null; wait' EXIT\n" + quick
    try:
        out = _run(["bash", "--login", "-c", script], env=env, cwd=home)
    finally:
        _stop_daemon(home / ".acp")
    assert "daemon is not running" not in out.stderr
    assert out.stdout.count("agent_id") == 2 and "fingerprint" in out.stdout, out.stdout
    assert re.search(r"^listening +port 7100 ", out.stdout, flags=re.M), out.stdout


def test_readme_install_line_with_sudo(tmp_path: Path) -> None:
    """Where `sudo` exists (a user who may sudo), the same line installs pipx through it."""
    stubs, log = tmp_path / "stubs", tmp_path / "calls.log"
    _stub(stubs, "sudo", f'echo "sudo $*" >> {log}; exec "$@"')
    _stub(stubs, "apt-get", f'echo "apt-get $*" >> {log}')
    _stub(stubs, "pipx", f'echo "pipx $*" >> {log}')
    env = {"HOME": str(tmp_path), "PATH": ":".join([str(stubs), *SYSTEM_PATH])}
    _run(["sh", "-c", _install_line()], cwd=ROOT, env=env)
    assert log.read_text().splitlines() == [
        "sudo apt-get update",
        "apt-get update",
        "sudo apt-get install -y pipx",
        "apt-get install -y pipx",
        "pipx install .[mcp,hooks]",
        "pipx ensurepath",
    ]


def test_readme_python_example_in_a_fresh_venv(fleet: Fleet, tmp_path: Path) -> None:
    wheels, python = _wheels()
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()  # not the clone: `import acp` must find the installed package
    _run([python, "-m", "venv", str(venv)])
    _run(
        [str(venv / "bin" / "pip"), "install", "-q", str(_clone(tmp_path / "acp"))],
        env={**os.environ, **_pip_env(wheels)},
    )
    where = _run([str(venv / "bin" / "python"), "-c", "import acp; print(acp.__file__)"], cwd=work)
    assert where.stdout.startswith(str(venv)), where.stdout
    page = venv / "share" / "man" / "man1" / "acp.1"
    assert page.is_file()
    if shutil.which("man") is not None:  # the venv's bin/ on PATH: `man acp` finds its page
        env = {k: v for k, v in os.environ.items() if k != "MANPATH"}
        env["PATH"] = f"{venv}/bin:{env['PATH']}"
        assert Path(_run(["man", "-w", "acp"], env=env).stdout.strip()) == page

    code = _blocks(_section("From a program"), "python")[0]
    assert 'acp.query("bob"' in code
    (work / "example.py").write_text(code)
    alice, bob = fleet.daemon("alice"), fleet.daemon("bob")
    fleet.mesh(alice, bob)
    sub = fleet.subscribe(bob)
    proc = subprocess.Popen(
        [str(venv / "bin" / "python"), "example.py"],
        cwd=work,
        env={**alice.env, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        query = sub.next(timeout=20)  # the example asks bob ...
        assert query is not None and query["kind"] == "query", query
        assert query["payload"]["question"] == "What is the build status?"
        bob.request("reply", msg_id=query["id"], payload={"data": "all green"})
        # ... prints the answer, then answers bob's queries from its listen loop
        sent = bob.call(
            "send",
            to="alice",
            envelope=query_envelope("and now?"),
            wait="response",
            timeout=20,
        )
        payload = sent["response"]["payload"]
        assert payload == {"data": {"status": "green"}, "summary": "all tests pass"}, sent
    finally:
        proc.kill()
        stdout, stderr = proc.communicate(timeout=10)
    assert stdout.splitlines()[:1] == ["all green"], stdout + stderr
