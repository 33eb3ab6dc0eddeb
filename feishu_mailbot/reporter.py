"""Daily-report side effects: digests, supplements, acknowledgements, the schedule.

The decisions are in `reports` (pure) and the mail in `digest` (pure); this
module loads what they need from the store and Feishu, and records what was
queued. A digest is recorded in the same transaction that queues its mail, so
"a digest for a day is sent once" holds across triggers, the schedule,
restarts and clock jumps; the mail itself then goes through the outbox like
any other.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from feishu_mailbot import digest, mail, reports
from feishu_mailbot.feishu import FeishuApi, FeishuError
from feishu_mailbot.model import Message
from feishu_mailbot.settings import ReportSettings, Settings
from feishu_mailbot.store import Action, Store

log = logging.getLogger("feishu_mailbot.reports")

Names = Callable[[str, str], Awaitable[str]]


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


def day_bounds_ms(day: date, s: ReportSettings) -> tuple[int, int]:
    """A report day runs from its cutoff to the next day's cutoff, in the report timezone."""
    start = datetime.combine(day, s.cutoff, ZoneInfo(s.timezone))
    end = datetime.combine(day + timedelta(days=1), s.cutoff, ZoneInfo(s.timezone))
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def current_day(now: float, s: ReportSettings) -> date:
    return reports.report_day(int(now * 1000), s)


