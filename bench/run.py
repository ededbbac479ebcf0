"""How far is acp from the limit? Run every figure for every target and compare the medians.

Two shared cores are noisy, so one run of one figure proves nothing: each figure is measured in
several rounds (``--rounds``, default 5), the order of the targets rotates every round so neither
always goes first, and the report shows the median with the spread. The limits (limit.py) are the
baselines: the columns ``x limit`` and ``x durable`` are a target's median over ``limit``'s and
``limit-durable``'s for the same figure in the same run, and ``goal`` checks each figure against the
target bench/README.md names for it (latency against limit-durable, 1 KiB throughput against
limit-batch, 60 KiB throughput, RSS and cold start against limit). Nothing here asserts a time.

Figures (select groups with ``--only latency,throughput``; bench/README.md says more):
  latency     one-way latency, one envelope at a time, 1 KiB and 60 KiB envelopes: p50, p99 in us
  throughput  envelopes/s and MB/s (10**6 bytes of envelope JSON), 1 KiB and 60 KiB, one sender to
              one receiver, and four senders to four receivers (each pair its own chain)
  netns       latency p50/p99 of 1 KiB envelopes with the two ends in two network namespaces
              joined by a veth pair (needs real root)
  coldstart   exec to exit of ``acp send PEER hi``, ``acp peers``, ``acp status`` against a running
              daemon; limit: the floor (python -c "import cyclopts" + a stdlib client - python)
  startup     exec of an endpoint to its IPC socket answering ``status``, in ms
  rss         VmRSS in MiB: idle daemon (mDNS off, on), hub with 10 peers (limit: the floor, a
              python importing acp's dependencies); before/after a flood of 1 KiB envelopes
              (limit: a relay pair, the same flood; --flood-rounds of the rounds)
  idlecpu     % of one core over one window (--idle-seconds; --idle-rounds of the rounds), every
              target at the same time: hub with 10 peers, its leaves, a pair with mDNS on
              (limit: an idle relay pair)

Groups whose figure would be the same for limit and limit-batch or limit-durable (coldstart,
startup, rss, idlecpu) skip those when limit runs. Output: a table (with a ``goal`` column where
bench/README.md states a target: nothing is asserted), then one JSON line per figure and target
(``ratio`` divides by ``--baseline``, ``ratios`` by every other target of the run):
  {"figure": ..., "target": ..., "value": ..., "unit": ..., "baseline": ..., "ratio": ...,
   "ratios": {...}, "rounds": [...]}

Run it through ``bash bench/run`` (root, or user namespaces): acp only runs inside a private
network namespace, so mDNS never touches the real interfaces. ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import attrs
import discovery
import lifecycle
import trio
import veth
from acp_target import AcpBaselineTarget, AcpTarget
from common import (
    SIZES,
    BenchError,
    Sample,
    Target,
    measure_latency,
    measure_throughput,
)
from limit import LimitTarget

GROUPS = ("latency", "throughput", "netns", "coldstart", "startup", "rss", "idlecpu", "discovery")
NETNS_ENV = "ACP_BENCH_NETNS"  # set by bench/run inside its network namespace
MANY_PAIRS = 4
TWINS = {"limit-batch": "limit", "limit-durable": "limit"}  # a target whose figures equal another's in some groups


@attrs.frozen
class Settings:
    rounds: int = 5
    latency_count: int = 1000  # measured envelopes per latency figure
    latency_warmup: int = 100
    duration: float = 2.0  # seconds of sending per throughput figure
    warmup: float = 0.5  # seconds of unmeasured sending first
    cold_runs: int = 10  # runs of each command per round (the round's value is their median)
    startup_runs: int = 5  # starts per round (the round's value is their median)
    flood_messages: int = 100_000  # envelopes between the rss "before" and "after" readings
    flood_rounds: int = 2  # rounds that run the flood (each takes ~15 s)
    idle_seconds: float = 60.0  # the idle CPU window
    idle_rounds: int = 1  # rounds that measure idle CPU
    discovery_rounds: int = 2  # mesh rounds inside the discovery group (it runs once)
    quick_discovery: bool = False


QUICK = Settings(
    rounds=1,
    latency_count=200,
    latency_warmup=20,
    duration=0.5,
    warmup=0.2,
    cold_runs=3,
    startup_runs=2,
    flood_messages=10_000,
    flood_rounds=1,
    idle_seconds=10.0,
    idle_rounds=1,
    discovery_rounds=1,
    quick_discovery=True,
)

Group = Callable[[Target, Settings, Path], Awaitable[list[Sample]]]
JointGroup = Callable[[list[Target], Settings, Path], Awaitable[dict[str, list[Sample]]]]


async def latency_group(target: Target, s: Settings, workdir: Path) -> list[Sample]:
    out = []
    async with target.open_pairs(1, workdir) as (pair,):
        for label, size in SIZES.items():
            lat = await measure_latency(pair, size, s.latency_count, s.latency_warmup, workdir)
            note = {"max_us": lat.max_us, "other_cores": lat.other_cores}
            out.append(Sample(f"latency_p50_{label}", lat.p50_us, "us", note))
            out.append(Sample(f"latency_p99_{label}", lat.p99_us, "us", note))
    return out


async def netns_group(target: Target, s: Settings, workdir: Path) -> list[Sample]:
    """The latency figure for 1 KiB, sender and receiver in two namespaces joined by veth."""
    size = SIZES["1KiB"]
    async with veth.veth_pair() as place, target.open_pairs(1, workdir, place) as (pair,):
        lat = await measure_latency(pair, size, s.latency_count, s.latency_warmup, workdir)
    note = {"max_us": lat.max_us, "other_cores": lat.other_cores}
    return [
        Sample("latency_netns_p50_1KiB", lat.p50_us, "us", note),
        Sample("latency_netns_p99_1KiB", lat.p99_us, "us", note),
    ]


async def throughput_group(target: Target, s: Settings, workdir: Path) -> list[Sample]:
    out = []
    for count in (1, MANY_PAIRS):
        async with target.open_pairs(count, workdir / f"x{count}") as pairs:
            for label, size in SIZES.items():
                tp = await measure_throughput(pairs, size, s.duration, s.warmup, workdir)
                note = {
                    "client_cores": tp.client_cores,
                    "target_cores": tp.target_cores,
                    "other_cores": tp.other_cores,
                }
                name = f"{label}_x{count}"
                out.append(Sample(f"throughput_{name}", tp.msgs_per_s, "msg/s", note))
                out.append(Sample(f"bandwidth_{name}", tp.mb_per_s, "MB/s", note))
    return out


async def coldstart_group(target: Target, s: Settings, workdir: Path) -> list[Sample]:
    return await lifecycle.coldstart(target, workdir, runs=s.cold_runs)


async def startup_group(target: Target, s: Settings, workdir: Path) -> list[Sample]:
    return await lifecycle.startup(target, workdir, runs=s.startup_runs)


async def rss_idle_group(target: Target, s: Settings, workdir: Path) -> list[Sample]:
    return await lifecycle.rss_idle(target, workdir)


async def rss_flood_group(target: Target, s: Settings, workdir: Path) -> list[Sample]:
    return await lifecycle.rss_flood(target, workdir, total=s.flood_messages)


async def idlecpu_group(
    targets: list[Target], s: Settings, workdir: Path
) -> dict[str, list[Sample]]:
    return await lifecycle.idle_cpu(targets, workdir, seconds=s.idle_seconds)


async def discovery_group(
    targets: list[Target], s: Settings, workdir: Path
) -> dict[str, list[Sample]]:
    """mDNS figures on a LAN of network namespaces (bench/discovery.py); acp only: the limit has
    no discovery. The reference (ratio_to_probe) is RFC 6762's ~1.65 s of probing."""
    if not any(t.name == "acp" for t in targets):
        return {}
    rows = await discovery.measure(s.discovery_rounds, s.quick_discovery, workdir)
    samples = [
        Sample(
            row["figure"], row["value"], row["unit"], {k: float(v) for k, v in row["note"].items()}
        )
        for row in rows
    ]
    return {"acp": samples}


