"""A daemon killed with SIGKILL and restarted on another port is redialled there, with no ghost."""

from __future__ import annotations

import time
from datetime import datetime

from mesh_harness import Mesh, numbered, start_all, subscribed, wait_for

MESH_PREFIX = "acpt3"
MESH_NET = "10.93.0"
OLD_PORT, NEW_PORT = 7100, 7200  # each host has its own network stack: no clash
REQUERY_BOUND = 4.0  # s from a lost session to the peer's new address (query + answer delay)


def _log_time(log: str, text: str) -> float:
    """The time of the first daemon log line containing ``text`` (seconds since the epoch)."""
    for line in log.splitlines():
        if text in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    raise AssertionError(f"no log line with {text!r} in:\n{log}")


def test_sigkilled_daemon_restarted_on_a_new_port_is_redialled_without_ghost(
    mesh: Mesh, figure
) -> None:
    mesh.up(3)
    # gamma has the highest agent_id: after its restart it waits 10 s before dialling anyone
    # itself, so a session within that time means its peers redialled it.
    alpha, beta, gamma = mesh.daemon(1, "alpha"), mesh.daemon(2, "beta"), mesh.daemon(3, "gamma")
    for d in (alpha, beta, gamma):
        d.port = OLD_PORT
    start_all(alpha, beta, gamma)
    wait_for(
        lambda: all(len(d.connected_to()) == 2 for d in (alpha, beta, gamma)),
        timeout=30,
        what="the three to connect",
    )
    assert alpha.peer("gamma")["port"] == OLD_PORT

    gamma.kill()  # SIGKILL: no goodbye, no BYE; the kernel still closes its sockets
    marks = {d.agent_id: len(d.log_text()) for d in (alpha, beta)}
    gamma.start(port=NEW_PORT)
    t_restart = time.monotonic()
    gamma.wait_ready()

    def redialled() -> bool:
        return all(
            (row := d.peer("gamma")) is not None
            and row["status"] == "connected"
            and row["port"] == NEW_PORT
            for d in (alpha, beta)
        )

    wait_for(redialled, timeout=30, what="alpha and beta connected to gamma's new port")
    figure("restart to both peers connected on the new port", time.monotonic() - t_restart)
    for d in (alpha, beta):
        since = d.log_text()[marks[d.agent_id] :]
        assert "peer gamma: session up (outbound" in since, (
            f"{d.agent_id} did not dial gamma's new port itself:\n{since}"
        )

    # no ghost: `acp peers` lists gamma once, connected, at the new port, on both peers
    for d in (alpha, beta):
        rows = d.cli_json("peers")
        mine = [r for r in rows if r["id"] == "gamma"]
        assert len(mine) == 1, rows
        assert mine[0]["status"] == "connected" and mine[0]["port"] == NEW_PORT, mine
        assert mine[0]["addr"] == gamma.ip, mine
        assert sorted(r["id"] for r in rows) == sorted({"alpha", "beta", "gamma"} - {d.agent_id})
    wait_for(lambda: gamma.connected_to() == {"alpha", "beta"}, timeout=20, what="gamma's view")

    # and the new session carries messages
    with subscribed(gamma) as inbox:
        alpha.send("gamma", numbered("after-restart", 1), wait="acked", timeout=20)
        wait_for(lambda: inbox.numbers("after-restart") == [1], timeout=10, what="delivery")


def test_daemon_killed_and_restarted_while_cut_off_is_found_on_its_new_port_after_the_heal(
    mesh: Mesh, figure
) -> None:
    """The harsher case: the kernel's FIN is lost in the partition and the new records are
    announced where nobody hears them; alpha still holds the old session (a ghost) at the heal."""
    mesh.up(2)
    alpha, gamma = mesh.daemon(1, "alpha"), mesh.daemon(2, "gamma")
    alpha.port = gamma.port = OLD_PORT
    start_all(alpha, gamma)
    wait_for(lambda: alpha.connected_to() == {"gamma"}, timeout=30, what="alpha and gamma")

    mesh.cut(2)
    mark = len(alpha.log_text())
    gamma.kill()
    gamma.start(port=NEW_PORT)
    gamma.wait_ready()
    wait_for(lambda: gamma.status()["mdns"] == "running", timeout=20, what="gamma to advertise")
    assert alpha.peer("gamma")["port"] == OLD_PORT  # alpha heard nothing of the restart

    mesh.heal(2)
    t_heal = time.monotonic()

    def on_new_port() -> bool:
        row = alpha.peer("gamma")
        return (
            row is not None
            and row["status"] == "connected"
            and row["port"] == NEW_PORT
            and "alpha" in gamma.connected_to()
        )

    wait_for(on_new_port, timeout=40, what="alpha connected to gamma's new port after the heal")
    figure("heal to connected on the new port (restart during a cut)", time.monotonic() - t_heal)
    # Losing the (ghost) session makes alpha ask mDNS at once where gamma went: it must not wait
    # for the periodic query (10 s). Measured between alpha's own log lines, so the time the
    # kernel takes to notice the old connection is gone (a retransmitted FIN, or a PING answered
    # with RST) does not count.
    log = alpha.log_text()[mark:]
    lost = _log_time(log, "peer gamma: session down")
    found = _log_time(log, f"peer gamma: announced at {gamma.ip}:{NEW_PORT}")
    figure("ghost session lost to new port learned", found - lost)
    assert 0 <= found - lost < REQUERY_BOUND, log
    rows = alpha.cli_json("peers")
    assert [r["id"] for r in rows] == ["gamma"], rows
    with subscribed(gamma) as inbox:
        alpha.send("gamma", numbered("after-heal", 1), wait="acked", timeout=20)
        wait_for(lambda: inbox.numbers("after-heal") == [1], timeout=10, what="delivery")


async def test_a_session_change_wakes_discovery_after_peers_were_added(tmp_path) -> None:
    """The in-process core of the check above, without a mesh: discovery's session watcher waits
    on ``Node.sessions_changed``; adding a peer used to swap that Event unset, so the watcher
    slept on an orphan for ever and a lost session never triggered the immediate query."""
    import trio

    from acp.config import Config
    from acp.identity import load_identity
    from acp.net.node import Node
    from acp.net.peer import Peer
    from acp.store import Database

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    node = Node(Config(home=home, agent_id="alpha"), load_identity(home), Database(home / "a.db"))
    woke = trio.Event()

    async def watcher() -> None:  # as Discovery._watch_sessions
        await node.sessions_changed.wait()
        woke.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher)
            await trio.sleep(0.05)
            peer = node.add_peer(Peer("gamma", pubkey=bytes(32), host="10.0.0.3", port=7100))
            node.add_peer(Peer("delta", pubkey=bytes(32), host="10.0.0.4", port=7100))
            await trio.sleep(0.05)
            peer._changed()  # what Peer.offer / Peer.session_ended call
            with trio.move_on_after(1):
                await woke.wait()
            assert woke.is_set(), "a session change did not wake discovery's watcher"
            nursery.cancel_scope.cancel()
