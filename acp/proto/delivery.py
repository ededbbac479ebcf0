"""Delivery bookkeeping (docs/protocol.md §7) as plain objects: outbox, seen-id window, inbox.

Nothing here reads a clock: every method that cares about time takes ``now`` (seconds, any epoch).
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque

import attrs

OUTBOX_TTL = 300.0  # seconds an un-ACKed envelope is kept
OUTBOX_LIMIT = 1000  # un-ACKed envelopes kept per peer
SEEN_WINDOW = 600.0  # seconds a (from, id) pair is remembered
SEEN_LIMIT = 16384  # ids remembered per sender at most (two generations of half that)


@attrs.define(eq=False)
class OutboxEntry:
    """One envelope waiting for its peer's ACK. ``origin`` identifies the IPC connection."""

    id: str
    wire: bytes
    urgent: bool
    deadline: float
    seq: int = 0
    origin: object = None
    row: int = 0  # its row in the durable outbox (0: not stored)
    sent: int = 0  # the order it was first put on the wire (0: not yet)


class OutboxFull(Exception):
    """The peer's outbox is at its bound; the sender is told ``outbox_full``."""


class Outbox:
    """Un-ACKed envelopes for one peer.

    Order: what was sent and not ACKed is resent first after a reconnect, in the order first sent;
    then urgent delegates; then everything else, first in first out.
    """

    def __init__(self, *, limit: int = OUTBOX_LIMIT, ttl: float = OUTBOX_TTL) -> None:
        self.limit = limit
        self.ttl = ttl
        self._seq = 0
        self._sent = 0
        self.hold_until: float | None = None  # the peer's inbox was full: send nothing before
        self._clear()

    def _clear(self) -> None:
        self._resend: deque[OutboxEntry] = deque()
        self._urgent: deque[OutboxEntry] = deque()
        self._normal: deque[OutboxEntry] = deque()
        self._inflight: OrderedDict[int, OutboxEntry] = OrderedDict()
        self._by_id: dict[str, list[OutboxEntry]] = {}
        self._dead: set[int] = set()  # seqs removed (ACKed, expired) but still in a deque
        self._count = 0  # entries held: len() is on the per-send path, so it must not count

    def __len__(self) -> int:
        return self._count

    def pending(self) -> int:
        """Entries queued and not yet sent on the current session."""
        return len(self) - len(self._inflight)

    def put(
        self,
        env_id: str,
        wire: bytes,
        *,
        urgent: bool,
        now: float,
        origin: object = None,
        deadline: float | None = None,
        force: bool = False,
    ) -> OutboxEntry:
        """Queue an envelope; ``deadline`` (default now + ttl) for one read back after a restart,
        which ``force`` admits past the bound (it was accepted once already)."""
        if len(self) >= self.limit and not force:
            raise OutboxFull(f"outbox holds {self.limit} un-ACKed envelopes already")
        self._seq += 1
        if deadline is None:
            deadline = now + self.ttl
        entry = OutboxEntry(env_id, wire, urgent, deadline, self._seq, origin)
        (self._urgent if urgent else self._normal).append(entry)
        self._by_id.setdefault(env_id, []).append(entry)
        self._count += 1
        return entry

    def _pop_live(self, queue: deque[OutboxEntry]) -> OutboxEntry | None:
        while queue:
            entry = queue.popleft()
            if entry.seq in self._dead:
                self._dead.discard(entry.seq)
                continue
            return entry
        return None

    def next_to_send(self) -> OutboxEntry | None:
        """The next entry to put on the wire; it stays held (in flight) until ACKed."""
        for queue in (self._resend, self._urgent, self._normal):
            entry = self._pop_live(queue)
            if entry is not None:
                if not entry.sent:
                    self._sent += 1
                    entry.sent = self._sent
                self._inflight[entry.seq] = entry
                return entry
        return None

    def take_batch(self, max_bytes: int, now: float | None = None) -> list[OutboxEntry]:
        """Several entries at once (at least one if any), up to about ``max_bytes`` of wire;
        none while the peer asked us to hold off (``now`` before ``hold_until``)."""
        batch: list[OutboxEntry] = []
        if self.hold_until is not None:
            if now is not None and now < self.hold_until:
                return batch
            self.hold_until = None
        size = 0
        while size < max_bytes and (entry := self.next_to_send()) is not None:
            batch.append(entry)
            size += len(entry.wire)
        return batch

    def ack(self, env_id: str) -> OutboxEntry | None:
        """Remove the oldest in-flight entry with this id; None if there is none (late ACK)."""
        entries = self._by_id.get(env_id)
        if not entries:
            return None
        for i, entry in enumerate(entries):
            if entry.seq in self._inflight:
                del entries[i]
                if not entries:
                    del self._by_id[env_id]
                del self._inflight[entry.seq]
                self._count -= 1
                return entry
        return None

    def retry_later(self, entry: OutboxEntry, until: float) -> None:
        """Take back an entry the peer refused for now (``inbox_full``, ACKed away already):
        it goes back in front, in the order first sent, and nothing is sent before ``until``."""
        self._by_id.setdefault(entry.id, []).append(entry)
        self._count += 1
        queue = list(self._resend)
        bisect.insort(queue, entry, key=lambda e: e.sent)
        self._resend = deque(queue)
        self.hold_until = until if self.hold_until is None else max(self.hold_until, until)

    def session_lost(self) -> None:
        """Put everything in flight back in front, in the order it was first sent."""
        if self._inflight:
            back = list(self._inflight.values())
            self._inflight.clear()
            # with any refused ones waiting to be offered again (retry_later): in send order
            self._resend = deque(sorted([*back, *self._resend], key=lambda e: e.sent))

    def expire(self, now: float) -> list[OutboxEntry]:
        """Remove and return every entry whose TTL has passed."""
        gone: list[OutboxEntry] = []
        if not self._count:
            return gone
        for env_id in list(self._by_id):
            keep = []
            for entry in self._by_id[env_id]:
                if entry.deadline <= now:
                    gone.append(entry)
                else:
                    keep.append(entry)
            if keep:
                self._by_id[env_id] = keep
            else:
                del self._by_id[env_id]
        for entry in gone:
            if self._inflight.pop(entry.seq, None) is None:
                self._dead.add(entry.seq)
        self._count -= len(gone)
        if len(self._dead) > max(64, self._count):
            # A peer that stays away: drop the expired entries (and their bytes) from the queues
            # now rather than when a session would pop them.
            dead = self._dead
            for name in ("_resend", "_urgent", "_normal"):
                queue: deque[OutboxEntry] = getattr(self, name)
                setattr(self, name, deque(e for e in queue if e.seq not in dead))
            dead.clear()
        gone.sort(key=lambda e: e.seq)
        return gone

    def next_deadline(self) -> float | None:
        deadlines = [e.deadline for v in self._by_id.values() for e in v]
        return min(deadlines) if deadlines else None

    def drain(self) -> list[OutboxEntry]:
        """Remove and return everything (the peer is forgotten)."""
        everything = sorted((e for v in self._by_id.values() for e in v), key=lambda e: e.seq)
        self._clear()
        return everything


