"""The ``acp`` command line: a thin client of the daemon's IPC socket, plus ``acp daemon``.

Agents call these commands in loops, so this module imports only cyclopts and the standard-library
client at start-up; ``acp daemon`` imports trio, zeroconf and PyNaCl when it runs. Every command
returns an exit code; AcpError is mapped to stderr and its code here and nowhere else.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any, Literal

from cyclopts import App, Parameter

from acp import __version__
from acp.client import Client, delegate_envelope, notify_envelope, query_envelope
from acp.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, AcpError, RequestFailed
from acp.text import clean, one_line, safe_json

app = App(
    name="acp",
    help="Agent Communication Protocol: find agents on the LAN and message them securely.\n\n"
    "Start the daemon with `acp daemon`; every other command talks to it over $ACP_HOME/acp.sock.",
    version=__version__,
)

Json = Annotated[bool, Parameter(negative="", help="Print JSON instead of text.")]


def _print_json(obj: Any) -> None:
    print(safe_json(obj))  # what a peer sent may be in it: C1 and bidi \u-escaped


def _parse_data(text: str) -> Any:
    """DATA arguments: JSON if it parses as JSON, else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _usage_error(message: str) -> AcpError:
    """A bad argument caught here exits 2, as one the daemon refuses (bad_request) does."""
    exc = AcpError(message, code="bad_request")
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


@app.command
def send(
    agent: str,
    message: str,
    *,
    wait: bool = False,
    acked: bool = False,
    timeout: float = 30.0,
    domain: str | None = None,
    budget: Literal["minimal", "standard", "full"] = "standard",
    json: Json = False,
) -> int:
    """Send a query to AGENT.

    Prints the message id once the daemon accepted it. With --wait, waits for the response and prints
    its data; with --acked, waits for the peer's ACK.

    Examples:

        acp send agent-two "What is the build status?"
        acp send agent-two "Summarise README.md" --wait --timeout 60

    Parameters
    ----------
    agent
        The receiving agent_id (see `acp peers`).
    message
        The question, as text.
    wait
        Wait for the `response` and print its data.
    acked
        Wait until the peer's daemon ACKs the envelope.
    timeout
        Seconds to wait with --wait/--acked (exit 75 when they run out).
    domain
        Optional domain hint for the receiving agent.
    budget
        context_budget of the query.
    """
    with Client() as c:
        reply = c.send(
            agent,
            query_envelope(message, domain=domain, context_budget=budget),
            wait=_wait_mode(wait, acked),
            timeout=timeout,
        )
    return _report_sent(reply, json)


@app.command
def delegate(
    agent: str,
    task: str,
    *,
    urgent: bool = False,
    report_back: bool = False,
    context: str | None = None,
    wait: bool = False,
    acked: bool = False,
    timeout: float = 30.0,
    json: Json = False,
) -> int:
    """Delegate TASK to AGENT.

    Urgent delegates go ahead of traffic already queued for that peer.

    Examples:

        acp delegate agent-two "Run the nightly tests" --report-back
        acp delegate agent-two "Stop the deploy" --urgent --context '{"deploy": 42}'

    Parameters
    ----------
    agent
        The receiving agent_id.
    task
        What to do, as text.
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
        Seconds to wait with --wait/--acked.
    """
    env = delegate_envelope(
        task, context=_parse_object(context, "--context"), urgent=urgent, report_back=report_back
    )
    with Client() as c:
        reply = c.send(agent, env, wait=_wait_mode(wait, acked), timeout=timeout)
    return _report_sent(reply, json)


@app.command
def notify(topic: str, data: str, *, json: Json = False) -> int:
    """Send a notify to every connected peer.

    DATA is parsed as JSON when it is valid JSON, and sent as a string otherwise.

    Examples:

        acp notify build-finished '{"ok": true, "commit": "3f2a91c"}'
        acp notify status "going offline for maintenance"

    Parameters
    ----------
    topic
        The notify topic.
    data
        The notify data (JSON or text).
    """
    with Client() as c:
        reply = c.request("broadcast", envelope=notify_envelope(topic, _parse_data(data)))
    if json:
        _print_json(reply)
    elif reply["to"]:
        print(one_line(f"{reply['msg_id']} -> {', '.join(map(str, reply['to']))}"))
    else:
        print("no peer is connected: nothing sent", file=sys.stderr)
    return EXIT_OK


