"""Envelope fields and the four kinds' payload schemas (docs/protocol.md §6), table-driven."""

from __future__ import annotations

import json
from typing import Any

import pytest

from acp.errors import EnvelopeError
from acp.model import Envelope
from acp.proto import envelope
from acp.proto.envelope import (
    FROM_MISMATCH,
    INVALID_ENVELOPE,
    INVALID_PAYLOAD,
    MAX_ENVELOPE,
    TO_MISMATCH,
    TOO_LARGE,
    UNKNOWN_KIND,
)

OK = None

GOOD_PAYLOADS: dict[str, dict[str, Any]] = {
    "query": {"question": "what time is it?", "context_budget": "minimal"},
    "response": {"data": {"answer": 42}},
    "delegate": {"task": "summarise", "priority": "normal", "report_back": True},
    "notify": {"topic": "build", "data": "green"},
}


def with_(kind: str, **changes: Any) -> dict[str, Any]:
    """The good payload of ``kind`` with fields changed; a value of ``...`` removes the field."""
    out = dict(GOOD_PAYLOADS[kind])
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


PAYLOAD_CASES: list[tuple[str, str, object, str | None]] = [
    # --- query: { question: string, domain?: string, context_budget: enum } ---
    ("query", "minimal", with_("query"), OK),
    ("query", "standard budget", with_("query", context_budget="standard"), OK),
    ("query", "full budget", with_("query", context_budget="full"), OK),
    ("query", "with domain", with_("query", domain="weather"), OK),
    ("query", "domain null is absent", with_("query", domain=None), OK),
    ("query", "empty question", with_("query", question=""), OK),
    ("query", "extra field", with_("query", language="fr"), OK),
    ("query", "no question", with_("query", question=...), INVALID_PAYLOAD),
    ("query", "question null", with_("query", question=None), INVALID_PAYLOAD),
    ("query", "question number", with_("query", question=7), INVALID_PAYLOAD),
    ("query", "question list", with_("query", question=["q"]), INVALID_PAYLOAD),
    ("query", "domain number", with_("query", domain=3), INVALID_PAYLOAD),
    ("query", "no budget", with_("query", context_budget=...), INVALID_PAYLOAD),
    ("query", "budget null", with_("query", context_budget=None), INVALID_PAYLOAD),
    ("query", "bad budget", with_("query", context_budget="huge"), INVALID_PAYLOAD),
    ("query", "budget case", with_("query", context_budget="Full"), INVALID_PAYLOAD),
    ("query", "budget number", with_("query", context_budget=1), INVALID_PAYLOAD),
    # --- response: { data: any, summary?: string, error?: string } ---
    ("response", "object data", with_("response"), OK),
    ("response", "null data", with_("response", data=None), OK),
    ("response", "list data", with_("response", data=[1, "two", None]), OK),
    ("response", "number data", with_("response", data=1.5), OK),
    ("response", "false data", with_("response", data=False), OK),
    ("response", "summary", with_("response", summary="short"), OK),
    ("response", "error", with_("response", error="no such thing"), OK),
    ("response", "summary null", with_("response", summary=None), OK),
    ("response", "extra field", with_("response", confidence=0.9), OK),
    ("response", "no data", with_("response", data=...), INVALID_PAYLOAD),
    ("response", "empty payload", {}, INVALID_PAYLOAD),
    ("response", "summary number", with_("response", summary=1), INVALID_PAYLOAD),
    ("response", "error object", with_("response", error={"code": 1}), INVALID_PAYLOAD),
    ("response", "error bool", with_("response", error=True), INVALID_PAYLOAD),
    # --- delegate: { task: string, context?: object, priority: enum, report_back: bool } ---
    ("delegate", "minimal", with_("delegate"), OK),
    ("delegate", "urgent", with_("delegate", priority="urgent"), OK),
    ("delegate", "report_back false", with_("delegate", report_back=False), OK),
    ("delegate", "context", with_("delegate", context={"files": ["a"]}), OK),
    ("delegate", "context empty", with_("delegate", context={}), OK),
    ("delegate", "context null", with_("delegate", context=None), OK),
    ("delegate", "extra field", with_("delegate", deadline="tomorrow"), OK),
    ("delegate", "no task", with_("delegate", task=...), INVALID_PAYLOAD),
    ("delegate", "task null", with_("delegate", task=None), INVALID_PAYLOAD),
    ("delegate", "task object", with_("delegate", task={}), INVALID_PAYLOAD),
    ("delegate", "context string", with_("delegate", context="cwd"), INVALID_PAYLOAD),
    ("delegate", "context list", with_("delegate", context=[]), INVALID_PAYLOAD),
    ("delegate", "no priority", with_("delegate", priority=...), INVALID_PAYLOAD),
    ("delegate", "bad priority", with_("delegate", priority="high"), INVALID_PAYLOAD),
    ("delegate", "priority null", with_("delegate", priority=None), INVALID_PAYLOAD),
    ("delegate", "no report_back", with_("delegate", report_back=...), INVALID_PAYLOAD),
    ("delegate", "report_back string", with_("delegate", report_back="yes"), INVALID_PAYLOAD),
    ("delegate", "report_back int", with_("delegate", report_back=1), INVALID_PAYLOAD),
    ("delegate", "report_back null", with_("delegate", report_back=None), INVALID_PAYLOAD),
    # --- notify: { topic: string, data: any } ---
    ("notify", "string data", with_("notify"), OK),
    ("notify", "null data", with_("notify", data=None), OK),
    ("notify", "nested data", with_("notify", data={"a": [{"b": None}]}), OK),
    ("notify", "extra field", with_("notify", ttl=5), OK),
    ("notify", "no topic", with_("notify", topic=...), INVALID_PAYLOAD),
    ("notify", "topic null", with_("notify", topic=None), INVALID_PAYLOAD),
    ("notify", "topic number", with_("notify", topic=5), INVALID_PAYLOAD),
    ("notify", "no data", with_("notify", data=...), INVALID_PAYLOAD),
    # --- the payload itself ---
    ("query", "payload list", [], INVALID_PAYLOAD),
    ("notify", "payload string", "hello", INVALID_PAYLOAD),
    ("response", "payload null", None, INVALID_PAYLOAD),
]


