"""Batched rules (`batch: 1h`, `daily: "18:00"`): when a digest is due, and its mail.

A batched rule's matches wait in the state; at each boundary the ones received
before it go out as one digest, grouped by chat and by thread, in the daily
report's look (daily_report.py). Boundaries of `batch:` are counted from local
midnight in the team's timezone, so `1h` means on the hour and `6h` means 00,
06, 12 and 18 o'clock. Pure: batcher.py reads the state and sends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from feishu_mailbot.config.settings import Batch
from feishu_mailbot.core.daily_report import Entry
from feishu_mailbot.core.model import Message
from feishu_mailbot.mail import daily_report, html, mime, style
from feishu_mailbot.mail.forward import Attachment, base_headers, sanitize_header
from feishu_mailbot.mail.html import single_line

SUBJECT_TAG = "[飞书汇总]"


def _step(batch: Batch) -> timedelta:
    return timedelta(days=1) if batch.at is not None else timedelta(seconds=batch.every)


def _aware(wall: datetime, zone: tzinfo | None) -> datetime:
    """A wall-clock time in `zone`; one that does not exist (a DST gap) moves past it."""
    return datetime.fromtimestamp(wall.replace(tzinfo=zone).timestamp(), zone)


def boundary(now: datetime, batch: Batch) -> datetime:
    """The latest moment at or before `now` (aware) that a digest is due."""
    wall = now.replace(tzinfo=None)
    midnight = wall.replace(hour=0, minute=0, second=0, microsecond=0)
    if batch.at is not None:
        due = midnight.replace(hour=batch.at.hour, minute=batch.at.minute)
    else:  # wall-clock steps from midnight: the same hours every day, DST or not
        seconds = int((wall - midnight).total_seconds())
        due = midnight + timedelta(seconds=seconds - seconds % int(batch.every))
    while _aware(due, now.tzinfo).timestamp() > now.timestamp():
        due -= _step(batch)  # later today, or in a DST gap that is still ahead
    return _aware(due, now.tzinfo)


def window_start(end: datetime, batch: Batch) -> datetime:
    """The boundary before `end`: where a digest due at `end` begins, when on time."""
    return _aware(end.replace(tzinfo=None) - _step(batch), end.tzinfo)


@dataclass(frozen=True)
class ChatGroup:
    name: str
    threads: tuple[tuple[Entry, ...], ...]  # each: a thread's matches, oldest first

    @property
    def count(self) -> int:
        return sum(len(t) for t in self.threads)


@dataclass(frozen=True)
class Roundup:
    rule: str
    start: datetime  # of the messages shown (earlier than the window after downtime)
    end: datetime
    chats: tuple[ChatGroup, ...]

    @property
    def count(self) -> int:
        return sum(c.count for c in self.chats)


def build(
    rule: str,
    start: datetime,
    end: datetime,
    found: Sequence[tuple[Message, str, str]],
) -> Roundup:
    """(message, sender's name, chat's name) → the digest, chats and threads in order of
    their first match; a reply joins the thread of its root."""
    chats: dict[str, dict[str, list[Entry]]] = {}
    names: dict[str, str] = {}
    for msg, sender, chat in sorted(found, key=lambda f: (f[0].create_time_ms, f[0].message_id)):
        names.setdefault(msg.chat_id, chat)
        threads = chats.setdefault(msg.chat_id, {})
        threads.setdefault(msg.root_id or msg.message_id, []).append(Entry(msg, sender))
    earliest = min((m.create_time_ms for m, _, _ in found), default=0)
    if earliest:
        start = min(start, datetime.fromtimestamp(earliest / 1000, end.tzinfo))
    groups = tuple(
        ChatGroup(names[chat_id], tuple(tuple(t) for t in threads.values()))
        for chat_id, threads in chats.items()
    )
    return Roundup(rule, start, end, groups)


def _span(r: Roundup) -> str:
    same_day = r.start.date() == r.end.date()
    start = r.start.strftime("%H:%M" if same_day else "%m-%d %H:%M")
    return (
        f"{r.end:%Y-%m-%d} {start}–{r.end:%H:%M}" if same_day else f"{start} – {r.end:%m-%d %H:%M}"
    )


def subject(r: Roundup) -> str:
    return sanitize_header(f"{SUBJECT_TAG} {single_line(r.rule)} · {_span(r)} · {r.count} 条")


def _time(entry: Entry, r: Roundup) -> str:
    moment = datetime.fromtimestamp(entry.message.create_time_ms / 1000, r.end.tzinfo)
    return f"{daily_report.time_label(moment, r.end.date())} {single_line(entry.sender_name)}"


def render_text(r: Roundup) -> str:
    lines = [f"{r.rule}: {r.count} 条消息 ({_span(r)})", ""]
    for chat in r.chats:
        lines += [f"== {single_line(chat.name)} ({chat.count} 条) ==", ""]
        for thread in chat.threads:
            for n, entry in enumerate(thread):
                lead = "  ↳ " if n else ""
                body = entry.message.text.replace("\n", "\n    " if n else "\n  ")
                lines += [f"{lead}{_time(entry, r)}", f"{'    ' if n else '  '}{body}", ""]
    lines.append("-- \n由 feishu-mailbot 汇总")
    return "\n".join(lines) + "\n"


def _thread_html(thread: Sequence[Entry], r: Roundup, first: bool, available: set[str]) -> str:
    out = []
    for n, entry in enumerate(thread):
        content = html.html(entry.message.blocks, available)
        if n:  # a reply: under its root, a bar deeper
            content = f'<div style="{style.FORWARD}">{content}</div>'
        out.append(
            daily_report.entry_html(("↳ " if n else "") + _time(entry, r), content, first and not n)
        )
    return "".join(out)


def render_html(r: Roundup, *, generated: datetime, available: set[str]) -> str:
    rows = [daily_report.header_html(single_line(r.rule), _span(r), str(r.count), "条消息")]
    for chat in r.chats:
        threads = "".join(_thread_html(t, r, i == 0, available) for i, t in enumerate(chat.threads))
        rows.append(
            daily_report.section_html(single_line(chat.name), [f"{chat.count} 条"], threads)
        )
    return daily_report.page(subject(r), rows, generated)


def compose(
    r: Roundup,
    *,
    sender: str,
    to: Sequence[str],
    message_id: str,
    date: datetime,
    images: Mapping[str, Attachment],
) -> tuple[str, mime.Mail]:
    """The digest as text + HTML, its messages' images inline: (subject, mail)."""
    title = subject(r)
    headers = base_headers(subject=title, sender=sender, to=to, message_id=message_id, date=date)
    headers.append(mime.header("X-Feishu-Mailbot-Batch", sanitize_header(r.rule)))
    shown = (e.message for chat in r.chats for thread in chat.threads for e in thread)

    def html(available: set[str]) -> str:
        return render_html(r, generated=date, available=available)

    return title, daily_report.assemble(headers, render_text(r), html, shown, images)
