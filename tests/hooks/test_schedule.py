"""The hooks' schedule (acp/hooks/schedule.py): a pure object, driven by hand-made clocks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acp.hooks.schedule import GIVE_UP, OK, RETRY, WINDOW, Pending, Run, Schedule

DAY = 86400.0


def item(seq: int, sender: str | None = "alpha", at: float = 0.0) -> Pending:
    return Pending(seq, sender, at, at + DAY)


def mid(seq_rng: float = 0.5) -> Schedule:
    return Schedule(rng=lambda: seq_rng)


def taken(s: Schedule, now: float) -> list[int]:
    run = s.take(now)
    assert isinstance(run, Run), run
    return [p.seq for p in run.items]


def test_one_run_per_item_oldest_first_within_concurrency() -> None:
    s = Schedule(concurrency=2)
    s.add(item(3, "b"))
    s.add(item(1, "a"))
    s.add(item(2, "a"))
    assert taken(s, 0) == [1]
    assert taken(s, 0) == [2]
    assert s.take(0) is None  # two running: wait for one to finish
    run = Run([item(1)], 0)
    s.running -= 1  # as if one finished
    assert taken(s, 0) == [3]
    assert len(s) == 0
    del run


def test_coalesce_waits_then_takes_the_whole_burst_of_one_sender() -> None:
    s = Schedule(coalesce=5.0)
    s.add(item(1, "a", at=0.0))
    s.add(item(2, "b", at=1.0))
    s.add(item(3, "a", at=2.0))
    assert s.take(0.0) == 5.0  # when a's burst is due
    assert taken(s, 5.0) == [1, 3]
    assert s.counters.coalesced == 1
    s.running = 0
    assert s.take(5.0) == 6.0
    assert taken(s, 6.0) == [2]


def test_max_per_minute_coalesces_the_excess_and_loses_nothing() -> None:
    s = Schedule(max_per_minute=3, concurrency=10)
    for seq in range(1, 11):
        s.add(item(seq, "a"))
    assert [taken(s, 0.0) for _ in range(3)] == [[1], [2], [3]]
    assert s.take(1.0) == WINDOW  # a's window is full until the first run is a minute old
    s.add(item(11, "b"))  # another sender is not held up by a
    assert taken(s, 1.0) == [11]
    assert taken(s, WINDOW) == list(range(4, 11))  # one run stands for all that waited
    assert s.counters.coalesced == 6 and s.counters.runs == 5
    assert len(s) == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 300), min_size=1, max_size=200),
    st.integers(1, 12),
)
def test_at_most_max_per_minute_runs_per_sender_and_every_item_run(
    arrivals: list[float], limit: int
) -> None:
    s = Schedule(max_per_minute=limit, concurrency=1000)
    starts: list[float] = []
    covered: list[int] = []
    events = sorted((t, seq) for seq, t in enumerate(arrivals))
    now = 0.0
    i = 0
    while i < len(events) or len(s):
        if i < len(events) and events[i][0] <= now:
            s.add(Pending(events[i][1], "a", events[i][0], events[i][0] + DAY))
            i += 1
            continue
        got = s.take(now)
        if isinstance(got, Run):
            starts.append(now)
            covered += [p.seq for p in got.items]
            s.finished(got, OK, now)
            continue
        nxt = [x for x in (got, events[i][0] if i < len(events) else None) if x is not None]
        assert nxt, "nothing pending is ever run"
        now = max(now, min(nxt))
    assert sorted(covered) == list(range(len(arrivals)))
    for k, t in enumerate(starts):  # any `limit + 1` runs span at least a minute
        if k + limit < len(starts):
            assert starts[k + limit] - t >= WINDOW - 1e-9  # (float rounding)


def test_a_failure_gates_the_hook_and_backs_the_item_off() -> None:
    s = mid()
    s.add(item(1))
    s.add(item(2))
    run = s.take(0.0)
    assert isinstance(run, Run)
    assert s.finished(run, RETRY, 0.0, error="HTTP 503") == []
    assert s.counters.state == "retrying" and s.counters.failures == 1
    assert s.take(0.0) == pytest.approx(1.0)  # the hook's gate: 1 s after one failure
    # After the gate, the other item goes first: item 1 waits for its own backoff.
    assert taken(s, 1.0) == [2]


def test_backoff_grows_to_the_cap_and_retry_after_is_honoured() -> None:
    s = Schedule(backoff_max=10.0, rng=lambda: 0.5)
    s.add(item(1))
    now = 0.0
    gates = []
    for _ in range(6):
        run = s.take(now)
        while not isinstance(run, Run):
            assert run is not None and run > now
            now = run
            run = s.take(now)
        s.finished(run, RETRY, now)
        gates.append(s.gate - now)
    assert gates == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    run = s.take(now + 10)
    assert isinstance(run, Run)
    s.finished(run, RETRY, 100.0, retry_after=120.0)
    assert s.gate == 220.0


def test_success_resets_the_gate_and_give_up_reports_the_items() -> None:
    s = mid()
    for seq in (1, 2, 3):
        s.add(item(seq))
    run = s.take(0.0)
    assert isinstance(run, Run)
    s.finished(run, RETRY, 0.0)
    run = s.take(1.0)
    assert isinstance(run, Run) and [p.seq for p in run.items] == [2]
    s.finished(run, OK, 1.0, unix_now=123.0)
    assert s.counters.state == "ok" and s.counters.last_ok == 123.0 and s.gate == 0.0
    assert taken(s, 1.0) == [3]  # item 1 still waits out its own backoff (2 s)
    s.running = 0
    assert s.take(1.0) == pytest.approx(2.0)
    run = s.take(2.0)
    assert isinstance(run, Run) and [p.seq for p in run.items] == [1]
    gone = s.finished(run, GIVE_UP, 2.0, error="HTTP 400 Bad Request")
    assert [p.seq for p in gone] == [1]
    assert s.counters.given_up == 1 and s.counters.state == "failing"
    assert s.counters.last_error == "HTTP 400 Bad Request"


def test_items_past_give_up_after_are_given_up() -> None:
    s = mid()
    s.add(Pending(1, "a", 0.0, 10.0))
    s.add(Pending(2, "a", 5.0, 15.0))
    assert s.expired(9.0) == []
    assert [p.seq for p in s.expired(10.0)] == [1]
    run = s.take(11.0)
    assert isinstance(run, Run)
    assert [p.seq for p in s.finished(run, RETRY, 20.0)] == [2]  # failed past its deadline
    assert len(s) == 0 and s.counters.given_up == 2


def test_read_items_are_dropped_and_an_abandoned_run_is_not_counted() -> None:
    s = Schedule(coalesce=1.0)
    for seq in (1, 2, 3):
        s.add(item(seq))
    assert s.drop([2, 9]) == 1
    run = s.take(1.0)
    assert isinstance(run, Run) and [p.seq for p in run.items] == [1, 3]
    s.abandon(run)
    assert (s.running, s.counters.runs, s.counters.coalesced) == (0, 0, 0)


def test_retried_items_keep_seq_order() -> None:
    s = Schedule(coalesce=1.0, rng=lambda: 0.5)
    s.add(item(1))
    run = s.take(1.0)
    assert isinstance(run, Run)
    s.add(item(2, at=1.0))
    s.finished(run, RETRY, 1.0)
    assert taken(s, 5.0) == [1, 2]


def test_next_try_says_what_pending_items_wait_for() -> None:
    s = Schedule(max_per_minute=1, concurrency=5, rng=lambda: 0.5)
    assert s.next_try(0.0) is None
    s.add(item(1))
    s.add(item(2))
    assert taken(s, 0.0) == [1]
    assert s.take(10.0) == WINDOW and s.next_try(10.0) == WINDOW - 10  # the sender's limit
    run = s.take(WINDOW)
    assert isinstance(run, Run)
    s.add(item(3, at=WINDOW))
    s.finished(run, RETRY, WINDOW)
    assert s.take(WINDOW) == pytest.approx(WINDOW + 1) and s.next_try(WINDOW) == pytest.approx(1)
