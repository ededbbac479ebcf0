"""Start real ``acp daemon`` pairs for the benchmark, wired to each other by static peers.

The benchmark needs acp endpoints that come up fast and find each other without mDNS (which must
not run on real interfaces, and takes ~1.7 s to probe): each daemon gets its own ACP_HOME with an
identity we write ourselves, a config.toml naming the other daemon as a ``[[peers]]`` entry on
127.0.0.1 (or, across two network namespaces, its veth address), and ``--no-mdns`` (except for
the figures that are about mDNS). What this assumes about the daemon, so the two stay in step:

- ``acp daemon --agent-id ID --port PORT --no-mdns``, environment ``ACP_HOME=<dir>``; SIGTERM stops it.
- It loads ``ACP_HOME/identity.key`` (base64 of 32 bytes + newline, mode 0600) when present;
  ``identity.pub`` is base64 of ``crypto_scalarmult_base(key)`` (we write both).
- ``ACP_HOME/config.toml`` with one ``[[peers]]`` table: ``agent_id``, ``addr = "HOST:PORT"``,
  ``pubkey`` (base64). Both sides list each other; the lower agent_id (``bench-a*``, the sender)
  dials.
- ``ACP_HOME/acp.sock`` accepts connections once the daemon can take requests, and speaks the
  IPC subset in limit.py's docstring; client-filled ``v``, ``id``, ``from``, ``to``, ``ts`` and
  ``reply_to`` are kept, and the unknown top-level field ``bench_t`` is passed through to the
  receiver's ``{"inbound":true,"envelope":{...}}`` push.
- A subscribed connection gets exactly one line per envelope (throughput counts newlines there);
  the sending connection gets exactly one line with ``"ok":true`` per send, nothing else.
- Sends are pipelined, up to 512 envelopes (2 MiB) sent but not yet received per pair, so the
  per-peer outbox (1000) must not fill: 900 in flight did get ``outbox_full``.
- The process we start is the daemon (no fork): its /proc/PID gives CPU and memory. Under
  ``ip netns exec NAME`` it is still the daemon: ``ip`` execs it without forking.
- ``status`` replies carry ``peers_connected`` and ``mdns`` (``running`` once mDNS is up).
- ``acp send AGENT hi``, ``acp peers`` and ``acp status`` exit 0 against a daemon with AGENT
  connected (the cold-start figures).
- A ``[[peers]]`` list of ten makes a star: the hub (``bench-hub``, the lowest id) dials ten
  leaves (``bench-leaf00``..), each of which lists only the hub.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import attrs
from common import LOOPBACK, Child, Command, Lone, Pair, Placement, free_ports, spawn
from nacl.bindings import crypto_scalarmult_base

KEY_LEN = 32
SEND_TEXT = "hi"  # what `acp send PEER hi` sends (a query)


@attrs.frozen
class Peer:
    """A ``[[peers]]`` entry: who, where to dial it, and its public key (base64)."""

    agent_id: str
    host: str
    port: int
    pubkey: str


@attrs.frozen
class Star:
    """A hub daemon with ``len(leaf_pids)`` connected peers, each of which knows only the hub."""

    hub_sock: Path
    hub_pid: int
    leaf_pids: tuple[int, ...]


def write_identity(home: Path) -> str:
    """Create ``home`` (0700) with a fresh ``identity.key`` (0600) and ``.pub``; the public key."""
    home.mkdir(mode=0o700, parents=True)  # parents: the workdir's subdirectories, mode 0777
    home.chmod(0o700)
    private = os.urandom(KEY_LEN)
    fd = os.open(home / "identity.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(private).decode() + "\n")
    public = base64.b64encode(crypto_scalarmult_base(private)).decode()
    (home / "identity.pub").write_text(public + "\n")
    return public


# The benchmark's receiving client reads pushes and never acks them (the limit relay has no such
# command), so unread envelopes would reach the inbox bound (1000, 500 per sender) and push back on
# the sender. Every envelope is still stored and committed before its ACK; only the bound is moved.
BENCH_INBOX_LIMIT = 10_000_000


def write_config(home: Path, peers: list[Peer]) -> None:
    (home / "config.toml").write_text(
        f"inbox_limit = {BENCH_INBOX_LIMIT}\n"
        + "".join(
            "[[peers]]\n"
            f'agent_id = "{p.agent_id}"\n'
            f'addr = "{p.host}:{p.port}"\n'
            f'pubkey = "{p.pubkey}"\n'
            for p in peers
        )
    )


def daemon_env(home: Path) -> dict[str, str]:
    """Our environment without any ACP_* setting, and ACP_HOME=home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACP_")}
    env["ACP_HOME"] = str(home)
    return env


