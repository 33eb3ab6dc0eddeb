"""The digest mail parsed back the way a receiving mail client sees it."""

from __future__ import annotations

import email
import email.policy
import json
import re
import struct
import zlib
from dataclasses import replace
from datetime import date, datetime
from email.message import EmailMessage
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from feishu_mailbot.core.daily_report import (
    Digest,
    Entry,
    ReportSettings,
    RosterMember,
    build_digest,
)
from feishu_mailbot.core.model import Message
from feishu_mailbot.core.subjects import render_digest_subject, validate_digest_subject
from feishu_mailbot.feishu.events import parse_event
from feishu_mailbot.mail.attachments import Attachment
from feishu_mailbot.mail.daily_report import compose_digest, render_text
from feishu_mailbot.mail.headers import make_message_id
from feishu_mailbot.mail.html import image_cid

SH = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 23)
SENT_AT = datetime(2026, 11, 23, 18, 30, tzinfo=SH)
IMAGE_KEY = "img_v3_0abc_sample"
ROSTER = (
    RosterMember("张三", "ou_zhang"),
    RosterMember("李四", "ou_li"),
    RosterMember("王五", "ou_wang"),
)
SETTINGS = ReportSettings(chat="oc_team", recipients=("boss@example.com",), roster=ROSTER)


