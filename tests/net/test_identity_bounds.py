"""Identity state a stranger can create is bounded, and what the user undid stays undone (#9):
the pin cap, the session cap, replay floors after `forget`, and `acp block`."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import trio
import trio.testing
from netkit import ADDR, InlineDatabase, Link, RawPeer, make_node, stored_peer

from acp.errors import HandshakeError, IpcError
from acp.model import Envelope, encode_key
from acp.net import listener
from acp.net.node import Node, Ticket

CLIENT = ("198.51.100.1", 40000)


async def dial(node: Node, agent_id: str, key: bytes | None = None, ts: int = 1000) -> bool:
    """A raw peer's handshake against ``node``'s accept path; True if message 2 came back."""
    link = Link(CLIENT, ADDR[node.agent_id])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener._handle, node, link.server)
        ok = False
        with trio.move_on_after(5), contextlib.suppress(HandshakeError):
            await RawPeer(agent_id, link.client, key).dial(node, ts=ts)
            ok = True
        await link.client.aclose()
    return ok


async def test_tofu_pins_are_capped_and_unproven_ones_go_first(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    beta = make_node(tmp_path, "beta", max_pins=3)
    proven_key = os.urandom(32)
    assert await dial(beta, "old-friend", proven_key)
    beta.store.update("old-friend", proven=True)  # (a session of it lasted)
    for i in range(20):  # a flood of fresh identities
        assert await dial(beta, f"fake{i}")
    pinned = {a for a in beta.store if (r := beta.store.get(a)) and r.pubkey}
    assert len(pinned) == 3 and "old-friend" in pinned and "fake19" in pinned
    assert beta.stats["pins_dropped"] == 18
    assert len(beta.peers) <= 3  # the dropped ones left the peer table (and memory) too


async def test_user_pins_are_never_pruned_and_a_full_table_refuses(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    beta = make_node(tmp_path, "beta", max_pins=2)  # carol's and one more
    beta.store.pin("carol", os.urandom(32))
    beta.store.update("carol", source="manual")  # `acp trust`: the user's word
    assert await dial(beta, "fake0")
    assert await dial(beta, "fake1")  # fake0 makes room: it is not connected any more
    assert beta.store.get("carol") is not None and beta.store.get("fake0") is None
    # the only tofu pin is connected now: nothing can make room, so a stranger is refused
    link = Link(CLIENT, ADDR["beta"])
    nursery.start_soon(listener._handle, beta, link.server)
    fake2 = RawPeer("fake2", link.client)
    await fake2.dial(beta, ts=1)
    await fake2.ping()  # its first frame confirms the session (docs/protocol.md §4)
    await fake2.recv()
    assert beta.peers["fake2"].connected
    assert not await dial(beta, "fake3")
    assert beta.stats["handshakes_refused.too_many_peers"] == 1
    assert beta.store.get("carol") is not None


async def test_max_sessions_refuses_strangers_not_pinned_peers(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    beta = make_node(tmp_path, "beta", max_sessions=2)
    keys = {name: os.urandom(32) for name in ("p1", "p2", "friend")}
    friend = RawPeer("friend", Link(CLIENT, ADDR["beta"]).client, keys["friend"])
    beta.store.pin("friend", friend.public_key)
    links = []
    for name in ("p1", "p2"):  # two sessions that stay up
        link = Link(CLIENT, ADDR["beta"])
        nursery.start_soon(listener._handle, beta, link.server)
        raw = RawPeer(name, link.client, keys[name])
        await raw.dial(beta, ts=1)
        await raw.ping()  # its first frame confirms the session (docs/protocol.md §4)
        await raw.recv()
        links.append(link)
    assert beta.sessions_up() == 2
    assert not await dial(beta, "stranger")
    assert beta.stats["handshakes_refused.too_many_peers"] == 1
    assert await dial(beta, "friend", keys["friend"])  # a pinned key still gets in


async def test_a_recorded_message_1_is_still_a_replay_after_forget(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    beta = make_node(tmp_path, "beta")
    key = os.urandom(32)
    link = Link(CLIENT, ADDR["beta"])
    raw = RawPeer("alpha", link.client, key)
    recorded = raw.message_1(beta.identity.public_key, ts=5000, port=7101)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener._handle, beta, link.server)
        await link.client.send_all(recorded)
        await raw.read_message_2("beta")
        await link.client.aclose()
    beta.unpin("alpha", "forgotten")  # as `acp forget alpha` does
    beta.save_peers()
    assert beta.store.get("alpha") is None
    # after a restart too: the floor is in the database
    db = beta.db
    assert isinstance(db, InlineDatabase)
    await trio.testing.wait_all_tasks_blocked()
    loaded = db.load_now()
    again = Node(beta.config, beta.identity, db, loaded.peers)
    again.restore(loaded)
    again.port = beta.port
    replay = Link(("192.0.2.66", 1), ADDR["beta"])  # someone else's address
    await replay.client.send_all(recorded)
    await listener._handle(again, replay.server)
    assert again.stats["handshakes_refused.replay"] == 1
    assert again.store.get("alpha") is None  # not re-pinned with the replayer's address
    assert await dial(again, "alpha", key, ts=5001)  # the real alpha, later: welcome back
    rec = stored_peer(again, "alpha") or again.store.get("alpha")
    assert rec is not None


async def test_block_refuses_handshakes_and_announcements_across_a_restart(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    beta = make_node(tmp_path, "beta")
    key = os.urandom(32)
    assert await dial(beta, "mallory", key)
    assert beta.block("mallory") and not beta.block("mallory")
    assert "mallory" not in beta.peers and beta.store.get("mallory") is None
    beta.save_peers()
    await trio.testing.wait_all_tasks_blocked()
    db = beta.db
    assert isinstance(db, InlineDatabase)
    loaded = db.load_now()
    again = Node(beta.config, beta.identity, db, loaded.peers)
    again.restore(loaded)
    again.port = beta.port
    assert not await dial(again, "mallory", key, ts=2000)
    assert not await dial(again, "mallory", os.urandom(32), ts=2000)  # any key
    assert again.stats["handshakes_refused.blocked"] == 2
    again.discovered("mallory", key, "192.0.2.9", 7100, boot=None)
    assert "mallory" not in again.peers
    env = Envelope(1, "v1", "beta", "mallory", 1, "notify", None, {"topic": "t", "data": 1})
    with pytest.raises(IpcError, match="blocked") as err:
        again.route(env, b"{}", Ticket(None, "v1", "mallory"))
    assert err.value.code == "blocked"
    assert again.store.unblock("mallory")
    assert await dial(again, "mallory", key, ts=3000)


async def test_a_squatter_or_a_changed_key_is_explained_in_status(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    beta = make_node(tmp_path, "beta")
    real = os.urandom(32)
    assert await dial(beta, "alpha", real)
    other = RawPeer("alpha", Link(CLIENT, ADDR["beta"]).client)
    assert not await dial(beta, "alpha", other.private_key, ts=9999)
    assert not await dial(beta, "alpha", other.private_key, ts=10000)
    assert beta.stats["handshakes_refused.key_mismatch"] == 2
    [warning] = beta.warnings  # one per agent_id, however often it tries
    assert "'alpha' from 198.51.100.1" in warning
    assert f"acp trust alpha {encode_key(other.public_key)}" in warning


async def test_a_flood_cannot_push_out_a_peer_that_proved_itself(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Otherwise a flood could drop an offline peer's pin, then claim its agent_id with its own
    key (tofu). Proven pins, and pins from before acp kept `proven` that had a session, stay;
    when only such pins are left, strangers are refused instead."""
    beta = make_node(tmp_path, "beta", max_pins=3)
    assert await dial(beta, "friend")
    beta.store.update("friend", proven=True)
    beta.store.pin("old-timer", os.urandom(32))
    beta.store.update("old-timer", ts_accepted=5)  # (proven unknown: pinned by an older acp)
    assert await dial(beta, "fake0")
    assert await dial(beta, "fake1")  # fake0 makes room
    beta.store.update("fake1", proven=True)  # it held a session for 5 s
    assert not await dial(beta, "fake2")
    assert beta.stats["handshakes_refused.too_many_peers"] == 1
    assert {"friend", "old-timer", "fake1"} == {a for a in beta.store}
    assert not await dial(beta, "friend", os.urandom(32), ts=10**6)  # still its pin: key_mismatch


