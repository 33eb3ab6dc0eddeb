"""A delivery report read from a parsed mail into core.bounce.Report.

RFC 3464's `message/delivery-status` holds one block of fields per recipient;
the mail it returns follows as `text/rfc822-headers` or `message/rfc822`, whose
Message-ID is one of ours. A report without that form is kept as its text, with
every Message-ID it quotes, for core.bounce to search.
"""

from __future__ import annotations

import base64
import quopri
import re
from email.message import EmailMessage, Message

from feishu_mailbot.core.bounce import (
    MAX_DIAGNOSTIC,
    Failure,
    Report,
    looks_like_report,
    status_of,
)
from feishu_mailbot.core.text import single_line

_MESSAGE_ID = re.compile(
    r"^\s*Message-ID\s*:\s*<([^<>\s\x00-\x1f\x7f]+)>", re.IGNORECASE | re.MULTILINE
)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_ADDRESS = re.compile(r"[^\s@<>\x00-\x1f\x7f]+@[^\s@<>\x00-\x1f\x7f]+")
# The parts in which a report returns the mail, or its headers.
_RETURNED = ("text/rfc822-headers", "message/rfc822", "message/global-headers", "message/global")


def read(message: EmailMessage, from_address: str, text: str) -> Report | None:
    """The report `message` is, or None when it is not one. `text` is its readable
    text as mail/reply.py found it."""
    if message.get_content_type() == "multipart/report":
        kind = str(message.get_param("report-type", "", header="content-type")).lower()
        if kind in ("delivery-status", "global-delivery-status"):  # RFC 3464, RFC 6533
            return _standard(message)
    headers: dict[str, list[str]] = {}
    for key, value in message.items():
        headers.setdefault(key.lower(), []).append(str(value))
    if not looks_like_report(from_address, str(message.get("Subject", "")), headers):
        return None
    return Report((), tuple(dict.fromkeys(_MESSAGE_ID.findall(_all_text(message)))), text, False)


def _standard(message: EmailMessage) -> Report:
    failures: list[Failure] = []
    returned: list[str] = []
    for part in message.walk():
        kind = part.get_content_type()
        if kind in ("message/delivery-status", "message/global-delivery-status"):
            for block in _BLANK_LINE.split(_content(part))[1:]:  # the first is the message's
                failures += _recipient(_fields(block))
        elif kind in _RETURNED:
            head = _BLANK_LINE.split(_content(part).lstrip("\n"), 1)[0]
            returned += _MESSAGE_ID.findall(head)
    return Report(tuple(failures), tuple(dict.fromkeys(returned)), "", True)


def _content(part: Message) -> str:
    """A part's content as text, undecoded by the parser: Python reads message/*
    parts as mail, which a report's blocks of fields are not."""
    raw = part.as_bytes().replace(b"\r\n", b"\n")
    body = raw.split(b"\n\n", 1)[1] if b"\n\n" in raw else b""
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    try:
        if encoding == "base64":
            body = base64.b64decode(body)
        elif encoding == "quoted-printable":
            body = quopri.decodestring(body)
    except ValueError:
        pass  # read as it is
    return body.decode("utf-8", "replace")


def _fields(block: str) -> dict[str, str]:
    """A block of `Name: value` lines (folded lines unfolded), names in lower case."""
    out: dict[str, str] = {}
    name = ""
    for line in block.splitlines():
        if line[:1] in (" ", "\t") and name:
            out[name] += " " + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            out[name] = value.strip()
    return out


def _recipient(fields: dict[str, str]) -> list[Failure]:
    """A per-recipient block that says the mail failed, under both the address our mail
    named (Original-Recipient, when an alias was expanded) and the one that failed;
    delayed, delivered, relayed or expanded ones are not bounces."""
    if fields.get("action", "").lower() != "failed":
        return []
    status = status_of(fields.get("status", ""))
    diagnostic = single_line(fields.get("diagnostic-code", "").partition(";")[2])
    named = (fields.get(h, "") for h in ("original-recipient", "final-recipient"))
    addresses = dict.fromkeys(single_line(n.partition(";")[2]).strip("<> ").lower() for n in named)
    return [
        Failure(a, status, diagnostic[:MAX_DIAGNOSTIC]) for a in addresses if _ADDRESS.fullmatch(a)
    ]


def _all_text(message: EmailMessage) -> str:
    """Every part's content (a returned mail's headers too), where a quoted Message-ID
    may be."""
    texts = [_content(p) for p in message.walk() if p.get_content_maintype() != "multipart"]
    return "\n".join(texts)
