"""``acp doctor``: what is wrong with this machine's acp, and what to do about it (issue #12).

A client of the daemon like every other command: it asks the daemon (``acp.client``) for
``status`` and ``peers`` and looks at what the daemon cannot see about itself from outside: file
modes in ACP_HOME, the interfaces it announces on, whether an mDNS query sent on each of them is
answered by our own daemon, whether its TCP port accepts connections on its addresses, its open
file descriptors, the clock.

How it is built: ``gather`` does all the I/O (IPC, files, /proc, /sys, sockets) and collects plain
facts; the ``check_*`` functions are pure functions of those facts, each returning ``Finding``s,
so that every verdict and every piece of advice can be tested with a made-up payload
(tests/test_doctor.py). Only the standard library and acp's light modules are imported here;
``ifaddr`` (the daemon's own view of the interfaces) is imported when the network checks run. The
multicast probe is a raw UDP socket speaking just enough DNS: a PTR question for
``_acp._tcp.local.`` sent from an ephemeral port, so that responders answer it by unicast
(RFC 6762 §6.7, "legacy unicast"), with IP_MULTICAST_LOOP so that our own daemon hears it.

What it cannot know, said plainly: the probe proves that multicast leaves and re-enters this host
on an interface and that our daemon answers there; it cannot prove that the LAN (a Wi-Fi access
point, a switch) carries it to the other machines. Answers from other daemons, when they come,
are reported as that evidence. The TCP check connects from this host, which a firewall may treat
differently from another machine.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import secrets
import select
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from acp import __version__
from acp.model import fingerprint
from acp.text import one_line, safe_json

Status = Literal["ok", "warn", "fail"]

SERVICE = "_acp._tcp.local."
MDNS_GROUP = "224.0.0.251"
MDNS_PORT = 5353
PROBE_WAIT = 2.0  # seconds the multicast probe waits for our daemon's answer
PROBE_RESEND = 0.7  # ... asking once more (another id: responders drop repeated packets) at this
PROBE_GRACE = 0.3  # once every interface has our answer, listen this much longer for the others
TCP_TIMEOUT = 2.0
IPC_TIMEOUT = 10.0
FD_WARN = 0.8  # open files above this share of the soft RLIMIT_NOFILE
CLOCK_EPOCH = 1704067200  # 2024-01-01T00:00:00Z: a wall clock before this is certainly wrong
CLOCK_SLACK = 120.0  # seconds the start time from the wall clock may differ from the uptime's
IFF_MULTICAST = 0x1000
# Names of interfaces on which mDNS rarely reaches another machine: container and VM bridges,
# virtual Ethernet pairs, tunnels and overlay VPNs.
SUSPECT_PREFIXES = ("docker", "br-", "veth", "virbr", "tun", "tap", "wg", "tailscale", "zt")

PEERS_HINT = "list peers in config.toml [[peers]] (see README)"
START_HINT = "start it: `acp daemon` (or `systemctl --user start acp`), then run `acp doctor` again"


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    message: str
    fix: str | None = None


def ok(check: str, message: str) -> Finding:
    return Finding(check, "ok", message)


def warn(check: str, message: str, fix: str) -> Finding:
    return Finding(check, "warn", message, fix)


def fail(check: str, message: str, fix: str) -> Finding:
    return Finding(check, "fail", message, fix)


# -- facts (what gather() collects) ----------------------------------------------------------------


@dataclass(frozen=True)
class FileFacts:
    """One path in ACP_HOME: ``mode`` None when it does not exist (``error`` says why)."""

    path: str
    mode: int | None = None
    readable: bool = False
    head: bytes = b""  # the first bytes, for the database
    error: str | None = None


@dataclass(frozen=True)
class IfaceFacts:
    """One IPv4 address of an interface, with the interface's flags and state from /sys."""

    name: str
    ip: str
    prefix: int
    flags: int | None = None  # /sys/class/net/NAME/flags; None when unreadable
    operstate: str = "unknown"

    @property
    def loopback(self) -> bool:
        return self.ip.startswith("127.")


@dataclass(frozen=True)
class Probe:
    """What the multicast probe on one address got: the packets (source ip, bytes) or an error."""

    iface: str
    ip: str
    replies: tuple[tuple[str, bytes], ...] = ()
    error: str | None = None


