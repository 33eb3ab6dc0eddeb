"""The outbox worker: delivers the outbox's mail, each through the table of a mail's life.

Runs on the event loop and never waits on the network there: each SMTP session
runs in a thread. A mail is composed once by its composer (compose/forward.py;
digests arrive composed) and its bytes stored before the first SMTP attempt, so
every retry sends byte-identical mail with the same Message-ID. Everything it
learns goes back into the state; the in-chat "forwarded" confirmation is queued
there for the action worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from feishu_mailbot.compose.forward import ForwardComposer, PrepareError
from feishu_mailbot.compose.sources import Sources
from feishu_mailbot.config.settings import Settings, SmtpSettings
from feishu_mailbot.core.model import ActionRequest
from feishu_mailbot.core.retry import UNEXPECTED_ATTEMPTS, RetryPolicy, backoff
from feishu_mailbot.mail.smtp import DeliveryError, SmtpTransport, Transport
from feishu_mailbot.state import DatabaseError, Tx, actions, outbox
from feishu_mailbot.state.lifecycle import Moved
from feishu_mailbot.state.outbox import OutboxRow, Prepared
from feishu_mailbot.workers.rounds import Worker

log = logging.getLogger(__name__)

SMTP_IDLE_SECONDS = 30.0
# Parallel SMTP sessions: a relay's round trips, not our CPU, bound one session.
SMTP_CONNECTIONS = 4
# Mail can also be queued or retried by another process (`send-report`, `retry`): look
# at the database at least this often even when nobody wakes us.
POLL_SECONDS = 1.0
# After another instance claimed the due mail this one saw: there may be more behind it.
RACED_SECONDS = 0.05
# Mail taken from the outbox per round: a few times what can be in flight, so a round
# starts little work at once (each starts a task per mail, and queues planned mail).
DUE_BATCH = 4 * 2 * SMTP_CONNECTIONS
# A spool file no row names is removed once this old, looked for at start and this
# often; a younger one may be a `send-report` in another process, between writing its
# file and committing its row.
SPOOL_GRACE_SECONDS = 3600.0
ORPHANS_EVERY = 5.0  # seconds between looks for mail of instances gone


#: Builds the composer the outbox asks for each mail's bytes (compose/forward.py).
ComposerFactory = Callable[[Sources, Callable[[], Awaitable[int | None]]], ForwardComposer]


def _confirms(row: OutboxRow, delivered: list[str]) -> bool:
    return row.confirm and row.kind == "forward" and bool(delivered)


def _sent(tx: Tx, row: OutboxRow, now: float, delivered: list[str]) -> outbox.Sent:
    """Record a sent mail, and the confirmation its rule asks for."""
    sent = outbox.mark_sent(tx, row.mail_id, now)
    if sent.moved.done and _confirms(row, delivered):
        actions.add(tx, ActionRequest("confirm", {"to": delivered}), row.message_id, now)
    return sent


def _why_not(moved: Moved) -> str:
    """Why an attempt's outcome left a mail where it was, for the journal."""
    if moved.before in ("cancelled", "recalling"):
        return "its message was recalled"
    if moved.before in ("dropped", "dropping"):
        return "an operator dropped it"
    return f"it is {moved.before or 'gone from the outbox'}"


