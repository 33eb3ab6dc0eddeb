"""The action worker: the side effects other than mail that messages ask for.

Each kind of queued action is one entry of `Actions.HANDLERS`: a report was
received (build a supplement or an immediate digest, then acknowledge it in
the chat), a digest was requested in the chat, a forwarded mail is to be
confirmed in the chat. Decisions that need the state (has this day's digest
gone out yet?) are taken here, when the action runs, not when the event is
acknowledged. A FeishuError is retried with backoff; anything else fails the
action and is logged, and the queue goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from functools import partial
from typing import ClassVar
from zoneinfo import ZoneInfo

from feishu_mailbot import reports
from feishu_mailbot.feishu import FeishuApi, FeishuError
from feishu_mailbot.reporter import Reporter
from feishu_mailbot.retry import RetryPolicy, backoff
from feishu_mailbot.settings import ReportSettings, Settings
from feishu_mailbot.state import State, actions, digests, messages
from feishu_mailbot.state.actions import Action

log = logging.getLogger("feishu_mailbot.actions")

POLL_SECONDS = 5.0  # actions can be queued by another process too (none today; cheap)


class ActionFailed(Exception):
    """An action that cannot succeed however often it is tried."""


class Actions:
    def __init__(
        self,
        settings: Settings,
        state: State,
        api: FeishuApi,
        reporter: Reporter,
        mail_queued: Callable[[], None],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.policy = RetryPolicy.from_settings(settings)
        self._state = state
        self._api = api
        self._reporter = reporter
        # The outbox polls the state anyway; this only saves it the wait.
        self._mail_queued = mail_queued
        self._now = wall_clock
        self._wake = asyncio.Event()
        self._stopping = False

    def reconfigure(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = RetryPolicy.from_settings(settings)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            due = self._state.read(partial(actions.due, now=self._now()))
            for action in due:
                if self._stopping:
                    return
                await self._perform(action)
            if due:
                continue
            next_at = self._state.read(actions.next_due_at)
            timeout = POLL_SECONDS if next_at is None else max(0.0, next_at - self._now())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(timeout, POLL_SECONDS))

    async def _perform(self, action: Action) -> None:
        fields = {"MESSAGE_ID": action.message_id}
        handler = self.HANDLERS.get(action.kind)
        try:
            if handler is None:
                raise ActionFailed(f"unknown action kind {action.kind!r}")
            await handler(self, action)
        except FeishuError as e:
            problem = str(e)
            if self._now() - action.created_at > self.policy.give_up_after:
                await self._finish(action, problem)
                log.error("%s failed for good: %s", action.kind, e, extra=fields)
                return
            delay = backoff(action.attempts, self.policy)
            retry_at = self._now() + delay
            await self._state.write(
                partial(actions.retry, action_id=action.id, next_attempt_at=retry_at, error=problem)
            )
            log.warning("%s failed, retrying in %.1fs: %s", action.kind, delay, e, extra=fields)
        except ActionFailed as e:
            log.error("%s failed: %s", action.kind, e, extra=fields)
            await self._finish(action, str(e))
        except Exception as e:  # a bug must not wedge the queue: record it and go on
            log.exception("%s failed: %s", action.kind, e, extra=fields)
            await self._finish(action, f"{type(e).__name__}: {e}")
        else:
            await self._finish(action, None)

    async def _finish(self, action: Action, error: str | None) -> None:
        await self._state.write(partial(actions.finish, action_id=action.id, error=error))

    def _report_settings(self) -> ReportSettings:
        rs = self.settings.daily_report
        if rs is None:
            raise ActionFailed("daily_report is no longer configured")
        return rs

    # -- the handlers ------------------------------------------------------------------

    async def _report_received(self, action: Action) -> None:
        """A report was stored: mail it (immediate) or supplement a digest already sent."""
        rs = self._report_settings()
        if rs.mode == "immediate":
            await self._immediate(action)
        elif rs.supplements:
            day = str(action.payload["day"])
            if self._state.read(partial(digests.for_day, chat_id=rs.chat, day=day)):
                await self._supplement(action)
        await self._acknowledge(action)

    async def _acknowledge(self, action: Action) -> None:
        rs = self._report_settings()
        if rs.acknowledge == "reaction":
            await self._api.react(action.message_id, rs.reaction)
        elif rs.acknowledge == "reply":
            day = action.payload["day"]
            await self._api.reply_text(action.message_id, f"已收到 {day} 的日报 ✅")

    async def _supplement(self, action: Action) -> None:
        day = date.fromisoformat(str(action.payload["day"]))
        if (await self._reporter.build(day, kind="supplement")).queued:
            self._mail_queued()

    async def _immediate(self, action: Action) -> None:
        msg = self._state.read(partial(messages.get, message_id=action.message_id))
        if msg is not None and await self._reporter.immediate(msg):
            self._mail_queued()

    async def _digest_request(self, action: Action) -> None:
        rs = self._report_settings()
        p = action.payload
        if not reports.may_trigger(str(p["sender"]), rs):
            await self._api.reply_text(action.message_id, "抱歉，你没有发送日报汇总的权限。")
            return
        if p.get("error"):
            await self._api.reply_text(action.message_id, f"无法发送日报汇总：{p['error']}")
            return
        day = date.fromisoformat(str(p["day"]))
        outcome = await self._reporter.build(day, force=bool(p.get("force")))
        if outcome.queued:
            self._mail_queued()
        to = "、".join(outcome.recipients)
        if outcome.already_at is not None:
            zone = ZoneInfo(self.settings.timezone)
            at = datetime.fromtimestamp(outcome.already_at, zone).strftime("%H:%M")
            text = (
                f"{day.isoformat()} 的日报汇总已于 {at} 发送给 {to}。"
                f"如需重新发送，请 @我 {rs.resend_trigger} {day.isoformat()}"
            )
        else:
            text = (
                f"已发送 {day.isoformat()} 日报汇总给 {to}"
                f"（{outcome.submitted}/{outcome.expected} 已提交）"
            )
        await self._api.reply_text(action.message_id, text)

    async def _confirm(self, action: Action) -> None:
        """A forward whose rule says `confirm: true` was sent: say so in the chat."""
        to = ", ".join(str(a) for a in action.payload["to"])
        await self._api.reply_text(action.message_id, f"已转发到邮箱: {to}")

    HANDLERS: ClassVar[dict[str, Callable[[Actions, Action], Awaitable[None]]]] = {
        "report": _report_received,
        "digest-request": _digest_request,
        "confirm": _confirm,
        # Queued by releases before "report" existed; their rows may still be pending.
        "acknowledge": _acknowledge,
        "supplement": _supplement,
        "report-immediate": _immediate,
    }
