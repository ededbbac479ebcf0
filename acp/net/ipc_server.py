"""The local IPC server (docs/protocol.md §8): ``$ACP_HOME/acp.sock``, one JSON object per line.

Each connection has one writer task (replies, events and subscribe pushes share the stream) and one
reader. Requests are handled in order; what waits (a ``send`` for its ACK or response, an ``inbox``
with ``wait``) gets a task of its own, and what follows a commit (``send``, ``ack``) replies from the
store's callback, so a client can pipeline with ``req``. Only the daemon's own user may connect
(SO_PEERCRED). A subscriber that falls ``MAX_BACKLOG`` lines behind is disconnected with a reason;
pushes consume nothing (docs/protocol.md §8.1), so it resumes with ``subscribe`` and ``since``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import attrs
import trio

from acp import __version__, store
from acp.errors import AlreadyRunning, ConfigError, EnvelopeError, IpcError
from acp.model import check_agent_id, decode_key, encode_key
from acp.net.eager import EagerWrites, socket_of, write_some
from acp.net.node import BLOCKED, Node, Ticket
from acp.net.peer import Peer
from acp.proto import envelope as envelope_mod
from acp.proto import ipc
from acp.proto.noise import usable_public_key
from acp.text import one_line

log = logging.getLogger(__name__)

MAX_BACKLOG = 10_000  # live pushes queued for one subscriber before it counts as too slow
MAX_BACKLOG_BYTES = 64 << 20  # ... or this many bytes of them
WRITE_BATCH = 256 * 1024  # bytes per send_all to a client
MAX_CLIENTS = 256
RECV_SIZE = 64 * 1024  # per receive_some: one allocation each, kept under malloc's mmap threshold
CATCH_UP_LINES = 1000  # a catching-up subscriber gets its next page once fewer pushes wait...
CATCH_UP_BYTES = 4 << 20  # ... and fewer bytes than this


@attrs.define(eq=False)
class IpcConn:
    stream: trio.SocketStream
    # (the item's seq for a push, or None for a reply or an event), line
    out: deque[tuple[int | None, bytes]] = attrs.field(factory=deque)
    wake: trio.Event = attrs.field(factory=trio.Event)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    subscribed: bool = False
    closed: bool = False
    overflowed: bool = False
    catching_up: bool = False  # a subscriber with more stored items to read once it drains
    on_drained: Any = None  # called by the writer when a catching-up subscriber drained
    drained: trio.Event | None = None  # set by the writer when ``out`` empties (flush)
    eof: bool = False  # the client closed its side
    writing: bool = False  # inside send_all: the stream is mid-line if that is cancelled
    head: int = 0  # bytes of the first line in ``out`` an eager write sent already
    eager: EagerWrites | None = None  # the node's (acp/net/eager.py); None: always the writer
    eager_noted: bool = False
    live_lines: int = 0  # live pushes queued, which is what a slow subscriber is judged by
    live_bytes: int = 0

    def send(self, obj: dict[str, Any]) -> None:
        self._queue(None, ipc.encode(obj))

    def send_line(self, line: bytes) -> None:
        """A reply already encoded (one line, with its newline)."""
        self._queue(None, line)

    def push_inbound(self, line: bytes, seq: int) -> None:
        self._queue(seq, line)

    def _queue(self, seq: int | None, line: bytes) -> None:
        if self.closed:
            return
        self.out.append((seq, line))
        if self.eager is not None:
            self.eager.want(self)
        else:
            self.wake.set()
        if seq is not None:
            # Bounded in lines and in bytes (64 KiB envelopes add up).
            self.live_lines += 1
            self.live_bytes += len(line)
            if (
                self.live_lines > MAX_BACKLOG or self.live_bytes > MAX_BACKLOG_BYTES
            ) and not self.overflowed:
                self.overflowed = True
                self.scope.cancel()

    @property
    def mid_line(self) -> bool:
        """The client has part of a line: nothing else may be written before its rest."""
        return self.writing or self.head > 0

    def kick(self) -> None:
        self.wake.set()

    def _batch(self) -> bytes:
        """The next write: queued lines (the rest of the first) up to WRITE_BATCH bytes."""
        out = self.out
        first = out[0][1]
        if len(out) == 1 or len(first) - self.head >= WRITE_BATCH:
            return first[self.head :] if self.head else first
        batch = [first[self.head :] if self.head else first]
        size = len(batch[0])
        for i in range(1, len(out)):
            line = out[i][1]
            batch.append(line)
            size += len(line)
            if size >= WRITE_BATCH:
                break
        return b"".join(batch)

    def _sent(self, count: int) -> None:
        """``count`` bytes of ``_batch()`` were written: drop the lines they finished."""
        out = self.out
        count += self.head
        while out and count >= len(out[0][1]):
            seq, line = out.popleft()
            count -= len(line)
            if seq is not None:
                self.live_lines -= 1
                self.live_bytes -= len(line)
        self.head = count
        if not out and self.drained is not None:
            self.drained.set()
        if self.catching_up and not self.backlogged and self.on_drained is not None:
            self.on_drained(self)

    def write_now(self) -> None:
        """The eager write (acp/net/eager.py): what the socket takes now; the rest by the writer."""
        sock = socket_of(self.stream)
        if self.closed or self.writing or not self.out or sock is None:
            if self.out:
                self.wake.set()
            return
        data = self._batch()
        self._sent(write_some(sock.fileno(), data))
        if self.out:
            self.wake.set()

    async def writer(self) -> None:
        out = self.out
        while True:
            if out:
                data = self._batch()
                self.writing = True
                await self.stream.send_all(data)
                self.writing = False
                self._sent(len(data))
            else:
                await self.wake.wait()
                self.wake = trio.Event()

    @property
    def backlogged(self) -> bool:
        return self.live_lines >= CATCH_UP_LINES or self.live_bytes >= CATCH_UP_BYTES

    async def flush(self) -> None:
        """Wait until the writer has sent everything queued."""
        while self.out:
            self.drained = trio.Event()
            await self.drained.wait()


SEND_NOT_STORED = (
    " (a send may still go out while this daemon runs; it would not survive a restart)"
)


def _store_error(exc: BaseException, req: Any, note: str = "") -> dict[str, Any]:
    return ipc.error_reply(ipc.STORE_FAILED, f"the database failed: {exc}{note}", req)


LOCK_RETRY = 0.1  # seconds DaemonLock.acquire tries again before the lock is another daemon's


class DaemonLock:
    """An flock on ``$ACP_HOME/acp.lock``: one daemon per ACP_HOME."""

    def __init__(self, home: Path) -> None:
        self.path = home / "acp.lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        # A client asking whether a daemon is starting (acp/starting.py) may hold a shared lock
        # for a few microseconds: a lock held past LOCK_RETRY is another daemon's.
        deadline = time.monotonic() + LOCK_RETRY
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                try:
                    pid = os.read(fd, 32).decode().strip() or "?"
                except OSError:
                    pid = "?"
                os.close(fd)
                raise AlreadyRunning(
                    f"another acp daemon (pid {pid}) is already running for {self.path.parent}; "
                    "stop it first, or set ACP_HOME to run a second one"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


async def open_ipc_listener(path: Path) -> trio.SocketListener:
    """Bind the Unix socket (the lock is held, so a leftover file is stale) with mode 0600."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        await sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot create the IPC socket {path}: {exc.strerror}") from exc
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return trio.SocketListener(sock)