def envelope_obj(kind: str = "notify", payload: object = None, /, **fields: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "v": 1,
        "id": "m-1",
        "from": "agent-one",
        "to": "agent-two",
        "ts": 1700000000000,
        "kind": kind,
        "reply_to": None,
        "payload": GOOD_PAYLOADS.get(kind, {}) if payload is None else payload,
    }
    for key, value in fields.items():
        if value is ...:
            obj.pop(key, None)
        else:
            obj[key] = value
    return obj


def dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize(
    ("kind", "payload", "code"),
    [pytest.param(k, p, c, id=f"{k}-{name}") for k, name, p, c in PAYLOAD_CASES],
)
def test_payload_schema(kind: str, payload: object, code: str | None) -> None:
    obj = envelope_obj(kind)
    obj["payload"] = payload
    body = dumps(obj)
    if code is None:
        env = envelope.parse(body)
        assert env.kind == kind
        assert env.payload == payload  # extra payload fields pass through untouched
        assert json.loads(envelope.to_json(env))["payload"] == payload
        envelope.check_payload(kind, payload)
    else:
        with pytest.raises(EnvelopeError) as info:
            envelope.parse(body)
        assert info.value.code == code
        assert not info.value.fatal
        assert info.value.envelope_id == "m-1"
        with pytest.raises(EnvelopeError):
            envelope.check_payload(kind, payload)
    # A local client's envelope is judged by the same schema.
    client = {"kind": kind, "payload": payload}
    if code is None:
        env, _ = envelope.complete(client, own_id="agent-one", to="agent-two", now_ms=1)
        assert env.payload == payload
    else:
        with pytest.raises(EnvelopeError) as info:
            envelope.complete(client, own_id="agent-one", to="agent-two", now_ms=1)
        assert info.value.code == code


