"""Local hand-off edge cases: subscribers that leave, clients that stop waiting, peers that went."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import trio
import trio.testing
from netkit import FakeConn, make_node, notify

from acp.errors import ProtocolError
from acp.model import Ack
from acp.net.ipc_server import MAX_BACKLOG, IpcConn
from acp.net.node import Node, Ticket
from acp.net.peer import CONTROL_BYTES, CONTROL_COST, CONTROL_OWED, Peer, Session
from acp.proto import envelope as envelope_mod
from acp.proto.delivery import Outbox
from acp.proto.framing import FrameDecoder
from acp.proto.noise import CipherState, TransportKeys


class Sink:
    """Stands in for the session: collects the ACKs the node decides."""

    def __init__(self) -> None:
        self.acks: list[Ack] = []

    def send_ack(self, ack: Ack) -> None:
        self.acks.append(ack)


async def arrive(
    node: Node, peer: Peer, env_id: str, sink: Sink | None = None, **extra: Any
) -> Ack:
    """Deliver one envelope from ``peer`` and return the ACK it got once the store committed."""
    sink = sink or Sink()
    body = json.dumps(notify(peer.agent_id, node.agent_id, env_id, **extra)).encode()
    node.deliver(sink, peer, envelope_mod.parse(body), body)
    await trio.testing.wait_all_tasks_blocked()
    assert len(sink.acks) == 1, sink.acks
    return sink.acks.pop()


async def test_pushes_consume_nothing_a_later_subscriber_gets_the_unread(tmp_path: Path) -> None:
    node = make_node(tmp_path, "alpha")
    beta = node.add_peer(Peer("beta", pubkey=os.urandom(32)))
    s1 = FakeConn()
    node.subscribe(s1)
    for i in range(3):
        assert (await arrive(node, beta, f"m{i}")).ok
    assert s1.inbound_ids() == ["m0", "m1", "m2"]
    assert [p["seq"] for p in s1.inbound] == [1, 2, 3]
    node.unsubscribe(s1)  # left without acking: all three are still unread
    s2 = FakeConn()
    node.subscribe(s2)
    assert s2.inbound_ids() == ["m0", "m1", "m2"]
    assert await arrive(node, beta, "m3")
    assert s2.inbound_ids()[-1] == "m3" and s1.inbound_ids()[-1] == "m2"


async def test_a_copy_is_acked_without_being_stored_twice(tmp_path: Path) -> None:
    node = make_node(tmp_path, "alpha")
    beta = node.add_peer(Peer("beta", pubkey=os.urandom(32)))
    sink = Sink()
    body = json.dumps(notify("beta", "alpha", "m1")).encode()
    node.deliver(sink, beta, envelope_mod.parse(body), body)
    node.deliver(sink, beta, envelope_mod.parse(body), body)  # before the first committed
    await trio.testing.wait_all_tasks_blocked()
    assert [(a.id, a.ok) for a in sink.acks] == [("m1", True), ("m1", True)]
    assert node.local.unread_count == 1 and node.stored_rows == 1


async def test_one_sender_cannot_take_the_whole_inbox(tmp_path: Path) -> None:
    node = make_node(tmp_path, "alpha", inbox_limit=4)  # two each
    beta = node.add_peer(Peer("beta", pubkey=os.urandom(32)))
    carol = node.add_peer(Peer("carol", pubkey=os.urandom(32)))
    assert (await arrive(node, beta, "b1")).ok and (await arrive(node, beta, "b2")).ok
    refused = await arrive(node, beta, "b3")
    assert (refused.ok, refused.error) == (False, "inbox_full")
    assert (await arrive(node, carol, "c1")).ok and (await arrive(node, carol, "c2")).ok
    acked: list[object] = []
    node.ack(["b1"], None, acked.append)
    await trio.testing.wait_all_tasks_blocked()
    assert acked == [1]
    assert (await arrive(node, beta, "b3")).ok  # its share has room again


async def test_a_response_whose_waiting_client_left_is_stored_unread(tmp_path: Path) -> None:
    node = make_node(tmp_path, "alpha")
    beta = node.add_peer(Peer("beta", pubkey=os.urandom(32)))
    gone = FakeConn()
    gone.eof = True  # killed while waiting
    ticket = Ticket(gone, "q1", "beta", "response")  # type: ignore[arg-type]
    node.response_waiters["q1"] = ticket
    ack = await arrive(node, beta, "r1", kind="response", reply_to="q1", payload={"data": 42})
    assert ack.ok
    assert ticket.response is None and "q1" not in node.response_waiters
    assert [i.msg_id for i in node.local.unread()] == ["r1"]  # a later `acp listen` gets it


async def test_a_slow_subscriber_is_judged_by_what_it_does_not_read() -> None:
    conn = IpcConn(stream=None)  # type: ignore[arg-type]
    conn.send({"ok": True})
    assert not conn.overflowed
    for seq in range(MAX_BACKLOG + 1):
        conn.push_inbound(b"x\n", seq + 1)
    assert conn.overflowed


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
    pong = b"\x04pong...."
    fits = CONTROL_BYTES // (CONTROL_COST + len(pong))
    try:
        for _ in range(fits + 1):
            session.queue_control(pong)
    except ProtocolError as exc:
        assert "does not read" in str(exc)
    else:
        raise AssertionError("the control queue grew past its limit")
    assert len(session.control) == fits
    assert session.control_bytes == fits * (CONTROL_COST + len(pong)) <= CONTROL_BYTES
    # An ACK decided later (the store committed) closes the session instead of raising.
    session.send_ack(Ack("m-1", True))
    assert session.end_reason == "peer does not read" and session.bye_reason == CONTROL_OWED
    assert node.stats["protocol_errors"] == 1
    assert len(session.control) == fits


async def test_read_rows_are_pruned_by_count_as_they_pile_up(tmp_path: Path) -> None:
    """A flood the reader keeps up with: the database keeps about keep_read_count read rows,
    without waiting for the once-a-minute sweep."""
    node = make_node(tmp_path, "alpha", keep_read_count=50)
    beta = node.add_peer(Peer("beta", pubkey=os.urandom(32)))
    most = 0
    for i in range(400):
        assert (await arrive(node, beta, f"m{i}")).ok
        node.ack([f"m{i}"], None, lambda n: None)
        await trio.testing.wait_all_tasks_blocked()
        most = max(most, node.stored_rows)
    assert most <= 50 + 100 + 2, most
    rows = node.db._connection().execute("SELECT count(*), max(seq) FROM inbox").fetchone()
    assert rows[0] == node.stored_rows and rows[1] == 400
    assert node.stats["inbox_pruned"] >= 400 - most


async def test_a_send_queued_for_a_peer_never_pinned_survives_a_restart(tmp_path: Path) -> None:
    """mDNS announced beta, nothing ever reached it (so no pin): the queued envelope is kept."""
    node = make_node(tmp_path, "alpha")
    node.discovered("beta", os.urandom(32), "10.0.0.2", 7102, boot=None)
    assert node.store.get("beta") is None or node.store.get("beta").pubkey is None  # type: ignore[union-attr]
    env, wire = envelope_mod.complete(
        {"kind": "notify", "payload": {"topic": "t", "data": 1}},
        own_id="alpha",
        to="beta",
        now_ms=1,
    )
    done: list[object] = []
    assert node.route(env, wire, Ticket(None, env.id, "beta"), done.append) == "queued"
    await trio.testing.wait_all_tasks_blocked()
    assert done == [None]
    again = make_node(tmp_path, "alpha")  # the same ACP_HOME: a restarted daemon
    assert len(again.peers["beta"].outbox) == 1


async def test_copies_of_an_envelope_share_the_outcome_of_its_insert(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The original's insert fails while a resent copy waits: neither may be ACKed ok."""
    node = make_node(tmp_path, "alpha")
    beta = node.add_peer(Peer("beta", pubkey=os.urandom(32)))
    from acp import store

    def failing(row: Any, read_at: Any) -> Any:
        def job(conn: Any) -> None:
            raise store.sqlite3.OperationalError("disk I/O error")

        return job

    monkeypatch.setattr(store, "insert_inbox", failing)
    first, second = Sink(), Sink()
    body = json.dumps(notify("beta", "alpha", "m1")).encode()
    node.deliver(first, beta, envelope_mod.parse(body), body)
    node.deliver(second, beta, envelope_mod.parse(body), body)  # the resend, on a new session
    await trio.testing.wait_all_tasks_blocked()
    assert [(a.ok, a.error) for a in first.acks + second.acks] == [(False, "inbox_full")] * 2
    monkeypatch.undo()
    assert (await arrive(node, beta, "m1")).ok  # not remembered as stored: offered again, stored
    assert node.local.unread_count == 1


