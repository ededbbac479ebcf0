"""Agent cards: what a peer says it can do (an acp extension to docs/protocol.md §5).

A card is ``{"description": str, "skills": [str, ...], "card": {...}}``, all optional, set in
config.toml's ``[agent]`` table. It travels in a CARD session frame (type 0x06), sent by each side
once its session is active and again whenever the card changes; peers that do not know the type
ignore it (§5: unknown types are ignored), so old daemons interoperate. A card is what a peer
*claims*: it is shown with the peer's authenticated agent_id and never trusted for anything else.

Bounds keep a hostile peer's card small: description 1000 characters, 32 skills of 1-64
characters of ``[A-Za-z0-9._:-]``, the free-form ``card`` object 8 KiB of JSON, 16 KiB in all.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

from acp.errors import ConfigError, ProtocolError
from acp.proto import peerjson

CARD = 0x06
MAX_DESCRIPTION = 1000
MAX_SKILLS = 32
MAX_EXTRA = 8 * 1024
MAX_WIRE = 16 * 1024
_SKILL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")


class CardError(ValueError):
    """A card that breaks the bounds above; the message says which."""


@attrs.frozen
class AgentCard:
    description: str | None = None
    skills: tuple[str, ...] = ()
    extra: str | None = None  # the free-form object, as compact JSON

    @classmethod
    def from_obj(cls, obj: object) -> AgentCard:
        """Validate a card given as a JSON-like object; CardError says what is wrong."""
        if not isinstance(obj, dict):
            raise CardError("a card is an object")
        unknown = set(obj) - {"description", "skills", "card"}
        if unknown:
            raise CardError(f"unknown card field(s) {', '.join(sorted(map(str, unknown)))}")
        description = obj.get("description")
        if description is not None:
            if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
                raise CardError(f"description must be a string of at most {MAX_DESCRIPTION}")
        skills = obj.get("skills", [])
        if not isinstance(skills, list) or len(skills) > MAX_SKILLS:
            raise CardError(f"skills must be a list of at most {MAX_SKILLS} names")
        for skill in skills:
            if not isinstance(skill, str) or _SKILL.match(skill) is None:
                raise CardError(f"skill {skill!r}: use 1-64 of A-Z a-z 0-9 . _ : -")
        extra = obj.get("card")
        extra_json = None
        if extra is not None:
            if not isinstance(extra, dict):
                raise CardError("card must be an object")
            try:
                extra_json = json.dumps(extra, separators=(",", ":"), allow_nan=False)
            except (ValueError, TypeError) as exc:
                raise CardError(f"card is not plain JSON: {exc}") from None
            if len(extra_json.encode()) > MAX_EXTRA:
                raise CardError(f"card is over {MAX_EXTRA} bytes of JSON")
        return cls(description, tuple(dict.fromkeys(skills)), extra_json)

    @classmethod
    def from_toml(cls, data: object, where: str) -> AgentCard:
        try:
            return cls.from_obj(data)
        except CardError as exc:
            raise ConfigError(f"{where} [agent]: {exc}") from None

    @classmethod
    def from_wire(cls, body: bytes) -> AgentCard:
        """A CARD frame's body from a peer; ProtocolError if it is not a valid card."""
        if len(body) > MAX_WIRE:
            raise ProtocolError(f"card of {len(body)} bytes is over {MAX_WIRE}")
        try:
            obj, _ = peerjson.loads(body)
            return cls.from_obj(obj)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ProtocolError(f"bad card: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"skills": list(self.skills)}
        if self.description is not None:
            out["description"] = self.description
        if self.extra is not None:
            out["card"] = json.loads(self.extra)
        return out

    def frame(self) -> bytes:
        """The plaintext of a CARD session frame."""
        body = json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False).encode()
        return bytes([CARD]) + body
