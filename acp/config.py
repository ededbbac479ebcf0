"""ACP_HOME and config.toml -> a frozen Config (docs/protocol.md §1, §2, §8).

Precedence for every setting: command line, then environment (``ACP_AGENT_ID``), then
config.toml, then the default. A broken file is a ConfigError naming the file and the problem.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from acp.errors import ConfigError
from acp.hooks.spec import HookSpec, parse_hooks
from acp.model import agent_id_from_hostname, check_agent_id, decode_key, setting
from acp.proto.card import AgentCard
from acp.proto.delivery import OUTBOX_LIMIT, OUTBOX_TTL
from acp.proto.handshake import TRUST_POLICIES
from acp.proto.inbox import INBOX_LIMIT

DEFAULT_PORT = 7100
KEEP_READ = 3600.0  # seconds read envelopes are kept (at least the 600 s dedupe window)
KEEP_READ_COUNT = 20_000
MAX_PINS = 1024  # keys pinned on first contact (tofu) kept at most; the oldest unproven go first
MAX_SESSIONS = 256  # sessions with peers at once (a pinned peer's handshake is never refused)
DURABILITY = ("normal", "full")
CONFIG_NAME = "config.toml"
SOCKET_NAME = "acp.sock"


def acp_home(env: Mapping[str, str] | None = None) -> Path:
    """ACP_HOME, default ``~/.acp``."""
    env = os.environ if env is None else env
    home = env.get("ACP_HOME")
    return Path(home).expanduser() if home else Path.home() / ".acp"


def socket_path(home: Path) -> Path:
    return home / SOCKET_NAME


_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")  # `_`: container names have it


def _is_host(host: str) -> bool:
    """An IP address, or a host name of letters, digits, `-` and `_` (no spaces, no controls)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(_LABEL.match(label) for label in labels)


def split_hostport(addr: str, *, what: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port_s = addr.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{what}: {addr!r} is not host:port (IPv6 as [addr]:port)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ConfigError(f"{what}: {host!r} is not an IPv6 address") from exc
    elif ":" in host:
        raise ConfigError(f"{what}: write IPv6 addresses as [addr]:port, not {addr!r}")
    elif not _is_host(host):
        raise ConfigError(f"{what}: {host!r} is not an IP address or a host name")
    try:
        port = int(port_s)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what}: port {port_s!r} is not 1..65535")
    return host, port


