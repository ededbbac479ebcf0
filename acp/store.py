"""The durable store: one SQLite database, ``$ACP_HOME/acp.db``, owned by one thread.

Why a thread of its own: a ``sqlite3`` connection refuses calls from a thread other than the one
that made it, and trio's worker pool moves calls between threads; and a commit (an fsync with
``durability = "full"``) must never stall the event loop. So the daemon hands this thread jobs
through a queue (``Database.submit``): plain functions of the connection. The thread takes
everything that is queued, runs it in one transaction, commits once, then hands each job's result
back to the trio thread, in submission order, with ``TrioToken.run_sync_soon``. Grouping the jobs
that arrived while the last commit ran is what keeps throughput from falling to one commit per
message; the order of the callbacks is what lets the daemon reason about "committed before".

What is kept (schema version 3, ``PRAGMA user_version``):

- ``peers``: one row per peer, the JSON of a ``PeerRecord`` (pinned key, last address, the handshake
  ``ts`` counters of docs/protocol.md §4). Imported once from the ``peers.json`` of earlier versions.
- ``inbox``: every inbound envelope the daemon ACKed ok, and every ``undelivered`` outcome of our
  own sends, numbered by ``seq`` (AUTOINCREMENT: never reused, even after the newest row is pruned),
  unread until a local client acks it (docs/protocol.md §8.1). Read rows are kept for a while and then
  pruned; they are also the dedupe memory that survives a restart (§6).
- ``outbox``: envelopes accepted from local clients and not yet ACKed by their peer (§7).
- ``hooks`` and ``hook_runs`` (version 2): per hook, the seq it started at and its counters, and
  per unread item what that hook finished (handed over, given up on) or is retrying
  (docs/hooks.md). Rows of read items go when read items are pruned.
- ``key_floors`` and ``blocked`` (version 3): the last accepted handshake ``ts`` of keys that are
  no longer pinned (so a recorded message 1 stays a replay after `acp forget`), and `acp block`.

Durability: WAL with ``synchronous=NORMAL`` (default) survives a killed daemon, since a commit is in
the WAL, in the OS's cache, before the call returns; ``durability = "full"`` (``synchronous=FULL``)
also syncs the WAL at each commit, so a commit survives power loss.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs
import trio

from acp.config import DURABILITY
from acp.errors import ConfigError
from acp.model import decode_key, encode_key, is_agent_id
from acp.proto.handshake import EXPLICIT_SOURCES  # pins the user made: never pruned

if TYPE_CHECKING:
    from acp.net.eager import EagerWrites

log = logging.getLogger(__name__)

DB_NAME = "acp.db"
LEGACY_PEERS = "peers.json"  # before the database: read once, then renamed
SCHEMA_VERSION = 3
MAX_BATCH = 4096  # jobs in one transaction at most
WAL_SIZE_LIMIT = 16 << 20  # bytes the WAL file keeps after a checkpoint

R = TypeVar("R")

_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE peers (agent_id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sender TEXT,                -- NULL for an event (an outcome of our own send)
    msg_id TEXT NOT NULL,
    kind TEXT NOT NULL,         -- the envelope's kind, or 'event'
    received INTEGER NOT NULL,  -- unix ms
    trust TEXT,
    body BLOB NOT NULL,         -- the envelope's JSON as received (on one line), or the event's
    read INTEGER NOT NULL DEFAULT 0,
    read_at INTEGER
);
CREATE INDEX inbox_sender_id ON inbox (sender, msg_id);
CREATE INDEX inbox_unread ON inbox (seq) WHERE read = 0;
CREATE TABLE outbox (
    row INTEGER PRIMARY KEY,
    peer TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    urgent INTEGER NOT NULL,
    deadline INTEGER NOT NULL,  -- unix ms
    wire BLOB NOT NULL
);
"""

