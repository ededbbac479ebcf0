"""Network faults under real sessions: an invisible partition, and packet loss."""

from __future__ import annotations

import time

from mesh_harness import Mesh, MeshDaemon, numbered, start_all, subscribed, wait_for

MESH_PREFIX = "acpt2"
MESH_NET = "10.92.0"
CUT_FOR = 20.0  # seconds


def _pair(mesh: Mesh) -> tuple[MeshDaemon, MeshDaemon]:
    mesh.up(2)
    h1, h2 = mesh.daemon(1, "h1"), mesh.daemon(2, "h2")
    start_all(h1, h2)
    wait_for(
        lambda: h1.connected_to() == {"h2"} and h2.connected_to() == {"h1"},
        timeout=30,
        what="h1 and h2 to connect",
    )
    return h1, h2


def _all_acked(sender: MeshDaemon, to: str) -> bool:
    row = sender.peer(to)
    return row is not None and row["status"] == "connected" and row["queued"] == 0


def test_messages_sent_during_a_cut_arrive_once_in_order_after_the_heal(mesh: Mesh, figure) -> None:
    h1, h2 = _pair(mesh)
    with subscribed(h2) as inbox:
        mesh.cut(2)
        t_cut = time.monotonic()
        states = []
        with h1.client() as c:
            for i in range(10):  # spread over the first half of the cut
                states.append(c.send("h2", numbered("cut", i))["state"])
                time.sleep(1.0)
        assert set(states) <= {"sending", "queued"}, states
        time.sleep(max(0.0, t_cut + CUT_FOR - time.monotonic()))  # the partition lasts CUT_FOR s
        assert inbox.numbers("cut") == [], "nothing can cross the cut"

        mesh.heal(2)
        t_heal = time.monotonic()
        wait_for(
            lambda: h1.connected_to() == {"h2"} and h2.connected_to() == {"h1"},
            timeout=30,
            what="the h1-h2 session after the heal",
        )
        figure("heal to h1-h2 shown connected on both sides", time.monotonic() - t_heal)
        wait_for(
            lambda: len(inbox.numbers("cut")) >= 10,
            timeout=60,
            what="the 10 messages sent during the cut",
        )
        figure("heal to all 10 delivered", time.monotonic() - t_heal)
        wait_for(lambda: _all_acked(h1, "h2"), timeout=30, what="h1's outbox to h2 to be ACKed")
        # nothing can be resent once all is ACKed: what arrived is final
        assert inbox.numbers("cut") == list(range(10))
        assert all(e["from"] == "h1" and e["to"] == "h2" for e in inbox.envelopes("cut"))

    # Did the partition break the session, or did TCP carry it across? (report, not a rule)
    reconnected = any("session down" in d.log_text() for d in (h1, h2))
    figure(
        "session across the 20 s cut",
        "dropped and re-formed" if reconnected else "survived (TCP retransmission; no re-dial)",
    )
    assert h1.status()["counters"].get("undelivered.expired", 0) == 0


def test_fifty_messages_through_20_percent_loss_arrive_once_in_order(mesh: Mesh, figure) -> None:
    h1, h2 = _pair(mesh)
    with subscribed(h2) as inbox:
        mesh.loss(2, 20)  # both directions, dropped at h2's switch port
        t0 = time.monotonic()
        with h1.client() as c:
            for i in range(50):
                c.send("h2", numbered("lossy", i))
                time.sleep(0.05)  # separate segments: more of them meet the loss
        wait_for(
            lambda: len(inbox.numbers("lossy")) >= 50,
            timeout=90,
            what="50 messages through 20% loss",
        )
        figure("50 messages through 20% loss, first send to last delivery", time.monotonic() - t0)
        wait_for(lambda: _all_acked(h1, "h2"), timeout=60, what="h1's outbox to h2 to be ACKed")
        assert inbox.numbers("lossy") == list(range(50))
        drops = mesh.sh("status")
        assert "counter packets" in drops  # the fault really was in place
