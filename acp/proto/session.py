"""Session frames (docs/protocol.md §5): the plaintext inside each Noise transport message.

The first byte is a type, the rest its body. Unknown types decode to ``Unknown`` and are ignored by
the shell, so v1 can grow. ENVELOPE bodies are returned as bytes; ``acp.proto.envelope`` parses them.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from acp.errors import FrameError, ProtocolError
from acp.model import Ack
from acp.proto.framing import MAX_FRAME
from acp.proto.noise import TAGLEN

ENVELOPE = 0x01
ACK = 0x02
PING = 0x03
PONG = 0x04
BYE = 0x05
CARD = 0x06  # extension: the sender's agent card (acp/proto/card.py)

MAX_PLAINTEXT = MAX_FRAME - TAGLEN  # 65519: type byte + body
MAX_BODY = MAX_PLAINTEXT - 1  # 65518 (§6)
PING_IDLE = 15.0  # send PING after this long without sending
DEAD_AFTER = 45.0  # a session with nothing received for this long is dead
PING_LEN = 8  # the body of every PING and PONG (§5)


@attrs.frozen
class EnvelopeFrame:
    body: bytes


@attrs.frozen
class AckFrame:
    ack: Ack


@attrs.frozen
class Ping:
    data: bytes


@attrs.frozen
class Pong:
    data: bytes


@attrs.frozen
class Bye:
    reason: str


@attrs.frozen
class CardFrame:
    body: bytes


@attrs.frozen
class Unknown:
    type: int


Frame = EnvelopeFrame | AckFrame | Ping | Pong | Bye | CardFrame | Unknown


def encode_envelope(body: bytes) -> bytes:
    if len(body) > MAX_BODY:
        raise ProtocolError(f"envelope of {len(body)} bytes is over the {MAX_BODY}-byte limit")
    return b"\x01" + body


def encode_ack(ack: Ack) -> bytes:
    if ack.ok:  # the common case, without building a dict: one per envelope received
        return b'\x02{"id":' + json.dumps(ack.id).encode() + b',"ok":true}'
    return b"\x02" + json.dumps(ack.to_dict(), separators=(",", ":")).encode()


def encode_ping(data: bytes) -> bytes:
    return b"\x03" + data


def encode_pong(data: bytes) -> bytes:
    return b"\x04" + data


def encode_bye(reason: str) -> bytes:
    return b"\x05" + reason.encode("utf-8", "replace")[:1000]


def _parse_ack(body: bytes) -> Ack:
    try:
        obj: Any = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("ACK body is not UTF-8 JSON") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
        raise ProtocolError("ACK body is not an object with a string id")
    ok = obj.get("ok")
    if ok is True:
        return Ack(id=obj["id"], ok=True)
    error = obj.get("error")
    return Ack(id=obj["id"], ok=False, error=error if isinstance(error, str) else "refused")


def decode(plaintext: bytes) -> Frame:
    """One decrypted frame -> a value; FrameError/ProtocolError for anything malformed."""
    if not plaintext:
        raise FrameError("empty session frame: no type byte")
    kind = plaintext[0]
    body = plaintext[1:]
    if kind == ENVELOPE:
        return EnvelopeFrame(body)
    if kind == ACK:
        return AckFrame(_parse_ack(body))
    if kind == PING or kind == PONG:
        if len(body) != PING_LEN:  # §5: exactly 8 bytes, echoed; nothing else is owed an answer
            name = "PING" if kind == PING else "PONG"
            raise FrameError(f"{name} of {len(body)} bytes; the body is exactly {PING_LEN} bytes")
        return Ping(body) if kind == PING else Pong(body)
    if kind == BYE:
        return Bye(body.decode("utf-8", "replace"))
    if kind == CARD:
        return CardFrame(body)
    return Unknown(kind)
