"""Is the bot alive *and listening*? The decision that gates the systemd watchdog.

Pure: a snapshot of the connection and the event loop in, a verdict out; the
caller supplies the clock. A verdict of STALLED stops the WATCHDOG=1 pings, so
systemd kills us (SIGABRT, with faulthandler's stack in the journal) and
starts a fresh process — which is exactly the repair for every way the old
bot went deaf:

- the server stops answering pings while the socket stays open, or all
  traffic stops (half-open TCP): nothing heard for `stall_after` seconds;
- the SDK gave up reconnecting (its exception dies in a task, the process
  would idle forever): `gave_up`;
- reconnecting has gone on longer than the reconnect budget;
- the event loop is blocked: the watchdog feeder runs on the loop, so a
  blocked loop feeds nothing; a loop that merely lags by more than
  `stall_after` is reported here too;
- a worker has work due but has made no progress for `worker_stall_after`:
  the Feishu side looks alive while mail has silently stopped.

A network blip shorter than the reconnect budget is RECONNECTING, which still
feeds the watchdog: the SDK repairs it in-process.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Verdict(Enum):
    HEALTHY = "healthy"
    STARTING = "starting"
    RECONNECTING = "reconnecting"
    STALLED = "stalled"


@dataclass(frozen=True)
class Pulse:
    """A worker as the verdict sees it."""

    name: str
    work_due: bool
    last_progress: float  # when it last began a round or finished an item (monotonic)


@dataclass(frozen=True)
class Snapshot:
    now: float
    connected: bool
    last_heard_at: float | None  # last pong or any frame from Feishu
    reconnecting_since: float | None
    gave_up: bool
    loop_lag: float  # how late the loop ran our last timer, seconds
    ever_connected: bool
    workers: tuple[Pulse, ...] = ()


@dataclass(frozen=True)
class Health:
    verdict: Verdict
    reason: str

    @property
    def feed_watchdog(self) -> bool:
        return self.verdict is not Verdict.STALLED


def assess(
    s: Snapshot,
    *,
    stall_after: float,
    reconnect_budget: float,
    worker_stall_after: float = 300.0,
) -> Health:
    if s.loop_lag > stall_after:
        return Health(Verdict.STALLED, f"event loop blocked for {s.loop_lag:.0f}s")
    if s.gave_up:
        return Health(Verdict.STALLED, "the SDK gave up reconnecting")
    for worker in s.workers:
        idle = s.now - worker.last_progress
        if worker.work_due and idle > worker_stall_after:
            return Health(
                Verdict.STALLED,
                f"the {worker.name} worker has work due and has made no progress for "
                f"{idle:.0f}s (threshold {worker_stall_after:.0f}s)",
            )
    if s.connected:
        heard = s.last_heard_at if s.last_heard_at is not None else s.now
        silent = s.now - heard
        if silent > stall_after:
            return Health(
                Verdict.STALLED,
                f"no pong or frame from Feishu for {silent:.0f}s (threshold {stall_after:.0f}s)",
            )
        return Health(Verdict.HEALTHY, "connected")
    if not s.ever_connected:
        # Before READY systemd's start timeout is in charge; keep feeding meanwhile.
        return Health(Verdict.STARTING, "connecting")
    since = s.reconnecting_since if s.reconnecting_since is not None else s.now
    down = s.now - since
    if down > reconnect_budget:
        return Health(
            Verdict.STALLED,
            f"reconnecting for {down:.0f}s, over the budget of {reconnect_budget:.0f}s",
        )
    return Health(Verdict.RECONNECTING, f"reconnecting for {down:.0f}s")
