"""The ``acp`` command line: a thin client of the daemon's IPC socket, plus ``acp daemon``.

Agents call these commands in loops, so this module imports only cyclopts and the standard-library
client at start-up; ``acp daemon`` imports trio, zeroconf and PyNaCl when it runs. Every command
returns an exit code; AcpError is mapped to stderr and its code here and nowhere else.
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

try:
    from cyclopts import App, Parameter
except ModuleNotFoundError as _missing:  # acp/ imported from a clone that was never installed
    from acp import not_installed

    sys.exit(not_installed(_missing))

from acp import __version__
from acp.client import Client, delegate_envelope, notify_envelope, query_envelope
from acp.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    AcpError,
    ConfigError,
    DaemonUnavailable,
    RequestFailed,
)
from acp.text import clean, one_line, safe_json

app = App(
    name="acp",
    help="Agent Communication Protocol: find agents on the LAN and message them securely.\n\n"
    "Start the daemon with `acp daemon`; every other command talks to it over $ACP_HOME/acp.sock.",
    version=__version__,
)

Json = Annotated[bool, Parameter(negative="", help="Print JSON instead of text.")]


def _print_json(obj: Any) -> None:
    """Every --json output goes through here: the IPC's ``req`` (the request number of a
    connection that is gone) is dropped, and what a peer sent is escaped (C1 and bidi)."""
    if isinstance(obj, dict) and "req" in obj:
        obj = {k: v for k, v in obj.items() if k != "req"}
    print(safe_json(obj))


def _parse_data(text: str) -> Any:
    """DATA arguments: JSON if it parses as JSON, else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _usage_error(message: str, code: str = "bad_request") -> AcpError:
    """A bad argument caught here exits 2, as one the daemon refuses (bad_request) does."""
    exc = AcpError(message, code=code)
    exc.exit_code = EXIT_USAGE
    return exc


