"""Bounded attachments: what a mail may carry, and where a large composed mail is kept.

A file counts against two caps (config `attachments`), and against the
relay's EHLO SIZE, which measures the encoded mail: base64 makes 57 bytes
of a file into a 78-byte line. A file over what is left is not downloaded
past the cap and the mail names it instead (attachments.Omitted), so a forward of a
100 MB file still goes out, without the file, rather than failing whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from feishu_mailbot.config.settings import AttachmentSettings, Settings, SmtpSettings
from feishu_mailbot.core.model import Download, Message, Resource
from feishu_mailbot.feishu.errors import FeishuError
from feishu_mailbot.feishu.rest import FeishuApi
from feishu_mailbot.mail import attachments, mime, smtp
from feishu_mailbot.state import State
from feishu_mailbot.state.outbox import Prepared

log = logging.getLogger(__name__)

# Room kept in a relay's SIZE for the text, HTML and headers around the files.
BODY_ROOM = 256 * 1024
# A mail with more file bytes than this is composed into a spool file, in a thread.
SPOOL_ABOVE = 256 * 1024


@dataclass
class Budget:
    """The file bytes one mail has left."""

    per_file: int
    left: int

    @classmethod
    def of(cls, caps: AttachmentSettings, relay_size: int | None) -> Budget:
        left = caps.max_mail
        if relay_size is not None:
            # base64 makes 57 bytes of a file into a 78-byte line (76 and CRLF)
            left = min(left, max(0, relay_size - BODY_ROOM) * 57 // 78)
        return cls(caps.max_file, left)

    @property
    def limit(self) -> int:
        """The most the next file may be."""
        return max(0, min(self.per_file, self.left))

    def spend(self, got: Download) -> None:
        if got.data is not None:
            self.left -= len(got.data)


async def download(api: FeishuApi, message_id: str, res: Resource, budget: Budget) -> Download:
    """One resource within the budget (data None when it did not fit); raises FeishuError."""
    if budget.limit == 0:  # the mail is full: not even a request
        return Download(None, "application/octet-stream", None)
    got = await api.resource(message_id, res.key, res.kind, budget.limit)
    budget.spend(got)
    return got


async def store(state: State, mail_id: str, subject: str, mail: mime.Mail, large: bool) -> Prepared:
    """The composed mail, rendered off the event loop when large and then kept in a
    spool file: never a multi-megabyte row in a commit that acks wait for."""
    if not large:
        return Prepared(subject, raw=mail.render())
    name = await asyncio.to_thread(state.spool.write, mail_id, mail.write)
    return Prepared(subject, spool=name)


async def queue_digest(
    state: State,
    mail_id: str,
    subject: str,
    composed: mime.Mail,
    images: Mapping[str, attachments.Attachment],
    record: Callable[..., bool],
) -> bool:
    """A digest stored (a spool file when its images are large) and queued by
    `record(tx, prepared=…)` in one write; False, with no file left behind, when
    `record` declines (queued already, or a match gone meanwhile)."""
    large = sum(len(image.data) for image in images.values()) > SPOOL_ABOVE
    prepared = await store(state, mail_id, subject, composed, large)
    queued = await state.write(partial(record, prepared=prepared))
    if not queued and prepared.spool is not None:
        await asyncio.to_thread(state.spool.remove, prepared.spool)
    return queued


async def digest_images(
    api: FeishuApi,
    settings: Settings,
    messages: Sequence[Message],
    relay: RelaySize,
    progress: Callable[[], None] = lambda: None,
) -> dict[str, attachments.Attachment]:
    """A digest's images within the attachment caps, by key; one that is not fetched, or
    is too large, shows as "[图片未能下载]" rather than holding up the digest. `progress`
    is called for each, so that many slow downloads are not taken for a stalled worker."""
    images: dict[str, attachments.Attachment] = {}
    wanted = [r for m in messages for r in m.resources if r.kind == "image"]
    if not wanted:
        return images
    budget = Budget.of(settings.attachments, await relay.get(settings.smtp))
    for msg in messages:
        for res in msg.resources:
            if res.kind != "image" or res.key in images:
                continue
            progress()
            try:
                got = await download(api, msg.message_id, res, budget)
            except FeishuError as e:
                log.warning(
                    "digest image %s not fetched: %s",
                    res.key,
                    e,
                    extra={"MESSAGE_ID": msg.message_id},
                )
                continue
            if got.data is None:
                log.warning(
                    "digest image %s left out: over the attachment caps",
                    res.key,
                    extra={"MESSAGE_ID": msg.message_id},
                )
                continue
            [images[res.key]] = attachments.attachments_of({res: got})
    return images


class RelaySize:
    """The relay's SIZE for mail composed away from the outbox (digests), so that a
    digest it would refuse leaves images out instead. Asked over a session of its own,
    and kept for an hour: a 15-minute batch must not log in to the relay 96 times a day."""

    KEEP_SECONDS = 3600.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._known: tuple[SmtpSettings, int | None, float] | None = None  # asked: of, SIZE, at

    async def get(self, settings: SmtpSettings) -> int | None:
        known = self._known
        if (
            known is not None
            and known[0] == settings
            and self._clock() - known[2] < self.KEEP_SECONDS
        ):
            return known[1]
        try:
            size = await asyncio.to_thread(smtp.relay_size, settings)
        except smtp.DeliveryError as e:  # not kept: asked again for the next digest
            log.warning("digest: the relay's size limit is unknown (%s); using the caps", e)
            return None
        self._known = (settings, size, self._clock())
        return size
