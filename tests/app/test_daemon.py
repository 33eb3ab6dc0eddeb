"""The daemon end to end: real lark_oapi client ↔ emulator, real SMTP ↔ aiosmtpd."""

from __future__ import annotations

import email.policy
import re
import signal
import sqlite3
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

from tests.feishu_emulator import FeishuEmulator
from tests.harness import Bot, wait_until
from tests.smtp_server import SmtpServer

MakeBot = Callable[..., Bot]


def db_rows(bot: Bot, table: str) -> int:
    db = sqlite3.connect(bot.config.parent / "state" / "feishu-mailbot.db")
    try:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        db.close()


def bodies(msg: EmailMessage) -> tuple[str, str]:
    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


def test_keyword_message_becomes_a_well_formed_email(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = make_bot().start()
    event = emulator.push_text("oc_team", "ou_alice", "线上故障：支付接口 500 <b>&</b>")
    ack = emulator.wait_ack(event)
    assert ack.code == 200
    mails = smtp.wait_for(2)
    time.sleep(0.3)
    # Two rules match; oncall@ is in both but gets one mail, archive@ gets its own.
    assert len(smtp.messages) == 2
    assert {str(m["To"]) for m in mails} == {"oncall@example.com", "archive@example.com"}
    for m in mails:
        reparsed = email.message_from_bytes(m.as_bytes(), policy=email.policy.default)
        assert str(reparsed["From"]) == "Feishu Mailbot <bot@example.com>"
        assert str(reparsed["Subject"]).startswith("[研发群] 张三: 线上故障：支付接口 500")
        text, html = bodies(reparsed)
        assert "线上故障：支付接口 500 <b>&</b>" in text
        assert "&lt;b&gt;&amp;&lt;/b&gt;" in html and "<b>&</b>" not in html
        assert reparsed["Message-ID"] and reparsed["Date"]
    recipients = sorted(r for rec in smtp.received for r in rec.rcpt_tos)
    assert recipients == ["archive@example.com", "oncall@example.com"]
    log = bot.log()
    assert "message accepted" in log and "EVENT_ID=" + event["header"]["event_id"] in log


def test_a_sender_name_is_looked_up_once_for_mail_prepared_together(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = make_bot().start()
    emulator.set_slow(0.3)  # the lookup is still out while the other mails are prepared
    events = [emulator.push_text("oc_team", "ou_bob", f"故障 {i}") for i in range(6)]
    assert all(emulator.wait_ack(e).code == 200 for e in events)
    mails = smtp.wait_for(12, timeout=20)
    assert all(str(m["Subject"]).startswith("[研发群] Bob: 故障") for m in mails)
    assert emulator.rest_calls["/open-apis/contact/v3/users/ou_bob"] == 1
    bot.stop()


def test_other_chats_are_ignored_and_not_stored(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = make_bot().start()
    event = emulator.push_text("oc_stranger", "ou_alice", "故障 in another group")
    assert emulator.wait_ack(event).code == 200
    probe = emulator.push_text("oc_team", "ou_alice", "no keyword here")
    emulator.wait_ack(probe)
    assert db_rows(bot, "messages") == 1  # only the allowed chat's message
    assert db_rows(bot, "events") == 1
    time.sleep(0.5)
    assert smtp.messages == []


def test_repushed_and_duplicated_events_send_one_email(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    make_bot(rules="- name: oncall\n  keywords: [urgent]\n  to: [oncall@example.com]\n").start()
    event = emulator.push_text("oc_team", "ou_bob", "URGENT: disk full")
    emulator.wait_ack(event)
    for _ in range(3):
        again = emulator.repush(event)
        emulator.wait_for(lambda again=again: len(emulator.acks) >= 2, timeout=5)
    message_id = event["event"]["message"]["message_id"]
    twin = emulator.push_text("oc_team", "ou_bob", "URGENT: disk full", message_id=message_id)
    emulator.wait_ack(twin)
    emulator.wait_for(lambda: len(emulator.acks) >= 5, timeout=5)
    smtp.wait_for(1)
    time.sleep(1.0)
    assert len(smtp.messages) == 1
    assert all(a.code == 200 for a in emulator.acks)


def test_smtp_outage_across_a_restart_delivers_exactly_once(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = make_bot(rules="- name: oncall\n  keywords: [故障]\n  to: [oncall@example.com]\n")
    bot.start()
    smtp.fail_next(3, code=451)
    event = emulator.push_text("oc_team", "ou_alice", "数据库故障")
    emulator.wait_ack(event)
    bot.wait_log("attempt 2 failed", timeout=15)
    assert bot.stop() == 0
    assert smtp.messages == []
    smtp.refuse = True
    bot.start()
    bot.wait_log("connect failed", timeout=15)
    smtp.refuse = False
    smtp.wait_for(1, timeout=15)
    time.sleep(1.0)
    assert len(smtp.messages) == 1
    assert "数据库故障" in bodies(smtp.messages[0])[0]
    assert bot.stop() == 0


def test_image_and_file_attachments_match_the_resources(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    pdf = b"%PDF-1.4\n" + "报告内容".encode() * 100
    emulator.register_resource("img_v2_abc", png, "image/png")
    emulator.register_resource("file_v2_def", pdf, "application/pdf", "周报.pdf")
    make_bot().start()
    emulator.push_message("oc_team", "ou_alice", "image", {"image_key": "img_v2_abc"})
    emulator.push_message(
        "oc_team", "ou_alice", "file", {"file_key": "file_v2_def", "file_name": "周报.pdf"}
    )
    mails = smtp.wait_for(2, timeout=10)
    found = {}
    for m in mails:  # every part with a file name: attached files and inline images
        for part in m.walk():
            if part.get_filename():
                found[part.get_filename()] = part.get_content()
    assert png in found.values()
    assert found["周报.pdf"] == pdf


def test_a_standalone_image_is_shown_inline(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    """The image a person posted is the mail's content: inline, its cid: resolving."""
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    emulator.register_resource("img_v3_alone", png, "image/png")
    make_bot().start()
    emulator.push_message("oc_team", "ou_alice", "image", {"image_key": "img_v3_alone"})
    [mail] = smtp.wait_for(1, timeout=10)
    _, html = bodies(mail)
    cids = re.findall(r'src="cid:([^"]+)"', html)
    assert cids == ["img_v3_alone@feishu-mailbot"]
    [part] = [p for p in mail.walk() if p["Content-ID"] == f"<{cids[0]}>"]
    assert part.get_content_disposition() == "inline" and part.get_content() == png
    assert "未能下载" not in html and list(mail.iter_attachments()) == []


def test_recall_before_delivery_sends_nothing(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = make_bot(rules="- name: oncall\n  keywords: [故障]\n  to: [oncall@example.com]\n")
    smtp.refuse = True
    bot.start()
    event = emulator.push_text("oc_team", "ou_alice", "故障？发错群了")
    emulator.wait_ack(event)
    recall = emulator.push_recall(event["event"]["message"]["message_id"], "oc_team")
    emulator.wait_ack(recall)
    bot.wait_log("message recalled: 1 pending mail cancelled")
    smtp.refuse = False
    probe = emulator.push_text("oc_team", "ou_alice", "真的故障了")
    emulator.wait_ack(probe)
    [mail] = smtp.wait_for(1, timeout=15)
    time.sleep(0.5)
    assert len(smtp.messages) == 1
    assert "真的故障了" in bodies(mail)[0]


def test_header_injection_from_chat_content_is_impossible(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    emulator.register_chat("oc_evil", "Team\r\nBcc: x@evil.example")
    emulator.register_user("ou_mallory", "M\r\nBcc: y@evil.example")
    make_bot(
        chats="  - id: oc_evil\n",
        rules="- name: all\n  keywords: [hi]\n  to: [oncall@example.com]\n"
        "  subject: '{chat_name} {sender_name} {preview}'\n",
    ).start()
    emulator.push_text("oc_evil", "ou_mallory", "hi\r\nBcc: z@evil.example\r\n\r\nbody")
    [_mail] = smtp.wait_for(1)
    raw = smtp.received[0].raw
    reparsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert reparsed["Bcc"] is None
    assert smtp.received[0].rcpt_tos == ["oncall@example.com"]
    header_block = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in header_block
    assert "Bcc: x@evil.example" in str(reparsed["Subject"])  # shown as text, on one line


def test_sigterm_exits_zero_and_logs_stop(make_bot: MakeBot) -> None:
    bot = make_bot().start()
    assert bot.stop(signal.SIGTERM) == 0
    assert "stopping" in bot.log()


def test_config_file_state_dir_is_created(make_bot: MakeBot, tmp_path: Path) -> None:
    make_bot().start().stop()
    assert (tmp_path / "state" / "feishu-mailbot.db").exists()


def test_confirmation_reply_and_recall_notice_when_the_rule_asks(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    make_bot(
        rules="- name: oncall\n  keywords: [故障]\n  to: [oncall@example.com]\n"
        "  confirm: true\n  notify_recall: true\n"
    ).start()
    event = emulator.push_text("oc_team", "ou_alice", "故障：已转发吗？")
    [original] = smtp.wait_for(1)
    message_id = event["event"]["message"]["message_id"]
    wait_until(
        lambda: any(m["reply_to"] == message_id for m in emulator.sent_messages),
        10,
        "the in-chat confirmation",
    )
    reply = next(m for m in emulator.sent_messages if m["reply_to"] == message_id)
    assert "oncall@example.com" in reply["content"]["text"]
    emulator.push_recall(message_id, "oc_team")
    [_, notice] = smtp.wait_for(2)
    assert str(notice["Subject"]).startswith("[已撤回]")
    assert notice["In-Reply-To"] == original["Message-ID"]
    time.sleep(0.5)
    assert len(smtp.messages) == 2


def test_a_database_from_a_newer_version_stops_with_exit_78(
    make_bot: MakeBot, tmp_path: Path
) -> None:
    bot = make_bot()
    (tmp_path / "state").mkdir()
    db = sqlite3.connect(tmp_path / "state" / "feishu-mailbot.db")
    db.execute("PRAGMA user_version=99")
    db.close()
    bot.start(wait_ready=False)
    assert bot.proc is not None and bot.proc.wait(30) == 78
    assert "database schema 99 is newer than this program understands" in bot.log()
