"""The durable store (acp/store.py) with its real thread and a real SQLite file.

No autojump clock here: the store thread commits in real time, so every wait is bounded by
``trio.fail_after(WAIT)`` instead. ``held()`` parks the thread in a job so that whatever is
submitted meanwhile lands in one batch, which makes grouping and a batch's failure deterministic.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from acp import store
from acp.errors import ConfigError
from acp.model import encode_key
from acp.store import (
    DB_NAME,
    LEGACY_PEERS,
    MAX_BATCH,
    RECENT_MS,
    SCHEMA_VERSION,
    Database,
    InboxRow,
    Loaded,
    OutboxRow,
    PeerRecord,
    PeerStore,
    StoreError,
)

WAIT = 10.0  # seconds any one wait on the store thread may take
PUB_B = bytes(range(32))
PUB_C = bytes(range(1, 33))


def row(
    seq: int,
    sender: str | None = "agent-a",
    *,
    kind: str = "notify",
    received: int = 1_000_000,
    trust: str | None = "tofu",
    read: bool = False,
    msg_id: str | None = None,
) -> InboxRow:
    msg_id = msg_id or f"m{seq}"
    body: dict[str, Any]
    if sender is None:
        kind, trust = "event", None
        body = {"event": "undelivered", "msg_id": msg_id, "to": "agent-far", "reason": "expired"}
    else:
        body = {"v": 1, "id": msg_id, "from": sender, "to": "agent-me", "kind": kind}
    raw = json.dumps(body, separators=(",", ":")).encode()
    return InboxRow(seq, sender, msg_id, kind, received, trust, raw, read)


def insert(r: InboxRow) -> Callable[[sqlite3.Connection], None]:
    return store.insert_inbox(r, r.received if r.read else None)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def contents(path: Path) -> bytes:
    return path.read_bytes()


def put(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def peek(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the file with a connection of our own, as another process would."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def write_legacy(path: Path, peers: dict[str, dict[str, Any]]) -> bytes:
    raw = json.dumps({"version": 1, "peers": peers}).encode()
    path.write_bytes(raw)
    return raw


async def opened(path: Path, **kwargs: Any) -> tuple[Database, Loaded]:
    db = Database(path, durability=kwargs.pop("durability", "normal"))
    with trio.fail_after(WAIT):
        loaded = await db.open(**kwargs)
    return db, loaded


async def reopen(db: Database, **kwargs: Any) -> tuple[Database, Loaded]:
    with trio.fail_after(WAIT):
        await db.close()
    return await opened(db.path, **kwargs)


async def call(db: Database, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    with trio.fail_after(WAIT):
        return await db.call(fn)


def append(out: list[int], value: int) -> Callable[[object], None]:
    """A callback that records ``value`` (which job called back) in ``out``."""
    return lambda _: out.append(value)


def marker(db: Database) -> trio.Event:
    """An event set once everything submitted before it has committed and called back."""
    event = trio.Event()
    db.submit(store.nothing, lambda _: event.set())
    return event


async def wait(event: trio.Event) -> None:
    with trio.fail_after(WAIT):
        await event.wait()


@contextlib.asynccontextmanager
async def held(db: Database) -> AsyncIterator[None]:
    """Park the store thread in a job of its own until the block ends."""
    started, release = threading.Event(), threading.Event()

    def job(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(WAIT)

    db.submit(job)
    try:
        assert await trio.to_thread.run_sync(started.wait, WAIT)
        yield
    finally:
        release.set()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / DB_NAME


@pytest.fixture
async def db(path: Path) -> AsyncIterator[Database]:
    database, _ = await opened(path)
    try:
        yield database
    finally:
        with trio.fail_after(WAIT):
            await database.close()


# --- opening ----------------------------------------------------------------------------------


async def test_open_creates_the_schema(path: Path) -> None:
    old = os.umask(0)  # the file is 0600 whatever the umask
    try:
        db, loaded = await opened(path)
    finally:
        os.umask(old)
    try:
        assert (loaded.unread, loaded.last_seq, loaded.stored, loaded.recent) == ([], 0, 0, [])
        assert (loaded.outbox, loaded.last_outbox_row, loaded.imported_peers) == ([], 0, 0)
        assert len(loaded.peers) == 0
        assert SCHEMA_VERSION == 3
        assert await call(db, lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == 3
        assert await call(db, lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
        assert mode(path) == 0o600
        wal = path.with_name(path.name + "-wal")
        assert wal.exists() and mode(wal) == 0o600  # the WAL holds envelopes too
        assert peek(path, "PRAGMA user_version") == [(3,)]
        assert peek(path, "PRAGMA journal_mode") == [("wal",)]  # persistent in the file
        tables = {r[0] for r in peek(path, "SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"meta", "peers", "inbox", "outbox", "hooks", "hook_runs"} <= tables
    finally:
        with trio.fail_after(WAIT):
            await db.close()
    os.chmod(path, 0o644)
    db, _ = await opened(path)  # opening again makes it private again, and changes nothing
    try:
        assert mode(path) == 0o600
        assert await call(db, lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == 3
    finally:
        with trio.fail_after(WAIT):
            await db.close()


@pytest.mark.parametrize(("durability", "level"), [("normal", 1), ("full", 2)])
async def test_durability_sets_synchronous(path: Path, durability: str, level: int) -> None:
    db, _ = await opened(path, durability=durability)
    try:
        assert await call(db, lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == level
    finally:
        with trio.fail_after(WAIT):
            await db.close()


def test_unknown_durability_is_config_error(path: Path) -> None:
    with pytest.raises(ConfigError, match="durability"):
        Database(path, durability="paranoid")


GARBAGE = [
    b"this is not a database, it is a grocery list\n" * 100,
    b"SQLite format 3\x00" + bytes(range(256)) * 16,  # the header, then nonsense
]


@pytest.mark.parametrize("content", GARBAGE, ids=["text", "bad-header"])
async def test_corrupt_file_is_config_error_and_left_alone(path: Path, content: bytes) -> None:
    put(path, content)
    db = Database(path)
    with pytest.raises(ConfigError) as info, trio.fail_after(WAIT):
        await db.open()
    assert str(path) in info.value.message and "move it away" in info.value.message
    assert contents(path) == content
    with trio.fail_after(WAIT):
        await db.close()  # the thread is gone already: nothing to do


async def test_newer_schema_is_config_error(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")  # as a newer acp would leave it
    conn.execute("CREATE TABLE future (x)")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    before = contents(path)
    db = Database(path)
    with pytest.raises(ConfigError) as info, trio.fail_after(WAIT):
        await db.open()
    assert str(path) in info.value.message and "newer" in info.value.message
    assert "99" in info.value.message
    assert peek(path, "PRAGMA user_version") == [(99,)]
    assert contents(path) == before


# --- legacy peers.json ------------------------------------------------------------------------


async def test_legacy_peers_imported_once(tmp_path: Path, path: Path) -> None:
    legacy = tmp_path / LEGACY_PEERS
    raw = write_legacy(
        legacy,
        {"agent-b": {"pubkey": encode_key(PUB_B), "host": "10.0.0.2", "port": 7102, "ts_sent": 5}},
    )
    db, loaded = await opened(path, legacy_peers=legacy)
    assert loaded.imported_peers == 1
    assert loaded.peers.get("agent-b") == PeerRecord(PUB_B, "10.0.0.2", 7102, ts_sent=5)
    assert not loaded.peers.dirty
    assert not legacy.exists()
    imported = legacy.with_name(LEGACY_PEERS + ".imported")
    assert contents(imported) == raw

    # A peers.json that turns up again (an old acp ran meanwhile) is not read a second time.
    raw2 = write_legacy(legacy, {"agent-c": {"pubkey": encode_key(PUB_C)}})
    db, loaded = await reopen(db, legacy_peers=legacy)
    try:
        assert loaded.imported_peers == 0
        assert list(loaded.peers) == ["agent-b"]
        assert contents(legacy) == raw2 and contents(imported) == raw
    finally:
        with trio.fail_after(WAIT):
            await db.close()


async def test_absent_legacy_peers_is_fine(tmp_path: Path, path: Path) -> None:
    db, loaded = await opened(path, legacy_peers=tmp_path / LEGACY_PEERS)
    try:
        assert loaded.imported_peers == 0 and len(loaded.peers) == 0
        assert not (tmp_path / (LEGACY_PEERS + ".imported")).exists()
    finally:
        with trio.fail_after(WAIT):
            await db.close()


async def test_corrupt_legacy_peers_is_config_error(tmp_path: Path, path: Path) -> None:
    legacy = tmp_path / LEGACY_PEERS
    put(legacy, b'{"version": 1, "peers": ')
    db = Database(path)
    with pytest.raises(ConfigError) as info, trio.fail_after(WAIT):
        await db.open(legacy_peers=legacy)
    assert str(legacy) in info.value.message
    assert contents(legacy) == b'{"version": 1, "peers": '
    db, loaded = await opened(path)  # nothing was half-imported
    try:
        assert loaded.imported_peers == 0 and len(loaded.peers) == 0
    finally:
        with trio.fail_after(WAIT):
            await db.close()


async def test_legacy_peers_survive_a_batch_that_is_run_again(tmp_path: Path, path: Path) -> None:
    legacy = tmp_path / LEGACY_PEERS
    write_legacy(legacy, {"agent-b": {"pubkey": encode_key(PUB_B)}})
    db = Database(path)
    box: list[Loaded] = []

    async def open_it() -> None:
        box.append(await db.open(legacy_peers=legacy))

    try:
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery, held(db):
                nursery.start_soon(open_it)
                await trio.testing.wait_all_tasks_blocked()  # its load job is queued
                db.submit(lambda c: c.execute("INSERT INTO nowhere VALUES (1)"))  # fails
        (loaded,) = box
        assert loaded.peers.get("agent-b") is not None  # the pinned key was not lost
    finally:
        with trio.fail_after(WAIT):
            await db.close()


# --- the thread: batches, order, failures -----------------------------------------------------


async def test_callbacks_on_the_trio_thread_in_order_after_the_commit(
    db: Database, path: Path
) -> None:
    n = 2000
    trio_thread = threading.get_ident()
    observer = sqlite3.connect(path)  # another reader: sees only what is committed
    got: list[tuple[int, object, int, int]] = []
    last = trio.Event()

    def done(seq: int) -> Callable[[object], None]:
        # (A failed assert in here would be logged by the store, not raised: record, then check.)
        def callback(result: object) -> None:
            visible = observer.execute("SELECT count(*) FROM inbox WHERE seq = ?", (seq,))
            got.append((seq, result, threading.get_ident(), visible.fetchone()[0]))
            if seq == n:
                last.set()

        return callback

    commits, jobs = db.commits, db.jobs
    try:
        for seq in range(1, n + 1):
            db.submit(insert(row(seq)), done(seq))
        await wait(last)
    finally:
        observer.close()
    # In submission order, on the trio thread, each row committed (visible to another reader).
    assert got == [(seq, None, trio_thread, 1) for seq in range(1, n + 1)]
    assert db.jobs - jobs == n
    assert 1 <= db.commits - commits < n  # grouped: many jobs per commit


async def test_jobs_queued_during_a_commit_go_in_one_batch(db: Database) -> None:
    commits = db.commits
    order: list[int] = []
    async with held(db):
        for i in range(MAX_BATCH + 10):
            db.submit(store.nothing, append(order, i))
        done = marker(db)
    await wait(done)
    assert order == list(range(MAX_BATCH + 10))
    assert db.commits - commits == 3  # the held job, then MAX_BATCH, then the rest


async def test_call_returns_the_result_once_committed(db: Database, path: Path) -> None:
    await call(db, insert(row(1)))
    assert peek(path, "SELECT seq FROM inbox") == [(1,)]
    assert await call(db, lambda c: c.execute("SELECT count(*) FROM inbox").fetchone()[0]) == 1
    with pytest.raises(StoreError) as info:
        await call(db, insert(row(1)))  # the seq is taken
    assert str(path) in str(info.value)


async def test_a_failing_job_fails_only_itself(db: Database, path: Path) -> None:
    results: dict[str, object] = {}

    def record(name: str) -> Callable[[object], None]:
        return lambda result: results.__setitem__(name, result)

    def boom(conn: sqlite3.Connection) -> None:
        raise ValueError("a bug in a job")

    def bad_callback(result: object) -> None:
        raise RuntimeError("a bug in a callback")

    async with held(db):
        db.submit(insert(row(1)), record("first"))
        db.submit(insert(row(1, msg_id="copy")), record("duplicate"))
        db.submit(insert(row(2)), record("second"))
        db.submit(boom, record("boom"))
        db.submit(insert(row(3)), bad_callback)
        db.submit(insert(row(4)), record("fourth"))
        done = marker(db)
    await wait(done)
    assert results["first"] is None and results["second"] is None and results["fourth"] is None
    assert isinstance(results["duplicate"], StoreError)
    assert isinstance(results["boom"], ValueError)  # not a database error: handed back as is
    assert peek(path, "SELECT seq, msg_id FROM inbox ORDER BY seq") == [
        (1, "m1"),
        (2, "m2"),
        (3, "m3"),
        (4, "m4"),
    ]


async def test_close_finishes_queued_jobs(path: Path) -> None:
    db, _ = await opened(path)
    got: list[int] = []
    for seq in range(1, 101):
        db.submit(insert(row(seq)), append(got, seq))
    with trio.fail_after(WAIT):
        await db.close()
    assert got == list(range(1, 101))
    db, loaded = await opened(path)
    try:
        assert loaded.stored == 100 and loaded.last_seq == 100
    finally:
        with trio.fail_after(WAIT):
            await db.close()


# --- what survives a restart ------------------------------------------------------------------


async def test_reopen_gives_back_unread_last_seq_outbox_and_peers(path: Path) -> None:
    db, _ = await opened(path)
    rows = [
        row(1, "agent-b", received=1_000),
        row(2, "agent-c", kind="query", received=2_000, trust="explicit"),
        row(3, None, received=3_000),
        row(4, "agent-b", received=4_000, read=True),  # stored read (a response read at once)
        row(5, "agent-b", received=5_000, trust=None),
    ]
    for r in rows:
        db.submit(insert(r))
    assert await call(db, store.mark_read([1, 3, 99], 6_000)) == 2
    assert await call(db, store.mark_read([1], 7_000)) == 0  # already read
    out = [
        OutboxRow(1, "agent-b", "o1", False, 10_000, b"\x00wire1"),
        OutboxRow(2, "agent-c", "o2", True, 20_000, b"\x00wire2"),
        OutboxRow(3, "agent-b", "o3", False, 30_000, b"\x00wire3"),
    ]
    db.submit(store.insert_outbox(out))
    db.submit(store.delete_outbox([2]))
    peers = PeerStore()
    peers.pin("agent-b", PUB_B)
    peers.update("agent-b", host="10.0.0.2", port=7102, ts_sent=11, source="mdns")
    peers.pin("agent-c", PUB_C)
    peers.update("agent-d", host="10.0.0.4")
    await call(db, store.save_peers(peers.changes()))
    peers.forget("agent-d")
    peers.update("agent-c", ts_accepted=42)
    await call(db, store.save_peers(peers.changes()))

    db, loaded = await reopen(db)
    try:
        assert loaded.unread == [rows[1], rows[4]]
        assert loaded.last_seq == 5 and loaded.stored == 5
        assert loaded.outbox == [out[0], out[2]] and loaded.last_outbox_row == 3
        assert sorted(loaded.peers) == ["agent-b", "agent-c"]
        assert loaded.peers.get("agent-b") == PeerRecord(
            PUB_B, "10.0.0.2", 7102, ts_sent=11, source="mdns"
        )
        assert loaded.peers.get("agent-c") == PeerRecord(PUB_C, ts_accepted=42)
        assert not loaded.peers.dirty
        # Envelope ids (not events) for the dedupe window, oldest first.
        assert loaded.recent == [
            ("agent-b", "m1", 1_000),
            ("agent-c", "m2", 2_000),
            ("agent-b", "m4", 4_000),
            ("agent-b", "m5", 5_000),
        ]
    finally:
        with trio.fail_after(WAIT):
            await db.close()


async def test_recent_is_the_window_before_the_newest(path: Path) -> None:
    db, _ = await opened(path)
    newest = 100 * RECENT_MS
    db.submit(insert(row(1, received=newest - RECENT_MS - 1)))
    db.submit(insert(row(2, received=newest - RECENT_MS)))
    db.submit(insert(row(3, None, received=newest)))
    db, loaded = await reopen(db)
    try:
        assert loaded.recent == [("agent-a", "m2", newest - RECENT_MS)]
    finally:
        with trio.fail_after(WAIT):
            await db.close()


async def test_last_seq_is_not_reused_after_the_newest_rows_are_pruned(path: Path) -> None:
    db, _ = await opened(path)
    for seq in (1, 2, 3):
        db.submit(insert(row(seq)))
    assert await call(db, store.mark_read([1, 2, 3], 2_000_000)) == 3
    pruned = await call(db, store.prune_inbox(now_ms=2_000_000, keep_ms=10**9, keep_count=0))
    assert pruned == 3
    db, loaded = await reopen(db)
    try:
        assert (loaded.last_seq, loaded.stored, loaded.unread) == (3, 0, [])
        await call(db, insert(row(4)))
    finally:
        db, loaded = await reopen(db)
    try:
        assert loaded.last_seq == 4 and [r.seq for r in loaded.unread] == [4]
    finally:
        with trio.fail_after(WAIT):
            await db.close()


async def test_prune_drops_only_read_rows(db: Database, path: Path) -> None:
    day = 86_400_000
    now = 10 * day
    for seq in range(1, 9):
        db.submit(insert(row(seq, received=seq * day)))
    await call(db, store.mark_read([1, 2, 3, 5, 6, 7], now))
    # Read and older than 4 days: 1, 2, 3 go; then of the read ones left (5, 6, 7) keep 2.
    gone = await call(db, store.prune_inbox(now_ms=now, keep_ms=6 * day + 1, keep_count=2))
    assert gone == 4
    assert peek(path, "SELECT seq, read FROM inbox ORDER BY seq") == [
        (4, 0),
        (6, 1),
        (7, 1),
        (8, 0),
    ]
    assert await call(db, store.prune_inbox(now_ms=now, keep_ms=10**9, keep_count=5)) == 0


# --- reading ----------------------------------------------------------------------------------


async def test_read_inbox_filters(db: Database) -> None:
    rows = [
        row(1, "agent-b", kind="query"),
        row(2, "agent-c"),
        row(3, None),
        row(4, "agent-b", read=True),
        row(5, "agent-c", kind="query", trust=None),
        row(6, "agent-b"),
    ]
    for r in rows:
        db.submit(insert(r))

    async def read(**kw: Any) -> list[int]:
        args: dict[str, Any] = {"since": 0, "limit": 100, "kinds": None, "senders": None}
        got = await call(db, store.read_inbox(**(args | kw)))
        return [r.seq for r in got]

    assert await call(db, store.read_inbox(since=0, limit=100, kinds=None, senders=None)) == rows
    assert await read() == [1, 2, 3, 4, 5, 6]  # read ones too, oldest first
    assert await read(since=3) == [4, 5, 6]
    assert await read(limit=2) == [1, 2]
    assert await read(since=1, limit=3) == [2, 3, 4]
    assert await read(kinds=["query"]) == [1, 5]
    assert await read(kinds=["event"]) == [3]
    assert await read(kinds=["query", "event"]) == [1, 3, 5]
    assert await read(senders=["agent-b"]) == [1, 4, 6]
    assert await read(senders=["agent-b", "agent-c"]) == [1, 2, 4, 5, 6]  # not the event
    assert await read(senders=["agent-c"], kinds=["query"]) == [5]
    assert await read(senders=["agent-b"], since=1, limit=1) == [4]
    assert await read(kinds=[], senders=[]) == [1, 2, 3, 4, 5, 6]  # empty lists: no filter
    assert await read(senders=["nobody"]) == []
    assert await read(since=6) == []


async def test_a_job_submitted_after_close_is_refused_not_run(path: Path) -> None:
    """A store callback may submit while the daemon closes the store: that job must fail, not
    start a second thread (which could take the stop marker and leave the first one hanging)."""
    db = Database(path)
    with trio.fail_after(WAIT):
        await db.open()
        await db.close()
        got: list[object] = []
        db.submit(store.nothing, got.append)
        await trio.testing.wait_all_tasks_blocked()
    assert len(got) == 1 and isinstance(got[0], StoreError)
    assert db._thread is None


# --- hooks (schema version 2) -----------------------------------------------------------------


async def test_a_version_1_database_is_migrated_and_keeps_its_rows(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in store._SCHEMA_V1.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO inbox (seq, sender, msg_id, kind, received, trust, body, read) "
        "VALUES (7, 'agent-b', 'm7', 'notify', 1000, 'tofu', X'7B7D', 0)"
    )
    conn.close()
    db, loaded = await opened(path)
    try:
        assert [r.seq for r in loaded.unread] == [7] and loaded.last_seq == 7
        assert peek(path, "PRAGMA user_version") == [(3,)]
        states = await call(db, store.open_hooks(["wake"], loaded.last_seq))
        assert states["wake"].since == 7 and states["wake"].rows == []
    finally:
        with trio.fail_after(WAIT):
            await db.close()


async def test_hook_progress_survives_and_goes_with_its_read_items(db: Database, path: Path) -> None:
    for seq in (1, 2, 3):
        db.submit(insert(row(seq)))
    states = await call(db, store.open_hooks(["a", "b"], 0))
    assert {n: (s.since, s.rows) for n, s in states.items()} == {"a": (0, []), "b": (0, [])}
    done = store.HookRow(1, "done", 0, None)
    retry = store.HookRow(2, "retry", 3, 123_000)
    await call(db, store.hook_progress("a", [done, retry], '{"delivered": 1}'))
    await call(db, store.hook_progress("a", [store.HookRow(2, "retry", 4, 456_000)], "{}"))
    states = await call(db, store.open_hooks(["a", "b"], 3))
    assert states["a"].rows == [done, store.HookRow(2, "retry", 4, 456_000)]
    assert states["a"].since == 0 and states["a"].counters == "{}"
    # read items take their hook rows with them (at the next prune); a hook no longer
    # configured is forgotten, and one configured again starts afresh
    await call(db, store.mark_read([1], 2_000_000))
    await call(db, store.prune_inbox(now_ms=2_000_000, keep_ms=10**9, keep_count=10))
    assert peek(path, "SELECT hook, seq FROM hook_runs") == [("a", 2)]
    states = await call(db, store.open_hooks(["b"], 3))
    assert peek(path, "SELECT name FROM hooks") == [("b",)]
    assert peek(path, "SELECT count(*) FROM hook_runs") == [(0,)]
    states = await call(db, store.open_hooks(["a", "b"], 3))
    assert states["a"].since == 3 and states["b"].since == 0
