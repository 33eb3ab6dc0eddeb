"""Feishu event v2 payloads turned into small typed values.

Everything downstream (rules, reports, mail, storage) works on `Message` and
`Recall` only, so the many shapes of Feishu message content are dealt with
here, once.  The module is pure: it never fetches resources or names, it only
records which resources a message refers to so the shell can download them.

Parsing is lenient about content and strict about identity: a message whose
body we cannot understand still becomes a `Message` with a readable
placeholder (dropping it silently would lose mail), but a payload without the
ids needed for deduplication and storage raises `EventError`.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, cast

ResourceKind = Literal["image", "file", "media", "audio"]

RECEIVE_EVENT = "im.message.receive_v1"
RECALL_EVENT = "im.message.recalled_v1"

#: The domain part of the Content-ID given to inline images; mail.py attaches
#: the downloaded image under the same id so `cid:` references resolve.
CID_DOMAIN = "feishu-mailbot"

ALL_MENTION_NAME = "所有人"


@dataclass(frozen=True)
class Mention:
    key: str  # the placeholder used in the content, e.g. "@_user_1"
    name: str
    open_id: str


@dataclass(frozen=True)
class Resource:
    kind: ResourceKind
    key: str
    name: str  # the file name when Feishu gives one; mail.py picks a default otherwise


@dataclass(frozen=True)
class Message:
    event_id: str
    message_id: str
    chat_id: str
    chat_type: str
    sender_open_id: str
    sender_type: str
    msg_type: str
    create_time_ms: int
    text: str  # readable plain text, mentions as @Name; a post's title is its first line
    html: str  # an escaped HTML fragment of the same content, images as cid: references
    resources: tuple[Resource, ...] = ()
    mentions: tuple[Mention, ...] = ()
    root_id: str = ""
    parent_id: str = ""
    title: str = ""  # post title


@dataclass(frozen=True)
class Recall:
    event_id: str
    message_id: str
    chat_id: str
    recall_time_ms: int


@dataclass(frozen=True)
class Ignored:
    event_id: str
    event_type: str
    reason: str


class EventError(ValueError):
    """A payload we cannot even identify; the caller logs it and acknowledges nothing."""


Event = Message | Recall | Ignored


def image_cid(key: str) -> str:
    """The Content-ID (without angle brackets) an image is referenced by.

    Resource keys are normally ``[A-Za-z0-9_-]``; anything else is replaced so
    the id stays a valid RFC 5322 msg-id and both sides compute the same value.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", key) or "image"
    return f"{safe}@{CID_DOMAIN}"


# --------------------------------------------------------------------------- parsing


def parse_event(payload: bytes | str | Mapping[str, Any]) -> Event:
    """Turn one event v2 envelope into a `Message`, `Recall` or `Ignored`.

    Unknown event types are `Ignored` rather than errors so that subscribing
    to a new event in the Feishu console never crashes the intake.
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
    header_time = _int(header.get("create_time"))
    if event_type == RECALL_EVENT:
        return _parse_recall(event_id, event, header_time)
    return _parse_message(event_id, event, header_time)


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
    recall_time = _int(event.get("recall_time")) or header_time
    return Recall(event_id, message_id, chat_id, recall_time)


def _parse_message(event_id: str, event: Mapping[str, Any], header_time: int) -> Message:
    message = _obj(event.get("message"))
    sender = _obj(event.get("sender"))
    message_id = _str(message, "message_id")
    chat_id = _str(message, "chat_id")
    _require(event_id, "event.message.message_id", message_id)
    _require(event_id, "event.message.chat_id", chat_id)
    mentions = tuple(_parse_mentions(message.get("mentions")))
    msg_type = _str(message, "message_type")
    body = _render(msg_type, message.get("content"), mentions)
    return Message(
        event_id=event_id,
        message_id=message_id,
        chat_id=chat_id,
        chat_type=_str(message, "chat_type"),
        sender_open_id=_str(_obj(sender.get("sender_id")), "open_id"),
        sender_type=_str(sender, "sender_type"),
        msg_type=msg_type,
        create_time_ms=_int(message.get("create_time")) or header_time,
        text=body.text,
        html=body.html,
        resources=body.resources,
        mentions=mentions,
        root_id=_str(message, "root_id"),
        parent_id=_str(message, "parent_id"),
        title=body.title,
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


def _int(value: object) -> int:
    """Feishu sends timestamps as decimal strings; junk becomes 0 rather than an error."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return 0


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _Body:
    text: str
    html: str
    resources: tuple[Resource, ...] = ()
    title: str = ""


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _esc_lines(text: str) -> str:
    return _esc(text).replace("\r\n", "\n").replace("\n", "<br>")


