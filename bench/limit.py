"""The limit: how fast can *any* trio + PyNaCl relay move envelopes, so acp's figures mean something?

A latency or throughput number for acp alone says little: is 300 us slow for Python? This module is
the answer's other half, a relay with no features at all (no handshake, no ACKs, no outbox, no
validation beyond what keeps it honest) that still does the work acp cannot avoid:

    client A -> Unix socket, JSON lines -> relay A -> TCP, 4-byte big-endian length + ChaCha20-Poly1305
    frame -> relay B -> Unix socket, JSON lines -> client B

Each relay parses client lines, serialises the envelope compactly, encrypts it with a pre-shared
key per direction and Noise's counter nonce (4 zero bytes + 8-byte little-endian counter), writes
one frame per ``send_all`` (no batching), and on the other side decrypts and pushes
``{"inbound":true,"envelope":...}`` to subscribers. One task owns each direction of each stream,
as in acp (docs/architecture.md).

``--batch`` (target ``limit-batch``) adds the one optimisation acp's own writers make: readers
queue without yielding, and each writer sends everything already queued (up to 256 KiB) in one
``send_all``. Without it the "limit" is no limit for throughput: per-frame wake-ups dominate, and
acp, which batches, outruns it with small envelopes.

``--durable`` (target ``limit-durable``, always with ``--batch``) adds what acp's durable store
must do and nothing more: each relay stores every envelope it forwards in SQLite (WAL,
``synchronous=NORMAL`` as acp's default ``durability``), one commit for everything one read
produced: the sending relay before it queues the envelopes for the peer and replies to the client,
the receiving relay before it pushes them. It commits on the event loop's own thread, because
that is the fastest shape plain Python has (acp hands its commits to a thread of its own, so
that a slow disk never stalls its sessions; that hand-off is part of what this target measures).

It speaks just the subset of acp's IPC (docs/protocol.md §8) the benchmark
client uses, so the same client drives both:

    {"cmd":"send","to":ID,"envelope":{...}}  -> {"ok":true,"msg_id":<envelope id>}
    {"cmd":"subscribe"}                     -> {"ok":true}, then {"inbound":true,"envelope":{...}}
    {"cmd":"status"}                        -> {"ok":true,"peers_connected":0 or 1}
    {"cmd":"peers"}                         -> {"ok":true,"peers":[{"status":"connected"}] or []}
    "req" in a request is echoed in its reply.

Run one relay (``python bench/limit.py relay --help``); ``LimitTarget`` starts pairs for bench/run.py.
A relay prints ``{"ready":true,"port":N}`` on stdout once it can be used, and exits when its TCP
peer goes away.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from common import (
    LOOPBACK,
    BenchError,
    Child,
    Command,
    Lone,
    Memory,
    Pair,
    Placement,
    read_json_line,
    spawn,
)
from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
)

MAX_FRAME = 65535  # docs/protocol.md §3: 1 <= N <= 65535
TAG_LEN = 16  # Poly1305 tag
MAX_ENVELOPE = MAX_FRAME - TAG_LEN  # acp also spends a type byte; the limit does not need one
KEY_LEN = 32
MAX_LINE = 1 << 20  # IPC line cap, as acp (docs/protocol.md §8)
RECEIVE_BYTES = 1 << 16  # per receive_some
QUEUE_DEPTH = 64  # bounded channels: producers wait
BATCH_BYTES = 256 * 1024  # --batch: at most this much queued data per send_all (as acp)
CONNECT_TIMEOUT = 10.0  # seconds the dialling relay keeps retrying

HERE = Path(__file__).resolve()
# What the RSS floor figure imports: acp's runtime dependencies, nothing of acp itself.
FLOOR_IMPORTS = "import trio, trio_util, zeroconf, nacl.bindings, attrs, cyclopts"


def nonce(counter: int) -> bytes:
    """Noise's ChaChaPoly nonce: 4 zero bytes, then the counter as 8 little-endian bytes."""
    return b"\0\0\0\0" + counter.to_bytes(8, "little")


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def error_line(code: str, message: str, req: Any) -> bytes:
    out: dict[str, Any] = {"ok": False, "error": {"code": code, "message": message}}
    if req is not None:
        out["req"] = req
    return encode(out)


