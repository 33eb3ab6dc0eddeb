"""Display names for chats and people: config, memory, the database, then Feishu.

One resolver serves every worker and the command line, so a name looked up
for one mail is known to the next, and mails prepared side by side share one
REST call. A name is decoration: when Feishu cannot say, the id is used and
the mail goes out rather than waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Literal

from feishu_mailbot.feishu import FeishuApi, FeishuError
from feishu_mailbot.settings import Settings
from feishu_mailbot.state import State, names

log = logging.getLogger("feishu_mailbot.names")

Kind = Literal["chat", "user"]
CACHE_SECONDS = 6 * 3600
RETRY_SECONDS = 600.0  # after a failed lookup, use the id this long before asking again


class NameResolver:
    def __init__(
        self,
        settings: Settings,
        state: State,
        api: FeishuApi,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._state = state
        self._api = api
        self._now = wall_clock
        self._memory: dict[tuple[str, str], tuple[str, float]] = {}  # → (name, valid until)
        self._lookups: dict[tuple[str, str], asyncio.Future[str]] = {}  # asked of Feishu now

    async def name(self, kind: Kind, id_: str) -> str:
        if kind == "chat":
            configured = self.settings.chat(id_)
            if configured is not None and configured.name:
                return configured.name
        now = self._now()
        remembered = self._memory.get((kind, id_))
        if remembered is not None and remembered[1] > now:
            return remembered[0]
        cached = self._state.read(
            partial(names.cached, kind=kind, id_=id_, max_age=CACHE_SECONDS, now=now)
        )
        if cached is not None:
            self._memory[(kind, id_)] = (cached, now + CACHE_SECONDS)
            return cached
        lookup = self._lookups.get((kind, id_))
        if lookup is None:
            lookup = asyncio.ensure_future(self._look_up(kind, id_, now))
            self._lookups[(kind, id_)] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop((kind, id_), None))
        return await asyncio.shield(lookup)

    async def _look_up(self, kind: Kind, id_: str, now: float) -> str:
        try:
            name = await (self._api.chat_name(id_) if kind == "chat" else self._api.user_name(id_))
        except FeishuError as e:
            # Remember the failure for a while, or a missing scope would cost a call per mail.
            log.warning("cannot resolve %s name for %s: %s", kind, id_, e)
            self._memory[(kind, id_)] = (id_, now + RETRY_SECONDS)
            return id_
        self._memory[(kind, id_)] = (name, now + CACHE_SECONDS)
        if not self._state.readonly:  # `send-report --dry-run` keeps it in memory only
            await self._state.write(partial(names.remember, kind=kind, id_=id_, name=name, now=now))
        return name
