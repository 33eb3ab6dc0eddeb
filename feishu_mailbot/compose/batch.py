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
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from zoneinfo import ZoneInfo

from feishu_mailbot.compose.attachments import digest_images, queue_digest
from feishu_mailbot.compose.lookups import Lookups
from feishu_mailbot.compose.sources import Sources
from feishu_mailbot.config.settings import Rule, Settings
from feishu_mailbot.core import batch
from feishu_mailbot.core.model import Message, StoredFormError
from feishu_mailbot.core.retry import UNEXPECTED_ATTEMPTS
from feishu_mailbot.core.unsubscribe import receives
from feishu_mailbot.feishu.errors import FeishuError
from feishu_mailbot.mail import headers
from feishu_mailbot.mail.batch import compose as compose_mail
from feishu_mailbot.state import DatabaseError, batches, messages, subscriptions

log = logging.getLogger(__name__)

# Matches one digest carries at most: a mail stays readable (and within the relay's
# size); more waiting go out at once in further digests of the same boundary.
PER_DIGEST = 500
# A boundary is acted on this long after it: a match stamped just before it may still be
# in the group commit.
GRACE = 2.0
# A match stamped further ahead than this was stamped by a clock since set back: it goes
# with the next digest rather than wait for that time to come again.
AHEAD = 60.0

Found = tuple[Message, str, str]  # a match, its sender's name, its chat's name


