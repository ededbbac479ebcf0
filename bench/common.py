"""Drive any relay chain with the same client, so acp and the limit are measured the same way.

A figure is only comparable if the client, the message shapes and the timing are identical for
every implementation, and if the client is never the bottleneck. This module holds:

- ``Target``: what an implementation must provide (start N sender/receiver endpoint pairs, here or
  in two network namespaces; start one lone endpoint; name its own client commands, if it has
  any). ``limit.LimitTarget`` and ``acp_target.AcpTarget`` are the two implementations.
- The client, run as separate worker processes (``python bench/common.py worker SPEC``), one per
  endpoint pair, so four pairs get four client processes and the driver's own work stays out of
  the measurement. A worker uses plain sockets (blocking for latency, epoll for throughput: a
  fraction of trio's cost per wake-up), connects to both sockets, subscribes on the receiver,
  warms the chain up, prints ``{"ready":true}``, waits for ``go`` on stdin, measures, and prints
  its result as JSON. Its CPU time is reported, so "the client was not the bottleneck" is a number.
- The driver side (trio: it starts and stops processes): ``measure_latency``,
  ``measure_throughput``, ``measure_flood``, ``ipc_request``, ``wait_connected``, used by
  bench/run.py and bench/lifecycle.py.

Timing: every process reads CLOCK_MONOTONIC (``time.monotonic_ns``), which is system-wide on Linux,
so the receiving worker subtracts the sender's ``bench_t`` (an extra top-level envelope field, passed
through by acp) from its own arrival time. All clocks here only measure; nothing asserts a time.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import select
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

KIB = 1024
SIZES = {"1KiB": 1 * KIB, "60KiB": 60 * KIB}  # compact JSON bytes of the envelope as sent
RECEIVE_BYTES = 1 << 18  # client reads; larger than any line so one read can finish one
BATCH_BYTES = 32 * KIB  # a throughput sender writes up to this many bytes of lines per send
# Throughput window: envelopes sent but not yet arrived, at most WINDOW_BYTES of them and at most
# WINDOW_MAX. Too small starves a chain that batches (one acp pair used 1.04 cores at 128, 1.47 at
# 512); too large overflows acp's outbox (1000 un-ACKed per peer; 900 got "outbox_full").
WINDOW_BYTES = 2 * KIB * KIB
WINDOW_MAX = 512
READY_TIMEOUT = 60.0  # seconds for endpoints or workers to come up (acp: session set-up)
DRAIN_TIMEOUT = 60.0  # seconds for the last envelopes of a run to arrive
FLOOD_MAX_SECONDS = 300.0  # a measure_flood run that takes longer is a failure
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
COMMON = Path(__file__).resolve()


class BenchError(Exception):
    """A benchmark could not run (an endpoint died, a reply said ok false, a line went missing)."""


# -- what a target provides ---------------------------------------------------------------------


@attrs.frozen
class Pair:
    """One sender -> receiver chain: the sender's and receiver's IPC sockets and agent ids."""

    send_sock: Path
    recv_sock: Path
    sender_id: str
    receiver_id: str
    pids: tuple[int, ...]  # the processes serving this pair, for CPU and memory readings


@attrs.frozen
class Sample:
    """One reading of one figure for one target in one round."""

    figure: str
    value: float
    unit: str
    note: dict[str, float] = attrs.field(factory=dict)  # e.g. CPU cores used, a floor's parts


@attrs.frozen
class Memory:
    """Resident memory of one process, from /proc/PID/status, in KiB."""

    rss_kib: int  # VmRSS
    hwm_kib: int  # VmHWM, the peak

    @classmethod
    def from_proc_status(cls, text: str) -> Memory:
        fields = {}
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])  # "  12345 kB"
        if len(fields) != 2:
            raise BenchError("no VmRSS/VmHWM in /proc status text")
        return cls(fields["VmRSS"], fields["VmHWM"])

    @classmethod
    def of_pid(cls, pid: int) -> Memory:
        return cls.from_proc_status(Path(f"/proc/{pid}/status").read_text())

    @property
    def rss_mib(self) -> float:
        return self.rss_kib / KIB

    @property
    def hwm_mib(self) -> float:
        return self.hwm_kib / KIB


@attrs.frozen
class Placement:
    """Where a pair's two ends run: how to start a process there, and the address to dial it at.

    ``LOOPBACK`` is both ends here, on 127.0.0.1. veth.py makes one with each end in its own
    network namespace (prefix ``ip netns exec NAME``), joined by a veth pair.
    """

    sender_prefix: tuple[str, ...] = ()  # argv prefix that starts a process on the sender's side
    receiver_prefix: tuple[str, ...] = ()
    sender_host: str = "127.0.0.1"  # the sender's address, as the receiver sees it
    receiver_host: str = "127.0.0.1"


LOOPBACK = Placement()


@attrs.frozen
class Command:
    """A command line to time, with its environment (None: ours)."""

    argv: tuple[str, ...]
    env: dict[str, str] | None = None


@attrs.frozen
class Lone:
    """One endpoint with no peer: the command that starts it, and its IPC socket."""

    command: Command
    sock: Path


class Target(Protocol):
    """An implementation under test. Everything it starts must stop when ``open_pairs`` exits."""

    name: str

    def unavailable(self) -> str | None:
        """Why this target cannot run here (not built yet, ...), or None."""
        ...

    def open_pairs(
        self, count: int, workdir: Path, place: Placement = LOOPBACK
    ) -> AbstractAsyncContextManager[list[Pair]]:
        """Start ``count`` independent sender/receiver chains; sockets live in ``workdir``.

        Usable means the sockets accept connections; the session between the two ends may
        still be coming up (``wait_connected``, or workers wait for their first message).
        """
        ...

    def lone(self, workdir: Path) -> Lone:
        """How to start one endpoint without a peer (the start-up figure); files go in workdir."""
        ...

    def cli_commands(self, pair: Pair) -> dict[str, Command] | None:
        """Its own client's ``send`` (to the pair's receiver), ``peers`` and ``status`` commands,
        run against the pair's sender; None if it has no client (its figure is then the floor)."""
        ...


