"""Discovery on a simulated LAN: a cold start, and a host that joins while another is cut off."""

from __future__ import annotations

import time

from mesh_harness import Mesh, start_all, wait_for

MESH_PREFIX = "acpt1"
MESH_NET = "10.91.0"
HOLD_CUT = 15.0  # seconds the cut lasts after h3 advertises


def test_three_empty_hosts_find_each_other_and_all_pairs_connect(mesh: Mesh, figure) -> None:
    mesh.up(3)
    daemons = [mesh.daemon(i, f"h{i}") for i in (1, 2, 3)]  # empty ACP_HOMEs, no config.toml
    t0 = time.monotonic()
    start_all(*daemons)
    figure("start to all daemons answering", time.monotonic() - t0)

    def all_connected() -> bool:
        return all(len(d.connected_to()) == 2 for d in daemons)

    wait_for(all_connected, timeout=30, what="every host to show 2 connected peers")
    figure("start to all pairs connected", time.monotonic() - t0)

    # A session can come up before its responder has finished registering (probing takes ~1.7 s)
    # or has resolved the dialler itself: then wait for both, they are moments away.
    def all_advertised() -> bool:
        return all(
            d.status()["mdns"] == "running"
            and all(row["source"] == "mdns" for row in d.peers().values())
            for d in daemons
        )

    wait_for(all_advertised, timeout=20, what="all three registered, and found by mDNS")
    for d in daemons:
        rows = d.peers()
        assert set(rows) == {f"h{i}" for i in (1, 2, 3)} - {d.agent_id}
        for agent_id, row in rows.items():
            assert row["status"] == "connected", row
            assert row["addr"] == mesh.ip(int(agent_id[1:])), row  # its mesh address


def test_host_that_joins_during_a_cut_is_found_after_the_heal(mesh: Mesh, figure) -> None:
    mesh.up(3)
    h1, h2 = mesh.daemon(1, "h1"), mesh.daemon(2, "h2")
    start_all(h1, h2)
    wait_for(lambda: h1.connected_to() == {"h2"}, timeout=30, what="h1 and h2 to connect")

    mesh.cut(1)
    h3 = mesh.daemon(3, "h3")
    start_all(h3)
    wait_for(
        lambda: "h2" in h3.connected_to(),
        timeout=30,
        what="h3 (joined during the cut) to connect to h2",
    )
    wait_for(lambda: h3.status()["mdns"] == "running", timeout=20, what="h3 to advertise")
    # Keep h1 cut off past h3's announcements and its browser's start-up queries (sent ~0, 1, 5
    # and 14 s after it starts), so that only a later query can bring h1 and h3 together: the case
    # where, without acp's periodic re-query, they would not find each other for a long time.
    time.sleep(HOLD_CUT)
    assert "h3" not in h1.peers(), "h1 is cut off: it cannot know h3 yet"

    mesh.heal(1)
    t_heal = time.monotonic()
    wait_for(
        lambda: "h3" in h1.connected_to() and "h1" in h3.connected_to(),
        timeout=40,
        what="h1 and h3 to find each other after the heal",
    )
    figure("heal to h1-h3 connected", time.monotonic() - t_heal)
    wait_for(
        lambda: h1.connected_to() == {"h2", "h3"}, timeout=20, what="h1 connected to h2 and h3"
    )
    assert h3.connected_to() == {"h1", "h2"}


def test_longest_agent_id_and_one_with_dots_are_advertised_and_found(mesh: Mesh) -> None:
    """docs/protocol.md §1 allows 63 characters of [A-Za-z0-9._-]; mDNS labels stop at 63 bytes."""
    mesh.up(2)
    long_id = "L" + "o" * 61 + "g"
    assert len(long_id) == 63
    a, b = mesh.daemon(1, long_id, name="h1-long"), mesh.daemon(2, "b.dotted_id-2")
    start_all(a, b)
    wait_for(
        lambda: a.connected_to() == {"b.dotted_id-2"} and b.connected_to() == {long_id},
        timeout=30,
        what="the two to find each other by mDNS",
    )
    wait_for(
        lambda: (
            a.status()["mdns"] == b.status()["mdns"] == "running"
            and b.peer(long_id)["source"] == "mdns"  # b resolved a's records, not only its dial
        ),
        timeout=20,
        what="both registered, and b to resolve the long name",
    )
