"""Feishu event v2 payloads turned into small typed values (model.py).

Everything downstream (rules, reports, mail, storage) works on `Message` and
`Recall` only, so the many shapes of Feishu message content are dealt with
here, once: `CONTENT` has one entry per message type, turning its content
JSON into blocks. Adding a type is adding an entry. The shapes are those of
Feishu's open-platform document "接收消息内容结构" (receive-message content
structure). The module is pure: it never fetches resources or names.

Parsing is lenient about content and strict about identity: a message whose
body we cannot understand still becomes a `Message` with a readable
placeholder (dropping it silently would lose mail), but a payload without the
ids needed for deduplication and storage raises `EventError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

from feishu_mailbot.core.model import (
    ALL_MENTION_NAME,
    FORWARD_LABEL,
    STYLES,
    At,
    Block,
    Break,
    Card,
    Code,
    Divider,
    Event,
    File,
    Ignored,
    Image,
    Link,
    Mention,
    Message,
    Placeholder,
    Recall,
    ResourceKind,
    Share,
    Text,
    Title,
    text_of,
)

RECEIVE_EVENT = "im.message.receive_v1"
RECALL_EVENT = "im.message.recalled_v1"
DEFAULT_ZONE = ZoneInfo("Asia/Shanghai")


class EventError(ValueError):
    """A payload we cannot even identify; the caller logs it and acknowledges nothing."""


# --------------------------------------------------------------------------- parsing


def parse_event(
    payload: bytes | str | Mapping[str, Any],
    chat_allowed: Callable[[str], bool] = lambda _: True,
    zone: tzinfo = DEFAULT_ZONE,
) -> Event:
    """Turn one event v2 envelope into a `Message`, `Recall` or `Ignored`.

    Unknown event types are `Ignored` rather than errors so that subscribing
    to a new event in the Feishu console never crashes the intake. So is an
    event from a chat `chat_allowed` refuses, before its content is looked at:
    what strangers post never reaches the content parsers.
    """
    data = _load(payload)
    header = data.get("header")
    if not isinstance(header, Mapping):
        if "encrypt" in data:
            raise EventError("encrypted event payloads are not supported (no header)")
        raise EventError("event payload has no 'header' object (only schema 2.0 is supported)")
    event_id = _str(header, "event_id")
    if not event_id:
        raise EventError("event payload has no header.event_id")
    event_type = _str(header, "event_type")
    event = data.get("event")
    if event_type not in (RECEIVE_EVENT, RECALL_EVENT):
        return Ignored(
            event_id, event_type, f"event type {event_type or '(none)'!r} is not handled"
        )
    if not isinstance(event, Mapping):
        raise EventError(f"event {event_id}: missing 'event' object")
    header_time = number(header.get("create_time"))
    chat_id = _str(_obj(event.get("message")), "chat_id") or _str(event, "chat_id")
    if chat_id and not chat_allowed(chat_id):
        return Ignored(event_id, event_type, "chat not in the allowlist, ignored", chat_id)
    if event_type == RECALL_EVENT:
        return _parse_recall(event_id, event, header_time)
    return _parse_message(event_id, event, header_time, zone)


def event_id_of(payload: bytes) -> str:
    """The header.event_id of a payload that may not even parse; "" if it has none."""
    try:
        header = json.loads(payload).get("header")
        event_id = header.get("event_id") if isinstance(header, dict) else None
    except Exception:  # any JSON at all, however broken: there simply is no id
        return ""
    return event_id if isinstance(event_id, str) else ""


def _load(payload: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(payload, Mapping):
        return payload
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventError(f"event payload is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise EventError(f"event payload is a JSON {type(data).__name__}, expected an object")
    return cast(dict[str, Any], data)


def _parse_recall(event_id: str, event: Mapping[str, Any], header_time: int) -> Recall:
    message_id = _str(event, "message_id")
    chat_id = _str(event, "chat_id")
    _require(event_id, "event.message_id", message_id)
    _require(event_id, "event.chat_id", chat_id)
    recall_time = number(event.get("recall_time")) or header_time
    return Recall(event_id, message_id, chat_id, recall_time)


def _parse_message(
    event_id: str, event: Mapping[str, Any], header_time: int, zone: tzinfo
) -> Message:
    message = _obj(event.get("message"))
    sender = _obj(event.get("sender"))
    message_id = _str(message, "message_id")
    chat_id = _str(message, "chat_id")
    _require(event_id, "event.message.message_id", message_id)
    _require(event_id, "event.message.chat_id", chat_id)
    mentions = tuple(_parse_mentions(message.get("mentions")))
    msg_type = _str(message, "message_type")
    return Message(
        event_id=event_id,
        message_id=message_id,
        chat_id=chat_id,
        chat_type=_str(message, "chat_type"),
        sender_open_id=_str(_obj(sender.get("sender_id")), "open_id"),
        sender_type=_str(sender, "sender_type"),
        msg_type=msg_type,
        create_time_ms=number(message.get("create_time")) or header_time,
        blocks=content_blocks(msg_type, message.get("content"), Context(mentions, zone)),
        mentions=mentions,
        root_id=_str(message, "root_id"),
        parent_id=_str(message, "parent_id"),
    )


def _parse_mentions(raw: object) -> list[Mention]:
    out: list[Mention] = []
    if not isinstance(raw, list):
        return out
    for item in raw:
        if not isinstance(item, Mapping):
            continue
        key = _str(item, "key")
        if not key:
            continue
        out.append(Mention(key, _str(item, "name"), _str(_obj(item.get("id")), "open_id")))
    return out


def _require(event_id: str, where: str, value: str) -> None:
    if not value:
        raise EventError(f"event {event_id}: missing {where}")


def _obj(value: object) -> Mapping[str, Any]:
    return cast(Mapping[str, Any], value) if isinstance(value, Mapping) else {}


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""


_MAX_DIGITS = 20  # 2**64 has 20; a longer "number" is junk, not a time or a duration


def number(value: object) -> int:
    """Feishu sends timestamps as decimal strings; junk becomes 0 rather than an error.

    Only ASCII digits count: "²" and "¹" are digits to str.isdigit but not to int().
    """
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= _MAX_DIGITS:
            return int(text)
    return 0


# --------------------------------------------------------------------------- content

Blocks = list[Block]
Mentions = Sequence[Mention]


@dataclass(frozen=True)
class Context:
    """What a content parser needs besides the content: who the @_user_N keys are, and
    the team's timezone, in which times inside a message (an event, a due date) are shown."""

    mentions: Mentions = ()
    zone: tzinfo = DEFAULT_ZONE


