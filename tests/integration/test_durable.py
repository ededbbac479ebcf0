"""The durable inbox and outbox (docs/protocol.md §7, §8.1) across killed and restarted daemons.

A receiver ACKs only what it has stored, so nothing it ACKed is lost when it is killed; a sender
stores what it accepted before it replies, so nothing it accepted is lost when it is killed; and
(from, id) dedupe across restarts keeps every envelope to one copy. The inbox is read with
``inbox`` (never consuming), marked read with ``ack``, and followed with ``subscribe`` + ``since``.

Agent ids are chosen so that the receiving side has the lower one: it dials at once when it
starts (docs/protocol.md §4), so no test waits for the higher side's 10 s.
"""

from __future__ import annotations

import itertools
import json
import random
import signal
import socket
import time
from typing import Any

import pytest
from integration_harness import Daemon, Fleet, IpcLine, no_traceback, run_until_exit, wait_for

from acp.client import notify_envelope, query_envelope
from acp.errors import DaemonUnavailable, RequestFailed

TRUST_LEVELS = ("tofu", "explicit", "verified")
RETRY_SLACK = 30.0  # s for a refused envelope to be offered again (every 5 s at most) and stored


# -- helpers ------------------------------------------------------------------------------------


def send_notifies(
    d: Daemon, to: str, n: int, topic: str, *, wait: str = "accepted", last_wait: str | None = None
) -> list[str]:
    """Send ``n`` notify envelopes (data 0..n-1) over one connection; return their msg_ids.

    ``last_wait`` (e.g. ``acked``) for the last one only. Every reply must be ok.
    """
    ids = []
    with d.client() as c:
        for i in range(n):
            mode = last_wait if (last_wait is not None and i == n - 1) else wait
            args: dict[str, Any] = {"to": to, "envelope": notify_envelope(topic, i)}
            if mode != "accepted":
                args.update(wait=mode, timeout=20)
            reply = c.request("send", read_timeout=40, **args)
            if mode == "acked":
                assert reply["state"] == "acked", reply
            ids.append(reply["msg_id"])
    return ids


def envelope_ids(items: list[dict[str, Any]]) -> list[str]:
    """The envelope ids of inbox items or pushes, in their order (event items left out)."""
    return [item["envelope"]["id"] for item in items if "envelope" in item]


def seqs_of(items: list[dict[str, Any]]) -> list[int]:
    seqs = [item["seq"] for item in items]
    assert all(isinstance(s, int) and not isinstance(s, bool) for s in seqs), seqs
    return seqs


def assert_rising(seqs: list[int]) -> None:
    assert all(a < b for a, b in itertools.pairwise(seqs)), f"seq does not rise: {seqs}"


def from_peer(agent_id: str) -> dict[str, Any]:
    return {"from": [agent_id]}  # "from" is a keyword: pass it as **from_peer(...)


def queued(d: Daemon) -> int:
    n: int = d.status()["queued"]
    return n


# -- 1. what a receiver ACKed survives its death --------------------------------------------------

N_SURVIVE = 200


@pytest.mark.parametrize(
    ("sig", "durability"),
    [(signal.SIGKILL, None), (signal.SIGTERM, None), (signal.SIGKILL, "full")],
    ids=["SIGKILL", "SIGTERM", "SIGKILL-durability-full"],
)
def test_acked_envelopes_survive_the_receiver_restarting(
    fleet: Fleet, sig: signal.Signals, durability: str | None
) -> None:
    """No subscriber: N envelopes ACKed and held unread; killed right after the last ACK."""
    sender, receiver = fleet.daemon("sender"), fleet.daemon("receiver")
    if durability is not None:
        receiver.settings["durability"] = durability
    fleet.mesh(sender, receiver)

    ids = send_notifies(sender, "receiver", N_SURVIVE, "survive", last_wait="acked")
    wait_for(lambda: queued(sender) == 0, timeout=30, what="every ACK at the sender")
    receiver.restart(sig)  # the very next thing after the last ACK

    items = receiver.inbox_all()
    got = envelope_ids(items)
    assert len(got) == len(set(got)), f"{len(got) - len(set(got))} envelopes stored twice"
    stored = set(got)
    missing = [i for i, env_id in enumerate(ids) if env_id not in stored]
    assert not missing, f"{len(missing)} of {N_SURVIVE} ACKed envelopes lost, e.g. #{missing[:5]}"
    assert got == ids, "not in the order sent"
    assert [item["envelope"]["payload"]["data"] for item in items] == list(range(N_SURVIVE))
    assert_rising(seqs_of(items))
    assert not any(item["read"] for item in items)
    assert receiver.status()["unread"] == N_SURVIVE

    # The session comes back; nothing is offered again, and the receiver still knows every id:
    # a copy of the first envelope is ACKed ok and not stored again (dedupe across restarts).
    sender.wait_connected(receiver)
    first = items[0]["envelope"]
    copy = {"id": first["id"], **notify_envelope("survive", "a copy")}
    with sender.client() as c:
        for env in (copy, notify_envelope("survive", "after")):
            reply = c.request("send", to="receiver", envelope=env, wait="acked", timeout=20)
            assert reply["state"] == "acked", reply
    after = receiver.inbox_all()
    assert envelope_ids(after)[:-1] == ids, "the copy was stored, or something was lost"
    assert after[-1]["envelope"]["payload"]["data"] == "after"
    assert after[0]["envelope"]["payload"]["data"] == 0


