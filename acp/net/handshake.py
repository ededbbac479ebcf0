"""Both ends of the Noise IK handshake over a trio stream, with docs/protocol.md §4's checks.

``dial`` runs the initiator side on a fresh TCP connection; ``answer`` the responder side on an
accepted one. Both run under the caller's 5 s deadline and return a ready ``Session``; anything
wrong raises HandshakeError (a ``Refused`` carries the reason that is counted).
"""

from __future__ import annotations

import logging
import time

import trio

from acp.errors import FrameError, HandshakeError
from acp.net.node import Node
from acp.net.peer import Peer, Session, set_keepalive
from acp.proto import handshake as hs
from acp.proto.admission import Slot, source_of
from acp.proto.framing import FrameDecoder, encode_frame
from acp.proto.noise import Initiator, Responder

log = logging.getLogger(__name__)


class EmptyConnection(HandshakeError):
    """An incoming connection closed before its first byte: counted, logged at debug only."""


async def read_frame(stream: trio.abc.ReceiveStream, decoder: FrameDecoder) -> bytes:
    while (frame := decoder.next_frame()) is None:
        data = await stream.receive_some(65536 + 4)
        if not data:
            raise HandshakeError("connection closed during the handshake")
        decoder.feed(data)
    return frame


def _now_ms() -> int:
    return int(time.time() * 1000)


def refused_hint(node: Node) -> str:
    """What ``last_error`` says when a peer closed our handshake without answering it."""
    return (
        "the peer closed the handshake: it may hold another key for us (did our identity "
        "change?) or not trust us (trust = explicit); on the peer run "
        f"`acp trust {node.agent_id} {node.identity.public_b64}`. Or its own key may have "
        "changed: compare `acp id` there with `acp peers --wide` here"
    )


async def dial(node: Node, peer: Peer, host: str, port: int) -> Session:
    """Connect to ``peer`` at host:port and run the initiator side. Caller sets the deadline."""
    if peer.pubkey is None:
        raise HandshakeError(f"no key known for {peer.agent_id}")
    stream = await trio.open_tcp_stream(host, port)
    try:
        set_keepalive(stream)
        rec = node.store.record(peer.agent_id)
        ts = hs.next_ts(_now_ms(), rec.ts_sent)
        node.store.update(peer.agent_id, ts_sent=ts)
        await node.persist_peers()  # before sending: ts must increase across restarts
        remote_key = peer.pubkey  # the key this handshake proves (peer.pubkey may change meanwhile)
        if remote_key is None:
            raise HandshakeError(f"no key known for {peer.agent_id}")
        noise = Initiator(node.identity.private_key, remote_key, prologue=hs.PROLOGUE)
        msg1 = noise.write_message_1(hs.hello_payload(node.agent_id, ts, node.port))
        await stream.send_all(encode_frame(msg1))
        decoder = FrameDecoder()
        try:
            msg2 = await read_frame(stream, decoder)
        except HandshakeError:
            # Closed where message 2 should be: an acp responder refuses a handshake so (no reason
            # is sent, docs/protocol.md §4), and the usual reasons are a key or trust problem, on
            # either side. Busy responders close too, so it is a guess, worded as one.
            raise HandshakeError(refused_hint(node)) from None
        payload, keys = noise.read_message_2(msg2)
        hs.parse_welcome(payload, expected_agent_id=peer.agent_id)
    except BaseException:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        raise
    return Session(
        node=node,
        peer=peer,
        stream=stream,
        keys=keys,
        decoder=decoder,
        initiator_id=node.agent_id,
        outbound=True,
        remote_key=remote_key,
    )


