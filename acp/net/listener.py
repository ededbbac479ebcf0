"""The TCP accept loop: each connection runs the responder handshake, then its session.

A connection that fails the handshake (garbage, wrong key, replay, too slow) is closed without an
answer, logged and counted; nothing it does reaches another peer's session.
"""

from __future__ import annotations

import errno
import logging
from functools import partial

import trio

from acp.errors import ConfigError, HandshakeError, ProtocolError
from acp.net import handshake
from acp.net.node import Node
from acp.proto import handshake as hs
from acp.text import one_line

log = logging.getLogger(__name__)

MAX_PENDING_HANDSHAKES = 64  # connections in the handshake at once; more are closed at once
MAX_PENDING_PER_HOST = 8  # ... from one address, so one host cannot take every slot


async def open_listeners(hosts: tuple[str, ...], port: int) -> list[trio.SocketListener]:
    """Bind every host (default: all IPv4 and IPv6) on one port; port 0 picks one for all."""
    targets = list(hosts) or ["0.0.0.0", "::"]
    listeners: list[trio.SocketListener] = []
    for host in targets:
        try:
            listeners += await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            if not hosts and host == "::" and listeners:
                continue  # no IPv6 here: IPv4 is enough for the default
            for lst in listeners:
                await lst.aclose()
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"TCP port {port} on {host} is in use: another acp daemon, or set `port` in "
                    "config.toml / --port (0 picks a free one)"
                ) from exc
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        if port == 0:
            port = listeners[0].socket.getsockname()[1]
    return listeners


async def serve(
    node: Node,
    listeners: list[trio.SocketListener],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    limiter = trio.CapacityLimiter(MAX_PENDING_HANDSHAKES)
    await trio.serve_listeners(partial(_handle, node, limiter), listeners, task_status=task_status)  # type: ignore[arg-type]


async def _handle(node: Node, limiter: trio.CapacityLimiter, stream: trio.SocketStream) -> None:
    """One accepted connection, for its whole life. Never raises."""
    host = _peer(stream).rpartition(":")[0]
    pending = node.handshakes_by_host
    if pending.get(host, 0) >= MAX_PENDING_PER_HOST:
        node.stats.inc("handshakes_refused.busy")
        await stream.aclose()
        return
    try:
        limiter.acquire_nowait()
    except trio.WouldBlock:
        node.stats.inc("handshakes_refused.busy")
        await stream.aclose()
        return
    pending[host] = pending.get(host, 0) + 1
    session = None
    try:
        try:
            with trio.fail_after(hs.HANDSHAKE_TIMEOUT):
                session = await handshake.answer(node, stream)
        finally:
            limiter.release()
            pending[host] -= 1
            if not pending[host]:
                del pending[host]
    except trio.TooSlowError:
        node.stats.inc("handshakes_refused.timeout")
        log.info(
            "incoming connection from %s: no handshake within %.0f s",
            _peer(stream),
            hs.HANDSHAKE_TIMEOUT,
        )
    except hs.Refused as exc:
        node.stats.inc(f"handshakes_refused.{exc.reason}")
        log.warning("refused connection from %s: %s", _peer(stream), one_line(str(exc), 200))
    except handshake.EmptyConnection:
        node.stats.inc("handshakes_refused.empty")
        log.debug("connection from %s closed before sending anything", _peer(stream))
    except (HandshakeError, ProtocolError) as exc:
        node.stats.inc("handshakes_refused.bad_handshake")
        log.warning("refused connection from %s: %s", _peer(stream), one_line(str(exc), 200))
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        node.stats.inc("handshakes_refused.connection_lost")
        log.info(
            "incoming connection from %s lost during the handshake: %s",
            _peer(stream),
            one_line(str(exc), 200),
        )
    except Exception:
        log.exception(
            "incoming connection from %s: unexpected error in the handshake", _peer(stream)
        )
    if session is None:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        return
    node.stats.inc("sessions_inbound")
    try:
        reason = await session.run()
        log.debug("peer %s: inbound session over: %s", session.peer.agent_id, reason)
    except Exception:
        log.exception("peer %s: unexpected error in its session", session.peer.agent_id)


def _peer(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
        return f"{addr[0]}:{addr[1]}"
    except (OSError, AttributeError):
        return "?:?"