# -- 2. what a sender accepted survives its death ----------------------------------------------


def test_queued_envelopes_survive_the_sender_restarting(fleet: Fleet) -> None:
    """N envelopes queued for a receiver that is down; the sender is killed, then restarted."""
    n = 100
    sender, receiver = fleet.daemon("sender"), fleet.daemon("receiver")
    fleet.mesh(sender, receiver)
    assert receiver.stop() == 0
    wait_for(lambda: not sender.is_connected("receiver"), timeout=15, what="the sender to notice")
    with sender.client() as c:  # what the reply says for a known peer that is down
        reply = c.request("send", to="receiver", envelope=notify_envelope("queued", "first"))
    assert reply["state"] == "queued", reply
    ids = [reply["msg_id"], *send_notifies(sender, "receiver", n - 1, "queued")]
    assert queued(sender) == n

    sender.restart(signal.SIGKILL)  # right after the last `send` reply
    assert queued(sender) == n, "the sender's outbox did not survive its restart"

    receiver.start()  # the lower agent_id dials at once
    wait_for(
        lambda: len(receiver.inbox_all()) >= n, timeout=60, what=f"{n} envelopes at the receiver"
    )
    wait_for(lambda: queued(sender) == 0, timeout=30, what="every ACK at the sender")
    items = receiver.inbox_all()
    got = envelope_ids(items)
    assert len(got) == len(set(got)), f"{len(got) - len(set(got))} envelopes stored twice"
    assert sorted(got) == sorted(ids), f"{len(set(ids) - set(got))} of {n} lost"
    assert got == ids, "not in the order sent"
    assert_rising(seqs_of(items))


def test_a_send_to_a_live_peer_that_does_not_ack_survives_the_sender_dying(fleet: Fleet) -> None:
    """The receiver is frozen (SIGSTOP): its session stays up and no ACK comes. The sender writes
    the outbox row once its 50 ms for the ACK are over and only then answers `send`; killed right
    after that answer, it still has the envelope, and delivers it once the receiver thaws."""
    sender, receiver = fleet.daemon("sender"), fleet.daemon("receiver")
    fleet.mesh(sender, receiver)
    assert receiver.proc is not None
    receiver.proc.send_signal(signal.SIGSTOP)
    try:
        with sender.client() as c:
            reply = c.request("send", to="receiver", envelope=notify_envelope("frozen", "x"))
        assert reply["state"] == "sending", reply  # on the live session: the delayed write
        sender.restart(signal.SIGKILL)  # right after the `send` reply
        assert queued(sender) == 1, "the sender lost an envelope it had answered for"
    finally:
        receiver.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: queued(sender) == 0, timeout=60, what="the ACK at the sender")
    got = envelope_ids(receiver.inbox_all())
    assert got == [reply["msg_id"]], got


# -- 3. a flood through crashes on both sides --------------------------------------------------

FLOOD = 5000
FLOOD_DEADLINE = 90.0  # s for the whole send loop, restarts included (a loaded 2-core machine)


