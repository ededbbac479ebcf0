"""One peer: its outbox, its sessions, and the three tasks of a session (reader, writer, keepalive).

Why this shape: each TCP stream has exactly one writer task, the only caller of ``send_all``; the
reader never blocks on anything but the socket, and queues ACK/PONG/PING for the writer. The writer
batches what is queued (control frames first, then envelopes from the peer's outbox) into one
``send_all``, encrypting frame by frame. A peer may briefly have two sessions (both sides dialled, or
a reconnect); ``Peer.offer`` applies docs/protocol.md §4's rules and only the active session drains the
outbox. Whatever a session had sent without an ACK goes back to the front of the outbox when the
session ends, so a reconnect resends it in order.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from acp.errors import EnvelopeError, ProtocolError
from acp.model import Ack, Envelope, encode_key, fingerprint
from acp.net.eager import EagerWrites, socket_of, write_some
from acp.proto import envelope as envelope_mod
from acp.proto import session as frames
from acp.proto.card import AgentCard
from acp.proto.delivery import Outbox
from acp.proto.framing import FrameDecoder
from acp.proto.noise import TransportKeys
from acp.text import one_line

if TYPE_CHECKING:
    from acp.net.stats import Stats


class SessionHost(Protocol):
    """What a session needs of the daemon: where envelopes and ACKs go, and its counters."""

    @property
    def agent_id(self) -> str: ...

    @property
    def stats(self) -> Stats: ...

    @property
    def peers(self) -> Mapping[str, Peer]: ...

    @property
    def eager(self) -> EagerWrites:
        """Where a session notes that it has frames to send (acp/net/eager.py)."""

    @property
    def card_frame(self) -> bytes | None:
        """Our agent card as a CARD frame's plaintext, or None without one."""

    def deliver(self, session: Session, peer: Peer, env: Envelope, body: bytes) -> None:
        """Store an inbound envelope (``body``: its compact re-serialisation, one line); the host
        calls ``session.send_ack`` when decided."""

    def acked(self, peer: Peer, ack: Ack) -> None:
        """The peer ACKed (or refused) one of our envelopes."""


log = logging.getLogger(__name__)

RECV_SIZE = 64 * 1024  # per receive_some: one allocation each, kept under malloc's mmap threshold
BATCH_BYTES = 256 * 1024  # envelopes gathered into one send_all at most
BYE_GRACE = 0.5  # seconds for a best-effort BYE on close
CONTROL_BYTES = 1024 * 1024  # ACK/PONG/CARD bytes owed to a peer before its session is closed
CONTROL_COST = 64  # what one queued frame costs beyond its bytes (its bytes object, a deque slot)
CONTROL_OWED = f"over {CONTROL_BYTES // 1024} KiB of ACK/PONG frames owed"  # the BYE reason
TCP_KEEPALIVE = 30  # seconds (docs/protocol.md §5)

# Peer states shown by `acp peers`.
DISCOVERED = "discovered"
CONNECTING = "connecting"
CONNECTED = "connected"
BACKOFF = "backoff"
WAITING = "waiting"  # higher agent_id: waiting for the lower side to dial
KEY_CHANGED = "key_changed"
REFUSED = "refused"
STALE = "stale"
IDLE = "idle"  # known (pinned) but no address to dial
STATES = (DISCOVERED, CONNECTING, CONNECTED, BACKOFF, WAITING, KEY_CHANGED, REFUSED, STALE, IDLE)


class SessionEnded(Exception):
    """A session ended for a reason that is not an error of ours (EOF, BYE, dead, replaced)."""


def set_keepalive(stream: trio.abc.Stream) -> None:
    """TCP keepalive on, probing after 30 s idle every 30 s (docs/protocol.md §5)."""
    sock = getattr(stream, "socket", None)
    if sock is None:  # a memory stream in tests
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, TCP_KEEPALIVE)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, TCP_KEEPALIVE)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except OSError:
        pass


def _frame(keys: TransportKeys, plaintext: bytes) -> bytes:
    ct = keys.send.encrypt(plaintext)
    return len(ct).to_bytes(4, "big") + ct


