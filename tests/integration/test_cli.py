"""The `acp` command line against real daemons (and without one): exit codes, messages, JSON."""

from __future__ import annotations

import json
import re
import signal
import subprocess

import pytest
from integration_harness import Daemon, Fleet, no_traceback, wait_for

FINGERPRINT = re.compile(r"^[0-9a-f]{4}(-[0-9a-f]{4}){7}$")


def run_daemon_expecting_exit(d: Daemon, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run `acp daemon` in the foreground for a case where it must refuse to start."""
    d.write_config()
    return subprocess.run(
        d.command(),
        env=d.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_no_daemon_exit_69_says_how_to_start_it(fleet: Fleet) -> None:
    d = fleet.daemon("agent-a")  # never started
    for args in (
        ["status"],
        ["status", "--json"],
        ["peers"],
        ["send", "agent-b", "hi"],
        ["listen", "--count", "1"],
    ):
        out = d.run_cli(*args, timeout=15)
        assert out.returncode == 69, (args, out)
        assert "acp daemon is not running" in out.stderr, out.stderr
        assert "start it with `acp daemon`" in out.stderr
        assert str(d.socket_path) in out.stderr
        assert no_traceback(out.stderr), out.stderr
        assert out.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ["send"],
        ["send", "agent-b"],
        ["frobnicate"],
        ["send", "agent-b", "hi", "--timeout", "soon"],
        ["send", "agent-b", "hi", "--budget", "huge"],
        ["status", "--no-such-flag"],
        ["listen", "--count", "many"],
        ["delegate", "agent-b", "task", "--context", "[1, 2]"],
        ["delegate", "agent-b", "task", "--context", "{not json"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_usage_exits_2(fleet: Fleet, args: list[str]) -> None:
    d = fleet.daemon("agent-a")  # usage errors never need the daemon
    out = d.run_cli(*args, timeout=15)
    assert out.returncode == 2, out
    assert no_traceback(out.stdout + out.stderr)


def test_json_outputs_and_usage_errors_from_the_daemon(fleet: Fleet) -> None:
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)

    peers = json.loads(a.run_cli("peers", "--json", check=0).stdout)
    assert isinstance(peers, list)
    (row,) = peers
    assert row["id"] == "agent-b" and row["status"] == "connected"
    assert (row["addr"], row["port"], row["source"]) == ("127.0.0.1", b.port, "static")
    assert row["pubkey"] == b.pubkey and FINGERPRINT.match(row["fingerprint"])

    ident = json.loads(a.run_cli("id", "--json", check=0).stdout)
    assert ident["agent_id"] == "agent-a" and ident["pubkey"] == a.pubkey
    assert FINGERPRINT.match(ident["fingerprint"])

    status = json.loads(a.run_cli("status", "--json", check=0).stdout)
    assert status["agent_id"] == "agent-a" and status["port"] == a.port
    assert status["fingerprint"] == ident["fingerprint"]
    assert status["peers_connected"] == 1 and status["mdns"] == "off"
    assert isinstance(status["counters"], dict)

    text = a.run_cli("status", check=0).stdout
    assert "agent-a" in text and ident["fingerprint"] in text
    table = a.run_cli("peers", check=0).stdout
    assert "agent-b" in table and "connected" in table
    wide = a.run_cli("peers", "--wide", check=0).stdout  # the fingerprint: --wide only
    assert "agent-b" in wide and row["fingerprint"] in wide

    sent = json.loads(a.run_cli("send", "agent-b", "hi", "--json", check=0).stdout)
    assert sent["ok"] is True and sent["to"] == "agent-b" and sent["state"] == "sending"

    # what the daemon refuses as a bad request is a usage error too
    out = a.run_cli("send", "not a valid id!", "hi")
    assert out.returncode == 2 and no_traceback(out.stderr), out
    out = a.run_cli("trust", "agent-c", "not-base64")
    assert out.returncode == 2 and no_traceback(out.stderr), out

    # without the daemon, `acp id` reads identity.pub
    assert a.stop() == 0
    offline = json.loads(a.run_cli("id", "--json", check=0).stdout)
    assert offline == ident


def test_second_daemon_on_the_same_home_refuses(fleet: Fleet) -> None:
    a = fleet.daemon("agent-a")
    a.start()
    out = run_daemon_expecting_exit(a)
    assert out.returncode != 0
    assert "already running" in out.stderr and str(a.home) in out.stderr, out.stderr
    assert no_traceback(out.stderr), out.stderr
    assert a.running and a.status()["pid"] == a.proc.pid  # the first one is untouched
    assert a.socket_path.exists()


def test_port_in_use_refuses_with_a_clear_message(fleet: Fleet) -> None:
    a, other = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    a.start()
    other.port = a.port
    out = run_daemon_expecting_exit(other)
    assert out.returncode == 78, out
    assert f"port {a.port}" in out.stderr and "in use" in out.stderr, out.stderr
    assert no_traceback(out.stderr), out.stderr
    assert not other.socket_path.exists()
    assert a.running


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_daemon_cleanly(fleet: Fleet, sig: signal.Signals) -> None:
    a, b = fleet.daemon("agent-a"), fleet.daemon("agent-b")
    fleet.mesh(a, b)
    # clients connected at the time: a listener and a send waiting for its response
    listening = a.popen_cli("listen")
    waiting = a.popen_cli("send", "agent-b", "still there?", "--wait", "--timeout", "60")
    wait_for(lambda: b.status()["inbox"] == 1, timeout=10, what="the query at B")
    wait_for(lambda: a.status()["subscribers"] == 1, timeout=10, what="listen to subscribe")
    assert a.stop(sig) == 0
    assert not a.socket_path.exists()
    for client in (listening, waiting):
        _, err = client.communicate(timeout=10)
        assert client.returncode == 69, err
        assert "closed the connection" in err and no_traceback(err), err
    # the peer heard a BYE rather than finding a dead socket
    wait_for(lambda: not b.is_connected("agent-a"), timeout=5, what="B to see A go")
    row = b.peer("agent-a")
    assert row is not None
    assert "BYE" in (row["last_error"] or ""), row
    # and it starts again on the same home and port
    a.start()
    a.wait_connected(b)


def test_group_readable_identity_key_exits_78(fleet: Fleet) -> None:
    a = fleet.daemon("agent-a")
    key = a.home / "identity.key"
    key.chmod(0o640)
    out = run_daemon_expecting_exit(a)
    assert out.returncode == 78, out
    assert str(key) in out.stderr and "chmod 600" in out.stderr, out.stderr
    assert no_traceback(out.stderr), out.stderr
    assert not a.socket_path.exists()
    assert key.stat().st_mode & 0o777 == 0o640  # left for the user to fix


@pytest.mark.parametrize(
    "text",
    [
        "port = [\n",
        'inbox_limit = "many"\n',
        'trust = "everyone"\n',
        'colour = "blue"\n',
        '[[peers]]\nagent_id = "agent-b"\naddr = "127.0.0.1"\npubkey = "AAAA"\n',
        b"agent_id = '\xff'\n",
    ],
    ids=["syntax", "wrong-type", "bad-trust", "unknown-key", "bad-peer", "not-utf8"],
)
def test_broken_config_exits_78_naming_the_file(fleet: Fleet, text: str | bytes) -> None:
    a = fleet.daemon("agent-a")
    a.config_text = text
    out = run_daemon_expecting_exit(a)
    assert out.returncode == 78, out
    assert str(a.home / "config.toml") in out.stderr, out.stderr
    assert no_traceback(out.stderr), out.stderr
    assert not a.socket_path.exists()
