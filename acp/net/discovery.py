"""mDNS/DNS-SD discovery (docs/protocol.md §2): advertise ``<agent_id>._acp._tcp.local.``, find the others.

Why this module looks the way it does: python-zeroconf runs its own thread and asyncio loop. This is
the only module that touches them. Blocking calls go through ``trio.to_thread``; browser callbacks
re-enter trio with ``TrioToken.run_sync_soon`` and a bounded channel, dropping (and counting) events
when it is full, since mDNS repeats itself. A crash in here is logged and the whole thing restarted
with backoff by ``run``; sessions, static peers and the peers.json cache never depend on it.

Facts measured on network-namespace LANs (docs/architecture.md) that shape it:
- a SIGKILLed peer stays in zeroconf's cache for ~19 min, so liveness comes from sessions (PING),
  and a peer is "stale" only when it is neither refreshed by mDNS nor connected for 60 s;
- a restart with the same TXT and port raises no browser event, so we advertise ``boot=<random>``;
- after a partition heals, browsers stay quiet for a long time, so every ``QUERY_INTERVAL`` we send
  one PTR query whose known answers are the peers we are connected to (they stay silent; the
  missing ones answer), plus at once when a session is lost or an interface changes;
- ``unregister_all_services()`` sends all three goodbyes (``unregister_service`` + ``close`` one).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
from pathlib import Path
from typing import Any

import attrs
import ifaddr
import trio
import zeroconf
from zeroconf import IPVersion, ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf.const import _CLASS_IN, _FLAGS_QR_QUERY, _TYPE_PTR, _TYPE_SRV, _TYPE_TXT

from acp.errors import ConfigError
from acp.model import decode_key, is_agent_id
from acp.net.node import Node
from acp.net.peer import Peer
from acp.proto.backoff import Backoff
from acp.text import one_line

log = logging.getLogger(__name__)

SERVICE_TYPE = "_acp._tcp.local."
QUERY_INTERVAL = 10.0  # seconds between our PTR queries (one packet per host)
ANSWER_WAIT = 0.5  # seconds from our query to reading the answers from the cache
IFACE_POLL = 3.0  # seconds between interface checks
STALE_AFTER = 60.0  # docs/protocol.md §2
EVENT_QUEUE = 256
RESOLVE_TIMEOUT_MS = 1500
GOODBYE_GRACE = 2.0
RESTART_BACKOFF_CAP = 60.0
DIAL_REQUERY_GAP = 5.0  # seconds between re-queries caused by failed dials
MAX_NAMES = 4096  # mDNS instance names remembered


@attrs.frozen
class Announcement:
    """What one peer's DNS-SD records say, validated."""

    name: str
    agent_id: str
    pubkey: bytes = attrs.field(repr=False)
    port: int
    addresses: tuple[str, ...]
    boot: str | None

    @classmethod
    def from_info(cls, info: ServiceInfo) -> Announcement | None:
        props: dict[bytes, bytes | None] = info.properties or {}
        agent_id = (props.get(b"agent_id") or b"").decode("utf-8", "replace")
        if props.get(b"v") not in (b"1", None) or not is_agent_id(agent_id):
            return None
        try:
            pubkey = decode_key((props.get(b"pubkey") or b"").decode("ascii", "replace"))
        except ConfigError:
            return None
        if not info.port:
            return None
        boot = props.get(b"boot")
        return cls(
            name=info.name,
            agent_id=agent_id,
            pubkey=pubkey,
            port=int(info.port),
            addresses=tuple(info.parsed_scoped_addresses()),
            boot=boot.decode("ascii", "replace") if boot else None,
        )


def host_name(public_key: bytes) -> str:
    """The SRV target: unique per key, so two daemons that claim one agent_id do not merge their
    A records in everyone's cache, and one DNS label (<= 63 bytes) whatever the agent_id's length
    (``<agent_id>-acp`` was 67 bytes for a 63-character agent_id: registration failed for ever)."""
    return f"acp-{hashlib.sha256(public_key).hexdigest()[:12]}.local."


# -- interfaces ------------------------------------------------------------------------------------


@attrs.frozen
class Iface:
    name: str
    ip: str
    prefix: int

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(f"{self.ip}/{self.prefix}", strict=False)


def _operstate(name: str) -> str:
    try:
        return Path(f"/sys/class/net/{name}/operstate").read_text().strip()
    except OSError:
        return "unknown"


def list_interfaces() -> list[Iface]:
    """IPv4 addresses of interfaces that are up (IPv6 link-local is left out)."""
    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                continue
            out.append(Iface(adapter.nice_name, ip.ip, ip.network_prefix))
    return out


