"""The daily-report digest as an email a manager actually reads.

Mail clients are the constraint: Outlook renders with Word, Gmail strips
``<style>``, many clients block remote images.  So the HTML is nested tables
with inline styles only, a fixed 680px width attribute that clients honouring
CSS relax to ``max-width``, and images travel inside the mail (multipart/related,
``cid:``).  The plain-text part is written to stand on its own, because some
readers (and `send-report --dry-run`) only ever see that one.

Chat content reaches the HTML only escaped (html.escape): names and the
chat name here, report bodies by html.html.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date as Date
from datetime import datetime

from feishu_mailbot.core import subjects
from feishu_mailbot.core.daily_report import Digest, Section, local_time
from feishu_mailbot.core.model import Message
from feishu_mailbot.core.text import single_line
from feishu_mailbot.mail import html, mime, style
from feishu_mailbot.mail.attachments import Attachment, html_with_images, inline_image
from feishu_mailbot.mail.headers import base_headers, format_when, sanitize_header
from feishu_mailbot.mail.html import escape, image_cid

WEEKDAYS = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")

# --------------------------------------------------------------------------- shared bits


def _day_label(day: Date) -> str:
    return f"{day.isoformat()}（{WEEKDAYS[day.weekday()]}）"


def _chat_label(d: Digest) -> str:
    return single_line(d.chat_name) or "群聊"


def _title(d: Digest) -> str:
    return "日报汇总 · 补充" if d.supplement else "日报汇总"


def time_label(local: datetime, day: Date) -> str:
    """HH:MM, with the date when the message is of another day than the digest's (a
    report posted after midnight, counted for the day via cutoff; a batch's catch-up)."""
    return local.strftime("%H:%M" if local.date() == day else "%m-%d %H:%M")


def _time_label(msg: Message, d: Digest) -> str:
    return time_label(local_time(msg.create_time_ms, d.timezone), d.day)


def _section_name(section: Section) -> str:
    return single_line(section.name) or section.open_id or "未知成员"


def _count_label(section: Section) -> str:
    return f"{len(section.entries)} 条" if len(section.entries) > 1 else ""


def _missing_title(d: Digest) -> str:
    return f"{'仍未提交' if d.supplement else '未提交'}（{len(d.missing)}）"


# --------------------------------------------------------------------------- plain text

_RULE = "─" * 24