@attrs.define(eq=False)
class Session:
    """An established Noise session with one peer over one TCP stream."""

    node: SessionHost
    peer: Peer
    stream: trio.abc.Stream
    keys: TransportKeys
    decoder: FrameDecoder
    initiator_id: str
    outbound: bool
    confirmed: bool = False
    control: deque[bytes] = attrs.field(factory=deque)
    control_bytes: int = 0  # ``control`` and what the writer is sending of it: CONTROL_COST + len
    wake: trio.Event = attrs.field(factory=trio.Event)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    last_recv: float = 0.0
    last_sent: float = 0.0
    started: float = 0.0
    end_reason: str = ""
    bye_reason: str | None = None
    writing: bool = False  # the writer task is inside send_all
    pending: bytes = b""  # the rest of an eager write the socket did not take (the writer's next)
    pending_owed: int = 0  # control bytes in ``pending``
    eager_noted: bool = False
    _pings: dict[bytes, float] = attrs.field(factory=dict)
    # the peer's static key, as this session's handshake proved it (what `acp verify` confirms)
    remote_key: bytes | None = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        self.confirmed = self.outbound  # the initiator knows at message 2; the responder later
        self.last_recv = self.last_sent = self.started = trio.current_time()

    @property
    def active(self) -> bool:
        return self.peer.active is self

    @property
    def mid_write(self) -> bool:
        """Frames are encrypted and not all written: a BYE must not follow (its nonce would be
        one the peer does not expect yet, or it would follow a partial frame)."""
        return self.writing or bool(self.pending)

    def kick(self) -> None:
        self.wake.set()

    def queue_control(self, plaintext: bytes) -> None:
        """Queue a frame for the writer (from the reader); ProtocolError past CONTROL_BYTES."""
        if not self._owe(plaintext):
            # A peer that sends but never reads would grow this for ever (ACKs and PONGs owed).
            raise ProtocolError(f"peer does not read: {CONTROL_OWED}")
        self.node.eager.want(self)

    def _owe(self, plaintext: bytes) -> bool:
        """Append to ``control`` unless that takes it past CONTROL_BYTES."""
        cost = self.control_bytes + CONTROL_COST + len(plaintext)
        if cost > CONTROL_BYTES:
            return False
        self.control_bytes = cost
        self.control.append(plaintext)
        return True

    def send_ack(self, ack: Ack) -> None:
        """Queue an ACK decided after the fact (once the store committed); never raises."""
        self._queue_later(frames.encode_ack(ack))

    def send_card(self, frame: bytes) -> None:
        """Queue our agent card for the peer (at session start, and when it changes)."""
        self._queue_later(frame)

    def _queue_later(self, plaintext: bytes) -> None:
        """``queue_control`` for frames queued from outside the reader: never raises."""
        if self.end_reason:
            return  # the session is over (an ACK: the peer resends, and gets it for the copy)
        if not self._owe(plaintext):
            self.node.stats.inc("protocol_errors")
            log.warning(
                "peer %s: does not read: %s; closing the session", self.peer.agent_id, CONTROL_OWED
            )
            self.close("peer does not read", bye=CONTROL_OWED)
            return
        self.node.eager.want(self)

    def _still_known(self) -> bool:
        """False if the peer was forgotten (or dropped) while this session was being set up."""
        return self.node.peers.get(self.peer.agent_id) is self.peer

    def send_ping(self, now: float) -> None:
        """Queue a PING; its PONG gives the RTT shown by `acp peers`."""
        data = os.urandom(frames.PING_LEN)
        self._pings[data] = now
        if len(self._pings) > 8:
            self._pings.pop(next(iter(self._pings)))
        self.queue_control(frames.encode_ping(data))

    def close(self, reason: str, *, bye: str | None = None) -> None:
        """End the session from outside (replaced, forgotten); BYE ``bye`` if given."""
        if not self.end_reason:
            self.end_reason = reason
        self.bye_reason = bye
        self.scope.cancel()

    async def run(self) -> str:
        """Run until the session ends; return why. Never raises for peer or network trouble."""
        node, peer = self.node, self.peer
        reason = ""
        try:
            with self.scope:
                try:
                    if self.outbound:
                        # the responder counts the session confirmed at our first frame: send it now
                        self.send_ping(trio.current_time())
                        if not self._still_known() or not peer.offer(self):
                            self.bye_reason = "duplicate session"
                            raise SessionEnded("duplicate session: keeping the other one")
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._reader)
                        nursery.start_soon(self._writer)
                        nursery.start_soon(self._keepalive)
                except* SessionEnded as eg:
                    reason = str(eg.exceptions[0])
                except* ProtocolError as eg:
                    exc = eg.exceptions[0]
                    why = one_line(str(exc), 200)  # it may quote what the peer sent
                    reason = f"protocol error: {why}"
                    node.stats.inc("protocol_errors")
                    log.warning("peer %s: %s; closing the session", peer.agent_id, why)
                    self.bye_reason = f"protocol error: {exc}"
                except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as eg:
                    reason = f"connection lost: {eg.exceptions[0]!r}"
            if self.scope.cancelled_caught and self.end_reason:
                reason = self.end_reason
        finally:
            if not reason and not self.end_reason:  # cancelled from outside: the daemon stops
                self.bye_reason = reason = "shutting down"
            self.end_reason = self.end_reason or reason or "closed"
            peer.session_ended(self)
            with trio.CancelScope(shield=True), trio.move_on_after(BYE_GRACE):
                if self.bye_reason is not None and not self.mid_write:
                    try:
                        await self.stream.send_all(
                            _frame(self.keys, frames.encode_bye(self.bye_reason))
                        )
                    except (
                        trio.BrokenResourceError,
                        trio.ClosedResourceError,
                        OSError,
                        ProtocolError,
                    ):
                        pass
                await self.stream.aclose()
        return self.end_reason

    # -- tasks -------------------------------------------------------------------------------------

    def _collect(self) -> tuple[bytes, int]:
        """Encrypt what is queued (control frames first, then a batch of the outbox) into one
        buffer; also the control bytes it holds, which stay owed until it is sent."""
        keys = self.keys
        chunks: list[bytes] = []
        control = self.control
        owed = self.control_bytes  # counted until sent: a peer that does not read holds it
        while control:
            chunks.append(_frame(keys, control.popleft()))
        if self.confirmed and self.peer.active is self:
            batch = self.peer.outbox.take_batch(BATCH_BYTES, trio.current_time())
            for entry in batch:
                chunks.append(_frame(keys, b"\x01" + entry.wire))
            if batch:
                self.node.stats.inc("envelopes_sent", len(batch))
        return (b"".join(chunks) if len(chunks) > 1 else chunks[0] if chunks else b""), owed

    def _sent(self, count: int, owed: int) -> None:
        self.control_bytes -= owed
        self.last_sent = trio.current_time()
        self.node.stats.inc("bytes_sent", count)

    def write_now(self) -> None:
        """The eager write (acp/net/eager.py): what is queued, without waiting for the socket."""
        sock = socket_of(self.stream)
        if self.writing or self.pending or self.end_reason or sock is None:
            self.wake.set()  # the writer task's: it is sending, or this is no socket (tests)
            return
        data, owed = self._collect()
        if not data:
            return
        # Encrypted: from here the bytes must go out in order, whole, before anything else.
        n = write_some(sock.fileno(), data)
        if n < len(data):
            self.pending, self.pending_owed = data[n:], owed
            self.node.stats.inc("bytes_sent", n)  # the rest counts when the writer sends it
            self.wake.set()
        else:
            self._sent(n, owed)

    async def _writer(self) -> None:
        stream = self.stream
        while True:
            if self.pending:
                data, owed = self.pending, self.pending_owed
            else:
                data, owed = self._collect()
            if data:
                # Encrypted already (the nonces moved): if this is cancelled, the stream may end
                # mid-frame, or without frames the peer's nonces count on, so no BYE may follow.
                self.writing = True
                self.pending, self.pending_owed = b"", 0
                await stream.send_all(data)
                self.writing = False
                self._sent(len(data), owed)
            else:
                await self.wake.wait()
                self.wake = trio.Event()

    async def _reader(self) -> None:
        decoder, recv, stream = self.decoder, self.keys.recv, self.stream
        eager = self.node.eager
        while True:
            with eager:  # ACKs and PONGs for what this read brought go out in one write after it
                while (body := decoder.next_frame()) is not None:
                    self._handle(recv.decrypt(body))
            data = await stream.receive_some(RECV_SIZE)
            if not data:
                raise SessionEnded("peer closed the connection")
            self.last_recv = trio.current_time()
            self.node.stats.inc("bytes_received", len(data))
            decoder.feed(data)

    async def _keepalive(self) -> None:
        while True:
            now = trio.current_time()
            if now - self.last_recv >= frames.DEAD_AFTER:
                raise SessionEnded(f"nothing received for {frames.DEAD_AFTER:.0f} s")
            if now - self.last_sent >= frames.PING_IDLE:
                self.send_ping(now)
                self.last_sent = now  # the writer will send it at once
            await trio.sleep_until(
                min(self.last_recv + frames.DEAD_AFTER, self.last_sent + frames.PING_IDLE)
            )

    # -- frames in ---------------------------------------------------------------------------------

    def _handle(self, plaintext: bytes) -> None:
        frame = frames.decode(plaintext)
        if not self.confirmed:
            self.confirmed = True  # first transport frame decrypted: the initiator holds the keys
            if not self._still_known():
                self.bye_reason = "forgotten"
                raise SessionEnded("the peer was forgotten during the handshake")
            if not self.peer.offer(self):
                self.bye_reason = "duplicate session"
                raise SessionEnded("duplicate session: keeping the other one")
        if isinstance(frame, frames.EnvelopeFrame):
            self._on_envelope(frame.body)
        elif isinstance(frame, frames.AckFrame):
            self.node.acked(self.peer, frame.ack)
        elif isinstance(frame, frames.Ping):
            self.queue_control(frames.encode_pong(frame.data))
        elif isinstance(frame, frames.Pong):
            sent = self._pings.pop(frame.data, None)
            if sent is not None:
                self.peer.rtt = trio.current_time() - sent
        elif isinstance(frame, frames.CardFrame):
            self._on_card(frame.body)
        elif isinstance(frame, frames.Bye):
            raise SessionEnded(f"peer said BYE: {one_line(frame.reason, 200)}")
        # Unknown frame types are ignored (docs/protocol.md §5).

    def _on_card(self, body: bytes) -> None:
        """The peer's agent card: shown, never trusted; a bad one is ignored, not fatal."""
        try:
            card = AgentCard.from_wire(body)
        except ProtocolError as exc:
            self.node.stats.inc("cards_refused")
            log.warning(
                "peer %s: ignored its agent card: %s", self.peer.agent_id, one_line(str(exc), 200)
            )
            return
        if card != self.peer.card:
            self.peer.card = card
            self.node.stats.inc("cards_received")
            log.info(
                "peer %s: agent card received (%d skill(s))", self.peer.agent_id, len(card.skills)
            )

    def _on_envelope(self, body: bytes) -> None:
        node = self.node
        node.stats.inc("envelopes_received")
        try:
            env, wire = envelope_mod.parse_wire(body)
            envelope_mod.check_route(env, session_peer=self.peer.agent_id, own_id=node.agent_id)
        except EnvelopeError as exc:
            if exc.fatal or exc.envelope_id is None:
                raise
            node.stats.inc(f"envelopes_refused.{exc.code}")
            log.warning(
                "peer %s: refused envelope %s: %s",
                self.peer.agent_id,
                one_line(exc.envelope_id, 100),
                one_line(str(exc), 200),
            )
            self.queue_control(frames.encode_ack(Ack(exc.envelope_id, False, exc.code)))
            return
        node.deliver(self, self.peer, env, wire)


