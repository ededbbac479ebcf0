"""Handshake slots (acp/proto/admission.py): bounded, fair, and known peers always get in."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from acp.proto.admission import LOADED_TIMEOUT, Admission, Slot, source_of
from acp.proto.handshake import HANDSHAKE_TIMEOUT


def test_sources_are_ipv4_addresses_and_ipv6_slash_64s() -> None:
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_of("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert source_of("fe80::1%eth0") == "fe80::/64"
    assert source_of("?") == "?"


class Cancels:
    def __init__(self) -> None:
        self.cancelled: list[int] = []

    def make(self, i: int):  # type: ignore[no-untyped-def]
        return lambda: self.cancelled.append(i)


def test_a_source_is_capped_and_a_full_table_evicts_the_biggest_sources_oldest() -> None:
    a = Admission(limit=6, per_source=3)
    c = Cancels()
    slots = [a.admit("x", float(i), c.make(i)) for i in range(3)]
    assert all(slots) and a.admit("x", 3.0, c.make(99)) is None  # x competes with itself
    slots += [a.admit("y", 4.0 + i, c.make(10 + i)) for i in range(2)]
    slots.append(a.admit("z", 6.0, c.make(20)))
    assert len(a) == 6 and c.cancelled == []
    newcomer = a.admit("w", 7.0, c.make(30))  # full: x (3 slots) loses its oldest
    assert newcomer is not None and c.cancelled == [0]
    assert a.by_source == {"x": 2, "y": 2, "z": 1, "w": 1}


def test_known_peers_are_never_evicted() -> None:
    a = Admission(limit=2, per_source=8)
    c = Cancels()
    first = a.admit("peer", 0.0, c.make(1))
    assert first is not None
    first.known = True
    second = a.admit("attacker", 1.0, c.make(2))
    assert second is not None
    assert a.admit("attacker", 2.0, c.make(3)) is not None and c.cancelled == [2]
    second.known = True  # (its message 1 came from a pinned key after all)
    third = a.admit("attacker", 3.0, c.make(4))
    assert third is not None and c.cancelled == [2, 3]
    for slot in list(a._slots):
        slot.known = True
    assert a.admit("new", 4.0, c.make(5)) is None  # every slot is a known peer's: refused


def test_the_deadline_shrinks_under_load_and_release_is_idempotent() -> None:
    a = Admission(limit=4, per_source=4)
    assert a.deadline() == HANDSHAKE_TIMEOUT
    s1 = a.admit("x", 0.0, lambda: None)
    s2 = a.admit("x", 0.0, lambda: None)
    assert s1 is not None and s2 is not None
    assert a.deadline() == LOADED_TIMEOUT
    a.release(s1)
    a.release(s1)
    assert len(a) == 1 and a.by_source == {"x": 1} and a.deadline() == HANDSHAKE_TIMEOUT


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.booleans(), st.booleans()), max_size=200))
def test_bounds_hold_and_counts_match_whatever_happens(
    steps: list[tuple[str, bool, bool]],
) -> None:
    a = Admission(limit=10, per_source=3)
    live: list[Slot] = []
    gone: list[Slot] = []
    for i, (source, release, know) in enumerate(steps):
        if release and live:
            a.release(live.pop(0))
            continue
        slot = a.admit(source, float(i), lambda: None)
        if slot is not None:
            slot.known = know
            live.append(slot)
        gone += [s for s in live if s not in a._slots]  # evicted
        live = [s for s in live if s in a._slots]
        assert len(a) <= 10 and all(n <= 3 for n in a.by_source.values())
        counted: dict[str, int] = {}
        for s in a._slots:
            counted[s.source] = counted.get(s.source, 0) + 1
        assert counted == a.by_source
    assert not any(s.known for s in gone)  # a known peer's handshake is never evicted
