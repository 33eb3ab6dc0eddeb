"""Daily-report digests and supplements: built from the stored reports and queued once.

The decisions are in `reports` (pure) and the mail in `digest` (pure); this
module loads what they need from the state and Feishu, and records what was
queued. A digest is recorded in the same transaction that queues its mail, so
"a digest for a day is sent once" holds across triggers, the schedule,
restarts and clock jumps; the mail itself then goes through the outbox like
any other. Not a worker: the action worker, the schedule and `send-report`
each ask it for a digest.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial
from zoneinfo import ZoneInfo

from feishu_mailbot.compose.attachments import digest_images, queue_digest
from feishu_mailbot.compose.sources import Sources
from feishu_mailbot.config.settings import ReportSettings, Settings
from feishu_mailbot.core import daily_report
from feishu_mailbot.core.model import Message
from feishu_mailbot.mail import attachments, headers
from feishu_mailbot.mail.daily_report import Composed, compose_digest
from feishu_mailbot.state import digests, messages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    queued: bool
    day: date
    text: str  # the plain-text digest (what --dry-run prints)
    subject: str
    recipients: tuple[str, ...]
    already_at: float | None = None  # when the day's digest had already been queued
    submitted: int = 0
    expected: int = 0


class Reporter:
    def __init__(self, sources: Sources) -> None:
        self.src = sources

    @property
    def settings(self) -> Settings:
        return self.src.settings

    @property
    def rs(self) -> ReportSettings:
        assert self.settings.daily_report is not None
        return self.settings.daily_report

    async def build(
        self,
        day: date,
        *,
        force: bool = False,
        dry_run: bool = False,
        kind: str = "digest",
        progress: Callable[[], None] = lambda: None,
    ) -> Outcome:
        """Build the day's digest (or supplement) and, unless dry_run, queue it once;
        `progress` is called for each image fetched, for the worker's health."""
        rs = self.rs
        day_key = day.isoformat()
        records = self.src.state.read(partial(digests.for_day, chat_id=rs.chat, day=day_key))
        first = next((r for r in records if r.kind == "digest"), None)
        if kind == "digest" and first is not None and not force:
            return Outcome(False, day, "", "", first.recipients, already_at=first.queued_at)
        start, end = daily_report.day_bounds_ms(day, rs)
        stored = self.src.state.read(
            partial(messages.between, chat_id=rs.chat, start_ms=start, end_ms=end)
        )
        day_reports = [m for m in stored if daily_report.is_report(m, rs)]
        included = self.src.state.read(partial(digests.included, chat_id=rs.chat, day=day_key))
        if kind == "supplement":
            fresh = [m for m in day_reports if m.message_id not in included]
            earlier = [m for m in day_reports if m.message_id in included]
        else:
            fresh, earlier = day_reports, []
        chat_name = await self.src.names.name("chat", rs.chat)
        entries = [await self._entry(m) for m in fresh]
        earlier_entries = [await self._entry(m) for m in earlier]
        model = daily_report.build_digest(
            day, chat_name, entries, rs, supplement=kind == "supplement", earlier=earlier_entries
        )
        mail_id = f"digest/{rs.chat}/{day_key}/{len(records) + 1}"
        images = await digest_images(self.src.api, self.settings, fresh, self.src.relay, progress)
        composed = self._compose(model, mail_id, images)
        outcome = Outcome(
            False,
            day,
            composed.text,
            composed.subject,
            rs.recipients,
            submitted=model.submitted,
            expected=model.expected,
        )
        if dry_run or (kind == "supplement" and not fresh):
            return outcome
        queued = await self._queue(
            mail_id, kind, day_key, composed, images, [m.message_id for m in fresh]
        )
        if queued:
            log.info(
                "%s for %s queued to %s: %s",
                kind,
                day_key,
                ", ".join(rs.recipients),
                composed.subject,
                extra={"CHAT_ID": rs.chat, "MAIL_ID": mail_id},
            )
        return dataclasses.replace(outcome, queued=queued)

    def _compose(
        self, model: daily_report.Digest, mail_id: str, images: dict[str, attachments.Attachment]
    ) -> Composed:
        rs = self.rs
        return compose_digest(
            model,
            subject=rs.subject,
            sender=self.settings.smtp.sender,
            to=rs.recipients,
            message_id=headers.make_message_id(mail_id),
            date=datetime.fromtimestamp(self.src.now(), ZoneInfo(rs.timezone)),
            images=images,
        )

    async def _entry(self, msg: Message) -> daily_report.Entry:
        return daily_report.Entry(msg, await self.src.names.name("user", msg.sender_open_id))

    async def immediate(self, msg: Message) -> bool:
        """`mode: immediate`: one report, mailed as a digest of its own; False if it was already."""
        rs = self.rs
        day = daily_report.report_day(msg.create_time_ms, rs)
        chat_name = await self.src.names.name("chat", rs.chat)
        model = daily_report.build_digest(day, chat_name, [await self._entry(msg)], rs)
        mail_id = f"report/{msg.message_id}"
        images = await digest_images(self.src.api, self.settings, [msg], self.src.relay)
        composed = self._compose(model, mail_id, images)
        return await self._queue(
            mail_id, "immediate", day.isoformat(), composed, images, [msg.message_id]
        )

    async def _queue(
        self,
        mail_id: str,
        kind: str,
        day: str,
        composed: Composed,
        images: dict[str, attachments.Attachment],
        message_ids: list[str],
    ) -> bool:
        """Records the digest and queues its mail, once."""
        record = partial(
            digests.queue,
            mail_id=mail_id,
            chat_id=self.rs.chat,
            day=day,
            kind=kind,
            recipients=self.rs.recipients,
            message_ids=message_ids,
            now=self.src.now(),
        )
        return await queue_digest(
            self.src.state, mail_id, composed.subject, composed.mail, images, record
        )
