"""Talk to the local acp daemon from a program: a blocking ``Client`` and an async ``TrioClient``.

Both speak the IPC protocol of PROTOCOL.md §8 over ``$ACP_HOME/acp.sock``. The blocking client uses
only the standard library (the CLI is built on it, and agents call the CLI in loops, so importing
this module must stay cheap: no trio, zeroconf or PyNaCl at import time).

    from acp.client import Client

    with Client() as acp:
        sent = acp.query("agent-two", "What is the build status?", wait="response", timeout=30)
        print(sent["response"]["payload"]["data"])
        for env in acp.listen():            # inbound envelopes, oldest first
            if env["kind"] == "query":
                acp.reply(env["id"], {"answer": 42})
"""

from __future__ import annotations

import itertools
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from acp.errors import DaemonUnavailable, RequestFailed

CONNECT_TIMEOUT = 5.0
_SLACK = 10.0  # seconds added to a waiting request's own timeout before the client gives up


def default_home() -> Path:
    home = os.environ.get("ACP_HOME")
    return Path(home).expanduser() if home else Path.home() / ".acp"


def _unavailable(path: Path, exc: OSError) -> DaemonUnavailable:
    return DaemonUnavailable(
        f"acp daemon is not running (no socket at {path}: {exc.strerror or exc}); "
        "start it with `acp daemon` (or `systemctl --user start acp`)"
    )


def socket_file(home: Path | str | None, socket_path: Path | str | None) -> Path:
    return Path(socket_path) if socket_path else Path(home or default_home()) / "acp.sock"


def request_line(cmd: str, req: int, args: dict[str, Any]) -> bytes:
    return json.dumps({"cmd": cmd, "req": req, **args}, separators=(",", ":")).encode() + b"\n"


def send_args(to: str, envelope: dict[str, Any], wait: str, timeout: float) -> dict[str, Any]:
    """The fields of a ``send`` request; ``timeout`` only matters when the client waits."""
    args: dict[str, Any] = {"to": to, "envelope": envelope}
    if wait != "accepted":
        args.update(wait=wait, timeout=timeout)
    return args


def _check(reply: dict[str, Any]) -> dict[str, Any]:
    if reply.get("ok") is False:
        err = reply.get("error") or {}
        raise RequestFailed(
            str(err.get("code", "error")), str(err.get("message", "request failed"))
        )
    return reply


def query_envelope(
    question: str, *, domain: str | None = None, context_budget: str = "standard"
) -> dict[str, Any]:
    payload: dict[str, Any] = {"question": question, "context_budget": context_budget}
    if domain is not None:
        payload["domain"] = domain
    return {"kind": "query", "payload": payload}


def delegate_envelope(
    task: str,
    *,
    context: dict[str, Any] | None = None,
    urgent: bool = False,
    report_back: bool = False,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "task": task,
        "priority": "urgent" if urgent else "normal",
        "report_back": report_back,
    }
    if context is not None:
        payload["context"] = context
    return {"kind": "delegate", "payload": payload}


def notify_envelope(topic: str, data: Any) -> dict[str, Any]:
    return {"kind": "notify", "payload": {"topic": topic, "data": data}}


def response_payload(
    data: Any, *, summary: str | None = None, error: str | None = None
) -> dict[str, Any]:
    payload: dict[str, Any] = {"data": data}
    if summary is not None:
        payload["summary"] = summary
    if error is not None:
        payload["error"] = error
    return payload


