"""The local side of delivery (docs/protocol.md §7, §8.1) as a plain object: the inbox and its readers.

``LocalInbox`` decides, and the daemon carries out: whether an inbound envelope may be stored
(the bound, and each sender's share of it), which ``seq`` it gets, what is unread, what an ``ack``
changes, and which subscribers a newly stored item is pushed to. It holds the unread items only;
read ones live in the database, and a subscriber that asks for them (``since``) is caught up from
there before it is pushed live items. Nothing here does I/O or reads a clock.

An item's life: ``add`` (a seq is taken, the item counts against the bound while its insert is in
flight) -> ``stored`` (committed: unread, pushed) or ``failed`` (not stored: the seq is not reused,
the slot is given back) -> ``ack_*`` (read: gone from here).

Subscribers are pushed every item with a ``seq`` above their cursor, once. A subscriber that asked
for read items (``since`` below what is stored) is not live until it is caught up: each page it is
handed from the database moves its cursor, and the last, short page makes it live. Because the
daemon's database callbacks run in the order the jobs were queued, every item stored before a page
was read is in that page, and every item stored after it reaches the subscriber live.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable
from typing import Any

import attrs

INBOX_LIMIT = 1000  # unread envelopes kept (docs/protocol.md §7)
PAGE = 1000  # items a catching-up subscriber is handed per database read
EVENT = "event"  # the kind of an item that is an outcome of our own send, not an envelope


@attrs.define(eq=False, slots=True)
class Item:
    """One stored inbox entry: an inbound envelope, or an event about one of our sends."""

    seq: int
    sender: str | None  # None for an event
    msg_id: str
    kind: str
    received: int  # unix ms
    trust: str | None
    body: bytes  # compact JSON of the envelope, or of the event
    read: bool = False

    @property
    def is_event(self) -> bool:
        return self.sender is None

    def push_line(self) -> bytes:
        """The line a subscriber is pushed (docs/protocol.md §8, §8.1)."""
        if self.is_event:
            return self.body[:-1] + b',"seq":' + str(self.seq).encode() + b"}\n"
        trust = b'"' + self.trust.encode() + b'",' if self.trust else b"null,"
        return (
            b'{"inbound":true,"seq":'
            + str(self.seq).encode()
            + b',"trust":'
            + trust
            + b'"envelope":'
            + self.body
            + b"}\n"
        )

    def to_json(self) -> dict[str, Any]:
        """The item as ``inbox`` returns it."""
        out: dict[str, Any] = {"seq": self.seq}
        out["event" if self.is_event else "envelope"] = json.loads(self.body)
        out["read"] = self.read
        out["received"] = self.received
        if not self.is_event:
            out["trust"] = self.trust
        return out


@attrs.define(eq=False, slots=True)
class Subscription:
    key: Hashable
    cursor: int  # every item with a seq up to here was handed over (or not asked for)
    remaining: int | None  # envelopes still wanted (subscribe with a count)
    live: bool


class LocalInbox:
    """Unread items, the bound on them, and who is subscribed. See the module docstring."""

    def __init__(
        self, *, limit: int = INBOX_LIMIT, per_sender: int | None = None, last_seq: int = 0
    ) -> None:
        self.limit = limit
        self.per_sender = per_sender if per_sender is not None else max(1, limit // 2)
        self.last_seq = last_seq  # the highest seq handed out (stored or in flight)
        self.last_stored = last_seq  # the highest seq stored
        self._unread: dict[int, Item] = {}  # insertion order is seq order
        self._in_flight = 0
        self._by_sender: dict[str, int] = {}  # unread + in flight, per sender
        self._envelopes = 0  # unread + in flight envelopes (events do not count)
        self._subs: dict[Hashable, Subscription] = {}
        self.last_marked: list[Item] = []  # what the last ack_* call marked read

    # -- counts --------------------------------------------------------------------------------

    @property
    def unread_count(self) -> int:
        return len(self._unread)

    def held_by(self, sender: str) -> int:
        return self._by_sender.get(sender, 0)

    # -- storing -------------------------------------------------------------------------------

    def admit(self, sender: str) -> str | None:
        """None if an envelope from ``sender`` may be stored now, else the ACK error code."""
        if self._envelopes >= self.limit or self._by_sender.get(sender, 0) >= self.per_sender:
            return "inbox_full"
        return None

    def add(
        self,
        *,
        sender: str | None,
        msg_id: str,
        kind: str,
        received: int,
        trust: str | None,
        body: bytes,
        read: bool = False,
    ) -> Item:
        """Take the next seq for an item about to be stored (call ``admit`` first)."""
        self.last_seq += 1
        item = Item(self.last_seq, sender, msg_id, kind, received, trust, body, read)
        if not read:
            self._count(item, +1)
        self._in_flight += 1
        return item

    def _count(self, item: Item, delta: int) -> None:
        if item.sender is not None:
            self._envelopes += delta
            n = self._by_sender.get(item.sender, 0) + delta
            if n:
                self._by_sender[item.sender] = n
            else:
                self._by_sender.pop(item.sender, None)

    def stored(self, item: Item) -> list[Hashable]:
        """The item is committed: it is unread (unless stored read); returns whom to push it to.

        Call it in seq order, as the store's in-order callbacks do: live cursors rely on it.
        """
        self._in_flight -= 1
        self.last_stored = max(self.last_stored, item.seq)
        if item.read:
            return []
        self._unread[item.seq] = item
        return self._push_to(item)

    def failed(self, item: Item) -> None:
        """The item could not be stored: give its slot back (its seq is not reused)."""
        self._in_flight -= 1
        if not item.read:
            self._count(item, -1)

    def restore(self, items: Iterable[Item]) -> None:
        """Unread items read back from the database at start-up, oldest first."""
        for item in items:
            self._unread[item.seq] = item
            self._count(item, +1)

    # -- reading and acking --------------------------------------------------------------------

    def unread(
        self,
        *,
        since: int = 0,
        limit: int | None = None,
        kinds: Iterable[str] | None = None,
        senders: Iterable[str] | None = None,
    ) -> list[Item]:
        kind_set = set(kinds) if kinds else None
        sender_set = set(senders) if senders else None
        out: list[Item] = []
        for item in self._unread.values():
            if item.seq <= since:
                continue
            if kind_set is not None and item.kind not in kind_set:
                continue
            if sender_set is not None and item.sender not in sender_set:
                continue
            out.append(item)
            if limit is not None and len(out) >= limit:
                break
        return out

    def get(self, seq: int) -> Item | None:
        """The unread item with this seq, if any."""
        return self._unread.get(seq)

    def ack_seqs(self, seqs: Iterable[int]) -> list[int]:
        """Mark read those of these items that are unread; return their seqs."""
        return self._mark([s for s in seqs if s in self._unread])

    def ack_ids(self, ids: Iterable[str]) -> list[int]:
        """Mark read every unread item with one of these msg_ids; return their seqs."""
        wanted = set(ids)
        return self._mark([s for s, item in self._unread.items() if item.msg_id in wanted])

    def ack_up_to(self, seq: int) -> list[int]:
        return self._mark([s for s in self._unread if s <= seq])

    def _mark(self, seqs: list[int]) -> list[int]:
        marked = []
        for s in seqs:
            item = self._unread.pop(s)
            item.read = True
            self._count(item, -1)
            marked.append(item)
        self.last_marked = marked
        return seqs

    def unmark(self, items: Iterable[Item]) -> None:
        """Items whose ack could not be stored are unread again, in their place."""
        for item in items:
            item.read = False
            self._unread[item.seq] = item
            self._count(item, +1)
        self._unread = dict(sorted(self._unread.items()))

    # -- subscribers ---------------------------------------------------------------------------

    def subscribe(
        self, key: Hashable, *, since: int | None = None, count: int | None = None
    ) -> tuple[list[Item], bool]:
        """Start pushing to ``key``. Returns (items to push now, whether a catch-up from the
        database must follow: then hand it pages with ``caught_up``)."""
        if since is None:
            items = list(self._unread.values())
            cursor = self.last_stored
            live = True
        elif since >= self.last_stored:
            items, cursor, live = [], since, True
        else:
            items, cursor, live = [], since, False
        sub = self._subs[key] = Subscription(key, cursor, count, live)
        items = self._take(sub, items)
        return items, not live and key in self._subs

    def caught_up(self, key: Hashable, page: list[Item], *, full: bool) -> tuple[list[Item], bool]:
        """A page of stored items (seq above the cursor, oldest first) read for ``key``.
        Returns (items to push, whether another page is needed)."""
        sub = self._subs.get(key)
        if sub is None or sub.live:
            return [], False
        items = [it for it in page if it.seq > sub.cursor]
        if page:
            sub.cursor = max(sub.cursor, page[-1].seq)
        items = self._take(sub, items)
        if sub.key not in self._subs:
            return items, False
        if not full:
            sub.live = True
        return items, full

    def subscription(self, key: Hashable) -> Subscription | None:
        """The live subscription under ``key``: a page read for another one must be dropped."""
        return self._subs.get(key)

    def cursor(self, key: Hashable) -> int | None:
        sub = self._subs.get(key)
        return sub.cursor if sub is not None else None

    def unsubscribe(self, key: Hashable) -> None:
        self._subs.pop(key, None)

    def subscribers(self) -> int:
        return len(self._subs)

    def _take(self, sub: Subscription, items: list[Item]) -> list[Item]:
        """What ``sub`` still wants of ``items``: with a count, envelopes up to it (events ride
        along free, so `acp listen --count 1` means one envelope); then it is done."""
        if sub.remaining is None:
            return items
        out: list[Item] = []
        for item in items:
            if sub.remaining <= 0:
                break
            out.append(item)
            if not item.is_event:
                sub.remaining -= 1
        if sub.remaining <= 0:
            del self._subs[sub.key]
        return out

    def _push_to(self, item: Item) -> list[Hashable]:
        keys: list[Hashable] = []
        for sub in list(self._subs.values()):
            if not sub.live or item.seq <= sub.cursor:
                continue
            sub.cursor = item.seq
            if self._take(sub, [item]):
                keys.append(sub.key)
        return keys
