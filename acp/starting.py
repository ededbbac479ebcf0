"""Is an ``acp daemon`` starting for this ACP_HOME? (Standard library only: the clients use it.)

``acp daemon & acp status`` must not fail because the client ran first: the daemon opens
``acp.sock`` some 0.3 s after it was started (Python, trio and the database load first). So a
client that finds no socket, or one that refuses, asks ``starting(home)`` and, while it names a
daemon, tries again for up to ``STARTING_WAIT`` seconds before it reports the daemon unavailable.

A daemon is starting when either

- a process of this user runs ``acp daemon`` (``…/acp daemon`` or ``python -m acp.cli daemon``)
  for this ACP_HOME (its ``ACP_HOME``, or ``$HOME/.acp``, read from ``/proc/PID/environ``): this
  covers the first tenths of a second, before the daemon took its lock; or
- someone holds the flock on ``$ACP_HOME/acp.lock`` (``acp.net.ipc_server.DaemonLock``): a daemon
  started some other way (``run_daemon`` inside a program). The probe takes a shared lock without
  blocking and drops it at once; the daemon's own ``acquire`` tries again for a moment, so the
  probe cannot make a daemon that starts at that instant believe another one runs.

Nothing here runs unless connecting failed, so a client that finds its daemon pays nothing.
"""

from __future__ import annotations

import fcntl
import os
import pwd
from pathlib import Path

STARTING_WAIT = 3.0  # seconds a client waits for the socket of a daemon that is starting
STARTING_POLL = 0.05  # seconds between its tries
LOCK_NAME = "acp.lock"


def starting(home: Path) -> str | None:
    """Who is starting a daemon for ``home`` ("pid 1234"), or None if nobody is."""
    pid = daemon_process(home)
    if pid is not None:
        return f"pid {pid}"
    if lock_held(home / LOCK_NAME):
        return f"the holder of {home / LOCK_NAME}"
    return None


def lock_held(path: Path) -> bool:
    """True if some process holds an flock on ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # drops our shared lock, if we got it
    return False


def daemon_process(home: Path, *, proc: Path = Path("/proc")) -> int | None:
    """The pid of a process of this user running ``acp daemon`` for ``home``, if there is one."""
    want = os.path.realpath(home)
    uid, me = os.getuid(), os.getpid()
    try:
        names = os.listdir(proc)
    except OSError:
        return None
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        d = proc / name
        try:
            if d.stat().st_uid != uid or not is_daemon_argv((d / "cmdline").read_bytes()):
                continue
            env = _environ((d / "environ").read_bytes())
            cwd = os.readlink(d / "cwd")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if home_of(env, cwd) == want:
            return int(name)
    return None


def is_daemon_argv(cmdline: bytes) -> bool:
    """``/proc/PID/cmdline`` of ``acp daemon …``: the console script (``python …/acp daemon``, or
    ``acp daemon`` itself) or ``python -m acp.cli daemon``; not a program that merely names it
    (``ssh host acp daemon``)."""
    argv = cmdline.split(b"\0")
    exe = os.path.basename(argv[0])
    if exe == b"acp":
        return argv[1:2] == [b"daemon"]
    if not exe.startswith((b"python", b"pypy")):
        return False
    i = 1
    while i < len(argv) - 1:
        arg = argv[i]
        if arg == b"-m":
            return argv[i + 1] in (b"acp", b"acp.cli") and argv[i + 2 : i + 3] == [b"daemon"]
        if arg in (b"-X", b"-W", b"--check-hash-based-pycs"):
            i += 2
        elif arg.startswith(b"-"):
            i += 1
        else:
            return os.path.basename(arg) == b"acp" and argv[i + 1] == b"daemon"
    return False


def _passwd_home() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:  # no passwd entry (a container): no home to resolve against
        return "/"


def home_of(env: dict[str, str], cwd: str) -> str:
    """The ACP_HOME a process with this environment and working directory uses, resolved."""
    user_home = env.get("HOME") or _passwd_home()
    home = env.get("ACP_HOME")
    if home:
        if home == "~" or home.startswith("~/"):
            home = user_home + home[1:]
    else:
        home = os.path.join(user_home, ".acp")
    return os.path.realpath(os.path.join(cwd, home))


def _environ(data: bytes) -> dict[str, str]:
    env = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env