@attrs.frozen
class Part:
    """One measurement in a group: per target (``run``) or all targets at once (``joint``)."""

    label: str
    run: Group | None = None
    joint: JointGroup | None = None
    rounds: Callable[[Settings], int] = lambda s: s.rounds  # measured in the first N rounds
    twins: bool = True  # False: skip a TWINS target when its twin runs (the figures are equal)


PARTS: dict[str, list[Part]] = {
    "latency": [Part("latency", latency_group)],
    "throughput": [Part("throughput", throughput_group)],
    "netns": [Part("netns", netns_group)],
    "coldstart": [Part("coldstart", coldstart_group, twins=False)],
    "startup": [Part("startup", startup_group, twins=False)],
    "rss": [
        Part("rss", rss_idle_group, twins=False),
        Part("rss-flood", rss_flood_group, rounds=lambda s: s.flood_rounds, twins=False),
    ],
    "idlecpu": [Part("idlecpu", joint=idlecpu_group, rounds=lambda s: s.idle_rounds, twins=False)],
    "discovery": [Part("discovery", joint=discovery_group, rounds=lambda s: 1, twins=False)],
}
TARGETS: dict[str, Callable[[], Target]] = {
    "limit": LimitTarget,
    "limit-batch": lambda: LimitTarget(batch=True),
    "limit-durable": lambda: LimitTarget(durable=True),
    "acp": AcpTarget,
    "acp-before": AcpBaselineTarget,
}
# Targets from bench/README.md (issue #13's), for the goal column: (figure regex, "<=" | ">=" | "<",
# bound, what the bound applies to: the ratio to that target's median in the same run, or "value").
GOALS = [
    (r"latency(_netns)?_p50_", "<=", 1.25, "limit-durable"),
    (r"latency(_netns)?_p99_", "<=", 1.5, "limit-durable"),
    (r"throughput_1KiB_", ">=", 1.0, "limit-batch"),
    (r"throughput_60KiB_", ">=", 1.0, "limit"),
    (r"rss_idle$", "<=", 1.15, "limit"),
    (r"coldstart_send$", "<=", 1.25, "limit"),
    (r"idle_cpu_10peers$", "<", 0.5, "value"),
]
# The ratio columns of the table: every figure against both limits, whatever --baseline is.
RATIO_COLUMNS = (("x limit", "limit"), ("x durable", "limit-durable"))
# Figures that are differences near zero: a ratio of two of them means nothing, so the table
# leaves it out (the JSON keeps the baseline); compare with the baseline's row above.
NO_RATIO = re.compile(r"rss_growth_")


