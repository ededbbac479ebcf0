"""``acp daemon``: the nursery tree that supervises everything, and clean shutdown.

run_daemon            root nursery; SIGTERM/SIGINT -> cancel, with BYE to peers
├─ ipc_server.serve   listening on acp.sock before anything is advertised
├─ listener.serve     TCP accept loop -> responder handshakes -> inbound sessions
├─ peers.run          one supervisor per peer: dial, session, backoff
├─ discovery.run      mDNS (the slot; off with --no-mdns / mdns = false)
├─ expiry             outbox TTL sweep and inbox_full retries, once a second
├─ housekeeping       peer rows written every 5 s, read inbox items pruned every minute
├─ hooks.run          one task per [[hooks]] entry: wake agents (acp/hooks/, docs/hooks.md)
└─ stats.run          the periodic stats line

Beside the tree, the store's thread (acp/store.py) owns acp.db; it is opened before anything
listens and closed after everything has stopped, once the jobs still queued are committed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket

import trio
import trio_util

from acp.config import Config, ensure_home
from acp.identity import load_identity
from acp.net import listener, stats
from acp.net.ipc_server import DaemonLock, IpcServer, open_ipc_listener
from acp.net.node import OUTBOX_WRITE_DELAY, Node
from acp.net.peers import PeerManager
from acp.store import DB_NAME, LEGACY_PEERS, Database

log = logging.getLogger(__name__)

EXPIRY_INTERVAL = 1.0
STORE_FLUSH_INTERVAL = 5.0
PRUNE_EVERY = 12  # flushes: read inbox items are pruned once a minute


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) we are ready; a no-op outside systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.send(state.encode())
    except OSError:
        pass


def raise_open_files_limit() -> None:
    """One descriptor per peer session and client: lift the soft limit (often 1024) to the hard
    one, as far as 65536, so that a crowd of peers is refused by max_sessions, not by EMFILE."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d: %s", soft, exc)


async def _expiry(node: Node) -> None:
    async for _ in trio_util.periodic(EXPIRY_INTERVAL):
        node.expire()


async def _housekeeping(node: Node) -> None:
    n = 0
    async for _ in trio_util.periodic(STORE_FLUSH_INTERVAL):
        node.save_peers()
        n += 1
        if n % PRUNE_EVERY == 1:
            node.prune()


async def _signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s: shutting down", signal.Signals(signum).name)
            scope.cancel()
            return


async def run_daemon(
    config: Config, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until SIGINT/SIGTERM (or cancellation); raise AcpError if it cannot start."""
    ensure_home(config.home)
    raise_open_files_limit()
    lock = DaemonLock(config.home)
    lock.acquire()
    ipc_listener = None
    db = Database(config.home / DB_NAME, durability=config.durability)
    try:
        identity = await trio.to_thread.run_sync(load_identity, config.home)  # may write it
        loaded = await db.open(legacy_peers=config.home / LEGACY_PEERS)
        if loaded.imported_peers:
            log.info("store: imported %d peer(s) from %s", loaded.imported_peers, LEGACY_PEERS)
        node = Node(config, identity, db, loaded.peers)
        manager = PeerManager(node)
        manager.load_known()
        node.restore(loaded)  # after the peer table: queued envelopes go to those peers
        hooks = None
        if config.hooks:
            from acp.hooks.runner import Hooks

            hooks = Hooks(node, config.hooks, os.environ)  # ConfigError: a secret is not set
            await hooks.open()  # after restore: what each hook still owes is unread
        # Bind before the nursery: a ConfigError (port in use) must reach the CLI bare, not
        # wrapped in an ExceptionGroup that prints as a traceback.
        ipc_listener = await open_ipc_listener(config.socket_path)
        tcp = await listener.open_listeners(config.listen, config.port)
        node.port = tcp[0].socket.getsockname()[1]
        with trio.CancelScope() as root:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_signals, root)
                await nursery.start(IpcServer(node).serve, ipc_listener)
                await nursery.start(listener.serve, node, tcp)
                await nursery.start(manager.run)
                if config.mdns:
                    from acp.net import discovery

                    await nursery.start(discovery.run, node)
                nursery.start_soon(_expiry, node)
                node.outbox_write_delay = OUTBOX_WRITE_DELAY
                nursery.start_soon(node.write_outbox_rows_when_due)
                nursery.start_soon(_housekeeping, node)
                if hooks is not None:
                    await nursery.start(hooks.run)
                await nursery.start(stats.run, node.stats, config.stats_interval)
                log.info(
                    "acp daemon %s listening on port %s, IPC %s, key %s",
                    node.agent_id,
                    node.port,
                    config.socket_path,
                    identity.fingerprint,
                )
                sd_notify("READY=1")
                task_status.started(node)
        sd_notify("STOPPING=1")
        node.save_peers()
    finally:
        with trio.CancelScope(shield=True):
            await db.close()
        if ipc_listener is not None:
            try:
                config.socket_path.unlink()
            except OSError:
                pass
        lock.release()