_SCHEMA_V2 = """
CREATE TABLE hooks (
    name TEXT PRIMARY KEY,
    since INTEGER NOT NULL,     -- the hook fires for items above this seq (stored after it began)
    counters TEXT NOT NULL      -- JSON: what `acp hooks` reports
);
CREATE TABLE hook_runs (
    hook TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,        -- done | gave_up | retry
    attempts INTEGER NOT NULL,
    not_before INTEGER,         -- unix ms: a retry's earliest time
    PRIMARY KEY (hook, seq)
) WITHOUT ROWID;
"""

_SCHEMA_V3 = """
CREATE TABLE key_floors (pubkey BLOB PRIMARY KEY, ts INTEGER NOT NULL);
CREATE TABLE blocked (agent_id TEXT PRIMARY KEY, since INTEGER NOT NULL);
"""


# -- peers ------------------------------------------------------------------------------------------


@attrs.define
class PeerRecord:
    """What survives a restart about one peer (docs/protocol.md §2, §4).

    ``ts_sent`` is the last handshake ``ts`` we sent to that peer; ``ts_accepted`` the last one we
    accepted from its pinned key, reset when the pin changes. ``verified`` is the key a person
    confirmed with `acp verify --confirm` (§9): the pin is verified only while it is that key, and
    a new pin clears it.
    """

    pubkey: bytes | None = attrs.field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    last_seen: int | None = None
    ts_sent: int | None = None
    ts_accepted: int | None = None
    source: str | None = None
    proven: bool | None = None  # a session with it lasted 5 s: never dropped by the pin cap
    verified: bytes | None = attrs.field(default=None, repr=False)

    @property
    def is_verified(self) -> bool:
        """True if the pinned key is the one a person verified."""
        return self.verified is not None and self.verified == self.pubkey

    def to_json(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["pubkey"] = encode_key(self.pubkey) if self.pubkey else None
        out["verified"] = encode_key(self.verified) if self.verified else None
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_json(cls, data: object, where: str) -> PeerRecord:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected an object")

        def opt(key: str, kind: type) -> Any:
            value = data.get(key)
            if value is None:
                return None
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"{where}: {key} has the wrong type")
            return value

        pub = data.get("pubkey")
        verified = data.get("verified")  # the key a person verified (§9)
        return cls(
            pubkey=decode_key(pub, what=f"{where} pubkey") if pub is not None else None,
            host=opt("host", str),
            port=opt("port", int),
            last_seen=opt("last_seen", int),
            ts_sent=opt("ts_sent", int),
            ts_accepted=opt("ts_accepted", int),
            source=opt("source", str),
            proven=opt("proven", bool),
            verified=None if verified is None else decode_key(verified, what=f"{where} verified"),
        )


MAX_FLOORS = 4096  # replay floors of keys no longer pinned


