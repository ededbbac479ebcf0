"""Length-prefixed frames (docs/protocol.md §3) under any chunking, and garbage in."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acp.errors import FrameError
from acp.proto.framing import HEADER, MAX_FRAME, FrameDecoder, encode_frame


def reference(data: bytes) -> tuple[list[bytes], bool, int]:
    """Frames in ``data``, whether a bad length was met, and the bytes left over."""
    frames: list[bytes] = []
    pos = 0
    while len(data) - pos >= HEADER:
        (n,) = struct.unpack(">I", data[pos : pos + HEADER])
        if not 1 <= n <= MAX_FRAME:
            return frames, True, 0
        if len(data) - pos - HEADER < n:
            break
        frames.append(data[pos + HEADER : pos + HEADER + n])
        pos += HEADER + n
    return frames, False, len(data) - pos


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def run(chunks: list[bytes], takes: list[int] | None = None) -> tuple[list[bytes], bool, int]:
    """Feed chunks one by one; stop at the first FrameError.

    After each chunk take every whole frame, or, with ``takes``, at most ``takes[i]`` of them (a
    caller may leave frames buffered while it feeds more); all that is left is taken at the end.
    """
    dec = FrameDecoder()
    frames: list[bytes] = []
    try:
        for i, chunk in enumerate(chunks):
            dec.feed(chunk)
            limit = None if takes is None else takes[i % len(takes)]
            while limit is None or limit > 0:
                if (frame := dec.next_frame()) is None:
                    break
                frames.append(frame)
                limit = None if limit is None else limit - 1
        while (frame := dec.next_frame()) is not None:
            frames.append(frame)
    except FrameError:
        return frames, True, 0
    return frames, False, dec.buffered


bodies = st.lists(st.binary(min_size=1, max_size=300), max_size=8)


def test_encode_frame_prefix() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"x" * MAX_FRAME)[:4] == b"\x00\x00\xff\xff"


@pytest.mark.parametrize("size", [0, MAX_FRAME + 1, 100_000])
def test_encode_frame_refuses_bad_sizes(size: int) -> None:
    with pytest.raises(FrameError):
        encode_frame(b"x" * size)


def test_whole_byte_by_byte_and_trailing() -> None:
    data = encode_frame(b"one") + encode_frame(b"two!") + encode_frame(b"\x00" * 70)
    trailing = encode_frame(b"partial frame")[:7]
    dec = FrameDecoder()
    dec.feed(data + trailing)
    assert dec.frames() == [b"one", b"two!", b"\x00" * 70]
    assert dec.buffered == 7
    assert dec.next_frame() is None

    dec = FrameDecoder()
    got = []
    for i in range(len(data + trailing)):
        dec.feed((data + trailing)[i : i + 1])
        got.extend(dec.frames())
    assert got == [b"one", b"two!", b"\x00" * 70]
    assert dec.buffered == 7
    dec.feed(encode_frame(b"partial frame")[7:])
    assert dec.next_frame() == b"partial frame"
    assert dec.next_frame() is None

    # Frames left in the decoder while more is fed are not lost.
    dec = FrameDecoder()
    dec.feed(encode_frame(b"a") + encode_frame(b"b") + encode_frame(b"c")[:2])
    assert dec.next_frame() == b"a"
    dec.feed(encode_frame(b"c")[2:])
    assert dec.frames() == [b"b", b"c"]
    assert dec.next_frame() is None
    assert dec.buffered == 0


@pytest.mark.parametrize("n", [0, MAX_FRAME + 1, 2**32 - 1])
def test_bad_length_raises_as_soon_as_header_is_in(n: int) -> None:
    dec = FrameDecoder()
    dec.feed(encode_frame(b"ok"))
    assert dec.next_frame() == b"ok"
    header = n.to_bytes(4, "big")
    for b in header[:3]:
        dec.feed(bytes([b]))
        assert dec.next_frame() is None
    dec.feed(header[3:])
    with pytest.raises(FrameError):
        dec.next_frame()
    # Broken for good: no body byte is ever accepted or buffered.
    with pytest.raises(FrameError):
        dec.feed(b"\x00" * 10)
    with pytest.raises(FrameError):
        dec.next_frame()


def test_bad_length_header_alone_fails_without_body() -> None:
    dec = FrameDecoder()
    dec.feed(b"\x00\x00\x00\x00")
    with pytest.raises(FrameError):
        dec.next_frame()
    dec = FrameDecoder()
    dec.feed(b"\x00\x01\x00\x00")  # 65536
    with pytest.raises(FrameError):
        dec.next_frame()


def test_max_length_frame_is_accepted_in_pieces() -> None:
    body = bytes(range(256)) * 255 + b"\xff" * 255
    assert len(body) == MAX_FRAME
    wire = encode_frame(body)
    dec = FrameDecoder()
    dec.feed(wire[:4])
    assert dec.next_frame() is None
    dec.feed(wire[4:30000])
    assert dec.next_frame() is None
    dec.feed(wire[30000:])
    assert dec.next_frame() == body


@given(body=st.integers(1, MAX_FRAME).flatmap(lambda n: st.binary(min_size=n, max_size=n)))
@settings(max_examples=40, deadline=None)
def test_round_trip_any_size(body: bytes) -> None:
    dec = FrameDecoder()
    dec.feed(encode_frame(body))
    assert dec.next_frame() == body
    assert dec.next_frame() is None
    assert dec.buffered == 0


@given(
    bodies=bodies,
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
    tail=st.integers(0, 50),
    takes=st.none() | st.lists(st.integers(0, 2), min_size=1, max_size=5),
)
@settings(max_examples=300, deadline=None)
def test_round_trip_under_any_chunking(
    bodies: list[bytes], cuts: list[int], tail: int, takes: list[int] | None
) -> None:
    extra = encode_frame(b"x" * 60)
    trailing = extra[: tail % len(extra)]
    data = b"".join(encode_frame(b) for b in bodies) + trailing
    frames, broken, left = run(chunked(data, cuts), takes)
    assert not broken
    assert frames == bodies
    assert left == len(trailing)


@given(bodies=bodies)
@settings(max_examples=100, deadline=None)
def test_round_trip_byte_by_byte(bodies: list[bytes]) -> None:
    data = b"".join(encode_frame(b) for b in bodies)
    frames, broken, left = run([data[i : i + 1] for i in range(len(data))])
    assert (frames, broken, left) == (bodies, False, 0)


def garbage_with_frames() -> st.SearchStrategy[bytes]:
    piece = st.one_of(
        st.binary(max_size=20),
        st.binary(min_size=1, max_size=50).map(encode_frame),
        st.integers(0, 2**32 - 1).map(lambda n: n.to_bytes(4, "big")),
    )
    return st.lists(piece, max_size=8).map(b"".join)


@given(
    data=garbage_with_frames(),
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
    takes=st.none() | st.lists(st.integers(0, 2), min_size=1, max_size=5),
)
@settings(max_examples=400, deadline=None)
def test_garbage_gives_frames_or_frame_error(
    data: bytes, cuts: list[int], takes: list[int] | None
) -> None:
    """Any bytes, any chunking: the frames a reference decoder finds, or FrameError; nothing else."""
    assert run(chunked(data, cuts), takes) == reference(data)
    assert run([data]) == reference(data)
