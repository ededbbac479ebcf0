"""Two network namespaces joined by a veth pair, for figures that loopback would flatter.

On loopback both ends of a TCP connection share one network stack; between two hosts every
packet crosses a device. ``veth_pair()`` builds the nearest thing on one machine: namespaces
``acpb-<pid>-<n>-a`` and ``-b`` (created with ``ip netns add`` inside bench/run's private
namespace, so nothing touches the machine's real interfaces), each with ``lo`` up and one end of a
veth pair (10.213.0.1/24 and 10.213.0.2/24), and yields the ``Placement`` that starts processes in
them (``ip netns exec NAME``). Clients stay outside and use the endpoints' Unix sockets, which are
files: they work across network namespaces. Needs root (``ip netns add`` mounts under /run/netns).
The namespaces are deleted on exit, whatever happened, and ``sweep()`` deletes any left behind by
an earlier run that was killed (its pid is gone).
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from common import BenchError, Placement

PREFIX = "acpb"  # namespace names: acpb-<our pid>-<n>-a / -b
NET = "10.213.0"  # the pair's /24; it exists only inside the two namespaces
_NAME = re.compile(rf"^{PREFIX}-(\d+)-\d+-[ab]$")
_serial = itertools.count()


async def ip(*args: str) -> None:
    """Run ``ip ARGS``; BenchError with its stderr if it fails."""
    result = await trio.run_process(["ip", *args], capture_stderr=True, check=False)
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip()
        raise BenchError(f"ip {' '.join(args)}: {err or f'exit {result.returncode}'}")


def our_namespaces() -> list[str]:
    """Namespaces named like ours (any pid), from ``ip netns list``."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    return [n for n in names if _NAME.match(n)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep() -> list[str]:
    """Delete namespaces left by runs whose process is gone; the names deleted."""
    gone = []
    for name in our_namespaces():
        m = _NAME.match(name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            gone.append(name)
    return gone


def unavailable() -> str | None:
    """Why veth pairs cannot be made here, or None (probes by making and deleting one)."""
    name = f"{PREFIX}-{os.getpid()}-probe-a"
    out = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return f"`ip netns add` failed (needs real root): {out.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    return None


@asynccontextmanager
async def veth_pair() -> AsyncIterator[Placement]:
    """Sender in namespace ``-a`` at NET.1, receiver in ``-b`` at NET.2, one veth between them."""
    n = next(_serial)
    ns = (f"{PREFIX}-{os.getpid()}-{n}-a", f"{PREFIX}-{os.getpid()}-{n}-b")
    dev = (f"{PREFIX}{n}a", f"{PREFIX}{n}b")  # interface names: at most 15 characters
    made: list[str] = []
    try:
        for name in ns:
            await ip("netns", "add", name)
            made.append(name)
        await ip(
            "link", "add", dev[0], "netns", ns[0], "type", "veth", "peer", "name", dev[1],
            "netns", ns[1],
        )  # fmt: skip
        for i, (name, device) in enumerate(zip(ns, dev, strict=True)):
            await ip("-n", name, "link", "set", "lo", "up")
            await ip("-n", name, "addr", "add", f"{NET}.{i + 1}/24", "dev", device)
            await ip("-n", name, "link", "set", device, "up")
        yield Placement(
            sender_prefix=("ip", "netns", "exec", ns[0]),
            receiver_prefix=("ip", "netns", "exec", ns[1]),
            sender_host=f"{NET}.1",
            receiver_host=f"{NET}.2",
        )
    finally:
        with trio.CancelScope(shield=True):
            for name in made:  # deleting a namespace deletes its end of the veth pair too
                await trio.run_process(["ip", "netns", "del", name], check=False)