def test_flood_through_receiver_and_sender_crashes_arrives_exactly_once(fleet: Fleet) -> None:
    """5000 sends while the receiver is SIGKILLed three times and the sender once.

    The receiver dies while envelopes stream to it (so some are stored but their ACK is lost, and
    come again); the sender dies holding a backlog for the receiver, which is down. Every id whose
    `send` reply said ok is stored exactly once, in the order sent. An id whose reply was lost
    with the killed sender may or may not arrive, but never twice.
    """
    sender, receiver = fleet.daemon("sender"), fleet.daemon("receiver")
    sender.settings["outbox_limit"] = 2 * FLOOD  # no outbox_full while the receiver is down
    receiver.settings["inbox_limit"] = 4 * FLOOD  # per-sender share 2 * FLOOD: room for all
    fleet.mesh(sender, receiver)

    def kill_receiver() -> None:  # while envelopes stream to it: some stored, not yet ACKed
        receiver.wait_ready()
        wait_for(
            lambda: sender.is_connected("receiver"), timeout=30, what="the session before a kill"
        )
        receiver.kill()

    def restart_sender() -> None:  # the receiver is down: the sender holds a backlog
        backlog = queued(sender)
        assert backlog >= 100, f"only {backlog} queued at the sender when it is killed"
        sender.kill()
        sender.start(wait=False)

    # (after this many accepted, do this)
    plan: list[tuple[int, Any]] = [
        (700, kill_receiver),
        (1000, lambda: receiver.start(wait=False)),
        (1800, kill_receiver),
        (1800, lambda: receiver.start(wait=False)),
        (2600, kill_receiver),
        (2900, restart_sender),
        (3300, lambda: receiver.start(wait=False)),
    ]
    attempted: list[str] = []
    accepted: set[str] = set()
    reconnects = 0
    deadline = time.monotonic() + FLOOD_DEADLINE
    client = sender.client()
    try:
        while len(accepted) < FLOOD:
            assert time.monotonic() < deadline, (
                f"only {len(accepted)} of {FLOOD} sends accepted in {FLOOD_DEADLINE:g} s"
            )
            while plan and len(accepted) >= plan[0][0]:
                plan.pop(0)[1]()
            env_id = f"flood-{len(attempted):05d}"
            attempted.append(env_id)
            envelope = {"id": env_id, **notify_envelope("flood", len(attempted) - 1)}
            try:
                reply = client.request("send", read_timeout=30, to="receiver", envelope=envelope)
            except (DaemonUnavailable, ValueError):  # the sender was killed: the reply is lost
                client.close()
                sender.wait_ready()
                client = sender.client()
                reconnects += 1
                continue
            except RequestFailed as exc:
                if exc.code != "outbox_full":
                    raise
                time.sleep(0.1)
                continue
            assert reply["msg_id"] == env_id, reply
            accepted.add(env_id)
    finally:
        client.close()
    assert not plan
    assert reconnects >= 1, "the sender kill did not reach the sending client"

    receiver.wait_ready()
    sender.wait_connected(receiver, timeout=30)
    wait_for(lambda: queued(sender) == 0, timeout=60, what="the sender's outbox to drain")
    items = receiver.inbox_all(unread=False)
    got = envelope_ids(items)
    assert_rising(seqs_of(items))
    counts: dict[str, int] = {}
    for env_id in got:
        counts[env_id] = counts.get(env_id, 0) + 1
    twice = sorted(k for k, v in counts.items() if v > 1)
    assert not twice, f"{len(twice)} envelopes stored more than once, e.g. {twice[:5]}"
    missing = sorted(accepted - set(got))
    assert not missing, f"{len(missing)} of {FLOOD} accepted envelopes lost, e.g. {missing[:5]}"
    order = {env_id: i for i, env_id in enumerate(attempted)}
    strangers = [env_id for env_id in got if env_id not in order]
    assert not strangers, f"stored but never sent: {strangers[:5]}"
    positions = [order[env_id] for env_id in got]
    assert positions == sorted(positions), "stored out of the order sent"


# -- 4. a subscriber that comes back with `since` -----------------------------------------------


