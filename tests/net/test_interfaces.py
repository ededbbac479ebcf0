"""Which interfaces discovery uses, and which announced address a peer is dialled at."""

from __future__ import annotations

import pytest

from acp.net import discovery
from acp.net.discovery import Iface, choose_interfaces, pick_address

LO = Iface("lo", "127.0.0.1", 8)
ETH = Iface("eth0", "192.168.1.10", 24)
WG = Iface("wg0", "10.8.0.2", 24)


@pytest.fixture(autouse=True)
def all_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not this machine's /sys/class/net: every interface here is up."""
    monkeypatch.setattr(discovery, "_operstate", lambda name: "up")


def test_loopback_is_skipped_unless_it_is_the_only_interface() -> None:
    assert choose_interfaces((), [LO, ETH, WG]) == [ETH, WG]
    assert choose_interfaces((), [LO]) == [LO]


def test_configured_interfaces_by_name_or_address() -> None:
    assert choose_interfaces(("wg0",), [LO, ETH, WG]) == [WG]
    assert choose_interfaces(("192.168.1.10",), [LO, ETH, WG]) == [ETH]
    assert choose_interfaces(("nonexistent0",), [LO, ETH]) == []


def test_the_announced_address_on_a_shared_subnet_wins() -> None:
    announced = ("172.17.0.1", "10.8.0.7", "192.168.1.20")
    assert pick_address(announced, [ETH]) == "192.168.1.20"
    assert pick_address(announced, [WG]) == "10.8.0.7"
    assert pick_address(announced, [LO]) == "172.17.0.1"  # none shared: the first IPv4 one
    assert pick_address(("fe80::1%2", "garbage"), [ETH]) == "fe80::1"
    assert pick_address((), [ETH]) is None


def test_an_interface_that_is_down_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery, "_operstate", lambda name: "down" if name == "wg0" else "up")
    assert choose_interfaces((), [LO, ETH, WG]) == [ETH]
