"""Lines a remote side can cause are rate-limited per source (acp/net/lograte.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing
from netkit import ADDR, Link, make_node

from acp.net import listener
from acp.net.lograte import LogLimiter, held_note


def test_one_line_per_key_per_interval_with_the_count_held_back() -> None:
    now = [0.0]
    lim = LogLimiter(lambda: now[0], interval=60, max_keys=2)
    assert lim.allow("a") == (True, 0)
    assert lim.allow("a") == (False, 0)
    assert lim.allow("a") == (False, 0)
    assert lim.allow("b") == (True, 0)
    now[0] = 61
    assert lim.allow("a") == (True, 2)
    lim.allow("c")  # the table keeps two keys: b, the least recent, goes
    assert lim.allow("b") == (True, 0)
    assert held_note(2) == " (2 more like this held back)" and held_note(0) == ""


async def test_a_flood_of_garbage_connections_writes_a_line_per_source(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    beta = make_node(tmp_path, "beta")
    caplog.set_level(logging.INFO, logger="acp.net.listener")
    for i in range(500):
        link = Link((f"198.51.100.{i % 2}", 40000 + i), ADDR["beta"])
        await link.client.send_all(b"\x00\x00\x00\x05garbage-that-is-no-handshake")
        await listener._handle(beta, link.server)
    lines = [r.getMessage() for r in caplog.records if r.name == "acp.net.listener"]
    assert beta.stats["handshakes_refused.bad_handshake"] == 500
    assert len(lines) == 2, lines  # one per source
    await trio.sleep(61)
    link = Link(("198.51.100.0", 1), ADDR["beta"])
    await link.client.send_all(b"\x00\x00\x00\x05garbage")
    await listener._handle(beta, link.server)
    last = [r.getMessage() for r in caplog.records if r.name == "acp.net.listener"][-1]
    assert "198.51.100.0:1" in last and "(249 more like this held back)" in last
