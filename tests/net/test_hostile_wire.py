"""What a hostile peer sends over an established session (docs/protocol.md §5, §6, issue #9):
JSON that is not strict, forged duplicate fields, PINGs of the wrong length, and never reading."""

from __future__ import annotations

import gc
import json
import sqlite3
import weakref
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from netkit import FakeConn, Link, RawPeer, make_node, notify, settle

from acp.model import Ack
from acp.net import listener
from acp.net.node import Node
from acp.net.peer import CONTROL_BYTES, CONTROL_COST, Peer
from acp.proto import session as frames

COMPACT = {"separators": (",", ":"), "ensure_ascii": False, "allow_nan": False}


class Lines(FakeConn):
    """A subscriber that keeps the very lines it was pushed."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[bytes] = []

    def push_inbound(self, line: bytes, seq: int = 0) -> None:
        self.lines.append(line)
        super().push_inbound(line, seq)


async def open_raw(nursery: trio.Nursery, node: Node, agent_id: str) -> tuple[RawPeer, Link]:
    """A hand-driven peer ``agent_id``, known to ``node``, with a confirmed session to it."""
    link = Link(("198.51.100.1", 40000), ("198.51.100.2", 7199))
    raw = RawPeer(agent_id, link.client)
    node.add_peer(Peer(agent_id, pubkey=raw.public_key, host="198.51.100.2", port=7199))
    nursery.start_soon(listener._handle, node, link.server)
    await raw.dial(node, ts=1)
    await raw.ping()
    assert isinstance(await raw.recv(), frames.Pong)
    return raw, link


def stored_bodies(node: Node) -> list[bytes]:
    conn = sqlite3.connect(node.db.path)
    try:
        return [bytes(row[0]) for row in conn.execute("SELECT body FROM inbox ORDER BY seq")]
    finally:
        conn.close()


@pytest.fixture
async def alpha(tmp_path: Path) -> Node:
    return make_node(tmp_path, "alpha")


@pytest.fixture
async def inbox(alpha: Node) -> Lines:
    conn = Lines()
    alpha.subscribe(conn)
    return conn


def text_of(sender: str, to: str, env_id: str, **fields: str) -> bytes:
    """A notify envelope as JSON text, each field given as JSON text (so it can be anything)."""
    obj = {k: json.dumps(v) for k, v in notify(sender, to, env_id).items()}
    obj.update(fields)
    return ("{" + ",".join(f'"{k}":{v}' for k, v in obj.items()) + "}").encode()


NOT_STRICT = {
    "duplicated key": lambda: text_of("beta", "alpha", "bad1")[:-1] + b',"kind":"notify"}',
    "duplicated key deep": lambda: text_of(
        "beta", "alpha", "bad1", payload='{"topic":"t","data":{"x":[{"a":1,"a":2}]}}'
    ),
    "NaN": lambda: text_of("beta", "alpha", "bad1", payload='{"topic":"t","data":NaN}'),
    "-Infinity": lambda: text_of("beta", "alpha", "bad1", extra="[1,-Infinity]"),
    "lone surrogate": lambda: text_of(
        "beta", "alpha", "bad1", payload='{"topic":"\\ud800x","data":null}'
    ),
    "lone surrogate in a key": lambda: text_of("beta", "alpha", "bad1", **{"\\udfff": "1"}),
}


@pytest.mark.parametrize("make_body", NOT_STRICT.values(), ids=NOT_STRICT.keys())
async def test_json_that_is_not_strict_is_refused_and_the_session_lives(
    autojump_clock: trio.testing.MockClock,
    alpha: Node,
    inbox: Lines,
    nursery: trio.Nursery,
    make_body: Any,
) -> None:
    beta, _ = await open_raw(nursery, alpha, "beta")
    body = make_body()
    assert json.loads(body)["id"] == "bad1"  # Python's json would have read it
    await beta.send(b"\x01" + body)
    assert await beta.recv() == frames.AckFrame(Ack("bad1", False, "invalid_envelope"))
    assert alpha.stats["envelopes_refused.invalid_envelope"] == 1
    await beta.send_envelope(notify("beta", "alpha", "good1"))
    assert await beta.recv() == frames.AckFrame(Ack("good1", True))
    assert inbox.inbound_ids() == ["good1"] and len(stored_bodies(alpha)) == 1
    assert alpha.peers["beta"].active is not None and alpha.stats["protocol_errors"] == 0


@pytest.mark.parametrize("order", [("alpha", "mallory"), ("mallory", "alpha")])
async def test_a_second_from_never_reaches_a_client(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    nursery: trio.Nursery,
    order: tuple[str, str],
) -> None:
    """mallory writes ``"from":"alpha"`` and its own ``from`` in one envelope: whichever a
    client's parser keeps, it must never see an envelope from alpha that mallory sent."""
    carol = make_node(tmp_path, "carol")
    inbox = Lines()
    carol.subscribe(inbox)
    mallory, _ = await open_raw(nursery, carol, "mallory")
    first, last = order
    body = text_of(first, "carol", "forged")[:-1] + f',"from":"{last}"}}'.encode()
    await mallory.send(b"\x01" + body)
    assert await mallory.recv() == frames.AckFrame(Ack("forged", False, "invalid_envelope"))
    await mallory.send_envelope(notify("mallory", "carol", "plain"))
    assert await mallory.recv() == frames.AckFrame(Ack("plain", True))
    assert inbox.inbound_ids() == ["plain"]
    assert b"alpha" not in b"".join(inbox.lines) + b"".join(stored_bodies(carol))