class Client:
    """A blocking IPC client. Events and pushes that arrive between replies are kept in ``events``."""

    def __init__(
        self, home: Path | str | None = None, *, socket_path: Path | str | None = None
    ) -> None:
        self.path = socket_file(home, socket_path)
        self._sock: socket.socket | None = None
        self._file: Any = None
        self._req = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            raise _unavailable(self.path, exc) from None
        sock.settimeout(None)
        self._sock = sock
        self._file = sock.makefile("rb")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._file = None

    def _readline(self, timeout: float | None) -> dict[str, Any]:
        assert self._sock is not None
        self._sock.settimeout(timeout)
        try:
            line = self._file.readline()
        except TimeoutError:
            raise RequestFailed("timeout", "the daemon did not answer in time") from None
        except OSError as exc:
            raise _unavailable(self.path, exc) from None
        if not line:
            raise DaemonUnavailable("the acp daemon closed the connection (did it stop?)")
        obj: dict[str, Any] = json.loads(line)
        return obj

    def request(
        self, cmd: str, *, read_timeout: float | None = 30.0, **args: Any
    ) -> dict[str, Any]:
        """Send one request and return its reply; RequestFailed if the daemon says ok: false."""
        self.connect()
        assert self._sock is not None
        req = next(self._req)
        line = request_line(cmd, req, args)
        try:
            self._sock.sendall(line)
        except OSError as exc:
            raise _unavailable(self.path, exc) from None
        while True:
            obj = self._readline(read_timeout)
            if obj.get("req") == req and "ok" in obj:
                return _check(obj)
            self.events.append(obj)

    def send(
        self, to: str, envelope: dict[str, Any], *, wait: str = "accepted", timeout: float = 30.0
    ) -> dict[str, Any]:
        """Send an envelope; ``wait`` is ``accepted`` (default), ``acked`` or ``response``."""
        args = send_args(to, envelope, wait, timeout)
        return self.request("send", read_timeout=timeout + _SLACK, **args)

    def query(
        self,
        to: str,
        question: str,
        *,
        domain: str | None = None,
        context_budget: str = "standard",
        wait: str = "accepted",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        return self.send(
            to,
            query_envelope(question, domain=domain, context_budget=context_budget),
            wait=wait,
            timeout=timeout,
        )

    def delegate(
        self,
        to: str,
        task: str,
        *,
        context: dict[str, Any] | None = None,
        urgent: bool = False,
        report_back: bool = False,
        wait: str = "accepted",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        env = delegate_envelope(task, context=context, urgent=urgent, report_back=report_back)
        return self.send(to, env, wait=wait, timeout=timeout)

    def notify(self, topic: str, data: Any) -> dict[str, Any]:
        """Send a notify to every connected peer."""
        return self.request("broadcast", envelope=notify_envelope(topic, data))

    def reply(
        self,
        msg_id: str,
        data: Any,
        *,
        to: str | None = None,
        summary: str | None = None,
        error: str | None = None,
        wait: str = "accepted",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        args: dict[str, Any] = {
            "msg_id": msg_id,
            "payload": response_payload(data, summary=summary, error=error),
        }
        if to is not None:
            args["to"] = to
        if wait != "accepted":
            args.update(wait=wait, timeout=timeout)
        return self.request("reply", read_timeout=timeout + _SLACK, **args)

    def peers(self) -> list[dict[str, Any]]:
        peers: list[dict[str, Any]] = self.request("peers")["peers"]
        return peers

    def status(self) -> dict[str, Any]:
        return self.request("status")

    def identity(self) -> dict[str, Any]:
        return self.request("id")

    def trust(self, agent_id: str, pubkey: str, *, addr: str | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {"agent_id": agent_id, "pubkey": pubkey}
        if addr:
            args["addr"] = addr
        return self.request("trust", **args)

    def forget(self, agent_id: str) -> dict[str, Any]:
        return self.request("forget", agent_id=agent_id)

    def listen(self, *, events: bool = False, count: int | None = None) -> Iterator[dict[str, Any]]:
        """Subscribe and yield inbound envelopes (and, with ``events``, event objects).

        Forever, or until ``count`` envelopes: the daemon then pushes no more, and what else
        arrives stays in its inbox for the next client.
        """
        self.request("subscribe", **({"count": count} if count is not None else {}))
        n = 0
        pending, self.events = self.events, []
        while count is None or n < count:
            obj = pending.pop(0) if pending else self._readline(None)
            item = self._unwrap(obj, events)
            if item is not None:
                n += "event" not in item
                yield item

    @staticmethod
    def _unwrap(obj: dict[str, Any], events: bool) -> dict[str, Any] | None:
        if obj.get("inbound"):
            env: dict[str, Any] = obj["envelope"]
            return env
        if events and "event" in obj:
            return obj
        return None


class TrioClient:
    """The same requests for trio programs: ``async with TrioClient() as acp: await acp.status()``."""

    def __init__(
        self, home: Path | str | None = None, *, socket_path: Path | str | None = None
    ) -> None:
        self.path = socket_file(home, socket_path)
        self._stream: Any = None
        self._buf = b""
        self._req = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    async def __aenter__(self) -> TrioClient:
        import trio

        try:
            self._stream = await trio.open_unix_socket(str(self.path))
        except OSError as exc:
            raise _unavailable(self.path, exc) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None

    async def _readline(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            data = await self._stream.receive_some(65536)
            if not data:
                raise DaemonUnavailable("the acp daemon closed the connection (did it stop?)")
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        obj: dict[str, Any] = json.loads(line)
        return obj

    async def request(self, cmd: str, **args: Any) -> dict[str, Any]:
        req = next(self._req)
        await self._stream.send_all(request_line(cmd, req, args))
        while True:
            obj = await self._readline()
            if obj.get("req") == req and "ok" in obj:
                return _check(obj)
            self.events.append(obj)

    async def send(
        self,
        to: str,
        envelope: dict[str, Any],
        *,
        wait: str = "accepted",
        timeout: float = 30.0,  # noqa: ASYNC109 - the daemon's wait, sent in the request
    ) -> dict[str, Any]:
        return await self.request("send", **send_args(to, envelope, wait, timeout))

    async def query(self, to: str, question: str, **kw: Any) -> dict[str, Any]:
        wait = kw.pop("wait", "accepted")
        timeout = kw.pop("timeout", 30.0)
        return await self.send(to, query_envelope(question, **kw), wait=wait, timeout=timeout)

    async def reply(self, msg_id: str, data: Any, *, to: str | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {"msg_id": msg_id, "payload": response_payload(data)}
        if to is not None:
            args["to"] = to
        return await self.request("reply", **args)

    async def peers(self) -> list[dict[str, Any]]:
        peers: list[dict[str, Any]] = (await self.request("peers"))["peers"]
        return peers

    async def status(self) -> dict[str, Any]:
        return await self.request("status")

    async def listen(self) -> AsyncIterator[dict[str, Any]]:
        await self.request("subscribe")
        pending, self.events = self.events, []
        for obj in pending:
            if obj.get("inbound"):
                yield obj["envelope"]
        while True:
            obj = await self._readline()
            if obj.get("inbound"):
                yield obj["envelope"]