class SeenWindow:
    """Remembers which envelope ids each sender used, so duplicates are ACKed, not redelivered.

    Why not a dict of (from, id) -> time: at thousands of envelopes a second that holds ~370 bytes
    per envelope for 10 minutes (tens of MiB). Here each sender has two generations of hashed ids:
    the current one is retired when it is ``window`` seconds old or holds ``limit // 2`` ids, and
    the one before it is dropped at that moment. So an id is remembered for at least ``window``
    seconds (docs/protocol.md §6) as long as its sender sends fewer than ``limit // 2`` envelopes per
    ``window``; a faster sender's ids are remembered for its last ``limit // 2`` envelopes at least,
    which is far more than any sender resends (it resends only what is in its outbox). Memory is
    about 60 bytes per id, at most ``limit`` ids per sender. Ids are hashed with Python's keyed
    (per-process) SipHash: a false "duplicate" needs a 64-bit collision within one sender's ids.
    """

    def __init__(self, *, window: float = SEEN_WINDOW, limit: int = SEEN_LIMIT) -> None:
        self.window = window
        self.limit = limit
        self._senders: dict[str, _Generations] = {}

    def __len__(self) -> int:
        return sum(len(g.current) + len(g.previous) for g in self._senders.values())

    def seen(self, sender: str, env_id: str, now: float) -> bool:
        """Whether ``env_id`` from ``sender`` is remembered."""
        gens = self._senders.get(sender)
        if gens is None:
            return False
        gens.rotate(now, self.window, self.limit)
        h = hash(env_id)
        return h in gens.current or h in gens.previous

    def add(self, sender: str, env_id: str, now: float) -> None:
        gens = self._senders.get(sender)
        if gens is None:
            gens = self._senders[sender] = _Generations(now)
        gens.rotate(now, self.window, self.limit)
        gens.current.add(hash(env_id))

    def discard(self, sender: str, env_id: str) -> None:
        """Forget an id (it could not be stored after all: a resend must not count as a copy)."""
        gens = self._senders.get(sender)
        if gens is not None:
            h = hash(env_id)
            gens.current.discard(h)
            gens.previous.discard(h)

    def check_and_add(self, sender: str, env_id: str, now: float) -> bool:
        """True if already remembered (a duplicate); remembers it otherwise."""
        if self.seen(sender, env_id, now):
            return True
        self.add(sender, env_id, now)
        return False

    def prune(self, now: float) -> None:
        """Forget senders with nothing left to remember (peers that went away)."""
        for sender in [s for s, g in self._senders.items() if now - g.started >= 2 * self.window]:
            del self._senders[sender]


class _Generations:
    __slots__ = ("current", "previous", "started")

    def __init__(self, now: float) -> None:
        self.current: set[int] = set()
        self.previous: set[int] = set()
        self.started = now

    def rotate(self, now: float, window: float, limit: int) -> None:
        age = now - self.started
        if age >= window or len(self.current) >= limit // 2:
            # After two windows of silence the previous generation is too old to keep as well.
            self.previous = self.current if age < 2 * window else set()
            self.current = set()
            self.started = now
