"""How a worker waits: until someone queued work for it, it is stopped, or a timeout.

A worker rounds: `begin_round()`, look at the state, do what is due, and if
nothing was, `wait(seconds)`. The bell is cleared at the start of a round, so
a ring that comes while the worker looks is kept for the next wait.
"""

from __future__ import annotations

import asyncio
import contextlib


class Doorbell:
    def __init__(self) -> None:
        self._rung = asyncio.Event()
        self.stopping = False

    def ring(self) -> None:
        self._rung.set()

    def stop(self) -> None:
        self.stopping = True
        self._rung.set()

    def begin_round(self) -> None:
        self._rung.clear()

    async def wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._rung.wait(), max(0.0, seconds))