@app.command
def reply(
    msg_id: str,
    data: str,
    *,
    to: str | None = None,
    summary: str | None = None,
    error: str | None = None,
    json: Json = False,
) -> int:
    """Answer the envelope MSG_ID with a response carrying DATA.

    The daemon remembers who sent recent inbound envelopes; use --to for older ones.

    Examples:

        acp reply 5fc85a12-416f-4cd5-b1f5-e8cd54608d14 "all green"
        acp reply 5fc85a12-... '{"passed": 120, "failed": 0}' --summary "tests pass"

    Parameters
    ----------
    msg_id
        The id of the envelope being answered (from `acp listen`).
    data
        The response data (JSON or text).
    to
        The agent to answer, if the daemon no longer remembers MSG_ID.
    summary
        Optional one-line summary.
    error
        Report an error instead of a result.
    """
    with Client() as c:
        sent = c.reply(msg_id, _parse_data(data), to=to, summary=summary, error=error)
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

    Examples:

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

    Examples:

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
    with Client() as c:
        out = c.inbox(unread=not all_, since=since, limit=limit, kinds=kind, from_=from_, wait=wait)
    out.pop("req", None)
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
    width = INBOX_WIDTH
    if sys.stdout.isatty():
        import shutil

        width = max(width, shutil.get_terminal_size().columns - 1)
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


@app.command
def ack(*ids: str, up_to: int | None = None, json: Json = False) -> int:
    """Mark envelopes read, by message ID or every one up to a seq; prints how many changed.

    Read envelopes no longer show in `acp inbox` or a plain `acp listen` (the daemon keeps them a
    while, for `acp inbox --all` and `--since`). Unknown or already read ids are not an error.

    Examples:

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


@app.command
def peers(*, skill: str | None = None, json: Json = False) -> int:
    """List known peers: state, address, where they came from, RTT, fingerprint and last error.

    States: connected, connecting, discovered, waiting (the lower agent_id dials), backoff (next try
    shown), key_changed (run `acp trust` or `acp forget`), refused, stale, idle (no address known).
    A peer that sent an agent card gets a second, indented line: the skills and description it
    claims (what the peer says, not checked by anyone).

    Examples:

        acp peers
        acp peers --skill code-review
        acp peers --json | jq '.[] | select(.status == "connected") | .id'

    Parameters
    ----------
    skill
        Only peers whose agent card lists this skill (exact name, as in `card.skills`).
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
    table = []
    cards: list[str | None] = []
    for p in rows:
        state = str(p["status"])
        if p.get("next_try_in") is not None:
            state += f" ({p['next_try_in']:.0f}s)"
        addr = f"{p['addr']}:{p['port']}" if p.get("addr") else "-"
        if p.get("addr") and ":" in p["addr"]:
            addr = f"[{p['addr']}]:{p['port']}"
        rtt = f"{p['rtt_ms']:.1f}ms" if p.get("rtt_ms") is not None else "-"
        error = p.get("last_error") or ""
        if p.get("announced_fingerprint"):
            error = (
                f"announced key {p['announced_fingerprint']} differs from the pinned one. {error}"
            )
        cells = [
            str(p["id"]),
            state,
            addr,
            str(p.get("source") or "-"),
            rtt,
            _ago(p.get("last_seen")),
            str(p.get("fingerprint") or "-"),
            str(p.get("queued", 0)),
        ]
        # every cell may hold what a peer said (BYE reasons, ids): escaped, one line each
        table.append([one_line(cell, 80) for cell in cells] + [one_line(str(error), 80)])
        cards.append(_card_line(p))
    print(
        _table(
            table,
            [
                "AGENT",
                "STATE",
                "ADDRESS",
                "SOURCE",
                "RTT",
                "SEEN",
                "FINGERPRINT",
                "QUEUED",
                "LAST ERROR",
            ],
            below=cards,
        )
    )
    return EXIT_OK


