"""Every message type people post reaches the mail readable, text and HTML, end to end.

Each case pushes the content shape of Feishu's open-platform document 接收消息内容结构
(https://open.feishu.cn/document/server-docs/im-v1/message-content-description/message_content;
the examples are that document's, with readable values) through the emulator, over the
real long connection, to the real daemon, and reads the mail aiosmtpd received. Merged
forwards are expanded through 获取指定消息的内容 (GET /open-apis/im/v1/messages/{id}),
which the emulator serves with the nested tree.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from feishu_mailbot.compose import names
from feishu_mailbot.compose.lookups import Lookups
from feishu_mailbot.compose.names import RETRY_SECONDS, NameResolver
from feishu_mailbot.config import load
from feishu_mailbot.core.model import Text
from feishu_mailbot.feishu import expand
from feishu_mailbot.feishu.rest import FeishuApi
from feishu_mailbot.state import State
from tests import conftest
from tests.feishu_emulator import FeishuEmulator
from tests.harness import (
    SMTP_PASSWORD,
    SMTP_USER,
    Bot,
    body_of,
    mail_html,
    screenshot,
    wait_until,
    write_config,
)
from tests.mail.test_daily_report import png
from tests.smtp_server import SmtpServer

EVERYTHING = "- name: all\n  regex: '(?s).'\n  to: [all@example.com]\n"
T0 = "1764558000000"  # 2025-12-01 11:00 in Asia/Shanghai
T1 = "1764561600000"  # 12:00


@dataclass(frozen=True)
class Case:
    msg_type: str
    content: Any
    text: tuple[str, ...]  # in the text/plain part, in this order
    html: tuple[str, ...] = ()  # in the HTML part
    attachment: str | None = None  # an attached file of this name
    inline_image: bool = False
    mentions: tuple[str, ...] = ()
    not_in_text: tuple[str, ...] = field(default=())


POST = {  # the document's post example, its keys and ids made real
    "title": "我是一个标题",
    "content": [
        [
            {"tag": "text", "text": "第一行 :", "style": ["bold", "underline"]},
            {"tag": "a", "href": "http://www.feishu.cn", "text": "超链接", "style": ["bold"]},
            {"tag": "at", "user_id": "@_user_1", "user_name": "", "style": []},
        ],
        [{"tag": "img", "image_key": "img_post"}],
        [{"tag": "emotion", "emoji_type": "SMILE"}],
        [{"tag": "hr"}],
        [{"tag": "code_block", "language": "GO", "text": "func main() int64 {\n    return 0\n}"}],
        [{"tag": "media", "file_key": "file_post_video", "image_key": "img_cover"}],
    ],
}
CARD = {  # the document's interactive example (received cards are simplified like this)
    "title": "发布审批",
    "elements": [
        [
            {"tag": "button", "text": "主按钮", "type": "primary"},
            {"tag": "button", "text": "查看流水线", "url": "https://ci.example.com/p/42"},
        ],
        [
            {"tag": "a", "href": "https://www.feishu.cn", "text": "飞书"},
            {"tag": "text", "text": "整合即时沟通、日历，"},
            {"tag": "at", "user_id": "@_user_1", "user_name": ""},
            {"tag": "text", "text": "更高效、更愉悦。"},
        ],
        [{"tag": "hr"}],
        [{"tag": "text", "text": "图片标题"}, {"tag": "img", "image_key": "img_card"}],
        [{"tag": "note", "elements": [{"tag": "text", "text": "备注信息"}]}],
        [
            {"tag": "text", "text": "环境："},
            {"tag": "select_static", "options": ["测试", "生产"], "placeholder": "请选择"},
        ],
        [{"tag": "date_picker", "placeholder": "请选择日期", "initial_date": "2021-1-1"}],
    ],
}
# fmt: off
CASES = [
    Case("text", {"text": "@_user_1 文本消息 [飞书开放平台](https://open.feishu.cn)"},
         ("@Bob 文本消息 飞书开放平台 (https://open.feishu.cn)",),
         ('<a href="https://open.feishu.cn">飞书开放平台</a>',), mentions=("ou_bob",)),
    Case("post", POST,
         ("我是一个标题", "第一行 :超链接 (http://www.feishu.cn)@Bob", "[图片]", "[SMILE]",
          "----------", "func main() int64 {", "[视频]"),
         ("<u><b>第一行 :</b></u>", "cid:img_post", "<hr", "<pre", 'data-language="GO"'),
         attachment="media-file_post_video.mp4", inline_image=True, mentions=("ou_bob",)),
    Case("image", {"image_key": "img_photo"}, ("[图片]",), ("cid:img_photo",), inline_image=True),
    Case("file", {"file_key": "file_report", "file_name": "季度报告.pdf"},
         ("[文件] 季度报告.pdf",), attachment="季度报告.pdf"),
    Case("folder", {"file_key": "folder_key", "file_name": "设计稿"},
         ("[文件夹] 设计稿（请在飞书中打开）",)),
    Case("audio", {"file_key": "file_voice", "duration": 2000}, ("[语音 2秒]",),
         attachment="audio-file_voice.ogg"),
    Case("media", {"file_key": "file_video", "image_key": "img_x", "file_name": "测试视频.mp4",
                   "duration": 2000}, ("[视频] 测试视频.mp4",), attachment="测试视频.mp4"),
    Case("sticker", {"file_key": "sticker_key"}, ("[表情包]",)),
    Case("interactive", CARD,
         ("[卡片] 发布审批", "[主按钮]", "[查看流水线] (https://ci.example.com/p/42)",
          "飞书 (https://www.feishu.cn)整合即时沟通、日历，@Bob更高效、更愉悦。", "----------",
          "图片标题[图片]", "备注信息", "环境：[请选择: 测试 / 生产]", "[2021-1-1]"),
         # 获取消息中的资源文件 gives no card's images (234043): a note in the image's place
         ("发布审批", '<a href="https://ci.example.com/p/42">[查看流水线]</a>', "[图片未能下载]"),
         mentions=("ou_bob",)),
    Case("hongbao", {"text": "[红包]"}, ("[红包]",)),
    Case("share_calendar_event", {"summary": "周会", "start_time": T0, "end_time": T1},
         ("[日程分享] 周会", "时间: 2025-12-01 11:00 – 12:00")),
    Case("calendar", {"summary": "评审邀请", "start_time": T0, "end_time": T1},
         ("[日程邀请] 评审邀请", "时间: 2025-12-01 11:00 – 12:00")),
    Case("general_calendar", {"summary": "日程转让", "start_time": T0, "end_time": T1},
         ("[日程] 日程转让", "时间: 2025-12-01 11:00 – 12:00")),
    Case("share_chat", {"chat_id": "oc_shared"}, ("[群名片] 运维值班群",), not_in_text=("oc_",)),
    Case("share_user", {"user_id": "ou_bob"}, ("[个人名片] Bob",), not_in_text=("ou_",)),
    Case("system", {"template": "{from_user} invited {to_chatters} to this chat.",
                    "from_user": ["botName"], "to_chatters": ["小明", "小王", "小红"]},
         ("[系统消息] botName invited 小明、小王、小红 to this chat.",)),
    Case("location", {"name": "北京市海淀区", "longitude": "116.31", "latitude": "39.98"},
         ("[位置] 北京市海淀区", "经度 116.31，纬度 39.98")),
    Case("video_chat", {"topic": "故障复盘会", "start_time": T0},
         ("[视频会议] 故障复盘会", "开始: 2025-12-01 11:00")),
    Case("todo", {"task_id": "acd096a5", "summary": {"title": "", "content": [
        [{"tag": "text", "text": "多吃水果，多运动，健康生活，快乐工作。"}]]}, "due_time": T1},
         ("[任务]", "多吃水果，多运动，健康生活，快乐工作。", "截止: 2025-12-01 12:00")),
    Case("vote", {"topic": "团建去哪", "options": ["爬山", "露营", "密室"]},
         ("[投票] 团建去哪", "○ 爬山", "○ 露营", "○ 密室")),
]
# fmt: on
CASE_IDS = [c.msg_type for c in CASES]


def parts(mail: EmailMessage) -> tuple[str, str]:
    text, html = mail.get_body(("plain",)), mail.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


def assert_in_order(haystack: str, needles: tuple[str, ...]) -> None:
    pos = 0
    for needle in needles:
        found = haystack.find(needle, pos)
        assert found >= 0, f"{needle!r} not found (in order) in:\n{haystack}"
        pos = found + len(needle)


@dataclass
class World:
    emulator: FeishuEmulator
    smtp: SmtpServer
    bot: Bot

    def mail_for(self, message_id: str, timeout: float = 15.0) -> EmailMessage:
        def find() -> EmailMessage | None:
            for m in self.smtp.messages:
                if m["X-Feishu-Message-Id"] == message_id:
                    return m
            return None

        wait_until(lambda: find() is not None, timeout, f"the mail of {message_id}")
        found = find()
        assert found is not None
        return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One daemon for every case: each case is one message and its own mail."""
    directory = tmp_path_factory.mktemp("types")
    emulator = FeishuEmulator(ping_interval=2, reconnect_interval=1).start()
    emulator.register_chat("oc_team", "研发群")
    emulator.register_chat("oc_shared", "运维值班群")
    emulator.register_user("ou_alice", "张三")
    emulator.register_user("ou_bob", "Bob")
    emulator.register_user("ou_carol", "李四")
    for key in ("img_post", "img_photo", "img_card", "img_in_forward"):
        emulator.register_resource(key, png(), "image/png")
    emulator.register_resource("file_report", b"%PDF-1.4 report", "application/pdf", "季度报告.pdf")
    emulator.register_resource("file_voice", b"OggS voice", "audio/ogg")
    emulator.register_resource("file_video", b"\x00\x00\x00 ftypmp4", "video/mp4", "测试视频.mp4")
    emulator.register_resource("file_post_video", b"\x00\x00\x00 ftypmp4", "video/mp4")
    smtp = SmtpServer(require_auth=(SMTP_USER, SMTP_PASSWORD)).start()
    path = write_config(
        directory, feishu_url=emulator.base_url, smtp_port=smtp.port, rules=EVERYTHING
    )
    bot = Bot(path, directory).start()
    try:
        yield World(emulator, smtp, bot)
    finally:
        assert bot.stop() == 0
        conftest._logs.extend(directory.glob("daemon-*.log"))
        smtp.stop()
        emulator.stop()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_type_is_mailed_readable(world: World, case: Case) -> None:
    pushed = world.emulator.push_message(
        "oc_team", "ou_alice", case.msg_type, case.content, mentions=list(case.mentions)
    )
    mail = world.mail_for(pushed["event"]["message"]["message_id"])
    text, html = parts(mail)
    assert_in_order(text, case.text)
    assert_in_order(html, case.html)
    for absent in case.not_in_text:
        assert absent not in text
    assert "[不支持的消息类型" not in text and "<script" not in html
    files = [p for p in mail.walk() if p.get_content_disposition() == "attachment"]
    if case.attachment:
        assert [p.get_filename() for p in files] == [case.attachment]
    else:
        assert files == []
    inline = [p for p in mail.walk() if p.get_content_disposition() == "inline"]
    assert bool(inline) == case.inline_image
    assert mail["Subject"]  # a subject from the readable text, never empty


