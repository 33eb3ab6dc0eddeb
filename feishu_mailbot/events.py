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
from typing import Any, cast

from feishu_mailbot.model import (
    STYLES,
    At,
    Block,
    Break,
    Code,
    Divider,
    File,
    Image,
    Link,
    Mention,
    Message,
    Placeholder,
    Recall,
    ResourceKind,
    Text,
    Title,
)

RECEIVE_EVENT = "im.message.receive_v1"
RECALL_EVENT = "im.message.recalled_v1"
ALL_MENTION_NAME = "所有人"


@dataclass(frozen=True)
class Ignored:
    event_id: str
    event_type: str
    reason: str
    chat_id: str = ""  # set when it was ignored for its chat


class EventError(ValueError):
    """A payload we cannot even identify; the caller logs it and acknowledges nothing."""


Event = Message | Recall | Ignored


# --------------------------------------------------------------------------- parsing


def parse_event(
    payload: bytes | str | Mapping[str, Any],
    chat_allowed: Callable[[str], bool] = lambda _: True,
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
    header_time = _int(header.get("create_time"))
    chat_id = _str(_obj(event.get("message")), "chat_id") or _str(event, "chat_id")
    if chat_id and not chat_allowed(chat_id):
        return Ignored(event_id, event_type, "chat not in the allowlist, ignored", chat_id)
    if event_type == RECALL_EVENT:
        return _parse_recall(event_id, event, header_time)
    return _parse_message(event_id, event, header_time)


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
    return Message(
        event_id=event_id,
        message_id=message_id,
        chat_id=chat_id,
        chat_type=_str(message, "chat_type"),
        sender_open_id=_str(_obj(sender.get("sender_id")), "open_id"),
        sender_type=_str(sender, "sender_type"),
        msg_type=msg_type,
        create_time_ms=_int(message.get("create_time")) or header_time,
        blocks=content_blocks(msg_type, message.get("content"), mentions),
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


def _int(value: object) -> int:
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


def _mention_name(key: str, mentions: Mentions) -> str | None:
    if key in ("@_all", "all"):
        return ALL_MENTION_NAME
    for mention in mentions:
        if mention.key == key:
            return mention.name or "未知用户"
    return None


def _text_blocks(text: str, mentions: Mentions) -> Blocks:
    """Text with its `@_user_N` placeholders as At blocks."""
    keys = sorted({m.key for m in mentions} | {"@_all"}, key=len, reverse=True)
    open_ids = {m.key: m.open_id for m in mentions}
    out: Blocks = []
    pos = 0
    for found in re.finditer("|".join(re.escape(k) for k in keys), text):
        if found.start() > pos:
            out.append(Text(text[pos : found.start()]))
        key = found.group(0)
        out.append(At(_mention_name(key, mentions) or key, open_ids.get(key, "")))
        pos = found.end()
    if pos < len(text):
        out.append(Text(text[pos:]))
    return out


def _text(content: Mapping[str, Any], mentions: Mentions) -> Blocks:
    return _text_blocks(_str(content, "text"), mentions)


def _image(content: Mapping[str, Any], mentions: Mentions) -> Blocks:
    key = _str(content, "image_key")
    return [Image(key)] if key else [Placeholder("[图片]")]


def _resource(kind: ResourceKind, label: str, key: str, name: str) -> Blocks:
    return [File(kind, key, name, label)] if key else [Placeholder(label)]


def _file(content: Mapping[str, Any], mentions: Mentions) -> Blocks:
    name = _str(content, "file_name")
    return _resource("file", f"[文件] {name}".rstrip(), _str(content, "file_key"), name)


def _audio(content: Mapping[str, Any], mentions: Mentions) -> Blocks:
    seconds = _int(content.get("duration")) // 1000
    label = f"[语音 {seconds}秒]" if seconds else "[语音]"
    return _resource("audio", label, _str(content, "file_key"), "")


def _media(content: Mapping[str, Any], mentions: Mentions) -> Blocks:
    name = _str(content, "file_name")
    return _resource("media", f"[视频] {name}".rstrip(), _str(content, "file_key"), name)


def _placeholder(label: str) -> Callable[[Mapping[str, Any], Mentions], Blocks]:
    def blocks(content: Mapping[str, Any], mentions: Mentions) -> Blocks:
        # A card title, a place or a folder name makes the placeholder useful.
        detail = _str(content, "title") or _str(content, "name") or _str(content, "summary")
        return [Placeholder(f"{label} {detail}".rstrip())]

    return blocks


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


def _post(content: Mapping[str, Any], mentions: Mentions) -> Blocks:
    """A title, then each paragraph opened by a Break block."""
    body = _post_body(content)
    title = _str(body, "title")
    out: Blocks = [Title(title)] if title else []
    paragraphs = body.get("content")
    for paragraph in paragraphs if isinstance(paragraphs, list) else []:
        out.append(Break())
        for element in paragraph if isinstance(paragraph, list) else []:
            if isinstance(element, Mapping):
                out.append(_post_element(element, mentions))
    return out


def _styles(element: Mapping[str, Any]) -> tuple[str, ...]:
    given = element.get("style")
    return tuple(s for s in STYLES if s in given) if isinstance(given, list) else ()


def _post_element(element: Mapping[str, Any], mentions: Mentions) -> Block:
    tag = _str(element, "tag")
    if tag == "a":
        href = _str(element, "href")
        return Link(_str(element, "text") or href, href, _styles(element))
    if tag == "at":
        user_id = _str(element, "user_id")
        if user_id in ("all", "@_all"):
            return At(ALL_MENTION_NAME)
        name = _str(element, "user_name") or _mention_name(user_id, mentions) or user_id
        open_id = next((m.open_id for m in mentions if m.key == user_id), "")
        return At(name, open_id)
    if tag == "img":
        key = _str(element, "image_key")
        return Image(key) if key else Placeholder("[图片]")
    if tag == "media":
        key = _str(element, "file_key")
        return File("media", key, "", "[视频]") if key else Placeholder("[视频]")
    if tag == "emotion":
        return Text(f"[{_str(element, 'emoji_type')}]")
    if tag == "code_block":
        return Code(_str(element, "text"), _str(element, "language"))
    if tag == "hr":
        return Divider()
    if tag == "md":
        return Text(_str(element, "text"))
    # text, and any element we do not know: keep whatever text it carries.
    return Text(_str(element, "text"), _styles(element) if tag == "text" else ())


ContentParser = Callable[[Mapping[str, Any], Mentions], Blocks]

#: One entry per message type: its content JSON → blocks.
CONTENT: dict[str, ContentParser] = {
    "text": _text,
    "post": _post,
    "image": _image,
    "file": _file,
    "audio": _audio,
    "media": _media,
    "sticker": _placeholder("[表情包]"),
    "interactive": _placeholder("[卡片消息]"),
    "share_chat": _placeholder("[群名片]"),
    "share_user": _placeholder("[个人名片]"),
    "merge_forward": _placeholder("[合并转发消息]"),
    "system": _placeholder("[系统消息]"),
    "hongbao": _placeholder("[红包]"),
    "share_calendar_event": _placeholder("[日程]"),
    "calendar": _placeholder("[日程]"),
    "general_calendar": _placeholder("[日程]"),
    "video_chat": _placeholder("[视频会议]"),
    "vote": _placeholder("[投票]"),
    "todo": _placeholder("[任务]"),
    "location": _placeholder("[位置]"),
    "folder": _placeholder("[文件夹]"),
}


def content_blocks(msg_type: str, raw: object, mentions: Mentions) -> tuple[Block, ...]:
    content = _content(raw)
    if content is None and msg_type == "text" and isinstance(raw, str):
        content = {"text": raw}  # unparseable text content: showing it beats losing it
    parser = CONTENT.get(msg_type)
    if parser is None:
        return (Placeholder(f"[不支持的消息类型: {msg_type or '未知'}]"),)
    return tuple(parser(content or {}, mentions))