# -- child processes ----------------------------------------------------------------------------


class LineReader:
    """Whole lines from a byte stream, with the monotonic time of the read that completed each."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self._scanned = 0  # no newline in buf[:_scanned]
        self.t_read = 0  # monotonic_ns after the last receive_some

    async def line(self) -> bytes:
        while (end := self.buf.find(b"\n", self._scanned)) < 0:
            self._scanned = len(self.buf)
            data = await self.stream.receive_some(RECEIVE_BYTES)
            self.t_read = time.monotonic_ns()
            if not data:
                raise EOFError
            self.buf += data
        line = bytes(self.buf[:end])
        del self.buf[: end + 1]
        self._scanned = 0
        return line


@attrs.define(eq=False)
class Child:
    """A process we started: its stdout as lines (if piped), its stderr in a log file."""

    name: str
    proc: trio.Process
    log: Path
    stdout: LineReader | None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def died(self, what: str) -> BenchError:
        rc = self.proc.poll()
        state = "is running" if rc is None else f"exited with {rc}"
        return BenchError(f"{self.name} {state} while {what}; {self.log}:\n{self.tail()}")

    async def read_json(self, what: str = "waiting for its output") -> dict[str, Any]:
        if self.stdout is None:
            raise BenchError(f"{self.name}: stdout is not piped")
        try:
            line = await self.stdout.line()
        except EOFError:
            await self.proc.wait()
            raise self.died(what) from None
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise BenchError(f"{self.name}: expected a JSON object, got {line[:200]!r}")
        return obj

    async def wait_for_socket(self, path: Path) -> None:
        """Until ``path`` accepts a connection; BenchError if the process exits first."""
        with trio.fail_after(READY_TIMEOUT):
            while True:
                if self.proc.poll() is not None:
                    raise self.died(f"starting (no socket at {path})")
                try:
                    stream = await trio.open_unix_socket(str(path))
                except OSError:
                    await trio.sleep(0.02)
                    continue
                await stream.aclose()
                return


async def stop(proc: trio.Process, grace: float = STOP_GRACE) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps."""
    with trio.CancelScope(shield=True):
        if proc.poll() is None:
            proc.terminate()
            with trio.move_on_after(grace):
                await proc.wait()
            if proc.poll() is None:
                proc.kill()
                await proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                await pipe.aclose()


@asynccontextmanager
async def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    stdout_pipe: bool = False,
    stdin_pipe: bool = False,
    env: dict[str, str] | None = None,
    name: str | None = None,
) -> AsyncIterator[Child]:
    """Start ``argv``; stdout piped (read with ``Child.read_json``) or into ``log`` with stderr."""
    with log.open("ab") as logf:
        proc = await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else logf,
            stderr=logf,
            env=env,
        )
    reader = LineReader(proc.stdout) if proc.stdout is not None else None
    try:
        yield Child(name or log.stem, proc, log, reader)
    finally:
        await stop(proc)


