"""Session timers (docs/protocol.md §5): PING after 15 s without sending, dead after 45 s of silence."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from netkit import (
    ADDR,
    FakeNet,
    Link,
    MidRng,
    RawPeer,
    connect,
    know,
    know_each_other,
    make_node,
    settle,
    wait_disconnected,
)

from acp.net import listener
from acp.net.peer import Session
from acp.net.peers import PeerManager
from acp.proto import session as frames
from acp.proto.noise import public_key


async def test_idle_session_pings_at_15s_and_the_pong_gives_rtt(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    alpha = make_node(tmp_path, "alpha")
    link = Link(("198.51.100.1", 40000), ADDR["alpha"])
    beta = RawPeer("beta", link.client)
    peer = know(alpha, "beta", beta.public_key)
    nursery.start_soon(listener._handle, alpha, link.server)
    t0 = trio.current_time()
    await beta.dial(alpha, ts=1)
    await beta.ping()  # confirms the session; alpha answers at once
    assert isinstance(await beta.recv(), frames.Pong)
    assert trio.current_time() == t0 and peer.rtt is None

    ping = await beta.recv()
    assert isinstance(ping, frames.Ping) and len(ping.data) == frames.PING_LEN
    assert trio.current_time() == t0 + frames.PING_IDLE == t0 + 15
    await trio.sleep(0.25)
    await beta.send(frames.encode_pong(ping.data))
    await settle()
    assert peer.rtt == 0.25
    assert peer.describe(trio.current_time())["rtt_ms"] == 250.0

    # beta goes quiet: alpha keeps pinging every 15 s, and gives up 45 s after the last frame
    times = []
    while (frame := await beta.recv()) is not None:
        assert isinstance(frame, frames.Ping)
        times.append(trio.current_time())
    assert times == [t0 + 30, t0 + 45, t0 + 60]
    assert trio.current_time() == t0 + 15.25 + frames.DEAD_AFTER  # EOF: no BYE for a dead peer
    assert peer.active is None
    assert peer.last_error == "nothing received for 45 s"


async def test_idle_nodes_ping_each_other_and_stay_up(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    net: FakeNet,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pings: list[tuple[str, float]] = []
    real_send_ping = Session.send_ping

    def spy(self: Session, now: float) -> None:
        pings.append((self.node.agent_id, now))
        real_send_ping(self, now)

    monkeypatch.setattr(Session, "send_ping", spy)
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    at_alpha, at_beta = know_each_other(alpha, beta)
    net.listen(beta)
    t0 = trio.current_time()
    session = await connect(nursery, alpha, beta)
    assert pings == [("alpha", t0)]  # the initiator's confirming PING
    assert at_alpha.rtt == 0.0 and at_beta.rtt is None

    await trio.sleep_until(t0 + 100)
    assert sorted(pings) == sorted(
        [("alpha", t0)] + [(who, t0 + 15 * k) for k in range(1, 7) for who in ("alpha", "beta")]
    )
    assert at_beta.rtt == 0.0  # beta's own PINGs were answered
    assert at_alpha.active is session and at_beta.active is not None


async def test_silent_peer_is_dead_after_45s_and_redialled(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    """A remote that completes the handshake, then swallows everything and never sends."""
    alpha = make_node(tmp_path, "alpha")
    beta_key = make_node(tmp_path, "beta").identity.private_key
    swallowed: list[RawPeer] = []

    async def silent(stream: trio.abc.Stream) -> None:
        raw = RawPeer("beta", stream, beta_key)  # type: ignore[arg-type]
        await raw.answer()
        swallowed.append(raw)
        await trio.sleep_forever()  # reads nothing, sends nothing

    net.serve(ADDR["beta"], silent)  # type: ignore[arg-type]
    await nursery.start(PeerManager(alpha, rng=MidRng()).run)
    t0 = trio.current_time()
    peer = know(alpha, "beta", public_key(beta_key))
    await settle()
    assert peer.active is not None and len(swallowed) == 1

    await trio.sleep_until(t0 + 44.999)
    assert peer.active is not None
    await wait_disconnected(peer)
    assert trio.current_time() == t0 + frames.DEAD_AFTER == t0 + 45
    assert peer.last_error == "nothing received for 45 s"
    # what alpha sent meanwhile: its confirming PING at 0, then a PING at 15 and at 30
    sent = swallowed[0]
    pings = [f for f in [await sent.recv() for _ in range(3)] if isinstance(f, frames.Ping)]
    assert len(pings) == 3 and await sent.recv() is None

    # a session that lived >= 5 s resets the backoff: the next dial is 1 s later
    await trio.sleep_until(t0 + 47)
    assert net.dial_times(ADDR["beta"]) == [t0, t0 + 46]
