"""The headers every mail of ours carries: sender, recipients, Message-ID, date.

Everything that ends up in a header is either from the config (addresses,
checked when it is loaded) or passed through `sanitize_header`, so nothing typed
in a chat can add a header.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from email.utils import format_datetime, parseaddr

from feishu_mailbot.core.reply import mail_key
from feishu_mailbot.core.text import single_line
from feishu_mailbot.core.unsubscribe import list_id, mailto
from feishu_mailbot.mail import mime

DEFAULT_DOMAIN = "feishu-mailbot"
MAILER = "feishu-mailbot"


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
    return f"<{mail_key(seed)}@{domain}>"


# --------------------------------------------------------------------------- headers


def _address(value: str) -> str:
    """Addresses come from the config; a control character there is a bug, not data."""
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):
        raise ValueError(f"address contains control characters: {value!r}")
    value = value.strip()
    if not value:
        raise ValueError("empty address")
    return value


def checked_message_id(value: str, what: str) -> str:
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
        f"Message-ID: {checked_message_id(message_id, 'message_id')}",
        # RFC 3834: tells vacation responders and ticket systems not to answer a bot;
        # Exchange and Outlook heed only their own header for it.
        "Auto-Submitted: auto-generated",
        "X-Auto-Response-Suppress: All",
        f"X-Mailer: {MAILER}",
    ]


def list_headers(rules: Sequence[str], key: bytes, mailbox: str) -> list[str]:
    """List-Id and List-Unsubscribe (RFC 2919, 2369) of a mail sent for `rules`: an
    unsubscribe request goes to the bot's `mailbox` (smtp.from), which it reads."""
    _, addr = parseaddr(_address(mailbox))
    domain = addr.rpartition("@")[2] or DEFAULT_DOMAIN
    return [
        "List-Id: " + mime.address((sanitize_header(rules[0]), list_id(key, rules[0], domain))),
        f"List-Unsubscribe: <{mailto(addr, key, rules)}>",
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