# fmt: off
FORWARD = [
    {"sender": "ou_bob", "msg_type": "text", "content": {"text": "线上 500 了，谁在看？"}},
    {"sender": "ou_carol", "msg_type": "post", "content": {"title": "", "content": [
        [{"tag": "text", "text": "我在看，"}, {"tag": "at", "user_id": "@_user_1",
                                               "user_name": "Bob"}]]},
     "mentions": [{"key": "@_user_1", "id": "ou_bob", "name": "Bob"}]},
    {"sender": "ou_carol", "msg_type": "image", "content": {"image_key": "img_in_forward"}},
    {"sender": "cli_monitor", "sender_type": "app", "msg_type": "interactive",
     "content": {"title": "告警恢复", "elements": [[{"tag": "text", "text": "5xx 已回落"}]]}},
    {"sender": "ou_bob", "msg_type": "merge_forward", "children": [
        {"sender": "ou_alice", "msg_type": "text", "content": {"text": "更早的讨论"}},
    ]},
    {"sender": "ou_bob", "msg_type": "text", "content": {}, "deleted": True},
]
# fmt: on


def test_a_merged_forward_is_mailed_as_the_conversation(world: World) -> None:
    pushed = world.emulator.push_forward("oc_team", "ou_alice", FORWARD)
    forward_id = pushed["event"]["message"]["message_id"]
    mail = world.mail_for(forward_id)
    assert "[合并转发消息] Bob: 线上 500 了，谁在看？" in str(mail["Subject"])
    text, html = parts(mail)
    assert_in_order(
        text,
        (
            "[合并转发消息]",
            "> Bob · ",
            ">   线上 500 了，谁在看？",
            "> 李四 · ",
            ">   我在看，@Bob",
            "> 李四 · ",
            ">   [图片]",
            "> 机器人 · ",
            ">   [卡片] 告警恢复",
            ">   5xx 已回落",
            "> Bob · ",
            ">   [合并转发消息]",
            ">   > 张三 · ",
            ">   >   更早的讨论",
            "> Bob · ",
            ">   [此消息已撤回或删除]",
        ),
    )
    assert_in_order(html, ("<b>Bob</b>", "线上 500 了", "<b>李四</b>", "[图片未能下载]"))
    assert html.count("border-left:3px") >= 2  # the nested forward is a quote in a quote
    # The image inside is asked for with the forward's own id; Feishu answers 234043 ("暂不
    # 支持获取合并转发消息中的子消息…的资源文件"), so it is a note and the mail goes out.
    assert (forward_id, "img_in_forward") in world.emulator.resource_requests
    assert "not given by Feishu, the mail goes without it" in world.bot.current_log()


