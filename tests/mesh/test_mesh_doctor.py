"""`acp doctor` on real daemons: a healthy pair, multicast blocked on one host, a peer's key changed.

The doctor runs where its daemon runs, in the host's network namespace (its multicast probe and
TCP check must use that host's interfaces); run from outside, it says so and skips them.
Multicast is blocked the way a host firewall would: an nftables table in the host's own
namespace dropping everything to 224.0.0.251, in and out.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from typing import Any

from mesh_harness import PYTHON, Mesh, MeshDaemon, start_all, wait_for

MESH_PREFIX = "acpdoc"
MESH_NET = "10.98.0"

BLOCK_MDNS = """
table inet acpdoctor {
  chain in { type filter hook input priority 0; ip daddr 224.0.0.251 drop; }
  chain out { type filter hook output priority 0; ip daddr 224.0.0.251 drop; }
}
"""
BLOCK_MDNS_IN = """
delete table inet acpdoctor
table inet acpdoctor {
  chain in { type filter hook input priority 0; ip daddr 224.0.0.251 drop; }
}
"""
LINE = re.compile(r"^(ok|warn|fail) +(.+?): (.+)$")


def doctor(mesh: Mesh, d: MeshDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    """`acp doctor` in the daemon's host namespace, against its ACP_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACP_")}
    return subprocess.run(
        ["ip", "netns", "exec", mesh.ns(d.host), "env", f"ACP_HOME={d.home}",
         PYTHON, "-m", "acp.cli", "doctor", *args],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def nft(mesh: Mesh, host: int, rules: str) -> None:
    r = subprocess.run(
        ["ip", "netns", "exec", mesh.ns(host), "nft", "-f", "-"],
        input=rules, capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def lines(out: str) -> dict[str, tuple[str, str, str | None]]:
    """check -> (status, message, fix) from the text report; every line must have the form."""
    found: dict[str, tuple[str, str, str | None]] = {}
    last = None
    for line in out.splitlines():
        if line.startswith("  fix: "):
            assert last is not None, out
            status, message, _ = found[last]
            found[last] = (status, message, line[len("  fix: ") :])
            continue
        m = LINE.match(line)
        assert m, f"not a doctor line: {line!r}\n{out}"
        found[m[2]] = (m[1], m[3], None)
        last = m[2]
    return found


def pair(mesh: Mesh) -> tuple[MeshDaemon, MeshDaemon]:
    mesh.up(2)
    alpha, beta = mesh.daemon(1, "alpha"), mesh.daemon(2, "beta")
    start_all(alpha, beta)
    wait_for(
        lambda: (
            alpha.connected_to() == {"beta"}
            and beta.connected_to() == {"alpha"}
            and alpha.status()["mdns"] == beta.status()["mdns"] == "running"
        ),
        timeout=30,
        what="alpha and beta to connect, with mDNS running",
    )
    return alpha, beta


def test_a_healthy_pair_is_all_ok(mesh: Mesh, figure) -> None:
    alpha, beta = pair(mesh)
    for d, other in ((alpha, "beta"), (beta, "alpha")):
        t = time.monotonic()
        r = doctor(mesh, d)
        figure(f"acp doctor on {d.agent_id}", time.monotonic() - t)
        assert r.returncode == 0, r.stdout + r.stderr
        found = lines(r.stdout)
        assert {s for s, _, _ in found.values()} == {"ok"}, r.stdout
        assert "our daemon answered" in found["multicast eth0"][1], r.stdout
        assert found[f"peer {other}"][1].startswith("connected"), r.stdout
        assert found[f"tcp {d.ip}:{d.status()['port']}"][0] == "ok", r.stdout
        figure(f"{d.agent_id}'s multicast line", found["multicast eth0"][1])

    report = json.loads(doctor(mesh, alpha, "--json").stdout)
    assert {item["status"] for item in report} == {"ok"}
    assert all(item["fix"] is None for item in report)

    # from outside the daemon's namespace the network checks would test the wrong interfaces
    r = alpha.cli("doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    status, message, fix = lines(r.stdout)["network"]
    assert status == "warn" and "another network namespace" in message, r.stdout
    assert fix is not None and "nsenter" in fix
    assert not any(c.startswith(("multicast", "tcp")) for c in lines(r.stdout))


def test_multicast_blocked_on_one_host_says_discovery_fails_there(mesh: Mesh, figure) -> None:
    alpha, beta = pair(mesh)
    nft(mesh, 1, BLOCK_MDNS)  # in and out: sending the query fails at once (EPERM)
    r = doctor(mesh, alpha)
    assert r.returncode == 1, r.stdout + r.stderr
    found = lines(r.stdout)
    status, message, fix = found["multicast eth0"]
    assert status == "fail" and message.startswith("discovery is failing on eth0"), r.stdout
    assert fix is not None and "[[peers]]" in fix, r.stdout
    assert found["peer beta"][0] == "ok"  # the session does not need multicast
    assert [c for c, (s, _, _) in found.items() if s == "fail"] == ["multicast eth0"], r.stdout

    # the other host's own probe still works: the problem is on h1 only
    r = doctor(mesh, beta)
    assert r.returncode == 0, r.stdout + r.stderr
    assert lines(r.stdout)["multicast eth0"][0] == "ok", r.stdout

    # inbound only: the query leaves (beta answers it, by unicast), our daemon never hears it
    nft(mesh, 1, BLOCK_MDNS_IN)
    r = doctor(mesh, alpha)
    assert r.returncode == 1, r.stdout + r.stderr
    status, message, fix = lines(r.stdout)["multicast eth0"]
    assert status == "fail" and message.startswith("discovery is failing on eth0"), r.stdout
    assert "did not answer" in message and "[[peers]]" in (fix or ""), r.stdout
    figure("inbound multicast blocked", message)


def test_a_changed_key_names_the_peer_and_the_commands(mesh: Mesh, figure) -> None:
    alpha, beta = pair(mesh)
    old = beta.status()["pubkey"]
    beta.stop()  # clean stop: mDNS goodbyes, so alpha's cache holds no old records
    for name in ("identity.key", "identity.pub"):
        (beta.home / name).unlink(missing_ok=True)
    new = beta.make_identity()  # beta reinstalled: same agent_id, another key
    assert new != old
    start_all(beta)

    def changed() -> dict[str, Any] | None:
        row = alpha.peer("beta")
        return row if row and row["status"] == "key_changed" else None

    row = wait_for(changed, timeout=30, what="alpha to see beta's key change", poll=0.5)
    r = doctor(mesh, alpha)
    assert r.returncode == 1, r.stdout + r.stderr
    found = lines(r.stdout)
    status, message, fix = found["peer beta"]
    assert status == "fail" and "key_changed" in message, r.stdout
    assert row["announced_fingerprint"] in message and row["fingerprint"] in message
    assert fix is not None and "acp trust beta " in fix and "acp forget beta" in fix, r.stdout
    # beta answered the doctor's probe with its new key, so the command is usually complete
    figure("acp trust command spelled out in full", str(f"acp trust beta {new}" in fix))
    if "<key>" not in fix:
        assert f"acp trust beta {new}" in fix, fix