@dataclass
class Facts:
    home: str
    status: dict[str, Any] | None = None
    daemon_error: str | None = None
    daemon_code: str | None = None  # the AcpError code when status failed
    peers: list[dict[str, Any]] = field(default_factory=list)
    peers_error: str | None = None
    home_dir: FileFacts | None = None
    key: FileFacts | None = None
    db: FileFacts | None = None
    config_error: str | None = None
    wanted_interfaces: tuple[str, ...] = ()
    same_netns: bool | None = None
    ifaces: list[IfaceFacts] = field(default_factory=list)  # every IPv4 address of this host
    probes: list[Probe] = field(default_factory=list)
    tcp: dict[str, str | None] = field(default_factory=dict)  # "ip:port" -> None or the error
    fds: int | None = None
    fd_limit: int | None = None  # None: unlimited or unknown (see proc_error)
    proc_error: str | None = None
    now: float = 0.0
    started_wall: float | None = None  # the daemon's socket's mtime: its start, by the wall clock


# -- pure checks ------------------------------------------------------------------------------------


def check_daemon(facts: Facts, version: str = __version__) -> list[Finding]:
    st = facts.status
    if st is None:
        why = facts.daemon_error or "acp daemon is not running"
        if facts.daemon_code == "daemon_unavailable":
            return [fail("daemon", f"{why}; the checks that need it are skipped", START_HINT)]
        return [
            fail(
                "daemon",
                f"does not answer `status` as it should: {why}; the checks that need it are "
                "skipped",
                "see the daemon's log (journalctl --user -u acp); restart it "
                "(`systemctl --user restart acp`, or stop and start `acp daemon`)",
            )
        ]
    out = [
        ok(
            "daemon",
            f"running as {st.get('agent_id')} (pid {st.get('pid')}, acp {st.get('version')}, "
            f"up {_duration(st.get('uptime'))}, key {st.get('fingerprint')})",
        )
    ]
    if st.get("version") != version:
        out.append(
            warn(
                "version",
                f"the daemon runs acp {st.get('version')}, this command is acp {version}",
                "restart the daemon so that it runs the installed version",
            )
        )
    return out


def check_files(facts: Facts) -> list[Finding]:
    """ACP_HOME 0700, identity.key 0600 (the daemon refuses a key others can read), acp.db."""
    running = facts.status is not None
    out: list[Finding] = []
    d = facts.home_dir
    if d is not None:
        if d.mode is None:
            out.append(
                fail("ACP_HOME", f"{d.path}: {d.error}", "restart the daemon")
                if running
                else warn("ACP_HOME", f"{d.path} does not exist yet", "`acp daemon` creates it")
            )
        elif d.mode & 0o077:
            out.append(
                warn(
                    "ACP_HOME",
                    f"{d.path} is mode {d.mode:04o}: other users can list it",
                    f"chmod 700 {d.path}",
                )
            )
        else:
            out.append(ok("ACP_HOME", f"{d.path} is mode {d.mode:04o}"))
    k = facts.key
    if k is not None:
        if k.mode is None:
            out.append(
                fail(
                    "identity.key",
                    f"{k.path} is missing ({k.error}): the daemon runs with a key it can no "
                    "longer find, and makes a new one (a new identity) at its next start",
                    "restore identity.key from a backup before the daemon restarts; otherwise "
                    "peers will see a key change and need `acp trust` on their side",
                )
                if running
                else warn(
                    "identity.key",
                    f"{k.path} does not exist yet",
                    "`acp daemon` creates it at its first start",
                )
            )
        elif k.mode & 0o077:
            out.append(
                fail(
                    "identity.key",
                    f"{k.path} is mode {k.mode:04o}: group or others may read the private key "
                    "(the daemon refuses to start with it, exit 78)",
                    f"chmod 600 {k.path}",
                )
            )
        elif not k.readable:
            out.append(
                fail(
                    "identity.key",
                    f"{k.path} is not readable by this user ({k.error})",
                    "run the daemon (and acp doctor) as the user who owns ACP_HOME",
                )
            )
        else:
            out.append(ok("identity.key", f"mode {k.mode:04o}"))
    db = facts.db
    if db is not None:
        if db.mode is None:
            out.append(
                fail(
                    "acp.db",
                    f"{db.path} is missing ({db.error}) while the daemon runs",
                    "restart the daemon (what it had stored since is lost)",
                )
                if running
                else ok("acp.db", "not created yet (the daemon creates it at its first start)")
            )
        elif not db.readable:
            out.append(
                fail(
                    "acp.db",
                    f"{db.path} is not readable by this user ({db.error})",
                    f"chown it to the daemon's user and chmod 600 {db.path}",
                )
            )
        elif not db.head.startswith(b"SQLite format 3\0"):
            out.append(
                fail(
                    "acp.db",
                    f"{db.path} is not an SQLite database",
                    "move it aside and restart the daemon (it refuses a file it cannot read)",
                )
            )
        elif db.mode & 0o077:
            out.append(
                warn(
                    "acp.db",
                    f"{db.path} is mode {db.mode:04o}: others may read the stored messages",
                    f"chmod 600 {db.path}",
                )
            )
        else:
            out.append(ok("acp.db", f"readable SQLite database, mode {db.mode:04o}"))
    if facts.config_error is not None:
        out.append(
            fail(
                "config.toml",
                facts.config_error,
                "fix config.toml: the daemon refuses it at its next start (exit 78)",
            )
        )
    return out