ENVELOPE_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("good", {}, OK),
    ("reply_to string", {"reply_to": "m-0"}, OK),
    ("reply_to absent", {"reply_to": ...}, OK),
    ("ts zero", {"ts": 0}, OK),
    ("id 256 chars", {"id": "i" * 256}, OK),
    ("id unicode", {"id": "ü-1"}, OK),
    ("v 2", {"v": 2}, INVALID_ENVELOPE),
    ("v true", {"v": True}, INVALID_ENVELOPE),
    ("v 1.0", {"v": 1.0}, INVALID_ENVELOPE),
    ("v string", {"v": "1"}, INVALID_ENVELOPE),
    ("no v", {"v": ...}, INVALID_ENVELOPE),
    ("id empty", {"id": ""}, INVALID_ENVELOPE),
    ("id 257 chars", {"id": "i" * 257}, INVALID_ENVELOPE),
    ("no from", {"from": ...}, INVALID_ENVELOPE),
    ("from bad", {"from": "-agent"}, INVALID_ENVELOPE),
    ("from number", {"from": 1}, INVALID_ENVELOPE),
    ("to bad", {"to": "a/b"}, INVALID_ENVELOPE),
    ("to too long", {"to": "a" * 64}, INVALID_ENVELOPE),
    ("no to", {"to": ...}, INVALID_ENVELOPE),
    ("no ts", {"ts": ...}, INVALID_ENVELOPE),
    ("ts negative", {"ts": -1}, INVALID_ENVELOPE),
    ("ts float", {"ts": 1.5}, INVALID_ENVELOPE),
    ("ts bool", {"ts": True}, INVALID_ENVELOPE),
    ("ts string", {"ts": "1700000000000"}, INVALID_ENVELOPE),
    ("reply_to number", {"reply_to": 5}, INVALID_ENVELOPE),
    ("kind unknown", {"kind": "command"}, UNKNOWN_KIND),
    ("kind null", {"kind": None}, UNKNOWN_KIND),
    ("kind missing", {"kind": ...}, UNKNOWN_KIND),
    ("kind list", {"kind": ["notify"]}, UNKNOWN_KIND),
    ("no payload", {"payload": ...}, INVALID_PAYLOAD),
]


@pytest.mark.parametrize(
    ("changes", "code"), [pytest.param(ch, c, id=name) for name, ch, c in ENVELOPE_CASES]
)
def test_envelope_fields(changes: dict[str, Any], code: str | None) -> None:
    obj = envelope_obj("notify", **changes)
    if code is None:
        env = envelope.parse(dumps(obj))
        assert env.id == obj["id"]
        assert env.reply_to == obj.get("reply_to")
        assert env.extra == {}
    else:
        with pytest.raises(EnvelopeError) as info:
            envelope.parse(dumps(obj))
        assert info.value.code == code
        assert info.value.envelope_id == obj["id"]
        assert not info.value.fatal


def test_parse_values() -> None:
    env = envelope.parse(dumps(envelope_obj("delegate", reply_to="m-0")))
    assert env == Envelope(
        v=1,
        id="m-1",
        from_="agent-one",
        to="agent-two",
        ts=1700000000000,
        kind="delegate",
        reply_to="m-0",
        payload=GOOD_PAYLOADS["delegate"],
    )
    assert not env.urgent
    urgent = envelope.parse(dumps(envelope_obj("delegate", with_("delegate", priority="urgent"))))
    assert urgent.urgent
    # Only a delegate can be urgent.
    assert not envelope.parse(
        dumps(envelope_obj("notify", {"topic": "t", "data": None, "priority": "urgent"}))
    ).urgent


def test_unknown_top_level_fields_are_kept_and_reserialised() -> None:
    obj = envelope_obj("query", trace={"hops": [1, 2]}, x_flag=True, note=None)
    env = envelope.parse(dumps(obj))
    assert env.extra == {"trace": {"hops": [1, 2]}, "x_flag": True, "note": None}
    wire = envelope.to_json(env)
    assert json.loads(wire) == obj
    assert envelope.parse(wire) == env
    # Compact separators, UTF-8 rather than \u escapes.
    assert b", " not in wire and b": " not in wire
    env2 = envelope.parse(dumps(envelope_obj("notify", {"topic": "météo", "data": "☀"})))
    assert "météo".encode() in envelope.to_json(env2)


