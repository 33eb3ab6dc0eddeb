"""A mail that answers one of ours: its new text, and whether it may be posted.

A reply goes into the Feishu thread of the message whose mail it answers, as
the bot, so what decides it is strict: it must answer a mail the bot sent, come
from one of that mail's recipients, not be an auto-reply, and, where the
operator names the receiving server (`trusted_authserv_id`), carry that
server's verdict that the From domain is genuine. A refused mail is never
answered by mail (no backscatter); the caller logs the reason once.

What is posted is the new text only: the quoted mail and the signature that
mail clients add below it are cut, in the shapes of the clients used here.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from feishu_mailbot.core.addresses import bare_set
from feishu_mailbot.core.bounce import Report
from feishu_mailbot.core.text import single_line

# --------------------------------------------------------------------------- new text

# Where a client starts quoting the mail answered: everything from that line on goes.
# Some are one line, some wrap (an attribution line broken before the address).
_DIVIDERS = re.compile(
    r"""^\s*(?:
        # Foxmail/QQ "---- 原始邮件 ----", Outlook "-----Original Message-----", Gmail
        -{2,}\s*(?:原始邮件|原始郵件|Original(?:\s+Message)?|Forwarded\s+message)\s*-{2,}
      | _{10,}  # Outlook on the web, above its header block
    )\s*$""",
    re.IGNORECASE | re.VERBOSE,
)
# "On Mon, Dec 1, 2026 at 10:02 AM 张三 <zhangsan@example.com> wrote:" (Gmail,
# Thunderbird), "在 2026年12月1日 10:02，张三 写道：" (Apple Mail, QQ), "张三 <…>
# 于2026年12月1日周一 10:02写道：" (Gmail in Chinese): within three lines.
_ATTRIBUTION = re.compile(
    r"^\s*(?:On\s.{4,}\swrote|在.{4,}写道|.{2,}于\s*\d{4}年.{2,}写道|.{4,}\sschrieb)\s*[:：]\s*$",
    re.IGNORECASE | re.DOTALL,
)
# The longest line that may be an attribution or a divider: the patterns below look for
# text between two anchors, so their cost grows with the square of a line's length.
_HEADER_LINE = 400
# An attribution that clients wrap begins so.
_WRAPS = re.compile(r"^\s*(?:On\s|在)")
# Outlook's header block: "发件人: …" / "From: …", then "发送时间:" / "Sent:" / "Date:"
# within the next lines.
_FROM_FIELD = re.compile(r"^\s*\**(?:发件人|寄件者|From)\s*\**\s*[:：]", re.IGNORECASE)
_DATE_FIELD = re.compile(
    r"^\s*\**(?:发送时间|发送日期|寄件日期|日期|时间|Sent|Date)\s*\**\s*[:：]", re.IGNORECASE
)
_SIGNATURE = re.compile(r"^--\s?$")  # RFC 3676's "-- ", often sent without its space
# What phones and mail apps add at the end.
_SENT_FROM = re.compile(
    r"^\s*(?:Sent\s+from\s+my\s.+|Get\s+Outlook\s+for\s.+|发自我的.+|从我的.+发送|发自.{1,20}邮箱.*)$",
    re.IGNORECASE,
)


def new_text(text: str) -> str:
    """The lines the sender wrote: the quoted mail, `>` lines, the signature and a
    "sent from my phone" line cut, surrounding blank lines trimmed; "" when nothing
    is left."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines = lines[: _quote_start(lines)]
    lines = [line for line in lines if not line.lstrip().startswith(">")]
    for i, line in enumerate(lines):
        if _SIGNATURE.match(line):
            lines = lines[:i]
            break
    while lines and (not lines[-1].strip() or _SENT_FROM.match(lines[-1])):
        lines.pop()
    while lines and not lines[0].strip():
        lines.pop(0)
    out: list[str] = []
    for line in lines:  # at most one blank line in a row
        if line.strip() or (out and out[-1].strip()):
            out.append(line.rstrip())
    return "\n".join(out)


def _quote_start(lines: Sequence[str]) -> int:
    for i, line in enumerate(lines):
        if len(line) > _HEADER_LINE:
            continue  # a paragraph, not an attribution (and the patterns stay cheap)
        if _DIVIDERS.match(line):
            return i
        if _FROM_FIELD.match(line) and any(_DATE_FIELD.match(n) for n in lines[i + 1 : i + 5]):
            return i
        if _ATTRIBUTION.match(line):
            return i
        if _WRAPS.match(line):  # wrapped within its paragraph, over up to three lines
            window = list(itertools.takewhile(str.strip, lines[i : i + 3]))
            if any(_ATTRIBUTION.match(" ".join(window[:n])) for n in (2, 3)):
                return i
    return len(lines)


