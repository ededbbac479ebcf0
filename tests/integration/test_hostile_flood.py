"""Peers that send and never read do not take the daemon's memory (docs/protocol.md §5, issue #9).

The attack that took a daemon from 30 MB to 2 GB: four peers, each sending 65 KB PINGs and never
reading the PONGs, which the daemon queued 8192 at a time. Now a PING that is not 8 bytes closes
its session at once, and what a session owes its peer is bounded in bytes, so the same four peers
sending 8-byte PINGs are cut off too. The real daemon's peak RSS (VmHWM) stays modest, and once
they are gone no session of theirs is left.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from integration_harness import Daemon, Fleet, wait_for
from test_hostile_text import HostilePeer

from acp.proto import session as frames
from acp.proto.framing import encode_frame

PEERS = 4
RSS_BOUND_MIB = 150  # generous: an idle daemon is ~30-40 MiB
FLOOD_CAP = 64 * 1024 * 1024  # bytes a peer sends at most before the test gives up on it


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of ``pid`` in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) / 1024
    return out


def flood(peer: HostilePeer, body_len: int, results: dict[str, object]) -> None:
    """Send PINGs of ``body_len`` bytes and never read, until the daemon cuts the connection."""
    ping = frames.encode_ping(bytes(body_len))
    per_send = max(1, 1024 * 1024 // (len(ping) + 20))  # about 1 MiB per sendall
    sent = 0
    try:
        while sent < FLOOD_CAP:
            chunk = b"".join(encode_frame(peer.keys.send.encrypt(ping)) for _ in range(per_send))
            peer.sock.sendall(chunk)
            sent += len(chunk)
    except TimeoutError:
        results[peer.agent_id] = (
            f"the daemon stopped reading after {sent} bytes but kept the connection"
        )
    except OSError:
        results[peer.agent_id] = sent  # cut off: reset or broken pipe
    else:
        results[peer.agent_id] = f"never cut off after {sent} bytes"
    finally:
        peer.close()


def attack(d: Daemon, prefix: str, body_len: int) -> dict[str, object]:
    """``PEERS`` hostile peers at once, each flooding as above; bytes each sent until cut off."""
    peers = [HostilePeer(d, f"{prefix}-{i}") for i in range(PEERS)]
    results: dict[str, object] = {}
    threads = [threading.Thread(target=flood, args=(p, body_len, results)) for p in peers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a flooding peer is still sending after 120 s"
    return results


def test_peers_that_never_read_do_not_take_the_daemons_memory(fleet: Fleet) -> None:
    a = fleet.daemon("agent-a")
    a.start()
    assert a.proc is not None
    before = memory_mib(a.proc.pid)

    t0 = time.monotonic()
    big = attack(a, "big", 65_000)  # cut off at the first PING: it is not 8 bytes
    small = attack(a, "small", frames.PING_LEN)  # cut off at the byte bound
    print(f"before {before}, big {big}, small {small}, {time.monotonic() - t0:.1f} s")
    peak = memory_mib(a.proc.pid)
    print("after the attack", peak)
    assert peak["VmHWM"] < RSS_BOUND_MIB, (before, peak, big, small)
    assert all(isinstance(n, int) for n in (*big.values(), *small.values())), (big, small)

    hostile = [*big, *small]
    wait_for(lambda: not any(a.is_connected(p) for p in hostile), timeout=15, what="sessions ended")
    counters = a.counters()
    assert counters.get("protocol_errors", 0) == 2 * PEERS, counters
    log = a.log_text()
    assert log.count("PING of 65000 bytes") >= PEERS and log.count("does not read") >= PEERS
    after = memory_mib(a.proc.pid)
    print("after they left", after)
    assert after["VmRSS"] < RSS_BOUND_MIB, after

    # Still serving: one more peer gets its envelope stored and ACKed.
    ok = HostilePeer(a, "fine-peer")
    try:
        ok.envelope("m-1", "notify", {"topic": "t", "data": None})
        assert ok.acks({"m-1"})["m-1"].ack.ok
    finally:
        ok.close()