class Batcher:
    def __init__(self, sources: Sources) -> None:
        self.src = sources
        self._lookups = Lookups(sources.api, sources.names, sources.now)
        self._progress: Callable[[], None] = lambda: None
        # How often composing a rule's digest from the same first match raised; keyed so
        # that a digest built at `now` (a rule unbatched) counts across ticks too.
        self._raised: dict[tuple[str, str], int] = {}

    @property
    def settings(self) -> Settings:
        return self.src.settings

    def rules(self) -> list[Rule]:
        return [r for r in self.settings.rules if r.batch is not None]

    async def send_due(self, progress: Callable[[], None] = lambda: None) -> int:
        """Queues every batched rule's digest that is due; how many it queued.

        `progress` is called for each match read, so that a long digest is not
        taken for a stalled worker.
        """
        self._progress = progress
        now = datetime.fromtimestamp(self.src.now(), ZoneInfo(self.settings.timezone))
        queued = await self._orphans(now)
        for rule in self.rules():
            assert rule.batch is not None
            end = batch.boundary(now - timedelta(seconds=GRACE), rule.batch)
            while await self.build(rule, end):
                queued += 1
        return queued

    async def _orphans(self, now: datetime) -> int:
        """Matches waiting for a rule that is no longer batched go out in one last digest
        now; those of a rule that is gone are dropped, with a warning."""
        names = {r.name for r in self.rules()}
        queued = 0
        configured = {r.name: r for r in self.settings.rules}
        for name in sorted(self.src.state.read(batches.rules_waiting) - names):
            rule = configured.get(name)
            if rule is not None:  # `batch:` was taken off: its last digest, at once
                while await self.build(rule, now, start=now):
                    queued += 1
                continue
            count = await self.src.state.write(partial(batches.abandon, rule=name))
            log.warning(
                "rule %r is gone: %d matches that waited for its batch digest dropped",
                name,
                count,
            )
        return queued

    async def _entry(self, message_id: str, end: datetime) -> Found | None:
        """A match as the digest shows it; None (an error logged) if it cannot be read.

        Lookups are decoration: one that fails leaves the message as stored rather
        than hold up every digest of the rule.
        """
        self._progress()
        fields = {"MESSAGE_ID": message_id}
        try:
            msg = self.src.state.read(partial(messages.get, message_id=message_id))
        except StoredFormError as e:
            log.error("a batched match cannot be read, left out: %s", e, extra=fields)
            return None
        if msg is None:  # cannot happen while it waits (retention keeps it)
            return None
        try:
            msg = await self._lookups.complete(msg, end.tzinfo or ZoneInfo("UTC"), final=True)
        except Exception as e:  # a bug in one message's lookups: show it as stored
            log.error("a batched match shown as stored, its lookups failed: %s", e, extra=fields)
        sender = await self.src.names.name("user", msg.sender_open_id)
        return msg, sender, await self.src.names.name("chat", msg.chat_id)

    async def build(self, rule: Rule, end: datetime, start: datetime | None = None) -> bool:
        """A digest of the rule's matches received before `end`; False if none was queued.

        `start` is where the span it shows begins: the boundary before `end` unless
        given (and the earliest match's time when that is earlier).
        """
        waiting = self.src.state.read(
            partial(
                batches.waiting,
                rule=rule.name,
                before=end.timestamp(),
                limit=PER_DIGEST,
                after=self.src.now() + AHEAD,
            )
        )
        if not waiting:
            return False
        # Unique per set of matches: after a clock jump back, a later digest may share `end`.
        mail_id = f"batch/{rule.name}/{end.isoformat()}/{waiting[0]}"
        try:
            queued = await self._compose(rule, end, start, waiting, mail_id)
        except (FeishuError, *DatabaseError):
            raise  # not the digest's: the next tick tries again
        except Exception as e:  # a bug, or a value a library refuses: it will not get better
            key = (rule.name, waiting[0])
            tries = self._raised[key] = self._raised.get(key, 0) + 1
            if tries < UNEXPECTED_ATTEMPTS:
                raise  # the schedule says so, and the next tick tries again
            del self._raised[key]
            return await self._failed(rule, waiting, mail_id, f"{type(e).__name__}: {e}", tries)
        self._raised.pop((rule.name, waiting[0]), None)
        return queued

    async def _failed(
        self, rule: Rule, waiting: list[str], mail_id: str, error: str, tries: int
    ) -> bool:
        """Recorded failed with its matches, like a mail: `queue --failed` shows it."""
        if not await self.src.state.write(
            partial(
                batches.fail,
                rule=rule.name,
                message_ids=waiting,
                mail_id=mail_id,
                recipients=rule.to,
                error=error,
                now=self.src.now(),
            )
        ):
            return False
        log.error(
            "batch digest of %s failed for good after %d attempts: %s; its %d matches "
            "are in `feishu-mailbot queue --failed` (retry composes it again)",
            rule.name,
            tries,
            error,
            len(waiting),
            extra={"MAIL_ID": mail_id, "RULE": rule.name},
        )
        return True

    async def _compose(
        self, rule: Rule, end: datetime, start: datetime | None, waiting: list[str], mail_id: str
    ) -> bool:
        to = receives(rule.to, rule.name, self.src.state.read(subscriptions.pairs))
        if not to:
            dropped = await self.src.state.write(partial(batches.abandon, rule=rule.name))
            log.info(
                "batch digest of %s not sent: all its recipients unsubscribed; %d matches dropped",
                rule.name,
                dropped,
                extra={"RULE": rule.name},
            )
            return False
        found = [f for f in [await self._entry(m, end) for m in waiting] if f is not None]
        if start is None:
            assert rule.batch is not None
            start = batch.window_start(end, rule.batch)
        roundup = batch.build(rule.name, start, end, found)
        images = await digest_images(
            self.src.api, self.settings, [m for m, _, _ in found], self.src.relay, self._progress
        )
        subject, composed = compose_mail(
            roundup,
            sender=self.settings.smtp.sender,
            to=to,
            message_id=headers.make_message_id(mail_id),
            date=datetime.fromtimestamp(self.src.now(), end.tzinfo),
            images=images,
            lists=await self.src.lists((rule.name,)),
        )
        record = partial(
            batches.take,
            rule=rule.name,
            message_ids=waiting,
            mail_id=mail_id,
            recipients=to,
            now=self.src.now(),
        )
        if not await queue_digest(self.src.state, mail_id, subject, composed, images, record):
            log.info("batch digest of %s rebuilt at the next look: a match left", rule.name)
            return False
        log.info(
            "batch digest of %s queued to %s: %d messages",
            rule.name,
            ", ".join(to),
            len(waiting),
            extra={"MAIL_ID": mail_id},
        )
        return True
