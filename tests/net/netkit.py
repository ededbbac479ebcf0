"""What the in-process network tests share: nodes, a fake TCP network, a peer driven by hand.

Every connection is a ``trio.testing.memory_stream_pair()``; nothing touches a socket or the real
clock. ``FakeNet`` replaces ``trio.open_tcp_stream`` so ``handshake.dial`` and the supervisors in
``acp.net.peers`` run unchanged; the far end of each connection runs ``listener._handle`` (the
daemon's own accept path) or whatever a test installs there. ``RawPeer`` speaks the protocol
frame by frame, so a test can stay silent, delay a PONG or send garbage on purpose.
"""

from __future__ import annotations

import errno
import json
import os
import random
import sqlite3
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trio.testing

from acp.config import Config
from acp.identity import Identity
from acp.net import handshake, listener
from acp.net.handshake import read_frame
from acp.net.node import Node, Ticket
from acp.net.peer import Peer, Session
from acp.proto import envelope as envelope_mod
from acp.proto import handshake as hs
from acp.proto import session as frames
from acp.proto.framing import FrameDecoder, encode_frame
from acp.proto.noise import Initiator, Responder, TransportKeys, public_key
from acp.store import Database, Loaded, PeerRecord, _Job

Addr = tuple[str, int]
Stream = trio.StapledStream[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]

# Where each test agent "listens" on the fake network.
ADDR: dict[str, Addr] = {
    "alpha": ("10.0.0.1", 7101),
    "beta": ("10.0.0.2", 7102),
    "carol": ("10.0.0.3", 7103),
}


class InlineDatabase(Database):
    """The store without its thread, for tests on the autojump clock (which would jump while a
    thread commits): each job runs at once on the trio thread, in a transaction of its own, and
    its callback runs soon after, in submission order, as the real store's do."""

    def submit(self, fn: Any, done: Any = None) -> None:
        result = self._run_batch([_Job(fn, done)])[0]
        if done is not None:
            trio.lowlevel.current_trio_token().run_sync_soon(done, result)

    def load_now(self) -> Loaded:
        result = self._run_batch([_Job(lambda conn: self._load(conn, None), None)])[0]
        if isinstance(result, BaseException):
            raise result
        loaded: Loaded = result
        return loaded

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def stored_peer(node: Node, agent_id: str) -> PeerRecord | None:
    """The peer's row as it is on disk, read with a connection of our own."""
    conn = sqlite3.connect(node.db.path)
    try:
        row = conn.execute("SELECT record FROM peers WHERE agent_id = ?", (agent_id,)).fetchone()
    finally:
        conn.close()
    return PeerRecord.from_json(json.loads(row[0]), agent_id) if row else None


def make_node(tmp_path: Path, agent_id: str, **settings: Any) -> Node:
    """A Node as the daemon builds it, with its own ACP_HOME (and database) under ``tmp_path``."""
    home = tmp_path / agent_id
    home.mkdir(parents=True, exist_ok=True)
    config = Config.from_toml(settings, home=home, agent_id=agent_id)
    db = InlineDatabase(home / "acp.db")
    loaded = db.load_now()
    node = Node(config, Identity.from_private(os.urandom(32)), db, loaded.peers)
    node.restore(loaded)
    node.port = ADDR[agent_id][1]
    return node


def know(node: Node, agent_id: str, pubkey: bytes) -> Peer:
    """Make ``node`` know ``agent_id`` as a static peer at its fake address."""
    host, port = ADDR[agent_id]
    return node.add_peer(Peer(agent_id, pubkey=pubkey, host=host, port=port, source="static"))


def know_each_other(a: Node, b: Node) -> tuple[Peer, Peer]:
    """(a's Peer for b, b's Peer for a)."""
    return know(a, b.agent_id, b.identity.public_key), know(b, a.agent_id, a.identity.public_key)


class FakeSocket:
    """Just enough of a socket for ``set_keepalive`` and the listener's log lines."""

    def __init__(self, peername: Addr) -> None:
        self.peername = peername
        self.options: dict[tuple[int, int], int] = {}

    def getpeername(self) -> Addr:
        return self.peername

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options[(level, option)] = value


