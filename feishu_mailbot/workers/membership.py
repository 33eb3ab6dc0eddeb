"""This instance among those sharing the state: its lease, and the schedule lock.

Every RENEW_EVERY seconds the instance renews its row (instances.py) and takes
or keeps the `schedule` lock; the schedule and housekeeping workers do their
work only while `leading`. An instance that cannot renew (the database is down)
stops leading once its lease has run out, as the others then see it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from functools import partial

from feishu_mailbot import __version__
from feishu_mailbot.state import State, Tx
from feishu_mailbot.state import instances as instances_q
from feishu_mailbot.workers.rounds import Worker

log = logging.getLogger(__name__)

RENEW_EVERY = 5.0  # seconds at most; a third of the lease at least


class Membership(Worker):
    name = "membership"

    def __init__(
        self,
        state: State,
        lease: float = instances_q.LEASE,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(state, wall_clock)
        self._lease = lease
        self._renew_every = min(RENEW_EVERY, lease / 3)
        now = wall_clock()
        self._me = instances_q.Instance(
            state.instance, socket.gethostname(), os.getpid(), __version__, now, now, now
        )
        self._held = False
        self._renewed_at = float("-inf")

    def leading_now(self) -> bool:
        """Whether this instance runs the schedule now (holds a live `schedule` lock)."""
        return self._held and self._now() - self._renewed_at < self._lease

    async def join(self) -> None:
        """At start, before the workers: predecessors on this host that died let go of
        their mail and locks now; this instance is registered and may lead."""
        await self._renew(first=True)

    async def leave(self) -> None:
        """A clean stop: the lock and the unsent mail this instance held are free now."""
        await self._state.write(partial(instances_q.retire, me=self._me.id))

    async def _round(self) -> float:
        await self._renew()
        return self._renew_every

    async def _renew(self, first: bool = False) -> None:
        now = self._now()
        me = self._me

        def work(tx: Tx) -> tuple[bool, list[str]]:
            dead = instances_q.dead_here(tx, me.host, me.id, now) if first else []
            instances_q.forget(tx, dead)
            instances_q.renew(tx, me, now, self._lease)
            held = instances_q.acquire(tx, instances_q.SCHEDULE, me.id, now, self._lease)
            return held, dead

        was = self.leading_now()
        held, dead = await self._state.write(work)
        self._held, self._renewed_at = held, now
        for gone in dead:
            log.info("instance %s is gone from this host: its mail is taken over now", gone)
        if held and not was:
            log.info("this instance runs the schedule (digests, batches, housekeeping)")
        elif was and not held:
            log.warning("another instance runs the schedule now")
