"""Counters, and the periodic stats line the daemon logs."""

from __future__ import annotations

import logging
from collections import Counter

import trio
import trio_util

from acp.text import one_line

log = logging.getLogger(__name__)


class Stats:
    """Named counters; ``refused`` and ``rejected`` are keyed by reason/ACK code."""

    def __init__(self) -> None:
        self.c: Counter[str] = Counter()

    def inc(self, name: str, n: int = 1) -> None:
        self.c[name] += n

    def __getitem__(self, name: str) -> int:
        return self.c[name]

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.c.items()))


async def run(
    stats: Stats, interval: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Log a one-line summary of the counters every ``interval`` seconds, when they changed."""
    task_status.started()
    last: dict[str, int] = {}
    async for _ in trio_util.periodic(interval):
        snap = stats.snapshot()
        if snap != last:
            # a key may end in a code a peer chose (undelivered.<its ACK error>): escaped
            log.info("stats %s", " ".join(f"{one_line(k, 100)}={v}" for k, v in snap.items()))
            last = snap
