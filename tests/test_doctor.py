"""`acp doctor`: each check is a pure function of the facts gathered (acp/doctor.py), tested here
with made-up status and peers payloads; the gathering itself with a scripted daemon socket and, on
real daemons, in tests/mesh/test_mesh_doctor.py."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fake_daemon import STATUS, FakeDaemon

from acp import doctor
from acp.doctor import (
    Facts,
    FileFacts,
    Finding,
    IfaceFacts,
    Probe,
    check_clock,
    check_fds,
    check_files,
    check_interfaces,
    check_mdns,
    check_multicast,
    check_peers,
    check_tcp,
    check_warnings,
    choose_interfaces,
    diagnose,
    exit_code,
    judge_replies,
    mdns_query,
    parse_answers,
    parse_nofile,
    render,
)
from acp.model import fingerprint

OUR_KEY = base64.b64encode(b"\x01" * 32).decode()
NEW_KEY = base64.b64encode(b"\x02" * 32).decode()
OLD_FP = fingerprint(b"\x03" * 32)
NEW_FP = fingerprint(b"\x02" * 32)
NOW = 1_800_000_000.0
LINE = re.compile(r"^(ok|warn|fail) +(?P<check>.+?): (?P<message>.+)$")

STATUS_OK: dict[str, Any] = {
    "agent_id": "alpha",
    "version": doctor.__version__,
    "pid": 4242,
    "fingerprint": fingerprint(b"\x01" * 32),
    "pubkey": OUR_KEY,
    "uptime": 300.0,
    "port": 7100,
    "home": "/home/u/.acp",
    "trust": "tofu",
    "mdns": "running",
    "warnings": [],
}

PEER_OK: dict[str, Any] = {
    "id": "beta",
    "addr": "10.0.0.2",
    "port": 7100,
    "status": "connected",
    "source": "mdns",
    "fingerprint": OLD_FP,
    "pubkey": base64.b64encode(b"\x03" * 32).decode(),
    "last_seen": NOW - 3,
    "rtt_ms": 0.4,
    "queued": 0,
    "next_try_in": None,
    "last_error": None,
    "announced_fingerprint": None,
    "card": None,
}

ETH0 = IfaceFacts("eth0", "10.0.0.1", 24, flags=0x1003, operstate="up")
LO = IfaceFacts("lo", "127.0.0.1", 8, flags=0x9, operstate="unknown")


def response(*services: tuple[str, str], qid: int = 1) -> bytes:
    """A DNS response, as python-zeroconf builds one: a PTR to each (agent_id, pubkey)
    instance, with SRV, TXT and A as additionals."""
    from zeroconf import DNSOutgoing, ServiceInfo
    from zeroconf.const import _FLAGS_AA, _FLAGS_QR_RESPONSE

    out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA, False, qid)
    for agent_id, key in services:
        info = ServiceInfo(
            doctor.SERVICE,
            f"{agent_id}.{doctor.SERVICE}",
            port=7100,
            properties={"v": "1", "agent_id": agent_id, "pubkey": key, "boot": "0badf00d"},
            server=f"acp-{agent_id}.local.",
            parsed_addresses=["10.0.0.9"],
        )
        out.add_answer_at_time(info.dns_pointer(), 0)
        out.add_additional_answer(info.dns_service())
        out.add_additional_answer(info.dns_text())
        for a in info.dns_addresses():
            out.add_additional_answer(a)
    packets: list[bytes] = out.packets()
    return packets[0]


def healthy(**changes: Any) -> Facts:
    facts = Facts(
        home="/home/u/.acp",
        status=dict(STATUS_OK),
        peers=[dict(PEER_OK)],
        home_dir=FileFacts("/home/u/.acp", 0o700, readable=True),
        key=FileFacts("/home/u/.acp/identity.key", 0o600, readable=True, head=b"x"),
        db=FileFacts("/home/u/.acp/acp.db", 0o600, readable=True, head=b"SQLite format 3\0"),
        same_netns=True,
        ifaces=[LO, ETH0],
        probes=[Probe("eth0", "10.0.0.1", (("10.0.0.1", response(("alpha", OUR_KEY))),))],
        tcp={"10.0.0.1:7100": None},
        fds=20,
        fd_limit=1024,
        now=NOW,
        started_wall=NOW - 300.5,
    )
    for k, v in changes.items():
        setattr(facts, k, v)
    return facts


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


# -- the whole report ------------------------------------------------------------------------------


def test_a_healthy_daemon_is_all_ok_and_exits_0() -> None:
    findings = diagnose(healthy())
    assert [f.status for f in findings] == ["ok"] * len(findings), render(findings)
    assert exit_code(findings) == 0
    checks = [f.check for f in findings]
    assert checks == [
        "daemon",
        "ACP_HOME",
        "identity.key",
        "acp.db",
        "mdns",
        "interface eth0",
        "multicast eth0",
        "tcp 10.0.0.1:7100",
        "peer beta",
        "open files",
        "clock",
    ]
    text = render(findings)
    assert all(LINE.match(line) for line in text.splitlines()), text
    assert "fix:" not in text


def test_warnings_alone_exit_0_and_a_failure_exits_1() -> None:
    w = Finding("x", "warn", "m", "f")
    assert exit_code([w, Finding("y", "ok", "m")]) == 0
    assert exit_code([w, Finding("z", "fail", "m", "f")]) == 1


def test_render_puts_the_fix_under_each_problem_and_escapes_what_peers_said() -> None:
    rows = [dict(PEER_OK, status="backoff", next_try_in=4.0, last_error="BYE: \x1b[31mred\nx")]
    text = render(diagnose(healthy(peers=rows)))
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("warn  peer beta: "))
    assert lines[i + 1].startswith("  fix: ")
    assert "\x1b" not in text and "\\x1b[31mred" in text
    assert len(lines) == len([f for f in diagnose(healthy(peers=rows))]) + 1


def test_json_is_a_list_of_check_status_message_fix(monkeypatch, capsys) -> None:
    monkeypatch.setattr(doctor, "gather", lambda home=None: healthy(tcp={"10.0.0.1:7100": "boom"}))
    assert doctor.run(as_json=True) == 1
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out, list) and out
    for item in out:
        assert set(item) == {"check", "status", "message", "fix"}
        assert item["status"] in ("ok", "warn", "fail")
        assert (item["fix"] is None) == (item["status"] == "ok")
    assert {"check": "tcp 10.0.0.1:7100", "status": "fail"}.items() <= out[7].items()


# -- the daemon -------------------------------------------------------------------------------------


def test_no_daemon_says_how_to_start_it_and_skips_what_needs_it() -> None:
    facts = Facts(
        home="/h",
        daemon_error="acp daemon is not running (no socket at /h/acp.sock: No such file)",
        daemon_code="daemon_unavailable",
        home_dir=FileFacts("/h", 0o700, readable=True),
        key=FileFacts("/h/identity.key", 0o600, readable=True),
        db=FileFacts("/h/acp.db", 0o600, readable=True, head=b"SQLite format 3\0"),
        now=NOW,
    )
    findings = diagnose(facts)
    assert [f.check for f in findings] == ["daemon", "ACP_HOME", "identity.key", "acp.db"]
    first = findings[0]
    assert first.status == "fail" and "not running" in first.message
    assert first.fix is not None and "`acp daemon`" in first.fix
    assert exit_code(findings) == 1


def test_a_daemon_that_answers_badly_is_not_told_to_start() -> None:
    facts = Facts(
        home="/h", daemon_error="the daemon did not answer in time", daemon_code="timeout"
    )
    (f,) = diagnose(facts)
    assert f.status == "fail" and "did not answer in time" in f.message
    assert f.fix is not None and "restart" in f.fix and f.fix != doctor.START_HINT


def test_another_version_and_daemon_warnings_are_warned_about() -> None:
    status = dict(
        STATUS_OK,
        version="0.0.9",
        warnings=[
            "another daemon at 10.0.0.5 advertises our agent_id 'alpha' with a different key"
        ],
    )
    found = by_check(diagnose(healthy(status=status)))
    assert found["version"].status == "warn" and "0.0.9" in found["version"].message
    w = found["daemon warning"]
    assert w.status == "warn" and w.fix is not None and "agent_id" in w.fix
    assert check_warnings({"warnings": ["something else"]})[0].fix == (
        "see `acp status` and the daemon's log"
    )


def test_peers_that_cannot_be_listed_fail() -> None:
    found = by_check(diagnose(healthy(peers=[], peers_error="unknown command 'peers'")))
    assert found["peers"].status == "fail" and "unknown command" in found["peers"].message


# -- files -----------------------------------------------------------------------------------------


def test_file_modes() -> None:
    f = by_check(
        check_files(
            healthy(
                home_dir=FileFacts("/h", 0o755, readable=True),
                key=FileFacts("/h/identity.key", 0o640, readable=True),
                db=FileFacts("/h/acp.db", 0o644, readable=True, head=b"SQLite format 3\0"),
            )
        )
    )
    assert f["ACP_HOME"].status == "warn" and f["ACP_HOME"].fix == "chmod 700 /h"
    assert "0755" in f["ACP_HOME"].message
    assert (
        f["identity.key"].status == "fail" and f["identity.key"].fix == "chmod 600 /h/identity.key"
    )
    assert f["acp.db"].status == "warn" and f["acp.db"].fix == "chmod 600 /h/acp.db"


def test_missing_or_unreadable_files() -> None:
    gone = FileFacts("/h/identity.key", error="No such file or directory")
    running = by_check(check_files(healthy(key=gone)))
    assert running["identity.key"].status == "fail"
    assert "new one" in running["identity.key"].message
    stopped = by_check(check_files(healthy(status=None, key=gone)))
    assert stopped["identity.key"].status == "warn"

    f = by_check(
        check_files(
            healthy(
                db=FileFacts("/h/acp.db", 0o600, readable=False, error="Permission denied"),
                key=FileFacts("/h/identity.key", 0o600, readable=False, error="Permission denied"),
            )
        )
    )
    assert f["acp.db"].status == "fail" and "Permission denied" in f["acp.db"].message
    assert f["identity.key"].status == "fail"

    garbage = FileFacts("/h/acp.db", 0o600, readable=True, head=b"not a database!!")
    assert by_check(check_files(healthy(db=garbage)))["acp.db"].status == "fail"
    nodb = FileFacts("/h/acp.db", error="No such file or directory")
    assert by_check(check_files(healthy(status=None, db=nodb)))["acp.db"].status == "ok"
    assert by_check(check_files(healthy(db=nodb)))["acp.db"].status == "fail"


def test_a_broken_config_fails() -> None:
    f = by_check(check_files(healthy(config_error="/h/config.toml: not valid TOML")))
    assert f["config.toml"].status == "fail" and "exit 78" in (f["config.toml"].fix or "")


# -- mDNS and interfaces ---------------------------------------------------------------------------


def test_mdns_states() -> None:
    assert check_mdns({"mdns": "running"}).status == "ok"
    assert check_mdns({"mdns": "off"}).status == "ok"
    failed = check_mdns({"mdns": "failed: ConfigError('no usable network interface')"})
    assert failed.status == "fail" and "[[peers]]" in (failed.fix or "")
    assert check_mdns({"mdns": "starting"}).status == "warn"


def test_no_probe_when_mdns_is_not_running() -> None:
    found = by_check(diagnose(healthy(status=dict(STATUS_OK, mdns="off"), probes=[])))
    assert "multicast eth0" not in found
    assert found["mdns"].status == "ok"


@pytest.mark.parametrize(
    ("wanted", "names"),
    [
        ((), ["eth0", "wlan0"]),
        (("wlan0",), ["wlan0"]),
        (("10.0.0.1",), ["eth0"]),
        (("nothere",), []),
    ],
)
def test_choose_interfaces_matches_the_daemon(wanted: tuple[str, ...], names: list[str]) -> None:
    from acp.net import discovery

    ours = [
        IfaceFacts("lo", "127.0.0.1", 8),
        IfaceFacts("eth0", "10.0.0.1", 24),
        IfaceFacts("wlan0", "192.168.1.5", 24),
    ]
    theirs = [discovery.Iface(i.name, i.ip, i.prefix) for i in ours]
    assert [i.name for i in choose_interfaces(wanted, ours)] == names
    # these names do not exist here, so the daemon's /sys lookup says "unknown", as ours does
    assert [i.name for i in discovery.choose_interfaces(wanted, theirs)] == names
    only_lo = [IfaceFacts("lo", "127.0.0.1", 8)]
    assert [i.name for i in choose_interfaces((), only_lo)] == ["lo"]
    down = [IfaceFacts("eth0", "10.0.0.1", 24, operstate="down"), *only_lo]
    assert [i.name for i in choose_interfaces((), down)] == ["lo"]


@pytest.mark.parametrize(
    "name",
    ["docker0", "br-3f2a91c0", "veth12ab", "virbr0", "tun0", "tap1", "wg0", "tailscale0", "zt5"],
)
def test_interfaces_that_usually_break_discovery_are_warned_about(name: str) -> None:
    (f,) = check_interfaces((), [IfaceFacts(name, "172.17.0.1", 16, flags=0x1003, operstate="up")])
    assert f.status == "warn" and f.check == f"interface {name}"
    assert f.fix is not None and "[[peers]]" in f.fix


def test_an_interface_without_multicast_is_warned_about() -> None:
    (f,) = check_interfaces((), [IfaceFacts("enp1s0", "10.1.0.1", 24, flags=0x1003 & ~0x1000)])
    assert f.status == "warn" and "MULTICAST" in f.message and "[[peers]]" in (f.fix or "")
    (g,) = check_interfaces((), [ETH0])
    assert g.status == "ok" and "10.0.0.1/24" in g.message


def test_loopback_only_or_no_interface() -> None:
    (f,) = check_interfaces((), [LO])
    assert f.status == "warn" and "loopback" in f.message
    (g,) = check_interfaces(("eth9",), [])
    assert g.status == "fail" and "eth9" in g.message


def test_one_line_per_interface_with_all_its_addresses() -> None:
    two = [ETH0, IfaceFacts("eth0", "10.0.1.1", 24, flags=0x1003)]
    (f,) = check_interfaces((), two)
    assert "10.0.0.1/24, 10.0.1.1/24" in f.message


# -- the multicast probe --------------------------------------------------------------------------


def test_the_query_is_one_ptr_question_for_the_service() -> None:
    from zeroconf import DNSIncoming

    msg = DNSIncoming(mdns_query(4321))
    assert msg.id == 4321 and msg.is_query()
    (q,) = msg.questions
    assert q.name == "_acp._tcp.local." and q.type == 12 and not q.unique


def test_answers_are_parsed_from_a_zeroconf_response() -> None:
    instances, txts = parse_answers(response(("alpha", OUR_KEY), ("beta", NEW_KEY)))
    assert instances == ["alpha._acp._tcp.local.", "beta._acp._tcp.local."]
    assert txts["beta._acp._tcp.local."]["pubkey"] == NEW_KEY
    assert txts["alpha._acp._tcp.local."]["agent_id"] == "alpha"


def test_judge_replies_tells_our_answer_from_the_others() -> None:
    replies = [
        ("10.0.0.1", response(("alpha", OUR_KEY))),
        ("10.0.0.2", response(("beta", NEW_KEY))),
    ]
    v = judge_replies(replies, "alpha", OUR_KEY)
    assert v.ours and v.others == {"beta": NEW_KEY}
    # another daemon claiming our agent_id with another key is not our answer
    v = judge_replies([("10.0.0.5", response(("alpha", NEW_KEY)))], "alpha", OUR_KEY)
    assert not v.ours and v.others == {"alpha": NEW_KEY}


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x00" * 11,
        mdns_query(1),  # a query, not a response
        b"\x00\x01\x84\x00\x00\x00\x00\x01\x00\x00\x00\x00\xc0\x0c",  # a pointer to itself
        response(("alpha", OUR_KEY))[:40],  # truncated
    ],
)
def test_broken_packets_are_ignored(packet: bytes) -> None:
    v = judge_replies([("10.0.0.9", packet)], "alpha", OUR_KEY)
    assert not v.ours and v.others == {}


def test_multicast_verdicts() -> None:
    answered = Probe("eth0", "10.0.0.1", (("10.0.0.1", response(("alpha", OUR_KEY))),))
    (f,) = check_multicast([answered], "alpha", OUR_KEY)
    assert f.status == "ok" and f.check == "multicast eth0"
    both = Probe(
        "eth0",
        "10.0.0.1",
        (("10.0.0.1", response(("alpha", OUR_KEY))), ("10.0.0.2", response(("beta", NEW_KEY)))),
    )
    (f,) = check_multicast([both], "alpha", OUR_KEY)
    assert "1 other acp daemon(s) answered too: beta" in f.message

    silent = Probe("eth0", "10.0.0.1", (("10.0.0.2", response(("beta", NEW_KEY))),))
    (f,) = check_multicast([silent], "alpha", OUR_KEY)
    assert f.status == "fail"
    assert f.message.startswith("discovery is failing on eth0")
    assert f.fix is not None and f.fix.startswith(
        "list peers in config.toml [[peers]] (see README)"
    )
    assert "other daemons did: beta" in f.message

    blocked = Probe("wlan0", "192.168.1.5", error="Operation not permitted")
    (f,) = check_multicast([blocked], "alpha", OUR_KEY)
    assert f.status == "fail" and "discovery is failing on wlan0" in f.message
    assert "Operation not permitted" in f.message


def test_two_addresses_on_one_interface_get_a_line_each() -> None:
    probes = [
        Probe("eth0", "10.0.0.1", (("10.0.0.1", response(("alpha", OUR_KEY))),)),
        Probe("eth0", "10.0.1.1", error="Network is unreachable"),
    ]
    a, b = check_multicast(probes, "alpha", OUR_KEY)
    assert (a.check, a.status) == ("multicast eth0 10.0.0.1", "ok")
    assert (b.check, b.status) == ("multicast eth0 10.0.1.1", "fail")


def test_tcp_verdicts() -> None:
    a, b = check_tcp({"10.0.0.1:7100": None, "10.0.1.1:7100": "Connection refused"})
    assert a.status == "ok"
    assert b.status == "fail" and "Connection refused" in b.message and "listen" in (b.fix or "")


def test_another_network_namespace_skips_the_network_checks() -> None:
    found = by_check(diagnose(healthy(same_netns=False)))
    assert found["network"].status == "warn" and "nsenter -t 4242 -n" in (
        found["network"].fix or ""
    )
    assert not [c for c in found if c.startswith(("interface", "multicast", "tcp"))]
    assert exit_code(list(found.values())) == 0


# -- peers -----------------------------------------------------------------------------------------


def test_a_changed_key_names_the_peer_and_both_commands() -> None:
    row = dict(PEER_OK, status="key_changed", announced_fingerprint=NEW_FP, rtt_ms=None)
    (f,) = check_peers([row])
    assert f.status == "fail" and f.check == "peer beta"
    assert NEW_FP in f.message and OLD_FP in f.message
    assert f.fix is not None
    assert "`acp trust beta <key>`" in f.fix and "`acp forget beta`" in f.fix
    # when the probe heard the new key announced, the command is spelled out in full
    (f,) = check_peers([row], announced={"beta": NEW_KEY})
    assert f"`acp trust beta {NEW_KEY}`" in (f.fix or "")
    # ... but never a key whose fingerprint is not the one announced
    (f,) = check_peers([row], announced={"beta": OUR_KEY})
    assert OUR_KEY not in (f.fix or "")


def test_a_connected_peer_with_another_key_announced_is_a_warning() -> None:
    row = dict(PEER_OK, announced_fingerprint=NEW_FP)
    (f,) = check_peers([row])
    assert f.status == "warn" and "impostor" in f.message and "acp forget beta" in (f.fix or "")


def test_refused_under_explicit_trust() -> None:
    row = dict(
        PEER_OK, status="refused", fingerprint=None, pubkey=None, announced_fingerprint=NEW_FP
    )
    (f,) = check_peers([row], announced={"beta": NEW_KEY})
    assert f.status == "warn" and "explicit" in f.message
    assert f"`acp trust beta {NEW_KEY}`" in (f.fix or "")


@pytest.mark.parametrize(
    ("error", "advice"),
    [
        ("[Errno 111] Connection refused", "nothing listens at 10.0.0.2:7100"),
        ("timed out", "not reachable from here"),
        ("closed by peer during the handshake", "reachable from here"),
    ],
)
def test_backoff_shows_the_last_error_and_advice(error: str, advice: str) -> None:
    row = dict(PEER_OK, status="backoff", next_try_in=8.2, last_error=error, queued=3)
    (f,) = check_peers([row])
    assert f.status == "warn"
    assert error in f.message and "next try in 8 s" in f.message and "3 envelope(s)" in f.message
    assert advice in (f.fix or "")


def test_stale_idle_waiting_and_other_states() -> None:
    rows = [
        dict(PEER_OK, id="s", status="stale"),
        dict(PEER_OK, id="i", status="idle", addr=None, port=None),
        dict(PEER_OK, id="w", status="waiting"),
        dict(PEER_OK, id="c", status="connecting"),
    ]
    f = by_check(check_peers(rows))
    assert "[[peers]]" in (f["peer s"].fix or "") and "acp forget s" in (f["peer s"].fix or "")
    assert "--addr" in (f["peer i"].fix or "")
    assert "lower agent_id" in f["peer w"].message
    assert f["peer c"].status == "warn"
    assert {x.status for x in f.values()} == {"warn"}


def test_no_peers_suggests_static_peers() -> None:
    (f,) = check_peers([])
    assert f.status == "warn" and "[[peers]]" in (f.fix or "")


# -- the process: files and clock -------------------------------------------------------------------


def test_open_files() -> None:
    assert check_fds(healthy(fds=100, fd_limit=1024))[0].status == "ok"
    (f,) = check_fds(healthy(fds=900, fd_limit=1024))
    assert f.status == "warn" and "88%" in f.message and "LimitNOFILE" in (f.fix or "")
    assert check_fds(healthy(fds=900, fd_limit=None))[0].status == "ok"
    (g,) = check_fds(healthy(fds=None, proc_error="/proc/1: Permission denied"))
    assert g.status == "warn"


def test_parse_nofile() -> None:
    limits = (
        "Limit                     Soft Limit           Hard Limit           Units     \n"
        "Max open files            1024                 524288               files     \n"
    )
    assert parse_nofile(limits) == 1024
    assert parse_nofile(limits.replace("1024 ", "unlimited ")) is None
    assert parse_nofile("") is None
    assert parse_nofile(Path("/proc/self/limits").read_text()) is not None


def test_clock() -> None:
    assert check_clock(NOW, 300.0, NOW - 301.0, [])[0].status == "ok"
    (f,) = check_clock(1_000_000_000.0, 300.0, None, [])  # 2001
    assert f.status == "warn" and "2001" in f.message and "NTP" in (f.fix or "")
    (f,) = check_clock(NOW, 300.0, NOW + 3600.0, [])  # the daemon "started" in the future
    assert f.status == "warn" and "went back" in f.message
    # the wall clock ran ahead of the uptime: a suspended machine, not worth a warning
    assert check_clock(NOW, 300.0, NOW - 8 * 3600.0, [])[0].status == "ok"
    (f,) = check_clock(NOW, 300.0, None, [dict(PEER_OK, last_seen=NOW + 900)])
    assert f.status == "warn" and "beta" in f.message


# -- gathering, against a scripted daemon ----------------------------------------------------------


def test_gather_and_report_against_a_scripted_daemon(tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "h"
    home.mkdir(mode=0o700)
    key = home / "identity.key"
    key.write_text("x\n")
    key.chmod(0o644)
    (home / "acp.db").write_bytes(b"SQLite format 3\0" + b"\0" * 100)
    (home / "acp.db").chmod(0o600)
    monkeypatch.setitem(STATUS, "home", str(home))
    monkeypatch.setitem(STATUS, "pid", os.getpid())  # a process that is not acp: said so
    fake = FakeDaemon(home / "acp.sock")
    fake.start()
    try:
        facts = doctor.gather(home)
    finally:
        fake.stop()
    assert facts.status is not None and facts.status["agent_id"] == "agent-a"
    assert facts.peers_error is not None  # the scripted daemon has no `peers`
    assert facts.key is not None and facts.key.mode == 0o644
    assert facts.probes == []  # its mDNS is "off"
    found = by_check(diagnose(facts))
    assert found["identity.key"].status == "fail"
    assert found["mdns"].status == "ok"
    assert found["peers"].status == "fail"


def test_gather_without_a_daemon(tmp_path: Path) -> None:
    t = time.monotonic()
    facts = doctor.gather(tmp_path)
    assert time.monotonic() - t < 5
    assert facts.status is None and facts.daemon_code == "daemon_unavailable"
    assert facts.same_netns is None and facts.ifaces == []


PROBE = """
import json, sys
from acp.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} | {m for m in sys.modules if m.startswith("acp.")})))
"""


@pytest.mark.parametrize(
    "argv", [["--help"], ["doctor", "--help"], ["doctor"], ["doctor", "--json"]]
)
def test_doctor_loads_nothing_heavy(argv: list[str], tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        env={"ACP_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    heavy = {"trio", "zeroconf", "nacl", "rich", "ifaddr", "mcp"}
    if "--help" in argv:
        heavy.discard("rich")  # cyclopts draws its help with rich
    assert not loaded & heavy, f"{argv} imported {sorted(loaded & heavy)}"
    assert ("acp.doctor" in loaded) == (argv[0] == "doctor" and "--help" not in argv)
    if argv == ["doctor"]:
        assert out.stdout.startswith("fail  daemon: ")
