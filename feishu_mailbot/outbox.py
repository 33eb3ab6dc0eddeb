"""The outbox worker: turns stored outbox rows into delivered mail.

Runs on the event loop but never blocks it: Feishu REST calls are async and
SMTP runs in a worker thread. A mail is composed once (names resolved,
attachments fetched) and its bytes stored before the first SMTP attempt, so
every retry sends byte-identical mail with the same Message-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from feishu_mailbot import mail
from feishu_mailbot.events import Message, image_cid, preview
from feishu_mailbot.feishu import CREDENTIAL_ERRORS, FeishuApi, FeishuError
from feishu_mailbot.rules import render_subject
from feishu_mailbot.settings import Settings
from feishu_mailbot.smtp import DeliveryError, SmtpTransport
from feishu_mailbot.store import Action, OutboxRow, Store

log = logging.getLogger("feishu_mailbot.outbox")

NAME_CACHE_SECONDS = 6 * 3600
SMTP_IDLE_SECONDS = 30.0
# Mail can also be queued by another process (`feishu-mailbot send-report`): look
# at the database at least this often even when nobody wakes us.
POLL_SECONDS = 5.0
CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")


@dataclass(frozen=True)
class RetryPolicy:
    initial: float = 5.0
    maximum: float = 600.0
    give_up_after: float = 2 * 24 * 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        smtp = settings.smtp
        return cls(smtp.retry_initial, smtp.retry_max, smtp.give_up_after)


def backoff(attempt: int, policy: RetryPolicy, rand: Callable[[], float] = random.random) -> float:
    """Exponential with 'equal jitter': half fixed, half random, so retries spread out."""
    delay = min(policy.maximum, policy.initial * (2 ** min(attempt, 30)))
    return float(delay / 2 + rand() * delay / 2)


class PrepareError(Exception):
    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class Outbox:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        api: FeishuApi,
        transport: SmtpTransport | None = None,
        policy: RetryPolicy = RetryPolicy(),
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.api = api
        self.transport = transport or SmtpTransport(settings.smtp)
        self.policy = policy
        self._now = wall_clock
        self._wake = asyncio.Event()
        self._stopping = False
        self.sending = False
        self.sent_total = 0
        # Set by the daemon when daily reports are on: performs a queued Action.
        self.perform: Callable[[Action], Awaitable[None]] | None = None

    def reconfigure(self, settings: Settings) -> None:
        if settings.smtp != self.settings.smtp:
            self.transport.close()
            self.transport = SmtpTransport(settings.smtp)
            self.policy = RetryPolicy.from_settings(settings)
        self.settings = settings

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Deliver due mail until stop(); an in-flight SMTP transaction is always finished."""
        self.store.requeue_interrupted()
        last_sent = self._now()
        while not self._stopping:
            rows = self.store.due(self._now())
            for row in rows:
                if self._stopping:
                    break
                await self._deliver(row)
                last_sent = self._now()
            actions = self.store.due_actions(self._now()) if self.perform else []
            for action in actions:
                if self._stopping:
                    break
                await self._perform(action)
            if rows or actions:
                continue
            if self._now() - last_sent > SMTP_IDLE_SECONDS:
                await asyncio.to_thread(self.transport.close_if_idle, SMTP_IDLE_SECONDS)
            next_at = min(
                (t for t in (self.store.next_due_at(), self.store.next_action_at()) if t),
                default=None,
            )
            timeout = SMTP_IDLE_SECONDS if next_at is None else max(0.0, next_at - self._now())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(timeout, POLL_SECONDS))
        await asyncio.to_thread(self.transport.close)

    async def _deliver(self, row: OutboxRow) -> None:
        fields = {"MAIL_ID": row.mail_id, "MESSAGE_ID": row.message_id}
        raw, subject = row.raw, row.subject
        if raw is None:
            try:
                subject, raw = await self._prepare(row)
            except PrepareError as e:
                self._failed_attempt(row, str(e), e.permanent, fields)
                return
            self.store.save_prepared(row.mail_id, subject, raw)
        if not self.store.begin_send(row.mail_id):
            return  # recalled while we were preparing
        self.sending = True
        try:
            refused = await asyncio.to_thread(
                self.transport.send, raw, self.settings.smtp.sender, row.recipients
            )
        except DeliveryError as e:
            self._failed_attempt(row, str(e), e.permanent, fields)
            return
        finally:
            self.sending = False
        queued_notice = self.store.mark_sent(row.mail_id, self._now())
        self.sent_total += 1
        delivered = [r for r in row.recipients if r not in refused]
        log.info(
            "mail %s sent to %s: %s",
            row.kind,
            ", ".join(delivered),
            subject,
            extra={**fields, "RULE": ",".join(row.rules)},
        )
        for address, (code, text) in refused.items():
            log.error(
                "recipient %s refused (%d %s)",
                address,
                code,
                text.decode("utf-8", "replace"),
                extra=fields,
            )
        if queued_notice:
            self.wake()
        if row.confirm and row.kind == "forward":
            await self._confirm(row, delivered)

    async def _perform(self, action: Action) -> None:
        assert self.perform is not None
        fields = {"MESSAGE_ID": action.message_id}
        try:
            await self.perform(action)
        except FeishuError as e:
            if self._now() - action.created_at > self.policy.give_up_after:
                self.store.finish_action(action.id, str(e))
                log.error("%s failed for good: %s", action.kind, e, extra=fields)
                return
            delay = backoff(action.attempts, self.policy)
            self.store.retry_action(action.id, self._now() + delay, str(e))
            log.warning("%s failed, retrying in %.1fs: %s", action.kind, delay, e, extra=fields)
        except Exception as e:  # a bug must not wedge the queue: record it and go on
            log.exception("%s failed: %s", action.kind, e, extra=fields)
            self.store.finish_action(action.id, f"{type(e).__name__}: {e}")
        else:
            self.store.finish_action(action.id)

    def _failed_attempt(
        self, row: OutboxRow, error: str, permanent: bool, fields: dict[str, str]
    ) -> None:
        age = self._now() - row.created_at
        if permanent or age > self.policy.give_up_after:
            self.store.mark_failed(row.mail_id, error)
            log.error(
                "mail %s failed for good after %d attempts: %s",
                row.kind,
                row.attempts + 1,
                error,
                extra=fields,
            )
            return
        delay = backoff(row.attempts, self.policy)
        self.store.mark_retry(row.mail_id, self._now() + delay, error)
        log.warning(
            "mail %s attempt %d failed, retrying in %.1fs: %s",
            row.kind,
            row.attempts + 1,
            delay,
            error,
            extra=fields,
        )

    async def _prepare(self, row: OutboxRow) -> tuple[str, bytes]:
        msg = self.store.get_message(row.message_id)
        if msg is None:
            raise PrepareError(f"message {row.message_id} is not in the store", permanent=True)
        chat_name = await self.name("chat", msg.chat_id)
        sender_name = await self.name("user", msg.sender_open_id)
        date = datetime.fromtimestamp(msg.create_time_ms / 1000, CHINA)
        message_id = mail.make_message_id(row.mail_id)
        if row.kind == "recall":
            original = row.subject or ""
            notice = mail.compose_recall_notice(
                original_subject=original,
                original_message_id=mail.make_message_id(row.mail_id.removesuffix("#recall")),
                sender=self.settings.smtp.sender,
                to=row.recipients,
                chat_name=chat_name,
                sender_name=sender_name,
                message_id=message_id,
                date=datetime.now(CHINA),
            )
            return str(notice["Subject"]), mail.as_smtp_bytes(notice)
        subject = render_subject(
            row.subject_template,
            chat_name=chat_name,
            sender_name=sender_name,
            preview=preview(msg.text),
            rule=row.rules[0] if row.rules else "",
            msg_type=msg.msg_type,
            date=date.strftime("%Y-%m-%d %H:%M"),
        )
        attachments = await self._attachments(msg)
        email = mail.compose_forward(
            msg,
            subject=subject,
            sender=self.settings.smtp.sender,
            to=row.recipients,
            chat_name=chat_name,
            sender_name=sender_name,
            rule_names=row.rules,
            message_id=message_id,
            date=date,
            attachments=attachments,
        )
        return subject, mail.as_smtp_bytes(email)

    async def _attachments(self, msg: Message) -> list[mail.Attachment]:
        out = []
        for res in msg.resources:
            try:
                data, content_type, filename = await self.api.resource(
                    msg.message_id, res.key, res.kind
                )
            except FeishuError as e:
                permanent = e.code in CREDENTIAL_ERRORS
                raise PrepareError(f"cannot fetch {res.kind} {res.key}: {e}", permanent) from e
            name = res.name or filename or f"{res.kind}-{res.key}{_extension(content_type)}"
            inline = res.kind == "image" and msg.msg_type == "post"
            out.append(
                mail.Attachment(
                    filename=name,
                    content_type=content_type,
                    data=data,
                    content_id=image_cid(res.key) if inline else None,
                )
            )
        return out

    async def name(self, kind: str, id_: str) -> str:
        if kind == "chat":
            configured = self.settings.chat(id_)
            if configured is not None and configured.name:
                return configured.name
        cached = self.store.cached_name(kind, id_, NAME_CACHE_SECONDS, self._now())
        if cached is not None:
            return cached
        try:
            name = await (self.api.chat_name(id_) if kind == "chat" else self.api.user_name(id_))
        except FeishuError as e:
            # A name is decoration: mail with the id beats mail held back.
            log.warning("cannot resolve %s name for %s: %s", kind, id_, e)
            return id_
        self.store.cache_name(kind, id_, name, self._now())
        return name

    async def _confirm(self, row: OutboxRow, delivered: list[str]) -> None:
        try:
            await self.api.reply_text(row.message_id, f"已转发到邮箱: {', '.join(delivered)}")
        except FeishuError as e:
            log.warning("in-chat confirmation failed: %s", e, extra={"MESSAGE_ID": row.message_id})


def _extension(content_type: str) -> str:
    return {
        "image/png": ".png",
        "image/jpeg": ".jpg",
        "image/gif": ".gif",
        "image/webp": ".webp",
        "application/pdf": ".pdf",
    }.get(content_type, "")
