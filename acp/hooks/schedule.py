"""When a hook runs, and for which envelopes: the sans-I/O core of docs/hooks.md.

A ``Schedule`` holds what one hook still owes: the stored, unread, matching items it has not
finished (``Pending``), grouped by sender in seq order. ``take(now)`` says what to run next, or
when to ask again; ``finished`` applies an outcome. The trio side (``runner.py``) carries the runs
out and stores what ``finished`` returns. Nothing here reads a clock or does I/O.

The rules:
- at most ``concurrency`` runs at once; oldest item first across senders;
- ``coalesce`` > 0: a sender's run starts ``coalesce`` seconds after the first item of its burst,
  and stands for every item of that sender then pending;
- ``max_per_minute``: runs started per sender in the last 60 s; a sender at its limit waits, and
  its next run stands for everything it sent meanwhile (coalesced, counted, never dropped);
- a failed run gates the whole hook for a backoff that grows with the consecutive failures (so
  an endpoint that is down is probed, not flooded), and puts its items back, each with its own
  backoff one step longer (so when the gate opens the others go first, and one envelope that
  always fails does not hold up the rest);
- an item still failing ``give_up_after`` seconds after it was stored is given up on.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from acp.proto import backoff

WINDOW = 60.0  # seconds over which max_per_minute counts runs
RETRY_AFTER_MAX = 3600.0  # a Retry-After longer than this is cut to it
JITTER = 0.2

OK = "ok"
RETRY = "retry"
GIVE_UP = "give_up"

# the hook's state, as `acp hooks` shows it
STATE_OK = "ok"
STATE_RETRYING = "retrying"
STATE_FAILING = "failing"


@attrs.define(eq=False, slots=True)
class Pending:
    """One item a hook owes a run."""

    seq: int
    sender: str | None
    stored_at: float  # trio clock: when it was stored (coalescing counts from here)
    deadline: float  # trio clock: given up on if still failing then
    attempts: int = 0  # failed runs that stood for it
    not_before: float = 0.0  # its own backoff after a failure


@attrs.define(eq=False)
class Run:
    """One run of the hook: it stands for ``items`` (one sender, seq order); the newest is the one
    handed over."""

    items: list[Pending]
    started: float
    handed_over: int = 0  # the seq of the item the run hands over (the newest still unread)


@attrs.define
class Counters:
    """What `acp hooks` reports; kept across restarts (the runner stores them)."""

    delivered: int = 0  # items a successful run stood for
    runs: int = 0
    failures: int = 0  # runs that failed
    given_up: int = 0  # items given up on
    coalesced: int = 0  # items that rode along in another item's run
    last_error: str | None = None
    last_ok: float | None = None  # unix seconds
    state: str = STATE_OK

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: object) -> Counters:
        if not isinstance(data, dict):
            return cls()
        names = {f.name for f in attrs.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError:
            return cls()


class Schedule:
    def __init__(
        self,
        *,
        concurrency: int = 1,
        coalesce: float = 0.0,
        max_per_minute: int = 0,
        backoff_max: float = 300.0,
        counters: Counters | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.concurrency = concurrency
        self.coalesce = coalesce
        self.max_per_minute = max_per_minute
        self.backoff_max = backoff_max
        self.counters = counters if counters is not None else Counters()
        self._rng = rng
        self._pending: dict[str | None, dict[int, Pending]] = {}
        self._count = 0
        self.running = 0
        self.failing = 0  # consecutive failed runs
        self.gate = 0.0  # no run starts before this (the hook's own backoff)
        self.waiting_until: float | None = None  # what the last take() said to wait for
        self._windows: dict[str | None, deque[float]] = {}
        self._limited: set[str | None] = set()

    def __len__(self) -> int:
        return self._count

    # -- what it owes ----------------------------------------------------------------------------

    def add(self, item: Pending) -> None:
        items = self._pending.setdefault(item.sender, {})
        if items and next(reversed(items)) > item.seq:  # out of order (a retry): keep seq order
            items[item.seq] = item
            self._pending[item.sender] = dict(sorted(items.items()))
        else:
            items[item.seq] = item
        self._count += 1

    def drop(self, seqs: Iterable[int]) -> int:
        """Items read meanwhile: owed nothing any more. Returns how many were pending."""
        wanted = set(seqs)
        gone = 0
        for sender, items in list(self._pending.items()):
            for seq in wanted.intersection(items):
                del items[seq]
                gone += 1
            if not items:
                del self._pending[sender]
        self._count -= gone
        return gone

    # -- deciding --------------------------------------------------------------------------------

    def expired(self, now: float) -> list[Pending]:
        """Items past their deadline, taken out: give up on them (store that, count it)."""
        out: list[Pending] = []
        for sender, items in list(self._pending.items()):
            for seq, item in list(items.items()):
                if item.deadline > now:
                    break  # seq order is stored order: the rest are younger
                del items[seq]
                out.append(item)
            if not items:
                del self._pending[sender]
        self._count -= len(out)
        if out:
            self.counters.given_up += len(out)
            self.counters.state = STATE_FAILING
            self.counters.last_error = f"gave up on {len(out)} envelope(s) still failing"
        return out

    def take(self, now: float) -> Run | float | None:
        """The run to start now; else the time to ask again (None: when something changes)."""
        self.waiting_until = None
        if self.running >= self.concurrency or not self._count:
            return None
        if now < self.gate:
            self.waiting_until = self.gate
            return self.gate
        best: tuple[int, str | None, Pending] | None = None
        wake: float | None = None
        for sender, items in self._pending.items():
            first = next((i for i in items.values() if i.not_before <= now), None)
            if first is None:
                at = min(i.not_before for i in items.values())
            else:
                at = max(self._allowed_at(sender, now), first.stored_at + self.coalesce)
                if at <= now:
                    if best is None or first.seq < best[0]:
                        best = (first.seq, sender, first)
                    continue
            wake = at if wake is None else min(wake, at)
        if best is None:
            self.waiting_until = wake
            return wake
        _, sender, first = best
        items = self._pending[sender]
        if self.coalesce or sender in self._limited:
            chosen = [i for i in items.values() if i.not_before <= now]
            self._limited.discard(sender)
        else:
            chosen = [first]
        for item in chosen:
            del items[item.seq]
        if not items:
            del self._pending[sender]
        self._count -= len(chosen)
        self.running += 1
        self.counters.runs += 1
        self.counters.coalesced += len(chosen) - 1
        if self.max_per_minute:
            self._windows.setdefault(sender, deque()).append(now)
        return Run(chosen, now)

    def _allowed_at(self, sender: str | None, now: float) -> float:
        if not self.max_per_minute:
            return now
        window = self._windows.get(sender)
        if window is None:
            return now
        while window and window[0] <= now - WINDOW:
            window.popleft()
        if not window:
            del self._windows[sender]
            return now
        if len(window) < self.max_per_minute:
            return now
        self._limited.add(sender)
        return window[0] + WINDOW

    # -- outcomes --------------------------------------------------------------------------------

    def abandon(self, run: Run) -> None:
        """A run that was not carried out (its items were read before it started)."""
        self.running -= 1
        self.counters.runs -= 1
        self.counters.coalesced -= len(run.items) - 1

    def finished(
        self,
        run: Run,
        outcome: str,
        now: float,
        *,
        error: str | None = None,
        retry_after: float | None = None,
        unix_now: float | None = None,
    ) -> list[Pending]:
        """Apply a run's outcome; returns the items given up on by it (past their deadline, or
        a permanent failure). On RETRY the others are pending again."""
        self.running -= 1
        c = self.counters
        if outcome == OK:
            c.delivered += len(run.items)
            c.last_ok = unix_now
            c.state = STATE_OK
            self.failing = 0
            self.gate = 0.0
            return []
        c.last_error = error
        if outcome == GIVE_UP:
            c.given_up += len(run.items)
            c.state = STATE_FAILING
            self.failing = 0
            self.gate = 0.0
            return list(run.items)
        c.failures += 1
        c.state = STATE_RETRYING
        self.failing += 1
        gate = self._delay(self.failing)
        if retry_after is not None:
            gate = max(gate, min(retry_after, RETRY_AFTER_MAX))
        self.gate = now + gate
        gone = []
        for item in run.items:
            item.attempts += 1
            if item.deadline <= now:
                gone.append(item)
                continue
            # a step behind the hook's gate: when it opens, the others go first, so that one
            # envelope that always fails does not hold up the rest
            item.not_before = now + self._delay(item.attempts + 1)
            self.add(item)
        if gone:
            c.given_up += len(gone)
        return gone

    def _delay(self, attempt: int) -> float:
        return backoff.delay(attempt, cap=self.backoff_max, jitter=JITTER, rng=self._rng)

    def next_try(self, now: float) -> float | None:
        """Seconds until the next run of what is pending waits for (a retry's backoff, the
        coalescing time, a sender's per-minute limit); None if nothing waits for a time."""
        if not self._count or self.waiting_until is None:
            return None
        return max(0.0, self.waiting_until - now)
