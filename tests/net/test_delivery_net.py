"""Delivery between nodes (docs/protocol.md §7): order, ACKs, urgent first, resend, TTL and bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from netkit import (
    FakeConn,
    FakeNet,
    Link,
    MidRng,
    connect,
    know,
    know_each_other,
    make_node,
    send,
    settle,
    wait_connected,
    wait_disconnected,
)

from acp.errors import IpcError
from acp.net.node import Ticket
from acp.net.peers import PeerManager
from acp.proto import envelope as envelope_mod
from acp.proto.delivery import OUTBOX_TTL


def undelivered(conn: FakeConn) -> list[tuple[str, str, str]]:
    return [
        (e["msg_id"], e["to"], e["reason"]) for e in conn.sent if e.get("event") == "undelivered"
    ]


# -- a peer that is not connected ------------------------------------------------------------------


async def test_queued_envelope_expires_at_300s(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    alpha = make_node(tmp_path, "alpha")
    know(alpha, "beta", make_node(tmp_path, "beta").identity.public_key)
    sender, watcher, gone = FakeConn(), FakeConn(), FakeConn()
    alpha.subscribe(watcher)
    alpha.subscribe(sender)  # a sender that also subscribed hears it once
    t0 = trio.current_time()
    assert send(alpha, "beta", "m1", sender) == "queued"
    assert send(alpha, "beta", "m2", gone) == "queued"
    gone.closed = True  # that client went away: only subscribers hear about m2
    await trio.sleep(1)
    assert send(alpha, "beta", "m3", sender) == "queued"

    await trio.sleep_until(t0 + OUTBOX_TTL - 0.001)
    alpha.expire()
    await trio.testing.wait_all_tasks_blocked()  # events are pushed once stored
    assert undelivered(sender) == [] and len(alpha.peers["beta"].outbox) == 3

    await trio.sleep_until(t0 + 300)
    alpha.expire()
    await trio.testing.wait_all_tasks_blocked()  # events are pushed once stored
    assert undelivered(sender) == [("m1", "beta", "expired"), ("m2", "beta", "expired")]
    assert undelivered(watcher) == [("m1", "beta", "expired"), ("m2", "beta", "expired")]
    assert undelivered(gone) == []
    assert len(alpha.peers["beta"].outbox) == 1
    assert alpha.stats["undelivered.expired"] == 2

    await trio.sleep_until(t0 + 301)
    alpha.expire()
    await trio.testing.wait_all_tasks_blocked()  # events are pushed once stored
    assert undelivered(watcher)[-1] == ("m3", "beta", "expired")
    assert len(alpha.peers["beta"].outbox) == 0
    assert sender.sent[-1] == {
        "event": "undelivered",
        "msg_id": "m3",
        "to": "beta",
        "reason": "expired",
    }


async def test_expired_send_that_waits_for_the_ack_gets_an_error(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    alpha = make_node(tmp_path, "alpha", outbox_ttl=30)
    know(alpha, "beta", make_node(tmp_path, "beta").identity.public_key)
    conn = FakeConn()
    env, wire = envelope_mod.complete(
        {"id": "w1", "kind": "notify", "payload": {"topic": "t", "data": 1}},
        own_id="alpha",
        to="beta",
        now_ms=0,
    )
    ticket = Ticket(conn, env.id, "beta", wait="acked")  # type: ignore[arg-type]
    alpha.route(env, wire, ticket)
    t0 = trio.current_time()
    await trio.sleep_until(t0 + 30)  # the configured TTL
    alpha.expire()
    assert ticket.done.is_set()
    assert ticket.result == {"error": "undelivered", "message": "beta did not take w1: expired"}
    assert conn.sent == []  # it hears through its pending reply, not an event


async def test_unknown_peer_and_full_outbox_are_errors(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    alpha = make_node(tmp_path, "alpha", outbox_limit=3)
    know(alpha, "beta", make_node(tmp_path, "beta").identity.public_key)
    with pytest.raises(IpcError) as err:
        send(alpha, "carol", "x")
    assert err.value.code == "unknown_peer"

    for i in range(3):
        assert send(alpha, "beta", f"m{i}") == "queued"
    with pytest.raises(IpcError) as err:
        send(alpha, "beta", "m3")
    assert err.value.code == "outbox_full"
    assert "3" in err.value.message
    assert alpha.stats["outbox_full"] == 1 and len(alpha.peers["beta"].outbox) == 3


# -- a live session --------------------------------------------------------------------------------


async def test_envelopes_arrive_in_order_and_are_acked(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    at_alpha, at_beta = know_each_other(alpha, beta)
    net.listen(beta)
    await connect(nursery, alpha, beta)
    inbox = FakeConn()
    beta.subscribe(inbox)
    conn = FakeConn()
    ids = [f"m{i:03}" for i in range(200)]  # more than one writer batch's worth
    for env_id in ids:
        assert send(alpha, "beta", env_id, conn) == "sending"
    await settle()

    assert inbox.inbound_ids() == ids
    assert all(p["envelope"]["from"] == "alpha" and p["inbound"] for p in inbox.inbound)
    assert len(at_alpha.outbox) == 0
    assert alpha.stats["acks_ok"] == 200 and beta.stats["messages_delivered"] == 200
    assert conn.sent == []  # nothing went wrong, nothing to say

    # and the other way
    back = FakeConn()
    alpha.subscribe(back)
    send(beta, "alpha", "r1")
    await settle()
    assert back.inbound_ids() == ["r1"] and len(at_beta.outbox) == 0


async def test_urgent_delegate_goes_ahead_of_queued_traffic(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    know_each_other(alpha, beta)
    net.listen(beta)
    inbox = FakeConn()
    beta.subscribe(inbox)
    send(alpha, "beta", "n1")
    send(alpha, "beta", "d1", kind="delegate", priority="normal")
    send(alpha, "beta", "n2")
    send(alpha, "beta", "u1", kind="delegate", priority="urgent")
    assert send(alpha, "beta", "u2", kind="delegate", priority="urgent") == "queued"
    await connect(nursery, alpha, beta)
    assert inbox.inbound_ids() == ["u1", "u2", "n1", "d1", "n2"]


async def test_resend_after_a_drop_delivers_each_envelope_once_in_order(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    await nursery.start(PeerManager(alpha, rng=MidRng()).run)
    at_alpha, at_beta = know_each_other(alpha, beta)
    net.listen(beta)
    inbox = FakeConn()
    beta.subscribe(inbox)
    t0 = trio.current_time()
    peer = alpha.peers["beta"]
    await wait_connected(peer)
    await settle()

    link = net.links[0]
    Link.stall(link.server)  # beta's ACKs never make it back
    for env_id in ("m1", "m2", "m3"):
        send(alpha, "beta", env_id)
    await settle()
    assert inbox.inbound_ids() == ["m1", "m2", "m3"] and len(at_alpha.outbox) == 3

    await trio.sleep_until(t0 + 1)
    link.cut()
    await wait_disconnected(peer)
    assert send(alpha, "beta", "m4") == "queued"
    send(alpha, "beta", "u1", kind="delegate", priority="urgent")

    await wait_connected(peer)  # the supervisor redials after 1 s
    assert trio.current_time() == t0 + 2
    await settle()
    assert inbox.inbound_ids() == ["m1", "m2", "m3", "u1", "m4"]
    assert beta.stats["duplicates"] == 3  # resent, ACKed, not delivered again
    assert len(at_alpha.outbox) == 0 and alpha.stats["acks_ok"] == 5
    assert at_beta.active is not None


async def test_resend_order_after_the_drop_is_the_order_first_sent(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    """Un-ACKed envelopes that never arrived either are resent first, in their first order."""
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    at_alpha, _ = know_each_other(alpha, beta)
    net.listen(beta)
    inbox = FakeConn()
    beta.subscribe(inbox)
    await connect(nursery, alpha, beta)
    link = net.links[0]
    Link.stall(link.client)  # nothing alpha sends from now on arrives
    for env_id in ("m1", "m2", "m3"):
        send(alpha, "beta", env_id)
    await settle()
    link.cut()
    await wait_disconnected(at_alpha)
    assert inbox.inbound_ids() == []
    send(alpha, "beta", "m4")
    send(alpha, "beta", "u1", kind="delegate", priority="urgent")
    await connect(nursery, alpha, beta)
    assert inbox.inbound_ids() == ["m1", "m2", "m3", "u1", "m4"]
    assert beta.stats["duplicates"] == 0 and len(at_alpha.outbox) == 0


async def test_full_inbox_refuses_and_the_sender_offers_it_again(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha = make_node(tmp_path, "alpha")
    beta = make_node(tmp_path, "beta", inbox_limit=2, inbox_per_sender=2)
    at_alpha, _ = know_each_other(alpha, beta)
    net.listen(beta)
    await connect(nursery, alpha, beta)
    sender, watcher = FakeConn(), FakeConn()
    alpha.subscribe(watcher)
    for env_id in ("m1", "m2", "m3"):
        send(alpha, "beta", env_id, sender)
    await settle()

    assert beta.local.unread_count == 2 and beta.stats["inbox_full"] == 1
    assert undelivered(sender) == [] and undelivered(watcher) == []  # kept, not lost
    assert len(at_alpha.outbox) == 1 and at_alpha.outbox.hold_until is not None
    assert alpha.stats["acks_ok"] == 2 and alpha.stats["acks_inbox_full"] == 1

    # a client reads and acks; m3 was never stored, so it is not there yet
    client = FakeConn()
    beta.subscribe(client)
    assert client.inbound_ids() == ["m1", "m2"]
    beta.ack(None, 2, lambda n: None)
    await trio.sleep(4)
    alpha.expire()
    await settle()
    assert client.inbound_ids() == ["m1", "m2"]  # held for 5 s after the refusal
    await trio.sleep(1.5)
    alpha.expire()  # the daemon's once-a-second sweep: the hold is over
    await settle()
    assert client.inbound_ids() == ["m1", "m2", "m3"]
    assert len(at_alpha.outbox) == 0