# --------------------------------------------------------------------------- who may post

MAX_NAMED = 20  # Message-IDs of a reply's References looked up, the nearest first
MAX_POST_CHARS = 10_000  # of the new text (a Feishu text message holds 150 KB)
# The start of a Feishu text message's markup tag (<at user_id="…">).
_NO_MARKUP = re.compile(r"<(?=\s*/?\s*at\b)", re.IGNORECASE)


@dataclass(frozen=True)
class Inbound:
    """A mail that came in, as plain data (mail/reply.py makes it from the bytes)."""

    message_id: str
    from_address: str  # lower case
    from_name: str
    subject: str
    in_reply_to: tuple[str, ...]  # Message-IDs without <>
    references: tuple[str, ...]
    to: tuple[str, ...]  # every address it was delivered to (To, Cc, Delivered-To…), lower case
    text: str  # the plain text (an HTML-only mail converted)
    headers: Mapping[str, tuple[str, ...]]  # lower-case name → values, topmost first
    images: tuple[ImagePart, ...] = ()
    files: tuple[str, ...] = ()  # the names of other attachments: named, not uploaded
    report: Report | None = None  # when it is a delivery report about a mail


@dataclass(frozen=True)
class ImagePart:
    """An image in the mail, to upload to Feishu."""

    name: str
    content_type: str
    data: bytes
    content_id: str = ""  # an inline one's, without <>


@dataclass(frozen=True)
class Answered:
    """The mail of ours a reply answers."""

    mail_id: str
    message_id: str  # the Feishu message it forwarded
    recipients: tuple[str, ...]


_AUTO_SUBJECT = re.compile(
    r"^\s*(?:自动回复|自動回覆|Automatic\s+reply|Auto(?:matic)?[-\s]?(?:reply|response)|"
    r"Out\s+of\s+(?:the\s+)?office|Autosvar|Abwesenheit|休假|不在办公室)",
    re.IGNORECASE,
)


def auto_reply(mail: Inbound) -> str | None:
    """Why `mail` is an automatic answer (RFC 3834 and what servers do without it), or
    None for a person's."""
    first = {name: values[0] for name, values in mail.headers.items() if values}
    auto = first.get("auto-submitted", "no").split(";")[0].strip().lower()
    if auto != "no":
        return f"Auto-Submitted: {auto}"
    for name in ("x-autoreply", "x-autorespond", "x-autogenerated"):
        if name in first:
            return f"{name}: {first[name]}"
    precedence = first.get("precedence", "").strip().lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"Precedence: {precedence}"
    if first.get("return-path", "").strip() == "<>":
        return "an empty Return-Path (a delivery report)"
    if _AUTO_SUBJECT.match(mail.subject):
        return f"an out-of-office subject: {single_line(mail.subject)}"
    return None


def authenticated(mail: Inbound, authserv_id: str) -> str | None:
    """None when the receiving server `authserv_id` says the From domain is genuine:
    dmarc=pass for it, or dkim=pass / spf=pass for a domain aligned with it; else why
    not. Only that server's topmost header counts: one further down, or of another
    server, anyone can have written (where the checks write a header each, the top
    one is the last check, usually DMARC's, which is enough alone)."""
    import authres  # type: ignore[import-untyped]  # only where a server is trusted

    domain = mail.from_address.rpartition("@")[2]
    for value in mail.headers.get("authentication-results", ()):
        named = value.strip().split(";", 1)[0].split()
        if not named or named[0].lower() != authserv_id.lower():
            continue
        try:
            header = authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {value}")
        except authres.AuthResError as e:
            return f"the Authentication-Results of {authserv_id} cannot be read: {e}"
        seen: list[str] = []
        for result in header.results:
            method, outcome = str(result.method).lower(), str(result.result).lower()
            props = {f"{p.type}.{p.name}".lower(): str(p.value) for p in result.properties}
            seen.append(f"{method}={outcome}")
            vouched = {
                "dmarc": props.get("header.from", domain),
                "dkim": props.get("header.d", ""),
                "spf": props.get("smtp.mailfrom", "").rpartition("@")[2],
            }.get(method, "")
            if outcome == "pass" and _aligned(vouched, domain):
                return None
        verdict = ", ".join(seen) or "no results"
        return f"Authentication-Results of {authserv_id} do not vouch for {domain}: {verdict}"
    return f"no Authentication-Results of {authserv_id}"


