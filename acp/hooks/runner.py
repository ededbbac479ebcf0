"""The hooks at work: one task per hook, its runs, and their progress in the store (docs/hooks.md).

``Hooks`` is the node's ``ItemWatcher``: the node tells it of every item stored unread and of items
read, which costs a dict insert and an Event per hook, so a slow or failing hook never delays an
ACK or a session. Each hook's task asks its ``Schedule`` what to run, starts each run in a task of
its own (at most ``concurrency``), and stores each outcome (what the hook finished, what it retries
and when, its counters) through the store thread, so a restarted daemon resumes where it was.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from acp import store
from acp.errors import ConfigError
from acp.hooks import schedule, transport
from acp.hooks.schedule import Counters, Pending, Run, Schedule
from acp.hooks.spec import HookSpec
from acp.model import fingerprint
from acp.proto import ipc
from acp.proto.inbox import Item
from acp.text import for_model, one_line

if TYPE_CHECKING:
    import httpx

    from acp.net.node import Node

log = logging.getLogger(__name__)
# httpx logs every request at INFO, httpcore each step at DEBUG: lines per envelope per hook
# would drown the daemon's log (what a run did is in `acp hooks`)
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

TEST_TOPIC = "acp.hooks.test"


class Hook:
    """One configured hook: its spec, secrets, schedule and HTTP client."""

    def __init__(self, spec: HookSpec, headers: dict[str, str], counters: Counters) -> None:
        self.spec = spec
        self.headers = headers  # secrets filled in: never logged, never reported
        self.schedule = Schedule(
            concurrency=spec.concurrency,
            coalesce=spec.coalesce,
            max_per_minute=spec.max_per_minute,
            backoff_max=spec.backoff_max,
            counters=counters,
        )
        self.since = 0
        self.changed = trio.Event()
        self.client: httpx.AsyncClient | None = None

    def poke(self) -> None:
        self.changed.set()

    def report(self, now: float) -> dict[str, Any]:
        c = self.schedule.counters
        return {
            "name": self.spec.name,
            "type": self.spec.type,
            "target": self.spec.target,
            "state": c.state,
            "pending": len(self.schedule),
            "running": self.schedule.running,
            "delivered": c.delivered,
            "runs": c.runs,
            "failures": c.failures,
            "given_up": c.given_up,
            "coalesced": c.coalesced,
            "last_error": c.last_error,
            "last_ok": c.last_ok,
            "next_try_in": self.schedule.next_try(now),
        }


class Hooks:
    def __init__(self, node: Node, specs: tuple[HookSpec, ...], env: Mapping[str, str]) -> None:
        """Check the specs against the environment; ConfigError names what is missing."""
        self.node = node
        env = dict(env)
        if any(s.is_http for s in specs):
            try:
                import httpx  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "config.toml has http or openclaw [[hooks]], which need httpx: "
                    "pipx install 'acp-daemon[hooks]' (or: pipx inject acp-daemon httpx)"
                ) from None
        self.hooks = {s.name: Hook(s, s.secrets(env), Counters()) for s in specs}
        # exec children read what peers wrote: they get the daemon's environment without the
        # variables any hook takes a secret from
        secret_names = set().union(*(s.env_names() for s in specs))
        self.child_env = {k: v for k, v in env.items() if k not in secret_names}

    # -- start-up ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Read each hook's progress and fill its schedule with what it still owes."""
        node = self.node
        states = await node.db.call(store.open_hooks(list(self.hooks), node.local.last_stored))
        now, now_ms = trio.current_time(), time.time() * 1000
        unread = node.local.unread()
        for name, hook in self.hooks.items():
            state = states[name]
            hook.since = state.since
            try:
                hook.schedule.counters = Counters.from_json(json.loads(state.counters))
            except ValueError:
                pass
            rows = {r.seq: r for r in state.rows}
            for item in unread:
                if item.seq <= hook.since or not hook.spec.matches(item.sender, item.kind):
                    continue
                row = rows.get(item.seq)
                if row is not None and row.state != "retry":
                    continue  # finished before the restart
                age = max(0.0, (now_ms - item.received) / 1000)
                pending = Pending(item.seq, item.sender, now, now + hook.spec.give_up_after - age)
                if row is not None:
                    pending.attempts = row.attempts
                    if row.not_before:
                        pending.not_before = now + max(0.0, (row.not_before - now_ms) / 1000)
                hook.schedule.add(pending)
            if len(hook.schedule):
                log.info("hook %s: %d envelope(s) pending from before", name, len(hook.schedule))
        node.hooks = self

    # -- told by the node ----------------------------------------------------------------------

    def stored(self, item: Item) -> None:
        now = trio.current_time()
        for hook in self.hooks.values():
            if item.seq > hook.since and hook.spec.matches(item.sender, item.kind):
                hook.schedule.add(
                    Pending(item.seq, item.sender, now, now + hook.spec.give_up_after)
                )
                hook.poke()

    def read(self, seqs: list[int]) -> None:
        for hook in self.hooks.values():
            if hook.schedule.drop(seqs):
                hook.poke()

    # -- running -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for hook in self.hooks.values():  # (an HTTP hook's client is made at its first run)
                nursery.start_soon(self._loop, hook)
            task_status.started()

    async def _loop(self, hook: Hook) -> None:
        try:
            async with trio.open_nursery() as runs:
                while True:
                    now = trio.current_time()
                    self._store_given_up(hook, hook.schedule.expired(now))
                    got = hook.schedule.take(now)
                    if isinstance(got, Run):
                        runs.start_soon(self._run, hook, got)
                        continue
                    hook.changed = trio.Event()
                    with trio.move_on_at(got if got is not None else float("inf")):
                        await hook.changed.wait()
        finally:
            if hook.client is not None:
                with trio.CancelScope(shield=True):
                    await hook.client.aclose()

    async def _run(self, hook: Hook, run: Run) -> None:
        items = [self.node.local.get(p.seq) for p in run.items]
        newest = next((i for i in reversed(items) if i is not None), None)
        if newest is None:  # every one was read since it was taken: nothing to hand over
            hook.schedule.abandon(run)
            hook.poke()
            return
        run.handed_over = newest.seq
        result = await self._guarded(hook, newest, len(run.items), "run")
        self._finished(hook, run, result)
        hook.poke()

    async def _guarded(self, hook: Hook, item: Item, count: int, what: str) -> transport.Result:
        """``call``, where a bug gives up on that run instead of taking the daemon down."""
        try:
            return await self.call(hook, item, count)
        except Exception as exc:
            log.error("hook %s: %s failed: %s", hook.spec.name, what, type(exc).__name__)
            error = f"internal error: {type(exc).__name__}"  # (a repr may quote a secret)
            return transport.Result(schedule.GIVE_UP, error=error)

    async def call(self, hook: Hook, item: Item, count: int) -> transport.Result:
        """Hand ``item`` (standing for ``count`` envelopes) to the hook, once."""
        spec = hook.spec
        obj = item.to_json()
        obj["hook"] = spec.name
        if count > 1:
            obj["coalesced"] = count
        if spec.type == "exec":
            extra = {
                "ACP_HOOK": spec.name,
                "ACP_MSG_ID": item.msg_id,
                "ACP_FROM": item.sender or "",
                "ACP_KIND": item.kind,
                "ACP_SEQ": str(item.seq),
                "ACP_COALESCED": str(count),
            }
            env = transport.exec_env(self.child_env, extra)
            return await transport.run_exec(spec, ipc.encode(obj), env)
        if spec.type == "openclaw":
            body = ipc.encode(self._openclaw_body(spec, item, obj, count))[:-1]
        else:
            body = ipc.encode(obj)[:-1]
        if hook.client is None:
            hook.client = transport.new_http_client()
        return await transport.run_http(spec, hook.client, hook.headers, body, item.msg_id)

    def _openclaw_body(
        self, spec: HookSpec, item: Item, obj: dict[str, Any], count: int
    ) -> dict[str, Any]:
        sender = item.sender or self.node.agent_id
        rec = self.node.store.get(sender) if item.sender else None
        fp = fingerprint(rec.pubkey) if rec is not None and rec.pubkey else None
        message = for_model(obj, fingerprint=fp)
        if count > 1:
            message += (
                f"\n\nThis is the newest of {count} acp envelopes from {sender} that arrived "
                f"together; read the others with `acp inbox --from {sender}`."
            )
        body: dict[str, Any] = {"message": message, "name": f"acp:{sender}"}
        if spec.agent_id is not None:
            body["agentId"] = spec.agent_id
        if spec.session_key is not None:
            body["sessionKey"] = spec.session_key.replace("{from}", sender)
        if spec.wake_mode is not None:
            body["wakeMode"] = spec.wake_mode
        if spec.deliver is not None:
            body["deliver"] = spec.deliver
        return body

    def _finished(self, hook: Hook, run: Run, result: transport.Result) -> None:
        spec, sched = hook.spec, hook.schedule
        now, unix_now = trio.current_time(), time.time()
        was = sched.counters.state
        gone = sched.finished(
            run,
            result.outcome,
            now,
            error=result.error,
            retry_after=result.retry_after,
            unix_now=unix_now,
        )
        rows: list[store.HookRow] = []
        if result.outcome == schedule.OK:
            rows = [store.HookRow(p.seq, "done", p.attempts, None) for p in run.items]
            if spec.ack:  # what was handed over: a coalesced run's others stay unread to read
                self.node.ack(None, None, self._acked, seqs=[run.handed_over])
            if was != schedule.STATE_OK:
                log.info("hook %s: working again", spec.name)
        elif result.outcome == schedule.RETRY:
            ms = unix_now * 1000
            rows = [
                store.HookRow(p.seq, "retry", p.attempts, int(ms + (p.not_before - now) * 1000))
                for p in run.items
                if p not in gone
            ]
            (log.warning if was == schedule.STATE_OK else log.debug)(
                "hook %s: %s; retrying in %.0f s",
                spec.name,
                one_line(result.error or "failed", 300),
                max(0.0, sched.gate - now),
            )
        rows += [store.HookRow(p.seq, "gave_up", p.attempts, None) for p in gone]
        if gone:
            log.warning(
                "hook %s: gave up on %d envelope(s): %s (they stay unread in the inbox)",
                spec.name,
                len(gone),
                one_line(result.error or "failed", 300),
            )
        self._store(hook, rows)

    def _store_given_up(self, hook: Hook, gone: list[Pending]) -> None:
        if gone:
            log.warning(
                "hook %s: gave up on %d envelope(s) still failing after %g s",
                hook.spec.name,
                len(gone),
                hook.spec.give_up_after,
            )
            self._store(hook, [store.HookRow(p.seq, "gave_up", p.attempts, None) for p in gone])

    def _store(self, hook: Hook, rows: list[store.HookRow]) -> None:
        counters = json.dumps(hook.schedule.counters.to_json())
        self.node.db.submit(
            store.hook_progress(hook.spec.name, rows, counters), self.node._store_failed
        )

    def _acked(self, result: int | BaseException) -> None:
        if isinstance(result, BaseException):
            log.warning("hooks: cannot mark envelopes read: %s", result)

    # -- `acp hooks` -----------------------------------------------------------------------------

    def report(self) -> list[dict[str, Any]]:
        now = trio.current_time()
        return [hook.report(now) for hook in self.hooks.values()]

    def summary(self) -> dict[str, int]:
        """For `acp status`: how many hooks are in each state."""
        out = dict.fromkeys((schedule.STATE_OK, schedule.STATE_RETRYING, schedule.STATE_FAILING), 0)
        for hook in self.hooks.values():
            out[hook.schedule.counters.state] += 1
        return out

    async def test(self, name: str) -> dict[str, Any]:
        """Hand a synthetic envelope to one hook, once, and say what came back."""
        hook = self.hooks[name]
        node = self.node
        msg_id = f"acp-hook-test-{secrets.token_hex(8)}"
        envelope = {
            "v": 1,
            "id": msg_id,
            "from": node.agent_id,
            "to": node.agent_id,
            "ts": int(time.time() * 1000),
            "kind": "notify",
            "payload": {"topic": TEST_TOPIC, "data": {"hook": name}},
        }
        item = Item(
            seq=0,
            sender=node.agent_id,
            msg_id=msg_id,
            kind="notify",
            received=int(time.time() * 1000),
            trust="explicit",
            body=json.dumps(envelope, separators=(",", ":")).encode(),
        )
        result = await self._guarded(hook, item, 1, "test")
        log.info(
            "hook %s: test %s",
            name,
            "succeeded" if result.outcome == schedule.OK else f"failed: {result.error}",
        )
        return {"hook": name, "msg_id": msg_id, **result.to_json()}
