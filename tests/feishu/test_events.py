"""Feishu event payloads → Message / Recall / Ignored."""

from __future__ import annotations

import json
from typing import Any

import pytest

from feishu_mailbot.core.model import Ignored, Mention, Message, Recall, Resource
from feishu_mailbot.core.text import preview
from feishu_mailbot.feishu.events import EventError, parse_event
from feishu_mailbot.mail import html as mail_html
from feishu_mailbot.mail.html import image_cid


def html(m: Message) -> str:
    """The message's HTML as mail shows it, with every image downloaded."""
    return mail_html.html(m.blocks, {image_cid(r.key) for r in m.resources})


def receive(
    msg_type: str,
    content: object,
    *,
    mentions: list[dict[str, Any]] | None = None,
    event_id: str = "ev_1",
    message_id: str | None = "om_1",
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "root_id": "om_root",
        "parent_id": "om_parent",
        "create_time": "1714526400123",
        "chat_id": "oc_chat",
        "chat_type": "group",
        "message_type": msg_type,
        "content": content if isinstance(content, str) else json.dumps(content),
    }
    if message_id is not None:
        message["message_id"] = message_id
    if mentions is not None:
        message["mentions"] = mentions
    return {
        "schema": "2.0",
        "header": {
            "event_id": event_id,
            "event_type": "im.message.receive_v1",
            "create_time": "1714526400999",
            "token": "t",
            "app_id": "cli_x",
            "tenant_key": "tk",
        },
        "event": {
            "sender": {
                "sender_id": {"open_id": "ou_sender", "union_id": "on_x", "user_id": None},
                "sender_type": "user",
                "tenant_key": "tk",
            },
            "message": message,
        },
    }


def parse_message(payload: object) -> Message:
    result = parse_event(json.dumps(payload))
    assert isinstance(result, Message)
    return result


MENTIONS = [
    {"key": "@_user_1", "id": {"open_id": "ou_zhang"}, "name": "张三", "tenant_key": "tk"},
    {"key": "@_user_10", "id": {"open_id": "ou_li"}, "name": "李四", "tenant_key": "tk"},
]


def test_text_with_mentions() -> None:
    content = {"text": "@_user_1 @_user_10 请看 <b>故障</b> @_all"}
    m = parse_message(receive("text", content, mentions=MENTIONS))
    assert m.text == "@张三 @李四 请看 <b>故障</b> @所有人"
    assert "&lt;b&gt;故障&lt;/b&gt;" in html(m)
    assert "<b>" not in html(m)
    assert "@张三" in html(m) and "@李四" in html(m) and "@所有人" in html(m)
    assert m.mentions == (
        Mention("@_user_1", "张三", "ou_zhang"),
        Mention("@_user_10", "李四", "ou_li"),
    )
    assert (m.event_id, m.message_id, m.chat_id, m.chat_type) == (
        "ev_1",
        "om_1",
        "oc_chat",
        "group",
    )
    assert (m.sender_open_id, m.sender_type, m.msg_type) == ("ou_sender", "user", "text")
    assert m.create_time_ms == 1714526400123
    assert (m.root_id, m.parent_id) == ("om_root", "om_parent")


def test_text_newlines_become_br_and_chinese_is_intact() -> None:
    m = parse_message(receive("text", {"text": "第一行\n第二行　全角空格 😀"}))
    assert m.text == "第一行\n第二行　全角空格 😀"
    assert html(m) == "第一行<br>第二行　全角空格 😀"


def test_accepts_bytes_str_and_mapping() -> None:
    payload = receive("text", {"text": "hi"})
    from_bytes = parse_event(json.dumps(payload, ensure_ascii=False).encode("utf-8"))
    assert from_bytes == parse_event(json.dumps(payload)) == parse_event(payload)