def _parse_object(text: str | None, what: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise _usage_error(f"{what} must be a JSON object: {exc}") from None
    if not isinstance(obj, dict):
        raise _usage_error(f"{what} must be a JSON object")
    return obj


ENVELOPE_LIMIT = 65518  # bytes of compact envelope JSON: acp.proto.envelope.MAX_ENVELOPE (which
# is not imported here: it loads the crypto core)
READ_LIMIT = 1 << 20  # what `-` and --file read at most: the daemon's IPC line cap
MAX_WAIT = 3600.0  # the daemon's longest --timeout / --wait
AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")  # as acp.model.is_agent_id

FileOption = Annotated[Path | None, Parameter(name="--file", negative="")]


def _text_arg(value: str | None, file: Path | None, what: str) -> str:
    """MESSAGE, TASK or DATA as given: the argument itself, `-` for stdin, or --file PATH (read as
    UTF-8; one trailing newline is dropped, as `$(cat FILE)` would)."""
    if value is not None and file is not None:
        raise _usage_error(f"give {what} or --file PATH, not both")
    if file is None and value != "-":
        if value is None:
            raise _usage_error(f"give {what}, or - to read it from stdin, or --file PATH")
        return value
    source = "stdin" if file is None else f"--file {file}"
    try:
        if file is None:
            raw = sys.stdin.buffer.read(READ_LIMIT + 1)
        else:
            with open(file, "rb") as f:
                raw = f.read(READ_LIMIT + 1)
    except OSError as exc:
        raise _usage_error(f"cannot read {source}: {exc.strerror or exc}") from None
    if len(raw) > READ_LIMIT:
        raise _usage_error(
            f"{what} from {source} is over {READ_LIMIT} bytes; an envelope is at most "
            f"{ENVELOPE_LIMIT} bytes of JSON",
            code="too_large",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _usage_error(f"{what} from {source} is not UTF-8 text ({exc.reason})") from None
    return text[:-1] if text.endswith("\n") else text


def _check_agent(value: str, what: str) -> str:
    if not AGENT_ID.match(value):
        raise _usage_error(
            f"{what} {one_line(repr(value), 80)} is not an agent_id: use 1-63 characters of "
            "A-Z a-z 0-9 . _ -, starting with a letter or digit (see `acp peers`)"
        )
    return value


def _check_seconds(value: float | None, what: str, *, zero: bool = False) -> None:
    if value is None:
        return
    low = 0 <= value if zero else 0 < value
    if not (low and value <= MAX_WAIT):
        least = "0 or more" if zero else "more than 0"
        raise _usage_error(f"{what} must be {least} and at most {MAX_WAIT:g} seconds")


def _check_seq(value: int | None, what: str) -> None:
    if value is not None and value < 0:
        raise _usage_error(f"{what} must be a seq: 0 or more (as `acp inbox --json` shows)")


@contextmanager
def _waiting(msg_id: str, mode: str) -> Iterator[None]:
    """Around a send on a connected client: on a timeout, a failed delivery, a lost connection or
    Ctrl-C, say which message id it was, so that a late reply (whose reply_to is that id) can
    still be matched."""
    late = "a late reply can be matched with `acp inbox` (its reply_to is that id)"
    maybe_sent = f"message id {msg_id} (sent if the daemon accepted it): {late}"
    try:
        yield
    except KeyboardInterrupt:
        print(f"acp: interrupted; {maybe_sent}", file=sys.stderr)
        raise
    except DaemonUnavailable as exc:  # the daemon stopped or restarted while we waited
        exc.message = f"{exc.message}; {maybe_sent}"
        exc.args = (exc.message,)
        raise
    except RequestFailed as exc:
        if exc.code in ("timeout", "undelivered"):
            said = exc.message if msg_id in exc.message else f"{exc.message}; message id {msg_id}"
            if exc.code == "timeout" and mode == "response":
                said += f": {late}"
            elif exc.code == "timeout":
                said += ": `acp inbox` shows an undelivered event with that id if it is given up"
            exc.message = said
            exc.args = (said,)
        raise


def _report_sent(reply: dict[str, Any], as_json: bool) -> int:
    if as_json:
        _print_json(reply)
        return EXIT_OK
    if reply.get("state") == "answered":
        payload = reply["response"].get("payload", {})
        if payload.get("error"):
            print(f"error: {one_line(str(payload['error']))}", file=sys.stderr)
        data = payload.get("data")  # the peer's: escaped, for a terminal
        print(clean(data) if isinstance(data, str) else safe_json(data, separators=(", ", ": ")))
        return EXIT_OK if not payload.get("error") else 1
    state = reply.get("state", "accepted")
    note = {
        "queued": " (peer not connected: queued, resent when it is)",
        "acked": " (ACKed by the peer)",
    }
    print(f"{one_line(str(reply['msg_id']))}{note.get(state, '')}")
    return EXIT_OK


def _wait_mode(wait: bool, acked: bool) -> str:
    return "response" if wait else "acked" if acked else "accepted"


Text = Annotated[str | None, Parameter(allow_leading_hyphen=True)]  # `-` (stdin), "-5 °C"


def _send(agent: str, env: dict[str, Any], mode: str, timeout: float) -> dict[str, Any]:
    """Send with an id of our own, so that it can be named even if no reply ever comes."""
    env["id"] = str(uuid.uuid4())
    with Client() as c, _waiting(env["id"], mode):  # no daemon: nothing was sent
        return c.send(agent, env, wait=mode, timeout=timeout)


@app.command(usage="Usage: acp send [OPTIONS] AGENT (MESSAGE | - | --file PATH)")
def send(
    agent: str,
    message: Text = None,
    /,
    *,
    file: FileOption = None,
    wait: bool = False,
    acked: bool = False,
    timeout: float = 30.0,
    domain: str | None = None,
    budget: Literal["minimal", "standard", "full"] = "standard",
    json: Json = False,
) -> int:
    """Send a query to AGENT.

    Prints the message id once the daemon accepted it. With --wait, waits for the response and prints
    its data; with --acked, waits for the peer's ACK. When the wait runs out (exit 75) or is
    interrupted (exit 130), the message id goes to stderr: a late reply names it as its reply_to in
    `acp inbox`. Size limit: the whole envelope, as compact JSON, may be at most 65518 bytes (64 KiB
    less the encryption overhead); its other fields and JSON escapes count too.

    Examples

        acp send agent-two "What is the build status?"
        acp send agent-two "Summarise README.md" --wait --timeout 60
        git diff | acp send agent-two - --wait
        acp send agent-two --file question.txt --acked

    Parameters
    ----------
    agent
        The receiving agent_id (see `acp peers`).
    message
        The question, as text; - reads it from stdin.
    file
        Read the question from this file (UTF-8) instead.
    wait
        Wait for the `response` and print its data.
    acked
        Wait until the peer's daemon ACKs the envelope.
    timeout
        Seconds to wait with --wait/--acked, at most 3600 (exit 75 when they run out).
    domain
        Optional domain hint for the receiving agent.
    budget
        context_budget of the query.
    """
    _check_agent(agent, "AGENT")
    _check_seconds(timeout, "--timeout")
    env = query_envelope(_text_arg(message, file, "MESSAGE"), domain=domain, context_budget=budget)
    return _report_sent(_send(agent, env, _wait_mode(wait, acked), timeout), json)


@app.command(usage="Usage: acp delegate [OPTIONS] AGENT (TASK | - | --file PATH)")
def delegate(
    agent: str,
    task: Text = None,
    /,
    *,
    file: FileOption = None,
    urgent: bool = False,
    report_back: bool = False,
    context: str | None = None,
    wait: bool = False,
    acked: bool = False,
    timeout: float = 30.0,
    json: Json = False,
) -> int:
    """Delegate TASK to AGENT.

    Urgent delegates go ahead of traffic already queued for that peer. As with `acp send`, a wait
    that runs out (exit 75) or is interrupted (exit 130) names the message id on stderr, and the
    envelope may be at most 65518 bytes of JSON.

    Examples

        acp delegate agent-two "Run the nightly tests" --report-back
        acp delegate agent-two "Stop the deploy" --urgent --context '{"deploy": 42}'
        acp delegate agent-two --file task.md --report-back --wait --timeout 600

    Parameters
    ----------
    agent
        The receiving agent_id.
    task
        What to do, as text; - reads it from stdin.
    file
        Read the task from this file (UTF-8) instead.
    urgent
        priority "urgent" instead of "normal".
    report_back
        Ask the agent to report back (report_back: true).
    context
        A JSON object passed as the delegate's context.
    wait
        Wait for a `response` that replies to this delegate and print its data.
    acked
        Wait until the peer's daemon ACKs the envelope.
    timeout
        Seconds to wait with --wait/--acked, at most 3600.
    """
    _check_agent(agent, "AGENT")
    _check_seconds(timeout, "--timeout")
    env = delegate_envelope(
        _text_arg(task, file, "TASK"),
        context=_parse_object(context, "--context"),
        urgent=urgent,
        report_back=report_back,
    )
    return _report_sent(_send(agent, env, _wait_mode(wait, acked), timeout), json)


@app.command(usage="Usage: acp notify [OPTIONS] TOPIC (DATA | - | --file PATH)")
def notify(topic: str, data: Text = None, /, *, file: FileOption = None, json: Json = False) -> int:
    """Send a notify to every connected peer.

    DATA is parsed as JSON when it is valid JSON, and sent as a string otherwise.

    Examples

        acp notify build-finished '{"ok": true, "commit": "3f2a91c"}'
        acp notify status "going offline for maintenance"
        acp notify test-report --file report.json

    Parameters
    ----------
    topic
        The notify topic.
    data
        The notify data (JSON or text); - reads it from stdin.
    file
        Read the data from this file (UTF-8) instead.
    """
    env = notify_envelope(topic, _parse_data(_text_arg(data, file, "DATA")))
    with Client() as c:
        reply = c.request("broadcast", envelope=env)
    if json:
        _print_json(reply)
    elif reply["to"]:
        print(one_line(f"{reply['msg_id']} -> {', '.join(map(str, reply['to']))}"))
    else:
        print("no peer is connected: nothing sent", file=sys.stderr)
    return EXIT_OK


@app.command(usage="Usage: acp reply [OPTIONS] MSG_ID (DATA | - | --file PATH)")
def reply(
    msg_id: str,
    data: Text = None,
    /,
    *,
    file: FileOption = None,
    to: str | None = None,
    summary: str | None = None,
    error: str | None = None,
    acked: bool = False,
    timeout: float = 30.0,
    json: Json = False,
) -> int:
    """Answer the envelope MSG_ID with a response carrying DATA.

    The daemon remembers who sent recent inbound envelopes; use --to for older ones. With --error,
    DATA may be left out (it is then null).

    Examples

        acp reply 5fc85a12-416f-4cd5-b1f5-e8cd54608d14 "all green"
        acp reply 5fc85a12-... '{"passed": 120, "failed": 0}' --summary "tests pass"
        make test 2>&1 | tail -n 20 | acp reply 5fc85a12-... - --acked
        acp reply 5fc85a12-... --error "delegated tasks need a human's approval here"

    Parameters
    ----------
    msg_id
        The id of the envelope being answered (from `acp inbox` or `acp listen`).
    data
        The response data (JSON or text); - reads it from stdin.
    file
        Read the data from this file (UTF-8) instead.
    to
        The agent to answer, if the daemon no longer remembers MSG_ID.
    summary
        Optional one-line summary.
    error
        Report an error instead of a result.
    acked
        Wait until the peer's daemon ACKs the response.
    timeout
        Seconds to wait with --acked, at most 3600 (exit 75 when they run out).
    """
    if not msg_id:
        raise _usage_error("MSG_ID is empty: give the id of the envelope to answer")
    if to is not None:
        _check_agent(to, "--to")
    _check_seconds(timeout, "--timeout")
    if data is None and file is None and error is not None:
        value: Any = None
    else:
        value = _parse_data(_text_arg(data, file, "DATA"))
    mode = "acked" if acked else "accepted"
    try:
        with Client() as c:
            sent = c.reply(
                msg_id, value, to=to, summary=summary, error=error, wait=mode, timeout=timeout
            )
    except KeyboardInterrupt:
        if acked:
            print(
                f"acp: interrupted; the response to {one_line(msg_id, 80)} stays queued for the "
                "peer if the daemon accepted it (`acp status` counts what is queued)",
                file=sys.stderr,
            )
        raise
    return _report_sent(sent, json)


@app.command
def listen(
    *,
    count: int | None = None,
    events: bool = False,
    since: int | None = None,
    peek: bool = False,
    reconnect: bool = False,
) -> int:
    """Print inbound envelopes as JSON lines, oldest first, starting with the unread ones.

    Runs until interrupted (or --count envelopes). Every line is one envelope object. Each envelope
    is marked read once its line is printed and flushed, so one that a crashed reader never got
    stays unread and comes again (--peek leaves them all unread). `acp inbox --json` shows each
    envelope's seq, to resume after with --since.

    Examples

        acp listen
        acp listen --count 1 | jq -r .payload.question
        acp listen --since 41 --peek
        acp listen --reconnect | while read -r env; do handle "$env"; done

    Parameters
    ----------
    count
        Exit after this many envelopes.
    events
        Also print daemon events such as {"event": "undelivered", ...}.
    since
        Start after this seq (read or not), instead of with the unread envelopes.
    peek
        Leave envelopes unread.
    reconnect
        When the daemon stops or restarts, wait for it and carry on where it left off (also waits
        for a daemon that is not running yet).
    """
    if count is not None and count < 1:
        raise _usage_error("--count must be at least 1")
    _check_seq(since, "--since")
    client = Client()
    try:
        if not reconnect:
            client.connect()  # no daemon: exit 69 now
        for item in client.listen(
            since=since, count=count, events=events, ack=not peek, reconnect=reconnect
        ):
            sys.stdout.write(safe_json(item) + "\n")
            sys.stdout.flush()
    finally:
        client.close()
    return EXIT_OK


@app.command
def inbox(
    *,
    all_: Annotated[bool, Parameter(name="--all", negative="")] = False,
    since: int | None = None,
    kind: Annotated[list[str] | None, Parameter(negative="")] = None,
    from_: Annotated[list[str] | None, Parameter(name="--from", negative="")] = None,
    limit: int | None = None,
    wait: float | None = None,
    json: Json = False,
) -> int:
    """List stored envelopes without marking them read: unread ones, oldest first.

    One line each: SEQ FROM KIND ID and a summary of the payload ("(read)" in front of read ones).
    Mark them read with `acp ack`; answer one with `acp reply ID`. --json prints the daemon's reply:
    {"messages": [{"seq", "envelope" (or "event"), "read", "received", "trust"}, ...], "next": N}.

    Examples

        acp inbox
        acp inbox --kind query --from agent-two
        acp inbox --since 41 --wait 60 --json | jq -c '.messages[].envelope'
        acp inbox --all --limit 20

    Parameters
    ----------
    all_
        Include envelopes already read (while the daemon keeps them).
    since
        Only envelopes with a seq above this one (the "next" of an earlier --json).
    kind
        Only this kind (query, response, delegate, notify); repeat for several.
    from_
        Only from this agent; repeat for several.
    limit
        At most this many (the daemon's default is 100, its maximum 1000).
    wait
        If nothing matches, wait up to this many seconds for something that does.
    """
    _check_seq(since, "--since")
    if limit is not None and not 1 <= limit <= 1000:
        raise _usage_error("--limit must be 1 to 1000")
    _check_seconds(wait, "--wait", zero=True)
    with Client() as c:
        out = c.inbox(unread=not all_, since=since, limit=limit, kinds=kind, from_=from_, wait=wait)
    if json:
        _print_json(out)
        return EXIT_OK
    messages = out.get("messages") or []
    if not messages:
        print("no envelopes" if all_ else "no unread envelopes", file=sys.stderr)
        return EXIT_OK
    print("\n".join(_inbox_lines(messages)))
    if len(messages) >= (limit or INBOX_PAGE):
        print(f"more may follow: acp inbox --since {out.get('next')}", file=sys.stderr)
    return EXIT_OK


INBOX_PAGE = 100  # the daemon's default limit
INBOX_WIDTH = 79  # inbox lines stay within this (or a wider terminal) when the ids allow
INBOX_SUMMARY_MIN = 16  # ... but show at least this much of each summary


def _one_line(text: str) -> str:
    """Text from a peer made safe for one terminal line: whitespace runs (newlines too) become one
    space, and what a terminal would act on is escaped (acp.text.one_line)."""
    return one_line(" ".join(text.split()))


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return safe_json(value)


def _summary(item: dict[str, Any]) -> tuple[str, str, str, str]:
    """(from, kind, id, summary) of one inbox item: an envelope, or an event of our own."""
    event = item.get("event")
    if isinstance(event, dict):
        text = f"to {event.get('to', '?')}: {event.get('reason', '')}"
        return "-", str(event.get("event", "event")), str(event.get("msg_id", "-")), text
    env = item.get("envelope")
    env = env if isinstance(env, dict) else {}
    kind = str(env.get("kind", "?"))
    p = env.get("payload")
    p = p if isinstance(p, dict) else {}
    if kind == "query":
        text = _compact(p.get("question", ""))
    elif kind == "delegate":
        text = ("[urgent] " if p.get("priority") == "urgent" else "") + _compact(p.get("task", ""))
    elif kind == "notify":
        text = f"{_compact(p.get('topic', ''))}: {_compact(p.get('data'))}"
    elif kind == "response":
        body = f"error: {_compact(p['error'])}" if p.get("error") else None
        body = body or _compact(p["summary"] if p.get("summary") else p.get("data"))
        text = f"re {str(env.get('reply_to', '?'))[:8]}: {body}"
    else:
        text = _compact(p)
    return str(env.get("from", "?")), kind, str(env.get("id", "?")), text


def _screen_width(least: int) -> int:
    """Columns a table may fill: ``least``, or a wider terminal's width (less one)."""
    if not sys.stdout.isatty():
        return least
    import shutil

    return max(least, shutil.get_terminal_size().columns - 1)


def _inbox_lines(messages: list[dict[str, Any]]) -> list[str]:
    rows = []
    for m in messages:
        sender, kind, msg_id, text = _summary(m)
        sender, kind, msg_id = _one_line(sender), _one_line(kind), _one_line(msg_id)
        text = " ".join(text.split())  # escaped below, where it is cut to fit
        if m.get("read"):
            text = f"(read) {text}"
        rows.append((str(m.get("seq", "?")), sender, kind, msg_id, text))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    width = _screen_width(INBOX_WIDTH)
    lines = []
    for seq, sender, kind, msg_id, text in rows:
        head = "  ".join(
            [
                seq.rjust(widths[0]),
                sender.ljust(widths[1]),
                kind.ljust(widths[2]),
                msg_id.ljust(widths[3]),
            ]
        )
        room = max(INBOX_SUMMARY_MIN, width - len(head) - 2)
        lines.append(f"{head}  {one_line(text, room)}".rstrip())
    return lines


@app.command(usage="Usage: acp ack [OPTIONS] (ID... | --up-to SEQ)")
def ack(*ids: str, up_to: int | None = None, json: Json = False) -> int:
    """Mark envelopes read, by message ID or every one up to a seq; prints how many changed.

    Read envelopes no longer show in `acp inbox` or a plain `acp listen` (the daemon keeps them a
    while, for `acp inbox --all` and `--since`). Unknown or already read ids are not an error.

    Examples

        acp ack 5fc85a12-416f-4cd5-b1f5-e8cd54608d14
        acp ack --up-to 41
        acp inbox --json | jq -r '.messages[].envelope.id // empty' | xargs -r acp ack

    Parameters
    ----------
    ids
        Message ids (as `acp inbox` and `acp listen` show them).
    up_to
        Mark every envelope with a seq up to and including this one.
    """
    if bool(ids) == (up_to is not None):
        raise _usage_error("give message ids, or --up-to SEQ (one of the two)")
    _check_seq(up_to, "--up-to")
    with Client() as c:
        n = c.ack(list(ids) if ids else None, up_to)
    if json:
        _print_json({"acked": n})
    else:
        print(f"marked {n} read" if n else "nothing to mark: already read, or unknown")
    return EXIT_OK


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    s = max(0, time.time() - ts)
    return (
        f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"
    )


def _table(
    rows: list[list[str]], header: list[str], *, below: list[str | None] | None = None
) -> str:
    """Aligned columns; ``below[i]``, if any, is a line printed under row i."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if below is not None and below[i]:
            lines.append(str(below[i]))
    return "\n".join(lines)


def _card_skills(row: dict[str, Any]) -> list[str]:
    """The skills a peer's card claims (``card.skills`` of a `peers` row), strings only."""
    card = row.get("card")
    skills = card.get("skills") if isinstance(card, dict) else None
    return [s for s in skills if isinstance(s, str)] if isinstance(skills, list) else []


def _card_line(row: dict[str, Any]) -> str | None:
    """The second line of a peer with a card: its skills and description, escaped (the peer
    wrote them), indented so that it cannot pass for a row, within CARD_WIDTH columns."""
    card = row.get("card")
    if not isinstance(card, dict):
        return None
    parts = []
    if skills := _card_skills(row):
        parts.append("skills: " + ", ".join(skills))
    description = card.get("description")
    if isinstance(description, str) and description.strip():
        parts.append(" ".join(description.split()))
    if not parts:
        return None
    return "  " + one_line(" | ".join(parts), CARD_WIDTH - 2)


CARD_WIDTH = 79  # the card line under a peer's row stays within this


PEERS_WIDTH = 79  # the default `acp peers` output stays within this (or a wider terminal)
PEERS_CUT = {"ID": 20, "ADDR": 24}  # ... cutting these cells ("…") only if it would not
# Each column's header is the upper-cased key of the JSON row (`acp peers --json`) it shows.
PEERS_COLUMNS = ("ID", "STATUS", "ADDR", "RTT_MS", "QUEUED")  # last_error: a line below
PEERS_WIDE_COLUMNS = (
    "ID",
    "STATUS",
    "ADDR",
    "SOURCE",
    "TRUST",
    "RTT_MS",
    "LAST_SEEN",
    "QUEUED",
    "FINGERPRINT",
    "LAST_ERROR",
)


def _peer_cells(p: dict[str, Any]) -> dict[str, str]:
    """One peer's cells by header, not yet escaped (BYE reasons and ids come from peers)."""
    status = str(p.get("status"))
    if p.get("next_try_in") is not None:
        status += f" ({p['next_try_in']:.0f}s)"
    addr = str(p.get("addr") or "-")
    if ":" in addr:
        addr = f"[{addr}]"
    if p.get("addr") and p.get("port") is not None:
        addr += f":{p['port']}"
    error = p.get("last_error") or ""
    if p.get("announced_fingerprint"):
        error = f"announced key {p['announced_fingerprint']} differs from the pinned one. {error}"
    return {
        "ID": str(p.get("id")),
        "STATUS": status,
        "ADDR": addr,
        "SOURCE": str(p.get("source") or "-"),
        "TRUST": str(p.get("trust") or "-"),
        "RTT_MS": f"{p['rtt_ms']:.1f}" if p.get("rtt_ms") is not None else "-",
        "LAST_SEEN": _ago(p.get("last_seen")),
        "QUEUED": str(p.get("queued", 0)),
        "FINGERPRINT": str(p.get("fingerprint") or "-"),
        "LAST_ERROR": str(error).strip(),
    }


def _peers_text(rows: list[dict[str, Any]], *, wide: bool) -> str:
    """The table: every cell escaped, one line each. --wide: every column, the whole last error.
    Otherwise within PEERS_WIDTH (a wider terminal's width), the last error on an indented line
    under its row, cut with "…"."""
    cells = [_peer_cells(p) for p in rows]
    header = list(PEERS_WIDE_COLUMNS if wide else PEERS_COLUMNS)
    limits = {h: None if (wide and h == "LAST_ERROR") else 80 for h in header}
    width = _screen_width(PEERS_WIDTH)

    def table() -> list[list[str]]:
        return [[one_line(c[h], limits[h]) for h in header] for c in cells]

    lines = table()
    if not wide:
        needed = sum(max(len(r[i]) for r in [header, *lines]) for i in range(len(header)))
        if needed + 2 * (len(header) - 1) > width:
            limits.update(PEERS_CUT)
            lines = table()
    below: list[str | None] = []
    for p, c in zip(rows, cells, strict=True):
        extra = []
        if c["LAST_ERROR"] and not wide:
            extra.append(one_line("  last_error: " + c["LAST_ERROR"], width))
        if card := _card_line(p):
            extra.append(card)
        below.append("\n".join(extra) or None)
    return _table(lines, header, below=below)


@app.command
def peers(
    *,
    skill: str | None = None,
    wide: Annotated[bool, Parameter(negative="")] = False,
    json: Json = False,
) -> int:
    """List known peers: status, address, RTT, what is queued for them and the last error.

    The table fits 80 columns: a peer's last error goes on an indented line under its row, cut with
    "…", and long ids and addresses are cut too if need be. --wide shows every column on one line
    per peer, adding SOURCE, TRUST (tofu, explicit or verified: see `acp verify`), LAST_SEEN,
    FINGERPRINT (to compare with `acp id` on that machine) and the whole LAST_ERROR. Each header
    is a key of the --json rows in upper case: ADDR shows addr:port, LAST_SEEN how long ago
    last_seen was, STATUS also the seconds to the next try (next_try_in) in backoff. Statuses: connected, connecting, discovered, waiting (the lower
    agent_id dials), backoff, key_changed (run `acp trust` or `acp forget`), refused, stale, idle
    (no address known). A peer that sent an agent card gets one more indented line: the skills and
    description it claims (what the peer says, not checked by anyone).

    Examples

        acp peers
        acp peers --wide
        acp peers --skill code-review
        acp peers --json | jq '.[] | select(.status == "connected") | .id'

    Parameters
    ----------
    skill
        Only peers whose agent card lists this skill (exact name, as in `card.skills`).
    wide
        All columns, and the whole last error (lines may be long).
    """
    with Client() as c:
        rows = c.peers()
    if skill is not None:
        rows = [p for p in rows if skill in _card_skills(p)]
    if json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        if skill is not None:
            print(f"no known peer lists the skill '{one_line(skill, 80)}'", file=sys.stderr)
            return EXIT_OK
        print(
            "no peers known yet (mDNS finds peers on the LAN; static ones go in config.toml [[peers]])"
        )
        return EXIT_OK
    print(_peers_text(rows, wide=wide))
    return EXIT_OK


@app.command
def status(*, json: Json = False) -> int:
    """Show the daemon's health: agent_id, fingerprint, port, uptime, peers, message counts.

    The inbox line counts unread envelopes and all those stored (read ones are kept a while); the
    outbox line, envelopes waiting for a peer's ACK.

    Examples

        acp status
        acp status --json | jq .peers_connected
    """
    with Client() as c:
        st = c.status()
    if json:
        _print_json(st)
        return EXIT_OK
    print(f"agent_id     {st['agent_id']}")
    print(f"fingerprint  {st['fingerprint']}")
    print(f"listening    port {st['port']} (IPC {one_line(str(st['home']))}/acp.sock)")
    print(f"uptime       {st['uptime']:.0f}s   version {st['version']}   pid {st['pid']}")
    print(f"trust        {st['trust']}   mDNS {one_line(str(st['mdns']), 200)}")
    print(f"peers        {st['peers_connected']} connected of {st['peers_known']} known")
    print(
        f"messages     {st['messages_sent']} sent (ACKed), {st['messages_received']} received, "
        f"{st['subscribers']} subscriber(s)"
    )
    stored = f", {st['stored']} stored" if st.get("stored") is not None else ""
    print(f"inbox        {st.get('unread', st.get('inbox'))} unread{stored}")
    print(f"outbox       {st['queued']} queued")
    if hooks := st.get("hooks"):
        states = ", ".join(f"{n} {state}" for state, n in hooks.items() if n)
        print(f"hooks        {sum(hooks.values())} ({states}): see `acp hooks`")
    if st.get("blocked"):
        print(f"blocked      {', '.join(st['blocked'])}")
    for warning in st.get("warnings", []):
        print(f"warning      {one_line(str(warning), 300)}")  # may quote what a peer announced
    return EXIT_OK


@app.command(name="id")
def identity(*, json: Json = False) -> int:
    """Show this machine's agent_id, public key and fingerprint (to check a peer by voice or chat).

    Asks the running daemon; without one, reads $ACP_HOME/identity.pub and config.toml.

    Examples

        acp id
        acp trust my-laptop "$(ssh laptop acp id --json | jq -r .pubkey)"
    """
    try:
        with Client() as c:
            info = c.identity()
            info.pop("ok", None)
    except AcpError as exc:
        if exc.code != "daemon_unavailable":
            raise
        info = _offline_identity()
    if json:
        _print_json(info)
    else:
        print(
            f"agent_id     {info['agent_id']}\npubkey       {info['pubkey']}\nfingerprint  {info['fingerprint']}"
        )
    return EXIT_OK


def _offline_identity() -> dict[str, Any]:
    from acp.config import Config
    from acp.model import decode_key, fingerprint

    config = Config.load()
    path = config.home / "identity.pub"
    try:
        text = path.read_text().strip()
    except OSError:
        raise ConfigError(
            f"no identity yet ({path} missing): run `acp daemon` once to create it"
        ) from None
    return {
        "agent_id": config.agent_id,
        "pubkey": text,
        "fingerprint": fingerprint(decode_key(text, what=str(path))),
    }


@app.command
def trust(agent: str, key: str, /, *, addr: str | None = None, json: Json = False) -> int:
    """Pin KEY (base64 X25519 public key) for AGENT, replacing any key held or announced before.

    Use it after checking the fingerprint with the other side, to accept a peer whose key changed,
    or to admit a peer under `trust = "explicit"`.

    Examples

        acp trust agent-two "q6E1...="
        acp trust agent-two "q6E1...=" --addr 10.0.0.7:7100

    Parameters
    ----------
    agent
        The peer's agent_id.
    key
        Its public key, base64 (from `acp id` on that machine).
    addr
        host:port to dial it at, if mDNS cannot see it.
    """
    _check_agent(agent, "AGENT")
    with Client() as c:
        out = c.trust(agent, key, addr=addr)
    if json:
        _print_json(out)
    else:
        print(f"trusted {out['agent_id']} with key {out['fingerprint']}")
    return EXIT_OK


@app.command
def forget(agent: str, /, *, json: Json = False) -> int:
    """Forget AGENT: close its session, drop its pinned key and anything queued for it.

    Examples

        acp forget old-laptop

    Parameters
    ----------
    agent
        The peer's agent_id (as `acp peers` shows it).
    """
    _check_agent(agent, "AGENT")
    with Client() as c:
        out = c.forget(agent)
    if json:
        _print_json(out)
    else:
        print(f"forgot {out['agent_id']}")
    return EXIT_OK


def _grouped_code(code: str) -> str:
    """A 6-digit code as two groups of three, easier to read out: "123 456"."""
    return f"{code[:3]} {code[3:]}" if len(code) == 6 else code


@app.command
def verify(
    agent: str,
    /,
    *,
    confirm: Annotated[bool, Parameter(negative="")] = False,
    json: Json = False,
) -> int:
    """Show the 6-digit code of the live session with AGENT, to compare with the code its machine
    shows for us; --confirm records AGENT's key as verified once the two codes matched.

    Run `acp verify <our agent_id>` on AGENT's machine at the same time and compare the codes by
    voice or another channel you trust. Both daemons derive the code from the Noise handshake of
    their session, so the two codes are the same only if no one sits between them (a relay in
    the middle runs two handshakes, and the two screens show two different codes). Read both
    codes from the same session: a reconnect makes a new code. Needs a live session (`acp peers`
    shows the peer connected). A key that changes later (`acp trust` with another key,
    `acp forget`) is not verified. With `trust = "verified"` in config.toml only verified keys
    and those you named ([[peers]], `acp trust`) may deliver envelopes here.

    Examples

        acp verify agent-two
        acp verify agent-two --confirm
        acp verify agent-two --json | jq -r .code

    Parameters
    ----------
    agent
        The peer's agent_id (as `acp peers` shows it).
    confirm
        Record the peer's current key as verified (only after the codes matched on both screens).
    """
    _check_agent(agent, "AGENT")
    with Client() as c:
        out = c.verify(agent, confirm=confirm)
    if json:
        _print_json({k: v for k, v in out.items() if k != "ok"})
        return EXIT_OK
    code, peer, us = _grouped_code(str(out["code"])), out["agent_id"], out["own_id"]
    if confirm:
        print(f"{peer} is verified: key {out['fingerprint']} (session code {code})")
        print(f"On {peer}, `acp verify {us} --confirm` records our key there too.")
        return EXIT_OK
    print(f"verification code  {code}")
    print(f"peer               {peer}, key {out['fingerprint']}, trust {out['trust']}")
    print()
    print(f"On {peer}, run `acp verify {us}` and compare the two codes (by voice, in person,")
    print("or over another channel you trust).")
    print(f"- They match: run `acp verify {peer} --confirm` here (and `acp verify {us} --confirm`")
    print(f"  on {peer}).")
    print("- They differ: someone may be between the two daemons. Do not confirm. Compare the")
    print(f"  fingerprint above with `acp id` on {peer}; if they differ too, pin the key that")
    print(f"  `acp id` shows there with `acp trust {peer} KEY`.")
    return EXIT_OK


@app.command
def block(agent: str, /, *, json: Json = False) -> int:
    """Block AGENT: forget it and refuse it from now on, until `acp unblock`.

    Unlike `acp forget`, which its next dial undoes under trust = "tofu", a blocked agent_id is
    refused at the handshake, never pinned and never dialled, across restarts.

    Examples

        acp block mallory
        acp status --json | jq .blocked

    Parameters
    ----------
    agent
        The agent_id to refuse.
    """
    _check_agent(agent, "AGENT")
    with Client() as c:
        out = c.request("block", agent_id=agent)
    if json:
        _print_json({k: v for k, v in out.items() if k != "ok"})
    elif out.get("already"):
        print(f"{out['agent_id']} was blocked already")
    else:
        print(f"blocked {out['agent_id']}: forgotten, and refused until `acp unblock {agent}`")
    return EXIT_OK


@app.command
def unblock(agent: str, /, *, json: Json = False) -> int:
    """Unblock AGENT: it may connect (and be pinned) again.

    Examples

        acp unblock mallory

    Parameters
    ----------
    agent
        An agent_id blocked with `acp block`.
    """
    _check_agent(agent, "AGENT")
    with Client() as c:
        out = c.request("unblock", agent_id=agent)
    if json:
        _print_json({k: v for k, v in out.items() if k != "ok"})
    else:
        print(f"unblocked {out['agent_id']}")
    return EXIT_OK


@app.command
def card(*, reload: bool = False, json: Json = False) -> int:
    """Show this daemon's agent card: what it tells peers it can do ([agent] in config.toml).

    Peers see it in `acp peers` (and filter with `acp peers --skill NAME`). After editing
    config.toml, `--reload` sends the new card to every connected peer without a restart.

    Examples

        acp card
        acp card --reload

    Parameters
    ----------
    reload
        Read [agent] from config.toml again and send it to the connected peers.
    """
    with Client() as c:
        out = c.request("card", **({"reload": True} if reload else {}))
    if json:
        _print_json({k: v for k, v in out.items() if k != "ok"})
        return EXIT_OK
    shown = out.get("card")
    if not shown:
        print("no agent card: add [agent] with description and skills to config.toml")
    else:
        if shown.get("description"):
            print(f"description  {shown['description']}")
        print(f"skills       {', '.join(shown.get('skills') or []) or '-'}")
        if shown.get("card"):
            print(f"card         {safe_json(shown['card'])}")
    if reload:
        print(f"sent to {out.get('sent_to', 0)} connected peer(s)")
    return EXIT_OK


hooks_app = App(name="hooks")
app.command(hooks_app)


def _hook_row(h: dict[str, Any]) -> list[str]:
    error = h.get("last_error")
    cell = one_line(str(error), 60) if error else "-"
    if h.get("next_try_in") is not None and error:
        cell += f" (next try in {h['next_try_in']:.0f} s)"
    return [
        one_line(str(h["name"])),
        str(h["type"]),
        str(h["state"]),
        str(h["pending"]),
        str(h["delivered"]),
        str(h["given_up"]),
        cell,
    ]


@hooks_app.default
def hooks(*, json: Json = False) -> int:
    """List the hooks that wake agents ([[hooks]] in config.toml): state, counts, last error.

    STATE is ok, retrying (its endpoint failed: backing off) or failing (an envelope was given
    up on). PENDING envelopes wait for a run (or a retry); DELIVERED ones were handed over (a 2xx answer,
    exit status 0); GIVEN UP ones failed for good (a 4xx, or still failing after give_up_after)
    and stay unread in the inbox. See docs/hooks.md.

    Examples

        acp hooks
        acp hooks --json | jq '.hooks[] | select(.state != "ok")'
        acp hooks test openclaw
    """
    with Client() as c:
        out = c.request("hooks")
    rows = out.get("hooks", [])
    if json:
        _print_json({"hooks": rows})
        return EXIT_OK
    if not rows:
        print("no hooks: add [[hooks]] to config.toml (see docs/hooks.md), then restart the daemon")
        return EXIT_OK
    header = ["NAME", "TYPE", "STATE", "PENDING", "DELIVERED", "GIVEN UP", "LAST ERROR"]
    print(_table([_hook_row(h) for h in rows], header))
    return EXIT_OK


@hooks_app.command(name="test")
def hooks_test(name: str, /, *, json: Json = False) -> int:
    """Send a synthetic envelope through one hook, once, and show what came back.

    The envelope is a `notify` from this daemon with topic acp.hooks.test; nothing is stored or
    retried. Exit status 0 if the hook succeeded, 1 if not: a health check for the agent's wake-up.

    Examples

        acp hooks test openclaw
        acp hooks test claude --json
    """
    if sys.stderr.isatty() and not json:
        print(f"testing hook {one_line(name, 64)}...", file=sys.stderr)
    with Client() as c:
        out = c.request("hooks_test", read_timeout=None, name=name)
    result = {k: v for k, v in out.items() if k != "ok"}
    if json:
        _print_json(result)
    else:
        took = f"{result.get('elapsed_ms', 0):.0f} ms"
        status = result.get("status")
        what = "" if status is None else f"status {status}, "
        if result.get("success"):
            print(f"hook {one_line(name, 64)}: ok ({what}{took})")
        else:
            print(f"hook {one_line(name, 64)}: FAILED ({what}{took}): {one_line(str(result.get('error')), 300)}")
        if result.get("detail"):
            print(f"answer: {one_line(str(result['detail']), 300)}")
    return EXIT_OK if result.get("success") else EXIT_FAILURE


@app.command
def doctor(*, json: Json = False) -> int:
    """Say what is wrong with acp on this machine, and what to do about it.

    Checks the daemon, ACP_HOME's file modes, mDNS (a multicast query on each interface the daemon
    announces on, which our own daemon must answer), interfaces that usually break discovery, the
    TCP port on the announced addresses, every known peer (why it is not connected), the daemon's
    open files and the clock. Prints one line per check, "ok", "warn" or "fail", and under each
    problem a "fix:" line. Exit 0 when nothing failed (warnings alone: 0), 1 otherwise.

    Examples

        acp doctor
        acp doctor --json | jq -r '.[] | select(.status != "ok") | .fix'
    """
    from acp.doctor import run  # only here: the other commands never load it

    return run(as_json=json)


@app.command
def mcp() -> int:
    """Serve acp to a model as MCP tools over stdin/stdout (for Claude Code and other MCP clients).

    Tools: peers, send, reply, inbox, ack, wait, status; new envelopes are also announced as
    `notifications/claude/channel` hints. It talks to the daemon of $ACP_HOME (start that with
    `acp daemon`) and rides out its restarts. Needs the MCP SDK:
    `pipx inject acp-daemon 'mcp>=2.3'` or `pip install 'acp-daemon[mcp]'`.

    Examples

        claude mcp add acp -- acp mcp
        ACP_HOME=/tmp/a acp mcp
    """
    from acp.mcp_server import run  # the MCP SDK loads here, and only here

    return run()


@app.command
def completion(shell: Literal["bash", "zsh", "fish"], /) -> int:
    """Print the shell completion script for acp (commands, options and their help).

    Save it where the shell loads completions from (README.md, "Install"); again after an upgrade.

    Examples

        mkdir -p ~/.local/share/bash-completion/completions
        acp completion bash > ~/.local/share/bash-completion/completions/acp
        acp completion zsh > ~/.zsh/completions/_cyclopts_acp  # a directory on $fpath
        acp completion fish > ~/.config/fish/completions/acp.fish

    Parameters
    ----------
    shell
        bash, zsh or fish.
    """
    sys.stdout.write(app.generate_completion(prog_name="acp", shell=shell))
    return EXIT_OK


@app.command
def daemon(
    *,
    port: int | None = None,
    agent_id: str | None = None,
    mdns: bool = True,
    debug: bool = False,
) -> int:
    """Run the acp daemon in the foreground (systemd: contrib/systemd/acp.service).

    Reads $ACP_HOME/config.toml (ACP_HOME defaults to ~/.acp), creates identity.key on first run,
    listens on TCP (default port 7100) and on $ACP_HOME/acp.sock, and finds peers by mDNS.
    Stops cleanly on SIGINT/SIGTERM.

    Examples

        acp daemon
        ACP_HOME=/tmp/a acp daemon --agent-id agent-one --port 0 --no-mdns

    Parameters
    ----------
    port
        TCP port to listen on (0 picks a free one). Default: config.toml `port`, else 7100.
    agent_id
        This agent's id. Default: ACP_AGENT_ID, config.toml `agent_id`, else the short hostname.
    mdns
        Advertise and browse with mDNS (--no-mdns: static [[peers]] and peers.json only).
    debug
        Log every frame, and show tracebacks.
    """
    if agent_id is not None and not AGENT_ID.match(agent_id):
        raise ConfigError(
            f"--agent-id {agent_id!r} is not an agent_id: use 1-63 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not 0..65535 (0 picks a free one)")
    import logging

    import trio

    from acp.config import Config
    from acp.daemon import run_daemon

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _safe_log_formatter(
            "%(levelname)s %(name)s: %(message)s"
            if _journald()
            else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    )
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler])
    if not debug:
        logging.getLogger("zeroconf").setLevel(logging.WARNING)
    config = Config.load(agent_id=agent_id, port=port, mdns=None if mdns else False)
    try:
        trio.run(run_daemon, config)
    except BaseExceptionGroup as group:
        error = lone_acp_error(group)
        if error is None:
            raise
        raise error from None
    return EXIT_OK


