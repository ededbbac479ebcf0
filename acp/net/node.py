"""The daemon's shared state, and the wiring between peers, local clients and the store.

``Node`` owns the peer table and ties the pieces together: a local ``send`` goes into the peer's
``Outbox`` and the durable outbox (the reply waits for that commit); an inbound envelope is decided
by ``LocalInbox`` (acp/proto/inbox.py), inserted by the store thread, and only then ACKed and
pushed. Tasks live elsewhere (peers.py, listener.py, ipc_server.py); nothing here blocks or waits:
what must follow a commit is a callback that the store runs on the trio thread, in order.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from acp import store
from acp.config import Config
from acp.errors import IpcError
from acp.identity import Identity
from acp.model import Ack, Envelope, encode_key, fingerprint
from acp.net.eager import EagerWrites
from acp.net.lograte import LogLimiter
from acp.net.peer import BACKOFF, KEY_CHANGED, REFUSED, Peer
from acp.net.stats import Stats
from acp.proto import handshake as hs
from acp.proto import ipc
from acp.proto.admission import Admission
from acp.proto.card import AgentCard
from acp.proto.delivery import SEEN_WINDOW, OutboxEntry, OutboxFull, SeenWindow
from acp.proto.inbox import EVENT, PAGE, Item, LocalInbox
from acp.store import Database, Loaded, PeerStore
from acp.text import one_line

if TYPE_CHECKING:
    from acp.hooks.runner import Hooks
    from acp.net.ipc_server import IpcConn

log = logging.getLogger(__name__)

RECENT_INBOUND = 10_000  # inbound envelope ids remembered for `acp reply`
REDIAL_GAP = 5.0  # seconds between redials that fresh mDNS answers may cause for one peer
MAX_WARNINGS = 10  # warnings `acp status` shows (the latest)
GOOD_SESSION = 5.0  # seconds a session must live to count (backoff reset, a proven pin)


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
    response: bytes | None = None  # the inbound response envelope's JSON, for wait=response

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
    def __init__(
        self, config: Config, identity: Identity, db: Database, peers: PeerStore | None = None
    ) -> None:
        self.config = config
        self.identity = identity
        self.db = db
        self.eager = EagerWrites()  # writes made at the end of a read (acp/net/eager.py)
        db.callbacks_in = self.eager
        db.hand_over_when_idle()
        self.store = peers if peers is not None else PeerStore()
        self.agent_id = config.agent_id
        self.stats = Stats()
        self.peers: dict[str, Peer] = {}
        self.local = LocalInbox(limit=config.inbox_limit, per_sender=config.inbox_per_sender)
        self.stored_rows = 0  # inbox rows in the database, read ones included
        self.next_row = 0  # the last durable-outbox row number handed out
        self._drop_rows: list[int] = []  # outbox rows ACKed, deleted at the next flush
        # Outbox rows of envelopes sent on a live session wait this long for their ACK before
        # they are written, and are never written if it comes first (the daemon sets it, and
        # runs write_outbox_rows_when_due): row -> (row, the send's callback, when it is due).
        self.outbox_write_delay = 0.0
        self._unwritten: dict[
            int, tuple[store.OutboxRow, Callable[[object], None] | None, float]
        ] = {}
        self._unwritten_added = trio.Event()
        self._pruning = False
        self._prune_at = config.keep_read_count + max(100, config.keep_read_count // 10)
        self._stored_event = trio.Event()
        # (sender, id) of inbound envelopes whose insert is in flight -> the sessions to ACK
        self._storing: dict[tuple[str, str], list[AckSink]] = {}
        # sessions that got inbox_full -> the id refused first (what they must offer again first)
        self._refusing: weakref.WeakKeyDictionary[AckSink, tuple[str, float]] = (
            weakref.WeakKeyDictionary()
        )
        # sessions whose envelopes trust = "verified" refused: the warning is logged once for each
        self._untrusted_warned: weakref.WeakSet[AckSink] = weakref.WeakSet()
        self.seen = SeenWindow()
        self.conns: set[IpcConn] = set()
        self.response_waiters: dict[str, Ticket] = {}
        self.admission = Admission()  # who may hold a handshake slot (acp/proto/admission.py)
        self.log_limiter = LogLimiter(trio.current_time)  # lines a remote side can cause
        self.recent_inbound: OrderedDict[str, str] = OrderedDict()
        self.started_wall = time.time()
        self.started = trio.current_time()
        self.port: int | None = None
        self.mdns_state = "off"  # off | starting | running | failed: ... (see discovery.py)
        self.warnings: list[str] = []  # shown by `acp status` (e.g. our agent_id claimed elsewhere)
        self._warning_keys: dict[object, str] = {}
        self.sessions_changed = trio.Event()
        self.card = config.agent
        self.on_peer_added: Any = None  # set by the peer manager: starts a supervisor
        self.on_dial_failed: Any = None  # set by discovery: a failed dial asks mDNS again
        self.hooks: Hooks | None = None  # told of items stored and read (docs/hooks.md)

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

    def session_over(self, session: Any) -> bool:
        """A session ended; True if it lasted (``GOOD_SESSION``). A lasting session proves a pin
        worth keeping: the pin cap drops unproven ones first."""
        lasted: bool = trio.current_time() - session.started >= GOOD_SESSION
        agent_id = session.peer.agent_id
        rec = self.store.get(agent_id)
        if lasted and rec is not None and rec.pubkey is not None:
            self.store.update(agent_id, proven=True, last_seen=_now_ms())
        return lasted

    def warn(self, message: str, key: object = None) -> None:
        """A warning for `acp status` (the latest few; one per ``key`` if given)."""
        if key is not None:
            old = self._warning_keys.pop(key, None)
            if old in self.warnings:
                self.warnings.remove(old)
            self._warning_keys[key] = message
        if message not in self.warnings:
            self.warnings.append(message)
            del self.warnings[:-MAX_WARNINGS]
            kept = set(self.warnings)
            for k in [k for k, m in self._warning_keys.items() if m not in kept]:
                del self._warning_keys[k]

    def key_conflict(self, agent_id: str, presented: bytes, held: bytes, host: str | None) -> None:
        """A handshake claimed ``agent_id`` with another key than the pinned one: say what it
        means and what to do in `acp status`, since the other side learns nothing (§4)."""
        self.warn(
            f"a handshake as {agent_id!r} from {host or '?'} presented key "
            f"{fingerprint(presented)}, not the pinned {fingerprint(held)}, and was refused. If "
            f"{agent_id} was reinstalled or got a new key, and only if `acp id` on it shows "
            f"fingerprint {fingerprint(presented)}, run `acp trust {agent_id} "
            f"{encode_key(presented)}`; otherwise someone else uses that agent_id (default "
            "agent_ids are host names): nothing to do, it stays refused",
            key=("key_conflict", agent_id),
        )

    def sessions_up(self) -> int:
        return sum(1 for p in self.peers.values() if p.connected)

    def make_room_for_pin(self, agent_id: str) -> bool:
        """Keep pinned keys under ``max_pins`` before ``agent_id`` is pinned on first contact:
        drop an unproven tofu pin if needed; False if none can go (refuse the newcomer)."""
        cap = self.config.max_pins
        if len(self.store) < cap or self.store.pinned() < cap:
            return True  # (the first test is free: fewer records than the cap, so room for sure)

        def keep(other: str) -> bool:
            peer = self.peers.get(other)
            return other == agent_id or (
                peer is not None and (peer.connected or len(peer.outbox) > 0)
            )

        victim = self.store.tofu_victim(keep)
        if victim is None:
            return False
        self.unpin(victim, "pruned: max_pins reached")
        return True

    def block(self, agent_id: str) -> bool:
        """`acp block`: drop the peer and its pin, and refuse it from now on (also after a
        restart, and under tofu). False if it was blocked already."""
        if agent_id in self.store.blocked:
            return False
        self.store.block(agent_id, _now_ms())
        self.unpin(agent_id, "blocked")
        log.info("peer %s: blocked by the user", agent_id)
        return True

    def unpin(self, agent_id: str, reason: str) -> None:
        """Drop a peer's pin and its entry (``forget``, ``block``, the pin cap); the key's last
        handshake ``ts`` stays behind, so a recorded message 1 cannot be replayed later."""
        self.remove_peer(agent_id, reason)
        if self.store.forget(agent_id):
            self.stats.inc("pins_dropped")
            # the cap's prunes come in floods; the user's own (forget, block) are each logged
            key = reason if reason.startswith("pruned") else agent_id
            self.log_limiter.log(
                log,
                logging.INFO,
                ("pin dropped", key),
                "peer %s: pin dropped (%s)",
                agent_id,
                reason,
            )
        self.save_peers()

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
        """An mDNS announcement, validated; checks the key against the pin (docs/protocol.md §2, §4).

        ``fresh``: the peer itself just answered or announced (not merely our cache): if we have no
        session with it, it is reachable again, so dial now rather than when the backoff ends.
        """
        if agent_id == self.agent_id:
            return  # our own record, or another daemon claiming our id (discovery warns)
        if agent_id in self.store.blocked:
            return  # `acp block`: neither dialled nor pinned
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
        if peer.source not in hs.EXPLICIT_SOURCES:
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
        verdict = hs.judge_key(announced, held, self.config.trust)
        if verdict == hs.NOT_TRUSTED:
            peer.pubkey = None
            if peer.key_changed != announced:
                peer.key_changed = announced
                peer.set_state(REFUSED)
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
        if verdict == hs.KEY_MISMATCH:
            assert held is not None
            if peer.key_changed != announced:
                peer.key_changed = announced
                if not peer.connected:
                    peer.set_state(KEY_CHANGED)
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
            if peer.source in hs.EXPLICIT_SOURCES or peer.connected or len(peer.outbox):
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

    def set_card(self, card: AgentCard | None) -> int:
        """Our agent card changed: send it to every connected peer; returns how many."""
        self.card = card
        frame = (card or AgentCard()).frame()  # an empty card replaces one that was removed
        sent = 0
        for peer in self.peers.values():
            if peer.active is not None:
                peer.active.send_card(frame)
                sent += 1
        return sent

    @property
    def card_frame(self) -> bytes | None:
        """Our card as a CARD frame for a new session, or None without one."""
        return self.card.frame() if self.card is not None else None

    # -- the durable store -------------------------------------------------------------------------

    def restore(self, loaded: Loaded) -> None:
        """What the database held at start-up: unread items, the dedupe window, queued sends."""
        now, now_ms = trio.current_time(), _now_ms()
        self.local.last_seq = self.local.last_stored = loaded.last_seq
        self.local.restore(_item(r) for r in loaded.unread)
        self.stored_rows = loaded.stored
        for sender, msg_id, _received in loaded.recent:
            self.seen.add(sender, msg_id, now)
            self._remember_inbound(msg_id, sender)
        self.next_row = loaded.last_outbox_row
        for row in loaded.outbox:
            peer = self._known_peer(row.peer)
            if peer is None:
                # queued for a peer mDNS had announced, never reached, so never pinned: keep it
                # queued; a fresh announcement makes it dialable, or its TTL reports it
                peer = self.add_peer(Peer(row.peer, source="cache"))
            entry = peer.outbox.put(
                row.msg_id,
                row.wire,
                urgent=row.urgent,
                now=now,
                deadline=now + (row.deadline - now_ms) / 1000,
                force=True,
            )
            entry.row = row.row
        if loaded.outbox:
            log.info(
                "store: %d unread envelope(s), %d queued for peers",
                self.local.unread_count,
                len(loaded.outbox),
            )

    def save_peers(self) -> None:
        """Write the peer rows changed since the last call (in the background)."""
        if self.store.dirty:
            self.db.submit(self._peer_rows(), self._store_failed)

    async def persist_peers(self) -> None:
        """Write the changed peer rows and wait for the commit (handshake ``ts``, §4)."""
        await self.db.call(self._peer_rows())

    def _peer_rows(self) -> Callable[[Any], None]:
        """The job that writes what changed in the peer table (rows, key floors, blocks)."""
        return store.save_peers(self.store.changes(), self.store.table_changes())

    def _store_failed(self, result: object) -> None:
        if isinstance(result, BaseException):
            self.stats.inc("store_errors")
            log.error("store: %s", result)

    def prune(self) -> None:
        """Drop read items past their keeping time or count (docs/protocol.md §8.1).

        Runs once a minute, and also whenever the read rows pass ``keep_read_count`` by a tenth,
        so that a flood cannot grow the database for a whole minute first.
        """
        if self._pruning:
            return
        self._pruning = True

        def done(result: int | BaseException) -> None:
            self._pruning = False
            if isinstance(result, BaseException):
                self._store_failed(result)
            elif result:
                self.stored_rows -= result
                self.stats.inc("inbox_pruned", result)

        self.db.submit(
            store.prune_inbox(
                now_ms=_now_ms(),
                keep_ms=int(max(self.config.keep_read, SEEN_WINDOW) * 1000),
                keep_count=self.config.keep_read_count,
            ),
            done,
        )

    # -- sending -----------------------------------------------------------------------------------

    def _known_peer(self, agent_id: str) -> Peer | None:
        peer = self.peers.get(agent_id)
        if peer is None:
            rec = self.store.get(agent_id)
            if rec is not None and rec.pubkey is not None:
                # pinned but dropped from the table (goodbye, stale): still known
                peer = self.add_peer(
                    Peer(agent_id, pubkey=rec.pubkey, host=rec.host, port=rec.port, source="cache")
                )
        return peer

    def route(
        self,
        env: Envelope,
        wire: bytes,
        ticket: Ticket,
        done: Callable[[object], None] | None = None,
    ) -> str:
        """Queue an envelope for its peer and store it; return ``sending`` or ``queued``.

        ``done(None or an exception)`` runs once the envelope is in the durable outbox: that is
        when ``send`` may reply (docs/protocol.md §7).
        """
        peer = self._known_peer(env.to)
        if peer is None and env.to in self.store.blocked:
            raise IpcError(BLOCKED, f"{env.to!r} is blocked here: `acp unblock {env.to}` first")
        if peer is None:
            raise IpcError(
                ipc.UNKNOWN_PEER,
                f"no peer {env.to!r} is known: not discovered, not in config.toml [[peers]], "
                "not pinned earlier (see `acp peers`)",
            )
        now = trio.current_time()
        try:
            entry = peer.outbox.put(env.id, wire, urgent=env.urgent, now=now, origin=ticket)
        except OutboxFull as exc:
            self.stats.inc("outbox_full")
            raise IpcError("outbox_full", f"{env.to}: {exc}; try again later") from None
        self.next_row += 1
        entry.row = self.next_row
        deadline_ms = _now_ms() + int((entry.deadline - now) * 1000)
        row = store.OutboxRow(entry.row, env.to, env.id, env.urgent, deadline_ms, wire)
        if self.outbox_write_delay and peer.connected:
            if not self._unwritten:
                self._unwritten_added.set()
            self._unwritten[entry.row] = (row, done, now + self.outbox_write_delay)
        else:
            self.write_outbox_rows()  # those accepted earlier first: replies keep their order
            self.db.submit(store.insert_outbox([row]), done)
        self.stats.inc("messages_accepted")
        peer.wake_writer()
        return "sending" if peer.connected else "queued"

    def acked(self, peer: Peer, ack: Ack) -> None:
        """An ACK from ``peer`` for one of our envelopes (the Session calls this)."""
        entry = peer.outbox.ack(ack.id)
        if entry is None:
            self.stats.inc("acks_unmatched")
            return
        if ack.ok:
            self.stats.inc("acks_ok")
            if not self._never_written(entry) and entry.row:
                self._drop_rows.append(entry.row)
                if len(self._drop_rows) == 1:
                    trio.lowlevel.current_trio_token().run_sync_soon(self._flush_drops)
            if isinstance(entry.origin, Ticket):
                entry.origin.resolve({"acked": True})
        elif ack.error == "inbox_full":
            # Its inbox is full (for us): keep it, offer it again later (docs/protocol.md §7).
            self.stats.inc("acks_inbox_full")
            peer.outbox.retry_later(entry, trio.current_time() + INBOX_FULL_RETRY)
        else:
            self.stats.inc("acks_refused")
            log.warning(
                "peer %s refused envelope %s: %s",
                peer.agent_id,
                one_line(ack.id, 100),
                one_line(str(ack.error), 100),
            )
            self.undelivered(entry, peer.agent_id, ack.error or "refused")

    # -- the durable outbox: rows written late, or never ---------------------------------------------

    def _never_written(self, entry: OutboxEntry) -> bool:
        """``entry`` leaves the outbox (ACKed, or given up) before its row was written: it never
        will be, and the ``send`` that accepted it is answered now. True if so."""
        pending = self._unwritten.pop(entry.row, None) if self._unwritten else None
        if pending is None:
            return False
        self.stats.inc("outbox_rows_skipped")
        done = pending[1]
        if done is not None:
            done(None)
        return True

    def write_outbox_rows(self, due: float = math.inf) -> None:
        """Queue the outbox rows waiting for ``outbox_write_delay`` (those due by ``due``), in the
        order accepted, as one job; each ``send`` is answered when it commits."""
        rows: list[store.OutboxRow] = []
        dones: list[Callable[[object], None]] = []
        while self._unwritten:
            key, (row, done, when) = next(iter(self._unwritten.items()))
            if when > due:
                break
            del self._unwritten[key]
            rows.append(row)
            if done is not None:
                dones.append(done)
        if not rows:
            return

        def written(result: object) -> None:
            for done in dones:
                try:
                    done(result)
                except Exception:  # one callback's bug must not leave the other sends unanswered
                    log.exception("outbox row callback failed")

        self.db.submit(store.insert_outbox(rows), written)

    async def write_outbox_rows_when_due(self) -> None:
        """The daemon's task for ``outbox_write_delay``: each row is written once its delay is
        over, unless its ACK came first; whatever waits is written when the task stops."""
        try:
            while True:
                while not self._unwritten:
                    await self._unwritten_added.wait()
                    self._unwritten_added = trio.Event()
                await trio.sleep_until(next(iter(self._unwritten.values()))[2])
                self.write_outbox_rows(trio.current_time())
        finally:
            self.outbox_write_delay = 0.0  # a send still arriving is written at once
            self.write_outbox_rows()

    def _flush_drops(self) -> None:
        """Delete the rows of ACKed envelopes: one job for every ACK read in one go."""
        rows, self._drop_rows = self._drop_rows, []
        if rows:
            self.db.submit(store.delete_outbox(rows), self._store_failed)

    def undelivered(self, entry: OutboxEntry, to: str, reason: str) -> None:
        """Tell the sender (if still connected) and every subscriber that an envelope is lost,
        and store that outcome as an inbox item (docs/protocol.md §7, §8.1)."""
        # a peer chooses its ACK error codes: one counter per code it makes up would grow forever
        self.stats.inc(f"undelivered.{reason if reason in KNOWN_REASONS else 'other'}")
        if not self._never_written(entry) and entry.row:
            self.db.submit(store.delete_outbox([entry.row]), self._store_failed)
        event = {"event": "undelivered", "msg_id": entry.id, "to": to, "reason": reason}
        ticket = entry.origin if isinstance(entry.origin, Ticket) else None
        told = None
        if ticket is not None:
            ticket.resolve(
                {"error": "undelivered", "message": f"{to} did not take {entry.id}: {reason}"}
            )
            self.response_waiters.pop(entry.id, None)
            if ticket.conn is not None and not ticket.conn.closed and not ticket.waiting:
                ticket.conn.send(event)
                told = ticket.conn
        item = self.local.add(
            sender=None,
            msg_id=entry.id,
            kind=EVENT,
            received=_now_ms(),
            trust=None,
            body=ipc.encode(event)[:-1],
        )
        self._store_item(item, lambda ok: None, skip=told)

    def expire(self) -> None:
        now = trio.current_time()
        self.seen.prune(now)
        for peer in list(self.peers.values()):
            for entry in peer.outbox.expire(now):
                self.undelivered(entry, peer.agent_id, "expired")
            hold = peer.outbox.hold_until
            if hold is not None and hold <= now:  # an inbox_full pause is over: offer again
                peer.wake_writer()

    # -- receiving ---------------------------------------------------------------------------------

    def deliver(self, session: AckSink, peer: Peer, env: Envelope, body: bytes) -> None:
        """Store an inbound envelope; ACK it ok once the store committed (docs/protocol.md §7).

        ``body`` is what is stored and pushed: the envelope as parsed, re-serialised compactly
        (``envelope.parse_wire``; one line), never the peer's own bytes (§6).

        Decided here, at once: a copy of one already stored (ACKed after whatever is being
        stored now, so never before the original), and a full inbox (ACK ``inbox_full``).
        """
        now = trio.current_time()
        trust = self.trust_of(peer.agent_id)
        if not hs.may_deliver(trust, self.config.trust):
            self._refuse_untrusted(session, peer, env, trust)
            return
        if self.seen.seen(env.from_, env.id, now):
            self.stats.inc("duplicates")
            waiting = self._storing.get((env.from_, env.id))
            if waiting is not None:  # the original's insert is in flight: share its outcome
                waiting.append(session)
            else:
                self.db.submit(store.nothing, lambda _: session.send_ack(Ack(env.id, True)))
            return
        refused = self._refusing.get(session) if self._refusing else None
        if refused is not None and env.id != refused[0] and now - refused[1] < HOLD_ORDER:
            # Per-peer order (§7): once one envelope of this session was refused for a full
            # inbox, the ones behind it wait too, until the refused one is offered again.
            self.stats.inc("inbox_full")
            session.send_ack(Ack(env.id, False, "inbox_full"))
            return
        if self._refusing:
            self._refusing.pop(session, None)
        error = self.local.admit(env.from_)
        if error is not None:
            self._refusing[session] = (env.id, now)
            self.stats.inc("inbox_full")
            if self.local.held_by(env.from_) >= self.local.per_sender:
                why = f"{env.from_} holds its share ({self.local.per_sender}) of the inbox"
            else:
                why = f"the inbox holds {self.local.limit} unread envelopes"
            log.info("inbox full: %s; %s is offered again later", why, one_line(env.id, 100))
            session.send_ack(Ack(env.id, False, error))
            return
        self.seen.add(env.from_, env.id, now)
        peer.last_seen = time.time()
        ticket = None
        if env.kind == "response" and env.reply_to is not None:
            ticket = self.response_waiters.get(env.reply_to)
            if ticket is not None and ticket.conn is not None and ticket.conn.eof:
                del self.response_waiters[env.reply_to]  # its client left: deliver it normally
                ticket = None
            if ticket is not None and ticket.to == env.from_:
                del self.response_waiters[env.reply_to]
            else:
                ticket = None
        item = self.local.add(
            sender=env.from_,
            msg_id=env.id,
            kind=env.kind,
            received=_now_ms(),
            trust=trust,
            body=body,
            read=ticket is not None,  # the client waiting for this response reads it now
        )

        key = (env.from_, env.id)
        self._storing[key] = [session]

        def stored(ok: bool) -> None:
            sessions = self._storing.pop(key, [session])
            if not ok:
                self.seen.discard(env.from_, env.id)  # not stored: its resend is no copy
                if ticket is not None:
                    self.response_waiters.setdefault(env.reply_to or "", ticket)
                for s in sessions:
                    s.send_ack(Ack(env.id, False, "inbox_full"))
                return
            if ticket is not None:
                ticket.response = body
                if ticket.done is not None:
                    ticket.done.set()
            self._remember_inbound(env.id, env.from_)
            self.stats.inc("messages_delivered")
            for s in sessions:
                s.send_ack(Ack(env.id, True))

        self._store_item(item, stored)

    def _refuse_untrusted(self, session: AckSink, peer: Peer, env: Envelope, trust: str) -> None:
        """trust = "verified" and this key is neither verified nor explicit: refuse, do not hold
        (ACK ``not_trusted``: the sender reports it undelivered at once; docs/protocol.md §9)."""
        self.stats.inc("envelopes_refused.not_trusted")
        if session not in self._untrusted_warned:
            self._untrusted_warned.add(session)
            log.warning(
                "peer %s: refused envelope %s (and any more on this session): its key is %s, and "
                'trust = "verified" delivers only verified or explicit keys; compare codes with '
                "`acp verify %s`, then `acp verify %s --confirm`",
                peer.agent_id,
                one_line(env.id, 100),
                trust,
                peer.agent_id,
                peer.agent_id,
            )
        session.send_ack(Ack(env.id, False, hs.NOT_TRUSTED))

    def _store_item(
        self, item: Item, then: Callable[[bool], None], skip: object | None = None
    ) -> None:
        """Insert an inbox item; once committed, push it to subscribers, then ``then(ok)``."""
        row = store.InboxRow(
            item.seq,
            item.sender,
            item.msg_id,
            item.kind,
            item.received,
            item.trust,
            item.body,
            item.read,
        )

        def done(result: object) -> None:
            if isinstance(result, BaseException):
                self.local.failed(item)
                self._store_failed(result)
                then(False)
                return
            self.stored_rows += 1
            if self.stored_rows - self.local.unread_count > self._prune_at:
                self.prune()
            keys = self.local.stored(item)
            if keys:
                line = item.push_line()
                for conn in keys:
                    if conn is not skip:
                        conn.push_inbound(line, item.seq)  # type: ignore[attr-defined]
            self._stored_event.set()
            self._stored_event = trio.Event()
            if self.hooks is not None and not item.read:
                self.hooks.stored(item)
            then(True)

        self.db.submit(store.insert_inbox(row, item.received if item.read else None), done)

    def _remember_inbound(self, msg_id: str, sender: str) -> None:
        self.recent_inbound[msg_id] = sender
        if len(self.recent_inbound) > RECENT_INBOUND:
            self.recent_inbound.popitem(last=False)

    def trust_of(self, agent_id: str) -> str:
        """The trust level of a peer's key (docs/protocol.md §9)."""
        rec = self.store.get(agent_id)
        if rec is None:
            return hs.trust_level(None)
        return hs.trust_level(rec.source, verified=rec.is_verified)

    def verify(
        self,
        agent_id: str,
        *,
        confirm: bool = False,
        done: Callable[[object], None] | None = None,
    ) -> dict[str, Any]:
        """`acp verify` (docs/protocol.md §9): the 6-digit code of the live session with
        ``agent_id``, which a person compares with the one its daemon shows for us.

        With ``confirm``, record the key of that session (the pinned one) as ``verified``;
        ``done(None or an exception)`` runs once that is committed. A key pinned later is not
        verified. Raises IpcError ``unknown_peer`` or ``not_connected`` (no live session).
        """
        if agent_id == self.agent_id:
            raise IpcError(
                ipc.BAD_REQUEST, "that is this daemon's own agent_id: name the peer to verify"
            )
        peer = self.peers.get(agent_id)
        rec = self.store.get(agent_id)
        if peer is None and (rec is None or rec.pubkey is None):
            raise IpcError(ipc.UNKNOWN_PEER, f"no peer {agent_id!r} is known (see `acp peers`)")
        session = peer.active if peer is not None else None
        if session is None or session.remote_key is None:
            raise IpcError(
                ipc.NOT_CONNECTED,
                f"{agent_id} is not connected, and the code comes from a live session: check "
                f"`acp peers` (its status and last error; `acp doctor` says what to fix), "
                f"and run `acp verify {agent_id}` again once it shows connected",
            )
        key = session.remote_key
        if confirm:
            if rec is None or rec.pubkey != key:
                raise IpcError(
                    ipc.NOT_CONNECTED,
                    f"the session with {agent_id} uses a key that is not the pinned one (any "
                    f"more): run `acp verify {agent_id}` again once a new session is up",
                )
            self.store.update(agent_id, verified=key)
            self.db.submit(self._peer_rows(), done)
            log.info("peer %s: key %s verified by the user", agent_id, fingerprint(key))
        return {
            "agent_id": agent_id,
            "own_id": self.agent_id,
            "code": hs.verification_code(session.keys.handshake_hash),
            "fingerprint": fingerprint(key),
            "trust": self.trust_of(agent_id),
        }

    # -- local readers -----------------------------------------------------------------------------

    async def stored_something(self) -> None:
        """Return when the next item is stored."""
        await self._stored_event.wait()

    def subscribe(self, conn: Any, since: int | None = None, count: int | None = None) -> None:
        """Push stored items to ``conn``: the unread ones (or, with ``since``, every one above
        it), then each item as it is stored (docs/protocol.md §8.1)."""
        items, catch_up = self.local.subscribe(conn, since=since, count=count)
        for item in items:
            conn.push_inbound(item.push_line(), item.seq)
        if catch_up:
            self.catch_up(conn)

    def catch_up(self, conn: Any) -> None:
        """Hand a subscriber the next page of stored items above its cursor."""
        cursor = self.local.cursor(conn)
        if cursor is None:
            return
        conn.catching_up = False
        asked_for = self.local.subscription(conn)

        def page(rows: list[store.InboxRow] | BaseException) -> None:
            if self.local.subscription(conn) is not asked_for:
                return  # read for a subscription that was replaced (or ended) since
            if isinstance(rows, BaseException):
                self._store_failed(rows)
                self.local.unsubscribe(conn)
                conn.send(ipc.error_reply("store_failed", f"cannot read the inbox: {rows}"))
                return
            items, more = self.local.caught_up(
                conn, [_item(r) for r in rows], full=len(rows) >= PAGE
            )
            for item in items:
                conn.push_inbound(item.push_line(), item.seq)
            if more:
                if getattr(conn, "backlogged", False):
                    conn.catching_up = True  # its writer calls catch_up when it drained
                else:
                    self.catch_up(conn)

        self.db.submit(store.read_inbox(since=cursor, limit=PAGE, kinds=None, senders=None), page)

    def unsubscribe(self, conn: Any) -> None:
        self.local.unsubscribe(conn)

    async def read_inbox(
        self,
        *,
        unread: bool,
        since: int,
        limit: int,
        kinds: list[str] | None,
        senders: list[str] | None,
    ) -> list[Item]:
        if unread:
            return self.local.unread(since=since, limit=limit, kinds=kinds, senders=senders)
        rows = await self.db.call(
            store.read_inbox(since=since, limit=limit, kinds=kinds, senders=senders)
        )
        return [_item(r) for r in rows]

    def ack(
        self,
        ids: list[str] | None,
        up_to: int | None,
        done: Callable[[int | BaseException], None],
        *,
        seqs: list[int] | None = None,
    ) -> None:
        """Mark items read (by msg_ids, up to a seq, or by seqs); ``done(how many changed)`` once
        that is stored."""
        if seqs is not None:
            seqs = self.local.ack_seqs(seqs)
        elif ids is not None:
            seqs = self.local.ack_ids(ids)
        else:
            seqs = self.local.ack_up_to(up_to or 0)
        if not seqs:
            self.db.submit(store.nothing, lambda _: done(0))
            return
        self.stats.inc("inbox_acked", len(seqs))
        marked = self.local.last_marked

        def stored(result: object) -> None:
            if isinstance(result, BaseException):
                self.local.unmark(marked)  # not stored: unread here too, as on disk
            elif self.hooks is not None:
                self.hooks.read(seqs)  # read: no hook owes it a run any more
            done(result if isinstance(result, BaseException) else len(seqs))

        self.db.submit(store.mark_read(seqs, _now_ms()), stored)


