"""A simulated LAN (``mesh.sh`` beside this file) with real ``acp daemon`` processes on its hosts.

Every daemon runs inside a mesh host's network namespace (``ip netns exec PREFIX-hI``), so mDNS
only ever reaches the mesh's own bridge, never this machine's interfaces. Its ACP_HOME lives in the
ordinary filesystem, so the test talks to it from outside with ``acp.client.Client(home=...)``.

Every wait has a deadline (``wait_for``); teardown always stops the daemons and runs
``mesh.sh down``. A test module picks its own ``ACP_MESH_PREFIX``/``ACP_MESH_NET``; an flock on
``/tmp/acp-mesh-<prefix>.lock`` makes a second run of the same module wait instead of tearing
down the first one's mesh (``mesh.sh up`` starts with a ``down``); the holder removes the file
when it is done, so a run leaves none behind.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from nacl.bindings import crypto_scalarmult_base

from acp.client import Client, notify_envelope
from acp.errors import AcpError

HERE = Path(__file__).resolve().parent
MESH_SH = HERE / "mesh.sh"
PYTHON = sys.executable
START_TIMEOUT = 20.0  # seconds for a daemon to answer `status` (2 loaded cores)
STOP_TIMEOUT = 8.0
LOCK_TIMEOUT = 300.0
POLL = 0.1

T = TypeVar("T")


# -- can we run at all? ---------------------------------------------------------------------------

_why_not: str | bool | None = False  # False: not checked yet


def why_not_runnable() -> str | None:
    """None if this process can build a mesh; otherwise the reason, for pytest.skip."""
    global _why_not
    if _why_not is not False:
        return _why_not  # type: ignore[return-value]
    reason = None
    if os.geteuid() != 0:
        reason = "mesh tests need root (network namespaces): run them as root, e.g. bash .ci/run"
    elif shutil.which("ip") is None:
        reason = "mesh tests need `ip` (apt-get install iproute2)"
    elif shutil.which("nft") is None:
        reason = "mesh tests need `nft` for packet loss (apt-get install nftables)"
    else:
        probe = f"acpprobe{os.getpid()}"
        r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if r.returncode != 0:
            reason = f"`ip netns add` does not work here: {r.stderr.strip() or r.returncode}"
        else:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    _why_not = reason
    return reason


# -- small helpers --------------------------------------------------------------------------------


def wait_for(check: Callable[[], T], *, timeout: float, what: str, poll: float = POLL) -> T:
    """Poll ``check`` until it returns something truthy; AssertionError after ``timeout`` s.

    An AcpError from ``check`` (daemon not up yet, a refused request) counts as "not yet".
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except AcpError as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what} (last: {last!r})"
            )
        time.sleep(poll)


def new_identity() -> tuple[bytes, str]:
    """A fresh X25519 private key and the base64 of its public key."""
    private = os.urandom(32)
    return private, base64.b64encode(crypto_scalarmult_base(private)).decode()


def numbered(topic: str, i: int) -> dict[str, Any]:
    return notify_envelope(topic, i)


# -- the mesh -------------------------------------------------------------------------------------


def flock_file(path: str, timeout: float, what: str) -> int:
    """An exclusive flock on ``path`` (created if need be), waiting up to ``timeout`` seconds.

    The holder unlinks the file when it is done (``unlock_file``), so a waiter may end up holding
    a lock on a file that is gone: it then checks that ``path`` is still the file it locked, and
    tries again on the new one if not.
    """
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise RuntimeError(
                        f"{what} stayed in use by another run for {timeout:g} s ({path})"
                    ) from None
                time.sleep(0.5)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the previous holder removed it: lock the file that is there now


def unlock_file(path: str, fd: int) -> None:
    """Release ``flock_file``'s lock and remove the file (while still holding the lock)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.close(fd)


class Mesh:
    """``mesh.sh`` with this mesh's prefix and network."""

    def __init__(self, prefix: str, net: str, root: Path) -> None:
        self.prefix = prefix
        self.net = net
        self.root = root
        self.hosts = 0
        self.daemons: list[MeshDaemon] = []
        self._lock_fd: int | None = None
        self.env = {**os.environ, "ACP_MESH_PREFIX": prefix, "ACP_MESH_NET": net}

    def sh(self, *args: str | int, check: bool = True) -> str:
        r = subprocess.run(
            ["bash", str(MESH_SH), *map(str, args)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"mesh.sh {' '.join(map(str, args))}: {r.returncode}: {r.stderr}")
        return r.stdout

    @property
    def lock_path(self) -> str:
        return f"/tmp/acp-mesh-{self.prefix}.lock"

    def lock(self) -> None:
        self._lock_fd = flock_file(self.lock_path, LOCK_TIMEOUT, f"mesh prefix {self.prefix!r}")

    def unlock(self) -> None:
        if self._lock_fd is not None:
            unlock_file(self.lock_path, self._lock_fd)
            self._lock_fd = None

    def up(self, n: int) -> None:
        self.sh("up", n)
        self.hosts = n

    def down(self) -> None:
        for d in self.daemons:
            d.stop()
        self.sh("down", check=False)

    def ip(self, i: int) -> str:
        return f"{self.net}.{i}"

    def ns(self, i: int) -> str:
        return f"{self.prefix}-h{i}"

    def cut(self, i: int) -> None:
        self.sh("cut", i)

    def heal(self, i: int) -> None:
        self.sh("heal", i)

    def loss(self, i: int, pct: int, direction: str = "both") -> None:
        self.sh("loss", i, pct, direction)

    def clear(self, i: int) -> None:
        self.sh("clear", i)

    def run_in(self, i: int, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(i), *cmd], capture_output=True, text=True, timeout=30
        )

    def daemon(self, host: int, agent_id: str, *, name: str | None = None) -> MeshDaemon:
        d = MeshDaemon(self, host, agent_id, name=name)
        self.daemons.append(d)
        return d