async def answer(node: Node, stream: trio.abc.Stream, slot: Slot | None = None) -> Session:
    """Run the responder side on an accepted connection. Caller sets the deadline and closes.

    ``slot``: its handshake slot, marked ``known`` (never evicted) once message 1 turns out to
    come from the key pinned for its agent_id.
    """
    set_keepalive(stream)
    decoder = FrameDecoder()
    try:
        msg1 = await read_frame(stream, decoder)
    except FrameError as exc:
        raise HandshakeError(f"bad first frame: {exc}") from exc
    except HandshakeError:
        if decoder.buffered == 0:  # not one byte: a port probe (acp doctor, a scanner)
            raise EmptyConnection("closed without sending anything") from None
        raise
    noise = Responder(node.identity.private_key, prologue=hs.PROLOGUE)
    hello = hs.parse_hello(noise.read_message_1(msg1))
    key = noise.remote_static
    if hello.agent_id == node.agent_id:
        raise hs.Refused(hs.WRONG_PEER, f"a peer claims our own agent_id {node.agent_id!r}")
    if hello.agent_id in node.store.blocked:
        raise hs.Refused(hs.BLOCKED, f"{hello.agent_id!r} is blocked (`acp unblock` to undo)")
    peer = node.peer(hello.agent_id)
    rec = node.store.get(hello.agent_id)
    held = peer.pubkey if peer is not None and peer.pubkey is not None else None
    if held is None and rec is not None:
        held = rec.pubkey
    known = held is not None and key == held  # the key pinned (or announced) for that agent_id
    if slot is not None and known:
        slot.known = True
    if peer is not None and peer.key_changed is not None and key == peer.key_changed:
        raise hs.Refused(
            hs.KEY_MISMATCH, f"{hello.agent_id!r} uses a changed key; run `acp trust` to accept it"
        )
    host = _remote_host(stream)
    try:
        pin = hs.admit(
            hello,
            key,
            held_key=held,
            last_accepted_ts=(
                rec.ts_accepted if rec is not None and rec.pubkey == key else node.store.floor(key)
            ),
            trust=node.config.trust,
        )
    except hs.Refused as exc:
        if exc.reason == hs.KEY_MISMATCH and held is not None:
            node.key_conflict(hello.agent_id, key, held, host)
        raise
    cap = node.config.max_sessions
    if not known and len(node.peers) >= cap and node.sessions_up() >= cap:
        raise hs.Refused(
            hs.TOO_MANY, f"{cap} sessions up (max_sessions): no room for a new peer"
        )
    if rec is None or rec.pubkey is None:
        # First contact (``pin``: no key held at all), or a key announced by mDNS but not pinned
        # yet: pin it now, or the ts_accepted below is ignored next time. Unproven until a
        # session of it lasts.
        if not node.make_room_for_pin(hello.agent_id):
            raise hs.Refused(
                hs.TOO_MANY,
                f"{node.config.max_pins} keys pinned (max_pins), none of them an unproven first "
                f"contact that could make room for {hello.agent_id!r}",
            )
        node.store.pin(hello.agent_id, key)
        node.store.update(hello.agent_id, proven=False)
        if pin:  # one line per source per minute: a host inventing identities must not flood it
            node.log_limiter.log(
                log,
                logging.INFO,
                ("pinned", source_of(host or "?")),
                "peer %s: pinned its key on first contact (trust = %s)",
                hello.agent_id,
                node.config.trust,
            )
    node.store.update(hello.agent_id, ts_accepted=hello.ts)
    if hello.port is not None and host is not None:
        node.store.update(hello.agent_id, host=host, port=hello.port)
    node.save_peers()
    if peer is None:
        peer = node.add_peer(
            Peer(agent_id=hello.agent_id, pubkey=key, host=host, port=hello.port, source="incoming")
        )
    else:
        if peer.pubkey is None:
            peer.pubkey = key
        if hello.port is not None and host is not None and peer.source not in hs.EXPLICIT_SOURCES:
            peer.host, peer.port = host, hello.port
    msg2, keys = noise.write_message_2(hs.welcome_payload(node.agent_id))
    await stream.send_all(encode_frame(msg2))
    return Session(
        node=node,
        peer=peer,
        stream=stream,
        keys=keys,
        decoder=decoder,
        initiator_id=hello.agent_id,
        outbound=False,
        remote_key=key,
    )


def _remote_host(stream: trio.abc.Stream) -> str | None:
    sock = getattr(stream, "socket", None)
    if sock is None:
        return None
    try:
        addr = sock.getpeername()
    except OSError:
        return None
    host = addr[0] if isinstance(addr, tuple) else None
    if host and host.startswith("::ffff:"):
        host = host[7:]
    return host
