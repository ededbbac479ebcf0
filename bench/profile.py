"""Profile both ends of a pair with py-spy while the latency or the throughput loop runs.

    bash bench/run is not needed; run it inside a network namespace, as root (py-spy ptraces):
    unshare -n sh -c 'ip link set lo up && .venv/bin/python bench/profile.py --target acp --loop latency'

For each process of the pair (the sending end, then the receiving end) it records folded stacks
with ``py-spy record --gil --format raw`` (only samples holding the GIL: where Python spends the
interpreter, which is what the other thread and the loop compete for), keeps them in ``--out``
(one ``<target>-<loop>-<end>.txt`` each, loadable by speedscope or flamegraph.pl) and prints, per
end, the functions with the most samples on the stack (inclusive) and on top (self), as % of that
process's GIL samples. ``--no-gil`` records every sample (idle included) instead.

Needs py-spy (``pip install py-spy``). Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
from pathlib import Path

import trio
from acp_target import AcpTarget
from common import SIZES, measure_latency, measure_throughput, wait_connected
from limit import LimitTarget


def summarise(path: Path, top: int) -> str:
    """The top inclusive and self functions of one folded-stack file, as % of its samples."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [f.split(" (")[0] + " " + _where(f) for f in stack.split(";")]
        for name in set(frames):
            inclusive[name] += count
        own[frames[-1]] += count
    if not total:
        return f"{path.name}: no samples\n"
    lines = [f"{path.name}: {total} samples"]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        lines.append(f"  {title}:")
        for name, count in counter.most_common(top):
            lines.append(f"    {100 * count / total:5.1f}%  {name}")
    return "\n".join(lines) + "\n"


def _where(frame: str) -> str:
    """``(path/to/file.py:12)`` -> ``file.py`` (the line numbers split one function otherwise)."""
    inside = frame.partition(" (")[2].rstrip(")")
    return inside.rsplit("/", 1)[-1].split(":")[0]


async def profile(args: argparse.Namespace) -> None:
    target = (
        AcpTarget()
        if args.target == "acp"
        else LimitTarget(batch=args.target != "limit", durable=args.target == "limit-durable")
    )
    out = Path(args.out)
    size = SIZES[args.size]
    with tempfile.TemporaryDirectory(prefix="acp-profile-") as tmp:
        workdir = Path(tmp)
        async with target.open_pairs(1, workdir) as pairs:
            pair = pairs[0]
            if args.target == "acp":
                await wait_connected(pair.send_sock)
            files = []
            async with trio.open_nursery() as nursery:
                for end, pid in zip(("sender", "receiver"), pair.pids, strict=True):
                    path = out / f"{args.target}-{args.loop}-{args.size}-{end}.txt"
                    files.append(path)
                    argv = [
                        args.py_spy, "record", "--pid", str(pid), "--rate", str(args.rate),
                        "--duration", str(int(args.seconds)), "--format", "raw", "--output", str(path),
                        "--nonblocking",
                    ]
                    if args.gil:
                        argv.append("--gil")
                    nursery.start_soon(run_quiet, argv)
                await trio.sleep(1.0)  # py-spy attached
                if args.loop == "latency":
                    lat = await measure_latency(pair, size, args.count, 100, workdir)
                    print(f"latency p50 {lat.p50_us:.0f} us, p99 {lat.p99_us:.0f} us", flush=True)
                else:
                    tp = await measure_throughput(pairs, size, args.seconds - 2, 0.5, workdir)
                    print(f"throughput {tp.msgs_per_s:.0f} msg/s", flush=True)
    for path in files:
        print(summarise(path, args.top))


async def run_quiet(argv: list[str]) -> None:
    await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="acp", choices=("acp", "limit", "limit-batch", "limit-durable"))
    p.add_argument("--loop", default="latency", choices=("latency", "throughput"))
    p.add_argument("--size", default="1KiB", choices=sorted(SIZES))
    p.add_argument("--seconds", type=float, default=8.0, help="how long py-spy records")
    p.add_argument("--count", type=int, default=6000, help="latency: envelopes measured")
    p.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--no-gil", dest="gil", action="store_false")
    p.add_argument("--out", default=str(Path(__file__).parent / "profiles"))
    p.add_argument("--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"))
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    trio.run(profile, args)


if __name__ == "__main__":
    main()
