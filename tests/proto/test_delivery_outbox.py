"""Delivery bookkeeping (docs/protocol.md §7): Outbox, SeenWindow, and the reconnect Backoff."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from acp.proto.backoff import BACKOFF_CAP, BACKOFF_FIRST, BACKOFF_JITTER, Backoff
from acp.proto.delivery import (
    OUTBOX_LIMIT,
    OUTBOX_TTL,
    SEEN_WINDOW,
    Outbox,
    OutboxEntry,
    OutboxFull,
    SeenWindow,
)


def ids(entries: list[OutboxEntry]) -> list[str]:
    return [e.id for e in entries]


def send_all(box: Outbox) -> list[str]:
    out = []
    while (entry := box.next_to_send()) is not None:
        out.append(entry.id)
    return out


def test_defaults() -> None:
    assert (OUTBOX_TTL, OUTBOX_LIMIT, SEEN_WINDOW) == (300.0, 1000, 600.0)
    assert SEEN_WINDOW >= 600  # at least 10 minutes (§6)


def test_fifo() -> None:
    box = Outbox()
    for i in range(5):
        box.put(f"m{i}", b"x", urgent=False, now=0)
    assert len(box) == 5 and box.pending() == 5
    assert send_all(box) == ["m0", "m1", "m2", "m3", "m4"]
    assert len(box) == 5 and box.pending() == 0  # held until ACKed
    assert box.next_to_send() is None


def test_urgent_goes_ahead_of_queued_normal() -> None:
    box = Outbox()
    box.put("n1", b"", urgent=False, now=0)
    box.put("n2", b"", urgent=False, now=0)
    box.put("u1", b"", urgent=True, now=0)
    box.put("n3", b"", urgent=False, now=0)
    box.put("u2", b"", urgent=True, now=0)
    assert send_all(box) == ["u1", "u2", "n1", "n2", "n3"]


def test_urgent_is_not_ahead_of_in_flight() -> None:
    box = Outbox()
    box.put("n1", b"", urgent=False, now=0)
    box.put("n2", b"", urgent=False, now=0)
    box.put("n3", b"", urgent=False, now=0)
    assert ids([box.next_to_send(), box.next_to_send()]) == ["n1", "n2"]  # type: ignore[list-item]
    box.put("u1", b"", urgent=True, now=0)
    assert box.next_to_send().id == "u1"  # type: ignore[union-attr]
    # The session drops: what was already sent is resent first, urgent or not.
    box.put("u2", b"", urgent=True, now=0)
    box.session_lost()
    assert send_all(box) == ["n1", "n2", "u1", "u2", "n3"]


def test_session_lost_resends_in_flight_in_original_send_order() -> None:
    box = Outbox()
    box.put("n1", b"", urgent=False, now=0)
    box.put("u1", b"", urgent=True, now=0)
    box.put("n2", b"", urgent=False, now=0)
    assert send_all(box) == ["u1", "n1", "n2"]
    box.put("u2", b"", urgent=True, now=0)
    box.put("n3", b"", urgent=False, now=0)
    box.session_lost()
    assert box.pending() == 5
    assert send_all(box) == ["u1", "n1", "n2", "u2", "n3"]


def test_session_lost_twice_keeps_order() -> None:
    box = Outbox()
    for name in ("a", "b", "c"):
        box.put(name, b"", urgent=False, now=0)
    send_all(box)
    box.session_lost()
    assert box.next_to_send().id == "a"  # type: ignore[union-attr]
    box.session_lost()  # lost again while resending
    assert send_all(box) == ["a", "b", "c"]


def test_session_lost_with_nothing_in_flight() -> None:
    box = Outbox()
    box.put("a", b"", urgent=False, now=0)
    box.session_lost()
    assert send_all(box) == ["a"]


def test_ack_removes_oldest_in_flight_with_that_id() -> None:
    box = Outbox()
    e1 = box.put("dup", b"1", urgent=False, now=0)
    e2 = box.put("dup", b"2", urgent=False, now=0)
    box.put("other", b"3", urgent=False, now=0)
    assert box.ack("dup") is None  # nothing in flight yet
    assert box.next_to_send() is e1
    assert box.ack("dup") is e1
    assert box.ack("dup") is None  # e2 is queued, not in flight: a late ACK does nothing
    assert len(box) == 2
    assert box.next_to_send() is e2
    assert box.next_to_send().id == "other"  # type: ignore[union-attr]
    assert box.ack("dup") is e2
    assert box.ack("nope") is None
    assert len(box) == 1
    box.session_lost()
    assert send_all(box) == ["other"]


def test_ack_with_duplicates_all_in_flight() -> None:
    box = Outbox()
    entries = [box.put("same", bytes([i]), urgent=False, now=0) for i in range(3)]
    send_all(box)
    assert [box.ack("same") for _ in range(4)] == [*entries, None]
    assert len(box) == 0


def test_ttl_expiry_returns_queued_and_in_flight_and_never_sends_them() -> None:
    box = Outbox(ttl=10)
    box.put("old-sent", b"", urgent=False, now=0)
    box.put("old-urgent", b"", urgent=True, now=1)
    box.put("old-queued", b"", urgent=False, now=2)
    box.put("new", b"", urgent=False, now=5)
    assert box.next_to_send().id == "old-urgent"  # type: ignore[union-attr]
    assert box.next_to_send().id == "old-sent"  # type: ignore[union-attr]
    assert box.next_deadline() == 10
    assert box.expire(9.99) == []
    gone = box.expire(12)
    assert ids(gone) == ["old-sent", "old-urgent", "old-queued"]
    assert all(e.deadline <= 12 for e in gone)
    assert len(box) == 1
    assert box.ack("old-sent") is None
    box.session_lost()
    assert send_all(box) == ["new"]
    assert box.next_deadline() == 15
    assert ids(box.expire(15)) == ["new"]
    assert box.next_deadline() is None
    assert len(box) == 0


def test_expired_entry_in_resend_queue_is_not_resent() -> None:
    box = Outbox(ttl=10)
    box.put("a", b"", urgent=False, now=0)
    box.put("b", b"", urgent=False, now=5)
    send_all(box)
    box.session_lost()
    assert ids(box.expire(10)) == ["a"]
    assert send_all(box) == ["b"]


def test_limit_raises_outbox_full_until_space_frees() -> None:
    box = Outbox(limit=3, ttl=10)
    for i in range(3):
        box.put(f"m{i}", b"", urgent=False, now=i)
    with pytest.raises(OutboxFull):
        box.put("m3", b"", urgent=True, now=3)
    assert len(box) == 3
    box.next_to_send()
    box.ack("m0")
    box.put("m3", b"", urgent=False, now=3)
    with pytest.raises(OutboxFull):
        box.put("m4", b"", urgent=False, now=4)
    box.expire(11)  # m1 (deadline 11) goes
    box.put("m4", b"", urgent=False, now=11)
    assert send_all(box) == ["m2", "m3", "m4"]


def test_take_batch() -> None:
    box = Outbox()
    assert box.take_batch(100) == []
    box.put("big", b"x" * 500, urgent=False, now=0)
    box.put("a", b"x" * 10, urgent=False, now=0)
    box.put("b", b"x" * 10, urgent=False, now=0)
    box.put("c", b"x" * 10, urgent=False, now=0)
    assert ids(box.take_batch(100)) == ["big"]  # at least one, even if over the budget
    assert ids(box.take_batch(15)) == ["a", "b"]
    assert ids(box.take_batch(10_000)) == ["c"]
    assert box.pending() == 0 and len(box) == 4


def test_drain() -> None:
    box = Outbox()
    box.put("a", b"", urgent=False, now=0)
    box.put("u", b"", urgent=True, now=0)
    box.next_to_send()
    assert ids(box.drain()) == ["a", "u"]
    assert len(box) == 0 and box.next_to_send() is None
    box.put("b", b"", urgent=False, now=0)
    assert send_all(box) == ["b"]


def test_entry_fields() -> None:
    box = Outbox(ttl=30)
    origin = object()
    entry = box.put("m", b"wire", urgent=True, now=100, origin=origin)
    assert (entry.id, entry.wire, entry.urgent, entry.deadline, entry.origin) == (
        "m",
        b"wire",
        True,
        130,
        origin,
    )


class OutboxMachine(RuleBasedStateMachine):
    """The Outbox against a plain-list model of §7's rules."""

    TTL = 10.0
    LIMIT = 6

    def __init__(self) -> None:
        super().__init__()
        self.box = Outbox(limit=self.LIMIT, ttl=self.TTL)
        self.now = 0.0
        self.entries: dict[int, tuple[str, bool, float, bytes]] = {}
        self.resend: list[int] = []
        self.urgent: list[int] = []
        self.normal: list[int] = []
        self.inflight: list[int] = []
        self.sent_ever: set[int] = set()
        self.last_seq = 0

    def _model_next(self) -> int | None:
        for queue in (self.resend, self.urgent, self.normal):
            if queue:
                seq = queue.pop(0)
                self.inflight.append(seq)
                return seq
        return None

    def _remove(self, seq: int) -> None:
        for queue in (self.resend, self.urgent, self.normal, self.inflight):
            if seq in queue:
                queue.remove(seq)
        del self.entries[seq]

    @rule(env_id=st.sampled_from("abc"), urgent=st.booleans(), size=st.integers(0, 20))
    def put(self, env_id: str, urgent: bool, size: int) -> None:
        wire = bytes(size)
        if len(self.entries) >= self.LIMIT:
            with pytest.raises(OutboxFull):
                self.box.put(env_id, wire, urgent=urgent, now=self.now)
            return
        entry = self.box.put(env_id, wire, urgent=urgent, now=self.now)
        assert entry.seq > self.last_seq
        self.last_seq = entry.seq
        self.entries[entry.seq] = (env_id, urgent, self.now + self.TTL, wire)
        (self.urgent if urgent else self.normal).append(entry.seq)

    @rule()
    def send(self) -> None:
        entry = self.box.next_to_send()
        expected = self._model_next()
        assert (entry.seq if entry else None) == expected
        if entry is not None:
            assert entry.id == self.entries[entry.seq][0]
            self.sent_ever.add(entry.seq)

    @rule(max_bytes=st.integers(1, 50))
    def take_batch(self, max_bytes: int) -> None:
        batch = self.box.take_batch(max_bytes)
        expected: list[int] = []
        size = 0
        while size < max_bytes and (seq := self._model_next()) is not None:
            expected.append(seq)
            size += len(self.entries[seq][3])
        assert [e.seq for e in batch] == expected

    @rule(env_id=st.sampled_from("abcd"))
    def ack(self, env_id: str) -> None:
        got = self.box.ack(env_id)
        candidates = [s for s in self.inflight if self.entries[s][0] == env_id]
        expected = min(candidates) if candidates else None
        assert (got.seq if got else None) == expected
        if expected is not None:
            self._remove(expected)

    @rule()
    def session_lost(self) -> None:
        self.box.session_lost()
        self.resend = self.inflight + self.resend
        self.inflight = []

    @rule(dt=st.sampled_from([0.0, 0.5, 3.0, 7.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        gone = self.box.expire(self.now)
        expected = sorted(
            s for s, (_, _, deadline, _) in self.entries.items() if deadline <= self.now
        )
        assert [e.seq for e in gone] == expected
        for seq in expected:
            self._remove(seq)

    @precondition(lambda self: len(self.entries) > 0)
    @rule()
    def drain(self) -> None:
        assert [e.seq for e in self.box.drain()] == sorted(self.entries)
        self.entries.clear()
        self.resend, self.urgent, self.normal, self.inflight = [], [], [], []

    @invariant()
    def sizes_agree(self) -> None:
        assert len(self.box) == len(self.entries)
        assert self.box.pending() == len(self.entries) - len(self.inflight)
        deadlines = [d for (_, _, d, _) in self.entries.values()]
        assert self.box.next_deadline() == (min(deadlines) if deadlines else None)


OutboxMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestOutboxModel = OutboxMachine.TestCase


# --- SeenWindow -------------------------------------------------------------------------------


def test_seen_window_duplicates_within_window() -> None:
    seen = SeenWindow(window=600)
    assert seen.check_and_add("agent-one", "m1", 0) is False
    assert seen.check_and_add("agent-one", "m1", 1) is True
    assert seen.check_and_add("agent-one", "m1", 599.9) is True
    assert seen.check_and_add("agent-two", "m1", 10) is False  # the pair counts, not the id
    assert seen.seen("agent-two", "m1", 11) and len(seen) == 2


@pytest.mark.parametrize("added_at", [0.0, 1.0, 299.0, 599.9, 600.0, 1234.5])
def test_seen_window_remembers_at_least_the_window_and_forgets_by_twice_it(added_at: float) -> None:
    seen = SeenWindow(window=600)
    seen.add("peer", "other", 0.0)  # the generation starts before the id arrives
    seen.add("peer", "m", added_at)
    for t in (added_at, added_at + 300, added_at + 599.99):
        assert seen.seen("peer", "m", t), t
    assert not seen.seen("peer", "m", added_at + 1200.0)


def test_seen_window_a_fast_sender_keeps_its_last_half_limit_ids() -> None:
    seen = SeenWindow(window=600, limit=8)
    for i in range(20):  # all within one second: rotation by count, every 4 ids
        assert seen.check_and_add("fast", f"m{i}", i / 100) is False
    assert all(seen.seen("fast", f"m{i}", 0.5) for i in range(16, 20))  # the last 4 at least
    assert not seen.seen("fast", "m0", 0.5)  # the oldest were forgotten
    assert len(seen) <= 8
    assert seen.check_and_add("slow", "s1", 0.5) is False  # another sender is not affected
    assert seen.seen("slow", "s1", 0.6)


def test_seen_window_prunes_senders_that_went_quiet() -> None:
    seen = SeenWindow(window=600)
    seen.add("gone", "m", 0.0)
    seen.add("here", "m", 1000.0)
    seen.prune(1200.0)
    assert len(seen) == 1 and seen.seen("here", "m", 1200.0) and not seen.seen("gone", "m", 1200.0)


# --- Backoff ----------------------------------------------------------------------------------


def test_backoff_sequence_without_jitter() -> None:
    backoff = Backoff(jitter=0)
    assert [backoff.next() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert (BACKOFF_FIRST, BACKOFF_CAP) == (1.0, 30.0)


def test_backoff_stays_at_cap_for_ever() -> None:
    """A peer that stays away for days: thousands of attempts, no float overflow."""
    backoff = Backoff(jitter=0)
    delays = [backoff.next() for _ in range(5000)]
    assert delays[5:] == [30.0] * 4995
    assert backoff.attempt == 5


def test_backoff_reset() -> None:
    backoff = Backoff(jitter=0)
    for _ in range(4):
        backoff.next()
    assert backoff.attempt == 4
    backoff.reset()
    assert backoff.attempt == 0
    assert [backoff.next() for _ in range(3)] == [1, 2, 4]


@pytest.mark.parametrize(("r", "scale"), [(0.0, 0.9), (0.5, 1.0), (0.25, 0.95)])
def test_backoff_jitter_with_injected_rng(r: float, scale: float) -> None:
    backoff = Backoff(rng=lambda: r)
    assert BACKOFF_JITTER == 0.1
    got = [backoff.next() for _ in range(7)]
    expected = [min(30.0, b * scale) for b in (1, 2, 4, 8, 16, 30, 30)]
    assert got == pytest.approx(expected)


def test_backoff_jitter_never_exceeds_cap() -> None:
    backoff = Backoff(rng=lambda: 0.999999)
    got = [backoff.next() for _ in range(8)]
    assert got[:5] == pytest.approx([1.1, 2.2, 4.4, 8.8, 17.6], rel=1e-5)
    assert got[5:] == [30.0, 30.0, 30.0]


def test_backoff_jitter_bounds_with_random_rng() -> None:
    import random

    rng = random.Random(1234)
    backoff = Backoff(rng=rng.random)
    for base in (1, 2, 4, 8, 16, 30, 30, 30):
        delay = backoff.next()
        assert base * 0.9 <= delay <= min(30.0, base * 1.1)


def test_backoff_custom_schedule() -> None:
    backoff = Backoff(first=0.5, cap=3.0, factor=3.0, jitter=0)
    assert [backoff.next() for _ in range(4)] == [0.5, 1.5, 3.0, 3.0]
    assert backoff.base() == 3.0


def test_a_refused_entry_keeps_its_place_when_the_session_is_lost() -> None:
    """inbox_full for b while c and d are in flight, then a reconnect: b, c, d, in send order."""
    box = Outbox()
    for env_id in "abcd":
        box.put(env_id, env_id.encode(), urgent=False, now=0.0)
    assert [box.next_to_send().id for _ in range(4)] == list("abcd")  # type: ignore[union-attr]
    assert box.ack("a") is not None
    refused = box.ack("b")
    assert refused is not None
    box.retry_later(refused, until=5.0)
    assert box.take_batch(1 << 20, now=1.0) == []  # held
    box.session_lost()
    assert ids(box.take_batch(1 << 20, now=5.0)) == ["b", "c", "d"]
