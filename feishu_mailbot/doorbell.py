"""How a worker waits: until someone queued work for it, it is stopped, or a timeout.

A worker rounds: `begin_round()`, look at the state, do what is due, and if
nothing was, `wait(seconds)`. The bell is cleared at the start of a round, so
a ring that comes while the worker looks is kept for the next wait. Rounds
and finished items are `progress`, which the health verdict watches: a worker
with work due and no progress for too long is a stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import time


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