class MeshDaemon:
    """One ``acp daemon`` on mesh host ``host``, with its own ACP_HOME under the test's tmp_path.

    Created stopped; set ``config_text`` or call ``make_identity()`` first if the test needs them.
    """

    def __init__(self, mesh: Mesh, host: int, agent_id: str, *, name: str | None = None) -> None:
        self.mesh = mesh
        self.host = host
        self.agent_id = agent_id
        self.name = name or f"h{host}-{agent_id}"
        self.home = mesh.root / self.name
        self.home.mkdir(mode=0o700)
        self.home.chmod(0o700)
        assert len(str(self.home / "acp.sock")) < 100, "ACP_HOME too long for a Unix socket"
        self.log_path = mesh.root / f"{self.name}.log"
        self.config_text: str | None = None
        self.pubkey: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None  # the port asked for (None: --port 0)
        self.starts = 0

    def __repr__(self) -> str:
        return f"<MeshDaemon {self.name} on {self.mesh.ns(self.host)}>"

    @property
    def ip(self) -> str:
        return self.mesh.ip(self.host)

    def make_identity(self) -> str:
        """Write identity.key now, so the public key is known before the daemon starts."""
        private, self.pubkey = new_identity()
        fd = os.open(self.home / "identity.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(private).decode() + "\n")
        return self.pubkey

    def start(self, *, port: int | None = None) -> None:
        """Start the process inside its host's namespace; does not wait (see ``wait_ready``)."""
        assert self.proc is None or self.proc.poll() is not None, f"{self} is running already"
        if self.config_text is not None:
            (self.home / "config.toml").write_text(self.config_text)
        self.port = port
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACP_")}
        cmd = [
            "ip", "netns", "exec", self.mesh.ns(self.host),
            "env", f"ACP_HOME={self.home}",
            PYTHON, "-m", "acp.cli", "daemon",
            "--agent-id", self.agent_id,
            "--port", str(port if port is not None else 0),
        ]  # fmt: skip
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"==== start #{self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            # `ip netns exec` and `env` exec in place: proc.pid is the daemon's own pid
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"{self} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
                )
            return self.status()

        return wait_for(ready, timeout=timeout, what=f"{self} to answer `status`")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- IPC, from outside the namespace -------------------------------------------------------

    def client(self) -> Client:
        return Client(home=self.home)

    def status(self) -> dict[str, Any]:
        with self.client() as c:
            return c.status()

    def peers(self) -> dict[str, dict[str, Any]]:
        with self.client() as c:
            return {p["id"]: p for p in c.peers()}

    def peer(self, agent_id: str) -> dict[str, Any] | None:
        return self.peers().get(agent_id)

    def connected_to(self) -> set[str]:
        return {p for p, row in self.peers().items() if row["status"] == "connected"}

    def send(self, to: str, envelope: dict[str, Any], **kw: Any) -> dict[str, Any]:
        with self.client() as c:
            return c.send(to, envelope, **kw)

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run the ``acp`` command line against this daemon (from outside the namespace)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACP_")}
        env["ACP_HOME"] = str(self.home)
        return subprocess.run(
            [PYTHON, "-m", "acp.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cli_json(self, *args: str) -> Any:
        r = self.cli(*args, "--json")
        assert r.returncode == 0, f"acp {' '.join(args)} --json: {r.returncode}: {r.stderr}"
        return json.loads(r.stdout)


class Subscriber:
    """``Client(home).listen()`` in a thread: every inbound envelope, in arrival order."""

    def __init__(self, daemon: MeshDaemon) -> None:
        self.daemon = daemon
        self.client = daemon.client()
        self.received: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        before = daemon.status()["subscribers"]
        self._thread = threading.Thread(target=self._run, name=f"listen-{daemon.name}", daemon=True)
        self._thread.start()
        wait_for(
            lambda: daemon.status()["subscribers"] > before,
            timeout=10,
            what=f"the subscription on {daemon}",
        )

    def _run(self) -> None:
        try:
            for env in self.client.listen():
                with self._lock:
                    self.received.append(env)
        except BaseException as exc:  # the daemon stopped, or close() below
            self.error = exc

    def envelopes(self, topic: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            got = list(self.received)
        if topic is None:
            return got
        return [e for e in got if (e.get("payload") or {}).get("topic") == topic]

    def numbers(self, topic: str) -> list[Any]:
        return [e["payload"]["data"] for e in self.envelopes(topic)]

    def close(self) -> None:
        sock = self.client._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(2)
        self._thread.join(timeout=5)
        self.client.close()


@contextlib.contextmanager
def subscribed(daemon: MeshDaemon) -> Iterator[Subscriber]:
    sub = Subscriber(daemon)
    try:
        yield sub
    finally:
        sub.close()


def start_all(*daemons: MeshDaemon) -> None:
    """Start the processes together (they import in parallel), then wait for each to answer."""
    for d in daemons:
        d.start(port=d.port)
    for d in daemons:
        d.wait_ready()
