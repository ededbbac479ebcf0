"""Handshake payloads, the responder's admission rules, and trust levels (docs/protocol.md §4, §9).

Message 1 carries ``{"v":1,"agent_id":…,"ts":…,"port":…}`` from the initiator, message 2
``{"v":1,"agent_id":…}`` back. This module builds and checks those payloads, decides whether
a presented static key may open a session, what trust level a pinned key has, and whether that
level may deliver to local clients; the Noise arithmetic is in ``acp.proto.noise``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import attrs

from acp.errors import HandshakeError
from acp.model import is_agent_id

PROLOGUE = b"acp-v1"
HANDSHAKE_TIMEOUT = 5.0  # seconds from TCP connect to message 2 (§4)
TRUST_POLICIES = ("tofu", "explicit", "verified")

# Why a handshake was refused; each is logged and counted by the shell.
KEY_MISMATCH = "key_mismatch"
NOT_TRUSTED = "not_trusted"
REPLAY = "replay"
BAD_PAYLOAD = "bad_payload"
WRONG_PEER = "wrong_peer"
BLOCKED = "blocked"  # `acp block`
TOO_MANY = "too_many_peers"  # the pin or session cap is reached and nothing can make room


class Refused(HandshakeError):
    """A well-formed handshake from a peer we will not talk to; ``reason`` is one of the above."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@attrs.frozen
class Hello:
    """The initiator's message-1 payload."""

    agent_id: str
    ts: int
    port: int | None


def next_ts(now_ms: int, last_sent: int | None) -> int:
    """The ``ts`` to send: max(now, last sent + 1), so it strictly increases across restarts."""
    return now_ms if last_sent is None else max(now_ms, last_sent + 1)


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _loads_object(data: bytes, which: str) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Refused(BAD_PAYLOAD, f"{which} payload is not UTF-8 JSON") from exc
    if not isinstance(obj, dict):
        raise Refused(BAD_PAYLOAD, f"{which} payload is not a JSON object")
    if obj.get("v") != 1 or isinstance(obj.get("v"), bool):
        raise Refused(BAD_PAYLOAD, f"{which} payload has unsupported v={obj.get('v')!r}")
    if not is_agent_id(obj.get("agent_id")):
        raise Refused(BAD_PAYLOAD, f"{which} payload has an invalid agent_id")
    return obj


def hello_payload(agent_id: str, ts: int, port: int | None) -> bytes:
    obj: dict[str, Any] = {"v": 1, "agent_id": agent_id, "ts": ts}
    if port is not None:
        obj["port"] = port
    return _dumps(obj)


def parse_hello(data: bytes) -> Hello:
    obj = _loads_object(data, "message 1")
    ts = obj.get("ts")
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts < 2**63:
        raise Refused(BAD_PAYLOAD, "message 1 payload has no valid ts (0 <= ts < 2^63)")
    port = obj.get("port")
    if not (isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535):
        port = None  # optional: an unusable port is ignored, not fatal
    return Hello(agent_id=obj["agent_id"], ts=ts, port=port)


def welcome_payload(agent_id: str) -> bytes:
    return _dumps({"v": 1, "agent_id": agent_id})


def parse_welcome(data: bytes, *, expected_agent_id: str) -> str:
    """Check message 2: the responder must be the agent_id we dialled."""
    agent_id: str = _loads_object(data, "message 2")["agent_id"]
    if agent_id != expected_agent_id:
        raise Refused(WRONG_PEER, f"dialled {expected_agent_id!r} but reached {agent_id!r}")
    return agent_id


# What a key presented for an agent_id comes to (judge_key).
ACCEPT = "accept"  # the key held for that agent_id
PIN = "pin"  # no key held, trust = tofu: pin this one
EXPLICIT_SOURCES = ("static", "manual")  # where a pin is the user's own word

# Trust levels of a pinned key (docs/protocol.md §9), weakest first.
TOFU = "tofu"
EXPLICIT = "explicit"
VERIFIED = "verified"
TRUST_LEVELS = (TOFU, EXPLICIT, VERIFIED)
# The levels that may deliver to local clients under trust = "verified".
DELIVER_UNDER_VERIFIED = (EXPLICIT, VERIFIED)

VERIFY_LABEL = b"acp-verify"  # SHA-256(label || handshake hash) -> the 6-digit code (§9)
VERIFY_DIGITS = 6


def judge_key(presented: bytes, held: bytes | None, policy: str) -> str:
    """The trust decision, in one place, for a handshake and for an mDNS announcement alike:
    ``accept`` (it is the key held), ``pin`` (none held, trust = tofu or verified), or the refusal
    reason ``key_mismatch`` (another key is held) or ``not_trusted`` (none held, trust = explicit).

    Under ``verified`` a new key is pinned as under ``tofu``, so that a session comes up and
    `acp verify` can run over it; what it may deliver is ``may_deliver``'s decision."""
    if held is not None:
        return ACCEPT if presented == held else KEY_MISMATCH
    return NOT_TRUSTED if policy == "explicit" else PIN


def trust_level(source: str | None, *, verified: bool = False) -> str:
    """A pinned key's trust level (docs/protocol.md §9): ``verified`` if a person compared the
    session's code on both machines and confirmed it for this very key (``verified``: the caller
    checked that the verified key is the pinned one), else ``explicit`` if the user named it
    (config.toml [[peers]], `acp trust`), else ``tofu``."""
    if verified:
        return VERIFIED
    return EXPLICIT if source in EXPLICIT_SOURCES else TOFU


def may_deliver(level: str | None, policy: str) -> bool:
    """Whether an envelope from a peer whose key has trust ``level`` reaches local clients.

    Only ``trust = "verified"`` restricts it: there, keys that are neither verified nor explicit
    are refused (ACK ``not_trusted``, docs/protocol.md §9)."""
    return policy != "verified" or level in DELIVER_UNDER_VERIFIED


def verification_code(handshake_hash: bytes) -> str:
    """The short authentication code of a session (docs/protocol.md §9): the first 4 bytes of
    SHA-256("acp-verify" || h), big-endian, modulo 10^6, as 6 digits with leading zeros.

    Both ends of one Noise session have the same handshake hash ``h``; a relay in between runs
    two handshakes, with two different hashes, so the two people see two different codes."""
    digest = hashlib.sha256(VERIFY_LABEL + handshake_hash).digest()
    number = int.from_bytes(digest[:4], "big") % 10**VERIFY_DIGITS
    return f"{number:0{VERIFY_DIGITS}d}"


def admit(
    hello: Hello,
    presented_key: bytes,
    *,
    held_key: bytes | None,
    last_accepted_ts: int | None,
    trust: str,
) -> bool:
    """Decide whether the responder accepts a message 1.

    Returns True when the key is new and must be pinned (tofu), False when it matched the key
    already held. Raises Refused otherwise: a different key than held, an unknown agent under
    ``explicit`` trust, or a ``ts`` not above the last accepted from that key (a replay).
    """
    verdict = judge_key(presented_key, held_key, trust)
    if verdict == KEY_MISMATCH:
        raise Refused(
            KEY_MISMATCH, f"{hello.agent_id!r} presented a key other than the one held for it"
        )
    if verdict == NOT_TRUSTED:
        raise Refused(NOT_TRUSTED, f"{hello.agent_id!r} is not trusted (trust = explicit)")
    pin = verdict == PIN
    if last_accepted_ts is not None and hello.ts <= last_accepted_ts:
        raise Refused(
            REPLAY, f"{hello.agent_id!r} sent ts {hello.ts}, not above {last_accepted_ts}: replay?"
        )
    return pin
