"""Peers that must not get in, or must not get far: impostors, strangers, garbage on the TCP port."""

from __future__ import annotations

import base64
import json
import random
import socket
import time

from integration_harness import Daemon, Fleet, new_identity, wait_for

from acp.client import notify_envelope
from acp.proto import handshake as hs
from acp.proto import session as frames
from acp.proto.framing import FrameDecoder, encode_frame
from acp.proto.noise import Initiator

HANDSHAKE_TIMEOUT = 5.0  # docs/protocol.md §4


def refused(d: Daemon, reason: str) -> int:
    return d.counters().get(f"handshakes_refused.{reason}", 0)


def test_impostor_with_a_known_agent_id_is_refused(fleet: Fleet) -> None:
    """Same agent_id as B, another key: A refuses every handshake and delivers nothing of it."""
    # "bravo" < "zulu": B and the impostor both dial A at once (docs/protocol.md §4)
    a, b = fleet.daemon("zulu"), fleet.daemon("bravo")
    impostor = fleet.daemon("bravo", name="impostor")
    fleet.mesh(a, b)
    impostor.knows(a)
    sub = fleet.subscribe(a)

    impostor.start()
    with impostor.client() as client:
        forged = client.send("zulu", notify_envelope("orders", "forged"))
    assert forged["state"] == "queued"
    wait_for(lambda: refused(a, "key_mismatch") >= 2, timeout=10, what="A to refuse twice")

    with b.client() as client:
        client.send("zulu", notify_envelope("orders", "genuine"), wait="acked", timeout=10)
    (got,) = sub.collect(1)
    assert (got["from"], got["payload"]["data"]) == ("bravo", "genuine")
    assert sub.next(timeout=0.3) is None

    row = a.peer("bravo")
    assert row is not None and row["status"] == "connected"
    assert row["pubkey"] == b.pubkey  # the pin did not move
    status = json.loads(a.run_cli("status", "--json", check=0).stdout)
    assert status["counters"]["handshakes_refused.key_mismatch"] >= 2
    assert status["messages_received"] == 1
    sessions = [v for k, v in status["counters"].items() if k.startswith("sessions_")]
    assert sessions == [1]  # B's one session, never replaced
    imp_row = impostor.peer("zulu")
    assert imp_row is not None and imp_row["status"] != "connected"
    assert imp_row["queued"] == 1


def test_explicit_trust_refuses_a_stranger_until_trusted(fleet: Fleet) -> None:
    # "charlie" < "zulu": C dials A at once, and again on its backoff (1 s, 2 s, ...)
    a = fleet.daemon("zulu", trust="explicit")
    c = fleet.daemon("charlie")
    c.knows(a)
    fleet.start(a)
    sub = fleet.subscribe(a)
    c.start()
    with c.client() as client:
        r = client.send("zulu", notify_envelope("hello", "let me in"))
    assert r["state"] == "queued"
    wait_for(lambda: refused(a, "not_trusted") >= 2, timeout=10, what="A to refuse C twice")
    assert sub.next(timeout=0.1) is None
    assert a.status()["messages_received"] == 0
    assert a.peer("charlie") is None  # refused peers are not added to the table

    out = a.run_cli("trust", "charlie", c.pubkey, check=0)
    assert out.stdout.startswith("trusted charlie with key ")
    (got,) = sub.collect(1, timeout=15)  # at C's next retry
    assert (got["from"], got["payload"]["data"]) == ("charlie", "let me in")
    peers = json.loads(a.run_cli("peers", "--json", check=0).stdout)
    (row,) = peers
    assert row["id"] == "charlie" and row["status"] == "connected"
    assert row["pubkey"] == c.pubkey
    wait_for(lambda: c.status()["queued"] == 0, timeout=5, what="C to get its ACK")


