"""Start real ``acp daemon`` pairs for the benchmark, wired to each other by static peers.

The benchmark needs acp endpoints that come up fast and find each other without mDNS (which must
not run on real interfaces, and takes ~1.7 s to probe): each daemon gets its own ACP_HOME with an
identity we write ourselves, a config.toml naming the other daemon as a ``[[peers]]`` entry on
127.0.0.1, and ``--no-mdns``. What this assumes about the daemon, so the two stay in step:

- ``acp daemon --agent-id ID --port PORT --no-mdns``, environment ``ACP_HOME=<dir>``; SIGTERM stops it.
- It loads ``ACP_HOME/identity.key`` (base64 of 32 bytes + newline, mode 0600) when present;
  ``identity.pub`` is base64 of ``crypto_scalarmult_base(key)`` (we write both).
- ``ACP_HOME/config.toml`` with one ``[[peers]]`` table: ``agent_id``, ``addr = "127.0.0.1:PORT"``,
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
- The process we start is the daemon (no fork): its /proc/PID gives CPU and memory.
- ``acp --version`` exits 0 (the cold-start figure).
"""

from __future__ import annotations

import base64
import importlib.util
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from common import Memory, Pair, free_ports, idle_daemon_memory, spawn
from nacl.bindings import crypto_scalarmult_base

KEY_LEN = 32


def write_identity(home: Path) -> str:
    """Create ``home`` (0700) with a fresh ``identity.key`` (0600) and ``.pub``; the public key."""
    home.mkdir(mode=0o700)
    home.chmod(0o700)
    private = os.urandom(KEY_LEN)
    fd = os.open(home / "identity.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(private).decode() + "\n")
    public = base64.b64encode(crypto_scalarmult_base(private)).decode()
    (home / "identity.pub").write_text(public + "\n")
    return public


def write_config(home: Path, peer_id: str, peer_port: int, peer_pubkey: str) -> None:
    (home / "config.toml").write_text(
        "[[peers]]\n"
        f'agent_id = "{peer_id}"\n'
        f'addr = "127.0.0.1:{peer_port}"\n'
        f'pubkey = "{peer_pubkey}"\n'
    )


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

    @asynccontextmanager
    async def open_pairs(self, count: int, workdir: Path) -> AsyncIterator[list[Pair]]:
        async with AsyncExitStack() as stack:
            pairs, waits = [], []
            for i in range(count):
                ids = (f"bench-a{i}", f"bench-b{i}")
                homes = (workdir / f"acp-a{i}", workdir / f"acp-b{i}")
                keys = [write_identity(home) for home in homes]
                ports = free_ports(2)
                write_config(homes[0], ids[1], ports[1], keys[1])
                write_config(homes[1], ids[0], ports[0], keys[0])
                children = []
                for agent_id, home, port in zip(ids, homes, ports, strict=True):
                    argv = [str(self.exe), "daemon", "--agent-id", agent_id]
                    argv += ["--port", str(port), "--no-mdns"]
                    env = {k: v for k, v in os.environ.items() if not k.startswith("ACP_")}
                    env["ACP_HOME"] = str(home)
                    child = await stack.enter_async_context(
                        spawn(argv, log=home / "daemon.log", env=env, name=f"acp {agent_id}")
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

    def cold_start_argv(self) -> list[str]:
        return [str(self.exe), "--version"]

    async def memory(self, workdir: Path) -> Memory:
        """The sending daemon, idle after start-up, its session and 100 envelopes."""
        return await idle_daemon_memory(self, workdir)
