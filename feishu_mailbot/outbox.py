"""The outbox worker: turns stored outbox rows into delivered mail.

Runs on the event loop and never waits on the network there: Feishu REST
calls are async and each SMTP session runs in a worker thread. A mail is
composed once (names resolved, attachments fetched) and its bytes stored
before the first SMTP attempt, so every retry sends byte-identical mail with
the same Message-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

from feishu_mailbot import mail
from feishu_mailbot.feishu import CREDENTIAL_ERRORS, FeishuApi, FeishuError
from feishu_mailbot.model import Message, Resource
from feishu_mailbot.present import preview
from feishu_mailbot.rules import render_subject
from feishu_mailbot.settings import Settings
from feishu_mailbot.smtp import DeliveryError, SmtpTransport
from feishu_mailbot.store import Action, OutboxRow, Store

log = logging.getLogger("feishu_mailbot.outbox")

NAME_CACHE_SECONDS = 6 * 3600
NAME_RETRY_SECONDS = 600.0  # after a failed lookup, use the id this long before asking again
SMTP_IDLE_SECONDS = 30.0
# Parallel SMTP sessions: a relay's round trips, not our CPU, bound one session.
SMTP_CONNECTIONS = 4
# Mail can also be queued by another process (`feishu-mailbot send-report`): look
# at the database at least this often even when nobody wakes us.
POLL_SECONDS = 5.0
# Mail taken from the outbox per round: a few times what can be in flight, so a round
# starts little work at once (each starts a task per mail, and queues planned mail).
DUE_BATCH = 4 * 2 * SMTP_CONNECTIONS
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


Write = Callable[[Callable[[Store], Any]], Awaitable[Any]]


async def _write_now(store: Store, work: Callable[[Store], Any]) -> Any:
    return work(store)


class Outbox:
    """Delivers due mail over up to SMTP_CONNECTIONS connections at once.

    Bookkeeping writes go through `write` (the daemon's group-committing
    intake), so they share the events' commits. Composing runs on the loop:
    mime.py makes it ≈0.3 ms a mail, less than a hand-over to a thread costs
    under the GIL, and base64 of a large attachment would hold the GIL in a
    thread just the same.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        api: FeishuApi,
        policy: RetryPolicy = RetryPolicy(),
        wall_clock: Callable[[], float] = time.time,
        write: Write | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.api = api
        self.policy = policy
        self._now = wall_clock
        self._write: Write = write or (lambda work: _write_now(store, work))
        self._transports = [SmtpTransport(settings.smtp) for _ in range(SMTP_CONNECTIONS)]
        self._idle: asyncio.Queue[SmtpTransport] | None = None
        # SMTP sessions block a thread each, for as long as the relay takes.
        self._smtp_threads = ThreadPoolExecutor(SMTP_CONNECTIONS, thread_name_prefix="smtp")
        self._slots = asyncio.Semaphore(2 * SMTP_CONNECTIONS)  # mail being prepared or sent
        self._wake = asyncio.Event()
        self._stopping = False
        self._names: dict[tuple[str, str], tuple[str, float]] = {}  # → (name, valid until)
        self._lookups: dict[tuple[str, str], asyncio.Future[str]] = {}  # asked of Feishu now
        # Set by the daemon when daily reports are on: performs a queued Action.
        self.perform: Callable[[Action], Awaitable[None]] | None = None

    def reconfigure(self, settings: Settings) -> None:
        if settings.smtp != self.settings.smtp:
            # Connections in use finish their mail; new ones use the new settings.
            for transport in self._transports:
                transport.reconfigure(settings.smtp)
            self.policy = RetryPolicy.from_settings(settings)
        self.settings = settings

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Deliver due mail until stop(); in-flight SMTP transactions are always finished."""
        self._idle = asyncio.Queue()
        for transport in self._transports:
            self._idle.put_nowait(transport)
        self.store.requeue_interrupted()
        last_sent = self._now()
        while not self._stopping:
            # Cleared before looking, so a wake() that comes while we look is kept.
            self._wake.clear()
            rows = self.store.due(self._now(), limit=DUE_BATCH)
            if len(rows) < DUE_BATCH:
                # Planned mail enters the outbox only as fast as it is sent, a few
                # messages per transaction, so a backlog never floods the commits.
                wanted = DUE_BATCH - len(rows)
                if await self._write(partial(Store.queue_planned, limit=wanted)):
                    rows = self.store.due(self._now(), limit=DUE_BATCH)
            if rows:
                await asyncio.gather(*(self._deliver_in_slot(row) for row in rows))
                last_sent = self._now()
            actions = self.store.due_actions(self._now()) if self.perform else []
            for action in actions:
                if self._stopping:
                    break
                await self._perform(action)
            if rows or actions:
                continue
            if self._now() - last_sent > SMTP_IDLE_SECONDS:
                for transport in self._transports:
                    await asyncio.to_thread(transport.close_if_idle, SMTP_IDLE_SECONDS)
            next_at = min(
                (t for t in (self.store.next_due_at(), self.store.next_action_at()) if t),
                default=None,
            )
            timeout = SMTP_IDLE_SECONDS if next_at is None else max(0.0, next_at - self._now())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(timeout, POLL_SECONDS))
        for transport in self._transports:
            await asyncio.to_thread(transport.close)
        self._smtp_threads.shutdown(wait=False)

    async def _deliver_in_slot(self, row: OutboxRow) -> None:
        async with self._slots:
            await self._deliver(row)

    async def _deliver(self, row: OutboxRow) -> None:
        if self._stopping:
            return  # stays pending for the next start
        fields = {"MAIL_ID": row.mail_id, "MESSAGE_ID": row.message_id}
        raw, subject = row.raw, row.subject
        if raw is None:
            try:
                subject, raw = await self._prepare(row)
            except PrepareError as e:
                await self._failed_attempt(row, str(e), e.permanent, fields)
                return
        prepared, body = subject or "", raw
        claimed = await self._write(lambda s: s.begin_send(row.mail_id, prepared=(prepared, body)))
        if not claimed:
            return  # recalled while we were preparing
        assert self._idle is not None
        transport = await self._idle.get()
        try:
            refused = await asyncio.get_running_loop().run_in_executor(
                self._smtp_threads, transport.send, raw, self.settings.smtp.sender, row.recipients
            )
        except DeliveryError as e:
            await self._failed_attempt(row, str(e), e.permanent, fields)
            return
        finally:
            self._idle.put_nowait(transport)
        now = self._now()
        queued_notice = await self._write(lambda s: s.mark_sent(row.mail_id, now))
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
            problem = str(e)
            if self._now() - action.created_at > self.policy.give_up_after:
                await self._write(lambda s: s.finish_action(action.id, problem))
                log.error("%s failed for good: %s", action.kind, e, extra=fields)
                return
            delay = backoff(action.attempts, self.policy)
            retry_at = self._now() + delay
            await self._write(lambda s: s.retry_action(action.id, retry_at, problem))
            log.warning("%s failed, retrying in %.1fs: %s", action.kind, delay, e, extra=fields)
        except Exception as e:  # a bug must not wedge the queue: record it and go on
            log.exception("%s failed: %s", action.kind, e, extra=fields)
            error = f"{type(e).__name__}: {e}"
            await self._write(lambda s: s.finish_action(action.id, error))
        else:
            await self._write(lambda s: s.finish_action(action.id))

    async def _failed_attempt(
        self, row: OutboxRow, error: str, permanent: bool, fields: dict[str, str]
    ) -> None:
        age = self._now() - row.created_at
        if permanent or age > self.policy.give_up_after:
            await self._write(lambda s: s.mark_failed(row.mail_id, error))
            log.error(
                "mail %s failed for good after %d attempts: %s",
                row.kind,
                row.attempts + 1,
                error,
                extra=fields,
            )
            return
        delay = backoff(row.attempts, self.policy)
        retry_at = self._now() + delay
        await self._write(lambda s: s.mark_retry(row.mail_id, retry_at, error))
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
            return mail.recall_subject(original), notice
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

        raw = mail.compose_forward(
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
        return subject, raw

    async def _attachments(self, msg: Message) -> list[mail.Attachment]:
        downloads: dict[Resource, mail.Download] = {}
        for res in msg.resources:
            try:
                data, content_type, filename = await self.api.resource(
                    msg.message_id, res.key, res.kind
                )
            except FeishuError as e:
                permanent = e.code in CREDENTIAL_ERRORS
                raise PrepareError(f"cannot fetch {res.kind} {res.key}: {e}", permanent) from e
            downloads[res] = mail.Download(data, content_type, filename)
        return mail.attachments_of(downloads)

    async def name(self, kind: str, id_: str) -> str:
        """A display name: config, then memory, then SQLite, then Feishu (cached either way)."""
        if kind == "chat":
            configured = self.settings.chat(id_)
            if configured is not None and configured.name:
                return configured.name
        now = self._now()
        remembered = self._names.get((kind, id_))
        if remembered is not None and remembered[1] > now:
            return remembered[0]
        cached = self.store.cached_name(kind, id_, NAME_CACHE_SECONDS, now)
        if cached is not None:
            self._names[(kind, id_)] = (cached, now + NAME_CACHE_SECONDS)
            return cached
        # Mail prepared side by side often has the same sender: one lookup serves them all.
        lookup = self._lookups.get((kind, id_))
        if lookup is None:
            lookup = asyncio.ensure_future(self._look_up(kind, id_, now))
            self._lookups[(kind, id_)] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop((kind, id_), None))
        return await asyncio.shield(lookup)

    async def _look_up(self, kind: str, id_: str, now: float) -> str:
        try:
            name = await (self.api.chat_name(id_) if kind == "chat" else self.api.user_name(id_))
        except FeishuError as e:
            # A name is decoration: mail with the id beats mail held back. Remember the
            # failure for a while, or a missing scope would cost a call per mail.
            log.warning("cannot resolve %s name for %s: %s", kind, id_, e)
            self._names[(kind, id_)] = (id_, now + NAME_RETRY_SECONDS)
            return id_
        self._names[(kind, id_)] = (name, now + NAME_CACHE_SECONDS)
        await self._write(lambda s: s.cache_name(kind, id_, name, now))
        return name

    async def _confirm(self, row: OutboxRow, delivered: list[str]) -> None:
        try:
            await self.api.reply_text(row.message_id, f"已转发到邮箱: {', '.join(delivered)}")
        except FeishuError as e:
            log.warning("in-chat confirmation failed: %s", e, extra={"MESSAGE_ID": row.message_id})