def test_a_file_inside_a_forward_is_named_since_feishu_gives_none(world: World) -> None:
    child = {"sender": "ou_bob", "msg_type": "file",
             "content": {"file_key": "file_report", "file_name": "季度报告.pdf"}}  # fmt: skip
    pushed = world.emulator.push_forward("oc_team", "ou_alice", [child])
    mail = world.mail_for(pushed["event"]["message"]["message_id"])
    text, html = parts(mail)
    assert ">   [文件] 季度报告.pdf" in text
    assert "附件未随邮件发送，请在飞书中查看:\n- 季度报告.pdf (飞书不提供下载)" in text
    assert "季度报告.pdf (飞书不提供下载)" in html
    assert not [p for p in mail.walk() if p.get_content_disposition() == "attachment"]


def test_a_forward_feishu_will_not_expand_is_mailed_with_a_note(world: World) -> None:
    forward_id = "om_forward_refused"
    world.emulator.fail_message(forward_id, 230027, "Lack of necessary permissions")
    world.emulator.push_forward("oc_team", "ou_alice", FORWARD[:1], message_id=forward_id)
    text, html = parts(world.mail_for(forward_id))
    assert "[合并转发消息]" in text
    assert "未能展开合并转发的内容（飞书错误码 230027），请在飞书中查看" in text
    assert "线上 500" not in text and "请在飞书中查看" in html
    assert "merged forward not expanded" in world.bot.current_log()


