"""A session ended while its writer is inside send_all sends no BYE after it.

The writer encrypts a batch (each frame takes the next nonce) before send_all. Cancelled there,
the frames may be half written or not written at all; a BYE encrypted afterwards would carry a
nonce the peer does not expect (or follow a partial frame), and the peer would report "message
failed authentication" (seen on a 40-host run when every daemon stopped at once).
"""

from __future__ import annotations

import os
from pathlib import Path

import trio
import trio.testing
from netkit import make_node

from acp.errors import DecryptError
from acp.net.peer import Peer, Session
from acp.proto import session as frames
from acp.proto.framing import FrameDecoder
from acp.proto.noise import CipherState, TransportKeys


async def _received(stream: trio.abc.ReceiveStream, recv: CipherState) -> list[object]:
    """Every frame the peer can read off the stream, until EOF; DecryptError if one fails."""
    decoder = FrameDecoder()
    out: list[object] = []
    while data := await stream.receive_some(65536):
        decoder.feed(data)
        while (body := decoder.next_frame()) is not None:
            out.append(frames.decode(recv.decrypt(body)))
    return out


async def test_no_bye_after_a_write_that_was_cut(tmp_path: Path) -> None:
    node = make_node(tmp_path, "alpha")
    peer = node.add_peer(Peer("beta", pubkey=os.urandom(32)))
    ours, theirs = trio.testing.lockstep_stream_pair()  # send_all waits for the reader
    k_out, k_in = os.urandom(32), os.urandom(32)
    keys = TransportKeys(CipherState(k_out), CipherState(k_in), b"")
    session = Session(node, peer, ours, keys, FrameDecoder(), "alpha", outbound=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)  # the initiator sends a PING at once: it blocks there
        await trio.testing.wait_all_tasks_blocked()
        assert session.mid_write
        session.close("shutting down", bye="shutting down")
    # the peer reads what there is: a frame never sent is no error, a bad BYE would be one
    try:
        got = await _received(theirs, CipherState(k_out))
    except DecryptError as exc:  # pragma: no cover - the bug this test is for
        raise AssertionError(f"the peer could not authenticate a frame: {exc}") from None
    assert not any(isinstance(f, frames.Bye) for f in got), got


async def test_a_bye_still_follows_a_write_that_completed(tmp_path: Path) -> None:
    node = make_node(tmp_path, "alpha")
    peer = node.add_peer(Peer("beta", pubkey=os.urandom(32)))
    ours, theirs = trio.testing.memory_stream_pair()
    k_out = os.urandom(32)
    keys = TransportKeys(CipherState(k_out), CipherState(os.urandom(32)), b"")
    session = Session(node, peer, ours, keys, FrameDecoder(), "alpha", outbound=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        await trio.testing.wait_all_tasks_blocked()
        assert not session.mid_write  # the PING went out whole
        session.close("shutting down", bye="shutting down")
    got = await _received(theirs, CipherState(k_out))
    assert isinstance(got[0], frames.Ping) and got[-1] == frames.Bye("shutting down")
