"""Replies in a Feishu thread thread in the mailbox too: In-Reply-To, References, Re:."""

from __future__ import annotations

from collections.abc import Callable

from tests.feishu_emulator import FeishuEmulator
from tests.harness import Bot
from tests.smtp_server import SmtpServer

MakeBot = Callable[..., Bot]
ONE_RULE = "- name: oncall\n  keywords: [故障]\n  to: [oncall@example.com]\n"


def test_three_replies_thread_under_the_root_mail(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = make_bot(rules=ONE_RULE).start()
    root = emulator.push_text("oc_team", "ou_alice", "故障：数据库连接超时")
    [root_mail] = smtp.wait_for(1, timeout=10)
    root_id = root["event"]["message"]["message_id"]
    parent, mails = root_id, [root_mail]
    for n, (who, text) in enumerate(
        [
            ("ou_bob", "故障已定位：连接池满了"),
            ("ou_alice", "故障修复了吗？"),
            ("ou_bob", "故障已修复"),
        ]
    ):
        reply = emulator.push_message(
            "oc_team", who, "text", {"text": text}, root_id=root_id, parent_id=parent
        )
        mails = smtp.wait_for(n + 2, timeout=10)
        parent = reply["event"]["message"]["message_id"]
    ids = [str(m["Message-ID"]) for m in mails]
    assert len(set(ids)) == 4
    for n, reply_mail in enumerate(mails[1:], 1):
        assert str(reply_mail["Subject"]) == "Re: " + str(root_mail["Subject"])
        assert str(reply_mail["In-Reply-To"]) == ids[n - 1]  # the message it replies to
        references = str(reply_mail["References"]).split()
        assert references[0] == ids[0] and references[-1] == ids[n - 1]
    body = mails[3].get_body(("plain",))
    html = mails[3].get_body(("html",))
    assert body is not None and html is not None
    assert "> 张三: 故障修复了吗？" in body.get_content()  # quotes what it answers
    assert "<blockquote" in html.get_content() and "故障修复了吗？" in html.get_content()
    assert root_mail["In-Reply-To"] is None
    assert bot.stop() == 0


def test_a_reply_whose_root_was_not_mailed_stands_alone(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = make_bot(rules=ONE_RULE).start()
    root = emulator.push_text("oc_team", "ou_alice", "今天午饭吃什么")  # no rule: no mail
    emulator.wait_ack(root)
    root_id = root["event"]["message"]["message_id"]
    emulator.push_message(
        "oc_team", "ou_bob", "text", {"text": "故障：食堂停电"}, root_id=root_id, parent_id=root_id
    )
    [mail] = smtp.wait_for(1, timeout=10)
    assert mail["In-Reply-To"] is None and mail["References"] is None
    assert not str(mail["Subject"]).startswith("Re:")
    body = mail.get_body(("plain",))
    assert body is not None and "> 张三: 今天午饭吃什么" in body.get_content()
    assert bot.stop() == 0