POST = {
    "title": "发布 <script>alert(1)</script>",
    "content": [
        [
            {"tag": "text", "text": "重要", "style": ["bold"]},
            {"tag": "text", "text": "：见"},
            {"tag": "a", "href": "https://example.com/a?b=1&c=2", "text": "文档"},
            {"tag": "a", "href": "javascript:alert(1)", "text": "坏链接"},
            {"tag": "at", "user_id": "@_user_1", "user_name": "张三"},
            {"tag": "at", "user_id": "all", "user_name": ""},
            {"tag": "emotion", "emoji_type": "SMILE"},
        ],
        [{"tag": "img", "image_key": "img_v2_abc", "width": 100, "height": 80}],
        [{"tag": "code_block", "language": "PYTHON", "text": "print('<script>')\nx = 1"}],
        [{"tag": "hr"}],
        [{"tag": "text", "text": "<script>evil()</script>"}],
    ],
}


def test_post_plain_text() -> None:
    m = parse_message(receive("post", POST, mentions=MENTIONS[:1]))
    assert m.title == "发布 <script>alert(1)</script>"
    lines = m.text.split("\n")
    assert lines[0] == m.title
    assert lines[1] == (
        "重要：见文档 (https://example.com/a?b=1&c=2)"
        "坏链接 (javascript:alert(1))@张三@所有人[SMILE]"
    )
    assert lines[2] == "[图片]"
    assert lines[3:5] == ["print('<script>')", "x = 1"]
    assert lines[6] == "<script>evil()</script>"
    assert m.resources == (Resource("image", "img_v2_abc", ""),)


def test_post_html_is_safe() -> None:
    m = parse_message(receive("post", POST, mentions=MENTIONS[:1]))
    assert "<script>" not in html(m)
    assert "&lt;script&gt;evil()&lt;/script&gt;" in html(m)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html(m)  # the title
    assert "<b>重要</b>" in html(m)
    assert '<a href="https://example.com/a?b=1&amp;c=2">文档</a>' in html(m)
    assert "javascript:" not in html(m).replace("(javascript:alert(1))", "")
    assert 'href="javascript' not in html(m)
    assert '<img src="cid:img_v2_abc@feishu-mailbot"' in html(m)
    assert image_cid("img_v2_abc") == "img_v2_abc@feishu-mailbot"
    assert "<pre" in html(m) and "print(&#x27;&lt;script&gt;&#x27;)" in html(m)
    assert "<hr" in html(m)
    assert "@张三" in html(m) and "@所有人" in html(m) and "[SMILE]" in html(m)


def test_post_locale_wrapped_and_styles() -> None:
    content = {
        "en_us": {"title": "english", "content": [[{"tag": "text", "text": "no"}]]},
        "zh_cn": {
            "title": "标题",
            "content": [
                [
                    {"tag": "text", "text": "斜", "style": ["italic", "underline", "lineThrough"]},
                    {"tag": "md", "text": "**md**\n第二行"},
                    {"tag": "media", "file_key": "file_v3_media", "image_key": "img_cover"},
                    {"tag": "a", "href": " java\tscript:x", "text": "x"},
                    {"tag": "a", "href": "mailto:a@example.com", "text": "mail"},
                    {"tag": "unknown_tag", "text": "保留"},
                ]
            ],
        },
    }
    m = parse_message(receive("post", content))
    assert m.title == "标题"
    assert (
        m.text == "标题\n斜**md**\n第二行[视频]x ( java\tscript:x)mail (mailto:a@example.com)保留"
    )
    assert "<s><u><i>斜</i></u></s>" in html(m)
    assert "**md**<br>第二行" in html(m)
    assert '<a href="mailto:a@example.com">mail</a>' in html(m)
    assert '<a href="java' not in html(m)
    assert m.resources == (Resource("media", "file_v3_media", ""),)


def test_image_message() -> None:
    m = parse_message(receive("image", {"image_key": "img_v2_xyz"}))
    assert m.text == "[图片]"
    assert m.resources == (Resource("image", "img_v2_xyz", ""),)
    assert 'src="cid:img_v2_xyz@feishu-mailbot"' in html(m)


def test_file_message() -> None:
    m = parse_message(receive("file", {"file_key": "file_v2_1", "file_name": "季度报告.pdf"}))
    assert m.text == "[文件] 季度报告.pdf"
    assert m.resources == (Resource("file", "file_v2_1", "季度报告.pdf"),)
    assert "[文件] 季度报告.pdf" in html(m)


