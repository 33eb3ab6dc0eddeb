"""The housekeeping worker: keeps the state as small as the retention settings say.

Every PRUNE_EVERY seconds it deletes what the retention settings retire, a
batch per commit with a pause between batches so acks never queue behind a
large delete, removes the spool files of mail it deleted, and then gives the
freed pages back to the file system a few at a time. Pruning is never
urgent: it counts as work due for the health verdict only while a batch
is under way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial

from feishu_mailbot.config.settings import RetentionSettings, Settings
from feishu_mailbot.state import State, retention
from feishu_mailbot.state import instances as instances_q
from feishu_mailbot.workers.rounds import Worker

log = logging.getLogger(__name__)

PRUNE_EVERY = 600.0
BATCH = 500  # rows a commit
PAUSE = 0.05  # between batches: room for the acks
LEAD_POLL = 5.0  # another instance leads: look again this soon
RELEASE_PAGES = 256  # 1 MB of a 4 KiB-page file at a time


def cutoffs(r: RetentionSettings, now: float) -> retention.Cutoffs:
    return retention.Cutoffs(events=now - r.events, messages=now - r.messages, mail=now - r.mail)


class Housekeeper(Worker):
    name = "housekeeping"

    def __init__(
        self,
        settings: Settings,
        state: State,
        wall_clock: Callable[[], float] = time.time,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__(state, wall_clock)
        self.settings = settings
        self._leading = leading  # several instances: only the schedule lock's holder
        self._busy = False
        self._removed = 0
        self.rounds = 0  # whole prunes finished, for tests to wait on

    def work_due(self) -> bool:
        return self._busy

    async def _round(self) -> float | None:
        if not self._leading():
            return LEAD_POLL
        self._busy = True
        limits = cutoffs(self.settings.retention, self._now())
        pruned = await self._state.write(partial(retention.prune, cutoffs=limits, limit=BATCH))
        for name in pruned.spool:
            await asyncio.to_thread(self._state.spool.remove, name)
        self._removed += pruned.rows
        if pruned.rows == BATCH:
            return PAUSE
        if self._state.release(RELEASE_PAGES) > 0:
            return PAUSE
        if self._removed:
            log.info(
                "housekeeping: %d old rows removed; the state is %.1f MB",
                self._removed,
                self._state.size() / 1e6,
            )
        await self._state.write(partial(instances_q.prune, now=self._now()))
        self._removed, self._busy = 0, False
        self.rounds += 1
        return PRUNE_EVERY
