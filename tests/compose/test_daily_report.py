"""Daily reports end to end: the real daemon, the emulator, aiosmtpd, and (for the
schedule) libfaketime as the controllable clock of the daemon process."""

from __future__ import annotations

import email.policy
import re
import textwrap
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from tests.feishu_emulator import FeishuEmulator
from tests.harness import Bot, mail_html, screenshot, wait_until
from tests.kit import Backend
from tests.smtp_server import SmtpServer

MakeBot = Callable[..., Bot]
SH = ZoneInfo("Asia/Shanghai")
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f80f0000010100005b1d3e2b0000000049454e44ae426082"
)
FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def report_config(mode: str = "manual", extra: str = "") -> str:
    return textwrap.dedent(f"""\
        daily_report:
          chat: oc_team
          recipients: [manager@example.com]
          mode: {mode}
          roster:
            - {{name: 张三, open_id: ou_alice}}
            - {{name: Bob, open_id: ou_bob}}
            - {{name: 王五, open_id: ou_carol}}
            - {{name: 赵六, open_id: ou_dave}}
        """) + textwrap.indent(extra, "  ")


def bot_with_reports(make_bot: MakeBot, emulator: FeishuEmulator, **kw: str) -> Bot:
    emulator.register_user("ou_carol", "王五")
    emulator.register_user("ou_mallory", "Mallory")
    emulator.register_resource("img_v2_report", PNG, "image/png")
    return make_bot(rules="- name: oncall\n  keywords: [故障]\n  to: [oncall@example.com]\n", **kw)


def mention_bot(emulator: FeishuEmulator, sender: str, command: str) -> dict[str, object]:
    return emulator.push_text(
        "oc_team", sender, f"@_user_1 {command}", mentions=[("ou_mailbot", "Mailbot")]
    )


def replies_to(emulator: FeishuEmulator, event: dict[str, object]) -> list[str]:
    message_id = event["event"]["message"]["message_id"]  # type: ignore[index]
    return [
        str(m["content"]["text"]) for m in emulator.sent_messages if m["reply_to"] == message_id
    ]


def post_team_reports(emulator: FeishuEmulator) -> None:
    first = emulator.push_text(
        "oc_team", "ou_alice", "日报：<script>alert(1)</script> & 登录页改版"
    )
    emulator.wait_ack(first)
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "#日报 补充：修复支付回调"))
    bob = emulator.push_text("oc_team", "ou_bob", "日报 发错了")
    emulator.wait_ack(bob)
    emulator.wait_ack(
        emulator.push_recall(bob["event"]["message"]["message_id"], "oc_team")  # type: ignore[index]
    )
    emulator.wait_ack(
        emulator.push_message(
            "oc_team",
            "ou_carol",
            "post",
            {
                "title": "【日报】数据看板",
                "content": [
                    [{"tag": "text", "text": "新增留存曲线", "style": ["bold"]}],
                    [{"tag": "img", "image_key": "img_v2_report"}],
                ],
            },
        )
    )
    emulator.wait_ack(emulator.push_text("oc_team", "ou_bob", "今天午饭吃什么"))


