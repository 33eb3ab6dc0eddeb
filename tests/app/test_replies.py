"""Replies by mail into the Feishu thread, end to end: the daemon reads a real Dovecot
(tests/dovecot.py), posts to the emulator, and its mail went through aiosmtpd."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from feishu_mailbot.mail.imap import mailbox_name
from tests import bounces, certs
from tests.dovecot import PASSWORD, PROCESSED, USER, Dovecot
from tests.feishu_emulator import FeishuEmulator
from tests.harness import Bot, NotifySocket, wait_until
from tests.smtp_server import SmtpServer

MakeBot = Callable[..., Bot]
ONCALL = "- name: oncall\n  keywords: [故障]\n  to: [oncall@example.com, lisi@example.com]\n"
# A From header broken off after "a@" by a stray byte: the stdlib's address parser
# (email._header_value_parser.get_domain) raises IndexError on it.
HOSTILE = (
    b"From: a@\r\x89To: c@d\r\nMessage-ID: <x@y>\r\nIn-Reply-To: <k@z>\r\n"
    b'Content-Type: multipart/mixed; boundary="q"\r\n\r\n--q\r\n'
    b"Content-Type: text/html; charset=utf-8\r\n\r\n<p>hi</p>\r\n--q--\r\n"
)


def inbound(server: Dovecot, extra: str = "") -> str:
    return (
        "inbound:\n"
        "  imap:\n"
        "    host: 127.0.0.1\n"
        f"    port: {server.tls_port}\n"
        "    security: tls\n"
        f"    username: {USER}\n"
        f'    password: "{PASSWORD}"\n'
        f"  ca_file: {certs.ca_file()}\n"
        f"{extra}"
    )


def reading(make_bot: MakeBot, server: Dovecot, extra: str = "") -> Bot:
    """A daemon with `inbound:` (and `extra` in it), once it reads the mailbox."""
    bot = make_bot(rules=ONCALL, extra=inbound(server, extra)).start()
    bot.wait_log("inbound: reading INBOX")
    return bot


def reply(to: EmailMessage, sender: str, body: str, n: int, **headers: str) -> bytes:
    """A reply to `to` as a mail client writes one (Thunderbird's quote)."""
    lines = [
        f"From: {sender}",
        "To: Feishu Mailbot <bot@example.com>",
        f"Subject: Re: {to['Subject']}",
        f"Message-ID: <reply-{n}-{time.time_ns()}@mail.example.com>",
        f"In-Reply-To: {to['Message-ID']}",
        f"References: {to['Message-ID']}",
        *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        body,
        "",
        "On 12/1/26 10:02, Feishu Mailbot wrote:",
        "> 线上故障：支付接口 500",
        "",
    ]
    return "\r\n".join(lines).encode()


def replies(emulator: FeishuEmulator, to: str) -> list[dict[str, Any]]:
    return [m for m in emulator.sent_messages if m["kind"] == "reply" and m["reply_to"] == to]


def forwarded(emulator: FeishuEmulator, smtp: SmtpServer, text: str) -> tuple[str, EmailMessage]:
    """A message pushed, and the one mail it was forwarded in."""
    event = emulator.push_text("oc_team", "ou_alice", text)
    assert emulator.wait_ack(event).code == 200
    wait_until(lambda: any(text in str(m["Subject"]) for m in smtp.messages), 10, text)
    (mail,) = [m for m in smtp.messages if text in str(m["Subject"])]
    return str(event["event"]["message"]["message_id"]), mail


def test_a_reply_by_mail_is_posted_once_into_the_thread_of_its_message(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, dovecot: Dovecot
) -> None:
    dovecot.append(b"From: someone@example.com\r\nSubject: before the bot\r\n\r\nold\r\n")
    bot = make_bot(rules=ONCALL, extra=inbound(dovecot)).start()
    bot.wait_log("inbound: 1 mails already in INBOX are left as they are")
    message_id, mail = forwarded(emulator, smtp, "线上故障：支付接口 500")
    raw = reply(mail, "李四 <LiSi@example.com>", "我来处理，10 分钟内回复。", 1)
    dovecot.append(raw)
    wait_until(lambda: replies(emulator, message_id), 20, "the reply in the thread")
    (posted,) = replies(emulator, message_id)
    assert posted["content"] == {
        "text": "李四 <lisi@example.com> 通过邮件回复：\n我来处理，10 分钟内回复。"
    }
    assert posted["reply_in_thread"] is True and posted["uuid"].startswith("mail-")
    assert [r.mail_from for r in smtp.received] == ["bot@example.com"]  # no VERP unless asked
    bot.wait_log("reply by lisi@example.com posted into the thread")
    assert "\\Seen" in dovecot.flags()[-1] and "\\Seen" not in dovecot.flags()[0]
    # The same mail again (a copy with a new UID) after the IDLE's connection ended.
    dovecot.stop()
    dovecot.start()
    bot.wait_log("the mailbox connection ended", timeout=20)
    dovecot.append(raw)
    wait_until(lambda: "\\Seen" in dovecot.flags()[-1], 20, "the copy, taken")
    assert len(replies(emulator, message_id)) == 1
    # And after a restart.
    assert bot.stop() == 0
    bot.start()
    dovecot.append(raw)
    bot.wait_log("inbound: reading INBOX")
    time.sleep(1.5)
    assert len(replies(emulator, message_id)) == 1
    assert bot.stop() == 0


def test_replies_that_may_not_be_posted_are_logged_and_filed(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, dovecot: Dovecot
) -> None:
    bot = make_bot(rules=ONCALL, extra=inbound(dovecot, f"  processed: {PROCESSED}\n")).start()
    message_id, mail = forwarded(emulator, smtp, "数据库故障")
    dovecot.append(reply(mail, "wangwu@example.com", "不是收件人", 2))
    dovecot.append(reply(mail, "oncall@example.com", "我在休假", 3, Auto_Submitted="auto-replied"))
    stray = reply(mail, "oncall@example.com", "没有引用", 4).replace(
        f"In-Reply-To: {mail['Message-ID']}".encode(), b"X-Note: none"
    )
    dovecot.append(stray.replace(f"References: {mail['Message-ID']}".encode(), b"X-Note: none"))
    dovecot.append(HOSTILE)  # the stdlib's parser raises on it
    dovecot.append(reply(mail, "oncall@example.com", "收到", 5))
    wait_until(lambda: replies(emulator, message_id), 20, "the one reply that may be posted")
    log = bot.log()
    assert "mail from wangwu@example.com not posted: wangwu@example.com is not a recipient" in log
    assert "not posted: an automatic reply (Auto-Submitted: auto-replied)" in log
    assert "not posted: it answers no mail the bot sent" in log
    assert "not posted: it cannot be read: IndexError" in log
    assert [m["content"]["text"] for m in replies(emulator, message_id)] == [
        "oncall@example.com 通过邮件回复：\n收到"
    ]
    moved = mailbox_name(PROCESSED).strip('"')
    wait_until(lambda: len(dovecot.flags(moved)) == 5, 10, "all five filed")
    assert dovecot.flags() == []
    assert bot.stop() == 0


def test_feishu_refusing_a_reply_is_final_and_a_failure_to_answer_is_tried_again(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, dovecot: Dovecot
) -> None:
    bot = make_bot(rules=ONCALL, extra=inbound(dovecot)).start()
    gone, gone_mail = forwarded(emulator, smtp, "缓存故障")
    busy, busy_mail = forwarded(emulator, smtp, "网关故障")
    emulator.fail_reply(gone)  # deleted in Feishu meanwhile
    emulator.fail_reply(busy, 99991400, "request trigger frequency limit", 429)
    dovecot.append(reply(gone_mail, "oncall@example.com", "看一下", 6))
    dovecot.append(reply(busy_mail, "oncall@example.com", "我来", 7))
    bot.wait_log("Feishu refused it", timeout=20)
    bot.wait_log("inbound paused", timeout=20)
    assert "230110" in bot.log()
    emulator.fail_reply(busy, None)
    wait_until(lambda: replies(emulator, busy), 30, "the reply, once Feishu answers")
    time.sleep(1.0)
    assert [m["content"]["text"] for m in replies(emulator, busy)] == [
        "oncall@example.com 通过邮件回复：\n我来"
    ]
    assert replies(emulator, gone) == []
    assert bot.log().count("Feishu refused it") == 1  # not tried again
    assert bot.stop() == 0


def test_a_mailbox_that_is_down_pauses_only_the_replies(
    make_bot: MakeBot,
    emulator: FeishuEmulator,
    smtp: SmtpServer,
    dovecot: Dovecot,
    tmp_path: Path,
) -> None:
    notify = NotifySocket(tmp_path)
    try:
        bot = make_bot(rules=ONCALL, extra=inbound(dovecot))
        bot.start(env=notify.env(2_000_000))
        notify.wait("READY=1")
        bot.wait_log("inbound: reading INBOX")
        message_id, mail = forwarded(emulator, smtp, "存储故障")
        dovecot.stop()
        down_at = time.monotonic()
        bot.wait_log("inbound paused", timeout=20)
        event = emulator.push_text("oc_team", "ou_alice", "第二个故障")  # chat → mail goes on
        assert emulator.wait_ack(event).code == 200
        smtp.wait_for(2)
        wait_until(
            lambda: any("inbound mail paused" in s for s in notify.statuses()), 15, "STATUS="
        )
        assert time.monotonic() - notify.times("WATCHDOG=1")[-1] < 2.5  # still fed
        dovecot.deliver(reply(mail, "oncall@example.com", "恢复了吗", 8))
        wait_until(lambda: "inbound mail paused" in bot.cli("status").stdout, 15, "status")
        time.sleep(max(0.0, down_at + 20 - time.monotonic()))  # down for 20 s
        assert time.monotonic() - notify.times("WATCHDOG=1")[-1] < 2.5  # fed all along
        assert bot.proc is not None and bot.proc.poll() is None
        dovecot.start()
        wait_until(lambda: replies(emulator, message_id), 40, "the mail that came meanwhile")
        bot.wait_log("inbound resumed")
        time.sleep(1.0)
        assert len(replies(emulator, message_id)) == 1
        assert bot.stop() == 0
    finally:
        notify.close()


def test_a_delivery_report_marks_the_recipient_it_names_bounced_once(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, dovecot: Dovecot
) -> None:
    bot = reading(make_bot, dovecot)
    message_id, mail = forwarded(emulator, smtp, "队列故障")
    ours = str(mail["Message-ID"])
    dovecot.append(bounces.postfix(ours, "lisi@example.com", action="delayed", status="4.4.1"))
    dovecot.append(bounces.postfix(ours, "lisi@example.com"))
    dovecot.append(bounces.postfix(ours, "lisi@example.com"))  # a server that repeats it
    dovecot.append(bounces.qmail("<unknown@elsewhere.example>", "oncall@example.com"))
    bot.wait_log("a delivery report about no mail the bot sent", timeout=20)
    log = bot.log()
    assert log.count("mail bounced: lisi@example.com: 5.1.1 550 5.1.1") == 1
    assert "a delivery report about a mail of ours: no recipient failed" in log  # the delay
    assert "mail bounced: oncall" not in log and replies(emulator, message_id) == []
    failed = bot.cli("queue", "--failed")
    assert failed.returncode == 0, failed.stderr
    head, subject, said = failed.stdout.splitlines()[1:4]
    assert "bounced" in head and "lisi@example.com, oncall@example.com" in head
    assert "队列故障" in subject
    assert "bounced" in said and "lisi@example.com: 5.1.1 550 5.1.1 <lisi@example.com>" in said
    assert len(failed.stdout.splitlines()) == 4  # one mail, one bounce
    status = bot.cli("status")
    assert "bounced recipients in 7 days: 1 (feishu-mailbot queue --failed)" in status.stdout
    assert "mail in: 0 replies posted, 0 refused, 0 failed, 4 delivery reports," in status.stdout
    assert 'feishu_mailbot_mail_in{outcome="report"} 4' in bot.cli("status", "--prometheus").stdout
    (entry,) = json.loads(bot.cli("queue", "--failed", "--json").stdout)
    assert entry["state"] == "sent" and entry["bounced"][0]["recipient"] == "lisi@example.com"
    assert bot.stop() == 0


def unsubscribe_request(mail: EmailMessage, sender: str, n: int, subject: str = "") -> bytes:
    """What a mail client sends for the mail's List-Unsubscribe mailto: URI."""
    uri = str(mail["List-Unsubscribe"]).strip("<>")
    to, _, query = uri.removeprefix("mailto:").partition("?subject=")
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject or urllib.parse.unquote(query)}",
        f"Message-ID: <unsub-{n}-{time.time_ns()}@mail.example.com>",
        "Content-Type: text/plain; charset=utf-8",
        "",
        "This message was automatically generated by Gmail.",
        "",
    ]
    return "\r\n".join(lines).encode()


