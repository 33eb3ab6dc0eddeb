"""A reply's new text, and who may post one: core/reply.py.

The quoted shapes are those the clients people use here write (Thunderbird,
Gmail in English and Chinese, Apple Mail and QQ's "写道", Foxmail/QQ's "原始邮件",
Outlook's header block in Chinese and English).
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from feishu_mailbot.core.reply import (
    MAX_NAMED,
    MAX_POST_CHARS,
    POST_BYTES,
    Answered,
    Inbound,
    answered_by,
    authenticated,
    auto_reply,
    named_keys,
    new_text,
    post_content,
    post_text,
    refusal,
    token,
    tokened_address,
    tokens_in,
)

QUOTED = "> [值班群] 线上故障：支付接口 500\n> 请尽快处理\n"

REPLIES = {
    "thunderbird": f"我来处理，10 分钟内回复。\n\nOn 12/1/26 10:02, 值班机器人 wrote:\n{QUOTED}",
    "gmail, its attribution wrapped": (
        "我来处理，10 分钟内回复。\n\nOn Mon, Dec 1, 2026 at 10:02 AM 值班机器人 <\n"
        f"bot@example.com> wrote:\n\n{QUOTED}"
    ),
    "gmail in chinese": (
        "我来处理，10 分钟内回复。\n\n"
        f"值班机器人 <bot@example.com> 于2026年12月1日周一 10:02写道：\n\n{QUOTED}"
    ),
    "apple mail, 写道, sent from a phone": (
        "我来处理，10 分钟内回复。\n\n发自我的iPhone\n\n"
        f"在 2026年12月1日，10:02，值班机器人 <bot@example.com> 写道：\n\n{QUOTED}"
    ),
    "foxmail": (
        "我来处理，10 分钟内回复。\r\n\r\n\r\n"
        "------------------ 原始邮件 ------------------\r\n"
        '发件人: "值班机器人"<bot@example.com>;\r\n'
        "发送时间: 2026年12月1日(星期一) 上午10:02\r\n"
        '收件人: "张三"<zhangsan@example.com>;\r\n'
        "主题: [值班群] 线上故障\r\n\r\n[值班群] 线上故障：支付接口 500\r\n"
    ),
    "outlook, chinese header block": (
        "我来处理，10 分钟内回复。\n\n"
        "发件人: 值班机器人 <bot@example.com>\n发送时间: 2026年12月1日 10:02\n"
        "收件人: 张三 <zhangsan@example.com>\n主题: [值班群] 线上故障\n\n原文"
    ),
    "outlook, original message": (
        "我来处理，10 分钟内回复。\n\n-----Original Message-----\nFrom: bot@example.com\n"
        "Sent: Monday, December 1, 2026 10:02 AM\nSubject: [值班群] 线上故障\n\n原文"
    ),
    "a signature": f"我来处理，10 分钟内回复。\n-- \n张三\nSRE 值班\n{QUOTED}",
    "bottom-posted": f"{QUOTED}\n我来处理，10 分钟内回复。\n",
}


@pytest.mark.parametrize("shape", REPLIES)
def test_only_the_new_text_is_kept(shape: str) -> None:
    assert new_text(REPLIES[shape]) == "我来处理，10 分钟内回复。"


def test_the_new_text_keeps_its_own_lines_and_one_blank_line_between_paragraphs() -> None:
    text = "\n\n第一段\n第二行\n\n\n\n第二段  \nFrom: 说明里的一行，后面没有日期\n\n"
    assert new_text(text) == "第一段\n第二行\n\n第二段\nFrom: 说明里的一行，后面没有日期"


def test_a_reply_that_only_quotes_has_no_new_text() -> None:
    assert new_text(f"On 12/1/26 10:02, bot wrote:\n{QUOTED}") == ""
    assert new_text("\n\n-- \n张三\n") == ""


def mail(**changes: object) -> Inbound:
    base = Inbound(
        message_id="reply-1@mail.example.com",
        from_address="zhangsan@example.com",
        from_name="张三",
        subject="Re: [值班群] 线上故障",
        in_reply_to=("fm-1@bot.example.com",),
        references=("fm-1@bot.example.com",),
        to=("bot@example.com",),
        text="我来处理",
        headers={},
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "subject", "why"),
    [
        ({"auto-submitted": ("auto-replied",)}, "Re: x", "Auto-Submitted: auto-replied"),
        ({"auto-submitted": ("auto-generated; owner-email=x@y",)}, "x", "auto-generated"),
        ({"x-autoreply": ("yes",)}, "x", "x-autoreply: yes"),
        ({"precedence": ("bulk",)}, "x", "Precedence: bulk"),
        ({"return-path": ("<>",)}, "x", "empty Return-Path"),
        ({}, "自动回复: [值班群] 线上故障", "out-of-office subject"),
        ({}, "Automatic reply: [值班群] 线上故障", "out-of-office subject"),
        ({}, "Out of Office: back on Monday", "out-of-office subject"),
    ],
)
def test_automatic_answers_are_known(
    headers: dict[str, tuple[str, ...]], subject: str, why: str
) -> None:
    found = auto_reply(mail(headers=headers, subject=subject))
    assert found is not None and why in found


def test_a_person_s_reply_is_not_automatic() -> None:
    person = mail(headers={"auto-submitted": ("no",), "precedence": ("first-class",)})
    assert auto_reply(person) is None


MX = "mx.example.com"


def results(*values: str) -> dict[str, tuple[str, ...]]:
    return {"authentication-results": values}


@pytest.mark.parametrize(
    "value",
    [
        f"{MX}; dmarc=pass (p=reject) header.from=example.com",
        f"{MX} 1; dkim=pass (good signature) header.d=example.com header.i=@example.com",
        f"{MX}; dkim=pass header.d=corp.example.com",  # aligned, relaxed
        f"{MX}; spf=pass smtp.mailfrom=bounces@example.com; dkim=none",
        f"{MX.upper()}; dmarc=pass header.from=example.com",
    ],
)
def test_the_trusted_server_s_verdict_lets_a_reply_through(value: str) -> None:
    assert authenticated(mail(headers=results(value)), MX) is None


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ((), "no Authentication-Results of mx.example.com"),
        (("other.example.net; dmarc=pass header.from=example.com",), "no Authentication-Results"),
        ((f"{MX}; dmarc=fail header.from=example.com",), "dmarc=fail"),
        ((f"{MX}; dkim=pass header.d=evil.example.net",), "dkim=pass"),
        ((f"{MX}; spf=pass smtp.mailfrom=x@evil.example.net",), "spf=pass"),
        ((f"{MX}; none",), "no results"),
        # The topmost is the receiving server's own; one further down may be forged.
        ((f"{MX}; dmarc=fail", f"{MX}; dmarc=pass header.from=example.com"), "dmarc=fail"),
        (("this is not a header ===", f"{MX}; spf=fail smtp.mailfrom=example.com"), "spf=fail"),
    ],
)
def test_anything_short_of_the_trusted_server_s_pass_is_refused(
    values: tuple[str, ...], why: str
) -> None:
    doubt = authenticated(mail(headers=results(*values)), MX)
    assert doubt is not None and why in doubt


KEY = b"k" * 32
ANSWERED = Answered(
    "om_1/zhangsan@example.com", "om_1", ("zhangsan@example.com", "lisi@example.com")
)


HEADER_ID = "0123456789abcdef0123456789abcdef01234567"
OTHER = Answered("om_2/lisi@example.com", "om_2", ("lisi@example.com",))


def test_a_token_names_one_mail_and_only_the_key_makes_it() -> None:
    mine = token(KEY, HEADER_ID)
    assert mine.startswith(HEADER_ID[:24]) and len(mine) == 34
    assert mine != token(b"x" * 32, HEADER_ID)
    assert mine != token(KEY, HEADER_ID[:-1] + "8")  # the same start, another mail
    pattern = "Bot+{token}@Example.com"
    reply_to = tokened_address(pattern, KEY, HEADER_ID)
    verp = tokened_address(pattern, KEY, HEADER_ID, bounce=True)
    assert reply_to == f"Bot+{mine}@Example.com" and verp == f"Bot+b{mine}@Example.com"
    seen = ("someone@example.com", reply_to.lower(), verp, f"bot+{mine}@elsewhere.example")
    assert tokens_in(seen, pattern) == ((mine, False), (mine, True))
    assert tokens_in(("bot+short@example.com", "bot@example.com"), pattern) == ()


def test_the_mail_a_reply_answers_is_its_tokens_or_its_references() -> None:
    assert answered_by(ANSWERED, False, None) == (ANSWERED, None)
    assert answered_by(None, False, ANSWERED) == (ANSWERED, None)
    assert answered_by(ANSWERED, False, ANSWERED) == (ANSWERED, None)
    assert answered_by(OTHER, False, ANSWERED) == (
        None, "its reply address was made for another mail"
    )  # fmt: skip
    assert answered_by(None, True, ANSWERED)[1] == (
        "its reply address carries a token the bot did not make"
    )


def test_a_recipient_s_reply_is_posted() -> None:
    assert refusal(mail(), ANSWERED, None) is None
    passed = mail(headers=results(f"{MX}; dmarc=pass header.from=example.com"))
    assert refusal(passed, ANSWERED, MX) is None


@pytest.mark.parametrize(
    ("inbound", "answered", "why"),
    [
        (mail(), None, "answers no mail"),
        (mail(from_address="wangwu@example.com"), ANSWERED, "not a recipient"),
        (mail(headers={"auto-submitted": ("auto-replied",)}), ANSWERED, "automatic reply"),
        (mail(text=f"On 12/1/26 10:02, bot wrote:\n{QUOTED}"), ANSWERED, "no new text"),
    ],
)
def test_a_reply_that_may_not_be_posted_says_why(
    inbound: Inbound, answered: Answered | None, why: str
) -> None:
    reason = refusal(inbound, answered, None)
    assert reason is not None and why in reason


def test_a_trusted_server_s_missing_verdict_refuses_the_reply() -> None:
    reason = refusal(mail(), ANSWERED, MX)
    assert reason == "no Authentication-Results of mx.example.com"


def test_what_is_posted_cannot_mention_anyone_and_is_cut_to_its_limit() -> None:
    hostile = mail(
        from_name='<at user_id="all">所有人</at>',
        text='紧急 <at user_id="all"></at> < AT user_id="ou_x">x</at>\n'
        + "长" * (MAX_POST_CHARS + 5),
    )
    posted = post_text(hostile)
    assert "<at" not in posted.lower() and "< at" not in posted.lower()
    assert posted.startswith(
        '＜at user_id="all">所有人＜/at> <zhangsan@example.com> 通过邮件回复：'
    )
    assert posted.endswith("长\n（邮件正文过长，已截断）")


def test_a_reply_with_a_huge_line_is_read_at_once() -> None:
    # The attribution pattern's cost grows with the square of a line's length; a line
    # that long is a paragraph and is not tried.
    line = "于1234年" * 100_000
    assert new_text(f"好的\n{line}\n{QUOTED}") == f"好的\n{line}"


def test_a_reply_names_at_most_its_nearest_mails() -> None:
    refs = tuple(f"k{i}@bot.example.com" for i in range(500))
    keys = named_keys(mail(in_reply_to=(), references=refs))
    assert len(keys) == MAX_NAMED and keys[0] == "k499"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (f"{MX}; dmarc=pass header.from=evil.example.net", "dmarc=pass"),
        (f"{MX}; dkim=pass header.d=example.com; garbage = = =", "cannot be read"),
    ],
)
def test_a_pass_for_another_domain_or_an_unreadable_verdict_is_refused(
    value: str, why: str
) -> None:
    doubt = authenticated(mail(headers=results(value)), MX)
    assert doubt is not None and why in doubt


def test_a_mail_whose_from_is_not_one_address_is_refused() -> None:
    reason = refusal(mail(from_address=""), ANSWERED, None)
    assert reason == "its From is not one well-formed address"


def test_a_recipient_configured_with_a_display_name_may_reply() -> None:
    named = dataclasses.replace(ANSWERED, recipients=("张三 <ZhangSan@Example.com>",))
    assert refusal(mail(), named, None) is None


def test_a_post_with_images_is_cut_to_what_feishu_takes_and_keeps_its_images() -> None:
    text = "李四 <lisi@example.com> 通过邮件回复：\n" + "\n".join(["长" * 100] * 100)
    msg_type, content = post_content(text, ["img_v3_1"])
    body = json.dumps(content, ensure_ascii=False).encode("utf-8")
    assert msg_type == "post" and len(body) <= POST_BYTES
    paragraphs = content["zh_cn"]["content"]  # type: ignore[index]
    assert paragraphs[0] == [{"tag": "text", "text": "李四 <lisi@example.com> 通过邮件回复："}]
    assert paragraphs[-2] == [{"tag": "text", "text": "（邮件正文过长，已截断）"}]
    assert paragraphs[-1] == [{"tag": "img", "image_key": "img_v3_1"}]
    assert post_content("短", ["k"])[1]["zh_cn"]["content"][0] == [{"tag": "text", "text": "短"}]  # type: ignore[index]
