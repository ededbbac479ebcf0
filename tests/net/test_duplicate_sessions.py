"""Two sessions between the same pair (docs/protocol.md §4): the lower initiator wins; a reconnect wins
once confirmed, and the session it replaces gets BYE."""

from __future__ import annotations

import json
from pathlib import Path

import trio
import trio.testing
from netkit import (
    ADDR,
    FakeConn,
    FakeNet,
    Link,
    RawPeer,
    connect,
    know_each_other,
    make_node,
    send,
    settle,
)

from acp.net import handshake, listener
from acp.net.node import Node
from acp.net.peer import Session
from acp.proto import session as frames


def pair(tmp_path: Path, net: FakeNet) -> tuple[Node, Node]:
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    know_each_other(alpha, beta)
    net.listen(alpha)
    net.listen(beta)
    return alpha, beta


async def assert_traffic_flows(alpha: Node, beta: Node) -> None:
    at_alpha, at_beta = FakeConn(), FakeConn()
    alpha.subscribe(at_alpha)
    beta.subscribe(at_beta)
    send(alpha, "beta", "a->b")
    send(beta, "alpha", "b->a")
    await settle()
    assert at_beta.inbound_ids() == ["a->b"] and at_alpha.inbound_ids() == ["b->a"]


def the_session(node: Node, other: str) -> Session:
    peer = node.peers[other]
    assert peer.active is not None and peer.sessions == {peer.active}
    return peer.active


async def test_both_dial_at_once_both_keep_the_lower_initiators_session(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = pair(tmp_path, net)
    ended: dict[str, str] = {}

    async def dial_and_run(a: Node, b: Node) -> None:
        session = await handshake.dial(a, a.peers[b.agent_id], *ADDR[b.agent_id])
        ended[a.agent_id] = await session.run()

    nursery.start_soon(dial_and_run, alpha, beta)
    nursery.start_soon(dial_and_run, beta, alpha)
    await settle()

    assert len(net.dials) == 2
    assert the_session(alpha, "beta").initiator_id == "alpha"
    assert the_session(beta, "alpha").initiator_id == "alpha"
    assert list(ended) == ["beta"]  # beta's own outbound session was the one closed
    assert ended["beta"] in (
        "duplicate session: keeping the other one",
        "replaced by a newer session",
        "peer said BYE: duplicate session",
        "peer said BYE: replaced by a newer session",
    )
    await assert_traffic_flows(alpha, beta)


async def test_later_dial_from_the_higher_side_is_dropped(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = pair(tmp_path, net)
    first = await connect(nursery, alpha, beta)
    kept = the_session(beta, "alpha")

    late = await handshake.dial(beta, beta.peers["alpha"], *ADDR["alpha"])
    assert await late.run() == "duplicate session: keeping the other one"
    await settle()
    assert the_session(alpha, "beta") is first and the_session(beta, "alpha") is kept
    # beta said BYE on its way out: alpha closed its unconfirmed side without a fuss
    assert alpha.stats["protocol_errors"] == 0
    await assert_traffic_flows(alpha, beta)


async def test_later_dial_from_the_lower_side_replaces_the_higher_ones(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = pair(tmp_path, net)
    beta_first = await connect(nursery, beta, alpha)
    assert the_session(alpha, "beta").initiator_id == "beta"

    await connect(nursery, alpha, beta)
    assert the_session(alpha, "beta").initiator_id == "alpha"
    assert the_session(beta, "alpha").initiator_id == "alpha"
    assert beta_first.end_reason in (
        "replaced by a newer session",
        "peer said BYE: replaced by a newer session",
    )
    await assert_traffic_flows(alpha, beta)


async def test_reconnect_replaces_the_old_session_only_once_confirmed(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = pair(tmp_path, net)
    old = await connect(nursery, alpha, beta)
    old_at_beta = the_session(beta, "alpha")
    inbox = FakeConn()
    alpha.subscribe(inbox)

    # alpha (its key, its agent_id) connects again, e.g. after a restart: the handshake completes
    link = Link(("198.51.100.1", 41000), ADDR["beta"])
    nursery.start_soon(listener._handle, beta, link.server)
    again = RawPeer("alpha", link.client, alpha.identity.private_key)
    ts_sent = alpha.store.record("beta").ts_sent
    assert ts_sent is not None
    await again.dial(beta, ts=ts_sent + 1)
    await settle()
    # ... but until its first transport frame decrypts, the old session stays in charge
    assert the_session(beta, "alpha") is old_at_beta
    send(beta, "alpha", "over-the-old-one")
    await settle()
    assert inbox.inbound_ids() == ["over-the-old-one"]

    await again.ping()
    assert await again.recv() == frames.Pong(b"rawping!")
    await settle()
    new_at_beta = the_session(beta, "alpha")
    assert new_at_beta is not old_at_beta and new_at_beta.stream is link.server
    # the replaced session got BYE: alpha's old session ends on it
    assert old.end_reason == "peer said BYE: replaced by a newer session"
    assert old_at_beta.end_reason == "replaced by a newer session"
    assert alpha.peers["beta"].active is None

    # what beta sends now goes over the new session
    send(beta, "alpha", "over-the-new-one")
    env = await again.recv_until(frames.EnvelopeFrame)
    assert json.loads(env.body)["id"] == "over-the-new-one"
