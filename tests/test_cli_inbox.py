"""`acp inbox`, `acp ack`, `acp listen` and `acp status` against a scripted socket (fake_daemon.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_daemon import FakeDaemon

from acp import cli
from acp.cli import main

ID = "5fc85a12-416f-4cd5-b1f5-e8cd54608d14"


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="acp-"))  # short: AF_UNIX paths stop at 108 bytes
    monkeypatch.setenv("ACP_HOME", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake(home: Path) -> Iterator[FakeDaemon]:
    daemon = FakeDaemon(home / "acp.sock")
    daemon.start()
    yield daemon
    daemon.stop()


def query(n: int, question: str = "What is the build status?") -> dict[str, Any]:
    return {
        "id": f"{n:08d}-416f-4cd5-b1f5-e8cd54608d14",
        "kind": "query",
        "from": "agent-two",
        "payload": {"question": question, "context_budget": "standard"},
    }


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# -- inbox ----------------------------------------------------------------------------------------


def test_inbox_lines_stay_within_80_columns(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(1, 12):
        fake.add(query(n, "What is the build status? " * n))
    lines = run(capsys, "inbox")[1].splitlines()
    assert len(lines) == 11 and all(len(line) == 79 for line in lines), lines
    assert lines[0].endswith("  What is the build …")
    assert [line.split()[0] for line in lines[8:]] == ["9", "10", "11"]  # right-aligned seqs
    assert lines[8].startswith(" 9  agent-two  query  ")


def test_inbox_lists_one_line_per_item(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "INBOX_WIDTH", 120)
    fake.add(query(1, "Build status?"))
    fake.add(
        {
            "id": ID,
            "kind": "delegate",
            "from": "agent-three",
            "payload": {"task": "Run the nightly tests " * 10, "priority": "urgent"},
        }
    )
    fake.add(
        {
            "id": "n-1",
            "kind": "notify",
            "from": "agent-two",
            "payload": {"topic": "build", "data": {"ok": True}},
        }
    )
    fake.add(
        {
            "id": "r-1",
            "kind": "response",
            "from": "agent-two",
            "reply_to": ID,
            "payload": {"data": "all green", "summary": "tests pass"},
        }
    )
    fake.add_event("m-1", "agent-four", "expired")
    code, out, err = run(capsys, "inbox")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 5
    seq, sender, kind, msg_id, *summary = lines[0].split()
    assert (seq, sender, kind, msg_id) == ("1", "agent-two", "query", query(1)["id"])
    assert " ".join(summary) == "Build status?"
    assert lines[1].split()[:4] == ["2", "agent-three", "delegate", ID]
    assert "  [urgent] Run the nightly tests Run" in lines[1] and lines[1].endswith("…")
    assert max(len(line) for line in lines) == 120
    assert lines[2].split(None, 4)[4] == 'build: {"ok":true}'
    assert lines[3].split(None, 4)[4] == "re 5fc85a12: tests pass"
    assert lines[4].split() == ["5", "-", "undelivered", "m-1", "to", "agent-four:", "expired"]


def test_inbox_marks_read_items_and_says_when_empty(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "inbox")
    assert (code, out) == (0, "") and err.strip() == "no unread envelopes"
    fake.add(query(1, "Build?"))
    fake.add(query(2, "Build?"))
    assert run(capsys, "ack", query(1)["id"])[1].strip() == "marked 1 read"
    lines = run(capsys, "inbox", "--all")[1].splitlines()
    assert lines[0].endswith("  (read) Build?")
    assert "(read)" not in lines[1]
    assert run(capsys, "inbox")[1].splitlines() == lines[1:]


def test_inbox_json_shows_seqs_and_next(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in (1, 2, 3):
        fake.add(query(n))
    code, out, _ = run(capsys, "inbox", "--json", "--since", "1", "--limit", "1", "--kind", "query")
    reply = json.loads(out)
    assert code == 0 and "req" not in reply
    assert [m["seq"] for m in reply["messages"]] == [2] and reply["next"] == 2
    assert reply["messages"][0]["envelope"] == query(2)
    sent = fake.requests[-1]
    assert (sent["since"], sent["limit"], sent["kinds"]) == (1, 1, ["query"])


def test_inbox_passes_filters_and_hints_at_the_next_page(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in (1, 2, 3):
        fake.add(query(n))
    argv = ["inbox", "--all", "--from", "agent-two", "--from", "agent-nine"]
    code, out, err = run(capsys, *argv, "--kind", "query", "--kind", "notify", "--limit", "2")
    assert code == 0 and len(out.splitlines()) == 2
    assert "acp inbox --since 2" in err
    sent = fake.requests[-1]
    assert sent["unread"] is False and sent["from"] == ["agent-two", "agent-nine"]
    assert sent["kinds"] == ["query", "notify"]


def test_inbox_shows_no_terminal_control_characters_from_a_peer(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "INBOX_WIDTH", 120)
    fake.add(query(1, "one\ntwo\x1b[2J\x07 end"))
    out = run(capsys, "inbox")[1]
    assert "\x1b" not in out and "\x07" not in out and out.count("\n") == 1
    assert out.endswith("  one two\\x1b[2J\\x07 end\n")  # escaped (acp.text), not acted on


# -- ack ------------------------------------------------------------------------------------------


def test_ack_by_ids_or_up_to(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    for n in (1, 2, 3):
        fake.add(query(n))
    code, out, _ = run(capsys, "ack", query(1)["id"], "unknown-id")
    assert (code, out.strip()) == (0, "marked 1 read")
    code, out, _ = run(capsys, "ack", "--up-to", "3", "--json")
    assert (code, json.loads(out)) == (0, {"acked": 2})
    code, out, _ = run(capsys, "ack", "--up-to", "3")
    assert (code, out.strip()) == (0, "nothing to mark: already read, or unknown")


@pytest.mark.parametrize("argv", [["ack"], ["ack", "x", "--up-to", "3"]], ids=["none", "both"])
def test_ack_needs_ids_or_up_to(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and "--up-to" in err


# -- listen ---------------------------------------------------------------------------------------


def test_listen_prints_bare_envelopes_and_marks_them_read(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in (1, 2, 3):
        fake.add(query(n))
    code, out, _ = run(capsys, "listen", "--count", "2")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [query(1), query(2)]
    assert fake.unread_ids() == [query(3)["id"]]


def test_listen_peek_and_since(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    for n in (1, 2, 3):
        fake.add(query(n))
    out = run(capsys, "listen", "--count", "1", "--peek", "--since", "2")[1]
    assert json.loads(out) == query(3)
    assert len(fake.unread_ids()) == 3
    assert fake.requests[-1] == {"cmd": "subscribe", "req": 1, "since": 2, "count": 1}


def test_listen_without_a_daemon_exits_69_unless_it_may_wait(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "listen", "--count", "1")
    assert code == 69 and out == "" and "acp daemon is not running" in err
    fake = FakeDaemon(home / "acp.sock")
    fake.add(query(1))

    def start() -> None:
        fake.start()

    timer = threading.Timer(0.3, start)
    timer.start()
    try:
        code, out, _ = run(capsys, "listen", "--count", "1", "--reconnect")
        assert code == 0 and json.loads(out) == query(1)
    finally:
        timer.join()
        fake.stop()


# -- status ---------------------------------------------------------------------------------------


def test_status_shows_unread_stored_and_queued(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in (1, 2):
        fake.add(query(n))
    run(capsys, "ack", query(1)["id"])
    out = run(capsys, "status")[1]
    assert "inbox        1 unread, 2 stored" in out
    assert "outbox       5 queued" in out


@pytest.mark.parametrize(
    "argv",
    [["inbox"], ["inbox", "--json"], ["ack", "x"], ["ack", "--up-to", "3"], ["listen", "--peek"]],
)
def test_without_a_daemon_exit_69_and_no_heavy_imports(home: Path, argv: list[str]) -> None:
    from test_cli_imports import HEAVY, PROBE

    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        env={"ACP_HOME": str(home), "PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    assert "acp daemon is not running" in out.stderr and "Traceback" not in out.stderr
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & set(HEAVY), f"{argv} imported {sorted(loaded & set(HEAVY))}"


def test_listen_count_below_1_is_a_usage_error(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "listen", "--count", "0")
    assert (code, out) == (2, "") and "--count" in err
