"""The CLI's rough edges of issue #12 against real daemons: message ids on a timeout and on Ctrl-C,
text from stdin and files, the size limit, errors in the user's words, exit 78, the peers table,
and what the side whose key changed is told."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
from typing import Any

import pytest
from integration_harness import REPO, Daemon, Fleet, IpcLine, new_identity, no_traceback, wait_for

from acp.proto.envelope import MAX_ENVELOPE

MSG_ID_IN = re.compile(r"message id ([0-9a-f-]{36})")

# What the daemon calls the fields of a request, and cyclopts' names for positional arguments:
# nothing a CLI user typed (tests/test_cli_rough_edges.py has the same list).
INTERNAL = re.compile(
    r"""['"](to|agent_id|pubkey|msg_id|envelope|payload|up_to|ids|kinds|from|since|limit|count"""
    r"""|timeout|wait|unread|addr|reload)['"]"""
    r"|(?:^|acp: )(pubkey|addr|agent_id|msg_id|to):"
    r"|--(agent|message|task|data|msg-id|topic|key|ids|shell)(?![\w-])",
    re.MULTILINE,
)


def run_with_input(d: Daemon, *args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        d.cli_args(*args), env=d.env, cwd=REPO, input=data, capture_output=True, timeout=30
    )


def inbound(d: Daemon) -> list[dict[str, Any]]:
    return [item["envelope"] for item in d.inbox_all(unread=False) if "envelope" in item]


# -- 1. the message id on a timeout and on Ctrl-C --------------------------------------------------


def test_a_timed_out_wait_names_the_id_a_late_reply_carries(fleet: Fleet) -> None:
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    out = a.run_cli("send", "agent-b", "anyone?", "--wait", "--timeout", "1", timeout=20)
    assert out.returncode == 75, out
    (msg_id,) = set(MSG_ID_IN.findall(out.stderr))
    assert "a late reply can be matched with `acp inbox`" in out.stderr, out.stderr
    assert no_traceback(out.stderr)
    wait_for(lambda: inbound(b), timeout=5, what="the query at B")
    (query,) = inbound(b)
    assert query["id"] == msg_id  # the id printed is the envelope's

    b.run_cli("reply", msg_id, "late, but here", check=0)
    late = wait_for(
        lambda: [e for e in inbound(a) if e.get("reply_to") == msg_id],
        timeout=10,
        what="the late response in A's inbox",
    )
    assert late[0]["payload"]["data"] == "late, but here"
    text = a.run_cli("inbox", check=0).stdout
    assert f"re {msg_id[:8]}: late" in text  # the inbox line names what it answers


def test_the_daemons_timeout_error_carries_the_msg_id(fleet: Fleet) -> None:
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    line = IpcLine(a.socket_path)
    try:
        envelope = {"kind": "query", "payload": {"question": "q", "context_budget": "minimal"}}
        request = {"cmd": "send", "to": "agent-b", "envelope": envelope, "wait": "response"}
        line.send({**request, "timeout": 0.5, "req": 1})
        reply = line.reply(1, timeout=15)
    finally:
        line.close()
    assert reply["ok"] is False and reply["error"]["code"] == "timeout", reply
    msg_id = reply["msg_id"]
    assert f"message id {msg_id}" in reply["error"]["message"]
    wait_for(lambda: inbound(b), timeout=5, what="the query at B")
    assert inbound(b)[0]["id"] == msg_id


@pytest.mark.parametrize("command", ["send", "delegate"])
def test_ctrl_c_while_waiting_names_the_message_id(fleet: Fleet, command: str) -> None:
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    proc = a.popen_cli(command, "agent-b", "still there?", "--wait", "--timeout", "60")
    wait_for(lambda: inbound(b), timeout=10, what="the envelope at B")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    (msg_id,) = set(MSG_ID_IN.findall(err))
    assert inbound(b)[0]["id"] == msg_id
    assert no_traceback(err), err


