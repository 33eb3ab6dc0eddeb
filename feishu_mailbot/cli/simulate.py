"""`feishu-mailbot simulate`: what a message would trigger, and the mail it would make."""

from __future__ import annotations

import argparse
import time

from feishu_mailbot.config.settings import Settings
from feishu_mailbot.core.exits import Exit


def run_simulate(settings: Settings, args: argparse.Namespace) -> int:
    """What a message would trigger, and its mail, without Feishu, the state or the relay."""
    chat_id, sender, text = args.chat, args.sender, args.text
    import json
    from zoneinfo import ZoneInfo

    from feishu_mailbot.cli import queue
    from feishu_mailbot.core import triage
    from feishu_mailbot.core.text import terminal
    from feishu_mailbot.feishu import events
    from feishu_mailbot.mail import forward, headers

    payload = {
        "schema": "2.0",
        "header": {"event_id": "ev_simulated", "event_type": "im.message.receive_v1"},
        "event": {
            "sender": {"sender_id": {"open_id": sender}, "sender_type": "user"},
            "message": {
                "message_id": "om_simulated",
                "chat_id": chat_id,
                "chat_type": "group",
                "message_type": "text",
                "create_time": str(int(time.time() * 1000)),
                "content": json.dumps({"text": text}, ensure_ascii=False),
            },
        },
    }
    zone = ZoneInfo(settings.timezone)
    outcome = triage.triage(events.parse_event(payload, zone=zone), settings, bot_open_id="")
    if not isinstance(outcome, triage.Accept):
        print(
            f"chat {terminal(chat_id, one_line=True)} is not in the `chats` allowlist: "
            "the message would be ignored and not stored"
        )
        return Exit.OK
    for request in outcome.requests:
        print(f"daily report: {request.kind} would be queued for {request.payload['day']}")
    for name in outcome.batches:
        print(f"rule {name}: collected for its next batch digest")
    if not outcome.deliveries:
        if not outcome.batches:
            print("no rule matches: the message would be stored, and no mail sent")
        return Exit.OK
    chat = settings.chat(chat_id)
    chat_name = (chat.name if chat else None) or chat_id
    for d in outcome.deliveries:
        msg, date = outcome.message, forward.sent_at(outcome.message, ZoneInfo(settings.timezone))
        mail_id = headers.make_message_id("simulated/" + ",".join(d.recipients))
        env = forward.Envelope(
            settings.smtp.sender, d.recipients, chat_name, sender, d.rules, mail_id
        )
        subject = forward.subject_of(msg, d.subject_template, env, date=date)
        email = forward.forward_mail(msg, env, subject=subject, date=date)
        print(f"rules {', '.join(d.rules)} → one mail to {', '.join(d.recipients)}")
        print("-" * 72)
        print(queue.readable(email.render()))
    return Exit.OK
