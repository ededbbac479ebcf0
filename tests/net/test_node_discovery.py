"""What the node does with mDNS announcements: key checks, moves, goodbyes and staleness."""

from __future__ import annotations

import os
from pathlib import Path

import trio
import trio.testing
from netkit import make_node

from acp.net.peer import BACKOFF, KEY_CHANGED, REFUSED


def key() -> bytes:
    return os.urandom(32)


async def test_first_announcement_adds_an_mdns_peer(tmp_path: Path) -> None:
    node = make_node(tmp_path, "alpha")
    k = key()
    node.discovered("beta", k, "10.0.0.2", 7100, boot="b1")
    peer = node.peers["beta"]
    assert (peer.pubkey, peer.host, peer.port, peer.source) == (k, "10.0.0.2", 7100, "mdns")
    assert peer.key_changed is None


async def test_a_key_other_than_the_pin_marks_key_changed_and_keeps_the_address(
    tmp_path: Path,
) -> None:
    node = make_node(tmp_path, "alpha")
    pinned, other = key(), key()
    node.store.pin("beta", pinned)
    node.discovered("beta", pinned, "10.0.0.2", 7100, boot="b1")
    node.discovered("beta", other, "10.0.0.66", 7100, boot="x")
    peer = node.peers["beta"]
    assert peer.pubkey == pinned and peer.key_changed == other
    assert peer.state == KEY_CHANGED and (peer.host, peer.port) == ("10.0.0.2", 7100)
    assert node.stats["peers_key_changed"] == 1
    node.discovered("beta", other, "10.0.0.66", 7100, boot="x")  # said once, not per packet
    assert node.stats["peers_key_changed"] == 1


async def test_explicit_trust_refuses_an_unpinned_announcement(tmp_path: Path) -> None:
    node = make_node(tmp_path, "alpha", trust="explicit")
    node.discovered("beta", key(), "10.0.0.2", 7100, boot="b1")
    peer = node.peers["beta"]
    assert peer.pubkey is None and peer.state == REFUSED and "explicit" in (peer.last_error or "")


async def test_a_move_or_a_new_boot_pokes_the_supervisor(tmp_path: Path) -> None:
    node = make_node(tmp_path, "alpha")
    k = key()
    node.discovered("beta", k, "10.0.0.2", 7100, boot="b1")
    peer = node.peers["beta"]
    kick = peer.kick
    node.discovered("beta", k, "10.0.0.2", 7100, boot="b1")  # a refresh: nothing to do
    assert not kick.is_set()
    node.discovered("beta", k, "10.0.0.2", 7300, boot="b2")  # restarted on a new port
    assert kick.is_set() and peer.port == 7300


async def test_goodbye_drops_an_unconnected_peer_at_the_next_sweep(tmp_path: Path) -> None:
    node = make_node(tmp_path, "alpha")
    node.discovered("beta", key(), "10.0.0.2", 7100, boot="b1")
    node.expire_stale(60.0)
    assert "beta" in node.peers
    node.mdns_gone("beta")
    node.expire_stale(60.0)
    assert "beta" not in node.peers and node.stats["peers_gone"] == 1


async def test_stale_after_60s_without_refresh(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    node = make_node(tmp_path, "alpha")
    k = key()
    node.discovered("beta", k, "10.0.0.2", 7100, boot="b1")
    await trio.sleep(59)
    node.expire_stale(60.0)
    assert "beta" in node.peers
    node.discovered("beta", k, "10.0.0.2", 7100, boot="b1")  # refreshed
    await trio.sleep(59)
    node.expire_stale(60.0)
    assert "beta" in node.peers
    await trio.sleep(1)
    node.expire_stale(60.0)
    assert "beta" not in node.peers and node.stats["peers_stale"] == 1


async def test_our_own_agent_id_is_not_a_peer(tmp_path: Path) -> None:
    node = make_node(tmp_path, "alpha")
    node.discovered("alpha", key(), "10.0.0.9", 7100, boot="z")
    assert "alpha" not in node.peers


async def test_a_fresh_answer_redials_a_peer_in_backoff_at_most_every_5s(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    node = make_node(tmp_path, "alpha")
    k = key()
    node.discovered("beta", k, "10.0.0.2", 7100, boot="b1")
    peer = node.peers["beta"]
    peer.state = BACKOFF  # its dials failed during a partition
    await trio.sleep(10)
    kick = peer.kick
    node.discovered("beta", k, "10.0.0.2", 7100, boot="b1", fresh=False)  # only our cache
    assert not kick.is_set()
    node.discovered("beta", k, "10.0.0.2", 7100, boot="b1", fresh=True)  # it answered: healed
    assert kick.is_set()
    kick = peer.kick
    await trio.sleep(1)
    node.discovered("beta", k, "10.0.0.2", 7100, boot="b1", fresh=True)
    assert not kick.is_set()  # not again so soon
    await trio.sleep(5)
    node.discovered("beta", k, "10.0.0.2", 7100, boot="b1", fresh=True)
    assert kick.is_set()
