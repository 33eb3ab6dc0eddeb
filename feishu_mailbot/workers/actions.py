"""The action worker: the side effects other than mail that messages ask for.

Each kind of queued action is one entry of `Actions.HANDLERS`. A handler
does one side effect and may return follow-up actions, queued in the same
transaction that marks it done: "a report was received" only decides (from
the state, when it runs, not when the event was acknowledged) and queues
"acknowledge" and "supplement" or "report-immediate", so each is retried on
its own. A FeishuError is retried with backoff; anything else fails the
action and is logged, and the queue goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime
from functools import partial
from typing import ClassVar
from zoneinfo import ZoneInfo

from feishu_mailbot.compose.daily_report import Reporter
from feishu_mailbot.config.settings import ReportSettings, Settings
from feishu_mailbot.core import daily_report
from feishu_mailbot.core.model import ActionRequest
from feishu_mailbot.core.retry import UNEXPECTED_ATTEMPTS, RetryPolicy, backoff
from feishu_mailbot.feishu.errors import FeishuError
from feishu_mailbot.feishu.rest import FeishuApi
from feishu_mailbot.state import DatabaseError, State, Tx, actions, digests, messages
from feishu_mailbot.state.actions import Action
from feishu_mailbot.workers.rounds import Worker

log = logging.getLogger(__name__)

# Woken by the daemon and the outbox when they queue actions; this is the fallback.
POLL_SECONDS = 5.0
FollowUps = Sequence[ActionRequest]


class ActionFailed(Exception):
    """An action that cannot succeed however often it is tried."""


class Actions(Worker):
    name = "actions"

    def __init__(
        self,
        settings: Settings,
        state: State,
        api: FeishuApi,
        reporter: Reporter,
        mail_queued: Callable[[], None],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(state, wall_clock)
        self.settings = settings
        self.policy = RetryPolicy.from_settings(settings)
        self._api = api
        self._reporter = reporter
        # The outbox polls the state anyway; this only saves it the wait.
        self._mail_queued = mail_queued

    def reconfigure(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = RetryPolicy.from_settings(settings)

    async def _round(self) -> float | None:
        """Do what is due; how long to wait before the next round (None: go on at once)."""
        due = self._state.read(partial(actions.due, now=self._now()))
        for action in due:
            if self._bell.stopping:
                return None
            await self._perform(action)
            self._bell.progress()
        if due:
            return None
        next_at = self._state.read(actions.next_due_at)
        timeout = POLL_SECONDS if next_at is None else max(0.0, next_at - self._now())
        return min(timeout, POLL_SECONDS)

    def work_due(self) -> bool:
        next_at = self._state.read(actions.next_due_at)
        return next_at is not None and next_at <= self._now()

    async def _perform(self, action: Action) -> None:
        """One action; whatever goes wrong with it is recorded on it and stops nothing else."""
        fields = {"MESSAGE_ID": action.message_id}
        handler = self.HANDLERS.get(action.kind)
        try:
            if handler is None:
                raise ActionFailed(f"unknown action kind {action.kind!r}")
            follow_ups = await handler(self, action)
        except DatabaseError:
            raise  # not this action's fault: the round stops and is tried again
        except FeishuError as e:
            await self._retry(action, str(e), give_up=False, fields=fields)
        except ActionFailed as e:
            log.error("%s failed: %s", action.kind, e, extra=fields)
            await self._finish(action, str(e))
        except Exception as e:  # a bug or a value some library refuses: this action only
            log.debug("%s raised", action.kind, exc_info=True, extra=fields)
            exhausted = action.attempts + 1 >= UNEXPECTED_ATTEMPTS
            await self._retry(action, f"{type(e).__name__}: {e}", give_up=exhausted, fields=fields)
        else:
            await self._finish(action, None, follow_ups)

    async def _retry(
        self, action: Action, error: str, give_up: bool, fields: dict[str, str]
    ) -> None:
        age = self._now() - action.created_at
        if give_up or self.policy.expired(age, action.attempts + 1):
            await self._finish(action, error)
            log.error(
                "%s failed for good after %d attempts: %s",
                action.kind,
                action.attempts + 1,
                error,
                extra=fields,
            )
            return
        delay = backoff(action.attempts, self.policy)
        retry_at = self._now() + delay
        await self._state.write(
            partial(actions.retry, action_id=action.id, next_attempt_at=retry_at, error=error)
        )
        log.warning("%s failed, retrying in %.1fs: %s", action.kind, delay, error, extra=fields)

    async def _finish(self, action: Action, error: str | None, follow_ups: FollowUps = ()) -> None:
        now = self._now()

        def finish(tx: Tx) -> None:
            if actions.finish(tx, action.id, error):  # follow-ups once, whoever finished it
                for request in follow_ups:
                    actions.add(tx, request, action.message_id, now)

        await self._state.write(finish)

    def _report_settings(self) -> ReportSettings:
        rs = self.settings.daily_report
        if rs is None:
            raise ActionFailed("daily_report is no longer configured")
        return rs

    # -- the handlers ------------------------------------------------------------------

    async def _report_received(self, action: Action) -> FollowUps:
        """A report was stored: what it needs now that the state can be asked."""
        rs = self._report_settings()
        day = str(action.payload["day"])
        digested = bool(self._state.read(partial(digests.for_day, chat_id=rs.chat, day=day)))
        return [ActionRequest(kind, {"day": day}) for kind in daily_report.follow_ups(rs, digested)]

    async def _acknowledge(self, action: Action) -> FollowUps:
        rs = self._report_settings()
        if rs.acknowledge == "reaction":
            await self._api.react(action.message_id, rs.reaction)
        elif rs.acknowledge == "reply":
            day = action.payload["day"]
            await self._api.reply_text(action.message_id, f"已收到 {day} 的日报 ✅")
        return ()

    async def _supplement(self, action: Action) -> FollowUps:
        self._report_settings()
        day = date.fromisoformat(str(action.payload["day"]))
        progress = self._bell.progress
        if (await self._reporter.build(day, kind="supplement", progress=progress)).queued:
            self._mail_queued()
        return ()

    async def _immediate(self, action: Action) -> FollowUps:
        self._report_settings()
        msg = self._state.read(partial(messages.get, message_id=action.message_id))
        if msg is not None and await self._reporter.immediate(msg):
            self._mail_queued()
        return ()

    async def _digest_request(self, action: Action) -> FollowUps:
        rs = self._report_settings()
        p = action.payload
        force = bool(p.get("force"))
        if not daily_report.may_trigger(str(p["sender"]), rs, force):
            if force and not (rs.trigger_users or rs.roster):
                text = (
                    "抱歉，重发日报需要管理员先在配置中设置 daily_report.trigger_users 或 roster。"
                )
            else:
                text = "抱歉，你没有发送日报汇总的权限。"
            await self._api.reply_text(action.message_id, text)
            return ()
        if p.get("error"):
            await self._api.reply_text(action.message_id, f"无法发送日报汇总：{p['error']}")
            return ()
        day = date.fromisoformat(str(p["day"]))
        today = daily_report.current_day(self._now(), rs)
        kept = daily_report.kept_days(self.settings.retention.messages)
        if too_old := daily_report.window_refusal(day, today, kept):
            await self._api.reply_text(action.message_id, f"无法发送日报汇总：{too_old}")
            return ()
        if force and (refusal := self._resend_refusal(rs, day)):
            log.info(
                "digest resend for %s refused: %s",
                day.isoformat(),
                refusal,
                extra={"MESSAGE_ID": action.message_id, "CHAT_ID": rs.chat},
            )
            await self._api.reply_text(action.message_id, refusal)
            return ()
        outcome = await self._reporter.build(day, force=force, progress=self._bell.progress)
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
        return ()

    def _resend_refusal(self, rs: ReportSettings, day: date) -> str | None:
        records = self._state.read(partial(digests.for_day, chat_id=rs.chat, day=day.isoformat()))
        sent_at = [r.queued_at for r in records if r.kind == "digest"]
        return daily_report.resend_refusal(sent_at, self._now())

    async def _confirm(self, action: Action) -> FollowUps:
        """A forward whose rule says `confirm: true` was sent: say so in the chat, once.

        A courtesy, not worth days of retries (a missing scope would repeat for
        every forward): one attempt, and a warning if it fails.
        """
        to = ", ".join(str(a) for a in action.payload["to"])
        try:
            await self._api.reply_text(action.message_id, f"已转发到邮箱: {to}")
        except FeishuError as e:
            log.warning(
                "in-chat confirmation failed: %s", e, extra={"MESSAGE_ID": action.message_id}
            )
        return ()

    HANDLERS: ClassVar[dict[str, Callable[[Actions, Action], Awaitable[FollowUps]]]] = {
        "report": _report_received,
        "acknowledge": _acknowledge,
        "supplement": _supplement,
        "report-immediate": _immediate,
        "digest-request": _digest_request,
        "confirm": _confirm,
    }
