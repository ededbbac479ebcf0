"""The ``[[hooks]]`` tables of config.toml, checked (docs/hooks.md).

Secrets are never held here: a header value is kept as written (``Bearer ${env:TOKEN}``) and an
OpenClaw token as the name of its variable. ``HookSpec.secrets(env)`` reads them from the daemon's
environment at start, so the CLI (which reads config.toml too) never needs them, and nothing that
prints a spec (``repr``, ``acp hooks``, an error) can show one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from acp.errors import ConfigError
from acp.model import KINDS, is_agent_id, setting
from acp.proto.inbox import EVENT as EVENT_KIND  # an `undelivered` outcome item (§8.1)

TYPES = ("http", "openclaw", "exec")
OPENCLAW_URL = "http://127.0.0.1:18789"
OPENCLAW_PATH = "/hooks/agent"
WAKE_MODES = ("now", "next-heartbeat")
TIMEOUT = 10.0
EXEC_TIMEOUT = 60.0
BACKOFF_MAX = 300.0
GIVE_UP_AFTER = 86400.0
MAX_HOOKS = 32

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HEADER_VALUE = re.compile(r"[!-~]([ -~]*[!-~])?\Z")  # visible ASCII, inner spaces only
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an HTTP token (RFC 9110)
_RESERVED_HEADERS = {"content-type", "content-length", "idempotency-key", "host"}

_COMMON = {
    "name", "type", "kinds", "from", "ack", "timeout", "concurrency", "coalesce",
    "max_per_minute", "backoff_max", "give_up_after",
}  # fmt: skip
_BY_TYPE = {
    "http": {"url", "headers"},
    "openclaw": {"url", "token_env", "agent_id", "session_key", "wake_mode", "deliver"},
    "exec": {"argv"},
}


@attrs.frozen
class HookSpec:
    name: str
    type: str
    kinds: frozenset[str] = frozenset(KINDS)
    senders: frozenset[str] | None = None  # None: anyone
    ack: bool = False
    timeout: float = TIMEOUT
    concurrency: int = 1
    coalesce: float = 0.0
    max_per_minute: int = 0  # 0: no limit
    backoff_max: float = BACKOFF_MAX
    give_up_after: float = GIVE_UP_AFTER
    url: str | None = None  # http: the endpoint; openclaw: the gateway's base URL
    headers: tuple[tuple[str, str], ...] = ()  # as written: values may hold ${env:NAME}
    token_env: str | None = None
    agent_id: str | None = None
    session_key: str | None = None
    wake_mode: str | None = None
    deliver: bool | None = None
    argv: tuple[str, ...] = ()

    def matches(self, sender: str | None, kind: str) -> bool:
        """Whether an item fires this hook (an event has no sender: ``from`` does not apply)."""
        if kind not in self.kinds:
            return False
        return self.senders is None or sender is None or sender in self.senders

    @property
    def is_http(self) -> bool:
        return self.type in ("http", "openclaw")

    @property
    def endpoint(self) -> str:
        """Where an HTTP run goes."""
        assert self.url is not None
        if self.type == "openclaw":
            return self.url.rstrip("/") + OPENCLAW_PATH
        return self.url

    @property
    def target(self) -> str:
        """What ``acp hooks`` shows: the URL without credentials or query, or the program."""
        if self.type == "exec":
            return self.argv[0]
        parts = urlsplit(self.endpoint)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"

    def secrets(self, env: Mapping[str, str]) -> dict[str, str]:
        """The HTTP headers this hook sends, secrets filled in from ``env``.

        Raises ConfigError naming the variable that is not set (never a value).
        """

        def fill(text: str, where: str) -> str:
            def one(m: re.Match[str]) -> str:
                value = env.get(m.group(1))
                if value is None:
                    raise ConfigError(
                        f"hook {self.name!r}: {where} needs the environment variable "
                        f"{m.group(1)}, which is not set in the daemon's environment"
                    )
                return value

            return _ENV_REF.sub(one, text)

        out = {name: fill(value, f"header {name}") for name, value in self.headers}
        if self.token_env is not None:
            out["Authorization"] = "Bearer " + fill(f"${{env:{self.token_env}}}", "token_env")
        for name, value in out.items():
            if not _HEADER_VALUE.match(value):
                raise ConfigError(
                    f"hook {self.name!r}: header {name}: the value (from the environment) must "
                    "be visible ASCII with no space at either end"
                )
        return out

    def env_names(self) -> set[str]:
        """The environment variables this hook's secrets come from (kept from exec children)."""
        names = {m.group(1) for _, value in self.headers for m in _ENV_REF.finditer(value)}
        return names | ({self.token_env} if self.token_env else set())


def parse_hooks(raw: object, path: str) -> tuple[HookSpec, ...]:
    """``[[hooks]]`` -> specs; ConfigError names the file, the hook and the problem."""
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: hooks must be [[hooks]] tables")
    if len(raw) > MAX_HOOKS:
        raise ConfigError(f"{path}: at most {MAX_HOOKS} [[hooks]]")
    specs = tuple(_parse_one(h, f"{path} [[hooks]] #{i + 1}") for i, h in enumerate(raw))
    names = [s.name for s in specs]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{path}: two [[hooks]] are named {name!r}")
    return specs