# -- 2. text from stdin or a file ------------------------------------------------------------------


def test_send_dash_and_file_reach_the_peer(fleet: Fleet, tmp_path: Any) -> None:
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    out = run_with_input(a, "send", "agent-b", "-", data="from stdin: ü\nsecond line\n".encode())
    assert out.returncode == 0, out
    task = tmp_path / "task.md"
    task.write_text("# run the nightly tests\n")
    a.run_cli("delegate", "agent-b", "--file", str(task), check=0)
    out = run_with_input(a, "notify", "report", "-", data=b'{"passed": 3}')
    assert out.returncode == 0, out
    got = wait_for(lambda: len(inbound(b)) == 3 and inbound(b), timeout=10, what="3 at B")
    assert got[0]["payload"]["question"] == "from stdin: ü\nsecond line"
    assert got[1]["payload"]["task"] == "# run the nightly tests"
    assert got[2]["payload"]["data"] == {"passed": 3}

    answer = tmp_path / "answer.txt"
    answer.write_text("all green\n")
    out = b.run_cli("reply", got[0]["id"], "--file", str(answer), "--acked", check=0)
    responses = wait_for(
        lambda: [e for e in inbound(a) if e.get("reply_to") == got[0]["id"]],
        timeout=10,
        what="the response at A",
    )
    assert responses[0]["payload"]["data"] == "all green"


# -- 3. the size limit -----------------------------------------------------------------------------


def test_too_large_says_the_limit_and_the_size(fleet: Fleet, tmp_path: Any) -> None:
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    big = tmp_path / "big.txt"
    big.write_text("x" * 70_000)
    out = a.run_cli("send", "agent-b", "--file", str(big))
    assert out.returncode == 2, out
    size = re.search(r"envelope is (\d+) bytes", out.stderr)
    assert size is not None and int(size.group(1)) > 70_000, out.stderr
    assert str(MAX_ENVELOPE) in out.stderr
    huge = run_with_input(a, "send", "agent-b", "-", data=b"y" * (2 << 20))
    assert huge.returncode == 2 and str(MAX_ENVELOPE).encode() in huge.stderr, huge
    assert not inbound(b)


# -- 6. errors in the user's words, from the daemon too --------------------------------------------

BAD = [
    ["send", "agent-z", "hi"],  # unknown peer
    ["send", "agent-a", "hi"],  # ourselves
    ["send", "not a valid id!", "hi"],
    ["send", "agent-b", "hi", "--timeout", "0", "--wait"],
    ["send"],
    ["delegate", "agent-b", "task", "--context", "{not json"],
    ["delegate", "agent-b"],
    ["notify"],
    ["reply", "no-such-message", "x"],
    ["reply", "no-such-message"],
    ["reply", "no-such-message", "x", "--to", "bad id"],
    ["listen", "--since", "-1"],
    ["inbox", "--limit", "0"],
    ["inbox", "--wait", "-2"],
    ["ack"],
    ["ack", "--up-to", "-1"],
    ["peers", "--wide", "x"],
    ["trust", "agent-c", "not-base64"],
    ["trust", "agent-c", base64.b64encode(b"short").decode()],
    ["trust", "agent-c", new_identity()[1], "--addr", "nowhere"],
    ["trust", "agent-a", new_identity()[1]],
    ["trust", "bad id", "k"],
    ["forget", "agent-z"],
    ["forget"],
    ["card", "--reload", "x"],
    ["id", "x"],
    ["status", "x"],
    ["daemon", "--agent-id", "bad id"],
    ["daemon", "--port", "70000"],
]


