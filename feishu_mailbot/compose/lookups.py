"""Looks up what a message refers to before it is mailed (see expand.py).

Like a name, what is looked up is decoration: a card whose name Feishu will
not give shows its id, and a merged forward Feishu will not expand is mailed
with a note saying so. Only a failure of the call itself (no answer, a rate
limit) makes the mail wait and try again, as a failed download does; so does
one for a name the expanded forward shows (names.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import tzinfo

from feishu_mailbot.compose.names import RETRY_SECONDS, NameResolver, NameUnavailable
from feishu_mailbot.core.model import Forwarded, Message
from feishu_mailbot.feishu import expand
from feishu_mailbot.feishu.errors import FeishuError, refused
from feishu_mailbot.feishu.rest import FeishuApi

log = logging.getLogger(__name__)

# Replied-to messages fetched for quotes, kept for the replies after them (one thread's
# replies all quote the same few). A failure is kept for RETRY_SECONDS, as a failed name
# is, so an unreachable Feishu costs one timeout, not one per mail, and a healed one is
# asked again.
QUOTES_KEPT = 256


class Unreachable(Exception):
    """Feishu could not be asked at all; the caller may try again later."""


class Lookups:
    def __init__(
        self, api: FeishuApi, names: NameResolver, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self._api = api
        self._names = names
        self._now = wall_clock
        # message id → (sender's name, message or None on failure, valid until)
        self._quotes: dict[str, tuple[str, Message | None, float]] = {}

    async def complete(self, msg: Message, zone: tzinfo, *, final: bool) -> Message:
        """The message with its merged forward expanded and its shared cards named.

        Raises Unreachable on a network failure unless `final`: then, as on any
        refusal, the forward keeps its placeholder with a note.
        """
        blocks = msg.blocks
        if msg.msg_type == "merge_forward":
            blocks = (await self._conversation(msg, zone, final),)
        cards = expand.shares(blocks)
        if cards:
            looked_up = await asyncio.gather(*(self._names.name(c.kind, c.id) for c in cards))
            blocks = expand.named(
                blocks, {(c.kind, c.id): n for c, n in zip(cards, looked_up, strict=True)}
            )
        return msg if blocks is msg.blocks else replace(msg, blocks=blocks)

    async def _conversation(self, msg: Message, zone: tzinfo, final: bool) -> Forwarded:
        try:
            items = await self._api.message_items(msg.message_id)
        except FeishuError as e:
            if not refused(e) and not final:  # no answer, a rate limit: later
                raise Unreachable(str(e)) from e
            log.warning("merged forward not expanded: %s", e, extra={"MESSAGE_ID": msg.message_id})
            reason = f"飞书错误码 {e.code}" if e.code is not None else "无法连接飞书"
            return Forwarded(note=expand.NOT_EXPANDED.format(reason))
        try:  # only the senders it shows: 50 a level, whatever the forward holds
            senders = await self._names.names(
                "user", expand.user_ids(items, msg.message_id), final=final
            )
        except NameUnavailable as e:  # a rate limit: later, as for the forward itself
            raise Unreachable(str(e)) from e
        return expand.conversation(items, msg.message_id, senders, zone)

    async def replied(self, message_id: str, zone: tzinfo) -> tuple[str, Message | None]:
        """A message not in the state, as Feishu has it: (sender's name, message)."""
        now = self._now()
        kept = self._quotes.get(message_id)
        if kept is not None and kept[2] > now:
            return kept[0], kept[1]
        self._quotes.pop(message_id, None)
        if len(self._quotes) >= QUOTES_KEPT:
            del self._quotes[next(iter(self._quotes))]  # the oldest
        name, found = await self._fetch_replied(message_id, zone)
        until = float("inf") if found is not None else now + RETRY_SECONDS
        self._quotes[message_id] = (name, found, until)
        return name, found

    async def _fetch_replied(self, message_id: str, zone: tzinfo) -> tuple[str, Message | None]:
        try:
            items = await self._api.message_items(message_id)
        except FeishuError as e:
            log.info("cannot fetch message %s to quote it: %s", message_id, e)
            return "", None
        item = next((i for i in items if i.get("message_id") == message_id), None)
        if item is None:
            return "", None
        kind, sender = expand.sender_of(item)
        blocks = expand.item_blocks(item, zone)
        name = await self._names.name("user", sender) if kind == "user" else expand.APP_SENDER
        msg_type = str(item.get("msg_type") or "")
        return name, Message("", message_id, "", "", sender, kind, msg_type, 0, blocks)
