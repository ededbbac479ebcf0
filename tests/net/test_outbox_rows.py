"""Outbox rows written late, or never (acp/net/node.py, OUTBOX_WRITE_DELAY).

An envelope sent on a live session waits ``outbox_write_delay`` for its ACK before its durable
outbox row is written; an ACK first means the peer stored it, so the row is never written and the
``send`` is answered at the ACK. Otherwise the row is written when due and the ``send`` answered
at its commit, as before: a `send` is never answered before the envelope is durable somewhere.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

import trio
import trio.testing
from netkit import FakeConn, FakeNet, connect, know, know_each_other, make_node, settle

from acp.net.ipc_server import IpcServer
from acp.net.node import Node, Ticket
from acp.proto import envelope as envelope_mod
from acp.proto import ipc

DELAY = 0.05


def rows(node: Node) -> list[str]:
    """The msg_ids of the outbox rows on disk."""
    conn = sqlite3.connect(node.db.path)
    try:
        return [r[0] for r in conn.execute("SELECT msg_id FROM outbox ORDER BY row")]
    finally:
        conn.close()


def route(node: Node, to: str, env_id: str, answered: list[str]) -> str:
    env, wire = envelope_mod.complete(
        {"id": env_id, "kind": "notify", "payload": {"topic": "t", "data": env_id}},
        own_id=node.agent_id,
        to=to,
        now_ms=1_700_000_000_000,
    )

    def done(result: object) -> None:
        assert result is None, result
        answered.append(env_id)

    return node.route(env, wire, Ticket(None, env.id, to), done)


async def _pair(
    tmp_path: Path, net: FakeNet, nursery: trio.Nursery, *, acks: bool = True
) -> tuple[Node, Node]:
    """alpha, connected to beta, with the delay on; ``acks=False``: beta's ACKs never arrive."""
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    know_each_other(alpha, beta)
    net.listen(beta)
    await connect(nursery, alpha, beta)
    if not acks:
        link = net.links[-1]
        link.stall(link.server)
    alpha.outbox_write_delay = DELAY
    nursery.start_soon(alpha.write_outbox_rows_when_due)
    return alpha, beta


async def test_an_envelope_acked_within_the_delay_is_never_written(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = await _pair(tmp_path, net, nursery)
    answered: list[str] = []
    t0 = trio.current_time()
    assert route(alpha, "beta", "m1", answered) == "sending"
    await settle()  # beta stores it and ACKs, with no time passing
    assert answered == ["m1"] and trio.current_time() == t0  # answered at the ACK
    assert beta.stats["messages_delivered"] == 1
    await trio.sleep(10 * DELAY)
    assert rows(alpha) == [] and alpha.stats["outbox_rows_skipped"] == 1


async def test_without_an_ack_the_row_is_written_when_due_and_only_then_answered(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, _ = await _pair(tmp_path, net, nursery, acks=False)
    answered: list[str] = []
    t0 = trio.current_time()
    route(alpha, "beta", "m1", answered)
    route(alpha, "beta", "m2", answered)
    await trio.sleep(DELAY * 0.9)
    assert answered == [] and rows(alpha) == []
    await trio.sleep(DELAY * 0.2)
    assert answered == ["m1", "m2"] and rows(alpha) == ["m1", "m2"]
    assert trio.current_time() - t0 < DELAY * 1.2
    # a restart finds both, to send again
    again = make_node(tmp_path, "alpha")
    assert [e.id for e in again.peers["beta"].outbox.drain()] == ["m1", "m2"]


async def test_a_send_to_a_peer_that_is_not_connected_writes_what_waits_first(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, _ = await _pair(tmp_path, net, nursery, acks=False)
    know(alpha, "carol", make_node(tmp_path, "carol").identity.public_key)
    answered: list[str] = []
    route(alpha, "beta", "m1", answered)
    assert route(alpha, "carol", "q1", answered) == "queued"  # written now, and m1 before it
    await settle()
    assert answered == ["m1", "q1"] and rows(alpha) == ["m1", "q1"]


async def test_rows_still_waiting_are_written_when_the_daemon_stops(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet
) -> None:
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as nursery:
            alpha, _ = await _pair(tmp_path, net, nursery, acks=False)
            answered: list[str] = []
            route(alpha, "beta", "m1", answered)
            nursery.cancel_scope.cancel()  # the daemon stops within the delay
        await settle()
        assert rows(alpha) == ["m1"]
        outer.cancel_scope.cancel()


async def test_a_broadcast_is_answered_once_every_copy_is_durable(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, _ = await _pair(tmp_path, net, nursery, acks=False)
    conn = FakeConn()
    envelope = {"kind": "notify", "payload": {"topic": "t", "data": 1}}
    IpcServer(alpha).cmd_broadcast(
        conn, ipc.Request("broadcast", {"envelope": envelope}, 7), nursery
    )  # type: ignore[arg-type]
    await settle()
    assert conn.sent == [] and rows(alpha) == []  # neither written nor ACKed: no answer yet
    await trio.sleep(2 * DELAY)
    assert len(rows(alpha)) == 1
    assert conn.sent[0]["ok"] is True and conn.sent[0]["to"] == ["beta"]


async def test_a_client_that_half_closes_still_gets_its_send_reply(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, _ = await _pair(tmp_path, net, nursery, acks=False)
    ours, theirs = socket.socketpair()
    server_end = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    nursery.start_soon(IpcServer(alpha)._handle, server_end)
    client = trio.socket.from_stdlib_socket(theirs)
    req = {
        "cmd": "send",
        "to": "beta",
        "req": 1,
        "envelope": {"kind": "notify", "payload": {"topic": "t", "data": 1}},
    }
    await client.send((json.dumps(req) + "\n").encode())
    client.shutdown(socket.SHUT_WR)  # as `nc -N` and socat do
    data = b""
    with trio.fail_after(5):
        while chunk := await client.recv(65536):
            data += chunk
    reply = json.loads(data)
    assert reply["ok"] is True and reply["req"] == 1 and len(rows(alpha)) == 1