def _placeholder(text: str) -> _Body:
    return _Body(text, f'<span style="color:#8f959e">{_esc(text)}</span>')


def _image_html(key: str) -> str:
    return (
        f'<img src="cid:{_esc(image_cid(key))}" alt="[图片]" '
        'style="max-width:100%;height:auto;vertical-align:middle">'
    )


def _content(raw: object) -> Mapping[str, Any] | None:
    if isinstance(raw, Mapping):
        return raw
    if not isinstance(raw, str):
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return cast(dict[str, Any], data) if isinstance(data, dict) else None


_SIMPLE_PLACEHOLDERS = {
    "sticker": "[表情包]",
    "interactive": "[卡片消息]",
    "share_chat": "[群名片]",
    "share_user": "[个人名片]",
    "merge_forward": "[合并转发消息]",
    "system": "[系统消息]",
    "hongbao": "[红包]",
    "share_calendar_event": "[日程]",
    "calendar": "[日程]",
    "general_calendar": "[日程]",
    "video_chat": "[视频会议]",
    "vote": "[投票]",
    "todo": "[任务]",
    "location": "[位置]",
    "folder": "[文件夹]",
}


def _render(msg_type: str, raw: object, mentions: Sequence[Mention]) -> _Body:
    content = _content(raw)
    if msg_type == "text":
        if content is None:
            # Unparseable text content: showing the raw string beats losing it.
            return _render_text(raw if isinstance(raw, str) else "", mentions)
        return _render_text(_str(content, "text"), mentions)
    if content is None:
        content = {}
    if msg_type == "post":
        return _render_post(content, mentions)
    if msg_type == "image":
        key = _str(content, "image_key")
        if not key:
            return _placeholder("[图片]")
        return _Body("[图片]", _image_html(key), (Resource("image", key, ""),))
    if msg_type == "file":
        name = _str(content, "file_name")
        label = f"[文件] {name}".rstrip()
        key = _str(content, "file_key")
        return _with_resource(label, "file", key, name)
    if msg_type == "audio":
        seconds = _int(content.get("duration")) // 1000
        label = f"[语音 {seconds}秒]" if seconds else "[语音]"
        return _with_resource(label, "audio", _str(content, "file_key"), "")
    if msg_type == "media":
        name = _str(content, "file_name")
        label = f"[视频] {name}".rstrip()
        return _with_resource(label, "media", _str(content, "file_key"), name)
    if msg_type in _SIMPLE_PLACEHOLDERS:
        label = _SIMPLE_PLACEHOLDERS[msg_type]
        # A card title, a place or a folder name makes the placeholder useful.
        detail = _str(content, "title") or _str(content, "name") or _str(content, "summary")
        return _placeholder(f"{label} {detail}".rstrip())
    return _placeholder(f"[不支持的消息类型: {msg_type or '未知'}]")


def _with_resource(label: str, kind: ResourceKind, key: str, name: str) -> _Body:
    body = _placeholder(label)
    if not key:
        return body
    return _Body(body.text, body.html, (Resource(kind, key, name),))


_MENTION_STYLE = "color:#3370ff"


def _mention_name(key: str, mentions: Sequence[Mention]) -> str | None:
    if key in ("@_all", "all"):
        return ALL_MENTION_NAME
    for mention in mentions:
        if mention.key == key:
            return mention.name or "未知用户"
    return None


