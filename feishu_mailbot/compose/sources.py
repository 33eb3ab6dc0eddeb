"""Where a mail's makings come from: the settings, the state, Feishu, names and the clock.

One `Sources` is shared by the daemon's builders and the outbox, so a reload changes
the settings of all of them at once, they share one cache of the relay's SIZE, and a
test wires any of them in one call.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from feishu_mailbot.compose.attachments import RelaySize
from feishu_mailbot.compose.names import NameResolver
from feishu_mailbot.config.settings import Settings
from feishu_mailbot.feishu.rest import FeishuApi
from feishu_mailbot.mail.headers import list_headers
from feishu_mailbot.state import State, subscriptions


@dataclass
class Sources:
    settings: Settings
    state: State
    api: FeishuApi
    names: NameResolver
    now: Callable[[], float] = time.time  # the wall clock
    relay: RelaySize = field(default_factory=RelaySize)
    _list_key: bytes | None = None

    async def lists(self, rules: Sequence[str]) -> list[str]:
        """List-Id and List-Unsubscribe for a mail of `rules`; none unless the bot reads
        its mailbox (`inbound:`), where the unsubscribe request would arrive."""
        if self.settings.inbound is None or not rules:
            return []
        if self._list_key is None:
            fresh = os.urandom(32)
            self._list_key = await self.state.write(partial(subscriptions.key, fresh=fresh))
        return list_headers(rules, self._list_key, self.settings.smtp.sender)

    @classmethod
    def of(
        cls,
        settings: Settings,
        state: State,
        api: FeishuApi,
        now: Callable[[], float] = time.time,
    ) -> Sources:
        """With a name resolver of their own, on the same clock."""
        return cls(settings, state, api, NameResolver(settings, state, api, now), now)
