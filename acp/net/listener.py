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
from acp.proto.admission import source_of
from acp.text import one_line

log = logging.getLogger(__name__)

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
    await trio.serve_listeners(partial(_handle, node), listeners, task_status=task_status)  # type: ignore[arg-type]


def _note(node: Node, level: int, source: str, kind: str, msg: str, *args: object) -> None:
    """Log what a remote side caused: one line per source and kind per minute (lograte.py)."""
    node.log_limiter.log(log, level, (source, kind), msg, *args)


async def _handle(node: Node, stream: trio.SocketStream) -> None:
    """One accepted connection, for its whole life. Never raises."""
    addr = _peer(stream)  # now: once the connection is reset, getpeername fails
    source = source_of(addr.rpartition(":")[0].strip("[]"))
    scope = trio.CancelScope()
    slot = node.admission.admit(source, trio.current_time(), scope.cancel)
    if slot is None:
        node.stats.inc("handshakes_refused.busy")
        _note(node, logging.INFO, source, "busy", "connection from %s refused: too many "
              "handshakes in progress from %s", addr, source)  # fmt: skip
        await stream.aclose()
        return
    session = None
    try:
        try:
            with scope, trio.fail_after(node.admission.deadline()):
                session = await handshake.answer(node, stream, slot)
        finally:
            node.admission.release(slot)
        if scope.cancelled_caught:
            node.stats.inc("handshakes_refused.evicted")
            _note(node, logging.INFO, source, "evicted", "connection from %s: no message 1 "
                  "yet, closed to make room for a newer handshake", addr)  # fmt: skip
    except trio.TooSlowError:
        node.stats.inc("handshakes_refused.timeout")
        _note(node, logging.INFO, source, "timeout", "incoming connection from %s: no "
              "handshake in time", addr)  # fmt: skip
    except hs.Refused as exc:
        node.stats.inc(f"handshakes_refused.{exc.reason}")
        _note(node, logging.WARNING, source, exc.reason, "refused connection from %s: %s",
              addr, one_line(str(exc), 200))  # fmt: skip
    except handshake.EmptyConnection:
        node.stats.inc("handshakes_refused.empty")
        log.debug("connection from %s closed before sending anything", addr)
    except (HandshakeError, ProtocolError) as exc:
        node.stats.inc("handshakes_refused.bad_handshake")
        _note(node, logging.WARNING, source, "bad", "refused connection from %s: %s",
              addr, one_line(str(exc), 200))  # fmt: skip
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        node.stats.inc("handshakes_refused.connection_lost")
        _note(node, logging.INFO, source, "lost", "incoming connection from %s lost during "
              "the handshake: %s", addr, one_line(str(exc), 200))  # fmt: skip
    except Exception:
        log.exception("incoming connection from %s: unexpected error in the handshake", addr)
    if session is None:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        return
    node.stats.inc("sessions_inbound")
    try:
        reason = await session.run()
        node.session_over(session)
        log.debug("peer %s: inbound session over: %s", session.peer.agent_id, reason)
    except Exception:
        log.exception("peer %s: unexpected error in its session", session.peer.agent_id)


def _peer(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
    except (OSError, AttributeError):
        return "?:?"
    host = addr[0][7:] if addr[0].startswith("::ffff:") else addr[0]
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