class AcpTarget:
    """acp itself: two daemons per pair, sender ``bench-a<i>`` -> receiver ``bench-b<i>``."""

    name = "acp"

    def __init__(self, exe: Path | None = None) -> None:
        self.exe = exe or Path(sys.executable).parent / "acp"

    def unavailable(self) -> str | None:
        if not self.exe.exists():
            return f"no {self.exe} (pip install -e . in the venv)"
        if importlib.util.find_spec("acp.cli") is None:
            return "acp.cli does not exist yet (the daemon is not written)"
        return None

    def daemon_argv(self, agent_id: str, port: int, *, mdns: bool = False) -> list[str]:
        """The command that starts one daemon."""
        argv = [str(self.exe), "daemon", "--agent-id", agent_id, "--port", str(port)]
        return argv if mdns else [*argv, "--no-mdns"]

    async def _daemon(
        self,
        stack: AsyncExitStack,
        home: Path,
        agent_id: str,
        port: int,
        *,
        mdns: bool = False,
        prefix: tuple[str, ...] = (),
    ) -> Child:
        """Start ``acp daemon`` in ``home`` (identity and config.toml written already)."""
        return await stack.enter_async_context(
            spawn(
                [*prefix, *self.daemon_argv(agent_id, port, mdns=mdns)],
                log=home / "daemon.log",
                env=daemon_env(home),
                name=f"acp {agent_id}",
            )
        )

    @asynccontextmanager
    async def open_pairs(
        self, count: int, workdir: Path, place: Placement = LOOPBACK, *, mdns: bool = False
    ) -> AsyncIterator[list[Pair]]:
        """``count`` pairs; ``mdns=True`` runs them with mDNS on as well (bench/run's netns only)."""
        async with AsyncExitStack() as stack:
            pairs, waits = [], []
            for i in range(count):
                ids = (f"bench-a{i}", f"bench-b{i}")
                homes = (workdir / f"acp-a{i}", workdir / f"acp-b{i}")
                keys = [write_identity(home) for home in homes]
                ports = free_ports(2)
                hosts = (place.sender_host, place.receiver_host)
                write_config(homes[0], [Peer(ids[1], hosts[1], ports[1], keys[1])])
                write_config(homes[1], [Peer(ids[0], hosts[0], ports[0], keys[0])])
                prefixes = (place.sender_prefix, place.receiver_prefix)
                children = []
                for agent_id, home, port, prefix in zip(ids, homes, ports, prefixes, strict=True):
                    child = await self._daemon(
                        stack, home, agent_id, port, mdns=mdns, prefix=prefix
                    )
                    children.append(child)
                    waits.append((child, home / "acp.sock"))
                pairs.append(
                    Pair(
                        homes[0] / "acp.sock",
                        homes[1] / "acp.sock",
                        ids[0],
                        ids[1],
                        (children[0].pid, children[1].pid),
                    )
                )
            for child, sock in waits:
                await child.wait_for_socket(sock)
            yield pairs

    @asynccontextmanager
    async def open_star(self, leaves: int, workdir: Path) -> AsyncIterator[Star]:
        """A hub and ``leaves`` daemons, wired by static peers, mDNS off; the leaves start first,
        so the hub's first dials find them listening. Usable: sockets answer (``wait_connected``
        on the hub for the sessions)."""
        async with AsyncExitStack() as stack:
            hub_home = workdir / "acp-hub"
            hub_key = write_identity(hub_home)
            ports = free_ports(leaves + 1)
            hub = Peer("bench-hub", "127.0.0.1", ports[0], hub_key)
            leaf_peers, leaf_children = [], []
            for i in range(leaves):
                home = workdir / f"acp-leaf{i:02d}"
                leaf = Peer(f"bench-leaf{i:02d}", "127.0.0.1", ports[i + 1], write_identity(home))
                write_config(home, [hub])
                child = await self._daemon(stack, home, leaf.agent_id, leaf.port)
                leaf_peers.append(leaf)
                leaf_children.append((child, home / "acp.sock"))
            for child, sock in leaf_children:
                await child.wait_for_socket(sock)
            write_config(hub_home, leaf_peers)
            hub_child = await self._daemon(stack, hub_home, hub.agent_id, hub.port)
            await hub_child.wait_for_socket(hub_home / "acp.sock")
            yield Star(hub_home / "acp.sock", hub_child.pid, tuple(c.pid for c, _ in leaf_children))

    def lone(self, workdir: Path) -> Lone:
        """A daemon with an identity already written, no peers, mDNS off, any free port."""
        home = workdir / "acp-lone"
        write_identity(home)
        command = Command(tuple(self.daemon_argv("bench-lone", 0)), daemon_env(home))
        return Lone(command, home / "acp.sock")

    def cli_commands(self, pair: Pair) -> dict[str, Command]:
        """The console script in the venv, ACP_HOME the sender's."""
        env = daemon_env(pair.send_sock.parent)
        exe = str(self.exe)
        return {
            "send": Command((exe, "send", pair.receiver_id, SEND_TEXT), env),
            "peers": Command((exe, "peers"), env),
            "status": Command((exe, "status"), env),
        }


class AcpBaselineTarget(AcpTarget):
    """Another build of acp, for a before/after in one run: ``ACP_BENCH_BASELINE`` names its
    ``acp`` executable (e.g. a venv with v0.1.0 installed, whose inbox lived in memory only)."""

    name = "acp-before"

    def __init__(self, exe: Path | None = None) -> None:
        super().__init__(exe or Path(os.environ.get("ACP_BENCH_BASELINE", "/nonexistent/acp")))

    def unavailable(self) -> str | None:
        if not self.exe.exists():
            return "set ACP_BENCH_BASELINE to the acp executable of the build to compare with"
        return None
