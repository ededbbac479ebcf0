"""Write at the end of a read, not one scheduler pass later.

Each stream has one writer task (the only caller of ``send_all``). Waking it costs a pass of trio's
scheduler (and, with nothing else runnable, an ``epoll_wait``): on the way of one envelope through
a daemon that happened twice, once for the frame to the peer and once for the push to the client,
and a profile of the latency loop put most of the daemon's time there (docs/performance.md).

So the places that read (a session's reader, an IPC connection's reader, the store's commit
callbacks) run inside ``with eager:``; a writer that gets something to send meanwhile is only
noted, and when the outermost block ends each noted writer tries one non-blocking ``write`` of
everything it has queued, right there. What the socket does not take (or all of it, when the
writer task is inside ``send_all``) is left for the writer task, which is woken as before. Outside
such a block ``want`` wakes the writer task at once, as before. What is queued while one read is
handled still goes out in one write, so throughput keeps its batches.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol

log = logging.getLogger(__name__)


class EagerWriter(Protocol):
    eager_noted: bool  # in ``EagerWrites``' list already

    def write_now(self) -> None:
        """Write what is queued without blocking; leave the rest to the writer task (woken)."""

    def kick(self) -> None:
        """Wake the writer task."""


class EagerWrites:
    """The writers with something queued since the outermost ``with`` began (one per daemon)."""

    __slots__ = ("_depth", "_noted")

    def __init__(self) -> None:
        self._depth = 0
        self._noted: list[EagerWriter] = []

    def want(self, writer: EagerWriter) -> None:
        """``writer`` has something to send: at the end of this block, or now by its task."""
        if not self._depth:
            writer.kick()
        elif not writer.eager_noted:
            writer.eager_noted = True
            self._noted.append(writer)

    def __enter__(self) -> None:
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if not self._depth:
            while self._noted:
                noted, self._noted = self._noted, []
                for writer in noted:
                    writer.eager_noted = False
                for writer in noted:
                    try:
                        writer.write_now()
                    except Exception:  # a bug here must not end the read (or the daemon)
                        log.exception("eager write failed; left to the writer task")
                        writer.kick()


def socket_of(stream: object) -> Any:
    """The socket under a trio SocketStream, whose ``fileno()`` an eager write uses; None for
    other streams (memory streams, trio's fake network in tests): those always use the task."""
    sock = getattr(stream, "socket", None)
    return sock if callable(getattr(sock, "fileno", None)) else None


def write_some(fd: int, data: bytes) -> int:
    """Bytes of ``data`` a non-blocking socket took at once (0 if none; an error is the writer
    task's to meet: it sends the rest with ``send_all``, which raises it)."""
    try:
        return os.write(fd, data)
    except OSError:  # BlockingIOError (full), or closed: the writer task finds out
        return 0
