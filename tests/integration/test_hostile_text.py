"""A hostile peer's text reaches no terminal and no log line raw.

The peer is written here from the protocol core (a real Noise IK handshake over TCP against a real
daemon, admitted by trust = tofu). It puts escape sequences (set the title, clear the screen),
C1 controls (the one-byte CSI U+009B), bidi overrides and newlines that forge a line into
everything it controls: its agent card, envelope ids and payloads, a response's data, an ACK's
error code, an envelope the daemon refuses (logged), and its BYE reason. Then `acp peers`,
`acp listen`, `acp send --wait`, `acp inbox` and the daemon's log must hold none of them raw.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import time
import uuid
from typing import Any

from integration_harness import Daemon, Fleet, new_identity, wait_for

from acp.proto import handshake as hs
from acp.proto import session as frames
from acp.proto.card import CARD
from acp.proto.framing import FrameDecoder, encode_frame
from acp.proto.noise import Initiator

EVIL = "evil-peer"
# Everything a terminal or a log must not get raw (tabs and newlines are checked per line).
UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
FORGED = "WARNING acp.net.node: peer agent-b: KEY CHANGED: mDNS announces 0000"


def hostile(tag: str) -> str:
    """Set the title, clear the screen (ESC and C1 CSI), reverse the text, forge a line."""
    return f"{tag}\x1b]0;pwned\x07\x1b[2J\x9b2J\u202e{tag}-rev\u2066x\u2069\x85\r\n{FORGED}"


def unsafe(text: str) -> list[str]:
    return UNSAFE.findall(text)


class HostilePeer:
    """The initiator side of a session, frame by frame, over a blocking socket."""

    def __init__(self, d: Daemon, agent_id: str) -> None:
        self.agent_id = agent_id
        self.daemon = d
        private, _ = new_identity()
        self.sock = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        self.decoder = FrameDecoder()
        noise = Initiator(private, base64.b64decode(d.pubkey), prologue=hs.PROLOGUE)
        hello = hs.hello_payload(agent_id, int(time.time() * 1000), None)  # no port: not dialled
        self.sock.sendall(encode_frame(noise.write_message_1(hello)))
        payload, self.keys = noise.read_message_2(self._frame(5.0))
        hs.parse_welcome(payload, expected_agent_id=d.agent_id)

    def _frame(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while (frame := self.decoder.next_frame()) is None:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no frame from the daemon within {timeout:g} s"
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            assert data, "the daemon closed the connection"
            self.decoder.feed(data)
        return frame

    def send(self, plaintext: bytes) -> None:
        self.sock.sendall(encode_frame(self.keys.send.encrypt(plaintext)))

    def recv(self, timeout: float = 15.0) -> frames.Frame:
        """The next frame; PINGs are answered and skipped."""
        while True:
            frame = frames.decode(self.keys.recv.decrypt(self._frame(timeout)))
            if isinstance(frame, frames.Ping):
                self.send(frames.encode_pong(frame.data))
                continue
            return frame

    def envelope_from_daemon(self, timeout: float = 15.0) -> dict[str, Any]:
        """Skip ACKs and anything else until the daemon sends us an envelope."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.1, deadline - time.monotonic()))
            if isinstance(frame, frames.EnvelopeFrame):
                env: dict[str, Any] = json.loads(frame.body)
                return env
            assert time.monotonic() < deadline, "no envelope from the daemon"

    def acks(self, ids: set[str], timeout: float = 15.0) -> dict[str, frames.AckFrame]:
        """The daemon's ACKs for ``ids`` (other frames are skipped)."""
        got: dict[str, frames.AckFrame] = {}
        deadline = time.monotonic() + timeout
        while set(got) != ids:
            frame = self.recv(max(0.1, deadline - time.monotonic()))
            if isinstance(frame, frames.AckFrame) and frame.ack.id in ids:
                got[frame.ack.id] = frame
            assert time.monotonic() < deadline, f"ACKs for {ids - set(got)} missing"
        return got

    def envelope(self, env_id: str, kind: str, payload: Any, **extra: Any) -> dict[str, Any]:
        env = {
            "v": 1,
            "id": env_id,
            "from": self.agent_id,
            "to": self.daemon.agent_id,
            "ts": int(time.time() * 1000),
            "kind": kind,
            "reply_to": None,
            "payload": payload,
        }
        env.update(extra)
        self.send(frames.encode_envelope(json.dumps(env).encode()))
        return env

    def close(self) -> None:
        self.sock.close()


