"""A scripted stand-in for the daemon's IPC socket, for client tests that need no real daemon.

It keeps an inbox as docs/protocol.md §8.1 describes it (rows with a rising ``seq``, unread until acked),
answers ``subscribe`` (with ``since`` and ``count``), ``ack``, ``inbox`` and ``status``, pushes what
``add`` stores to subscribers, and can ``stop`` (every connection closed, the socket removed) and
``start`` again on the same path with the same rows, as a daemon restart would. Tests can also
make it write raw bytes (``raw``) to check what the client does with a broken stream.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

STATUS: dict[str, Any] = {
    "agent_id": "agent-a",
    "fingerprint": "0000-1111-2222-3333-4444-5555-6666-7777",
    "port": 7100,
    "home": "/tmp/acp",
    "uptime": 12.0,
    "version": "0.1.0",
    "pid": 1,
    "trust": "tofu",
    "mdns": "off",
    "peers_connected": 1,
    "peers_known": 2,
    "messages_sent": 3,
    "messages_received": 4,
    "queued": 5,
    "subscribers": 0,
    "warnings": [],
}


class FakeDaemon:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []  # {"seq", "envelope" | "event", "read"}
        self.requests: list[dict[str, Any]] = []
        self.raw: bytes | None = None  # written instead of the next reply, if set
        self.ack_unknown = False  # answer ack as a daemon older than §8.1 would
        self.count_events = False  # subscribe's count counts stored events too, not only envelopes
        self._lock = threading.RLock()
        self._conns: dict[socket.socket, dict[str, Any]] = {}
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._seq = 0

    # -- life -----------------------------------------------------------------------------------

    def start(self) -> None:
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(str(self.path))
        lst.listen(16)
        self._listener = lst
        self._spawn(self._accept, lst)

    def stop(self) -> None:
        with self._lock:
            lst, self._listener = self._listener, None
            conns = list(self._conns)
            self._conns.clear()
        if lst is not None:
            try:
                lst.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in its thread
            except OSError:
                pass
            lst.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        if self.path.exists():
            os.unlink(self.path)
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()

    def _spawn(self, fn: Any, *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                conn, _ = lst.accept()
            except OSError:
                return
            with self._lock:
                if self._listener is not lst:
                    conn.close()
                    return
                self._conns[conn] = {"subscribed": False, "remaining": None}
            self._spawn(self._serve, conn)

    # -- the inbox ------------------------------------------------------------------------------

    def add(self, envelope: dict[str, Any]) -> int:
        """Store an inbound envelope and push it to every subscriber; its seq."""
        with self._lock:
            self._seq += 1
            row = {"seq": self._seq, "envelope": envelope, "read": False}
            self.rows.append(row)
            for conn, state in list(self._conns.items()):
                if state["subscribed"]:
                    self._push(conn, state, row)
            return self._seq

    def add_event(self, msg_id: str, to: str, reason: str) -> int:
        with self._lock:
            self._seq += 1
            event = {"event": "undelivered", "msg_id": msg_id, "to": to, "reason": reason}
            row = {"seq": self._seq, "event": event, "read": False}
            self.rows.append(row)
            for conn, state in list(self._conns.items()):
                if state["subscribed"]:
                    self._push(conn, state, row)
            return self._seq

    def unread_ids(self) -> list[str]:
        with self._lock:
            return [r["envelope"]["id"] for r in self.rows if "envelope" in r and not r["read"]]

    def _push(self, conn: socket.socket, state: dict[str, Any], row: dict[str, Any]) -> None:
        counted = "envelope" in row or self.count_events
        if counted and state["remaining"] == 0:
            return
        if counted and state["remaining"] is not None:
            state["remaining"] -= 1
        if "event" in row:
            self._write(conn, {**row["event"], "seq": row["seq"]})
        else:
            self._write(conn, {"inbound": True, "seq": row["seq"], "envelope": row["envelope"]})

    def _write(self, conn: socket.socket, obj: dict[str, Any]) -> None:
        try:
            conn.sendall(json.dumps(obj).encode() + b"\n")
        except OSError:
            pass

    # -- requests -------------------------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                with self._lock:
                    self._conns.pop(conn, None)
                conn.close()
                return
            buf += data
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                with self._lock:
                    self._handle(conn, json.loads(line))

    def _handle(self, conn: socket.socket, r: dict[str, Any]) -> None:
        self.requests.append(r)
        state = self._conns.get(conn)
        if state is None:
            return
        if self.raw is not None:
            raw, self.raw = self.raw, None
            try:
                conn.sendall(raw)
            except OSError:  # the client hung up after the first 1 MiB, as it should
                pass
            return
        cmd, req = r["cmd"], r.get("req")
        if cmd == "subscribe":
            self._write(conn, {"ok": True, "subscribed": True, "req": req})
            state["subscribed"] = True
            state["remaining"] = r.get("count")
            since = r.get("since")
            for row in list(self.rows):
                if (since is None and not row["read"]) or (
                    since is not None and row["seq"] > since
                ):
                    self._push(conn, state, row)
        elif cmd == "ack" and self.ack_unknown:
            error = {"code": "unknown_command", "message": "unknown command 'ack'"}
            self._write(conn, {"ok": False, "error": error, "req": req})
        elif cmd == "ack":
            n = 0
            for row in self.rows:
                key = row["envelope"]["id"] if "envelope" in row else row["event"]["msg_id"]
                hit = key in r["ids"] if "ids" in r else row["seq"] <= r["up_to"]
                if hit and not row["read"]:
                    row["read"] = True
                    n += 1
            self._write(conn, {"ok": True, "acked": n, "req": req})
        elif cmd == "inbox":
            since = r.get("since") or 0
            rows = [
                {**row, "received": 1_700_000_000_000, "trust": "tofu"}
                for row in self.rows
                if row["seq"] > since and (not row["read"] or r.get("unread") is False)
            ][: r.get("limit", 100)]
            nxt = rows[-1]["seq"] if rows else since
            self._write(conn, {"ok": True, "messages": rows, "next": nxt, "req": req})
        elif cmd == "status":
            unread = sum(not row["read"] for row in self.rows)
            status = dict(STATUS, unread=unread, inbox=unread, stored=len(self.rows))
            self._write(conn, {"ok": True, **status, "req": req})
        else:
            error = {"code": "unknown_command", "message": f"unknown command {cmd!r}"}
            self._write(conn, {"ok": False, "error": error, "req": req})