def test_manual_digest_dry_run_trigger_and_refusal(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, backend: Backend
) -> None:
    bot = bot_with_reports(make_bot, emulator, extra=report_config() + backend.config).start()
    post_team_reports(emulator)
    wait_until(lambda: len(emulator.reactions) >= 4, 15, "the acknowledging reactions")
    assert {r["emoji_type"] for r in emulator.reactions} == {"OK"}

    dry = bot.cli("send-report", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout
    assert "日报汇总" in out and "2/4 已提交" in out
    assert out.index("<script>alert(1)</script> & 登录页改版") < out.index("补充：修复支付回调")
    assert "新增留存曲线" in out
    assert "发错了" not in out and "午饭" not in out
    assert "未提交（2）：Bob、赵六" in out
    assert smtp.messages == []

    refused = mention_bot(emulator, "ou_mallory", "发送日报")
    wait_until(lambda: replies_to(emulator, refused), 15, "the refusal reply")
    assert "没有" in replies_to(emulator, refused)[0]
    time.sleep(1)
    assert smtp.messages == []

    trigger = mention_bot(emulator, "ou_alice", "发送日报")
    [digest_mail] = smtp.wait_for(1, timeout=20)
    wait_until(lambda: replies_to(emulator, trigger), 15, "the confirmation reply")
    assert "manager@example.com" in replies_to(emulator, trigger)[0]
    assert str(digest_mail["To"]) == "manager@example.com"
    assert re.search(
        r"日报汇总 \d{4}-\d{2}-\d{2} · 研发群 · 2/4 已提交", str(digest_mail["Subject"])
    )
    reparsed = email.message_from_bytes(smtp.received[0].raw, policy=email.policy.default)
    html_part = reparsed.get_body(preferencelist=("html",))
    assert html_part is not None
    html = html_part.get_content()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp;" in html
    cids = re.findall(r'src="cid:([^"]+)"', html)
    inline = [p for p in reparsed.walk() if p.get("Content-ID")]
    assert cids and {p["Content-ID"].strip("<>") for p in inline} >= set(cids)
    text_part = reparsed.get_body(preferencelist=("plain",))
    assert text_part is not None and "新增留存曲线" in text_part.get_content()

    again = mention_bot(emulator, "ou_alice", "发送日报")
    wait_until(lambda: replies_to(emulator, again), 15, "the already-sent reply")
    assert "已于" in replies_to(emulator, again)[0]
    late = emulator.push_text("oc_team", "ou_dave", "日报 迟到了")
    emulator.wait_ack(late)
    [_, supplement] = smtp.wait_for(2, timeout=20)
    assert "补充" in str(supplement["Subject"])
    time.sleep(1)
    assert len(smtp.messages) == 2
    bot.stop()


def test_a_resend_from_the_chat_is_rate_limited(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = bot_with_reports(make_bot, emulator, extra=report_config()).start()
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "日报：登录页改版"))
    first = mention_bot(emulator, "ou_alice", "发送日报")
    smtp.wait_for(1, timeout=20)
    wait_until(lambda: replies_to(emulator, first), 15, "the confirmation reply")
    again = mention_bot(emulator, "ou_alice", "重发日报")
    wait_until(lambda: replies_to(emulator, again), 15, "the refusal reply")
    assert replies_to(emulator, again) == ["该日的日报汇总刚刚发送过，请 10 分钟后再重发。"]
    bot.wait_log("digest resend for")
    time.sleep(1)
    assert len(smtp.messages) == 1
    # The operator is not rate-limited.
    forced = bot.cli("send-report", "--force")
    assert forced.returncode == 0, forced.stderr
    smtp.wait_for(2, timeout=20)
    assert bot.stop() == 0


def test_without_a_roster_nobody_may_resend_from_the_chat(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    config = "daily_report:\n  chat: oc_team\n  recipients: [manager@example.com]\n"
    bot = bot_with_reports(make_bot, emulator, extra=config).start()
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "日报：登录页改版"))
    first = mention_bot(emulator, "ou_mallory", "发送日报")  # anyone may ask once
    smtp.wait_for(1, timeout=20)
    wait_until(lambda: replies_to(emulator, first), 15, "the confirmation reply")
    again = mention_bot(emulator, "ou_mallory", "重发日报")
    wait_until(lambda: replies_to(emulator, again), 15, "the refusal reply")
    assert "daily_report.trigger_users 或 roster" in replies_to(emulator, again)[0]
    time.sleep(1)
    assert len(smtp.messages) == 1
    assert bot.stop() == 0


