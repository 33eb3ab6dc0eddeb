"""The schedule worker: queues a day's digest once its scheduled minute has passed,
and the digests of batched rules at their boundaries.

`daily_report.due_days` and `batching.boundary` decide (pure, with catch-up after
downtime and clock jumps); a digest is recorded in the transaction that queues
its mail, so each day, and each batched match, goes out once however often
this looks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import date, datetime
from functools import partial
from zoneinfo import ZoneInfo

from feishu_mailbot.compose.batch import Batcher
from feishu_mailbot.compose.daily_report import Reporter
from feishu_mailbot.config.settings import Settings
from feishu_mailbot.core import daily_report
from feishu_mailbot.feishu.errors import FeishuError
from feishu_mailbot.state import State, digests
from feishu_mailbot.workers.rounds import Worker

log = logging.getLogger(__name__)

TICK = 5.0  # how often the schedule is looked at


class Schedule(Worker):
    name = "schedule"

    def __init__(
        self,
        settings: Settings,
        state: State,
        reporter: Reporter,
        mail_queued: Callable[[], None],
        wall_clock: Callable[[], float] = time.time,
        batcher: Batcher | None = None,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__(state, wall_clock)
        self.settings = settings
        self._leading = leading  # several instances: only the schedule lock's holder
        self._reporter = reporter
        self._batcher = batcher
        self._mail_queued = mail_queued  # the outbox polls anyway; this saves it the wait

    def work_due(self) -> bool:
        if not self._leading():
            return False
        rs = self.settings.daily_report
        batched = self._batcher is not None and bool(self._batcher.rules())
        return batched or (rs is not None and rs.mode == "scheduled")

    async def _round(self) -> float:
        for job in (self._batches, self._tick) if self._leading() else ():
            # one failing does not hold the other up
            try:
                await job()
            except FeishuError as e:
                log.warning("scheduled digest postponed: %s", e)
            except Exception as e:  # a full disk, a bug: the next tick tries again
                log.error("scheduled digest postponed: %s: %s", type(e).__name__, e)
                log.debug("the schedule raised", exc_info=True)
        return TICK

    async def _batches(self) -> None:
        if self._batcher is not None and await self._batcher.send_due(self._bell.progress):
            self._mail_queued()

    async def _tick(self) -> None:
        rs = self.settings.daily_report
        if rs is None or rs.mode != "scheduled":
            return
        now = datetime.fromtimestamp(self._now(), ZoneInfo(rs.timezone))
        last = self._state.read(partial(digests.last_day, chat_id=rs.chat))
        for day in daily_report.due_days(date.fromisoformat(last) if last else None, now, rs):
            if (await self._reporter.build(day, progress=self._bell.progress)).queued:
                self._mail_queued()