# -- garbage on the TCP port ----------------------------------------------------------------------


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Read until EOF/reset; True if the other side closed within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def _raw(d: Daemon, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    if data:
        try:
            sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            pass
    return sock


class FakePeer:
    """A peer written here from the protocol core: completes a real handshake, then misbehaves."""

    def __init__(self, d: Daemon, agent_id: str) -> None:
        private, _ = new_identity()
        self.sock = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        self.decoder = FrameDecoder()
        noise = Initiator(private, base64.b64decode(d.pubkey), prologue=hs.PROLOGUE)
        hello = hs.hello_payload(
            agent_id, int(time.time() * 1000), None
        )  # no port: not dialled back
        self.sock.sendall(encode_frame(noise.write_message_1(hello)))
        payload, self.keys = noise.read_message_2(self._frame())
        hs.parse_welcome(payload, expected_agent_id=d.agent_id)

    def _frame(self) -> bytes:
        deadline = time.monotonic() + 5
        while (frame := self.decoder.next_frame()) is None:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            assert data, "closed by the daemon"
            self.decoder.feed(data)
        return frame

    def send(self, plaintext: bytes) -> None:
        self.sock.sendall(encode_frame(self.keys.send.encrypt(plaintext)))

    def recv(self) -> frames.Frame | None:
        """The next frame, or None at EOF."""
        try:
            return frames.decode(self.keys.recv.decrypt(self._frame()))
        except (AssertionError, ConnectionResetError):
            return None

    def close(self) -> None:
        self.sock.close()


def test_garbage_from_the_network_does_not_hurt_the_daemon(fleet: Fleet) -> None:
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    before = a.counters()
    rng = random.Random(7)

    # silent: connects and never finishes message 1 (closed at the handshake deadline)
    silent = _raw(a, b"\x00\x00")
    silent_since = time.monotonic()
    cases = {
        "random bytes": bytes([0xFF]) + rng.randbytes(4095),
        "length 0": b"\x00\x00\x00\x00" + b"rest",
        "length 70000": (70000).to_bytes(4, "big") + b"\x00" * 100,
        "junk frame of a valid length": encode_frame(rng.randbytes(200)),
        "short frame": encode_frame(b"\x01"),
    }
    for what, data in cases.items():
        sock = _raw(a, data)
        try:
            assert _closed_by_peer(sock, 3), f"{what}: A kept the connection open"
        finally:
            sock.close()

    # a peer that completes the handshake (tofu lets it in), then breaks the session rules
    mallory = FakePeer(a, "mallory")
    try:
        mallory.send(frames.encode_ping(b"12345678"))
        pong = mallory.recv()
        assert isinstance(pong, frames.Pong) and pong.data == b"12345678"
        # an envelope claiming to be from someone else: refused with an ACK, session stays
        spoofed = {
            "v": 1,
            "id": "spoof-1",
            "from": "agent-b",
            "to": "agent-a",
            "ts": 1,
            "kind": "notify",
            "reply_to": None,
            "payload": {"topic": "t", "data": "spoofed"},
        }
        mallory.send(frames.encode_envelope(json.dumps(spoofed).encode()))
        ack = mallory.recv()
        assert isinstance(ack, frames.AckFrame), ack
        assert (ack.ack.id, ack.ack.ok, ack.ack.error) == ("spoof-1", False, "from_mismatch")
        # a frame that does not decrypt: BYE (where possible) and close
        mallory.sock.sendall(encode_frame(rng.randbytes(64)))
        last = mallory.recv()
        assert isinstance(last, frames.Bye) and "protocol error" in last.reason, last
        assert mallory.recv() is None
    finally:
        mallory.close()

    # an ENVELOPE that is not JSON closes the session too
    eve = FakePeer(a, "eve")
    try:
        eve.send(frames.encode_envelope(b"\xff not json"))
        last = eve.recv()
        assert isinstance(last, frames.Bye), last
        assert eve.recv() is None
    finally:
        eve.close()

    try:
        assert _closed_by_peer(silent, HANDSHAKE_TIMEOUT + 3 - (time.monotonic() - silent_since))
    finally:
        silent.close()

    assert a.running
    sub_a, sub_b = fleet.subscribe(a), fleet.subscribe(b)
    with b.client() as client:
        client.send("agent-a", notify_envelope("t", "b->a"), wait="acked", timeout=10)
    with a.client() as client:
        client.send("agent-b", notify_envelope("t", "a->b"), wait="acked", timeout=10)
    assert sub_a.collect(1)[0]["payload"]["data"] == "b->a"
    assert sub_b.collect(1)[0]["payload"]["data"] == "a->b"
    assert sub_a.next(timeout=0.2) is None  # nothing of mallory's was delivered

    after = a.status()
    counters = after["counters"]
    assert counters.get("handshakes_refused.bad_handshake", 0) >= 5, counters
    assert counters.get("handshakes_refused.timeout", 0) == 1, counters
    assert counters.get("protocol_errors", 0) == 2, counters
    assert counters.get("envelopes_refused.from_mismatch", 0) == 1, counters
    # the session with B was never replaced
    assert counters["sessions_outbound"] == before["sessions_outbound"] == 1
    assert a.is_connected("agent-b")
    assert after["messages_received"] == 1
