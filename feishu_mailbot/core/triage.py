"""What an event asks of us, decided from the event, the settings and who unsubscribed.

Pure, and run before the ack: nothing is read from the state here, so the
answer depends only on what Feishu sent and what the operator configured.
Whatever needs the state (has this day's digest gone out yet?) is queued as
an action and decided by the action worker when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from feishu_mailbot.config.settings import ReportSettings, Settings
from feishu_mailbot.core import daily_report, rules
from feishu_mailbot.core.model import (
    ActionRequest,
    Delivery,
    Event,
    Ignored,
    Message,
    Recall,
    stored_form,
)
from feishu_mailbot.core.text import fold


@dataclass(frozen=True)
class Drop:
    """Acknowledge and forget: nothing is stored (logged at debug level)."""

    reason: str


@dataclass(frozen=True)
class Accept:
    message: Message  # as stored: cut to model.BODY_CAP if it was over
    deliveries: tuple[Delivery, ...]
    requests: tuple[ActionRequest, ...]
    slow_rules: tuple[str, ...] = ()  # rules whose regex ran out of time: no match
    batches: tuple[str, ...] = ()  # batched rules that collect the message for a digest
    body: str = ""  # the message's stored JSON, made once here ("": ingest makes it)
    cut_from: int = 0  # bytes its body would have taken, when it was cut


Outcome = Drop | Recall | Accept


def triage(
    event: Event,
    settings: Settings,
    bot_open_id: str,
    left: frozenset[tuple[str, str]] = frozenset(),
) -> Outcome:
    """`left`: the (rule, address) pairs of those who unsubscribed (state/subscriptions.py)."""
    if isinstance(event, Ignored):
        return Drop(event.reason)
    if settings.chat(event.chat_id) is None:
        return Drop("chat not in the allowlist, ignored")
    if isinstance(event, Recall):
        return event
    # The rules see what is stored and mailed: a body over the cap is cut first.
    stored = stored_form(event)
    event = stored.message
    slow: set[str] = set()
    folded = fold(event.text)  # once for both kinds of rule
    deliveries = rules.plan(settings.rules, event, slow, folded, left)
    batches = rules.batched(settings.rules, event, slow, folded)
    requests = report_requests(event, settings.daily_report, bot_open_id)
    return Accept(
        event, deliveries, requests, tuple(sorted(slow)), batches, stored.body, stored.cut_from
    )


def report_requests(
    msg: Message, rs: ReportSettings | None, bot_open_id: str
) -> tuple[ActionRequest, ...]:
    """The daily-report work a message asks for: a digest request, or a report received.

    Without the bot's open_id (not learnt yet) any @-mention counts as one of the bot.
    """
    if rs is None or msg.chat_id != rs.chat:
        return ()
    if bot_open_id:
        mentioned = any(m.open_id == bot_open_id for m in msg.mentions)
    else:
        mentioned = bool(msg.mentions)
    trigger = daily_report.parse_trigger(msg, rs, bot_mentioned=mentioned)
    if trigger is not None:
        day = trigger.date or daily_report.report_day(msg.create_time_ms, rs)
        request = {
            "day": day.isoformat(),
            "force": trigger.force,
            "error": trigger.error,
            "sender": msg.sender_open_id,
        }
        return (ActionRequest("digest-request", request),)
    if not daily_report.is_report(msg, rs) or not daily_report.needs_follow_up(rs):
        return ()
    received = daily_report.report_day(msg.create_time_ms, rs)
    return (ActionRequest("report", {"day": received.isoformat()}),)
