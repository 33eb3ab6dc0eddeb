"""Where a mail's makings come from: the settings, the state, Feishu, names and the clock.

One `Sources` is shared by the daemon's builders and the outbox, so a reload changes
the settings of all of them at once, they share one cache of the relay's SIZE, and a
test wires any of them in one call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from feishu_mailbot.compose.attachments import RelaySize
from feishu_mailbot.compose.names import NameResolver
from feishu_mailbot.config.settings import Settings
from feishu_mailbot.feishu.rest import FeishuApi
from feishu_mailbot.state import State


@dataclass
class Sources:
    settings: Settings
    state: State
    api: FeishuApi
    names: NameResolver
    now: Callable[[], float] = time.time  # the wall clock
    relay: RelaySize = field(default_factory=RelaySize)

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
