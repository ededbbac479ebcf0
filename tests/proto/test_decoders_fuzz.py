"""Every decoder: arbitrary bytes -> values or a ProtocolError subclass, never anything else."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acp.errors import EnvelopeError, FrameError, HandshakeError, IpcError, ProtocolError
from acp.model import Ack, Envelope
from acp.proto import envelope, handshake, ipc, session
from acp.proto.handshake import Hello, Refused

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def interesting_objects(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects that mostly use the keys a decoder looks at."""
    key = st.one_of(st.sampled_from(keys), st.text(max_size=6))
    value = st.one_of(json_values, st.sampled_from(["agent-one", "b", 1, 0, -1, "", "x" * 300]))
    return st.dictionaries(key, value, max_size=len(keys) + 2)


def json_bytes(keys: list[str]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        interesting_objects(keys).map(lambda v: json.dumps(v, ensure_ascii=False).encode()),
        st.text(max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass")),
    )


def same_json(a: object, b: object) -> bool:
    """Equal as JSON (NaN, which Python's json reads, is not equal to itself)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


DEEP = b"[" * 20_000 + b"]" * 20_000  # fits one frame, beyond any recursion limit


# --- session frames -------------------------------------------------------------------------


@given(
    st.one_of(
        st.binary(max_size=200),
        st.integers(0, 255).flatmap(
            lambda t: json_bytes(["id", "ok", "error"]).map(lambda b: bytes([t]) + b)
        ),
    )
)
@settings(max_examples=500, deadline=None)
def test_session_decode_on_garbage(data: bytes) -> None:
    try:
        frame = session.decode(data)
    except ProtocolError as exc:
        pinged = data[:1] in (b"\x03", b"\x04")  # PING or PONG, not of 8 bytes
        assert data == b"" or data[0] == session.ACK or (pinged and len(data) != 9)
        assert isinstance(exc, FrameError) == (data == b"" or pinged)
        return
    kind = data[0]
    if kind == session.ENVELOPE:
        assert frame == session.EnvelopeFrame(data[1:])
    elif kind == session.ACK:
        assert isinstance(frame, session.AckFrame)
        assert frame.ack.ok in (True, False)
        assert isinstance(frame.ack.id, str)
    elif kind in (session.PING, session.PONG):
        assert frame.data == data[1:] and len(data) == 1 + session.PING_LEN  # type: ignore[union-attr]
    elif kind == session.BYE:
        assert isinstance(frame, session.Bye)
    elif kind == session.CARD:  # its body is judged by acp.proto.card, not here
        assert frame == session.CardFrame(data[1:])
    else:
        assert frame == session.Unknown(kind)


@pytest.mark.parametrize("kind", [0x00, 0x07, 0x7F, 0xFF])
def test_unknown_session_types_decode_to_unknown(kind: int) -> None:
    assert session.decode(bytes([kind]) + b"whatever") == session.Unknown(kind)
    assert session.decode(bytes([kind])) == session.Unknown(kind)


def test_empty_session_frame_is_frame_error() -> None:
    with pytest.raises(FrameError):
        session.decode(b"")


@pytest.mark.parametrize(
    "ack", [Ack("m-1", True), Ack("m-2", False, "inbox_full"), Ack("ü", False, "from_mismatch")]
)
def test_ack_round_trip(ack: Ack) -> None:
    assert session.decode(session.encode_ack(ack)) == session.AckFrame(ack)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"id":"a","ok":true}', Ack("a", True)),
        (b'{"id":"a","ok":false,"error":"to_mismatch"}', Ack("a", False, "to_mismatch")),
        (b'{"id":"a","ok":false}', Ack("a", False, "refused")),
        (b'{"id":"a","ok":false,"error":5}', Ack("a", False, "refused")),
        (b'{"id":"a","ok":1}', Ack("a", False, "refused")),  # only JSON true is ok
        (b'{"id":"a"}', Ack("a", False, "refused")),
    ],
)
def test_ack_bodies(body: bytes, expected: Ack) -> None:
    assert session.decode(b"\x02" + body) == session.AckFrame(expected)


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[1]", b'{"id":5,"ok":true}', b'{"ok":true}', b"\xff\xfe", DEEP]
)
def test_bad_ack_bodies_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        session.decode(b"\x02" + body)


def test_session_encoders() -> None:
    assert session.decode(session.encode_ping(b"12345678")) == session.Ping(b"12345678")
    assert session.decode(session.encode_pong(b"12345678")) == session.Pong(b"12345678")
    assert session.decode(session.encode_bye("shutting down")) == session.Bye("shutting down")
    assert session.decode(session.encode_envelope(b"{}")) == session.EnvelopeFrame(b"{}")
    assert session.decode(b"\x05\xff") == session.Bye("\ufffd")


@pytest.mark.parametrize("kind", [session.PING, session.PONG])
@pytest.mark.parametrize("length", [0, 1, 7, 9, 16, 65_000])
def test_ping_and_pong_bodies_are_exactly_8_bytes(kind: int, length: int) -> None:
    with pytest.raises(FrameError, match=f"of {length} bytes"):
        session.decode(bytes([kind]) + bytes(length))
    assert session.encode_envelope(b"x" * session.MAX_BODY)[0] == session.ENVELOPE
    with pytest.raises(ProtocolError):
        session.encode_envelope(b"x" * (session.MAX_BODY + 1))
    assert session.MAX_BODY == 65518


# --- handshake payloads ---------------------------------------------------------------------


@given(json_bytes(["v", "agent_id", "ts", "port"]))
@settings(max_examples=500, deadline=None)
def test_parse_hello_on_garbage(data: bytes) -> None:
    try:
        hello = handshake.parse_hello(data)
    except ProtocolError as exc:
        assert isinstance(exc, Refused)
        assert exc.reason == handshake.BAD_PAYLOAD
        return
    obj = json.loads(data)
    assert hello.agent_id == obj["agent_id"]
    assert hello.ts == obj["ts"] >= 0
    assert hello.port is None or 1 <= hello.port <= 65535


@given(json_bytes(["v", "agent_id"]))
@settings(max_examples=500, deadline=None)
def test_parse_welcome_on_garbage(data: bytes) -> None:
    try:
        got = handshake.parse_welcome(data, expected_agent_id="agent-two")
    except ProtocolError as exc:
        assert isinstance(exc, Refused)
        assert exc.reason in (handshake.BAD_PAYLOAD, handshake.WRONG_PEER)
        return
    assert got == "agent-two"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"null",
        b"[]",
        b'{"agent_id":"a","ts":1}',
        b'{"v":2,"agent_id":"a","ts":1}',
        b'{"v":true,"agent_id":"a","ts":1}',
        b'{"v":1,"agent_id":"-a","ts":1}',
        b'{"v":1,"agent_id":"a b","ts":1}',
        b'{"v":1,"agent_id":"' + b"a" * 64 + b'","ts":1}',
        b'{"v":1,"agent_id":"a"}',
        b'{"v":1,"agent_id":"a","ts":-1}',
        b'{"v":1,"agent_id":"a","ts":1.5}',
        b'{"v":1,"agent_id":"a","ts":true}',
        b'{"v":1,"agent_id":"a","ts":"1"}',
        DEEP,
    ],
)
def test_bad_hello_is_refused_bad_payload(data: bytes) -> None:
    with pytest.raises(Refused) as info:
        handshake.parse_hello(data)
    assert info.value.reason == handshake.BAD_PAYLOAD
    assert isinstance(info.value, HandshakeError)


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        (7100, 7100),
        (1, 1),
        (65535, 65535),
        (0, None),
        (65536, None),
        ("7100", None),
        (True, None),
        (None, None),
    ],
)
def test_hello_port_is_optional(port: object, expected: int | None) -> None:
    obj: dict[str, Any] = {"v": 1, "agent_id": "agent-one", "ts": 5, "port": port}
    assert handshake.parse_hello(json.dumps(obj).encode()) == Hello("agent-one", 5, expected)


def test_hello_and_welcome_round_trip() -> None:
    data = handshake.hello_payload("agent-one", 1700000000000, 7100)
    assert data == b'{"v":1,"agent_id":"agent-one","ts":1700000000000,"port":7100}'
    assert handshake.parse_hello(data) == Hello("agent-one", 1700000000000, 7100)
    assert handshake.parse_hello(handshake.hello_payload("a", 0, None)) == Hello("a", 0, None)
    assert b"port" not in handshake.hello_payload("a", 0, None)
    welcome = handshake.welcome_payload("agent-two")
    assert welcome == b'{"v":1,"agent_id":"agent-two"}'
    assert handshake.parse_welcome(welcome, expected_agent_id="agent-two") == "agent-two"


def test_welcome_from_wrong_agent_is_wrong_peer() -> None:
    with pytest.raises(Refused) as info:
        handshake.parse_welcome(handshake.welcome_payload("mallory"), expected_agent_id="agent-two")
    assert info.value.reason == handshake.WRONG_PEER
    assert "agent-two" in str(info.value) and "mallory" in str(info.value)


# --- envelopes ------------------------------------------------------------------------------

ENVELOPE_KEYS = ["v", "id", "from", "to", "ts", "kind", "reply_to", "payload"]


def is_object_with_string_id(body: bytes) -> bool:
    try:
        obj = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and isinstance(obj.get("id"), str)


def envelope_like() -> st.SearchStrategy[bytes]:
    valid = st.fixed_dictionaries(
        {
            "v": st.sampled_from([1, 1, 1, 2, True, 1.0, "1"]),
            "id": st.one_of(st.text(max_size=10), st.integers(), st.none()),
            "from": st.sampled_from(["agent-one", "a", "", "-x", 5]),
            "to": st.sampled_from(["agent-two", "b", "bad id"]),
            "ts": st.one_of(st.integers(-5, 2**63), st.floats(allow_nan=False), st.booleans()),
            "kind": st.sampled_from(["query", "response", "delegate", "notify", "other", None]),
            "reply_to": st.one_of(st.none(), st.text(max_size=5), st.integers()),
            "payload": st.one_of(
                interesting_objects(
                    [
                        "question",
                        "context_budget",
                        "data",
                        "task",
                        "priority",
                        "report_back",
                        "topic",
                        "summary",
                        "error",
                        "context",
                        "domain",
                    ]
                ),
                json_values,
            ),
        },
        optional={"x-extra": json_values},
    )
    return st.one_of(
        json_bytes(ENVELOPE_KEYS),
        valid.map(lambda d: json.dumps(d, ensure_ascii=False).encode()),
    )


@given(envelope_like())
@settings(max_examples=800, deadline=None)
def test_envelope_parse_on_garbage(body: bytes) -> None:
    try:
        env = envelope.parse(body)
    except ProtocolError as exc:
        assert isinstance(exc, EnvelopeError)
        assert exc.fatal == (not is_object_with_string_id(body))
        if not exc.fatal:
            assert exc.envelope_id == json.loads(body)["id"]
            assert exc.code in (
                envelope.INVALID_ENVELOPE,
                envelope.UNKNOWN_KIND,
                envelope.INVALID_PAYLOAD,
            )
        return
    assert isinstance(env, Envelope)
    obj = json.loads(body)
    assert env.id == obj["id"]
    # What parse accepts serialises back to the same JSON object and parses again.
    wire = envelope.to_json(env)
    assert same_json(json.loads(wire), obj)
    assert envelope.to_json(envelope.parse(wire)) == wire


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe",
        b"nope",
        b"[]",
        b"null",
        b"{}",
        b'{"id":5}',
        b'{"id":null}',
        b'{"ID":"x"}',
        b'"id"',
        DEEP,
        b'{"id":"x"' + b"]" * 3,
    ],
)
def test_envelope_without_string_id_is_fatal(body: bytes) -> None:
    with pytest.raises(EnvelopeError) as info:
        envelope.parse(body)
    assert info.value.fatal
    assert info.value.envelope_id is None


def test_envelope_with_id_but_wrong_is_not_fatal() -> None:
    with pytest.raises(EnvelopeError) as info:
        envelope.parse(b'{"id":"m-1"}')
    assert not info.value.fatal
    assert info.value.envelope_id == "m-1"
    assert info.value.code == envelope.INVALID_ENVELOPE


def test_oversized_envelope_body_is_too_large() -> None:
    body = b'{"id":"m-1","pad":"' + b"x" * envelope.MAX_ENVELOPE + b'"}'
    with pytest.raises(EnvelopeError) as info:
        envelope.parse(body)
    assert info.value.code == envelope.TOO_LARGE


def test_envelope_with_lone_surrogate_is_refused() -> None:
    """JSON may escape a lone surrogate; a strict receiver refuses it with an ACK (§6)."""
    body = (
        b'{"v":1,"id":"m-1","from":"a","to":"b","ts":1,"kind":"notify","reply_to":null,'
        b'"payload":{"topic":"\\ud800","data":null}}'
    )
    with pytest.raises(EnvelopeError) as info:
        envelope.parse(body)
    assert info.value.code == envelope.INVALID_ENVELOPE and not info.value.fatal
    assert info.value.envelope_id == "m-1"
    env = envelope.parse(body.replace(b"\\ud800", b"\\ud83d\\ude00"))  # a pair is fine
    assert env.payload["topic"] == "\U0001f600"
    line = ipc.encode({"inbound": True, "envelope": env.to_dict()})
    assert json.loads(line)["envelope"]["payload"]["topic"] == "\U0001f600"


# --- IPC ------------------------------------------------------------------------------------

IPC_KEYS = [
    "cmd",
    "req",
    "to",
    "envelope",
    "wait",
    "timeout",
    "msg_id",
    "payload",
    "agent_id",
    "pubkey",
    "addr",
]


def ipc_like() -> st.SearchStrategy[bytes]:
    objs = st.builds(
        lambda cmd, rest: {**rest, "cmd": cmd},
        st.one_of(st.sampled_from(ipc.COMMANDS), st.text(max_size=5), st.integers()),
        interesting_objects(IPC_KEYS),
    )
    return st.one_of(json_bytes(IPC_KEYS), objs.map(lambda d: json.dumps(d).encode()))


@given(ipc_like())
@settings(max_examples=800, deadline=None)
def test_parse_request_on_garbage(line: bytes) -> None:
    try:
        request = ipc.parse_request(line)
    except ProtocolError as exc:
        assert isinstance(exc, IpcError)
        assert exc.code in (ipc.BAD_JSON, ipc.BAD_REQUEST, ipc.UNKNOWN_COMMAND)
        if exc.code != ipc.BAD_JSON:
            assert same_json(exc.req, json.loads(line).get("req"))
        return
    obj = json.loads(line)
    assert request.cmd == obj["cmd"] in ipc.COMMANDS
    assert request.req == obj.get("req")
    assert same_json(request.args, {k: v for k, v in obj.items() if k not in ("cmd", "req")})


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"", ipc.BAD_JSON),
        (b"{", ipc.BAD_JSON),
        (b"\xff", ipc.BAD_JSON),
        (b"[1,2]", ipc.BAD_JSON),
        (DEEP, ipc.BAD_JSON),
        (b'{"req":7}', ipc.BAD_REQUEST),
        (b'{"cmd":5}', ipc.BAD_REQUEST),
        (b'{"cmd":"fly","req":"r"}', ipc.UNKNOWN_COMMAND),
        (b'{"cmd":"send","envelope":{}}', ipc.BAD_REQUEST),
        (b'{"cmd":"send","to":"bad id","envelope":{}}', ipc.BAD_REQUEST),
        (b'{"cmd":"send","to":"b","envelope":[]}', ipc.BAD_REQUEST),
        (b'{"cmd":"send","to":"b","envelope":{},"wait":"forever"}', ipc.BAD_REQUEST),
        (b'{"cmd":"send","to":"b","envelope":{},"timeout":0}', ipc.BAD_REQUEST),
        (b'{"cmd":"send","to":"b","envelope":{},"timeout":3601}', ipc.BAD_REQUEST),
        (b'{"cmd":"send","to":"b","envelope":{},"timeout":true}', ipc.BAD_REQUEST),
        (b'{"cmd":"send","to":"b","envelope":{},"timeout":NaN}', ipc.BAD_REQUEST),
        (b'{"cmd":"reply","msg_id":"","payload":{}}', ipc.BAD_REQUEST),
        (b'{"cmd":"reply","msg_id":"m","payload":{},"wait":"response"}', ipc.BAD_REQUEST),
        (b'{"cmd":"trust","agent_id":"b"}', ipc.BAD_REQUEST),
        (b'{"cmd":"forget"}', ipc.BAD_REQUEST),
    ],
)
def test_bad_requests(line: bytes, code: str) -> None:
    with pytest.raises(IpcError) as info:
        ipc.parse_request(line)
    assert info.value.code == code
    if b'"req"' in line:
        assert info.value.req == json.loads(line)["req"]


def test_good_request_and_replies() -> None:
    line = b'{"cmd":"send","to":"b","envelope":{"kind":"notify"},"wait":"acked","timeout":2.5,"req":[1]}'
    request = ipc.parse_request(line)
    assert request == ipc.Request(
        "send", {"to": "b", "envelope": {"kind": "notify"}, "wait": "acked", "timeout": 2.5}, [1]
    )
    assert ipc.parse_request(b'{"cmd":"status"}') == ipc.Request("status", {}, None)
    assert ipc.encode(ipc.ok_reply(req=3, msg_id="m")) == b'{"ok":true,"msg_id":"m","req":3}\n'
    err = ipc.error_reply(ipc.TIMEOUT, "no answer", req="r")
    assert err == {"ok": False, "error": {"code": "timeout", "message": "no answer"}, "req": "r"}
    assert ipc.encode({"t": "é"}) == '{"t":"é"}\n'.encode()


def test_request_line_over_cap() -> None:
    line = b'{"cmd":"status","pad":"' + b"x" * ipc.MAX_LINE + b'"}'
    with pytest.raises(IpcError) as info:
        ipc.parse_request(line)
    assert info.value.code == ipc.LINE_TOO_LONG
    # A line of exactly the cap is parsed.
    pad = ipc.MAX_LINE - len(b'{"cmd":"status","pad":""}')
    exact = b'{"cmd":"status","pad":"' + b"x" * pad + b'"}'
    assert len(exact) == ipc.MAX_LINE
    assert ipc.parse_request(exact).cmd == "status"


def reference_lines(stream: bytes, limit: int) -> list[bytes | str]:
    """Complete lines of ``stream``: the line, or "too_long"; blank lines skipped."""
    out: list[bytes | str] = []
    for raw in stream.split(b"\n")[:-1]:
        if len(raw) > limit:
            out.append("too_long")
        elif raw.rstrip(b"\r").strip():
            out.append(raw.rstrip(b"\r"))
    return out


def feed_all(buf: ipc.LineBuffer, chunks: list[bytes]) -> list[bytes | str]:
    out: list[bytes | str] = []
    for chunk in chunks:
        for item in buf.feed(chunk):
            if isinstance(item, IpcError):
                assert item.code == ipc.LINE_TOO_LONG
                out.append("too_long")
            else:
                out.append(item)
    return out


def stream_pieces() -> st.SearchStrategy[bytes]:
    piece = st.one_of(
        st.binary(max_size=12),
        st.sampled_from([b"\n", b"\r\n", b" \n", b'{"cmd":"status"}\n']),
        st.integers(0, 40).map(lambda n: b"y" * n + b"\n"),
    )
    return st.lists(piece, max_size=12).map(b"".join)


@given(stream=stream_pieces(), cuts=st.lists(st.integers(0, 10_000), max_size=15))
@settings(max_examples=500, deadline=None)
def test_line_buffer_under_any_chunking(stream: bytes, cuts: list[int]) -> None:
    limit = 16
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    buf = ipc.LineBuffer(limit=limit)
    got = feed_all(buf, chunks)
    expected = reference_lines(stream, limit)
    tail = stream.rsplit(b"\n", 1)[-1]
    if len(tail) > limit:
        # An unfinished line is reported as too long as soon as it passes the cap.
        expected.append("too_long")
        assert buf.pending == 0
    else:
        assert buf.pending == len(tail)
    assert got == expected
    # Whatever came before, the next line is read normally.
    assert buf.feed(b'\n{"cmd":"peers"}\n')[-1] == b'{"cmd":"peers"}'


@given(stream=stream_pieces())
@settings(max_examples=200, deadline=None)
def test_line_buffer_byte_by_byte(stream: bytes) -> None:
    buf = ipc.LineBuffer(limit=16)
    got = feed_all(buf, [stream[i : i + 1] for i in range(len(stream))])
    expected = reference_lines(stream, 16)
    if len(stream.rsplit(b"\n", 1)[-1]) > 16:
        expected.append("too_long")
    assert got == expected


def test_line_buffer_one_mib_cap_recovers() -> None:
    buf = ipc.LineBuffer()
    assert buf.limit == ipc.MAX_LINE == 1 << 20
    exact = b"x" * ipc.MAX_LINE
    assert buf.feed(exact[:1000]) == []
    assert buf.feed(exact[1000:] + b"\n") == [exact]
    big = b"y" * (ipc.MAX_LINE + 1)
    out = buf.feed(big[:500_000])
    assert out == []
    out = buf.feed(big[500_000:])  # passes the cap: reported now, not at the newline
    assert len(out) == 1 and isinstance(out[0], IpcError) and out[0].code == ipc.LINE_TOO_LONG
    assert buf.pending == 0
    assert buf.feed(b"more of the same long line") == []
    assert buf.feed(b'tail\n{"cmd":"status"}\r\n') == [b'{"cmd":"status"}']
    out = buf.feed(big + b'\n{"cmd":"id"}\n')
    assert [type(x) for x in out] == [IpcError, bytes]
    assert out[1] == b'{"cmd":"id"}'
    assert ipc.parse_request(out[1]).cmd == "id"