def _render_text(text: str, mentions: Sequence[Mention]) -> _Body:
    keys = sorted({m.key for m in mentions} | {"@_all"}, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(k) for k in keys))
    plain: list[str] = []
    rich: list[str] = []
    pos = 0
    for found in pattern.finditer(text):
        name = _mention_name(found.group(0), mentions)
        if name is None:  # pragma: no cover - every key in the pattern resolves
            continue
        plain.append(text[pos : found.start()])
        rich.append(_esc_lines(text[pos : found.start()]))
        plain.append(f"@{name}")
        rich.append(f'<span style="{_MENTION_STYLE}">@{_esc(name)}</span>')
        pos = found.end()
    plain.append(text[pos:])
    rich.append(_esc_lines(text[pos:]))
    return _Body("".join(plain), "".join(rich))


_LOCALE_PREFERENCE = ("zh_cn", "en_us", "ja_jp")


def _post_body(content: Mapping[str, Any]) -> Mapping[str, Any]:
    """Received posts are unwrapped; posts in the send format are wrapped in a locale."""
    if "content" in content or "title" in content:
        return content
    for locale in _LOCALE_PREFERENCE:
        inner = content.get(locale)
        if isinstance(inner, Mapping):
            return inner
    for inner in content.values():
        if isinstance(inner, Mapping) and ("content" in inner or "title" in inner):
            return inner
    return {}


_STYLE_TAGS = (("bold", "b"), ("italic", "i"), ("underline", "u"), ("lineThrough", "s"))
_SAFE_HREF = re.compile(r"(?i)^(?:https?|mailto):")
_HREF_JUNK = re.compile(r"[\x00-\x20\x7f]")


def safe_href(href: str) -> str | None:
    """The link target if it is http(s) or mailto, else None.

    Browsers ignore embedded whitespace and control characters when reading a
    scheme (``java\\tscript:``), so those are removed before the check and
    the cleaned value is what gets used.
    """
    cleaned = _HREF_JUNK.sub("", href)
    return cleaned if _SAFE_HREF.match(cleaned) else None


def _styled(inner: str, element: Mapping[str, Any]) -> str:
    style = element.get("style")
    if not isinstance(style, list):
        return inner
    for name, tag in _STYLE_TAGS:
        if name in style:
            inner = f"<{tag}>{inner}</{tag}>"
    return inner


def _render_post(content: Mapping[str, Any], mentions: Sequence[Mention]) -> _Body:
    body = _post_body(content)
    title = _str(body, "title")
    paragraphs = body.get("content")
    plain_lines: list[str] = [title] if title else []
    html_blocks: list[str] = (
        [f'<div style="font-weight:bold;font-size:16px;margin:0 0 8px">{_esc(title)}</div>']
        if title
        else []
    )
    resources: list[Resource] = []
    for paragraph in paragraphs if isinstance(paragraphs, list) else []:
        elements = paragraph if isinstance(paragraph, list) else []
        plain_parts: list[str] = []
        html_parts: list[str] = []
        for element in elements:
            if isinstance(element, Mapping):
                plain, rich = _render_element(element, mentions, resources.append)
                plain_parts.append(plain)
                html_parts.append(rich)
        plain_lines.append("".join(plain_parts))
        html_blocks.append(f"<div>{''.join(html_parts) or '<br>'}</div>")
    unique = tuple(dict.fromkeys(resources))
    return _Body("\n".join(plain_lines), "\n".join(html_blocks), unique, title)