def choose_interfaces(wanted: tuple[str, ...], available: list[Iface]) -> list[Iface]:
    """Config ``interfaces`` (names or addresses), or every non-loopback one, or loopback alone."""
    if wanted:
        chosen = [i for i in available if i.name in wanted or i.ip in wanted]
        missing = [w for w in wanted if not any(w in (i.name, i.ip) for i in available)]
        if missing:
            log.warning(
                "interfaces %s not found (or without IPv4); have %s",
                missing,
                sorted({i.name for i in available}),
            )
        return chosen
    usable = [
        i
        for i in available
        if not ipaddress.ip_address(i.ip).is_loopback and _operstate(i.name) != "down"
    ]
    return usable or [i for i in available if ipaddress.ip_address(i.ip).is_loopback]


def interface_state(ifaces: list[Iface]) -> tuple[Any, ...]:
    """What we compare to notice a change: addresses and carrier."""
    return tuple(sorted((i.name, i.ip, i.prefix, _operstate(i.name)) for i in ifaces))


def pick_address(addresses: tuple[str, ...], ours: list[Iface]) -> str | None:
    """The announced address to dial: one on a subnet we share, else the first IPv4, else any."""
    parsed = []
    for a in addresses:
        try:
            parsed.append(ipaddress.ip_address(a.split("%")[0]))
        except ValueError:
            continue
    for addr in parsed:
        if any(addr in i.network for i in ours if i.network.version == addr.version):
            return str(addr)
    for addr in parsed:
        if addr.version == 4:
            return str(addr)
    return str(parsed[0]) if parsed else None


# -- the trio side ---------------------------------------------------------------------------------