def make_workdir(label: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"acpb-{label}-", dir="/tmp"))
    for sub in ("x1", f"x{MANY_PAIRS}"):
        (path / sub).mkdir()
    return path


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


T = TypeVar("T")


async def attempt(
    what: str, workdir: Path, measure: Callable[[], Awaitable[T]]
) -> tuple[T | None, float]:
    """Run one measurement; on failure log it (keeping ``workdir``'s logs) and return None.

    One target failing must not lose the others' figures. Returns the seconds it took, too.
    """
    t0 = time.monotonic()
    try:
        got = await measure()
    except Exception as exc:
        if not isinstance(exc, (BenchError, trio.TooSlowError, OSError)):
            traceback.print_exc()
        log(f"{what}: FAILED: {exc!r} (logs: {workdir})")
        return None, time.monotonic() - t0
    shutil.rmtree(workdir, ignore_errors=True)
    return got, time.monotonic() - t0


async def run_all(
    targets: list[Target], groups: list[str], s: Settings
) -> tuple[dict[tuple[str, str], list[Sample]], int]:
    """Every group x target x round; the samples by (figure, target), and the failure count."""
    samples: dict[tuple[str, str], list[Sample]] = {}
    failures = 0
    names = {t.name for t in targets}

    def record(r: int, part: Part, target: Target, got: list[Sample], seconds: float) -> None:
        log(
            f"round {r + 1}/{s.rounds} {part.label:<10} {target.name:<11} {seconds:5.1f} s  "
            + "  ".join(f"{x.figure}={x.value:.4g}" for x in got)
        )
        for x in got:
            samples.setdefault((x.figure, target.name), []).append(x)

    for r in range(s.rounds):
        order = targets[r % len(targets) :] + targets[: r % len(targets)]
        for group in groups:
            for part in PARTS[group]:
                if r >= part.rounds(s):
                    continue
                here = [
                    t
                    for t in order
                    if part.twins or TWINS.get(t.name, t.name) not in names - {t.name}
                ]
                if part.joint is not None:
                    joint = part.joint
                    workdir = make_workdir(part.label)
                    got_all, seconds = await attempt(
                        f"round {r + 1} {part.label}", workdir, partial(joint, here, s, workdir)
                    )
                    if got_all is None:
                        failures += 1
                        continue
                    for target in here:
                        record(r, part, target, got_all.get(target.name, []), seconds)
                    continue
                assert part.run is not None
                run = part.run
                for target in here:
                    workdir = make_workdir(f"{target.name}-{part.label}")
                    got, seconds = await attempt(
                        f"round {r + 1} {part.label} {target.name}",
                        workdir,
                        partial(run, target, s, workdir),
                    )
                    if got is None:
                        failures += 1
                        continue
                    record(r, part, target, got, seconds)
    return samples, failures


