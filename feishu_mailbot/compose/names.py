"""Display names for chats and people: config, memory, the database, then Feishu.

One resolver serves every worker and the command line, so a name looked up
for one mail is known to the next, and mails prepared side by side share one
REST call. At most NAME_LOOKUPS calls are out at once, whoever asks: a merged
forward shows up to 50 senders a level, and 频控策略 limits each API per app and
tenant (https://open.feishu.cn/document/server-docs/api-call-guide/frequency-control;
获取单个用户信息 is one of the "1000 次/分钟、50 次/秒" ones), so a burst of
forwards must not turn into a burst of hundreds of calls.

A name is decoration: when Feishu answers that it will not say (a missing
contact scope, a user outside the app's range), the id is shown and the mail goes
out. `name` says so for every failure. `names`, for the senders a forward shows,
tells a failure of the call itself (no answer, or the rate limit) from an answer:
then, unless it is the mail's last try, it raises NameUnavailable and the mail
waits and tries again, as a rate-limited download does, instead of going out
with open_ids for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

from feishu_mailbot.config.settings import Settings
from feishu_mailbot.feishu.errors import FeishuError, unanswered
from feishu_mailbot.feishu.rest import FeishuApi
from feishu_mailbot.state import State, names

log = logging.getLogger(__name__)

Kind = Literal["chat", "user"]
CACHE_SECONDS = 6 * 3600
RETRY_SECONDS = 600.0  # after a failed lookup, use the id this long before asking again
NAME_LOOKUPS = 4  # calls to Feishu for names at once, for the whole process


class NameUnavailable(Exception):
    """Feishu gave no answer about a name (no response, a rate limit); ask again later."""


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
        # (kind, id) → (name, valid until, the id after a call that got no answer)
        self._memory: dict[tuple[str, str], tuple[str, float, bool]] = {}
        self._lookups: dict[tuple[str, str], asyncio.Future[str]] = {}  # asked of Feishu now
        self._calls = asyncio.Semaphore(NAME_LOOKUPS)

    async def name(self, kind: Kind, id_: str) -> str:
        """The name, or the id when Feishu would not or could not say."""
        known = self._known(kind, id_, unanswered_too=True)
        if known is not None:
            return known
        try:
            return await self._ask(kind, id_)
        except FeishuError as e:
            return self._failed(kind, id_, e)

    async def names(self, kind: Kind, ids: Sequence[str], *, final: bool) -> dict[str, str]:
        """Each id's name, NAME_LOOKUPS asked at a time. Raises NameUnavailable when a
        call got no answer, unless `final`: then, as on a refusal, the id stands in."""
        found: dict[str, str] = {}
        wanted = []
        for id_ in dict.fromkeys(ids):
            known = self._known(kind, id_, unanswered_too=final)
            if known is None:
                wanted.append(id_)
            else:
                found[id_] = known
        for start in range(0, len(wanted), NAME_LOOKUPS):
            chunk = wanted[start : start + NAME_LOOKUPS]
            asked = await asyncio.gather(
                *(self._ask(kind, i) for i in chunk), return_exceptions=True
            )
            for id_, answer in zip(chunk, asked, strict=True):
                if isinstance(answer, str):
                    found[id_] = answer
                elif isinstance(answer, FeishuError):
                    found[id_] = self._failed(kind, id_, answer)
                    if unanswered(answer) and not final:  # the rest would meet the same
                        raise NameUnavailable(f"{kind} name for {id_}: {answer}") from answer
                else:
                    raise answer
        return found

    def _known(self, kind: Kind, id_: str, *, unanswered_too: bool) -> str | None:
        """From the config, memory or the database; None to ask Feishu. The id kept
        after a call that got no answer counts only if `unanswered_too`."""
        if kind == "chat":
            configured = self.settings.chat(id_)
            if configured is not None and configured.name:
                return configured.name
        now = self._now()
        remembered = self._memory.get((kind, id_))
        if remembered is not None:
            name, until, no_answer = remembered
            if until > now and (unanswered_too or not no_answer):
                return name
        cached = self._state.read(
            partial(names.cached, kind=kind, id_=id_, max_age=CACHE_SECONDS, now=now)
        )
        if cached is not None:
            self._memory[(kind, id_)] = (cached, now + CACHE_SECONDS, False)
        return cached

    async def _ask(self, kind: Kind, id_: str) -> str:
        """One call per (kind, id) at a time, shared by whoever asks meanwhile; raises
        FeishuError."""
        lookup = self._lookups.get((kind, id_))
        if lookup is None:
            lookup = asyncio.ensure_future(self._call(kind, id_))
            self._lookups[(kind, id_)] = lookup
            lookup.add_done_callback(lambda done: self._settled(kind, id_, done))
        return await asyncio.shield(lookup)

    def _settled(self, kind: Kind, id_: str, done: asyncio.Future[str]) -> None:
        self._lookups.pop((kind, id_), None)
        if not done.cancelled():
            done.exception()  # seen here: a caller that was cancelled meanwhile did not

    async def _call(self, kind: Kind, id_: str) -> str:
        async with self._calls:
            name = await (self._api.chat_name(id_) if kind == "chat" else self._api.user_name(id_))
        now = self._now()
        self._memory[(kind, id_)] = (name, now + CACHE_SECONDS, False)
        if not self._state.readonly:  # `send-report --dry-run` keeps it in memory only
            await self._state.write(partial(names.remember, kind=kind, id_=id_, name=name, now=now))
        return name

    def _failed(self, kind: Kind, id_: str, error: FeishuError) -> str:
        """The id, remembered for a while, or a missing scope would cost a call per mail."""
        if self._memory.get((kind, id_), ("", 0.0, False))[1] <= self._now():  # once a while
            log.warning("cannot resolve %s name for %s: %s", kind, id_, error)
        self._memory[(kind, id_)] = (id_, self._now() + RETRY_SECONDS, unanswered(error))
        return id_