def _content(raw: object) -> Mapping[str, Any] | None:
    if isinstance(raw, Mapping):
        return raw
    if not isinstance(raw, str):
        return None
    try:
        data = json.loads(raw)
    except ValueError:  # (nested past the parser's stack, it raises: the event is quarantined)
        return None
    return cast(dict[str, Any], data) if isinstance(data, dict) else None


def _mention_name(key: str, mentions: Mentions) -> str | None:
    if key in ("@_all", "all"):
        return ALL_MENTION_NAME
    for mention in mentions:
        if mention.key == key:
            return mention.name or "未知用户"
    return None


# 接收消息内容结构, text: "文本消息中超链接的格式为 [超链接文本](超链接地址)".
_MARKDOWN_LINK = re.compile(r"\[([^\[\]\n]+)\]\(((?:https?|mailto):[^()\s]+)\)")


def _linked(text: str, styles: tuple[str, ...] = ()) -> Blocks:
    """Text with its [text](url) links as Link blocks."""
    out: Blocks = []
    pos = 0
    for found in _MARKDOWN_LINK.finditer(text):
        if found.start() > pos:
            out.append(Text(text[pos : found.start()], styles))
        out.append(Link(found.group(1), found.group(2), styles))
        pos = found.end()
    if pos < len(text) or not out:
        out.append(Text(text[pos:], styles))
    return out


