"""The local IPC line codec (docs/protocol.md §8): one JSON object per line, each way.

Requests carry ``cmd`` and optionally ``req`` (echoed in the reply so clients can pipeline).
Replies are ``{"ok": true, ...}`` or ``{"ok": false, "error": {"code": ..., "message": ...}}``;
pushes are ``{"inbound": true, "envelope": {...}}`` and ``{"event": ...}``. A line over 1 MiB or one
that does not parse gets an error reply and the connection stays usable.
"""

from __future__ import annotations

import json
import math
from typing import Any

import attrs

from acp.errors import IpcError
from acp.model import is_agent_id

MAX_LINE = 1 << 20  # 1 MiB, newline excluded

BAD_JSON = "bad_json"
LINE_TOO_LONG = "line_too_long"
UNKNOWN_COMMAND = "unknown_command"
BAD_REQUEST = "bad_request"
UNKNOWN_PEER = "unknown_peer"
TOO_LARGE = "too_large"
TIMEOUT = "timeout"
NOT_CONNECTED = "not_connected"

# When ``send`` replies: once queued for the peer, once the peer ACKed, or once a response arrived.
WAIT_MODES = ("accepted", "acked", "response")
DEFAULT_WAIT_TIMEOUT = 30.0
MAX_WAIT_TIMEOUT = 3600.0
DEFAULT_INBOX_LIMIT = 100  # items one `inbox` reply holds by default (docs/protocol.md §8.1)
MAX_INBOX_LIMIT = 1000
STORE_FAILED = "store_failed"
UNKNOWN_HOOK = "unknown_hook"


def _is_str_list(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v) and len(v) <= 10_000


# cmd -> {field: (required, type-check, description for the error message)}
_FIELDS: dict[str, dict[str, tuple[bool, Any, str]]] = {
    "send": {
        "to": (True, is_agent_id, "an agent_id"),
        "envelope": (True, lambda v: isinstance(v, dict), "an object"),
        "wait": (False, lambda v: v in WAIT_MODES, " | ".join(WAIT_MODES)),
        "timeout": (
            False,
            lambda v: _is_number(v) and 0 < v <= MAX_WAIT_TIMEOUT,
            "seconds, 0 < t <= 3600",
        ),
    },
    "broadcast": {"envelope": (True, lambda v: isinstance(v, dict), "an object")},
    "reply": {
        "msg_id": (True, lambda v: isinstance(v, str) and v != "", "an envelope id"),
        "payload": (True, lambda v: isinstance(v, dict), "an object"),
        "wait": (False, lambda v: v in WAIT_MODES[:2], "accepted | acked"),
        "timeout": (
            False,
            lambda v: _is_number(v) and 0 < v <= MAX_WAIT_TIMEOUT,
            "seconds, 0 < t <= 3600",
        ),
    },
    "peers": {},
    "status": {},
    "id": {},
    "subscribe": {
        "count": (False, lambda v: _is_int(v) and v >= 1, "a positive integer (pushes, then stop)"),
        "since": (False, lambda v: _is_int(v) and 0 <= v < 2**63, "a seq (an integer >= 0)"),
    },
    "inbox": {
        "unread": (False, lambda v: isinstance(v, bool), "true or false"),
        "since": (False, lambda v: _is_int(v) and 0 <= v < 2**63, "a seq (an integer >= 0)"),
        "limit": (False, lambda v: _is_int(v) and 1 <= v <= MAX_INBOX_LIMIT, "1..1000"),
        "kinds": (False, _is_str_list, "a list of kinds"),
        "from": (False, _is_str_list, "a list of agent_ids"),
        "wait": (
            False,
            lambda v: _is_number(v) and 0 <= v <= MAX_WAIT_TIMEOUT,
            "seconds, 0 <= t <= 3600",
        ),
    },
    "ack": {
        "ids": (False, _is_str_list, "a list of envelope ids"),
        "up_to": (False, lambda v: _is_int(v) and 0 <= v < 2**63, "a seq (an integer >= 0)"),
    },
    "trust": {
        "agent_id": (True, is_agent_id, "an agent_id"),
        "pubkey": (True, lambda v: isinstance(v, str), "base64 of a 32-byte X25519 key"),
        "addr": (False, lambda v: isinstance(v, str), "host:port"),
    },
    "forget": {"agent_id": (True, is_agent_id, "an agent_id")},
    "block": {"agent_id": (True, is_agent_id, "an agent_id")},
    "unblock": {"agent_id": (True, is_agent_id, "an agent_id")},
    "verify": {
        "agent_id": (True, is_agent_id, "an agent_id"),
        "confirm": (False, lambda v: isinstance(v, bool), "true or false"),
    },
    "card": {"reload": (False, lambda v: isinstance(v, bool), "true or false")},
    "hooks": {},
    "hooks_test": {
        "name": (True, lambda v: isinstance(v, str) and 0 < len(v) <= 64, "a hook's name"),
    },
}
COMMANDS = tuple(_FIELDS)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@attrs.frozen
class Request:
    cmd: str
    args: dict[str, Any]
    req: Any = None