class PeerStore:
    """The peer table in memory; what changed is written by ``Database.save_peers``.

    Reads are plain dict look-ups on the event loop; ``changes()`` hands the rows changed since the
    last call to whoever writes them, so nothing here touches the disk.
    """

    def __init__(self) -> None:
        self._peers: dict[str, PeerRecord] = {}
        self._changed: set[str] = set()
        # the last accepted handshake ts of keys no longer pinned (forgotten, replaced, pruned):
        # a recorded message 1 of such a key stays a replay (docs/protocol.md §4)
        self.floors: dict[bytes, int] = {}
        self.blocked: dict[str, int] = {}  # agent_id -> since (unix ms): `acp block`
        self._floors_changed: set[bytes] = set()
        self._blocked_changed: set[str] = set()

    @property
    def dirty(self) -> bool:
        return bool(self._changed or self._floors_changed or self._blocked_changed)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._peers))

    def __contains__(self, agent_id: str) -> bool:
        return agent_id in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, agent_id: str) -> PeerRecord | None:
        return self._peers.get(agent_id)

    def record(self, agent_id: str) -> PeerRecord:
        rec = self._peers.get(agent_id)
        if rec is None:
            rec = self._peers[agent_id] = PeerRecord()
        return rec

    def pin(self, agent_id: str, pubkey: bytes) -> None:
        rec = self.record(agent_id)
        if rec.pubkey != pubkey:
            self._keep_floor(rec)
            rec.pubkey = pubkey
            rec.ts_accepted = self.floors.get(pubkey)  # the replay counter belongs to the key
            rec.verified = None  # and so does a verification: a new key is never verified
            self._changed.add(agent_id)

    def floor(self, pubkey: bytes) -> int | None:
        """The last handshake ts accepted from a key that is not pinned now."""
        return self.floors.get(pubkey)

    def _keep_floor(self, rec: PeerRecord) -> None:
        if rec.pubkey is None or rec.ts_accepted is None:
            return
        if rec.ts_accepted > self.floors.get(rec.pubkey, -1):
            self.floors.pop(rec.pubkey, None)  # to the end: the table is in the order kept
            self.floors[rec.pubkey] = rec.ts_accepted
            self._floors_changed.add(rec.pubkey)
        while len(self.floors) > MAX_FLOORS:  # the first kept go (not the lowest ts: a peer
            oldest = next(iter(self.floors))  # picks its ts, and could push real ones out)
            del self.floors[oldest]
            self._floors_changed.add(oldest)

    def block(self, agent_id: str, now_ms: int) -> None:
        if agent_id not in self.blocked:
            self.blocked[agent_id] = now_ms
            self._blocked_changed.add(agent_id)

    def unblock(self, agent_id: str) -> bool:
        if self.blocked.pop(agent_id, None) is None:
            return False
        self._blocked_changed.add(agent_id)
        return True

    def table_changes(self) -> tuple[dict[bytes, int | None], dict[str, int | None]]:
        """Floors and blocks changed since the last call (None: deleted)."""
        floors = {k: self.floors.get(k) for k in self._floors_changed}
        blocked = {a: self.blocked.get(a) for a in self._blocked_changed}
        self._floors_changed.clear()
        self._blocked_changed.clear()
        return floors, blocked

    def update(self, agent_id: str, **fields: Any) -> None:
        rec = self.record(agent_id)
        for key, value in fields.items():
            if getattr(rec, key) != value:
                setattr(rec, key, value)
                self._changed.add(agent_id)

    def pinned(self) -> int:
        return sum(1 for rec in self._peers.values() if rec.pubkey is not None)

    def tofu_victim(self, keep: Callable[[str], bool]) -> str | None:
        """A pin the cap may drop to make room for a stranger's, or None.

        Only pins taken on first contact that never had a lasting session qualify (oldest first;
        the table keeps pinning order, so the first one found is it), and not those ``keep``
        protects (connected, or with envelopes queued). A pin that proved itself, and any pin
        the user made, is never dropped automatically: otherwise a flood of identities could
        push out a real peer that is offline, and then claim its agent_id.
        """
        for agent_id, rec in self._peers.items():
            if rec.pubkey is None or rec.source in EXPLICIT_SOURCES or rec.is_verified:
                continue
            if rec.proven or (rec.proven is None and (rec.last_seen or rec.ts_accepted)):
                continue  # (None: pinned before acp kept `proven`, and it had a session)
            if not keep(agent_id):
                return agent_id
        return None

    def forget(self, agent_id: str) -> bool:
        rec = self._peers.pop(agent_id, None)
        if rec is None:
            return False
        self._keep_floor(rec)
        self._changed.add(agent_id)
        return True

    def changes(self) -> dict[str, str | None]:
        """Rows changed since the last call: agent_id -> record JSON, or None if forgotten."""
        out: dict[str, str | None] = {}
        for agent_id in self._changed:
            rec = self._peers.get(agent_id)
            out[agent_id] = json.dumps(rec.to_json(), sort_keys=True) if rec else None
        self._changed.clear()
        return out

    def load_rows(self, rows: list[tuple[str, str]], where: str) -> None:
        for agent_id, text in rows:
            if not is_agent_id(agent_id):
                raise ConfigError(f"{where}: {agent_id!r} is not a valid agent_id")
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"{where}: peer {agent_id!r}: not valid JSON") from exc
            self._peers[agent_id] = PeerRecord.from_json(data, f"{where} peer {agent_id!r}")


