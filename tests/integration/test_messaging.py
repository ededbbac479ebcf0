"""Messages between real daemons: query/response, delegate, notify, dedupe, queueing across a crash."""

from __future__ import annotations

import json
import time

import trio
from integration_harness import Fleet, wait_for

from acp.client import TrioClient, delegate_envelope, notify_envelope, query_envelope


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_query_response_round_trip_over_the_cli(fleet: Fleet) -> None:
    """`acp send --wait` on A prints the data B answered with `acp listen` + `acp reply`."""
    a, b, c = fleet.daemon("agent-a"), fleet.daemon("agent-b"), fleet.daemon("agent-c")
    fleet.mesh(a, b, c)

    asking = a.popen_cli("send", "agent-b", "what is 6 * 7?", "--wait", "--timeout", "20")
    heard = b.run_cli("listen", "--count", "1", timeout=20, check=0)
    (query,) = _json_lines(heard.stdout)
    assert query["kind"] == "query"
    assert query["from"] == "agent-a" and query["to"] == "agent-b"
    assert query["payload"]["question"] == "what is 6 * 7?"
    replied = b.run_cli("reply", query["id"], '{"answer": 42}', check=0)
    assert replied.stdout.strip()  # the response's own msg_id
    out, err = asking.communicate(timeout=20)
    assert asking.returncode == 0, err
    assert json.loads(out) == {"answer": 42}

    # The same through the Client API, to the third daemon, with text data.
    sub = fleet.subscribe(c)
    with a.client() as client:
        sent = client.query("agent-c", "status?", wait="accepted")
    (q,) = sub.collect(1)
    assert q["id"] == sent["msg_id"]
    answer = a.popen_cli("send", "agent-c", "and now?", "--wait", "--timeout", "20")
    (q2,) = sub.collect(1)
    with c.client() as client:
        client.reply(q2["id"], "all green")
    out, err = answer.communicate(timeout=20)
    assert answer.returncode == 0, err
    assert out == "all green\n"
    # a response consumed by a waiting send is not also pushed to A's inbox
    assert a.status()["inbox"] == 0


def test_waiting_send_times_out_with_exit_75(fleet: Fleet) -> None:
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    started = time.monotonic()
    out = a.run_cli("send", "agent-b", "anyone?", "--wait", "--timeout", "1", timeout=15)
    assert out.returncode == 75, out
    assert "no response from agent-b within 1 s" in out.stderr
    assert time.monotonic() - started < 10
    # the query itself was delivered: it waits in B's inbox
    wait_for(lambda: b.status()["inbox"] == 1, timeout=5, what="the query in B's inbox")


def test_delegate_urgent_and_notify_broadcast(fleet: Fleet) -> None:
    a, b, c = fleet.daemon("agent-a"), fleet.daemon("agent-b"), fleet.daemon("agent-c")
    fleet.mesh(a, b, c)

    out = a.run_cli(
        "delegate", "agent-b", "run the nightly tests", "--report-back", "--acked", check=0
    )
    assert out.stdout.strip()
    out = a.run_cli(
        "delegate", "agent-b", "stop the deploy", "--urgent", "--context", '{"deploy": 42}', check=0
    )
    out = a.run_cli("notify", "build-finished", '{"ok": true, "commit": "3f2a91c"}', check=0)
    msg_id, _, receivers = out.stdout.strip().partition(" -> ")
    assert receivers == "agent-b, agent-c"

    got_b = _json_lines(b.run_cli("listen", "--count", "3", timeout=20, check=0).stdout)
    got_c = _json_lines(c.run_cli("listen", "--count", "1", timeout=20, check=0).stdout)

    normal, urgent, note_b = got_b
    assert normal["kind"] == urgent["kind"] == "delegate"
    assert normal["payload"] == {
        "task": "run the nightly tests",
        "priority": "normal",
        "report_back": True,
    }
    assert urgent["payload"]["priority"] == "urgent"
    assert urgent["payload"]["context"] == {"deploy": 42}
    assert urgent["payload"]["report_back"] is False
    (note_c,) = got_c
    for note, to in ((note_b, "agent-b"), (note_c, "agent-c")):
        assert note["kind"] == "notify"
        assert note["id"] == msg_id
        assert note["from"] == "agent-a" and note["to"] == to
        assert note["payload"] == {
            "topic": "build-finished",
            "data": {"ok": True, "commit": "3f2a91c"},
        }
    for d in (b, c):
        assert d.status()["inbox"] == 0