async def test_a_page_read_for_a_replaced_subscription_is_dropped(
    tmp_path: Path, monkeypatch: Any
) -> None:
    import acp.net.node as node_mod

    monkeypatch.setattr(node_mod, "PAGE", 5)
    node = make_node(tmp_path, "alpha", inbox_limit=100)
    beta = node.add_peer(Peer("beta", pubkey=os.urandom(32)))
    for i in range(20):
        assert (await arrive(node, beta, f"m{i}")).ok
    node.ack(None, 20, lambda n: None)
    await trio.testing.wait_all_tasks_blocked()
    conn = FakeConn()
    node.subscribe(conn, since=15)  # its page (16..20) is read ...
    node.unsubscribe(conn)
    node.subscribe(conn, since=0)  # ... but this one asked for everything
    await trio.testing.wait_all_tasks_blocked()
    assert [p["seq"] for p in conn.inbound] == list(range(1, 21))


async def test_after_inbox_full_the_envelopes_behind_wait_for_the_refused_one(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Per-peer order (§7): a slot freed between two envelopes must not let the later one in
    ahead of the refused one."""
    node = make_node(tmp_path, "alpha", inbox_limit=2, inbox_per_sender=2)
    beta = node.add_peer(Peer("beta", pubkey=os.urandom(32)))
    session = Sink()
    assert (await arrive(node, beta, "m1", session)).ok
    assert (await arrive(node, beta, "m2", session)).ok
    assert (await arrive(node, beta, "m3", session)).error == "inbox_full"
    node.ack(["m1"], None, lambda n: None)  # a slot frees up
    await trio.testing.wait_all_tasks_blocked()
    assert (await arrive(node, beta, "m4", session)).error == "inbox_full"  # not ahead of m3
    assert (await arrive(node, beta, "m3", session)).ok  # the refused one, offered again
    assert (await arrive(node, beta, "m4", session)).error == "inbox_full"  # the bound, now
    await trio.sleep(20)  # a sender whose m3 had expired is not refused for ever
    node.ack(["m2"], None, lambda n: None)
    await trio.testing.wait_all_tasks_blocked()
    assert (await arrive(node, beta, "m5", session)).ok


async def test_an_ack_that_cannot_be_stored_leaves_the_items_unread(
    tmp_path: Path, monkeypatch: Any
) -> None:
    node = make_node(tmp_path, "alpha")
    beta = node.add_peer(Peer("beta", pubkey=os.urandom(32)))
    for i in range(3):
        assert (await arrive(node, beta, f"m{i}")).ok
    from acp import store

    def failing(seqs: Any, now_ms: Any) -> Any:
        def job(conn: Any) -> int:
            raise store.sqlite3.OperationalError("disk I/O error")

        return job

    monkeypatch.setattr(store, "mark_read", failing)
    got: list[object] = []
    node.ack(["m0", "m2"], None, got.append)
    assert node.local.unread_count == 1  # marked at once ...
    await trio.testing.wait_all_tasks_blocked()
    assert isinstance(got[0], store.StoreError)
    assert [i.msg_id for i in node.local.unread()] == ["m0", "m1", "m2"]  # ... and back, in order
    assert node.local.held_by("beta") == 3