def check_warnings(status: dict[str, Any]) -> list[Finding]:
    out = []
    for w in status.get("warnings") or []:
        text = str(w)
        if "advertises our agent_id" in text or "already advertises the mDNS name" in text:
            fix = "give one of the two daemons another agent_id (agent_id in config.toml)"
        else:
            fix = "see `acp status` and the daemon's log"
        out.append(warn("daemon warning", text, fix))
    return out


def check_mdns(status: dict[str, Any]) -> Finding:
    state = str(status.get("mdns", "unknown"))
    if state == "running":
        return ok("mdns", "running")
    if state == "off":
        return ok(
            "mdns",
            "off (mdns = false or --no-mdns): peers come only from [[peers]], "
            "`acp trust --addr` and the addresses remembered in acp.db",
        )
    if state.startswith("failed"):
        return fail(
            "mdns",
            state,
            "see the daemon's log (journalctl --user -u acp) and `interfaces` in config.toml; "
            f"until it works, {PEERS_HINT}",
        )
    return warn(
        "mdns",
        state,
        "run `acp doctor` again in a few seconds; if it stays so, see the daemon's log",
    )


def choose_interfaces(wanted: Sequence[str], available: Sequence[IfaceFacts]) -> list[IfaceFacts]:
    """The addresses the daemon announces on: as ``acp.net.discovery.choose_interfaces``
    (config ``interfaces``, names or addresses; else every non-loopback one not down; else
    loopback), repeated here so that this command need not import trio and zeroconf."""
    if wanted:
        return [i for i in available if i.name in wanted or i.ip in wanted]
    usable = [i for i in available if not i.loopback and i.operstate != "down"]
    return usable or [i for i in available if i.loopback]


def check_interfaces(wanted: Sequence[str], chosen: Sequence[IfaceFacts]) -> list[Finding]:
    if not chosen:
        what = f"none of config.toml `interfaces` {list(wanted)} has an IPv4 address here"
        return [
            fail(
                "interfaces",
                what if wanted else "no interface with an IPv4 address is up",
                "fix `interfaces` in config.toml (names or addresses, see `ip addr`)",
            )
        ]
    out = []
    seen: set[str] = set()
    for i in chosen:
        if i.name in seen:
            continue
        seen.add(i.name)
        ips = ", ".join(f"{j.ip}/{j.prefix}" for j in chosen if j.name == i.name)
        check = f"interface {i.name}"
        lower = i.name.lower()
        if i.loopback:
            out.append(
                warn(
                    check,
                    f"{ips}: the daemon announces only on loopback, so no other machine can "
                    "find or reach it",
                    "connect this machine to a network (or set `interfaces` in config.toml)",
                )
            )
        elif lower.startswith(SUSPECT_PREFIXES):
            out.append(
                warn(
                    check,
                    f"{ips}: a container, VM, tunnel or VPN interface, where mDNS rarely reaches "
                    "other machines",
                    "set `interfaces` in config.toml to the LAN interface; for peers only "
                    f"reachable through {i.name}, {PEERS_HINT}",
                )
            )
        elif i.flags is not None and not i.flags & IFF_MULTICAST:
            out.append(
                warn(
                    check,
                    f"{ips}: no MULTICAST flag, so mDNS cannot work on it",
                    f"`ip link set {i.name} multicast on`, or {PEERS_HINT}",
                )
            )
        else:
            state = "" if i.operstate in ("up", "unknown") else f", {i.operstate}"
            out.append(ok(check, f"{ips}{state}, multicast"))
    return out


# -- the multicast probe: a DNS query, and the answers ----------------------------------------------

_PTR, _TXT, _CLASS_IN = 12, 16, 1


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode()
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def mdns_query(qid: int) -> bytes:
    """One PTR question for _acp._tcp.local. (no known answers)."""
    return (
        struct.pack("!6H", qid, 0, 1, 0, 0, 0)
        + _encode_name(SERVICE)
        + struct.pack("!2H", _PTR, _CLASS_IN)
    )


