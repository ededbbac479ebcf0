"""What a stranger on the LAN costs a daemon: issue #9's attacks, measured on real daemons.

    unshare -n sh -c 'ip link set lo up && .venv/bin/python bench/hostile.py'

Two daemons, alpha and beta, know each other from config.toml. Against beta it runs, in turn:

- ``identities``: N handshakes (default 3000), each with a fresh key and agent_id that closes at
  once, as fast as one client can; then beta's pins (``peers_known``), RSS, and the legitimate
  alpha -> beta round trip (``send`` with ``wait = "acked"``, median of 50) against the same
  figures before the attack;
- ``pings``: four raw sessions that send PINGs and never read (65 KB bodies, then 8-byte ones,
  for ``--seconds`` each); beta's RSS while they run and 5 s after they are gone.

Nothing here asserts: it prints one JSON line per figure, for docs/performance.md and issue notes.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from store_growth import _config, _connect, _home, _request

from acp.proto import handshake as hs
from acp.proto.framing import FrameDecoder, encode_frame
from acp.proto.noise import Initiator, TransportKeys
from acp.proto.session import PING, encode_ping

REPO = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def round_trips(sock_path: Path, to: str, n: int = 50) -> float:
    """Median ms of ``send`` wait=acked, one at a time."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        reply = _request(
            sock_path,
            {"cmd": "send", "to": to, "wait": "acked",
             "envelope": {"kind": "notify", "payload": {"topic": "rtt", "data": i}}},
        )  # fmt: skip
        assert reply.get("ok"), reply
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


class Raw(socket.socket):
    keys: TransportKeys


def handshake(port: int, responder_key: bytes, agent_id: str, key: bytes | None = None) -> Raw:
    """A raw initiator: message 1, message 2; the socket, with its transport keys."""
    noise = Initiator(key or os.urandom(32), responder_key, prologue=hs.PROLOGUE)
    s = Raw()
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    s.sendall(
        encode_frame(
            noise.write_message_1(hs.hello_payload(agent_id, int(time.time() * 1000), None))
        )
    )
    dec = FrameDecoder()
    while (frame := dec.next_frame()) is None:
        data = s.recv(65536)
        if not data:
            raise ConnectionError("refused")
        dec.feed(data)
    _, keys = noise.read_message_2(frame)
    s.keys = keys
    return s


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--identities", type=int, default=3000)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="acp-hostile-"))
    (ha, pa), (hb, pb) = _home(root, "alpha"), _home(root, "beta")
    port_a, port_b = 17301, 17302
    _config(ha, port_a, "beta", port_b, pb, "")
    _config(hb, port_b, "alpha", port_a, pa, "")
    procs = []
    for name, home, port in (("beta", hb, port_b), ("alpha", ha, port_a)):
        env = {**os.environ, "ACP_HOME": str(home)}
        log = open(root / f"{name}.log", "wb")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "acp.cli", "daemon", "--no-mdns", "--agent-id", name,
             "--port", str(port)], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        ))  # fmt: skip
    beta_pid = procs[0].pid
    sock_a, sock_b = ha / "acp.sock", hb / "acp.sock"
    try:
        _connect(sock_a).close()
        _connect(sock_b).close()
        beta_key = base64.b64decode(pb)
        time.sleep(2)
        before = {"rss_mib": rss_mib(beta_pid), "rtt_ms": round_trips(sock_a, "beta")}

        t0 = time.perf_counter()
        refused = 0
        for i in range(args.identities):
            try:
                handshake(port_b, beta_key, f"fake-{i}").close()
            except (OSError, ValueError):
                refused += 1
        took = time.perf_counter() - t0
        time.sleep(1)
        st = _request(sock_b, {"cmd": "status"})
        after = {"rss_mib": rss_mib(beta_pid), "rtt_ms": round_trips(sock_a, "beta")}
        emit(attack="identities", handshakes=args.identities, refused=refused,
             per_second=round(args.identities / took), peers_known=st["peers_known"],
             rss_before_mib=round(before["rss_mib"], 1), rss_after_mib=round(after["rss_mib"], 1),
             rtt_before_ms=round(before["rtt_ms"], 2), rtt_after_ms=round(after["rtt_ms"], 2))  # fmt: skip

        for body in (65000, 8):
            socks = [handshake(port_b, beta_key, f"pinger-{body}-{k}") for k in range(4)]
            frame = encode_ping(os.urandom(body)) if body == 8 else bytes([PING]) + os.urandom(body)
            peak = 0.0
            closed = 0
            end = time.monotonic() + args.seconds
            while time.monotonic() < end and closed < len(socks):
                for s in socks:
                    if s.fileno() < 0:
                        continue
                    ct = s.keys.send.encrypt(frame)
                    try:
                        s.settimeout(0.2)
                        s.sendall(len(ct).to_bytes(4, "big") + ct)
                    except (TimeoutError, OSError):
                        if not isinstance(sys.exc_info()[1], TimeoutError):
                            s.close()
                            closed += 1
                peak = max(peak, rss_mib(beta_pid))
            for s in socks:
                s.close()
            time.sleep(5)
            emit(attack=f"pings_{body}B", seconds=args.seconds, sessions_closed_by_beta=closed,
                 rss_peak_mib=round(peak, 1), rss_after_mib=round(rss_mib(beta_pid), 1))  # fmt: skip
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
