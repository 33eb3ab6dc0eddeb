"""A batched rule's digest as a mail: in the daily report's look, one section a chat.

The matches are grouped by core/batch.py; a reply sits under its thread's root,
a bar deeper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from feishu_mailbot.core.batch import Roundup
from feishu_mailbot.core.daily_report import Entry
from feishu_mailbot.core.text import single_line
from feishu_mailbot.mail import daily_report, html, mime, style
from feishu_mailbot.mail.attachments import Attachment
from feishu_mailbot.mail.headers import base_headers, sanitize_header

SUBJECT_TAG = "[飞书汇总]"


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
    lists: Sequence[str] = (),
) -> tuple[str, mime.Mail]:
    """The digest as text + HTML, its messages' images inline: (subject, mail).
    `lists`: its List-Id and List-Unsubscribe (mail/headers.py), if any."""
    title = subject(r)
    headers = base_headers(subject=title, sender=sender, to=to, message_id=message_id, date=date)
    headers.append(mime.header("X-Feishu-Mailbot-Batch", sanitize_header(r.rule)))
    headers.extend(lists)
    shown = (e.message for chat in r.chats for thread in chat.threads for e in thread)

    def html(available: set[str]) -> str:
        return render_html(r, generated=date, available=available)

    return title, daily_report.assemble(headers, render_text(r), html, shown, images)
