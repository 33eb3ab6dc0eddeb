"""Forwarded chat messages and recall notices, as the bytes the SMTP server gets.

Everything that ends up in a header is either from the config (addresses,
domain) or passes through `sanitize_header`; chat content only ever reaches a
body, HTML-escaped and base64-encoded.  That is what makes header injection
impossible even for a chat named ``"x\\r\\nBcc: victim@example.com"``.

The wire form is written by mime.py (CRLF line endings, folded headers), and
the outbox stores exactly those bytes, so every retry sends the same mail.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from email.utils import format_datetime, parseaddr

from feishu_mailbot.core.model import FORWARD_LABEL, Download, Forwarded, Message, Resource, text_of
from feishu_mailbot.core.subjects import render_subject
from feishu_mailbot.core.text import preview, single_line
from feishu_mailbot.mail import mime, style
from feishu_mailbot.mail.html import escape, html, image_cid

DEFAULT_DOMAIN = "feishu-mailbot"
MAILER = "feishu-mailbot"


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes
    # Set for an inline image: present.image_cid(resource.key), the id the HTML refers to.
    content_id: str | None = None


@dataclass(frozen=True)
class Omitted:
    """A file left in Feishu for being over a size cap; the mail names it instead."""

    filename: str
    size: int | None  # None: only known to be over `limit`
    limit: int
    refused: bool = False  # Feishu would not give it (a file inside a merged forward)


TOO_LARGE = "附件过大，请在飞书中查看"
NOT_ATTACHED = "附件未随邮件发送，请在飞书中查看"


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


_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "application/pdf": ".pdf",
    "audio/ogg": ".ogg",  # Feishu's voice messages: opus in ogg
    "audio/opus": ".opus",
    "video/mp4": ".mp4",
}


def _name(res: Resource, got: Download) -> str:
    name = res.name or got.filename or f"{res.kind}-{res.key}"
    if not (res.name or got.filename):
        name += _EXTENSIONS.get(got.content_type, "")
    return name


def attachments_of(downloads: Mapping[Resource, Download]) -> list[Attachment]:
    """Downloaded resources as mail parts: images inline (their Image blocks refer to
    them by cid), files, videos and voice attached under their names. Resources that
    were too large to download are left out (see `omitted`)."""
    out = []
    for res, got in downloads.items():
        if got.data is None:
            continue
        inline = image_cid(res.key) if res.kind == "image" else None
        out.append(Attachment(_name(res, got), got.content_type, got.data, inline))
    return out


def omission(res: Resource, got: Download, limit: int) -> Omitted:
    return Omitted(_name(res, got), got.size, limit)


def refusal(res: Resource) -> Omitted:
    """A file Feishu would not give, named as it would have been attached."""
    return Omitted(_name(res, Download(None, "", None)), None, 0, refused=True)


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def omitted_lines(files: Sequence[Omitted]) -> list[str]:
    """`report.zip (60.0 MB)`, `(超过 20.0 MB)` when Feishu did not say how large, or
    `(本邮件附件已满)` when earlier files took all the room."""

    def size(f: Omitted) -> str:
        if f.refused:
            return "飞书不提供下载"
        if f.size is not None:
            return _megabytes(f.size)
        return f"超过 {_megabytes(f.limit)}" if f.limit > 0 else "本邮件附件已满"

    return [f"{single_line(f.filename) or 'attachment'} ({size(f)})" for f in files]


def sanitize_header(value: str) -> str:
    """Flatten CR, LF and every other control character to single spaces.

    The email policy would reject a raw CR/LF anyway, but with an exception
    that would lose the mail; flattening keeps the mail and the header inert.
    """
    return single_line(value)


_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_MSG_ID = re.compile(r"<[^<>\s@]+@[^<>\s@]+>")


def make_message_id(seed: str, domain: str = DEFAULT_DOMAIN) -> str:
    """A Message-ID derived only from `seed`.

    The outbox passes the row's identity as the seed, so a retry after a
    crash between "SMTP accepted" and "row marked sent" reuses the same id
    and receiving servers/clients can recognise the duplicate.
    """
    if not _DOMAIN.fullmatch(domain):
        raise ValueError(f"invalid Message-ID domain {domain!r}")
    digest = hashlib.sha256(seed.encode("utf-8")).hexdigest()[:40]
    return f"<{digest}@{domain}>"


# --------------------------------------------------------------------------- headers


def _address(value: str) -> str:
    """Addresses come from the config; a control character there is a bug, not data."""
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):
        raise ValueError(f"address contains control characters: {value!r}")
    value = value.strip()
    if not value:
        raise ValueError("empty address")
    return value


def _message_id(value: str, what: str) -> str:
    value = value.strip()
    if not _MSG_ID.fullmatch(value):
        raise ValueError(f"{what} is not a <local@domain> message id: {value!r}")
    return value


def _sender(value: str) -> str:
    name, addr = parseaddr(_address(value))
    if not addr:
        raise ValueError(f"no address in sender {value!r}")
    return mime.address((name, addr))


def base_headers(
    *,
    subject: str,
    sender: str,
    to: Sequence[str],
    message_id: str,
    date: datetime,
) -> list[str]:
    """The headers every mail of ours has, ready for mime.render."""
    recipients = [_address(a) for a in to]
    if not recipients:
        raise ValueError("a mail needs at least one recipient")
    return [
        mime.header("Subject", sanitize_header(subject) or "(无主题)"),
        f"From: {_sender(sender)}",
        mime.address_list("To", recipients),
        f"Date: {format_datetime(date)}",
        f"Message-ID: {_message_id(message_id, 'message_id')}",
        # RFC 3834: tells vacation responders and ticket systems not to answer a bot.
        "Auto-Submitted: auto-generated",
        f"X-Mailer: {MAILER}",
    ]


def format_when(date: datetime, *, seconds: bool = True) -> str:
    """A time as the reader's team sees it, with the offset spelled out."""
    text = date.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    offset = date.utcoffset()
    if offset is None:
        return text
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{text} (UTC{sign}{minutes // 60:02d}:{minutes % 60:02d})"


# --------------------------------------------------------------------------- bodies


def _html_document(meta: str, content: str, footer: str) -> str:
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n'
        f'<body style="{style.BODY}">\n'
        f'<div style="{style.META}">{meta}</div>\n'
        f'<div style="{style.CONTENT}">{content}</div>\n'
        f'<div style="{style.FOOTER}">{footer}</div>\n'
        "</body></html>\n"
    )


def _split_type(content_type: str) -> tuple[str, str]:
    maintype, _, subtype = content_type.strip().lower().partition("/")
    token = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*")
    if (
        not token.fullmatch(maintype)
        or not token.fullmatch(subtype)
        or maintype in ("multipart", "message")
    ):
        return "application", "octet-stream"
    return maintype, subtype


def _filename(name: str) -> str:
    """A header-safe file name; path separators go too so no client writes outside its folder.

    Format characters (Unicode Cf: bidi overrides, zero-width joiners) go as well, or
    `invoice\u202egpj.exe` would show as `invoiceexe.jpg`.
    """
    visible = "".join(c for c in name if unicodedata.category(c) != "Cf")
    cleaned = sanitize_header(visible).replace("/", "_").replace("\\", "_").strip(" .")
    return cleaned or "attachment"


def _cid(content_id: str) -> str:
    return sanitize_header(content_id).strip("<> ")


def html_with_images(document: str, images: Sequence[mime.Leaf]) -> mime.Part:
    """The HTML part, with its inline images beside it in a multipart/related."""
    part = mime.text(document, "html")
    return mime.Multipart("related", (part, *images)) if images else part


def inline_image(att: Attachment, content_id: str, filename: str) -> mime.Leaf:
    maintype, subtype = _split_type(att.content_type)
    return mime.Leaf(
        f"{maintype}/{subtype}",
        att.data,
        disposition="inline",
        filename=_filename(filename),
        content_id=_cid(content_id),
    )


def _headline(msg: Message) -> str:
    """What a subject previews: a merged forward's first message, not its quoting."""
    first = msg.blocks[0] if msg.blocks else None
    if isinstance(first, Forwarded) and first.items:
        item = first.items[0]
        return f"{FORWARD_LABEL} {item.sender}: {text_of(item.blocks)}"
    return msg.text


def forward(
    msg: Message,
    *,
    subject_template: str,
    sender: str,
    to: Sequence[str],
    chat_name: str,
    sender_name: str,
    rule_names: Sequence[str],
    message_id: str,
    zone: tzinfo,
    attachments: Sequence[Attachment] = (),
    omitted: Sequence[Omitted] = (),
    thread: Thread = Thread(),
) -> tuple[str, mime.Mail]:
    """A chat message forwarded by rules: (subject, mail), times shown in `zone`."""
    date = datetime.fromtimestamp(msg.create_time_ms / 1000, zone)
    subject = render_subject(
        subject_template,
        chat_name=chat_name,
        sender_name=sender_name,
        preview=preview(_headline(msg)),
        rule=rule_names[0] if rule_names else "",
        msg_type=msg.msg_type,
        date=date.strftime("%Y-%m-%d %H:%M"),
    )
    if thread.subject:
        root = sanitize_header(thread.subject)
        subject = root if root.lower().startswith("re:") else f"Re: {root}"
    forwarded = forward_mail(
        msg,
        subject=subject,
        sender=sender,
        to=to,
        chat_name=chat_name,
        sender_name=sender_name,
        rule_names=rule_names,
        message_id=message_id,
        date=date,
        attachments=attachments,
        omitted=omitted,
        thread=thread,
    )
    return subject, forwarded


def forward_mail(
    msg: Message,
    *,
    subject: str,
    sender: str,
    to: Sequence[str],
    chat_name: str,
    sender_name: str,
    rule_names: Sequence[str],
    message_id: str,
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
    headers = base_headers(subject=subject, sender=sender, to=to, message_id=message_id, date=date)
    headers.append(mime.header("X-Feishu-Message-Id", sanitize_header(msg.message_id)))
    headers.append(mime.header("X-Feishu-Chat-Id", sanitize_header(msg.chat_id)))
    if rule_names:
        headers.append(
            mime.header("X-Feishu-Mailbot-Rules", sanitize_header(", ".join(rule_names)))
        )
    if thread.references:
        ids = [_message_id(r, "references") for r in thread.references]
        headers.append(f"In-Reply-To: {ids[-1]}")
        headers.append(mime.header("References", " ".join(ids)))

    chat = single_line(chat_name) or msg.chat_id
    who = single_line(sender_name) or msg.sender_open_id or "未知发送者"
    when = format_when(date)
    rules_text = ", ".join(single_line(r) for r in rule_names)
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
    document = _html_document(meta, content, escape(footer))

    body: mime.Part = mime.Multipart(
        "alternative", (mime.text(text), html_with_images(document, images))
    )
    if files:
        attached = []
        for att in files:
            maintype, subtype = _split_type(att.content_type)
            attached.append(
                mime.Leaf(
                    f"{maintype}/{subtype}",
                    att.data,
                    disposition="attachment",
                    filename=_filename(att.filename),
                )
            )
        body = mime.Multipart("mixed", (body, *attached))
    return mime.Mail(tuple(headers), body)


def compose_recall_notice(
    *,
    original_subject: str,
    original_message_id: str,
    sender: str,
    to: Sequence[str],
    chat_name: str,
    sender_name: str,
    message_id: str,
    date: datetime,
) -> bytes:
    """A short follow-up threaded under the forwarded mail, saying it was recalled.

    The subject leads with [已撤回] so the inbox shows it without opening;
    In-Reply-To/References keep it in the original's thread in clients that
    thread by references.
    """
    original = _message_id(original_message_id, "original_message_id")
    subject = sanitize_header(original_subject)
    headers = base_headers(
        subject=recall_subject(original_subject),
        sender=sender,
        to=to,
        message_id=message_id,
        date=date,
    )
    headers.append(f"In-Reply-To: {original}")
    headers.append(f"References: {original}")

    chat = single_line(chat_name) or "群聊"
    who = single_line(sender_name) or "发送者"
    when = format_when(date)
    line = f"{who} 在「{chat}」撤回了一条消息（{when}）。"
    detail = f"原邮件: {subject}"
    note = "该消息在飞书中已不可见，之前转发的邮件内容可能已不再有效。"
    text = f"{line}\n{detail}\n\n{note}\n\n-- \n由 feishu-mailbot 发送\n"
    document = _html_document(
        f"<b>{escape(chat)}</b> · {escape(who)} · {escape(when)}",
        f"<p>{escape(line)}</p><p>{escape(detail)}</p><p>{escape(note)}</p>",
        escape("由 feishu-mailbot 发送"),
    )
    return mime.render(
        headers, mime.Multipart("alternative", (mime.text(text), mime.text(document, "html")))
    )


def recall_subject(original_subject: str) -> str:
    return f"[已撤回] {sanitize_header(original_subject)}"


__all__ = [
    "TOO_LARGE",
    "Attachment",
    "Omitted",
    "Thread",
    "attachments_of",
    "base_headers",
    "compose_recall_notice",
    "forward",
    "forward_mail",
    "html_with_images",
    "inline_image",
    "make_message_id",
    "omission",
    "omitted_lines",
    "recall_subject",
    "sanitize_header",
]