def test_urgent_delegate_overtakes_queued_traffic(fleet: Fleet) -> None:
    """Queued while the peer is away, an urgent delegate is delivered before older normal ones."""
    sender, receiver = fleet.daemon("sender"), fleet.daemon("receiver")
    sender.knows(receiver)
    receiver.knows(sender)
    sender.start()
    with sender.client() as client:
        for i in range(3):
            r = client.send("receiver", delegate_envelope(f"normal {i}"))
            assert r["state"] == "queued"
        client.send("receiver", delegate_envelope("urgent", urgent=True))
    assert sender.status()["queued"] == 4
    receiver.start()  # the lower agent_id dials at once
    got = _json_lines(receiver.run_cli("listen", "--count", "4", timeout=20, check=0).stdout)
    assert [e["payload"]["task"] for e in got] == ["urgent", "normal 0", "normal 1", "normal 2"]


def test_duplicate_envelope_ids_are_delivered_once(fleet: Fleet) -> None:
    a, b, c = fleet.daemon("agent-a"), fleet.daemon("agent-b"), fleet.daemon("agent-c")
    fleet.mesh(a, b, c)
    sub = fleet.subscribe(b)
    env = {"id": "dup-1", **notify_envelope("t", "first copy")}

    with a.client() as client:
        for _ in range(2):
            r = client.send("agent-b", env, wait="acked", timeout=10)  # a duplicate is ACKed too
            assert r["state"] == "acked" and r["msg_id"] == "dup-1"
        client.send("agent-b", {"id": "dup-2", **notify_envelope("t", "next")}, wait="acked")
    # dedupe is per (from, id): the same id from C is another message
    with c.client() as client:
        client.send("agent-b", {"id": "dup-1", **notify_envelope("t", "from c")}, wait="acked")

    got = sub.collect(2)
    # A's second dup-1 would come before dup-2: per-peer order is kept
    assert [(e["from"], e["id"]) for e in got] == [("agent-a", "dup-1"), ("agent-a", "dup-2")]
    (from_c,) = sub.collect(1)
    assert (from_c["from"], from_c["id"], from_c["payload"]["data"]) == (
        "agent-c",
        "dup-1",
        "from c",
    )
    assert sub.next(timeout=0.3) is None
    st = b.status()
    assert st["counters"]["duplicates"] == 1
    assert st["messages_received"] == 3


def test_messages_queued_for_a_killed_peer_arrive_once_in_order(fleet: Fleet) -> None:
    sender, receiver = fleet.daemon("sender"), fleet.daemon("receiver")
    fleet.mesh(sender, receiver)
    with sender.client() as client:
        client.send("receiver", notify_envelope("seq", "before"), wait="acked", timeout=10)

    receiver.kill()  # SIGKILL: no BYE, no cleanup; acp.sock stays behind
    wait_for(lambda: not sender.is_connected("receiver"), timeout=10, what="sender to see it gone")
    n = 20
    with sender.client() as client:
        ids = []
        for i in range(n):
            r = client.send("receiver", notify_envelope("seq", i))
            assert r["state"] == "queued"
            ids.append(r["msg_id"])
    assert sender.status()["queued"] == n

    receiver.start()  # same ACP_HOME, same port
    heard = receiver.run_cli("listen", "--count", str(n + 1), timeout=30, check=0)
    got = _json_lines(heard.stdout)
    # "before" was ACKed, so it was stored: it survived the SIGKILL, unread, ahead of the rest
    assert [e["payload"]["data"] for e in got] == ["before", *range(n)]
    assert [e["id"] for e in got[1:]] == ids
    wait_for(lambda: sender.status()["queued"] == 0, timeout=10, what="every ACK at the sender")
    st = receiver.status()
    assert st["messages_received"] == n  # since the restart: the "before" one is not resent
    wait_for(lambda: receiver.status()["unread"] == 0, timeout=10, what="listen's acks")

    # nothing trails behind: the next message is the next thing a subscriber sees
    sub = fleet.subscribe(receiver)
    with sender.client() as client:
        client.send("receiver", notify_envelope("seq", "after"), wait="acked", timeout=10)
    (after,) = sub.collect(1)
    assert after["payload"]["data"] == "after"


