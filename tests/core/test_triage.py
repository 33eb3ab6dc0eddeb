"""Triage: what an event asks of us, from the event and the settings alone."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from feishu_mailbot.config.settings import (
    Chat,
    FeishuSettings,
    ReportSettings,
    Rule,
    Secret,
    Settings,
    SmtpSettings,
)
from feishu_mailbot.core.model import ActionRequest, Ignored, Message, Recall
from feishu_mailbot.core.triage import Accept, Drop, triage
from feishu_mailbot.feishu.events import parse_event

SETTINGS = Settings(
    path="test.yaml",
    feishu=FeishuSettings("cli_x", Secret("s")),
    chats=(Chat("oc_team"), Chat("oc_reports")),
    smtp=SmtpSettings("127.0.0.1", 25, "none", "bot@example.com"),
    rules=(Rule(name="oncall", to=("oncall@example.com",), keywords=("故障",)),),
    daily_report=ReportSettings(chat="oc_reports", recipients=("boss@example.com",)),
)
BOT = "ou_bot"


def event(chat: str, text: str, mentions: list[dict[str, Any]] | None = None) -> Message:
    payload = {
        "header": {"event_id": "ev_1", "event_type": "im.message.receive_v1"},
        "event": {
            "sender": {"sender_id": {"open_id": "ou_alice"}, "sender_type": "user"},
            "message": {
                "message_id": "om_1",
                "chat_id": chat,
                "message_type": "text",
                "create_time": "1764560000000",  # 2025-12-01 11:33 in Shanghai
                "content": json.dumps({"text": text}),
                "mentions": mentions or [],
            },
        },
    }
    parsed = parse_event(payload)
    assert isinstance(parsed, Message)
    return parsed


def test_other_chats_and_other_events_are_dropped() -> None:
    assert isinstance(triage(event("oc_elsewhere", "故障"), SETTINGS, BOT), Drop)
    assert isinstance(triage(Ignored("ev", "im.chat.updated_v1", "x"), SETTINGS, BOT), Drop)
    recall = Recall("ev", "om_1", "oc_elsewhere", 0)
    assert isinstance(triage(recall, SETTINGS, BOT), Drop)


def test_a_recall_in_an_allowed_chat_is_applied() -> None:
    recall = Recall("ev", "om_1", "oc_team", 0)
    assert triage(recall, SETTINGS, BOT) is recall


def test_accepted_messages_carry_their_mail_and_their_report_work() -> None:
    outcome = triage(event("oc_team", "数据库故障"), SETTINGS, BOT)
    assert isinstance(outcome, Accept)
    assert [d.recipients for d in outcome.deliveries] == [("oncall@example.com",)]
    assert outcome.requests == ()
    report = triage(event("oc_reports", "日报 今天修了两个 bug"), SETTINGS, BOT)
    assert isinstance(report, Accept) and report.deliveries == ()
    # Whether it is a supplement is decided later, from the state, by the action worker.
    assert report.requests == (ActionRequest("report", {"day": "2025-12-01"}),)


def test_a_digest_request_needs_the_bot_mentioned() -> None:
    at_bot = [{"key": "@_user_1", "id": {"open_id": BOT}, "name": "机器人"}]
    at_other = [{"key": "@_user_1", "id": {"open_id": "ou_bob"}, "name": "Bob"}]
    asked = triage(event("oc_reports", "@_user_1 发送日报", at_bot), SETTINGS, BOT)
    assert isinstance(asked, Accept)
    [request] = asked.requests
    assert request.kind == "digest-request"
    assert request.payload == {
        "day": "2025-12-01",
        "force": False,
        "error": "",
        "sender": "ou_alice",
    }
    other = triage(event("oc_reports", "@_user_1 发送日报", at_other), SETTINGS, BOT)
    assert isinstance(other, Accept) and other.requests == ()
    # Before the bot's open_id is known, any mention counts.
    unknown = triage(event("oc_reports", "@_user_1 发送日报", at_other), SETTINGS, "")
    assert isinstance(unknown, Accept) and [r.kind for r in unknown.requests] == ["digest-request"]


def test_no_daily_report_section_no_report_work() -> None:
    plain = replace(SETTINGS, daily_report=None)
    outcome = triage(event("oc_reports", "日报 今天"), plain, BOT)
    assert isinstance(outcome, Accept) and outcome.requests == ()


def test_a_report_that_can_need_nothing_queues_nothing() -> None:
    assert SETTINGS.daily_report is not None
    silent = replace(SETTINGS.daily_report, acknowledge="none", supplements=False)
    outcome = triage(event("oc_reports", "日报 今天"), replace(SETTINGS, daily_report=silent), BOT)
    assert isinstance(outcome, Accept) and outcome.requests == ()