def test_bad_input_of_every_command_is_told_in_the_users_words(fleet: Fleet) -> None:
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    for args in BAD:
        out = a.run_cli(*args, timeout=20)
        said = out.stderr
        assert out.returncode != 0, (args, out)
        assert said.strip() and out.stdout == "", (args, out)
        assert not INTERNAL.findall(said), (args, said)
        assert no_traceback(said), (args, said)
    out = a.run_cli("reply", "no-such-message", "x")
    assert "--to AGENT" in out.stderr, out.stderr
    out = a.run_cli("trust", "agent-c", "not-base64")
    assert out.stderr.startswith("acp: KEY: not valid base64"), out.stderr


# -- 7. exit 78 ------------------------------------------------------------------------------------


def test_second_daemon_and_missing_identity_exit_78(fleet: Fleet) -> None:
    a = fleet.daemon("agent-a")
    a.start()
    a.write_config()
    second = subprocess.run(
        a.command(), env=a.env, capture_output=True, text=True, timeout=20, cwd=REPO
    )
    assert second.returncode == 78, second
    assert "already running" in second.stderr and no_traceback(second.stderr)
    assert a.running

    empty = fleet.daemon("agent-e")  # an ACP_HOME with no identity.pub and no daemon
    (empty.home / "identity.key").unlink()
    out = empty.run_cli("id")
    assert out.returncode == 78, out
    assert "no identity yet" in out.stderr and no_traceback(out.stderr)


# -- 5 and 9. the peers table ----------------------------------------------------------------------


def test_peers_table_fits_80_columns_and_wide_and_json_keep_the_whole_error(fleet: Fleet) -> None:
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    gone = fleet.daemon("agent-c")  # known, never started: a dial error to show
    a.knows(gone)
    fleet.mesh(a, b)
    wait_for(lambda: (a.peer("agent-c") or {}).get("last_error"), timeout=15, what="an error for C")
    table = a.run_cli("peers", check=0).stdout.splitlines()
    assert all(len(line) <= 79 for line in table), table
    assert table[0].split() == ["ID", "STATUS", "ADDR", "RTT_MS", "QUEUED"]
    assert any(line.startswith("  last_error: dial 127.0.0.1:") for line in table), table
    rows = json.loads(a.run_cli("peers", "--json", check=0).stdout)
    assert {h.lower() for h in table[0].split()} <= set(rows[0])
    assert not any("req" in row for row in rows)
    error = next(r for r in rows if r["id"] == "agent-c")["last_error"]
    wide = a.run_cli("peers", "--wide", check=0).stdout
    assert error in wide and "FINGERPRINT" in wide and b.pubkey not in wide
    for args in (["status", "--json"], ["id", "--json"], ["inbox", "--json"], ["card", "--json"]):
        assert "req" not in json.loads(a.run_cli(*args, check=0).stdout), args


# -- 8. the side whose key changed is told why the peer hangs up ------------------------------------


def test_after_a_key_change_the_changed_side_is_told_what_may_be_wrong(fleet: Fleet) -> None:
    # "agent-a" < "agent-b": A dials B at once
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    assert a.stop() == 0
    private, pubkey = new_identity()  # A's identity changes; B keeps the old key pinned
    (a.home / "identity.key").write_text(base64.b64encode(private).decode() + "\n")
    os.chmod(a.home / "identity.key", 0o600)
    (a.home / "identity.pub").unlink(missing_ok=True)
    a.start()
    row = wait_for(
        lambda: (
            (r := a.peer("agent-b")) is not None
            and "the peer closed the handshake" in (r["last_error"] or "")
            and r
        ),
        timeout=20,
        what="A to explain B's refusal",
    )
    error = row["last_error"]
    assert "it may hold another key for us (did our identity change?)" in error, error
    assert "or not trust us (trust = explicit)" in error
    assert f"`acp trust agent-a {pubkey}`" in error
    assert b.counters().get("handshakes_refused.key_mismatch", 0) >= 1

    # and the fix it names works
    b.run_cli("trust", "agent-a", pubkey, check=0)
    wait_for(lambda: a.is_connected("agent-b"), timeout=20, what="A and B again")