def test_a_forward_waits_out_a_network_failure_then_falls_back(world: World) -> None:
    """Dropped connections: the mail waits and retries; after LOOKUP_ATTEMPTS it goes out
    with a note; healed in between, it carries the conversation."""
    healed, broken = "om_forward_healed", "om_forward_broken"
    for forward_id in (healed, broken):
        world.emulator.fail_message(forward_id, -1)
        world.emulator.push_forward("oc_team", "ou_alice", FORWARD[:1], message_id=forward_id)
    path = f"/open-apis/im/v1/messages/{healed}"
    wait_until(lambda: world.emulator.rest_calls[path] >= 1, 15, "the first attempt")
    world.emulator.fail_message(healed, None)  # at least 0.6 s before its last attempt
    text, _ = parts(world.mail_for(healed))
    assert "线上 500 了，谁在看？" in text
    text, _ = parts(world.mail_for(broken))
    assert "未能展开合并转发的内容（无法连接飞书），请在飞书中查看" in text
    assert "线上 500" not in text
    assert "cannot expand the merged forward" in world.bot.current_log()


def test_a_rate_limit_makes_the_mail_wait_and_go_out_whole(world: World) -> None:
    """频控策略's 429 / 99991400 is about the call, not the message: the file and the
    forwarded conversation are asked for again, not left out of the mail."""
    emulator = world.emulator
    emulator.register_resource("file_limited", b"%PDF-1.4 limited", "application/pdf", "限流.pdf")
    emulator.fail_resource("file_limited")
    forward_id = "om_forward_limited"
    emulator.fail_message(forward_id, 99991400, "request trigger frequency limit", 429)
    pushed = emulator.push_message(
        "oc_team", "ou_alice", "file", {"file_key": "file_limited", "file_name": "限流.pdf"}
    )
    emulator.push_forward("oc_team", "ou_alice", FORWARD[:1], message_id=forward_id)
    file_id = pushed["event"]["message"]["message_id"]
    wait_until(lambda: (file_id, "file_limited") in emulator.resource_requests, 15, "a download")
    wait_until(
        lambda: emulator.rest_calls[f"/open-apis/im/v1/messages/{forward_id}"] >= 1, 15, "a GET"
    )
    emulator.fail_resource("file_limited", None)
    emulator.fail_message(forward_id, None)
    files = [p.get_filename() for p in world.mail_for(file_id).iter_attachments()]
    assert files == ["限流.pdf"]
    text, _ = parts(world.mail_for(forward_id))
    assert "线上 500 了，谁在看？" in text and "飞书错误码" not in text


