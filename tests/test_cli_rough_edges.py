"""The CLI's rough edges of issue #12, without a daemon: a stub Client stands in for the socket.

Message ids named on a timeout or Ctrl-C, MESSAGE from stdin or a file, the 64 KiB limit, examples
in every --help, an `acp peers` table within 80 columns whose headers are the JSON keys, no `req`
in --json output, errors in the words of the command line, exit 78 for a missing identity and a
second daemon, the handshake-refused hint, and the duplicate agent_id warning's fix.
"""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from acp import cli
from acp.cli import app, main
from acp.errors import EXIT_CONFIG, AlreadyRunning, IpcError, RequestFailed
from acp.proto import ipc
from acp.proto.envelope import MAX_ENVELOPE

ROOT = Path(__file__).resolve().parent.parent
MSG_ID = "5fc85a12-416f-4cd5-b1f5-e8cd54608d14"

# IPC field names (as the daemon's errors quote them) and cyclopts' option names for positional
# arguments: nothing a CLI user typed, so nothing a CLI user should be told about.
INTERNAL = re.compile(
    r"""['"](to|agent_id|pubkey|msg_id|envelope|payload|up_to|ids|kinds|from|since|limit|count"""
    r"""|timeout|wait|unread|addr|reload)['"]"""
    r"|(?:^|acp: )(pubkey|addr|agent_id|msg_id|to):"  # "pubkey: not valid base64", "addr: ..."
    r"|--(agent|message|task|data|msg-id|topic|key|ids|shell)(?![\w-])"
    r"|Traceback|Exception Group",
    re.MULTILINE,
)


def internal_names(text: str) -> list[str]:
    return [m.group(0) for m in INTERNAL.finditer(text)]