def read_legacy_peers(path: Path) -> dict[str, PeerRecord]:
    """The ``peers.json`` of acp before the database (version 1 of that file); {} if absent."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(
            f"{path}: not valid JSON ({exc}); fix it or move it away (pinned keys are lost with it)"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("peers", {}), dict):
        raise ConfigError(f'{path}: expected {{"version": 1, "peers": {{...}}}}')
    out = {}
    for agent_id, rec in data.get("peers", {}).items():
        if not is_agent_id(agent_id):
            raise ConfigError(f"{path}: {agent_id!r} is not a valid agent_id")
        out[agent_id] = PeerRecord.from_json(rec, f"{path} peer {agent_id!r}")
    return out


# -- rows -------------------------------------------------------------------------------------------


@attrs.frozen
class InboxRow:
    seq: int
    sender: str | None
    msg_id: str
    kind: str
    received: int
    trust: str | None
    body: bytes
    read: bool


@attrs.frozen
class OutboxRow:
    row: int
    peer: str
    msg_id: str
    urgent: bool
    deadline: int  # unix ms
    wire: bytes


@attrs.frozen
class Loaded:
    """Everything the daemon needs from the database at start-up."""

    peers: PeerStore
    unread: list[InboxRow]
    last_seq: int
    stored: int
    recent: list[tuple[str, str, int]]  # (sender, msg_id, received ms) of the dedupe window
    outbox: list[OutboxRow]
    last_outbox_row: int
    imported_peers: int  # rows read from a legacy peers.json at this start


_INBOX_COLS = "seq, sender, msg_id, kind, received, trust, body, read"


def _inbox_row(r: tuple[Any, ...]) -> InboxRow:
    return InboxRow(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), bool(r[7]))


# -- the thread -------------------------------------------------------------------------------------


class _Job(Generic[R]):
    __slots__ = ("done", "fn")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], R],
        done: Callable[[R | BaseException], None] | None,
    ) -> None:
        self.fn = fn
        self.done = done


_STOP = object()


class _HandOver(trio.abc.Instrument):
    """``Database.hand_over_when_idle``: queued jobs go to the thread before trio waits for I/O."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def before_io_wait(self, timeout: float) -> None:
        self.db._hand_over()


class StoreError(Exception):
    """A job failed because the database could not be written (disk full, I/O error)."""


