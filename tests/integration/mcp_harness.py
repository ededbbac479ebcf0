"""``acp mcp`` driven by the MCP SDK's own client, on a daemon of integration_harness.

Import it only after ``pytest.importorskip("mcp")``: it needs the ``mcp`` extra. The server is the
real ``python -m acp.cli mcp`` subprocess over stdio; its stderr goes to a file, checked for
tracebacks when the agent closes. Every call here has a deadline.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

import mcp.types as types
import trio
from integration_harness import REPO, Daemon, no_traceback
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.extension import NotificationBinding
from pydantic import BaseModel

CHANNEL_METHOD = "notifications/claude/channel"
INIT_TIMEOUT = 20.0  # seconds for `acp mcp` to start and answer initialize
CALL_TIMEOUT = 30.0  # default deadline of one tool call
UNREAD = re.compile(r"(\d+) unread envelope\(s\) in the acp inbox\Z")


class ChannelParams(BaseModel):
    """The params of a ``notifications/claude/channel`` push."""

    content: str
    meta: dict[str, Any]


class McpAgent:
    """One ``acp mcp`` process on a daemon's ACP_HOME: its session and what it pushed."""

    def __init__(self, daemon: Daemon, errlog: Path) -> None:
        self.daemon = daemon
        self.errlog = errlog
        self.session: ClientSession | None = None
        self.init: types.InitializeResult | None = None
        self.channel: list[ChannelParams] = []
        self._pushed = trio.Event()

    async def on_channel(self, params: ChannelParams) -> None:
        self.channel.append(params)
        self._pushed.set()

    async def next_push(self, seen: int, within: float = 15.0) -> ChannelParams:
        """The push after the first ``seen`` ones, within ``within`` s."""
        with trio.fail_after(within):
            while len(self.channel) <= seen:
                self._pushed = trio.Event()
                await self._pushed.wait()
        return self.channel[seen]

    async def call(
        self,
        tool: str,
        *,
        deadline: float = CALL_TIMEOUT,
        reports: list[float] | None = None,
        **args: Any,
    ) -> types.CallToolResult:
        """``tools/call`` within ``deadline`` s; ``reports`` collects the progress values the
        server reports (and asks for them: the request carries a progressToken)."""
        assert self.session is not None

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            assert reports is not None
            reports.append(progress)

        with trio.fail_after(deadline):
            result = await self.session.call_tool(
                tool, args, progress_callback=on_progress if reports is not None else None
            )
        assert isinstance(result, types.CallToolResult), result
        return result

    async def ok(
        self, tool: str, *, deadline: float = CALL_TIMEOUT, **args: Any
    ) -> types.CallToolResult:
        """A call that must succeed."""
        result = await self.call(tool, deadline=deadline, **args)
        assert not result.is_error, f"{tool} {args} failed: {text(result)}"
        return result


def text(result: types.CallToolResult) -> str:
    """The text of a tool result (its text blocks, joined)."""
    return "\n".join(b.text for b in result.content if isinstance(b, types.TextContent))


def unread_footer(result: types.CallToolResult) -> int:
    """N of the closing "N unread envelope(s) in the acp inbox" line, 0 if there is none."""
    match = UNREAD.search(text(result))
    return int(match.group(1)) if match else 0


def _stderr_file(path: Path) -> TextIO:
    """Where the server's stderr goes: a real file (the subprocess needs its descriptor)."""
    return path.open("w")


def server_params(daemon: Daemon) -> StdioServerParameters:
    """``python -m acp.cli mcp`` on ``daemon``'s ACP_HOME (the SDK adds HOME, PATH, ...)."""
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "acp.cli", "mcp"],
        env={"ACP_HOME": str(daemon.home)},
        cwd=REPO,
    )


@contextlib.asynccontextmanager
async def mcp_agent(daemon: Daemon, name: str = "mcp") -> AsyncIterator[McpAgent]:
    """Start ``acp mcp`` on ``daemon``'s ACP_HOME, initialize a session, yield it; on the way out
    close it and check that the server wrote no traceback."""
    errlog = daemon.home.parent / f"{daemon.name}-{name}.stderr"
    agent = McpAgent(daemon, errlog)
    params = server_params(daemon)
    binding = NotificationBinding(
        method=CHANNEL_METHOD, params_type=ChannelParams, handler=agent.on_channel
    )
    with _stderr_file(errlog) as err:
        async with (
            stdio_client(params, errlog=err) as (read, write),
            ClientSession(read, write, notification_bindings=[binding]) as session,
        ):
            with trio.fail_after(INIT_TIMEOUT):
                agent.init = await session.initialize()
            agent.session = session
            yield agent
    log = errlog.read_text(errors="replace")
    assert no_traceback(log), f"acp mcp wrote a traceback:\n{log}"
