"""Local hand-off edge cases: subscribers that leave, clients that stop waiting, peers that went."""

from __future__ import annotations

import json
import os
from pathlib import Path

import trio
import trio.testing
from netkit import FakeConn, make_node, notify

from acp.errors import ProtocolError
from acp.net.ipc_server import MAX_BACKLOG, IpcConn
from acp.net.node import EXCLUSIVE, Ticket
from acp.net.peer import CONTROL_LIMIT, Peer, Session
from acp.proto import envelope as envelope_mod
from acp.proto.delivery import Outbox
from acp.proto.framing import FrameDecoder
from acp.proto.noise import CipherState, TransportKeys


def arrive(node, peer: Peer, env_id: str, **extra) -> str | None:  # type: ignore[no-untyped-def]
    body = json.dumps(notify(peer.agent_id, node.agent_id, env_id, **extra)).encode()
    return node.deliver_inbound(peer, envelope_mod.parse(body), body)


def lines_of(conn: FakeConn) -> list[str]:
    return conn.inbound_ids()


async def test_a_leaving_subscriber_returns_what_a_later_subscriber_never_got(
    tmp_path: Path,
) -> None:
    node = make_node(tmp_path, "alpha")
    beta = node.add_peer(Peer("beta", pubkey=os.urandom(32)))
    s1 = FakeConn()
    node.subscribe(s1)
    for i in range(3):
        assert arrive(node, beta, f"m{i}") is None
    s2 = FakeConn()
    node.subscribe(s2)  # joined after m0..m2 were pushed to s1 only
    assert arrive(node, beta, "m3") is None  # both get this one
    # s1 never read anything: all four were unsent when it left
    unsent = [(1, b"m0\n"), (2, b"m1\n"), (3, b"m2\n"), (4, b"m3\n")]
    node.unsubscribe(s1, unsent)  # type: ignore[arg-type]
    assert node.inbox.take_all() == [b"m0\n", b"m1\n", b"m2\n"]  # not m3: s2 has it


async def test_inbox_lines_handed_to_one_subscriber_go_back_even_with_others(
    tmp_path: Path,
) -> None:
    node = make_node(tmp_path, "alpha")
    other = FakeConn()
    node.subscribe(other)
    leaving = FakeConn()
    node.subscribe(leaving)
    node.unsubscribe(leaving, [(EXCLUSIVE, b"from-the-inbox\n")])  # type: ignore[arg-type]
    assert node.inbox.take_all() == [b"from-the-inbox\n"]


async def test_the_inbox_handed_over_at_subscribe_does_not_count_as_a_slow_client() -> None:
    conn = IpcConn(stream=None)  # type: ignore[arg-type]
    for _ in range(MAX_BACKLOG * 2):
        conn.push_inbound(b"x\n", EXCLUSIVE)
    assert not conn.overflowed
    for seq in range(MAX_BACKLOG + 1):
        conn.push_inbound(b"x\n", seq + 1)
    assert conn.overflowed


async def test_a_response_whose_waiting_client_left_is_delivered_normally(tmp_path: Path) -> None:
    node = make_node(tmp_path, "alpha")
    beta = node.add_peer(Peer("beta", pubkey=os.urandom(32)))
    gone = FakeConn()
    gone.eof = True  # killed while waiting
    ticket = Ticket(gone, "q1", "beta", "response")  # type: ignore[arg-type]
    node.response_waiters["q1"] = ticket
    body = json.dumps(
        notify("beta", "alpha", "r1", kind="response", reply_to="q1", payload={"data": 42})
    ).encode()
    assert node.deliver_inbound(beta, envelope_mod.parse(body), body) is None
    assert ticket.response is None and "q1" not in node.response_waiters
    assert len(node.inbox) == 1  # a later `acp listen` gets it


async def test_sending_to_a_pinned_peer_that_left_the_table_queues(tmp_path: Path) -> None:
    node = make_node(tmp_path, "alpha")
    node.store.pin("beta", os.urandom(32))
    env, wire = envelope_mod.complete(
        {"kind": "notify", "payload": {"topic": "t", "data": 1}},
        own_id="alpha",
        to="beta",
        now_ms=1,
    )
    assert node.route(env, wire, Ticket(None, env.id, "beta")) == "queued"
    assert node.peers["beta"].source == "cache" and len(node.peers["beta"].outbox) == 1


def test_expired_entries_of_an_absent_peer_do_not_pile_up() -> None:
    outbox = Outbox(limit=1000, ttl=300)
    for i in range(20_000):
        now = float(i)
        outbox.put(f"m{i}", b"x" * 100, urgent=False, now=now)
        outbox.expire(now)
    assert len(outbox) == 300
    queued = len(outbox._normal) + len(outbox._urgent) + len(outbox._resend)
    assert queued <= 2 * 300 + 64, queued  # compacted, not 20 000


async def test_a_peer_that_never_reads_loses_its_session_not_our_memory(tmp_path: Path) -> None:
    node = make_node(tmp_path, "alpha")
    peer = node.add_peer(Peer("beta", pubkey=os.urandom(32)))
    a, _ = trio.testing.memory_stream_pair()
    keys = TransportKeys(CipherState(os.urandom(32)), CipherState(os.urandom(32)), b"")
    session = Session(node, peer, a, keys, FrameDecoder(), "beta", outbound=False)
    try:
        for _ in range(CONTROL_LIMIT + 1):
            session.queue_control(b"\x04pong....")
    except ProtocolError as exc:
        assert "does not read" in str(exc)
    else:
        raise AssertionError("the control queue grew past its limit")
    assert len(session.control) == CONTROL_LIMIT