def _text_blocks(text: str, mentions: Mentions) -> Blocks:
    """Text with its `@_user_N` placeholders as At blocks and its links as Link blocks."""
    keys = sorted({m.key for m in mentions} | {"@_all"}, key=len, reverse=True)
    open_ids = {m.key: m.open_id for m in mentions}
    out: Blocks = []
    pos = 0
    for found in re.finditer("|".join(re.escape(k) for k in keys), text):
        if found.start() > pos:
            out.extend(_linked(text[pos : found.start()]))
        key = found.group(0)
        out.append(At(_mention_name(key, mentions) or key, open_ids.get(key, "")))
        pos = found.end()
    if pos < len(text):
        out.extend(_linked(text[pos:]))
    return out


def shown_time(value: object, zone: tzinfo) -> str:
    """A millisecond timestamp as the team reads it; "" when there is none."""
    ms = number(value)
    if ms <= 0:
        return ""
    try:
        return datetime.fromtimestamp(ms / 1000, zone).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):
        return ""


def _span(start: object, end: object, zone: tzinfo) -> str:
    begins, ends = shown_time(start, zone), shown_time(end, zone)
    if begins and ends:
        same_day = begins[:10] == ends[:10]
        return f"{begins} – {ends[11:] if same_day else ends}"
    return begins or ends


def _text(content: Mapping[str, Any], ctx: Context) -> Blocks:
    return _text_blocks(_str(content, "text"), ctx.mentions)


def _image(content: Mapping[str, Any], ctx: Context) -> Blocks:
    key = _str(content, "image_key")
    return [Image(key)] if key else [Placeholder("[图片]")]


def _resource(kind: ResourceKind, label: str, key: str, name: str) -> Blocks:
    return [File(kind, key, name, label)] if key else [Placeholder(label)]


def _file(content: Mapping[str, Any], ctx: Context) -> Blocks:
    name = _str(content, "file_name")
    return _resource("file", f"[文件] {name}".rstrip(), _str(content, "file_key"), name)


def _audio(content: Mapping[str, Any], ctx: Context) -> Blocks:
    seconds = number(content.get("duration")) // 1000
    label = f"[语音 {seconds}秒]" if seconds else "[语音]"
    return _resource("audio", label, _str(content, "file_key"), "")


def _media(content: Mapping[str, Any], ctx: Context) -> Blocks:
    name = _str(content, "file_name")
    return _resource("media", f"[视频] {name}".rstrip(), _str(content, "file_key"), name)


def _folder(content: Mapping[str, Any], ctx: Context) -> Blocks:
    # 接收消息内容结构: a folder cannot be downloaded through the API, only named.
    name = _str(content, "file_name")
    return [Placeholder(f"[文件夹] {name}（请在飞书中打开）" if name else "[文件夹]")]


def _sticker(content: Mapping[str, Any], ctx: Context) -> Blocks:
    return [Placeholder("[表情包]")]  # the document: "不支持下载该表情包"


def _hongbao(content: Mapping[str, Any], ctx: Context) -> Blocks:
    return [Placeholder(_str(content, "text") or "[红包]")]  # "目前只返回红包文本"


def _share(kind: Literal["chat", "user"], key: str) -> ContentParser:
    def blocks(content: Mapping[str, Any], ctx: Context) -> Blocks:
        return [Share(kind, _str(content, key))]

    return blocks


def _calendar(label: str) -> ContentParser:
    def blocks(content: Mapping[str, Any], ctx: Context) -> Blocks:
        span = _span(content.get("start_time"), content.get("end_time"), ctx.zone)
        body = (Text(f"时间: {span}"),) if span else ()
        return [Card(label, _str(content, "summary"), body)]

    return blocks


def _video_chat(content: Mapping[str, Any], ctx: Context) -> Blocks:
    start = shown_time(content.get("start_time"), ctx.zone)
    body = (Text(f"开始: {start}"),) if start else ()
    return [Card("视频会议", _str(content, "topic"), body)]


def _location(content: Mapping[str, Any], ctx: Context) -> Blocks:
    lng, lat = _str(content, "longitude"), _str(content, "latitude")
    body = (Text(f"经度 {lng}，纬度 {lat}"),) if lng and lat else ()
    return [Card("位置", _str(content, "name"), body)]


