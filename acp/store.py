"""``peers.json``: pinned keys, last addresses and handshake timestamps, written atomically.

Layout (version 1)::

    {"version": 1, "peers": {"agent-two": {"pubkey": "<b64>", "host": "10.0.0.7", "port": 7100,
     "last_seen": <unix ms>, "ts_sent": <int>, "ts_accepted": <int>, "source": "mdns"}}}

``ts_sent`` is the last handshake ``ts`` we sent to that peer; ``ts_accepted`` the last one we
accepted from its pinned key (PROTOCOL.md §4), reset when the pin changes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from acp.errors import ConfigError
from acp.model import decode_key, encode_key, is_agent_id

STORE_NAME = "peers.json"


@attrs.define
class PeerRecord:
    pubkey: bytes | None = attrs.field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    last_seen: int | None = None
    ts_sent: int | None = None
    ts_accepted: int | None = None
    source: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["pubkey"] = encode_key(self.pubkey) if self.pubkey else None
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_json(cls, data: object, where: str) -> PeerRecord:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected an object")

        def opt(key: str, kind: type) -> Any:
            value = data.get(key)
            if value is None:
                return None
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"{where}: {key} has the wrong type")
            return value

        pub = data.get("pubkey")
        return cls(
            pubkey=decode_key(pub, what=f"{where} pubkey") if pub is not None else None,
            host=opt("host", str),
            port=opt("port", int),
            last_seen=opt("last_seen", int),
            ts_sent=opt("ts_sent", int),
            ts_accepted=opt("ts_accepted", int),
            source=opt("source", str),
        )


class PeerStore:
    """The in-memory copy of peers.json; ``save()`` writes it with write-to-temp + os.replace."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._peers: dict[str, PeerRecord] = {}
        self.dirty = False

    @classmethod
    def load(cls, home: Path) -> PeerStore:
        store = cls(home / STORE_NAME)
        try:
            raw = store.path.read_bytes()
        except FileNotFoundError:
            return store
        except OSError as exc:
            raise ConfigError(f"{store.path}: cannot read: {exc.strerror}") from exc
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(
                f"{store.path}: not valid JSON ({exc}); fix it or move it away "
                "(pinned keys are lost with it)"
            ) from exc
        if not isinstance(data, dict) or not isinstance(data.get("peers", {}), dict):
            raise ConfigError(f'{store.path}: expected {{"version": 1, "peers": {{...}}}}')
        for agent_id, rec in data.get("peers", {}).items():
            if not is_agent_id(agent_id):
                raise ConfigError(f"{store.path}: {agent_id!r} is not a valid agent_id")
            store._peers[agent_id] = PeerRecord.from_json(rec, f"{store.path} peer {agent_id!r}")
        return store

    def __iter__(self) -> Iterator[str]:
        return iter(self._peers)

    def __contains__(self, agent_id: str) -> bool:
        return agent_id in self._peers

    def get(self, agent_id: str) -> PeerRecord | None:
        return self._peers.get(agent_id)

    def record(self, agent_id: str) -> PeerRecord:
        rec = self._peers.get(agent_id)
        if rec is None:
            rec = self._peers[agent_id] = PeerRecord()
        return rec

    def pin(self, agent_id: str, pubkey: bytes) -> None:
        rec = self.record(agent_id)
        if rec.pubkey != pubkey:
            rec.pubkey = pubkey
            rec.ts_accepted = None  # the replay counter belongs to the key
            self.dirty = True

    def update(self, agent_id: str, **fields: Any) -> None:
        rec = self.record(agent_id)
        for key, value in fields.items():
            if getattr(rec, key) != value:
                setattr(rec, key, value)
                self.dirty = True

    def forget(self, agent_id: str) -> bool:
        if self._peers.pop(agent_id, None) is not None:
            self.dirty = True
            return True
        return False

    def save(self) -> None:
        data = {"version": 1, "peers": {k: v.to_json() for k, v in sorted(self._peers.items())}}
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.dirty = False