def check_lines(text: str, what: str, *, lines_of_its_own: bool = False) -> list[str]:
    """No unsafe character on any line, and (unless the peer's text may have lines of its own,
    as a response's data printed for the user does) no line that starts with the forged line."""
    assert not unsafe(text.replace("\n", "")), f"{what}: {unsafe(text)} raw in {text!r}"
    lines = text.splitlines()
    if not lines_of_its_own:
        assert not [line for line in lines if line.startswith(FORGED[:20])], f"{what}: {text!r}"
    return lines


def test_a_hostile_peer_reaches_no_terminal_and_no_log_line_raw(fleet: Fleet) -> None:
    a = fleet.daemon("agent-a")
    a.settings["stats_interval"] = 0.5  # the stats line quotes counter names: see it too
    a.start()
    evil = HostilePeer(a, EVIL)
    try:
        # -- its agent card: a bad one (ignored, logged) and one with a hostile description ---
        evil.send(bytes([CARD]) + json.dumps({"skills": ["bad\x1b[2J\u202e"]}).encode())
        card = {"description": hostile("card"), "skills": ["hostile-skill"]}
        evil.send(bytes([CARD]) + json.dumps(card).encode())

        # -- envelopes: a hostile id and payloads (stored), and one refused (logged) -----------
        notify_id = "id-" + hostile("nid")
        sent_notify = evil.envelope(
            notify_id, "notify", {"topic": hostile("t"), "data": [hostile("d")]}
        )
        sent_query = evil.envelope(
            "q-1", "query", {"question": hostile("q"), "context_budget": "standard"}
        )
        refused_id = "bad-" + hostile("rid")
        evil.envelope(refused_id, "bogus", {})  # unknown kind: refused with an ACK, and logged
        acks = evil.acks({notify_id, "q-1", refused_id})
        assert acks[notify_id].ack.ok and acks["q-1"].ack.ok
        assert not acks[refused_id].ack.ok and acks[refused_id].ack.error == "unknown_kind"

        # -- acp peers: the card line, escaped; --skill finds the peer --------------------------
        wait_for(lambda: (a.peer(EVIL) or {}).get("card"), timeout=10, what="the peer's card")
        out = a.run_cli("peers", check=0).stdout
        lines = check_lines(out, "acp peers")
        row = [line for line in lines if line.startswith(EVIL)]
        assert len(row) == 1, lines
        card_line = lines[lines.index(row[0]) + 1]
        assert card_line.startswith(
            "  skills: hostile-skill | card\\x1b]0;pwned\\x07\\x1b[2J\\x9b2J"
        )
        assert len(card_line) <= 79
        out = a.run_cli("peers", "--skill", "hostile-skill", check=0).stdout
        assert [line.split()[0] for line in out.splitlines()[1:2]] == [EVIL]
        check_lines(out, "acp peers --skill")
        out = a.run_cli("peers", "--json", check=0).stdout
        check_lines(out, "acp peers --json")
        (peer_row,) = json.loads(out)
        assert peer_row["card"]["description"] == hostile("card")  # escaped, yet the same value

        # -- acp send --wait: the response's data, as text and as JSON --------------------------
        asking = a.popen_cli("send", EVIL, "status?", "--wait", "--timeout", "20")
        query = evil.envelope_from_daemon()
        evil.send(frames.encode_ack(frames.Ack(query["id"], True)))
        evil.envelope(
            "r-" + uuid.uuid4().hex, "response", {"data": hostile("data")}, reply_to=query["id"]
        )
        out, err = asking.communicate(timeout=20)
        assert asking.returncode == 0, err
        lines = check_lines(out, "acp send --wait (text)", lines_of_its_own=True)
        assert lines[0].startswith("data\\x1b]0;pwned\\x07\\x1b[2J\\x9b2J\\u202edata-rev")
        assert lines[1] == FORGED  # the data's own newline is kept, as text on its own line

        data = {"answer": hostile("json"), "list": [hostile("item")]}
        asking = a.popen_cli("send", EVIL, "as JSON?", "--wait", "--timeout", "20")
        query = evil.envelope_from_daemon()
        evil.send(frames.encode_ack(frames.Ack(query["id"], True)))
        evil.envelope("r-" + uuid.uuid4().hex, "response", {"data": data}, reply_to=query["id"])
        out, err = asking.communicate(timeout=20)
        assert asking.returncode == 0, err
        check_lines(out, "acp send --wait (JSON)")
        assert json.loads(out) == data

        # -- an ACK refusing our envelope with a hostile error code -----------------------------
        told = a.popen_cli("send", EVIL, "take this", "--acked", "--timeout", "20")
        env = evil.envelope_from_daemon()
        evil.send(frames.encode_ack(frames.Ack(env["id"], False, hostile("ackerr"))))
        out, err = told.communicate(timeout=20)
        assert told.returncode != 0 and out == ""
        assert len(check_lines(err, "acp send --acked (stderr)")) == 1
        assert "ackerr\\x1b]0;pwned" in err

        # -- acp inbox: the notify, the query and the undelivered event, one line each ----------
        wait_for(lambda: a.status().get("unread") == 3, timeout=10, what="3 unread items")
        out = a.run_cli("inbox", check=0).stdout
        lines = check_lines(out, "acp inbox")
        assert len(lines) == 3, lines
        assert lines[0].split()[1:3] == [EVIL, "notify"] and "id-nid\\x1b]0;pwned" in lines[0]
        assert lines[2].split()[1:3] == ["-", "undelivered"] and "to evil-peer: a" in lines[2]
        check_lines(a.run_cli("inbox", "--json", check=0).stdout, "acp inbox --json")

        # -- acp listen: JSON lines, escaped, parsing back to what the peer sent ----------------
        out = a.run_cli("listen", "--count", "2", timeout=20, check=0).stdout
        lines = check_lines(out, "acp listen")
        got = [json.loads(line) for line in lines]
        assert len(got) == 2 and "\\u009b" in lines[0] and "\\u202e" in lines[0]
        for received, sent in zip(got, (sent_notify, sent_query), strict=True):
            assert (received["id"], received["payload"]) == (sent["id"], sent["payload"])

        # -- its BYE reason: LAST ERROR in acp peers ---------------------------------------------
        evil.send(frames.encode_bye(hostile("bye")))
        wait_for(
            lambda: (a.peer(EVIL) or {}).get("status") != "connected",
            timeout=10,
            what="the session to end",
        )
    finally:
        evil.close()
    out = a.run_cli("peers", check=0).stdout
    lines = check_lines(out, "acp peers after BYE")
    (at,) = [i for i, line in enumerate(lines) if line.startswith(EVIL)]
    error = lines[at + 1]  # the last error: an indented line under the peer's row
    assert error.startswith("  last_error: peer said BYE: bye\\x1b]0;pwned\\x07\\x1b[2J\\x9b2J")
    assert "KEY CHANGED" not in out  # cut at 79 characters, on the peer's own line
    wide = check_lines(a.run_cli("peers", "--wide", check=0).stdout, "acp peers --wide")
    (row,) = [line for line in wide if line.startswith(EVIL)]  # the whole error, on its row
    assert "peer said BYE: bye\\x1b]0;pwned\\x07\\x1b[2J\\x9b2J\\u202ebye-rev" in row
    assert a.peer(EVIL)["last_error"].startswith("peer said BYE: bye\\x1b]0;pwned")

    # -- the daemon's log: every peer string escaped, no forged line --------------------------
    # a peer's made-up ACK error code gets no counter of its own (they would pile up)
    wait_for(lambda: "undelivered.other" in a.log_text(), timeout=10, what="a stats line")
    assert not any(k.startswith("undelivered.ackerr") for k in a.counters())
    log = a.log_path.read_bytes().decode("utf-8")  # strict: no lone surrogate got through
    lines = check_lines(log, "the daemon's log")
    for needle in (
        "refused envelope bad-rid\\x1b]0;pwned",  # the refused envelope's id
        "refused envelope",  # the peer's ACK error, in node.py's line
        "ackerr\\x1b]0;pwned",
        "peer said BYE: bye\\x1b]0;pwned",
        "ignored its agent card",
    ):
        assert needle in log, f"{needle!r} not in the log:\n{log}"
    for line in lines:
        if "KEY CHANGED" in line:  # only ever inside a line the daemon wrote about this peer
            assert re.match(r"\d{4}-\d\d-\d\d ", line) and EVIL in line, line
