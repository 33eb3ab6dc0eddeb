"""An inbound mail read into plain data: mail/reply.py, then core/reply.py's new text."""

from __future__ import annotations

import base64
from email.message import EmailMessage

import pytest

from feishu_mailbot.core.reply import new_text
from feishu_mailbot.mail.reply import html_text, parse

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg=="
)


def test_a_foxmail_reply_labelled_gb2312_is_read_with_the_characters_gbk_adds() -> None:
    quote = "------------------ 原始邮件 ------------------\r\n发件人: bot\r\n"
    body = f"收到，我看一下。镕\r\n\r\n{quote}"
    raw = (
        b"Return-Path: <zhangsan@example.com>\r\n"
        b"Delivered-To: bot+abc123@example.com\r\n"
        b"From: =?gb2312?B?1cXI/Q==?= <ZhangSan@Example.com>\r\n"
        b"To: bot@example.com\r\n"
        b"Subject: =?gb2312?B?UmU6IFvWtbDgyLpd?=\r\n"
        b"Message-ID: <reply-1@mail.example.com>\r\n"
        b"In-Reply-To: <fm-1@bot.example.com>\r\n"
        b"References: <fm-0@bot.example.com>\r\n <fm-1@bot.example.com>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: text/plain; charset="gb2312"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(body.encode("gbk"))
    )
    mail = parse(raw)
    assert mail.message_id == "reply-1@mail.example.com"
    assert (mail.from_address, mail.from_name) == ("zhangsan@example.com", "张三")
    assert mail.subject == "Re: [值班群]"
    assert mail.in_reply_to == ("fm-1@bot.example.com",)
    assert mail.references == ("fm-0@bot.example.com", "fm-1@bot.example.com")
    assert mail.to == ("bot@example.com", "bot+abc123@example.com")
    assert mail.headers["return-path"] == ("<zhangsan@example.com>",)
    assert new_text(mail.text) == "收到，我看一下。镕"  # 镕 is GBK, not GB 2312


OUTLOOK_HTML = """<html><head><meta charset="utf-8"><style>p {margin:0}</style></head>
<body><div class="WordSection1"><p>我来处理。<o:p></o:p></p><p>&nbsp;</p>
<p>张三&nbsp;|&nbsp;SRE</p></div>
<hr style="display:inline-block;width:98%" tabindex="-1">
<div id="divRplyFwdMsg" dir="ltr"><font face="Calibri" style="font-size:11pt">
<b>发件人:</b> 值班机器人 &lt;bot@example.com&gt;<br>
<b>发送时间:</b> 2026年12月1日 10:02<br>
<b>收件人:</b> 张三 &lt;zhangsan@example.com&gt;<br>
<b>主题:</b> [值班群] 线上故障</font><div>&nbsp;</div></div>
<div><p>[值班群] 线上故障：支付接口 500</p></div></body></html>"""


def test_an_outlook_html_only_reply_is_read_as_text() -> None:
    raw = (
        b"From: zhangsan@example.com\r\nTo: bot@example.com\r\nSubject: RE: x\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(OUTLOOK_HTML.encode())
    )
    mail = parse(raw)
    assert new_text(mail.text) == "我来处理。\n\n张三 | SRE"


def test_html_quotes_are_marked_as_quotes() -> None:
    html = (
        '<div dir="ltr">好的<br>马上处理</div><div class="gmail_quote">'
        "<blockquote>原文第一行<br>原文第二行<blockquote>更早的</blockquote></blockquote></div>"
    )
    assert html_text(html) == "好的\n马上处理\n> 原文第一行\n> 原文第二行\n> > 更早的"
    assert new_text(html_text(html)) == "好的\n马上处理"


def test_images_are_kept_and_other_files_named() -> None:
    raw = (
        b"From: zhangsan@example.com\r\nTo: bot@example.com\r\nSubject: Re: x\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\n"
        b'Content-Type: multipart/related; boundary="b2"\r\n\r\n'
        b"--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b'<p>\xe6\x88\xaa\xe5\x9b\xbe\xe5\xa6\x82\xe4\xb8\x8b</p><img src="cid:shot">\r\n'
        b"--b2\r\nContent-Type: image/png\r\nContent-ID: <shot>\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(PNG) + b"--b2--\r\n"
        b"--b1\r\n"
        b'Content-Type: application/pdf; name="=?utf-8?B?5pel5b+XLnBkZg==?="\r\n'
        b"Content-Disposition: attachment\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"JVBERi0=\r\n--b1--\r\n"
    )
    mail = parse(raw)
    assert mail.text == "截图如下"
    assert [(i.name, i.content_type, i.data) for i in mail.images] == [
        ("image.png", "image/png", PNG)
    ]
    assert mail.files == ("日志.pdf",)


def test_a_mail_without_a_body_or_ids_is_still_read() -> None:
    mail = parse(b"From: <>\r\nSubject: \r\n\r\n")
    assert (mail.message_id, mail.from_address, mail.text) == ("", "", "")
    assert mail.in_reply_to == mail.references == mail.to == ()


@pytest.mark.parametrize(
    "froms",
    [
        [b"From: victim@corp.example <attacker@evil.example>"],  # read two ways by parsers
        [b"From: victim@corp.example, attacker@evil.example"],
        [b"From: victim@corp.example", b"From: attacker@evil.example"],
        [],
    ],
)
def test_a_mail_without_exactly_one_from_address_has_no_sender(froms: list[bytes]) -> None:
    mail = parse(b"\r\n".join([*froms, b"Subject: Re: x", b"", b"hi", b""]))
    assert (mail.from_address, mail.from_name) == ("", "")


def test_a_raw_utf8_display_name_is_read() -> None:
    mail = parse("From: 张三 <zhangsan@example.com>\r\n\r\nhi\r\n".encode())
    assert (mail.from_name, mail.from_address) == ("张三", "zhangsan@example.com")


def test_the_images_of_the_quoted_mail_go_with_the_quote() -> None:
    """Outlook quotes our forward with its inline images; only the new screenshot is
    the reply's."""
    html = (
        '<html><body><p>截图如下</p><p><img src="cid:new@outlook"></p>'
        '<div style="border-top:solid #E1E1E1 1.0pt"><p><b>发件人:</b> 值班机器人<br>'
        "<b>发送时间:</b> 2026年12月1日 10:02</p></div>"
        '<p>线上故障</p><p><img src="cid:old@feishu-mailbot"></p></body></html>'
    )
    mail = EmailMessage()
    mail["From"] = "lisi@example.com"
    mail["Message-ID"] = "<r-1@example.com>"
    mail.set_content(html, subtype="html")
    for cid in ("new@outlook", "old@feishu-mailbot"):
        mail.add_related(PNG, maintype="image", subtype="png", cid=f"<{cid}>")
    parsed = parse(mail.as_bytes())
    assert [i.content_id for i in parsed.images] == ["new@outlook"]
    assert new_text(parsed.text) == "截图如下"
