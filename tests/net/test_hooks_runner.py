"""The hooks runner (acp/hooks/runner.py) wired to a real Node and store, on the autojump clock.

The hook's transport is replaced by a script of outcomes, so the delays between runs are the
schedule's own, read off the virtual clock; tests/hooks/test_transport.py runs the real
transports and tests/integration/test_hooks.py whole daemons.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from netkit import InlineDatabase, make_node, notify

from acp.config import Config
from acp.hooks import schedule, transport
from acp.hooks.runner import Hook, Hooks
from acp.identity import Identity
from acp.model import Ack
from acp.net.node import Node
from acp.net.peer import Peer
from acp.proto import envelope as envelope_mod
from acp.proto.inbox import Item

OK = transport.Result(schedule.OK, 200)
DOWN = transport.Result(schedule.RETRY, 503, error="HTTP 503 Service Unavailable")
BAD = transport.Result(schedule.GIVE_UP, 400, error="HTTP 400 Bad Request")


class Sink:
    def __init__(self) -> None:
        self.acks: list[Ack] = []

    def send_ack(self, ack: Ack) -> None:
        self.acks.append(ack)


class Script:
    """Stands in for ``Hooks.call``: answers from ``outcomes`` (then OK), records each run."""

    def __init__(self, outcomes: list[transport.Result] | None = None) -> None:
        self.outcomes = list(outcomes or [])
        self.runs: list[tuple[float, int, int]] = []  # (time, seq, count)

    async def __call__(self, hook: Hook, item: Item, count: int) -> transport.Result:
        self.runs.append((trio.current_time(), item.seq, count))
        await trio.sleep(0.01)
        return self.outcomes.pop(0) if self.outcomes else OK

    def times(self) -> list[float]:
        return [t for t, _, _ in self.runs]


def hooked(tmp_path: Path, **hook: Any) -> tuple[Node, Peer]:
    spec = {"name": "wake", "type": "http", "url": "http://127.0.0.1:9/", **hook}
    node = make_node(tmp_path, "alpha", hooks=[spec])
    beta = node.add_peer(Peer("beta", pubkey=os.urandom(32)))
    return node, beta


async def start(node: Node, nursery: trio.Nursery, script: Script) -> Hooks:
    hooks = Hooks(node, node.config.hooks, {})
    hooks.call = script  # type: ignore[method-assign]
    await hooks.open()
    await nursery.start(hooks.run)
    return hooks


def arrive(node: Node, peer: Peer, *ids: str) -> None:
    for env_id in ids:
        body = json.dumps(notify(peer.agent_id, node.agent_id, env_id)).encode()
        node.deliver(Sink(), peer, envelope_mod.parse(body), body)


@pytest.fixture
def clock(autojump_clock: trio.testing.MockClock) -> Iterator[trio.testing.MockClock]:
    yield autojump_clock


async def test_a_failing_hook_backs_off_and_succeeds_later(
    clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    node, beta = hooked(tmp_path)
    script = Script([DOWN, DOWN, DOWN])
    hooks = await start(node, nursery, script)
    arrive(node, beta, "m1")
    await trio.sleep(60)
    times = script.times()
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # one envelope: its own backoff (a step behind the hook's) sets the pace: ~2, ~4, ~8 s
    for gap, base in zip(gaps, (2, 4, 8), strict=True):
        assert base * 0.8 - 0.02 <= gap <= base * 1.2 + 0.02, gaps
    report = hooks.report()[0]
    assert (report["state"], report["delivered"], report["failures"]) == ("ok", 1, 3)
    assert report["last_error"] == "HTTP 503 Service Unavailable"
    assert node.local.unread_count == 1  # ack = false: the agent still has it to read


async def test_an_endpoint_that_is_down_is_probed_not_flooded(
    clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    node, beta = hooked(tmp_path, backoff_max=30)
    script = Script([DOWN] * 5)
    hooks = await start(node, nursery, script)
    arrive(node, beta, *(f"m{i}" for i in range(50)))
    await trio.sleep(20)
    # one probe per backoff period of the hook (~0, 1, 3, 7, 15 s), not one per envelope
    assert 4 <= len(script.runs) <= 6, script.times()
    await trio.sleep(100)
    assert hooks.report()[0]["delivered"] == 50
    succeeded = {seq for _, seq, _ in script.runs[5:]}
    assert succeeded == set(range(1, 51)) and len(script.runs) == 55


async def test_an_envelope_read_meanwhile_is_not_handed_over_again(
    clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    node, beta = hooked(tmp_path)
    script = Script([DOWN])
    hooks = await start(node, nursery, script)
    arrive(node, beta, "m1")
    await trio.sleep(0.5)
    assert len(script.runs) == 1
    node.ack(["m1"], None, lambda n: None)
    await trio.sleep(60)
    assert len(script.runs) == 1
    assert hooks.report()[0]["pending"] == 0


async def test_ack_true_marks_the_envelope_read_after_success_only(
    clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    node, beta = hooked(tmp_path, ack=True)
    script = Script([DOWN])
    await start(node, nursery, script)
    arrive(node, beta, "m1", "m2")
    await trio.sleep(1.5)  # m1 failed, m2 went when the hook's gate opened (~1 s)
    assert node.local.unread_count == 1  # m1 waits for its own backoff (~2 s), still unread
    await trio.sleep(10)
    assert node.local.unread_count == 0


async def test_a_given_up_envelope_stays_unread_and_is_reported(
    clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    node, beta = hooked(tmp_path, ack=True)
    script = Script([BAD])
    hooks = await start(node, nursery, script)
    arrive(node, beta, "m1", "m2")
    await trio.sleep(5)
    assert len(script.runs) == 2  # the 400 is not retried; the next envelope still goes
    report = hooks.report()[0]
    assert (report["state"], report["given_up"], report["delivered"]) == ("ok", 1, 1)
    assert [i.msg_id for i in node.local.unread()] == ["m1"]


async def test_coalesce_makes_one_run_of_a_burst(
    clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    node, beta = hooked(tmp_path, coalesce=5)
    script = Script()
    hooks = await start(node, nursery, script)
    arrive(node, beta, "m1", "m2", "m3")
    await trio.sleep(1)
    arrive(node, beta, "m4")
    await trio.sleep(10)
    assert [(seq, count) for _, seq, count in script.runs] == [(4, 4)]
    assert script.runs[0][0] == pytest.approx(5.0, abs=0.1)
    assert hooks.report()[0]["coalesced"] == 3


async def test_a_restart_resumes_what_was_pending_and_not_what_was_done(
    clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    script = Script([OK, DOWN])
    async with trio.open_nursery() as nursery:
        node, beta = hooked(tmp_path, backoff_max=100)
        hooks = await start(node, nursery, script)
        arrive(node, beta, "m1", "m2", "m3")
        await trio.sleep(1.3)  # m1 handed over, m2 failed (retry in ~2 s), m3 went after ~1 s
        assert [seq for _, seq, _ in script.runs] == [1, 2, 3]
        nursery.cancel_scope.cancel()
    assert hooks.report()[0]["failures"] == 1
    # the restart: the same database, a new Node, new Hooks
    db = node.db
    assert isinstance(db, InlineDatabase)
    loaded = db.load_now()
    config = Config.from_toml(
        {"hooks": [dict(name="wake", type="http", url="http://x/")]},
        home=node.config.home,
        agent_id="alpha",
    )
    again = Node(config, Identity.from_private(os.urandom(32)), db, loaded.peers)
    again.restore(loaded)
    script2 = Script()
    async with trio.open_nursery() as nursery:
        hooks2 = await start(again, nursery, script2)
        report = hooks2.report()[0]
        assert (report["pending"], report["delivered"], report["failures"]) == (1, 2, 1)
        await trio.sleep(0.1)
        assert script2.runs == []  # m2 still waits out its backoff, across the restart
        await trio.sleep(10)
        assert [seq for _, seq, _ in script2.runs] == [2]
        nursery.cancel_scope.cancel()


async def test_a_new_hook_does_not_fire_for_the_backlog(
    clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    node = make_node(tmp_path, "alpha")
    beta = node.add_peer(Peer("beta", pubkey=os.urandom(32)))
    arrive(node, beta, "old")
    await trio.testing.wait_all_tasks_blocked()
    config = Config.from_toml(
        {"hooks": [dict(name="wake", type="http", url="http://x/")]},
        home=node.config.home,
        agent_id="alpha",
    )
    node.config = config
    script = Script()
    await start(node, nursery, script)
    arrive(node, beta, "new")
    await trio.sleep(1)
    assert [seq for _, seq, _ in script.runs] == [2]


async def test_filters_pick_kinds_and_senders(
    clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    node, beta = hooked(tmp_path, kinds=["query"], **{"from": ["carol"]})
    carol = node.add_peer(Peer("carol", pubkey=os.urandom(32)))
    script = Script()
    await start(node, nursery, script)
    arrive(node, beta, "n1")  # a notify from beta: neither
    arrive(node, carol, "n2")  # a notify from carol: not a query
    body = json.dumps(
        notify(
            "carol",
            "alpha",
            "q1",
            kind="query",
            payload={"question": "?", "context_budget": "minimal"},
        )
    ).encode()
    node.deliver(Sink(), carol, envelope_mod.parse(body), body)
    await trio.sleep(1)
    assert [seq for _, seq, _ in script.runs] == [3]


async def test_a_chatty_peer_gets_at_most_max_per_minute_runs_and_loses_nothing(
    clock: trio.testing.MockClock, tmp_path: Path, nursery: trio.Nursery
) -> None:
    node, beta = hooked(tmp_path, max_per_minute=10, concurrency=4)
    node.local.limit = node.local.per_sender = 5000
    script = Script()
    hooks = await start(node, nursery, script)
    for i in range(1000):  # 1000 envelopes over a minute, one every 60 ms
        arrive(node, beta, f"m{i}")
        await trio.sleep(0.06)
    await trio.sleep(120)
    times = script.times()
    for k, t in enumerate(times):  # any 11 runs span more than a minute
        if k + 10 < len(times):
            assert times[k + 10] - t >= 60 - 1e-6, times
    covered = sum(count for _, _, count in script.runs)
    report = hooks.report()[0]
    assert covered == 1000 and report["delivered"] == 1000 and report["pending"] == 0
    assert report["coalesced"] == 1000 - len(times) and len(times) <= 30
    assert node.local.unread_count == 1000  # ack = false: all still there for the agent


async def test_exec_children_do_not_inherit_the_hooks_secrets(tmp_path: Path) -> None:
    node = make_node(
        tmp_path,
        "alpha",
        hooks=[
            {"name": "oc", "type": "openclaw", "token_env": "OC_TOKEN"},
            {"name": "web", "type": "http", "url": "http://x/", "headers": {"A": "${env:WEB}"}},
            {"name": "run", "type": "exec", "argv": ["true"]},
        ],
    )
    env = {"OC_TOKEN": "secret-1", "WEB": "secret-2", "PATH": "/usr/bin", "HOME": "/home/u"}
    hooks = Hooks(node, node.config.hooks, env)
    assert hooks.child_env == {"PATH": "/usr/bin", "HOME": "/home/u"}
    assert hooks.hooks["web"].headers == {"A": "secret-2"}
