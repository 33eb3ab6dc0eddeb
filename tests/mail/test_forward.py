"""Composed mails parsed back the way a receiving MUA would see them."""

from __future__ import annotations

import email
import email.policy
import json
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage

import pytest

from feishu_mailbot.compose.attachments import BODY_ROOM, Budget
from feishu_mailbot.config.settings import MB, AttachmentSettings
from feishu_mailbot.core.model import Download, Message
from feishu_mailbot.core.subjects import render_subject
from feishu_mailbot.feishu.events import parse_event
from feishu_mailbot.mail.attachments import TOO_LARGE, Attachment, Omitted, omitted_lines
from feishu_mailbot.mail.forward import Envelope, forward_mail
from feishu_mailbot.mail.headers import make_message_id, sanitize_header
from feishu_mailbot.mail.html import image_cid
from feishu_mailbot.mail.recall import compose_recall_notice

CST = timezone(timedelta(hours=8))
WHEN = datetime(2024, 5, 1, 9, 30, 5, tzinfo=CST)
EVIL_CHAT = "研发群\r\nBcc: x@evil.example"


def post_message() -> Message:
    content = {
        "title": "上线通知",
        "content": [
            [{"tag": "text", "text": "请看 <script>alert(1)</script>"}],
            [{"tag": "img", "image_key": "img_v2_one"}],
            [{"tag": "img", "image_key": "img_v2_missing"}],
        ],
    }
    payload = {
        "schema": "2.0",
        "header": {"event_id": "ev_1", "event_type": "im.message.receive_v1"},
        "event": {
            "sender": {"sender_id": {"open_id": "ou_1"}, "sender_type": "user"},
            "message": {
                "message_id": "om_1",
                "chat_id": "oc_1",
                "chat_type": "group",
                "message_type": "post",
                "create_time": "1714526400000",
                "content": json.dumps(content),
            },
        },
    }
    result = parse_event(payload)
    assert isinstance(result, Message)
    return result


def reparse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def forward(
    *,
    chat_name: str = "研发群",
    attachments: tuple[Attachment, ...] = (),
    subject: str = "",
    omitted: tuple[Omitted, ...] = (),
) -> bytes:
    m = post_message()
    return forward_mail(
        m,
        Envelope(
            "飞书机器人 <bot@example.com>",
            ["a@example.com", "b@example.com"],
            chat_name,
            "张三\nX-Evil: 1",
            ["oncall", "archive"],
            make_message_id("outbox:1"),
        ),
        subject=subject or "[研发群] 张三: 上线通知",
        date=WHEN,
        attachments=attachments,
        omitted=omitted,
    ).render()


def test_headers() -> None:
    parsed = reparse(forward())
    assert parsed["Subject"] == "[研发群] 张三: 上线通知"
    assert parsed["From"].addresses[0].addr_spec == "bot@example.com"
    assert parsed["From"].addresses[0].display_name == "飞书机器人"
    assert [a.addr_spec for a in parsed["To"].addresses] == ["a@example.com", "b@example.com"]
    assert parsed["Message-ID"] == make_message_id("outbox:1")
    assert parsed["Date"].datetime == WHEN
    assert parsed["X-Feishu-Message-Id"] == "om_1"
    assert parsed["X-Feishu-Chat-Id"] == "oc_1"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["X-Auto-Response-Suppress"] == "All"  # Exchange's own
    assert parsed["X-Evil"] is None


def test_no_header_injection_through_chat_name_or_subject() -> None:
    subject = render_subject(
        "[{chat_name}] {sender_name}: {preview}",
        chat_name=EVIL_CHAT,
        sender_name="张三",
        preview="上线",
        rule="r",
        msg_type="post",
        date="",
    )
    raw = forward(chat_name=EVIL_CHAT, subject=subject)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Bcc"] is None
    assert parsed["Subject"] == "[研发群 Bcc: x@evil.example] 张三: 上线"
    assert b"\r\nBcc:" not in raw and b"\nBcc:" not in raw
    # Even an unsanitised subject passed straight in must not create a header.
    direct = reparse(forward(subject="hi\r\nBcc: x@evil.example\r\n\r\nbody"))
    assert direct["Bcc"] is None
    assert direct["Subject"] == "hi Bcc: x@evil.example body"


def test_bodies() -> None:
    parsed = reparse(forward())
    plain = parsed.get_body(preferencelist=("plain",))
    html = parsed.get_body(preferencelist=("html",))
    assert plain is not None and html is not None
    text = plain.get_content()
    assert "研发群 · 张三 X-Evil: 1 · 2024-05-01 09:30:05 (UTC+08:00)" in text
    assert "请看 <script>alert(1)</script>" in text
    assert "oncall, archive" in text
    markup = html.get_content()
    assert "<script>" not in markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markup
    assert "2024-05-01 09:30:05 (UTC+08:00)" in markup
    assert "style=" in markup


def test_inline_image_content_id_matches_html() -> None:
    image = Attachment(
        "img_v2_one.png", "image/png", b"\x89PNG\r\n\x1a\nfake", image_cid("img_v2_one")
    )
    parsed = reparse(forward(attachments=(image,)))
    html_part = parsed.get_body(preferencelist=("html",))
    assert html_part is not None
    markup = html_part.get_content()
    assert 'src="cid:img_v2_one@feishu-mailbot"' in markup
    # The image that could not be downloaded is replaced, not left broken.
    assert "cid:img_v2_missing" not in markup and "[图片未能下载]" in markup
    related = [p for p in parsed.walk() if p.get_content_type() == "multipart/related"]
    assert len(related) == 1
    images = [p for p in parsed.walk() if p.get_content_type() == "image/png"]
    assert len(images) == 1
    assert images[0]["Content-ID"] == "<img_v2_one@feishu-mailbot>"
    assert images[0].get_content_disposition() == "inline"
    assert images[0].get_content() == b"\x89PNG\r\n\x1a\nfake"


