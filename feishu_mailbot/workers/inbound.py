"""The inbound worker: replies by mail, posted into the Feishu thread of the message
their mail forwarded.

It reads the bot's mailbox (mail/imap.py) in a thread of its own, so nothing it
waits for can hold up chat → mail; its failures are logged once, retried with
backoff, shown on the status line, and never withhold the watchdog (a restart
would not bring a mail server back). Each mail is taken once: posted (with a
Feishu `uuid` derived from its Message-ID, so posting again after a crash
before it was recorded is one message), or refused with one journal line, then
recorded, then flagged or moved, and only then is the mailbox's cursor moved
past it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from feishu_mailbot.config.settings import InboundSettings, Settings
from feishu_mailbot.core import bounce, reply, unsubscribe
from feishu_mailbot.core.addresses import bare_set
from feishu_mailbot.core.bounce import Report
from feishu_mailbot.feishu.errors import FeishuError, refused
from feishu_mailbot.feishu.rest import FeishuApi
from feishu_mailbot.mail.headers import make_message_id
from feishu_mailbot.mail.imap import ImapError, Mailbox, Opened
from feishu_mailbot.mail.reply import parse
from feishu_mailbot.mail.unsubscribe import confirmation
from feishu_mailbot.state import DatabaseError, State, Tx, bounces, outbox, subscriptions
from feishu_mailbot.state import inbound as inbound_q
from feishu_mailbot.state.outbox import Prepared
from feishu_mailbot.workers.rounds import Worker

log = logging.getLogger(__name__)

T = TypeVar("T")

# RFC 2177: a client re-issues IDLE at least every 29 minutes, or the server may
# drop it as idle.
IDLE_SECONDS = 9 * 60.0
IDLE_GIVE_UP = 5  # IDLEs in a row that fail before the mailbox is polled instead
POLL_SECONDS = 60.0  # how often a server without IDLE is asked
RETRY_MAX = 300.0  # seconds between tries, at most, while the mailbox or Feishu fails
# Feishu's codes about the message (230xxx) that are not final: its per-group send rate
# limit, and a permission the app or the bot lacks, which an operator can grant.
AGAIN = {230020, 230027}
LEAD_POLL = 5.0  # another instance reads the mailbox: look again this soon
# Feishu takes 5 messages a second per group; replies by mail come far slower, but a
# backlog after an outage must not burst.
POST_SPACING = 0.25


class Inbound(Worker):
    name = "inbound"

    def __init__(
        self,
        settings: Settings,
        state: State,
        api: FeishuApi,
        key: Callable[[], Awaitable[bytes]],
        wall_clock: Callable[[], float] = time.time,
        leading: Callable[[], bool] = lambda: True,
        left_changed: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(state, wall_clock)
        assert settings.inbound is not None
        self.settings = settings  # its rules, as a reload changes them
        self.inbound: InboundSettings = settings.inbound  # as it started
        imap = self.inbound.imap
        # The cursor's name: another server or account is another mailbox.
        self._where = f"{imap.username}@{imap.host}/{imap.mailbox}"
        self._leading = leading  # several instances: only the schedule lock's holder reads
        self._api = api
        self._box = Mailbox(self.inbound.imap)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="imap")
        self._opened: Opened | None = None
        self._failing = 0
        self._idle_failures = 0  # IDLEs in a row that ended in an error
        self._posted_at = 0.0
        self._left_changed = left_changed  # someone unsubscribed: the daemon reads who
        self._key = key  # of the tokens in our mail's addresses (compose/sources.py)
        #: Why the mailbox is not being read now (for the status line), or None.
        self.problem: str | None = None

    def stop(self) -> None:
        super().stop()
        self._box.interrupt()

    def work_due(self) -> bool:
        """Never a stall for the watchdog: a mail server down is not ours to restart."""
        return False

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            await self._io(self._box.shutdown)
            self._thread.shutdown(wait=False)

    async def _io(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, call, *args)

    async def _round(self) -> float | None:
        imap = self.inbound.imap
        if not self._leading():
            if self._opened is not None:
                await self._io(self._box.close)
                self._opened = None
            return LEAD_POLL
        try:
            if self._opened is None:
                filing = () if self.inbound.processed is None else (self.inbound.processed,)
                self._opened = await self._io(self._box.open, filing)
                if not self._failing:
                    log.info("inbound: reading %s on %s", imap.mailbox, imap.host)
            await self._take_new(self._opened)
        except (ImapError, FeishuError) as e:
            if isinstance(e, ImapError):
                self._opened = None
            self._failing += 1
            if self._failing == 1:
                log.error("inbound paused: %s", e)
            self.problem = str(e)
            return min(RETRY_MAX, 2.0 ** min(self._failing, 10))
        if self._failing:
            log.warning("inbound resumed: reading %s on %s", imap.mailbox, imap.host)
        self._failing, self.problem = 0, None
        if self._bell.stopping:
            return None
        if self._opened.idle and self._idle_failures < IDLE_GIVE_UP:
            try:
                await self._io(self._box.idle, IDLE_SECONDS)
            except ImapError as e:
                self._opened = None
                self._idle_failures += 1
                if self._idle_failures == IDLE_GIVE_UP:  # not a login a second, for ever
                    log.warning("inbound: IDLE keeps failing (%s); asking every minute instead", e)
                else:
                    log.info("inbound: the mailbox connection ended (%s); connecting again", e)
                return 2.0**self._idle_failures
            self._idle_failures = 0
            return None  # look at once: new mail, the IDLE's end, or a stop
        return POLL_SECONDS

    async def _take_new(self, opened: Opened) -> None:
        """Every mail above the cursor, oldest first; the cursor moves past each once
        it is taken, recorded and filed."""
        mailbox = self.inbound.imap.mailbox
        cursor = self._state.read(partial(inbound_q.cursor, mailbox=self._where))
        if cursor is None:  # the first start: what the mailbox held before is not replies
            await self._begin(opened)
            return
        last = cursor.last_uid if cursor.uidvalidity == opened.uidvalidity else 0
        for uid in await self._io(self._box.uids_after, last):
            if self._bell.stopping:
                return
            raw = await self._io(self._box.fetch, uid)
            if raw is not None:
                await self._take(raw, uid)
                await self._io(self._file, uid)
            else:
                log.info("mail UID %d went from %s before it was read", uid, mailbox)
            await self._advance(opened, uid)

    async def _begin(self, opened: Opened) -> None:
        """Mail already in the mailbox when `inbound:` is first set up is left as it is."""
        there = await self._io(self._box.uids_after, 0)
        await self._advance(opened, max(there, default=0))
        if there:
            log.info(
                "inbound: %d mails already in %s are left as they are; new mail is read",
                len(there),
                self.inbound.imap.mailbox,
            )

    async def _advance(self, opened: Opened, uid: int) -> None:
        await self._state.write(
            partial(
                inbound_q.advance,
                mailbox=self._where,
                uidvalidity=opened.uidvalidity,
                uid=uid,
            )
        )
        self._bell.progress()

    async def _unreadable(self, raw: bytes, uid: int, error: Exception) -> None:
        key = "sha256:" + hashlib.sha256(raw).hexdigest()
        detail = f"cannot be read: {type(error).__name__}: {error}"
        log.error(
            "mail UID %d in %s not posted: it %s", uid, self.inbound.imap.mailbox, detail,
            extra={"INBOUND_ID": key},
        )  # fmt: skip
        await self._record(key, inbound_q.FAILED, detail, None)

    def _file(self, uid: int) -> None:
        if self.inbound.processed is None:
            self._box.mark(uid)
        else:
            self._box.move(uid, self.inbound.processed)

    async def _take(self, raw: bytes, uid: int) -> None:
        """One mail: judged, then posted or refused, and recorded. The parsing and the
        judging run in the mailbox's thread: a mail of megabytes must not hold up the
        loop, and what the stdlib's parser raises on (hostile mail does) ends there."""
        try:
            mail = await self._io(parse, raw)
        except Exception as e:  # the mail itself: once, not at every look
            await self._unreadable(raw, uid, e)
            return
        key = mail.message_id or "sha256:" + hashlib.sha256(raw).hexdigest()
        fields = {"INBOUND_ID": key}
        if self._state.read(partial(inbound_q.taken, message_id=key)):
            log.debug("mail taken before, left alone", extra=fields)
            return
        tokens = unsubscribe.asked(mail.subject)
        if mail.report is not None or tokens:
            try:
                if mail.report is not None:
                    await self._bounced(mail, mail.report, key, fields)
                else:
                    await self._unsubscribe(mail, tokens, key, fields)
            except DatabaseError:
                raise  # the state's, not the mail's: the round is tried again
            except Exception as e:  # the mail's (a header authres cannot read…): once
                await self._unreadable(raw, uid, e)
            return
        found = self._state.read(partial(inbound_q.answered, keys=reply.named_keys(mail)))
        referenced, kind = found if found is not None else (None, "")
        tokened, forged = await self._tokened(mail, bounce=False)
        answered, mismatch = reply.answered_by(tokened and tokened[0], forged, referenced)
        if tokened is not None and answered is tokened[0]:
            kind = tokened[1]
        try:
            reason, text, images = await self._io(self._judge, mail, answered, kind)
            reason = mismatch or reason
        except Exception as e:
            await self._unreadable(raw, uid, e)
            return
        mail_id = answered.mail_id if answered is not None else None
        if answered is not None:
            fields = {**fields, "MAIL_ID": answered.mail_id, "MESSAGE_ID": answered.message_id}
        if reason is not None or answered is None:
            sender = mail.from_address or "an unknown sender"
            log.info("mail from %s not posted: %s", sender, reason, extra=fields)
            await self._record(key, inbound_q.REFUSED, str(reason), mail_id)
            return
        outcome, detail = await self._post(mail, text, images, key, answered, fields)
        await self._record(key, outcome, detail, mail_id)

    async def _tokened(
        self, mail: reply.Inbound, bounce: bool
    ) -> tuple[tuple[reply.Answered, str] | None, bool]:
        """The mail of ours (and its kind) that a token in the addresses `mail` was
        delivered to names, a reply's or (`bounce`) an envelope sender's; and whether
        one there was not made by the bot."""
        pattern = self.inbound.reply_address
        if pattern is None or "{token}" not in pattern:
            return None, False
        found = None
        forged = False
        for token, is_bounce in reply.tokens_in(mail.to, pattern):
            if is_bounce != bounce:
                continue
            row = self._state.read(partial(inbound_q.tokened, start=token[: reply.TOKEN_FINDS]))
            if row is not None and reply.token(await self._key(), row[0]) == token:
                found = found or (row[1], row[2])
            elif row is not None:
                forged = True
        return found, forged

    async def _bounced(
        self, mail: reply.Inbound, report: Report, key: str, fields: dict[str, str]
    ) -> None:
        """A delivery report: the recipients of our mail it says were not reached are
        marked, each once (a report is never posted, nor answered)."""
        keys = reply.keys_of(report.returned_ids)
        found = self._state.read(partial(inbound_q.answered, keys=keys))
        verp, _ = await self._tokened(mail, bounce=True)  # its envelope sender's token
        found = verp or found
        if found is None:
            log.info("a delivery report about no mail the bot sent, left alone", extra=fields)
            await self._record(key, inbound_q.REPORT, "it names no mail the bot sent", None)
            return
        answered = found[0]
        fields = {**fields, "MAIL_ID": answered.mail_id, "MESSAGE_ID": answered.message_id}
        failures = bounce.failed(report, answered.recipients)
        for failure in failures:
            news = await self._state.write(
                partial(bounces.record, mail_id=answered.mail_id, failure=failure, now=self._now())
            )
            if news:
                log.error("mail bounced: %s", bounce.describe(failure), extra=fields)
        said = "; ".join(bounce.describe(f) for f in failures) or "no recipient failed"
        if not failures:
            log.info("a delivery report about a mail of ours: no recipient failed", extra=fields)
        await self._record(key, inbound_q.REPORT, said, answered.mail_id)

    async def _unsubscribe(
        self, mail: reply.Inbound, tokens: tuple[str, ...], key: str, fields: dict[str, str]
    ) -> None:
        """A request to stop a rule's mail (its List-Unsubscribe): taken from a recipient
        of the rules it names, confirmed once by mail; anything else is logged only."""
        reason, rules = self._may_leave(mail, tokens, await self._key())
        sender = mail.from_address or "an unknown sender"
        if reason is not None:
            log.info("unsubscribe request from %s not taken: %s", sender, reason, extra=fields)
            await self._record(key, inbound_q.REFUSED, reason, None)
            return
        now = self._now()
        mail_id = f"unsubscribe/{sender}/{key}"
        subject, raw = confirmation(
            sender=self.settings.smtp.sender,
            to=sender,
            rules=rules,
            message_id=make_message_id(mail_id),
            date=datetime.fromtimestamp(now, ZoneInfo(self.settings.timezone)),
        )

        def leave(tx: Tx) -> list[str]:
            news = [r for r in rules if subscriptions.leave(tx, r, sender, now)]
            if news:
                notice = Prepared(subject, raw=raw)
                outbox.queue(
                    tx, mail_id=mail_id, kind="notice", recipients=[sender], prepared=notice,
                    now=now,
                )  # fmt: skip
            return news

        news = await self._state.write(leave)
        names = ", ".join(rules)
        if news:
            self._left_changed()
            log.warning(
                "%s unsubscribed from %s: that mail is no longer sent to them "
                "(feishu-mailbot subscriptions --restore %s)", sender, names, sender,
                extra={**fields, "RULE": names},
            )  # fmt: skip
        else:
            log.info("%s had unsubscribed from %s already", sender, names, extra=fields)
        await self._record(key, inbound_q.UNSUBSCRIBED, names, None)

    def _may_leave(
        self, mail: reply.Inbound, tokens: tuple[str, ...], list_key: bytes
    ) -> tuple[str | None, tuple[str, ...]]:
        """Why not to take the request (None: take it), and the rules it leaves."""
        if not mail.from_address:
            return "its From is not one well-formed address", ()
        configured = {r.name: r for r in self.settings.rules}
        named = unsubscribe.rules_named(list_key, tokens, configured)
        if not named:
            return "it names no rule of this bot (a rule renamed, or a token made up)", ()
        rules = tuple(n for n in named if mail.from_address in bare_set(configured[n].to))
        if not rules:
            return f"{mail.from_address} is not a recipient of {', '.join(named)}", ()
        auto = reply.auto_reply(mail)
        if auto is not None:
            return f"an automatic reply ({auto})", ()
        if self.inbound.trusted_authserv_id:
            doubt = reply.authenticated(mail, self.inbound.trusted_authserv_id)
            if doubt is not None:
                return doubt, ()
        return None, rules

    def _judge(
        self, mail: reply.Inbound, answered: reply.Answered | None, kind: str
    ) -> tuple[str | None, str, tuple[reply.ImagePart, ...]]:
        """Why not to post (None: post), and what to post: its text, its images."""
        reason = reply.refusal(mail, answered, self.inbound.trusted_authserv_id)
        if reason is None and answered is not None and not answered.message_id:
            reason = f"it answers a {kind}, which has no thread in Feishu"
        if reason is not None:
            return reason, "", ()
        images, named = reply.uploadable(mail.images)
        return None, reply.post_text(mail, named), images

    async def _upload(
        self, images: tuple[reply.ImagePart, ...], fields: dict[str, str]
    ) -> tuple[list[str], list[str]]:
        """The image_keys of the images Feishu took, and the names of those it refused
        (a format it cannot read): the post names them instead. Anything else raises."""
        keys: list[str] = []
        refused_names: list[str] = []
        for image in images:
            try:
                keys.append(
                    await self._api.upload_image(image.name, image.content_type, image.data)
                )
            except FeishuError as e:
                if not refused(e) or e.code in AGAIN:
                    raise
                log.warning("image %s of a reply not uploaded: %s", image.name, e, extra=fields)
                refused_names.append(image.name)
        return keys, refused_names

    async def _post(
        self,
        mail: reply.Inbound,
        text: str,
        images: tuple[reply.ImagePart, ...],
        key: str,
        answered: reply.Answered,
        fields: dict[str, str],
    ) -> tuple[str, str]:
        """Posted, or refused by Feishu for good; anything else raises, to be tried again.
        Images are uploaded first (again, on a retry: an image never posted is unseen)."""
        sender = mail.from_address
        image_keys, not_taken = await self._upload(images, fields)
        if not_taken:
            named = [*reply.uploadable(mail.images)[1], *not_taken]
            text = await self._io(reply.post_text, mail, named)
        msg_type, content = reply.post_content(text, image_keys)
        wait = self._posted_at + POST_SPACING - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._posted_at = time.monotonic()
        try:
            await self._api.reply(
                answered.message_id, msg_type, content, uuid=reply.post_uuid(key), in_thread=True
            )
        except FeishuError as e:
            if not refused(e) or e.code in AGAIN:
                raise  # no answer, a rate limit, a missing scope, a server error: later
            log.error("reply by %s not posted: Feishu refused it: %s", sender, e, extra=fields)
            return inbound_q.FAILED, str(e)
        log.info("reply by %s posted into the thread", sender, extra=fields)
        return inbound_q.POSTED, ""

    async def _record(self, key: str, outcome: str, detail: str, mail_id: str | None) -> None:
        await self._state.write(
            partial(
                inbound_q.record,
                message_id=key,
                now=self._now(),
                outcome=outcome,
                detail=detail,
                mail_id=mail_id,
            )
        )