def test_subscriber_reconnecting_with_since_misses_nothing_and_sees_nothing_twice(
    fleet: Fleet,
) -> None:
    sender, receiver = fleet.daemon("sender"), fleet.daemon("receiver")
    fleet.mesh(sender, receiver)

    first = fleet.subscribe(receiver)
    ids = send_notifies(sender, "receiver", 30, "one", last_wait="acked")
    seen = first.collect_pushes(20)  # it reads 20, then goes away with 10 it never read
    assert envelope_ids(seen) == ids[:20]
    assert_rising(seqs_of(seen))
    first.close()
    ids += send_notifies(sender, "receiver", 20, "away", last_wait="acked")

    second = fleet.subscribe(receiver, since=seen[-1]["seq"])
    back = second.collect_pushes(30)
    assert envelope_ids(back) == ids[20:], "the 10 unread and the 20 that came while it was away"
    assert back[0]["seq"] > seen[-1]["seq"]
    live_ids = send_notifies(sender, "receiver", 10, "live")
    live = second.collect_pushes(10)
    assert envelope_ids(live) == live_ids
    assert_rising(seqs_of(seen + back + live))
    assert all(push.get("trust") in TRUST_LEVELS for push in seen + back + live), live[0]
    assert second.next_push(timeout=0.5) is None, "a push twice"
    last = live[-1]["seq"]

    # The daemon dies under the subscriber; what was queued meanwhile comes after its restart.
    receiver.kill()
    wait_for(lambda: not sender.is_connected("receiver"), timeout=15, what="the sender to notice")
    down_ids = send_notifies(sender, "receiver", 10, "down")
    receiver.start()
    third = fleet.subscribe(receiver, since=last)
    later = third.collect_pushes(10, timeout=30)
    assert envelope_ids(later) == down_ids
    assert later[0]["seq"] > last
    assert third.next_push(timeout=0.5) is None, "a push twice"

    # Pushes consume nothing: every one of them is still unread.
    assert envelope_ids(receiver.inbox_all()) == ids + live_ids + down_ids


# -- 5. one sender cannot fill the inbox for everyone ------------------------------------------


def test_a_sender_past_its_share_waits_and_others_still_get_in(fleet: Fleet) -> None:
    rx, a, b = fleet.daemon("rx"), fleet.daemon("tx-a"), fleet.daemon("tx-b")
    rx.settings.update(inbox_limit=20, inbox_per_sender=10)
    rx.knows(a, b)
    a.knows(rx)
    b.knows(rx)
    fleet.start(rx, a, b)  # "rx" is the lowest agent_id: it dials both
    rx.wait_connected(a, b)

    a_ids = send_notifies(a, "rx", 15, "a")
    wait_for(
        lambda: len(rx.inbox_all(**from_peer("tx-a"))) >= 10, timeout=20, what="A's share stored"
    )
    wait_for(lambda: queued(a) == 5, timeout=20, what="A to hold the 5 refused (inbox_full)")
    assert envelope_ids(rx.inbox_all(**from_peer("tx-a"))) == a_ids[:10]

    # B still gets in, at once: A's excess does not take B's room.
    b_ids = send_notifies(b, "rx", 5, "b", wait="acked")
    assert envelope_ids(rx.inbox_all(**from_peer("tx-b"))) == b_ids
    assert queued(a) == 5, "A's refused envelopes were dropped, not kept for a later offer"
    assert len(rx.inbox_all(**from_peer("tx-a"))) == 10

    # The receiver's client reads A's: A's share frees up and the rest arrive at A's next offer.
    assert rx.call("ack", ids=a_ids[:10])["acked"] == 10
    wait_for(
        lambda: envelope_ids(rx.inbox_all(**from_peer("tx-a"))) == a_ids[10:],
        timeout=RETRY_SLACK,
        what="A's 5 refused envelopes offered again and stored",
    )
    wait_for(lambda: queued(a) == 0, timeout=10, what="A's outbox to drain")
    everything = rx.inbox_all(unread=False, **from_peer("tx-a"))
    assert envelope_ids(everything) == a_ids, "A's envelopes: lost, duplicated or out of order"
    assert [item["read"] for item in everything] == [True] * 10 + [False] * 5
    assert rx.status()["unread"] == 10  # A's 5 and B's 5


# -- 6. ack, read flags, filters, paging, wait; seq across a restart ------------------------


