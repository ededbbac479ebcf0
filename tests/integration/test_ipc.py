"""The local IPC socket under bad input: every error gets a reply and the connection stays usable."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
from integration_harness import Daemon, Fleet

from acp.client import query_envelope


class Line:
    """One raw IPC connection; every read has a deadline."""

    def __init__(self, d: Daemon) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(d.socket_path))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            assert data, "the daemon closed the IPC connection"
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        obj: dict[str, Any] = json.loads(line)
        return obj

    def ask(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.send(json.dumps(obj).encode() + b"\n")
        return self.read()

    def still_usable(self) -> None:
        reply = self.ask({"cmd": "status", "req": 7})
        assert reply["ok"] is True and reply["req"] == 7, reply
        assert reply["agent_id"] == "agent-a"

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def a_and_b(fleet: Fleet) -> tuple[Daemon, Daemon]:
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    return a, b


BAD_LINES = [
    pytest.param(b"this is not json", "bad_json", None, id="not-json"),
    pytest.param(b"[1, 2, 3]", "bad_json", None, id="json-array"),
    pytest.param(b'"a string"', "bad_json", None, id="json-string"),
    pytest.param(b'{"cmd": "status"', "bad_json", None, id="truncated-object"),
    pytest.param(b"\xff\xfe{}", "bad_json", None, id="not-utf8"),
    pytest.param(b'{"cmd": "frobnicate", "req": 4}', "unknown_command", 4, id="unknown-cmd"),
    pytest.param(b'{"req": 5}', "bad_request", 5, id="no-cmd"),
    pytest.param(b'{"cmd": "send", "req": 6}', "bad_request", 6, id="send-no-fields"),
    pytest.param(
        b'{"cmd": "send", "to": "agent-b", "req": "x"}', "bad_request", "x", id="send-no-envelope"
    ),
    pytest.param(
        b'{"cmd": "send", "to": "bad id!", "envelope": {}, "req": 8}',
        "bad_request",
        8,
        id="send-bad-agent-id",
    ),
    pytest.param(
        b'{"cmd": "send", "to": "agent-b", "envelope": {"kind": "query"}, "wait": "forever"}',
        "bad_request",
        None,
        id="send-bad-wait",
    ),
    pytest.param(
        b'{"cmd": "trust", "agent_id": "x", "req": 9}', "bad_request", 9, id="trust-no-key"
    ),
    pytest.param(
        b'{"cmd": "send", "to": "agent-b", "envelope": {"kind": "query", "payload": {}}, "req": 10}',
        "invalid_payload",
        10,
        id="send-invalid-payload",
    ),
]


def test_garbage_lines_get_error_replies_and_the_connection_stays_usable(
    a_and_b: tuple[Daemon, Daemon],
) -> None:
    a, _ = a_and_b
    line = Line(a)
    try:
        for param in BAD_LINES:
            raw, code, req = param.values
            line.send(raw + b"\n")
            reply = line.read()
            assert reply["ok"] is False, (param.id, reply)
            assert reply["error"]["code"] == code, (param.id, reply)
            assert reply["error"]["message"], param.id
            assert reply.get("req") == req, (param.id, reply)
            line.still_usable()  # the very next line read is the status reply: no extra replies

        # over 1 MiB without a newline, then the newline: one line_too_long, nothing else
        line.send(b'{"cmd":"status","pad":"' + b"x" * (1 << 20) + b'"}\n')
        reply = line.read()
        assert reply["ok"] is False and reply["error"]["code"] == "line_too_long", reply
        line.still_usable()

        # a line exactly at the limit is parsed (and is bad_json here, not line_too_long)
        line.send(b"y" * (1 << 20) + b"\n")
        assert line.read()["error"]["code"] == "bad_json"
        line.still_usable()

        # several requests in one write are each answered, in order, with req echoed
        line.send(b'{"cmd":"id","req":1}\nnonsense\n{"cmd":"peers","req":2}\n')
        first, second, third = line.read(), line.read(), line.read()
        assert first["req"] == 1 and first["agent_id"] == "agent-a"
        assert second["error"]["code"] == "bad_json"
        assert third["req"] == 2 and [p["id"] for p in third["peers"]] == ["agent-b"]
        line.still_usable()
    finally:
        line.close()
    assert a.running
    assert a.status()["ok"] is True


def test_oversized_envelope_and_unknown_peer(a_and_b: tuple[Daemon, Daemon]) -> None:
    a, b = a_and_b
    line = Line(a)
    try:
        big = {"cmd": "send", "to": "agent-b", "envelope": query_envelope("x" * 70_000), "req": 11}
        reply = line.ask(big)
        assert reply["ok"] is False and reply["req"] == 11
        assert reply["error"]["code"] == "too_large"
        assert "65518" in reply["error"]["message"]
        line.still_usable()

        unknown = {"cmd": "send", "to": "agent-zz", "envelope": query_envelope("hi"), "req": 12}
        reply = line.ask(unknown)
        assert reply["ok"] is False and reply["req"] == 12
        assert reply["error"]["code"] == "unknown_peer"
        assert "agent-zz" in reply["error"]["message"]
        line.still_usable()
    finally:
        line.close()

    out = a.run_cli("send", "agent-b", "x" * 70_000)
    assert out.returncode == 2, out
    assert "65518" in out.stderr and "Traceback" not in out.stderr
    out = a.run_cli("send", "agent-zz", "hello?")
    assert out.returncode == 68, out
    assert "agent-zz" in out.stderr and "Traceback" not in out.stderr
    assert a.status()["queued"] == 0 and b.status()["messages_received"] == 0