class Outbox(Worker):
    """Delivers due mail over up to SMTP_CONNECTIONS connections at once.

    Bookkeeping writes share the events' group commits (state.write).
    A mail without files is composed on the loop: mime.py makes it ≈0.3 ms,
    less than a hand-over to a thread costs. A mail with files is downloaded
    within the attachment caps and written to a spool file by a thread, one
    such mail at a time, so its memory is about its files' size once.
    """

    name = "outbox"

    def __init__(
        self,
        sources: Sources,
        actions_queued: Callable[[], None],
        transport: Callable[[SmtpSettings], Transport] = SmtpTransport,
        composer: ComposerFactory = ForwardComposer,
    ) -> None:
        super().__init__(sources.state, sources.now)
        settings = self.settings = sources.settings
        self._sources = sources
        self.policy = RetryPolicy.from_settings(settings)
        self._composer = composer(sources, self._relay_limit)
        # The action worker polls the state anyway; this only saves it the wait.
        self._actions_queued = actions_queued
        self._transports = [transport(settings.smtp) for _ in range(SMTP_CONNECTIONS)]
        self._idle: asyncio.Queue[Transport] | None = None
        # SMTP sessions block a thread each, for as long as the relay takes.
        self._smtp_threads = ThreadPoolExecutor(SMTP_CONNECTIONS, thread_name_prefix="smtp")
        self._slots = asyncio.Semaphore(2 * SMTP_CONNECTIONS)  # mail being prepared or sent
        self._requeued = False  # mail caught mid-send by the last stop goes back first
        self._orphans_at = 0.0  # when mail of instances gone was last looked for
        # Outcomes of attempts that the state refused to record (a full disk): written
        # first once it works again, so that no mail stays claimed while we run.
        self._unrecorded: dict[str, Callable[[Tx], Any]] = {}
        self._relay_size: int | None = None  # the relay's EHLO SIZE, once asked
        self._relay_asked = False
        self._swept_at = 0.0
        self._idle_closed = False  # the connections were closed since the last mail
        self._last_sent = sources.now()

    def reconfigure(self, settings: Settings) -> None:
        """The relay's sessions and the retry policy for `settings`; the composer reads
        the Sources the daemon shares, whose settings the daemon sets once for all."""
        if settings.smtp != self.settings.smtp:
            # Connections in use finish their mail; new ones use the new settings.
            for transport in self._transports:
                transport.reconfigure(settings.smtp)
            self.policy = RetryPolicy.from_settings(settings)
            self._relay_asked = False  # maybe another relay, with another SIZE
            self._due_now()
        self.settings = settings

    def _due_now(self) -> None:
        """A new relay setting (a fixed password, most often): mail waiting out a backoff
        is tried now, not up to retry_max later."""
        try:
            due = self._state.write_now(partial(outbox.waiting_due_now, now=self._now()))
        except DatabaseError as e:
            log.warning("smtp.* changed, but waiting mail stays at its next attempt: %s", e)
            return
        if due:
            log.info("smtp.* changed: %d waiting mails are tried now", due)
            self.wake()

    async def run(self) -> None:
        """Deliver due mail until stop(); in-flight SMTP transactions are always finished."""
        self._idle = asyncio.Queue()
        for transport in self._transports:
            self._idle.put_nowait(transport)
        await super().run()
        if self._unrecorded:  # one last try; else the next start requeues them
            with contextlib.suppress(*DatabaseError):
                await self._record_unrecorded()
        for transport in self._transports:
            await asyncio.to_thread(transport.close)
        self._smtp_threads.shutdown(wait=False)

    async def _round(self) -> float | None:
        """Send what is due; how long to wait before the next round (None: go on at once)."""
        now = self._now()
        if not self._requeued or (
            now - self._orphans_at > ORPHANS_EVERY
            and self._state.read(partial(outbox.orphaned, me=self._state.instance, now=now))
        ):
            self._orphans_at = now
            requeued = await self._state.write(
                partial(outbox.requeue_interrupted, me=self._state.instance, now=now)
            )
            for moved in requeued:
                if moved.after != "pending":
                    log.info(
                        "mail interrupted while being sent is not sent again: %s",
                        _why_not(moved),
                        extra={"MAIL_ID": str(moved.key)},
                    )
                elif self._requeued:  # not this process's own last run: another instance's
                    log.warning(
                        "mail that an instance now gone was sending goes out again "
                        "(it may have reached the relay already)",
                        extra={"MAIL_ID": str(moved.key)},
                    )
            self._requeued = True
        if self._unrecorded:
            await self._record_unrecorded()
        if self._now() - self._swept_at > SPOOL_GRACE_SECONDS:
            # Files of mail recalled while composed, or sent just before a crash.
            named = self._state.read(outbox.spooled)
            await asyncio.to_thread(self._state.spool.sweep, named, SPOOL_GRACE_SECONDS)
            self._swept_at = self._now()
        # On a shared state, only what this instance may take: the mail another holds
        # must not keep this one from queueing more of the planned mail and sending it.
        me = self._state.claimant
        due = partial(outbox.due, limit=DUE_BATCH, me=me)
        rows = self._state.read(partial(due, now=self._now()))
        if len(rows) < DUE_BATCH:
            # Planned mail enters the outbox only as fast as it is sent, a few
            # messages per transaction, so a backlog never floods the commits.
            wanted = DUE_BATCH - len(rows)
            if self._state.read(outbox.planned_count) > 0:  # idle rounds write nothing
                await self._state.write(partial(outbox.queue_planned, limit=wanted))
                rows = self._state.read(partial(due, now=self._now()))
        if rows and self._state.shared:  # taken for this instance, but what others hold
            rows = await self._state.write(
                partial(outbox.claim_due, me=self._state.instance, now=self._now(), limit=DUE_BATCH)
            )
            if not rows:  # another instance claimed what this one saw: look again soon
                return RACED_SECONDS
        if rows:
            results = await asyncio.gather(
                *(self._deliver_in_slot(row) for row in rows), return_exceptions=True
            )
            self._last_sent = self._now()
            self._idle_closed = False
            for result in results:  # only the state's own errors get this far
                if isinstance(result, BaseException):
                    raise result
            return None
        if not self._idle_closed and self._now() - self._last_sent > SMTP_IDLE_SECONDS:
            # Once after the last mail, not every poll: four thread hand-overs a second.
            for transport in self._transports:
                await asyncio.to_thread(transport.close_if_idle, SMTP_IDLE_SECONDS)
            self._idle_closed = True
        next_at = self._state.read(partial(outbox.next_due_at, me=me, now=self._now()))
        timeout = SMTP_IDLE_SECONDS if next_at is None else max(0.0, next_at - self._now())
        return min(timeout, POLL_SECONDS)

    async def _record_unrecorded(self) -> None:
        unrecorded = self._unrecorded

        def record(tx: Tx) -> None:
            for work in unrecorded.values():
                work(tx)

        await self._state.write(record)
        self._unrecorded = {}
        log.info("outcomes of %d mail attempts recorded now that the state works", len(unrecorded))
        self.wake()  # a recall notice may have been queued
        self._actions_queued()  # and confirmations

    async def _outcome(self, row: OutboxRow, work: Callable[[Tx], Any]) -> Any:
        """Record what an attempt came to; if the state refuses, it is kept to be recorded
        at the next round (so the mail does not stay claimed), and the round stops."""
        try:
            return await self._state.write(work)
        except DatabaseError:
            self._unrecorded[row.mail_id] = work
            raise

    def work_due(self) -> bool:
        """Mail waiting to be sent now, that this instance may take (the health verdict
        asks, once a second)."""
        me = self._state.claimant
        next_at = self._state.read(partial(outbox.next_due_at, me=me, now=self._now()))
        return (next_at is not None and next_at <= self._now()) or self._state.read(
            outbox.planned_count
        ) > 0

    async def _deliver_in_slot(self, row: OutboxRow) -> None:
        async with self._slots:
            await self._deliver(row)

    async def _deliver(self, row: OutboxRow) -> None:
        """One mail; whatever goes wrong with it is recorded on it and stops nothing else."""
        if self._bell.stopping:
            return  # stays pending for the next start
        fields = {"MAIL_ID": row.mail_id, "MESSAGE_ID": row.message_id}
        try:
            await self._attempt(row, fields)
        except DatabaseError:
            raise  # not this mail's fault: the round stops and is tried again
        except Exception as e:  # a bug or a value some library refuses: this mail only
            error = f"{type(e).__name__}: {e}"
            log.debug("mail %s raised", row.kind, exc_info=True, extra=fields)
            await self._failed_attempt(row, error, False, fields, unexpected=True)
        finally:
            self._bell.progress()

    async def _attempt(self, row: OutboxRow, fields: dict[str, str]) -> None:
        prepared: Prepared | None = None
        envelope = await self._sources.envelope_sender(row.mail_id)  # before it is claimed
        if row.spool is not None and not await asyncio.to_thread(
            self._state.spool.exists, row.spool
        ):
            if row.kind not in ("forward", "recall"):  # a digest is composed elsewhere, once
                await self._failed_attempt(row, f"its spool file {row.spool} is gone", True, fields)
                return
            log.warning(
                "mail %s: spool file %s is gone, composing again", row.kind, row.spool, extra=fields
            )
        elif row.prepared:
            prepared = Prepared(row.subject or "", row.raw, row.spool)
        if prepared is None:
            try:
                prepared = await self._composer.prepare(row)
            except PrepareError as e:
                await self._failed_attempt(row, str(e), e.permanent, fields)
                return
            claimed = await self._state.write(
                partial(
                    outbox.begin_send,
                    mail_id=row.mail_id,
                    me=self._state.instance,
                    prepared=prepared,
                )
            )
        else:
            claimed = await self._state.write(
                partial(outbox.begin_send, mail_id=row.mail_id, me=self._state.instance)
            )
        if not claimed.done:  # recalled or dropped while we were preparing
            log.info("mail %s not sent: %s", row.kind, _why_not(claimed), extra=fields)
            if prepared.spool is not None and prepared.spool != row.spool:
                await asyncio.to_thread(self._state.spool.remove, prepared.spool)
            return
        data = prepared.raw if prepared.raw is not None else self._spooled(prepared)
        assert self._idle is not None
        transport = await self._idle.get()
        try:
            refused = await asyncio.get_running_loop().run_in_executor(
                self._smtp_threads, transport.send, data, envelope, row.recipients
            )
        except DeliveryError as e:
            await self._failed_attempt(row, str(e), e.permanent, fields)
            return
        finally:
            self._idle.put_nowait(transport)
        delivered = [r for r in row.recipients if r not in refused]
        sent = await self._outcome(
            row, partial(_sent, row=row, now=self._now(), delivered=delivered)
        )
        if prepared.spool is not None:
            await asyncio.to_thread(self._state.spool.remove, prepared.spool)
        log.info(
            "mail %s sent to %s: %s%s",
            row.kind,
            ", ".join(delivered),
            prepared.subject,
            "" if sent.moved.before == "sending" else f" ({_why_not(sent.moved)} meanwhile)",
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
        if sent.notice:
            self.wake()
        if _confirms(row, delivered):
            self._actions_queued()

    def _spooled(self, prepared: Prepared) -> Path:
        assert prepared.spool is not None
        return self._state.spool.path(prepared.spool)

    async def _failed_attempt(
        self,
        row: OutboxRow,
        error: str,
        permanent: bool,
        fields: dict[str, str],
        unexpected: bool = False,
    ) -> None:
        age = self._now() - row.created_at
        exhausted = unexpected and row.attempts + 1 >= UNEXPECTED_ATTEMPTS
        if permanent or exhausted or self.policy.expired(age, row.attempts + 1):
            moved = await self._outcome(
                row, partial(outbox.mark_failed, mail_id=row.mail_id, error=error)
            )
            if moved.after == "failed":
                log.error(
                    "mail %s failed for good after %d attempts: %s",
                    row.kind,
                    row.attempts + 1,
                    error,
                    extra=fields,
                )
                return
        else:
            delay = backoff(row.attempts, self.policy)
            retry_at = self._now() + delay
            moved = await self._outcome(
                row,
                partial(
                    outbox.mark_retry, mail_id=row.mail_id, next_attempt_at=retry_at, error=error
                ),
            )
            if moved.after == "pending":
                log.warning(
                    "mail %s attempt %d failed, retrying in %.1fs: %s",
                    row.kind,
                    row.attempts + 1,
                    delay,
                    error,
                    extra=fields,
                )
                return
        log.info(
            "mail %s attempt %d failed (%s) and is not tried again: %s",
            row.kind,
            row.attempts + 1,
            error,
            _why_not(moved),
            extra=fields,
        )

    async def _relay_limit(self) -> int | None:
        """The relay's SIZE, asked once over an idle connection (which the mail then uses)."""
        if not self._relay_asked:
            assert self._idle is not None
            transport = await self._idle.get()
            try:
                self._relay_size = await asyncio.get_running_loop().run_in_executor(
                    self._smtp_threads, transport.size_limit
                )
            except DeliveryError as e:
                raise PrepareError(str(e), permanent=False) from e
            finally:
                self._idle.put_nowait(transport)
            self._relay_asked = True
        return self._relay_size
