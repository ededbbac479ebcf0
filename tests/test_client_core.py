"""The client's sans-I/O parts: ClientCore (requests, lines, replies, pushes) and Subscription
(listen's cursor, count and acks). No sockets, no daemon."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acp.client import MAX_LINE, ClientCore, Subscription, ack_args, inbox_args
from acp.errors import EXIT_USAGE, DaemonUnavailable, ProtocolError, RequestFailed


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def env(n: int) -> dict[str, Any]:
    return {
        "id": f"id-{n}",
        "kind": "notify",
        "from": "agent-b",
        "payload": {"topic": "t", "data": n},
    }


def push(n: int, seq: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"inbound": True, "envelope": env(n)}
    if seq is not None:
        out["seq"] = seq
    return out


# -- requests -------------------------------------------------------------------------------------


def test_requests_are_numbered_lines_with_req() -> None:
    core = ClientCore()
    r1, l1 = core.start("status")
    r2, l2 = core.start("inbox", {"since": 4, "kinds": ["query"]})
    assert (r1, r2) == (1, 2)
    assert l1.endswith(b"\n") and l1.count(b"\n") == 1
    assert json.loads(l1) == {"cmd": "status", "req": 1}
    assert json.loads(l2) == {"cmd": "inbox", "req": 2, "since": 4, "kinds": ["query"]}
    assert core.waiting(1) and core.waiting(2)


def test_a_request_over_the_line_cap_is_refused_before_it_is_sent() -> None:
    core = ClientCore()
    with pytest.raises(RequestFailed) as info:
        core.start("broadcast", {"envelope": {"payload": "x" * MAX_LINE}})
    assert info.value.code == "too_large" and info.value.exit_code == EXIT_USAGE
    assert "1 MiB" in info.value.message
    req, _ = core.start("status")  # the core is still usable
    assert core.waiting(req)


# -- replies and pushes ---------------------------------------------------------------------------


def test_a_reply_split_byte_by_byte_is_matched_by_req() -> None:
    core = ClientCore()
    req, _ = core.start("status")
    data = line({"ok": True, "agent_id": "agent-a", "req": req})
    for i in range(len(data)):
        assert core.take(req) is None
        core.feed(data[i : i + 1])
    assert core.take(req) == {"ok": True, "agent_id": "agent-a", "req": req}
    assert core.take(req) is None  # taken once
    assert not core.pushes


def test_pushes_and_events_interleaved_with_replies_are_kept_aside_in_order() -> None:
    core = ClientCore()
    r1, _ = core.start("send", {"to": "b", "envelope": {}, "wait": "response"})
    r2, _ = core.start("status")
    stream = (
        line(push(1, seq=1))
        + line({"event": "undelivered", "msg_id": "m", "to": "c", "reason": "expired", "seq": 2})
        + line({"ok": True, "req": r2})  # replies come in any order: r2 before r1
        + line(push(2, seq=3))
        + line({"ok": True, "state": "answered", "req": r1})
    )
    core.feed(stream[:17])
    core.feed(stream[17:])
    assert core.take(r2) == {"ok": True, "req": r2}
    assert core.take(r1) == {"ok": True, "state": "answered", "req": r1}
    assert [p.get("seq") for p in core.pushes] == [1, 2, 3]
    assert core.pushes[1]["event"] == "undelivered"


def test_replies_nobody_waits_for_go_aside_and_abandoned_ones_are_dropped() -> None:
    core = ClientCore()
    req, _ = core.start("send", {"wait": "acked"})
    core.abandon(req)  # the caller timed out
    assert not core.waiting(req)
    core.feed(line({"ok": True, "req": req}) + line({"ok": True, "req": 99}))
    assert core.take(req) is None
    assert list(core.pushes) == [{"ok": True, "req": 99}]


def test_a_subscribe_reply_drops_the_stored_pushes_that_came_before_it() -> None:
    core = ClientCore()
    core.feed(line(push(1, seq=1)) + line({"event": "disconnected"}))  # before the subscribe
    req, _ = core.start("subscribe")
    core.feed(line(push(2, seq=2)) + line(push(3)))  # an earlier subscription's, still coming
    assert core.take_subscribed(req) is None
    core.feed(line({"ok": True, "subscribed": True, "req": req}) + line(push(1, seq=1)))
    assert core.take_subscribed(req) == {"ok": True, "subscribed": True, "req": req}
    # stored items come again from the new subscription; pushes without a seq stay
    assert list(core.pushes) == [{"event": "disconnected"}, push(3), push(1, seq=1)]


def test_blank_lines_and_crlf_are_tolerated() -> None:
    core = ClientCore()
    req, _ = core.start("id")
    core.feed(b"\n  \n" + json.dumps({"ok": True, "req": req}).encode() + b"\r\n\n")
    assert core.take(req) == {"ok": True, "req": req}


def test_an_error_reply_is_returned_to_its_request_not_raised_by_feed() -> None:
    core = ClientCore()
    req, _ = core.start("ack", {"ids": ["x"]})
    err = {"ok": False, "error": {"code": "store_failed", "message": "disk full"}, "req": req}
    core.feed(line(err))
    assert core.take(req) == err


def test_a_connection_refused_without_req_fails_with_the_daemons_reason() -> None:
    core = ClientCore()
    core.start("status")
    refusal = {"ok": False, "error": {"code": "forbidden", "message": "only the daemon's user"}}
    with pytest.raises(RequestFailed) as info:
        core.feed(line(refusal))
    assert info.value.code == "forbidden"
    with pytest.raises(RequestFailed):  # and it sticks
        core.start("status")


@given(cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_any_chunking_gives_the_same_replies_and_pushes(cuts: list[int]) -> None:
    objs: list[dict[str, Any]] = []
    core = ClientCore()
    reqs = [core.start("status")[0] for _ in range(3)]
    objs = [push(1, 1), {"ok": True, "req": reqs[1]}, push(2, 2), {"ok": True, "req": reqs[0]}]
    objs += [{"event": "x"}, {"ok": True, "req": reqs[2], "text": "é\u2028"}]
    data = b"".join(line(o) for o in objs)
    pos = 0
    for n in cuts:
        core.feed(data[pos : pos + n])
        pos += n
    core.feed(data[pos:])
    assert [core.take(r) for r in reqs] == [objs[3], objs[1], objs[5]]
    assert list(core.pushes) == [objs[0], objs[2], objs[4]]


# -- broken streams -------------------------------------------------------------------------------


def test_a_line_exactly_at_the_cap_is_read_and_one_byte_more_is_not() -> None:
    def sized(req: int, size: int) -> bytes:
        base = len(json.dumps({"ok": True, "req": req, "pad": ""}))
        body = json.dumps({"ok": True, "req": req, "pad": "x" * (size - base)}).encode()
        assert len(body) == size
        return body + b"\n"

    core = ClientCore(limit=64)
    req, _ = core.start("status")
    core.feed(sized(req, 64))
    assert core.take(req) is not None
    req, _ = core.start("status")
    with pytest.raises(ProtocolError):
        core.feed(sized(req, 65))


def test_an_over_long_line_fails_as_soon_as_it_passes_the_cap_without_buffering_more() -> None:
    core = ClientCore()
    core.start("status")
    chunk = b"x" * 65536
    with pytest.raises(ProtocolError) as info:
        for _ in range(20):  # 1.25 MiB, no newline: fails after 1 MiB + 1 byte, not at the end
            core.feed(chunk)
    assert "over 1048576 bytes" in info.value.message
    assert info.value.code == "bad_reply" and info.value.exit_code == 1
    assert len(core._buf) <= MAX_LINE + len(chunk)
    with pytest.raises(ProtocolError):  # the stream is out of step from here on
        core.feed(b"\n" + line({"ok": True, "req": 1}))


def test_an_over_long_line_with_its_newline_in_the_same_chunk_fails() -> None:
    core = ClientCore(limit=32)
    req, _ = core.start("status")
    with pytest.raises(ProtocolError):
        core.feed(b"y" * 33 + b"\n" + line({"ok": True, "req": req}))


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not json",
        b"[1, 2, 3]",
        b'"a string"',
        b'{"ok": true',
        b"\xff\xfe{}",
        b"[" * 100_000,
    ],
    ids=["text", "array", "string", "truncated", "not-utf8", "deep"],
)
def test_garbage_lines_are_a_clear_protocol_error(garbage: bytes) -> None:
    core = ClientCore()
    req, _ = core.start("status")
    with pytest.raises(ProtocolError) as info:
        core.feed(line(push(1)) + garbage + b"\n" + line({"ok": True, "req": req}))
    assert info.value.message.startswith("the acp daemon sent a line that is not")
    assert len(info.value.message) < 200  # an excerpt, not the whole line
    assert len(core.pushes) == 1  # what came before it was read
    with pytest.raises(ProtocolError):
        core.start("status")


def test_eof_is_daemon_unavailable_and_sticks() -> None:
    core = ClientCore()
    error = core.eof()
    assert isinstance(error, DaemonUnavailable)
    assert "closed the connection" in error.message
    with pytest.raises(DaemonUnavailable):
        core.start("status")
    assert core.eof() is error


# -- request fields -------------------------------------------------------------------------------


def test_inbox_and_ack_fields() -> None:
    assert inbox_args() == {}
    assert inbox_args(
        unread=False, since=3, limit=10, kinds=["query"], from_=["agent-b"], wait=5.0
    ) == {
        "unread": False,
        "since": 3,
        "limit": 10,
        "kinds": ["query"],
        "from": ["agent-b"],
        "wait": 5.0,
    }
    assert ack_args(["a", "b"], None) == {"ids": ["a", "b"]}
    assert ack_args([], None) == {"ids": []}
    assert ack_args(None, 7) == {"up_to": 7}
    for bad in ((None, None), (["a"], 3)):
        with pytest.raises(ValueError):
            ack_args(*bad)


# -- Subscription ---------------------------------------------------------------------------------


def test_subscribe_args_follow_the_cursor_and_the_count() -> None:
    sub = Subscription()
    assert sub.subscribe_args() == {}
    sub = Subscription(since=10, count=3)
    assert sub.subscribe_args() == {"since": 10, "count": 3}
    sub.take(push(1, seq=12))
    assert sub.subscribe_args(ClientCore()) == {"since": 12, "count": 2}
    assert sub.last_seq == 12 and sub.delivered == 1 and not sub.done
    sub.take(push(2, seq=13))
    sub.take(push(3, seq=14))
    assert sub.done
    with pytest.raises(ValueError):
        Subscription(count=0)


def test_take_hands_out_envelopes_and_only_asked_for_events() -> None:
    event = {"event": "undelivered", "msg_id": "m1", "to": "c", "reason": "expired", "seq": 5}
    plain = Subscription()
    assert plain.take(push(1, seq=4)) == env(1)
    assert plain.take(event) is None
    assert plain.last_seq == 5  # passed over, but seen: a resubscribe need not send it again
    assert plain.take({"ok": True, "req": 3}) is None  # a stray reply
    assert plain.delivered == 1
    with_events = Subscription(events=True)
    assert with_events.take(event) is event
    assert with_events.delivered == 0  # count counts envelopes only


def test_pushes_without_seq_leave_the_cursor_alone() -> None:
    sub = Subscription(since=7)
    assert sub.take(push(1)) == env(1)
    assert sub.last_seq == 7


def test_a_push_at_or_below_the_cursor_was_handed_out_already() -> None:
    sub = Subscription(since=7)
    assert sub.take(push(1, seq=3)) is None
    assert sub.take(push(2, seq=7)) is None
    assert sub.take(push(3, seq=8)) == env(3)
    assert sub.take(push(3, seq=8)) is None  # the same push from a subscription since replaced
    assert sub.last_seq == 8 and sub.delivered == 1


def test_a_count_eaten_by_events_asks_for_the_unread_ones_again() -> None:
    core = ClientCore()
    sub = Subscription(count=2)
    assert sub.subscribe_args(core) == {"count": 2}
    sub.take({"event": "undelivered", "msg_id": "m", "to": "c", "reason": "gone", "seq": 1})
    assert not sub.exhausted
    sub.take(push(1, seq=2))
    assert sub.exhausted  # two pushes, one envelope: a daemon counting events stops here
    # the same connection: the unread ones again, with room for the two that come again first
    assert sub.subscribe_args(core) == {"count": 3}
    assert not sub.exhausted
    assert sub.take({"event": "undelivered", "seq": 1}) is None  # seen
    assert sub.take(push(1, seq=2)) is None
    assert not sub.exhausted
    assert sub.take(push(2, seq=5)) == env(2)
    assert sub.done and not sub.exhausted
    # a new connection (a reconnect) resumes after the cursor
    sub = Subscription(count=2)
    sub.subscribe_args(core)
    sub.take(push(1, seq=2))
    assert sub.subscribe_args(ClientCore()) == {"since": 2, "count": 1}


def test_a_count_eaten_after_since_asks_after_the_cursor() -> None:
    core = ClientCore()
    sub = Subscription(since=4, count=2)
    assert sub.subscribe_args(core) == {"since": 4, "count": 2}
    sub.take({"event": "undelivered", "seq": 5})
    sub.take(push(1, seq=6))
    assert sub.exhausted
    assert sub.subscribe_args(core) == {"since": 6, "count": 1}


def test_an_item_is_acked_only_once_the_consumer_asks_for_the_next() -> None:
    core = ClientCore()
    sub = Subscription(ack=True)
    sub.take(push(1, seq=1))
    assert sub.ack_lines(core) == b""  # the consumer has not finished with it
    assert not sub.settled
    sub.consumed()
    data = sub.ack_lines(core)
    ack = json.loads(data)
    assert ack["cmd"] == "ack" and ack["ids"] == ["id-1"]
    assert sub.ack_lines(core) == b""  # sent once
    assert not sub.settled
    sub.check_acks(core)
    assert not sub.settled  # no reply yet
    core.feed(line({"ok": True, "acked": 1, "req": ack["req"]}))
    sub.check_acks(core)
    assert sub.settled


def test_without_ack_nothing_is_owed() -> None:
    core = ClientCore()
    sub = Subscription()
    sub.take(push(1, seq=1))
    sub.consumed()
    assert sub.ack_lines(core) == b"" and sub.settled


def test_stored_events_handed_out_are_acked_by_msg_id() -> None:
    core = ClientCore()
    sub = Subscription(events=True, ack=True)
    sub.take({"event": "undelivered", "msg_id": "m1", "to": "c", "reason": "gone", "seq": 9})
    sub.consumed()
    assert json.loads(sub.ack_lines(core))["ids"] == ["m1"]
    sub = Subscription(events=True, ack=True)
    sub.take({"event": "disconnected", "reason": "too_slow"})  # not stored: nothing to ack
    sub.consumed()
    assert sub.ack_lines(core) == b""


def test_acks_unconfirmed_when_the_connection_is_lost_are_sent_again_on_the_next() -> None:
    old = ClientCore()
    sub = Subscription(ack=True)
    for n in (1, 2):
        sub.take(push(n, seq=n))
        sub.consumed()
        assert json.loads(sub.ack_lines(old))["ids"] == [f"id-{n}"]
    first = 1
    old.feed(line({"ok": True, "acked": 1, "req": first}))  # only the first was confirmed
    sub.check_acks(old)
    new = ClientCore()  # a reconnect: a new core; its reqs start again at 1
    sub.check_acks(new)
    assert not sub.settled
    again = json.loads(sub.ack_lines(new))
    assert again["ids"] == ["id-2"]
    new.feed(line({"ok": True, "acked": 1, "req": again["req"]}))
    sub.check_acks(new)
    assert sub.settled


def test_an_ack_the_daemon_could_not_store_is_raised() -> None:
    core = ClientCore()
    sub = Subscription(ack=True)
    sub.take(push(1, seq=1))
    sub.consumed()
    req = json.loads(sub.ack_lines(core))["req"]
    error = {"code": "store_failed", "message": "database is locked"}
    core.feed(line({"ok": False, "error": error, "req": req}))
    with pytest.raises(RequestFailed) as info:
        sub.check_acks(core)
    assert info.value.code == "store_failed"
    assert "id-1" in info.value.message and "database is locked" in info.value.message


def test_a_daemon_without_ack_turns_acking_off() -> None:
    core = ClientCore()
    sub = Subscription(ack=True)
    sub.take(push(1))
    sub.consumed()
    req = json.loads(sub.ack_lines(core))["req"]
    error = {"code": "unknown_command", "message": "unknown command 'ack'"}
    core.feed(line({"ok": False, "error": error, "req": req}))
    sub.check_acks(core)
    assert sub.settled and not sub.ack
    sub.take(push(2))
    sub.consumed()
    assert sub.ack_lines(core) == b""
