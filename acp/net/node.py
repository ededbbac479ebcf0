"""The daemon's shared state and the message paths that cross peers and local clients.

``Node`` owns the peer table, the local inbox and subscribers, and the bookkeeping that ties a
local ``send`` to the peer's ACK (and, with ``wait: response``, to the answer). Tasks live
elsewhere (peers.py, listener.py, ipc_server.py); everything here is synchronous, so a session's
reader can deliver without ever waiting on a slow local client.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from acp.config import Config
from acp.errors import IpcError
from acp.identity import Identity
from acp.model import Ack, Envelope, fingerprint
from acp.net.peer import BACKOFF, KEY_CHANGED, REFUSED, Peer
from acp.net.stats import Stats
from acp.proto import ipc
from acp.proto.delivery import Inbox, OutboxEntry, OutboxFull, SeenWindow
from acp.store import PeerStore

if TYPE_CHECKING:
    from acp.net.ipc_server import IpcConn

log = logging.getLogger(__name__)

RECENT_INBOUND = 10_000  # inbound envelope ids remembered for `acp reply`
EXCLUSIVE = -1  # the push sequence number of an inbox line handed to one subscriber only
REDIAL_GAP = 5.0  # seconds between redials that fresh mDNS answers may cause for one peer


@attrs.define(eq=False)
class Ticket:
    """Ties one accepted envelope to the IPC connection that sent it.

    ``done`` exists only when somebody waits (``wait`` acked or response): one per send otherwise
    would cost an Event on the hot path for nothing.
    """

    conn: IpcConn | None
    msg_id: str
    to: str
    wait: str = "accepted"
    done: trio.Event | None = None
    result: dict[str, Any] | None = None  # {"acked": True} | {"error": code, "message": ...}
    response: bytes | None = None  # the inbound response line, for wait=response

    waiting: bool = False  # a client is waiting on ``done`` right now

    def __attrs_post_init__(self) -> None:
        if self.wait != "accepted":
            self.done = trio.Event()
            self.waiting = True

    def resolve(self, result: dict[str, Any]) -> None:
        if self.result is None:
            self.result = result
        if self.done is not None and (self.wait != "response" or "error" in result):
            self.done.set()


class Node:
    def __init__(self, config: Config, identity: Identity, store: PeerStore) -> None:
        self.config = config
        self.identity = identity
        self.store = store
        self.agent_id = config.agent_id
        self.stats = Stats()
        self.peers: dict[str, Peer] = {}
        self.inbox: Inbox[bytes] = Inbox(limit=config.inbox_limit)
        self.seen = SeenWindow()
        self.subscribers: list[IpcConn] = []
        self.conns: set[IpcConn] = set()
        self.response_waiters: dict[str, Ticket] = {}
        self.handshakes_by_host: dict[str, int] = {}  # incoming handshakes in progress, by address
        self.push_seq = 0  # numbers live pushes, so a leaving subscriber's unsent ones are known
        self.recent_inbound: OrderedDict[str, str] = OrderedDict()
        self.started_wall = time.time()
        self.started = trio.current_time()
        self.port: int | None = None
        self.mdns_state = "off"  # off | starting | running | failed: ... (see discovery.py)
        self.warnings: list[str] = []  # shown by `acp status` (e.g. our agent_id claimed elsewhere)
        self.sessions_changed = trio.Event()
        self.on_peer_added: Any = None  # set by the peer manager: starts a supervisor
        self.on_dial_failed: Any = None  # set by discovery: a failed dial asks mDNS again

    # -- the peer table ----------------------------------------------------------------------------

    def peer(self, agent_id: str) -> Peer | None:
        return self.peers.get(agent_id)

    def add_peer(self, peer: Peer) -> Peer:
        self.peers[peer.agent_id] = peer
        peer.learned_at = trio.current_time()
        peer.outbox.limit, peer.outbox.ttl = self.config.outbox_limit, self.config.outbox_ttl
        peer.notify = self._sessions_changed
        if self.on_peer_added is not None:
            self.on_peer_added(peer)
        return peer

    def remove_peer(self, agent_id: str, reason: str) -> Peer | None:
        peer = self.peers.pop(agent_id, None)
        if peer is None:
            return None
        peer.close_sessions(reason)
        if peer.scope is not None:
            peer.scope.cancel()
        for entry in peer.outbox.drain():
            self.undelivered(entry, agent_id, reason)
        return peer

    def _sessions_changed(self) -> None:
        # Replace the Event only once it is set: swapping an unset one orphans its waiter.
        self.sessions_changed.set()
        self.sessions_changed = trio.Event()

    # -- what mDNS says ----------------------------------------------------------------------------

    def discovered(
        self,
        agent_id: str,
        pubkey: bytes,
        host: str,
        port: int,
        *,
        boot: str | None,
        fresh: bool = True,
    ) -> None:
        """An mDNS announcement, validated; checks the key against the pin (PROTOCOL.md §2, §4).

        ``fresh``: the peer itself just answered or announced (not merely our cache): if we have no
        session with it, it is reachable again, so dial now rather than when the backoff ends.
        """
        if agent_id == self.agent_id:
            return  # our own record, or another daemon claiming our id (discovery warns)
        now = trio.current_time()
        rec = self.store.get(agent_id)
        pinned = rec.pubkey if rec is not None else None
        peer = self.peers.get(agent_id)
        if peer is None:
            peer = Peer(agent_id, pubkey=pinned or pubkey, host=host, port=port, source="mdns")
            peer.mdns_seen, peer.boot = now, boot
            self._check_key(peer, pubkey, pinned)
            self.add_peer(peer)
            log.info("peer %s: discovered at %s:%s", agent_id, host, port)
            return
        peer.mdns_seen = now
        peer.said_goodbye = False
        if peer.pubkey is None and pinned is None and not self._check_key(peer, pubkey, None):
            return
        if peer.pubkey is not None and pubkey != peer.pubkey:
            self._check_key(peer, pubkey, peer.pubkey)
            return  # that address belongs to whoever announced the other key: do not dial it
        if peer.pubkey is None:
            peer.pubkey = pubkey
        moved = (host, port) != (peer.host, peer.port) or boot != peer.boot
        peer.boot = boot
        if peer.source not in ("static", "manual"):
            peer.host, peer.port, peer.source = host, port, "mdns"
        if peer.connected:
            return
        if moved:
            log.info("peer %s: announced at %s:%s: dialling at once", agent_id, host, port)
            peer.poke()
        elif fresh and peer.state == BACKOFF and now - peer.last_poke >= REDIAL_GAP:
            log.info("peer %s: answered mDNS again: dialling at once", agent_id)
            peer.poke()

    def _check_key(self, peer: Peer, announced: bytes, held: bytes | None) -> bool:
        """True if ``announced`` may be used; otherwise mark the peer and say why, loudly, once."""
        if held is None and self.config.trust == "explicit":
            peer.pubkey = None
            if peer.key_changed != announced:
                peer.key_changed = announced
                peer.state = REFUSED
                peer.last_error = (
                    "not trusted (trust = explicit): check its fingerprint, then `acp trust`"
                )
                self.stats.inc("peers_untrusted")
                log.warning(
                    "peer %s: announced key %s is not trusted (trust = explicit)",
                    peer.agent_id,
                    fingerprint(announced),
                )
            return False
        if held is not None and announced != held:
            if peer.key_changed != announced:
                peer.key_changed = announced
                if not peer.connected:
                    peer.state = KEY_CHANGED
                peer.last_error = (
                    f"announced key {fingerprint(announced)} is not the pinned "
                    f"{fingerprint(held)}: `acp trust` or `acp forget` it"
                )
                self.stats.inc("peers_key_changed")
                log.warning(
                    "peer %s: KEY CHANGED: mDNS announces %s but %s is pinned; not dialling it "
                    "until `acp trust %s <key>` or `acp forget %s`",
                    peer.agent_id,
                    fingerprint(announced),
                    fingerprint(held),
                    peer.agent_id,
                    peer.agent_id,
                )
                peer.poke()
            return False
        return True

    def mdns_gone(self, agent_id: str) -> None:
        """A goodbye: the peer is stale at the next sweep unless a session is alive."""
        peer = self.peers.get(agent_id)
        if peer is not None:
            peer.mdns_seen = None
            peer.said_goodbye = True

    def expire_stale(self, after: float) -> None:
        """Drop peers neither refreshed by mDNS nor connected for ``after`` seconds (§2)."""
        now = trio.current_time()
        for peer in list(self.peers.values()):
            if peer.source in ("static", "manual") or peer.connected or len(peer.outbox):
                continue
            if peer.said_goodbye:
                log.info("peer %s: said goodbye (mDNS) and has no session: dropped", peer.agent_id)
                self.stats.inc("peers_gone")
                self.remove_peer(peer.agent_id, "gone")
                continue
            last = peer.mdns_seen if peer.mdns_seen is not None else peer.learned_at
            if now - last >= after:
                log.info(
                    "peer %s: stale (no mDNS refresh and no session for %.0f s): dropped",
                    peer.agent_id,
                    now - last,
                )
                self.stats.inc("peers_stale")
                self.remove_peer(peer.agent_id, "stale")

    # -- sending -----------------------------------------------------------------------------------

    def route(self, env: Envelope, wire: bytes, ticket: Ticket) -> str:
        """Queue an envelope for its peer; return ``sending`` or ``queued``."""
        peer = self.peers.get(env.to)
        if peer is None:
            rec = self.store.get(env.to)
            if rec is not None and rec.pubkey is not None:
                # pinned in peers.json but dropped from the table (goodbye, stale): still known
                peer = self.add_peer(
                    Peer(env.to, pubkey=rec.pubkey, host=rec.host, port=rec.port, source="cache")
                )
        if peer is None:
            raise IpcError(
                ipc.UNKNOWN_PEER,
                f"no peer {env.to!r} is known: not discovered, not in config.toml [[peers]], "
                "not in peers.json (see `acp peers`)",
            )
        try:
            peer.outbox.put(env.id, wire, urgent=env.urgent, now=trio.current_time(), origin=ticket)
        except OutboxFull as exc:
            self.stats.inc("outbox_full")
            raise IpcError("outbox_full", f"{env.to}: {exc}; try again later") from None
        self.stats.inc("messages_accepted")
        peer.wake_writer()
        return "sending" if peer.connected else "queued"

    def on_ack(self, peer: Peer, ack: Ack) -> None:
        entry = peer.outbox.ack(ack.id)
        if entry is None:
            self.stats.inc("acks_unmatched")
            return
        if ack.ok:
            self.stats.inc("acks_ok")
            if isinstance(entry.origin, Ticket):
                entry.origin.resolve({"acked": True})
        else:
            self.stats.inc("acks_refused")
            log.warning("peer %s refused envelope %s: %s", peer.agent_id, ack.id, ack.error)
            self.undelivered(entry, peer.agent_id, ack.error or "refused")

    def undelivered(self, entry: OutboxEntry, to: str, reason: str) -> None:
        """Tell the sender (if still connected) and every subscriber that an envelope is lost."""
        self.stats.inc(f"undelivered.{reason}")
        event = {"event": "undelivered", "msg_id": entry.id, "to": to, "reason": reason}
        ticket = entry.origin if isinstance(entry.origin, Ticket) else None
        told: set[int] = set()
        if ticket is not None:
            ticket.resolve(
                {"error": "undelivered", "message": f"{to} did not take {entry.id}: {reason}"}
            )
            self.response_waiters.pop(entry.id, None)
            if ticket.conn is not None and not ticket.conn.closed and not ticket.waiting:
                ticket.conn.send(event)
                told.add(id(ticket.conn))
        for conn in self.subscribers:
            if id(conn) not in told:
                conn.send(event)

    def expire(self) -> None:
        now = trio.current_time()
        self.seen.prune(now)
        for peer in list(self.peers.values()):
            for entry in peer.outbox.expire(now):
                self.undelivered(entry, peer.agent_id, "expired")

    # -- receiving ---------------------------------------------------------------------------------

    def deliver_inbound(self, peer: Peer, env: Envelope, body: bytes) -> str | None:
        """Hand an envelope to local clients; return None (ACK ok) or the ACK error code."""
        now = trio.current_time()
        if self.seen.seen(env.from_, env.id, now):
            self.stats.inc("duplicates")
            return None
        peer.last_seen = time.time()
        if b"\n" in body or b"\r" in body:  # keep the push on one line
            body = ipc.encode(env.to_dict())[:-1]
        line = b'{"inbound":true,"envelope":' + body + b"}\n"
        if env.kind == "response" and env.reply_to is not None:
            ticket = self.response_waiters.get(env.reply_to)
            if ticket is not None and ticket.conn is not None and ticket.conn.eof:
                del self.response_waiters[env.reply_to]  # its client left: deliver it normally
                ticket = None
            if ticket is not None and ticket.to == env.from_:
                del self.response_waiters[env.reply_to]
                ticket.response = line
                if ticket.done is not None:
                    ticket.done.set()
                self.seen.add(env.from_, env.id, now)
                self.stats.inc("messages_delivered")
                return None
        if self.subscribers:
            self.push_seq += 1
            for conn in list(self.subscribers):
                conn.push_inbound(line, self.push_seq)
                if conn.remaining is not None:
                    conn.remaining -= 1
                    if conn.remaining <= 0:  # it asked for no more
                        self.subscribers.remove(conn)
        elif not self.inbox.put(line):
            self.stats.inc("inbox_full")
            log.warning("inbox full (%d): refusing %s from %s", self.inbox.limit, env.id, env.from_)
            return "inbox_full"
        self.seen.add(env.from_, env.id, now)
        self.recent_inbound[env.id] = env.from_
        if len(self.recent_inbound) > RECENT_INBOUND:
            self.recent_inbound.popitem(last=False)
        self.stats.inc("messages_delivered")
        return None

    def subscribe(self, conn: IpcConn, count: int | None = None) -> None:
        """Push the inbox, then every inbound envelope; with ``count``, only that many in all,
        so a client that reads N and leaves (``acp listen --count N``) loses nothing."""
        if conn in self.subscribers:
            return
        conn.remaining = count
        conn.since_seq = self.push_seq + 1  # live pushes from here on reach it
        lines = self.inbox.take_all() if count is None else self.inbox.take(count)
        for line in lines:
            conn.push_inbound(line, EXCLUSIVE)
        if count is not None:
            conn.remaining = count - len(lines)
            if conn.remaining <= 0:
                return
        self.subscribers.append(conn)

    def unsubscribe(self, conn: IpcConn, unsent: Iterable[tuple[int, bytes]] = ()) -> None:
        """Forget a subscriber. Pushes it never received go back to the inbox (they were ACKed
        already) unless every remaining subscriber got them too: a live push ``seq`` reached the
        subscribers whose ``since_seq <= seq``; an inbox line (EXCLUSIVE) reached only this one."""
        if conn in self.subscribers:
            self.subscribers.remove(conn)
        covered_below = min((c.since_seq for c in self.subscribers), default=None)
        back = [
            line
            for seq, line in unsent
            if seq == EXCLUSIVE or covered_below is None or seq < covered_below
        ]
        if back:
            self.inbox.put_back(back)
            self.stats.inc("pushes_returned_to_inbox", len(back))
