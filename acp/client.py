"""Talk to the local acp daemon from a program: a blocking ``Client`` and an async ``TrioClient``.

Both speak the IPC protocol of docs/protocol.md §8 over ``$ACP_HOME/acp.sock``. The blocking client uses
only the standard library (the CLI is built on it, and agents call the CLI in loops, so importing
this module must stay cheap: no trio, zeroconf or PyNaCl at import time).

    from acp.client import Client

    with Client() as acp:
        sent = acp.query("agent-two", "What is the build status?", wait="response", timeout=30)
        print(sent["response"]["payload"]["data"])
        for env in acp.listen(ack=True, reconnect=True):   # inbound envelopes, oldest first
            if env["kind"] == "query":
                acp.reply(env["id"], {"answer": 42})

Why it is built this way: a connection carries replies, pushes and events on one stream, in any
order (a ``send`` that waits for a response replies long after later requests), and ``listen``
acks what it handed out while it keeps reading. So both clients share one sans-I/O core,
``ClientCore`` (numbering requests, splitting lines under the 1 MiB cap, matching replies by
``req``, keeping pushes aside), and one sans-I/O ``Subscription`` (the cursor ``seq``, the count,
the acks still owed); the two classes only move bytes and sleep.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from acp.errors import AcpError, DaemonUnavailable, ProtocolError, RequestFailed
from acp.starting import STARTING_POLL, STARTING_WAIT, starting

CONNECT_TIMEOUT = 5.0
MAX_LINE = 1 << 20  # 1 MiB, newline excluded: the IPC line cap (docs/protocol.md §8), both ways
RECV_SIZE = 64 * 1024
RECONNECT_FIRST = 0.1  # seconds before listen(reconnect=True) tries again; doubled up to the cap
RECONNECT_CAP = 2.0
ACK_SETTLE_TIMEOUT = 10.0  # seconds listen(count=N) waits at its end for its acks to be confirmed
SUBSCRIBE_TIMEOUT = 30.0
ACK_BATCH = 1000  # ids per ack request (the daemon takes up to 10 000)
_SLACK = 10.0  # seconds added to a waiting request's own timeout before the client gives up

_T = TypeVar("_T")


def default_home() -> Path:
    home = os.environ.get("ACP_HOME")
    return Path(home).expanduser() if home else Path.home() / ".acp"


def _unavailable(path: Path, exc: OSError) -> DaemonUnavailable:
    return DaemonUnavailable(
        f"acp daemon is not running (no socket at {path}: {exc.strerror or exc}); "
        "start it with `acp daemon` (or `systemctl --user start acp`)"
    )


def _not_yet(path: Path, exc: OSError, waited: float) -> DaemonUnavailable | None:
    """Connecting to ``path`` failed after ``waited`` seconds of trying: None to try again in
    STARTING_POLL seconds (a daemon for that ACP_HOME is starting: acp/starting.py), else the
    error to raise."""
    if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
        return _unavailable(path, exc)
    who = starting(path.parent)
    if who is None:
        return _unavailable(path, exc)
    if waited < STARTING_WAIT:
        return None
    return DaemonUnavailable(
        f"an acp daemon for {path.parent} ({who}) has not opened {path} within "
        f"{STARTING_WAIT:g} s (still starting, or stopping); see its log, or try again"
    )


def _closed(exc: BaseException | None = None) -> DaemonUnavailable:
    why = f": {exc}" if exc is not None else ""
    return DaemonUnavailable(f"the acp daemon closed the connection (did it stop?){why}")


def socket_file(home: Path | str | None, socket_path: Path | str | None) -> Path:
    return Path(socket_path) if socket_path else Path(home or default_home()) / "acp.sock"


def request_line(cmd: str, req: int, args: Mapping[str, Any]) -> bytes:
    return json.dumps({"cmd": cmd, "req": req, **args}, separators=(",", ":")).encode() + b"\n"


def send_args(to: str, envelope: dict[str, Any], wait: str, timeout: float) -> dict[str, Any]:
    """The fields of a ``send`` request; ``timeout`` only matters when the client waits."""
    args: dict[str, Any] = {"to": to, "envelope": envelope}
    if wait != "accepted":
        args.update(wait=wait, timeout=timeout)
    return args


def reply_args(
    msg_id: str,
    data: Any,
    *,
    to: str | None,
    summary: str | None,
    error: str | None,
    wait: str,
    timeout: float,
) -> dict[str, Any]:
    """The fields of a ``reply`` request (a ``response`` to the inbound envelope ``msg_id``)."""
    args: dict[str, Any] = {
        "msg_id": msg_id,
        "payload": response_payload(data, summary=summary, error=error),
    }
    if to is not None:
        args["to"] = to
    if wait != "accepted":
        args.update(wait=wait, timeout=timeout)
    return args


def inbox_args(
    *,
    unread: bool = True,
    since: int | None = None,
    limit: int | None = None,
    kinds: list[str] | None = None,
    from_: list[str] | None = None,
    wait: float | None = None,
) -> dict[str, Any]:
    """The fields of an ``inbox`` request (docs/protocol.md §8.1); the daemon's defaults are left out."""
    args: dict[str, Any] = {}
    if not unread:
        args["unread"] = False
    if since is not None:
        args["since"] = since
    if limit is not None:
        args["limit"] = limit
    if kinds:
        args["kinds"] = list(kinds)
    if from_:
        args["from"] = list(from_)
    if wait is not None:
        args["wait"] = wait
    return args