def faketime_env(moment: datetime) -> dict[str, str]:
    """libfaketime: the daemon's wall clock starts at `moment` and runs on from there."""
    stamp = moment.astimezone(ZoneInfo("UTC")).strftime("@%Y-%m-%d %H:%M:%S")
    return {
        "LD_PRELOAD": FAKETIME,
        "FAKETIME": stamp,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "TZ": "UTC",
    }


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def today_in_shanghai() -> date:
    return (datetime.now(SH) - timedelta(hours=4)).date()  # the report day (cutoff 04:00)


def test_scheduled_digest_goes_once_and_catches_up_after_downtime(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, backend: Backend
) -> None:
    day = today_in_shanghai()
    at = datetime.combine(day, datetime.strptime("23:00", "%H:%M").time(), SH)
    weekday = WEEKDAYS[day.weekday()]
    bot = bot_with_reports(
        make_bot,
        emulator,
        extra=report_config("scheduled", f'at: "23:00"\nweekdays: [{weekday}]\n') + backend.config,
    )
    # The daemon's clock starts 8 s before the scheduled minute; Feishu's agrees.
    emulator.run_clock_from(at - timedelta(seconds=8))
    bot.start(env=faketime_env(at - timedelta(seconds=8)))
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "日报 按时发送的一天"))
    [scheduled] = smtp.wait_for(1, timeout=40)
    assert f"日报汇总 {day.isoformat()}" in str(scheduled["Subject"])
    assert "1/4 已提交" in str(scheduled["Subject"])
    time.sleep(8)  # more ticks of the schedule: still one digest
    assert len(smtp.messages) == 1
    bot.stop()
    # Restarted later the same evening: the day's digest is not sent again.
    bot.start(env=faketime_env(at + timedelta(minutes=30)))
    time.sleep(8)
    assert len(smtp.messages) == 1
    bot.stop()


def test_catch_up_when_stopped_across_the_scheduled_minute(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    day = today_in_shanghai()
    at = datetime.combine(day, datetime.strptime("22:00", "%H:%M").time(), SH)
    weekday = WEEKDAYS[day.weekday()]
    bot = bot_with_reports(
        make_bot,
        emulator,
        extra=report_config("scheduled", f'at: "22:00"\nweekdays: [{weekday}]\n'),
    )
    emulator.run_clock_from(at - timedelta(minutes=10))
    bot.start(env=faketime_env(at - timedelta(minutes=10)))
    emulator.wait_ack(emulator.push_text("oc_team", "ou_carol", "日报 停机前提交"))
    bot.stop()  # down across 22:00
    bot.start(env=faketime_env(at + timedelta(minutes=50)))
    [catch_up] = smtp.wait_for(1, timeout=40)
    assert f"日报汇总 {day.isoformat()}" in str(catch_up["Subject"])
    time.sleep(8)
    bot.stop()
    bot.start(env=faketime_env(at + timedelta(minutes=55)))
    time.sleep(8)
    assert len(smtp.messages) == 1
    bot.stop()


def test_digest_screenshot_in_headless_chromium(tmp_path: Path) -> None:
    """Renders the sample digest as a manager's mail client would show it (README image)."""
    from tests.mail.test_daily_report import compose, reparse, sample_digest

    sample = sample_digest()
    message = reparse(compose(sample.digest, dict(sample.images)))
    png = screenshot(mail_html(message), "digest", tmp_path)
    assert len(png) > 20_000


def test_immediate_mode_mails_each_report_as_it_arrives(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot_with_reports(
        make_bot, emulator, extra=report_config("immediate", "acknowledge: reply\n")
    ).start()
    report = emulator.push_text("oc_team", "ou_carol", "【日报】今天修好了告警")
    [mail] = smtp.wait_for(1, timeout=20)
    assert str(mail["To"]) == "manager@example.com"
    assert "今天修好了告警" in mail.get_body(preferencelist=("plain",)).get_content()
    wait_until(lambda: replies_to(emulator, report), 15, "the acknowledging reply")
    assert "已收到" in replies_to(emulator, report)[0]
    emulator.wait_ack(emulator.push_text("oc_team", "ou_bob", "不是日报"))
    time.sleep(1)
    assert len(smtp.messages) == 1