def _vote(content: Mapping[str, Any], ctx: Context) -> Blocks:
    options = content.get("options")
    lines = [f"○ {o}" for o in options if isinstance(o, str)] if isinstance(options, list) else []
    return [Card("投票", _str(content, "topic"), (Text("\n".join(lines)),) if lines else ())]


def _todo(content: Mapping[str, Any], ctx: Context) -> Blocks:
    """summary is a post ({title, content}); due_time a millisecond timestamp."""
    summary = _obj(content.get("summary"))
    body = _post(summary, ctx)
    title = _str(summary, "title")
    if title:
        body = body[1:]  # the post's Title block: it is the card's title
    due = shown_time(content.get("due_time"), ctx.zone)
    if due:
        body.append(Break())
        body.append(Text(f"截止: {due}"))
    return [Card("任务", title, tuple(body))]


def _system(content: Mapping[str, Any], ctx: Context) -> Blocks:
    """The template with its {variables} filled in, e.g. "{from_user} invited {to_chatters}"."""

    def value(found: re.Match[str]) -> str:
        raw = content.get(found.group(1))
        if isinstance(raw, list):
            return "、".join(
                str(v.get("name", "")) if isinstance(v, Mapping) else str(v) for v in raw
            )
        if isinstance(raw, Mapping):  # divider_text: {text, i18n_text: {zh_cn, en_us}}
            return _str(_obj(raw.get("i18n_text")), "zh_cn") or _str(raw, "text")
        return str(raw) if isinstance(raw, str | int) else ""

    text = re.sub(r"\{([a-z_]+)\}", value, _str(content, "template")).strip()
    return [Placeholder(f"[系统消息] {text}".rstrip())]


def _merge_forward(content: Mapping[str, Any], ctx: Context) -> Blocks:
    # Only "Merged and Forwarded Message": the conversation is fetched when mailed.
    return [Placeholder(FORWARD_LABEL)]


_LOCALE_PREFERENCE = ("zh_cn", "en_us", "ja_jp")


def _localized(content: Mapping[str, Any], *fields: str) -> Mapping[str, Any]:
    """Received content is unwrapped; content in the send format is wrapped in a locale."""
    if any(f in content for f in fields):
        return content
    for locale in _LOCALE_PREFERENCE:
        inner = content.get(locale)
        if isinstance(inner, Mapping):
            return inner
    for inner in content.values():
        if isinstance(inner, Mapping) and any(f in inner for f in fields):
            return inner
    return {}


def _post(content: Mapping[str, Any], ctx: Context) -> Blocks:
    """A title, then each paragraph opened by a Break block."""
    body = _localized(content, "content", "title")
    title = _str(body, "title")
    out: Blocks = [Title(title)] if title else []
    out.extend(_paragraphs(body.get("content"), ctx))
    return out


def _paragraphs(paragraphs: object, ctx: Context) -> Blocks:
    out: Blocks = []
    for paragraph in paragraphs if isinstance(paragraphs, list) else []:
        out.append(Break())
        for element in paragraph if isinstance(paragraph, list) else []:
            if isinstance(element, Mapping):
                out.extend(_element(element, ctx))
    return out


def _styles(element: Mapping[str, Any]) -> tuple[str, ...]:
    given = element.get("style")
    return tuple(s for s in STYLES if s in given) if isinstance(given, list) else ()


def _element(element: Mapping[str, Any], ctx: Context) -> Blocks:
    """One element of a post or of a received card's paragraph."""
    tag = _str(element, "tag")
    if tag == "a":
        href = _str(element, "href")
        return [Link(_str(element, "text") or href, href, _styles(element))]
    if tag == "at":
        user_id = _str(element, "user_id")
        if user_id in ("all", "@_all"):
            return [At(ALL_MENTION_NAME)]
        name = _str(element, "user_name") or _mention_name(user_id, ctx.mentions) or user_id
        open_id = next((m.open_id for m in ctx.mentions if m.key == user_id), "")
        return [At(name, open_id)]
    if tag == "img":
        key = _str(element, "image_key")
        return [Image(key) if key else Placeholder("[图片]")]
    if tag == "media":
        key = _str(element, "file_key")
        return [File("media", key, "", "[视频]") if key else Placeholder("[视频]")]
    if tag == "emotion":
        return [Text(f"[{_str(element, 'emoji_type')}]")]
    if tag == "code_block":
        return [Code(_str(element, "text"), _str(element, "language"))]
    if tag == "hr":
        return [Divider()]
    if tag == "md":
        return _linked(_str(element, "text"))
    if tag in CARD_ELEMENTS:
        return CARD_ELEMENTS[tag](element, ctx)
    # text, and any element we do not know: keep whatever text it carries.
    return _linked(_str(element, "text"), _styles(element) if tag == "text" else ())