def _read_name(data: bytes, off: int) -> tuple[str, int]:
    """A (possibly compressed) name at ``off``: (name, offset after it). ValueError if broken."""
    labels: list[str] = []
    end: int | None = None
    for _ in range(128):  # a bound on labels and pointers: no loop can keep us here
        if off >= len(data):
            raise ValueError("name runs past the packet")
        n = data[off]
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(data):
                raise ValueError("truncated pointer")
            if end is None:
                end = off + 2
            off = ((n & 0x3F) << 8) | data[off + 1]
            continue
        if n & 0xC0:
            raise ValueError("bad label")
        if n == 0:
            return ".".join(labels) + ".", (off + 1 if end is None else end)
        labels.append(data[off + 1 : off + 1 + n].decode("utf-8", "replace"))
        off += 1 + n
    raise ValueError("name too long, or a pointer loop")


def parse_answers(data: bytes) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The instances a DNS response points ``_acp._tcp.local.`` at, and the TXT of each name
    (answers and additionals alike). ValueError for what is not a well-formed response."""
    if len(data) < 12:
        raise ValueError("shorter than a DNS header")
    _id, flags, qd, an, ns, ar = struct.unpack("!6H", data[:12])
    if not flags & 0x8000:
        raise ValueError("a query, not a response")
    off = 12
    for _ in range(qd):
        _, off = _read_name(data, off)
        off += 4
    instances: list[str] = []
    txts: dict[str, dict[str, str]] = {}
    for _ in range(an + ns + ar):
        name, off = _read_name(data, off)
        if off + 10 > len(data):
            raise ValueError("truncated record")
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", data[off : off + 10])
        off += 10
        rdata_end = off + rdlen
        if rdata_end > len(data):
            raise ValueError("truncated record data")
        if rtype == _PTR and name.lower() == SERVICE:
            target, _ = _read_name(data, off)
            instances.append(target)
        elif rtype == _TXT:
            txt: dict[str, str] = {}
            p = off
            while p < rdata_end:
                n = data[p]
                key, _, value = data[p + 1 : p + 1 + n].decode("utf-8", "replace").partition("=")
                txt.setdefault(key.lower(), value)
                p += 1 + n
            txts[name.lower()] = txt
        off = rdata_end
    return instances, txts


@dataclass(frozen=True)
class ProbeVerdict:
    ours: bool
    others: dict[str, str]  # agent_id -> the public key it announces (base64)


def judge_replies(
    replies: Iterable[tuple[str, bytes]], agent_id: str, pubkey: str | None
) -> ProbeVerdict:
    """Did our daemon answer (its TXT carries our key; or, without a TXT, our instance name)?
    Which other acp daemons did, with which keys?"""
    ours = False
    others: dict[str, str] = {}
    own_name = f"{agent_id}.{SERVICE}".lower()
    for _src, packet in replies:
        try:
            instances, txts = parse_answers(packet)
        except (ValueError, IndexError):
            continue
        for instance in instances:
            txt = txts.get(instance.lower())
            if txt is None:
                ours = ours or instance.lower() == own_name
                continue
            key = txt.get("pubkey", "")
            if pubkey is not None and key == pubkey:
                ours = True
            elif txt.get("agent_id"):
                others[txt["agent_id"]] = key
    return ProbeVerdict(ours, others)


def check_multicast(probes: Sequence[Probe], agent_id: str, pubkey: str | None) -> list[Finding]:
    out = []
    names = [p.iface for p in probes]
    for p in probes:
        # one line per address the daemon announces; named by the interface when it has one
        check = f"multicast {p.iface}" + (f" {p.ip}" if names.count(p.iface) > 1 else "")
        verdict = judge_replies(p.replies, agent_id, pubkey)
        if verdict.ours:
            seen = sorted(verdict.others)
            also = (
                f"; {len(seen)} other acp daemon(s) answered too: {', '.join(seen)}" if seen else ""
            )
            out.append(
                ok(check, f"our daemon answered an mDNS query sent on {p.iface} ({p.ip}){also}")
            )
            continue
        why = (
            f"the query could not be sent ({p.error})"
            if p.error
            else f"our own daemon did not answer an mDNS query sent on {p.iface} ({p.ip}) "
            f"within {PROBE_WAIT:g} s"
        )
        if verdict.others:
            why += (
                f" (other daemons did: {', '.join(sorted(verdict.others))}; so the query left "
                "this host, and multicast coming in, or our daemon's socket, is what fails)"
            )
        out.append(
            fail(
                check,
                f"discovery is failing on {p.iface}: {why}",
                f"{PEERS_HINT}; or let mDNS through: UDP port 5353 to and from {MDNS_GROUP} "
                f"on {p.iface} (firewall rules, multicast filtering)",
            )
        )
    return out


def check_tcp(results: dict[str, str | None]) -> list[Finding]:
    out = []
    for addr, error in results.items():
        if error is None:
            out.append(ok(f"tcp {addr}", "accepts connections (tried from this host)"))
        else:
            out.append(
                fail(
                    f"tcp {addr}",
                    f"the daemon's port does not accept connections on this address of its "
                    f"interfaces, which peers dial: {error}",
                    "check `listen` in config.toml (it must include this address, or be "
                    "unset) and the firewall",
                )
            )
    return out


# -- peers ------------------------------------------------------------------------------------------


def _trust_fix(agent: str, announced_fp: str | None, key: str | None) -> str:
    if key is not None:
        return (
            f"check the fingerprint {announced_fp} with {agent}'s owner (`acp id` there), then "
            f"`acp trust {agent} {key}` to accept it, or `acp forget {agent}` to drop the peer"
        )
    return (
        f"check the fingerprint with {agent}'s owner (`acp id` there), then "
        f"`acp trust {agent} <key>` with the key `acp id` prints there, "
        f"or `acp forget {agent}` to drop the peer"
    )


def _announced_key(row: dict[str, Any], announced: dict[str, str]) -> str | None:
    """The full key behind ``announced_fingerprint``, if our probe heard it announced."""
    key = announced.get(str(row.get("id")))
    fp = row.get("announced_fingerprint")
    if key is None or fp is None:
        return None
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if fingerprint(raw) == fp else None


def _where(row: dict[str, Any]) -> str:
    addr, port = row.get("addr"), row.get("port")
    if not addr:
        return "no address"
    return f"[{addr}]:{port}" if ":" in str(addr) else f"{addr}:{port}"


def check_peers(
    rows: Sequence[dict[str, Any]],
    *,
    mdns: str = "running",
    announced: dict[str, str] | None = None,
) -> list[Finding]:
    """Per peer: connected, or why not, and what to do. ``announced``: agent_id -> key that the
    multicast probe heard, to spell out the `acp trust` command of a changed key in full."""
    announced = announced or {}
    if not rows:
        how = "mDNS found none" if mdns == "running" else "mDNS is not running"
        return [
            warn(
                "peers",
                f"no peers known ({how})",
                f"if another acp runs on this LAN, discovery does not reach it: {PEERS_HINT}",
            )
        ]
    out = []
    for row in rows:
        agent = one_line(str(row.get("id")), 80)
        check = f"peer {agent}"
        state = str(row.get("status"))
        where = _where(row)
        error = one_line(str(row.get("last_error") or ""), 200)
        queued = int(row.get("queued") or 0)
        q = f"; {queued} envelope(s) queued for it" if queued else ""
        afp = row.get("announced_fingerprint")
        if state == "connected":
            rtt = row.get("rtt_ms")
            detail = f"{where}, via {row.get('source')}" + (f", rtt {rtt:.1f} ms" if rtt else "")
            if afp:
                out.append(
                    warn(
                        check,
                        f"connected ({detail}) with the pinned key {row.get('fingerprint')}, but "
                        f"another key {afp} is announced for {agent}: a reinstalled {agent}, or "
                        "an impostor",
                        _trust_fix(agent, afp, _announced_key(row, announced)),
                    )
                )
            else:
                out.append(ok(check, f"connected ({detail})"))
        elif state == "key_changed":
            out.append(
                fail(
                    check,
                    f"key_changed: {agent} announces the key {afp}, but "
                    f"{row.get('fingerprint')} is pinned; not dialled{q}",
                    _trust_fix(agent, afp, _announced_key(row, announced)),
                )
            )
        elif state == "refused":
            key = _announced_key(row, announced)
            out.append(
                warn(
                    check,
                    f'refused: trust = "explicit" and its key {afp} is not pinned',
                    f"check the fingerprint with {agent}'s owner (`acp id` there), then "
                    f"`acp trust {agent} {key or '<key>'}`",
                )
            )
        elif state == "backoff":
            wait = row.get("next_try_in")
            when = f", next try in {wait:.0f} s" if isinstance(wait, int | float) else ""
            out.append(
                warn(
                    check,
                    f"not connected (backoff{when}); last error: {error or 'none'}{q}",
                    _backoff_fix(agent, where, error, row.get("port")),
                )
            )
        elif state == "stale":
            out.append(
                warn(
                    check,
                    f"stale: no session and no mDNS answer for 60 s (last at {where}){q}",
                    f"if {agent} is running, discovery does not reach it: {PEERS_HINT}; "
                    f"if it is gone for good, `acp forget {agent}`",
                )
            )
        elif state == "idle":
            out.append(
                warn(
                    check,
                    f"no address known for it{q}",
                    f"`acp trust {agent} <key> --addr HOST:PORT`, or {PEERS_HINT}",
                )
            )
        elif state == "waiting":
            out.append(
                warn(
                    check,
                    f"waiting for {agent} to dial ({where}; the lower agent_id dials first, "
                    "we dial after 10 s)",
                    "run `acp doctor` again in 10 s; if it stays so, check that this host's "
                    "TCP port is reachable from there",
                )
            )
        else:  # discovered, connecting, or a state newer than this command
            extra = f"; last error: {error}" if error else ""
            out.append(
                warn(
                    check,
                    f"{state} ({where}){extra}{q}",
                    "run `acp doctor` again in a few seconds",
                )
            )
    return out


def _backoff_fix(agent: str, where: str, error: str, port: Any) -> str:
    low = error.lower()
    if "refused" in low and "handshake" not in low:
        return f"nothing listens at {where}: check that acp runs on {agent} (and on that port)"
    if any(w in low for w in ("timed out", "timeout", "unreachable", "no route")):
        return (
            f"{where} is not reachable from here: check the network and the firewall on "
            f"{agent} (TCP port {port}); if {agent} moved, give its address in [[peers]]"
        )
    return (
        f"check that acp runs on {agent} and that {where} is reachable from here "
        f"(TCP port {port}); `acp peers` shows the retries, its log shows the other side"
    )


# -- the daemon process: files and clock ----------------------------------------------------------


def check_fds(facts: Facts) -> list[Finding]:
    if facts.proc_error is not None:
        return [
            warn(
                "open files",
                f"cannot read the daemon's /proc entry: {facts.proc_error}",
                "run `acp doctor` as the daemon's user, on its machine",
            )
        ]
    if facts.fds is None:
        return []
    if facts.fd_limit is None:
        return [ok("open files", f"{facts.fds} (no limit)")]
    share = facts.fds / facts.fd_limit if facts.fd_limit else 1.0
    text = f"{facts.fds} of {facts.fd_limit} ({share:.0%})"
    if share > FD_WARN:
        return [
            warn(
                "open files",
                f"{text}: near the soft limit; new sessions and clients will fail past it",
                "raise the limit: LimitNOFILE= in the systemd unit, or `ulimit -n` before "
                "`acp daemon`; then restart it",
            )
        ]
    return [ok("open files", text)]


def check_clock(
    now: float, uptime: float | None, started_wall: float | None, rows: Sequence[dict[str, Any]]
) -> list[Finding]:
    """The only clocks this host can compare: the wall clock with 2024, the wall-clock time the
    daemon started at (its socket's mtime) with ``now - uptime``, and peers' ``last_seen`` (stored
    by the wall clock) with now. Peers' clocks are not visible here."""
    fix = "set the clock and keep it set: `timedatectl set-ntp true` (or any NTP client)"
    if now < CLOCK_EPOCH:
        return [
            warn(
                "clock",
                f"the wall clock says {time.strftime('%Y-%m-%d', time.gmtime(now))}: before 2024, "
                "so it is wrong, and so are the timestamps the daemon gives envelopes",
                fix,
            )
        ]
    if started_wall is not None and uptime is not None:
        drift = (now - uptime) - started_wall  # < 0: the clock went back since the start
        if drift < -CLOCK_SLACK:
            return [
                warn(
                    "clock",
                    f"the wall clock went back about {-drift:.0f} s since the daemon started "
                    f"(its uptime is {_duration(uptime)})",
                    fix,
                )
            ]
    future = [
        (str(r.get("id")), float(r["last_seen"]))
        for r in rows
        if isinstance(r.get("last_seen"), int | float) and r["last_seen"] > now + CLOCK_SLACK
    ]
    if future:
        agent, seen = max(future, key=lambda x: x[1])
        return [
            warn(
                "clock",
                f"peer {one_line(agent, 80)} was last seen {seen - now:.0f} s in the future: "
                "the wall clock went back",
                fix,
            )
        ]
    return [ok("clock", "the wall clock agrees with the daemon's uptime")]


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    s = float(seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} days"


def check_netns(same: bool | None, pid: Any) -> list[Finding]:
    if same is False:
        return [
            warn(
                "network",
                f"the daemon (pid {pid}) runs in another network namespace than this command: "
                "the interface, multicast and TCP checks are skipped",
                f"run it in the daemon's namespace: `nsenter -t {pid} -n acp doctor` "
                "(or `ip netns exec NAME acp doctor`)",
            )
        ]
    return []


def diagnose(facts: Facts) -> list[Finding]:
    """Every finding, in the order they are printed."""
    out = check_daemon(facts)
    out += check_files(facts)
    st = facts.status
    if st is None:
        return out
    out += check_warnings(st)
    out.append(check_mdns(st))
    out += check_netns(facts.same_netns, st.get("pid"))
    announced: dict[str, str] = {}
    if facts.same_netns is not False:
        chosen = choose_interfaces(facts.wanted_interfaces, facts.ifaces)
        out += check_interfaces(facts.wanted_interfaces, chosen)
        out += check_multicast(facts.probes, str(st.get("agent_id")), st.get("pubkey"))
        for p in facts.probes:
            announced.update(
                judge_replies(p.replies, str(st.get("agent_id")), st.get("pubkey")).others
            )
        out += check_tcp(facts.tcp)
    if facts.peers_error is not None:
        out.append(
            fail(
                "peers",
                f"the daemon did not list its peers: {facts.peers_error}",
                "see the daemon's log; restart it",
            )
        )
    else:
        out += check_peers(facts.peers, mdns=str(st.get("mdns")), announced=announced)
    out += check_fds(facts)
    out += check_clock(facts.now, st.get("uptime"), facts.started_wall, facts.peers)
    return out


# -- the edge: gathering facts --------------------------------------------------------------------


def _file_facts(path: Path, *, head: int = 0) -> FileFacts:
    try:
        st_mode = path.stat().st_mode
    except OSError as exc:
        return FileFacts(str(path), error=exc.strerror or str(exc))
    mode = stat.S_IMODE(st_mode)
    if stat.S_ISDIR(st_mode):
        return FileFacts(str(path), mode, readable=os.access(path, os.R_OK | os.X_OK))
    try:
        with path.open("rb") as f:
            data = f.read(head)
    except OSError as exc:
        return FileFacts(str(path), mode, readable=False, error=exc.strerror or str(exc))
    return FileFacts(str(path), mode, readable=True, head=data)


def _read_flags(name: str) -> int | None:
    try:
        return int(Path(f"/sys/class/net/{name}/flags").read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def _operstate(name: str) -> str:
    try:
        return Path(f"/sys/class/net/{name}/operstate").read_text().strip()
    except OSError:
        return "unknown"


def list_ifaces() -> list[IfaceFacts]:
    """Every IPv4 address of this host, as the daemon sees them (ifaddr), with /sys facts."""
    import ifaddr

    out = []
    for adapter in ifaddr.get_adapters():
        v4 = [ip for ip in adapter.ips if isinstance(ip.ip, str)]
        if v4:  # /sys once per interface, not once per address
            name = adapter.nice_name
            flags, state = _read_flags(name), _operstate(name)
            out += [IfaceFacts(name, str(ip.ip), ip.network_prefix, flags, state) for ip in v4]
    return out


def probe_multicast(
    ifaces: Sequence[IfaceFacts],
    is_ours: Callable[[bytes], bool],
    *,
    wait: float = PROBE_WAIT,
) -> list[Probe]:
    """Send our PTR query on each address and collect what answers, until every address has our
    daemon's answer (plus PROBE_GRACE for the others) or ``wait`` runs out."""
    socks: dict[socket.socket, IfaceFacts] = {}
    errors: dict[str, str] = {}
    replies: dict[str, list[tuple[str, bytes]]] = {i.ip: [] for i in ifaces}
    answered: set[str] = set()

    def send(sock: socket.socket, iface: IfaceFacts) -> None:
        try:
            sock.sendto(mdns_query(secrets.randbits(16) | 1), (MDNS_GROUP, MDNS_PORT))
        except OSError as exc:
            errors[iface.ip] = f"{exc.strerror or exc}"

    try:
        for i in ifaces:
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            except OSError as exc:
                errors[i.ip] = exc.strerror or str(exc)
                continue
            socks[s] = i
            try:
                s.bind((i.ip, 0))
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(i.ip))
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
            except OSError as exc:
                errors[i.ip] = exc.strerror or str(exc)
                continue
            send(s, i)
        start = time.monotonic()
        deadline = start + wait
        resent = False
        while True:
            now = time.monotonic()
            live = [s for s, i in socks.items() if i.ip not in errors]
            if not live or now >= deadline:
                break
            if not resent and now - start >= PROBE_RESEND:
                resent = True
                for s in live:
                    if socks[s].ip not in answered:
                        send(s, socks[s])
            if all(socks[s].ip in answered for s in live):
                deadline = min(deadline, now + PROBE_GRACE)
            timeout = min(deadline, start + PROBE_RESEND) if not resent else deadline
            ready, _, _ = select.select(live, [], [], max(0.0, timeout - now))
            for s in ready:
                try:
                    data, (src, _port) = s.recvfrom(9000)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.ECONNREFUSED):
                        errors[socks[s].ip] = exc.strerror or str(exc)
                    continue
                ip = socks[s].ip
                replies[ip].append((src, data))
                if is_ours(data):
                    answered.add(ip)
    finally:
        for s in socks:
            s.close()
    return [
        Probe(
            i.name,
            i.ip,
            tuple(replies[i.ip]),
            None if i.ip in answered else errors.get(i.ip),
        )
        for i in ifaces
    ]