async def test_a_ts_past_2_63_is_refused_and_trust_respects_a_block(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    from netkit import FakeConn

    from acp.net.ipc_server import IpcServer
    from acp.proto import ipc

    beta = make_node(tmp_path, "beta")
    assert not await dial(beta, "alpha", ts=2**64)  # would overflow SQLite's INTEGER as a floor
    assert beta.stats["handshakes_refused.bad_payload"] == 1
    beta.block("mallory")
    server = IpcServer(beta)
    key = encode_key(RawPeer("x", Link(CLIENT, ADDR["beta"]).client).public_key)
    request = ipc.Request("trust", {"agent_id": "mallory", "pubkey": key})
    with pytest.raises(IpcError) as err:
        server.dispatch(FakeConn(), request, nursery)  # type: ignore[arg-type]
    assert err.value.code == "blocked"


async def test_a_key_announced_by_mdns_is_held_to_the_pin_cap_too(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """An mDNS announcement puts a key in the peer table without pinning it; a handshake with that
    key then pins it: without the cap there, announcing first would be a way around it."""
    beta = make_node(tmp_path, "beta", max_pins=1)
    assert await dial(beta, "friend")
    beta.store.update("friend", proven=True)
    ghost = RawPeer("ghost", Link(CLIENT, ADDR["beta"]).client)
    beta.discovered("ghost", ghost.public_key, "192.0.2.5", 7100, boot=None)
    assert beta.peers["ghost"].pubkey == ghost.public_key and beta.store.get("ghost") is None
    assert not await dial(beta, "ghost", ghost.private_key)
    assert beta.stats["handshakes_refused.too_many_peers"] == 1
    assert beta.store.pinned() == 1
    assert not beta.make_room_for_pin("another")  # the dialling side asks the same question