def test_to_dict_prefers_core_fields_over_extra() -> None:
    env = Envelope(
        1,
        "m",
        "a",
        "b",
        1,
        "notify",
        None,
        {"topic": "t", "data": 1},
        extra={"from": "mallory", "z": 1},
    )
    assert env.to_dict()["from"] == "a"
    assert env.to_dict()["z"] == 1


# --- complete: what a local client hands to send ---------------------------------------------


def test_complete_fills_v_id_from_ts() -> None:
    env, wire = envelope.complete(
        {"kind": "notify", "payload": {"topic": "t", "data": None}},
        own_id="agent-one",
        to="agent-two",
        now_ms=1234,
        new_id=lambda: "fresh-id",
    )
    assert (env.v, env.id, env.from_, env.to, env.ts) == (
        1,
        "fresh-id",
        "agent-one",
        "agent-two",
        1234,
    )
    assert env.reply_to is None
    assert wire == envelope.to_json(env)
    assert envelope.parse(wire) == env


def test_complete_default_ids_are_unique() -> None:
    client = {"kind": "notify", "payload": {"topic": "t", "data": None}}
    a, _ = envelope.complete(client, own_id="a", to="b", now_ms=1)
    b, _ = envelope.complete(client, own_id="a", to="b", now_ms=1)
    assert a.id != b.id and len(a.id) == 36


def test_complete_keeps_what_the_client_set() -> None:
    client = {
        "v": 1,
        "id": "client-id",
        "from": "agent-one",
        "to": "agent-two",
        "ts": 99,
        "kind": "response",
        "reply_to": "m-0",
        "payload": {"data": None},
        "extra_field": [1],
    }
    env, wire = envelope.complete(client, own_id="agent-one", to="agent-two", now_ms=1234)
    assert (env.id, env.ts, env.reply_to) == ("client-id", 99, "m-0")
    assert json.loads(wire) == client
    assert client["id"] == "client-id" and "v" in client  # the caller's dict is not modified
    nulls = {
        "id": None,
        "from": None,
        "to": None,
        "ts": None,
        "kind": "notify",
        "payload": {"topic": "t", "data": 0},
    }
    env, _ = envelope.complete(nulls, own_id="a", to="b", now_ms=7, new_id=lambda: "n")
    assert (env.id, env.from_, env.to, env.ts) == ("n", "a", "b", 7)


@pytest.mark.parametrize(
    ("client", "to", "code"),
    [
        ({"to": "agent-two"}, None, OK),
        ({"to": "agent-two"}, "agent-two", OK),
        ({}, "agent-two", OK),
        ({}, None, INVALID_ENVELOPE),  # a send needs a destination somewhere
        ({"to": "agent-three"}, "agent-two", TO_MISMATCH),
        ({"from": "agent-nine"}, "agent-two", FROM_MISMATCH),
        ({"from": "agent-one"}, "agent-two", OK),
        ({"id": 5}, "agent-two", INVALID_ENVELOPE),
        ({"v": 2}, "agent-two", INVALID_ENVELOPE),
        ({"ts": -5}, "agent-two", INVALID_ENVELOPE),
        ({"kind": "chat"}, "agent-two", UNKNOWN_KIND),
        ({"payload": {"topic": 1, "data": 0}}, "agent-two", INVALID_PAYLOAD),
    ],
)
def test_complete_to_and_from(client: dict[str, Any], to: str | None, code: str | None) -> None:
    obj = {"kind": "notify", "payload": {"topic": "t", "data": None}, **client}
    if code is None:
        env, _ = envelope.complete(obj, own_id="agent-one", to=to, now_ms=1)
        assert (env.from_, env.to) == ("agent-one", "agent-two")
    else:
        with pytest.raises(EnvelopeError) as info:
            envelope.complete(obj, own_id="agent-one", to=to, now_ms=1)
        assert info.value.code == code


@pytest.mark.parametrize("obj", [None, [], "x", 5])
def test_complete_refuses_non_objects(obj: object) -> None:
    with pytest.raises(EnvelopeError) as info:
        envelope.complete(obj, own_id="a", to="b", now_ms=1)
    assert info.value.code == INVALID_ENVELOPE


