"""``acp mcp`` between real daemons, driven by the MCP SDK's own client over stdio.

Each test starts real ``acp daemon`` processes (the ``fleet`` fixture) and one real ``acp mcp``
subprocess per side (mcp_harness.py). Skipped when the ``mcp`` extra is not installed.
"""

from __future__ import annotations

import pytest

pytest.importorskip(
    "mcp", reason="acp mcp needs the MCP SDK: pip install -e '.[mcp]' (or the test extra)"
)

import mcp.types as types
import trio
from integration_harness import Daemon, Fleet, wait_for
from mcp import Client
from mcp_harness import McpAgent, mcp_agent, server_params, text, unread_footer

from acp.client import notify_envelope, query_envelope
from acp.text import UNTRUSTED_NOTE, sender_line

TOOLS = {"peers", "send", "reply", "inbox", "ack", "wait", "status"}
POLL = 0.1


async def _send(daemon: Daemon, to: str, envelope: dict) -> str:
    """Send from ``daemon`` over its IPC socket (blocking client, off the trio thread)."""
    reply = await trio.to_thread.run_sync(lambda: daemon.request("send", to=to, envelope=envelope))
    msg_id: str = reply["msg_id"]
    return msg_id


async def _inbox_until(agent: McpAgent, within: float = 15.0, **args: object) -> dict:
    """Call the inbox tool until it shows something; its structured result."""
    with trio.fail_after(within):
        while True:
            result = await agent.ok("inbox", **args)
            data = result.structured_content
            assert isinstance(data, dict)
            if data["messages"]:
                return {"result": result, **data}
            await trio.sleep(POLL)


def _from(agent_id: str, fingerprint: str) -> str:
    """How for_model names a sender pinned from config.toml [[peers]] (trust "explicit")."""
    return sender_line(agent_id, fingerprint=fingerprint, trust="explicit")


def _fingerprint(daemon: Daemon) -> str:
    fp: str = daemon.status()["fingerprint"]
    return fp


async def test_tools_are_listed_and_bad_calls_are_tool_errors(fleet: Fleet) -> None:
    a = fleet.daemon("agent-a")
    fleet.start(a)
    async with mcp_agent(a) as agent:
        assert agent.init is not None and agent.session is not None
        assert agent.init.capabilities.experimental == {"claude/channel": {}}
        assert agent.init.server_info.name == "acp"

        with trio.fail_after(10):
            listed = await agent.session.list_tools()
        tools = {tool.name: tool for tool in listed.tools}
        assert set(tools) == TOOLS
        for tool in tools.values():
            assert tool.input_schema["type"] == "object", tool.name
            assert tool.input_schema.get("additionalProperties") is False, tool.name
            assert tool.description and len(tool.description) > 100, tool.name
        send = tools["send"].input_schema
        assert send["required"] == ["to"]
        assert set(send["properties"]) == {"to", "text", "data", "kind", "topic", "wait", "timeout"}
        assert send["properties"]["kind"]["enum"] == ["query", "notify", "delegate"]
        assert send["properties"]["wait"]["enum"] == ["accepted", "acked", "response"]
        assert set(tools["reply"].input_schema["required"]) == {"msg_id", "data"}
        assert set(tools["inbox"].input_schema["properties"]) == {
            "unread",
            "limit",
            "kinds",
            "from",
            "since",
        }
        assert set(tools["ack"].input_schema["properties"]) == {"ids", "up_to"}
        assert tools["wait"].input_schema["properties"]["timeout"]["maximum"] == 1500
        assert tools["inbox"].annotations and tools["inbox"].annotations.read_only_hint

        status = await agent.ok("status")
        assert isinstance(status.structured_content, dict)
        assert status.structured_content["status"]["agent_id"] == "agent-a"
        assert "agent_id agent-a" in text(status)
        assert unread_footer(status) == 0 and "unread envelope(s)" not in text(status)
        peers = await agent.ok("peers")
        assert peers.structured_content == {"peers": [], "unread": 0}

        # Bad calls are tool errors (isError) carrying the reason, and the server carries on.
        unknown = await agent.call("send", to="agent-zz", text="hello?")
        assert unknown.is_error and "agent-zz" in text(unknown)
        assert isinstance(unknown.structured_content, dict)
        assert unknown.structured_content["error"]["code"] == "unknown_peer"
        too_large = await agent.call("send", to="agent-a", text="x" * 70_000)
        assert too_large.is_error
        assert too_large.structured_content["error"]["code"] == "too_large"
        no_text = await agent.call("send", to="agent-a")
        assert no_text.is_error and "needs text" in text(no_text)
        typo = await agent.call("inbox", unred=False)
        assert typo.is_error and "unknown argument(s) unred" in text(typo)
        both = await agent.call("ack", ids=["x"], up_to=3)
        assert both.is_error and "one of the two" in text(both)
        missing = await agent.call("no-such-tool")
        assert missing.is_error and "unknown tool" in text(missing)
        await agent.ok("status")