def test_ack_by_ids_and_up_to_and_seq_never_reused_across_a_restart(fleet: Fleet) -> None:
    sender, receiver = fleet.daemon("sender"), fleet.daemon("receiver")
    fleet.mesh(sender, receiver)
    started_ms = int(time.time() * 1000)
    ids = []
    with sender.client() as c:
        for i in range(10):
            env = query_envelope(f"q{i}") if i in (2, 7) else notify_envelope("n", i)
            reply = c.request("send", to="receiver", envelope=env, wait="acked", timeout=20)
            ids.append(reply["msg_id"])

    items = receiver.inbox_all()
    assert envelope_ids(items) == ids
    seqs = seqs_of(items)
    assert_rising(seqs)
    now_ms = int(time.time() * 1000)
    for item in items:
        assert item["read"] is False, item
        assert started_ms - 60_000 <= item["received"] <= now_ms + 60_000, item
        assert item["trust"] in TRUST_LEVELS, item
        assert item["envelope"]["from"] == "sender" and item["envelope"]["to"] == "receiver"
    st = receiver.status()
    assert (st["unread"], st["stored"]) == (10, 10), st

    # filters, the default limit, paging with since and limit
    assert envelope_ids(receiver.inbox_all(kinds=["query"])) == [ids[2], ids[7]]
    assert receiver.inbox_all(**from_peer("someone-else")) == []
    assert envelope_ids(receiver.inbox_all(**from_peer("sender"))) == ids
    assert envelope_ids(receiver.inbox()["messages"]) == ids  # default: unread, limit 100
    page = receiver.inbox(limit=3)
    assert envelope_ids(page["messages"]) == ids[:3] and page["next"] == seqs[2]
    page = receiver.inbox(limit=3, since=page["next"])
    assert envelope_ids(page["messages"]) == ids[3:6] and page["next"] == seqs[5]
    page = receiver.inbox(since=seqs[-1])
    assert page["messages"] == [] and page["next"] == seqs[-1]

    # ack by ids: counts only what changed from unread to read; unknown ids are no error
    assert receiver.call("ack", ids=[*ids[:3], "no-such-id"])["acked"] == 3
    assert receiver.call("ack", ids=ids[:3])["acked"] == 0
    # ack up_to a seq
    assert receiver.call("ack", up_to=seqs[5])["acked"] == 3
    assert receiver.call("ack", up_to=seqs[5])["acked"] == 0
    assert envelope_ids(receiver.inbox_all()) == ids[6:]
    everything = receiver.inbox_all(unread=False)
    assert envelope_ids(everything) == ids
    assert [item["read"] for item in everything] == [True] * 6 + [False] * 4
    assert receiver.status()["unread"] == 4
    before = [(item["seq"], item["envelope"]["id"], item["read"]) for item in everything]

    # A restart keeps every item, its seq and its read mark; new ones get higher seqs.
    receiver.restart(signal.SIGKILL)
    after = [(i["seq"], i["envelope"]["id"], i["read"]) for i in receiver.inbox_all(unread=False)]
    assert after == before
    assert receiver.status()["unread"] == 4

    # `wait`: a reader blocked on an empty result gets the next envelope once it is stored.
    line = IpcLine(receiver.socket_path)
    try:
        line.send({"cmd": "inbox", "since": seqs[-1], "wait": 30, "req": "w"})
        time.sleep(0.2)  # let the request reach the daemon first (either order is correct)
        (new_id,) = send_notifies(sender, "receiver", 1, "new", wait="acked")
        reply = line.reply("w", timeout=45)
    finally:
        line.close()
    assert reply["ok"] is True, reply
    assert envelope_ids(reply["messages"]) == [new_id]
    new_seq = reply["messages"][0]["seq"]
    assert new_seq > seqs[-1] and reply["next"] == new_seq
    # ... and one with nothing to come gets an empty reply when the wait is up
    empty = receiver.inbox(since=new_seq, wait=1)
    assert empty["messages"] == [] and empty["next"] == new_seq

    more = send_notifies(sender, "receiver", 3, "more", wait="acked")
    items = receiver.inbox_all(unread=False)
    assert envelope_ids(items) == [*ids, new_id, *more]
    assert_rising(seqs_of(items))
    assert receiver.status()["unread"] == 4 + 1 + 3
    assert receiver.call("ack", up_to=items[-1]["seq"])["acked"] == 8
    assert receiver.inbox_all() == []


# -- 7. an undelivered outcome waits for a client that was not there ------------------------------


def test_undelivered_outcome_is_stored_for_a_client_that_connects_later(fleet: Fleet) -> None:
    sender, receiver = fleet.daemon("sender"), fleet.daemon("receiver")  # the receiver stays down
    sender.settings["outbox_ttl"] = 2
    sender.knows(receiver)
    sender.start()
    with sender.client() as c:  # the sending client leaves before the TTL ends
        reply = c.request("send", to="receiver", envelope=notify_envelope("lost", 1))
    assert reply["state"] == "queued"
    msg_id = reply["msg_id"]

    def event_item() -> dict[str, Any] | None:
        for item in sender.inbox_all():
            if "event" in item and item["event"].get("msg_id") == msg_id:
                return item
        return None

    item = wait_for(event_item, timeout=30, what="the undelivered event in the sender's inbox")
    event = item["event"]
    assert (event["event"], event["to"], event["reason"]) == ("undelivered", "receiver", "expired")
    assert isinstance(item["seq"], int)
    assert "envelope" not in item
    assert queued(sender) == 0

    # stored, not just remembered: it outlives the daemon
    sender.restart(signal.SIGKILL)
    kept = event_item()
    assert kept is not None, "the undelivered event was lost with the daemon"
    assert (kept["seq"], kept["event"]) == (item["seq"], item["event"])


