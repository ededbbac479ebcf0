"""Eager writes (acp/net/eager.py): what a read queues goes out at its end, in order, whole.

On real socket pairs: a session's frames and an IPC connection's lines written without the writer
task, a socket that takes only part of a write (a tiny send buffer) leaving the rest to the task in
the right order, no BYE after a write left partial, and the store's jobs handed over after the
writes and in submission order.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import trio
import trio.testing
from netkit import make_node

from acp.model import Ack
from acp.net.eager import EagerWrites
from acp.net.ipc_server import IpcConn
from acp.net.peer import Peer, Session
from acp.proto import session as frames
from acp.proto.framing import FrameDecoder
from acp.proto.noise import CipherState, TransportKeys
from acp.store import Database


class Writer:
    def __init__(self, log: list[str], name: str) -> None:
        self.eager_noted = False
        self.log, self.name = log, name

    def write_now(self) -> None:
        self.log.append(f"write {self.name}")

    def kick(self) -> None:
        self.log.append(f"kick {self.name}")


def test_outside_a_block_the_task_is_woken_and_inside_each_writer_writes_once_at_the_end() -> None:
    eager, log = EagerWrites(), []
    a, b = Writer(log, "a"), Writer(log, "b")
    eager.want(a)
    assert log == ["kick a"]
    log.clear()
    with eager:
        eager.want(a)
        with eager:  # nested: only the outermost block writes
            eager.want(b)
            eager.want(a)
        assert log == []
    assert log == ["write a", "write b"]


def _socket_pair(sndbuf: int | None = None) -> tuple[trio.SocketStream, socket.socket]:
    ours, theirs = socket.socketpair()
    if sndbuf is not None:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    return trio.SocketStream(trio.socket.from_stdlib_socket(ours)), theirs


async def _read_frames(theirs: socket.socket, recv: CipherState, count: int) -> list[object]:
    sock = trio.socket.from_stdlib_socket(theirs)
    decoder, out = FrameDecoder(), []
    while len(out) < count:
        data = await sock.recv(65536)
        assert data, f"EOF after {len(out)} frames"
        decoder.feed(data)
        while (body := decoder.next_frame()) is not None:
            out.append(frames.decode(recv.decrypt(body)))
    return out


def _session(tmp_path: Path, stream: trio.abc.Stream) -> tuple[Session, bytes]:
    node = make_node(tmp_path, "alpha")
    peer = node.add_peer(Peer("beta", pubkey=os.urandom(32)))
    key = os.urandom(32)
    keys = TransportKeys(CipherState(key), CipherState(os.urandom(32)), b"")
    return Session(node, peer, stream, keys, FrameDecoder(), "alpha", outbound=True), key


async def test_acks_queued_in_a_block_are_written_at_its_end_without_the_writer_task(
    tmp_path: Path,
) -> None:
    stream, theirs = _socket_pair()
    session, key = _session(tmp_path, stream)  # its tasks are never started
    with session.node.eager:
        session.send_ack(Ack("one", True))
        session.send_ack(Ack("two", False, "inbox_full"))
        assert not session.mid_write
    got = await _read_frames(theirs, CipherState(key), 2)
    assert [f.ack for f in got] == [Ack("one", True), Ack("two", False, "inbox_full")]  # type: ignore[attr-defined]
    assert session.control_bytes == 0 and not session.pending


async def test_a_write_the_socket_takes_in_part_is_finished_by_the_writer_in_order(
    tmp_path: Path,
) -> None:
    stream, theirs = _socket_pair(sndbuf=4096)
    session, key = _session(tmp_path, stream)
    many = [Ack(f"id-{i:04d}-" + "x" * 200, True) for i in range(400)]  # ~90 KB of frames
    with session.node.eager:
        for ack in many:
            session.send_ack(ack)
    assert session.pending and session.mid_write  # the socket took only part of it
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session._writer)
        with session.node.eager:  # queued behind the rest: must not overtake it
            session.send_ack(Ack("last", True))
        got = await _read_frames(theirs, CipherState(key), len(many) + 1)
        nursery.cancel_scope.cancel()
    assert [f.ack for f in got] == [*many, Ack("last", True)]  # type: ignore[attr-defined]
    assert session.control_bytes == 0


async def test_no_bye_follows_a_partial_eager_write(tmp_path: Path) -> None:
    stream, theirs = _socket_pair(sndbuf=4096)
    session, key = _session(tmp_path, stream)
    theirs.setblocking(False)
    with session.node.eager:
        for i in range(400):
            session.send_ack(Ack(f"id-{i:04d}-" + "x" * 200, True))
    assert session.mid_write
    session.close("shutting down", bye="shutting down")
    with trio.move_on_after(2):
        await session.run()
    # everything the peer can read decrypts (a BYE with a later nonce after a cut frame would not)
    decoder, recv = FrameDecoder(), CipherState(key)
    data = b""
    try:
        while chunk := theirs.recv(1 << 20):
            data += chunk
    except BlockingIOError:
        pass
    decoder.feed(data)
    got = []
    while (body := decoder.next_frame()) is not None:
        got.append(frames.decode(recv.decrypt(body)))
    assert got and not any(isinstance(f, frames.Bye) for f in got)


async def test_ipc_lines_written_in_part_reach_the_client_whole_and_in_order() -> None:
    stream, theirs = _socket_pair(sndbuf=4096)
    eager = EagerWrites()
    conn = IpcConn(stream, eager=eager)
    lines = [b'{"n":%d,"pad":"%s"}\n' % (i, b"y" * 300) for i in range(300)]
    with eager:
        for i, line in enumerate(lines):
            conn.push_inbound(line, i + 1)
    assert conn.out and conn.mid_line  # part of a line is out: the rest must come first
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.writer)
        with eager:
            conn.send({"ok": True, "last": True})
        sock = trio.socket.from_stdlib_socket(theirs)
        data = b""
        while data.count(b"\n") < len(lines) + 1:
            data += await sock.recv(65536)
        nursery.cancel_scope.cancel()
    assert data == b"".join(lines) + b'{"ok":true,"last":true}\n'
    assert conn.live_lines == 0 and conn.live_bytes == 0 and conn.head == 0


async def test_store_jobs_reach_the_thread_when_the_loop_goes_idle_in_order(
    tmp_path: Path,
) -> None:
    db = Database(tmp_path / "acp.db")
    await db.open()
    db.hand_over_when_idle()
    order: list[str] = []
    done = trio.Event()
    db.submit(lambda conn: order.append("job 1"))
    db.submit(lambda conn: order.append("job 2"), lambda _: done.set())
    time.sleep(0.05)  # noqa: ASYNC251 - the loop is busy, so the thread has nothing yet
    assert order == []
    await done.wait()  # the loop waits: both go, in order
    assert order == ["job 1", "job 2"]
    db.submit(lambda conn: order.append("job 3"))
    await db.close()  # hands over what is held, then stops
    assert order == ["job 1", "job 2", "job 3"]