# --------------------------------------------------------------------------- cards

#: Feishu's answer, in the card's place, for content it does not deliver (JSON 2.0
#: cards: "暂不支持返回 JSON 2.0 结构卡片的具体内容").
CARD_NOT_DELIVERED = "请升级至最新版本客户端，以查看内容"
CARD_MISSING_NOTE = "飞书未随消息提供这张卡片的内容，请在飞书中查看"


def _button(element: Mapping[str, Any], ctx: Context) -> Blocks:
    """A button is a link when it carries a URL (url, or multi_url's); else its label."""
    text = _str(element, "text") or _str(_obj(element.get("text")), "content")
    url = _str(element, "url") or _str(_obj(element.get("multi_url")), "url")
    if url:
        return [Link(f"[{text or url}]", url), Text(" ")]
    return [Placeholder(f"[{text}]"), Text(" ")] if text else []


def _note(element: Mapping[str, Any], ctx: Context) -> Blocks:
    inner = element.get("elements")
    out: Blocks = []
    for part in inner if isinstance(inner, list) else []:
        if isinstance(part, Mapping):
            out.extend(_element(part, ctx))
    return [Placeholder(text_of(tuple(out)))] if out else []


def _choice(element: Mapping[str, Any], ctx: Context) -> Blocks:
    options = element.get("options")
    names = [o for o in options if isinstance(o, str)] if isinstance(options, list) else []
    label = _str(element, "placeholder") or "选项"
    return [Placeholder(f"[{label}: {' / '.join(names)}]" if names else f"[{label}]")]


def _date_picker(element: Mapping[str, Any], ctx: Context) -> Blocks:
    shown = _str(element, "initial_date") or _str(element, "placeholder")
    return [Placeholder(f"[{shown or '日期'}]")]


CARD_ELEMENTS: dict[str, Callable[[Mapping[str, Any], Context], Blocks]] = {
    "button": _button,
    "note": _note,
    "select_static": _choice,
    "overflow": _choice,
    "date_picker": _date_picker,
}


def _interactive(content: Mapping[str, Any], ctx: Context) -> Blocks:
    """A card as received: {title, elements: [[element, …], …]} (接收消息内容结构, 卡片).

    A card's own JSON (header/elements, or schema 2.0's header/body), which some
    senders' content carries, is read as well: its header title and subtitle,
    then its markdown and plain_text leaves in order, buttons as links.
    """
    if isinstance(content.get("header"), Mapping) or isinstance(content.get("body"), Mapping):
        return _card_json(content, ctx)
    card = _localized(content, "title", "elements")
    title = _str(card, "title")
    body = _paragraphs(card.get("elements"), ctx)
    if CARD_NOT_DELIVERED in text_of(tuple(body)) or not (title or body):
        body = [Placeholder(CARD_MISSING_NOTE)]
    return [Card("卡片", title, tuple(body))]


def _card_json(card: Mapping[str, Any], ctx: Context) -> Blocks:
    header = _obj(card.get("header"))
    title = _str(_obj(header.get("title")), "content")
    out: Blocks = []
    subtitle = _str(_obj(header.get("subtitle")), "content")
    if subtitle:
        out += [Break(), Placeholder(subtitle)]
    elements = card.get("elements")
    if elements is None:
        elements = _obj(card.get("body")).get("elements")
    if elements is None:
        i18n = _obj(card.get("i18n_elements"))
        found = [i18n[k] for k in _LOCALE_PREFERENCE if k in i18n]
        elements = found[0] if found else list(i18n.values())[:1]
    _walk_card(elements, ctx, out)
    if not (title or out):
        out = [Placeholder(CARD_MISSING_NOTE)]
    return [Card("卡片", title, tuple(out), _str(header, "template"))]