def test_a_forward_asks_only_the_names_it_shows_a_few_at_a_time(world: World) -> None:
    """1,500 messages from 1,500 people: the mail shows 50, so 50 names are asked for
    (not 1,500), never more than NAME_LOOKUPS at once."""
    emulator = world.emulator
    senders = [f"ou_many_{n}" for n in range(1500)]
    for n, open_id in enumerate(senders):
        emulator.register_user(open_id, f"同事{n}")
    children = [
        {"sender": open_id, "msg_type": "text", "content": {"text": f"第 {n} 条"}}
        for n, open_id in enumerate(senders)
    ]
    emulator.user_delay = 0.02  # answers overlap, so concurrency shows
    emulator.user_in_flight_max = 0
    try:
        pushed = emulator.push_forward("oc_team", "ou_alice", children)
        text, _ = parts(world.mail_for(pushed["event"]["message"]["message_id"], timeout=60))
    finally:
        emulator.user_delay = 0.0
    assert "> 同事0 · " in text and "> 同事49 · " in text and "同事50 " not in text
    assert "另有 1450 条消息未显示" in text
    asked = sum(emulator.user_requests[u] for u in senders)
    assert asked <= expand.MAX_ITEMS + 2, f"{asked} user-info requests for 50 names shown"
    assert 1 <= emulator.user_in_flight_max <= names.NAME_LOOKUPS


