"""PeerManager.supervise: who dials, the reconnect backoff, poke, the 10 s wait of the higher side."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import trio
import trio.testing
from netkit import (
    ADDR,
    FakeNet,
    MidRng,
    know,
    know_each_other,
    make_node,
    settle,
    wait_connected,
    wait_disconnected,
)

from acp.net.node import GOOD_SESSION, Node
from acp.net.peer import BACKOFF, CONNECTED, WAITING
from acp.net.peers import HIGHER_SIDE_WAIT, PeerManager
from acp.proto.backoff import Backoff

ALPHA, BETA = ADDR["alpha"], ADDR["beta"]


async def supervised(nursery: trio.Nursery, node: Node, rng: random.Random | None = None) -> None:
    await nursery.start(PeerManager(node, rng=rng or MidRng()).run)


def offsets(times: list[float], t0: float) -> list[float]:
    return [t - t0 for t in times]


async def test_dial_failures_back_off_1_2_4_8_16_30_30(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    net.refuse(BETA)
    await supervised(nursery, alpha)
    t0 = trio.current_time()
    peer = know(alpha, "beta", beta.identity.public_key)  # alpha < beta: it dials at once

    await trio.sleep_until(t0 + 100)
    assert offsets(net.dial_times(BETA), t0) == [0, 1, 3, 7, 15, 31, 61, 91]
    assert peer.state == BACKOFF and peer.next_try == t0 + 121
    assert peer.describe(trio.current_time())["next_try_in"] == 21.0
    assert peer.last_error is not None and peer.last_error.startswith("dial 10.0.0.2:7102:")
    assert alpha.stats["dial_failures"] == 8


async def test_backoff_jitter_follows_the_injected_rng(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    net.refuse(BETA)
    await supervised(nursery, alpha, random.Random(20240601))
    t0 = trio.current_time()
    know(alpha, "beta", beta.identity.public_key)
    await trio.sleep_until(t0 + 200)

    times = net.dial_times(BETA)
    delays = [b - a for a, b in itertools.pairwise(times)]
    bases = [1, 2, 4, 8, 16, 30, 30, 30]
    assert len(delays) >= len(bases)
    for delay, base in zip(delays, bases, strict=False):
        assert 0.9 * base <= delay <= min(30.0, 1.1 * base)
    # exactly the schedule Backoff computes from the same seed
    model = Backoff(rng=random.Random(20240601).random)
    expected = [t0]
    for _ in range(len(times) - 1):
        expected.append(expected[-1] + model.next())
    assert times == expected


async def test_backoff_resets_after_a_session_that_lived_5s(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    net.refuse(BETA)
    await supervised(nursery, alpha)
    t0 = trio.current_time()
    peer = know(alpha, "beta", beta.identity.public_key)
    know(beta, "alpha", alpha.identity.public_key)

    await trio.sleep_until(t0 + 2.5)  # dials at 0 and 1 failed; the next is at 3
    net.listen(beta)
    await wait_connected(peer)
    assert trio.current_time() == t0 + 3 and peer.state == CONNECTED
    await trio.sleep_until(t0 + 3 + GOOD_SESSION)
    net.refuse(BETA)
    net.links[-1].cut()
    await wait_disconnected(peer)
    assert peer.last_error == "peer closed the connection"

    await trio.sleep_until(t0 + 20)
    # after the good session: 1 s, then 2, 4, again
    assert offsets(net.dial_times(BETA), t0) == [0, 1, 3, 9, 11, 15]


async def test_a_session_that_dies_at_once_does_not_reset_the_backoff(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    net.refuse(BETA)
    await supervised(nursery, alpha)
    t0 = trio.current_time()
    peer = know(alpha, "beta", beta.identity.public_key)
    know(beta, "alpha", alpha.identity.public_key)

    await trio.sleep_until(t0 + 2.5)
    net.listen(beta)
    await wait_connected(peer)
    await trio.sleep_until(t0 + 3 + GOOD_SESSION - 0.5)  # it lives 4.5 s
    net.refuse(BETA)
    net.links[-1].cut()
    await trio.sleep_until(t0 + 40)
    # 0, 1, 3 (up until 7.5), then the backoff goes on: 4, 8, 16 after 7.5
    assert offsets(net.dial_times(BETA), t0) == [0, 1, 3, 11.5, 19.5, 35.5]


async def test_poke_redials_at_once_and_resets_the_backoff(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    net.refuse(BETA)
    await supervised(nursery, alpha)
    t0 = trio.current_time()
    peer = know(alpha, "beta", beta.identity.public_key)

    await trio.sleep_until(t0 + 9)  # dials at 0, 1, 3, 7; the next would be at 15
    assert peer.next_try == t0 + 15
    peer.poke()  # e.g. mDNS announced a new address
    await trio.sleep_until(t0 + 13)
    assert offsets(net.dial_times(BETA), t0) == [0, 1, 3, 7, 9, 10, 12]


async def test_higher_agent_id_waits_10s_before_dialling(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    net.listen(alpha)
    await supervised(nursery, beta)
    t0 = trio.current_time()
    peer = know(beta, "alpha", alpha.identity.public_key)  # beta > alpha: it waits for alpha
    know(alpha, "beta", beta.identity.public_key)

    await trio.sleep_until(t0 + HIGHER_SIDE_WAIT - 0.001)
    assert net.dials == [] and peer.state == WAITING
    await wait_connected(peer)
    assert trio.current_time() == t0 + 10
    assert offsets(net.dial_times(ALPHA), t0) == [10]
    assert peer.active is not None and peer.active.initiator_id == "beta"


async def test_lower_side_dials_and_higher_side_only_after_10s_of_silence(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    net.listen(alpha)
    net.refuse(BETA)
    await supervised(nursery, alpha)
    await supervised(nursery, beta)
    t0 = trio.current_time()
    at_alpha, at_beta = know_each_other(alpha, beta)

    await trio.sleep_until(t0 + 2.5)
    net.listen(beta)  # alpha's dial at 3 gets through
    await wait_connected(at_beta)
    assert trio.current_time() == t0 + 3
    await trio.sleep_until(t0 + 20)
    assert net.dial_times(ALPHA) == []  # beta never had to dial
    assert at_beta.active is not None and at_beta.active.initiator_id == "alpha"

    # the connection drops and alpha cannot get through any more: beta waits 10 s, then dials
    net.refuse(BETA)
    net.links[-1].cut()
    await wait_disconnected(at_beta)
    await wait_connected(at_beta)
    assert trio.current_time() == t0 + 30
    assert offsets(net.dial_times(ALPHA), t0) == [30]
    assert offsets(net.dial_times(BETA), t0) == [0, 1, 3, 21, 23, 27]
    await settle()
    assert at_alpha.active is not None and at_alpha.active.initiator_id == "beta"
    await trio.sleep_until(t0 + 100)  # alpha, kicked by the inbound session, stops dialling
    assert offsets(net.dial_times(BETA), t0) == [0, 1, 3, 21, 23, 27]


async def test_both_dial_at_once_and_keep_the_session_alpha_started(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    net.listen(alpha)
    net.refuse(BETA)
    await supervised(nursery, beta)
    t0 = trio.current_time()
    at_beta = know(beta, "alpha", alpha.identity.public_key)  # beta will dial at 10
    await trio.sleep_until(t0 + 3)
    await supervised(nursery, alpha)
    at_alpha = know(alpha, "beta", beta.identity.public_key)  # alpha dials at 3, 4, 6, 10
    await trio.sleep_until(t0 + 9.5)
    net.listen(beta)

    await trio.sleep_until(t0 + 10)
    await settle()
    assert offsets(net.dial_times(BETA), t0) == [3, 4, 6, 10]
    assert offsets(net.dial_times(ALPHA), t0) == [10]
    for peer in (at_alpha, at_beta):
        assert peer.active is not None and peer.active.initiator_id == "alpha"
        assert peer.sessions == {peer.active}

    await trio.sleep_until(t0 + 120)  # and it stays that way
    assert len(net.dials) == 5
    assert at_alpha.state == CONNECTED and at_beta.state == CONNECTED
    assert at_alpha.active is not None and at_alpha.active.initiator_id == "alpha"
    assert at_beta.active is not None and at_beta.active.initiator_id == "alpha"