@attrs.frozen
class StaticPeer:
    """A ``[[peers]]`` entry: dialled whether or not mDNS sees it."""

    agent_id: str
    host: str
    port: int
    pubkey: bytes = attrs.field(repr=False)

    @classmethod
    def from_toml(cls, data: object, where: str) -> StaticPeer:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: each [[peers]] entry must be a table")
        unknown = set(data) - {"agent_id", "addr", "pubkey"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("agent_id", "addr", "pubkey"):
            if key not in data:
                raise ConfigError(f"{where}: missing {key}")
        agent_id = check_agent_id(data["agent_id"], what=f"{where} agent_id")
        if not isinstance(data["addr"], str):
            raise ConfigError(f"{where}: addr must be a string host:port")
        host, port = split_hostport(data["addr"], what=f"{where} addr")
        return cls(agent_id, host, port, decode_key(data["pubkey"], what=f"{where} pubkey"))


@attrs.frozen
class Config:
    home: Path
    agent_id: str
    port: int = DEFAULT_PORT
    listen: tuple[str, ...] = ()  # empty: all interfaces
    trust: str = "tofu"
    peers: tuple[StaticPeer, ...] = ()
    mdns: bool = True
    interfaces: tuple[str, ...] = ()
    inbox_limit: int = INBOX_LIMIT
    inbox_per_sender: int | None = None  # default: half of inbox_limit
    durability: str = "normal"  # normal: survives a killed daemon; full: also power loss
    keep_read: float = KEEP_READ  # seconds a read envelope is kept
    keep_read_count: int = KEEP_READ_COUNT  # read envelopes kept at most
    outbox_limit: int = OUTBOX_LIMIT
    outbox_ttl: float = OUTBOX_TTL
    stats_interval: float = 300.0
    max_pins: int = MAX_PINS
    max_sessions: int = MAX_SESSIONS
    agent: AgentCard | None = None  # [agent]: this daemon's card, sent to peers
    hooks: tuple[HookSpec, ...] = ()  # [[hooks]]: whom to wake when an envelope is stored

    @property
    def socket_path(self) -> Path:
        return socket_path(self.home)

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_NAME

    @classmethod
    def load(
        cls,
        home: Path | None = None,
        *,
        agent_id: str | None = None,
        port: int | None = None,
        mdns: bool | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Config:
        """Read ``home/config.toml`` (optional) and apply environment and command-line overrides."""
        env = os.environ if env is None else env
        home = acp_home(env) if home is None else home
        path = home / CONFIG_NAME
        data: dict[str, Any] = {}
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            pass
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # TOML must be UTF-8
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        return cls.from_toml(
            data, home=home, path=path, agent_id=agent_id, port=port, mdns=mdns, env=env
        )

    @classmethod
    def from_toml(
        cls,
        data: Mapping[str, Any],
        *,
        home: Path,
        path: Path | str = CONFIG_NAME,
        agent_id: str | None = None,
        port: int | None = None,
        mdns: bool | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Config:
        env = {} if env is None else env
        known = {f.name for f in attrs.fields(cls)} - {"home"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"{path}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )

        def typed(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
            return setting(data, key, kind, default, str(path))

        chosen_id = agent_id or env.get("ACP_AGENT_ID") or typed("agent_id", str, None)
        chosen_id = check_agent_id(chosen_id) if chosen_id else agent_id_from_hostname()
        chosen_port = port if port is not None else typed("port", int, DEFAULT_PORT)
        if not 0 <= chosen_port <= 65535:
            raise ConfigError(f"{path}: port {chosen_port} is not 0..65535 (0 = any free port)")
        listen = typed("listen", list, [])
        if not all(isinstance(x, str) for x in listen):
            raise ConfigError(f"{path}: listen must be a list of addresses")
        for addr in listen:
            try:
                ipaddress.ip_address(addr)
            except ValueError as exc:
                raise ConfigError(f"{path}: listen address {addr!r} is not an IP address") from exc
        trust = typed("trust", str, "tofu")
        if trust not in TRUST_POLICIES:
            raise ConfigError(
                f"{path}: trust must be one of {', '.join(TRUST_POLICIES)}, not {trust!r}"
            )
        raw_peers = typed("peers", list, [])
        peers = tuple(
            StaticPeer.from_toml(p, f"{path} [[peers]] #{i + 1}") for i, p in enumerate(raw_peers)
        )
        ids = [p.agent_id for p in peers]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{path}: an agent_id appears twice in [[peers]]")
        interfaces = typed("interfaces", list, [])
        if not all(isinstance(x, str) for x in interfaces):
            raise ConfigError(f"{path}: interfaces must be a list of names or addresses")

        def positive(key: str, default: Any, kind: type | tuple[type, ...] = int) -> Any:
            value = typed(key, kind, default)
            if not value > 0:  # also refuses nan, which TOML allows
                raise ConfigError(f"{path}: {key} must be above 0")
            return value

        inbox_limit = positive("inbox_limit", INBOX_LIMIT)
        per_sender = typed("inbox_per_sender", int, None)
        if per_sender is not None and not 1 <= per_sender <= inbox_limit:
            raise ConfigError(f"{path}: inbox_per_sender must be 1..inbox_limit ({inbox_limit})")
        durability = typed("durability", str, "normal")
        if durability not in DURABILITY:
            raise ConfigError(
                f"{path}: durability must be one of {', '.join(DURABILITY)}, not {durability!r}"
            )
        return cls(
            home=home,
            agent_id=chosen_id,
            port=chosen_port,
            listen=tuple(listen),
            trust=trust,
            peers=peers,
            mdns=mdns if mdns is not None else typed("mdns", bool, True),
            interfaces=tuple(interfaces),
            inbox_limit=inbox_limit,
            inbox_per_sender=per_sender,
            durability=durability,
            keep_read=float(positive("keep_read", KEEP_READ, (int, float))),
            keep_read_count=positive("keep_read_count", KEEP_READ_COUNT),
            outbox_limit=positive("outbox_limit", OUTBOX_LIMIT),
            outbox_ttl=float(positive("outbox_ttl", OUTBOX_TTL, (int, float))),
            stats_interval=float(positive("stats_interval", 300.0, (int, float))),
            max_pins=positive("max_pins", MAX_PINS),
            max_sessions=positive("max_sessions", MAX_SESSIONS),
            agent=AgentCard.from_toml(data["agent"], str(path)) if "agent" in data else None,
            hooks=parse_hooks(data["hooks"], str(path)) if "hooks" in data else (),
        )


def ensure_home(home: Path) -> None:
    """Create ACP_HOME with mode 0700; refuse one that group or others can enter."""
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = home.stat().st_mode & 0o777
    except OSError as exc:
        raise ConfigError(f"{home}: cannot create ACP_HOME: {exc.strerror}") from exc
    if mode & 0o077:
        try:
            os.chmod(home, 0o700)
        except OSError as exc:
            raise ConfigError(
                f"{home} has mode {mode:o}; it must be 0700 (chmod 700 {home})"
            ) from exc
