"""The local side of delivery (docs/protocol.md §7, §8.1): LocalInbox and its Items, without a database.

The stateful models keep what the database would (every stored item with its read flag) and hand
catching-up subscribers pages read from it, as acp/net/node.py does.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from acp.proto.inbox import EVENT, INBOX_LIMIT, PAGE, Item, LocalInbox

TRUST = ("tofu", "verified", "explicit")


def envelope_body(sender: str, msg_id: str, kind: str = "notify", text: str = "hi") -> bytes:
    env = {
        "v": 1,
        "id": msg_id,
        "from": sender,
        "to": "agent-me",
        "ts": 1_700_000_000_000,
        "kind": kind,
        "body": {"text": text},
    }
    return json.dumps(env, separators=(",", ":")).encode()


def event_body(msg_id: str, reason: str = "expired") -> bytes:
    event = {"event": "undelivered", "msg_id": msg_id, "to": "agent-far", "reason": reason}
    return json.dumps(event, separators=(",", ":")).encode()


def add_envelope(
    inbox: LocalInbox,
    sender: str,
    msg_id: str,
    *,
    kind: str = "notify",
    read: bool = False,
    trust: str | None = "tofu",
) -> Item:
    assert inbox.admit(sender) is None
    return inbox.add(
        sender=sender,
        msg_id=msg_id,
        kind=kind,
        received=1000,
        trust=trust,
        body=envelope_body(sender, msg_id, kind),
        read=read,
    )


def add_event(inbox: LocalInbox, msg_id: str) -> Item:
    return inbox.add(
        sender=None, msg_id=msg_id, kind=EVENT, received=2000, trust=None, body=event_body(msg_id)
    )


def store(inbox: LocalInbox, item: Item) -> list[Any]:
    return inbox.stored(item)


def seqs(items: list[Item]) -> list[int]:
    return [it.seq for it in items]


def copy(item: Item) -> Item:
    """The item as the database gives it back (a fresh object, as node._item makes)."""
    return Item(
        item.seq,
        item.sender,
        item.msg_id,
        item.kind,
        item.received,
        item.trust,
        item.body,
        item.read,
    )


def check_wire(item: Item) -> None:
    """push_line() and to_json() have the shapes of docs/protocol.md §8, §8.1."""
    line = item.push_line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    pushed = json.loads(line)
    body = json.loads(item.body)
    if item.is_event:
        assert pushed == {**body, "seq": item.seq}
        assert list(pushed)[-1] == "seq"
    else:
        assert pushed == {
            "inbound": True,
            "seq": item.seq,
            "trust": item.trust,
            "envelope": body,
        }
    out = item.to_json()
    json.dumps(out)  # serialisable as it stands
    if item.is_event:
        assert out == {
            "seq": item.seq,
            "event": body,
            "read": item.read,
            "received": item.received,
        }
    else:
        assert out == {
            "seq": item.seq,
            "envelope": body,
            "read": item.read,
            "received": item.received,
            "trust": item.trust,
        }


# --- defaults and counts ----------------------------------------------------------------------


def test_defaults() -> None:
    assert (INBOX_LIMIT, PAGE, EVENT) == (1000, 1000, "event")
    inbox = LocalInbox()
    assert (inbox.limit, inbox.per_sender, inbox.last_seq, inbox.last_stored) == (1000, 500, 0, 0)
    assert LocalInbox(limit=1).per_sender == 1  # a share of at least one
    assert LocalInbox(limit=7).per_sender == 3
    assert LocalInbox(limit=10, per_sender=10).per_sender == 10
    assert inbox.unread_count == 0 and inbox.subscribers() == 0 and inbox.held_by("x") == 0


def test_seq_rises_from_last_seq_and_failed_seqs_are_not_reused() -> None:
    inbox = LocalInbox(last_seq=41)
    a = add_envelope(inbox, "agent-a", "m1")
    b = add_envelope(inbox, "agent-a", "m2")
    assert (a.seq, b.seq, inbox.last_seq, inbox.last_stored) == (42, 43, 43, 41)
    inbox.failed(a)
    store(inbox, b)
    c = add_event(inbox, "m3")
    assert c.seq == 44 and inbox.last_stored == 43
    store(inbox, c)
    assert seqs(inbox.unread()) == [43, 44] and inbox.last_stored == 44


def test_admit_bound_and_share() -> None:
    inbox = LocalInbox(limit=4, per_sender=2)
    a1 = add_envelope(inbox, "agent-a", "a1")
    add_envelope(inbox, "agent-a", "a2")  # in flight still counts
    assert inbox.admit("agent-a") == "inbox_full"  # its share is reached
    assert inbox.admit("agent-b") is None
    assert inbox.held_by("agent-a") == 2
    store(inbox, a1)
    assert inbox.admit("agent-a") == "inbox_full"  # stored and unread: still held
    add_envelope(inbox, "agent-b", "b1")
    add_envelope(inbox, "agent-c", "c1")
    assert inbox.admit("agent-d") == "inbox_full"  # the bound is reached
    for i in range(3):  # events never count, nor are they refused
        store(inbox, add_event(inbox, f"e{i}"))
    assert inbox.unread_count == 4 and inbox.held_by("agent-a") == 2
    assert inbox.ack_ids(["a1"]) == [1]
    assert inbox.admit("agent-a") is None and inbox.admit("agent-d") is None
    assert inbox.held_by("agent-a") == 1


def test_failed_gives_the_slot_back() -> None:
    inbox = LocalInbox(limit=2, per_sender=1)
    a = add_envelope(inbox, "agent-a", "a1")
    assert inbox.admit("agent-a") == "inbox_full"
    inbox.failed(a)
    assert inbox.admit("agent-a") is None and inbox.held_by("agent-a") == 0
    assert inbox.unread_count == 0
    assert add_envelope(inbox, "agent-a", "a1").seq == 2


def test_items_stored_read_do_not_count_and_are_not_pushed() -> None:
    inbox = LocalInbox(limit=2, per_sender=1)
    inbox.subscribe("sub")
    r = add_envelope(inbox, "agent-a", "r1", read=True)  # a response its client reads now
    assert inbox.admit("agent-a") is None and inbox.held_by("agent-a") == 0
    assert store(inbox, r) == [] and inbox.unread_count == 0 and inbox.last_stored == r.seq
    r2 = add_envelope(inbox, "agent-a", "r2", read=True)
    inbox.failed(r2)
    assert inbox.held_by("agent-a") == 0 and inbox.admit("agent-a") is None


def test_ack_ids_marks_every_match_and_ignores_unknown_and_in_flight() -> None:
    inbox = LocalInbox()
    a = add_envelope(inbox, "agent-a", "same")
    b = add_envelope(inbox, "agent-b", "same")  # ids are per sender: both match
    c = add_envelope(inbox, "agent-a", "other")
    flying = add_envelope(inbox, "agent-c", "same")
    for item in (a, b, c):
        store(inbox, item)
    assert inbox.ack_ids(["same", "nope"]) == [a.seq, b.seq]
    assert a.read and b.read and not c.read
    assert inbox.ack_ids(["same"]) == []  # already read
    assert inbox.ack_ids([]) == []
    store(inbox, flying)  # was in flight during the ack: unread now
    assert seqs(inbox.unread()) == [c.seq, flying.seq]
    assert inbox.held_by("agent-a") == 1 and inbox.held_by("agent-b") == 0


def test_ack_up_to() -> None:
    inbox = LocalInbox()
    items = [add_envelope(inbox, "agent-a", f"m{i}") for i in range(5)]
    for item in items:
        store(inbox, item)
    store(inbox, ev := add_event(inbox, "e"))
    assert inbox.ack_up_to(0) == []
    assert inbox.ack_up_to(3) == [1, 2, 3]
    assert inbox.ack_up_to(3) == []
    assert inbox.ack_up_to(100) == [4, 5, ev.seq]
    assert inbox.unread_count == 0 and inbox.held_by("agent-a") == 0


def test_unread_filters() -> None:
    inbox = LocalInbox()
    store(inbox, add_envelope(inbox, "agent-a", "a1", kind="query"))
    store(inbox, add_envelope(inbox, "agent-b", "b1", kind="notify"))
    store(inbox, add_event(inbox, "e1"))
    store(inbox, add_envelope(inbox, "agent-a", "a2", kind="notify"))
    assert seqs(inbox.unread()) == [1, 2, 3, 4]
    assert seqs(inbox.unread(since=2)) == [3, 4]
    assert seqs(inbox.unread(limit=2)) == [1, 2]
    assert seqs(inbox.unread(kinds=["notify"])) == [2, 4]
    assert seqs(inbox.unread(kinds=[EVENT])) == [3]
    assert seqs(inbox.unread(senders=["agent-a"])) == [1, 4]
    assert seqs(inbox.unread(senders=["agent-a"], kinds=["notify"], since=1)) == [4]
    assert seqs(inbox.unread(kinds=[], senders=[])) == [1, 2, 3, 4]  # empty: no filter


def test_restore_counts_against_the_bound() -> None:
    rows = [
        Item(3, "agent-a", "a1", "notify", 1, "tofu", envelope_body("agent-a", "a1")),
        Item(7, None, "e1", EVENT, 2, None, event_body("e1")),
        Item(9, "agent-a", "a2", "notify", 3, "tofu", envelope_body("agent-a", "a2")),
    ]
    inbox = LocalInbox(limit=3, per_sender=2, last_seq=12)
    inbox.restore(rows)
    assert inbox.unread_count == 3 and inbox.held_by("agent-a") == 2
    assert inbox.admit("agent-a") == "inbox_full" and inbox.admit("agent-b") is None
    assert add_envelope(inbox, "agent-b", "b1").seq == 13
    assert inbox.admit("agent-b") == "inbox_full"  # the bound: 3 envelopes
    items, catch_up = inbox.subscribe("sub")
    assert seqs(items) == [3, 7, 9] and not catch_up


# --- subscribers ------------------------------------------------------------------------------


def test_subscribe_without_since_gets_unread_then_live() -> None:
    inbox = LocalInbox()
    first = add_envelope(inbox, "agent-a", "m1")
    store(inbox, first)
    store(inbox, add_envelope(inbox, "agent-a", "m2"))
    inbox.ack_ids(["m1"])
    items, catch_up = inbox.subscribe("sub")
    assert seqs(items) == [2] and not catch_up and inbox.cursor("sub") == 2
    later = add_envelope(inbox, "agent-b", "m3")
    assert store(inbox, later) == ["sub"] and inbox.cursor("sub") == 3
    inbox.unsubscribe("sub")
    assert store(inbox, add_event(inbox, "e")) == [] and inbox.cursor("sub") is None
    inbox.unsubscribe("sub")  # twice is fine
    assert inbox.subscribers() == 0


def test_subscribe_with_since_at_or_above_last_stored_is_live_at_once() -> None:
    inbox = LocalInbox(last_seq=5)
    items, catch_up = inbox.subscribe("at", since=5)
    assert (items, catch_up) == ([], False)
    items, catch_up = inbox.subscribe("above", since=6)  # claims to have seen 6 already
    assert (items, catch_up) == ([], False)
    six, seven = add_envelope(inbox, "agent-a", "m6"), add_envelope(inbox, "agent-a", "m7")
    assert store(inbox, six) == ["at"]
    assert sorted(store(inbox, seven)) == ["above", "at"]


def test_subscribe_with_since_below_catches_up_from_pages() -> None:
    inbox = LocalInbox()
    db: list[Item] = []
    for i in range(5):
        item = add_envelope(inbox, "agent-a", f"m{i}")
        store(inbox, item)
        db.append(item)
    inbox.ack_up_to(2)  # read items are caught up too: they are stored
    items, catch_up = inbox.subscribe("sub", since=1)
    assert items == [] and catch_up and inbox.cursor("sub") == 1
    late = add_envelope(inbox, "agent-b", "late")
    assert store(inbox, late) == []  # not live yet: the next page has it
    db.append(late)
    page = [copy(it) for it in db if it.seq > 1][:2]
    items, more = inbox.caught_up("sub", page, full=True)
    assert seqs(items) == [2, 3] and more and inbox.cursor("sub") == 3
    items, more = inbox.caught_up("sub", [copy(it) for it in db if it.seq > 3], full=False)
    assert seqs(items) == [4, 5, 6] and not more and inbox.cursor("sub") == 6
    assert items[0].read is False
    assert store(inbox, add_event(inbox, "e")) == ["sub"]  # live now
    assert inbox.caught_up("sub", [], full=False) == ([], False)  # a stray page: nothing
    assert inbox.caught_up("nobody", page, full=True) == ([], False)


def test_caught_up_empty_page_makes_live() -> None:
    inbox = LocalInbox(last_seq=10)  # newest rows were pruned: nothing above since in the db
    assert inbox.subscribe("sub", since=4) == ([], True)
    assert inbox.caught_up("sub", [], full=False) == ([], False)
    assert inbox.cursor("sub") == 4
    assert store(inbox, add_envelope(inbox, "agent-a", "m")) == ["sub"]


def test_caught_up_skips_items_at_or_below_the_cursor() -> None:
    inbox = LocalInbox()
    db = []
    for i in range(4):
        db.append(item := add_envelope(inbox, "agent-a", f"m{i}"))
        store(inbox, item)
    inbox.subscribe("sub", since=2)
    items, more = inbox.caught_up("sub", [copy(it) for it in db], full=False)  # a stale page
    assert seqs(items) == [3, 4] and not more


def test_subscribe_count() -> None:
    inbox = LocalInbox()
    for i in range(3):
        store(inbox, add_envelope(inbox, "agent-a", f"m{i}"))
    items, catch_up = inbox.subscribe("two", count=2)
    assert seqs(items) == [1, 2] and not catch_up
    assert inbox.subscribers() == 0 and inbox.cursor("two") is None  # done already
    assert inbox.subscribe("none", count=0) == ([], False) and inbox.subscribers() == 0
    items, _ = inbox.subscribe("five", count=5)
    assert seqs(items) == [1, 2, 3] and inbox.subscribers() == 1
    # events ride along without counting: `count` is envelopes (`acp listen --count N`)
    assert store(inbox, add_event(inbox, "e1")) == ["five"]
    assert store(inbox, add_event(inbox, "e2")) == ["five"]
    assert inbox.subscribers() == 1
    assert store(inbox, add_envelope(inbox, "agent-a", "m3")) == ["five"]
    assert store(inbox, add_envelope(inbox, "agent-a", "m4")) == ["five"]
    assert inbox.subscribers() == 0
    assert store(inbox, add_event(inbox, "e3")) == []
    assert store(inbox, add_envelope(inbox, "agent-a", "m5")) == []


def test_subscribe_count_while_catching_up() -> None:
    inbox = LocalInbox()
    db = []
    for i in range(4):
        db.append(item := add_envelope(inbox, "agent-a", f"m{i}"))
        store(inbox, item)
    items, catch_up = inbox.subscribe("sub", since=0, count=3)
    assert items == [] and catch_up
    items, more = inbox.caught_up("sub", [copy(it) for it in db[:2]], full=True)
    assert seqs(items) == [1, 2] and more
    items, more = inbox.caught_up("sub", [copy(it) for it in db[2:]], full=True)
    assert seqs(items) == [3] and not more  # its count is reached: no further page
    assert inbox.subscribers() == 0


def test_subscribe_count_counts_envelopes_only() -> None:
    """Events ride along while the subscription lives, at once, in catch-up pages and live; it
    ends with its count-th envelope, so nothing after that one is handed over."""
    inbox = LocalInbox()
    db: list[Item] = []
    for item in (
        add_event(inbox, "e1"),
        add_envelope(inbox, "agent-a", "m1"),
        add_event(inbox, "e2"),
        add_envelope(inbox, "agent-b", "m2"),
        add_event(inbox, "e3"),
    ):
        store(inbox, item)
        db.append(item)
    items, catch_up = inbox.subscribe("two", count=2)
    assert seqs(items) == [1, 2, 3, 4] and not catch_up  # not e3: done with m2
    assert inbox.subscribers() == 0
    items, catch_up = inbox.subscribe("three", count=3)
    assert seqs(items) == [1, 2, 3, 4, 5] and not catch_up and inbox.subscribers() == 1
    assert store(inbox, add_event(inbox, "e4")) == ["three"]
    assert inbox.subscribers() == 1
    assert store(inbox, add_envelope(inbox, "agent-a", "m3")) == ["three"]
    assert inbox.subscribers() == 0
    inbox.ack_up_to(7)
    items, catch_up = inbox.subscribe("events", count=1)  # nothing unread: waits for one
    assert items == [] and not catch_up and inbox.subscribers() == 1
    assert store(inbox, add_event(inbox, "e5")) == ["events"]
    assert inbox.subscribers() == 1
    assert inbox.subscribe("paged", since=0, count=2) == ([], True)
    items, more = inbox.caught_up("paged", [copy(it) for it in db[:3]], full=True)
    assert seqs(items) == [1, 2, 3] and more and inbox.cursor("paged") == 3
    items, more = inbox.caught_up("paged", [copy(it) for it in db[3:]], full=True)
    assert seqs(items) == [4] and not more  # m2 is its second envelope: e3 is not handed over
    assert inbox.cursor("paged") is None and inbox.subscribers() == 1
    assert inbox.subscribe("short", since=0, count=3) == ([], True)
    items, more = inbox.caught_up("short", [copy(it) for it in db], full=False)
    assert seqs(items) == [1, 2, 3, 4, 5] and not more  # one envelope short: live now
    assert store(inbox, add_event(inbox, "e6")) == ["events", "short"]
    assert store(inbox, add_envelope(inbox, "agent-b", "m4")) == ["events", "short"]
    assert inbox.subscribers() == 0


def test_subscribe_again_replaces_the_subscription() -> None:
    inbox = LocalInbox()
    store(inbox, add_envelope(inbox, "agent-a", "m1"))
    inbox.subscribe("sub", since=0)  # catching up
    items, catch_up = inbox.subscribe("sub")  # and again, live
    assert seqs(items) == [1] and not catch_up and inbox.subscribers() == 1
    assert inbox.caught_up("sub", [], full=False) == ([], False)


def test_stored_pushes_only_unread_items_above_each_cursor() -> None:
    inbox = LocalInbox()
    inbox.subscribe("a")
    inbox.subscribe("b", count=1)
    m1 = add_envelope(inbox, "agent-a", "m1")
    assert sorted(store(inbox, m1)) == ["a", "b"]
    assert store(inbox, add_envelope(inbox, "agent-a", "m2")) == ["a"]


@pytest.mark.xfail(
    strict=True,
    reason="LocalInbox relies on stored() being called in seq order (the daemon's store callbacks "
    "are); an item committed after a higher seq is never pushed to a live subscriber",
)
def test_stored_out_of_seq_order_still_reaches_live_subscriber() -> None:
    inbox = LocalInbox()
    inbox.subscribe("sub")
    four, five = add_envelope(inbox, "agent-a", "m4"), add_envelope(inbox, "agent-a", "m5")
    assert store(inbox, five) == ["sub"]
    assert store(inbox, four) == ["sub"]


@pytest.mark.xfail(
    strict=True,
    reason="LocalInbox keeps unread items in the order stored() was called, not in seq order",
)
def test_stored_out_of_seq_order_unread_is_still_oldest_first() -> None:
    inbox = LocalInbox()
    four, five = add_envelope(inbox, "agent-a", "m4"), add_envelope(inbox, "agent-a", "m5")
    store(inbox, five)
    store(inbox, four)
    assert seqs(inbox.unread()) == [four.seq, five.seq]


def test_subscribe_again_with_count_met_at_once_replaces_the_subscription() -> None:
    inbox = LocalInbox()
    store(inbox, add_envelope(inbox, "agent-a", "m1"))
    inbox.subscribe("sub")  # live, no count
    items, catch_up = inbox.subscribe("sub", count=1)  # replaces it, gets m1 and is done
    assert seqs(items) == [1] and not catch_up
    assert inbox.subscribers() == 0 and inbox.cursor("sub") is None
    assert store(inbox, add_envelope(inbox, "agent-a", "m2")) == []  # the old one is gone too
    assert store(inbox, add_event(inbox, "e")) == []
    inbox.subscribe("sub")  # live again
    assert inbox.subscribe("sub", count=0) == ([], False)  # replaced, and done at once
    assert inbox.subscribers() == 0 and inbox.cursor("sub") is None
    assert store(inbox, add_envelope(inbox, "agent-a", "m3")) == []
    db = [copy(it) for it in inbox.unread()]
    assert inbox.subscribe("sub", since=0) == ([], True)  # catching up
    assert inbox.subscribe("sub", since=0, count=0) == ([], False)
    assert inbox.subscribers() == 0
    assert inbox.caught_up("sub", db, full=False) == ([], False)  # its pages are stray now


# --- wire shapes ------------------------------------------------------------------------------


def test_push_line_and_to_json_examples() -> None:
    env = Item(7, "agent-a", "m1", "notify", 1234, "tofu", b'{"id":"m1","from":"agent-a"}')
    assert env.push_line() == (
        b'{"inbound":true,"seq":7,"trust":"tofu","envelope":{"id":"m1","from":"agent-a"}}\n'
    )
    assert env.to_json() == {
        "seq": 7,
        "envelope": {"id": "m1", "from": "agent-a"},
        "read": False,
        "received": 1234,
        "trust": "tofu",
    }
    no_trust = Item(8, "agent-a", "m2", "notify", 1, None, b"{}")
    assert no_trust.push_line() == b'{"inbound":true,"seq":8,"trust":null,"envelope":{}}\n'
    event = Item(9, None, "m3", EVENT, 5, None, b'{"event":"undelivered","msg_id":"m3"}', True)
    assert event.is_event and not env.is_event
    assert event.push_line() == b'{"event":"undelivered","msg_id":"m3","seq":9}\n'
    assert event.to_json() == {
        "seq": 9,
        "event": {"event": "undelivered", "msg_id": "m3"},
        "read": True,
        "received": 5,
    }


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    seq=st.integers(1, 2**53),
    body=st.dictionaries(st.text(), json_values, max_size=5),
    trust=st.sampled_from((None, *TRUST)),
    read=st.booleans(),
    received=st.integers(0, 2**53),
    ascii_only=st.booleans(),
)
def test_envelope_wire_shapes(
    seq: int, body: dict[str, Any], trust: str | None, read: bool, received: int, ascii_only: bool
) -> None:
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=ascii_only).encode()
    check_wire(Item(seq, "agent-a", "m", "notify", received, trust, raw, read))


@settings(max_examples=200, deadline=None)
@given(
    seq=st.integers(1, 2**53),
    extra=st.dictionaries(st.text().filter(lambda k: k != "seq"), json_values, max_size=4),
    read=st.booleans(),
)
def test_event_wire_shapes(seq: int, extra: dict[str, Any], read: bool) -> None:
    event = {"event": "undelivered", "msg_id": "m", "to": "agent-b", "reason": "expired", **extra}
    raw = json.dumps(event, separators=(",", ":")).encode()
    check_wire(Item(seq, None, "m", EVENT, 1, None, raw, read))


# --- the stateful model -----------------------------------------------------------------------

SENDERS = ("agent-a", "agent-b", "agent-c")
MSG_IDS = ("m0", "m1", "m2", "m3")  # few, so that ids repeat across senders and events
KEYS = ("s1", "s2", "s3")
KINDS = ("notify", "query")


@attrs.define
class Row:
    """What the database holds of one stored item."""

    item: Item  # a copy, never the object LocalInbox holds
    read: bool


@attrs.define
class Sub:
    key: str
    since: int | None
    count: int | None  # envelopes asked for
    remaining: int | None  # envelopes still wanted: events do not count
    live: bool
    floor: int  # items at or below this are not wanted live
    cursor: int  # the model's own catch-up cursor
    got: list[int] = attrs.Factory(list)
    expected: list[int] = attrs.Factory(list)


class InboxMachine(RuleBasedStateMachine):
    """LocalInbox against a model that keeps what the database would.

    Here stores and failures complete in any order: the model checks what must hold even so
    (bounds, counts, admit, seqs never reused, each push at most once, of a stored item above the
    subscriber's since). InOrderInboxMachine, below, stores in seq order as the daemon's store
    callbacks do, and checks that each subscriber gets exactly what §8.1 says, in seq order.
    """

    LIMIT = 5
    PER_SENDER = 3
    PAGE_SIZE = 3
    IN_ORDER = False

    def __init__(self) -> None:
        super().__init__()
        self.inbox = LocalInbox(limit=self.LIMIT, per_sender=self.PER_SENDER)
        self.db: dict[int, Row] = {}
        self.in_flight: dict[int, tuple[Item, bool]] = {}  # seq -> (item, stored read)
        self.last_seq = 0
        self.last_stored = 0
        self.handed_out: set[int] = set()
        self.events: set[int] = set()  # seqs handed out for events, not envelopes
        self.failed_seqs: set[int] = set()
        self.subs: dict[str, Sub] = {}
        self.closed: list[Sub] = []
        self.n = 0

    # -- the model ---------------------------------------------------------------------------

    def held(self, sender: str) -> int:
        unread = sum(1 for r in self.db.values() if not r.read and r.item.sender == sender)
        flying = sum(1 for it, rd in self.in_flight.values() if not rd and it.sender == sender)
        return unread + flying

    def envelopes(self) -> int:
        unread = sum(1 for r in self.db.values() if not r.read and r.item.sender is not None)
        flying = sum(1 for it, rd in self.in_flight.values() if not rd and it.sender is not None)
        return unread + flying

    def model_unread(self) -> list[int]:
        return sorted(s for s, r in self.db.items() if not r.read)

    def expect_admit(self, sender: str) -> str | None:
        if self.envelopes() >= self.LIMIT or self.held(sender) >= self.PER_SENDER:
            return "inbox_full"
        return None

    def close_sub(self, key: str) -> None:
        sub = self.subs.pop(key, None)
        if sub is not None:
            self.closed.append(sub)

    def ordered(self, got: list[int]) -> list[int]:
        """Stored out of order, LocalInbox keeps unread items in the order they were stored."""
        return got if self.IN_ORDER else sorted(got)

    def envelopes_in(self, seq_list: list[int]) -> int:
        return sum(1 for s in seq_list if s not in self.events)

    def take(self, sub: Sub, seq_list: list[int]) -> list[int]:
        """What ``sub`` is handed of ``seq_list``: with a count, items up to and including its
        count-th envelope (events in between ride along without counting); then it is done."""
        if sub.remaining is None:
            return seq_list
        out: list[int] = []
        for s in seq_list:
            if sub.remaining <= 0:
                break
            out.append(s)
            if s not in self.events:
                sub.remaining -= 1
        return out

    def received(self, sub: Sub, items: list[Item]) -> None:
        for item in items:
            assert item.seq in self.db, "pushed an item that is not stored"
            assert item.is_event == (item.seq in self.events)
            check_wire(item)
            sub.got.append(item.seq)

    @initialize(
        restored=st.lists(st.tuples(st.sampled_from((None, *SENDERS)), st.booleans()), max_size=4),
        gap=st.integers(0, 3),
    )
    def start(self, restored: list[tuple[str | None, bool]], gap: int) -> None:
        """A daemon that starts on a database holding some rows (the newest maybe pruned)."""
        unread: list[Item] = []
        for seq, (sender, read) in enumerate(restored, start=1):
            if sender is not None and (
                self.held(sender) >= self.PER_SENDER or self.envelopes() >= self.LIMIT
            ):
                read = True  # the database never holds more unread than the bound allowed
            body = event_body(f"r{seq}") if sender is None else envelope_body(sender, f"r{seq}")
            kind = EVENT if sender is None else "notify"
            item = Item(seq, sender, f"r{seq}", kind, seq, "tofu" if sender else None, body, read)
            self.db[seq] = Row(copy(item), read)
            self.handed_out.add(seq)
            if sender is None:
                self.events.add(seq)
            if not read:
                unread.append(item)
        self.last_seq = self.last_stored = len(restored) + gap
        self.inbox = LocalInbox(
            limit=self.LIMIT, per_sender=self.PER_SENDER, last_seq=self.last_seq
        )
        self.inbox.restore(unread)

    # -- storing -----------------------------------------------------------------------------

    def _added(self, item: Item, read: bool) -> None:
        assert item.seq == self.last_seq + 1
        assert item.seq not in self.handed_out  # never reused, failed ones neither
        self.last_seq = item.seq
        self.handed_out.add(item.seq)
        self.in_flight[item.seq] = (item, read)

    @rule(
        sender=st.sampled_from(SENDERS),
        msg_id=st.sampled_from(MSG_IDS),
        kind=st.sampled_from(KINDS),
        trust=st.sampled_from((None, *TRUST)),
        read=st.sampled_from((False, False, False, True)),  # True: a response read now
    )
    def add_envelope(
        self, sender: str, msg_id: str, kind: str, trust: str | None, read: bool
    ) -> None:
        verdict = self.inbox.admit(sender)
        assert verdict == self.expect_admit(sender)
        if verdict is not None:
            return
        self.n += 1
        item = self.inbox.add(
            sender=sender,
            msg_id=msg_id,
            kind=kind,
            received=self.n,
            trust=trust,
            body=envelope_body(sender, msg_id, kind, text=str(self.n)),
            read=read,
        )
        assert (item.sender, item.msg_id, item.kind, item.read) == (sender, msg_id, kind, read)
        self._added(item, read)

    @rule(msg_id=st.sampled_from(MSG_IDS))
    def add_event(self, msg_id: str) -> None:
        self.n += 1
        item = self.inbox.add(
            sender=None,
            msg_id=msg_id,
            kind=EVENT,
            received=self.n,
            trust=None,
            body=event_body(msg_id, reason=str(self.n)),
        )
        assert item.is_event
        self.events.add(item.seq)
        self._added(item, False)

    def _pick(self, data: st.DataObject, oldest: bool) -> int:
        if oldest:
            return min(self.in_flight)
        return data.draw(st.sampled_from(sorted(self.in_flight)))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def stored(self, data: st.DataObject) -> None:
        seq = self._pick(data, self.IN_ORDER)
        item, read = self.in_flight.pop(seq)
        want: set[str] = set()
        if self.IN_ORDER:
            for sub in self.subs.values():
                if sub.live and not read and seq > sub.floor and sub.remaining != 0:
                    want.add(sub.key)
                    sub.expected += self.take(sub, [seq])
        keys = self.inbox.stored(item)
        self.db[seq] = Row(copy(item), read)
        self.last_stored = max(self.last_stored, seq)
        assert len(keys) == len(set(keys))
        if self.IN_ORDER:
            assert set(keys) == want
        for key in keys:
            sub = self.subs[str(key)]
            assert sub.live and not read
            if not self.IN_ORDER:
                assert sub.remaining != 0
                assert self.take(sub, [seq]) == [seq]
            self.received(sub, [item])
        for key in list(self.subs):  # those whose count ran out on this item are gone
            if self.inbox.cursor(key) is None:
                sub = self.subs[key]
                assert sub.remaining == 0 and key in keys and seq not in self.events
                self.close_sub(key)
            else:
                assert self.subs[key].remaining != 0

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def failed(self, data: st.DataObject) -> None:
        seq = self._pick(data, oldest=False)  # in any order: failing never pushes
        item, _ = self.in_flight.pop(seq)
        self.inbox.failed(item)
        self.failed_seqs.add(seq)

    # -- acking --------------------------------------------------------------------------------

    def _mark(self, got: list[int], expected: list[int]) -> None:
        assert self.ordered(got) == expected
        for seq in expected:
            self.db[seq].read = True

    @rule(ids=st.lists(st.sampled_from((*MSG_IDS, "unknown")), max_size=3))
    def ack_ids(self, ids: list[str]) -> None:
        expected = [s for s in self.model_unread() if self.db[s].item.msg_id in ids]
        self._mark(self.inbox.ack_ids(ids), expected)

    @rule(data=st.data())
    def ack_up_to(self, data: st.DataObject) -> None:
        up_to = data.draw(st.integers(-1, self.last_seq + 1))
        expected = [s for s in self.model_unread() if s <= up_to]
        self._mark(self.inbox.ack_up_to(up_to), expected)

    # -- reading -------------------------------------------------------------------------------

    @rule(
        data=st.data(),
        limit=st.none() | st.integers(1, 4),
        kinds=st.none() | st.lists(st.sampled_from((*KINDS, EVENT)), min_size=1, max_size=2),
        senders=st.none() | st.lists(st.sampled_from(SENDERS), min_size=1, max_size=2),
    )
    def read_unread(
        self,
        data: st.DataObject,
        limit: int | None,
        kinds: list[str] | None,
        senders: list[str] | None,
    ) -> None:
        since = data.draw(st.integers(0, self.last_seq + 1))
        expected = [
            s
            for s in self.model_unread()
            if s > since
            and (kinds is None or self.db[s].item.kind in kinds)
            and (senders is None or self.db[s].item.sender in senders)
        ]
        if limit is not None:
            expected = expected[:limit]
        got = self.inbox.unread(since=since, limit=limit, kinds=kinds, senders=senders)
        if self.IN_ORDER or limit is None:
            assert self.ordered(seqs(got)) == expected
        else:  # which `limit` of them depends on the order they were stored in
            assert len(got) == len(expected) and set(seqs(got)) <= set(expected) | set(
                self.model_unread()
            )
        for item in got:
            check_wire(item)

    # -- subscribers ---------------------------------------------------------------------------

    @rule(
        key=st.sampled_from(KEYS),
        data=st.data(),
        with_since=st.booleans(),
        count=st.none() | st.integers(0, 4),  # IPC asks for at least 1; 0 is done at once
        unsubscribe_first=st.booleans(),
    )
    def subscribe(
        self,
        key: str,
        data: st.DataObject,
        with_since: bool,
        count: int | None,
        unsubscribe_first: bool,
    ) -> None:
        since = data.draw(st.integers(-1, self.last_seq + 1)) if with_since else None
        if key in self.subs:
            # a second subscribe starts over: acp/net/ipc_server.py unsubscribes first, and a
            # subscribe alone replaces what was under its key as well
            if unsubscribe_first:
                self.inbox.unsubscribe(key)
            self.close_sub(key)
        # which unread items a count cuts off depends on the order LocalInbox holds them in:
        # the order they were stored in (counts_agree checks that against the model)
        held = seqs(self.inbox.unread())
        assert self.ordered(held) == self.model_unread()
        items, catch_up = self.inbox.subscribe(key, since=since, count=count)
        if since is None:
            want, live, floor = held, True, self.last_stored
        elif since >= self.last_stored:
            want, live, floor = [], True, since
        else:
            want, live, floor = [], False, since
        sub = Sub(key, since, count, count, live, floor, since if since is not None else floor)
        sub.expected = self.take(sub, want)
        self.received(sub, items)
        assert seqs(items) == sub.expected
        if count is not None:
            assert self.envelopes_in(seqs(items)) == min(count, self.envelopes_in(want))
        registered = sub.remaining is None or sub.remaining > 0
        assert catch_up == (registered and not live)
        self.subs[key] = sub
        if not registered:
            self.close_sub(key)
            assert self.inbox.cursor(key) is None

    @rule(key=st.sampled_from(KEYS))
    def unsubscribe(self, key: str) -> None:
        self.inbox.unsubscribe(key)
        self.close_sub(key)

    @precondition(lambda self: any(not s.live for s in self.subs.values()))
    @rule(data=st.data())
    def caught_up(self, data: st.DataObject) -> None:
        """The page the database gives for a catching-up subscriber's cursor."""
        key = data.draw(st.sampled_from(sorted(k for k, s in self.subs.items() if not s.live)))
        sub = self.subs[key]
        assert self.inbox.cursor(key) == sub.cursor
        rows = [self.db[s] for s in sorted(self.db) if s > sub.cursor][: self.PAGE_SIZE]
        page = []
        for row in rows:
            item = copy(row.item)
            item.read = row.read
            page.append(item)
        full = len(page) >= self.PAGE_SIZE
        items, more = self.inbox.caught_up(key, page, full=full)
        want = self.take(sub, seqs(page))
        sub.expected += want
        assert seqs(items) == want
        self.received(sub, items)
        if page:
            sub.cursor = sub.floor = page[-1].seq
        if sub.remaining == 0:
            assert not more and self.inbox.cursor(key) is None
            self.close_sub(key)
        elif full:
            assert more and self.inbox.cursor(key) == sub.cursor
        else:
            assert not more
            sub.live = True

    @rule(key=st.sampled_from((*KEYS, "nobody")), full=st.booleans())
    def stray_page(self, key: str, full: bool) -> None:
        """A page for a subscriber that is live or gone changes nothing."""
        sub = self.subs.get(key)
        if sub is not None and not sub.live:
            return
        page = [copy(r.item) for r in self.db.values()]
        assert self.inbox.caught_up(key, page, full=full) == ([], False)

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def counts_agree(self) -> None:
        assert self.inbox.last_seq == self.last_seq
        assert self.inbox.unread_count == len(self.model_unread())
        assert self.ordered(seqs(self.inbox.unread())) == self.model_unread()
        assert self.envelopes() <= self.LIMIT
        for sender in SENDERS:
            assert self.inbox.held_by(sender) == self.held(sender) <= self.PER_SENDER
            assert self.inbox.admit(sender) == self.expect_admit(sender)
        assert not self.failed_seqs & set(self.db)

    @invariant()
    def subscribers_agree(self) -> None:
        assert self.inbox.subscribers() == len(self.subs)
        for key in KEYS:
            assert (self.inbox.cursor(key) is None) == (key not in self.subs)

    @invariant()
    def pushes_are_once_in_order_and_asked_for(self) -> None:
        for sub in [*self.subs.values(), *self.closed]:
            assert len(set(sub.got)) == len(sub.got)  # at most once
            if self.IN_ORDER:
                assert all(a < b for a, b in zip(sub.got, sub.got[1:], strict=False))
            assert all(s in self.db for s in sub.got)
            if sub.since is not None:
                assert all(s > sub.since for s in sub.got)
            if sub.count is not None:  # a count is of envelopes: events ride along
                assert sub.remaining is not None and sub.remaining >= 0
                assert self.envelopes_in(sub.got) == sub.count - sub.remaining
                if sub.remaining == 0 and sub.got:  # done with its count-th envelope, not after
                    assert sub.got[-1] not in self.events
        for sub in self.subs.values():  # one whose count is met is gone
            assert sub.remaining is None or sub.remaining > 0
            if self.IN_ORDER:
                assert sub.got == sub.expected


class InOrderInboxMachine(InboxMachine):
    """Stored in seq order, as the daemon's store callbacks run: every subscriber gets exactly
    every stored item above its since (read ones by catch-up), then each later unread one."""

    IN_ORDER = True


InboxMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
InOrderInboxMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None
)
TestInboxAnyOrder = InboxMachine.TestCase
TestInboxInOrder = InOrderInboxMachine.TestCase
