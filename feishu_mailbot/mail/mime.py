"""A small MIME writer: headers and a tree of parts in, the mail's wire bytes out.

The stdlib's `EmailMessage` costs ten times the CPU for the one fixed shape
our mails have (docs/design.md), so the structure is written directly. The
encodings themselves are the stdlib's:

- every body is base64 (UTF-8 for text), so chat content never reaches a
  header and no line is ever too long, whatever the relay;
- headers are plain ASCII folded at spaces, or RFC 2047 encoded words
  (email.header.Header); display names go through email.utils.formataddr;
- file names use RFC 2231 (email.utils.encode_rfc2231), in sections if long.

Values must be single lines already (forward.sanitize_header); a CR or LF here is
a programming error and raises. The tests parse every mail back with the
stdlib parser.
"""

from __future__ import annotations

import base64
import io
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.header import Header
from email.utils import encode_rfc2231, formataddr
from typing import BinaryIO

MAX_LINE = 78  # RFC 5322's "SHOULD"; 998 is the hard limit


@dataclass(frozen=True)
class Leaf:
    """One body part; `content_type` is "maintype/subtype"."""

    content_type: str
    data: bytes
    disposition: str | None = None  # "inline" | "attachment"
    filename: str | None = None
    content_id: str | None = None  # without the angle brackets
    charset: str | None = None  # for text we wrote; an attached file's bytes are its own


@dataclass(frozen=True)
class Multipart:
    subtype: str  # "alternative" | "related" | "mixed"
    parts: tuple[Leaf | Multipart, ...]


Part = Leaf | Multipart


def text(value: str, subtype: str = "plain") -> Leaf:
    return Leaf(f"text/{subtype}", value.encode("utf-8"), charset="utf-8")


def header(name: str, value: str) -> str:
    """`Name: value` folded to MAX_LINE, RFC 2047-encoded unless plain ASCII."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"{name} header value contains a line break")
    words = value.split(" ")
    if value.isascii() and value.isprintable() and "=?" not in value and max(map(len, words)) < 70:
        return _fold(name, words, " ")
    # The stdlib's Header splits into encoded words on whole characters and folds them.
    encoded = Header(value, "utf-8", maxlinelen=MAX_LINE, header_name=name)
    return f"{name}: " + encoded.encode(linesep="\r\n")


def address(mailbox: tuple[str, str]) -> str:
    """`Display Name <addr>` with the name quoted or encoded as it needs.

    The name stays one encoded word even past 75 characters: split, the stdlib
    parser (and some clients) keep the space between adjacent encoded words
    of a display name. formataddr does exactly that.
    """
    return formataddr(mailbox, "utf-8")


def address_list(name: str, addresses: Sequence[str]) -> str:
    """`To: a, b, c`, folded after a comma when a line would grow too long."""
    return _fold(name, [a + "," for a in addresses[:-1]] + list(addresses[-1:]), " ")


@dataclass(frozen=True)
class Mail:
    """A mail ready to write: `headers` (already from header()/address…) and its body."""

    headers: tuple[str, ...]
    body: Part

    def render(self) -> bytes:
        out = io.BytesIO()
        self.write(out)
        return out.getvalue()

    def write(self, out: BinaryIO) -> None:
        """Streams the wire form: a 20 MB file costs a 64 KiB chunk of memory, not 3 copies."""
        _part(self.body, [*self.headers, "MIME-Version: 1.0"], out.write)


def render(headers: Sequence[str], body: Part) -> bytes:
    """The whole mail: `headers` (already from header()/address…), MIME-Version, body."""
    return Mail(tuple(headers), body).render()


# base64 in chunks of whole 57-byte input lines gives the same lines as all at once.
_CHUNK = 57 * 1150


def _part(part: Part, lines: list[str], write: Callable[[bytes], object]) -> None:
    if isinstance(part, Multipart):
        boundary = "=_" + secrets.token_hex(12)  # 96 random bits; the line stays ≤ 78
        lines.append(f'Content-Type: multipart/{part.subtype}; boundary="{boundary}"')
        write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        for child in part.parts:
            write(f"--{boundary}\r\n".encode("ascii"))
            _part(child, [], write)
        write(f"--{boundary}--\r\n".encode("ascii"))
        return
    content_type = part.content_type
    if part.charset:
        content_type += f'; charset="{part.charset}"'
    lines.append(f"Content-Type: {content_type}")
    lines.append("Content-Transfer-Encoding: base64")
    if part.disposition:
        disposition = part.disposition
        if part.filename:
            param = _param("filename", part.filename)
            line = f"Content-Disposition: {disposition}; {param.split(chr(13))[0]}"
            disposition += (";\r\n " if len(line) > MAX_LINE else "; ") + param
        lines.append(f"Content-Disposition: {disposition}")
    if part.content_id:
        lines.append(f"Content-ID: <{part.content_id}>")
    write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
    data = memoryview(part.data)
    for start in range(0, len(data), _CHUNK):
        write(base64.encodebytes(data[start : start + _CHUNK]).replace(b"\n", b"\r\n"))
    write(b"\r\n")


def _param(name: str, value: str) -> str:
    """A parameter; RFC 2231 for anything not plain short ASCII, in folded sections if long.

    A long plain name goes the RFC 2231 way too: quoted whole, a 1200-character
    file name made a header line past RFC 5322's 998.
    """
    plain = value.isascii() and value.isprintable() and '"' not in value and "\\" not in value
    if plain and len(value) <= 60:
        return f'{name}="{value}"'
    encoded = encode_rfc2231(value, "utf-8")
    if len(encoded) <= 60:
        return f"{name}*={encoded}"
    sections = []
    while encoded:
        cut = min(len(encoded), 50)
        while "%" in encoded[max(0, cut - 2) : cut]:  # never split a %XX escape
            cut -= 1
        sections.append(encoded[:cut])
        encoded = encoded[cut:]
    return ";\r\n ".join(f"{name}*{i}*={section}" for i, section in enumerate(sections))


def _fold(name: str, words: Sequence[str], sep: str) -> str:
    lines: list[str] = []
    line = f"{name}:"
    for word in words:
        # Fold only before a non-empty word: a continuation line must not be all blanks.
        full = len(line) + len(sep) + len(word) > MAX_LINE
        if word and full and line != f"{name}:":
            lines.append(line)
            line = ""
        line += sep + word
    lines.append(line)
    return "\r\n".join(lines)


__all__ = [
    "Leaf",
    "Mail",
    "Multipart",
    "Part",
    "address",
    "address_list",
    "header",
    "render",
    "text",
]
