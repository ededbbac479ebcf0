"""Verified pairing (docs/protocol.md §9): the session's code, `acp verify --confirm`, and
``trust = "verified"``, over sessions on memory streams.

The code is derived from the Noise handshake hash, so the two ends of one session show the same
code, and a relay that runs a handshake with each side (a man in the middle) shows them two
different codes. A confirmed key is ``verified`` in ``peers``, inbox items and pushes, across a
restart, until the key changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from netkit import (
    ADDR,
    FakeConn,
    FakeNet,
    Link,
    RawPeer,
    Stream,
    connect,
    know,
    make_node,
    send,
    settle,
    stored_peer,
)

from acp.errors import IpcError
from acp.model import encode_key, fingerprint
from acp.net import listener
from acp.net.ipc_server import IpcServer
from acp.net.node import Node
from acp.net.peers import PeerManager
from acp.proto import handshake as hs
from acp.proto import ipc
from acp.proto.noise import public_key


def request(node: Node, nursery: trio.Nursery, cmd: str, **args: Any) -> dict[str, Any]:
    """One IPC request through the daemon's own dispatch; the reply (also one sent later)."""
    conn = FakeConn()
    line = json.dumps({"cmd": cmd, "req": 1, **args}).encode()
    try:
        reply = IpcServer(node).dispatch(conn, ipc.parse_request(line), nursery)  # type: ignore[arg-type]
    except IpcError as exc:  # what the server's reader sends for it
        return ipc.error_reply(exc.code, exc.message, exc.req)
    if reply is None:
        assert len(conn.sent) == 1, conn.sent
        reply = conn.sent[0]
    return reply


async def alpha_dials_beta(net: FakeNet, nursery: trio.Nursery, alpha: Node, beta: Node) -> None:
    """alpha knows beta (static) and dials it; the session is up."""
    know(alpha, "beta", beta.identity.public_key)
    net.listen(beta)
    await connect(nursery, alpha, beta)


async def verify(node: Node, nursery: trio.Nursery, agent_id: str, **args: Any) -> dict[str, Any]:
    conn = FakeConn()
    line = json.dumps({"cmd": "verify", "agent_id": agent_id, "req": 7, **args}).encode()
    reply = IpcServer(node).dispatch(conn, ipc.parse_request(line), nursery)  # type: ignore[arg-type]
    if reply is None:  # --confirm replies once the record is committed
        assert conn.sent == []
        await settle()
        assert len(conn.sent) == 1, conn.sent
        reply = conn.sent[0]
    assert reply["ok"] is True and reply["req"] == 7, reply
    return reply


def pinned(node: Node, agent_id: str, key: bytes) -> None:
    """``node`` holds ``key`` for ``agent_id`` as a tofu pin (what the supervisor does)."""
    node.store.pin(agent_id, key)


async def test_both_ends_of_a_session_show_the_same_code(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    know(alpha, "beta", beta.identity.public_key)
    pinned(alpha, "beta", beta.identity.public_key)
    net.listen(beta)
    session = await connect(nursery, alpha, beta)
    at_alpha = await verify(alpha, nursery, "beta")
    at_beta = await verify(beta, nursery, "alpha")

    assert at_alpha["code"] == at_beta["code"]
    assert at_alpha["code"] == hs.verification_code(session.keys.handshake_hash)
    assert len(at_alpha["code"]) == 6 and at_alpha["code"].isdigit()
    assert at_alpha["agent_id"] == "beta" and at_alpha["own_id"] == "alpha"
    assert at_beta["agent_id"] == "alpha" and at_beta["own_id"] == "beta"
    assert at_alpha["fingerprint"] == beta.identity.fingerprint
    assert at_beta["fingerprint"] == alpha.identity.fingerprint
    assert at_alpha["trust"] == at_beta["trust"] == "tofu"  # showing the code records nothing
    assert beta.peers["alpha"].active is not None
    assert beta.peers["alpha"].active.keys.handshake_hash == session.keys.handshake_hash

    # a new session is a new handshake (fresh ephemeral keys): a new code, again the same on both
    session.close("test", bye="test")
    await settle()
    again = await connect(nursery, alpha, beta)
    code_alpha = (await verify(alpha, nursery, "beta"))["code"]
    assert code_alpha == (await verify(beta, nursery, "alpha"))["code"]
    assert code_alpha == hs.verification_code(again.keys.handshake_hash)
    assert again.keys.handshake_hash != session.keys.handshake_hash


class Relay:
    """A man in the middle at beta's address: it answers alpha with a key of its own (alpha,
    under tofu, took it for beta's) and dials beta as "alpha" with another key of its own, then
    passes every frame on, decrypted from one session and encrypted into the other."""

    def __init__(self, beta: Node, nursery: trio.Nursery) -> None:
        self.beta, self.nursery = beta, nursery
        self.key_as_beta, self.key_as_alpha = os.urandom(32), os.urandom(32)
        self.passed = 0

    async def __call__(self, from_alpha: Stream) -> None:
        to_alpha = RawPeer("beta", from_alpha, self.key_as_beta)
        await to_alpha.answer()
        link = Link(("198.51.100.66", 41000), ADDR["beta"])
        self.nursery.start_soon(listener._handle, self.beta, link.server)
        to_beta = RawPeer("alpha", link.client, self.key_as_alpha)
        await to_beta.dial(self.beta, ts=1, port=ADDR["alpha"][1])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, to_alpha, to_beta)
            nursery.start_soon(self._pump, to_beta, to_alpha)

    async def _pump(self, src: RawPeer, dst: RawPeer) -> None:
        try:
            while True:
                while (body := src.decoder.next_frame()) is None:
                    data = await src.stream.receive_some()
                    if not data:
                        return
                    src.decoder.feed(data)
                await dst.send(src.keys.recv.decrypt(body))
                self.passed += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # one side went away (the test ends): so does the relay