def test_a_rate_limited_name_makes_the_forward_wait(world: World) -> None:
    """频控策略's 429 / 99991400 on a name is about the call: the mail waits and is sent
    with the name, not with an open_id for good."""
    emulator = world.emulator
    emulator.register_user("ou_limited", "限流者")
    emulator.fail_user("ou_limited")
    child = {"sender": "ou_limited", "msg_type": "text", "content": {"text": "我被限流了"}}
    pushed = emulator.push_forward("oc_team", "ou_alice", [child])
    forward_id = pushed["event"]["message"]["message_id"]
    wait_until(lambda: emulator.user_requests["ou_limited"] >= 1, 15, "a user-info request")
    emulator.fail_user("ou_limited", None)  # at least 0.6 s before its last attempt
    text, _ = parts(world.mail_for(forward_id))
    assert "> 限流者 · " in text and "ou_limited" not in text
    assert emulator.user_requests["ou_limited"] >= 2


def test_an_oversized_text_is_acked_and_mailed_cut_with_a_note(world: World) -> None:
    """发送消息 takes at most 150 KB of text (30 KB for a post or card), so an event whose
    body is over the stored cap (256 KiB) is odd or hostile: it is acknowledged at once,
    not quarantined, and mailed cut on a character boundary, with a note saying so."""
    text = "开头：" + "数据𝄞😀" * 40_000 + "结尾：最后一句"  # ≈560 kB of UTF-8, 4-byte ones too
    pushed = world.emulator.push_text("oc_team", "ou_alice", text, split=2)
    ack = world.emulator.wait_ack(pushed)
    assert ack.code == 200 and ack.ms < 1000, ack
    mail, html = parts(world.mail_for(pushed["event"]["message"]["message_id"]))
    assert "\ufffd" not in mail and "\ufffd" not in html
    body = mail[mail.index("开头：") :]
    assert "内容过长，已截断" in body and "truncated" in body and "结尾" not in body
    assert "内容过长，已截断" in html
    kept = body[: body.index("\n…（内容过长")]
    assert text.startswith(kept) and 60_000 < len(kept) < len(text)
    log = world.bot.current_log()
    assert "over the 262144-byte cap" in log and "quarantined" not in log


def test_a_forward_is_cut_at_the_caps(world: World) -> None:
    many = [
        {"sender": "ou_bob", "msg_type": "text", "content": {"text": f"第 {n} 条"}}
        for n in range(60)
    ]
    deep: dict[str, Any] = {"sender": "ou_bob", "msg_type": "text", "content": {"text": "最深处"}}
    for _ in range(4):
        deep = {"sender": "ou_bob", "msg_type": "merge_forward", "children": [deep]}
    pushed = world.emulator.push_forward("oc_team", "ou_alice", [*many, deep])
    text, _ = parts(world.mail_for(pushed["event"]["message"]["message_id"]))
    assert "第 49 条" in text and "第 50 条" not in text
    assert "另有 11 条消息未显示" in text
    pushed = world.emulator.push_forward("oc_team", "ou_alice", [deep])
    text, _ = parts(world.mail_for(pushed["event"]["message"]["message_id"]))
    assert "嵌套过深" in text and "最深处" not in text


def test_a_card_feishu_does_not_deliver_says_so(world: World) -> None:
    """A JSON 2.0 card arrives as the upgrade notice ("暂不支持返回 JSON 2.0 卡片的具体内容")."""
    content = {
        "title": "",
        "elements": [[{"tag": "text", "text": "请升级至最新版本客户端，以查看内容"}]],
    }
    pushed = world.emulator.push_message("oc_team", "ou_alice", "interactive", content)
    text, _ = parts(world.mail_for(pushed["event"]["message"]["message_id"]))
    assert "[卡片]" in text and "飞书未随消息提供这张卡片的内容，请在飞书中查看" in text
    assert "请升级" not in text