def trust_args(agent_id: str, pubkey: str, addr: str | None) -> dict[str, Any]:
    """The fields of a ``trust`` request; ``addr`` only when given."""
    args: dict[str, Any] = {"agent_id": agent_id, "pubkey": pubkey}
    if addr:
        args["addr"] = addr
    return args


def verify_args(agent_id: str, confirm: bool) -> dict[str, Any]:
    """The fields of a ``verify`` request; ``confirm`` only when true."""
    args: dict[str, Any] = {"agent_id": agent_id}
    if confirm:
        args["confirm"] = True
    return args


def ack_args(ids: list[str] | None, up_to: int | None) -> dict[str, Any]:
    """The fields of an ``ack`` request: message ids, or every envelope up to a ``seq``."""
    if (ids is None) == (up_to is None):
        raise ValueError("ack takes either ids or up_to (not both, not neither)")
    return {"ids": list(ids)} if ids is not None else {"up_to": up_to}


def _check(reply: dict[str, Any]) -> dict[str, Any]:
    if reply.get("ok") is False:
        err = reply.get("error")
        err = err if isinstance(err, dict) else {}
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


def _excerpt(line: bytes, n: int = 60) -> str:
    text = repr(line[:n])
    return text + ("..." if len(line) > n else "")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class ClientCore:
    """One IPC connection seen from the client, without I/O: requests out, replies and pushes in.

    The caller writes the line ``start`` returns and feeds whatever it reads to ``feed``. The core
    numbers requests (``req``), refuses to build a line the daemon would refuse (over
    ``limit``), splits what it is fed into lines, refusing any line from the daemon over ``limit``
    bytes as soon as it has that many without a newline (so a runaway daemon costs at most 1 MiB),
    files each reply under its ``req`` for ``take``, and keeps every other object (inbound pushes,
    events, replies nobody waits for) in ``pushes``, oldest first. A line that is not a JSON object,
    or one too long, is a ProtocolError: the stream can no longer be trusted, so every later call
    raises it again (``error``). ``ok: false`` with no ``req`` is the daemon turning the whole
    connection away (``forbidden``, ``busy``): RequestFailed, kept the same way.
    """

    def __init__(self, *, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self.pushes: deque[dict[str, Any]] = deque()
        self.error: AcpError | None = None
        self._buf = bytearray()
        self._scanned = 0  # bytes at the start of _buf known to hold no newline
        self._reqs = itertools.count(1)
        self._expected: set[int] = set()
        self._abandoned: set[int] = set()
        self._replies: dict[int, tuple[dict[str, Any], int]] = {}  # req -> reply, pushes before it

    def start(self, cmd: str, args: Mapping[str, Any] | None = None) -> tuple[int, bytes]:
        """A new request: its ``req`` and the line to write (newline included)."""
        if self.error is not None:
            raise self.error
        req = next(self._reqs)
        line = request_line(cmd, req, args or {})
        if len(line) - 1 > self.limit:
            raise RequestFailed(
                "too_large",
                f"the {cmd} request is {len(line) - 1} bytes; the daemon reads lines of at most "
                f"{self.limit} bytes (1 MiB)",
            )
        self._expected.add(req)
        return req, line

    def feed(self, data: bytes) -> None:
        """Bytes read from the daemon, in any chunks."""
        if self.error is not None:
            raise self.error
        self._buf += data
        buf, start = self._buf, 0
        try:
            while True:
                nl = buf.find(b"\n", max(start, self._scanned))
                if nl < 0:
                    break
                if nl - start > self.limit:
                    self._fail_long()
                line = bytes(buf[start:nl])
                start = nl + 1
                if line.strip():
                    self._line(line)
        finally:
            del buf[:start]
            self._scanned = len(buf)
        if len(buf) > self.limit:
            self._fail_long()

    def take(self, req: int) -> dict[str, Any] | None:
        """The reply to ``req`` if it arrived (unchecked: it may say ``ok: false``), else None."""
        got = self._replies.pop(req, None)
        return None if got is None else got[0]

    def take_subscribed(self, req: int) -> dict[str, Any] | None:
        """As ``take``, for a ``subscribe``; once its reply is in, the pushes of stored items (those
        with a ``seq``) that came before it are dropped: they belong to a subscription it replaced,
        or are events about earlier sends, and the new subscription pushes what it should of them.
        """
        got = self._replies.pop(req, None)
        if got is None:
            return None
        reply, before = got
        kept = [p for i, p in enumerate(self.pushes) if i >= before or "seq" not in p]
        self.pushes.clear()
        self.pushes.extend(kept)
        return reply

    def waiting(self, req: int) -> bool:
        """True while the reply to ``req`` is yet to come."""
        return req in self._expected

    def abandon(self, req: int) -> None:
        """Nobody waits for ``req`` any more (a timeout, a cancel): drop its reply when it comes."""
        if req in self._expected:
            self._expected.discard(req)
            self._abandoned.add(req)
        self._replies.pop(req, None)

    def eof(self) -> AcpError:
        """The daemon closed the stream: the error every later call raises."""
        if self.error is None:
            self.error = _closed()
        return self.error

    def _line(self, line: bytes) -> None:
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            self._fail(f"the acp daemon sent a line that is not JSON: {_excerpt(line)}")
        if not isinstance(obj, dict):
            self._fail(f"the acp daemon sent a line that is not a JSON object: {_excerpt(line)}")
        req = obj.get("req")
        if "ok" in obj and _is_int(req) and req in self._expected:
            self._expected.discard(req)
            self._replies[req] = (obj, len(self.pushes))
        elif "ok" in obj and _is_int(req) and req in self._abandoned:
            self._abandoned.discard(req)
        elif obj.get("ok") is False and req is None:
            try:
                _check(obj)
            except RequestFailed as exc:
                self.error = exc
                raise
        else:
            self.pushes.append(obj)

    def _fail_long(self) -> NoReturn:
        self._fail(
            f"the acp daemon sent a line over {self.limit} bytes (the IPC line limit); "
            "the connection is closed"
        )

    def _fail(self, message: str) -> NoReturn:
        self.error = ProtocolError(message, code="bad_reply")
        raise self.error


class Subscription:
    """What ``listen`` keeps across steps and reconnects, without I/O.

    ``last_seq`` is the cursor: the highest ``seq`` handed out (or passed over), else the ``since``
    it started from; a resubscribe on a new connection asks for what comes after it, and a push at
    or below it is dropped, so nothing is handed out twice. ``count`` counts envelopes. With
    ``ack``, the id of the item handed out is held until the consumer asks for the next one
    (``consumed``), then owed: the next ``ack_lines`` turns what is owed into a pipelined ``ack``
    request, whose reply ``check_acks`` collects when it comes. A lost connection makes every
    unconfirmed ack owed again (acking is idempotent).
    """

    def __init__(
        self,
        *,
        since: int | None = None,
        count: int | None = None,
        events: bool = False,
        ack: bool = False,
    ) -> None:
        if count is not None and count < 1:
            raise ValueError("count must be at least 1")
        self.last_seq = since
        self.count = count
        self.events = events
        self.ack = ack
        self.delivered = 0  # envelopes handed out
        self._held: str | None = None
        self._owed: list[str] = []
        self._sent: dict[int, list[str]] = {}  # ack req -> ids, reply not seen yet
        self._sent_on: ClientCore | None = None  # the connection those reqs belong to
        self.unread_only = since is None  # started with the unread ones, not after a seq
        self._subscribed_on: ClientCore | None = None
        self._asked: int | None = None  # the count the last subscribe asked for
        self._pushed = 0  # pushes with a seq since then (those dropped as seen too)
        self._distinct = 0  # items with a seq handed out or passed over, ever

    @property
    def done(self) -> bool:
        return self.count is not None and self.delivered >= self.count

    @property
    def settled(self) -> bool:
        """No ack is owed or unconfirmed."""
        return not self._owed and not self._sent and self._held is None

    @property
    def exhausted(self) -> bool:
        """The daemon pushed as many items as the subscribe asked for, yet fewer were envelopes
        than ``count`` wants (a daemon that counts events too): subscribe again."""
        return self._asked is not None and self._pushed >= self._asked and not self.done

    def subscribe_args(self, core: ClientCore | None = None) -> dict[str, Any]:
        """The fields of the next ``subscribe`` on the connection of ``core``.

        After the cursor, for the envelopes still wanted; except when a ``listen`` that started
        with the unread envelopes subscribes again on the same connection because a daemon that
        counts events ate its count (``exhausted``): then it asks for the unread ones again (what
        comes again up to the cursor is dropped), with room in the count for those, rather than
        for everything after the cursor, which would bring envelopes read by others.
        """
        replacing = core is not None and core is self._subscribed_on
        self._subscribed_on = core
        args: dict[str, Any] = {}
        remaining = None if self.count is None else self.count - self.delivered
        if self.last_seq is not None and not (self.unread_only and replacing):
            args["since"] = self.last_seq
        elif remaining is not None:
            remaining += self._distinct  # at most this many come again before new ones
        if remaining is not None:
            args["count"] = self._asked = remaining
        self._pushed = 0
        return args

    def take(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """A push from the daemon -> the item to hand out (an envelope, or an event), or None.

        Pushes come in ``seq`` order; one at or below the cursor was handed out already (by the
        subscription a resubscribe replaced) and is dropped.
        """
        seq = obj.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            self._pushed += 1
            if self.last_seq is not None and seq <= self.last_seq:
                return None
            self.last_seq = seq
            self._distinct += 1
        ack_id: object = None
        if obj.get("inbound") and isinstance(obj.get("envelope"), dict):
            item: dict[str, Any] = obj["envelope"]
            self.delivered += 1
            ack_id = item.get("id")
        elif self.events and "event" in obj:
            item = obj
            if _is_int(seq):  # a stored event (undelivered): its row is acked by the msg_id
                ack_id = obj.get("msg_id")
        else:
            return None
        if self.ack and isinstance(ack_id, str):
            self._held = ack_id
        return item

    def consumed(self) -> None:
        """The consumer asked for the next item: it has the last one, which is now owed an ack."""
        if self._held is not None:
            self._owed.append(self._held)
            self._held = None

    def ack_lines(self, core: ClientCore) -> bytes:
        """``ack`` requests for everything owed (b"" if nothing is); their replies are not awaited."""
        if core is not self._sent_on:
            self.connection_lost()
        if not self.ack:
            self._owed.clear()
        lines = []
        while self._owed:
            ids, self._owed = self._owed[:ACK_BATCH], self._owed[ACK_BATCH:]
            req, line = core.start("ack", {"ids": ids})
            self._sent_on = core
            self._sent[req] = ids
            lines.append(line)
        return b"".join(lines)

    def check_acks(self, core: ClientCore) -> None:
        """Collect ack replies that came; RequestFailed if the daemon could not mark one read."""
        if core is not self._sent_on:
            self.connection_lost()
            return
        for req in [r for r in self._sent if not core.waiting(r)]:
            ids = self._sent.pop(req)
            reply = core.take(req)
            if reply is None or reply.get("ok") is not False:
                continue
            err = reply.get("error")
            code = err.get("code") if isinstance(err, dict) else None
            if code == "unknown_command":  # a daemon older than §8.1: its pushes consume
                self.ack = False
                self._sent.clear()
                self._owed.clear()
                return
            try:
                _check(reply)
            except RequestFailed as exc:
                exc.message = f"could not mark {', '.join(ids)} read: {exc.message}"
                exc.args = (exc.message,)
                raise

    def connection_lost(self) -> None:
        """Acks sent on a connection that is gone may not have landed: they are owed again."""
        owed = [i for ids in self._sent.values() for i in ids]
        self._sent.clear()
        self._sent_on = None
        self._owed[:0] = owed


class Client:
    """A blocking IPC client. Events and pushes that arrive between replies are kept in ``events``.

    A request on a closed connection (the daemon restarted) connects again. ``last_seq`` is the
    cursor of the last ``listen``: the ``seq`` of the last item it handed out.
    """

    def __init__(
        self, home: Path | str | None = None, *, socket_path: Path | str | None = None
    ) -> None:
        self.path = socket_file(home, socket_path)
        self._sock: socket.socket | None = None
        self._core = ClientCore()
        self._conn_no = 0  # which connection _core belongs to; listen resubscribes when it moves
        self.last_seq: int | None = None

    @property
    def events(self) -> deque[dict[str, Any]]:
        """Pushes and events read so far and not yet taken by ``listen``, oldest first."""
        return self._core.pushes

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Connect if not connected. A daemon that is starting gets up to STARTING_WAIT seconds
        to open its socket (``acp daemon & acp status``); DaemonUnavailable if there is none."""
        if self._sock is not None:
            return
        start = time.monotonic()
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(CONNECT_TIMEOUT)
            try:
                sock.connect(str(self.path))
                break
            except OSError as exc:
                sock.close()
                error = _not_yet(self.path, exc, time.monotonic() - start)
                if error is not None:
                    raise error from None
            time.sleep(STARTING_POLL)
        sock.settimeout(None)
        self._sock = sock
        self._core = ClientCore()
        self._conn_no += 1

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None

    def _write(self, data: bytes) -> None:
        if not data:
            return
        if self._sock is None:
            raise self._core.eof()
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self.close()
            raise _closed(exc) from None

    def _receive(self, deadline: float | None) -> None:
        """Read once and feed the core; TimeoutError past ``deadline`` (a time.monotonic())."""
        if self._sock is None:
            raise self._core.eof()
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            raise TimeoutError
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(RECV_SIZE)
        except TimeoutError:
            raise
        except OSError as exc:
            self.close()
            raise _closed(exc) from None
        if not data:
            self.close()
            raise self._core.eof()
        try:
            self._core.feed(data)
        except AcpError:
            self.close()
            raise

    def _wait_reply(
        self, req: int, timeout: float | None, *, subscribe: bool = False
    ) -> dict[str, Any]:
        core = self._core
        take = core.take_subscribed if subscribe else core.take
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while (reply := take(req)) is None:
                if core is not self._core:
                    raise core.eof()
                self._receive(deadline)
        except TimeoutError:
            core.abandon(req)
            raise RequestFailed("timeout", "the daemon did not answer in time") from None
        return reply

    def request(
        self, cmd: str, *, read_timeout: float | None = 30.0, **args: Any
    ) -> dict[str, Any]:
        """Send one request and return its reply; RequestFailed if the daemon says ok: false."""
        self.connect()
        req, line = self._core.start(cmd, args)
        self._write(line)
        return _check(self._wait_reply(req, read_timeout))

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
        args = reply_args(
            msg_id, data, to=to, summary=summary, error=error, wait=wait, timeout=timeout
        )
        return self.request("reply", read_timeout=timeout + _SLACK, **args)

    def peers(self) -> list[dict[str, Any]]:
        peers: list[dict[str, Any]] = self.request("peers")["peers"]
        return peers

    def status(self) -> dict[str, Any]:
        return self.request("status")

    def identity(self) -> dict[str, Any]:
        return self.request("id")

    def trust(self, agent_id: str, pubkey: str, *, addr: str | None = None) -> dict[str, Any]:
        return self.request("trust", **trust_args(agent_id, pubkey, addr))

    def forget(self, agent_id: str) -> dict[str, Any]:
        return self.request("forget", agent_id=agent_id)

    def verify(self, agent_id: str, *, confirm: bool = False) -> dict[str, Any]:
        """The 6-digit code of the live session with ``agent_id`` (docs/protocol.md §9); with
        ``confirm``, record its key as ``verified`` (after comparing the code on both machines)."""
        return self.request("verify", **verify_args(agent_id, confirm))

    def inbox(
        self,
        unread: bool = True,
        since: int | None = None,
        limit: int | None = None,
        kinds: list[str] | None = None,
        from_: list[str] | None = None,
        wait: float | None = None,
    ) -> dict[str, Any]:
        """Read stored envelopes without consuming them: the reply, with ``messages`` and ``next``.

        Each message is ``{"seq", "envelope" (or "event"), "read", "received", "trust"}``, oldest
        first; ``next`` is the highest ``seq`` returned (pass it as ``since`` for the next page).
        With ``wait``, the daemon holds the reply up to that many seconds until something matches.
        """
        args = inbox_args(
            unread=unread, since=since, limit=limit, kinds=kinds, from_=from_, wait=wait
        )
        return self.request("inbox", read_timeout=(wait or 0) + 30.0, **args)

    def ack(self, ids: list[str] | None = None, up_to: int | None = None) -> int:
        """Mark envelopes read, by message id or every one up to a ``seq``; how many changed."""
        acked: int = self.request("ack", **ack_args(ids, up_to))["acked"]
        return acked

    def listen(
        self,
        *,
        since: int | None = None,
        count: int | None = None,
        events: bool = False,
        ack: bool = False,
        reconnect: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Subscribe and yield inbound envelopes (and, with ``events``, event objects).

        Forever, or until ``count`` envelopes: the daemon then pushes no more. Without ``since`` it
        starts with the unread envelopes; with it, with every stored one after that ``seq``.
        ``last_seq`` follows the ``seq`` of each item handed out.

        ``ack``: mark each item read once the consumer asks for the next one (so one that was being
        handled when the program died stays unread); the ack is pipelined, not waited for, except
        at the end of ``count``. An item the consumer never asked past (it broke out of the loop)
        stays unread. ``reconnect``: when the daemon goes away, try again (0.1 s, doubling to 2 s)
        and resubscribe after ``last_seq``, so nothing is missed or seen twice; acks not confirmed
        are sent again.
        """
        sub = Subscription(since=since, count=count, events=events, ack=ack)
        self.last_seq = since
        on: int | None = None  # the connection we are subscribed on
        delay = RECONNECT_FIRST
        while not sub.done:
            try:
                if on is not None and (on != self._conn_no or self._sock is None):
                    on = None  # closed under us (by a request of the consumer's, say)
                    if not reconnect:
                        raise _closed()
                if sub.exhausted:
                    on = None  # on the same connection: the daemon replaces the subscription
                if on is None:
                    self.connect()
                    req, line = self._core.start("subscribe", sub.subscribe_args(self._core))
                    self._write(sub.ack_lines(self._core) + line)
                    _check(self._wait_reply(req, SUBSCRIBE_TIMEOUT, subscribe=True))
                    on = self._conn_no
                    delay = RECONNECT_FIRST
                else:
                    self._write(sub.ack_lines(self._core))
                obj = self._next_push(sub)
            except DaemonUnavailable:
                if not reconnect:
                    raise
                on = None
                self.close()
                time.sleep(delay)
                delay = min(delay * 2, RECONNECT_CAP)
                continue
            item = sub.take(obj)
            self.last_seq = sub.last_seq
            if item is not None:
                yield item
                sub.consumed()
        self._settle(sub, reconnect)

    def _next_push(self, sub: Subscription) -> dict[str, Any]:
        while True:
            sub.check_acks(self._core)
            if self._core.pushes:
                return self._core.pushes.popleft()
            self._receive(None)

    def _settle(self, sub: Subscription, reconnect: bool) -> None:
        """At the end of ``count``: send what is owed and wait until the daemon confirmed it."""
        deadline = time.monotonic() + ACK_SETTLE_TIMEOUT
        delay = RECONNECT_FIRST
        while not sub.settled:
            try:
                self.connect()
                self._write(sub.ack_lines(self._core))
                sub.check_acks(self._core)
                if not sub.settled:
                    self._receive(deadline)
            except TimeoutError:
                raise RequestFailed(
                    "timeout", "the daemon did not confirm the acks in time"
                ) from None
            except DaemonUnavailable:
                if not reconnect or time.monotonic() > deadline:
                    raise
                self.close()
                time.sleep(delay)
                delay = min(delay * 2, RECONNECT_CAP)


class TrioClient:
    """The same requests for trio programs: ``async with TrioClient() as acp: await acp.status()``.

    Several tasks may share one client: requests are matched to replies by ``req``, and whoever
    reads hands the others' replies over. Timeouts are the caller's cancel scopes (a cancelled
    request's reply is dropped when it comes); ``timeout`` arguments are the daemon's waits.
    """

    def __init__(
        self, home: Path | str | None = None, *, socket_path: Path | str | None = None
    ) -> None:
        self.path = socket_file(home, socket_path)
        self._stream: Any = None
        self._core = ClientCore()
        self._conn_no = 0
        self._send_lock: Any = None
        self._recv_lock: Any = None
        self.last_seq: int | None = None

    @property
    def events(self) -> deque[dict[str, Any]]:
        """Pushes and events read so far and not yet taken by ``listen``, oldest first."""
        return self._core.pushes

    async def __aenter__(self) -> TrioClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        import trio

        if self._stream is not None:
            return
        if self._send_lock is None:
            self._send_lock, self._recv_lock = trio.Lock(), trio.Lock()
        start = trio.current_time()
        while True:  # as Client.connect: a daemon that is starting gets STARTING_WAIT seconds
            try:
                stream = await trio.open_unix_socket(str(self.path))
                break
            except OSError as exc:
                waited = trio.current_time() - start
                error = await trio.to_thread.run_sync(_not_yet, self.path, exc, waited)
                if error is not None:
                    raise error from None
            await trio.sleep(STARTING_POLL)
        if self._stream is not None:  # another task connected meanwhile
            await stream.aclose()
            return
        self._stream = stream
        self._core = ClientCore()
        self._conn_no += 1

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        self._core.eof()
        if stream is not None:
            await stream.aclose()

    def _drop(self, stream: Any) -> None:
        """Forget a broken connection without awaiting (safe in a cancelled or failing path)."""
        if self._stream is stream and stream is not None:
            self._stream = None
            self._core.eof()
            stream.socket.close()

    async def _write(self, data: bytes) -> None:
        import trio

        stream, core = self._stream, self._core
        if not data:
            return
        if stream is None:
            raise core.eof()
        async with self._send_lock:
            if core.error is not None:
                raise core.error
            try:
                await stream.send_all(data)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._drop(stream)
                raise _closed(exc) from None
            except BaseException:  # cancelled mid-line: the stream is out of step
                self._drop(stream)
                raise

    async def _until(self, core: ClientCore, ready: Callable[[], _T | None]) -> _T:
        """Read (one chunk per turn of the lock) until ``ready()`` has an answer."""
        import trio

        while True:
            found = ready()
            if found is not None:
                return found
            if core.error is not None:
                raise core.error
            async with self._recv_lock:
                found = ready()
                if found is not None:
                    return found
                if core.error is not None:
                    raise core.error
                stream = self._stream
                try:
                    data = await stream.receive_some(RECV_SIZE)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._drop(stream)
                    raise _closed(exc) from None
                if not data:
                    self._drop(stream)
                    raise core.eof()
                try:
                    core.feed(data)
                except AcpError:
                    self._drop(stream)
                    raise

    async def request(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one request and return its reply; RequestFailed if the daemon says ok: false."""
        await self.connect()
        core = self._core
        req, line = core.start(cmd, args)
        return _check(await self._exchange(core, req, line))

    async def _exchange(
        self, core: ClientCore, req: int, lines: bytes, *, subscribe: bool = False
    ) -> dict[str, Any]:
        """Write ``lines`` (ending with request ``req``) and wait for that request's reply."""
        take = core.take_subscribed if subscribe else core.take
        try:
            await self._write(lines)
            return await self._until(core, lambda: take(req))
        except BaseException:
            core.abandon(req)
            raise

    async def send(
        self,
        to: str,
        envelope: dict[str, Any],
        *,
        wait: str = "accepted",
        timeout: float = 30.0,  # noqa: ASYNC109 - the daemon's wait, sent in the request
    ) -> dict[str, Any]:
        """Send an envelope; ``wait`` is ``accepted`` (default), ``acked`` or ``response``."""
        return await self.request("send", **send_args(to, envelope, wait, timeout))

    async def query(
        self,
        to: str,
        question: str,
        *,
        domain: str | None = None,
        context_budget: str = "standard",
        wait: str = "accepted",
        timeout: float = 30.0,  # noqa: ASYNC109 - the daemon's wait
    ) -> dict[str, Any]:
        env = query_envelope(question, domain=domain, context_budget=context_budget)
        return await self.send(to, env, wait=wait, timeout=timeout)

    async def delegate(
        self,
        to: str,
        task: str,
        *,
        context: dict[str, Any] | None = None,
        urgent: bool = False,
        report_back: bool = False,
        wait: str = "accepted",
        timeout: float = 30.0,  # noqa: ASYNC109 - the daemon's wait
    ) -> dict[str, Any]:
        env = delegate_envelope(task, context=context, urgent=urgent, report_back=report_back)
        return await self.send(to, env, wait=wait, timeout=timeout)

    async def notify(self, topic: str, data: Any) -> dict[str, Any]:
        """Send a notify to every connected peer."""
        return await self.request("broadcast", envelope=notify_envelope(topic, data))

    async def reply(
        self,
        msg_id: str,
        data: Any,
        *,
        to: str | None = None,
        summary: str | None = None,
        error: str | None = None,
        wait: str = "accepted",
        timeout: float = 30.0,  # noqa: ASYNC109 - the daemon's wait
    ) -> dict[str, Any]:
        args = reply_args(
            msg_id, data, to=to, summary=summary, error=error, wait=wait, timeout=timeout
        )
        return await self.request("reply", **args)

    async def peers(self) -> list[dict[str, Any]]:
        peers: list[dict[str, Any]] = (await self.request("peers"))["peers"]
        return peers

    async def status(self) -> dict[str, Any]:
        return await self.request("status")

    async def identity(self) -> dict[str, Any]:
        return await self.request("id")

    async def trust(self, agent_id: str, pubkey: str, *, addr: str | None = None) -> dict[str, Any]:
        return await self.request("trust", **trust_args(agent_id, pubkey, addr))

    async def forget(self, agent_id: str) -> dict[str, Any]:
        return await self.request("forget", agent_id=agent_id)

    async def verify(self, agent_id: str, *, confirm: bool = False) -> dict[str, Any]:
        """As ``Client.verify``."""
        return await self.request("verify", **verify_args(agent_id, confirm))

    async def inbox(
        self,
        unread: bool = True,
        since: int | None = None,
        limit: int | None = None,
        kinds: list[str] | None = None,
        from_: list[str] | None = None,
        wait: float | None = None,
    ) -> dict[str, Any]:
        """As ``Client.inbox``: stored envelopes, not consumed; ``messages`` and ``next``."""
        args = inbox_args(
            unread=unread, since=since, limit=limit, kinds=kinds, from_=from_, wait=wait
        )
        return await self.request("inbox", **args)

    async def ack(self, ids: list[str] | None = None, up_to: int | None = None) -> int:
        """Mark envelopes read, by message id or every one up to a ``seq``; how many changed."""
        acked: int = (await self.request("ack", **ack_args(ids, up_to)))["acked"]
        return acked

    async def listen(
        self,
        *,
        since: int | None = None,
        count: int | None = None,
        events: bool = False,
        ack: bool = False,
        reconnect: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """As ``Client.listen``: envelopes (and events), acked after use, across daemon restarts."""
        import trio

        sub = Subscription(since=since, count=count, events=events, ack=ack)
        self.last_seq = since
        on: int | None = None
        delay = RECONNECT_FIRST
        while not sub.done:
            try:
                if on is not None and (on != self._conn_no or self._stream is None):
                    on = None
                    if not reconnect:
                        raise _closed()
                if sub.exhausted:
                    on = None
                if on is None:
                    await self.connect()
                    core = self._core
                    req, line = core.start("subscribe", sub.subscribe_args(core))
                    lines = sub.ack_lines(core) + line
                    _check(await self._exchange(core, req, lines, subscribe=True))
                    on = self._conn_no
                    delay = RECONNECT_FIRST
                else:
                    await self._write(sub.ack_lines(self._core))
                obj = await self._until(self._core, self._push_taker(sub))
            except DaemonUnavailable:
                if not reconnect:
                    raise
                on = None
                await self.aclose()
                await trio.sleep(delay)
                delay = min(delay * 2, RECONNECT_CAP)
                continue
            item = sub.take(obj)
            self.last_seq = sub.last_seq
            if item is not None:
                yield item
                sub.consumed()
        with trio.move_on_after(ACK_SETTLE_TIMEOUT) as scope:
            await self._settle(sub, reconnect)
        if scope.cancelled_caught:
            raise RequestFailed("timeout", "the daemon did not confirm the acks in time")

    def _push_taker(self, sub: Subscription) -> Callable[[], dict[str, Any] | None]:
        core = self._core

        def take() -> dict[str, Any] | None:
            sub.check_acks(core)
            return core.pushes.popleft() if core.pushes else None

        return take

    def _ack_waiter(self, sub: Subscription) -> Callable[[], bool | None]:
        core = self._core

        def confirmed() -> bool | None:
            sub.check_acks(core)
            return True if sub.settled else None

        return confirmed

    async def _settle(self, sub: Subscription, reconnect: bool) -> None:
        import trio

        delay = RECONNECT_FIRST
        while not sub.settled:
            try:
                await self.connect()
                await self._write(sub.ack_lines(self._core))
                await self._until(self._core, self._ack_waiter(sub))
            except DaemonUnavailable:
                if not reconnect:
                    raise
                await self.aclose()
                await trio.sleep(delay)
                delay = min(delay * 2, RECONNECT_CAP)