def test_an_unsubscribe_mail_stops_that_rules_mail_to_that_address_until_restored(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, dovecot: Dovecot
) -> None:
    bot = reading(make_bot, dovecot)
    _, mail = forwarded(emulator, smtp, "磁盘故障")
    assert str(mail["List-Unsubscribe"]).startswith(
        "<mailto:bot@example.com?subject=unsubscribe%20"
    )
    assert str(mail["List-Id"]).startswith("oncall <r") and str(mail["List-Id"]).endswith(
        ".example.com>"
    )
    dovecot.append(unsubscribe_request(mail, "wangwu@example.com", 1))  # not a recipient
    dovecot.append(unsubscribe_request(mail, "lisi@example.com", 2, "unsubscribe 0123456789ab"))
    dovecot.append(unsubscribe_request(mail, "LiSi@example.com", 3))
    dovecot.append(unsubscribe_request(mail, "lisi@example.com", 4))  # again: no second notice
    bot.wait_log("lisi@example.com had unsubscribed from oncall already", timeout=20)
    log = bot.log()
    assert (
        "from wangwu@example.com not taken: wangwu@example.com is not a recipient of oncall" in log
    )
    assert "not taken: it names no rule of this bot" in log
    assert log.count("lisi@example.com unsubscribed from oncall") == 1
    wait_until(lambda: any("已退订" in str(m["Subject"]) for m in smtp.messages), 10, "notice")
    notices = [m for m in smtp.messages if "已退订" in str(m["Subject"])]
    assert [str(m["To"]) for m in notices] == ["lisi@example.com"]
    assert "将不再收到规则「oncall」" in notices[0].get_body(("plain",)).get_content()
    _, after = forwarded(emulator, smtp, "网络故障")
    assert str(after["To"]) == "oncall@example.com"
    listed = bot.cli("subscriptions")
    assert (
        listed.returncode == 0 and "lisi@example.com" in listed.stdout and "oncall" in listed.stdout
    )
    restored = bot.cli("subscriptions", "--restore", "lisi@example.com")
    assert restored.returncode == 0, restored.stderr
    assert "lisi@example.com gets the mail of oncall again" in restored.stdout
    again = bot.cli("subscriptions", "--restore", "lisi@example.com")
    assert again.returncode == 65 and "had not left any rule" in again.stderr
    time.sleep(6)  # the daemon reads who left with its status, every 5 s
    _, back = forwarded(emulator, smtp, "电源故障")
    assert str(back["To"]) == "lisi@example.com, oncall@example.com"
    assert bot.cli("subscriptions").stdout.strip() == "nobody has unsubscribed"
    assert bot.stop() == 0