class Link:
    """One fake TCP connection: two memory streams that can stall one direction or be cut."""

    def __init__(self, client_addr: Addr, server_addr: Addr) -> None:
        self.client, self.server = trio.testing.memory_stream_pair()
        self.client.socket = FakeSocket(server_addr)  # type: ignore[attr-defined]
        self.server.socket = FakeSocket(client_addr)  # type: ignore[attr-defined]
        self.server_addr = server_addr

    @staticmethod
    def stall(end: Stream) -> None:
        """Hold whatever ``end`` sends from now on (it stays in its send buffer, undelivered)."""
        end.send_stream.send_all_hook = None
        end.send_stream.close_hook = None

    def cut(self) -> None:
        """The network drops the connection: bytes not yet delivered are lost, both ends see EOF."""
        for end in (self.client, self.server):
            self.stall(end)
            end.receive_stream.put_eof()


Handler = Callable[[Stream], Awaitable[None]]


class FakeNet:
    """Stands in for TCP: ``trio.open_tcp_stream(host, port)`` reaches what listens there."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.handlers: dict[Addr, Handler | None] = {}
        self.dials: list[tuple[float, Addr]] = []
        self.links: list[Link] = []

    def listen(self, node: Node) -> None:
        """Accept connections to ``node``'s address with the daemon's accept path."""
        self.handlers[ADDR[node.agent_id]] = partial(listener._handle, node)

    def serve(self, addr: Addr, handler: Handler) -> None:
        self.handlers[addr] = handler

    def refuse(self, addr: Addr) -> None:
        """Connections to ``addr`` fail at once (ECONNREFUSED)."""
        self.handlers[addr] = None

    def blackhole(self, addr: Addr) -> None:
        """Connections to ``addr`` are accepted and then nothing is ever sent back."""

        async def hold(stream: Stream) -> None:
            await trio.sleep_forever()

        self.handlers[addr] = hold

    def dial_times(self, addr: Addr) -> list[float]:
        return [t for t, a in self.dials if a == addr]

    async def open_tcp_stream(self, host: str, port: int, **kwargs: Any) -> Stream:
        await trio.lowlevel.checkpoint()
        addr = (host, port)
        self.dials.append((trio.current_time(), addr))
        handler = self.handlers.get(addr)
        if handler is None:
            raise OSError(errno.ECONNREFUSED, f"Connect call failed {addr}")
        link = Link(("198.51.100.1", 40000 + len(self.links)), addr)
        self.links.append(link)
        self.nursery.start_soon(handler, link.server)
        return link.client


class FakeConn:
    """A local IPC client as Node sees it (``send``, ``push_inbound``, ``closed``)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.inbound: list[dict[str, Any]] = []
        self.closed = False
        self.since_seq = 0
        self.remaining: int | None = None
        self.eof = False

    def send(self, obj: dict[str, Any]) -> None:
        self.sent.append(obj)

    def push_inbound(self, line: bytes, seq: int = 0) -> None:
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        obj = json.loads(line)
        assert obj["seq"] == seq
        if "event" in obj:  # a stored event (an undelivered send): a line like the ones sent
            self.sent.append(obj)
        else:
            self.inbound.append(obj)

    def inbound_ids(self) -> list[str]:
        return [push["envelope"]["id"] for push in self.inbound]


def notify(sender: str, to: str, env_id: str, /, **extra: Any) -> dict[str, Any]:
    """A complete ``notify`` envelope as a peer would put it on the wire."""
    obj: dict[str, Any] = {
        "v": 1,
        "id": env_id,
        "from": sender,
        "to": to,
        "ts": 1_700_000_000_000,
        "kind": "notify",
        "reply_to": None,
        "payload": {"topic": "test", "data": env_id},
    }
    obj.update(extra)
    return obj


def send(
    node: Node,
    to: str,
    env_id: str,
    conn: FakeConn | None = None,
    *,
    kind: str = "notify",
    priority: str = "normal",
) -> str:
    """What the IPC ``send`` command does: complete the envelope, route it; the routing state."""
    if kind == "delegate":
        payload: dict[str, Any] = {"task": env_id, "priority": priority, "report_back": False}
    else:
        payload = {"topic": "test", "data": env_id}
    env, wire = envelope_mod.complete(
        {"id": env_id, "kind": kind, "payload": payload},
        own_id=node.agent_id,
        to=to,
        now_ms=1_700_000_000_000,
    )
    return node.route(env, wire, Ticket(conn, env.id, to))  # type: ignore[arg-type]


class MidRng(random.Random):
    """An rng whose ``random()`` is always 0.5: Backoff's jitter factor is then exactly 1."""

    def random(self) -> float:
        return 0.5