def parse_request(line: bytes) -> Request:
    """One line (without its newline) -> Request; IpcError with the §8 code otherwise."""
    if len(line) > MAX_LINE:
        raise IpcError(LINE_TOO_LONG, f"request line is over {MAX_LINE} bytes")
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise IpcError(BAD_JSON, f"request is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise IpcError(BAD_JSON, "request must be a JSON object")
    req = obj.get("req")
    cmd = obj.get("cmd")
    if not isinstance(cmd, str):
        raise IpcError(BAD_REQUEST, 'request needs "cmd" (a string)', req=req)
    fields = _FIELDS.get(cmd)
    if fields is None:
        raise IpcError(
            UNKNOWN_COMMAND, f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}", req=req
        )
    for name, (required, check, what) in fields.items():
        if name not in obj:
            if required:
                raise IpcError(BAD_REQUEST, f"{cmd} needs {name!r} ({what})", req=req)
            continue
        if not check(obj[name]):
            raise IpcError(BAD_REQUEST, f"{cmd}: {name!r} must be {what}", req=req)
    if cmd == "ack" and ("ids" in obj) == ("up_to" in obj):
        raise IpcError(
            BAD_REQUEST, 'ack needs "ids" (a list) or "up_to" (a seq), not both', req=req
        )
    args = {k: v for k, v in obj.items() if k not in ("cmd", "req")}
    return Request(cmd=cmd, args=args, req=req)


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # built once


def encode(obj: dict[str, Any]) -> bytes:
    """One reply or push as a line."""
    try:
        return _COMPACT.encode(obj).encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # a lone surrogate (legal as a JSON \u escape): keep it escaped
        return json.dumps(obj, separators=(",", ":")).encode("ascii") + b"\n"


def ok_reply(req: Any = None, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": True}
    out.update(fields)
    if req is not None:
        out["req"] = req
    return out


def error_reply(code: str, message: str, req: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": False, "error": {"code": code, "message": message}}
    if req is not None:
        out["req"] = req
    return out


class LineBuffer:
    """Splits a byte stream into lines, capping each at ``limit`` bytes.

    ``lines()`` yields ``bytes`` for each complete line, or an IpcError(line_too_long) in its place
    once for a line that grew past the limit (the rest of it, up to its newline, is discarded).
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | IpcError]:
        out: list[bytes | IpcError] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            piece = data[start:nl]
            if self._discarding:
                self._discarding = False
            elif len(self._buf) + len(piece) > self.limit:
                self._buf.clear()
                out.append(IpcError(LINE_TOO_LONG, f"request line is over {self.limit} bytes"))
            else:
                if self._buf:  # the line began in an earlier read
                    self._buf += piece
                    line = bytes(self._buf)
                    self._buf.clear()
                else:
                    line = piece
                if line.endswith(b"\r"):
                    line = line.rstrip(b"\r")
                if line and not line.isspace():
                    out.append(line)
            start = nl + 1
        rest = data[start:]
        if rest and not self._discarding:
            if len(self._buf) + len(rest) > self.limit:
                self._buf.clear()
                self._discarding = True
                out.append(IpcError(LINE_TOO_LONG, f"request line is over {self.limit} bytes"))
            else:
                self._buf += rest
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