def addressed(raw: bytes, to: str, *, keep_references: bool = True) -> bytes:
    """A reply as sent to `to` (its Reply-To), by a client that keeps or drops the
    In-Reply-To/References."""
    lines = raw.decode().split("\r\n")
    lines = [f"To: {to}" if line.startswith("To:") else line for line in lines]
    if not keep_references:
        lines = [x for x in lines if not x.startswith(("In-Reply-To:", "References:"))]
    return "\r\n".join(lines).encode()


def test_a_reply_address_with_a_token_names_the_mail_and_its_bounces(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, dovecot: Dovecot
) -> None:
    tokens = '  reply_address: "bot+{token}@example.com"\n  verp: true\n'
    bot = reading(make_bot, dovecot, tokens)
    first, a = forwarded(emulator, smtp, "支付故障")
    second, b = forwarded(emulator, smtp, "登录故障")
    reply_a, reply_b = str(a["Reply-To"]), str(b["Reply-To"])
    assert reply_a.startswith("bot+") and reply_a.endswith("@example.com") and reply_a != reply_b
    (envelope,) = [r.mail_from for r in smtp.received if r.message["Message-ID"] == a["Message-ID"]]
    assert envelope == reply_a.replace("bot+", "bot+b")  # VERP: reports come back to it
    # A client that drops In-Reply-To/References: the token alone names the mail.
    dovecot.append(
        addressed(reply(a, "lisi@example.com", "我看看", 1), reply_a, keep_references=False)
    )
    # A reply to mail a, sent to b's address: a token taken from another mail.
    dovecot.append(addressed(reply(a, "lisi@example.com", "串了", 2), reply_b))
    forged = reply_a[: -len("@example.com") - 1] + ("0" if reply_a[-13] != "0" else "1")
    dovecot.append(addressed(reply(a, "lisi@example.com", "伪造", 3), forged + "@example.com"))
    # A report without the returned headers: its envelope sender's token names the mail.
    report = bounces.qmail("<not-ours@elsewhere.example>", "oncall@example.com")
    dovecot.append(report.replace(b"To: bot@example.com", f"To: {envelope}".encode()))
    bot.wait_log("mail bounced: oncall@example.com", timeout=20)
    wait_until(lambda: replies(emulator, first), 10, "the reply without references")
    log = bot.log()
    assert "not posted: its reply address was made for another mail" in log
    assert "not posted: its reply address carries a token the bot did not make" in log
    assert [m["content"]["text"] for m in replies(emulator, first)] == [
        "lisi@example.com 通过邮件回复：\n我看看"
    ]
    assert replies(emulator, second) == []
    assert bot.stop() == 0


PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg=="
)


def shaped(to: EmailMessage, n: int, shape: str) -> bytes:
    """A reply in the shape one client writes it, the new text "收到，马上看" in each."""
    subject = base64.b64encode(f"回复：{to['Subject']}".encode()).decode()
    head = [
        "From: 李四 <lisi@example.com>",
        "To: bot@example.com",
        f"Subject: =?utf-8?b?{subject}?=",
        f"Message-ID: <shape-{n}-{time.time_ns()}@mail.example.com>",
        f"In-Reply-To: {to['Message-ID']}",
        "MIME-Version: 1.0",
    ]
    if shape == "foxmail":  # GBK text labelled gb2312, Foxmail's divider and header block
        body = (
            "收到，马上看\r\n\r\n------------------ 原始邮件 ------------------\r\n"
            '发件人: "值班机器人"<bot@example.com>;\r\n'
            "发送时间: 2026年12月1日(星期一) 上午10:02\r\n"
            f"主题: {to['Subject']}\r\n\r\n原文\r\n"
        )
        part = [
            'Content-Type: text/plain; charset="gb2312"',
            "Content-Transfer-Encoding: base64",
            "",
            base64.encodebytes(body.encode("gbk")).decode(),
        ]
    elif shape == "outlook-html":  # HTML only, Outlook's header block in a div
        html = (
            '<html><body><div class="WordSection1"><p class="MsoNormal">收到，马上看<o:p></o:p></p>'
            '<p class="MsoNormal">&nbsp;</p><div style="border-top:solid #E1E1E1 1.0pt">'
            "<p><b>发件人:</b> 值班机器人 &lt;bot@example.com&gt;<br>"
            "<b>发送时间:</b> 2026年12月1日 "
            "10:02<br><b>主题:</b> 原文</p></div><p>原文</p></div></body></html>"
        )
        part = ["Content-Type: text/html; charset=utf-8", "", html]
    else:  # Apple Mail / QQ: "在 … 写道：" and a > quote
        body = (
            "收到，马上看\r\n\r\n发自我的iPhone\r\n\r\n"
            "在 2026年12月1日，10:02，值班机器人 <bot@example.com> 写道：\r\n\r\n> 原文\r\n"
        )
        part = ["Content-Type: text/plain; charset=utf-8", "", body]
    return "\r\n".join([*head, *part]).encode()


