"""The schedule worker: queues a day's digest once its scheduled minute has passed.

`reports.due_days` decides (pure, with catch-up after downtime and clock
jumps); the digest is recorded in the transaction that queues its mail, so
each day goes out once however often this looks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import date, datetime
from functools import partial
from zoneinfo import ZoneInfo

from feishu_mailbot import reports
from feishu_mailbot.doorbell import Doorbell
from feishu_mailbot.feishu import FeishuError
from feishu_mailbot.reporter import Reporter
from feishu_mailbot.settings import Settings
from feishu_mailbot.state import State, digests

log = logging.getLogger("feishu_mailbot.schedule")

TICK = 5.0  # how often the schedule is looked at


class Schedule:
    def __init__(
        self,
        settings: Settings,
        state: State,
        reporter: Reporter,
        mail_queued: Callable[[], None],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._state = state
        self._reporter = reporter
        self._mail_queued = mail_queued  # the outbox polls anyway; this saves it the wait
        self._now = wall_clock
        self._bell = Doorbell()

    def stop(self) -> None:
        self._bell.stop()

    @property
    def last_progress(self) -> float:
        return self._bell.last_progress

    def work_due(self) -> bool:
        rs = self.settings.daily_report
        return rs is not None and rs.mode == "scheduled"

    async def run(self) -> None:
        while not self._bell.stopping:
            self._bell.begin_round()
            try:
                await self._tick()
            except FeishuError as e:
                log.warning("scheduled digest postponed: %s", e)
            except Exception as e:  # a full disk, a bug: the next tick tries again
                log.error("scheduled digest postponed: %s: %s", type(e).__name__, e)
                log.debug("the schedule raised", exc_info=True)
            await self._bell.wait(TICK)

    async def _tick(self) -> None:
        rs = self.settings.daily_report
        if rs is None or rs.mode != "scheduled":
            return
        now = datetime.fromtimestamp(self._now(), ZoneInfo(rs.timezone))
        last = self._state.read(partial(digests.last_day, chat_id=rs.chat))
        for day in reports.due_days(date.fromisoformat(last) if last else None, now, rs):
            if (await self._reporter.build(day)).queued:
                self._mail_queued()