def goal(figure: str, target: str, value: float, unit: str, medians: dict[str, float]) -> str:
    """The README's target for this figure, and whether this median meets it ("" if none);
    ``medians``: the figure's median per target in this run."""
    for pattern, op, bound, of in GOALS:
        if re.match(pattern, figure):
            if target.startswith("limit"):  # the goals are acp's
                return ""
            if of == "value":
                x = value
            elif medians.get(of):
                x = value / medians[of]
            else:
                return f"(no {of} in this run)"
            met = x <= bound if op == "<=" else x >= bound if op == ">=" else x < bound
            versus = unit if of == "value" else f"x {of}"
            return f"{op}{bound}{versus} {'ok' if met else 'NO'}"
    return ""


def report(
    samples: dict[tuple[str, str], list[Sample]], baseline_name: str, target_order: list[str]
) -> None:
    """The table (each figure's targets together, in ``target_order``), then JSON lines."""
    medians = {k: statistics.median(x.value for x in v) for k, v in samples.items()}
    figures = list(dict.fromkeys(f for f, _ in samples))
    rows = []
    lines = []
    for figure in figures:
        for target in target_order:
            got = samples.get((figure, target))
            if not got:
                continue
            value = medians[(figure, target)]
            of_figure = {t: m for (f, t), m in medians.items() if f == figure}
            ratios = {
                t: value / m for t, m in of_figure.items() if m and not NO_RATIO.match(figure)
            }
            baseline = of_figure.get(baseline_name)
            ratio = ratios.get(baseline_name)
            notes = {k: statistics.median(x.note[k] for x in got) for k in got[0].note}
            values = [x.value for x in got]
            rows.append(
                (
                    figure,
                    target,
                    f"{value:.5g}",
                    got[0].unit,
                    *(f"{ratios[t]:.3f}" if t in ratios else "" for _, t in RATIO_COLUMNS),
                    goal(figure, target, value, got[0].unit, of_figure),
                    f"{min(values):.4g}..{max(values):.4g}" if len(values) > 1 else "",
                    " ".join(f"{k}={v:.3g}" for k, v in notes.items()),
                )
            )
            lines.append(
                json.dumps(
                    {
                        "figure": figure,
                        "target": target,
                        "value": round(value, 3),
                        "unit": got[0].unit,
                        "baseline": None if baseline is None else round(baseline, 3),
                        "ratio": None if ratio is None else round(ratio, 4),
                        "ratios": {t: round(x, 4) for t, x in ratios.items() if t != target},
                        "rounds": [round(v, 3) for v in values],
                        "notes": {k: round(v, 3) for k, v in notes.items()},
                    }
                )
            )
    header = (
        "figure",
        "target",
        "median",
        "unit",
        *(name for name, _ in RATIO_COLUMNS),
        "goal",
        "min..max",
        "notes (medians)",
    )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print()
    for line in lines:
        print(line)