class Database:
    """One SQLite connection in one thread; jobs in, results back on the trio thread in order."""

    def __init__(self, path: Path, *, durability: str = "normal") -> None:
        if durability not in DURABILITY:
            raise ConfigError(f"durability must be one of {', '.join(DURABILITY)}")
        self.path = path
        self.durability = durability
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: Any = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        # entered around each group of callbacks: the node's EagerWrites (acp/net/eager.py)
        self.callbacks_in: EagerWrites | None = None
        self._held: list[_Job[Any]] | None = None  # jobs for the thread once trio goes idle
        self._idle: _HandOver | None = None
        self.commits = 0  # transactions committed (how well jobs are grouped)
        self.jobs = 0

    # -- the trio side -----------------------------------------------------------------------

    async def open(self, *, legacy_peers: Path | None = None) -> Loaded:
        """Start the thread, open (or create, or migrate) the database and read what it holds.

        Raises ConfigError naming the file if it is not a database we can use.
        """
        try:
            loaded = await self.call(lambda conn: self._load(conn, legacy_peers))
            if loaded.imported_peers and legacy_peers is not None:
                # only now that the import is committed: a batch run again must find the file
                try:
                    os.replace(
                        legacy_peers, legacy_peers.with_name(legacy_peers.name + ".imported")
                    )
                except OSError:
                    pass
            return loaded
        except StoreError as exc:
            await self.close()
            raise self._unusable(exc) from None
        except BaseException:
            await self.close()
            raise

    def submit(
        self,
        fn: Callable[[sqlite3.Connection], R],
        done: Callable[[R | BaseException], None] | None = None,
    ) -> None:
        """Queue ``fn`` for the next transaction; ``done(result or exception)`` runs afterwards
        on the trio thread, after the commit, in submission order. Never blocks."""
        if self._closed:  # late jobs of a daemon that is stopping: refused, never run
            if done is not None:
                exc = StoreError(f"{self.path}: the store is closed")
                trio.lowlevel.current_trio_token().run_sync_soon(_deliver, [(done, exc)])
            return
        if self._thread is None:
            self._start()
        if self._held is not None:
            self._held.append(_Job(fn, done))
        else:
            self._queue.put(_Job(fn, done))

    def hand_over_when_idle(self) -> None:
        """From now on, jobs reach the thread when trio's loop is about to wait for I/O, all of
        that loop iteration's in one queue item, instead of one by one as they are submitted.

        Why: the thread, once woken, takes the GIL the next time the loop lets go of it, which is
        at every socket call and every PyNaCl call: a job handed over mid-iteration made the
        writes that follow it (the frame to the peer) wait for the thread's Python code. Just
        before ``epoll_wait`` the loop has nothing left to do, so the thread runs at once and the
        loop loses nothing. A trio instrument (``before_io_wait``) is that moment.
        """
        if self._idle is None:
            self._held = []
            self._idle = _HandOver(self)
            trio.lowlevel.add_instrument(self._idle)

    def _hand_over(self) -> None:
        held = self._held
        if held:
            self._held = []
            self._queue.put(held)  # one wake-up of the thread for all of them

    def _start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._run, name="acp-store", daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        """Run ``fn`` in the next transaction and return its result once committed."""
        box: list[Any] = []
        event = trio.Event()

        def done(result: Any) -> None:
            box.append(result)
            event.set()

        self.submit(fn, done)
        await event.wait()
        result = box[0]
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Finish every queued job, then stop the thread."""
        self._closed = True
        if self._idle is not None:
            self._hand_over()
            self._held, idle, self._idle = None, self._idle, None
            try:
                trio.lowlevel.remove_instrument(idle)
            except (KeyError, RuntimeError):  # removed already (trio drops one that raised)
                pass
        if self._thread is None:
            return
        self._queue.put(_STOP)
        thread, self._thread = self._thread, None
        await trio.to_thread.run_sync(thread.join)

    # -- the store thread --------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            batch: list[_Job[Any]] = item if isinstance(item, list) else [item]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                if isinstance(item, list):
                    batch.extend(item)
                else:
                    batch.append(item)
            results = self._run_batch(batch)
            self._post(batch, results)
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
            except sqlite3.Error as exc:
                raise self._unusable(exc) from None
            try:
                # read the schema version before anything writes: a file that is not a database,
                # or one from a newer acp, is refused as it is
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    conn.close()
                    raise ConfigError(
                        f"{self.path}: written by a newer acp (schema {version}, this one knows "
                        f"{SCHEMA_VERSION}); upgrade acp, or move the file away"
                    )
                os.chmod(self.path, 0o600)
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode != "wal":
                    raise sqlite3.DatabaseError(f"cannot switch to WAL (journal mode {mode})")
                sync = "FULL" if self.durability == "full" else "NORMAL"
                conn.execute(f"PRAGMA synchronous={sync}")
                conn.execute("PRAGMA busy_timeout=5000")
                # a checkpointed WAL is cut back to this size instead of keeping its largest size
                conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            except (sqlite3.Error, OSError) as exc:
                conn.close()
                raise self._unusable(exc) from None
            self._conn = conn
        return self._conn

    def _unusable(self, exc: BaseException) -> ConfigError:
        return ConfigError(
            f"{self.path}: cannot use the acp database ({exc}); it is left as it is: move it "
            "away to start with an empty one (its unread envelopes and pinned keys go with it)"
        )

    def _run_batch(self, batch: list[_Job[Any]]) -> list[Any]:
        try:
            conn = self._connection()
        except ConfigError as exc:
            return [exc] * len(batch)
        results = self._transaction(conn, batch)
        if results is not None:
            return results
        # Something in the batch failed: run each job alone so one bad job fails only itself.
        return [self._single(conn, job) for job in batch]

    def _transaction(self, conn: sqlite3.Connection, batch: list[_Job[Any]]) -> list[Any] | None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [job.fn(conn) for job in batch]
            conn.execute("COMMIT")
        except Exception as exc:
            self._rollback(conn)
            if len(batch) == 1:
                return [self._wrap(exc)]
            return None
        self.commits += 1
        self.jobs += len(batch)
        return results

    def _single(self, conn: sqlite3.Connection, job: _Job[Any]) -> Any:
        out = self._transaction(conn, [job])
        assert out is not None
        return out[0]

    def _wrap(self, exc: Exception) -> BaseException:
        if isinstance(exc, ConfigError):
            return exc
        if isinstance(exc, sqlite3.Error):
            return StoreError(f"{self.path}: {exc}")
        log.error("store job failed: %r", exc, exc_info=exc)
        return exc

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _post(self, batch: list[_Job[Any]], results: list[Any]) -> None:
        calls = [(job.done, res) for job, res in zip(batch, results, strict=True) if job.done]
        if not calls:
            return
        try:
            self._token.run_sync_soon(self._callbacks, calls)
        except RuntimeError:  # trio.RunFinishedError: nobody is left to tell
            pass

    def _callbacks(self, calls: list[tuple[Callable[[Any], None], Any]]) -> None:
        with self.callbacks_in or nullcontext():
            _deliver(calls)

    # -- jobs (run in the store thread) ------------------------------------------------------

    def _load(self, conn: sqlite3.Connection, legacy: Path | None) -> Loaded:
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path}: written by a newer acp (schema {version}, this one knows "
                    f"{SCHEMA_VERSION}); upgrade acp, or move the file away"
                )
            steps = ((1, _SCHEMA_V1), (2, _SCHEMA_V2), (3, _SCHEMA_V3))
            for step, schema in steps:  # each step in this transaction
                if version < step:
                    for statement in schema.split(";"):
                        if statement.strip():
                            conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            peers = PeerStore()
            imported = 0
            done = conn.execute("SELECT value FROM meta WHERE key='legacy_peers'").fetchone()
            if legacy is not None and done is None:
                for agent_id, rec in read_legacy_peers(legacy).items():
                    conn.execute(
                        "INSERT OR REPLACE INTO peers VALUES (?, ?)",
                        (agent_id, json.dumps(rec.to_json(), sort_keys=True)),
                    )
                    imported += 1
                conn.execute("INSERT INTO meta VALUES ('legacy_peers', 'imported')")
            peers.load_rows(
                conn.execute("SELECT agent_id, record FROM peers").fetchall(), str(self.path)
            )
            peers.floors = {bytes(k): ts for k, ts in conn.execute("SELECT * FROM key_floors")}
            peers.blocked = dict(conn.execute("SELECT agent_id, since FROM blocked").fetchall())
            unread = [
                _inbox_row(r)
                for r in conn.execute(
                    f"SELECT {_INBOX_COLS} FROM inbox WHERE read = 0 ORDER BY seq"
                )
            ]
            seqs = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='inbox'").fetchone()
            top = conn.execute("SELECT max(seq), count(*) FROM inbox").fetchone()
            last_seq = max(seqs[0] if seqs else 0, top[0] or 0)
            newest = conn.execute("SELECT max(received) FROM inbox").fetchone()[0] or 0
            recent = conn.execute(
                "SELECT sender, msg_id, received FROM inbox "
                "WHERE sender IS NOT NULL AND received >= ? ORDER BY seq",
                (newest - RECENT_MS,),
            ).fetchall()
            outbox = [
                OutboxRow(r[0], r[1], r[2], bool(r[3]), r[4], bytes(r[5]))
                for r in conn.execute(
                    "SELECT row, peer, msg_id, urgent, deadline, wire FROM outbox ORDER BY row"
                )
            ]
            last_row = conn.execute("SELECT max(row) FROM outbox").fetchone()[0] or 0
        except sqlite3.DatabaseError as exc:
            raise self._unusable(exc) from None
        return Loaded(peers, unread, last_seq, top[1], recent, outbox, last_row, imported)


RECENT_MS = 15 * 60 * 1000  # inbound ids read back at start-up for dedupe (§6 asks for 10 min)


def _deliver(calls: list[tuple[Callable[[Any], None], Any]]) -> None:
    for done, result in calls:
        try:
            done(result)
        except Exception:  # a callback's bug must not cancel the daemon
            log.exception("store callback failed")


# -- the statements the daemon uses (each runs in the store thread) --------------------------------


def save_peers(
    changes: dict[str, str | None],
    tables: tuple[dict[bytes, int | None], dict[str, int | None]] = ({}, {}),
) -> Callable[[sqlite3.Connection], None]:
    """Write changed peer rows, and the floors and blocks of ``PeerStore.table_changes``."""
    floors, blocked = tables

    def job(conn: sqlite3.Connection) -> None:
        for agent_id, record in changes.items():
            if record is None:
                conn.execute("DELETE FROM peers WHERE agent_id = ?", (agent_id,))
            else:
                conn.execute("INSERT OR REPLACE INTO peers VALUES (?, ?)", (agent_id, record))
        for key, ts in floors.items():
            if ts is None:
                conn.execute("DELETE FROM key_floors WHERE pubkey = ?", (key,))
            else:
                conn.execute("INSERT OR REPLACE INTO key_floors VALUES (?, ?)", (key, ts))
        for agent_id, since in blocked.items():
            if since is None:
                conn.execute("DELETE FROM blocked WHERE agent_id = ?", (agent_id,))
            else:
                conn.execute("INSERT OR REPLACE INTO blocked VALUES (?, ?)", (agent_id, since))

    return job


def insert_inbox(row: InboxRow, read_at: int | None) -> Callable[[sqlite3.Connection], None]:
    def job(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO inbox (seq, sender, msg_id, kind, received, trust, body, read, read_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.seq,
                row.sender,
                row.msg_id,
                row.kind,
                row.received,
                row.trust,
                row.body,
                int(row.read),
                read_at,
            ),
        )

    return job


def mark_read(seqs: list[int], now_ms: int) -> Callable[[sqlite3.Connection], int]:
    def job(conn: sqlite3.Connection) -> int:
        cur = conn.executemany(
            "UPDATE inbox SET read = 1, read_at = ? WHERE seq = ? AND read = 0",
            [(now_ms, s) for s in seqs],
        )
        return cur.rowcount

    return job


def read_inbox(
    *, since: int, limit: int, kinds: list[str] | None, senders: list[str] | None
) -> Callable[[sqlite3.Connection], list[InboxRow]]:
    """Read and unread rows above ``since``, oldest first (the unread ones are in memory)."""
    where = ["seq > ?"]
    args: list[Any] = [since]
    if kinds:
        where.append(f"kind IN ({','.join('?' * len(kinds))})")
        args += kinds
    if senders:
        where.append(f"sender IN ({','.join('?' * len(senders))})")
        args += senders
    sql = f"SELECT {_INBOX_COLS} FROM inbox WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
    args.append(limit)

    def job(conn: sqlite3.Connection) -> list[InboxRow]:
        return [_inbox_row(r) for r in conn.execute(sql, args)]

    return job


def prune_inbox(
    *, now_ms: int, keep_ms: int, keep_count: int
) -> Callable[[sqlite3.Connection], int]:
    """Drop read rows older than ``keep_ms``, and the oldest read ones past ``keep_count``."""

    def job(conn: sqlite3.Connection) -> int:
        gone = conn.execute(
            "DELETE FROM inbox WHERE read = 1 AND received < ?", (now_ms - keep_ms,)
        ).rowcount
        cut = conn.execute(
            "SELECT seq FROM inbox WHERE read = 1 ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (keep_count,),
        ).fetchone()
        if cut is not None:
            gone += conn.execute(
                "DELETE FROM inbox WHERE read = 1 AND seq <= ?", (cut[0],)
            ).rowcount
        # a hook's progress matters only while its item is unread
        conn.execute(
            "DELETE FROM hook_runs WHERE seq NOT IN (SELECT seq FROM inbox WHERE read = 0)"
        )
        return gone

    return job


def insert_outbox(rows: list[OutboxRow]) -> Callable[[sqlite3.Connection], None]:
    def job(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO outbox (row, peer, msg_id, urgent, deadline, wire) VALUES (?,?,?,?,?,?)",
            [(r.row, r.peer, r.msg_id, int(r.urgent), r.deadline, r.wire) for r in rows],
        )

    return job


def delete_outbox(rows: list[int]) -> Callable[[sqlite3.Connection], None]:
    def job(conn: sqlite3.Connection) -> None:
        conn.executemany("DELETE FROM outbox WHERE row = ?", [(r,) for r in rows])

    return job


def nothing(conn: sqlite3.Connection) -> None:
    """A job that writes nothing: its callback runs after everything queued before it commits."""


# -- hooks (docs/hooks.md) --------------------------------------------------------------------------


@attrs.frozen
class HookRow:
    """A hook's progress on one unread item."""

    seq: int
    state: str  # done | gave_up | retry
    attempts: int
    not_before: int | None  # unix ms


