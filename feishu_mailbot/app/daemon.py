"""Wiring and lifecycle: connect, take events, deliver mail, reload, stop.

The event handler runs on the loop for each data frame and the ack follows its
return: it parses, triages (pure: the allowlist, the rules, daily-report
requests), and waits for the one write of the outcome (a group commit, see
state/group_commit.py), then wakes the workers. It does no network I/O, so
the ack goes out within milliseconds even while SMTP is slow or down.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import faulthandler
import gc
import hashlib
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from feishu_mailbot.app import logs
from feishu_mailbot.app.database import location
from feishu_mailbot.app.systemd import Notifier, watchdog_interval
from feishu_mailbot.compose.batch import Batcher
from feishu_mailbot.compose.daily_report import Reporter
from feishu_mailbot.compose.sources import Sources
from feishu_mailbot.config import load, proxy
from feishu_mailbot.config.settings import Settings
from feishu_mailbot.core import health, status, triage
from feishu_mailbot.core.exits import Exit
from feishu_mailbot.core.model import BODY_CAP, Event, Ignored, Recall
from feishu_mailbot.core.rules import RULE_TIMEOUT_MS
from feishu_mailbot.feishu import events
from feishu_mailbot.feishu.connection import RECONNECT_MAX, LongConnection
from feishu_mailbot.feishu.errors import CREDENTIAL_ERRORS, FeishuError
from feishu_mailbot.feishu.rest import FeishuApi
from feishu_mailbot.feishu.route import Route
from feishu_mailbot.state import (
    DatabaseError,
    PostgresUnavailable,
    State,
    StateError,
    Unavailable,
    heartbeat,
    messages,
    quarantine,
    subscriptions,
)
from feishu_mailbot.state import outbox as outbox_q
from feishu_mailbot.state.instances import LEASE
from feishu_mailbot.state.messages import Ingest
from feishu_mailbot.workers.actions import Actions
from feishu_mailbot.workers.housekeeping import Housekeeper
from feishu_mailbot.workers.membership import Membership
from feishu_mailbot.workers.outbox import Outbox
from feishu_mailbot.workers.schedule import Schedule

if TYPE_CHECKING:
    from feishu_mailbot.workers.inbound import Inbound

log = logging.getLogger(__name__)

STOP_TIMEOUT = 60.0  # the unit's TimeoutStopSec is longer, so in-flight SMTP can finish
STATUS_EVERY = 5.0
QUARANTINE_POLL = 1.0  # how soon an operator's retry of a quarantined event is taken
IDENTITY_RETRY = 5.0  # how often to ask again for the bot's open_id
NO_EVENTS_HINT = 30 * 60.0  # connected this long without a single event: say what to check


class Unsubscribed:
    """(rule, address) of everyone who unsubscribed, as triage reads it on every event:
    read at start, with every status beat (a `subscriptions --restore` elsewhere), and
    when the inbound worker records one."""

    def __init__(self, state: State) -> None:
        self._state = state
        self.pairs: frozenset[tuple[str, str]] = frozenset()

    def read(self) -> None:
        self.pairs = self._state.read(subscriptions.pairs)


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.notifier = Notifier()
        self.state = location(settings).open(daemon=True)
        route = Route(settings.feishu)  # one TLS context and proxy choice for both
        self.api = FeishuApi(settings.feishu, route=route)
        self.sources = Sources.of(settings, self.state, self.api)
        self.names = self.sources.names
        self.reporter = Reporter(self.sources)
        self.outbox = Outbox(self.sources, self.wake_actions)
        self.actions = Actions(settings, self.state, self.api, self.reporter, self.wake_outbox)
        self.batcher = Batcher(self.sources)
        db = settings.database
        self.membership = Membership(self.state, lease=db.failover_after if db else LEASE)
        leading = self.membership.leading_now
        self.schedule = Schedule(
            settings, self.state, self.reporter, self.wake_outbox, batcher=self.batcher,
            leading=leading,
        )  # fmt: skip
        self.housekeeper = Housekeeper(settings, self.state, leading=leading)
        self.left = Unsubscribed(self.state)
        self.inbound: Inbound | None = None
        if settings.inbound is not None:  # imaplib and the mail parser only then
            from feishu_mailbot.workers.inbound import Inbound

            self.inbound = Inbound(
                settings, self.state, self.api, self.sources.key, leading=leading,
                left_changed=self.left.read,
            )  # fmt: skip
        self.connection = LongConnection(
            settings.feishu, self.handle, ping_every=settings.health.stall_after / 3, route=route
        )
        self._stop = asyncio.Event()
        self._exit_code = Exit.OK
        self._ready = False
        self.bot_open_id = ""
        self.events_seen = 0
        self.started = time.monotonic()
        self._slow_rules: set[str] = set()

    def wake_actions(self) -> None:
        self.actions.wake()

    def wake_outbox(self) -> None:
        """Mail was queued: this instance's outbox looks now, and the others' too."""
        self.outbox.wake()
        self.state.announce("outbox")

    # -- intake: runs inside the SDK's frame handler, before the ack ----------------

    async def handle(self, payload: bytes) -> None:
        """Parse, triage, commit; the ack follows. Raising answers 500 so Feishu re-pushes."""
        self.events_seen += 1
        now = time.time()
        try:
            allowed = self.settings.chat
            zone = ZoneInfo(self.settings.timezone)  # ZoneInfo keeps one object per zone
            event = events.parse_event(payload, lambda chat: allowed(chat) is not None, zone)
            outcome = triage.triage(event, self.settings, self.bot_open_id, self.left.pairs)
            if isinstance(outcome, triage.Drop):
                log.debug("%s", outcome.reason, extra=_fields(event))
            elif isinstance(outcome, Recall):
                await self._recall(outcome, now)
            else:
                await self._accept(outcome, now)
        except Unavailable:
            raise  # a busy or full database: not acked, so Feishu pushes it again later
        except Exception as e:  # anything else fails the same way on every re-push
            await self._quarantine(payload, e, now)

    async def _quarantine(self, payload: bytes, error: Exception, now: float) -> None:
        """Keep the event as Feishu sent it, and acknowledge it."""
        key = events.event_id_of(payload) or f"sha256:{hashlib.sha256(payload).hexdigest()}"
        reason = f"{type(error).__name__}: {error}"[:1000]
        if await self.state.write(
            partial(quarantine.hold, key=key, reason=reason, payload=payload, now=now)
        ):
            log.error("event quarantined: %s", reason, extra={"EVENT_ID": key})
            log.debug("the quarantined event raised", exc_info=error)

    async def _retry_quarantined(self) -> None:
        """Events the operator asked to retry (`feishu-mailbot retry --quarantined`) go
        through intake again: taken now, or held again with today's reason."""
        while True:
            await asyncio.sleep(QUARANTINE_POLL)
            try:
                asked = self.state.read(partial(quarantine.entries, statuses=("retry",)))
                for item in asked:
                    await self.handle(item.payload)
                    if await self.state.write(partial(quarantine.settle, key=item.key)):
                        log.info("quarantined event taken on retry", extra={"EVENT_ID": item.key})
            except DatabaseError as e:  # busy or full: the rows stay asked for
                log.debug("quarantine retry postponed: %s", e)

    async def _recall(self, recall: Recall, now: float) -> None:
        outcome = await self.state.write(partial(messages.recall, event=recall, now=now))
        fields = _fields(recall)
        if outcome is None:
            log.debug("duplicate recall event ignored", extra=fields)
            return
        log.info(
            "message recalled: %d pending mail cancelled, %d recall notices queued%s",
            outcome.cancelled,
            outcome.notices,
            f", {outcome.sending} being sent (cancelled unless the relay accepts it)"
            if outcome.sending
            else "",
            extra=fields,
        )
        if outcome.notices:
            self.wake_outbox()

    async def _accept(self, accepted: triage.Accept, now: float) -> None:
        result = await self.state.write(
            partial(
                messages.ingest,
                msg=accepted.message,
                deliveries=accepted.deliveries,
                now=now,
                requests=accepted.requests,
                batches=accepted.batches,
                body=accepted.body,
            )
        )
        fields = _fields(accepted.message)
        if accepted.cut_from and result is Ingest.NEW:
            log.warning(
                "message body of %d bytes is over the %d-byte cap: stored and mailed cut to it, "
                "with a note",
                accepted.cut_from,
                BODY_CAP,
                extra=fields,
            )
        for name in set(accepted.slow_rules) - self._slow_rules:
            self._slow_rules.add(name)  # once per rule: the next message would say the same
            log.warning(
                "rule %s: its regex ran out of time (%d ms) and counted as no match; "
                "simplify it (check-config names the likely cause)",
                name,
                RULE_TIMEOUT_MS,
                extra={**fields, "RULE": name},
            )
        if result is not Ingest.NEW:
            log.info("%s ignored", result.value, extra=fields)
            return
        if accepted.requests:
            kinds = ", ".join(r.kind for r in accepted.requests)
            log.info("daily report: %s queued", kinds, extra=fields)
            self.actions.wake()
        if accepted.deliveries:
            names = ",".join(dict.fromkeys(r for d in accepted.deliveries for r in d.rules))
            log.info(
                "message accepted, %d mail queued (rules %s)",
                len(accepted.deliveries),
                names,
                extra={**fields, "RULE": names},
            )
            self.wake_outbox()
        if accepted.batches:
            names = ",".join(accepted.batches)
            log.info(
                "message collected for the batch of %s", names, extra={**fields, "RULE": names}
            )
        if not (accepted.deliveries or accepted.batches):
            log.info("message accepted, no rule matched", extra=fields)

    # -- lifecycle ---------------------------------------------------------------------

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:  # before the outbox takes over what predecessors left
            await self.membership.join()
            self.left.read()
        except DatabaseError as e:
            log.error("database unreachable: %s", e)
            self.state.close()
            return Exit.TEMPFAIL
        workers = [
            self._start_worker("membership", self.membership.run()),
            self._start_worker("outbox", self.outbox.run()),
            self._start_worker("actions", self.actions.run()),
            self._start_worker("schedule", self.schedule.run()),
            self._start_worker("housekeeping", self.housekeeper.run()),
        ]
        if self.inbound is not None:
            workers.append(self._start_worker("inbound", self.inbound.run()))
        helpers = [
            self._start_worker("supervisor", self._supervise()),
            self._start_worker("quarantine", self._retry_quarantined()),
            loop.create_task(self._learn_identity()),
        ]
        # Work another instance added: the worker of that name looks at once.
        listening = self.state.listener({"outbox": self.outbox.wake, "actions": self.actions.wake})
        if listening is not None:
            helpers.append(loop.create_task(listening, name="listen"))
        try:
            code = await self._connect_until_up()
            if code is not None:
                return code
            self._ready = True
            self.notifier.ready(self.status_line())
            # Everything alive now (modules, the SDK, config) lives as long as the process.
            # Frozen, the cyclic GC's full collections stop walking it: they took up to
            # ≈40 ms each under load, and every ack queued behind them.
            gc.freeze()
            log.info(
                "ready: %d chats allowed, %d rules, outbox %d",
                len(self.settings.chats),
                len(self.settings.rules),
                self.state.read(outbox_q.pending_count),
            )
            await self._stop.wait()
            return self._exit_code
        finally:
            for task in helpers:
                task.cancel()
            await self._shutdown(workers)

    def _start_worker(self, name: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task whose end, unless we are stopping, ends the process with 75: systemd
        restarts us, and what was pending is still in the state."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        task.add_done_callback(self._worker_ended)
        return task

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        if self._stop.is_set() or task.cancelled():
            return
        error = task.exception()
        why = f"{type(error).__name__}: {error}" if error else "it returned"
        log.error(
            "the %s worker stopped unexpectedly (%s); exiting so systemd restarts us",
            task.get_name(),
            why,
            exc_info=error,
        )
        self._exit_code = Exit.TEMPFAIL
        self._stop.set()

    async def _learn_identity(self) -> None:
        """The bot's open_id, to tell an @-mention of the bot from one of someone else."""
        while not self.bot_open_id:
            if self.settings.daily_report is not None:
                try:
                    self.bot_open_id = await self.api.bot_open_id()
                    return
                except FeishuError as e:
                    log.warning("cannot learn the bot's open_id yet: %s", e)
            await asyncio.sleep(IDENTITY_RETRY)

    async def _supervise(self) -> None:
        """Feed the watchdog while healthy, keep STATUS= current, act on a stall."""
        loop = asyncio.get_running_loop()
        feed_every = watchdog_interval()
        tick = min(1.0, feed_every or 1.0)
        last_feed = last_status = float("-inf")
        previous: health.Verdict | None = None
        expected = loop.time() + tick
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            lag, expected = max(0.0, now - expected), now + tick
            verdict = self.assess(lag)
            if verdict.feed_watchdog:
                if feed_every is not None and now - last_feed >= feed_every:
                    self.notifier.watchdog()
                    last_feed = now
                if previous is health.Verdict.STALLED:
                    log.warning("recovered from stall: %s", verdict.reason)
            elif previous is not health.Verdict.STALLED:
                if feed_every is not None:
                    log.error(
                        "stalled: %s; withholding the watchdog so systemd restarts us",
                        verdict.reason,
                    )
                else:
                    log.error("stalled: %s; exiting so a supervisor can restart us", verdict.reason)
                    self._exit_code = Exit.TEMPFAIL
                    self._stop.set()
            if verdict.verdict is not previous or now - last_status >= STATUS_EVERY:
                line = self.status_line(verdict)
                self.notifier.status(line)
                await self._record(line)
                last_status = now
            previous = verdict.verdict

    async def _record(self, line: str) -> None:
        """The status line, also for `feishu-mailbot status` in another process."""
        st = self.connection.state
        since = st.connected_since if st.connected else st.reconnecting_since
        beat = heartbeat.Beat(
            pid=os.getpid(),
            at=time.time(),
            connected=st.connected,
            since=None if since is None else time.time() - (time.monotonic() - since),
            line=line,
        )
        try:
            await self.state.write(partial(heartbeat.record, beat=beat))
            self.left.read()
        except DatabaseError as e:
            log.debug("status not recorded: %s", e)

    def assess(self, loop_lag: float = 0.0) -> health.Health:
        conn = self.connection
        snapshot = health.Snapshot(
            now=time.monotonic(),
            connected=conn.state.connected,
            last_heard_at=conn.last_heard_at,
            reconnecting_since=conn.state.reconnecting_since,
            gave_up=conn.state.gave_up,
            loop_lag=loop_lag,
            ever_connected=conn.state.connects > 0,
            workers=self._pulses(),
        )
        h = self.settings.health
        return health.assess(
            snapshot,
            stall_after=h.stall_after,
            reconnect_budget=h.reconnect_budget,
            worker_stall_after=h.worker_stall_after,
        )

    def _pulses(self) -> tuple[health.Pulse, ...]:
        pulses = []
        for name, worker in (
            ("outbox", self.outbox),
            ("actions", self.actions),
            ("schedule", self.schedule),
            ("housekeeping", self.housekeeper),
        ):
            try:
                due = worker.work_due()
            except DatabaseError:
                due = False  # the worker sees the same error, waits and says so itself
            pulses.append(health.Pulse(name, due, worker.last_progress))
        return tuple(pulses)

    async def _connect_until_up(self) -> int | None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                await self.connection.connect()
                return None
            except FeishuError as e:
                if e.code in CREDENTIAL_ERRORS:
                    log.error(
                        "Feishu rejected the app credentials: %s; check feishu.app_id and "
                        "feishu.app_secret in %s",
                        e,
                        self.settings.path,
                    )
                    self.notifier.status(
                        f"Feishu rejected the app credentials: fix {self.settings.path}"
                    )
                    return Exit.CONFIG
                error = str(e)
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
            # Once per cause, not once per retry: a blocked WebSocket would say it every 15 s.
            changed = error != self.connection.state.last_error
            self.connection.state.last_error = error
            self.connection.state.reconnect_attempts += 1
            log.log(
                logging.WARNING if changed else logging.DEBUG,
                "cannot connect to Feishu: %s; retrying every %.0f s at most",
                error,
                RECONNECT_MAX,
            )
            if changed:
                self.notifier.status(f"connecting to Feishu: {error}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, RECONNECT_MAX)
        return Exit.OK

    async def _shutdown(self, workers: list[asyncio.Task[None]]) -> None:
        self.notifier.stopping()
        log.info("stopping")
        await self.connection.close()
        self.outbox.stop()
        self.actions.stop()
        self.schedule.stop()
        self.housekeeper.stop()
        self.membership.stop()
        if self.inbound is not None:
            self.inbound.stop()
        finished, unfinished = await asyncio.wait(workers, timeout=STOP_TIMEOUT)
        if unfinished:
            log.warning(
                "workers did not finish within %.0fs; pending work stays queued", STOP_TIMEOUT
            )
            for task in unfinished:
                task.cancel()
        await self.api.close()
        await self._record("stopped")
        try:
            await self.membership.leave()
        except DatabaseError as e:  # its lease runs out on its own
            log.warning("could not tell the other instances this one stops: %s", e)
        self.state.close()
        for task in finished:
            if not task.cancelled() and task.exception() is not None:
                log.error(
                    "the %s worker failed while stopping: %s", task.get_name(), task.exception()
                )
                self._exit_code = self._exit_code or Exit.TEMPFAIL

    def reload(self) -> None:
        """SIGHUP: swap in a valid new config without touching the long connection."""
        self.notifier.reloading()
        try:
            new = load.load(self.settings.path)
        except load.ConfigError as e:
            log.error("reload refused, keeping the running configuration: %s", e)
        else:
            if new.feishu != self.settings.feishu or new.state_dir != self.settings.state_dir:
                log.warning("feishu.* and state_dir changes take effect only after a restart")
            if new.inbound != self.settings.inbound:
                log.warning("inbound.* changes take effect only after a restart")
                # Until then the mail's Reply-To, envelope and List-Unsubscribe go on
                # naming the mailbox that is read.
                new = dataclasses.replace(new, inbound=self.settings.inbound)
            self.settings = self.sources.settings = new  # the reporter's and batcher's too
            for part in (self.names, self.schedule, self.housekeeper, self.inbound):
                if part is not None:
                    part.settings = new
            self.outbox.reconfigure(new)
            self.actions.reconfigure(new)
            self.connection.ping_every = new.health.stall_after / 3
            logs.set_level(new.log_level)
            self._slow_rules.clear()  # a rule may have been fixed: say it again if not
            for warning in load.warnings(new):
                log.warning("%s", warning)
            log.info("configuration reloaded: %d chats, %d rules", len(new.chats), len(new.rules))
        if self._ready:
            self.notifier.ready(self.status_line())
        else:  # still connecting: READY=1 must wait for the first connection
            self.notifier.status(self.status_line())

    def status_line(self, verdict: health.Health | None = None) -> str:
        """The line `systemctl status` shows: plain words, for the operator."""
        st = self.connection.state
        try:
            outbox: int | str = self.state.read(outbox_q.pending_count)
            since = status.today_began(time.time(), self.settings.timezone)
            today: int | str = self.state.read(partial(messages.count_since, since=since))
        except DatabaseError as e:
            what = (
                "database unreachable" if isinstance(e, PostgresUnavailable) else "state database"
            )
            outbox = today = f"unknown ({what}: {e})"
        verdict = verdict or self.assess()
        if verdict.verdict is health.Verdict.STALLED:
            return f"STALLED: {verdict.reason}; outbox {outbox}"
        if st.connected and st.connected_since is not None:
            up = status.duration(time.monotonic() - st.connected_since)
            line = f"connected {up}, {today} events today, outbox {outbox}"
            if self.inbound is not None and self.inbound.problem is not None:
                line += f"; inbound mail paused: {self.inbound.problem}"
            if self.api.missing_permissions:
                what, message = next(iter(self.api.missing_permissions.items()))
                line += f"; missing Feishu permission for {what}: {message}"
            elif self.events_seen == 0 and time.monotonic() - self.started > NO_EVENTS_HINT:
                line += (
                    "; no event received since start: check the app's event subscription "
                    "(im.message.receive_v1, long connection) and the im:message.group_msg scope"
                )
            return line
        what = "connecting" if st.connects == 0 else "reconnecting"
        return (
            f"{what} (attempt {st.reconnect_attempts}, last error: "
            f"{st.last_error or 'connection lost'}), outbox {outbox}"
        )


def _fields(event: Event) -> dict[str, str]:
    """The journal fields that name an event."""
    if isinstance(event, Ignored):
        return {"EVENT_ID": event.event_id, **({"CHAT_ID": event.chat_id} if event.chat_id else {})}
    return {"EVENT_ID": event.event_id, "MESSAGE_ID": event.message_id, "CHAT_ID": event.chat_id}


def run(settings: Settings) -> int:
    # On the watchdog's SIGABRT (or any fatal signal) print every thread's stack to
    # stderr, which is the journal under systemd: the stall explains itself.
    faulthandler.enable()
    for warning in load.warnings(settings):
        log.warning("%s", warning)
    if os.stat(settings.path).st_mode & 0o004:
        log.warning(
            "%s is world-readable but holds secrets: chmod 0640 it (owner root, group "
            "feishu-mailbot)",
            settings.path,
        )
    # SMTP sessions run in threads; with the default 5 ms GIL switch interval a busy
    # one could hold back the event loop (and so an ack) for that long each time.
    sys.setswitchinterval(0.0005)
    for problem in proxy.environment_errors(os.environ):
        log.error("%s; fix the unit's Environment= (its drop-in) or set feishu.proxy", problem)
        return Exit.CONFIG
    try:
        daemon = Daemon(settings)
    except StateError as e:
        log.error("%s", e)
        return Exit.CONFIG
    except DatabaseError as e:  # PostgreSQL down or unreachable: systemd starts us again
        log.error("database unreachable: %s", e)
        return Exit.TEMPFAIL
    if not daemon.state.spool.writable():
        log.error(
            "%s: not writable by this user, so mail over 256 KiB cannot be sent (an older "
            "release's send-report, run as root, made it root's): run `feishu-mailbot status` "
            "as root once, which gives it back, or chown -R the daemon's user: to it",
            daemon.state.spool.directory,
        )
    # The SDK schedules its tasks on the loop it made at import; we must run on that one.
    loop = daemon.connection.loop
    asyncio.set_event_loop(loop)
    return loop.run_until_complete(daemon.main())