BLOCKED = "blocked"

# undelivered reasons with a counter of their own: ours, and the ACK error codes of docs/protocol.md §6
KNOWN_REASONS = frozenset(
    {"expired", "forgotten", "stale", "gone", "refused", "from_mismatch", "to_mismatch", "blocked"}
    | {"unknown_kind", "invalid_payload", "invalid_envelope", "too_large", "not_trusted"}
)
# after an inbox_full, a session's later envelopes are refused until the refused one comes back,
# or this long (a sender whose refused envelope expired must not be refused for ever)
HOLD_ORDER = 15.0
INBOX_FULL_RETRY = 5.0  # seconds before envelopes refused with inbox_full are offered again
# Seconds an envelope sent on a live session waits for its ACK before its outbox row is written.
# An ACK means the peer stored it (docs/protocol.md §7), so an envelope ACKed sooner never costs
# this daemon a write (two, with the delete), and its `send` is answered at the ACK. On a LAN an
# ACK takes about a millisecond; the delay bounds how much later a `send` may be answered when the
# peer is slow.
OUTBOX_WRITE_DELAY = 0.05


def _now_ms() -> int:
    return int(time.time() * 1000)


def _item(r: store.InboxRow) -> Item:
    return Item(*attrs.astuple(r, recurse=False))  # InboxRow and Item share their fields


class AckSink(Protocol):
    def send_ack(self, ack: Ack) -> None: ...