def test_a_quote_of_a_message_the_bot_never_stored_is_fetched(world: World) -> None:
    """The message replied to predates the bot: 获取指定消息的内容 gives it for the quote."""
    old = world.emulator.build_message_event("oc_team", "ou_carol", "text", {"text": "旧消息"})
    old_id = old["event"]["message"]["message_id"]
    world.emulator.remember_message(old)
    reply = world.emulator.push_message(
        "oc_team", "ou_bob", "text", {"text": "回复旧消息"}, root_id=old_id, parent_id=old_id
    )
    text, _ = parts(world.mail_for(reply["event"]["message"]["message_id"]))
    assert "> 李四: 旧消息" in text
    again = world.emulator.push_message(
        "oc_team", "ou_alice", "text", {"text": "我也回复"}, root_id=old_id, parent_id=old_id
    )
    text, _ = parts(world.mail_for(again["event"]["message"]["message_id"]))
    assert "> 李四: 旧消息" in text
    assert world.emulator.rest_calls[f"/open-apis/im/v1/messages/{old_id}"] == 1  # kept


CI_CARD = {  # what a CI bot posts: the card's own JSON, header template red
    "schema": "2.0",
    "header": {
        "title": {"tag": "plain_text", "content": "构建失败：feishu-mailbot #1287"},
        "subtitle": {"tag": "plain_text", "content": "main 分支 · 提交 26e813d · 耗时 6 分 12 秒"},
        "template": "red",
    },
    "body": {
        "elements": [
            {"tag": "markdown", "content": "**失败的任务**：test (py3.11)\n**原因**：2 个测试失败"},
            {"tag": "markdown", "content": "详情见 [构建日志](https://ci.example.com/b/1287)"},
            {"tag": "hr"},
            {"tag": "button", "text": {"tag": "plain_text", "content": "重新运行"},
             "behaviors": [{"type": "callback", "value": {"rerun": 1287}}]},
            {"tag": "button", "text": {"tag": "plain_text", "content": "打开流水线"},
             "multi_url": {"url": "https://ci.example.com/p/1287"}},
        ]
    },
}  # fmt: skip


def test_a_quote_feishu_will_not_give_is_left_out_once(world: World) -> None:
    missing = "om_never_seen"
    world.emulator.fail_message(missing, 230110, "message deleted")
    for n in range(2):
        reply = world.emulator.push_message(
            "oc_team", "ou_bob", "text", {"text": f"回复 {n}"}, root_id=missing, parent_id=missing
        )
        text, _ = parts(world.mail_for(reply["event"]["message"]["message_id"]))
        assert f"回复 {n}" in text and "\n> " not in text  # the mail, without a quote
    assert world.emulator.rest_calls[f"/open-apis/im/v1/messages/{missing}"] == 1


def test_a_quote_feishu_could_not_give_is_asked_for_again_later(
    tmp_path: Path, emulator: FeishuEmulator
) -> None:
    """Feishu unreachable: the replies meanwhile go without the quote for one call; once
    RETRY_SECONDS have passed it is asked again, and what it then gives is kept."""
    s = load.load(str(write_config(tmp_path, feishu_url=emulator.base_url, smtp_port=9)))
    emulator.register_user("ou_carol", "李四")
    old = emulator.build_message_event("oc_team", "ou_carol", "text", {"text": "旧消息"})
    old_id = old["event"]["message"]["message_id"]
    emulator.remember_message(old)
    emulator.fail_message(old_id, -1)  # the connection drops
    state = State(tmp_path / "state" / "feishu-mailbot.db", daemon=True)
    now = [1_800_000_000.0]
    api = FeishuApi(s.feishu)
    lookups = Lookups(api, NameResolver(s, state, api, lambda: now[0]), lambda: now[0])
    zone = ZoneInfo("Asia/Shanghai")

    async def main() -> None:
        assert await lookups.replied(old_id, zone) == ("", None)
        asked = emulator.rest_calls[f"/open-apis/im/v1/messages/{old_id}"]
        now[0] += RETRY_SECONDS - 1
        assert await lookups.replied(old_id, zone) == ("", None)  # kept: no second call
        assert emulator.rest_calls[f"/open-apis/im/v1/messages/{old_id}"] == asked
        emulator.fail_message(old_id, None)  # Feishu is back
        now[0] += 2
        name, found = await lookups.replied(old_id, zone)
        assert name == "李四" and found is not None and found.blocks == (Text("旧消息"),)
        now[0] += 30 * 86400
        assert await lookups.replied(old_id, zone) == (name, found)  # kept while in the cache
        assert emulator.rest_calls[f"/open-apis/im/v1/messages/{old_id}"] == asked + 1

    try:
        asyncio.run(main())
    finally:
        state.close()