def render_text(d: Digest) -> str:
    """The digest as plain text: the mail's text alternative and what --dry-run prints."""
    lines = [f"{_title(d)} {_day_label(d.day)} · {_chat_label(d)}"]
    lines.append(f"已提交 {d.submitted}/{d.expected}")
    if d.supplement:
        lines.append("本邮件只包含上次汇总发出之后提交的日报。")
    if d.missing:
        names = "、".join(single_line(n) for n in d.missing)
        lines += ["", f"{_missing_title(d)}：{names}"]
    if not d.sections:
        lines += ["", "这一天还没有收到日报。"]
    for section in d.sections:
        head = f"■ {_section_name(section)}"
        if count := _count_label(section):
            head += f"（{count}）"
        if section.outsider:
            head += " [不在名单中]"
        lines += ["", _RULE, head, _RULE]
        for i, entry in enumerate(section.entries):
            if i:
                lines.append("")
            lines.append(f"[{_time_label(entry.message, d)}]")
            body = entry.message.text.replace("\r\n", "\n").replace("\r", "\n").rstrip()
            lines.append(body or "(空)")
    lines += ["", "-- ", "由 feishu-mailbot 汇总"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- HTML

_TABLE = 'role="presentation" cellpadding="0" cellspacing="0" border="0"'


def entry_html(when: str, content: str, first: bool) -> str:
    """One message in a digest's box: its time (and sender) above its content."""
    divider = "" if first else f"border-top:1px dashed {style.BORDER};"
    return (
        f'<tr><td style="padding:10px 16px;{divider}">'
        f'<div style="font-size:12px;color:{style.MUTED};margin:0 0 4px">'
        f"{escape(when)}</div>"
        f'<div style="font-size:14px;line-height:1.6;color:{style.TEXT};'
        f'{style.CONTENT}">'
        f"{content}</div>"
        "</td></tr>"
    )


def section_html(name: str, notes: Sequence[str], entries: str) -> str:
    """A box under a shaded heading (a person's reports, a chat's matches)."""
    note = (
        f' <span style="font-size:12px;font-weight:normal;color:{style.MUTED}">'
        f"· {escape(' · '.join(notes))}</span>"
        if notes
        else ""
    )
    return (
        '<tr><td style="padding:16px 24px 0">'
        f'<table {_TABLE} width="100%" style="border:1px solid {style.BORDER};'
        'border-collapse:separate;border-radius:6px">'
        f'<tr><td style="padding:10px 16px;background-color:{style.SHADE};'
        f"border-bottom:1px solid {style.BORDER};border-radius:6px 6px 0 0;"
        f'font-size:15px;font-weight:bold;color:{style.TEXT}">'
        f"{escape(name)}{note}</td></tr>"
        f"{entries}</table></td></tr>"
    )


def _section(section: Section, d: Digest, available: set[str]) -> str:
    extra = []
    if count := _count_label(section):
        extra.append(count)
    if section.outsider:
        extra.append("不在名单中")
    entries = "".join(
        entry_html(_time_label(e.message, d), html.html(e.message.blocks, available), i == 0)
        for i, e in enumerate(section.entries)
    )
    return section_html(_section_name(section), extra, entries)


def _progress_html(d: Digest) -> str:
    """A bar made of table cells, because CSS widths on divs are unreliable in Outlook."""
    if d.expected <= 0:
        return ""
    done = max(0, min(100, round(100 * d.submitted / d.expected)))
    cells = []
    if done > 0:
        cells.append(
            f'<td width="{done}%" bgcolor="{style.WHITE}" style="background-color:{style.WHITE};'
        )
    if done < 100:
        cells.append(
            f'<td width="{100 - done}%" bgcolor="{style.BLUE_BAR}" '
            f'style="background-color:{style.BLUE_BAR};'
        )
    bar = "".join(f'{c}height:6px;font-size:0;line-height:0">&nbsp;</td>' for c in cells)
    return (
        f'<table {_TABLE} width="100%" style="margin-top:14px;border-radius:3px">'
        f"<tr>{bar}</tr></table>"
    )


def header_html(title: str, subtitle: str, figure: str, figure_label: str, extra: str = "") -> str:
    """The blue band: a title and a line under it, a big figure on the right."""
    return (
        f'<tr><td bgcolor="{style.BLUE}" style="padding:20px 24px;background-color:{style.BLUE};'
        f'border-radius:8px 8px 0 0;color:{style.WHITE}">'
        f'<table {_TABLE} width="100%"><tr>'
        f'<td valign="top" style="color:{style.WHITE}">'
        f'<div style="font-size:20px;font-weight:bold;line-height:1.3">{escape(title)}</div>'
        f'<div style="font-size:14px;line-height:1.5;margin-top:4px;color:{style.ON_BLUE}">'
        f"{escape(subtitle)}</div></td>"
        f'<td valign="top" align="right" style="white-space:nowrap;color:{style.WHITE}">'
        f'<div style="font-size:28px;font-weight:bold;line-height:1.1">'
        f"{escape(figure)}</div>"
        f'<div style="font-size:12px;color:{style.ON_BLUE}">{escape(figure_label)}</div></td>'
        "</tr></table>"
        f"{extra}</td></tr>"
    )


def _header_html(d: Digest) -> str:
    subtitle = f"{_day_label(d.day)} · {_chat_label(d)}"
    return header_html(
        _title(d), subtitle, f"{d.submitted}/{d.expected}", "已提交", _progress_html(d)
    )


def _missing_html(d: Digest) -> str:
    if not d.missing:
        return ""
    names = "、".join(escape(single_line(n)) for n in d.missing)
    return (
        '<tr><td style="padding:16px 24px 0">'
        f'<table {_TABLE} width="100%"><tr>'
        f'<td bgcolor="{style.WARN_BG}" style="padding:10px 14px;background-color:{style.WARN_BG};'
        f"border-left:4px solid {style.WARN_EDGE};font-size:14px;line-height:1.6;"
        f'color:{style.WARN_TEXT}">'
        f"<b>{escape(_missing_title(d))}</b>：{names}</td></tr></table></td></tr>"
    )


def render_html(d: Digest, *, title: str, generated: datetime, available: set[str]) -> str:
    """The HTML document; `available` holds the Content-IDs that will be attached."""
    body: list[str] = [_header_html(d), _missing_html(d)]
    if d.supplement:
        body.append(
            f'<tr><td style="padding:16px 24px 0;font-size:13px;color:{style.MUTED}">'
            "本邮件只包含上次汇总发出之后提交的日报。</td></tr>"
        )
    if not d.sections:
        body.append(
            f'<tr><td style="padding:24px;font-size:14px;color:{style.MUTED};text-align:center">'
            "这一天还没有收到日报。</td></tr>"
        )
    body += [_section(s, d, available) for s in d.sections]
    return page(title, body, generated)


def page(title: str, rows: Sequence[str], generated: datetime) -> str:
    """A digest's document: a white card of table rows on a shaded page, and a footer."""
    footer = (
        f'<tr><td style="padding:20px 24px;font-size:12px;color:{style.MUTED}">'
        f"由 feishu-mailbot 汇总 · {escape(format_when(generated, seconds=False))}</td></tr>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title></head>\n"
        f'<body style="margin:0;padding:0;background-color:{style.SHADE}">\n'
        f'<table {_TABLE} width="100%" bgcolor="{style.SHADE}" '
        f'style="background-color:{style.SHADE}">'
        '<tr><td align="center" style="padding:24px 12px">\n'
        f'<table {_TABLE} width="680" style="width:100%;max-width:680px;'
        f"background-color:{style.WHITE};border:1px solid {style.BORDER};border-collapse:separate;"
        f'border-radius:8px;font-family:{style.FONT};font-size:14px;line-height:1.6;color:{style.TEXT}">\n'
        + "\n".join(part for part in [*rows, footer] if part)
        + "\n</table>\n</td></tr></table>\n</body></html>\n"
    )


# --------------------------------------------------------------------------- mail


def assemble(
    headers: Sequence[str],
    text: str,
    render: Callable[[set[str]], str],
    messages: Iterable[Message],
    images: Mapping[str, Attachment],
) -> mime.Mail:
    """A digest's mail: the text, and the HTML `render` makes knowing which Content-IDs
    are attached, with the messages' downloaded images inline, each once; an image not
    downloaded shows as a note, and one no message shows is not attached."""
    keys = (r.key for m in messages for r in m.resources if r.kind == "image" and r.key in images)
    used = [(key, images[key]) for key in dict.fromkeys(keys)]
    document = render({image_cid(key) for key, _ in used})
    inline = [inline_image(att, image_cid(key), att.filename) for key, att in used]
    body = mime.Multipart("alternative", (mime.text(text), html_with_images(document, inline)))
    return mime.Mail(tuple(headers), body)


@dataclass(frozen=True)
class Composed:
    """A digest's mail, with the subject and text it was made of (the text is also
    what `send-report --dry-run` prints: rendered once, here)."""

    subject: str
    text: str
    mail: mime.Mail


def compose_digest(
    d: Digest,
    *,
    subject: str,
    sender: str,
    to: Sequence[str],
    message_id: str,
    date: datetime,
    images: Mapping[str, Attachment],
) -> Composed:
    """The digest as text + HTML with the reports' images inline.

    `subject` is the template (ReportSettings.subject), rendered here from the
    digest itself so the counts in the subject always agree with the body.
    `images` maps Feishu image keys to downloaded images; an image that is
    missing shows as a note instead of a broken icon, and images not used by
    any report are not attached.  `date` is when the digest is composed; the
    outbox should pass the stored one so a retry produces the same headers.
    """
    rendered = subjects.render_digest_subject(
        subject, d.day, d.chat_name, d.submitted, d.expected, supplement=d.supplement
    )
    headers = base_headers(subject=rendered, sender=sender, to=to, message_id=message_id, date=date)
    headers.append(f"X-Feishu-Mailbot-Report-Day: {d.day.isoformat()}")

    title = sanitize_header(rendered)
    shown = (e.message for section in d.sections for e in section.entries)

    def html(available: set[str]) -> str:
        return render_html(d, title=title, generated=date, available=available)

    text = render_text(d)
    return Composed(title, text, assemble(headers, text, html, shown, images))


__all__ = [
    "Composed",
    "assemble",
    "compose_digest",
    "render_html",
    "render_text",
]
