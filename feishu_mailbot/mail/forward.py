"""A forwarded chat message as the mail a rule sends: text and HTML, images inline, files.

Chat content only ever reaches a body, HTML-escaped and base64-encoded, and a
header only through `headers.sanitize_header`: header injection is impossible
even for a chat named ``"x\\r\\nBcc: victim@example.com"``. The wire form is
written by mime.py, and the outbox stores exactly those bytes, so every retry
sends the same mail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from feishu_mailbot.core.model import FORWARD_LABEL, Forwarded, Message, text_of
from feishu_mailbot.core.subjects import render_subject
from feishu_mailbot.core.text import preview, single_line
from feishu_mailbot.mail import mime, style
from feishu_mailbot.mail.attachments import (
    NOT_ATTACHED,
    TOO_LARGE,
    Attachment,
    Omitted,
    file_part,
    html_with_images,
    inline_image,
    omitted_lines,
)
from feishu_mailbot.mail.headers import (
    base_headers,
    checked_message_id,
    format_when,
    sanitize_header,
)
from feishu_mailbot.mail.html import document, escape, html


@dataclass(frozen=True)
class Thread:
    """Where a reply in a Feishu thread sits among the mails its recipients already got.

    `references` are those mails' Message-IDs, the thread's root first and the
    message replied to last (RFC 5322 In-Reply-To/References); `subject` is the
    root mail's, for a "Re:" subject that threads in clients that go by subject.
    """

    references: tuple[str, ...] = ()
    subject: str | None = None
    quote: str = ""  # "张三: 原话", the message replied to, one line


# --------------------------------------------------------------------------- bodies


def _headline(msg: Message) -> str:
    """What a subject previews: a merged forward's first message, not its quoting."""
    first = msg.blocks[0] if msg.blocks else None
    if isinstance(first, Forwarded) and first.items:
        item = first.items[0]
        return f"{FORWARD_LABEL} {item.sender}: {text_of(item.blocks)}"
    return msg.text


def sent_at(msg: Message, zone: tzinfo) -> datetime:
    """The message's time in the team's zone: its forward's Date and the time it shows."""
    return datetime.fromtimestamp(msg.create_time_ms / 1000, zone)


@dataclass(frozen=True)
class Envelope:
    """Who a forward is from and to, and the names it shows for the chat, the sender and
    the rules that sent it."""

    sender: str
    to: Sequence[str]
    chat_name: str
    sender_name: str
    rule_names: Sequence[str]
    message_id: str
    lists: Sequence[str] = ()  # List-Id, List-Unsubscribe, Reply-To (compose/sources.py)


def subject_of(
    msg: Message, template: str, env: Envelope, *, date: datetime, thread: Thread = Thread()
) -> str:
    """The rule's subject template filled; a reply in a thread takes the thread's subject."""
    if thread.subject:
        root = sanitize_header(thread.subject)
        return root if root.lower().startswith("re:") else f"Re: {root}"
    return render_subject(
        template,
        chat_name=env.chat_name,
        sender_name=env.sender_name,
        preview=preview(_headline(msg)),
        rule=env.rule_names[0] if env.rule_names else "",
        msg_type=msg.msg_type,
        date=date.strftime("%Y-%m-%d %H:%M"),
    )


def forward_mail(
    msg: Message,
    env: Envelope,
    *,
    subject: str,
    date: datetime,
    attachments: Sequence[Attachment] = (),
    omitted: Sequence[Omitted] = (),
    thread: Thread = Thread(),
) -> mime.Mail:
    """One chat message as a text + HTML mail, images inline and files attached;
    files too large to carry are named in a note instead; a reply quotes what it
    replies to and threads under the mails of its thread.

    `date` is the message's time in the team's timezone; it is both the Date
    header and the time shown in the body, so recomposing the same outbox row
    gives the same headers (only MIME boundaries, which are random to stay
    unguessable by chat users, differ).
    """
    headers = base_headers(
        subject=subject, sender=env.sender, to=env.to, message_id=env.message_id, date=date
    )
    headers.append(mime.header("X-Feishu-Message-Id", sanitize_header(msg.message_id)))
    headers.append(mime.header("X-Feishu-Chat-Id", sanitize_header(msg.chat_id)))
    if env.rule_names:
        headers.append(
            mime.header("X-Feishu-Mailbot-Rules", sanitize_header(", ".join(env.rule_names)))
        )
    headers.extend(env.lists)
    if thread.references:
        ids = [checked_message_id(r, "references") for r in thread.references]
        headers.append(f"In-Reply-To: {ids[-1]}")
        headers.append(mime.header("References", " ".join(ids)))

    chat = single_line(env.chat_name) or msg.chat_id
    who = single_line(env.sender_name) or msg.sender_open_id or "未知发送者"
    when = format_when(date)
    rules_text = ", ".join(single_line(r) for r in env.rule_names)
    footer = "由 feishu-mailbot 转发" + (f" · 规则: {rules_text}" if rules_text else "")

    too_large = omitted_lines(omitted)
    heading = NOT_ATTACHED if any(f.refused for f in omitted) else TOO_LARGE
    note = "".join(f"\n- {line}" for line in too_large)
    note = f"\n\n{heading}:{note}" if too_large else ""
    quote = single_line(thread.quote)
    quoted = f"> {quote}\n\n" if quote else ""
    text = f"{chat} · {who} · {when}\n\n{quoted}{msg.text}{note}\n\n-- \n{footer}\n"
    images = [inline_image(a, a.content_id, a.filename) for a in attachments if a.content_id]
    files = [a for a in attachments if not a.content_id]
    available = {leaf.content_id for leaf in images if leaf.content_id}
    meta = f"<b>{escape(chat)}</b> · {escape(who)} · {escape(when)}"
    content = html(msg.blocks, available)
    if quote:
        content = f'<blockquote style="{style.QUOTE}">{escape(quote)}</blockquote>' + content
    if too_large:
        items = "".join(f"<li>{escape(line)}</li>" for line in too_large)
        content += f'<div style="{style.NOTE}">{escape(heading)}:<ul>{items}</ul></div>'
    page = document(meta, content, escape(footer))

    body: mime.Part = mime.Multipart(
        "alternative", (mime.text(text), html_with_images(page, images))
    )
    if files:
        body = mime.Multipart("mixed", (body, *(file_part(att) for att in files)))
    return mime.Mail(tuple(headers), body)