def test_replies_from_each_client_post_only_their_new_text(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, dovecot: Dovecot
) -> None:
    bot = reading(make_bot, dovecot)
    threads = {}
    for n, shape in enumerate(("foxmail", "outlook-html", "写道")):
        message_id, mail = forwarded(emulator, smtp, f"故障 {shape}")
        threads[shape] = message_id
        dovecot.append(shaped(mail, n, shape))
    for shape, message_id in threads.items():
        wait_until(lambda m=message_id: replies(emulator, m), 20, f"the {shape} reply")
        assert [r["content"]["text"] for r in replies(emulator, message_id)] == [
            "李四 <lisi@example.com> 通过邮件回复：\n收到，马上看"
        ], shape
    assert bot.stop() == 0


def test_an_image_in_a_reply_is_uploaded_and_posted_and_other_files_are_named(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, dovecot: Dovecot
) -> None:
    bot = reading(make_bot, dovecot)
    message_id, mail = forwarded(emulator, smtp, "页面故障")
    answer = EmailMessage()
    answer["From"] = "oncall@example.com"
    answer["To"] = "bot@example.com"
    answer["Subject"] = f"Re: {mail['Subject']}"
    answer["Message-ID"] = f"<img-{time.time_ns()}@mail.example.com>"
    answer["In-Reply-To"] = str(mail["Message-ID"])
    answer.set_content("截图如下，日志见附件。\n\nOn 12/1/26 10:02, bot wrote:\n> 页面故障\n")
    answer.add_attachment(PNG, maintype="image", subtype="png", filename="截图.png")
    answer.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="日志.pdf")
    dovecot.append(answer.as_bytes())
    wait_until(lambda: replies(emulator, message_id), 20, "the reply with its image")
    ((upload,),) = [emulator.uploaded_images]
    assert (upload["name"], upload["content_type"], upload["data"]) == (
        "截图.png",
        "image/png",
        PNG,
    )
    (posted,) = replies(emulator, message_id)
    assert posted["msg_type"] == "post" and posted["reply_in_thread"] is True
    assert posted["content"] == {
        "zh_cn": {
            "title": "",
            "content": [
                [{"tag": "text", "text": "oncall@example.com 通过邮件回复："}],
                [{"tag": "text", "text": "截图如下，日志见附件。"}],
                [{"tag": "text", "text": "（附件未上传：日志.pdf）"}],
                [{"tag": "img", "image_key": upload["image_key"]}],
            ],
        }
    }
    assert bot.stop() == 0


