"""Discovery that fails (at start, and later at run time) leaves sessions and IPC working.

How it fails, honestly: alpha's config.toml restricts mDNS to ``interfaces = ["mdns0"]``. At start
there is no mdns0, so discovery raises a ConfigError ("no usable network interface"), which the
daemon logs and retries with backoff. The test then creates mdns0 (a veth on alpha's host, with an
address of its own), discovery comes up on it, and the test deletes it again: discovery notices the
address is gone, restarts, and fails the same way. All the while a static [[peers]] session to beta,
over eth0, carries messages both ways.
"""

from __future__ import annotations

import re
import time

from mesh_harness import Mesh, numbered, start_all, subscribed, wait_for

MESH_PREFIX = "acpt5"
MESH_NET = "10.95.0"
PORT = 7100


def test_discovery_failure_leaves_the_static_session_and_ipc_working(mesh: Mesh, figure) -> None:
    mesh.up(2)
    alpha, beta = mesh.daemon(1, "alpha"), mesh.daemon(2, "beta")
    alpha.make_identity()
    beta_key = beta.make_identity()
    alpha.config_text = (
        'agent_id = "alpha"\n'
        'interfaces = ["mdns0"]\n'
        "\n[[peers]]\n"
        'agent_id = "beta"\n'
        f'addr = "{beta.ip}:{PORT}"\n'
        f'pubkey = "{beta_key}"\n'
    )
    alpha.port = beta.port = PORT
    start_all(alpha, beta)

    def failed() -> dict | None:
        st = alpha.cli_json("status")
        return st if st["mdns"].startswith("failed:") else None

    st = wait_for(failed, timeout=20, what="alpha's mDNS to fail", poll=0.5)
    assert "no usable network interface" in st["mdns"], st["mdns"]
    assert st["counters"].get("mdns_failures", 0) >= 1
    wait_for(lambda: alpha.connected_to() == {"beta"}, timeout=20, what="the static session")
    assert alpha.peer("beta")["source"] == "static"

    def exchange(tag: str) -> None:
        with subscribed(alpha) as at_alpha, subscribed(beta) as at_beta:
            alpha.send("beta", numbered(tag, 1), wait="acked", timeout=20)
            beta.send("alpha", numbered(tag, 2), wait="acked", timeout=20)
            wait_for(lambda: at_beta.numbers(tag) == [1], timeout=10, what=f"{tag} at beta")
            wait_for(lambda: at_alpha.numbers(tag) == [2], timeout=10, what=f"{tag} at alpha")

    exchange("while-failed-at-start")

    # the interface appears: the next retry brings discovery up
    for cmd in (
        ("ip", "link", "add", "mdns0", "type", "veth", "peer", "name", "mdns1"),
        ("ip", "addr", "add", "10.195.0.1/24", "dev", "mdns0"),
        ("ip", "link", "set", "mdns1", "up"),
        ("ip", "link", "set", "mdns0", "multicast", "on", "up"),
    ):
        r = mesh.run_in(1, *cmd)
        assert r.returncode == 0, (cmd, r.stderr)
    t_up = time.monotonic()
    wait_for(lambda: alpha.status()["mdns"] == "running", timeout=40, what="discovery to recover")
    figure("mdns0 created to discovery running (retry backoff)", time.monotonic() - t_up)

    # ... and goes away again while running: discovery fails, the session does not care
    r = mesh.run_in(1, "ip", "link", "del", "mdns0")
    assert r.returncode == 0, r.stderr
    st = wait_for(failed, timeout=30, what="alpha's mDNS to fail at run time", poll=0.5)
    assert "no usable network interface" in st["mdns"], st["mdns"]
    assert st["counters"].get("mdns_failures", 0) >= 2
    assert alpha.connected_to() == {"beta"}
    exchange("while-failed-at-run-time")

    assert alpha.proc is not None and alpha.proc.poll() is None, "alpha must still run"
    log = alpha.log_text()
    assert "mDNS discovery failed" in log
    assert "mDNS: restarting: interface addresses changed" in log  # the cause, not a group
    # python-zeroconf logs its own socket errors (the vanished interface) with a traceback, as a
    # WARNING of logger "zeroconf"; any other traceback would be a crash of ours
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d |==== )", log)
    crashes = [r for r in records if "Traceback" in r and " WARNING zeroconf: " not in r]
    assert not crashes, crashes