def _peer_uid(stream: trio.SocketStream) -> int | None:
    try:
        creds = stream.socket.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
        )
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


async def _refuse(stream: trio.SocketStream, code: str, message: str) -> None:
    """Tell a client why it is turned away (best effort), then close."""
    with trio.move_on_after(0.5):
        try:
            await stream.send_all(ipc.encode(ipc.error_reply(code, message)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    await stream.aclose()


class IpcServer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.uid = os.getuid()

    async def serve(
        self,
        listener: trio.SocketListener,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await trio.serve_listeners(self._handle, [listener], task_status=task_status)  # type: ignore[arg-type]

    async def _handle(self, stream: trio.SocketStream) -> None:
        node = self.node
        uid = _peer_uid(stream)
        if uid is not None and uid != self.uid:
            node.stats.inc("ipc_refused_uid")
            log.warning("IPC connection from uid %s refused (daemon runs as uid %s)", uid, self.uid)
            await _refuse(stream, "forbidden", "only the daemon's own user may connect")
            return
        if len(node.conns) >= MAX_CLIENTS:
            await _refuse(stream, "busy", f"{MAX_CLIENTS} clients connected already")
            return
        conn = IpcConn(stream, on_drained=node.catch_up, eager=node.eager)
        node.conns.add(conn)
        try:
            with conn.scope:
                async with trio.open_nursery() as outer:
                    outer.start_soon(conn.writer)
                    async with trio.open_nursery() as inner:
                        inner.start_soon(self._reader, conn, inner)
                    # The client closed its side: replies that wait for a commit (send, ack)
                    # are sent from store callbacks, all of which run before this one's; outbox
                    # rows still waiting for an ACK (acp/net/node.py) are written first.
                    node.write_outbox_rows()
                    try:
                        await node.db.call(store.nothing)
                    except store.StoreError:
                        pass
                    await conn.flush()
                    outer.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            conn.closed = True
            node.conns.discard(conn)
            node.unsubscribe(conn)
            if conn.overflowed:
                node.stats.inc("ipc_slow_clients")
                log.warning("IPC subscriber too slow (%d lines behind): disconnected", MAX_BACKLOG)
            if conn.overflowed and not conn.mid_line:  # mid-line, an event would corrupt the stream
                with trio.CancelScope(shield=True), trio.move_on_after(0.2):
                    try:
                        await stream.send_all(
                            ipc.encode(
                                {
                                    "event": "disconnected",
                                    "reason": "too_slow",
                                    "message": f"more than {MAX_BACKLOG} pushes (or "
                                    f"{MAX_BACKLOG_BYTES >> 20} MiB) not read; nothing is lost: "
                                    "subscribe again with since = the last seq you read",
                                }
                            )
                        )
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _reader(self, conn: IpcConn, nursery: trio.Nursery) -> None:
        buf = ipc.LineBuffer()
        while True:
            data = await conn.stream.receive_some(RECV_SIZE)
            if not data:
                conn.eof = True  # a response it waits for now goes to subscribers or the inbox
                if conn.subscribed:
                    conn.scope.cancel()
                return
            with self.node.eager:  # replies, and frames to peers, in one write each after it
                for item in buf.feed(data):
                    if isinstance(item, IpcError):
                        conn.send(ipc.error_reply(item.code, item.message))
                        continue
                    try:
                        request = ipc.parse_request(item)
                        reply = self.dispatch(conn, request, nursery)
                    except IpcError as exc:
                        conn.send(ipc.error_reply(exc.code, exc.message, exc.req))
                        continue
                    except Exception as exc:  # a bug must not take the daemon down
                        log.exception("IPC request failed")
                        conn.send(ipc.error_reply("internal", f"internal error: {exc!r}"))
                        continue
                    if reply is not None:
                        conn.send(reply)

    # -- commands ----------------------------------------------------------------------------------

    def dispatch(
        self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery
    ) -> dict[str, Any] | None:
        handler = getattr(self, "cmd_" + r.cmd)
        try:
            result: dict[str, Any] | None = handler(conn, r, nursery)
        except IpcError as exc:
            raise IpcError(exc.code, exc.message, req=r.req) from None
        except EnvelopeError as exc:
            raise IpcError(exc.code, exc.message, req=r.req) from None
        except ConfigError as exc:
            raise IpcError(ipc.BAD_REQUEST, exc.message, req=r.req) from None
        return result

    def _accept(
        self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery, obj: dict[str, Any], to: str
    ) -> dict[str, Any] | None:
        node = self.node
        env, wire = envelope_mod.complete(
            obj, own_id=node.agent_id, to=to, now_ms=int(time.time() * 1000)
        )
        if env.to == node.agent_id:
            raise IpcError(ipc.BAD_REQUEST, "cannot send to this daemon's own agent_id")
        wait = r.args.get("wait", "accepted")
        ticket = Ticket(conn, env.id, env.to, wait)
        if wait == "response":
            node.response_waiters[env.id] = ticket

        def stored(result: object) -> None:  # runs after route() returned: `state` is set
            if isinstance(result, BaseException):
                node.response_waiters.pop(env.id, None)
                conn.send(_store_error(result, r.req, SEND_NOT_STORED))
            elif wait == "accepted":
                conn.send(ipc.ok_reply(r.req, msg_id=env.id, to=env.to, state=state))
            else:
                try:
                    nursery.start_soon(self._await_ticket, conn, r, ticket, timeout)
                except RuntimeError:
                    pass  # the client left while the store committed

        timeout = float(r.args.get("timeout", ipc.DEFAULT_WAIT_TIMEOUT))
        try:
            state = node.route(env, wire, ticket, stored)
        except IpcError:
            node.response_waiters.pop(env.id, None)
            raise
        return None

    async def _await_ticket(
        self,
        conn: IpcConn,
        r: ipc.Request,
        ticket: Ticket,
        timeout: float,  # noqa: ASYNC109
    ) -> None:
        node = self.node
        assert ticket.done is not None
        try:
            with trio.move_on_after(timeout):
                await ticket.done.wait()
        finally:
            ticket.waiting = False
            if node.response_waiters.get(ticket.msg_id) is ticket:
                del node.response_waiters[ticket.msg_id]
        result = ticket.result or {}
        if "error" in result:
            failed = ipc.error_reply(result["error"], result["message"], r.req)
            failed["msg_id"] = ticket.msg_id
            conn.send(failed)
        elif ticket.response is not None:  # the envelope's JSON as stored: spliced, not re-encoded
            line = ipc.encode(
                ipc.ok_reply(r.req, msg_id=ticket.msg_id, to=ticket.to, state="answered")
            )
            conn.send_line(line[:-2] + b',"response":' + ticket.response + b"}\n")
        elif ticket.wait == "acked" and result.get("acked"):
            conn.send(ipc.ok_reply(r.req, msg_id=ticket.msg_id, to=ticket.to, state="acked"))
        else:
            what = "ACK" if ticket.wait == "acked" else "response"
            acked = (
                " (the peer ACKed it)" if result.get("acked") else " (it stays queued for the peer)"
            )
            # the msg_id, in the message and as a field: a late response names it as reply_to
            timed_out = ipc.error_reply(
                ipc.TIMEOUT,
                f"no {what} from {ticket.to} within {timeout:g} s{acked}; "
                f"message id {ticket.msg_id}",
                r.req,
            )
            timed_out["msg_id"] = ticket.msg_id
            conn.send(timed_out)

    def cmd_send(
        self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery
    ) -> dict[str, Any] | None:
        return self._accept(conn, r, nursery, r.args["envelope"], r.args["to"])

    def cmd_reply(
        self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery
    ) -> dict[str, Any] | None:
        msg_id = r.args["msg_id"]
        to = r.args.get("to") or self.node.recent_inbound.get(msg_id)
        if to is None:
            raise IpcError(
                "unknown_message",
                f'no recent inbound envelope {msg_id!r}; pass "to" to reply to it anyway',
            )
        obj = {"kind": "response", "reply_to": msg_id, "payload": r.args["payload"]}
        return self._accept(conn, r, nursery, obj, check_agent_id(to, what="to"))

    def cmd_broadcast(
        self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery
    ) -> dict[str, Any] | None:
        node = self.node
        obj = dict(r.args["envelope"])
        if obj.get("to") is not None:
            raise IpcError(
                ipc.BAD_REQUEST, 'broadcast goes to every connected peer: leave out "to"'
            )
        connected = sorted(p.agent_id for p in node.peers.values() if p.connected)
        if obj.get("id") is None:
            obj["id"] = str(uuid.uuid4())  # one id for all: dedupe is per (from, id)
        now_ms = int(time.time() * 1000)
        # validate once even when nobody is connected, so a bad envelope is an error either way
        envelope_mod.complete(
            obj, own_id=node.agent_id, to=connected[0] if connected else "x", now_ms=now_ms
        )
        full = [a for a in connected if len(node.peers[a].outbox) >= node.peers[a].outbox.limit]
        if full:  # all or nothing: a half-sent broadcast would be hard to retry
            node.stats.inc("outbox_full")
            raise IpcError(
                "outbox_full", f"outbox full for {', '.join(full)}: nothing sent; try again later"
            )
        failed: list[BaseException] = []
        owed = len(connected)

        def reply() -> None:
            if failed:
                conn.send(_store_error(failed[0], r.req, SEND_NOT_STORED))
            else:
                conn.send(ipc.ok_reply(r.req, msg_id=obj["id"], to=connected))

        def stored(result: object) -> None:  # one copy is durable (its row, or its ACK)
            nonlocal owed
            if isinstance(result, BaseException):
                failed.append(result)
            owed -= 1
            if owed == 0:
                reply()

        for agent_id in connected:
            env, wire = envelope_mod.complete(obj, own_id=node.agent_id, to=agent_id, now_ms=now_ms)
            node.route(env, wire, Ticket(conn, env.id, agent_id), stored)
        if not connected:
            node.db.submit(store.nothing, lambda _: reply())  # in order with earlier replies
        return None

    def cmd_subscribe(
        self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery
    ) -> dict[str, Any] | None:
        conn.send(ipc.ok_reply(r.req, subscribed=True))
        if conn.subscribed:
            self.node.unsubscribe(conn)  # a second subscribe starts over from its own since
        conn.subscribed = True
        self.node.subscribe(conn, since=r.args.get("since"), count=r.args.get("count"))
        return None

    def cmd_inbox(self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._inbox, conn, r)

    async def _inbox(self, conn: IpcConn, r: ipc.Request) -> None:
        node, args = self.node, r.args
        since = args.get("since", 0)
        limit = args.get("limit", ipc.DEFAULT_INBOX_LIMIT)
        wait = args.get("wait")
        deadline = trio.current_time() + (wait or 0)
        while True:
            try:
                items = await node.read_inbox(
                    unread=args.get("unread", True),
                    since=since,
                    limit=limit,
                    kinds=args.get("kinds"),
                    senders=args.get("from"),
                )
            except Exception as exc:
                conn.send(_store_error(exc, r.req))
                return
            if items or trio.current_time() >= deadline:
                break
            with trio.move_on_at(deadline):
                await node.stored_something()
        conn.send(
            ipc.ok_reply(
                r.req,
                messages=[item.to_json() for item in items],
                next=items[-1].seq if items else since,
            )
        )

    def cmd_ack(self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery) -> None:
        def done(result: int | BaseException) -> None:
            if isinstance(result, BaseException):
                conn.send(_store_error(result, r.req))
            else:
                conn.send(ipc.ok_reply(r.req, acked=result))

        self.node.ack(r.args.get("ids"), r.args.get("up_to"), done)

    def cmd_peers(self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery) -> dict[str, Any]:
        node = self.node
        now = trio.current_time()
        rows = []
        for _, peer in sorted(node.peers.items()):
            row = peer.describe(now)
            row["trust"] = node.trust_of(peer.agent_id) if peer.pubkey is not None else None
            rows.append(row)
        return ipc.ok_reply(r.req, peers=rows)

    def cmd_status(self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery) -> dict[str, Any]:
        node = self.node
        stats = node.stats
        return ipc.ok_reply(
            r.req,
            agent_id=node.agent_id,
            version=__version__,
            pid=os.getpid(),
            fingerprint=node.identity.fingerprint,
            pubkey=node.identity.public_b64,
            uptime=round(trio.current_time() - node.started, 1),
            port=node.port,
            home=str(node.config.home),
            trust=node.config.trust,
            mdns=node.mdns_state,
            peers_known=len(node.peers),
            peers_connected=sum(1 for p in node.peers.values() if p.connected),
            messages_sent=stats["acks_ok"],
            messages_received=stats["messages_delivered"],
            queued=sum(len(p.outbox) for p in node.peers.values()),
            inbox=node.local.unread_count,
            unread=node.local.unread_count,
            stored=node.stored_rows,
            last_seq=node.local.last_stored,
            durability=node.config.durability,
            database=str(node.db.path),
            subscribers=node.local.subscribers(),
            warnings=list(node.warnings),
            counters=stats.snapshot(),
            hooks=node.hooks.summary() if node.hooks is not None else {},
            blocked=sorted(node.store.blocked),
        )

    def cmd_card(
        self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery
    ) -> dict[str, Any] | None:
        """Our agent card; with ``reload``, read config.toml's [agent] again and send it to the
        connected peers."""
        if not r.args.get("reload"):
            card = self.node.card
            return ipc.ok_reply(r.req, card=card.to_json() if card is not None else None)
        nursery.start_soon(self._reload_card, conn, r)
        return None

    async def _reload_card(self, conn: IpcConn, r: ipc.Request) -> None:
        from acp.config import Config

        node = self.node
        old = node.config
        try:
            fresh = await trio.to_thread.run_sync(
                lambda: Config.load(old.home, agent_id=old.agent_id, port=old.port, mdns=old.mdns)
            )
        except ConfigError as exc:
            conn.send(ipc.error_reply(ipc.BAD_REQUEST, exc.message, r.req))
            return
        sent = node.set_card(fresh.agent)
        log.info("agent card reloaded from config.toml; sent to %d connected peer(s)", sent)
        card = fresh.agent.to_json() if fresh.agent is not None else None
        conn.send(ipc.ok_reply(r.req, card=card, sent_to=sent))

    def cmd_id(self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery) -> dict[str, Any]:
        node = self.node
        return ipc.ok_reply(
            r.req,
            agent_id=node.agent_id,
            pubkey=node.identity.public_b64,
            fingerprint=node.identity.fingerprint,
        )

    def cmd_trust(self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery) -> dict[str, Any]:
        from acp.config import split_hostport

        node = self.node
        agent_id = r.args["agent_id"]
        if agent_id == node.agent_id:
            raise IpcError(ipc.BAD_REQUEST, "that is this daemon's own agent_id")
        if agent_id in node.store.blocked:
            raise IpcError(BLOCKED, f"{agent_id!r} is blocked: `acp unblock {agent_id}` first")
        key = decode_key(r.args["pubkey"], what="pubkey")
        if not usable_public_key(key):
            raise IpcError(
                ipc.BAD_REQUEST, "pubkey: not a usable X25519 public key (a low-order point)"
            )
        host = port = None
        if r.args.get("addr"):
            host, port = split_hostport(r.args["addr"], what="addr")
        node.store.pin(agent_id, key)
        node.store.update(agent_id, source="manual")
        if host is not None:
            node.store.update(agent_id, host=host, port=port)
        node.save_peers()
        peer = node.peer(agent_id)
        if peer is None:
            peer = node.add_peer(
                Peer(
                    agent_id, pubkey=key, host=host, port=port, source="manual" if host else "cache"
                )
            )
        else:
            if peer.pubkey != key:
                peer.close_sessions("key replaced by acp trust")
            peer.pubkey = key
            peer.key_changed = None
            if host is not None:
                peer.host, peer.port, peer.source = host, port, "manual"
            peer.poke()
        log.info("peer %s: key trusted by the user (%s)", agent_id, peer.fingerprint)
        return ipc.ok_reply(
            r.req, agent_id=agent_id, fingerprint=peer.fingerprint, pubkey=encode_key(key)
        )

    def cmd_hooks(self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery) -> dict[str, Any]:
        """Each hook with its state and counts (docs/hooks.md); no secrets."""
        hooks = self.node.hooks
        return ipc.ok_reply(r.req, hooks=hooks.report() if hooks is not None else [])

    def cmd_hooks_test(self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery) -> None:
        """Hand a synthetic envelope to one hook and reply with what came back."""
        hooks = self.node.hooks
        name = r.args["name"]
        if hooks is None or name not in hooks.hooks:
            known = ", ".join(hooks.hooks) if hooks is not None and hooks.hooks else "none"
            raise IpcError(
                ipc.UNKNOWN_HOOK,
                f"no hook named {one_line(name, 64)!r} in config.toml (configured: {known})",
            )

        async def test() -> None:
            result = await hooks.test(name)
            conn.send(ipc.ok_reply(r.req, **result))

        nursery.start_soon(test)
        return None

    def cmd_block(self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery) -> dict[str, Any]:
        agent_id = r.args["agent_id"]
        if agent_id == self.node.agent_id:
            raise IpcError(ipc.BAD_REQUEST, "that is this daemon's own agent_id")
        newly = self.node.block(agent_id)
        return ipc.ok_reply(r.req, agent_id=agent_id, blocked=True, already=not newly)

    def cmd_unblock(self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery) -> dict[str, Any]:
        node = self.node
        agent_id = r.args["agent_id"]
        if not node.store.unblock(agent_id):
            raise IpcError("not_blocked", f"{agent_id!r} is not blocked")
        node.save_peers()
        log.info("peer %s: unblocked by the user", agent_id)
        return ipc.ok_reply(r.req, agent_id=agent_id, blocked=False)

    def cmd_verify(
        self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery
    ) -> dict[str, Any] | None:
        """The session's verification code (docs/protocol.md §9); with ``confirm``, record the
        peer's key as verified and reply once that is committed."""
        agent_id = r.args["agent_id"]
        if not r.args.get("confirm"):
            return ipc.ok_reply(r.req, **self.node.verify(agent_id))

        def stored(result: object) -> None:
            if isinstance(result, BaseException):
                conn.send(_store_error(result, r.req))
            else:
                conn.send(ipc.ok_reply(r.req, **info))

        info = self.node.verify(agent_id, confirm=True, done=stored)
        return None

    def cmd_forget(self, conn: IpcConn, r: ipc.Request, nursery: trio.Nursery) -> dict[str, Any]:
        node = self.node
        agent_id = r.args["agent_id"]
        if node.peer(agent_id) is None and node.store.get(agent_id) is None:
            raise IpcError(ipc.UNKNOWN_PEER, f"no peer {agent_id!r} is known")
        node.unpin(agent_id, "forgotten")
        return ipc.ok_reply(r.req, agent_id=agent_id, forgotten=True)
