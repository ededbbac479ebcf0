"""Envelopes (docs/protocol.md §6): JSON <-> model.Envelope, kind schemas, the size limit.

``parse_wire`` is for bytes from a peer (strict JSON, re-serialised for local clients) and
raises EnvelopeError carrying the ACK error code;
``complete`` is for what a local client hands to ``send`` and fills ``v``, ``id``, ``from``, ``ts``.
Both produce an Envelope whose ``to_json()`` is at most ``MAX_ENVELOPE`` bytes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from acp.errors import EnvelopeError
from acp.model import KINDS, Envelope, is_agent_id
from acp.proto import peerjson
from acp.proto.session import MAX_BODY

MAX_ENVELOPE = MAX_BODY  # 65535 - 16 - 1 = 65518 bytes of compact UTF-8 JSON
MAX_ID = 256  # longest envelope id accepted
_CORE_FIELDS = frozenset(("v", "id", "from", "to", "ts", "kind", "reply_to", "payload"))

FROM_MISMATCH = "from_mismatch"
TO_MISMATCH = "to_mismatch"
UNKNOWN_KIND = "unknown_kind"
INVALID_PAYLOAD = "invalid_payload"
INVALID_ENVELOPE = "invalid_envelope"
TOO_LARGE = "too_large"


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _string(v: object) -> bool:
    return isinstance(v, str)


def _anything(v: object) -> bool:
    return True


def _obj(v: object) -> bool:
    return isinstance(v, dict)


def _boolean(v: object) -> bool:
    return isinstance(v, bool)


def _one_of(*choices: str) -> Callable[[object], bool]:
    def check(v: object) -> bool:
        return isinstance(v, str) and v in choices

    check.__doc__ = " | ".join(repr(c) for c in choices)
    return check


# Per kind: field -> (required, check). docs/protocol.md §6: a field without "?" is required, `any` admits null.
# An optional field that is present must pass its check; null counts as absent (lenient reading).
SCHEMAS: dict[str, dict[str, tuple[bool, Callable[[object], bool]]]] = {
    "query": {
        "question": (True, _string),
        "domain": (False, _string),
        "context_budget": (True, _one_of("minimal", "standard", "full")),
    },
    "response": {
        "data": (True, _anything),
        "summary": (False, _string),
        "error": (False, _string),
    },
    "delegate": {
        "task": (True, _string),
        "context": (False, _obj),
        "priority": (True, _one_of("normal", "urgent")),
        "report_back": (True, _boolean),
    },
    "notify": {
        "topic": (True, _string),
        "data": (True, _anything),
    },
}


def check_payload(kind: str, payload: object) -> None:
    """Raise EnvelopeError(invalid_payload) unless ``payload`` fits ``kind``'s schema."""
    if not isinstance(payload, dict):
        raise EnvelopeError(INVALID_PAYLOAD, f"{kind} payload must be a JSON object")
    for name, (required, check) in SCHEMAS[kind].items():
        if name not in payload or (not required and payload[name] is None):
            if required:
                raise EnvelopeError(INVALID_PAYLOAD, f"{kind} payload needs field {name!r}")
            continue
        if not check(payload[name]):
            raise EnvelopeError(INVALID_PAYLOAD, f"{kind} payload field {name!r} has a bad value")


