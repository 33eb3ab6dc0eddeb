"""Daily-report decisions: what counts, which day, triggers, grouping and the schedule."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import pytest

from feishu_mailbot.core.daily_report import (
    RESEND_INTERVAL,
    RESENDS_PER_DAY,
    Entry,
    ReportSettings,
    RosterMember,
    Trigger,
    build_digest,
    due_days,
    is_report,
    kept_days,
    may_trigger,
    next_scheduled,
    parse_trigger,
    report_day,
    resend_refusal,
    scheduled_at,
    window_refusal,
)
from feishu_mailbot.core.model import Break, Mention, Message, Text, Title

SH = ZoneInfo("Asia/Shanghai")
CHAT = "oc_team"
BOT = Mention("@_user_1", "日报机器人", "ou_bot")
ROSTER = (
    RosterMember("张三", "ou_zhang"),
    RosterMember("李四", "ou_li"),
    RosterMember("王五", "ou_wang"),
)
S = ReportSettings(chat=CHAT, recipients=("boss@example.com",))
SCHEDULED = replace(S, mode="scheduled")


def ms(year: int, month: int, day: int, hour: int = 12, minute: int = 0, tz: str = "") -> int:
    zone = ZoneInfo(tz) if tz else SH
    return int(datetime(year, month, day, hour, minute, tzinfo=zone).timestamp() * 1000)


def sh(year: int, month: int, day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=SH)


_counter = iter(range(1, 10_000))


def msg(
    text: str,
    *,
    sender: str = "ou_zhang",
    msg_type: str = "text",
    chat: str = CHAT,
    when: int | None = None,
    mentions: tuple[Mention, ...] = (),
    title: str = "",
    sender_type: str = "user",
    message_id: str = "",
) -> Message:
    n = next(_counter)
    return Message(
        event_id=f"ev_{n}",
        message_id=message_id or f"om_{n}",
        chat_id=chat,
        chat_type="group",
        sender_open_id=sender,
        sender_type=sender_type,
        msg_type=msg_type,
        create_time_ms=ms(2026, 11, 23) if when is None else when,
        # A post's title is the first line of its text.
        blocks=(Title(title), Break(), Text(text[len(title) + 1 :])) if title else (Text(text),),
        mentions=mentions,
    )


# --------------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    "text",
    [
        "日报 2026-11-23\n1. 完成登录页",
        "#日报 今天修了三个 bug",
        "＃日报 全角井号",
        "【日报】11月23日",
        "  \n日报：前面有空白",
        "日报",
    ],
)
def test_prefixes_match(text: str) -> None:
    assert is_report(msg(text), S)


@pytest.mark.parametrize(
    "text",
    [
        "我的日报在哪",
        "今天的日报晚点交",
        "报日",
        "",
        "发送日报",
        "# 日报 (space breaks the prefix)",
    ],
)
def test_non_reports_do_not_match(text: str) -> None:
    assert not is_report(msg(text), S)


def test_prefix_after_leading_mentions() -> None:
    boss = Mention("@_user_2", "老板", "ou_boss")
    assert is_report(msg("@老板 @所有人 日报 今天上线", mentions=(boss,)), S)
    # An @ that is not a real mention is part of the text, so the prefix is not at the start.
    assert not is_report(msg("@老板 日报 今天上线"), S)


def test_prefix_comparison_is_width_and_case_insensitive() -> None:
    s = replace(S, prefixes=("Daily",))
    assert is_report(msg("DAILY report"), s)
    assert is_report(msg("ｄａｉｌｙ　全角"), s)
    assert not is_report(msg("my daily"), s)


def test_post_title_or_body_may_carry_the_prefix() -> None:
    assert is_report(msg("日报 11-23\n完成登录页", msg_type="post", title="日报 11-23"), S)
    assert is_report(msg("11月23日\n【日报】完成登录页", msg_type="post", title="11月23日"), S)
    assert not is_report(msg("11月23日\n完成登录页", msg_type="post", title="11月23日"), S)


def test_scope_type_and_sender_restrictions() -> None:
    assert not is_report(msg("日报 别的群", chat="oc_other"), S)
    assert not is_report(msg("日报", msg_type="image"), S)
    assert not is_report(msg("日报 已收到", sender_type="app"), S)


def test_match_all_takes_text_post_and_image_but_not_commands() -> None:
    s = replace(S, match="all")
    assert is_report(msg("随便写点什么"), s)
    assert is_report(msg("[图片]", msg_type="image"), s)
    assert is_report(msg("标题\n正文", msg_type="post", title="标题"), s)
    assert not is_report(msg("[文件] a.pdf", msg_type="file"), s)
    assert not is_report(msg("@日报机器人 发送日报", mentions=(BOT,)), s)


# --------------------------------------------------------------------------- days


def test_cutoff_counts_early_morning_for_yesterday() -> None:
    assert report_day(ms(2026, 11, 24, 1, 30), S) == date(2026, 11, 23)
    assert report_day(ms(2026, 11, 24, 3, 59), S) == date(2026, 11, 23)
    assert report_day(ms(2026, 11, 24, 4, 0), S) == date(2026, 11, 24)
    assert report_day(ms(2026, 11, 23, 23, 59), S) == date(2026, 11, 23)


def test_report_day_uses_the_configured_timezone_not_utc() -> None:
    # 2026-11-23 17:30 UTC is 01:30 on the 24th in Shanghai: still the 23rd's report.
    stamp = ms(2026, 11, 23, 17, 30, tz="UTC")
    assert report_day(stamp, S) == date(2026, 11, 23)
    # The same instant is 12:30 on the 23rd in New York.
    assert report_day(stamp, replace(S, timezone="America/New_York")) == date(2026, 11, 23)
    # 20:30 UTC is 04:30 in Shanghai on the 24th: past the cutoff.
    assert report_day(ms(2026, 11, 23, 20, 30, tz="UTC"), S) == date(2026, 11, 24)


def test_cutoff_midnight_means_calendar_days() -> None:
    s = replace(S, cutoff=time(0, 0))
    assert report_day(ms(2026, 11, 24, 0, 1), s) == date(2026, 11, 24)


# --------------------------------------------------------------------------- triggers


def trigger(text: str, *, mentioned: bool = True, when: int | None = None, **kw: str) -> object:
    m = msg(text, mentions=(BOT,) if mentioned else (), when=when, **kw)
    return parse_trigger(m, S, bot_mentioned=mentioned)


def test_trigger_without_date() -> None:
    assert trigger("@日报机器人 发送日报") == Trigger(None, False)
    assert trigger("@日报机器人 发送日报。") == Trigger(None, False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@日报机器人 发送日报 2026-11-20", date(2026, 11, 20)),
        ("@日报机器人 发送日报 2026/11/20", date(2026, 11, 20)),
        ("@日报机器人 发送日报 20261120", date(2026, 11, 20)),
        ("@日报机器人 发送日报 2026年11月20日", date(2026, 11, 20)),
        ("@日报机器人 发送日报 11-20", date(2026, 11, 20)),
        ("@日报机器人 发送日报：11月20日", date(2026, 11, 20)),
        ("@日报机器人 发送日报 １１－２０", date(2026, 11, 20)),
        ("@日报机器人 发送日报11-20", date(2026, 11, 20)),
        ("@日报机器人 发送日报 今天", date(2026, 11, 23)),
        ("@日报机器人 发送日报 昨天", date(2026, 11, 22)),
    ],
)
def test_trigger_with_dates(text: str, expected: date) -> None:
    assert trigger(text) == Trigger(expected, False)


def test_relative_dates_follow_the_report_day_of_the_command() -> None:
    # At 01:30 on the 24th the current report day is still the 23rd.
    late = ms(2026, 11, 24, 1, 30)
    assert trigger("@日报机器人 发送日报 今天", when=late) == Trigger(date(2026, 11, 23), False)
    assert trigger("@日报机器人 发送日报 昨天", when=late) == Trigger(date(2026, 11, 22), False)


def test_short_date_in_january_means_last_december() -> None:
    result = trigger("@日报机器人 发送日报 12-31", when=ms(2027, 1, 2))
    assert result == Trigger(date(2026, 12, 31), False)


def test_resend_is_forced() -> None:
    assert trigger("@日报机器人 重发日报") == Trigger(None, True)
    assert trigger("@日报机器人 重发日报 11-20") == Trigger(date(2026, 11, 20), True)


@pytest.mark.parametrize(
    "text",
    [
        "@日报机器人 发送日报 abc",
        "@日报机器人 发送日报 2026-02-30",
        "@日报机器人 发送日报 2026-12-01",
    ],
)
def test_bad_or_future_dates_are_reported_not_ignored(text: str) -> None:
    result = trigger(text)
    assert isinstance(result, Trigger)
    assert result.date is None and result.error


def test_not_a_trigger() -> None:
    assert trigger("发送日报", mentioned=False) is None
    assert trigger("@日报机器人 你好") is None
    assert trigger("@日报机器人 发送日报", chat="oc_other") is None
    assert trigger("@日报机器人 发送日报", sender_type="app") is None


def test_who_may_trigger() -> None:
    assert may_trigger("ou_anyone", S)
    with_roster = replace(S, roster=ROSTER)
    assert may_trigger("ou_li", with_roster)
    assert not may_trigger("ou_guest", with_roster)
    explicit = replace(with_roster, trigger_users=("ou_boss",))
    assert may_trigger("ou_boss", explicit)
    assert not may_trigger("ou_li", explicit)
    # A resend mails everyone again: it needs someone named.
    assert not may_trigger("ou_anyone", S, force=True)
    assert may_trigger("ou_li", with_roster, force=True)
    assert may_trigger("ou_boss", explicit, force=True)


def test_resends_are_rate_limited() -> None:
    now = 1_764_560_000.0
    assert resend_refusal([], now) is None
    assert resend_refusal([now - RESEND_INTERVAL], now) is None
    assert resend_refusal([now - 30], now) == "该日的日报汇总刚刚发送过，请 10 分钟后再重发。"
    assert resend_refusal([now - 301], now) == "该日的日报汇总刚刚发送过，请 5 分钟后再重发。"
    assert resend_refusal([now + 3600], now) is None  # the clock was set back: no wait
    four = [now - 10_000 * (i + 1) for i in range(RESENDS_PER_DAY + 1)]
    refusal = resend_refusal(four, now)
    assert refusal is not None and "已发送 4 次" in refusal


# --------------------------------------------------------------------------- digest model


def entry(sender: str, name: str, text: str, hour: int, minute: int = 0, mid: str = "") -> Entry:
    return Entry(
        msg(text, sender=sender, when=ms(2026, 11, 23, hour, minute), message_id=mid), name
    )


def test_digest_groups_in_roster_order_then_guests_in_first_post_order() -> None:
    reports = [
        entry("ou_guest2", "访客乙", "日报 g2", 8),
        entry("ou_li", "李四(飞书名)", "日报 li", 9),
        entry("ou_zhang", "张三", "日报 第二条", 18, 5),
        entry("ou_guest1", "访客甲", "日报 g1", 10),
        entry("ou_zhang", "张三", "日报 第一条", 9, 30),
    ]
    d = build_digest(date(2026, 11, 23), "研发群", reports, replace(S, roster=ROSTER))
    assert [s.open_id for s in d.sections] == ["ou_zhang", "ou_li", "ou_guest2", "ou_guest1"]
    assert [e.message.text for e in d.sections[0].entries] == ["日报 第一条", "日报 第二条"]
    assert d.sections[1].name == "李四"  # the roster's name wins
    assert [s.outsider for s in d.sections] == [False, False, True, True]
    assert d.missing == ("王五",)
    assert (d.submitted, d.expected) == (2, 3)
    assert d.timezone == "Asia/Shanghai"


def test_digest_without_roster_counts_posters() -> None:
    reports = [entry("ou_a", "A", "日报 1", 9), entry("ou_b", "B", "日报 2", 10)]
    reports.append(entry("ou_a", "A", "日报 3", 11))
    d = build_digest(date(2026, 11, 23), "研发群", reports, S)
    assert [s.name for s in d.sections] == ["A", "B"]
    assert (d.submitted, d.expected, d.missing) == (2, 2, ())
    assert not any(s.outsider for s in d.sections)


def test_duplicate_message_ids_are_kept_once() -> None:
    one = entry("ou_a", "A", "日报", 9, mid="om_same")
    d = build_digest(date(2026, 11, 23), "群", [one, one], S)
    assert len(d.sections[0].entries) == 1


def test_supplement_counts_earlier_reports_but_shows_only_new_ones() -> None:
    s = replace(S, roster=ROSTER)
    earlier = [entry("ou_zhang", "张三", "日报 早", 9)]
    late = [entry("ou_li", "李四", "日报 晚", 20)]
    d = build_digest(date(2026, 11, 23), "研发群", late, s, supplement=True, earlier=earlier)
    assert d.supplement
    assert [s.open_id for s in d.sections] == ["ou_li"]
    assert (d.submitted, d.expected, d.missing) == (2, 3, ("王五",))


def test_empty_digest() -> None:
    d = build_digest(date(2026, 11, 23), "研发群", [], replace(S, roster=ROSTER))
    assert d.sections == () and d.missing == ("张三", "李四", "王五")
    assert (d.submitted, d.expected) == (0, 3)


# --------------------------------------------------------------------------- schedule


def test_next_scheduled_same_day_and_strictly_after() -> None:
    assert next_scheduled(sh(2026, 11, 23, 9), SCHEDULED) == sh(2026, 11, 23, 18, 30)
    # Exactly at the minute: the next one is tomorrow's.
    assert next_scheduled(sh(2026, 11, 23, 18, 30), SCHEDULED) == sh(2026, 11, 24, 18, 30)


def test_next_scheduled_skips_the_weekend() -> None:
    friday_evening = sh(2026, 11, 20, 19)
    assert next_scheduled(friday_evening, SCHEDULED) == sh(2026, 11, 23, 18, 30)
    assert next_scheduled(sh(2026, 11, 22, 23), SCHEDULED) == sh(2026, 11, 23, 18, 30)


def test_next_scheduled_across_timezones() -> None:
    # 10:29 UTC is 18:29 in Shanghai: the send is a minute away, at 10:30 UTC.
    after = datetime(2026, 11, 23, 10, 29, tzinfo=UTC)
    result = next_scheduled(after, SCHEDULED)
    assert result == datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
    assert result.tzinfo is not None and result.utcoffset() == sh(2026, 1, 1, 0).utcoffset()
    # Sunday 23:00 UTC is already Monday 07:00 in Shanghai: Monday's slot is next.
    assert next_scheduled(datetime(2026, 11, 22, 23, tzinfo=UTC), SCHEDULED) == sh(
        2026, 11, 23, 18, 30
    )
    # Friday 11:00 UTC is 19:00 in Shanghai: past Friday's slot, so Monday.
    assert next_scheduled(datetime(2026, 11, 20, 11, tzinfo=UTC), SCHEDULED) == sh(
        2026, 11, 23, 18, 30
    )


def test_next_scheduled_across_a_dst_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    s = replace(SCHEDULED, timezone="Europe/Berlin", weekdays=tuple(range(7)))
    sat = next_scheduled(datetime(2026, 3, 27, 19, tzinfo=berlin), s)
    sun = next_scheduled(sat, s)
    assert sat == datetime(2026, 3, 28, 18, 30, tzinfo=berlin)
    assert sun == datetime(2026, 3, 29, 18, 30, tzinfo=berlin)
    assert (sat.utcoffset(), sun.utcoffset()) == (
        datetime(2026, 3, 28, tzinfo=berlin).utcoffset(),
        datetime(2026, 3, 30, tzinfo=berlin).utcoffset(),
    )
    assert sat.astimezone(UTC).hour == 17 and sun.astimezone(UTC).hour == 16


def test_send_time_before_cutoff_is_the_next_morning() -> None:
    # "Yesterday's reports at 09:30": the report day runs until 10:00 the next morning.
    s = replace(SCHEDULED, at=time(9, 30), cutoff=time(10, 0))
    assert scheduled_at(date(2026, 11, 20), s) == sh(2026, 11, 21, 9, 30)
    # Friday's digest goes out on Saturday morning; nothing for Saturday or Sunday.
    assert next_scheduled(sh(2026, 11, 20, 12), s) == sh(2026, 11, 21, 9, 30)
    assert next_scheduled(sh(2026, 11, 21, 9, 30), s) == sh(2026, 11, 24, 9, 30)
    assert due_days(date(2026, 11, 19), sh(2026, 11, 21, 9, 31), s) == [date(2026, 11, 20)]


def test_naive_times_and_no_weekdays_are_rejected() -> None:
    with pytest.raises(ValueError):
        next_scheduled(datetime(2026, 11, 23, 9), SCHEDULED)
    with pytest.raises(ValueError):
        due_days(None, datetime(2026, 11, 23, 9), SCHEDULED)
    with pytest.raises(ValueError):
        next_scheduled(sh(2026, 11, 23, 9), replace(SCHEDULED, weekdays=()))
    assert due_days(None, sh(2026, 11, 23, 20), replace(SCHEDULED, weekdays=())) == []


MON, TUE = date(2026, 11, 23), date(2026, 11, 24)
FRI = date(2026, 11, 20)


def test_due_at_the_minute_and_not_before() -> None:
    assert due_days(FRI, sh(2026, 11, 23, 18, 29, 59), SCHEDULED) == []
    assert due_days(FRI, sh(2026, 11, 23, 18, 30), SCHEDULED) == [MON]


def test_stopped_across_the_minute_catches_up_once() -> None:
    # Stopped at 18:00, started at 21:00: Monday's digest is due...
    assert due_days(FRI, sh(2026, 11, 23, 21), SCHEDULED) == [MON]
    # ...and once the caller records it, never again (also after the next restart).
    assert due_days(MON, sh(2026, 11, 23, 21, 1), SCHEDULED) == []
    assert due_days(MON, sh(2026, 11, 24, 9), SCHEDULED) == []
    # Started the next morning instead: Monday's is still caught up.
    assert due_days(FRI, sh(2026, 11, 24, 9), SCHEDULED) == [MON]


def test_already_sent_means_nothing_due() -> None:
    assert due_days(MON, sh(2026, 11, 23, 18, 30), SCHEDULED) == []


def test_before_the_minute_nothing_due() -> None:
    assert due_days(FRI, sh(2026, 11, 23, 10), SCHEDULED) == []
    assert due_days(FRI, sh(2026, 11, 22, 20), SCHEDULED) == []  # Sunday is not a weekday


def test_multi_day_downtime_sends_only_the_latest_missed_day() -> None:
    # Last sent Monday; down until Thursday morning: only Wednesday's is due.
    assert due_days(MON, sh(2026, 11, 26, 9), SCHEDULED) == [date(2026, 11, 25)]
    # Down over a long weekend: Friday's, not Thursday's.
    assert due_days(date(2026, 11, 18), sh(2026, 11, 23, 9), SCHEDULED) == [FRI]


def test_clock_jumping_back_does_not_resend() -> None:
    assert due_days(TUE, sh(2026, 11, 23, 20), SCHEDULED) == []


def test_fresh_state_sends_only_the_current_days_digest() -> None:
    assert due_days(None, sh(2026, 11, 23, 18, 31), SCHEDULED) == [MON]
    assert due_days(None, sh(2026, 11, 24, 9), SCHEDULED) == []
    # Early morning before the cutoff still belongs to Monday.
    assert due_days(None, sh(2026, 11, 24, 2), SCHEDULED) == [MON]


def test_due_days_in_another_timezone() -> None:
    s = replace(SCHEDULED, timezone="America/New_York")
    ny = ZoneInfo("America/New_York")
    # 23:35 UTC on Monday is 18:35 in New York (EST): Monday's digest is due.
    assert due_days(FRI, datetime(2026, 11, 23, 23, 35, tzinfo=UTC), s) == [MON]
    assert due_days(FRI, datetime(2026, 11, 23, 18, 29, tzinfo=ny), s) == []


def test_a_digest_needs_its_day_inside_the_retention_window() -> None:
    today = date(2026, 12, 31)
    assert kept_days(30 * 24 * 3600.0) == 30
    assert window_refusal(date(2026, 12, 2), today, 30) is None  # 29 days back: kept
    refusal = window_refusal(date(2026, 12, 1), today, 30)
    assert refusal == "2026-12-01 的日报已超过保存期限（30 天），无法再汇总。"