def sized_client(size: int, char: str = "x") -> dict[str, Any]:
    """A client envelope whose compact JSON is exactly ``size`` bytes once completed."""
    base = {"id": "m-1", "kind": "notify", "payload": {"topic": "t", "data": ""}}
    _, wire = envelope.complete(base, own_id="agent-one", to="agent-two", now_ms=1700000000000)
    pad = size - len(wire)
    width = len(char.encode())
    base["payload"] = {"topic": "t", "data": "x" * (pad % width) + char * (pad // width)}
    return base


def test_complete_limit_is_65518_bytes_exactly() -> None:
    assert MAX_ENVELOPE == 65518 == 65535 - 16 - 1
    env, wire = envelope.complete(
        sized_client(65518), own_id="agent-one", to="agent-two", now_ms=1700000000000
    )
    assert len(wire) == 65518
    assert envelope.parse(wire) == env
    with pytest.raises(EnvelopeError) as info:
        envelope.complete(
            sized_client(65519), own_id="agent-one", to="agent-two", now_ms=1700000000000
        )
    assert info.value.code == TOO_LARGE
    assert "65518" in info.value.message
    assert info.value.envelope_id == "m-1"


def test_complete_limit_counts_utf8_bytes() -> None:
    # "é" is two bytes on the wire: 65518 bytes is fine, one more is too large.
    _, wire = envelope.complete(
        sized_client(65518, "é"), own_id="agent-one", to="agent-two", now_ms=1700000000000
    )
    assert len(wire) == 65518 and "é".encode() in wire
    client = sized_client(65518, "é")
    client["payload"]["data"] += "x"
    with pytest.raises(EnvelopeError) as info:
        envelope.complete(client, own_id="agent-one", to="agent-two", now_ms=1700000000000)
    assert info.value.code == TOO_LARGE


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_complete_refuses_values_json_cannot_carry(value: float) -> None:
    """NaN and Infinity are not JSON: a strict peer could not parse the wire bytes."""
    with pytest.raises(EnvelopeError) as info:
        envelope.complete(
            {"kind": "notify", "payload": {"topic": "t", "data": value}},
            own_id="a",
            to="b",
            now_ms=1,
        )
    assert info.value.code in (INVALID_ENVELOPE, INVALID_PAYLOAD)


@pytest.mark.parametrize("text", ["\ud800", "x\udfff", "\udc00\ud800"])
def test_complete_refuses_a_lone_surrogate(text: str) -> None:
    """JSON can escape one, but a strict peer refuses it (§6): refused here, not there."""
    with pytest.raises(EnvelopeError) as info:
        envelope.complete(
            {"kind": "notify", "payload": {"topic": text, "data": None}},
            own_id="a",
            to="b",
            now_ms=1,
        )
    assert info.value.code == INVALID_ENVELOPE and "surrogate" in info.value.message
    env, wire = envelope.complete(
        {"kind": "notify", "payload": {"topic": "\U0001f600", "data": None}},
        own_id="a",
        to="b",
        now_ms=1,
    )
    assert envelope.parse_wire(wire) == (env, wire)


# --- check_route ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session_peer", "own_id", "code"),
    [
        ("agent-one", "agent-two", OK),
        ("agent-nine", "agent-two", FROM_MISMATCH),
        ("agent-one", "agent-nine", TO_MISMATCH),
        ("agent-nine", "agent-eight", FROM_MISMATCH),  # from is checked first
        ("Agent-one", "agent-two", FROM_MISMATCH),  # agent_ids compare exactly
    ],
)
def test_check_route(session_peer: str, own_id: str, code: str | None) -> None:
    env = envelope.parse(dumps(envelope_obj("notify")))
    if code is None:
        envelope.check_route(env, session_peer=session_peer, own_id=own_id)
    else:
        with pytest.raises(EnvelopeError) as info:
            envelope.check_route(env, session_peer=session_peer, own_id=own_id)
        assert info.value.code == code
        assert info.value.envelope_id == "m-1"
        assert not info.value.fatal