def _safe_log_formatter(fmt: str) -> Any:
    """A log formatter that escapes every line it writes (acp.text), behind the escaping each
    log call does for what a peer sent: one record is one line, and a traceback keeps its line
    breaks but nothing a terminal (``journalctl``, ``tail -f``) would act on."""
    import logging

    class SafeFormatter(logging.Formatter):
        def formatMessage(self, record: logging.LogRecord) -> str:
            return one_line(super().formatMessage(record))

        def formatException(self, ei: Any) -> str:
            return clean(super().formatException(ei))

        def formatStack(self, stack_info: str) -> str:
            return clean(super().formatStack(stack_info))

    return SafeFormatter(fmt)


def lone_acp_error(group: BaseExceptionGroup[BaseException]) -> AcpError | None:
    """The AcpError a nursery wrapped (alone, however deep), so the user gets its message."""
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
        leaf = leaf.exceptions[0]
    return leaf if isinstance(leaf, AcpError) else None


def _journald() -> bool:
    import os

    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


# What the daemon calls the fields of a request, and what the user typed for them, by command: the
# daemon's errors name the IPC fields ('to', "pubkey: ..."), the user gets the CLI's words.
_TYPED: dict[str, dict[str, str]] = {
    "send": {"to": "AGENT", "envelope": "MESSAGE", "timeout": "--timeout", "wait": "--wait"},
    "delegate": {"to": "AGENT", "envelope": "TASK", "timeout": "--timeout", "wait": "--wait"},
    "notify": {"envelope": "DATA"},
    "reply": {"msg_id": "MSG_ID", "to": "--to AGENT", "payload": "DATA", "timeout": "--timeout"},
    "listen": {"since": "--since", "count": "--count"},
    "inbox": {
        "since": "--since",
        "limit": "--limit",
        "kinds": "--kind",
        "from": "--from",
        "wait": "--wait",
        "unread": "--all",
    },
    "ack": {"ids": "IDS", "up_to": "--up-to"},
    "trust": {"agent_id": "AGENT", "pubkey": "KEY", "addr": "--addr"},
    "forget": {"agent_id": "AGENT"},
    "verify": {"agent_id": "AGENT", "confirm": "--confirm"},
    "card": {"reload": "--reload"},
}
_IPC_PREFIX = re.compile(r"^(send|reply|broadcast|subscribe|inbox|ack|trust|forget|verify|card): ")


def _in_user_terms(message: str, command: str) -> str:
    """A daemon error restated with the names of the command line (AGENT, --to, ...)."""
    for field, typed in _TYPED.get(command, {}).items():
        name = re.escape(field)
        message = re.sub(rf"(['\"]){name}\1", typed, message)
        message = re.sub(rf"^{name}: ", f"{typed}: ", message)
    return _IPC_PREFIX.sub("", message)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns (and exits with) the command's code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        code = app(args, result_action="return_value")
    except AcpError as exc:
        if debug:
            raise
        # The daemon's errors may quote a peer (an ACK's error code, an id): one escaped line.
        if isinstance(exc, RequestFailed):
            message = one_line(_in_user_terms(exc.message, args[0] if args else ""))
        else:
            message = clean(exc.message)
        if exc.code == "too_large" and str(ENVELOPE_LIMIT) not in message:
            message += f"; an envelope is at most {ENVELOPE_LIMIT} bytes of JSON (64 KiB)"
        print(f"acp: {message}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        code = EXIT_OK
    if not isinstance(code, int):
        code = EXIT_OK if code is None else EXIT_USAGE
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
