"""Agent cards (an extension, acp/proto/card.py): exchanged once a session is up, updated live,
ignored when bad, and unknown to nobody: a peer that does not know the frame type ignores it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio
import trio.testing
from netkit import ADDR, FakeNet, RawPeer, connect, know, know_each_other, make_node, settle

from acp.errors import ConfigError, ProtocolError
from acp.net.peer import Session
from acp.proto import session as frames
from acp.proto.card import MAX_WIRE, AgentCard

ALPHA_CARD = {"description": "builds and tests", "skills": ["build", "test"], "card": {"os": "x"}}


async def test_cards_are_exchanged_when_the_session_comes_up_and_updated_live(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha = make_node(tmp_path, "alpha", agent=ALPHA_CARD)
    beta = make_node(tmp_path, "beta", agent={"skills": ["review"]})
    know_each_other(alpha, beta)
    net.listen(beta)
    await connect(nursery, alpha, beta)
    await settle()
    assert beta.peers["alpha"].describe(0)["card"] == {
        "description": "builds and tests",
        "skills": ["build", "test"],
        "card": {"os": "x"},
    }
    assert alpha.peers["beta"].describe(0)["card"] == {"skills": ["review"]}

    assert alpha.set_card(AgentCard.from_obj({"skills": ["deploy"]})) == 1
    await settle()
    assert beta.peers["alpha"].describe(0)["card"] == {"skills": ["deploy"]}
    assert beta.stats["cards_received"] == 2


async def test_a_bad_card_is_ignored_and_the_session_lives(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    beta = make_node(tmp_path, "beta")
    net.listen(beta)
    raw = RawPeer("alpha", await net.open_tcp_stream(*ADDR["beta"]), os.urandom(32))
    know(beta, "alpha", raw.public_key)
    await raw.dial(beta, ts=1)
    await settle()
    for body in (b"{", b'{"skills":"x"}', b'{"skills":[],"skills":[]}', b"x" * (MAX_WIRE + 1)):
        await raw.send(bytes([frames.CARD]) + body)
    await raw.send(bytes([frames.CARD]) + json.dumps({"skills": ["ok"]}).encode())
    await settle()
    assert beta.stats["cards_refused"] == 4
    assert beta.peers["alpha"].connected
    assert beta.peers["alpha"].describe(0)["card"] == {"skills": ["ok"]}
    assert isinstance(beta.peers["alpha"].active, Session)


@pytest.mark.parametrize(
    "card",
    [
        {"skills": ["bad skill"]},
        {"skills": ["x"] * 33},
        {"description": "d" * 1001},
        {"card": [1]},
        {"card": {"big": "x" * 9000}},
        {"other": 1},
        "text",
    ],
)
def test_bad_cards_are_refused_in_config_and_on_the_wire(card: object) -> None:
    with pytest.raises(ConfigError):
        AgentCard.from_toml(card, "config.toml")
    with pytest.raises(ProtocolError):
        AgentCard.from_wire(json.dumps(card).encode())


def test_nan_is_not_a_card() -> None:
    with pytest.raises(ProtocolError):
        AgentCard.from_wire(b'{"card":{"x":NaN}}')
