"""Wiring and lifecycle: connect, take events, deliver mail, reload, stop.

The event handler is synchronous and runs on the loop (the SDK calls it and
acks after it returns): it parses, filters on the chat allowlist, plans mail
with the rules, commits to SQLite and returns. It does no network I/O, so the
ack goes out within milliseconds even while SMTP is slow or down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from feishu_mailbot import config, events, logs, rules
from feishu_mailbot.feishu import CREDENTIAL_ERRORS, FeishuApi, FeishuError, LongConnection
from feishu_mailbot.outbox import Outbox, RetryPolicy
from feishu_mailbot.settings import Settings
from feishu_mailbot.store import Ingest, Store
from feishu_mailbot.systemd import Notifier

log = logging.getLogger("feishu_mailbot.daemon")

DB_NAME = "feishu-mailbot.db"
STOP_TIMEOUT = 60.0


def db_path(settings: Settings) -> Path:
    return Path(settings.state_dir) / DB_NAME


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.notifier = Notifier()
        self.store = Store(db_path(settings))
        self.api = FeishuApi(settings.feishu)
        self.outbox = Outbox(
            settings, self.store, self.api, policy=RetryPolicy.from_settings(settings)
        )
        self.connection = LongConnection(settings.feishu, self.handle)
        self._stop = asyncio.Event()
        self.events_accepted = 0

    # -- intake: runs inside the SDK's frame handler, before the ack ----------------

    def handle(self, payload: bytes) -> None:
        """Parse, filter, commit. Raising makes the SDK answer 500 so Feishu re-pushes."""
        try:
            event = events.parse_event(payload)
        except events.EventError as e:
            # Re-pushing a malformed event would only repeat this; ack it and say so.
            log.error("malformed event ignored: %s", e)
            return
        now = time.time()
        if isinstance(event, events.Ignored):
            log.debug(
                "event %s ignored: %s",
                event.event_type,
                event.reason,
                extra={"EVENT_ID": event.event_id},
            )
            return
        fields = {
            "EVENT_ID": event.event_id,
            "MESSAGE_ID": event.message_id,
            "CHAT_ID": event.chat_id,
        }
        if self.settings.chat(event.chat_id) is None:
            log.debug("chat not in the allowlist, ignored", extra=fields)
            return
        if isinstance(event, events.Recall):
            outcome = self.store.recall(event, now)
            if outcome is None:
                log.debug("duplicate recall event ignored", extra=fields)
                return
            log.info(
                "message recalled: %d pending mail cancelled, %d recall notices queued",
                outcome.cancelled,
                outcome.notices,
                extra=fields,
            )
            if outcome.notices:
                self.outbox.wake()
            return
        deliveries = rules.plan(self.settings.rules, event)
        result = self.store.ingest(event, deliveries, now)
        if result is not Ingest.NEW:
            log.info("%s ignored", result.value, extra=fields)
            return
        self.events_accepted += 1
        if deliveries:
            names = ",".join(dict.fromkeys(r for d in deliveries for r in d.rules))
            log.info(
                "message accepted, %d mail queued (rules %s)",
                len(deliveries),
                names,
                extra={**fields, "RULE": names},
            )
            self.outbox.wake()
        else:
            log.info("message accepted, no rule matched", extra=fields)

    # -- lifecycle ---------------------------------------------------------------------

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        outbox_task = loop.create_task(self.outbox.run())
        try:
            code = await self._connect_until_up()
            if code is not None:
                return code
            self.notifier.ready(self.status_line())
            log.info(
                "ready: %d chats allowed, %d rules, outbox %d",
                len(self.settings.chats),
                len(self.settings.rules),
                self.store.pending_count(),
            )
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 5.0)
                if self.connection.state.gave_up:
                    log.error(
                        "Feishu long connection is gone and the SDK stopped retrying; "
                        "exiting so the service manager restarts us"
                    )
                    return os.EX_TEMPFAIL
                self.notifier.status(self.status_line())
            return os.EX_OK
        finally:
            await self._shutdown(outbox_task)

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
                    return os.EX_CONFIG
                error = str(e)
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
            self.connection.state.last_error = error
            log.warning("cannot connect to Feishu (%s); retrying in %.0fs", error, delay)
            self.notifier.status(f"connecting to Feishu, last error: {error}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, 30.0)
        return os.EX_OK

    async def _shutdown(self, outbox_task: asyncio.Task[None]) -> None:
        self.notifier.stopping()
        log.info("stopping")
        await self.connection.close()
        self.outbox.stop()
        try:
            await asyncio.wait_for(asyncio.shield(outbox_task), STOP_TIMEOUT)
        except TimeoutError:
            log.warning(
                "outbox did not finish within %.0fs; pending mail stays queued", STOP_TIMEOUT
            )
            outbox_task.cancel()
        await self.api.close()
        self.store.close()

    def reload(self) -> None:
        self.notifier.notify("RELOADING=1")
        try:
            new = config.load(self.settings.path)
        except config.ConfigError as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            self.notifier.ready(self.status_line())
            return
        if new.feishu != self.settings.feishu or new.state_dir != self.settings.state_dir:
            log.warning("feishu.* and state_dir changes take effect only after a restart")
        self.settings = new
        self.outbox.reconfigure(new)
        logs.set_level(new.log_level)
        log.info("configuration reloaded: %d chats, %d rules", len(new.chats), len(new.rules))
        self.notifier.ready(self.status_line())

    def status_line(self) -> str:
        st = self.connection.state
        outbox = self.store.pending_count()
        if st.connected and st.connected_since is not None:
            up = _duration(time.monotonic() - st.connected_since)
            return f"connected {up}, {self.events_accepted} events accepted, outbox {outbox}"
        return (
            f"reconnecting (attempt {st.reconnect_attempts}, last error: "
            f"{st.last_error or 'connection lost'}), outbox {outbox}"
        )


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 1:
        return f"{int(seconds)}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def run(settings: Settings) -> int:
    daemon = Daemon(settings)
    # The SDK schedules its tasks on the loop it made at import; we must run on that one.
    loop = daemon.connection.loop
    asyncio.set_event_loop(loop)
    return loop.run_until_complete(daemon.main())