def _aligned(authenticated_domain: str, from_domain: str) -> bool:
    """DMARC's relaxed alignment, without the public suffix list: the same domain, or
    one a subdomain of the other."""
    a, f = authenticated_domain.lower().strip("."), from_domain.lower().strip(".")
    return bool(a) and (a == f or f.endswith("." + a) or a.endswith("." + f))


def mail_key(mail_id: str) -> str:
    """The left part of the Message-ID of our mail `mail_id` (mail/headers.py): derived
    from the id alone, so a retry keeps it and a reply's In-Reply-To finds the mail."""
    return hashlib.sha256(mail_id.encode("utf-8")).hexdigest()[:40]


def named_keys(mail: Inbound) -> tuple[str, ...]:
    """The mails a reply names, nearest first: In-Reply-To, then References from the
    last (the mail answered) back to the thread's root; as `mail_key`s."""
    return keys_of((*mail.in_reply_to, *reversed(mail.references)))


def keys_of(message_ids: Sequence[str]) -> tuple[str, ...]:
    """The `mail_key`s of Message-IDs (without <>), as ours are made: each once, in
    order, at most MAX_NAMED."""
    keys = dict.fromkeys(i.partition("@")[0] for i in message_ids if "@" in i)
    return tuple(keys)[:MAX_NAMED]


def post_text(mail: Inbound, not_uploaded: Sequence[str] = ()) -> str:
    """What goes into the thread: who wrote by mail, then the new text only, cut to
    MAX_POST_CHARS, then the names of the files not uploaded. Written as text, never as
    markup: an `<at …>` in a mail would make the bot mention people (everyone, with
    user_id="all")."""
    who = f"{mail.from_name} <{mail.from_address}>" if mail.from_name else mail.from_address
    text = new_text(mail.text)
    if len(text) > MAX_POST_CHARS:
        text = text[:MAX_POST_CHARS] + "\n" + _CUT
    files = [single_line(f) for f in (*not_uploaded, *mail.files)]
    if files:
        text += f"\n（附件未上传：{'、'.join(files)}）"
    return _NO_MARKUP.sub("＜", f"{single_line(who)} 通过邮件回复：\n{text}")


IMAGE_LIMIT = 10 * 1024 * 1024  # bytes Feishu takes for an image (上传图片)
MAX_IMAGES = 9  # images of one reply uploaded; the rest are named
# What 上传图片 takes (JPG, JPEG, PNG, WEBP, GIF, BMP, ICO, TIFF, HEIC).
IMAGE_TYPES = frozenset({
    "image/jpeg", "image/jpg", "image/png", "image/webp", "image/gif", "image/bmp",
    "image/x-icon", "image/vnd.microsoft.icon", "image/tiff", "image/heic",
})  # fmt: skip


def uploadable(images: Sequence[ImagePart]) -> tuple[tuple[ImagePart, ...], tuple[str, ...]]:
    """The images of a reply Feishu takes (up to MAX_IMAGES), and the names of the
    others, which the post names instead."""
    fit = [i for i in images if i.content_type in IMAGE_TYPES and 0 < len(i.data) <= IMAGE_LIMIT]
    taken = fit[:MAX_IMAGES]
    return tuple(taken), tuple(single_line(i.name) for i in images if i not in taken)


# Feishu takes a rich-text (post) request body of up to 30 KB, a text one of 150 KB
# (发送消息/回复消息): a post's text is cut to fit, with room for the JSON around it.
POST_BYTES = 28 * 1024
_CUT = "（邮件正文过长，已截断）"