# -- 8. a corrupt database stops the daemon -------------------------------------------------


@pytest.mark.parametrize("how", ["garbage", "garbage-after-header"])
def test_corrupt_database_exits_78_naming_it(fleet: Fleet, how: str) -> None:
    d = fleet.daemon("agent-a")
    db = d.home / "acp.db"
    noise = random.Random(78)
    if how == "garbage":
        db.write_bytes(noise.randbytes(16384))
    else:  # a real database whose pages after the 100-byte header are overwritten
        d.start()
        assert d.stop() == 0
        assert db.exists(), "the daemon made no acp.db"
        for name in ("acp.db-wal", "acp.db-shm", "acp.db-journal"):
            (d.home / name).unlink(missing_ok=True)
        data = db.read_bytes()
        header = data[:100] if len(data) >= 100 else b"SQLite format 3\x00"
        db.write_bytes(header + noise.randbytes(max(len(data), 8192) - len(header)))
    before = db.read_bytes()
    inode = db.stat().st_ino

    out = run_until_exit(d)
    assert out.returncode == 78, out
    assert str(db) in out.stderr, out.stderr
    assert no_traceback(out.stderr), out.stderr
    assert db.stat().st_ino == inode and db.read_bytes() == before, "acp.db was replaced"
    assert not d.socket_path.exists()


# -- 9. pins in an old peers.json survive the upgrade --------------------------------------------


def test_pins_in_an_existing_peers_json_are_imported(fleet: Fleet) -> None:
    # "bravo" < "zulu": B (and the impostor) dial the upgraded daemon at once
    upgraded, b = fleet.daemon("zulu"), fleet.daemon("bravo")
    impostor = fleet.daemon("bravo", name="impostor")
    peers_json = upgraded.home / "peers.json"
    record = {
        "pubkey": b.pubkey,
        "host": "127.0.0.1",
        "port": b.port,
        "last_seen": int(time.time() * 1000) - 60_000,
        "source": "mdns",
    }
    peers_json.write_text(json.dumps({"version": 1, "peers": {"bravo": record}}, indent=1))
    peers_json.chmod(0o600)
    db = upgraded.home / "acp.db"
    assert not db.exists()

    upgraded.start()  # an empty database and a peers.json: imported
    row = upgraded.peer("bravo")
    assert row is not None and row["pubkey"] == b.pubkey, row
    assert db.exists(), "no acp.db after the first start"

    # The pin lives in the database now: it outlives peers.json.
    assert upgraded.stop() == 0
    peers_json.unlink(missing_ok=True)
    upgraded.start()
    row = upgraded.peer("bravo")
    assert row is not None and row["pubkey"] == b.pubkey, row

    # ... and it is honoured: another key for "bravo" is refused (tofu pins only the unknown)
    impostor.knows(upgraded)
    impostor.start()
    wait_for(
        lambda: upgraded.counters().get("handshakes_refused.key_mismatch", 0) >= 1,
        timeout=15,
        what="the impostor's handshake refused",
    )
    assert not upgraded.is_connected("bravo")
    impostor.stop()
    b.knows(upgraded)
    b.start()
    upgraded.wait_connected(b)
    with b.client() as c:
        reply = c.request(
            "send", to="zulu", envelope=notify_envelope("pinned", 1), wait="acked", timeout=20
        )
    assert reply["state"] == "acked", reply
    row = upgraded.peer("bravo")
    assert row is not None and row["pubkey"] == b.pubkey, row


def test_a_client_that_half_closes_still_gets_the_replies_that_wait_for_a_commit(
    fleet: Fleet,
) -> None:
    """`printf '{"cmd":"ack",...}' | nc -N -U acp.sock`: the reply follows the commit, and the
    client's EOF must not close the connection before it."""
    alpha = fleet.daemon("alpha")
    alpha.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(alpha.socket_path))
        s.sendall(b'{"cmd":"ack","up_to":5,"req":1}\n{"cmd":"status","req":2}\n')
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    replies = {json.loads(line)["req"]: json.loads(line) for line in data.splitlines()}
    assert replies[1] == {"ok": True, "acked": 0, "req": 1}
    assert replies[2]["ok"] is True