async def read_json_line(child: Child, what: str) -> dict[str, Any]:
    """The next stdout line of ``child`` (a ready line, a result), under READY_TIMEOUT."""
    with trio.fail_after(READY_TIMEOUT):
        return await child.read_json(f"starting ({what})")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # fields[0] is field 3, "state"
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU seconds this machine spent on anything but idle, all cores, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is inside user


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago (own netns)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


# -- messages -----------------------------------------------------------------------------------

_BENCH_T = re.compile(rb'"bench_t":(\d+)')


class Message:
    """Send lines for one sender -> receiver at one envelope size; only id and bench_t change.

    The envelope is complete (``v``, ``id``, ``from``, ``ts``, ``reply_to`` filled) so a relay
    with no features can forward it as is; acp accepts client-filled fields that are right.
    Its compact JSON is ``size`` bytes, give or take a digit of ``bench_t``.
    """

    def __init__(self, sender: str, receiver: str, size: int) -> None:
        def dump(v: object) -> bytes:
            return json.dumps(v, separators=(",", ":")).encode()

        prefix = secrets.token_hex(4)
        ts = time.time_ns() // 1_000_000
        head = b'{"v":1,"id":"' + prefix.encode() + b"-"
        mid = (
            b'","from":'
            + dump(sender)
            + b',"to":'
            + dump(receiver)
            + b',"ts":'
            + dump(ts)
            + b',"kind":"notify","reply_to":null,"payload":{"topic":"bench","data":"'
        )
        tail = b'"},"bench_t":'
        fixed = len(head) + 8 + len(mid) + len(tail) + len(b"%d}" % time.monotonic_ns())
        if size < fixed:
            raise BenchError(f"an envelope cannot be smaller than {fixed} bytes")
        self.size = size
        self._head = b'{"cmd":"send","to":' + dump(receiver) + b',"envelope":' + head
        self._mid = mid + b"x" * (size - fixed) + tail
        self._end = b"}}\n"

    def line(self, seq: int, t_ns: int) -> bytes:
        return b"%s%08d%s%d%s" % (self._head, seq, self._mid, t_ns, self._end)


def bench_t(line: bytes) -> int:
    """The ``bench_t`` of an inbound push line (the last occurrence: it is the last field)."""
    m = _BENCH_T.search(line, max(0, line.rfind(b'"bench_t":')))
    if m is None:
        raise BenchError(f"no bench_t in {line[:120]!r}...")
    return int(m.group(1))


def check_ok(line: bytes) -> None:
    if b'"ok":true' not in line:
        raise BenchError(f"not an ok reply: {line[:300]!r}")


# -- the worker (client) process ------------------------------------------------------------------