class Relay:
    """One end of the chain: IPC clients on a Unix socket, one encrypted TCP stream to the peer."""

    def __init__(
        self,
        send_key: bytes,
        recv_key: bytes,
        *,
        batch: bool = False,
        db: sqlite3.Connection | None = None,
    ) -> None:
        self.send_key = send_key
        self.recv_key = recv_key
        self.batch = batch  # --batch: one send_all for everything already queued
        self.db = db  # --durable: every envelope stored (and committed) before it moves on
        self.to_peer_send, self.to_peer_recv = trio.open_memory_channel[bytes](QUEUE_DEPTH)
        self.subscribers: set[trio.MemorySendChannel[bytes]] = set()
        self.connected = False  # the TCP stream to the peer is up

    # -- TCP side: one writer task, one reader task -----------------------------------------
    async def peer_writer(self, stream: trio.abc.SendStream) -> None:
        """Queued envelopes -> encrypted frames, in order, one ``send_all`` each (or per batch)."""
        counter = 0
        async for first in self.to_peer_recv:
            frames = []
            for plaintext in self._queued(first, self.to_peer_recv):
                ciphertext = crypto_aead_chacha20poly1305_ietf_encrypt(
                    plaintext, None, nonce(counter), self.send_key
                )
                counter += 1
                frames.append(len(ciphertext).to_bytes(4, "big") + ciphertext)
            await stream.send_all(frames[0] if len(frames) == 1 else b"".join(frames))

    async def _put(self, channel: trio.MemorySendChannel[bytes], item: bytes) -> None:
        """Queue ``item``. With --batch, without yielding unless the queue is full, so the
        writer finds everything this read produced in the queue and sends it in one go."""
        if self.batch:
            try:
                channel.send_nowait(item)
                return
            except trio.WouldBlock:
                pass
        await channel.send(item)

    def _queued(self, first: bytes, channel: trio.MemoryReceiveChannel[bytes]) -> list[bytes]:
        """``first``; with --batch also what else is queued right now, up to BATCH_BYTES."""
        items, size = [first], len(first)
        while self.batch and size < BATCH_BYTES:
            try:
                item = channel.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            items.append(item)
            size += len(item)
        return items

    async def peer_reader(self, stream: trio.abc.ReceiveStream) -> None:
        """Frames -> plaintext -> a push line for every subscriber; returns at EOF."""
        buf = bytearray()
        counter = 0
        while data := await stream.receive_some(RECEIVE_BYTES):
            buf += data
            pos = 0
            lines = []
            while len(buf) - pos >= 4:
                n = int.from_bytes(buf[pos : pos + 4], "big")
                if not 1 <= n <= MAX_FRAME:
                    raise BenchError(f"peer sent a frame length of {n}; closing")
                if len(buf) - pos - 4 < n:
                    break
                ciphertext = bytes(buf[pos + 4 : pos + 4 + n])
                pos += 4 + n
                plaintext = crypto_aead_chacha20poly1305_ietf_decrypt(
                    ciphertext, None, nonce(counter), self.recv_key
                )
                counter += 1
                lines.append(plaintext)
            del buf[:pos]
            if self.db is not None and lines:  # stored, in one commit, before anyone sees them
                store(self.db, "inbox", lines)
            for plaintext in lines:
                line = b'{"inbound":true,"envelope":' + plaintext + b"}\n"
                for sub in list(self.subscribers):
                    try:
                        await self._put(sub, line)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self.subscribers.discard(sub)

    # -- IPC side: per client, a reader (this task) and a writer ----------------------------
    async def serve_client(self, stream: trio.SocketStream) -> None:
        out_send, out_recv = trio.open_memory_channel[bytes](QUEUE_DEPTH)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._client_writer, stream, out_recv)
            try:
                await self._client_reader(stream, out_send)
            finally:
                self.subscribers.discard(out_send)
                nursery.cancel_scope.cancel()

    async def _client_writer(
        self, stream: trio.SocketStream, lines: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        try:
            async for first in lines:
                await stream.send_all(b"".join(self._queued(first, lines)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client left; the reader sees EOF and ends the connection

    async def _client_reader(
        self, stream: trio.SocketStream, out: trio.MemorySendChannel[bytes]
    ) -> None:
        buf = bytearray()
        try:
            while data := await stream.receive_some(RECEIVE_BYTES):
                start = len(buf)
                buf += data
                begin = 0
                end = buf.find(b"\n", start)
                sends: list[tuple[bytes, bytes]] = []  # --durable: (wire, reply) of this read
                while end >= 0:
                    await self._request(bytes(buf[begin:end]), out, sends)
                    begin = end + 1
                    end = buf.find(b"\n", begin)
                del buf[:begin]
                if sends:  # stored in one commit, then sent on and answered
                    assert self.db is not None
                    store(self.db, "outbox", [wire for wire, _ in sends])
                    for wire, reply in sends:
                        await self._put(self.to_peer_send, wire)
                        await self._put(out, reply)
                if len(buf) > MAX_LINE:
                    await out.send(error_line("line_too_long", f"line over {MAX_LINE} bytes", None))
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _request(
        self,
        line: bytes,
        out: trio.MemorySendChannel[bytes],
        sends: list[tuple[bytes, bytes]],
    ) -> None:
        try:
            obj = json.loads(line)
        except ValueError as exc:
            await out.send(error_line("bad_json", f"request is not JSON: {exc}", None))
            return
        if not isinstance(obj, dict):
            await out.send(error_line("bad_json", "request must be a JSON object", None))
            return
        req = obj.get("req")
        cmd = obj.get("cmd")
        reply: dict[str, Any] = {"ok": True}
        if req is not None:
            reply["req"] = req
        if cmd == "send":
            envelope = obj.get("envelope")
            if not isinstance(envelope, dict):
                await out.send(error_line("bad_request", "send needs an envelope object", req))
                return
            if not isinstance(envelope.get("id"), str):
                envelope["id"] = str(uuid.uuid4())
            wire = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
            if len(wire) > MAX_ENVELOPE:
                await out.send(error_line("too_large", f"over {MAX_ENVELOPE} bytes", req))
                return
            reply["msg_id"] = envelope["id"]
            if self.db is not None:
                sends.append((wire, encode(reply)))
                return
            await self._put(self.to_peer_send, wire)
            await self._put(out, encode(reply))
        elif cmd == "subscribe":
            await out.send(encode(reply))  # queued before the first push
            self.subscribers.add(out)
        elif cmd == "status":
            reply["peers_connected"] = int(self.connected)
            await out.send(encode(reply))
        elif cmd == "peers":
            reply["peers"] = [{"status": "connected"}] if self.connected else []
            await out.send(encode(reply))
        else:
            await out.send(error_line("unknown_command", f"unknown command {cmd!r}", req))


def open_store(path: Path) -> sqlite3.Connection:
    """The relay's database: WAL, synchronous=NORMAL (acp's default durability)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE outbox (row INTEGER PRIMARY KEY, wire BLOB NOT NULL)")
    db.execute("CREATE TABLE inbox (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    return db


def store(db: sqlite3.Connection, table: str, rows: list[bytes]) -> None:
    """One transaction for ``rows``, committed before the caller moves on (on this thread)."""
    db.execute("BEGIN IMMEDIATE")
    db.executemany(f"INSERT INTO {table} (body) VALUES (?)" if table == "inbox"
                   else "INSERT INTO outbox (wire) VALUES (?)", [(r,) for r in rows])  # fmt: skip
    db.execute("COMMIT")


async def _unix_listener(path: Path) -> trio.SocketListener:
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(64)
    return trio.SocketListener(sock)


async def _dial(host: str, port: int) -> trio.SocketStream:
    with trio.fail_after(CONNECT_TIMEOUT):
        while True:
            try:
                return await trio.open_tcp_stream(host, port)
            except OSError:
                await trio.sleep(0.02)


async def run_relay(args: argparse.Namespace) -> None:
    db = open_store(Path(args.sock + ".db")) if args.durable else None
    relay = Relay(
        bytes.fromhex(args.send_key),
        bytes.fromhex(args.recv_key),
        batch=args.batch or args.durable,
        db=db,
    )
    if len(relay.send_key) != KEY_LEN or len(relay.recv_key) != KEY_LEN:
        raise SystemExit(f"keys must be {KEY_LEN} bytes ({2 * KEY_LEN} hex digits)")
    ipc = await _unix_listener(Path(args.sock))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, relay.serve_client, [ipc])
        if args.peer is None:
            (tcp,) = await trio.open_tcp_listeners(args.listen, host=args.host)
            port = tcp.socket.getsockname()[1]
            print(json.dumps({"ready": True, "port": port}), flush=True)
            stream = await tcp.accept()
            await tcp.aclose()
        else:
            host, _, port_s = args.peer.rpartition(":")
            port = int(port_s)
            stream = await _dial(host, port)
            print(json.dumps({"ready": True, "port": port}), flush=True)
        relay.connected = True
        nursery.start_soon(relay.peer_writer, stream)
        await relay.peer_reader(stream)
        nursery.cancel_scope.cancel()  # peer gone: the chain is over


class LimitTarget:
    """The baseline: pairs of ``limit.py relay`` processes; python itself for the floors.

    ``batch=True`` is target ``limit-batch``: relays run with ``--batch``; ``durable=True`` is
    ``limit-durable``: ``--durable`` (which batches too).
    """

    def __init__(self, *, batch: bool = False, durable: bool = False) -> None:
        self.batch = batch
        self.durable = durable
        self.name = "limit-durable" if durable else "limit-batch" if batch else "limit"

    def unavailable(self) -> str | None:
        return None

    def relay_argv(self, sock: Path, side: list[str], send_key: str, recv_key: str) -> list[str]:
        argv = [sys.executable, str(HERE), "relay", "--sock", str(sock), *side]
        argv += ["--send-key", send_key, "--recv-key", recv_key]
        return argv + (["--durable"] if self.durable else ["--batch"] if self.batch else [])

    @asynccontextmanager
    async def open_pairs(
        self, count: int, workdir: Path, place: Placement = LOOPBACK
    ) -> AsyncIterator[list[Pair]]:
        """All listening relays (b) first, then the dialling ones (a), so start-ups overlap."""
        async with AsyncExitStack() as stack:

            async def relay(
                tag: str, prefix: tuple[str, ...], sock: Path, side: list[str], send: str, recv: str
            ) -> Child:
                argv = [*prefix, *self.relay_argv(sock, side, send, recv)]
                log = workdir / f"{self.name}-{tag}.log"
                name = f"{self.name} relay {tag}"
                return await stack.enter_async_context(
                    spawn(argv, log=log, stdout_pipe=True, name=name)
                )

            keys = [(secrets.token_hex(KEY_LEN), secrets.token_hex(KEY_LEN)) for _ in range(count)]
            socks = [(workdir / f"a{i}.sock", workdir / f"b{i}.sock") for i in range(count)]
            listen = ["--listen", "0", "--host", place.receiver_host]
            b_relays = [
                await relay(f"b{i}", place.receiver_prefix, socks[i][1], listen, ba, ab)
                for i, (ab, ba) in enumerate(keys)
            ]
            a_relays = []
            for i, (ab, ba) in enumerate(keys):
                port = (await read_json_line(b_relays[i], "listening"))["port"]
                dial = ["--peer", f"{place.receiver_host}:{port}"]
                a_relays.append(
                    await relay(f"a{i}", place.sender_prefix, socks[i][0], dial, ab, ba)
                )
            for a in a_relays:
                await read_json_line(a, "dialling")
            yield [
                Pair(a_sock, b_sock, f"limit-a{i}", f"limit-b{i}", (a.pid, b.pid))
                for i, ((a_sock, b_sock), a, b) in enumerate(
                    zip(socks, a_relays, b_relays, strict=True)
                )
            ]

    def lone(self, workdir: Path) -> Lone:
        """A listening relay whose peer never comes: it serves IPC all the same."""
        sock = workdir / "lone.sock"
        keys = secrets.token_hex(KEY_LEN), secrets.token_hex(KEY_LEN)
        return Lone(Command(tuple(self.relay_argv(sock, ["--listen", "0"], *keys))), sock)

    def cli_commands(self, pair: Pair) -> None:
        """No client of its own: its cold-start figures are the floor (lifecycle.py)."""
        return None


async def floor_memory() -> Memory:
    """The RSS floor: a python that imports acp's dependencies and does nothing else."""
    code = f"{FLOOR_IMPORTS}\nprint(open('/proc/self/status').read())"
    result = await trio.run_process([sys.executable, "-c", code], capture_stdout=True)
    return Memory.from_proc_status(result.stdout.decode())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="limit.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    relay = sub.add_parser("relay", help="run one relay of a chain")
    relay.add_argument("--sock", required=True, help="Unix socket path for clients")
    side = relay.add_mutually_exclusive_group(required=True)
    side.add_argument("--listen", type=int, help="TCP port to accept the peer on (0: any)")
    side.add_argument("--peer", help="HOST:PORT of the listening relay to dial")
    relay.add_argument("--host", default="127.0.0.1", help="address to listen on (--listen)")
    relay.add_argument("--send-key", required=True, help="64 hex digits: key for frames we send")
    relay.add_argument("--recv-key", required=True, help="64 hex digits: key for frames we receive")
    relay.add_argument(
        "--batch",
        action="store_true",
        help="write everything already queued (frames, or lines to a client) in one send_all",
    )
    relay.add_argument(
        "--durable",
        action="store_true",
        help="store every envelope in SQLite (<sock>.db, WAL) before it moves on (implies --batch)",
    )
    args = parser.parse_args(argv)
    trio.run(run_relay, args)


if __name__ == "__main__":
    main()
