"""The notice that follows a forwarded mail whose chat message was recalled."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from feishu_mailbot.core.text import single_line
from feishu_mailbot.mail import mime
from feishu_mailbot.mail.headers import (
    base_headers,
    checked_message_id,
    format_when,
    sanitize_header,
)
from feishu_mailbot.mail.html import document, escape


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
    original = checked_message_id(original_message_id, "original_message_id")
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
    page = document(
        f"<b>{escape(chat)}</b> · {escape(who)} · {escape(when)}",
        f"<p>{escape(line)}</p><p>{escape(detail)}</p><p>{escape(note)}</p>",
        escape("由 feishu-mailbot 发送"),
    )
    return mime.render(
        headers, mime.Multipart("alternative", (mime.text(text), mime.text(page, "html")))
    )


def recall_subject(original_subject: str) -> str:
    return f"[已撤回] {sanitize_header(original_subject)}"
