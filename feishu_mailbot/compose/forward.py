"""A rule's forward and a recall notice, composed from the state for the outbox.

The outbox delivers; this composes, once per mail: the message read back, the
names, what the message needs looked up (feishu/expand.py), a reply's place in
its thread, and its files within the caps. A failure says whether trying again
later can help (`PrepareError.permanent`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from zoneinfo import ZoneInfo

from feishu_mailbot.compose.attachments import SPOOL_ABOVE, Budget, download, store
from feishu_mailbot.compose.lookups import Lookups, Unreachable
from feishu_mailbot.compose.sources import Sources
from feishu_mailbot.config.settings import Settings
from feishu_mailbot.core.model import Download, Message, Resource, StoredFormError
from feishu_mailbot.core.text import preview
from feishu_mailbot.feishu.errors import CREDENTIAL_ERRORS, FeishuError, refused
from feishu_mailbot.mail import forward, headers, recall
from feishu_mailbot.mail.attachments import Attachment, Omitted, attachments_of, omission, refusal
from feishu_mailbot.state import messages, outbox
from feishu_mailbot.state.outbox import OutboxRow, Prepared

log = logging.getLogger(__name__)

# Attempts during which a merged forward that Feishu cannot be reached for waits; after
# them it is mailed with a note instead of its conversation.
LOOKUP_ATTEMPTS = 3


class PrepareError(Exception):
    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class ForwardComposer:
    """Composes the outbox's forwards and recall notices. `relay_limit` is the relay's
    SIZE (the outbox asks it over one of its own connections)."""

    def __init__(self, sources: Sources, relay_limit: Callable[[], Awaitable[int | None]]) -> None:
        self.src = sources
        self._lookups = Lookups(sources.api, sources.names, sources.now)
        self._relay_limit = relay_limit
        self._with_files = asyncio.Semaphore(1)  # mail downloading and composing files

    @property
    def settings(self) -> Settings:
        return self.src.settings

    async def prepare(self, row: OutboxRow) -> Prepared:
        """The mail's subject and bytes (kept in a spool file when large); raises PrepareError."""
        msg = self.src.state.read(partial(messages.get, message_id=row.message_id))
        if msg is None:
            raise PrepareError(f"message {row.message_id} is not in the state", permanent=True)
        chat_name = await self.src.names.name("chat", msg.chat_id)
        sender_name = await self.src.names.name("user", msg.sender_open_id)
        zone = ZoneInfo(self.settings.timezone)
        message_id = headers.make_message_id(row.mail_id)
        if row.kind == "recall":
            original = row.subject or ""
            notice = recall.compose_recall_notice(
                original_subject=original,
                original_message_id=headers.make_message_id(row.mail_id.removesuffix("#recall")),
                sender=self.settings.smtp.sender,
                to=row.recipients,
                chat_name=chat_name,
                sender_name=sender_name,
                message_id=message_id,
                date=datetime.fromtimestamp(self.src.now(), zone),
            )
            return Prepared(recall.recall_subject(original), raw=notice)
        try:
            msg = await self._lookups.complete(msg, zone, final=row.attempts + 1 >= LOOKUP_ATTEMPTS)
        except Unreachable as e:
            raise PrepareError(f"cannot expand the merged forward: {e}", permanent=False) from e
        thread = await self._thread(msg, row, zone)
        date = forward.sent_at(msg, zone)
        env = forward.Envelope(
            self.settings.smtp.sender,
            row.recipients,
            chat_name,
            sender_name,
            row.rules,
            message_id,
            [*await self.src.lists(row.rules), *await self.src.reply_to(row.mail_id)],
        )
        subject = forward.subject_of(msg, row.subject_template, env, date=date, thread=thread)
        compose = partial(forward.forward_mail, msg, env, subject=subject, date=date, thread=thread)
        if not msg.resources:
            return Prepared(subject, raw=compose().render())
        async with self._with_files:
            files, omitted = await self._attachments(msg)
            forwarded = compose(attachments=files, omitted=omitted)
            large = sum(len(f.data) for f in files) > SPOOL_ABOVE
            return await store(self.src.state, row.mail_id, subject, forwarded, large)

    async def _thread(self, msg: Message, row: OutboxRow, zone: ZoneInfo) -> forward.Thread:
        """A reply's place among the mails these recipients got of its thread."""
        earlier = [
            m for m in dict.fromkeys((msg.root_id, msg.parent_id)) if m and m != msg.message_id
        ]
        if not earlier:
            return forward.Thread()
        found = self.src.state.read(
            partial(outbox.thread_mails, message_ids=earlier, recipients=row.recipients)
        )
        root = outbox.mail_id_for(earlier[0], row.recipients)
        subject = next((s for m, s in found if m == root), None)
        try:
            replied = self.src.state.read(partial(messages.get, message_id=earlier[-1]))
        except StoredFormError as e:  # a quote is decoration: Feishu may still give it
            log.error(
                "the message replied to cannot be read, asking Feishu for it: %s",
                e,
                extra={"MESSAGE_ID": earlier[-1]},
            )
            replied = None
        if replied is not None:
            name = await self.src.names.name("user", replied.sender_open_id)
        else:  # older than the retention, or sent before the bot joined: ask Feishu
            name, replied = await self._lookups.replied(earlier[-1], zone)
        quote = f"{name}: {preview(replied.text)}" if replied is not None else ""
        references = tuple(headers.make_message_id(m) for m, _ in found)
        return forward.Thread(references, subject if msg.root_id else None, quote)

    async def _attachments(self, msg: Message) -> tuple[list[Attachment], list[Omitted]]:
        budget = Budget.of(self.settings.attachments, await self._relay_limit())
        downloads: dict[Resource, Download] = {}
        omitted = []
        for res in msg.resources:
            limit = budget.limit
            try:
                got = await download(self.src.api, msg.message_id, res, budget)
            except FeishuError as e:
                if not refused(e):  # no answer, a rate limit, not us: the mail waits
                    permanent = e.code in CREDENTIAL_ERRORS
                    raise PrepareError(f"cannot fetch {res.kind} {res.key}: {e}", permanent) from e
                # Feishu refuses this one (234043: "暂不支持获取合并转发消息中的子消息、卡片
                # 消息中的资源文件"): the mail goes without it, and says so.
                log.warning(
                    "%s %s not given by Feishu, the mail goes without it: %s",
                    res.kind,
                    res.key,
                    e,
                    extra={"MESSAGE_ID": msg.message_id},
                )
                if res.kind != "image":  # a missing image shows in its place already
                    omitted.append(refusal(res))
                continue
            downloads[res] = got
            if got.data is None:
                omitted.append(omission(res, got, limit))
                log.warning(
                    "%s %s left out of the mail: %s bytes, over the %d bytes it may have",
                    res.kind,
                    res.key,
                    got.size if got.size is not None else "more than that",
                    limit,
                    extra={"MESSAGE_ID": msg.message_id},
                )
        return attachments_of(downloads), omitted