def png(width: int = 240, height: int = 120, rgb: tuple[int, int, int] = (51, 112, 255)) -> bytes:
    """A real, valid PNG (a solid rectangle) so renderers and screenshots show something."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def event(message_id: str, sender: str, msg_type: str, content: object, when: datetime) -> Message:
    payload: dict[str, Any] = {
        "schema": "2.0",
        "header": {"event_id": f"ev_{message_id}", "event_type": "im.message.receive_v1"},
        "event": {
            "sender": {"sender_id": {"open_id": sender}, "sender_type": "user"},
            "message": {
                "message_id": message_id,
                "chat_id": "oc_team",
                "chat_type": "group",
                "message_type": msg_type,
                "create_time": str(int(when.timestamp() * 1000)),
                "content": json.dumps(content, ensure_ascii=False),
            },
        },
    }
    result = parse_event(payload)
    assert isinstance(result, Message)
    return result


def text_event(message_id: str, sender: str, text: str, when: datetime) -> Message:
    return event(message_id, sender, "text", {"text": text}, when)


class Sample(NamedTuple):
    digest: Digest
    images: dict[str, Attachment]
    settings: ReportSettings


def sample_digest() -> Sample:
    """A realistic day: 张三 posts twice, 李四 a rich post with an image, 王五 nothing.

    Reused by the screenshot test, so it stays free of hostile content.
    """
    first = text_event(
        "om_zhang_1",
        "ou_zhang",
        "日报 11-23\n1. 完成登录页改版，已提测\n2. 修复 #1289 支付回调重复问题\n明天：联调消息推送",
        datetime(2026, 11, 23, 17, 42, tzinfo=SH),
    )
    rich = event(
        "om_li_1",
        "ou_li",
        "post",
        {
            "title": "【日报】11月23日",
            "content": [
                [
                    {"tag": "text", "text": "完成: ", "style": ["bold"]},
                    {"tag": "text", "text": "数据看板新增留存曲线，见 "},
                    {"tag": "a", "text": "设计稿", "href": "https://example.com/design"},
                ],
                [{"tag": "img", "image_key": IMAGE_KEY}],
                [{"tag": "text", "text": "风险: 第三方接口限流，已和对方约了周三沟通"}],
            ],
        },
        datetime(2026, 11, 23, 18, 5, tzinfo=SH),
    )
    second = text_event(
        "om_zhang_2",
        "ou_zhang",
        "日报补充：下午的线上告警已处理，原因是缓存过期时间配置错误",
        datetime(2026, 11, 23, 18, 21, tzinfo=SH),
    )
    entries = [Entry(second, "张三"), Entry(rich, "李四"), Entry(first, "张三")]
    digest = build_digest(DAY, "研发群", entries, SETTINGS)
    images = {IMAGE_KEY: Attachment("chart.png", "image/png", png())}
    return Sample(digest, images, SETTINGS)


def compose(d: Digest, images: dict[str, Attachment] | None = None) -> bytes:
    composed = compose_digest(
        d,
        subject=SETTINGS.subject,
        sender="日报机器人 <bot@example.com>",
        to=["boss@example.com"],
        message_id=make_message_id(f"digest:{d.day}"),
        date=SENT_AT,
        images=images or {},
    )
    return composed.mail.render()


def reparse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def bodies(mail: EmailMessage) -> tuple[str, str]:
    text = mail.get_body(preferencelist=("plain",))
    html = mail.get_body(preferencelist=("html",))
    assert isinstance(text, EmailMessage) and isinstance(html, EmailMessage)
    return text.get_content(), html.get_content()


# --------------------------------------------------------------------------- structure


def test_sample_digest_mail_parses_back() -> None:
    sample = sample_digest()
    mail = reparse(compose(sample.digest, sample.images))
    assert mail["Subject"] == "日报汇总 2026-11-23 · 研发群 · 2/3 已提交"
    assert mail["To"] == "boss@example.com"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail["X-Auto-Response-Suppress"] == "All"  # Exchange's own
    assert mail["X-Feishu-Mailbot-Report-Day"] == "2026-11-23"
    assert mail.get_content_type() == "multipart/alternative"
    text, html = bodies(mail)
    assert "2/3" in html and "已提交" in html
    assert "2026-11-23（周一）" in html and "研发群" in html
    assert "已提交 2/3" in text


def test_inline_image_is_attached_and_referenced() -> None:
    sample = sample_digest()
    mail = reparse(compose(sample.digest, sample.images))
    related = [p for p in mail.walk() if p.get_content_type() == "multipart/related"]
    assert len(related) == 1
    images = [p for p in mail.walk() if p.get_content_type() == "image/png"]
    assert len(images) == 1
    cid = image_cid(IMAGE_KEY)
    assert images[0]["Content-ID"] == f"<{cid}>"
    assert images[0].get_content_disposition() == "inline"
    assert images[0].get_content() == sample.images[IMAGE_KEY].data
    _, html = bodies(mail)
    assert f'src="cid:{cid}"' in html
    assert "图片未能下载" not in html


def test_missing_image_becomes_a_note() -> None:
    mail = reparse(compose(sample_digest().digest, {}))
    assert not [p for p in mail.walk() if p.get_content_maintype() == "image"]
    _, html = bodies(mail)
    assert "cid:" not in html
    assert "[图片未能下载]" in html


def test_sections_in_roster_order_posts_in_time_order() -> None:
    text, html = bodies(reparse(compose(sample_digest().digest)))
    for body in (text, html):
        order = [body.index(s) for s in ("张三", "完成登录页改版", "日报补充", "李四", "留存曲线")]
        assert order == sorted(order)
    assert "17:42" in html and "18:21" in html and "18:05" in html
    assert "<b>完成: </b>" in html  # rich text kept
    assert 'href="https://example.com/design"' in html


def test_missing_members_are_listed() -> None:
    text, html = bodies(reparse(compose(sample_digest().digest)))
    assert "未提交（1）：王五" in text
    missing_box = re.search(r"<b>未提交（1）</b>：([^<]*)</td>", html)
    assert missing_box is not None and missing_box.group(1) == "王五"
    # 王五 appears only in the missing list, never as a section.
    assert html.count("王五") == 1


def test_plain_text_contains_every_report() -> None:
    sample = sample_digest()
    text, _ = bodies(reparse(compose(sample.digest, sample.images)))
    for section in sample.digest.sections:
        for entry in section.entries:
            assert entry.message.text in text
    assert text.replace("\r\n", "\n") == render_text(sample.digest)


def test_render_text_reads_on_its_own() -> None:
    text = render_text(sample_digest().digest)
    lines = text.splitlines()
    assert lines[0] == "日报汇总 2026-11-23（周一） · 研发群"
    assert lines[1] == "已提交 2/3"
    assert "■ 张三（2 条）" in lines and "■ 李四" in lines
    assert "[17:42]" in lines and "[18:21]" in lines
    assert "【日报】11月23日" in text and "[图片]" in text


# --------------------------------------------------------------------------- escaping


_ENTITY = re.compile(r"&(?!(?:amp|lt|gt|quot|#x27|nbsp);)")


def hostile_digest() -> Digest:
    report = text_event(
        "om_evil",
        "ou_eve",
        "日报 <script>alert('x')</script> & <img src=x onerror=alert(1)> R&D",
        datetime(2026, 11, 23, 9, tzinfo=SH),
    )
    settings = replace(SETTINGS, roster=(RosterMember("<i>王五</i> & co", "ou_wang"),))
    return build_digest(
        DAY, "R&D <b>群</b>", [Entry(report, "<script>Eve</script> & Co")], settings
    )


def test_chat_content_is_escaped_in_html() -> None:
    d = hostile_digest()
    mail = reparse(compose(d))
    text, html = bodies(mail)
    assert "<script" not in html.lower()
    assert "<img src=x" not in html
    assert "<i>王五" not in html and "<b>群" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp;" in html
    assert "&lt;script&gt;Eve&lt;/script&gt; &amp; Co" in html
    assert "R&amp;D &lt;b&gt;群&lt;/b&gt;" in html
    assert "&lt;i&gt;王五&lt;/i&gt; &amp; co" in html
    assert not _ENTITY.search(html), "every & in the HTML must start an entity"
    # The text part keeps the content as written.
    assert "<script>alert('x')</script> & <img" in text
    assert "<script>Eve</script> & Co" in text


def test_header_injection_through_chat_name_is_flattened() -> None:
    d = replace(sample_digest().digest, chat_name="研发群\r\nBcc: victim@example.com")
    mail = reparse(compose(d))
    assert mail["Bcc"] is None
    assert mail["Subject"] == "日报汇总 2026-11-23 · 研发群 Bcc: victim@example.com · 2/3 已提交"


# --------------------------------------------------------------------------- variants


def test_supplement_is_marked() -> None:
    sample = sample_digest()
    late = text_event(
        "om_wang_1", "ou_wang", "日报 迟到了", datetime(2026, 11, 23, 21, 10, tzinfo=SH)
    )
    earlier = [e for s in sample.digest.sections for e in s.entries]
    d = build_digest(
        DAY, "研发群", [Entry(late, "王五")], SETTINGS, supplement=True, earlier=earlier
    )
    mail = reparse(compose(d))
    assert mail["Subject"] == "[补充] 日报汇总 2026-11-23 · 研发群 · 3/3 已提交"
    text, html = bodies(mail)
    assert "日报汇总 · 补充" in html and "日报汇总 · 补充" in text
    assert "迟到了" in html and "完成登录页改版" not in html
    assert "未提交" not in html


def test_post_after_midnight_shows_its_date() -> None:
    late = text_event("om_late", "ou_li", "日报 熬夜版", datetime(2026, 11, 24, 1, 30, tzinfo=SH))
    d = build_digest(DAY, "研发群", [Entry(late, "李四")], SETTINGS)
    assert "[11-24 01:30]" in render_text(d)


def test_empty_day_and_guest_marker() -> None:
    empty = build_digest(DAY, "研发群", [], SETTINGS)
    text, html = bodies(reparse(compose(empty)))
    assert "这一天还没有收到日报" in text and "这一天还没有收到日报" in html
    assert "0/3" in html and "未提交（3）：张三、李四、王五" in text
    guest = text_event("om_g", "ou_guest", "日报 访客", datetime(2026, 11, 23, 9, tzinfo=SH))
    d = build_digest(DAY, "研发群", [Entry(guest, "访客")], SETTINGS)
    assert "■ 访客 [不在名单中]" in render_text(d)
    assert (d.submitted, d.expected) == (0, 3)


def test_subject_rendering_never_fails() -> None:
    assert (
        render_digest_subject(
            "{date} {chat_name} {submitted:02d}/{expected} 缺{missing}", DAY, "群", 7, 9
        )
        == "2026-11-23 群 07/9 缺2"
    )
    assert render_digest_subject("{nope} {date:>x} {", DAY, "群", 1, 2) == "{nope} {date:>x} {"
    assert render_digest_subject("{date}", DAY, "群", 1, 2, supplement=True) == "[补充] 2026-11-23"


def test_subject_validation() -> None:
    assert validate_digest_subject(SETTINGS.subject) is None
    assert validate_digest_subject("{submitted:02d} {date:>12}") is None
    assert "unknown placeholder" in (validate_digest_subject("{sender_name}") or "")
    assert "bad braces" in (validate_digest_subject("{date") or "")
    assert "bad format" in (validate_digest_subject("{submitted:zz}") or "")
