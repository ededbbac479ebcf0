"""Length-prefixed frames (docs/protocol.md §3): a 4-byte big-endian N, then N bytes, 1 <= N <= 65535.

Any other N is a protocol error raised as soon as the 4 prefix bytes are in, before any body byte
is buffered, so a peer cannot make us hold more than one frame's worth of memory.
"""

from __future__ import annotations

from acp.errors import FrameError

MAX_FRAME = 65535
HEADER = 4


def encode_frame(body: bytes) -> bytes:
    """Prefix ``body`` with its length; raise FrameError if it is empty or over 65535 bytes."""
    n = len(body)
    if not 1 <= n <= MAX_FRAME:
        raise FrameError(f"frame body of {n} bytes is outside 1..{MAX_FRAME}")
    return n.to_bytes(HEADER, "big") + body


class FrameDecoder:
    """Incremental decoder: ``feed()`` any chunks, then take frames with ``next_frame()``.

    After a FrameError the decoder is broken for good: the session must be closed.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._broken: FrameError | None = None

    def feed(self, data: bytes | bytearray) -> None:
        if self._broken is not None:
            raise self._broken
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos

    def next_frame(self) -> bytes | None:
        """Return the next whole frame body, or None if more bytes are needed."""
        if self._broken is not None:
            raise self._broken
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER:
            self._compact()
            return None
        n = int.from_bytes(buf[pos : pos + HEADER], "big")
        if not 1 <= n <= MAX_FRAME:
            self._broken = FrameError(f"frame length {n} is outside 1..{MAX_FRAME}")
            raise self._broken
        end = pos + HEADER + n
        if len(buf) < end:
            self._compact()
            return None
        body = bytes(buf[pos + HEADER : end])
        self._pos = end
        return body

    def frames(self) -> list[bytes]:
        """All whole frames now buffered."""
        out = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out

    def _compact(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