@attrs.frozen
class WorkerSpec:
    mode: str  # "latency" | "throughput"
    send_sock: str
    recv_sock: str
    sender: str
    receiver: str
    size: int
    count: int = 0  # latency: measured messages
    warmup: int = 0  # latency: unmeasured messages first
    duration: float = 0.0  # throughput: seconds of sending
    total: int = 0  # throughput: stop after this many envelopes, if sooner (0: no limit)
    warmup_duration: float = 0.0  # throughput: seconds of unmeasured sending first

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        data = json.loads(text)
        return cls(**{f.name: data[f.name] for f in attrs.fields(cls) if f.name in data})

    @property
    def window(self) -> int:
        return max(4, min(WINDOW_MAX, WINDOW_BYTES // self.size))

    @property
    def batch(self) -> int:
        return min(self.window, max(1, BATCH_BYTES // self.size))


class SocketLines:
    """Whole lines from a blocking socket, with the monotonic time of the read that ended each."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.t_read = 0  # monotonic_ns after the last recv

    def line(self) -> bytes:
        scanned = 0
        while (end := self.buf.find(b"\n", scanned)) < 0:
            scanned = len(self.buf)
            data = self.sock.recv(RECEIVE_BYTES)
            self.t_read = time.monotonic_ns()
            if not data:
                raise BenchError("the endpoint closed the socket")
            self.buf += data
        line = bytes(self.buf[:end])
        del self.buf[: end + 1]
        return line


@attrs.define(eq=False)
class Conn:
    """The worker's two connections: the sender's (replies come back on it) and the receiver's."""

    send: socket.socket
    replies: SocketLines
    recv: socket.socket
    inbound: SocketLines

    @classmethod
    def open(cls, spec: WorkerSpec) -> Conn:
        recv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        recv.connect(spec.recv_sock)
        inbound = SocketLines(recv)
        # acp keeps what it pushed unread (the worker does not ack), so a pair that served an
        # earlier figure would hand this subscriber those first: start after the last stored.
        recv.sendall(b'{"cmd":"status"}\n')
        status = json.loads(inbound.line())
        since = status.get("last_seq")
        recv.sendall(
            b'{"cmd":"subscribe","since":%d}\n' % since
            if isinstance(since, int)
            else b'{"cmd":"subscribe"}\n'
        )
        check_ok(inbound.line())
        send = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        send.connect(spec.send_sock)
        return cls(send, SocketLines(send), recv, inbound)


def one_way(conn: Conn, msg: Message, seq: int) -> int:
    """Send one envelope, wait for it to arrive and for the send reply; its latency in ns."""
    t = time.monotonic_ns()
    conn.send.sendall(msg.line(seq, t))
    line = conn.inbound.line()
    t_in = conn.inbound.t_read
    if bench_t(line) != t:
        raise BenchError(f"expected the envelope sent at {t}, got {line[:120]!r}...{line[-120:]!r}")
    check_ok(conn.replies.line())
    return t_in - t


def pump(
    conn: Conn, msg: Message, seq0: int, spec: WorkerSpec, seconds: float, total: int = 0
) -> dict[str, Any]:
    """Send as fast as the window allows for ``seconds`` (or ``total`` envelopes, if sooner),
    then wait until all arrived.

    One thread, non-blocking sockets and epoll: the client must cost little next to the relays'
    parse + crypto, on the same two cores. The receiver only counts newlines (one push per line),
    the reply reader only checks each line for ``"ok":true``.
    """
    if conn.inbound.buf or conn.replies.buf:
        raise BenchError("unread lines left before a throughput run")
    window, batch = spec.window, spec.batch
    send_fd, recv_fd = conn.send.fileno(), conn.recv.fileno()
    conn.send.setblocking(False)
    conn.recv.setblocking(False)
    ep = select.epoll()
    ep.register(recv_fd, select.EPOLLIN)
    ep.register(send_fd, select.EPOLLIN)
    watching_out = False
    inflight = received = replied = 0
    out = memoryview(b"")
    reply_tail = b""
    cpu0 = time.process_time()
    t0 = t_last = time.monotonic_ns()
    deadline = t0 + int(seconds * 1e9)
    give_up = deadline + int(DRAIN_TIMEOUT * 1e9)
    seq = seq0
    sent = -1  # known once sending stops
    try:
        while True:
            now = time.monotonic_ns()
            if sent < 0 and not out:
                if now >= deadline or (total and seq - seq0 >= total):
                    sent = seq - seq0
                elif window - inflight >= batch:  # refill in whole batches: fewer wake-ups
                    k = min(batch, total - (seq - seq0)) if total else batch
                    out = memoryview(b"".join([msg.line(s, now) for s in range(seq, seq + k)]))
                    inflight += k
                    seq += k
            if out:
                try:
                    out = out[conn.send.send(out) :]
                except BlockingIOError:
                    pass
            if sent >= 0 and received >= sent and replied >= sent:
                break
            if now > give_up:
                raise BenchError(f"sent {sent}, only {received} arrived in {DRAIN_TIMEOUT} s")
            if bool(out) != watching_out:
                watching_out = bool(out)
                ep.modify(send_fd, select.EPOLLIN | (select.EPOLLOUT if out else 0))
            if sent >= 0:
                wake = give_up  # draining: wait for arrivals
            elif not out and window - inflight >= batch:
                wake = now  # room for another batch: only collect what is there
            else:
                wake = deadline  # window full or socket full: wait for either to change
            for fd, _ in ep.poll(max(0.0, (wake - now) / 1e9)):
                if fd == recv_fd:
                    data = conn.recv.recv(RECEIVE_BYTES)
                    if not data:
                        raise BenchError("the receiver's socket closed")
                    if k := data.count(b"\n"):
                        t_last = time.monotonic_ns()
                        received += k
                        inflight -= k
                elif fd == send_fd:
                    try:
                        data = conn.send.recv(RECEIVE_BYTES)
                    except BlockingIOError:
                        continue  # only EPOLLOUT
                    if not data:
                        raise BenchError("the sender's socket closed")
                    *lines, reply_tail = (reply_tail + data).split(b"\n")
                    for line in lines:
                        check_ok(line)
                    replied += len(lines)
    finally:
        ep.close()
        conn.send.setblocking(True)
        conn.recv.setblocking(True)
    cpu = time.process_time() - cpu0
    if received != sent or replied != sent:
        raise BenchError(f"sent {sent}, got {received} pushes, {replied} replies")
    return {"sent": sent, "t0": t0, "t_end": t_last, "cpu": cpu, "size": msg.size}


def worker(spec: WorkerSpec) -> None:
    conn = Conn.open(spec)
    msg = Message(spec.sender, spec.receiver, spec.size)
    conn.recv.settimeout(READY_TIMEOUT)  # the first envelope waits for the session
    one_way(conn, msg, 0)
    conn.recv.settimeout(None)
    seq = 1
    if spec.mode == "latency":
        for _ in range(spec.warmup):
            one_way(conn, msg, seq)
            seq += 1
    else:
        seq += pump(conn, msg, seq, spec, spec.warmup_duration)["sent"]
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    if spec.mode == "latency":
        cpu0 = time.process_time()
        samples = [one_way(conn, msg, seq + i) for i in range(spec.count)]
        result: dict[str, Any] = {"latency_ns": samples, "cpu": time.process_time() - cpu0}
    else:
        result = pump(conn, msg, seq, spec, spec.duration, spec.total)
    print(json.dumps(result), flush=True)


# -- the driver side ------------------------------------------------------------------------------


@attrs.frozen
class WorkerRun:
    results: list[dict[str, Any]]
    wall: float  # seconds from "go" to the last result
    target_cpu: float  # CPU seconds the target's processes used in that time
    machine_cpu: float  # CPU seconds the whole machine used in that time

    @property
    def client_cpu(self) -> float:
        return sum(float(r["cpu"]) for r in self.results)

    @property
    def other_cores(self) -> float:
        """Cores busy with neither the target nor the client: other people's work, noise."""
        return max(0.0, self.machine_cpu - self.target_cpu - self.client_cpu) / self.wall


async def run_workers(specs: Sequence[WorkerSpec], pids: Sequence[int], workdir: Path) -> WorkerRun:
    """One worker process per spec; all get "go" together once all are ready."""
    async with AsyncExitStack() as stack:
        children = []
        for i, spec in enumerate(specs):
            argv = [sys.executable, str(COMMON), "worker", json.dumps(attrs.asdict(spec))]
            log = workdir / f"worker{i}.log"
            name = f"worker {i} ({spec.mode})"
            children.append(
                await stack.enter_async_context(
                    spawn(argv, log=log, stdout_pipe=True, stdin_pipe=True, name=name)
                )
            )
        with trio.fail_after(READY_TIMEOUT * 2):
            for child in children:
                await child.read_json("warming up")
        cpu0, machine0 = sum(cpu_seconds(p) for p in pids), busy_cpu_seconds()
        t0 = time.monotonic()
        for child in children:
            assert child.proc.stdin is not None
            await child.proc.stdin.send_all(b"go\n")
        longest = max(s.duration for s in specs) + DRAIN_TIMEOUT + READY_TIMEOUT
        with trio.fail_after(longest):
            results = [await child.read_json("measuring") for child in children]
        wall = time.monotonic() - t0
        cpu1, machine1 = sum(cpu_seconds(p) for p in pids), busy_cpu_seconds()
    return WorkerRun(results, wall, cpu1 - cpu0, machine1 - machine0)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@attrs.frozen
class Latency:
    p50_us: float
    p99_us: float
    mean_us: float
    max_us: float
    other_cores: float  # machine load that was not ours, while measuring


@attrs.frozen
class Throughput:
    msgs_per_s: float
    mb_per_s: float  # 10**6 bytes of envelope JSON per second
    client_cores: float  # CPU the client workers used, in cores (1.0 = one core busy)
    target_cores: float  # CPU the target's processes used, in cores
    other_cores: float  # machine load that was not ours, while measuring


async def measure_latency(pair: Pair, size: int, count: int, warmup: int, workdir: Path) -> Latency:
    """One-way latency, one envelope at a time (each waits for the previous to arrive)."""
    spec = WorkerSpec(
        "latency",
        str(pair.send_sock),
        str(pair.recv_sock),
        pair.sender_id,
        pair.receiver_id,
        size,
        count=count,
        warmup=warmup,
    )
    run = await run_workers([spec], pair.pids, workdir)
    ns = sorted(run.results[0]["latency_ns"])
    return Latency(
        p50_us=percentile(ns, 50) / 1e3,
        p99_us=percentile(ns, 99) / 1e3,
        mean_us=statistics.fmean(ns) / 1e3,
        max_us=ns[-1] / 1e3,
        other_cores=run.other_cores,
    )


async def measure_throughput(
    pairs: Sequence[Pair], size: int, duration: float, warmup: float, workdir: Path
) -> Throughput:
    """Every pair's sender sends flat out (windowed) for ``duration``; totals over all pairs."""
    specs = [
        WorkerSpec(
            "throughput",
            str(p.send_sock),
            str(p.recv_sock),
            p.sender_id,
            p.receiver_id,
            size,
            duration=duration,
            warmup_duration=warmup,
        )
        for p in pairs
    ]
    pids = [pid for p in pairs for pid in p.pids]
    run = await run_workers(specs, pids, workdir)
    sent = sum(r["sent"] for r in run.results)
    elapsed = (max(r["t_end"] for r in run.results) - min(r["t0"] for r in run.results)) / 1e9
    return Throughput(
        msgs_per_s=sent / elapsed,
        mb_per_s=sent * size / elapsed / 1e6,
        client_cores=run.client_cpu / elapsed,
        target_cores=run.target_cpu / run.wall,
        other_cores=run.other_cores,
    )


async def measure_flood(pair: Pair, size: int, total: int, workdir: Path) -> Throughput:
    """Send exactly ``total`` envelopes through ``pair``, pipelined as the throughput figures are."""
    spec = WorkerSpec(
        "throughput",
        str(pair.send_sock),
        str(pair.recv_sock),
        pair.sender_id,
        pair.receiver_id,
        size,
        duration=FLOOD_MAX_SECONDS,
        total=total,
    )
    run = await run_workers([spec], pair.pids, workdir)
    (result,) = run.results
    if result["sent"] != total:
        raise BenchError(f"sent {result['sent']} of {total} envelopes in {FLOOD_MAX_SECONDS} s")
    elapsed = (result["t_end"] - result["t0"]) / 1e9
    return Throughput(
        msgs_per_s=total / elapsed,
        mb_per_s=total * size / elapsed / 1e6,
        client_cores=run.client_cpu / elapsed,
        target_cores=run.target_cpu / run.wall,
        other_cores=run.other_cores,
    )


# -- talking to an endpoint's IPC socket from the driver --------------------------------------------


async def ipc_request(sock: Path, request: dict[str, Any]) -> dict[str, Any]:
    """One request on a fresh connection to ``sock``, and its reply (the first line with "ok").

    OSError if nothing accepts connections there yet; BenchError if the reply says ok false.
    """
    stream = await trio.open_unix_socket(str(sock))
    async with stream:
        await stream.send_all(json.dumps(request, separators=(",", ":")).encode() + b"\n")
        lines = LineReader(stream)
        with trio.fail_after(READY_TIMEOUT):
            while True:
                try:
                    reply = json.loads(await lines.line())
                except EOFError:
                    raise BenchError(f"{sock} closed the connection before replying") from None
                if isinstance(reply, dict) and "ok" in reply:
                    break
    if reply["ok"] is not True:
        raise BenchError(f"{sock} refused {request}: {reply}")
    return dict(reply)


async def wait_connected(sock: Path, peers: int = 1) -> dict[str, Any]:
    """Until the endpoint at ``sock`` reports ``peers`` connected peers; its last status reply."""
    with trio.fail_after(READY_TIMEOUT):
        while True:
            status = await ipc_request(sock, {"cmd": "status"})
            if status.get("peers_connected", 0) >= peers:
                return status
            await trio.sleep(0.02)


def timed_runs(commands: dict[str, Command], runs: int) -> dict[str, list[float]]:
    """Wall seconds from spawn to exit of each command, ``runs`` times, interleaved.

    Run ``i`` starts at command ``i`` and goes round, so no command is always the one right after
    another (a page cache warmed, a core freed). Blocking: call it in a thread.
    """
    names = list(commands)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(runs):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            cmd = commands[name]
            t0 = time.perf_counter()
            subprocess.run(
                cmd.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=cmd.env,
                check=True,
            )
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] != "worker":
        raise SystemExit("usage: common.py worker SPEC_JSON  (started by bench/run.py)")
    worker(WorkerSpec.from_json(sys.argv[2]))


if __name__ == "__main__":
    main()