async def connect(nursery: trio.Nursery, a: Node, b: Node) -> Session:
    """``a`` dials ``b`` (listening on the FakeNet) by hand; the session runs in ``nursery``."""
    host, port = ADDR[b.agent_id]
    with trio.fail_after(hs.HANDSHAKE_TIMEOUT):
        session = await handshake.dial(a, a.peers[b.agent_id], host, port)
    nursery.start_soon(session.run)
    await settle()
    return session


async def settle() -> None:
    """Let every task run until all are blocked, without moving the clock."""
    await trio.testing.wait_all_tasks_blocked()


WAIT_LIMIT = 1000.0  # virtual seconds: a wait that never ends fails instead of spinning forever


async def wait_connected(peer: Peer) -> None:
    with trio.fail_after(WAIT_LIMIT):
        while peer.active is None:
            await peer.changed.wait()


async def wait_disconnected(peer: Peer) -> None:
    with trio.fail_after(WAIT_LIMIT):
        while peer.active is not None:
            await peer.changed.wait()


class RawPeer:
    """The far end of a session driven by hand: the Noise handshake and frames, one at a time."""

    def __init__(self, agent_id: str, stream: Stream, private_key: bytes | None = None) -> None:
        self.agent_id = agent_id
        self.private_key = private_key if private_key is not None else os.urandom(32)
        self.public_key = public_key(self.private_key)
        self.stream = stream
        self.decoder = FrameDecoder()
        self._keys: TransportKeys | None = None
        self._initiator: Initiator | None = None

    @property
    def keys(self) -> TransportKeys:
        assert self._keys is not None, "no handshake yet"
        return self._keys

    def message_1(self, responder_key: bytes, ts: int, port: int | None = None) -> bytes:
        """A framed message 1 (keep it to replay it)."""
        self._initiator = Initiator(self.private_key, responder_key, prologue=hs.PROLOGUE)
        return encode_frame(
            self._initiator.write_message_1(hs.hello_payload(self.agent_id, ts, port))
        )

    async def dial(self, responder: Node, ts: int, port: int | None = None) -> None:
        """The initiator side against ``responder``; message 2 must come back."""
        await self.stream.send_all(self.message_1(responder.identity.public_key, ts, port))
        await self.read_message_2(responder.agent_id)

    async def read_message_2(self, expected_agent_id: str) -> None:
        assert self._initiator is not None
        msg2 = await read_frame(self.stream, self.decoder)
        payload, self._keys = self._initiator.read_message_2(msg2)
        hs.parse_welcome(payload, expected_agent_id=expected_agent_id)

    async def answer(self) -> hs.Hello:
        """The responder side, for a node that dials us."""
        noise = Responder(self.private_key, prologue=hs.PROLOGUE)
        hello = hs.parse_hello(noise.read_message_1(await read_frame(self.stream, self.decoder)))
        msg2, self._keys = noise.write_message_2(hs.welcome_payload(self.agent_id))
        await self.stream.send_all(encode_frame(msg2))
        return hello

    async def send(self, plaintext: bytes) -> None:
        ct = self.keys.send.encrypt(plaintext)
        await self.stream.send_all(len(ct).to_bytes(4, "big") + ct)

    async def send_envelope(self, obj: Any) -> None:
        await self.send(b"\x01" + json.dumps(obj, separators=(",", ":")).encode())

    async def ping(self, data: bytes = b"rawping!") -> None:
        await self.send(frames.encode_ping(data))

    async def recv(self) -> frames.Frame | None:
        """The next frame, or None at EOF."""
        while (body := self.decoder.next_frame()) is None:
            data = await self.stream.receive_some()
            if not data:
                return None
            self.decoder.feed(data)
        return frames.decode(self.keys.recv.decrypt(body))

    async def recv_until(self, kind: type[Any]) -> Any:
        """Skip PINGs (answering them) and anything else until a frame of ``kind``."""
        while True:
            frame = await self.recv()
            if frame is None:
                raise AssertionError(f"EOF while waiting for {kind.__name__}")
            if isinstance(frame, kind):
                return frame
            if isinstance(frame, frames.Ping):
                await self.send(frames.encode_pong(frame.data))

    async def rest(self) -> list[frames.Frame]:
        """Every frame until EOF."""
        out = []
        while (frame := await self.recv()) is not None:
            out.append(frame)
        return out
