"""Real ``acp daemon`` processes for the integration tests, and the helpers to drive them.

Every daemon gets its own ACP_HOME (mode 0700) under the test's tmp_path, with an identity made
here, so the test knows every public key before anything starts and can write each config.toml
``[[peers]]`` table up front. Daemons listen on 127.0.0.1 only, with mDNS off, and are always
stopped in teardown (SIGTERM, then SIGKILL). Every wait has a deadline: nothing here can hang.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from nacl.bindings import crypto_scalarmult_base

from acp.client import Client

REPO = Path(__file__).resolve().parents[2]
ACP_CLI = [sys.executable, "-m", "acp.cli"]
START_TIMEOUT = 15.0  # seconds for a daemon to answer `status` (a loaded 2-core machine)
STOP_TIMEOUT = 8.0  # seconds for a daemon to exit after SIGTERM
CLI_TIMEOUT = 30.0  # default deadline of one CLI run
POLL = 0.05

T = TypeVar("T")


# -- small helpers ------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: Callable[[], T], *, timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what} (last: {last!r})"
            )
        time.sleep(POLL)


def new_identity() -> tuple[bytes, str]:
    """A fresh X25519 private key and the base64 of its public key."""
    private = os.urandom(32)
    return private, base64.b64encode(crypto_scalarmult_base(private)).decode()


def no_traceback(text: str) -> bool:
    return "Traceback" not in text and "Exception Group" not in text


def toml_value(value: Any) -> str:
    """A Python bool, number, string, list or dict of them as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for anything printable
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


# -- one daemon ---------------------------------------------------------------------------------


