"""How far is acp from the limit? Run every figure for every target and compare the medians.

Two shared cores are noisy, so one run of one figure proves nothing: each figure is measured in
several rounds (``--rounds``, default 5), the order of the targets rotates every round so neither
always goes first, and the report shows the median with the spread. The limit (limit.py) is the
baseline: ``ratio`` is a target's median over the limit's median for the same figure. Nothing here
asserts a time.

Figures (select groups with ``--only latency,throughput``):
  latency     one-way latency, one envelope at a time, 1 KiB and 60 KiB envelopes: p50, p99 in us
  throughput  envelopes/s and MB/s (10**6 bytes of envelope JSON), 1 KiB and 60 KiB, one sender to
              one receiver, and four senders to four receivers (each pair its own chain)
  coldstart   exec to exit: limit ``python -c pass``, acp ``acp --version``, in ms
  rss         limit: a python that imports acp's dependencies (the floor); acp: the idle daemon;
              VmRSS and VmHWM in MiB

Output: a table, then one JSON line per figure and target:
  {"figure": ..., "target": ..., "value": ..., "unit": ..., "baseline": ..., "ratio": ..., "rounds": [...]}

Run it through ``bash bench/run`` (root, or user namespaces): acp only runs inside a private
network namespace, so mDNS never touches the real interfaces. ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import trio
from acp_target import AcpTarget
from common import (
    SIZES,
    BenchError,
    Target,
    cold_start_times,
    measure_latency,
    measure_throughput,
)
from limit import LimitTarget

GROUPS = ("latency", "throughput", "coldstart", "rss")
NETNS_ENV = "ACP_BENCH_NETNS"  # set by bench/run inside its network namespace
MANY_PAIRS = 4


@attrs.frozen
class Settings:
    rounds: int = 5
    latency_count: int = 1000  # measured envelopes per latency figure
    latency_warmup: int = 100
    duration: float = 2.0  # seconds of sending per throughput figure
    warmup: float = 0.5  # seconds of unmeasured sending first
    cold_runs: int = 10  # cold starts per round (the round's value is their median)


QUICK = Settings(
    rounds=1, latency_count=200, latency_warmup=20, duration=0.5, warmup=0.2, cold_runs=3
)


@attrs.frozen
class Sample:
    figure: str
    value: float
    unit: str
    note: dict[str, float] = attrs.field(factory=dict)  # e.g. CPU cores used


Group = Callable[[Target, Settings, Path], Awaitable[list[Sample]]]


async def latency_group(target: Target, s: Settings, workdir: Path) -> list[Sample]:
    out = []
    async with target.open_pairs(1, workdir) as (pair,):
        for label, size in SIZES.items():
            lat = await measure_latency(pair, size, s.latency_count, s.latency_warmup, workdir)
            note = {"max_us": lat.max_us, "other_cores": lat.other_cores}
            out.append(Sample(f"latency_p50_{label}", lat.p50_us, "us", note))
            out.append(Sample(f"latency_p99_{label}", lat.p99_us, "us", note))
    return out


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
    times = await trio.to_thread.run_sync(cold_start_times, target.cold_start_argv(), s.cold_runs)
    return [Sample("cold_start", statistics.median(times) * 1e3, "ms")]


async def rss_group(target: Target, s: Settings, workdir: Path) -> list[Sample]:
    mem = await target.memory(workdir)
    return [Sample("rss", mem.rss_kib / 1024, "MiB"), Sample("rss_peak", mem.hwm_kib / 1024, "MiB")]


GROUP_FUNCS: dict[str, Group] = {
    "latency": latency_group,
    "throughput": throughput_group,
    "coldstart": coldstart_group,
    "rss": rss_group,
}
TARGETS: dict[str, Callable[[], Target]] = {
    "limit": LimitTarget,
    "limit-batch": lambda: LimitTarget(batch=True),
    "acp": AcpTarget,
}


def make_workdir(label: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"acpb-{label}-", dir="/tmp"))
    for sub in ("x1", f"x{MANY_PAIRS}"):
        (path / sub).mkdir()
    return path


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def run_all(
    targets: list[Target], groups: list[str], s: Settings
) -> tuple[dict[tuple[str, str], list[Sample]], int]:
    """Every group x target x round; the samples by (figure, target), and the failure count."""
    samples: dict[tuple[str, str], list[Sample]] = {}
    failures = 0
    for r in range(s.rounds):
        order = targets[r % len(targets) :] + targets[: r % len(targets)]
        for group in groups:
            for target in order:
                workdir = make_workdir(f"{target.name}-{group}")
                t0 = time.monotonic()
                try:
                    got = await GROUP_FUNCS[group](target, s, workdir)
                except Exception as exc:  # one target failing must not lose the others' figures
                    failures += 1
                    if not isinstance(exc, (BenchError, trio.TooSlowError, OSError)):
                        traceback.print_exc()
                    log(f"round {r + 1} {group} {target.name}: FAILED: {exc!r} (logs: {workdir})")
                    continue
                shutil.rmtree(workdir, ignore_errors=True)
                log(
                    f"round {r + 1}/{s.rounds} {group:<10} {target.name:<11} "
                    f"{time.monotonic() - t0:5.1f} s  "
                    + "  ".join(f"{x.figure}={x.value:.4g}" for x in got)
                )
                for x in got:
                    samples.setdefault((x.figure, target.name), []).append(x)
    return samples, failures


def report(samples: dict[tuple[str, str], list[Sample]], baseline_name: str) -> None:
    medians = {k: statistics.median(x.value for x in v) for k, v in samples.items()}
    rows = []
    lines = []
    for (figure, target), got in samples.items():
        value = medians[(figure, target)]
        baseline = medians.get((figure, baseline_name))
        ratio = value / baseline if baseline else None
        notes = {k: statistics.median(x.note[k] for x in got) for k in got[0].note}
        values = [x.value for x in got]
        rows.append(
            (
                figure,
                target,
                f"{value:.5g}",
                got[0].unit,
                "" if ratio is None else f"{ratio:.3f}",
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
                    "rounds": [round(v, 3) for v in values],
                }
            )
        )
    header = ("figure", "target", "median", "unit", "ratio", "min..max", "notes (medians)")
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
    a = p.parse_args(argv)
    groups = [g for g in a.only.split(",") if g]
    for g in groups:
        if g not in GROUPS:
            p.error(f"unknown group {g!r}; known: {', '.join(GROUPS)}")
    s = QUICK if a.quick else Settings()
    changes = {"rounds": a.rounds, "duration": a.duration, "latency_count": a.latency_count}
    s = attrs.evolve(s, **{k: v for k, v in changes.items() if v is not None})
    if s.rounds < 1:
        p.error("--rounds must be at least 1")
    names = a.targets.split(",") if a.targets else list(TARGETS)
    for n in names:
        if n not in TARGETS:
            p.error(f"unknown target {n!r}; known: {', '.join(TARGETS)}")
    return Args(names, a.targets is not None, groups, a.baseline, s)


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
    t0 = time.monotonic()
    samples, failures = trio.run(run_all, targets, args.groups, args.settings)
    report(samples, args.baseline)
    log(f"done in {time.monotonic() - t0:.0f} s, {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
