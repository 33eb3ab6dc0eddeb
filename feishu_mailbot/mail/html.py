"""Blocks as HTML: the one presenter of a message in a mail.

Forwarded mail, digests and `simulate` all render a message through
`html()`, so a block kind looks the same everywhere and chat content is
escaped in exactly one place (`escape`). Images are `cid:` references to the
parts the mail attaches; one that could not be downloaded becomes a visible
note instead of a broken icon.
"""

from __future__ import annotations

import html as _html
import re
from collections.abc import Collection, Sequence

from feishu_mailbot.core.model import (
    FORWARD_LABEL,
    FORWARD_MORE,
    At,
    Block,
    Break,
    Card,
    Code,
    Divider,
    File,
    Forwarded,
    Image,
    Legacy,
    Link,
    Placeholder,
    Share,
    Text,
    Title,
    block_text,
)
from feishu_mailbot.mail import style

#: The domain part of the Content-ID given to inline images; mail.py attaches
#: the downloaded image under the same id so `cid:` references resolve.
CID_DOMAIN = "feishu-mailbot"
MISSING_IMAGE = "[图片未能下载]"
_STYLE_TAGS = (("bold", "b"), ("italic", "i"), ("underline", "u"), ("lineThrough", "s"))
_SAFE_HREF = re.compile(r"(?i)^(?:https?|mailto):")
_HREF_JUNK = re.compile(r"[\x00-\x20\x7f]")


def escape(text: str) -> str:
    """The only way chat content reaches HTML."""
    return _html.escape(text, quote=True)


def escape_lines(text: str) -> str:
    return escape(text).replace("\r\n", "\n").replace("\n", "<br>")


def image_cid(key: str) -> str:
    """The Content-ID (without angle brackets) an image is referenced by.

    Resource keys are normally ``[A-Za-z0-9_-]``; anything else is replaced so
    the id stays a valid RFC 5322 msg-id and both sides compute the same value.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", key) or "image"
    return f"{safe}@{CID_DOMAIN}"


def safe_href(href: str) -> str | None:
    """The link target if it is http(s) or mailto, else None.

    Browsers ignore embedded whitespace and control characters when reading a
    scheme (``java\\tscript:``), so those are removed before the check and
    the cleaned value is what gets used.
    """
    cleaned = _HREF_JUNK.sub("", href)
    return cleaned if _SAFE_HREF.match(cleaned) else None


def _styled(inner: str, styles: Sequence[str]) -> str:
    for name, tag in _STYLE_TAGS:
        if name in styles:
            inner = f"<{tag}>{inner}</{tag}>"
    return inner


def _placeholder(text: str) -> str:
    return f'<span style="{style.PLACEHOLDER}">{escape(text)}</span>'


_CID_IMG = re.compile(r'<img src="cid:([^"]*)"[^>]*>')


def _legacy_html(fragment: str, available: Collection[str]) -> str:
    """A version-1 rendering with its missing images replaced (see model.Legacy).

    The pattern only ever sees tags our own renderer wrote: chat text was
    escaped, so a user cannot have typed a literal ``<img``.
    """

    def replace(found: re.Match[str]) -> str:
        if _html.unescape(found.group(1)) in available:
            return found.group(0)
        return _placeholder(MISSING_IMAGE)

    return _CID_IMG.sub(replace, fragment)


def block_html(block: Block, available: Collection[str]) -> str:
    """One block as an HTML fragment; `available` holds the Content-IDs attached."""
    match block:
        case Text(text=text, styles=styles):
            return _styled(escape_lines(text), styles)
        case At(name=name):
            return f'<span style="{style.MENTION}">@{escape(name)}</span>'
        case Link(text=text, href=href, styles=styles):
            target = safe_href(href)
            if target is None:
                return _styled(escape_lines(block_text(block)), styles)
            return _styled(f'<a href="{escape(target)}">{escape(text)}</a>', styles)
        case Image(key=key):
            cid = image_cid(key)
            if cid not in available:
                return _placeholder(MISSING_IMAGE)
            return f'<img src="cid:{escape(cid)}" alt="[图片]" style="{style.IMAGE}">'
        case File(label=label) | Placeholder(text=label):
            return _placeholder(label)
        case Code(text=code, language=language):
            label = f' data-language="{escape(language)}"' if language else ""
            return f'<pre style="{style.CODE}"{label}><code>{escape(code)}</code></pre>'
        case Divider():
            return f'<hr style="{style.DIVIDER}">'
        case Title(text=text):
            return f'<div style="{style.POST_TITLE}">{escape(text)}</div>'
        case Legacy(html=fragment, text=text):
            # Version 1 fell back to the text when it had rendered no HTML.
            return _legacy_html(fragment, available) if fragment else escape_lines(text)
        case Break():
            return "<br>"
        case Share():
            return _placeholder(block_text(block))
        case Card():
            return _card_html(block, available)
        case Forwarded():
            return _forwarded_html(block, available)
    raise AssertionError(block)  # pragma: no cover - the match covers Block


def _card_html(card: Card, available: Collection[str]) -> str:
    color = style.CARD_COLORS.get(card.color)
    head_style = style.CARD_HEAD_COLORED + color if color else style.CARD_HEAD
    label = f'<span style="{style.CARD_LABEL}">{escape(card.label)}</span>'
    head = f'<div style="{head_style}">{label}{escape(card.title)}</div>'
    body = html(card.blocks, available)
    body = f'<div style="{style.CARD_BODY}">{body}</div>' if body else ""
    return f'<div style="{style.CARD}">{head}{body}</div>'


def _forwarded_html(forward: Forwarded, available: Collection[str]) -> str:
    out = [_placeholder(FORWARD_LABEL)]
    for item in forward.items:
        head = f"<b>{escape(item.sender)}</b> · {escape(item.when)}"
        out.append(
            f'<div style="{style.FORWARD_HEAD}">{head}</div>'
            f"<div>{html(item.blocks, available)}</div>"
        )
    if forward.more:
        out.append(_placeholder(FORWARD_MORE.format(forward.more)))
    if forward.note:
        out.append(f'<div style="{style.NOTE}">{escape(forward.note)}</div>')
    return f'<div style="{style.FORWARD}">{"".join(out)}</div>'


def html(blocks: Sequence[Block], available: Collection[str] = ()) -> str:
    """A message's content as an HTML fragment.

    Content with paragraphs (a post: a title, a Break opening each paragraph)
    is a `<div>` per paragraph; anything else is inline, its newlines `<br>`.
    """
    if not any(isinstance(b, Break | Title) for b in blocks):
        return "".join(block_html(b, available) for b in blocks)
    out: list[str] = []
    paragraph: list[str] = []
    open_paragraph = False
    for block in blocks:
        if isinstance(block, Title):
            out.append(block_html(block, available))
        elif isinstance(block, Break):
            if open_paragraph:
                out.append(f"<div>{''.join(paragraph) or '<br>'}</div>")
            paragraph, open_paragraph = [], True
        else:
            paragraph.append(block_html(block, available))
            open_paragraph = True
    if open_paragraph:
        out.append(f"<div>{''.join(paragraph) or '<br>'}</div>")
    return "\n".join(out)


def document(meta: str, content: str, footer: str) -> str:
    """A forward's or a notice's page: a meta line, the content, a footer."""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n'
        f'<body style="{style.BODY}">\n'
        f'<div style="{style.META}">{meta}</div>\n'
        f'<div style="{style.CONTENT}">{content}</div>\n'
        f'<div style="{style.FOOTER}">{footer}</div>\n'
        "</body></html>\n"
    )