def test_with_a_trusted_server_only_its_pass_lets_a_reply_through(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, dovecot: Dovecot
) -> None:
    bot = make_bot(
        rules=ONCALL, extra=inbound(dovecot, "  trusted_authserv_id: mx.example.com\n")
    ).start()
    bot.wait_log("inbound: reading INBOX")
    message_id, mail = forwarded(emulator, smtp, "证书故障")
    verdicts = {
        "没有结论": "",
        "没通过": "mx.example.com; dmarc=fail header.from=example.com",
        "别人写的": "evil.example.net; dmarc=pass header.from=example.com",
        "通过了": "mx.example.com; dkim=pass header.d=example.com; dmarc=pass",
    }
    for n, (text, verdict) in enumerate(verdicts.items()):
        extra = {"Authentication_Results": verdict} if verdict else {}
        dovecot.append(reply(mail, "lisi@example.com", text, 30 + n, **extra))
    wait_until(lambda: replies(emulator, message_id), 20, "the reply with the server's pass")
    log = bot.log()
    assert log.count("not posted: no Authentication-Results of mx.example.com") == 2
    assert (
        "not posted: Authentication-Results of mx.example.com do not vouch for example.com:"
        " dmarc=fail" in log
    )
    assert [r["content"]["text"] for r in replies(emulator, message_id)] == [
        "lisi@example.com 通过邮件回复：\n通过了"
    ]
    assert bot.stop() == 0


def test_doctor_walks_to_the_bots_mailbox_and_names_a_refused_login(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, dovecot: Dovecot
) -> None:
    bot = make_bot(rules=ONCALL, extra=inbound(dovecot, f"  processed: {PROCESSED}\n"))
    out = bot.cli("doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{USER} on 127.0.0.1, INBOX: IDLE" in out.stdout
    assert (
        "reply scopes       ok" in out.stdout
        and "granted: im:message:send_as_bot, im:r" in out.stdout
    )
    assert "every hop works, to Feishu, the relay and the bot's mailbox" in out.stdout
    emulator.missing_scopes |= {"im:message:send_as_bot", "im:message"}
    out = bot.cli("doctor")
    assert (
        out.returncode == 69 and "not granted: im:message:send_as_bot or im:message" in out.stdout
    )
    assert "Feishu path broken at reply scopes" in out.stdout
    emulator.missing_scopes.clear()
    text = bot.config.read_text("utf-8").replace(PASSWORD, "wr0ng-imap-pass")
    bot.config.write_text(text.replace(f"processed: {PROCESSED}", "processed: 没有"), "utf-8")
    out = bot.cli("doctor")
    assert out.returncode == 69, out.stdout + out.stderr
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("IMAP")]
    assert "mailbox" in line and "FAILED" in line and "LOGIN failed" in line
    assert "授权码" in out.stdout and "wr0ng-imap-pass" not in out.stdout
    assert "IMAP path broken at mailbox" in out.stdout
    missing = bot.config.read_text("utf-8").replace("wr0ng-imap-pass", PASSWORD)
    bot.config.write_text(missing, "utf-8")
    out = bot.cli("doctor")
    assert out.returncode == 69 and "there is no folder '没有'" in out.stdout, out.stdout
