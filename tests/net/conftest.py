"""Fixtures for the in-process network tests (see netkit.py)."""

from __future__ import annotations

import pytest
import trio
from netkit import FakeNet


@pytest.fixture
def net(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> FakeNet:
    """A fake TCP network; ``trio.open_tcp_stream`` (as acp.net.handshake calls it) goes there."""
    fake = FakeNet(nursery)
    monkeypatch.setattr(trio, "open_tcp_stream", fake.open_tcp_stream)
    return fake
