"""What the CLI prints of peer-controlled text is escaped (acp.text), and `acp peers --skill`.

The daemon is replaced by a stub Client that answers with what a hostile peer could have put in
the daemon's replies: a BYE reason in `last_error`, an agent card, a response's data, an ACK error
quoted in an error message, a warning.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from acp import cli
from acp.cli import main
from acp.errors import RequestFailed

UNSAFE_RE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x9b2J\u202eevil\r\nagent-x  connected  forged row"


def raw(text: str) -> set[str]:
    """Unsafe characters in ``text`` (a terminal's output: newlines between lines are fine)."""
    return set(UNSAFE_RE.findall(text))


def row(agent_id: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": agent_id,
        "addr": "127.0.0.1",
        "port": 7100,
        "status": "connected",
        "source": "static",
        "fingerprint": "0000-1111-2222-3333-4444-5555-6666-7777",
        "pubkey": "AAAA",
        "last_seen": None,
        "rtt_ms": 0.5,
        "queued": 0,
        "next_try_in": None,
        "last_error": None,
        "announced_fingerprint": None,
    }
    base.update(fields)
    return base


class StubClient:
    """Stands in for acp.client.Client: each method returns (or raises) what the test set."""

    answers: dict[str, Any] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> StubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _answer(self, name: str) -> Any:
        answer = self.answers[name]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def peers(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._answer("peers")
        return rows

    def send(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        reply: dict[str, Any] = self._answer("send")
        return reply

    def reply(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        reply: dict[str, Any] = self._answer("reply")
        return reply

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = self._answer("status")
        return st


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> type[StubClient]:
    monkeypatch.setattr(cli, "Client", StubClient)
    StubClient.answers = {}
    return StubClient


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# -- acp peers ------------------------------------------------------------------------------------


def test_peers_escapes_every_column(
    stub: type[StubClient], capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answers["peers"] = [
        row(
            "evil",
            status="discovered\x1b[31m",
            addr="::1\u202e",
            source="incoming\x9b",
            fingerprint="ffff\x07",
            last_error=f"peer said BYE: {HOSTILE}",
        ),
        row("good"),
    ]
    code, out, err = run(capsys, "peers")
    assert code == 0 and err == ""
    assert not raw(out), repr(out)
    lines = out.splitlines()
    assert len(lines) == 4, lines  # header, two rows, a last_error line: the BYE forged no row
    assert lines[1].split()[:2] == ["evil", "discovered\\x1b[31m"]
    assert lines[2].startswith("  last_error: peer said BYE: \\x1b]0;pwned\\x07")
    assert lines[2].endswith("…") and "forged row" not in out  # cut to fit the width
    assert lines[3].split()[:2] == ["good", "connected"]
    # --wide: every column, and the whole last error, escaped on its one line
    code, out, err = run(capsys, "peers", "--wide")
    assert code == 0 and err == "" and not raw(out), repr(out)
    lines = out.splitlines()
    assert len(lines) == 3, lines
    assert lines[1].split()[:2] == ["evil", "discovered\\x1b[31m"]
    assert "peer said BYE: \\x1b]0;pwned\\x07\\x1b[2J\\x9b2J\\u202eevil" in lines[1]
    assert lines[1].endswith("evil\\x0d\\x0aagent-x  connected  forged row")
    assert "[::1\\u202e]:7100" in lines[1] and "incoming\\x9b" in lines[1]
    assert "ffff\\x07" in lines[1]


def test_peers_shows_a_card_line_escaped_and_within_80_columns(
    stub: type[StubClient], capsys: pytest.CaptureFixture[str]
) -> None:
    card = {
        "description": "Reviews code.\n" + HOSTILE + " " + "x" * 200,
        "skills": ["code-review", "python"],
        "card": {"url": "\x1b]8;;http://evil\x07"},
    }
    stub.answers["peers"] = [
        row("agent-two", card=card),
        row("agent-three", card={"skills": []}),
        row("agent-four"),
    ]
    code, out, _ = run(capsys, "peers")
    assert code == 0 and not raw(out), repr(out)
    lines = out.splitlines()
    assert len(lines) == 5, lines  # header, agent-two and its card line, agent-three, agent-four
    card_line = lines[2]
    assert card_line.startswith("  skills: code-review, python | Reviews code. \\x1b]0;pwned")
    assert len(card_line) <= 79 and card_line.endswith("…")
    assert lines[3].startswith("agent-three") and lines[4].startswith("agent-four")


def test_peers_skill_filters_text_and_json(
    stub: type[StubClient], capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answers["peers"] = [
        row("agent-two", card={"skills": ["code-review", "python"], "description": "d"}),
        row("agent-three", card={"skills": ["python"]}),
        row("agent-four", card={"skills": "code-review"}),  # malformed: not a list
        row("agent-five", card=None),
        row("agent-six"),
    ]
    code, out, _ = run(capsys, "peers", "--skill", "code-review")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:] if not line.startswith(" ")] == [
        "agent-two"
    ]
    code, out, _ = run(capsys, "peers", "--skill", "python", "--json")
    rows = json.loads(out)
    assert [r["id"] for r in rows] == ["agent-two", "agent-three"]
    assert rows[0]["card"] == {"skills": ["code-review", "python"], "description": "d"}
    code, out, err = run(capsys, "peers", "--skill", "cooking")
    assert (code, out) == (0, "") and "no known peer lists the skill 'cooking'" in err
    assert json.loads(run(capsys, "peers", "--skill", "cooking", "--json")[1]) == []


def test_peers_json_is_escaped_and_parses_to_the_same_rows(
    stub: type[StubClient], capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [row("evil", last_error=HOSTILE, card={"description": HOSTILE, "skills": []})]
    stub.answers["peers"] = rows
    out = run(capsys, "peers", "--json")[1]
    assert not raw(out) and out.count("\n") == 1
    assert json.loads(out) == rows


# -- send --wait, reply, errors -------------------------------------------------------------------


def answered(data: Any, error: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"data": data}
    if error is not None:
        payload["error"] = error
    return {"ok": True, "state": "answered", "response": {"payload": payload}}


def test_send_wait_prints_text_data_escaped_keeping_its_lines(
    stub: type[StubClient], capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answers["send"] = answered("all green\n\tdetails\x1b[2J\x9b\u202e")
    code, out, err = run(capsys, "send", "agent-two", "status?", "--wait")
    assert code == 0 and err == ""
    assert out == "all green\n\tdetails\\x1b[2J\\x9b\\u202e\n"


def test_send_wait_prints_json_data_as_json_that_parses_back(
    stub: type[StubClient], capsys: pytest.CaptureFixture[str]
) -> None:
    data = {"answer": 42, "note": HOSTILE, "list": ["\x85", "\u2066"]}
    stub.answers["send"] = answered(data)
    code, out, _ = run(capsys, "send", "agent-two", "status?", "--wait")
    assert code == 0 and not raw(out) and out.count("\n") == 1
    assert json.loads(out) == data
    assert out.startswith('{"answer": 42, ')  # the same spacing as before


def test_response_error_and_reply_output_are_escaped(
    stub: type[StubClient], capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answers["send"] = answered(None, error="failed\x1b[2J\nforged line")
    code, out, err = run(capsys, "send", "agent-two", "status?", "--wait")
    assert code == 1 and not raw(out + err)
    assert err == "error: failed\\x1b[2J\\x0aforged line\n"
    stub.answers["reply"] = answered("ok\x9b")
    code, out, _ = run(capsys, "reply", "some-id", "data")
    assert (code, out) == (0, "ok\\x9b\n")


def test_daemon_errors_quoting_a_peer_are_one_escaped_line(
    stub: type[StubClient], capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answers["send"] = RequestFailed("undelivered", f"agent-two did not take x: {HOSTILE}")
    code, out, err = run(capsys, "send", "agent-two", "hi", "--acked")
    assert code != 0 and out == ""
    assert not raw(err) and err.count("\n") == 1
    assert err.startswith("acp: agent-two did not take x: \\x1b]0;pwned")


# -- status ---------------------------------------------------------------------------------------


def test_status_warnings_are_escaped(
    stub: type[StubClient], capsys: pytest.CaptureFixture[str]
) -> None:
    from fake_daemon import STATUS

    stub.answers["status"] = dict(
        STATUS,
        unread=0,
        stored=0,
        mdns="failed: " + HOSTILE,
        warnings=[f"another daemon at {HOSTILE} advertises our agent_id"],
    )
    code, out, _ = run(capsys, "status")
    assert code == 0 and not raw(out), repr(out)
    lines = out.splitlines()
    warnings = [line for line in lines if line.startswith("warning")]
    assert len(warnings) == 1 and "forged row advertises our agent_id" in warnings[0]
    assert "\\x1b]0;pwned" in warnings[0]
    (mdns,) = [line for line in lines if "mDNS failed: " in line]
    assert "\\x0d\\x0aagent-x  connected  forged row" in mdns  # inline, not a line of its own
    assert not [line for line in lines if line.startswith("agent-x")]
