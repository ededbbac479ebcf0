"""What does it cost to have acp around when no one is sending: to start it, to ask it, to keep it?

Latency and throughput (common.py) say how acp moves messages. An agent host mostly runs an idle
daemon and calls ``acp send`` in loops, so these figures matter as much, and each needs its own
honest baseline, measured in the same run:

- ``coldstart``: exec to exit of ``acp send PEER hi``, ``acp peers``, ``acp status`` against a
  running daemon with its peer connected. No relay can do better than python importing acp's CLI
  framework plus the cheapest possible client, so the limit's figure is that *floor*:
  ``python -c "import cyclopts"`` + (a stdlib-only client sending the same request line to the
  limit relay - ``python -c pass``), the three parts in the notes.
- ``startup``: exec of an endpoint to its IPC socket answering ``status``, acp daemon vs limit relay.
- ``rss``: VmRSS of an idle daemon with one peer (mDNS off, and on), of a hub with ten peers, all
  next to the floor (a python importing acp's dependencies, limit.FLOOR_IMPORTS); and RSS before
  and after a flood of 1 KiB envelopes through one pair, next to a limit pair doing the same.
- ``idlecpu``: CPU of idle endpoints over one window, every target's at the same time (they are
  idle: they do not disturb each other), as % of one core.

Each function returns ``Sample``s for bench/run.py, which owns rounds, medians and ratios.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import trio
from acp_target import SEND_TEXT, AcpTarget
from common import (
    READY_TIMEOUT,
    SIZES,
    BenchError,
    Command,
    Lone,
    Memory,
    Pair,
    Sample,
    Target,
    cpu_seconds,
    ipc_request,
    measure_flood,
    measure_latency,
    spawn,
    timed_runs,
    wait_connected,
)
from limit import floor_memory

STAR_PEERS = 10  # the hub of the star has this many connected peers
IDLE_SETTLE = 1.0  # seconds after start-up (and a few envelopes) before an idle reading
FLOOD_SETTLE = 2.0  # seconds after a flood before the "after" reading
MDNS_SETTLE = 3.0  # seconds after mDNS is running: its announcements go on for a while
POLL = 0.002  # seconds between attempts to reach a starting endpoint's socket
WARM_ENVELOPES = 100  # envelopes through a pair before its idle reading

# The cheapest client there is: connect, send one request line, read one reply line.
STDLIB_CLIENT = """import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\\n")
reply = json.loads(s.makefile("rb").readline())
sys.exit(0 if reply.get("ok") is True else 1)
"""


def python(code: str, *args: str) -> Command:
    return Command((sys.executable, "-c", code, *args))


def request_lines(pair: Pair) -> dict[str, str]:
    """The lines ``acp send PEER hi``, ``acp peers`` and ``acp status`` write (acp/client.py)."""

    def line(obj: dict[str, object]) -> str:
        return json.dumps(obj, separators=(",", ":"))

    payload = {"question": SEND_TEXT, "context_budget": "standard"}
    envelope = {"kind": "query", "payload": payload}
    return {
        "send": line({"cmd": "send", "req": 1, "to": pair.receiver_id, "envelope": envelope}),
        "peers": line({"cmd": "peers", "req": 1}),
        "status": line({"cmd": "status", "req": 1}),
    }


def ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1e3


# -- coldstart ----------------------------------------------------------------------------------


async def coldstart(target: Target, workdir: Path, *, runs: int) -> list[Sample]:
    """``coldstart_<cmd>`` in ms: the target's own command, or (no client of its own) the floor."""
    async with target.open_pairs(1, workdir) as (pair,):
        await wait_connected(pair.send_sock)
        commands = target.cli_commands(pair)
        if commands is not None:
            times = await trio.to_thread.run_sync(timed_runs, commands, runs)
            return [Sample(f"coldstart_{name}", ms(t), "ms") for name, t in times.items()]
        lines = request_lines(pair)
        floor_parts = {"pass": python("pass"), "cyclopts": python("import cyclopts")}
        clients = {n: python(STDLIB_CLIENT, str(pair.send_sock), line) for n, line in lines.items()}
        times = await trio.to_thread.run_sync(timed_runs, floor_parts | clients, runs)
    pass_ms, cyclopts_ms = ms(times["pass"]), ms(times["cyclopts"])
    out = []
    for name in lines:
        client_ms = ms(times[name])
        note = {"pass_ms": pass_ms, "cyclopts_ms": cyclopts_ms, "client_ms": client_ms}
        out.append(Sample(f"coldstart_{name}", cyclopts_ms + client_ms - pass_ms, "ms", note))
    return out