def _build(obj: dict[str, Any]) -> Envelope:
    """Validate a JSON object that has a string ``id`` and make it an Envelope."""
    env_id = obj["id"]

    def refuse(code: str, message: str) -> EnvelopeError:
        return EnvelopeError(code, message, envelope_id=env_id)

    if not 1 <= len(env_id) <= MAX_ID:
        raise refuse(INVALID_ENVELOPE, f"id must be 1..{MAX_ID} characters")
    if obj.get("v") != 1 or not _is_int(obj.get("v")):
        raise refuse(INVALID_ENVELOPE, f"unsupported envelope version v={obj.get('v')!r}")
    if not is_agent_id(obj.get("from")):
        raise refuse(INVALID_ENVELOPE, "from is not a valid agent_id")
    if not is_agent_id(obj.get("to")):
        raise refuse(INVALID_ENVELOPE, "to is not a valid agent_id")
    ts = obj.get("ts")
    if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
        raise refuse(INVALID_ENVELOPE, "ts must be a non-negative integer (unix ms)")
    reply_to = obj.get("reply_to")
    if reply_to is not None and not isinstance(reply_to, str):
        raise refuse(INVALID_ENVELOPE, "reply_to must be a string or null")
    kind = obj.get("kind")
    if kind not in KINDS:
        raise refuse(UNKNOWN_KIND, f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    try:
        check_payload(kind, obj.get("payload"))
    except EnvelopeError as exc:
        raise refuse(exc.code, exc.message) from None
    return Envelope(
        v=1,
        id=env_id,
        from_=obj["from"],
        to=obj["to"],
        ts=ts,
        kind=kind,
        reply_to=reply_to,
        payload=obj["payload"],
        extra={k: v for k, v in obj.items() if k not in _CORE_FIELDS},
    )


def parse(body: bytes) -> Envelope:
    """An ENVELOPE frame body from a peer -> Envelope (``parse_wire`` without the bytes)."""
    return parse_wire(body)[0]


def parse_wire(body: bytes) -> tuple[Envelope, bytes]:
    """An ENVELOPE frame body from a peer -> (Envelope, the bytes local clients get).

    The bytes are the compact re-serialisation of what was parsed, never the peer's own (§6).
    Raises EnvelopeError with ``fatal=True`` if the body is not a JSON object with a string id
    (the session closes), otherwise with the ACK error code and the id to ACK: JSON that is not
    strict (a duplicated key, NaN, Infinity, a lone surrogate) is ``invalid_envelope``.
    """
    if len(body) > MAX_ENVELOPE:
        raise EnvelopeError(
            TOO_LARGE, f"envelope of {len(body)} bytes is over {MAX_ENVELOPE}", fatal=True
        )
    try:
        obj, wire = peerjson.loads(body)
    except peerjson.NotStrictJSON as exc:
        raise _not_strict(body, exc) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EnvelopeError(INVALID_ENVELOPE, "envelope is not UTF-8 JSON", fatal=True) from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
        raise EnvelopeError(
            INVALID_ENVELOPE, "envelope is not a JSON object with a string id", fatal=True
        )
    return _build(obj), wire


def _not_strict(body: bytes, exc: peerjson.NotStrictJSON) -> EnvelopeError:
    """JSON that is not strict is refused with an ACK when it has a string id to ACK (the last
    one if ``id`` itself is duplicated), else it closes the session, as any other body would."""
    try:  # leniently, only to find the id (a NaN stopped the strict parse: the rest may be junk)
        obj = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return EnvelopeError(INVALID_ENVELOPE, "envelope is not UTF-8 JSON", fatal=True)
    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
        message = f"envelope is not strict JSON: {exc}"
        return EnvelopeError(INVALID_ENVELOPE, message, envelope_id=obj["id"])
    return EnvelopeError(
        INVALID_ENVELOPE, f"envelope is not a JSON object with a string id ({exc})", fatal=True
    )


def check_route(env: Envelope, *, session_peer: str, own_id: str) -> None:
    """``from`` must be the session's authenticated peer and ``to`` ourselves (§6)."""
    if env.from_ != session_peer:
        raise EnvelopeError(
            FROM_MISMATCH,
            f"from {env.from_!r} on a session with {session_peer!r}",
            envelope_id=env.id,
        )
    if env.to != own_id:
        raise EnvelopeError(
            TO_MISMATCH, f"to {env.to!r} but this is {own_id!r}", envelope_id=env.id
        )


# Encoders built once: json.dumps with keyword arguments builds a new encoder on every call.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_COMPACT_STRICT = peerjson.COMPACT  # the same as what peers' envelopes are re-serialised with
_ASCII = json.JSONEncoder(separators=(",", ":"))
_ASCII_STRICT = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _dumps(obj: dict[str, Any], allow_nan: bool) -> bytes:
    try:
        return (_COMPACT if allow_nan else _COMPACT_STRICT).encode(obj).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (legal as a JSON \u escape): keep it escaped
        return (_ASCII if allow_nan else _ASCII_STRICT).encode(obj).encode("ascii")


def to_json(env: Envelope, *, allow_nan: bool = True) -> bytes:
    """Compact UTF-8 JSON, as it goes on the wire (ValueError for NaN unless ``allow_nan``)."""
    return _dumps(env.to_dict(), allow_nan)


def complete(
    obj: object,
    *,
    own_id: str,
    to: str | None,
    now_ms: int,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> tuple[Envelope, bytes]:
    """A local client's envelope -> (Envelope, wire bytes), filling v, id, from, ts (§8).

    ``to`` (from the send request) fills or must equal the envelope's own ``to``. ``from``, if
    given, must be our own agent_id. Raises EnvelopeError with code ``too_large`` (naming the limit),
    ``invalid_envelope``, ``unknown_kind`` or ``invalid_payload``.
    """
    if not isinstance(obj, dict):
        raise EnvelopeError(INVALID_ENVELOPE, "envelope must be a JSON object")
    data = dict(obj)
    data.setdefault("v", 1)
    if data.get("id") is None:
        data["id"] = new_id()
    if not isinstance(data["id"], str):
        raise EnvelopeError(INVALID_ENVELOPE, "envelope id must be a string")
    if data.get("from") is None:
        data["from"] = own_id
    elif data["from"] != own_id:
        raise EnvelopeError(FROM_MISMATCH, f"from must be this daemon's agent_id {own_id!r}")
    if to is not None:
        if data.get("to") is None:
            data["to"] = to
        elif data["to"] != to:
            raise EnvelopeError(
                TO_MISMATCH, f"envelope to {data['to']!r} differs from send to {to!r}"
            )
    if data.get("ts") is None:
        data["ts"] = now_ms
    data.setdefault("reply_to", None)
    env = _build(data)
    try:
        wire = _COMPACT_STRICT.encode(env.to_dict()).encode("utf-8")
    except UnicodeEncodeError as exc:  # legal as a \u escape, but a strict peer refuses it (§6)
        raise EnvelopeError(
            INVALID_ENVELOPE,
            "envelope holds a lone UTF-16 surrogate, which peers refuse",
            envelope_id=env.id,
        ) from exc
    except ValueError as exc:  # NaN/Infinity: not JSON, so a strict peer could not parse it
        raise EnvelopeError(
            INVALID_ENVELOPE,
            "envelope holds NaN or Infinity, which JSON cannot carry",
            envelope_id=env.id,
        ) from exc
    if len(wire) > MAX_ENVELOPE:
        raise EnvelopeError(
            TOO_LARGE,
            f"envelope is {len(wire)} bytes as compact JSON; the limit is {MAX_ENVELOPE} bytes",
            envelope_id=env.id,
        )
    return env, wire