@attrs.frozen
class HookState:
    since: int
    counters: str  # JSON
    rows: list[HookRow]


def open_hooks(
    names: list[str], last_seq: int
) -> Callable[[sqlite3.Connection], dict[str, HookState]]:
    """Each configured hook's state; a new hook starts at ``last_seq``. Hooks no longer
    configured are forgotten."""

    def job(conn: sqlite3.Connection) -> dict[str, HookState]:
        known = dict(conn.execute("SELECT name, since FROM hooks").fetchall())
        for name in set(known) - set(names):
            conn.execute("DELETE FROM hooks WHERE name = ?", (name,))
            conn.execute("DELETE FROM hook_runs WHERE hook = ?", (name,))
        out = {}
        for name in names:
            if name not in known:
                conn.execute("INSERT INTO hooks VALUES (?, ?, '{}')", (name, last_seq))
            since, counters = conn.execute(
                "SELECT since, counters FROM hooks WHERE name = ?", (name,)
            ).fetchone()
            rows = [
                HookRow(*r)
                for r in conn.execute(
                    "SELECT r.seq, r.state, r.attempts, r.not_before FROM hook_runs r "
                    "JOIN inbox i ON i.seq = r.seq AND i.read = 0 WHERE r.hook = ? ORDER BY r.seq",
                    (name,),
                )
            ]
            out[name] = HookState(since, counters, rows)
        return out

    return job


def hook_progress(
    name: str, rows: list[HookRow], counters: str
) -> Callable[[sqlite3.Connection], None]:
    def job(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT OR REPLACE INTO hook_runs VALUES (?, ?, ?, ?, ?)",
            [(name, r.seq, r.state, r.attempts, r.not_before) for r in rows],
        )
        conn.execute("UPDATE hooks SET counters = ? WHERE name = ?", (counters, name))

    return job
