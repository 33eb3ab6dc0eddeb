"""Daily reports (日报): what counts, which day it belongs to, who may ask for the digest,
what the digest contains and when a scheduled one is due.

The module is a pure function of its arguments (no clock, no I/O) so that every
decision the daemon makes about reports can be replayed in a test with a fake
"now": that is what makes "exactly once per day, even across restarts and clock
jumps" checkable instead of hoped for.  The shell stores messages, recalls and
the last day a digest went out; this module only decides.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from feishu_mailbot.config.settings import ReportSettings, RosterMember
from feishu_mailbot.core.model import ALL_MENTION_NAME, Message
from feishu_mailbot.core.text import fold

# --------------------------------------------------------------------------- matching


def _strip_leading_mentions(msg: Message) -> str:
    """The text without the @-mentions a message starts with.

    Only names Feishu says were mentioned are removed: a report that merely
    starts with an ``@`` sign is left alone.  A mention's plain text is
    ``@Name`` (model.block_text), so that is the shape looked for.
    """
    names = sorted(
        {m.name for m in msg.mentions if m.name} | {ALL_MENTION_NAME}, key=len, reverse=True
    )
    text = msg.text.lstrip()
    changed = True
    while changed:
        changed = False
        for name in names:
            if text.startswith("@" + name):
                text = text[len(name) + 1 :].lstrip()
                changed = True
                break
    return text


def _candidates(msg: Message) -> list[str]:
    """Texts that may start with the prefix: the whole text, and for a post also its body.

    A post's title is the first line of its text; people often give the post a
    date as title and start the body with 日报, which should count too.
    """
    text = _strip_leading_mentions(msg)
    out = [text]
    if msg.msg_type == "post" and msg.title and msg.text.startswith(msg.title):
        out.append(msg.text[len(msg.title) :].lstrip())
    return out


def _is_command(msg: Message, s: ReportSettings) -> bool:
    """The trigger command itself must never be counted as a report, even with match: all."""
    folded = fold(_strip_leading_mentions(msg))
    commands = [fold(c) for c in (s.trigger, s.resend_trigger) if c.strip()]
    return any(folded.startswith(c) for c in commands)


def is_report(msg: Message, s: ReportSettings) -> bool:
    """Whether `msg` is a daily report for `s`.

    Messages from apps (bots, including this one's acknowledgements) never
    count.  The prefix must be at the very start (after @-mentions and
    whitespace): "我的日报在哪" is a question about reports, not a report.
    """
    if msg.chat_id != s.chat or msg.sender_type == "app" or _is_command(msg, s):
        return False
    if s.match == "all":
        return msg.msg_type in ("text", "post", "image")
    if msg.msg_type not in ("text", "post"):
        return False
    prefixes = [p for p in (fold(p.strip()) for p in s.prefixes) if p]
    return any(fold(c).startswith(p) for c in _candidates(msg) for p in prefixes)


# --------------------------------------------------------------------------- days


def _zone(s: ReportSettings) -> ZoneInfo:
    return ZoneInfo(s.timezone)


def local_time(create_time_ms: int, timezone: str) -> datetime:
    """A Feishu millisecond timestamp as an aware datetime in `timezone`.

    Integer arithmetic keeps the milliseconds exact (a float would round).
    """
    seconds, millis = divmod(create_time_ms, 1000)
    return datetime.fromtimestamp(seconds, ZoneInfo(timezone)) + timedelta(milliseconds=millis)


def day_of(moment: datetime, s: ReportSettings) -> date:
    """The report day `moment` falls in: its date in the report timezone, or the day
    before when it is earlier than the cutoff (a report at 01:30 is last night's)."""
    local = moment.astimezone(_zone(s))
    return local.date() - timedelta(days=1) if local.time() < s.cutoff else local.date()


def report_day(create_time_ms: int, s: ReportSettings) -> date:
    """The report day a message posted at `create_time_ms` belongs to."""
    return day_of(local_time(create_time_ms, s.timezone), s)


def current_day(now: float, s: ReportSettings) -> date:
    """The report day it is at `now` (seconds since the epoch)."""
    return report_day(int(now * 1000), s)


def day_bounds_ms(day: date, s: ReportSettings) -> tuple[int, int]:
    """A report day runs from its cutoff to the next day's cutoff, in the report timezone."""
    start = datetime.combine(day, s.cutoff, _zone(s))
    end = datetime.combine(day + timedelta(days=1), s.cutoff, _zone(s))
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def follow_ups(s: ReportSettings, digested: bool) -> list[str]:
    """The actions a received report needs: acknowledging it, and mailing it at once
    (`mode: immediate`) or as a supplement when its day's digest has gone out."""
    out = [] if s.acknowledge == "none" else ["acknowledge"]
    if s.mode == "immediate":
        out.append("report-immediate")
    elif s.supplements and digested:
        out.append("supplement")
    return out


def needs_follow_up(s: ReportSettings) -> bool:
    """Whether a received report can need any action at all (see follow_ups)."""
    return s.acknowledge != "none" or s.mode == "immediate" or s.supplements


# --------------------------------------------------------------------------- triggers


@dataclass(frozen=True)
class Trigger:
    date: date | None  # None: the caller's current report day
    force: bool  # resend even if the day's digest already went out
    error: str = ""  # set when the command was recognised but its date was not; reply with it


_PUNCT = " \t\r\n:：,，.。!！?？、~～"
_FULL_DATE = re.compile(r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?")
_COMPACT_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})")
_SHORT_DATE = re.compile(r"(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?")
_RELATIVE = {"今天": 0, "今日": 0, "today": 0, "昨天": 1, "昨日": 1, "yesterday": 1, "前天": 2}


def _parse_date(text: str, reference: date) -> date | str:
    """A date, or an error message in the chat's language.

    A date without a year is the most recent such day not after `reference`,
    so "12-31" sent on 2 January means New Year's Eve just past.
    """
    if text in _RELATIVE:
        return reference - timedelta(days=_RELATIVE[text])
    year: int | None
    found = _FULL_DATE.fullmatch(text) or _COMPACT_DATE.fullmatch(text)
    if found:
        year, month, day = (int(g) for g in found.groups())
    elif short := _SHORT_DATE.fullmatch(text):
        year = None
        month, day = (int(g) for g in short.groups())
    else:
        return f"无法识别日期「{text}」，请写成 2026-11-23、11-23、今天或昨天"
    try:
        if year is None:
            result = date(reference.year, month, day)
            if result > reference:
                result = date(reference.year - 1, month, day)
        else:
            result = date(year, month, day)
    except ValueError:
        return f"日期「{text}」不存在"
    if result > reference:
        return f"{result.isoformat()} 还没到，不能发送它的日报"
    return result


def parse_trigger(msg: Message, s: ReportSettings, bot_mentioned: bool) -> Trigger | None:
    """The digest command in `msg`, or None if it is not one.

    Only a message in the report chat that @-mentions the bot counts, so the
    words 发送日报 in ordinary conversation do nothing.  A recognised command
    with an unreadable date comes back with `error` set rather than as None,
    so the bot can say what was wrong instead of staying silent.
    """
    if not bot_mentioned or msg.chat_id != s.chat or msg.sender_type == "app":
        return None
    text = fold(_strip_leading_mentions(msg)).strip()
    commands = [(s.resend_trigger, True), (s.trigger, False)]
    commands.sort(key=lambda c: len(c[0]), reverse=True)  # the longer wins if one prefixes other
    for command, force in commands:
        folded = fold(command.strip())
        if not folded or not text.startswith(folded):
            continue
        rest = text[len(folded) :].strip(_PUNCT)
        if not rest:
            return Trigger(None, force)
        reference = report_day(msg.create_time_ms, s)
        parsed = _parse_date(rest, reference)
        if isinstance(parsed, str):
            return Trigger(None, force, parsed)
        return Trigger(parsed, force)
    return None


def may_trigger(open_id: str, s: ReportSettings, force: bool = False) -> bool:
    """Whether `open_id` may ask for the digest (`force`: to resend it).

    Without an explicit list the roster decides, because the people who write
    reports are the natural ones to say "send it now"; a team without a roster
    has nothing to restrict by, so anyone in the (allowlisted) chat may ask for
    the day's digest once. A resend mails the recipients again, so it needs
    someone named: without trigger_users or a roster, nobody may.
    """
    if s.trigger_users:
        return open_id in s.trigger_users
    if s.roster:
        return any(m.open_id == open_id for m in s.roster)
    return not force


def kept_days(messages_retention: float) -> int:
    """Whole report days whose messages the retention settings keep."""
    return max(1, int(messages_retention // (24 * 3600)))


def window_refusal(day: date, today: date, kept: int) -> str | None:
    """Why there can be no digest of `day` (in the chat's language): its reports were
    pruned with the messages, and an empty digest would claim nobody reported."""
    if (today - day).days >= kept:
        return f"{day.isoformat()} 的日报已超过保存期限（{kept} 天），无法再汇总。"
    return None


# A day's digest may be resent from the chat this long after it last went out, and
# this many times in all: a command repeated in the chat must not flood a mailbox.
RESEND_INTERVAL = 600.0
RESENDS_PER_DAY = 3


def resend_refusal(sent_at: Sequence[float], now: float) -> str | None:
    """Why the chat may not resend a digest that went out at `sent_at` (in the chat's
    language), or None. A clock set back does not count as a recent send."""
    if len(sent_at) > RESENDS_PER_DAY:
        return (
            f"该日的日报汇总已发送 {len(sent_at)} 次，不能再从群里重发"
            "（管理员可用 send-report --force）。"
        )
    recent = [now - t for t in sent_at if 0 <= now - t < RESEND_INTERVAL]
    if recent:
        minutes = math.ceil((RESEND_INTERVAL - min(recent)) / 60)
        return f"该日的日报汇总刚刚发送过，请 {minutes} 分钟后再重发。"
    return None


# --------------------------------------------------------------------------- digest model


@dataclass(frozen=True)
class Entry:
    message: Message
    sender_name: str


@dataclass(frozen=True)
class Section:
    name: str
    open_id: str
    entries: tuple[Entry, ...]
    outsider: bool = False  # posted a report but is not on the roster


@dataclass(frozen=True)
class Digest:
    day: date
    chat_name: str
    sections: tuple[Section, ...]
    missing: tuple[str, ...]  # roster names without a report
    expected: int
    submitted: int
    supplement: bool = False
    timezone: str = "Asia/Shanghai"  # for showing post times; copied from the settings


def _unique_roster(roster: Iterable[RosterMember]) -> list[RosterMember]:
    seen: set[str] = set()
    out: list[RosterMember] = []
    for member in roster:
        if member.open_id not in seen:
            seen.add(member.open_id)
            out.append(member)
    return out


def build_digest(
    day: date,
    chat_name: str,
    reports: Sequence[Entry],
    s: ReportSettings,
    supplement: bool = False,
    *,
    earlier: Sequence[Entry] = (),
) -> Digest:
    """Group the day's reports into one section per person.

    `reports` are already filtered to `day` with recalled posts removed.  Roster
    members come first in roster order, then anyone else in the order of their
    first post; each person's posts are in time order.  A message id seen twice
    is kept once, so a replayed event cannot duplicate a report.

    With a roster, `submitted` counts roster members only, so the subject's
    "7/9" never exceeds the team size because a guest posted.  For a
    supplement, `reports` are the late posts only and `earlier` the ones the
    first digest already carried: they are not shown again but count towards
    the numbers and the still-missing list.
    """
    by_sender: dict[str, list[Entry]] = {}
    seen: set[str] = set()
    ordered = sorted(
        enumerate(reports), key=lambda p: (p[1].message.create_time_ms, p[0])
    )  # stable for equal timestamps: the caller's order decides
    for _, entry in ordered:
        if entry.message.message_id in seen:
            continue
        seen.add(entry.message.message_id)
        by_sender.setdefault(entry.message.sender_open_id, []).append(entry)

    roster = _unique_roster(s.roster)
    roster_ids = {m.open_id for m in roster}
    sections: list[Section] = []
    for member in roster:
        entries = by_sender.get(member.open_id)
        if entries:
            name = member.name or _first_name(entries) or member.open_id
            sections.append(Section(name, member.open_id, tuple(entries)))
    for open_id, entries in by_sender.items():  # dicts keep first-post order
        if open_id not in roster_ids:
            name = _first_name(entries) or open_id or "未知成员"
            sections.append(Section(name, open_id, tuple(entries), outsider=bool(roster)))

    submitters = set(by_sender) | {e.message.sender_open_id for e in earlier}
    if roster:
        missing = tuple(m.name or m.open_id for m in roster if m.open_id not in submitters)
        expected = len(roster)
        submitted = expected - len(missing)
    else:
        missing = ()
        expected = submitted = len(submitters)
    return Digest(
        day=day,
        chat_name=chat_name,
        sections=tuple(sections),
        missing=missing,
        expected=expected,
        submitted=submitted,
        supplement=supplement,
        timezone=s.timezone,
    )


def _first_name(entries: Sequence[Entry]) -> str:
    return next((e.sender_name for e in entries if e.sender_name.strip()), "")


# --------------------------------------------------------------------------- schedule


def scheduled_at(day: date, s: ReportSettings) -> datetime:
    """When the scheduled digest for report day `day` goes out (aware, in s.timezone).

    It is the `at` time that falls inside the report day: on the same calendar
    day if `at` is at or after the cutoff, otherwise early the next morning.
    So at 09:30 with cutoff 10:00 means "yesterday's reports, next morning".
    A local time that does not exist (DST gap) resolves the way zoneinfo does
    for fold=0, i.e. shifted past the gap, rather than raising.
    """
    calendar_day = day if s.at >= s.cutoff else day + timedelta(days=1)
    zone = _zone(s)
    local = datetime.combine(calendar_day, s.at, tzinfo=zone)
    # The round trip through UTC normalises a time inside a DST gap to one that exists.
    return local.astimezone(ZoneInfo("UTC")).astimezone(zone)


def _require_aware(moment: datetime, what: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")


def next_scheduled(after: datetime, s: ReportSettings) -> datetime:
    """The first scheduled send strictly after `after`; the daemon sleeps until then.

    Raises ValueError if no weekday is enabled (config validation rejects that
    for mode: scheduled) or if `after` is naive.
    """
    _require_aware(after, "after")
    if not s.weekdays:
        raise ValueError("no weekdays are enabled for the scheduled digest")
    start = day_of(after, s) - timedelta(days=1)
    for offset in range(9):
        day = start + timedelta(days=offset)
        if day.weekday() in s.weekdays:
            moment = scheduled_at(day, s)
            if moment > after:
                return moment
    raise AssertionError("unreachable: some enabled weekday lies within any 8 days")


def latest_scheduled_day(now: datetime, s: ReportSettings) -> date | None:
    """The most recent report day whose scheduled send time is at or before `now`."""
    _require_aware(now, "now")
    if not s.weekdays:
        return None
    current = day_of(now, s)
    for offset in range(-1, 9):
        day = current - timedelta(days=offset)
        if day.weekday() in s.weekdays and scheduled_at(day, s) <= now:
            return day
    return None


def due_days(last_sent_day: date | None, now: datetime, s: ReportSettings) -> list[date]:
    """The report days whose scheduled digest should be sent at `now`: zero or one day.

    Decisions, all following from being a pure function of the two values the
    caller persists and reads:

    - Catch-up: if the daemon was down across the scheduled minute, the missed
      day is due as soon as it runs again, and once it is recorded as sent it
      is never due again.
    - After a long outage only the most recent missed day is sent; older ones
      are skipped, because a pile of stale digests arriving at once helps
      nobody and each can still be sent by hand (send-report --date).
    - Clock jumps: going back in time never makes a sent day due again (days
      are compared, not instants); jumping forward yields at most one day.
    - `last_sent_day` None means nothing was ever sent (fresh state): only the
      current report day's slot counts, so installing the bot on a Tuesday
      morning does not mail an empty digest for Monday.

    The caller must store the returned day as sent in the same transaction
    that queues the mail; that is what makes it exactly once.
    """
    latest = latest_scheduled_day(now, s)
    if latest is None:
        return []
    if last_sent_day is None:
        return [latest] if latest == day_of(now, s) else []
    return [latest] if latest > last_sent_day else []


__all__ = [
    "Digest",
    "Entry",
    "ReportSettings",
    "RosterMember",
    "Section",
    "Trigger",
    "build_digest",
    "current_day",
    "day_bounds_ms",
    "day_of",
    "due_days",
    "follow_ups",
    "is_report",
    "latest_scheduled_day",
    "local_time",
    "may_trigger",
    "needs_follow_up",
    "next_scheduled",
    "parse_trigger",
    "report_day",
    "scheduled_at",
]
