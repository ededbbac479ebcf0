"""Plain values shared by the core and the shell: agent ids, keys, envelopes, ACKs.

Outside data enters only through named constructors that validate (``Envelope`` is built by
``acp.proto.envelope.parse``), never ``Cls(**data)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import socket
from collections.abc import Mapping
from typing import Any

import attrs

from acp.errors import ConfigError

AGENT_ID_MAX = 63
_AGENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
_AGENT_ID_BAD_CHARS = re.compile(r"[^A-Za-z0-9._-]")
KEY_LEN = 32
KINDS = ("query", "response", "delegate", "notify")


def is_agent_id(value: object) -> bool:
    """Whether ``value`` is a valid agent_id (docs/protocol.md §1)."""
    return isinstance(value, str) and _AGENT_ID_RE.match(value) is not None


def setting(
    data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any, where: str
) -> Any:
    """``data[key]`` from a TOML table if it has the type ``kind`` (a bool is not an int),
    ``default`` if absent; ConfigError naming ``where`` otherwise."""
    if key not in data:
        return default
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where}: {key} has the wrong type ({type(value).__name__})")
    return value


def check_agent_id(value: object, *, what: str = "agent_id") -> str:
    """Return ``value`` if it is a valid agent_id, else raise ConfigError naming it."""
    if not is_agent_id(value):
        raise ConfigError(
            f"invalid {what} {value!r}: use 1-63 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    assert isinstance(value, str)
    return value


def agent_id_from_hostname(hostname: str | None = None) -> str:
    """The default agent_id: the short hostname reduced to the agent_id alphabet."""
    name = (hostname if hostname is not None else socket.gethostname()).split(".")[0]
    name = _AGENT_ID_BAD_CHARS.sub("-", name).lstrip("._-")[:AGENT_ID_MAX]
    return name if is_agent_id(name) else "acp-agent"


def encode_key(key: bytes) -> str:
    """Base64 (RFC 4648, padded) of a 32-byte X25519 key."""
    return base64.b64encode(key).decode("ascii")


def decode_key(text: object, *, what: str = "public key") -> bytes:
    """Parse base64 of a 32-byte X25519 key; raise ConfigError naming ``what`` otherwise."""
    if not isinstance(text, str):
        raise ConfigError(f"{what}: expected a base64 string, got {type(text).__name__}")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{what}: not valid base64 ({exc})") from exc
    if len(raw) != KEY_LEN:
        raise ConfigError(f"{what}: expected {KEY_LEN} bytes, got {len(raw)}")
    return raw


def fingerprint(public_key: bytes) -> str:
    """First 16 bytes of SHA-256(public key) as hex in groups of four: ``3f2a-91c0-…``."""
    digest = hashlib.sha256(public_key).hexdigest()[:32]
    return "-".join(digest[i : i + 4] for i in range(0, 32, 4))


@attrs.frozen
class Envelope:
    """One message (docs/protocol.md §6). ``extra`` keeps unknown top-level fields for pass-through."""

    v: int
    id: str
    from_: str
    to: str
    ts: int
    kind: str
    reply_to: str | None
    payload: dict[str, Any]
    extra: dict[str, Any] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The envelope as its JSON object, unknown fields included."""
        out: dict[str, Any] = {
            "v": self.v,
            "id": self.id,
            "from": self.from_,
            "to": self.to,
            "ts": self.ts,
            "kind": self.kind,
            "reply_to": self.reply_to,
            "payload": self.payload,
        }
        if self.extra:
            out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out

    @property
    def urgent(self) -> bool:
        """A delegate with priority urgent goes ahead of queued normal traffic (§7)."""
        return self.kind == "delegate" and self.payload.get("priority") == "urgent"


@attrs.frozen
class Ack:
    """An ACK frame's body (docs/protocol.md §5)."""

    id: str
    ok: bool
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.ok:
            return {"id": self.id, "ok": True}
        return {"id": self.id, "ok": False, "error": self.error or "refused"}