def test_readme_pictures_in_headless_chromium(world: World, tmp_path: Path) -> None:
    """A forwarded card, an expanded merged forward, and a thread of three replies as a
    mail client shows them: test-output/{card,merged-forward,thread}.png (README)."""
    emulator = world.emulator
    card = emulator.push_message("oc_team", "ou_alice", "interactive", CI_CARD)
    card_mail = world.mail_for(card["event"]["message"]["message_id"])
    assert len(screenshot(mail_html(card_mail), "card", tmp_path, "760,420")) > 20_000

    forward = emulator.push_forward("oc_team", "ou_alice", FORWARD[:5])
    forward_mail = world.mail_for(forward["event"]["message"]["message_id"])
    assert len(screenshot(mail_html(forward_mail), "merged-forward", tmp_path, "760,600")) > 20_000

    root = emulator.push_text("oc_team", "ou_alice", "支付接口超时，正在排查")
    root_id = root["event"]["message"]["message_id"]
    thread, parent = [world.mail_for(root_id)], root_id
    for who, text in [("ou_bob", "数据库连接池满了"), ("ou_carol", "已扩容，观察中"),
                      ("ou_alice", "恢复了，谢谢")]:  # fmt: skip
        reply = emulator.push_message(
            "oc_team", who, "text", {"text": text}, root_id=root_id, parent_id=parent
        )
        parent = reply["event"]["message"]["message_id"]
        thread.append(world.mail_for(parent))
    for n, mail in enumerate(thread[1:], 1):
        assert str(mail["In-Reply-To"]) == str(thread[n - 1]["Message-ID"])
        assert str(mail["References"]).split()[0] == str(thread[0]["Message-ID"])
        assert str(mail["Subject"]) == "Re: " + str(thread[0]["Subject"])
    assert len(screenshot(thread_page(thread), "thread", tmp_path, "760,990")) > 20_000


def thread_page(mails: list[EmailMessage]) -> str:
    """The mails one under another, each under the headers a client threads them by."""
    from feishu_mailbot.mail.html import escape

    out = []
    for n, mail in enumerate(mails):
        headers = "".join(
            f"<div><b>{name}:</b> {escape(str(mail[name]))}</div>"
            for name in ("Subject", "Date", "In-Reply-To")
            if mail[name] is not None
        )
        out.append(
            f'<div style="margin:0 0 12px {24 * min(n, 1)}px;background:#fff;'
            'border:1px solid #dee0e3;border-radius:6px">'
            '<div style="font:12px sans-serif;color:#646a73;padding:8px 12px;'
            f'border-bottom:1px solid #dee0e3">{headers}</div>{body_of(mail_html(mail))}</div>'
        )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head>'
        f'<body style="margin:0;padding:12px;background:#f5f6f7">{"".join(out)}</body></html>'
    )


def test_the_case_table_covers_every_type_of_the_document() -> None:
    documented = {
        "text", "post", "image", "file", "folder", "audio", "media", "sticker", "interactive",
        "hongbao", "share_calendar_event", "calendar", "general_calendar", "share_chat",
        "share_user", "system", "location", "video_chat", "todo", "vote", "merge_forward",
    }  # fmt: skip
    from feishu_mailbot.feishu.events import CONTENT

    assert set(CONTENT) == documented
    assert {c.msg_type for c in CASES} | {"merge_forward"} == documented
