"""Client and TrioClient against a scripted socket (fake_daemon.py): listen's acks and reconnects,
inbox/ack, and what a broken stream does. No real daemon."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from fake_daemon import FakeDaemon

from acp.client import Client, TrioClient
from acp.errors import DaemonUnavailable, ProtocolError, RequestFailed


def env(n: int) -> dict[str, Any]:
    return {
        "id": f"id-{n}",
        "kind": "notify",
        "from": "agent-b",
        "payload": {"topic": "t", "data": n},
    }


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def fake() -> Iterator[FakeDaemon]:
    home = Path(tempfile.mkdtemp(prefix="acp-"))  # short: AF_UNIX paths stop at 108 bytes
    daemon = FakeDaemon(home / "acp.sock")
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(home, ignore_errors=True)


def client(fake: FakeDaemon) -> Client:
    return Client(socket_path=fake.path)


def subscribes(fake: FakeDaemon) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r["cmd"] == "subscribe"]


# -- acks -----------------------------------------------------------------------------------------


def test_listen_acks_an_envelope_once_the_next_one_is_asked_for(fake: FakeDaemon) -> None:
    for n in (1, 2, 3):
        fake.add(env(n))
    with client(fake) as c:
        it = c.listen(ack=True)
        assert next(it) == env(1)
        time.sleep(0.1)
        assert fake.unread_ids() == ["id-1", "id-2", "id-3"]  # still being handled
        assert next(it) == env(2)
        wait_for(lambda: fake.unread_ids() == ["id-2", "id-3"])
        assert next(it) == env(3)
        assert c.last_seq == 3
        it.close()  # the consumer stopped while it had id-3: that one stays unread
    time.sleep(0.1)
    assert fake.unread_ids() == ["id-3"]
    acks = [r for r in fake.requests if r["cmd"] == "ack"]
    assert [a["ids"] for a in acks] == [["id-1"], ["id-2"]]


def test_listen_with_a_count_returns_once_its_acks_are_confirmed(fake: FakeDaemon) -> None:
    for n in (1, 2, 3):
        fake.add(env(n))
    with client(fake) as c:
        assert list(c.listen(count=2, ack=True)) == [env(1), env(2)]
        assert fake.unread_ids() == ["id-3"]  # no waiting: listen settled them
        assert subscribes(fake)[0]["count"] == 2
        assert list(c.listen(count=1, ack=True)) == [env(3)]  # the same client, again
    assert fake.unread_ids() == []


def test_peek_leaves_everything_unread(fake: FakeDaemon) -> None:
    fake.add(env(1))
    with client(fake) as c:
        assert list(c.listen(count=1)) == [env(1)]
    assert fake.unread_ids() == ["id-1"]
    assert not [r for r in fake.requests if r["cmd"] == "ack"]


def test_a_daemon_without_ack_still_works(fake: FakeDaemon) -> None:
    fake.ack_unknown = True
    for n in (1, 2):
        fake.add(env(n))
    with client(fake) as c:
        assert list(c.listen(count=2, ack=True)) == [env(1), env(2)]


def test_since_starts_after_that_seq_read_or_not(fake: FakeDaemon) -> None:
    for n in (1, 2, 3):
        fake.add(env(n))
    with client(fake) as c:
        c.ack(ids=["id-2"])
        assert list(c.listen(since=1, count=2)) == [env(2), env(3)]
        assert subscribes(fake)[0]["since"] == 1
        assert c.last_seq == 3


def test_events_are_yielded_only_when_asked_and_do_not_count(fake: FakeDaemon) -> None:
    fake.add(env(1))
    fake.add_event("m-1", "agent-c", "expired")
    fake.add(env(2))
    with client(fake) as c:
        got = list(c.listen(count=2, events=True, ack=True))
    assert [g.get("id", g.get("event")) for g in got] == ["id-1", "undelivered", "id-2"]
    assert got[1]["seq"] == 2
    assert all(row["read"] for row in fake.rows)  # the stored event is acked by its msg_id
    fake.add(env(3))
    with client(fake) as c:
        assert list(c.listen(count=1, since=0)) == [env(1)]


@pytest.mark.parametrize("count_events", [True, False], ids=["daemon-counts-events", "envelopes"])
def test_count_means_envelopes_whatever_the_daemon_counts(
    fake: FakeDaemon, count_events: bool
) -> None:
    fake.count_events = count_events
    fake.add_event("m-1", "agent-c", "expired")  # unread, and first in line
    for n in (2, 3, 4):
        fake.add(env(n))
    with client(fake) as c:
        assert list(c.listen(count=3, ack=True)) == [env(2), env(3), env(4)]
        # The event, still unread, then an envelope: a new one, not one read already
        threading.Timer(0.2, lambda: fake.add(env(5))).start()
        got = list(c.listen(count=1, events=True))
    assert got == [fake.rows[0]["event"] | {"seq": 1}, env(5)]
    assert fake.unread_ids() == ["id-5"]


def test_requests_inside_a_listen_loop_lose_no_pushes(fake: FakeDaemon) -> None:
    fake.add(env(1))
    got = []
    with client(fake) as c:
        for item in c.listen(count=3, ack=True):
            got.append(item)
            if item == env(1):
                fake.add(env(2))
                fake.add(env(3))
                assert c.status()["unread"] == 3  # reads the pushes of 2 and 3 on the way
    assert got == [env(1), env(2), env(3)]
    assert fake.unread_ids() == []


# -- reconnect ------------------------------------------------------------------------------------


def test_reconnect_resumes_after_the_last_seq_and_resends_lost_acks(fake: FakeDaemon) -> None:
    for n in (1, 2):
        fake.add(env(n))
    with client(fake) as c:
        it = c.listen(ack=True, reconnect=True)
        assert [next(it), next(it)] == [env(1), env(2)]
        fake.stop()  # a restart: down for a while, then up with what arrived meanwhile
        fake.add(env(3))
        fake.add(env(4))
        timer = threading.Timer(0.5, fake.start)
        timer.start()
        started = time.monotonic()
        assert next(it) == env(3)
        assert time.monotonic() - started >= 0.4  # it waited, and did not die
        fake.add(env(5))
        assert [next(it), next(it)] == [env(4), env(5)]
        assert c.last_seq == 5
        it.close()
        timer.join()
    wait_for(lambda: fake.unread_ids() == ["id-5"])  # id-2's ack was lost with the connection
    assert [s.get("since") for s in subscribes(fake)] == [None, 2]


def test_reconnect_before_anything_was_seen_subscribes_as_first_asked(fake: FakeDaemon) -> None:
    fake._seq = 7
    with client(fake) as c:
        it = c.listen(since=7, reconnect=True)
        threading.Timer(0.2, fake.stop).start()
        threading.Timer(0.6, lambda: (fake.start(), fake.add(env(1)))).start()
        assert next(it) == env(1)
        it.close()
    assert [s.get("since") for s in subscribes(fake)] == [7, 7]


def test_without_reconnect_a_stopped_daemon_ends_listen_with_exit_69(fake: FakeDaemon) -> None:
    fake.add(env(1))
    with client(fake) as c:
        it = c.listen(ack=True)
        assert next(it) == env(1)
        fake.stop()
        with pytest.raises(DaemonUnavailable) as info:
            next(it)
    assert info.value.exit_code == 69
    assert "closed the connection" in info.value.message


def test_a_request_after_a_restart_connects_again(fake: FakeDaemon) -> None:
    with client(fake) as c:
        assert c.status()["ok"]
        fake.stop()
        with pytest.raises(DaemonUnavailable):
            c.status()
        fake.start()
        assert c.status()["ok"]


# -- inbox and ack --------------------------------------------------------------------------------


def test_inbox_reads_without_consuming_and_ack_marks_read(fake: FakeDaemon) -> None:
    for n in (1, 2, 3):
        fake.add(env(n))
    with client(fake) as c:
        out = c.inbox(limit=2, kinds=["notify"], from_=["agent-b"])
        assert [m["seq"] for m in out["messages"]] == [1, 2] and out["next"] == 2
        assert fake.requests[-1] == {
            "cmd": "inbox",
            "req": fake.requests[-1]["req"],
            "limit": 2,
            "kinds": ["notify"],
            "from": ["agent-b"],
        }
        assert c.ack(ids=["id-1", "nope"]) == 1
        assert c.ack(up_to=2) == 1
        assert [m["seq"] for m in c.inbox()["messages"]] == [3]
        assert [m["seq"] for m in c.inbox(unread=False, since=1)["messages"]] == [2, 3]
        with pytest.raises(ValueError):
            c.ack()


# -- broken streams -------------------------------------------------------------------------------


def test_a_line_over_1_mib_from_the_daemon_is_a_clear_error(fake: FakeDaemon) -> None:
    fake.raw = b'{"ok": true, "pad": "' + b"x" * (3 << 20) + b'"}\n'
    with client(fake) as c:
        with pytest.raises(ProtocolError) as info:
            c.status()
        assert "over 1048576 bytes" in info.value.message
        assert c.status()["ok"]  # a new connection


def test_a_garbage_reply_is_a_clear_error(fake: FakeDaemon) -> None:
    fake.raw = b"<html>not the acp daemon</html>\n"
    with client(fake) as c, pytest.raises(ProtocolError) as info:
        c.status()
    assert "not JSON" in info.value.message and "<html>" in info.value.message


def test_an_unknown_command_is_request_failed(fake: FakeDaemon) -> None:
    with client(fake) as c, pytest.raises(RequestFailed) as info:
        c.request("frobnicate")
    assert info.value.code == "unknown_command"


# -- TrioClient -----------------------------------------------------------------------------------


async def test_trio_listen_acks_and_survives_a_restart(fake: FakeDaemon) -> None:
    for n in (1, 2):
        fake.add(env(n))
    got = []

    async def restart() -> None:
        await trio.sleep(0.3)
        fake.add(env(3))
        fake.start()
        fake.add(env(4))

    with trio.fail_after(10):
        async with TrioClient(socket_path=fake.path) as c, trio.open_nursery() as nursery:
            async for item in c.listen(ack=True, reconnect=True):
                got.append(item)
                if item == env(2):
                    fake.stop()
                    nursery.start_soon(restart)
                if item == env(4):
                    break
            assert c.last_seq == 4
    assert got == [env(1), env(2), env(3), env(4)]
    with trio.fail_after(5):
        # id-3's ack is pipelined: it may still be on its way (the fake daemon has no Event)
        while fake.unread_ids() != ["id-4"]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert [s.get("since") for s in subscribes(fake)] == [None, 2]


async def test_trio_count_inbox_ack_and_concurrent_requests(fake: FakeDaemon) -> None:
    for n in (1, 2, 3):
        fake.add(env(n))
    with trio.fail_after(10):
        async with TrioClient(socket_path=fake.path) as c:
            assert [e async for e in c.listen(count=2, ack=True)] == [env(1), env(2)]
            assert fake.unread_ids() == ["id-3"]
            results: list[Any] = []

            async def ask(i: int) -> None:
                results.append((i, (await c.inbox(unread=False))["next"]))

            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(ask, i)
            assert sorted(results) == [(i, 3) for i in range(10)]
            assert await c.ack(up_to=3) == 1
            with pytest.raises(RequestFailed):
                await c.request("frobnicate")


async def test_trio_a_cancelled_request_leaves_the_connection_usable(fake: FakeDaemon) -> None:
    async with TrioClient(socket_path=fake.path) as c:
        with trio.move_on_after(0):
            await c.status()
        assert (await c.status())["ok"]
        fake.raw = b"[1]\n"
        with pytest.raises(ProtocolError):
            await c.status()
        assert (await c.status())["ok"]