def test_audio_and_media_messages() -> None:
    audio = parse_message(receive("audio", {"file_key": "file_a", "duration": 3000}))
    assert audio.text == "[语音 3秒]"
    assert audio.resources == (Resource("audio", "file_a", ""),)
    media = parse_message(
        receive("media", {"file_key": "file_m", "image_key": "img_m", "file_name": "demo.mp4"})
    )
    assert media.text == "[视频] demo.mp4"
    assert media.resources == (Resource("media", "file_m", "demo.mp4"),)


@pytest.mark.parametrize(
    ("msg_type", "content", "expected"),
    [
        ("sticker", {"file_key": "x"}, "[表情包]"),
        ("interactive", {"title": "审批", "elements": []}, "[卡片] 审批"),
        ("interactive", {}, "[卡片]\n飞书未随消息提供这张卡片的内容，请在飞书中查看"),
        ("share_chat", {"chat_id": "oc_x"}, "[群名片]"),  # named when mailed
        ("share_user", {"user_id": "ou_x"}, "[个人名片]"),
        ("merge_forward", {}, "[合并转发消息]"),  # expanded when mailed
        ("merge_forward", "Merged and Forwarded Message", "[合并转发消息]"),
        ("system", {"template": "x"}, "[系统消息] x"),
        (
            "system",
            {
                "template": "{divider_text}",
                "divider_text": {"text": "新会话", "i18n_text": {"zh_cn": "新话题"}},
            },
            "[系统消息] 新话题",
        ),
        ("location", {"name": "北京", "latitude": "1"}, "[位置] 北京"),
        ("vote", {"topic": "午饭", "options": "not a list"}, "[投票] 午饭"),
        ("calendar", {"summary": "会", "start_time": "junk"}, "[日程邀请] 会"),
        ("todo", {"summary": {"title": "写周报"}, "due_time": "0"}, "[任务] 写周报"),
        ("brand_new_type", {"a": 1}, "[不支持的消息类型: brand_new_type]"),
        ("<script>", "not json at all", "[不支持的消息类型: <script>]"),
    ],
)
def test_other_types_get_placeholders(msg_type: str, content: object, expected: str) -> None:
    m = parse_message(receive(msg_type, content))
    assert m.text == expected
    assert m.resources == ()
    assert "<script>" not in html(m)


def test_a_card_in_its_own_json_shows_header_leaves_and_linked_buttons() -> None:
    """Some senders' content is the card JSON itself (schema 2.0 with header and body)."""
    card = {
        "schema": "2.0",
        "header": {
            "title": {"tag": "plain_text", "content": "构建失败 #42"},
            "subtitle": {"tag": "plain_text", "content": "main 分支"},
            "template": "red",
        },
        "body": {
            "elements": [
                {"tag": "markdown", "content": "**失败** 见 [日志](https://ci.example.com/42)"},
                {
                    "tag": "column_set",
                    "columns": [{"elements": [{"tag": "markdown", "content": "<at id=all></at>"}]}],
                },
                {"tag": "hr"},
                {
                    "tag": "button",
                    "text": {"tag": "plain_text", "content": "重试"},
                    "behaviors": [{"type": "callback", "value": {"k": "secret-value"}}],
                },
                {
                    "tag": "button",
                    "text": {"tag": "plain_text", "content": "打开"},
                    "multi_url": {"url": "https://ci.example.com/42"},
                },
                {"tag": "img", "img_key": "img_chart"},
            ]
        },
    }
    m = parse_message(receive("interactive", card))
    assert m.title == "构建失败 #42"
    assert m.text.splitlines() == [
        "[卡片] 构建失败 #42",
        "main 分支",
        "失败 见 日志 (https://ci.example.com/42)",
        "@所有人",
        "----------",
        "[重试] [打开] (https://ci.example.com/42) ",
        "[图片]",
    ]
    assert "secret-value" not in m.text
    assert m.resources == (Resource("image", "img_chart", ""),)
    rendered = html(m)
    assert "background:#f54a45" in rendered  # the red header, as Feishu shows it
    assert "<b>失败</b>" in rendered
    assert '<a href="https://ci.example.com/42">打开</a>' not in rendered
    assert '<a href="https://ci.example.com/42">[打开]</a>' in rendered


