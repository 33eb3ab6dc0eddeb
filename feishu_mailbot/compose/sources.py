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
from feishu_mailbot.core import reply
from feishu_mailbot.core.reply import mail_key
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
    _key: bytes | None = None

    async def key(self) -> bytes:
        """The state's key of the tokens in our mail's addresses (List-Unsubscribe,
        Reply-To, the envelope sender), made by the first instance that asks."""
        if self._key is None:
            fresh = os.urandom(32)
            self._key = await self.state.write(partial(subscriptions.key, fresh=fresh))
        return self._key

    async def lists(self, rules: Sequence[str]) -> list[str]:
        """List-Id and List-Unsubscribe for a mail of `rules`; none unless the bot reads
        its mailbox (`inbound:`), where the unsubscribe request would arrive."""
        if self.settings.inbound is None or not rules:
            return []
        return list_headers(rules, await self.key(), self.settings.smtp.sender)

    async def reply_to(self, mail_id: str) -> list[str]:
        """The Reply-To of a forward when `inbound.reply_address` is set: with the mail's
        token when it has a `{token}`."""
        inbound = self.settings.inbound
        if inbound is None or inbound.reply_address is None:
            return []
        pattern = inbound.reply_address
        if "{token}" in pattern:
            pattern = reply.tokened_address(pattern, await self.key(), mail_key(mail_id))
        return [f"Reply-To: {pattern}"]

    async def envelope_sender(self, mail_id: str) -> str:
        """Where delivery reports about a mail go: its own address (VERP) when
        `inbound.reply_address` has a `{token}`, smtp.from otherwise."""
        inbound = self.settings.inbound
        if (
            inbound is None
            or inbound.reply_address is None
            or "{token}" not in inbound.reply_address
        ):
            return self.settings.smtp.sender
        key = await self.key()
        return reply.tokened_address(inbound.reply_address, key, mail_key(mail_id), bounce=True)

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