def test_chinese_attachment_filename_round_trip() -> None:
    name = "2024年第一季度 销售报告（终版）.xlsx"
    data = bytes(range(256)) * 4
    doc = Attachment(
        name, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", data
    )
    raw = forward(attachments=(doc,))
    assert b"filename*=utf-8''" in raw or b"filename*0*=utf-8''" in raw
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    attachments = list(parsed.iter_attachments())
    assert len(attachments) == 1
    assert attachments[0].get_filename() == name
    assert attachments[0].get_content() == data
    assert parsed.get_content_type() == "multipart/mixed"


def test_attachment_filename_and_type_are_sanitised() -> None:
    doc = Attachment("../evil\r\nBcc: x@evil.example.txt", "multipart/mixed", b"x")
    parsed = reparse(forward(attachments=(doc,)))
    (att,) = list(parsed.iter_attachments())
    assert att.get_filename() == "_evil Bcc: x@evil.example.txt"
    assert att.get_content_type() == "application/octet-stream"
    assert parsed["Bcc"] is None


def test_message_id_is_stable() -> None:
    first = make_message_id("outbox:42")
    assert first == make_message_id("outbox:42")
    assert first != make_message_id("outbox:43")
    assert first.startswith("<") and first.endswith("@feishu-mailbot>")
    assert make_message_id("x", "mail.example.com").endswith("@mail.example.com>")
    with pytest.raises(ValueError):
        make_message_id("x", "bad domain\r\n")
    a = reparse(forward())
    b = reparse(forward())
    assert a["Message-ID"] == b["Message-ID"]


def test_recall_notice_threads_under_original() -> None:
    original = make_message_id("outbox:1")
    notice = compose_recall_notice(
        original_subject="[研发群] 张三: 上线通知",
        original_message_id=original,
        sender="bot@example.com",
        to=["a@example.com"],
        chat_name=EVIL_CHAT,
        sender_name="张三",
        message_id=make_message_id("recall:1"),
        date=WHEN,
    )
    parsed = reparse(notice)
    assert parsed["In-Reply-To"] == original
    assert parsed["References"] == original
    assert parsed["Subject"] == "[已撤回] [研发群] 张三: 上线通知"
    assert parsed["Bcc"] is None
    assert (parsed["Auto-Submitted"], parsed["X-Auto-Response-Suppress"]) == (
        "auto-generated",
        "All",
    )
    plain = parsed.get_body(preferencelist=("plain",))
    assert plain is not None
    assert "撤回" in plain.get_content()


def test_addresses_from_config_must_be_clean() -> None:
    m = post_message()
    with pytest.raises(ValueError):
        forward_mail(
            m,
            Envelope(
                "bot@example.com",
                ["a@example.com\r\nBcc: x@evil.example"],
                "c",
                "s",
                [],
                make_message_id("x"),
            ),
            subject="s",
            date=WHEN,
        )
    with pytest.raises(ValueError):
        forward_mail(
            m,
            Envelope("bot@example.com", [], "c", "s", [], make_message_id("x")),
            subject="s",
            date=WHEN,
        )


def test_sanitize_header() -> None:
    assert sanitize_header("a\r\nb\tc\x00d\u2028e\x7f") == "a b c d e"
    assert sanitize_header("  中文 标题 ") == "中文 标题"


def test_format_characters_cannot_disguise_a_file_name() -> None:
    doc = Attachment("invoice\u202egpj.exe", "application/octet-stream", b"MZ")
    (att,) = list(reparse(forward(attachments=(doc,))).iter_attachments())
    assert att.get_filename() == "invoicegpj.exe"  # shown as it is: an .exe


def test_files_left_out_are_named_in_both_bodies() -> None:
    left_out = (
        Omitted("report.zip", 60 * 1024 * 1024, 20 * 1024 * 1024),
        Omitted("<b>dump</b>\r\n.bin", None, 20 * 1024 * 1024),
    )
    parsed = reparse(forward(omitted=left_out))
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert text is not None and html is not None
    assert (
        f"{TOO_LARGE}:\n- report.zip (60.0 MB)\n- <b>dump</b> .bin (超过 20.0 MB)"
        in text.get_content()
    )
    assert "<li>&lt;b&gt;dump&lt;/b&gt; .bin (超过 20.0 MB)</li>" in html.get_content()
    assert list(parsed.iter_attachments()) == []
    full = omitted_lines([Omitted("c.pdf", None, 0)])  # earlier files took all the room
    assert full == ["c.pdf (本邮件附件已满)"]


def test_the_budget_counts_the_relays_size_in_encoded_bytes() -> None:
    caps = AttachmentSettings(max_file=20 * MB, max_mail=25 * MB)
    assert Budget.of(caps, None).limit == 20 * MB
    relay = Budget.of(caps, 10 * MB)  # 10 MB of mail holds ≈7.1 MB of file
    assert relay.limit == (10 * MB - BODY_ROOM) * 57 // 78
    assert -(-relay.limit // 57) * 78 <= 10 * MB - BODY_ROOM  # its base64 fits
    relay.spend(Download(b"x" * (7 * MB), "application/pdf", None))
    assert 0 < relay.limit < MB
    assert Budget.of(caps, 100).limit == 0  # a relay smaller than a body: no files at all