def post_content(text: str, image_keys: Sequence[str]) -> tuple[str, dict[str, object]]:
    """The message posted: (msg_type, content). Text alone is a `text` message; with
    images a `post` (发送消息内容结构: zh_cn, title, paragraphs of text and img elements),
    a line a paragraph, the images below, its text cut to POST_BYTES."""
    if not image_keys:
        return "text", {"text": text}
    lines = text.split("\n")
    images = [[{"tag": "img", "image_key": key}] for key in image_keys]

    def content(kept: list[str]) -> dict[str, object]:
        paragraphs = [[{"tag": "text", "text": line}] for line in kept]
        return {"zh_cn": {"title": "", "content": [*paragraphs, *images]}}

    def size(kept: list[str]) -> int:
        return len(json.dumps(content(kept), ensure_ascii=False).encode("utf-8"))

    if size(lines) <= POST_BYTES:
        return "post", content(lines)
    low, high = 1, len(lines)  # the most leading lines that fit, with the note
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if size([*lines[:mid], _CUT]) <= POST_BYTES else (low, mid - 1)
    kept = [*lines[:low], _CUT]
    while size(kept) > POST_BYTES and len(kept[0]) > 1:  # one line alone too long
        kept[0] = kept[0][: len(kept[0]) // 2]
    return "post", content(kept)


def post_uuid(key: str) -> str:
    """Feishu's reply `uuid` (at most 50 characters) for the inbound mail `key`: a mail
    fetched twice, or posted again after a crash before it was recorded, is one
    message in the thread (Feishu keeps a uuid for an hour)."""
    return "mail-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


TOKEN_FINDS = 24  # hex digits of a mail's header_id that a token begins with
TOKEN_LENGTH = TOKEN_FINDS + 10  # and of an HMAC, which only the bot can make
BOUNCE = "b"  # before the token of an envelope sender (VERP): a report, not a reply
_TOKEN = re.compile(rf"({BOUNCE}?)([0-9a-f]{{{TOKEN_LENGTH}}})")


def token(key: bytes, header_id: str) -> str:
    """The part of `inbound.reply_address` that names one mail of ours: the start of
    its header_id, which finds it, then an HMAC over all of it. A forward goes once to
    all its recipients, so a token cannot name one of them: the reply's From must."""
    mac = hmac.new(key, f"reply\n{header_id}".encode(), hashlib.sha256)
    return header_id[:TOKEN_FINDS] + mac.hexdigest()[: TOKEN_LENGTH - TOKEN_FINDS]


def tokened_address(pattern: str, key: bytes, header_id: str, bounce: bool = False) -> str:
    """`pattern` ("bot+{token}@example.com") with the mail's token: its Reply-To, or
    (`bounce`) its envelope sender, where delivery reports go."""
    return pattern.replace("{token}", (BOUNCE if bounce else "") + token(key, header_id))


def tokens_in(addresses: Sequence[str], pattern: str) -> tuple[tuple[str, bool], ...]:
    """The tokens in the addresses a mail was delivered to that `pattern` makes, each
    with whether it is an envelope sender's (a delivery report's)."""
    local, _, domain = pattern.lower().partition("@")
    before, _, after = local.partition("{token}")
    found: dict[tuple[str, bool], None] = {}
    for address in addresses:
        name, _, at = address.lower().partition("@")
        if at != domain or not name.startswith(before) or not name.endswith(after):
            continue
        middle = _TOKEN.fullmatch(name[len(before) : len(name) - len(after)])
        if middle is not None:
            found[(middle.group(2), bool(middle.group(1)))] = None
    return tuple(found)


def answered_by(
    tokened: Answered | None, forged: bool, referenced: Answered | None
) -> tuple[Answered | None, str | None]:
    """The mail a reply answers: the one its address's token names (`tokened`), else the
    one its In-Reply-To/References name (`referenced`); or why neither is believed.
    `forged`: its address carries a token the bot did not make."""
    if forged:
        return None, "its reply address carries a token the bot did not make"
    if tokened is not None and referenced is not None and tokened.mail_id != referenced.mail_id:
        return None, "its reply address was made for another mail"
    return tokened or referenced, None


def refusal(
    mail: Inbound, answered: Answered | None, trusted_authserv_id: str | None
) -> str | None:
    """Why `mail` is not posted into `answered`'s thread, or None to post it.

    `answered` is the mail of ours it names (answered_by), None when it names none.
    """
    if not mail.from_address:
        return "its From is not one well-formed address"
    if answered is None:
        return "it answers no mail the bot sent"
    if mail.from_address not in bare_set(answered.recipients):
        return f"{mail.from_address} is not a recipient of the mail it answers"
    auto = auto_reply(mail)
    if auto is not None:
        return f"an automatic reply ({auto})"
    if trusted_authserv_id:
        doubt = authenticated(mail, trusted_authserv_id)
        if doubt is not None:
            return doubt
    if not new_text(mail.text):
        return "it has no new text"
    return None
