"""How a worker waits: until someone queued work for it, it is stopped, or a timeout.

A worker rounds: `begin_round()`, look at the state, do what is due, and if
nothing was, `wait(seconds)`. The bell is cleared at the start of a round, so
a ring that comes while the worker looks is kept for the next wait. Rounds
and finished items are `progress`, which the health verdict watches: a worker
with work due and no progress for too long is a stall.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from feishu_mailbot.state import DatabaseError, PostgresUnavailable, State

# Seconds between rounds, at most, while the state database refuses work: a refused round
# costs a transaction begun and rolled back, and mail must go within seconds of the space
# coming back.
STATE_RETRY_MAX = 5.0


def refusal(error: BaseException) -> str:
    """What a state error means for the operator, in the words the journal uses."""
    if isinstance(error, PostgresUnavailable):
        return "database unreachable"
    return "the state database refused work"


class Doorbell:
    def __init__(self) -> None:
        self._rung = asyncio.Event()
        self.stopping = False
        self.last_progress = time.monotonic()

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def ring(self) -> None:
        self._rung.set()

    def stop(self) -> None:
        self.stopping = True
        self._rung.set()

    def begin_round(self) -> None:
        self._rung.clear()
        self.progress()

    async def wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._rung.wait(), max(0.0, seconds))
        self.progress()


async def rounds(
    bell: Doorbell, work: Callable[[], Awaitable[float | None]], name: str, log: logging.Logger
) -> None:
    """Run `work` round after round until the bell is stopped.

    `work` returns how long to wait before the next round (None: go on at once).
    When the state database refuses (a full disk, a broken file) nothing can be
    recorded, so nothing is done: the round is tried again with backoff, and
    the journal says so once when it starts and once when it ends.
    """
    failing = 0  # rounds in a row the state database refused
    while not bell.stopping:
        bell.begin_round()
        try:
            wait = await work()
        except DatabaseError as e:
            failing += 1
            if failing == 1:
                log.error("%s paused: %s: %s", name, refusal(e), e)
            await bell.wait(min(STATE_RETRY_MAX, 2.0**failing))
            continue
        if failing:
            log.warning("%s resumed: the state database works again", name)
            failing = 0
        if wait is not None:
            await bell.wait(wait)


class Worker(abc.ABC):
    """A worker of the daemon, over the state and a wall clock: `run` goes round by
    round until `stop`; `wake` rings its bell (work was queued for it); the health
    verdict reads `last_progress`."""

    #: Its name in the journal ("outbox paused: …").
    name: str

    def __init__(self, state: State, wall_clock: Callable[[], float]) -> None:
        self._state = state
        self._now = wall_clock
        self._bell = Doorbell()

    def wake(self) -> None:
        self._bell.ring()

    def stop(self) -> None:
        self._bell.stop()

    @property
    def last_progress(self) -> float:
        return self._bell.last_progress

    async def run(self) -> None:
        await rounds(self._bell, self._round, self.name, logging.getLogger(type(self).__module__))

    @abc.abstractmethod
    async def _round(self) -> float | None:
        """One round's work; how long to wait before the next (None: go on at once)."""