_LEAVES = ("markdown", "lark_md", "plain_text")


_CARD_DEPTH = 40  # real cards nest a few levels; deeper is junk, not worth a stack


def _walk_card(node: object, ctx: Context, out: Blocks, depth: int = 0) -> None:
    """The card's readable leaves in document order, each text leaf its own paragraph."""
    if depth > _CARD_DEPTH:
        return
    if isinstance(node, list):
        for item in node:
            _walk_card(item, ctx, out, depth + 1)
        return
    if not isinstance(node, Mapping):
        return
    tag = _str(node, "tag")
    if tag in _LEAVES:
        text = _str(node, "content")
        if text.strip():
            out.append(Break())
            out.extend(_markdown(_markdown_ats(text), ctx))
        return
    if tag == "button":
        if not (out and out[-1] == Text(" ")):  # a row of buttons is one paragraph
            out.append(Break())
        out.extend(_button(node, ctx))
        return
    if tag == "hr":
        out += [Break(), Divider()]
        return
    if tag == "img" and _str(node, "img_key"):
        out += [Break(), Image(_str(node, "img_key"))]
        return
    for key, value in node.items():
        if key not in ("tag", "behaviors", "value", "confirm"):
            _walk_card(value, ctx, out, depth + 1)


_BOLD = re.compile(r"\*\*(.+?)\*\*")


def _markdown(text: str, ctx: Context) -> Blocks:
    """Card markdown as far as mail needs it: **bold**, [links](url), mentions."""
    out: Blocks = []
    pos = 0
    for found in _BOLD.finditer(text):
        out.extend(_text_blocks(text[pos : found.start()], ctx.mentions))
        out.extend(_linked(found.group(1), ("bold",)))
        pos = found.end()
    out.extend(_text_blocks(text[pos:], ctx.mentions))
    return [b for b in out if b != Text("")]


def _markdown_ats(text: str) -> str:
    """Card markdown mentions: <at id=all></at> and <at id=ou_…>name</at> as @name."""
    text = re.sub(
        r"<at (?:id|user_id|email)=['\"]?all['\"]?\s*>\s*</at>", "@" + ALL_MENTION_NAME, text
    )
    return re.sub(r"<at [^>]*>([^<]*)</at>", lambda m: "@" + m.group(1), text)


ContentParser = Callable[[Mapping[str, Any], Context], Blocks]

#: One entry per message type of 接收消息内容结构: its content JSON → blocks.
CONTENT: dict[str, ContentParser] = {
    "text": _text,
    "post": _post,
    "image": _image,
    "file": _file,
    "folder": _folder,
    "audio": _audio,
    "media": _media,
    "sticker": _sticker,
    "interactive": _interactive,
    "hongbao": _hongbao,
    "share_calendar_event": _calendar("日程分享"),
    "calendar": _calendar("日程邀请"),
    "general_calendar": _calendar("日程"),
    "share_chat": _share("chat", "chat_id"),
    "share_user": _share("user", "user_id"),
    "system": _system,
    "location": _location,
    "video_chat": _video_chat,
    "todo": _todo,
    "vote": _vote,
    "merge_forward": _merge_forward,
}


def content_blocks(msg_type: str, raw: object, ctx: Context = Context()) -> tuple[Block, ...]:
    content = _content(raw)
    if content is None and msg_type in ("text", "merge_forward") and isinstance(raw, str):
        # Unparseable text content: showing it beats losing it. A merge_forward's may be
        # the bare "Merged and Forwarded Message" (合并转发消息's own example).
        content = {"text": raw}
    parser = CONTENT.get(msg_type)
    if parser is None:
        return (Placeholder(f"[不支持的消息类型: {msg_type or '未知'}]"),)
    return tuple(parser(content or {}, ctx))