def test_a_hostile_card_nested_without_end_is_read_not_raised() -> None:
    deep: dict[str, object] = {"tag": "markdown", "content": "最深处"}
    for _ in range(200):
        deep = {"tag": "column_set", "columns": [deep]}
    m = parse_message(receive("interactive", {"header": {}, "elements": [deep]}))
    assert "最深处" not in m.text and m.text.startswith("[卡片]")
    # Nested past what json can read, content is quarantined: test_faults "nested content".


def test_times_in_content_are_shown_in_the_team_zone() -> None:
    from zoneinfo import ZoneInfo

    content = {"summary": "周会", "start_time": "1764558000000", "end_time": "1764644400000"}
    payload = receive("calendar", content)
    shanghai = parse_event(payload)
    london = parse_event(payload, zone=ZoneInfo("Europe/London"))
    assert isinstance(shanghai, Message) and isinstance(london, Message)
    assert "时间: 2025-12-01 11:00 – 2025-12-02 11:00" in shanghai.text
    assert "时间: 2025-12-01 03:00 – 2025-12-02 03:00" in london.text


def test_a_link_in_a_text_message_becomes_a_link() -> None:
    m = parse_message(
        receive("text", {"text": "看 [文档](https://a.example/x) 和 [坏](javascript:x)"})
    )
    assert m.text == "看 文档 (https://a.example/x) 和 [坏](javascript:x)"
    assert '<a href="https://a.example/x">文档</a>' in html(m)


def test_text_with_unparseable_content_keeps_raw_string() -> None:
    m = parse_message(receive("text", "plain, not JSON"))
    assert m.text == "plain, not JSON"


def test_recall() -> None:
    payload = {
        "schema": "2.0",
        "header": {"event_id": "ev_r", "event_type": "im.message.recalled_v1"},
        "event": {
            "message_id": "om_1",
            "chat_id": "oc_chat",
            "recall_time": "1714526500000",
            "recall_type": "message_owner",
        },
    }
    assert parse_event(payload) == Recall("ev_r", "om_1", "oc_chat", 1714526500000)


def test_other_event_types_are_ignored() -> None:
    payload = {
        "schema": "2.0",
        "header": {"event_id": "ev_x", "event_type": "im.chat.member.bot.added_v1"},
        "event": {"chat_id": "oc_chat"},
    }
    result = parse_event(payload)
    assert isinstance(result, Ignored)
    assert (result.event_id, result.event_type) == ("ev_x", "im.chat.member.bot.added_v1")
    assert "im.chat.member.bot.added_v1" in result.reason


def test_missing_message_id_is_an_error() -> None:
    with pytest.raises(EventError, match=r"ev_bad.*message_id"):
        parse_event(receive("text", {"text": "x"}, event_id="ev_bad", message_id=None))


def test_missing_event_id_and_invalid_json_are_errors() -> None:
    payload = receive("text", {"text": "x"})
    del payload["header"]["event_id"]
    with pytest.raises(EventError, match="event_id"):
        parse_event(payload)
    with pytest.raises(EventError, match="JSON"):
        parse_event(b"{not json")
    with pytest.raises(EventError):
        parse_event("[1, 2]")
    recall_header = {"event_id": "e", "event_type": "im.message.recalled_v1"}
    with pytest.raises(EventError, match="message_id"):
        parse_event({"header": recall_header, "event": {"chat_id": "oc"}})
    with pytest.raises(EventError, match="chat_id"):
        parse_event({"header": recall_header, "event": {"message_id": "om"}})


def test_preview() -> None:
    assert preview("第一行\r\n第二行\t\x00end") == "第一行 第二行 end"
    assert preview("a" * 40) == "a" * 40
    cut = preview("一二三四五六七八九十" * 5, limit=10)
    assert cut == "一二三四五六七八九…"
    assert len(cut) == 10
    assert preview("line\u2028sep") == "line sep"
    assert preview("anything", limit=0) == ""


def test_preview_of_a_huge_text_is_cut_before_it_is_cleaned() -> None:
    huge = "第一行\n" + "很长" * 1_000_000
    assert preview(huge) == preview("第一行\n" + "很长" * 30)
    assert len(preview(huge)) == 40
