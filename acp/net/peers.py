"""Who dials whom, and the reconnect loop: one supervisor task per known peer.

The lower agent_id dials at once; the higher one waits ``HIGHER_SIDE_WAIT`` seconds for it and then
dials too (docs/protocol.md §4; ``Peer.offer`` resolves the duplicate). A supervisor loops for the peer's
lifetime: dial, run the session until it ends, back off (1, 2, 4 … 30 s with jitter; reset after a
session that came up), and dial again at once when ``Peer.poke`` says the address changed.
"""

from __future__ import annotations

import logging
import random
import time

import trio

from acp.errors import ConfigError, HandshakeError, ProtocolError
from acp.net import handshake
from acp.net.node import Node
from acp.net.peer import BACKOFF, CONNECTING, DISCOVERED, IDLE, KEY_CHANGED, REFUSED, WAITING, Peer
from acp.proto import handshake as hs
from acp.proto.backoff import Backoff
from acp.proto.noise import usable_public_key
from acp.text import one_line

log = logging.getLogger(__name__)

HIGHER_SIDE_WAIT = 10.0


class PeerManager:
    def __init__(self, node: Node, *, rng: random.Random | None = None) -> None:
        self.node = node
        self.rng = rng or random.Random()
        self._nursery: trio.Nursery | None = None
        self._pending: list[Peer] = []
        node.on_peer_added = self._start

    def load_known(self) -> None:
        """Static [[peers]] and the peers.json cache, before anything is dialled."""
        node = self.node
        for sp in node.config.peers:
            if sp.agent_id in node.store.blocked:
                log.warning(
                    "peer %s: in config.toml [[peers]] but blocked (`acp block`): not dialled "
                    "until `acp unblock %s`",
                    sp.agent_id,
                    sp.agent_id,
                )
                continue
            if not usable_public_key(sp.pubkey):
                raise ConfigError(
                    f"{node.config.config_path}: [[peers]] {sp.agent_id}: pubkey is not a usable "
                    "X25519 public key (a low-order point)"
                )
            node.store.pin(sp.agent_id, sp.pubkey)  # config is the user's word: it re-pins
            node.store.update(sp.agent_id, source="static")
            node.add_peer(
                Peer(sp.agent_id, pubkey=sp.pubkey, host=sp.host, port=sp.port, source="static")
            )
        for agent_id in list(node.store):
            if agent_id in node.peers or agent_id == node.agent_id:
                continue
            rec = node.store.get(agent_id)
            assert rec is not None
            node.add_peer(
                Peer(
                    agent_id,
                    pubkey=rec.pubkey,
                    host=rec.host,
                    port=rec.port,
                    # `acp trust --addr` is the user's word for the address too: it stays
                    source="manual" if rec.source == "manual" and rec.host else "cache",
                    last_seen=rec.last_seen / 1000 if rec.last_seen else None,
                )
            )

    def _start(self, peer: Peer) -> None:
        if self._nursery is None:
            self._pending.append(peer)
        else:
            self._nursery.start_soon(self.supervise, peer)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for peer in self._pending:
                nursery.start_soon(self.supervise, peer)
            self._pending.clear()
            task_status.started()
            await trio.sleep_forever()

    def dialable(self, peer: Peer) -> bool:
        return (
            peer.host is not None
            and peer.port is not None
            and peer.pubkey is not None
            and peer.key_changed is None
        )

    async def supervise(self, peer: Peer) -> None:
        """Keep a session with ``peer`` up for as long as it is in the table."""
        node = self.node
        backoff = Backoff(rng=self.rng.random)
        we_dial_first = node.agent_id < peer.agent_id
        with trio.CancelScope() as scope:
            peer.scope = scope
            wait_since = trio.current_time()
            while True:
                if peer.active is not None:
                    await peer.changed.wait()
                    wait_since = trio.current_time()
                    backoff.reset()
                    continue
                if not self.dialable(peer):
                    if peer.key_changed is not None:
                        peer.set_state(REFUSED if peer.pubkey is None else KEY_CHANGED)
                    else:
                        peer.set_state(IDLE)
                    await peer.kick.wait()
                    continue
                if not we_dial_first:
                    deadline = wait_since + HIGHER_SIDE_WAIT
                    if trio.current_time() < deadline:
                        peer.set_state(WAITING)
                        with trio.move_on_at(deadline):
                            await peer.changed.wait()
                        continue
                try:
                    came_up = await self._dial_once(peer)
                except Exception as exc:  # a bug must not take the daemon down
                    log.exception("peer %s: unexpected error in its session", peer.agent_id)
                    peer.last_error = f"internal error: {exc!r}"
                    came_up = False
                if came_up:
                    backoff.reset()
                    wait_since = trio.current_time()
                    if not we_dial_first:
                        continue  # the session ended: give the lower side its 10 s again
                if peer.active is not None:
                    continue  # ours lost to the other session (§4): connected, not backing off
                delay = backoff.next()
                peer.set_state(BACKOFF)
                peer.next_try = trio.current_time() + delay
                with trio.move_on_after(delay):
                    await peer.kick.wait()  # a new address or a trusted key: dial at once
                    backoff.reset()
                peer.next_try = None

    async def _dial_once(self, peer: Peer) -> bool:
        """One attempt: connect, handshake, run the session. True if a session came up."""
        node = self.node
        assert peer.host is not None and peer.port is not None
        host, port = peer.host, peer.port
        peer.set_state(CONNECTING)
        try:
            with trio.fail_after(hs.HANDSHAKE_TIMEOUT):
                session = await handshake.dial(node, peer, host, port)
        except trio.TooSlowError:
            peer.last_error = (
                f"dial {host}:{port}: no handshake within {hs.HANDSHAKE_TIMEOUT:.0f} s"
            )
            node.stats.inc("dial_failures")
            log.info("peer %s: %s", peer.agent_id, peer.last_error)
            if node.on_dial_failed is not None:
                node.on_dial_failed(peer)
            return False
        except hs.Refused as exc:
            peer.last_error = one_line(str(exc), 200)  # may quote what the peer answered
            node.stats.inc(f"handshakes_refused.{exc.reason}")
            log.warning("peer %s: %s", peer.agent_id, peer.last_error)
            return False
        except (OSError, HandshakeError, ProtocolError, trio.BrokenResourceError) as exc:
            why = one_line(str(exc), 400)  # room for refused_hint, which names our key
            peer.last_error = f"dial {host}:{port}: {why}"
            node.stats.inc("dial_failures")
            if node.on_dial_failed is not None:
                node.on_dial_failed(peer)
            log.info("peer %s: dial %s:%s failed: %s", peer.agent_id, host, port, why)
            return False
        rec = node.store.get(peer.agent_id)
        if (rec is None or rec.pubkey is None) and not node.make_room_for_pin(peer.agent_id):
            peer.last_error = (
                f"not pinned: {node.config.max_pins} keys are pinned (max_pins) and none is an "
                "unproven first contact that could make room; `acp forget` some, or raise max_pins"
            )
            node.stats.inc("handshakes_refused.too_many_peers")
            log.warning("peer %s: %s", peer.agent_id, peer.last_error)
            with trio.CancelScope(shield=True):
                await session.stream.aclose()
            return False
        node.stats.inc("sessions_outbound")
        if rec is None or rec.pubkey is None:
            assert peer.pubkey is not None
            node.store.pin(peer.agent_id, peer.pubkey)  # tofu: the handshake proved the key
            node.store.update(peer.agent_id, proven=False)  # until a session of it lasts
            log.info(
                "peer %s: pinned its key %s (trust = %s)",
                peer.agent_id,
                peer.fingerprint,
                node.config.trust,
            )
        node.store.update(peer.agent_id, host=host, port=port, last_seen=int(time.time() * 1000))
        reason = await session.run()
        if peer.active is None and peer.state not in (KEY_CHANGED,):
            peer.set_state(DISCOVERED)
        log.debug("peer %s: outbound session over: %s", peer.agent_id, reason)
        # A session that dies at once (a peer that accepts and drops us) must not reset the backoff.
        return node.session_over(session)