async def test_a_relay_in_the_middle_shows_two_different_codes(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    relay = Relay(beta, nursery)
    net.serve(ADDR["beta"], relay)
    # alpha heard of "beta" with the relay's key (a forged mDNS answer) and pins it (tofu)
    alpha.discovered("beta", public_key(relay.key_as_beta), *ADDR["beta"], boot=None)
    pinned(alpha, "beta", public_key(relay.key_as_beta))
    await connect(nursery, alpha, beta)
    assert beta.peers["alpha"].active is not None, "beta never got a session through the relay"

    # the relay works: an envelope gets through, and nothing else looks wrong
    inbox, sender = FakeConn(), FakeConn()
    beta.subscribe(inbox)
    send(alpha, "beta", "through-the-relay", sender)
    await settle()
    assert inbox.inbound_ids() == ["through-the-relay"]
    assert relay.passed >= 2 and not alpha.peers["beta"].outbox

    at_alpha = await verify(alpha, nursery, "beta")
    at_beta = await verify(beta, nursery, "alpha")
    assert at_alpha["code"] != at_beta["code"]  # what the two people see, and compare
    # each side sees the relay's key, not its peer's
    assert at_alpha["fingerprint"] == fingerprint(public_key(relay.key_as_beta))
    assert at_beta["fingerprint"] == fingerprint(public_key(relay.key_as_alpha))
    assert at_alpha["fingerprint"] != beta.identity.fingerprint
    assert at_alpha["trust"] == at_beta["trust"] == "tofu"


async def test_confirm_records_verified_durably_until_the_key_changes(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    await alpha_dials_beta(net, nursery, alpha, beta)
    inbox = FakeConn()
    beta.subscribe(inbox)
    send(alpha, "beta", "before")
    await settle()

    confirmed = await verify(beta, nursery, "alpha", confirm=True)
    assert confirmed["trust"] == "verified"
    assert confirmed["fingerprint"] == alpha.identity.fingerprint
    assert confirmed["code"] == (await verify(alpha, nursery, "beta"))["code"]
    on_disk = stored_peer(beta, "alpha")  # committed before the reply
    assert on_disk is not None and on_disk.verified == alpha.identity.public_key
    assert on_disk.is_verified
    rows = request(beta, nursery, "peers")["peers"]
    assert [(r["id"], r["trust"]) for r in rows] == [("alpha", "verified")]

    # inbox items and pushes say verified from now on (an item keeps the level it arrived with)
    send(alpha, "beta", "after")
    await settle()
    assert [(p["envelope"]["id"], p["trust"]) for p in inbox.inbound] == [
        ("before", "tofu"),
        ("after", "verified"),
    ]
    unread = await beta.read_inbox(unread=True, since=0, limit=10, kinds=None, senders=None)
    assert [(i.msg_id, i.trust) for i in unread] == [("before", "tofu"), ("after", "verified")]

    # a restart reads it back
    beta2 = make_node(tmp_path, "beta")
    assert beta2.trust_of("alpha") == "verified"

    # `acp trust` with the same key keeps it; with another key drops it (explicit, not verified)
    same = request(beta2, nursery, "trust", agent_id="alpha", pubkey=alpha.identity.public_b64)
    assert same["ok"] and beta2.trust_of("alpha") == "verified"
    other = encode_key(public_key(os.urandom(32)))
    assert request(beta2, nursery, "trust", agent_id="alpha", pubkey=other)["ok"]
    assert beta2.trust_of("alpha") == "explicit"
    await settle()
    assert stored_peer(beta2, "alpha").verified is None  # type: ignore[union-attr]
    # and going back to the old key does not bring the verification back
    request(beta2, nursery, "trust", agent_id="alpha", pubkey=alpha.identity.public_b64)
    assert beta2.trust_of("alpha") == "explicit"


async def test_forget_and_a_new_pin_are_not_verified(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha, beta = make_node(tmp_path, "alpha"), make_node(tmp_path, "beta")
    await alpha_dials_beta(net, nursery, alpha, beta)
    await verify(beta, nursery, "alpha", confirm=True)
    assert beta.trust_of("alpha") == "verified"

    assert request(beta, nursery, "forget", agent_id="alpha")["ok"]
    await settle()
    assert stored_peer(beta, "alpha") is None
    await connect(nursery, alpha, beta)  # the same key, pinned again on first contact
    assert beta.store.get("alpha").pubkey == alpha.identity.public_key  # type: ignore[union-attr]
    assert beta.trust_of("alpha") == "tofu"
    assert (await verify(beta, nursery, "alpha"))["trust"] == "tofu"


async def test_verify_needs_a_live_session_and_says_how_to_get_one(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    alpha = make_node(tmp_path, "alpha")
    know(alpha, "beta", make_node(tmp_path, "beta").identity.public_key)
    with pytest.raises(IpcError) as err:
        alpha.verify("beta")
    assert err.value.code == "not_connected"
    assert "beta is not connected" in err.value.message and "acp peers" in err.value.message
    with pytest.raises(IpcError) as err:
        alpha.verify("beta", confirm=True)
    assert err.value.code == "not_connected"
    assert alpha.trust_of("beta") == "tofu" and alpha.store.get("beta") is None
    reply = request(alpha, nursery, "verify", agent_id="carol")
    assert reply["error"]["code"] == "unknown_peer" and "carol" in reply["error"]["message"]
    reply = request(alpha, nursery, "verify", agent_id="alpha")
    assert reply["error"]["code"] == "bad_request"
    reply = request(alpha, nursery, "verify", agent_id="beta", confirm="yes")
    assert reply["error"]["code"] == "bad_request"


# -- trust = "verified" ----------------------------------------------------------------------------


def undelivered(conn: FakeConn) -> list[tuple[str, str]]:
    return [(e["msg_id"], e["reason"]) for e in conn.sent if e.get("event") == "undelivered"]


async def test_trust_verified_refuses_a_tofu_key_and_takes_a_verified_one(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha = make_node(tmp_path, "alpha")
    beta = make_node(tmp_path, "beta", trust="verified")
    await alpha_dials_beta(
        net, nursery, alpha, beta
    )  # the session comes up: the key is pinned, as tofu
    assert beta.trust_of("alpha") == "tofu" and beta.peers["alpha"].connected
    inbox, sender = FakeConn(), FakeConn()
    beta.subscribe(inbox)

    for env_id in ("refused-1", "refused-2"):
        send(alpha, "beta", env_id, sender)
    await settle()
    assert inbox.inbound == [] and beta.local.unread_count == 0
    assert undelivered(sender) == [("refused-1", "not_trusted"), ("refused-2", "not_trusted")]
    assert not alpha.peers["beta"].outbox  # refused, not held: the sender keeps nothing
    assert beta.stats["envelopes_refused.not_trusted"] == 2
    assert alpha.stats["undelivered.not_trusted"] == 2
    assert beta.peers["alpha"].connected  # the session stays, for `acp verify`

    await verify(beta, nursery, "alpha", confirm=True)
    send(alpha, "beta", "welcome", sender)
    await settle()
    assert [(p["envelope"]["id"], p["trust"]) for p in inbox.inbound] == [("welcome", "verified")]
    assert len(undelivered(sender)) == 2


async def test_trust_verified_takes_a_static_peer(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    carol = make_node(tmp_path, "carol")
    static = {"agent_id": "carol", "addr": "10.0.0.3:7103", "pubkey": carol.identity.public_b64}
    beta = make_node(tmp_path, "beta", trust="verified", peers=[static])
    PeerManager(beta).load_known()  # pins [[peers]] as the daemon does at start
    know(carol, "beta", beta.identity.public_key)
    net.listen(beta)
    await connect(nursery, carol, beta)
    inbox, sender = FakeConn(), FakeConn()
    beta.subscribe(inbox)
    send(carol, "beta", "from-a-static-peer", sender)
    await settle()
    assert [(p["envelope"]["id"], p["trust"]) for p in inbox.inbound] == [
        ("from-a-static-peer", "explicit")
    ]
    assert undelivered(sender) == [] and beta.stats["envelopes_refused.not_trusted"] == 0


async def test_trust_verified_takes_a_key_pinned_with_acp_trust(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, net: FakeNet, nursery: trio.Nursery
) -> None:
    alpha = make_node(tmp_path, "alpha")
    beta = make_node(tmp_path, "beta", trust="verified")
    assert request(beta, nursery, "trust", agent_id="alpha", pubkey=alpha.identity.public_b64)["ok"]
    await alpha_dials_beta(net, nursery, alpha, beta)
    inbox = FakeConn()
    beta.subscribe(inbox)
    send(alpha, "beta", "named")
    await settle()
    assert [(p["envelope"]["id"], p["trust"]) for p in inbox.inbound] == [("named", "explicit")]