@app.command
def status(*, json: Json = False) -> int:
    """Show the daemon's health: agent_id, fingerprint, port, uptime, peers, message counts.

    The inbox line counts unread envelopes and all those stored (read ones are kept a while); the
    outbox line, envelopes waiting for a peer's ACK.

    Examples:

        acp status
        acp status --json | jq .peers_connected
    """
    with Client() as c:
        st = c.status()
    if json:
        st.pop("req", None)
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
    for warning in st.get("warnings", []):
        print(f"warning      {one_line(str(warning), 300)}")  # may quote what a peer announced
    return EXIT_OK


@app.command(name="id")
def identity(*, json: Json = False) -> int:
    """Show this machine's agent_id, public key and fingerprint (to check a peer by voice or chat).

    Asks the running daemon; without one, reads $ACP_HOME/identity.pub and config.toml.

    Examples:

        acp id
        acp trust my-laptop "$(ssh laptop acp id --json | jq -r .pubkey)"
    """
    try:
        with Client() as c:
            info = c.identity()
            info.pop("req", None)
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
        raise AcpError(
            f"no identity yet ({path} missing): run `acp daemon` once to create it"
        ) from None
    return {
        "agent_id": config.agent_id,
        "pubkey": text,
        "fingerprint": fingerprint(decode_key(text, what=str(path))),
    }


@app.command
def trust(agent: str, key: str, *, addr: str | None = None, json: Json = False) -> int:
    """Pin KEY (base64 X25519 public key) for AGENT, replacing any key held or announced before.

    Use it after checking the fingerprint with the other side, to accept a peer whose key changed,
    or to admit a peer under `trust = "explicit"`.

    Examples:

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
    with Client() as c:
        out = c.trust(agent, key, addr=addr)
    if json:
        _print_json(out)
    else:
        print(f"trusted {out['agent_id']} with key {out['fingerprint']}")
    return EXIT_OK


@app.command
def forget(agent: str, *, json: Json = False) -> int:
    """Forget AGENT: close its session, drop its pinned key and anything queued for it.

    Examples:

        acp forget old-laptop
    """
    with Client() as c:
        out = c.forget(agent)
    if json:
        _print_json(out)
    else:
        print(f"forgot {out['agent_id']}")
    return EXIT_OK


@app.command
def card(*, reload: bool = False, json: Json = False) -> int:
    """Show this daemon's agent card: what it tells peers it can do ([agent] in config.toml).

    Peers see it in `acp peers` (and filter with `acp peers --skill NAME`). After editing
    config.toml, `--reload` sends the new card to every connected peer without a restart.

    Examples:

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
        _print_json({k: v for k, v in out.items() if k not in ("ok", "req")})
        return EXIT_OK
    shown = out.get("card")
    if not shown:
        print("no agent card: add [agent] with description and skills to config.toml")
    else:
        if shown.get("description"):
            print(f"description  {shown['description']}")
        print(f"skills       {', '.join(shown.get('skills') or []) or '-'}")
        if shown.get("card"):
            print(f"card         {_dumps_compact(shown['card'])}")
    if reload:
        print(f"sent to {out.get('sent_to', 0)} connected peer(s)")
    return EXIT_OK


def _dumps_compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@app.command
def mcp() -> int:
    """Serve acp to a model as MCP tools over stdin/stdout (for Claude Code and other MCP clients).

    Tools: peers, send, reply, inbox, ack, wait, status; new envelopes are also announced as
    `notifications/claude/channel` hints. It talks to the daemon of $ACP_HOME (start that with
    `acp daemon`) and rides out its restarts. Needs the MCP SDK:
    `pipx inject acp-daemon 'mcp>=2.3'` or `pip install 'acp-daemon[mcp]'`.

    Examples:

        claude mcp add acp -- acp mcp
        ACP_HOME=/tmp/a acp mcp
    """
    from acp.mcp_server import run  # the MCP SDK loads here, and only here

    return run()


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

    Examples:

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
        message = one_line(exc.message) if isinstance(exc, RequestFailed) else clean(exc.message)
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
