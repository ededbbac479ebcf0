"""Does acp.db stay bounded under a flood? Two daemons, N envelopes, a receiver that acks.

    unshare -n sh -c 'ip link set lo up && .venv/bin/python bench/store_growth.py --total 60000'

The sender's client pipelines ``send`` requests (1 KiB notifies); the receiver's client subscribes
and acks ``up_to`` the last seq it read every 100 envelopes. Every ``--every`` envelopes it prints
the size of the receiver's acp.db plus its WAL, and the row counts from ``status``. Read rows are
pruned once a minute by the daemon (``keep_read_count`` bounds them), so the figure to read is the
size after the flood against the count of envelopes that went through.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nacl.bindings import crypto_scalarmult_base


def _home(root: Path, name: str) -> tuple[Path, str]:
    home = root / name
    home.mkdir(mode=0o700)
    key = os.urandom(32)
    path = home / "identity.key"
    path.write_text(base64.b64encode(key).decode() + "\n")
    path.chmod(0o600)
    return home, base64.b64encode(crypto_scalarmult_base(key)).decode()


def _config(home: Path, port: int, peer: str, peer_port: int, pub: str, extra: str) -> None:
    (home / "config.toml").write_text(
        f'port = {port}\nlisten = ["127.0.0.1"]\n{extra}\n'
        f'[[peers]]\nagent_id = "{peer}"\naddr = "127.0.0.1:{peer_port}"\npubkey = "{pub}"\n'
    )


def _connect(path: Path) -> socket.socket:
    deadline = time.monotonic() + 15
    while True:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(path))
            return s
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _lines(sock: socket.socket, buf: bytearray) -> list[bytes]:
    data = sock.recv(1 << 20)
    if not data:
        raise SystemExit("daemon closed the connection")
    buf += data
    *lines, rest = bytes(buf).split(b"\n")
    buf[:] = rest
    return lines


def _request(path: Path, obj: dict[str, object]) -> dict[str, object]:
    with _connect(path) as s:
        s.sendall(json.dumps(obj).encode() + b"\n")
        buf = bytearray()
        while True:
            for line in _lines(s, buf):
                reply: dict[str, object] = json.loads(line)
                return reply


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--total", type=int, default=60_000)
    p.add_argument("--every", type=int, default=10_000)
    p.add_argument("--keep-read-count", type=int, default=20_000)
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="acp-growth-"))
    (sh, spub), (rh, rpub) = _home(root, "s"), _home(root, "r")
    extra = f"keep_read_count = {a.keep_read_count}\nmdns = false"
    _config(sh, 7311, "bench-r", 7312, rpub, extra)
    _config(rh, 7312, "bench-s", 7311, spub, extra)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "acp.cli", "daemon", "--agent-id", aid],
            env={**os.environ, "ACP_HOME": str(home)},
            stderr=subprocess.DEVNULL,
        )
        for aid, home in (("bench-r", rh), ("bench-s", sh))
    ]
    try:
        recv = _connect(rh / "acp.sock")
        recv.sendall(b'{"cmd":"subscribe"}\n')
        send = _connect(sh / "acp.sock")
        data = "x" * 900
        line = (
            b'{"cmd":"send","to":"bench-r","envelope":{"kind":"notify","payload":'
            b'{"topic":"t","data":"' + data.encode() + b'"}}}\n'
        )
        sent = got = last_seq = 0
        rbuf, sbuf = bytearray(), bytearray()
        replies = 0
        t0 = time.monotonic()
        print("envelopes  db+wal MiB  stored rows  unread")
        while got < a.total:
            while sent < a.total and sent - replies < 256:
                send.sendall(line)
                sent += 1
            send.setblocking(False)
            try:
                for reply in _lines(send, sbuf):
                    replies += 1
                    if b'"ok":false' in reply:  # outbox_full while the receiver pushes back
                        sent -= 1
                        replies -= 1
                        time.sleep(0.01)
            except BlockingIOError:
                pass
            send.setblocking(True)
            recv.settimeout(0.05)
            try:
                for raw in _lines(recv, rbuf):
                    push = json.loads(raw)
                    if push.get("inbound"):
                        got += 1
                        last_seq = push["seq"]
                        if got % 100 == 0:  # well before the per-sender share (500)
                            recv.sendall(b'{"cmd":"ack","up_to":%d}\n' % last_seq)
                        if got % a.every == 0:
                            size = sum(
                                f.stat().st_size
                                for f in rh.iterdir()
                                if f.name.startswith("acp.db")
                            )
                            st = _request(rh / "acp.sock", {"cmd": "status"})
                            print(
                                f"{got:9d}  {size / 2**20:10.1f}  {st['stored']:11}  {st['unread']:6}",
                                flush=True,
                            )
            except TimeoutError:
                pass
        print(f"{a.total} envelopes in {time.monotonic() - t0:.1f} s; waiting for the next prune")
        for _ in range(14):
            time.sleep(5)
            st = _request(rh / "acp.sock", {"cmd": "status"})
            if st["stored"] <= a.keep_read_count + 1000:
                break
        size = sum(f.stat().st_size for f in rh.iterdir() if f.name.startswith("acp.db"))
        print(
            f"after pruning: {size / 2**20:.1f} MiB, {st['stored']} stored rows, {st['unread']} unread"
        )
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
