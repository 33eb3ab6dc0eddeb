"""Files and inline images as MIME parts, and the note a mail carries for a file it leaves out."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from feishu_mailbot.core.model import Download, Resource
from feishu_mailbot.core.text import single_line
from feishu_mailbot.mail import mime
from feishu_mailbot.mail.headers import sanitize_header
from feishu_mailbot.mail.html import image_cid


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


def file_part(att: Attachment) -> mime.Leaf:
    """A file attached to the mail, under its own name."""
    maintype, subtype = _split_type(att.content_type)
    return mime.Leaf(
        f"{maintype}/{subtype}",
        att.data,
        disposition="attachment",
        filename=_filename(att.filename),
    )
