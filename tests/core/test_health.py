"""The watchdog decision, driven with a fake clock."""

from __future__ import annotations

from dataclasses import replace

from feishu_mailbot.core.health import Pulse, Snapshot, Verdict, assess

T0 = 1000.0
OK = Snapshot(
    now=T0,
    connected=True,
    last_heard_at=T0 - 1,
    reconnecting_since=None,
    gave_up=False,
    loop_lag=0.0,
    ever_connected=True,
)


def verdict(s: Snapshot) -> Verdict:
    return assess(s, stall_after=90, reconnect_budget=300).verdict


def test_fresh_heartbeat_is_healthy() -> None:
    assert verdict(OK) is Verdict.HEALTHY
    assert assess(OK, stall_after=90, reconnect_budget=300).feed_watchdog


def test_silence_beyond_the_threshold_is_a_stall() -> None:
    assert verdict(replace(OK, last_heard_at=T0 - 89)) is Verdict.HEALTHY
    stalled = assess(replace(OK, last_heard_at=T0 - 91), stall_after=90, reconnect_budget=300)
    assert stalled.verdict is Verdict.STALLED and not stalled.feed_watchdog
    assert "no pong or frame from Feishu for 91s" in stalled.reason


def test_blocked_loop_is_a_stall_even_when_connected() -> None:
    assert verdict(replace(OK, loop_lag=120)) is Verdict.STALLED


def test_sdk_giving_up_is_a_stall() -> None:
    assert verdict(replace(OK, connected=False, gave_up=True)) is Verdict.STALLED


def test_reconnect_within_budget_keeps_feeding() -> None:
    down = replace(OK, connected=False, reconnecting_since=T0 - 200)
    health = assess(down, stall_after=90, reconnect_budget=300)
    assert health.verdict is Verdict.RECONNECTING and health.feed_watchdog
    assert verdict(replace(down, reconnecting_since=T0 - 301)) is Verdict.STALLED


def test_before_the_first_connection_the_start_timeout_rules() -> None:
    starting = replace(OK, connected=False, ever_connected=False, last_heard_at=None)
    assert verdict(starting) is Verdict.STARTING


def test_a_clock_walk_through_an_outage() -> None:
    """Connected → dropped → reconnecting → over budget, one simulated minute at a time."""
    seen = []
    for minute in range(9):
        now = T0 + 60 * minute
        if minute < 2:
            s = replace(OK, now=now, last_heard_at=now - 5)
        else:
            s = replace(OK, now=now, connected=False, reconnecting_since=T0 + 120)
        seen.append(verdict(s))
    assert seen[:2] == [Verdict.HEALTHY] * 2
    assert seen[2:8] == [Verdict.RECONNECTING] * 6  # 0…300 s down: within budget
    assert seen[8] is Verdict.STALLED


def test_a_worker_with_work_due_and_no_progress_is_a_stall() -> None:
    busy = Pulse("outbox", work_due=True, last_progress=T0 - 301)
    idle = Pulse("actions", work_due=False, last_progress=T0 - 10_000)
    fresh = Pulse("outbox", work_due=True, last_progress=T0 - 299)
    stalled = assess(replace(OK, workers=(idle, busy)), stall_after=90, reconnect_budget=300)
    assert stalled.verdict is Verdict.STALLED
    assert "the outbox worker has work due and has made no progress for 301s" in stalled.reason
    # Nothing due: waiting is what a worker should do. Recent progress: it is working.
    assert verdict(replace(OK, workers=(idle, fresh))) is Verdict.HEALTHY
    custom = assess(
        replace(OK, workers=(fresh,)), stall_after=90, reconnect_budget=300, worker_stall_after=60
    )
    assert custom.verdict is Verdict.STALLED