@attrs.define(eq=False)
class Peer:
    """Everything the daemon knows about one other agent."""

    agent_id: str
    pubkey: bytes | None = attrs.field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    source: str = "cache"  # static | mdns | cache | incoming | manual
    state: str = IDLE
    outbox: Outbox = attrs.field(factory=Outbox)
    active: Session | None = None
    sessions: set[Session] = attrs.field(factory=set)
    key_changed: bytes | None = attrs.field(default=None, repr=False)  # the other key announced
    last_error: str | None = None
    last_seen: float | None = None  # wall clock, s
    mdns_seen: float | None = None  # trio clock: last mDNS refresh
    learned_at: float = 0.0  # trio clock
    next_try: float | None = None  # trio clock
    rtt: float | None = None
    scope: trio.CancelScope | None = None  # the supervisor's
    kick: trio.Event = attrs.field(factory=trio.Event)
    changed: trio.Event = attrs.field(factory=trio.Event)
    boot: str | None = None  # the per-boot TXT value last announced
    said_goodbye: bool = False  # mDNS goodbye received since the last announcement
    last_poke: float = -1e9  # trio clock
    notify: Callable[[], None] | None = None  # the node's "sessions changed"
    card: AgentCard | None = None  # what the peer says it can do (acp/proto/card.py)

    def set_state(self, state: str) -> None:
        """The one place a peer's state (what `acp peers` shows) changes."""
        if state not in STATES:
            raise ValueError(f"unknown peer state {state!r}")
        if state != self.state:
            log.debug("peer %s: %s -> %s", self.agent_id, self.state, state)
            self.state = state

    def poke(self) -> None:
        """Wake the supervisor: an address changed, a key was trusted, a session came or went."""
        self.last_poke = trio.current_time()
        self.kick.set()
        self.kick = trio.Event()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()
        if self.notify is not None:
            self.notify()

    @property
    def fingerprint(self) -> str | None:
        return fingerprint(self.pubkey) if self.pubkey else None

    @property
    def connected(self) -> bool:
        return self.active is not None

    def wake_writer(self) -> None:
        session = self.active
        if session is not None:
            session.node.eager.want(session)

    def offer(self, session: Session) -> bool:
        """docs/protocol.md §4: decide whether ``session`` becomes the active one."""
        current = self.active
        self.sessions.add(session)
        if current is not None and current is not session:
            same_initiator = current.initiator_id == session.initiator_id
            # bytewise UTF-8 order equals str order for the ASCII agent_id alphabet
            if not same_initiator and session.initiator_id > current.initiator_id:
                self.sessions.discard(session)
                return False
            current.close("replaced by a newer session", bye="replaced by a newer session")
        self.active = session
        card = session.node.card_frame
        if card is not None:
            session.send_card(card)
        self.outbox.session_lost()  # anything in flight on the old session is resent here
        self.set_state(CONNECTED)
        self.last_error = None
        self.last_seen = time.time()
        session.wake.set()
        self.poke()
        self._changed()
        log.info(
            "peer %s: session up (%s, initiator %s)",
            self.agent_id,
            "outbound" if session.outbound else "inbound",
            session.initiator_id,
        )
        return True

    def session_ended(self, session: Session) -> None:
        self.sessions.discard(session)
        if self.active is session:
            self.active = None
            self.outbox.session_lost()
            self.last_seen = time.time()
            if self.state == CONNECTED:
                self.set_state(DISCOVERED)
            self.last_error = session.end_reason or None
            log.info("peer %s: session down: %s", self.agent_id, session.end_reason)
            self.poke()
            self._changed()

    def close_sessions(self, reason: str) -> None:
        for s in list(self.sessions):
            s.close(reason, bye=reason)

    def describe(self, now: float) -> dict[str, Any]:
        """The row `acp peers` shows."""
        return {
            "id": self.agent_id,
            "addr": self.host,
            "port": self.port,
            "status": self.state,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "pubkey": encode_key(self.pubkey) if self.pubkey else None,
            "last_seen": self.last_seen,
            "rtt_ms": round(self.rtt * 1000, 3) if self.rtt is not None else None,
            "queued": len(self.outbox),
            "next_try_in": round(max(0.0, self.next_try - now), 1)
            if self.next_try is not None and self.state == BACKOFF
            else None,
            "last_error": self.last_error,
            "announced_fingerprint": fingerprint(self.key_changed) if self.key_changed else None,
            "card": self.card.to_json() if self.card is not None else None,
        }
