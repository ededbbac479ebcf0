"""A peer breaking the protocol closes its own session and nothing else (docs/protocol.md §5, §6)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing
from netkit import ADDR, FakeConn, Link, RawPeer, know, make_node, notify, settle

from acp.model import Ack
from acp.net import listener
from acp.net.node import Node
from acp.proto import session as frames


async def open_raw(nursery: trio.Nursery, node: Node, agent_id: str) -> RawPeer:
    """A hand-driven peer ``agent_id``, known to ``node``, with a confirmed session to it."""
    link = Link(("198.51.100.1", 40000), ADDR[agent_id])
    raw = RawPeer(agent_id, link.client)
    know(node, agent_id, raw.public_key)
    nursery.start_soon(listener._handle, node, link.server)
    await raw.dial(node, ts=1)
    await raw.ping()
    assert isinstance(await raw.recv(), frames.Pong)
    return raw


async def still_up(raw: RawPeer) -> None:
    await raw.ping(b"still-up")
    assert await raw.recv() == frames.Pong(b"still-up")


@pytest.fixture
async def alpha(tmp_path: Path) -> Node:
    return make_node(tmp_path, "alpha")


@pytest.fixture
async def inbox(alpha: Node) -> FakeConn:
    conn = FakeConn()
    alpha.subscribe(conn)
    return conn


BAD_FRAMES = {
    "undecryptable": lambda: (40).to_bytes(4, "big") + os.urandom(40),
    "too short for a tag": lambda: (8).to_bytes(4, "big") + os.urandom(8),
    "zero length": lambda: b"\x00\x00\x00\x00",
    "over 65535": lambda: (70000).to_bytes(4, "big"),
}


@pytest.mark.parametrize("make_frame", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
async def test_bad_frame_closes_only_that_session(
    autojump_clock: trio.testing.MockClock,
    alpha: Node,
    inbox: FakeConn,
    nursery: trio.Nursery,
    make_frame: object,
) -> None:
    beta = await open_raw(nursery, alpha, "beta")
    carol = await open_raw(nursery, alpha, "carol")
    assert callable(make_frame)
    await beta.stream.send_all(make_frame())

    rest = await beta.rest()
    assert len(rest) == 1 and isinstance(rest[0], frames.Bye)  # BYE with the reason, then close
    assert rest[0].reason.startswith("protocol error: ")
    assert alpha.peers["beta"].active is None
    assert alpha.peers["beta"].last_error == rest[0].reason
    assert alpha.stats["protocol_errors"] == 1
    await still_up(carol)
    assert alpha.peers["carol"].active is not None and inbox.inbound == []


BAD_BODIES = {
    "not json": b"{not json",
    "not utf-8": b'{"id":"\xff"}',
    "a list": b'["id", "m1"]',
    "number id": b'{"id": 7, "v": 1}',
    "no id": b'{"v": 1, "kind": "notify"}',
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_envelope_without_a_string_id_closes_the_session(
    autojump_clock: trio.testing.MockClock,
    alpha: Node,
    inbox: FakeConn,
    nursery: trio.Nursery,
    body: bytes,
) -> None:
    beta = await open_raw(nursery, alpha, "beta")
    carol = await open_raw(nursery, alpha, "carol")
    await beta.send(b"\x01" + body)
    rest = await beta.rest()
    assert len(rest) == 1 and isinstance(rest[0], frames.Bye)  # no ACK: a BYE, then EOF
    assert rest[0].reason.startswith("protocol error: ")
    assert inbox.inbound == [] and alpha.peers["beta"].active is None
    await still_up(carol)


REFUSED = {
    "from_mismatch": {"from": "carol"},
    "to_mismatch": {"to": "carol"},
    "unknown_kind": {"kind": "gossip"},
    "invalid_payload": {"payload": {"topic": 5, "data": 1}},
    "invalid_envelope": {"v": 2},
}


@pytest.mark.parametrize(("code", "change"), REFUSED.items(), ids=REFUSED.keys())
async def test_wrong_envelope_is_acked_false_and_the_session_stays(
    autojump_clock: trio.testing.MockClock,
    alpha: Node,
    inbox: FakeConn,
    nursery: trio.Nursery,
    code: str,
    change: dict[str, object],
) -> None:
    beta = await open_raw(nursery, alpha, "beta")
    await beta.send_envelope(notify("beta", "alpha", "bad1", **change))
    assert await beta.recv() == frames.AckFrame(Ack("bad1", False, code))
    assert alpha.stats[f"envelopes_refused.{code}"] == 1
    await beta.send_envelope(notify("beta", "alpha", "good1"))
    assert await beta.recv() == frames.AckFrame(Ack("good1", True))
    assert inbox.inbound_ids() == ["good1"]
    assert alpha.peers["beta"].active is not None and alpha.stats["protocol_errors"] == 0


async def test_unknown_frame_types_are_ignored(
    autojump_clock: trio.testing.MockClock, alpha: Node, inbox: FakeConn, nursery: trio.Nursery
) -> None:
    beta = await open_raw(nursery, alpha, "beta")
    for kind in (0x00, 0x06, 0x7F, 0xFF):
        await beta.send(bytes([kind]) + b"from a later version")
    await beta.send(b"\x42")  # a type byte alone
    await still_up(beta)
    await beta.send_envelope(notify("beta", "alpha", "m1"))
    assert await beta.recv() == frames.AckFrame(Ack("m1", True))
    assert inbox.inbound_ids() == ["m1"]
    assert alpha.stats["protocol_errors"] == 0


async def test_duplicate_envelope_is_acked_but_delivered_once(
    autojump_clock: trio.testing.MockClock, alpha: Node, inbox: FakeConn, nursery: trio.Nursery
) -> None:
    beta = await open_raw(nursery, alpha, "beta")
    for _ in range(3):
        await beta.send_envelope(notify("beta", "alpha", "m1"))
        assert await beta.recv() == frames.AckFrame(Ack("m1", True))
    assert inbox.inbound_ids() == ["m1"] and alpha.stats["duplicates"] == 2


async def test_peer_bye_ends_the_session_without_an_answer(
    autojump_clock: trio.testing.MockClock, alpha: Node, nursery: trio.Nursery
) -> None:
    beta = await open_raw(nursery, alpha, "beta")
    await beta.send(frames.encode_bye("going away"))
    assert await beta.rest() == []
    await settle()
    assert alpha.peers["beta"].last_error == "peer said BYE: going away"