class Discovery:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.boot = secrets.token_hex(4)
        self.zc: Zeroconf | None = None
        self.info: ServiceInfo | None = None
        self.ifaces: list[Iface] = []
        self.names: dict[str, str] = {}  # instance name -> agent_id
        self.query_now = trio.Event()
        self.record_times: dict[str, float] = {}  # instance name -> its SRV record's arrival (ms)
        self.last_dial_requery = -DIAL_REQUERY_GAP
        self.conflicts: set[tuple[str, bytes]] = set()

    # Called from zeroconf's thread.
    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        try:
            self._token.run_sync_soon(self._deliver, (name, state_change))
        except trio.RunFinishedError:
            pass

    # Runs in trio; must never raise (it would crash the run).
    def _deliver(self, event: tuple[str, ServiceStateChange]) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.node.stats.inc("mdns_events_dropped")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _service_info(self) -> ServiceInfo:
        node = self.node
        assert node.port is not None
        return ServiceInfo(
            SERVICE_TYPE,
            f"{node.agent_id}.{SERVICE_TYPE}",
            port=node.port,
            properties={
                "v": "1",
                "agent_id": node.agent_id,
                "pubkey": node.identity.public_b64,
                "boot": self.boot,
            },
            server=host_name(node.identity.public_key),
            parsed_addresses=[i.ip for i in self.ifaces],
        )

    async def run_once(self, task_status: trio.TaskStatus[None]) -> None:
        node = self.node
        self._token = trio.lowlevel.current_trio_token()
        self._send, receive = trio.open_memory_channel[tuple[str, ServiceStateChange]](EVENT_QUEUE)
        self.ifaces = choose_interfaces(node.config.interfaces, list_interfaces())
        if not self.ifaces:
            raise ConfigError(
                "no usable network interface for mDNS (see `interfaces` in config.toml)"
            )
        version = IPVersion.V4Only
        node.mdns_state = "starting"
        zc = await trio.to_thread.run_sync(
            lambda: Zeroconf(interfaces=[i.ip for i in self.ifaces], ip_version=version)
        )
        self.zc = zc
        try:
            # Browse first: probing only concerns our own records, and finding the others need
            # not wait the ~1.65 s it takes.
            browser = zeroconf.ServiceBrowser(zc, SERVICE_TYPE, handlers=[self._on_change])
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._consume, receive)
                    self.info = info = self._service_info()
                    # RFC 6762 probing; the signal handler is already installed.
                    await trio.to_thread.run_sync(
                        lambda: zc.register_service(info, allow_name_change=True),
                        abandon_on_cancel=True,
                    )
                    if info.name != f"{node.agent_id}.{SERVICE_TYPE}":
                        self._warn(
                            f"another host already advertises the mDNS name {node.agent_id}; "
                            f"we advertise as {info.name!r}"
                        )
                    node.mdns_state = "running"
                    log.info(
                        "mDNS: advertising %s on %s",
                        info.name,
                        ", ".join(i.ip for i in self.ifaces),
                    )
                    task_status.started()
                    nursery.start_soon(self._query_loop)
                    nursery.start_soon(self._watch_interfaces)
                    nursery.start_soon(self._watch_sessions)
                    node.on_dial_failed = self._dial_failed
            finally:
                # shielded: when we are being cancelled, to_thread would return without running it
                with trio.CancelScope(shield=True), trio.move_on_after(GOODBYE_GRACE):
                    await trio.to_thread.run_sync(browser.cancel, abandon_on_cancel=True)
        finally:
            node.on_dial_failed = None
            node.mdns_state = "stopped"
            with trio.CancelScope(shield=True), trio.move_on_after(GOODBYE_GRACE):
                await trio.to_thread.run_sync(_close, zc, abandon_on_cancel=True)
            self.zc = None

    # -- tasks -------------------------------------------------------------------------------------

    async def _consume(
        self, receive: trio.MemoryReceiveChannel[tuple[str, ServiceStateChange]]
    ) -> None:
        async for name, change in receive:
            if change is ServiceStateChange.Removed:
                agent_id = self.names.get(name)
                if agent_id is not None:
                    self.node.mdns_gone(agent_id)
                continue
            zc = self.zc
            assert zc is not None
            info = await trio.to_thread.run_sync(
                zc.get_service_info, SERVICE_TYPE, name, RESOLVE_TIMEOUT_MS, abandon_on_cancel=True
            )
            if info is not None:
                self._seen(info, fresh=True)

    def _seen(self, info: ServiceInfo, *, fresh: bool) -> None:
        """``fresh``: the peer itself answered or announced just now (not only our cache)."""
        ann = Announcement.from_info(info)
        if ann is None:
            self.node.stats.inc("mdns_bad_records")
            return
        node = self.node
        if len(self.names) >= MAX_NAMES and ann.name not in self.names:
            # hostile or huge LANs: forget the oldest instance names rather than grow for ever
            for old in list(self.names)[: MAX_NAMES // 4]:
                del self.names[old]
                self.record_times.pop(old, None)
        self.names[ann.name] = ann.agent_id
        if ann.agent_id == node.agent_id:
            if (
                ann.pubkey != node.identity.public_key
                and (ann.name, ann.pubkey) not in self.conflicts
            ):
                if len(self.conflicts) >= MAX_NAMES:
                    self.conflicts.clear()
                self.conflicts.add((ann.name, ann.pubkey))
                at = ", ".join(ann.addresses[:4]) + (", …" if len(ann.addresses) > 4 else "")
                self._warn(
                    f"another daemon advertises our agent_id {node.agent_id!r} with a different "
                    "key, so peers will refuse one of us: give each daemon its own name "
                    '(`agent_id = "NAME"` in config.toml, or `acp daemon --agent-id NAME`); '
                    f"it is at {at or '?'}"
                )
            return
        host = pick_address(ann.addresses, self.ifaces)
        if host is None:
            return
        node.discovered(ann.agent_id, ann.pubkey, host, ann.port, boot=ann.boot, fresh=fresh)

    def _warn(self, message: str) -> None:
        log.warning("mDNS: %s", one_line(message, 300))
        self.node.warn(message)

    async def _query_loop(self) -> None:
        """Every QUERY_INTERVAL (or when asked): query, then sync the peer table from the cache."""
        while True:
            with trio.move_on_after(QUERY_INTERVAL):
                await self.query_now.wait()
            self.query_now = trio.Event()
            zc = self.zc
            assert zc is not None
            connected = {p.agent_id for p in self.node.peers.values() if p.connected}
            await trio.to_thread.run_sync(_send_queries, zc, connected, self.names)
            await trio.sleep(
                ANSWER_WAIT
            )  # responders wait 20-120 ms (RFC 6762 §6) before answering
            try:
                found = await trio.to_thread.run_sync(_scan_cache, zc)
            except RuntimeError:  # zeroconf changed its cache under our read: next time
                self.node.stats.inc("mdns_scan_retries")
                found = []
            for info, created in found:
                # a record newer than the last one we saw: the peer answered our query
                fresh = created > self.record_times.get(info.name, created)
                self.record_times[info.name] = created
                self._seen(info, fresh=fresh)
            self.node.expire_stale(STALE_AFTER)

    async def _watch_interfaces(self) -> None:
        state = interface_state(self.ifaces)
        while True:
            await trio.sleep(IFACE_POLL)
            ifaces = choose_interfaces(
                self.node.config.interfaces, await trio.to_thread.run_sync(list_interfaces)
            )
            new_state = interface_state(ifaces)
            if new_state == state:
                continue
            state = new_state
            log.info(
                "mDNS: interfaces changed: %s",
                ", ".join(f"{n} {ip} {s}" for n, ip, _, s in new_state),
            )
            if {i.ip for i in ifaces} != {i.ip for i in self.ifaces}:
                raise _Restart("interface addresses changed")  # new sockets and records
            zc, info = self.zc, self.info
            if zc is not None and info is not None:
                await trio.to_thread.run_sync(
                    zc.update_service, info
                )  # re-announce on carrier back
            for peer in self.node.peers.values():
                if not peer.connected:
                    peer.poke()
            self.query_now.set()

    def _dial_failed(self, peer: Peer) -> None:
        """A dial to a peer that mDNS told us about failed: perhaps it moved. Ask, at most every
        DIAL_REQUERY_GAP seconds, so a dead peer in backoff costs no more than the periodic query."""
        now = trio.current_time()
        if peer.source == "mdns" and now - self.last_dial_requery >= DIAL_REQUERY_GAP:
            self.last_dial_requery = now
            self.query_now.set()

    async def _watch_sessions(self) -> None:
        """A lost session asks mDNS at once whether the peer moved."""
        connected = {p.agent_id for p in self.node.peers.values() if p.connected}
        while True:
            await self.node.sessions_changed.wait()
            now = {p.agent_id for p in self.node.peers.values() if p.connected}
            if connected - now:
                self.query_now.set()
            connected = now


class _Restart(Exception):
    pass


def _leaf(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception that is not a group: a failure inside run_once's own nursery arrives
    nested two groups deep, and `acp status` should show it, not "ExceptionGroup(...)"."""
    exc: BaseException = eg
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _close(zc: Zeroconf) -> None:
    try:
        zc.unregister_all_services()  # all three goodbyes
    finally:
        zc.close()


def _pointers(zc: Zeroconf, now: float) -> list[Any]:
    return [
        r
        for r in zc.cache.get_all_by_details(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN)
        if not r.is_expired(now)
    ]


def _send_queries(zc: Zeroconf, connected: set[str], names: dict[str, str]) -> None:
    """In a worker thread: one PTR query, whose known answers are the peers we have sessions
    with (so only the missing ones answer), plus SRV/TXT questions for known missing instances."""
    from zeroconf import DNSOutgoing, DNSQuestion, current_time_millis  # type: ignore[attr-defined]

    now = current_time_millis()
    pointers = _pointers(zc, now)
    out = DNSOutgoing(_FLAGS_QR_QUERY, multicast=True)
    out.add_question(DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
    for ptr in pointers:
        if names.get(ptr.alias) in connected:
            out.add_answer_at_time(ptr, now)  # known answer: that one need not reply
    zc.send(out)
    missing = [ptr.alias for ptr in pointers if names.get(ptr.alias) not in connected][:20]
    if missing:
        q = DNSOutgoing(_FLAGS_QR_QUERY, multicast=True)
        for name in missing:
            q.add_question(DNSQuestion(name, _TYPE_SRV, _CLASS_IN))
            q.add_question(DNSQuestion(name, _TYPE_TXT, _CLASS_IN))
        zc.send(q)


def _scan_cache(zc: Zeroconf) -> list[tuple[ServiceInfo, float]]:
    """In a worker thread: every live instance in the cache, with its SRV record's arrival time."""
    from zeroconf import current_time_millis

    now = current_time_millis()
    infos = []
    for ptr in _pointers(zc, now):
        srv = zc.cache.get_by_details(ptr.alias, _TYPE_SRV, _CLASS_IN)
        if srv is None or srv.is_expired(now):
            continue
        info = ServiceInfo(SERVICE_TYPE, ptr.alias)
        if info.load_from_cache(zc, now):
            infos.append((info, float(srv.created)))
    return infos


async def run(node: Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Supervise discovery for the daemon's lifetime: a failure is logged, then retried with backoff."""
    task_status.started()  # messaging never waits for mDNS
    backoff = Backoff(first=2.0, cap=RESTART_BACKOFF_CAP)
    while True:
        disc = Discovery(node)
        started = trio.current_time()
        restart = False
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(disc.run_once)
        except* _Restart as eg:
            log.info("mDNS: restarting: %s", _leaf(eg))
            restart = True
        except* Exception as eg:
            exc = _leaf(eg)
            node.mdns_state = f"failed: {exc!r}"[:200]
            node.stats.inc("mdns_failures")
            log.error(
                "mDNS discovery failed (%r); messaging goes on; retrying",
                exc,
                exc_info=exc if log.isEnabledFor(logging.DEBUG) else None,
            )
        if restart or trio.current_time() - started > 60:
            backoff.reset()
        if not restart:
            await trio.sleep(backoff.next())


__all__ = ["SERVICE_TYPE", "Announcement", "Discovery", "run"]