def _render_element(
    element: Mapping[str, Any],
    mentions: Sequence[Mention],
    add_resource: Callable[[Resource], None],
) -> tuple[str, str]:
    tag = _str(element, "tag")
    if tag == "text":
        text = _str(element, "text")
        return text, _styled(_esc_lines(text), element)
    if tag == "a":
        href = _str(element, "href")
        text = _str(element, "text") or href
        plain = text if not href or text == href else f"{text} ({href})"
        target = safe_href(href)
        if target is None:
            return plain, _styled(_esc_lines(plain), element)
        return plain, _styled(f'<a href="{_esc(target)}">{_esc(text)}</a>', element)
    if tag == "at":
        user_id = _str(element, "user_id")
        if user_id in ("all", "@_all"):
            name = ALL_MENTION_NAME
        else:
            name = _str(element, "user_name") or _mention_name(user_id, mentions) or user_id
        return f"@{name}", f'<span style="{_MENTION_STYLE}">@{_esc(name)}</span>'
    if tag == "img":
        key = _str(element, "image_key")
        if not key:
            return "[图片]", _esc("[图片]")
        add_resource(Resource("image", key, ""))
        return "[图片]", _image_html(key)
    if tag == "media":
        key = _str(element, "file_key")
        if key:
            add_resource(Resource("media", key, ""))
        return "[视频]", _esc("[视频]")
    if tag == "emotion":
        label = f"[{_str(element, 'emoji_type')}]"
        return label, _esc(label)
    if tag == "code_block":
        code = _str(element, "text")
        language = _str(element, "language")
        label = f' data-language="{_esc(language)}"' if language else ""
        return code, (
            f'<pre style="background:#f5f6f7;padding:8px;border-radius:4px;'
            f'white-space:pre-wrap;font-family:monospace"{label}><code>{_esc(code)}</code></pre>'
        )
    if tag == "hr":
        return "----------", '<hr style="border:none;border-top:1px solid #dee0e3">'
    if tag == "md":
        text = _str(element, "text")
        return text, _esc_lines(text)
    # Unknown element: keep whatever text it carries rather than dropping it.
    text = _str(element, "text")
    return text, _esc_lines(text)


# --------------------------------------------------------------------------- helpers


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp")


_WHITESPACE_RUN = re.compile(r"\s+")


def single_line(text: str) -> str:
    """Control characters and line breaks become single spaces, ends trimmed."""
    cleaned = "".join(" " if _is_control(ch) else ch for ch in text)
    return _WHITESPACE_RUN.sub(" ", cleaned).strip()


def preview(text: str, limit: int = 40) -> str:
    """A one-line excerpt for subjects and logs, never longer than `limit` characters."""
    line = single_line(text)
    if limit <= 0:
        return ""
    if len(line) <= limit:
        return line
    return line[: limit - 1].rstrip() + "…"


# --------------------------------------------------------------------------- storage

_JSON_VERSION = 1
_MESSAGE_FIELDS = tuple(f.name for f in fields(Message) if f.name not in ("resources", "mentions"))


def message_to_json(m: Message) -> str:
    """Serialise for the SQLite store; `message_from_json` is its exact inverse."""
    # By hand rather than dataclasses.asdict, whose deep copy was a tenth of the
    # intake's CPU per event. tests/test_events.py checks every field is here.
    data = {f: getattr(m, f) for f in _MESSAGE_FIELDS}
    data["resources"] = [{"kind": r.kind, "key": r.key, "name": r.name} for r in m.resources]
    data["mentions"] = [{"key": x.key, "name": x.name, "open_id": x.open_id} for x in m.mentions]
    data["v"] = _JSON_VERSION
    return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def message_from_json(s: str) -> Message:
    """Rebuild a stored `Message`; a corrupt row raises `EventError` instead of half-loading."""
    try:
        data = json.loads(s)
    except ValueError as exc:
        raise EventError(f"stored message is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise EventError("stored message is not a JSON object")
    if data.pop("v", _JSON_VERSION) != _JSON_VERSION:
        raise EventError("stored message has an unknown format version")
    try:
        resources = tuple(
            Resource(cast(ResourceKind, r["kind"]), r["key"], r["name"])
            for r in data.pop("resources", [])
        )
        mentions = tuple(
            Mention(m["key"], m["name"], m["open_id"]) for m in data.pop("mentions", [])
        )
        message = Message(**data, resources=resources, mentions=mentions)
    except (KeyError, TypeError) as exc:
        raise EventError(f"stored message is missing or has unexpected fields: {exc}") from exc
    for name in ("event_id", "message_id", "chat_id", "text", "html", "msg_type"):
        if not isinstance(getattr(message, name), str):
            raise EventError(f"stored message field {name!r} is not a string")
    return message
