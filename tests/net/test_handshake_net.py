"""The handshake over a stream (docs/protocol.md §4): the 5 s deadline on both sides, and refusals."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio
import trio.testing
from netkit import ADDR, FakeNet, Link, MidRng, RawPeer, know, make_node, settle, stored_peer

from acp.errors import HandshakeError
from acp.net import handshake, listener
from acp.net.node import Node
from acp.net.peer import BACKOFF, CONNECTING
from acp.net.peers import PeerManager
from acp.proto import handshake as hs
from acp.proto import session as frames

CLIENT = ("198.51.100.1", 40000)


def new_link(agent_id: str = "beta") -> Link:
    return Link(CLIENT, ADDR[agent_id])


async def run_handle(node: Node, link: Link) -> None:
    """The daemon's accept path for one connection, run to its end (it never raises)."""
    await listener._handle(node, link.server)


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    out = b""
    while data := await stream.receive_some():
        out += data
    return out


# -- the 5 s deadline ------------------------------------------------------------------------------


async def test_responder_without_message_1_gives_up_at_5s(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    beta = make_node(tmp_path, "beta")
    link = new_link()
    t0 = trio.current_time()
    await listener._handle(beta, link.server)
    assert trio.current_time() - t0 == hs.HANDSHAKE_TIMEOUT == 5.0
    assert beta.stats["handshakes_refused.timeout"] == 1
    assert len(beta.admission) == 0  # the pending-handshake slot is given back
    assert await link.client.receive_some() == b""  # closed, without a word
    assert beta.peers == {}


async def test_responder_deadline_counts_from_connect_not_from_last_byte(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A peer trickling message 1 a byte a second does not keep the connection open past 5 s."""
    beta = make_node(tmp_path, "beta")
    link = new_link()
    msg1 = RawPeer("alpha", link.client).message_1(beta.identity.public_key, ts=1)
    t0 = trio.current_time()

    async def trickle() -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # closed under it at 5 s
            for byte in msg1:
                await link.client.send_all(bytes([byte]))
                await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        await run_handle(beta, link)
        assert trio.current_time() - t0 == 5.0
        nursery.cancel_scope.cancel()
    assert beta.stats["handshakes_refused.timeout"] == 1


async def test_initiator_without_message_2_fails_at_5s_then_backs_off(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    net: FakeNet,
    nursery: trio.Nursery,
) -> None:
    alpha = make_node(tmp_path, "alpha")
    beta = make_node(tmp_path, "beta")
    net.blackhole(ADDR["beta"])  # accepts the TCP connection, never answers message 1
    await nursery.start(PeerManager(alpha, rng=MidRng()).run)
    t0 = trio.current_time()
    peer = know(alpha, "beta", beta.identity.public_key)

    await trio.sleep_until(t0 + 4.999)
    assert peer.state == CONNECTING and peer.last_error is None
    await trio.sleep_until(t0 + 5)
    await settle()
    assert peer.state == BACKOFF
    assert peer.last_error == "dial 10.0.0.2:7102: no handshake within 5 s"
    assert peer.next_try == t0 + 6  # backoff 1 s after the failed attempt
    assert alpha.stats["dial_failures"] == 1

    await trio.sleep_until(t0 + 30)
    # 5 s handshake, then 1, 2, 4 s of backoff: attempts start at 0, 6, 13, 22
    assert net.dial_times(ADDR["beta"]) == [t0, t0 + 6, t0 + 13, t0 + 22]
    # the initiator closed its end each time: the far end saw message 1, then EOF
    first = net.links[0].server
    data = await read_all(first)
    assert len(data) > 0 and int.from_bytes(data[:4], "big") == len(data) - 4


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "held-from-peer-table"])
async def test_replayed_message_1_is_refused(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery, pinned: bool
) -> None:
    """Same ts again (a recorded message 1 replayed, or a fresh one) is refused: replay.

    ``held-from-peer-table`` is a key known as mDNS gives it: in the peer table, not yet pinned.
    """
    beta = make_node(tmp_path, "beta")
    first = new_link()
    raw = RawPeer("alpha", first.client)
    know(beta, "alpha", raw.public_key)
    if pinned:
        beta.store.pin("alpha", raw.public_key)
    nursery.start_soon(run_handle, beta, first)
    recorded = raw.message_1(beta.identity.public_key, ts=1000, port=7101)
    await first.client.send_all(recorded)
    await raw.read_message_2("beta")
    await raw.ping()
    assert isinstance(await raw.recv(), frames.Pong)
    session = beta.peers["alpha"].active
    assert session is not None

    # the very bytes again, on a new connection
    replay = new_link()
    await replay.client.send_all(recorded)
    await run_handle(beta, replay)
    assert beta.stats["handshakes_refused.replay"] == 1
    assert await read_all(replay.client) == b""  # refused without message 2

    # a new message 1 (fresh ephemeral key) with a ts not above the last accepted
    for ts in (1000, 999):
        link = new_link()
        await link.client.send_all(
            RawPeer("alpha", link.client, raw.private_key).message_1(
                beta.identity.public_key, ts=ts
            )
        )
        with pytest.raises(hs.Refused) as refused:
            with trio.fail_after(hs.HANDSHAKE_TIMEOUT):
                await handshake.answer(beta, link.server)
        assert refused.value.reason == hs.REPLAY

    assert beta.peers["alpha"].active is session  # the live session never noticed
    on_disk = stored_peer(beta, "alpha")
    assert on_disk is not None and on_disk.ts_accepted == 1000 and on_disk.pubkey == raw.public_key

    # a higher ts is a new handshake, not a replay
    later = new_link()
    nursery.start_soon(run_handle, beta, later)
    await RawPeer("alpha", later.client, raw.private_key).dial(beta, ts=1001)
    assert beta.stats["handshakes_refused.replay"] == 1


async def test_key_other_than_held_is_refused(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    beta = make_node(tmp_path, "beta")
    real = RawPeer("alpha", new_link().client)
    know(beta, "alpha", real.public_key)
    beta.store.pin("alpha", real.public_key)

    link = new_link()
    impostor = RawPeer("alpha", link.client)  # another key, claiming the same agent_id
    await link.client.send_all(impostor.message_1(beta.identity.public_key, ts=1))
    await run_handle(beta, link)
    assert beta.stats["handshakes_refused.key_mismatch"] == 1
    assert await read_all(link.client) == b""
    assert beta.peers["alpha"].pubkey == real.public_key
    rec = beta.store.get("alpha")
    assert rec is not None and rec.pubkey == real.public_key

    link = new_link()
    await link.client.send_all(
        RawPeer("alpha", link.client, impostor.private_key).message_1(
            beta.identity.public_key, ts=2
        )
    )
    with pytest.raises(hs.Refused) as refused:
        await handshake.answer(beta, link.server)
    assert refused.value.reason == hs.KEY_MISMATCH


async def test_explicit_trust_refuses_an_unknown_agent(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    beta = make_node(tmp_path, "beta", trust="explicit")
    link = new_link()
    carol = RawPeer("carol", link.client)
    await link.client.send_all(carol.message_1(beta.identity.public_key, ts=1))
    await run_handle(beta, link)
    assert beta.stats["handshakes_refused.not_trusted"] == 1
    assert await read_all(link.client) == b""
    assert "carol" not in beta.peers and "carol" not in beta.store


async def test_tofu_pins_the_key_of_a_new_agent(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    beta = make_node(tmp_path, "beta")  # trust = tofu, the default
    assert beta.config.trust == "tofu"
    link = new_link()
    carol = RawPeer("carol", link.client)
    nursery.start_soon(run_handle, beta, link)
    await carol.dial(beta, ts=5, port=7103)
    await settle()

    peer = beta.peers["carol"]
    assert peer.pubkey == carol.public_key and peer.source == "incoming"
    assert (peer.host, peer.port) == (CLIENT[0], 7103)  # source address, announced port
    on_disk = stored_peer(beta, "carol")
    assert on_disk is not None
    assert (on_disk.pubkey, on_disk.ts_accepted) == (carol.public_key, 5)
    assert (on_disk.host, on_disk.port) == (CLIENT[0], 7103)

    # from now on that key is the one held for carol
    link = new_link()
    other = RawPeer("carol", link.client)
    await link.client.send_all(other.message_1(beta.identity.public_key, ts=6))
    await run_handle(beta, link)
    assert beta.stats["handshakes_refused.key_mismatch"] == 1


async def test_initiator_refuses_a_responder_with_another_agent_id(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    """Message 2 must name the agent_id dialled (with the key expected, which Noise checks)."""
    alpha = make_node(tmp_path, "alpha")
    beta = make_node(tmp_path, "beta")

    async def wrong_name(stream: trio.abc.Stream) -> None:
        raw = RawPeer("carol", stream, beta.identity.private_key)  # right key, wrong agent_id
        await raw.answer()
        await trio.sleep_forever()

    net.serve(ADDR["beta"], wrong_name)  # type: ignore[arg-type]
    peer = know(alpha, "beta", beta.identity.public_key)
    with pytest.raises(hs.Refused) as refused:
        await handshake.dial(alpha, peer, *ADDR["beta"])
    assert refused.value.reason == hs.WRONG_PEER
    rec = stored_peer(alpha, "beta")
    assert rec is not None and rec.ts_sent is not None and rec.ts_sent > 0


async def test_one_address_cannot_take_every_handshake_slot(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    from acp.proto.admission import PER_SOURCE

    beta = make_node(tmp_path, "beta")
    links = [Link(("198.51.100.9", 40000 + i), ADDR["beta"]) for i in range(PER_SOURCE + 1)]
    for link in links:  # silent clients: each holds a slot until the 5 s deadline
        nursery.start_soon(listener._handle, beta, link.server)
    await trio.testing.wait_all_tasks_blocked()
    assert beta.stats["handshakes_refused.busy"] == 1
    assert beta.admission.by_source == {"198.51.100.9": PER_SOURCE}
    other = Link(("198.51.100.10", 40000), ADDR["beta"])  # another host still gets in line
    nursery.start_soon(listener._handle, beta, other.server)
    await trio.testing.wait_all_tasks_blocked()
    assert beta.stats["handshakes_refused.busy"] == 1
    await trio.sleep(6)
    assert beta.admission.by_source == {} and beta.stats["handshakes_refused.timeout"] == 9

async def test_idle_connections_from_many_sources_do_not_lock_peers_out(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The lock-out of issue #9: 10 sources x 8 idle connections, refreshed before the deadline,
    against 64 slots. Peers still get in: a pinned one and a stranger (tofu) alike."""
    from acp.proto.admission import MAX_HALF_OPEN, PER_SOURCE

    beta = make_node(tmp_path, "beta")
    pinned = RawPeer("alpha", new_link().client)
    beta.store.pin("alpha", pinned.public_key)

    async def attacker(n: int) -> None:
        while True:  # 8 connections from one address, replaced every 0.5 s
            for i in range(PER_SOURCE):
                link = Link((f"203.0.113.{n}", 50000 + i), ADDR["beta"])
                nursery.start_soon(listener._handle, beta, link.server)
            await trio.sleep(0.5)

    for n in range(10):
        nursery.start_soon(attacker, n)
    await trio.sleep(3)
    assert len(beta.admission) > MAX_HALF_OPEN // 2  # the attack holds most slots
    got_in = 0
    for attempt in range(40):
        link = new_link()
        agent = "alpha" if attempt % 2 == 0 else f"stranger{attempt}"
        key = pinned.private_key if agent == "alpha" else None
        nursery.start_soon(run_handle, beta, link)
        with trio.move_on_after(2), contextlib.suppress(HandshakeError):
            await RawPeer(agent, link.client, key).dial(beta, ts=10_000 + attempt)
            got_in += 1
        await trio.sleep(0.1)
    assert got_in == 40
    assert beta.stats["handshakes_refused.evicted"] > 0