class Reporter:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        api: FeishuApi,
        names: Names,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.api = api
        self._names = names
        self._now = wall_clock

    @property
    def rs(self) -> ReportSettings:
        assert self.settings.daily_report is not None
        return self.settings.daily_report

    async def build(
        self, day: date, *, force: bool = False, dry_run: bool = False, kind: str = "digest"
    ) -> Outcome:
        """Build the day's digest (or supplement) and, unless dry_run, queue it once."""
        rs = self.rs
        day_key = day.isoformat()
        records = self.store.digests_for(rs.chat, day_key)
        first = next((r for r in records if r.kind == "digest"), None)
        if kind == "digest" and first is not None and not force:
            return Outcome(False, day, "", "", first.recipients, already_at=first.queued_at)
        start, end = day_bounds_ms(day, rs)
        day_reports = [
            m for m in self.store.messages_between(rs.chat, start, end) if reports.is_report(m, rs)
        ]
        included = self.store.included_in_digests(rs.chat, day_key)
        if kind == "supplement":
            fresh = [m for m in day_reports if m.message_id not in included]
            earlier = [m for m in day_reports if m.message_id in included]
        else:
            fresh, earlier = day_reports, []
        chat_name = await self._names("chat", rs.chat)
        entries = [await self._entry(m) for m in fresh]
        earlier_entries = [await self._entry(m) for m in earlier]
        model = reports.build_digest(
            day, chat_name, entries, rs, supplement=kind == "supplement", earlier=earlier_entries
        )
        mail_id = f"digest/{rs.chat}/{day_key}/{len(records) + 1}"
        subject, raw = await self._compose(model, mail_id, fresh)
        text = digest.render_text(model)
        outcome = Outcome(
            False,
            day,
            text,
            subject,
            rs.recipients,
            submitted=model.submitted,
            expected=model.expected,
        )
        if dry_run or (kind == "supplement" and not fresh):
            return outcome
        queued = self.store.queue_digest(
            mail_id=mail_id,
            chat_id=rs.chat,
            day=day_key,
            kind=kind,
            recipients=rs.recipients,
            subject=subject,
            raw=raw,
            message_ids=[m.message_id for m in fresh],
            now=self._now(),
        )
        if queued:
            log.info(
                "%s for %s queued to %s: %s",
                kind,
                day_key,
                ", ".join(rs.recipients),
                subject,
                extra={"CHAT_ID": rs.chat, "MAIL_ID": mail_id},
            )
        return dataclasses.replace(outcome, queued=queued)

    async def _compose(
        self, model: reports.Digest, mail_id: str, messages: Sequence[Message]
    ) -> tuple[str, bytes]:
        rs = self.rs
        return digest.compose_digest(
            model,
            subject=rs.subject,
            sender=self.settings.smtp.sender,
            to=rs.recipients,
            message_id=mail.make_message_id(mail_id),
            date=datetime.now(ZoneInfo(rs.timezone)),
            images=await self._images(messages),
        )

    async def _entry(self, msg: Message) -> reports.Entry:
        return reports.Entry(msg, await self._names("user", msg.sender_open_id))

    async def _images(self, messages: Sequence[Message]) -> dict[str, mail.Attachment]:
        images: dict[str, mail.Attachment] = {}
        for msg in messages:
            for res in msg.resources:
                if res.kind != "image" or res.key in images:
                    continue
                try:
                    data, content_type, _ = await self.api.resource(
                        msg.message_id, res.key, "image"
                    )
                except FeishuError as e:
                    # The digest says "[图片未能下载]" rather than waiting on one picture.
                    log.warning(
                        "digest image %s not fetched: %s",
                        res.key,
                        e,
                        extra={"MESSAGE_ID": msg.message_id},
                    )
                    continue
                [images[res.key]] = mail.attachments_of(
                    {res: mail.Download(data, content_type, None)}
                )
        return images

    # -- actions queued by the event handler -------------------------------------------

    async def perform(self, action: Action) -> None:
        """Do one queued action; raises FeishuError to have it retried."""
        rs = self.rs
        p = action.payload
        if action.kind == "acknowledge":
            if rs.acknowledge == "reaction":
                await self.api.react(action.message_id, rs.reaction)
            elif rs.acknowledge == "reply":
                await self.api.reply_text(action.message_id, f"已收到 {p['day']} 的日报 ✅")
        elif action.kind == "digest-request":
            await self._request(action)
        elif action.kind == "supplement":
            await self.build(date.fromisoformat(str(p["day"])), kind="supplement")
        elif action.kind == "report-immediate":
            await self._immediate(action)

    async def _request(self, action: Action) -> None:
        rs = self.rs
        p = action.payload
        if not reports.may_trigger(str(p["sender"]), rs):
            await self.api.reply_text(action.message_id, "抱歉，你没有发送日报汇总的权限。")
            return
        if p.get("error"):
            await self.api.reply_text(action.message_id, f"无法发送日报汇总：{p['error']}")
            return
        day = date.fromisoformat(str(p["day"]))
        outcome = await self.build(day, force=bool(p.get("force")))
        to = "、".join(outcome.recipients)
        if outcome.already_at is not None:
            at = datetime.fromtimestamp(outcome.already_at, ZoneInfo(rs.timezone)).strftime("%H:%M")
            text = (
                f"{day.isoformat()} 的日报汇总已于 {at} 发送给 {to}。"
                f"如需重新发送，请 @我 {rs.resend_trigger} {day.isoformat()}"
            )
        else:
            text = (
                f"已发送 {day.isoformat()} 日报汇总给 {to}"
                f"（{outcome.submitted}/{outcome.expected} 已提交）"
            )
        await self.api.reply_text(action.message_id, text)

    async def _immediate(self, action: Action) -> None:
        rs = self.rs
        msg = self.store.get_message(action.message_id)
        if msg is None:
            return
        day = reports.report_day(msg.create_time_ms, rs)
        model = reports.build_digest(
            day, await self._names("chat", rs.chat), [await self._entry(msg)], rs
        )
        mail_id = f"report/{msg.message_id}"
        subject, raw = await self._compose(model, mail_id, [msg])
        self.store.queue_digest(
            mail_id=mail_id,
            chat_id=rs.chat,
            day=day.isoformat(),
            kind="immediate",
            recipients=rs.recipients,
            subject=subject,
            raw=raw,
            message_ids=[msg.message_id],
            now=self._now(),
        )

    # -- the schedule ----------------------------------------------------------------------

    async def run_schedule(self) -> None:
        """Once a scheduled minute has passed, queue that day's digest (once, with catch-up)."""
        rs = self.rs
        if rs.mode != "scheduled":
            return
        now = datetime.now(ZoneInfo(rs.timezone))
        last = self.store.last_digest_day(rs.chat)
        for day in reports.due_days(date.fromisoformat(last) if last else None, now, rs):
            await self.build(day)
