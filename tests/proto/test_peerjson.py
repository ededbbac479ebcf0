"""Strict JSON from peers (docs/protocol.md §5, §6): what is refused, what round-trips."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acp.errors import EnvelopeError, ProtocolError
from acp.proto import envelope, peerjson
from acp.proto.card import AgentCard
from acp.proto.envelope import INVALID_ENVELOPE

# Unicode text without surrogates (hypothesis' default alphabet), finite floats, big integers.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
# How other senders write the same value: compact or not, escaped to ASCII or not, indented.
STYLES = [
    {"separators": (",", ":"), "ensure_ascii": False},
    {},
    {"indent": 2},
    {"separators": (" , ", " : "), "ensure_ascii": True},
]
COMPACT = {"separators": (",", ":"), "ensure_ascii": False, "allow_nan": False}
# Containers to put a hostile fragment into, at any depth.
WRAPPERS = ["[{}]", '{{"k":{}}}', '[1,{},"x"]', '{{"a":null,"b":{},"c":[]}}', "{}"]


def wrapped(fragment: str) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(WRAPPERS), max_size=4).map(lambda ws: _wrap(fragment, ws))


def _wrap(fragment: str, wrappers: list[str]) -> str:
    for w in wrappers:
        fragment = w.format(fragment)
    return fragment


@given(json_values, st.sampled_from(STYLES))
@settings(max_examples=400, deadline=None)
def test_json_without_those_features_round_trips(value: Any, style: dict[str, Any]) -> None:
    data = json.dumps(value, **style).encode()
    parsed, compact = peerjson.loads(data)
    assert parsed == json.loads(data)
    assert compact == json.dumps(value, **COMPACT).encode()
    assert peerjson.loads(compact) == (parsed, compact)  # the re-serialisation is a fixed point


@st.composite
def with_a_duplicated_key(draw: st.DrawFn) -> bytes:
    obj = draw(st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=5))
    pairs = list(obj.items())
    key = draw(st.sampled_from(sorted(obj)))
    pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(json_values)))
    ascii_ = draw(st.booleans())
    text = (
        "{"
        + ",".join(
            f"{json.dumps(k, ensure_ascii=ascii_)}:{json.dumps(v, ensure_ascii=ascii_)}"
            for k, v in pairs
        )
        + "}"
    )
    return draw(wrapped(text)).encode()


@given(with_a_duplicated_key())
@settings(max_examples=300, deadline=None)
def test_any_duplicated_key_at_any_depth_is_refused(data: bytes) -> None:
    with pytest.raises(peerjson.NotStrictJSON, match="duplicated key"):
        peerjson.loads(data)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
@given(st.data())
@settings(max_examples=20, deadline=None)
def test_nan_and_infinity_are_refused_at_any_depth(constant: str, data: st.DataObject) -> None:
    text = data.draw(wrapped(f'{{"x":{constant}}}'))
    with pytest.raises(peerjson.NotStrictJSON):
        peerjson.loads(text.encode())


LONE = [
    '"\\ud800"',  # a high surrogate alone
    '"\\udfff"',  # a low surrogate alone
    '"x\\uDBFFy"',  # upper-case hex, inside text
    '"\\udc00\\ud800"',  # low then high: no pair
    '"\\ud800\\ud800"',  # two highs
    '"\\ud83d\\u0041"',  # a high, then not a low
    '"\\ud83d\\\\ude00"',  # a high, then an escaped backslash: the rest is plain text
]


@pytest.mark.parametrize("lone", LONE)
@pytest.mark.parametrize("where", ["value", "key"])
@given(st.data())
@settings(max_examples=10, deadline=None)
def test_a_lone_surrogate_in_a_key_or_a_value_is_refused(
    lone: str, where: str, data: st.DataObject
) -> None:
    fragment = f'{{"k":{lone}}}' if where == "value" else f"{{{lone}:1}}"
    text = data.draw(wrapped(fragment))
    with pytest.raises(peerjson.NotStrictJSON, match="surrogate"):
        peerjson.loads(text.encode())


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('"\\ud83d\\ude00"', "😀"),  # a pair, as ensure_ascii senders write it
        ('"\\uD83D\\uDE00"', "😀"),
        ('"\\\\ud800"', "\\ud800"),  # an escaped backslash, then plain text
        ('"\\u00e9\\u2028"', "é\u2028"),
    ],
)
def test_surrogate_pairs_and_lookalikes_are_accepted(text: str, value: str) -> None:
    parsed, compact = peerjson.loads(f'{{"k":{text}}}'.encode())
    assert parsed == {"k": value}
    assert compact == json.dumps({"k": value}, **COMPACT).encode()


# --- envelopes ------------------------------------------------------------------------------


def envelope_text(**fields: str) -> bytes:
    """A valid notify envelope from agent-one to agent-two, each field given as JSON text."""
    body = {
        "v": "1",
        "id": '"m-1"',
        "from": '"agent-one"',
        "to": '"agent-two"',
        "ts": "1700000000000",
        "kind": '"notify"',
        "reply_to": "null",
        "payload": '{"topic":"t","data":null}',
    }
    body.update(fields)
    return ("{" + ",".join(f'"{k}":{v}' for k, v in body.items()) + "}").encode()


NOT_STRICT = {
    "from twice": envelope_text()[:-1] + b',"from":"mallory"}',
    "duplicated payload key": envelope_text(payload='{"topic":"t","data":1,"topic":"u"}'),
    "duplicated key deep": envelope_text(payload='{"topic":"t","data":[{"a":1,"a":1}]}'),
    "NaN": envelope_text(payload='{"topic":"t","data":NaN}'),
    "Infinity": envelope_text(ts="Infinity"),
    "-Infinity in an extra field": envelope_text(x="-Infinity"),
    "lone surrogate": envelope_text(payload='{"topic":"\\ud800","data":null}'),
    "lone surrogate in a key": envelope_text(payload='{"topic":"t","data":{"\\udc00":1}}'),
}


@pytest.mark.parametrize("body", NOT_STRICT.values(), ids=NOT_STRICT.keys())
def test_envelope_that_is_not_strict_json_is_refused_with_its_id(body: bytes) -> None:
    assert json.loads(body)["id"] == "m-1"  # Python's json reads it (the last key wins)
    with pytest.raises(EnvelopeError) as info:
        envelope.parse_wire(body)
    assert info.value.code == INVALID_ENVELOPE and not info.value.fatal
    assert info.value.envelope_id == "m-1"
    assert "strict" in info.value.message


def test_a_duplicated_from_is_refused_whichever_comes_last() -> None:
    for first, last in (("agent-one", "mallory"), ("mallory", "agent-one")):
        body = envelope_text(**{"from": f'"{first}"'})[:-1] + f',"from":"{last}"}}'.encode()
        with pytest.raises(EnvelopeError) as info:
            envelope.parse_wire(body)
        assert info.value.code == INVALID_ENVELOPE and "duplicated key 'from'" in str(info.value)


def test_a_duplicated_id_is_acked_with_the_last_one() -> None:
    body = envelope_text()[:-1] + b',"id":"m-2"}'
    with pytest.raises(EnvelopeError) as info:
        envelope.parse_wire(body)
    assert info.value.envelope_id == "m-2" and not info.value.fatal


@pytest.mark.parametrize(
    "body",
    [
        b'{"id":"m-1","x":NaN,',  # not JSON after the NaN either
        b'{"x":NaN}',  # no id to ACK
        b'{"id":7,"id":"m-1","id":8}',  # the id that counts is not a string
        b'[{"a":1,"a":2}]',  # not an object
    ],
)
def test_not_strict_and_no_string_id_closes_the_session(body: bytes) -> None:
    with pytest.raises(EnvelopeError) as info:
        envelope.parse_wire(body)
    assert info.value.fatal and info.value.envelope_id is None


def test_parse_wire_gives_the_compact_re_serialisation() -> None:
    obj = json.loads(envelope_text(x='"\\u00e9 \\ud83d\\ude00"'))
    spaced = json.dumps(obj, indent=2).encode()  # line breaks, spaces, \u escapes
    env, wire = envelope.parse_wire(spaced)
    assert wire == json.dumps(obj, **COMPACT).encode()
    assert b"\n" not in wire and "é 😀".encode() in wire
    assert envelope.parse_wire(wire) == (env, wire)
    assert envelope.to_json(env) == wire  # the same bytes an acp sender puts on the wire


def test_an_agent_card_is_read_with_the_same_strict_parser() -> None:
    for body in (b'{"skills":[],"skills":["x"]}', b'{"description":"\\ud800"}'):
        with pytest.raises(ProtocolError):
            AgentCard.from_wire(body)
    assert AgentCard.from_wire(b'{"description":"\\ud83d\\ude00"}').description == "😀"