async def test_a_client_gets_the_re_serialised_envelope_not_the_peers_bytes(
    autojump_clock: trio.testing.MockClock, alpha: Node, inbox: Lines, nursery: trio.Nursery
) -> None:
    beta, _ = await open_raw(nursery, alpha, "beta")
    obj = notify("beta", "alpha", "m1", extra={"é": "\u2028 😀", "n": [1.5, -0.0, 10**20]})
    body = json.dumps(obj, indent=2).encode()  # line breaks, spaces, \u escapes, a pair
    assert b"\n" in body and b"\\ud83d\\ude00" in body
    await beta.send(b"\x01" + body)
    assert await beta.recv() == frames.AckFrame(Ack("m1", True))
    compact = json.dumps(obj, **COMPACT).encode()
    [line] = inbox.lines
    assert line.count(b"\n") == 1 and b'"envelope":' + compact + b"}\n" in line
    assert stored_bodies(alpha) == [compact]
    # An acp sender's bytes are already that serialisation: delivered as they came.
    await beta.send(b"\x01" + compact.replace(b'"m1"', b'"m2"'))
    assert await beta.recv() == frames.AckFrame(Ack("m2", True))
    assert stored_bodies(alpha)[1] == compact.replace(b'"m1"', b'"m2"')


@pytest.mark.parametrize("kind", [frames.PING, frames.PONG])
@pytest.mark.parametrize("length", [0, 7, 9, 65_000])
async def test_a_ping_or_pong_not_of_8_bytes_closes_that_session(
    autojump_clock: trio.testing.MockClock,
    alpha: Node,
    nursery: trio.Nursery,
    kind: int,
    length: int,
) -> None:
    beta, _ = await open_raw(nursery, alpha, "beta")
    carol, _ = await open_raw(nursery, alpha, "carol")
    await beta.send(bytes([kind]) + b"p" * length)
    rest = await beta.rest()
    assert len(rest) == 1 and isinstance(rest[0], frames.Bye)  # no PONG: a BYE, then EOF
    name = "PING" if kind == frames.PING else "PONG"
    assert (
        rest[0].reason == f"protocol error: {name} of {length} bytes; the body is exactly 8 bytes"
    )
    assert alpha.stats["protocol_errors"] == 1 and alpha.peers["beta"].active is None
    await carol.ping(b"still-up")
    assert await carol.recv() == frames.Pong(b"still-up")


async def test_a_peer_that_never_reads_is_cut_off_at_the_byte_bound(
    autojump_clock: trio.testing.MockClock, alpha: Node, inbox: Lines, nursery: trio.Nursery
) -> None:
    beta, link = await open_raw(nursery, alpha, "beta")
    session = alpha.peers["beta"].active
    assert session is not None

    async def full() -> None:  # a TCP send buffer the peer never drains: send_all never returns
        await trio.sleep_forever()

    link.server.send_stream.send_all_hook = full
    pong_cost = CONTROL_COST + 1 + frames.PING_LEN
    burst = 100
    sent = 0
    while alpha.peers["beta"].active is not None:
        pings = []
        for _ in range(burst):
            ct = beta.keys.send.encrypt(frames.encode_ping(sent.to_bytes(8, "big")))
            pings.append(len(ct).to_bytes(4, "big") + ct)
            sent += 1
        await beta.stream.send_all(b"".join(pings))
        await settle()
        assert session.control_bytes <= CONTROL_BYTES
        assert sent * pong_cost <= CONTROL_BYTES + burst * pong_cost, "never cut off"
    # Cut off in the burst that crossed the bound (PONGs the writer is stuck sending count too).
    assert (sent - burst) * pong_cost <= CONTROL_BYTES < sent * pong_cost
    assert (
        alpha.peers["beta"].last_error
        == "protocol error: peer does not read: over 1024 KiB of ACK/PONG frames owed"
    )
    assert alpha.stats["protocol_errors"] == 1

    # Nothing keeps the session (and what it owed) alive once it ended.
    gone = weakref.ref(session)
    del session
    await settle()
    gc.collect()
    assert gone() is None, gc.get_referrers(gone())
    assert not alpha.peers["beta"].sessions


async def test_a_peer_that_reads_its_pongs_may_ping_without_end(
    autojump_clock: trio.testing.MockClock, alpha: Node, nursery: trio.Nursery
) -> None:
    beta, _ = await open_raw(nursery, alpha, "beta")
    burst = 2000
    for round_ in range(3 * CONTROL_BYTES // (burst * (CONTROL_COST + 9)) + 1):
        pings = []
        for i in range(burst):
            ct = beta.keys.send.encrypt(frames.encode_ping((round_ * burst + i).to_bytes(8, "big")))
            pings.append(len(ct).to_bytes(4, "big") + ct)
        await beta.stream.send_all(b"".join(pings))
        for i in range(burst):
            assert await beta.recv() == frames.Pong((round_ * burst + i).to_bytes(8, "big"))
    session = alpha.peers["beta"].active
    assert session is not None and session.control_bytes == 0