@attrs.frozen
class Args:
    targets: list[str]
    explicit: bool  # --targets given: a target that cannot run is an error, not a skip
    groups: list[str]
    explicit_groups: bool  # --only given: a group that cannot run is an error, not a skip
    baseline: str
    settings: Settings


def parse_args(argv: list[str] | None) -> Args:
    p = argparse.ArgumentParser(
        prog="bench/run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--only", default=",".join(GROUPS), help="groups, comma-separated")
    p.add_argument("--targets", default=None, help="comma-separated; default: all that can run")
    p.add_argument("--baseline", default="limit", help="the target ratios divide by")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="one short round: a smoke run")
    p.add_argument("--duration", type=float, default=None, help="seconds per throughput figure")
    p.add_argument("--latency-count", type=int, default=None, help="envelopes per latency figure")
    p.add_argument("--flood-messages", type=int, default=None, help="envelopes of the rss flood")
    p.add_argument("--flood-rounds", type=int, default=None, help="rounds that run the rss flood")
    p.add_argument("--idle-seconds", type=float, default=None, help="the idle CPU window")
    p.add_argument("--idle-rounds", type=int, default=None, help="rounds that measure idle CPU")
    a = p.parse_args(argv)
    groups = [g for g in a.only.split(",") if g]
    for g in groups:
        if g not in GROUPS:
            p.error(f"unknown group {g!r}; known: {', '.join(GROUPS)}")
    s = QUICK if a.quick else Settings()
    changes = {
        "rounds": a.rounds,
        "duration": a.duration,
        "latency_count": a.latency_count,
        "flood_messages": a.flood_messages,
        "flood_rounds": a.flood_rounds,
        "idle_seconds": a.idle_seconds,
        "idle_rounds": a.idle_rounds,
    }
    s = attrs.evolve(s, **{k: v for k, v in changes.items() if v is not None})
    if s.rounds < 1:
        p.error("--rounds must be at least 1")
    names = a.targets.split(",") if a.targets else list(TARGETS)
    for n in names:
        if n not in TARGETS:
            p.error(f"unknown target {n!r}; known: {', '.join(TARGETS)}")
    return Args(
        names, a.targets is not None, groups, a.only != p.get_default("only"), a.baseline, s
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    targets: list[Target] = []
    for n in args.targets:
        target = TARGETS[n]()
        why = target.unavailable()
        if why is None and n == "acp" and not os.environ.get(NETNS_ENV):
            why = "acp runs only inside a private network namespace: use `bash bench/run`"
        if why is not None:
            if args.explicit:
                log(f"target {n}: {why}")
                return 2
            log(f"skipping target {n}: {why}")
            continue
        targets.append(target)
    if not targets:
        log("no target can run")
        return 2
    groups = args.groups
    if "netns" in groups:
        for name in veth.sweep():
            log(f"deleted network namespace {name}, left by a run that was killed")
        why = veth.unavailable()
        if why is not None:
            if args.explicit_groups:
                log(f"group netns: {why}")
                return 2
            log(f"skipping group netns: {why}")
            groups = [g for g in groups if g != "netns"]
    t0 = time.monotonic()
    samples, failures = trio.run(run_all, targets, groups, args.settings)
    report(samples, args.baseline, [t.name for t in targets])
    log(f"done in {time.monotonic() - t0:.0f} s, {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
