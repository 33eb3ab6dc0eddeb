"""A mail that came in, read into plain data (core.reply.Inbound).

Mail from the clients used here comes in every charset they know: a part that
says gb2312 or gbk is read as GB 18030, which contains both (Foxmail labels GBK
text gb2312). An HTML-only mail (Outlook can send one) is read as text, with
its `<blockquote>` quotes marked with `>` so that core.reply cuts them as it
cuts a plain-text quote. The inline images of the quoted part (Outlook keeps the
quoted mail's) go with it.
"""

from __future__ import annotations

import email
import email.policy
import re
from email import errors
from email.message import EmailMessage, Message
from email.utils import getaddresses
from html.parser import HTMLParser
from typing import Any

from feishu_mailbot.core.reply import ImagePart, Inbound, new_text
from feishu_mailbot.mail import bounce

# Printable only: a Message-ID is stored, and PostgreSQL refuses a NUL in text.
_MESSAGE_ID = re.compile(r"<([^<>\s\x00-\x1f\x7f]+)>")
_DELIVERED = ("to", "cc", "delivered-to", "x-original-to", "envelope-to")
# Charsets whose labels mail clients use for text in a larger one.
_WIDER = {"gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "ascii": "utf-8"}


def parse(raw: bytes) -> Inbound:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    name, address = _sender(message)
    delivered = [str(v) for h in _DELIVERED for v in message.get_all(h, [])]
    text, images, files = _body(message)
    headers: dict[str, list[str]] = {}
    for key, value in message.items():  # topmost first
        headers.setdefault(key.lower(), []).append(str(value))
    own = _ids(str(message.get("Message-ID", "")))
    report = bounce.read(message, address, text)
    return Inbound(
        message_id=own[0] if own else "",
        from_address=address,
        from_name=name,
        subject=str(message.get("Subject", "")),
        in_reply_to=_ids(str(message.get("In-Reply-To", ""))),
        references=_ids(str(message.get("References", ""))),
        to=tuple(dict.fromkeys(a.lower() for _, a in getaddresses(delivered) if a)),
        text=text,
        headers={k: tuple(v) for k, v in headers.items()},
        images=tuple(images),
        files=tuple(files),
        report=report,
    )


def _sender(message: EmailMessage) -> tuple[str, str]:
    """The From's display name and address (lower case), or ("", "") unless the mail has
    one From header holding one well-formed address: what a receiving server checked
    (DMARC is about that one address) must be what the bot reads, and parsers differ
    on the rest (`victim@corp <attacker@evil>`, two addresses, two headers)."""
    headers = message.get_all("From", [])
    if len(headers) != 1:
        return "", ""
    header = headers[0]
    addresses: tuple[Any, ...] = tuple(getattr(header, "addresses", ()))
    # Raw UTF-8 in a display name (RFC 6532) is undecodable to the parser, not invalid.
    undecodable = errors.UndecodableBytesDefect
    defects = [d for d in getattr(header, "defects", ()) if not isinstance(d, undecodable)]
    if len(addresses) != 1 or defects or not addresses[0].addr_spec:
        return "", ""
    name = str(addresses[0].display_name)
    if any("\udc80" <= c <= "\udcff" for c in name):  # raw UTF-8 bytes, as the parser kept them
        name = name.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    return name, str(addresses[0].addr_spec).lower()


def _ids(value: str) -> tuple[str, ...]:
    return tuple(_MESSAGE_ID.findall(value))


def _body(message: EmailMessage) -> tuple[str, list[ImagePart], list[str]]:
    """The text (plain preferred, else HTML read as text), the images, the other files."""
    plain: str | None = None
    html: str | None = None
    images: list[ImagePart] = []
    files: list[str] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        name = part.get_filename()
        attached = part.get_content_disposition() == "attachment"
        if kind.startswith("image/"):
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                cid = str(part.get("Content-ID", "")).strip().strip("<>")
                images.append(ImagePart(name or f"image.{kind[6:]}", kind, data, cid))
        elif kind == "text/plain" and not attached and plain is None:
            plain = _text_of(part)
        elif kind == "text/html" and not attached and html is None:
            html = _text_of(part)
        elif name or attached:
            files.append(name or kind)
    if html is not None:
        quoted = quoted_images(html)  # cut with the quote, as its text is
        images = [i for i in images if not i.content_id or i.content_id not in quoted]
    if plain is None and html is not None:
        plain = html_text(html)
    return plain or "", images, files


def _text_of(part: Message) -> str:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    charset = (part.get_content_charset() or "utf-8").lower()
    try:
        return data.decode(_WIDER.get(charset, charset), errors="replace")
    except LookupError:  # a charset Python does not know
        return data.decode("utf-8", errors="replace")


_BLOCKS = {
    "p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "hr", "pre",
    "blockquote", "ul", "ol",
}  # fmt: skip
_HIDDEN = {"style", "script", "head", "title"}


class _Text(HTMLParser):
    def __init__(self, mark_images: bool = False) -> None:
        super().__init__(convert_charrefs=True)
        self.mark_images = mark_images  # an <img src="cid:…"> leaves _CID_MARK in its line
        self.lines: list[str] = [""]
        self.quoted = 0  # inside how many blockquotes
        self.hidden = 0
        self.blank = False  # the line so far is a no-break space

    def _break(self) -> None:
        """A block ends the line; one that held only a no-break space (Outlook's empty
        paragraph) is a blank line of its own."""
        if self.lines[-1].strip(" >") or self.blank:
            self.lines.append("")
        else:
            self.lines[-1] = ""
        self.blank = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self.hidden += 1
        elif tag == "img" and self.mark_images and not self.hidden:
            src = dict(attrs).get("src") or ""
            if src.lower().startswith("cid:"):
                if not self.lines[-1] and self.quoted:
                    self.lines[-1] = "> " * self.quoted
                self.lines[-1] += f"\ue000{src[4:].strip()}\ue001"
        elif tag == "br":
            self.lines.append("")
            self.blank = False
        elif tag in _BLOCKS:
            self._break()
            if tag == "blockquote":
                self.quoted += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in _BLOCKS:
            if tag == "blockquote":
                self.quoted = max(0, self.quoted - 1)
            self._break()

    def handle_data(self, data: str) -> None:
        if self.hidden:
            return
        if "\xa0" in data and not data.replace("\xa0", " ").strip():
            self.blank = not self.lines[-1].strip(" >")
        text = re.sub(r"\s+", " ", data.replace("\xa0", " "))
        if not self.lines[-1] and self.quoted:
            self.lines[-1] = "> " * self.quoted
        self.lines[-1] += text.lstrip() if not self.lines[-1].strip(" >") else text


def html_text(html: str, mark_images: bool = False) -> str:
    """An HTML body as the lines a reader sees, quotes marked with `>`; with
    `mark_images`, an inline image (`cid:`) leaves a private-use mark where it shows."""
    parser = _Text(mark_images)
    parser.feed(html)
    parser.close()
    return "\n".join(line.rstrip() for line in parser.lines).strip("\n")


_CID_MARK = re.compile("\ue000([^\ue001]*)\ue001")


def quoted_images(html: str) -> frozenset[str]:
    """The Content-IDs of the inline images an HTML reply shows only in the mail it
    quotes (Outlook keeps the quoted mail's images): cut with the quote, as its text is."""
    marked = html_text(html, mark_images=True)
    kept = set(_CID_MARK.findall(new_text(marked)))
    return frozenset(set(_CID_MARK.findall(marked)) - kept)