def _parse_one(data: object, where: str) -> HookSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: each [[hooks]] entry must be a table")
    name = data.get("name")
    if not isinstance(name, str) or _NAME.match(name) is None:
        raise ConfigError(f"{where}: name must be 1-64 of A-Z a-z 0-9 . _ - (got {name!r})")
    where = f"{where} ({name})"
    kind = data.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{where}: type must be one of {', '.join(TYPES)}, not {kind!r}")
    unknown = set(data) - _COMMON - _BY_TYPE[kind]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))} for a {kind} hook; known: "
            f"{', '.join(sorted(_COMMON | _BY_TYPE[kind]))}"
        )

    def get(key: str, types: type | tuple[type, ...], default: Any) -> Any:
        return setting(data, key, types, default, where)

    def seconds(key: str, default: float, *, zero: bool = False) -> float:
        try:
            value = float(get(key, (int, float), default))
        except OverflowError:  # an integer too large for a float: out of range below
            value = math.inf
        if math.isnan(value) or value < 0 or (value == 0 and not zero) or value > 7 * 86400:
            least = "0" if zero else "above 0"
            raise ConfigError(f"{where}: {key} must be {least} and at most a week (seconds)")
        return value

    def count(key: str, default: int, least: int) -> int:
        value: int = get(key, int, default)
        if not least <= value <= 1_000_000:
            raise ConfigError(f"{where}: {key} must be {least} or more")
        return value

    def strings(key: str) -> list[str] | None:
        value = get(key, list, None)
        if value is not None and not (value and all(isinstance(x, str) for x in value)):
            raise ConfigError(f"{where}: {key} must be a non-empty list of strings")
        return value

    kinds = strings("kinds")
    if kinds is not None:
        bad = [k for k in kinds if k not in (*KINDS, EVENT_KIND)]
        if bad:
            raise ConfigError(
                f"{where}: unknown kind(s) {', '.join(map(repr, bad))}; known: "
                f"{', '.join((*KINDS, EVENT_KIND))}"
            )
    senders = strings("from")
    if senders is not None:
        bad = [s for s in senders if not is_agent_id(s)]
        if bad:
            raise ConfigError(f"{where}: from: {bad[0]!r} is not an agent_id")

    fields: dict[str, Any] = dict(
        name=name,
        type=kind,
        kinds=frozenset(kinds) if kinds is not None else frozenset(KINDS),
        senders=frozenset(senders) if senders is not None else None,
        ack=get("ack", bool, False),
        timeout=seconds("timeout", EXEC_TIMEOUT if kind == "exec" else TIMEOUT),
        concurrency=count("concurrency", 1, 1),
        coalesce=seconds("coalesce", 0.0, zero=True),
        max_per_minute=count("max_per_minute", 0, 0),
        backoff_max=seconds("backoff_max", BACKOFF_MAX),
        give_up_after=seconds("give_up_after", GIVE_UP_AFTER),
    )
    if kind == "exec":
        argv = strings("argv")
        if argv is None or not argv[0]:
            raise ConfigError(f"{where}: argv (the program and its arguments, a list) is required")
        if any("\0" in a for a in argv):
            raise ConfigError(f"{where}: argv holds a NUL character")
        fields["argv"] = tuple(argv)
        return HookSpec(**fields)

    default_url = OPENCLAW_URL if kind == "openclaw" else None
    url = get("url", str, default_url)
    if url is None:
        raise ConfigError(f"{where}: url is required for an http hook")
    try:  # urlsplit refuses a bad [IPv6] host, .port a port that is not 0..65535 in digits
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigError(f"{where}: url: {exc}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"{where}: url must be an http:// or https:// URL with a host")
    if "${" in url:
        raise ConfigError(f"{where}: url cannot name environment variables; use headers")
    fields["url"] = url
    if kind == "http":
        headers = get("headers", dict, {})
        for key, value in headers.items():
            if _HEADER_NAME.match(key) is None or key.lower() in _RESERVED_HEADERS:
                raise ConfigError(f"{where}: {key!r} cannot be a header set here")
            if not isinstance(value, str):
                raise ConfigError(f"{where}: header {key} must be a string")
            for m in re.finditer(r"\$\{([^}]*)\}", value):
                if _ENV_REF.fullmatch(m.group()) is None:
                    raise ConfigError(
                        f"{where}: header {key}: write environment variables as ${{env:NAME}}"
                    )
        fields["headers"] = tuple(headers.items())
        return HookSpec(**fields)

    token_env = get("token_env", str, None)
    if token_env is None or _ENV_NAME.match(token_env) is None:
        raise ConfigError(
            f"{where}: token_env (the name of the environment variable that holds the gateway's "
            "hooks.token) is required"
        )
    wake_mode = get("wake_mode", str, None)
    if wake_mode is not None and wake_mode not in WAKE_MODES:
        raise ConfigError(f"{where}: wake_mode must be one of {', '.join(WAKE_MODES)}")
    fields.update(
        token_env=token_env,
        agent_id=get("agent_id", str, None),
        session_key=get("session_key", str, None),
        wake_mode=wake_mode,
        deliver=get("deliver", bool, None),
    )
    return HookSpec(**fields)