class Daemon:
    """One ``acp daemon`` process and its ACP_HOME.

    Created stopped: adjust ``peers``, ``trust`` or ``config_text`` first, then ``start()``.
    """

    def __init__(
        self, root: Path, agent_id: str, *, name: str | None = None, trust: str = "tofu"
    ) -> None:
        self.agent_id = agent_id
        self.name = name or agent_id
        self.home = root / self.name
        self.home.mkdir(mode=0o700)
        self.home.chmod(0o700)
        assert len(str(self.home / "acp.sock")) < 100, "ACP_HOME too long for a Unix socket"
        self.port = free_port()
        self.trust = trust
        self.private_key, self.pubkey = new_identity()
        key = self.home / "identity.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(self.private_key).decode() + "\n")
        self.peers: list[tuple[str, str, str]] = []  # (agent_id, "host:port", pubkey)
        self.config_text: str | bytes | None = None  # written as is instead of the generated one
        self.settings: dict[str, Any] = {}  # more top-level config.toml keys, e.g. inbox_limit
        # more [[name]] tables after the [[peers]] ones, e.g. ("hooks", {"name": "h", ...})
        self.array_tables: list[tuple[str, dict[str, Any]]] = []
        self.extra_args: list[str] = []  # more `acp daemon` arguments, e.g. --debug
        self.log_path = root / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.children: list[subprocess.Popen[str]] = []  # background CLI runs
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ACP_")}
        self.env["ACP_HOME"] = str(self.home)

    def __repr__(self) -> str:
        return f"<Daemon {self.name} {self.agent_id} port {self.port}>"

    @property
    def socket_path(self) -> Path:
        return self.home / "acp.sock"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def knows(self, *others: Daemon) -> None:
        """Add ``others`` to this daemon's config.toml ``[[peers]]``."""
        for other in others:
            self.peers.append((other.agent_id, other.addr, other.pubkey))

    def write_config(self) -> None:
        path = self.home / "config.toml"
        if isinstance(self.config_text, bytes):
            path.write_bytes(self.config_text)
            return
        if self.config_text is not None:
            text = self.config_text
        else:
            lines = [
                f'agent_id = "{self.agent_id}"',
                f"port = {self.port}",
                'listen = ["127.0.0.1"]',
                f'trust = "{self.trust}"',
            ]
            lines += [f"{key} = {toml_value(value)}" for key, value in self.settings.items()]
            for agent_id, addr, pubkey in self.peers:
                lines += [
                    "",
                    "[[peers]]",
                    f'agent_id = "{agent_id}"',
                    f'addr = "{addr}"',
                    f'pubkey = "{pubkey}"',
                ]
            for table, values in self.array_tables:
                lines += ["", f"[[{table}]]"]
                lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
            text = "\n".join(lines) + "\n"
        path.write_text(text)

    # -- process ------------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [
            *ACP_CLI,
            "daemon",
            "--no-mdns",
            "--port",
            str(self.port),
            "--agent-id",
            self.agent_id,
            *self.extra_args,
        ]

    def start(self, *, wait: bool = True) -> None:
        """Start the process (same ACP_HOME and port on a restart); wait until it answers."""
        assert self.proc is None or self.proc.poll() is not None, f"{self} is running already"
        self.write_config()
        with open(self.log_path, "ab") as log:
            log.write(f"---- start {self.command()}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                env=self.env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Poll the socket with ``status`` until this process answers it."""
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while True:
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(f"{self} exited with {code}:\n{self.log_text()}")
            try:
                with Client(self.home) as c:
                    st = c.request("status", read_timeout=5)
                if st["pid"] == self.proc.pid:
                    return st
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self} not ready after {timeout:g} s:\n{self.log_text()}")
            time.sleep(POLL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and return the exit code; SIGKILL (and fail) if it does not exit in time."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"{self} ignored signal {sig} for {timeout:g} s") from None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def restart(self, sig: int = signal.SIGKILL, *, wait: bool = True) -> None:
        """Stop with ``sig`` and start again on the same ACP_HOME and port.

        SIGKILL is a crash (no cleanup, no BYE; acp.sock stays behind); any other signal must
        end the daemon cleanly, with exit code 0.
        """
        if sig == signal.SIGKILL:
            self.kill()
        else:
            code = self.stop(sig)
            assert code == 0, f"{self} exited with {code} on signal {sig}:\n{self.log_text()}"
        self.start(wait=wait)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    # -- talking to it ------------------------------------------------------------------------

    def client(self) -> Client:
        return Client(self.home)

    def request(self, cmd: str, **args: Any) -> dict[str, Any]:
        with self.client() as c:
            return c.request(cmd, read_timeout=10, **args)

    def call(self, cmd: str, *, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        """``request`` with a longer deadline (``timeout`` s) for the reply."""
        with self.client() as c:
            return c.request(cmd, read_timeout=timeout, **args)

    def inbox(self, **args: Any) -> dict[str, Any]:
        """One ``inbox`` request (docs/protocol.md §8.1); its ``wait`` is added to the deadline."""
        return self.call("inbox", timeout=30.0 + float(args.get("wait", 0)), **args)

    def inbox_all(
        self, *, unread: bool = True, page: int = 1000, **filters: Any
    ) -> list[dict[str, Any]]:
        """Every inbox item (oldest first), read page by page with ``since``: nothing consumed.

        ``filters`` are more ``inbox`` fields (``kinds``, or ``**{"from": [...]}``). Checks that
        ``next`` is the highest ``seq`` of each page and that ``seq`` rises from page to page.
        """
        items: list[dict[str, Any]] = []
        since: int | None = None
        for _ in range(10_000):
            args: dict[str, Any] = {"unread": unread, "limit": page, **filters}
            if since is not None:
                args["since"] = since
            reply = self.inbox(**args)
            batch: list[dict[str, Any]] = reply["messages"]
            if not batch:
                if since is not None:
                    assert reply["next"] == since, f"an empty page moved next: {reply}"
                return items
            assert len(batch) <= page, f"{len(batch)} items with limit {page}"
            seqs = [item["seq"] for item in batch]
            assert seqs == sorted(set(seqs)), f"seq does not rise within a page: {seqs}"
            assert since is None or seqs[0] > since, f"seq {seqs[0]} after since={since}"
            assert reply["next"] == seqs[-1], f"next {reply['next']} is not the last seq {seqs[-1]}"
            items += batch
            since = reply["next"]
        raise AssertionError("inbox paging did not end")

    def status(self) -> dict[str, Any]:
        return self.request("status")

    def counters(self) -> dict[str, int]:
        counters: dict[str, int] = self.status()["counters"]
        return counters

    def peer(self, agent_id: str) -> dict[str, Any] | None:
        for row in self.request("peers")["peers"]:
            if row["id"] == agent_id:
                return dict(row)
        return None

    def is_connected(self, agent_id: str) -> bool:
        row = self.peer(agent_id)
        return row is not None and row["status"] == "connected"

    def wait_connected(self, *others: Daemon | str, timeout: float = 15.0) -> None:
        for other in others:
            agent_id = other if isinstance(other, str) else other.agent_id
            wait_for(
                lambda a=agent_id: self.is_connected(a),
                timeout=timeout,
                what=f"{self.agent_id} connected to {agent_id}",
            )

    def cli_args(self, *args: str) -> list[str]:
        return [*ACP_CLI, *args]

    def run_cli(
        self, *args: str, timeout: float = CLI_TIMEOUT, check: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``acp ARGS`` with ACP_HOME set; ``check`` asserts the exit code."""
        out = subprocess.run(
            self.cli_args(*args),
            env=self.env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check is not None:
            assert out.returncode == check, (
                f"acp {' '.join(args)} exited {out.returncode}, not {check}\n"
                f"stdout: {out.stdout}\nstderr: {out.stderr}"
            )
        return out

    def popen_cli(self, *args: str) -> subprocess.Popen[str]:
        """Start ``acp ARGS`` in the background; finish it with ``communicate(timeout=...)``.

        Whatever is still running at teardown is killed.
        """
        proc = subprocess.Popen(
            self.cli_args(*args),
            env=self.env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.children.append(proc)
        return proc

    def subscribe(self, *, since: int | None = None) -> Subscriber:
        return Subscriber(self.socket_path, since=since)


class Subscriber:
    """A raw IPC connection that subscribed: every read has a deadline.

    ``since``: subscribe from that ``seq`` on (docs/protocol.md §8.1) rather than from the unread ones.
    """

    def __init__(self, path: Path, *, since: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.buf = b""
        self.events: list[dict[str, Any]] = []
        if since is None:
            self.sock.sendall(b'{"cmd":"subscribe","req":"sub"}\n')
        else:
            line = json.dumps({"cmd": "subscribe", "req": "sub", "since": since})
            self.sock.sendall(line.encode() + b"\n")
        reply = self._line(time.monotonic() + 5)
        assert reply is not None and reply.get("ok") is True and reply.get("req") == "sub", reply

    def _line(self, deadline: float) -> dict[str, Any] | None:
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                return None
            if not data:
                raise AssertionError("the daemon closed the subscriber connection")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        obj: dict[str, Any] = json.loads(line)
        return obj

    def next(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next inbound envelope, or None if none came within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while (obj := self._line(deadline)) is not None:
            if obj.get("inbound"):
                env: dict[str, Any] = obj["envelope"]
                return env
            self.events.append(obj)
        return None

    def collect(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Exactly the next ``n`` envelopes, all within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        out = []
        for _ in range(n):
            env = self.next(max(0.0, deadline - time.monotonic()))
            assert env is not None, f"only {len(out)} of {n} envelopes within {timeout:g} s: {out}"
            out.append(env)
        return out

    def next_push(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next inbound push as a whole (``seq``, ``envelope``, ``trust``), or None.

        Fails if the push has no integer ``seq`` (docs/protocol.md §8.1).
        """
        deadline = time.monotonic() + timeout
        while (obj := self._line(deadline)) is not None:
            if obj.get("inbound"):
                seq = obj.get("seq")
                assert isinstance(seq, int) and not isinstance(seq, bool), f"no seq: {obj}"
                return obj
            self.events.append(obj)
        return None

    def collect_pushes(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Exactly the next ``n`` inbound pushes, whole, all within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        out: list[dict[str, Any]] = []
        for _ in range(n):
            push = self.next_push(max(0.0, deadline - time.monotonic()))
            assert push is not None, (
                f"only {len(out)} of {n} pushes within {timeout:g} s: "
                f"{[(p['seq'], p['envelope'].get('id')) for p in out]}"
            )
            out.append(push)
        return out

    def close(self) -> None:
        self.sock.close()


class IpcLine:
    """A raw IPC connection for requests whose reply may take long (``inbox`` with ``wait``).

    ``send`` writes one request without waiting; ``reply`` reads until the reply with that ``req``
    (pushes and events are kept in ``events``). Every read has a deadline.
    """

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.buf = b""
        self.events: list[dict[str, Any]] = []

    def send(self, obj: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def reply(self, req: Any, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" not in self.buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no reply to req {req!r} within {timeout:g} s")
                self.sock.settimeout(remaining)
                try:
                    data = self.sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not data:
                    raise AssertionError("the daemon closed the IPC connection")
                self.buf += data
            line, _, self.buf = self.buf.partition(b"\n")
            obj: dict[str, Any] = json.loads(line)
            if obj.get("req") == req and "ok" in obj:
                return obj
            self.events.append(obj)

    def close(self) -> None:
        self.sock.close()


# -- a daemon that must refuse to start ----------------------------------------------------------


def run_until_exit(d: Daemon, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``acp daemon`` for a case where it must refuse to start; fail at once if it serves."""
    d.write_config()
    proc = subprocess.Popen(
        d.command(),
        env=d.env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            serving = False
            try:
                with d.client() as c:
                    serving = c.request("status", read_timeout=2).get("pid") == proc.pid
            except Exception:
                pass
            if serving:
                raise AssertionError(f"{d} started and answers `status` (it should exit 78)")
            if time.monotonic() > deadline:
                raise AssertionError(f"{d} neither exited nor answered within {timeout:g} s")
            time.sleep(0.1)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# -- the fixture --------------------------------------------------------------------------------


class Fleet:
    """Makes daemons for one test and stops every one of them afterwards."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.daemons: list[Daemon] = []
        self.subscribers: list[Subscriber] = []

    def daemon(self, agent_id: str, *, name: str | None = None, trust: str = "tofu") -> Daemon:
        d = Daemon(self.root, agent_id, name=name, trust=trust)
        self.daemons.append(d)
        return d

    def mesh(self, *daemons: Daemon) -> None:
        """Every daemon knows every other one from config.toml; start all, wait for sessions."""
        for d in daemons:
            d.knows(*(o for o in daemons if o is not d))
        # Highest agent_id first, each listening before the next starts: the lower side dials
        # (docs/protocol.md §4), so every first dial finds its peer up instead of backing off for 1 s.
        for d in sorted(daemons, key=lambda d: d.agent_id, reverse=True):
            d.start()
        for d in daemons:
            d.wait_connected(*(o for o in daemons if o is not d))

    def start(self, *daemons: Daemon) -> None:
        """Start several at once (faster than one after the other), then wait for each."""
        for d in daemons:
            d.start(wait=False)
        for d in daemons:
            d.wait_ready()

    def subscribe(self, d: Daemon, *, since: int | None = None) -> Subscriber:
        sub = d.subscribe(since=since)
        self.subscribers.append(sub)
        return sub

    def close(self) -> None:
        for sub in self.subscribers:
            with contextlib.suppress(OSError):
                sub.close()
        for d in self.daemons:
            for child in d.children:
                if child.poll() is None:
                    child.kill()
                    child.communicate(timeout=5)
        for d in self.daemons:
            if d.running:
                try:
                    d.stop(signal.SIGTERM, timeout=5)
                except AssertionError:
                    pass  # stop() killed it already
            d.kill()
