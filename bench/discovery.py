"""Discovery figures: how long acp takes to find its peers by mDNS and to find them again.

Every daemon runs inside a network namespace of a simulated LAN (tests/mesh/mesh.sh with its own
prefix ``acpbench`` and network 10.97.0.0/24), never on this machine's real interfaces. Each round
starts from fresh, empty ACP_HOMEs (mode 0700, no config.toml) on a freshly built mesh, and polls
every daemon's ``acp.sock`` (``peers``) from outside the namespaces every ``POLL`` seconds, so a
figure is late by at most one poll plus one request.

Figures (seconds; one dict per figure, the median over the rounds):
  discovery_all_connected_3   start 3 daemons at once until every one shows 2 peers connected
  discovery_all_connected_10  the same with 10 daemons (all importing at once on 2 shared cores)
  restart_new_port_redial     SIGKILL h3 (the highest agent_id, so its peers must dial it), start
                              it again with ``--port 7200``; until h1 and h2 show it connected
                              at port 7200
  reconnect_after_heal        3 connected; ``mesh.sh cut 1`` for 50 s, long enough that the
                              sessions to h1 are dead on both sides (checked: status != connected
                              on h1, h2 and h3; they die 45 s after the last frame received);
                              ``heal 1``; until h1 and both others show each other connected.
                              50 s per round: 1 round with --quick, at most 2 otherwise.

There is no "limit" implementation to compare with. Each figure carries, in its note, reference
values measured for python-zeroconf on this kind of machine (docs/architecture.md): RFC 6762
probing inside ``register_service`` takes ~1.65 s, start to all discovered ~1.2 s (a bare zeroconf
script, not counting the import of a daemon). ``ratio_to_probe`` = value / 1.65 s: how many
probing times discovery costs end to end (import, probing, browse, resolve, dial, handshake);
1.0 would mean nothing but probing. The notes also hold the phases (read from the daemons' own log
lines) and ``daemon_cores``/``other_cores``: CPU used by the daemons and by the rest of the machine
during the measurement (two shared cores: ``other_cores`` near 1 means half the machine was busy).

    python bench/discovery.py --rounds 3      # root: builds namespaces; table + JSON lines
    python bench/discovery.py --quick         # 1 round, ~65 s
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import trio

from acp.client import TrioClient
from acp.errors import AcpError

REPO = Path(__file__).resolve().parent.parent
MESH_SH = REPO / "tests" / "mesh" / "mesh.sh"
_VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(_VENV_PYTHON if _VENV_PYTHON.exists() else Path(sys.executable))
PREFIX = "acpbench"
NET = "10.97.0"
LOCK_PATH = Path(f"/tmp/acp-mesh-{PREFIX}.lock")
LOCK_TIMEOUT = 120.0  # s to wait for another run of this benchmark to finish with the mesh

POLL = 0.05  # s between polls of every daemon
IPC_TIMEOUT = 2.0  # s for one `peers` request
CONNECT_TIMEOUT = {3: 30.0, 10: 60.0}  # s from start to all connected
RESTART_TIMEOUT = 30.0
CUT_HOLD = 50.0  # s the cut lasts (sessions die 45 s after the last frame received)
DEAD_TIMEOUT = 70.0  # s after the cut for every session to h1 to be seen dead
HEAL_TIMEOUT = 75.0  # s after the heal (backoff cap 30 s + handshake 5 s + higher side 10 s)
STOP_TIMEOUT = 8.0
MESH_TIMEOUT = 60.0
NEW_PORT = 7200  # the daemons start on the default 7100; the restarted one moves here
LOG_TAIL = 3000
LOG_WAIT = 5.0  # s to wait for a daemon log line that a note reads
SETTLE = 1.0  # s between all connected and the SIGKILL

# Reference values (docs/architecture.md, python-zeroconf 0.154 on this kind of machine)
# and acp's own constants that bound the figures (acp/net/*.py, acp/proto/session.py).
PROBE_S = 1.65  # RFC 6762 probing inside register_service
BARE_DISCOVERY_S = 1.2  # a bare zeroconf script: start to all peers discovered
REQUERY_HI_S = 7.0  # after a heal, a PTR query with known answers brought peers back in 1-7 s
QUERY_INTERVAL_S = 10.0  # acp/net/discovery.py QUERY_INTERVAL
DEAD_AFTER_S = 45.0  # acp/proto/session.py DEAD_AFTER
BACKOFF_CAP_S = 30.0  # acp/proto/backoff.py BACKOFF_CAP
HIGHER_SIDE_WAIT_S = 10.0  # acp/net/peers.py HIGHER_SIDE_WAIT

FIGURES = (
    "discovery_all_connected_3",
    "discovery_all_connected_10",
    "restart_new_port_redial",
    "reconnect_after_heal",
)


class DiscoveryError(Exception):
    """A round could not be measured (a daemon died, a wait ran out, the mesh failed)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- CPU accounting ---------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent not idle (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return (total - idle) / CLK_TCK


def process_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class CpuWindow:
    """CPU used by some daemons, and by everything else, between ``__init__`` and ``cores``."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.t0 = time.monotonic()
        self.machine0 = machine_busy_s()
        self.self0 = self_cpu_s()
        self.daemons0 = {pid: process_cpu_s(pid) for pid in pids}

    def cores(self, pids: Sequence[int]) -> dict[str, float]:
        elapsed = max(time.monotonic() - self.t0, 1e-6)
        daemons = sum(process_cpu_s(pid) - self.daemons0.get(pid, 0.0) for pid in pids)
        machine = machine_busy_s() - self.machine0
        other = machine - daemons - (self_cpu_s() - self.self0)
        return {"daemon_cores": daemons / elapsed, "other_cores": max(0.0, other / elapsed)}


# -- the mesh and its daemons -----------------------------------------------------------------------


class Mesh:
    """``mesh.sh`` with this benchmark's prefix and network; an flock keeps two runs apart."""

    def __init__(self) -> None:
        self.env = {**os.environ, "ACP_MESH_PREFIX": PREFIX, "ACP_MESH_NET": NET}
        self._lock_fd: int | None = None

    async def sh(self, *args: str | int, check: bool = True) -> str:
        with trio.fail_after(MESH_TIMEOUT):
            r = await trio.run_process(
                ["bash", str(MESH_SH), *map(str, args)],
                env=self.env,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        if check and r.returncode != 0:
            raise DiscoveryError(
                f"mesh.sh {' '.join(map(str, args))}: exit {r.returncode}: "
                f"{r.stderr.decode(errors='replace').strip()}"
            )
        return r.stdout.decode(errors="replace")

    async def lock(self) -> None:
        # unlock() removes the file, so a lock won on a file that is gone is tried again.
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        os.close(fd)
                        raise DiscoveryError(
                            f"mesh prefix {PREFIX!r} stayed in use by another run for "
                            f"{LOCK_TIMEOUT:g} s ({LOCK_PATH})"
                        ) from None
                    await trio.sleep(0.5)
            try:
                if os.stat(LOCK_PATH).st_ino == os.fstat(fd).st_ino:
                    self._lock_fd = fd
                    return
            except FileNotFoundError:
                pass
            os.close(fd)

    def unlock(self) -> None:
        """Release the lock and remove its file (while still holding it): no file is left."""
        if self._lock_fd is not None:
            LOCK_PATH.unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None

    @staticmethod
    def ns(host: int) -> str:
        return f"{PREFIX}-h{host}"


def _daemon_env() -> dict[str, str]:
    # no ACP_* from our environment; no journald markers (the log lines must carry their times)
    drop = ("JOURNAL_STREAM", "INVOCATION_ID")
    return {k: v for k, v in os.environ.items() if not k.startswith("ACP_") and k not in drop}


def _make_home(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True)
    path.chmod(0o700)
    if len(str(path / "acp.sock")) >= 100:
        raise DiscoveryError(f"ACP_HOME {path} is too long for a Unix socket path")


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def _read_tail(path: Path, limit: int) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _log_times(path: Path, text: str, since: int = 0) -> list[float]:
    """Wall-clock times (epoch s) of the daemon log lines containing ``text``, from byte ``since``."""
    try:
        data = path.read_bytes()[since:].decode(errors="replace")
    except OSError:
        return []
    out = []
    for line in data.splitlines():
        if text in line:
            try:
                out.append(datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp())
            except ValueError:
                continue
    return out


class Daemon:
    """One ``acp daemon --agent-id hI`` inside ``acpbench-hI``, with its own ACP_HOME."""

    def __init__(self, host: int, home: Path, log_path: Path) -> None:
        self.host = host
        self.agent_id = f"h{host}"
        self.home = home
        self.log_path = log_path
        self.proc: trio.Process | None = None
        self.starts = 0
        _make_home(home)

    def __repr__(self) -> str:
        return f"<Daemon {self.agent_id} in {Mesh.ns(self.host)}>"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, port: int | None = None) -> None:
        """Start the process (``ip netns exec`` and ``env`` exec in place: the pid is the daemon's)."""
        cmd = [
            "ip", "netns", "exec", Mesh.ns(self.host),
            "env", f"ACP_HOME={self.home}",
            PYTHON, "-m", "acp.cli", "daemon", "--agent-id", self.agent_id,
        ]  # fmt: skip
        if port is not None:
            cmd += ["--port", str(port)]
        self.starts += 1
        _append(self.log_path, f"==== start #{self.starts}: {' '.join(cmd)}\n")
        with self.log_path.open("ab") as out:
            self.proc = await trio.lowlevel.open_process(
                cmd,
                env=_daemon_env(),
                cwd=str(REPO),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_tail(self) -> str:
        return _read_tail(self.log_path, LOG_TAIL)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.returncode is not None:
            raise DiscoveryError(
                f"{self} exited with {self.proc.returncode}; its log ends:\n{self.log_tail()}"
            )

    async def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        with trio.fail_after(STOP_TIMEOUT):
            await self.proc.wait()

    async def stop(self) -> None:
        """SIGTERM (goodbyes), SIGKILL if it is not gone within STOP_TIMEOUT s."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            await proc.wait()
            return
        log(f"{self} ignored SIGTERM for {STOP_TIMEOUT:g} s: SIGKILL")
        await self.kill()

    async def peers(self) -> dict[str, dict[str, Any]] | None:
        """Its ``peers`` rows by id; None while it does not answer."""
        try:
            with trio.fail_after(IPC_TIMEOUT):
                async with TrioClient(home=self.home) as c:
                    rows = await c.peers()
        except (AcpError, OSError, ValueError, trio.TooSlowError, trio.BrokenResourceError):
            return None
        return {row["id"]: row for row in rows}


def connected(view: dict[str, dict[str, Any]] | None) -> set[str]:
    if view is None:
        return set()
    return {pid for pid, row in view.items() if row.get("status") == "connected"}


Views = list[dict[str, dict[str, Any]] | None]
Check = Callable[[Views], bool]


async def poll_until(
    daemons: Sequence[Daemon], events: dict[str, Check], done: str, limit_s: float, what: str
) -> dict[str, float]:
    """Poll every daemon until ``events[done]`` holds; the monotonic time each event first held.

    Event times are taken after the poll that saw them (late by at most POLL + one request).
    """
    seen: dict[str, float] = {}
    views: Views = [None] * len(daemons)
    try:
        with trio.fail_after(limit_s):
            while True:
                for d in daemons:
                    d.check_alive()

                async def fetch(i: int, d: Daemon) -> None:
                    views[i] = await d.peers()

                async with trio.open_nursery() as nursery:
                    for i, d in enumerate(daemons):
                        nursery.start_soon(fetch, i, d)
                now = time.monotonic()
                for name, check in events.items():
                    if name not in seen and check(views):
                        seen[name] = now
                if done in seen:
                    return seen
                await trio.sleep(POLL)
    except trio.TooSlowError:
        state = {
            d.agent_id: ({p: r.get("status") for p, r in v.items()} if v is not None else None)
            for d, v in zip(daemons, views, strict=True)
        }
        raise DiscoveryError(
            f"timed out after {limit_s:g} s waiting for {what}; last: {state}"
        ) from None


def all_full(n: int) -> Check:
    return lambda views: all(len(connected(v)) == n - 1 for v in views)


# -- one round ----------------------------------------------------------------------------------------


class Round:
    """The daemons of one round on a fresh mesh of ``n`` hosts; ``close`` stops them."""

    def __init__(self, mesh: Mesh, n: int, workdir: Path, label: str) -> None:
        self.mesh = mesh
        self.n = n
        workdir.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=workdir))  # fresh every round
        self.daemons = [
            Daemon(i, self.dir / f"h{i}", self.dir / f"h{i}.log") for i in range(1, n + 1)
        ]

    def pids(self) -> list[int]:
        return [d.pid for d in self.daemons if d.pid is not None]

    async def close(self) -> None:
        async with trio.open_nursery() as nursery:
            for d in self.daemons:
                nursery.start_soon(d.stop)

    async def start_all(self) -> tuple[float, float, CpuWindow]:
        """Start every daemon at once; the monotonic and wall-clock start, and a CPU window."""
        cpu = CpuWindow([])
        t0, wall0 = time.monotonic(), time.time()
        for d in self.daemons:
            await d.start()
        return t0, wall0, cpu


def _after(times: list[float], wall0: float) -> float:
    """Seconds from ``wall0`` to the first of ``times`` not before it; NaN if none."""
    later = [t - wall0 for t in times if t >= wall0 - 0.001]
    return min(later) if later else float("nan")


def _nanmax(xs: Sequence[float]) -> float:
    real = [x for x in xs if x == x]
    return max(real) if len(real) == len(xs) and real else float("nan")


async def _max_log(daemons: Sequence[Daemon], text: str, wall0: float) -> float:
    """The latest over ``daemons`` of each one's first log line with ``text`` after ``wall0``
    (a line may come after the figure: a daemon accepts sessions before it has registered)."""
    return _nanmax([await _wait_log(d, text, wall0) for d in daemons])


async def _wait_log(d: Daemon, text: str, wall0: float, since: int = 0) -> float:
    """Seconds from ``wall0`` to ``d``'s first log line with ``text``, waiting up to LOG_WAIT s."""
    with trio.move_on_after(LOG_WAIT):
        while True:
            got = _after(_log_times(d.log_path, text, since), wall0)
            if got == got:
                return got
            await trio.sleep(POLL)
    return float("nan")


async def all_connected(rnd: Round) -> tuple[float, dict[str, float]]:
    """Figure 1: start all daemons until each shows n-1 peers connected."""
    n, daemons = rnd.n, rnd.daemons
    t0, wall0, cpu = await rnd.start_all()
    events: dict[str, Check] = {
        "all_answer": lambda views: all(v is not None for v in views),
        "first_full": lambda views: any(len(connected(v)) == n - 1 for v in views),
        "all_full": all_full(n),
    }
    seen = await poll_until(
        daemons, events, "all_full", CONNECT_TIMEOUT[n], f"all {n} to show {n - 1} connected"
    )
    value = seen["all_full"] - t0
    cores = cpu.cores(rnd.pids())
    note = {
        "all_listening_s": await _max_log(daemons, "listening on port", wall0),
        "all_answer_s": seen["all_answer"] - t0,
        "all_registered_s": await _max_log(daemons, "mDNS: advertising", wall0),
        "first_full_s": seen["first_full"] - t0,
        "ratio_to_probe": value / PROBE_S,
        "ref_probe_s": PROBE_S,
        "ref_bare_all_discovered_s": BARE_DISCOVERY_S,
        **cores,
    }
    return value, note


async def restart_new_port(rnd: Round) -> tuple[float, dict[str, float]]:
    """Figure 3: SIGKILL h3, restart it on NEW_PORT; until h1 and h2 show it connected there."""
    h1, h2, h3 = rnd.daemons[:3]
    await trio.sleep(SETTLE)  # sessions a moment old, not fresh from the figure before
    marks = {d.agent_id: d.log_size() for d in (h1, h2)}
    await h3.kill()
    cpu = CpuWindow(rnd.pids())
    t0, wall0 = time.monotonic(), time.time()
    await h3.start(port=NEW_PORT)

    def on_new_port(view: dict[str, dict[str, Any]] | None) -> bool:
        row = (view or {}).get("h3")
        return row is not None and row.get("status") == "connected" and row.get("port") == NEW_PORT

    events: dict[str, Check] = {
        "h3_answers": lambda views: views[2] is not None,
        "h3_sees_both": lambda views: connected(views[2]) == {"h1", "h2"},
        "redialled": lambda views: on_new_port(views[0]) and on_new_port(views[1]),
    }
    seen = await poll_until(
        [h1, h2, h3], events, "redialled", RESTART_TIMEOUT, f"h1 and h2 to redial h3 at {NEW_PORT}"
    )
    value = seen["redialled"] - t0
    cores = cpu.cores(rnd.pids())
    # the phases, from the daemons' own log lines: h3 up, its peers hear its new records,
    # its register_service returns (it announces before that: peers often know first)
    learned = [_after(_log_times(d.log_path, "peer h3: announced at", marks[d.agent_id]), wall0)
               for d in (h1, h2)]  # fmt: skip
    note = {
        "h3_listening_s": await _wait_log(h3, "listening on port", wall0),
        "h3_answers_s": seen["h3_answers"] - t0,
        "peers_learned_port_s": _nanmax(learned),
        "h3_registered_s": await _wait_log(h3, "mDNS: advertising", wall0),
        "h3_sees_both_s": seen.get("h3_sees_both", float("nan")) - t0,
        "ref_probe_s": PROBE_S,
        **cores,
    }
    return value, note


async def reconnect_after_heal(rnd: Round, heal_rounds: int) -> tuple[float, dict[str, float]]:
    """Figure 2: cut h1 until its sessions are dead on both sides (>= CUT_HOLD s), heal, time it."""
    daemons = rnd.daemons[:3]
    # restart_new_port may have left h3's own view a moment behind
    await poll_until(daemons, {"full": all_full(3)}, "full", 30.0, "all 3 connected before the cut")
    await rnd.mesh.sh("cut", 1)
    t_cut = time.monotonic()
    healed = False
    try:
        dead: dict[str, Check] = {
            "h1_side": lambda views: not (connected(views[0]) & {"h2", "h3"}),
            "peer_side": lambda views: all("h1" not in connected(v) for v in views[1:]),
            "h2_h3_up": lambda views: "h3" in connected(views[1]),
        }
        dead["both"] = lambda views: dead["h1_side"](views) and dead["peer_side"](views)
        seen = await poll_until(daemons, dead, "both", DEAD_TIMEOUT, "the sessions to h1 to die")
        if "h2_h3_up" not in seen:
            raise DiscoveryError("the h2-h3 session went down during h1's cut")
        await trio.sleep(max(0.0, t_cut + CUT_HOLD - time.monotonic()))
        # where h1's supervisors stand: reconnecting waits for their backoff timers
        before = await daemons[0].peers() or {}
        waits = [before.get(p, {}).get("next_try_in") for p in ("h2", "h3")]
        marks = {d.agent_id: d.log_size() for d in daemons}
        cpu = CpuWindow(rnd.pids())
        await rnd.mesh.sh("heal", 1)
        t_heal, wall_heal = time.monotonic(), time.time()
        healed = True
    finally:
        if not healed:
            await rnd.mesh.sh("heal", 1, check=False)

    def pair(a: int, b: int) -> Check:
        return lambda views: (
            f"h{b}" in connected(views[a - 1]) and f"h{a}" in connected(views[b - 1])
        )

    events: dict[str, Check] = {"h1_h2": pair(1, 2), "h1_h3": pair(1, 3)}
    events["both"] = lambda views: events["h1_h2"](views) and events["h1_h3"](views)
    got = await poll_until(daemons, events, "both", HEAL_TIMEOUT, "h1 to reconnect after the heal")
    cores = cpu.cores(rnd.pids())
    h1 = daemons[0]
    ups = [t - wall_heal for t in _log_times(h1.log_path, "session up", marks["h1"])]
    fails = _log_times(h1.log_path, "dial 10.97.0.", marks["h1"])
    note = {
        "first_pair_s": min(got["h1_h2"], got["h1_h3"]) - t_heal,
        "h1_first_session_log_s": min(ups, default=float("nan")),
        "h1_dial_failures_after_heal": float(len(fails)),
        "h1_next_try_in_at_heal_s": max((w for w in waits if w is not None), default=float("nan")),
        "sessions_dead_after_cut_s": seen["both"] - t_cut,
        "cut_s": t_heal - t_cut,
        "heal_rounds": float(heal_rounds),
        "ref_requery_max_s": REQUERY_HI_S,
        "ref_query_interval_s": QUERY_INTERVAL_S,
        "ref_backoff_cap_s": BACKOFF_CAP_S,
        **cores,
    }
    return got["both"] - t_heal, note


# -- the group ----------------------------------------------------------------------------------------


Step = Callable[[], Awaitable[tuple[float, dict[str, float]]]]


class Collected:
    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {f: [] for f in FIGURES}
        self.notes: dict[str, list[dict[str, float]]] = {f: [] for f in FIGURES}
        self.failures: dict[str, int] = {f: 0 for f in FIGURES}

    def add(self, figure: str, value: float, note: dict[str, float], label: str) -> None:
        self.values[figure].append(value)
        self.notes[figure].append(note)
        log(f"{label} {figure:<27} {value:7.3f} s  " + _fmt_note(note))

    def summary(self) -> list[dict[str, Any]]:
        out = []
        for f in FIGURES:
            values, notes = self.values[f], self.notes[f]
            if not values:
                continue
            keys = list(notes[0])
            note = {k: _nan_median([n.get(k, float("nan")) for n in notes]) for k in keys}
            if self.failures[f]:
                note["failed_rounds"] = float(self.failures[f])
            note = {k: round(v, 4) for k, v in note.items()}
            out.append(
                {
                    "figure": f,
                    "target": "acp",
                    "value": round(statistics.median(values), 4),
                    "unit": "s",
                    "rounds": [round(v, 4) for v in values],
                    "note": note,
                }
            )
        return out


def _nan_median(xs: list[float]) -> float:
    real = [x for x in xs if x == x]
    return statistics.median(real) if real else float("nan")


def _fmt_note(note: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in note.items())


async def _one(got: Collected, figure: str, label: str, step: Step) -> bool:
    """Run one figure's round; a failure is counted and logged, not raised (the others go on)."""
    try:
        value, note = await step()
    except (DiscoveryError, OSError, trio.TooSlowError) as exc:
        got.failures[figure] += 1
        log(f"{label} {figure}: FAILED: {exc}")
        return False
    got.add(figure, value, note, label)
    return True


async def measure(rounds: int, quick: bool, workdir: Path) -> list[dict[str, Any]]:
    """Every discovery figure, ``rounds`` rounds (reconnect_after_heal: 1 with ``quick``, else at
    most 2, since it holds a 50 s cut); one dict per figure with the median and every round."""
    if os.geteuid() != 0:
        raise DiscoveryError("the discovery benchmark needs root (network namespaces)")
    for tool in ("ip", "bash"):
        if shutil.which(tool) is None:
            raise DiscoveryError(
                f"the discovery benchmark needs `{tool}` (apt-get install iproute2)"
            )
    rounds = max(1, rounds)
    heal_rounds = 1 if quick else min(rounds, 2)
    mesh = Mesh()
    got = Collected()
    await mesh.lock()
    try:
        for r in range(rounds):
            label = f"round {r + 1}/{rounds}"
            # three hosts: all connected, then the restart, then (in the first rounds) the heal
            await mesh.sh("up", 3)
            rnd = Round(mesh, 3, workdir, f"r{r + 1}-n3")
            try:
                ok = await _one(
                    got, "discovery_all_connected_3", label, partial(all_connected, rnd)
                )
                if ok:
                    step = partial(restart_new_port, rnd)
                    ok = await _one(got, "restart_new_port_redial", label, step)
                else:
                    got.failures["restart_new_port_redial"] += 1
                if r < heal_rounds:
                    if ok:
                        step = partial(reconnect_after_heal, rnd, heal_rounds)
                        await _one(got, "reconnect_after_heal", label, step)
                    else:
                        got.failures["reconnect_after_heal"] += 1
            finally:
                with trio.CancelScope(shield=True):
                    await rnd.close()
            # ten hosts
            await mesh.sh("up", 10)
            rnd = Round(mesh, 10, workdir, f"r{r + 1}-n10")
            try:
                await _one(got, "discovery_all_connected_10", label, partial(all_connected, rnd))
            finally:
                with trio.CancelScope(shield=True):
                    await rnd.close()
    finally:
        with trio.CancelScope(shield=True):
            await mesh.sh("down", check=False)
            mesh.unlock()
    out = got.summary()
    missing = [f for f in FIGURES if not got.values[f]]
    if missing:
        raise DiscoveryError(f"no round succeeded for {', '.join(missing)} (logs: {workdir})")
    return out


# -- standalone ---------------------------------------------------------------------------------------


def report(results: list[dict[str, Any]]) -> None:
    rows = []
    for res in results:
        values = res["rounds"]
        note = res["note"]
        rows.append(
            (
                res["figure"],
                f"{res['value']:.3f}",
                res["unit"],
                f"{note['ratio_to_probe']:.2f}" if "ratio_to_probe" in note else "",
                f"{min(values):.3f}..{max(values):.3f}" if len(values) > 1 else "",
                _fmt_note({k: v for k, v in note.items() if k != "ratio_to_probe"}),
            )
        )
    header = ("figure", "median", "unit", "/1.65s", "min..max", "notes (medians)")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print()
    for res in results:
        print(json.dumps(res))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python bench/discovery.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--rounds", type=int, default=None, help="default 3 (--quick: 1)")
    p.add_argument("--quick", action="store_true", help="one round, one 50 s cut: ~65 s")
    p.add_argument("--keep", action="store_true", help="keep the daemons' logs even on success")
    a = p.parse_args(argv)
    rounds = a.rounds if a.rounds is not None else (1 if a.quick else 3)
    if rounds < 1:
        p.error("--rounds must be at least 1")
    workdir = Path(tempfile.mkdtemp(prefix="acpb-discovery-", dir="/tmp"))
    t0 = time.monotonic()
    try:
        results = trio.run(measure, rounds, a.quick, workdir)
    except DiscoveryError as exc:
        log(f"discovery: FAILED: {exc} (logs: {workdir})")
        return 1
    report(results)
    failed = any("failed_rounds" in r["note"] for r in results)
    if a.keep or failed:
        log(f"daemon logs: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"done in {time.monotonic() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