class Stub:
    """Stands in for acp.client.Client: records each call, answers with ``answers[name]``."""

    answers: dict[str, Any] = {}
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> Stub:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def connect(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((name, args, kwargs))
        answer = self.answers.get(name, {"ok": True, "req": 3})
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def send(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("send", *args, **kwargs)

    def reply(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("reply", *args, **kwargs)

    def request(self, cmd: str, **kwargs: Any) -> Any:
        return self._call(cmd, **kwargs)

    def peers(self) -> Any:
        return self._call("peers")

    def status(self) -> Any:
        return self._call("status")

    def identity(self) -> Any:
        return self._call("id")

    def trust(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("trust", *args, **kwargs)

    def forget(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("forget", *args, **kwargs)

    def inbox(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("inbox", *args, **kwargs)

    def ack(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("ack", *args, **kwargs)

    def listen(self, **kwargs: Any) -> Any:
        return iter(self._call("listen", **kwargs))


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> type[Stub]:
    monkeypatch.setattr(cli, "Client", Stub)
    monkeypatch.setenv("ACP_HOME", str(tmp_path))
    Stub.answers = {}
    Stub.calls = []
    return Stub


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # cyclopts turns KeyboardInterrupt into exit 130 itself
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def sent_envelope(s: type[Stub]) -> dict[str, Any]:
    name, args, _ = s.calls[-1]
    assert name == "send"
    env: dict[str, Any] = args[1]
    return env


def peer_row(agent_id: str = "agent-two", **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": agent_id,
        "addr": "192.168.100.200",
        "port": 7100,
        "status": "connected",
        "source": "mdns",
        "fingerprint": "4396-e411-2275-24e1-3641-8ecc-06e5-1db1",
        "pubkey": "AAAA",
        "last_seen": None,
        "rtt_ms": 0.6,
        "queued": 0,
        "next_try_in": None,
        "last_error": None,
        "announced_fingerprint": None,
        "card": None,
        "trust": "tofu",
    }
    row.update(fields)
    return row


# -- 1. the message id on a timeout and on Ctrl-C --------------------------------------------------


@pytest.mark.parametrize("command", ["send", "delegate"])
def test_a_wait_that_times_out_names_the_message_id(
    stub: type[Stub], capsys: pytest.CaptureFixture[str], command: str
) -> None:
    stub.answers["send"] = RequestFailed(
        "timeout", "no response from agent-two within 1 s (it stays queued for the peer)"
    )
    code, out, err = run(capsys, command, "agent-two", "hi", "--wait", "--timeout", "1")
    msg_id = sent_envelope(stub)["id"]
    assert code == 75 and out == ""
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", msg_id)
    assert err == (
        "acp: no response from agent-two within 1 s (it stays queued for the peer); "
        f"message id {msg_id}: a late reply can be matched with `acp inbox` "
        "(its reply_to is that id)\n"
    )


def test_the_daemons_timeout_message_already_names_the_id(
    stub: type[Stub], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def send(self: Stub, to: str, env: dict[str, Any], **kwargs: Any) -> Any:
        raise RequestFailed(
            "timeout", f"no ACK from {to} within 2 s (it stays queued); message id {env['id']}"
        )

    monkeypatch.setattr(Stub, "send", send)
    code, _, err = run(capsys, "send", "agent-two", "hi", "--acked", "--timeout", "2")
    assert code == 75
    (msg_id,) = re.findall(r"message id (\S+?)[:;]", err)
    assert err.count(msg_id) == 1  # named once
    assert "an undelivered event with that id" in err


def test_ctrl_c_while_waiting_names_the_message_id(
    stub: type[Stub], capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answers["send"] = KeyboardInterrupt()
    code, out, err = run(capsys, "send", "agent-two", "hi", "--wait")
    msg_id = sent_envelope(stub)["id"]
    assert code == 130 and out == ""
    assert f"message id {msg_id}" in err and "acp inbox" in err


def test_the_client_side_timeout_names_the_message_id_too(
    stub: type[Stub], capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answers["send"] = RequestFailed("timeout", "the daemon did not answer in time")
    code, _, err = run(capsys, "delegate", "agent-two", "task", "--wait")
    assert code == 75 and f"message id {sent_envelope(stub)['id']}" in err


def test_reply_acked_on_ctrl_c_names_the_envelope_it_answers(
    stub: type[Stub], capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answers["reply"] = KeyboardInterrupt()
    code, _, err = run(capsys, "reply", MSG_ID, "done", "--acked")
    assert code == 130 and f"the response to {MSG_ID}" in err
    assert stub.calls[-1][2]["wait"] == "acked"


def test_every_send_carries_an_id_of_the_clients(
    stub: type[Stub], capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answers["send"] = {"ok": True, "msg_id": "x", "state": "sending"}
    run(capsys, "send", "agent-two", "hi")
    first = sent_envelope(stub)["id"]
    run(capsys, "send", "agent-two", "hi")
    assert sent_envelope(stub)["id"] != first


# -- 2. MESSAGE from stdin or a file ---------------------------------------------------------------


def test_send_dash_reads_the_message_from_stdin(
    stub: type[Stub], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stub.answers["send"] = {"ok": True, "msg_id": "m", "state": "sending"}
    stdin(monkeypatch, "line one\nline two: é\n".encode())
    code, out, err = run(capsys, "send", "agent-two", "-")
    assert (code, out, err) == (0, "m\n", "")
    assert sent_envelope(stub)["payload"]["question"] == "line one\nline two: é"


def test_options_after_the_dash_still_count(
    stub: type[Stub], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stub.answers["send"] = {"ok": True, "msg_id": "m", "state": "acked"}
    stdin(monkeypatch, b"q")
    assert run(capsys, "send", "agent-two", "-", "--acked", "--timeout", "5")[0] == 0
    assert stub.calls[-1][2] == {"wait": "acked", "timeout": 5.0}


def test_a_message_may_start_with_a_hyphen(
    stub: type[Stub], capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answers["send"] = {"ok": True, "msg_id": "m", "state": "sending"}
    assert run(capsys, "send", "agent-two", "-5 degrees outside?")[0] == 0
    assert sent_envelope(stub)["payload"]["question"] == "-5 degrees outside?"


def test_file_reads_message_task_and_data(
    stub: type[Stub], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "text.md"
    path.write_text("# Task\nrun the tests\n")
    stub.answers["send"] = {"ok": True, "msg_id": "m", "state": "sending"}
    assert run(capsys, "send", "agent-two", "--file", str(path))[0] == 0
    assert sent_envelope(stub)["payload"]["question"] == "# Task\nrun the tests"
    assert run(capsys, "delegate", "agent-two", "--file", str(path), "--urgent")[0] == 0
    assert sent_envelope(stub)["payload"]["task"] == "# Task\nrun the tests"

    data = tmp_path / "data.json"
    data.write_text('{"passed": 3}\n')
    stub.answers["broadcast"] = {"ok": True, "msg_id": "m", "to": ["agent-two"]}
    assert run(capsys, "notify", "tests", "--file", str(data))[0] == 0
    assert stub.calls[-1][2]["envelope"]["payload"]["data"] == {"passed": 3}
    stub.answers["reply"] = {"ok": True, "msg_id": "r", "state": "sending"}
    assert run(capsys, "reply", MSG_ID, "--file", str(data))[0] == 0
    assert stub.calls[-1][1] == (MSG_ID, {"passed": 3})


def test_notify_and_reply_read_stdin(
    stub: type[Stub], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stub.answers["broadcast"] = {"ok": True, "msg_id": "m", "to": ["agent-two"]}
    stdin(monkeypatch, b"plain text")
    assert run(capsys, "notify", "status", "-")[0] == 0
    assert stub.calls[-1][2]["envelope"]["payload"]["data"] == "plain text"
    stub.answers["reply"] = {"ok": True, "msg_id": "r", "state": "sending"}
    stdin(monkeypatch, b"[1, 2]\n")
    assert run(capsys, "reply", MSG_ID, "-")[0] == 0
    assert stub.calls[-1][1] == (MSG_ID, [1, 2])


def test_reply_error_needs_no_data(stub: type[Stub], capsys: pytest.CaptureFixture[str]) -> None:
    stub.answers["reply"] = {"ok": True, "msg_id": "r", "state": "sending"}
    assert run(capsys, "reply", MSG_ID, "--error", "cannot do that")[0] == 0
    assert stub.calls[-1][1] == (MSG_ID, None) and stub.calls[-1][2]["error"] == "cannot do that"


@pytest.mark.parametrize(
    "argv, said",
    [
        (["send", "agent-two"], "give MESSAGE, or - to read it from stdin, or --file PATH"),
        (["send", "agent-two", "hi", "--file", "x"], "give MESSAGE or --file PATH, not both"),
        (["send", "agent-two", "--file", "/nonexistent/q"], "cannot read --file /nonexistent/q"),
        (["delegate", "agent-two"], "give TASK"),
        (["notify", "topic"], "give DATA"),
        (["reply", MSG_ID], "give DATA"),
    ],
)
def test_missing_or_doubled_text_is_a_usage_error(
    stub: type[Stub], capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and said in err, err
    assert stub.calls == []


def test_text_that_is_not_utf8_or_over_1_mib_is_refused(
    stub: type[Stub], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin(monkeypatch, b"caf\xe9")
    code, _, err = run(capsys, "send", "agent-two", "-")
    assert code == 2 and "MESSAGE from stdin is not UTF-8 text" in err
    stdin(monkeypatch, b"x" * ((1 << 20) + 5))
    code, _, err = run(capsys, "send", "agent-two", "-")
    assert code == 2 and "over 1048576 bytes" in err and str(MAX_ENVELOPE) in err
    assert stub.calls == []


# -- 3. the 64 KiB limit ---------------------------------------------------------------------------


def test_the_limit_is_stated_in_send_help_and_the_readme(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.ENVELOPE_LIMIT == MAX_ENVELOPE == 65518
    monkeypatch.setenv("COLUMNS", "200")
    _, out, _ = run(capsys, "send", "--help")
    assert "65518 bytes" in out and "64 KiB" in out
    readme = (ROOT / "README.md").read_text()
    commands = readme[readme.index("## Commands") : readme.index("## From a program")]
    assert "65518" in commands and "64 KiB" in commands


@pytest.mark.parametrize(
    "message",
    [
        "envelope is 70021 bytes as compact JSON; the limit is 65518 bytes",
        "the send request is 1100000 bytes; the daemon reads lines of at most 1048576 bytes (1 MiB)",
    ],
)
def test_too_large_says_the_limit_and_the_size(
    stub: type[Stub], capsys: pytest.CaptureFixture[str], message: str
) -> None:
    stub.answers["send"] = RequestFailed("too_large", message)
    code, _, err = run(capsys, "send", "agent-two", "big")
    assert code == 2
    size = re.search(r"is (\d+) bytes", message)
    assert size is not None and size.group(1) in err
    assert "65518" in err


# -- 4. examples in every --help -------------------------------------------------------------------

COMMANDS = [name for name in app if not name.startswith("-")]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_shows_examples(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"Usage: acp {command}")
    examples = [ln for ln in lines[1:] if f"acp {command}" in ln and "│" not in ln]
    assert examples, f"`acp {command} --help` shows no example:\n{out}"
    assert "Examples" in out


def test_no_docstring_uses_a_heading_that_cyclopts_drops() -> None:
    """docstring_parser reads "Examples:" as a Google section, and cyclopts shows no section."""
    for command in COMMANDS:
        doc = app[command].default_command.__doc__ or ""
        assert not re.search(r"(?m)^\s*Examples?:\s*$", doc), command


def test_parameters_keep_their_help(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    out = run(capsys, "peers", "--help")[1]
    assert "Only peers whose agent card lists this skill" in out
    out = run(capsys, "forget", "--help")[1]
    assert "The peer's agent_id" in out


# -- 5 and 9. the peers table ----------------------------------------------------------------------

LONG_ERROR = (
    "dial 192.168.100.200:7100: the peer closed the handshake: it may hold another key for us "
    "(did our identity change?) or not trust us (trust = explicit); on the peer run "
    "`acp trust agent-one q6E1q6E1q6E1q6E1q6E1q6E1q6E1q6E1q6E1q6E1q6E=` THE END"
)


def rows() -> list[dict[str, Any]]:
    return [
        peer_row("agent-two"),
        peer_row("build-server-7", status="backoff", next_try_in=12.3, last_error=LONG_ERROR),
        peer_row("laptop", addr="fe80::1c2b:3dff:fe4e:5f60", status="connected", queued=1000),
        peer_row("stale-one", addr=None, port=None, status="idle", rtt_ms=None, last_seen=1.0),
    ]


def test_the_default_table_fits_80_columns_and_cuts_the_last_error(
    stub: type[Stub], capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answers["peers"] = rows()
    code, out, _ = run(capsys, "peers")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 6, lines
    assert all(len(line) <= 79 for line in lines), [len(line) for line in lines]
    assert lines[0].split() == ["ID", "STATUS", "ADDR", "RTT_MS", "QUEUED"]
    assert lines[2].startswith("build-server-7  backoff (12s)  192.168.100.200:7100")
    assert lines[3].startswith("  last_error: dial 192.168.100.200:7100: the peer closed")
    assert lines[3].endswith("…") and "THE END" not in out
    assert lines[4].startswith("laptop ") and "[fe80::1c2b:3dff:fe4e:5f60]:7100" in lines[4]


def test_long_ids_and_addresses_are_cut_only_to_fit(
    stub: type[Stub], capsys: pytest.CaptureFixture[str]
) -> None:
    long_id = "a-rather-long-agent-id-for-a-build-machine"
    stub.answers["peers"] = [peer_row(long_id, addr="2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff")]
    lines = run(capsys, "peers")[1].splitlines()
    assert all(len(line) <= 79 for line in lines), lines
    assert lines[1].startswith(long_id[:19] + "…")
    assert long_id in run(capsys, "peers", "--wide")[1]


def test_wide_shows_every_column_and_the_whole_error(
    stub: type[Stub], capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answers["peers"] = rows()
    _, out, _ = run(capsys, "peers", "--wide")
    lines = out.splitlines()
    assert lines[0].split() == [
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
    ]
    assert lines[2].endswith(LONG_ERROR)  # not cut at 80 characters
    assert "4396-e411-2275-24e1-3641-8ecc-06e5-1db1" in lines[1]


def test_headers_are_the_json_keys(stub: type[Stub], capsys: pytest.CaptureFixture[str]) -> None:
    stub.answers["peers"] = rows()
    keys = set(json.loads(run(capsys, "peers", "--json")[1])[0])
    for wide in (False, True):
        header = run(capsys, "peers", *(["--wide"] if wide else []))[1].splitlines()[0].split()
        assert {h.lower() for h in header} <= keys, header


def test_json_keeps_the_whole_last_error(
    stub: type[Stub], capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answers["peers"] = rows()
    out = json.loads(run(capsys, "peers", "--json")[1])
    assert out[1]["last_error"] == LONG_ERROR


@pytest.mark.parametrize(
    "argv, name, answer",
    [
        (["status", "--json"], "status", {"ok": True, "agent_id": "a", "req": 4}),
        (["id", "--json"], "id", {"ok": True, "agent_id": "a", "req": 4}),
        (["send", "agent-two", "hi", "--json"], "send", {"ok": True, "msg_id": "m", "req": 4}),
        (["reply", MSG_ID, "x", "--json"], "reply", {"ok": True, "msg_id": "m", "req": 4}),
        (["notify", "t", "x", "--json"], "broadcast", {"ok": True, "to": [], "req": 4}),
        (["inbox", "--json"], "inbox", {"ok": True, "messages": [], "next": 0, "req": 4}),
        (["trust", "agent-two", "AAAA", "--json"], "trust", {"ok": True, "req": 4}),
        (["forget", "agent-two", "--json"], "forget", {"ok": True, "req": 4}),
        (["card", "--json"], "card", {"ok": True, "card": None, "req": 4}),
    ],
)
def test_no_req_in_json_output(
    stub: type[Stub],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    name: str,
    answer: dict[str, Any],
) -> None:
    stub.answers[name] = answer
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "req" not in json.loads(out)


# -- 6. errors in the words of the command line ----------------------------------------------------

BAD_INPUTS = [
    ["send"],
    ["send", "not a valid id!", "hi"],
    ["send", "agent-two", "hi", "--timeout", "0"],
    ["send", "agent-two", "hi", "--timeout", "5000"],
    ["send", "agent-two", "hi", "--timeout", "soon"],
    ["send", "agent-two", "hi", "--budget", "huge"],
    ["send", "agent-two", "hi", "extra"],
    ["delegate"],
    ["delegate", "bad id", "task"],
    ["delegate", "agent-two", "task", "--context", "[1]"],
    ["delegate", "agent-two", "task", "--timeout", "-1"],
    ["notify"],
    ["reply"],
    ["reply", "", "x"],
    ["reply", MSG_ID, "x", "--to", "bad id"],
    ["reply", MSG_ID, "x", "--acked", "--timeout", "0"],
    ["listen", "--count", "0"],
    ["listen", "--since", "-1"],
    ["inbox", "--limit", "0"],
    ["inbox", "--limit", "5000"],
    ["inbox", "--since", "-3"],
    ["inbox", "--wait", "-1"],
    ["ack"],
    ["ack", "x", "--up-to", "3"],
    ["ack", "--up-to", "-1"],
    ["peers", "--skill"],
    ["status", "--no-such-flag"],
    ["id", "extra"],
    ["trust"],
    ["trust", "agent-two"],
    ["trust", "bad id", "AAAA"],
    ["forget"],
    ["forget", "bad id"],
    ["card", "--reload", "x"],
    ["daemon", "--agent-id", "bad id"],
    ["daemon", "--port", "70000"],
    ["frobnicate"],
]


@pytest.mark.parametrize("argv", BAD_INPUTS, ids=lambda a: " ".join(a) or "nothing")
def test_bad_input_is_refused_in_the_users_words(
    stub: type[Stub], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code in (2, 78), (code, err)
    assert err.strip() and out == "", (out, err)
    assert not internal_names(err), err
    assert stub.calls == []  # caught before anything reached the daemon


def daemon_message(line: dict[str, Any]) -> str:
    """What the daemon's request parser says about ``line`` (docs/protocol.md §8)."""
    with pytest.raises(IpcError) as info:
        ipc.parse_request(json.dumps(line).encode())
    return info.value.message


@pytest.mark.parametrize(
    "command, line",
    [
        ("send", {"cmd": "send", "to": "bad id", "envelope": {}}),
        ("send", {"cmd": "send", "to": "b", "envelope": {}, "timeout": 0}),
        ("reply", {"cmd": "reply", "msg_id": "", "payload": {}}),
        ("reply", {"cmd": "reply", "msg_id": "m", "payload": {}, "timeout": -1}),
        ("listen", {"cmd": "subscribe", "since": -1}),
        ("listen", {"cmd": "subscribe", "count": 0}),
        ("inbox", {"cmd": "inbox", "limit": 0}),
        ("inbox", {"cmd": "inbox", "since": -1}),
        ("inbox", {"cmd": "inbox", "wait": -1}),
        ("inbox", {"cmd": "inbox", "kinds": "query"}),
        ("inbox", {"cmd": "inbox", "from": "b"}),
        ("ack", {"cmd": "ack", "up_to": -1}),
        ("ack", {"cmd": "ack", "ids": "x"}),
        ("trust", {"cmd": "trust", "agent_id": "bad id", "pubkey": "k"}),
        ("trust", {"cmd": "trust", "agent_id": "b", "pubkey": 5}),
        ("forget", {"cmd": "forget", "agent_id": "bad id"}),
    ],
)
def test_the_daemons_field_names_become_the_users(
    stub: type[Stub], capsys: pytest.CaptureFixture[str], command: str, line: dict[str, Any]
) -> None:
    """Whatever gets past the CLI's own checks, the daemon's words are restated."""
    message = daemon_message(line)
    assert internal_names(message), message  # the daemon does say them
    stub.answers[command] = RequestFailed("bad_request", message)
    said = cli._in_user_terms(message, command)
    assert not internal_names(said), said


@pytest.mark.parametrize(
    "command, message, typed",
    [
        (
            "reply",
            f'no recent inbound envelope {MSG_ID!r}; pass "to" to reply to it anyway',
            "--to",
        ),
        ("trust", "pubkey: not valid base64 (Incorrect padding)", "KEY: not valid base64"),
        ("trust", "addr: 'x' is not host:port (IPv6 as [addr]:port)", "--addr: 'x'"),
    ],
)
def test_daemon_errors_reach_the_user_restated(
    stub: type[Stub],
    capsys: pytest.CaptureFixture[str],
    command: str,
    message: str,
    typed: str,
) -> None:
    stub.answers[command] = RequestFailed("bad_request", message)
    argv = {"reply": ["reply", MSG_ID, "x"], "trust": ["trust", "agent-two", "AAAA"]}[command]
    code, _, err = run(capsys, *argv)
    assert code == 2 and typed in err and not internal_names(err), err


# -- 7. exit 78 ------------------------------------------------------------------------------------


def test_id_without_an_identity_exits_78(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ACP_HOME", str(tmp_path))  # no daemon, no identity.pub
    code, out, err = run(capsys, "id")
    assert code == EXIT_CONFIG == 78 and out == ""
    assert "no identity yet" in err and "acp daemon" in err


def test_a_second_daemon_is_a_configuration_problem() -> None:
    assert AlreadyRunning("another acp daemon").exit_code == 78


# -- 8. a refused handshake says what may be wrong --------------------------------------------------


def test_the_refused_handshake_hint_names_our_id_and_key() -> None:
    from acp.net.handshake import refused_hint

    node = SimpleNamespace(agent_id="agent-one", identity=SimpleNamespace(public_b64="q6E1=="))
    hint = refused_hint(node)  # type: ignore[arg-type]
    assert hint.startswith(
        "the peer closed the handshake: it may hold another key for us (did our identity "
        "change?) or not trust us (trust = explicit); on the peer run `acp trust agent-one q6E1==`"
    )
    assert len(f"dial 192.168.100.200:7100: {hint}") < 400  # within what last_error keeps


# -- 10. the duplicate agent_id warning says how to fix it -----------------------------------------


def test_another_daemon_with_our_agent_id_is_told_how_to_fix(tmp_path: Path) -> None:
    from zeroconf import ServiceInfo

    from acp.net.discovery import SERVICE_TYPE, Discovery

    other_key = base64.b64encode(bytes(range(32))).decode()
    warnings: list[str] = []
    node = SimpleNamespace(
        agent_id="laptop",
        identity=SimpleNamespace(public_key=bytes(32)),
        warnings=warnings,
        warn=lambda message, key=None: warnings.append(message),
        stats=SimpleNamespace(inc=lambda name: None),
    )
    info = ServiceInfo(
        SERVICE_TYPE,
        f"laptop-2.{SERVICE_TYPE}",
        port=7100,
        properties={"v": "1", "agent_id": "laptop", "pubkey": other_key},
        addresses=[socket.inet_aton("192.168.1.20")],
    )
    Discovery(node)._seen(info, fresh=True)  # type: ignore[arg-type]
    (warning,) = node.warnings
    assert "advertises our agent_id 'laptop'" in warning and "192.168.1.20" in warning
    assert '`agent_id = "NAME"` in config.toml' in warning
    assert "`acp daemon --agent-id NAME`" in warning