# -- startup ------------------------------------------------------------------------------------


async def exec_to_ready(lone: Lone, log: Path) -> float:
    """Seconds from starting ``lone`` to its socket answering ``status``."""
    t0 = time.perf_counter()
    async with spawn(lone.command.argv, log=log, env=lone.command.env) as child:
        with trio.fail_after(READY_TIMEOUT):
            while True:
                try:
                    await ipc_request(lone.sock, {"cmd": "status"})
                    break
                except OSError:
                    if child.proc.poll() is not None:
                        raise child.died("starting") from None
                    await trio.sleep(POLL)
        return time.perf_counter() - t0


async def startup(target: Target, workdir: Path, *, runs: int) -> list[Sample]:
    """``startup`` in ms: the median of ``runs`` fresh starts of one endpoint without a peer."""
    times = []
    for i in range(runs):
        where = workdir / f"start{i}"
        where.mkdir()
        times.append(await exec_to_ready(target.lone(where), where / "endpoint.log"))
    return [Sample("startup", ms(times), "ms", {"max_ms": max(times) * 1e3})]


# -- rss ----------------------------------------------------------------------------------------

RSS_IDLE_FIGURES = ("rss_idle", "rss_idle_mdns", f"rss_{STAR_PEERS}peers")


async def wait_mdns(sock: Path) -> None:
    """Until the daemon at ``sock`` has its peer connected and mDNS running."""
    with trio.fail_after(READY_TIMEOUT):
        while True:
            status = await wait_connected(sock)
            if status.get("mdns") == "running":
                return
            if str(status.get("mdns")).startswith("failed"):
                raise BenchError(f"{sock}: mDNS {status['mdns']}")
            await trio.sleep(0.05)


async def rss_idle(target: Target, workdir: Path) -> list[Sample]:
    """acp: ``rss_idle`` (the sender of a pair, mDNS off), ``rss_idle_mdns`` (the same, mDNS on),
    ``rss_10peers`` (the hub of a star, the leaves' mean in the notes), in MiB, each after
    start-up, its sessions, 100 envelopes through each pair and a pause. The three run side by
    side (memory is per process; the mDNS pair's probing overlaps the others' start-up).
    Any other target: the floor, for all three.
    """
    if not isinstance(target, AcpTarget):
        floor = await floor_memory()
        note = {"peak_mib": floor.hwm_mib}
        return [Sample(name, floor.rss_mib, "MiB", note) for name in RSS_IDLE_FIGURES]
    async with AsyncExitStack() as stack:
        (with_mdns,) = await stack.enter_async_context(
            target.open_pairs(1, workdir / "mdns", mdns=True)
        )
        star = await stack.enter_async_context(target.open_star(STAR_PEERS, workdir / "star"))
        (idle,) = await stack.enter_async_context(target.open_pairs(1, workdir / "idle"))
        await wait_connected(star.hub_sock, STAR_PEERS)
        for sock in (with_mdns.send_sock, with_mdns.recv_sock):
            await wait_mdns(sock)
        for pair in (idle, with_mdns):
            await measure_latency(pair, SIZES["1KiB"], WARM_ENVELOPES, 0, workdir)
        await trio.sleep(IDLE_SETTLE)
        one, mdns, hub = (Memory.of_pid(p) for p in (idle.pids[0], with_mdns.pids[0], star.hub_pid))
        leaves = [Memory.of_pid(pid).rss_mib for pid in star.leaf_pids]
    return [
        Sample("rss_idle", one.rss_mib, "MiB", {"peak_mib": one.hwm_mib}),
        Sample("rss_idle_mdns", mdns.rss_mib, "MiB", {"peak_mib": mdns.hwm_mib}),
        Sample(
            f"rss_{STAR_PEERS}peers",
            hub.rss_mib,
            "MiB",
            {"peak_mib": hub.hwm_mib, "leaf_mean_mib": statistics.fmean(leaves)},
        ),
    ]


