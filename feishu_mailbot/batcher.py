"""Batched rules' digests: built from the matches waiting in the state, queued once.

`batching` decides when and what the mail looks like (pure); this reads the
matches, looks up names and images, and queues the digest in the transaction
that marks its matches as carried (state.batches.take): a match is in exactly
one digest across restarts and clock jumps, and one recalled meanwhile makes
the digest be built again at the next look. Not a worker: the schedule worker
asks it at every tick.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from zoneinfo import ZoneInfo

from feishu_mailbot import batching, mail
from feishu_mailbot.attachments import SPOOL_ABOVE, digest_images, store
from feishu_mailbot.feishu import FeishuApi
from feishu_mailbot.lookups import Lookups
from feishu_mailbot.model import Message
from feishu_mailbot.names import NameResolver
from feishu_mailbot.settings import Rule, Settings
from feishu_mailbot.state import State, batches, messages

log = logging.getLogger("feishu_mailbot.batches")


class Batcher:
    def __init__(
        self,
        settings: Settings,
        state: State,
        api: FeishuApi,
        names: NameResolver,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._state = state
        self._api = api
        self._names = names
        self._lookups = Lookups(api, names)
        self._now = wall_clock
        self._rules_checked: tuple[str, ...] | None = None  # for abandon, at start and reload

    def rules(self) -> list[Rule]:
        return [r for r in self.settings.rules if r.batch is not None]

    async def send_due(self) -> int:
        """Queues every batched rule's digest that is due; how many it queued."""
        await self._abandon()
        zone = ZoneInfo(self.settings.timezone)
        now = datetime.fromtimestamp(self._now(), zone)
        queued = 0
        for rule in self.rules():
            assert rule.batch is not None
            end = batching.boundary(now, rule.batch)
            queued += await self.build(rule, end)
        return queued

    async def _abandon(self) -> None:
        """Matches of a batched rule that was removed (or unbatched) will never be sent."""
        names = tuple(r.name for r in self.rules())
        if names == self._rules_checked:
            return
        gone = await self._state.write(partial(batches.abandon, rules=names))
        for rule, count in gone.items():
            log.warning(
                "rule %r is no longer a batched rule: %d matches waiting for its digest dropped",
                rule,
                count,
            )
        self._rules_checked = names

    async def build(self, rule: Rule, end: datetime) -> bool:
        """The digest of the rule's matches received before `end`; False if none wait."""
        assert rule.batch is not None
        waiting = self._state.read(partial(batches.waiting, rule=rule.name, before=end.timestamp()))
        if not waiting:
            return False
        found: list[tuple[Message, str, str]] = []
        for message_id in waiting:
            msg = self._state.read(partial(messages.get, message_id=message_id))
            if msg is None:  # cannot happen while it waits (retention keeps it): skip
                continue
            msg = await self._lookups.complete(msg, end.tzinfo or ZoneInfo("UTC"), final=True)
            sender = await self._names.name("user", msg.sender_open_id)
            found.append((msg, sender, await self._names.name("chat", msg.chat_id)))
        roundup = batching.build(rule.name, batching.window_start(end, rule.batch), end, found)
        # Unique per set of matches: after a clock jump back, a later digest may share `end`.
        mail_id = f"batch/{rule.name}/{end.isoformat()}/{waiting[0]}"
        images = await digest_images(self._api, self.settings, [m for m, _, _ in found])
        subject, composed = batching.compose(
            roundup,
            sender=self.settings.smtp.sender,
            to=rule.to,
            message_id=mail.make_message_id(mail_id),
            date=datetime.fromtimestamp(self._now(), end.tzinfo),
            images=images,
        )
        large = sum(len(image.data) for image in images.values()) > SPOOL_ABOVE
        prepared = await store(self._state, mail_id, subject, composed, large)
        queued = await self._state.write(
            partial(
                batches.take,
                rule=rule.name,
                message_ids=waiting,
                mail_id=mail_id,
                recipients=rule.to,
                prepared=prepared,
                now=self._now(),
            )
        )
        if not queued:
            if prepared.spool is not None:
                self._state.spool.remove(prepared.spool)
            log.info("batch digest of %s rebuilt at the next look: a match left", rule.name)
            return False
        log.info(
            "batch digest of %s queued to %s: %d messages",
            rule.name,
            ", ".join(rule.to),
            len(waiting),
            extra={"MAIL_ID": mail_id},
        )
        return True