def test_largest_envelope_crosses_and_one_byte_more_is_refused(fleet: Fleet) -> None:
    """65518 bytes of compact JSON fill one 65535-byte Noise frame exactly (docs/protocol.md §6)."""
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    sub = fleet.subscribe(b)

    def envelope(size: int, env_id: str) -> dict:
        env = {
            "v": 1,
            "id": env_id,
            "from": "agent-a",
            "to": "agent-b",
            "ts": 1_700_000_000_000,
            "kind": "query",
            "reply_to": None,
            "payload": {"question": "", "context_budget": "minimal"},
        }
        base = len(json.dumps(env, separators=(",", ":")).encode())
        env["payload"]["question"] = "x" * (size - base)
        assert len(json.dumps(env, separators=(",", ":")).encode()) == size
        return env

    with a.client() as client:
        r = client.send("agent-b", envelope(65518, "max"), wait="acked", timeout=10)
        assert r["state"] == "acked"
        try:
            client.send("agent-b", envelope(65519, "max-plus-one"))
        except Exception as exc:
            assert getattr(exc, "code", None) == "too_large", exc
            assert "65518" in str(exc)
        else:
            raise AssertionError("a 65519-byte envelope was accepted")
    (got,) = sub.collect(1)
    assert got["id"] == "max" and len(got["payload"]["question"]) > 65000
    assert sub.next(timeout=0.3) is None


def test_listen_cli_streams_json_lines(fleet: Fleet) -> None:
    """`acp listen` prints each envelope as it arrives, one JSON object per line."""
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    listener = b.popen_cli("listen", "--count", "2")  # killed at teardown if it hangs
    wait_for(lambda: b.status()["subscribers"] == 1, timeout=10, what="listen to subscribe")
    with a.client() as client:
        client.send("agent-b", query_envelope("one"))
        client.send("agent-b", notify_envelope("two", [1, 2]))
    out, err = listener.communicate(timeout=20)
    assert listener.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["payload"]["question"] == "one"
    assert second["payload"] == {"topic": "two", "data": [1, 2]}


def test_listen_count_leaves_the_rest_in_the_inbox(fleet: Fleet) -> None:
    """An agent polling with `acp listen --count 1` gets every waiting envelope, one per call."""
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    with a.client() as client:
        for i in range(3):
            client.send("agent-b", notify_envelope("n", i), wait="acked", timeout=10)
    assert b.status()["inbox"] == 3
    for i in range(3):
        out = b.run_cli("listen", "--count", "1", timeout=10, check=0)
        assert json.loads(out.stdout)["payload"]["data"] == i
        assert b.status()["inbox"] == 2 - i


async def test_trio_client_query_and_answer(fleet: Fleet) -> None:
    """The async client: B answers from a `listen` loop while A awaits the response."""
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)  # blocking, with its own deadlines

    async def answer_one() -> None:
        async with TrioClient(b.home) as inbound, TrioClient(b.home) as outbound:
            async for env in inbound.listen():
                await outbound.reply(env["id"], {"echo": env["payload"]["question"]})
                return

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_one)
            async with TrioClient(a.home) as client:
                sent = await client.query("agent-b", "ping?", wait="response", timeout=15)
    assert sent["state"] == "answered"
    response = sent["response"]
    assert response["kind"] == "response" and response["reply_to"] == sent["msg_id"]
    assert response["from"] == "agent-b" and response["payload"]["data"] == {"echo": "ping?"}