async def rss_flood(target: Target, workdir: Path, *, total: int) -> list[Sample]:
    """RSS of a pair's ends before and after ``total`` 1 KiB envelopes (pipelined), in MiB.

    ``rss_before_<N>k``/``rss_after_<N>k`` are the sender; ``rss_growth_<N>k`` and
    ``rss_growth_<N>k_receiver`` are after minus before, for either end. The flood goes in two
    halves with a reading between them: growth that is a one-off (buffers, allocator arenas)
    happens in the first half, a leak goes on in the second (``second_half_mib`` in the notes).
    """
    size = SIZES["1KiB"]
    async with target.open_pairs(1, workdir) as (pair,):
        await wait_connected(pair.send_sock)
        await measure_latency(pair, size, WARM_ENVELOPES, 0, workdir)
        await trio.sleep(IDLE_SETTLE)
        before = [Memory.of_pid(pid) for pid in pair.pids]
        first = await measure_flood(pair, size, total // 2, workdir)
        mid = [Memory.of_pid(pid) for pid in pair.pids]
        second = await measure_flood(pair, size, total - total // 2, workdir)
        await trio.sleep(FLOOD_SETTLE)
        after = [Memory.of_pid(pid) for pid in pair.pids]
    tag = f"{total // 1000}k" if total % 1000 == 0 else str(total)
    rate = statistics.fmean((first.msgs_per_s, second.msgs_per_s))
    growth = [a.rss_mib - b.rss_mib for a, b in zip(after, before, strict=True)]
    late = [a.rss_mib - m.rss_mib for a, m in zip(after, mid, strict=True)]
    return [
        Sample(f"rss_before_{tag}", before[0].rss_mib, "MiB"),
        Sample(f"rss_after_{tag}", after[0].rss_mib, "MiB", {"msg_per_s": rate}),
        Sample(f"rss_growth_{tag}", growth[0], "MiB", {"second_half_mib": late[0]}),
        Sample(
            f"rss_growth_{tag}_receiver",
            growth[1],
            "MiB",
            {"second_half_mib": late[1], "after_mib": after[1].rss_mib},
        ),
    ]


# -- idlecpu ------------------------------------------------------------------------------------

IDLE_CPU_FIGURES = (f"idle_cpu_{STAR_PEERS}peers", "idle_cpu_leaf_mean", "idle_cpu_mdns")


async def idle_cpu(
    targets: list[Target], workdir: Path, *, seconds: float
) -> dict[str, list[Sample]]:
    """CPU (utime + stime) over one ``seconds`` window, in % of one core, all targets at once.

    acp: ``idle_cpu_10peers`` is the hub of a star (mDNS off: the figure is the sessions' cost,
    keepalives and timers), ``idle_cpu_leaf_mean`` the mean of its ten leaves (one peer each),
    ``idle_cpu_mdns`` the mean of a pair's two daemons with mDNS on (one peer each, plus mDNS's
    periodic query). Any other target: the mean of an idle pair's two relays, for all three.
    """
    watched: dict[str, dict[str, list[int]]] = {}
    async with AsyncExitStack() as stack:
        for target in targets:
            where = workdir / target.name
            where.mkdir()
            if isinstance(target, AcpTarget):
                star = await stack.enter_async_context(target.open_star(STAR_PEERS, where))
                (pair,) = await stack.enter_async_context(target.open_pairs(1, where, mdns=True))
                await wait_connected(star.hub_sock, STAR_PEERS)
                for sock in (pair.send_sock, pair.recv_sock):
                    await wait_mdns(sock)
                watched[target.name] = {
                    IDLE_CPU_FIGURES[0]: [star.hub_pid],
                    IDLE_CPU_FIGURES[1]: list(star.leaf_pids),
                    IDLE_CPU_FIGURES[2]: list(pair.pids),
                }
            else:
                (pair,) = await stack.enter_async_context(target.open_pairs(1, where))
                await wait_connected(pair.send_sock)
                watched[target.name] = {fig: list(pair.pids) for fig in IDLE_CPU_FIGURES}
        await trio.sleep(MDNS_SETTLE)
        pids = {pid for groups in watched.values() for got in groups.values() for pid in got}
        cpu0, t0 = {pid: cpu_seconds(pid) for pid in pids}, time.monotonic()
        await trio.sleep(seconds)
        cpu1, elapsed = {pid: cpu_seconds(pid) for pid in pids}, time.monotonic() - t0

    def percent(got: list[int]) -> float:
        return statistics.fmean((cpu1[p] - cpu0[p]) / elapsed * 100 for p in got)

    return {
        name: [
            Sample(fig, percent(got), "%core", {"max_pct": max(percent([p]) for p in got)})
            for fig, got in groups.items()
        ]
        for name, groups in watched.items()
    }
