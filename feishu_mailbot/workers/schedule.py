"""The schedule worker: queues a day's digest once its scheduled minute has passed.

`reports.due_days` decides (pure, with catch-up after downtime and clock
jumps); the digest is recorded in the transaction that queues its mail, so
each day goes out once however often this looks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import date, datetime
from functools import partial
from zoneinfo import ZoneInfo

from feishu_mailbot import reports
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

    async def run(self) -> None:
        while True:
            try:
                await self._tick()
            except FeishuError as e:
                log.warning("scheduled digest postponed: %s", e)
            await asyncio.sleep(TICK)

    async def _tick(self) -> None:
        rs = self.settings.daily_report
        if rs is None or rs.mode != "scheduled":
            return
        now = datetime.fromtimestamp(self._now(), ZoneInfo(rs.timezone))
        last = self._state.read(partial(digests.last_day, chat_id=rs.chat))
        for day in reports.due_days(date.fromisoformat(last) if last else None, now, rs):
            if (await self._reporter.build(day)).queued:
                self._mail_queued()