async def test_send_waits_for_the_answer_given_through_the_other_side(fleet: Fleet) -> None:
    """A's `send` with wait=response returns the data B's model answered with `reply`."""
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    fp_a, fp_b = _fingerprint(a), _fingerprint(b)
    async with mcp_agent(a, "a") as ma, mcp_agent(b, "b") as mb:
        peers = await ma.ok("peers")
        assert isinstance(peers.structured_content, dict)
        (peer,) = peers.structured_content["peers"]
        assert {k: peer[k] for k in ("id", "state", "trust", "fingerprint")} == {
            "id": "agent-b",
            "state": "connected",
            "trust": "explicit",
            "fingerprint": fp_b,
        }
        assert f"- agent-b: connected, key {fp_b}, trust explicit" in text(peers)

        answers = []

        async def ask() -> None:
            answers.append(
                await ma.call(
                    "send",
                    deadline=40,
                    to="agent-b",
                    text="what is 6 * 7?",
                    wait="response",
                    timeout=30,
                )
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            seen = await _inbox_until(mb, kinds=["query"])
            (item,) = seen["messages"]
            query = item["envelope"]
            assert query["from"] == "agent-a" and query["payload"]["question"] == "what is 6 * 7?"
            shown = text(seen["result"])
            assert shown.startswith("1 unread envelope(s), oldest first")
            assert f"acp message query {_from('agent-a', fp_a)}," in shown
            assert f"msg_id {query['id']}, seq {item['seq']}" in shown
            assert UNTRUSTED_NOTE in shown and "<<<acp-data\n" in shown
            assert '"question":"what is 6 * 7?"' in shown
            assert unread_footer(seen["result"]) == 1

            replied = await mb.ok(
                "reply", msg_id=query["id"], data={"answer": 42}, summary="six times seven"
            )
            assert isinstance(replied.structured_content, dict)
            assert replied.structured_content["to"] == "agent-a"
            assert f"in reply to {query['id']}" in text(replied)
            assert unread_footer(replied) == 1  # replying does not ack

        (answer,) = answers
        assert not answer.is_error, text(answer)
        data = answer.structured_content
        assert isinstance(data, dict)
        assert data["state"] == "answered" and data["to"] == "agent-b"
        assert data["response"]["reply_to"] == data["msg_id"]
        assert data["response"]["payload"] == {"data": {"answer": 42}, "summary": "six times seven"}
        shown = text(answer)
        assert shown.startswith(f"sent query {data['msg_id']} to agent-b; it answered:")
        assert f"acp message response {_from('agent-b', fp_b)}," in shown
        assert '"data":{"answer":42}' in shown and UNTRUSTED_NOTE in shown
        # The answer went to the waiting call: it is not left unread on A.
        assert unread_footer(answer) == 0
        assert a.status()["unread"] == 0


async def test_inbox_does_not_consume_ack_does_and_wait_returns_on_arrival(fleet: Fleet) -> None:
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    async with mcp_agent(b) as mb:
        empty = await mb.ok("inbox")
        assert text(empty) == "no unread envelopes"

        notified = await _send(a, "agent-b", notify_envelope("build", {"ok": True}))
        seen = await _inbox_until(mb)
        assert [m["envelope"]["id"] for m in seen["messages"]] == [notified]
        assert "acp message notify from agent agent-a" in text(seen["result"])
        assert unread_footer(seen["result"]) == 1
        again = await mb.ok("inbox")  # reading consumed nothing
        assert [m["envelope"]["id"] for m in again.structured_content["messages"]] == [notified]

        acked = await mb.ok("ack", ids=[notified])
        assert isinstance(acked.structured_content, dict)
        assert acked.structured_content["acked"] == 1
        assert text(acked) == "marked 1 envelope(s) read"  # and no footer: nothing is unread
        after = await mb.ok("inbox")
        assert text(after) == "no unread envelopes" and unread_footer(after) == 0
        listed = await mb.ok("inbox", unread=False)
        assert [m["read"] for m in listed.structured_content["messages"]] == [True]

        # wait blocks until something arrives, then returns it; progress is reported meanwhile.
        progress: list[float] = []
        results = []

        async def wait() -> None:
            results.append(await mb.call("wait", deadline=40, reports=progress, timeout=30))

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.sleep(1.0)
            assert not results, "wait returned before anything arrived"
            asked = await _send(a, "agent-b", query_envelope("still there?"))
        assert trio.current_time() - started < 20
        (waited,) = results
        assert not waited.is_error, text(waited)
        data = waited.structured_content
        assert isinstance(data, dict)
        assert [m["envelope"]["id"] for m in data["messages"]] == [asked]
        assert text(waited).startswith("1 new envelope(s)")
        assert "still there?" in text(waited) and unread_footer(waited) == 1
        assert progress and progress[0] < 1  # reported at once, then every 30 s

        # Shown already: a second wait does not return it again, it waits (here 1 s) for new ones.
        quiet = await mb.ok("wait", timeout=1)
        assert text(quiet).startswith("nothing new arrived within 1 s")
        assert unread_footer(quiet) == 1

        done = await mb.ok("ack", up_to=data["messages"][0]["seq"])
        assert done.structured_content["acked"] == 1
        assert unread_footer(done) == 0


async def test_a_channel_notification_announces_each_new_envelope(fleet: Fleet) -> None:
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    fp_a = _fingerprint(a)
    old = await _send(a, "agent-b", notify_envelope("old", 1))
    wait_for(lambda: b.status()["unread"] == 1, timeout=10, what="the old envelope stored")
    async with mcp_agent(b) as mb:
        asked = await _send(a, "agent-b", query_envelope("ping?"))
        push = await mb.next_push(0)
        assert push.meta["msg_id"] == asked
        assert push.meta["from"] == "agent-a" and push.meta["kind"] == "query"
        seq = int(push.meta["seq"])
        assert push.content.startswith(
            f"acp message query {_from('agent-a', fp_a)}, msg_id {asked}, seq {seq}."
        )
        assert UNTRUSTED_NOTE in push.content and '"question":"ping?"' in push.content

        # A push is only a hint: both envelopes are still unread.
        status = await mb.ok("status")
        assert unread_footer(status) == 2
        inbox = await mb.ok("inbox")
        items = inbox.structured_content["messages"]
        assert [m["envelope"]["id"] for m in items] == [old, asked]
        assert items[1]["seq"] == seq

        # A big envelope is announced cut short, still fenced.
        big = await _send(a, "agent-b", notify_envelope("log", "x" * 20_000))
        push = await mb.next_push(1)
        assert push.meta["msg_id"] == big
        assert len(push.content) < 2_500, len(push.content)
        assert "[cut: " in push.content and push.content.count("acp-data>>>") == 1

        # What was stored before the server started is never announced.
        assert [p.meta["msg_id"] for p in mb.channel] == [asked, big]


async def test_a_stopped_daemon_is_a_tool_error_and_a_restart_recovers(fleet: Fleet) -> None:
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    async with mcp_agent(a) as ma:
        await ma.ok("status")
        first = await _send(b, "agent-a", notify_envelope("before", 1))
        assert (await ma.next_push(0)).meta["msg_id"] == first

        await trio.to_thread.run_sync(a.stop)
        for tool, args in [
            ("status", {}),
            ("peers", {}),
            ("inbox", {}),
            ("send", {"to": "agent-b", "text": "anyone?"}),
            ("wait", {"timeout": 1}),
        ]:
            failed = await ma.call(tool, **args)
            assert failed.is_error, f"{tool}: {text(failed)}"
            assert "acp daemon is not running" in text(failed), text(failed)
            assert failed.structured_content["error"]["code"] == "daemon_unavailable"
        assert ma.session is not None
        with trio.fail_after(10):
            assert len((await ma.session.list_tools()).tools) == 7  # the server lives on

        await trio.to_thread.run_sync(a.start)
        status = await ma.ok("status")
        assert unread_footer(status) == 1  # the first push, never acked
        await trio.to_thread.run_sync(lambda: a.wait_connected(b))
        # The push listener reconnected by itself, after what it announced before.
        second = await _send(b, "agent-a", notify_envelope("after", 2))
        push = await ma.next_push(1, within=20)
        assert push.meta["msg_id"] == second
        assert [p.meta["msg_id"] for p in ma.channel] == [first, second]


async def test_a_2026_client_discovers_the_same_server(fleet: Fleet) -> None:
    """A client of the 2026-07-28 protocol (no initialize: server/discover, then enveloped
    requests) sees the channel capability and the same tools."""
    a = fleet.daemon("agent-a")
    fleet.start(a)
    with trio.fail_after(30):
        async with Client(server_params(a)) as client:
            assert client.session.protocol_version not in (None, "2025-11-25")
            assert client.server_capabilities.experimental == {"claude/channel": {}}
            assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS
            status = await client.call_tool("status", {})
            assert isinstance(status, types.CallToolResult) and not status.is_error
            assert "agent_id agent-a" in text(status)
