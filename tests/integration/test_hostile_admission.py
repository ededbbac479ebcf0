"""Issue #9's lock-out and flood attacks against a real daemon over real TCP (loopback addresses
127.0.0.10-19 stand in for ten hosts): idle connections that hold every handshake slot, garbage
connections that would flood the log, and the open-files limit."""

from __future__ import annotations

import re
import selectors
import socket
import threading
from collections.abc import Iterator

import pytest
from integration_harness import Daemon, Fleet, wait_for

SOURCES = [f"127.0.0.{10 + i}" for i in range(10)]
PER_SOURCE = 8


class IdleFlood:
    """Ten "hosts" each keeping 8 connections open that never send a byte: whenever the daemon
    closes one (its handshake deadline), it is replaced at once, so that 80 connections contend
    for the 64 slots all the time (the attack of issue #9, adapted to shorter deadlines)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.opened = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, sel: selectors.BaseSelector, src: str) -> None:
        s = socket.socket()
        s.bind((src, 0))
        s.settimeout(1)
        try:
            s.connect(("127.0.0.1", self.port))
        except OSError:
            s.close()
            return
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, src)
        self.opened += 1

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        for src in SOURCES:
            for _ in range(PER_SOURCE):
                self._open(sel, src)
        while not self.stop.is_set():
            for key, _ in sel.select(timeout=0.05):
                sock, src = key.fileobj, key.data
                sel.unregister(sock)
                sock.close()  # closed by the daemon (or reset): take another slot at once
                self._open(sel, src)
            live: dict[str, int] = {}
            for key in sel.get_map().values():
                live[key.data] = live.get(key.data, 0) + 1
            for src in SOURCES:  # refused ones (busy) are replaced too
                for _ in range(PER_SOURCE - live.get(src, 0)):
                    self._open(sel, src)
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()


@pytest.fixture
def pair(fleet: Fleet) -> Iterator[tuple[Daemon, Daemon]]:
    alpha, beta = fleet.daemon("alpha"), fleet.daemon("beta")
    alpha.knows(beta)
    beta.knows(alpha)
    yield alpha, beta


def test_idle_connections_from_ten_hosts_do_not_lock_a_peer_out(
    fleet: Fleet, pair: tuple[Daemon, Daemon]
) -> None:
    alpha, beta = pair
    fleet.start(beta)
    flood = IdleFlood(beta.port)
    flood.thread.start()
    try:
        wait_for(lambda: flood.opened >= 200, timeout=20, what="the flood under way")
        fleet.start(alpha)  # first contact while every slot is contested
        alpha.wait_connected(beta, timeout=20)
        reply = alpha.call("send", to="beta", envelope={"kind": "notify", "payload": {
            "topic": "t", "data": "through the flood"}}, wait="acked", timeout=20)  # fmt: skip
        assert reply.get("state") == "acked", reply
        counters = beta.counters()
        assert counters.get("handshakes_refused.evicted", 0) > 0, counters
    finally:
        flood.stop.set()
        flood.thread.join(10)


def test_a_garbage_flood_writes_a_line_per_source_not_per_connection(fleet: Fleet) -> None:
    beta = fleet.daemon("beta")
    fleet.start(beta)
    for i in range(600):
        with socket.socket() as s:
            s.bind((SOURCES[i % 3], 0))
            s.connect(("127.0.0.1", beta.port))
            s.sendall(b"\x00\x00\x00\x08notnoise")
            s.shutdown(socket.SHUT_WR)
            s.recv(1)
    wait_for(
        lambda: beta.counters().get("handshakes_refused.bad_handshake", 0) >= 600,
        timeout=20,
        what="600 garbage handshakes refused",
    )
    lines = [ln for ln in beta.log_text().splitlines() if "refused connection from" in ln]
    assert 1 <= len(lines) <= 3, lines  # one per source per minute
    assert "?:?" not in beta.log_text()


def test_the_daemon_lifts_its_open_files_limit(fleet: Fleet) -> None:
    beta = fleet.daemon("beta")
    fleet.start(beta)
    assert beta.proc is not None
    limits = open(f"/proc/{beta.proc.pid}/limits").read()
    soft, hard = re.search(r"Max open files\s+(\S+)\s+(\S+)", limits).groups()  # type: ignore[union-attr]
    want = 65536 if hard == "unlimited" else min(int(hard), 65536)
    assert int(soft) >= want, limits