def probe_tcp(addrs: Iterable[tuple[str, int]]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for host, port in addrs:
        key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            with socket.create_connection((host, port), timeout=TCP_TIMEOUT):
                out[key] = None
        except OSError as exc:
            out[key] = exc.strerror or str(exc) or type(exc).__name__
    return out


def _proc_facts(pid: int) -> tuple[int | None, int | None, str | None]:
    """(open fds, soft RLIMIT_NOFILE or None if unlimited, error) of ``pid``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError as exc:
        return None, None, f"/proc/{pid}: {exc.strerror or exc} (another PID namespace?)"
    if b"acp" not in cmdline:
        return None, None, f"pid {pid} is not an acp process here (another PID namespace?)"
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        limits = Path(f"/proc/{pid}/limits").read_text()
    except OSError as exc:
        return None, None, f"/proc/{pid}: {exc.strerror or exc}"
    return fds, parse_nofile(limits), None


def parse_nofile(limits: str) -> int | None:
    """The soft "Max open files" of a /proc/PID/limits text; None when unlimited or absent."""
    for line in limits.splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files") :].split()[0]
            return int(soft) if soft.isdigit() else None
    return None


def _same_netns(pid: int) -> bool | None:
    try:
        return os.readlink("/proc/self/ns/net") == os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def gather(home: Path | None = None, *, probe_wait: float = PROBE_WAIT) -> Facts:
    from acp.client import Client, default_home
    from acp.errors import AcpError

    home = home or default_home()
    facts = Facts(home=str(home), now=time.time())
    client = Client(home)
    try:
        facts.status = client.request("status", read_timeout=IPC_TIMEOUT)
    except AcpError as exc:
        facts.daemon_error = exc.message.split("; start it")[0]  # the fix says how
        facts.daemon_code = exc.code
    else:
        try:
            facts.peers = list(client.request("peers", read_timeout=IPC_TIMEOUT)["peers"])
        except AcpError as exc:
            facts.peers_error = exc.message
    finally:
        client.close()
    st = facts.status
    if st is not None and st.get("home"):
        home = Path(st["home"])
        facts.home = str(home)
    facts.home_dir = _file_facts(home)
    facts.key = _file_facts(home / "identity.key", head=1)
    facts.db = _file_facts(
        Path(st["database"]) if st and st.get("database") else home / "acp.db", head=16
    )
    try:
        from acp.config import Config

        facts.wanted_interfaces = Config.load(home).interfaces
    except AcpError as exc:
        facts.config_error = exc.message
    if st is None:
        return facts
    pid = st.get("pid")
    if isinstance(pid, int):
        facts.same_netns = _same_netns(pid)
        facts.fds, facts.fd_limit, facts.proc_error = _proc_facts(pid)
    try:
        facts.started_wall = (home / "acp.sock").stat().st_mtime
    except OSError:
        facts.started_wall = None
    if facts.same_netns is False:
        return facts
    facts.ifaces = list_ifaces()
    chosen = choose_interfaces(facts.wanted_interfaces, facts.ifaces)
    if st.get("mdns") == "running" and chosen:
        agent_id, pubkey = str(st.get("agent_id")), st.get("pubkey")

        def is_ours(packet: bytes) -> bool:
            return judge_replies([("", packet)], agent_id, pubkey).ours

        facts.probes = probe_multicast(chosen, is_ours, wait=probe_wait)
    port = st.get("port")
    addresses = st.get("addresses") or [i.ip for i in chosen]  # a daemon that reports them wins
    if isinstance(port, int):
        facts.tcp = probe_tcp((str(a), port) for a in addresses)
    return facts


# -- output -----------------------------------------------------------------------------------------


def render(findings: Sequence[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"{f.status:<4}  {one_line(f.check, 100)}: {one_line(f.message, 600)}")
        if f.status != "ok" and f.fix:
            lines.append(f"  fix: {one_line(f.fix, 600)}")
    return "\n".join(lines)


def exit_code(findings: Iterable[Finding]) -> int:
    return 1 if any(f.status == "fail" for f in findings) else 0


def run(*, as_json: bool = False, home: Path | None = None) -> int:
    findings = diagnose(gather(home))
    if as_json:
        print(safe_json([asdict(f) for f in findings]))
    else:
        print(render(findings))
    return exit_code(findings)
