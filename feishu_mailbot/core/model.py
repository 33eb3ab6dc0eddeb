"""The plain data that flows from parsing to mail: messages, their blocks, planned mail.

Parsing (events.py) builds these values, the rules and reports decide on them,
the presenter (present.py) renders them and the state package stores them.
Nothing here does I/O or knows a format other than its own stored JSON.

A message's content is a sequence of blocks, one kind per dataclass. The
plain text every decision reads (`Message.text`) is derived from the blocks
by one function, so keyword rules, report prefixes, subjects and mail bodies
all see the same text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from operator import attrgetter
from typing import Any, Literal, cast

ResourceKind = Literal["image", "file", "media", "audio"]
STYLES = ("bold", "italic", "underline", "lineThrough")

# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Text:
    text: str
    styles: tuple[str, ...] = ()  # a subset of STYLES, in Feishu's order


@dataclass(frozen=True)
class At:
    """An @-mention, resolved to a display name when parsed."""

    name: str
    open_id: str = ""


@dataclass(frozen=True)
class Link:
    text: str
    href: str  # as sent; the presenter links only http(s) and mailto
    styles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Image:
    """Shown inline in the HTML body: a cid: reference to the downloaded image's part."""

    key: str


@dataclass(frozen=True)
class File:
    """A file, video or voice message: attached to the mail, labelled in the body."""

    kind: ResourceKind
    key: str
    name: str  # the file name when Feishu gives one
    label: str  # what the body shows, e.g. "[文件] 季度报告.pdf"


@dataclass(frozen=True)
class Code:
    text: str
    language: str = ""


@dataclass(frozen=True)
class Divider:
    pass


@dataclass(frozen=True)
class Placeholder:
    """Content we do not render (a sticker, a card): a readable label instead."""

    text: str


@dataclass(frozen=True)
class Share:
    """A shared group or contact card; the mail shows its name, looked up when composed."""

    kind: Literal["chat", "user"]
    id: str
    name: str = ""


@dataclass(frozen=True)
class Card:
    """Structured content shown as a box: an interactive card, an event, a vote, a task.

    `label` says what it is (卡片, 日程, 投票…), `color` is a Feishu card header
    template (blue, red…) or "".
    """

    label: str
    title: str
    blocks: tuple[Block, ...] = ()
    color: str = ""


@dataclass(frozen=True)
class Quoted:
    """One message of a merged forward, as the conversation showed it."""

    sender: str
    when: str  # already in the team's timezone
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Forwarded:
    """A merged forward (合并转发) expanded into the conversation it carries.

    `more` counts the messages left out by the caps; `note` says why the
    forward could not be expanded (then `items` is empty).
    """

    items: tuple[Quoted, ...] = ()
    more: int = 0
    note: str = ""


@dataclass(frozen=True)
class Break:
    """Opens a paragraph (a post's): a line break in text, a `<div>` in HTML."""


@dataclass(frozen=True)
class Title:
    text: str


@dataclass(frozen=True)
class Resource:
    """Something the shell downloads through the message-resource API."""

    kind: ResourceKind
    key: str
    name: str  # the file name when Feishu gives one; mail.py picks a default otherwise


@dataclass(frozen=True)
class Download:
    """A resource as the message-resource API returned it.

    `data` is None when the resource was larger than it was allowed to be; it was
    then not (or not wholly) downloaded, and `size` is its size if Feishu said.
    """

    data: bytes | None
    content_type: str
    filename: str | None  # from Content-Disposition, when Feishu sends one
    size: int | None = None


@dataclass(frozen=True)
class Legacy:
    """Content stored by version 1, which kept only its renderings (see upgrade_v1).

    `html` was produced by our own escaping renderer when the row was written,
    with every image as a cid: reference, so it is shown as it is.
    """

    text: str
    html: str
    resources: tuple[Resource, ...] = ()
    title: str = ""


Block = (
    Text
    | At
    | Link
    | Image
    | File
    | Code
    | Divider
    | Placeholder
    | Break
    | Title
    | Legacy
    | Share
    | Card
    | Forwarded
)
SHARE_LABELS = {"chat": "群名片", "user": "个人名片"}
FORWARD_LABEL = "[合并转发消息]"
ALL_MENTION_NAME = "所有人"  # how Feishu names @all
FORWARD_MORE = "（另有 {} 条消息未显示，请在飞书中查看）"


def _link_text(link: Link) -> str:
    return link.text if not link.href or link.text == link.href else f"{link.text} ({link.href})"


def _share_text(share: Share) -> str:
    return f"[{SHARE_LABELS[share.kind]}] {share.name}".rstrip()


def _card_text(card: Card) -> str:
    head = f"[{card.label}] {card.title}".rstrip()
    body = text_of(card.blocks)
    return f"{head}\n{body}" if body else head


def _quoted_text(item: Quoted) -> str:
    lines = text_of(item.blocks).splitlines() or [""]
    return f"> {item.sender} · {item.when}\n" + "".join(f">   {line}\n" for line in lines)


def _forwarded_text(forward: Forwarded) -> str:
    """The conversation quoted, one '> ' deeper per nested forward."""
    out = [FORWARD_LABEL]
    for item in forward.items:
        out.append(_quoted_text(item).rstrip("\n"))
    if forward.more:
        out.append("> " + FORWARD_MORE.format(forward.more))
    if forward.note:
        out.append(forward.note)
    return "\n".join(out)


# A table, not a match statement: text_of runs for every event before its ack, and a
# chain of class patterns cost an isinstance check per kind per block.
_PLAIN: dict[type[Any], Callable[[Any], str]] = {
    Text: attrgetter("text"),
    Code: attrgetter("text"),
    Placeholder: attrgetter("text"),
    Title: attrgetter("text"),
    Legacy: attrgetter("text"),
    At: lambda b: f"@{b.name}",
    Link: _link_text,
    Image: lambda _: "[图片]",
    File: attrgetter("label"),
    Divider: lambda _: "----------",
    Break: lambda _: "\n",
    Share: _share_text,
    Card: _card_text,
    Forwarded: _forwarded_text,
}


def block_text(block: Block) -> str:
    """A block's plain text: what rules match and the text/plain part shows."""
    return _PLAIN[type(block)](block)


def text_of(blocks: tuple[Block, ...]) -> str:
    """The blocks' plain text. A Break opens a paragraph on a new line, except the
    first paragraph of content that starts with one."""
    text = "".join([_PLAIN[type(b)](b) for b in blocks])
    return text[1:] if blocks and type(blocks[0]) is Break else text


def resources_of(blocks: tuple[Block, ...]) -> tuple[Resource, ...]:
    """The resources to download, each once, in order of appearance."""
    found: dict[Resource, None] = {}
    for block in blocks:
        if isinstance(block, Image):
            found[Resource("image", block.key, "")] = None
        elif isinstance(block, File):
            found[Resource(block.kind, block.key, block.name)] = None
        elif isinstance(block, Legacy):
            found.update(dict.fromkeys(block.resources))
        elif isinstance(block, Card):
            found.update(dict.fromkeys(resources_of(block.blocks)))
        elif isinstance(block, Forwarded):
            # Fetched with the forward's own message id, which is what Feishu asks for.
            for item in block.items:
                found.update(dict.fromkeys(resources_of(item.blocks)))
    return tuple(found)


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Mention:
    key: str  # the placeholder used in the content, e.g. "@_user_1"
    name: str
    open_id: str


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
    blocks: tuple[Block, ...] = ()
    mentions: tuple[Mention, ...] = ()
    root_id: str = ""
    parent_id: str = ""
    # Readable plain text, mentions as @Name; a post's title is its first line. Derived
    # from the blocks once, when the message is made (rules, reports and mail all read it).
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", text_of(self.blocks))

    @property
    def title(self) -> str:
        for block in self.blocks:
            if isinstance(block, Title):
                return block.text
            if isinstance(block, Legacy | Card):
                return block.title
        return ""

    @property
    def resources(self) -> tuple[Resource, ...]:
        return resources_of(self.blocks)


@dataclass(frozen=True)
class Recall:
    event_id: str
    message_id: str
    chat_id: str
    recall_time_ms: int


@dataclass(frozen=True)
class Ignored:
    """An event we acknowledge and do nothing with, and why (for the debug line)."""

    event_id: str
    event_type: str
    reason: str
    chat_id: str = ""  # set when it was ignored for its chat


#: What the Feishu edge makes of an event's payload.
Event = Message | Recall | Ignored


@dataclass(frozen=True)
class Delivery:
    """One mail the rules plan for a message: who gets it and under which rules."""

    recipients: tuple[str, ...]
    rules: tuple[str, ...]  # rule names, in config order
    subject_template: str
    confirm: bool
    notify_recall: bool


@dataclass(frozen=True)
class ActionRequest:
    """Work other than mail that a message asks for (a reaction, a digest), done later.

    `kind` names an entry of the action worker's table; `payload` is plain JSON data.
    """

    kind: str
    payload: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- stored form


class StoredFormError(ValueError):
    """A stored message that cannot be read back (corrupt, or from an unknown version)."""


JSON_VERSION = 2
_BLOCK_TYPES: dict[str, type[Any]] = {
    "text": Text,
    "at": At,
    "link": Link,
    "image": Image,
    "file": File,
    "code": Code,
    "divider": Divider,
    "placeholder": Placeholder,
    "break": Break,
    "title": Title,
    "legacy": Legacy,
    "share": Share,
    "card": Card,
    "forwarded": Forwarded,
}
_BLOCK_NAMES = {cls: name for name, cls in _BLOCK_TYPES.items()}
# Looked up once: serialising runs for every event, before its ack. A field left at its
# default is not written, so a plain text block is {"t":"text","text":"…"}.
_BLOCK_FIELDS = {
    cls: tuple((f.name, f.default) for f in fields(cls)) for cls in _BLOCK_TYPES.values()
}
_SCALARS = (
    "event_id",
    "message_id",
    "chat_id",
    "chat_type",
    "sender_open_id",
    "sender_type",
    "msg_type",
    "create_time_ms",
    "root_id",
    "parent_id",
)


def _resource_json(r: Resource) -> dict[str, str]:
    return {"kind": r.kind, "key": r.key, "name": r.name}


def _block_to_json(block: Block) -> dict[str, Any]:
    data: dict[str, Any] = {"t": _BLOCK_NAMES[type(block)]}
    for name, default in _BLOCK_FIELDS[type(block)]:
        value = getattr(block, name)
        if value == default:
            continue
        if name == "resources":
            value = [_resource_json(r) for r in value]
        elif name == "blocks":
            value = [_block_to_json(b) for b in value]
        elif name == "items":
            value = [
                {
                    "sender": q.sender,
                    "when": q.when,
                    "blocks": [_block_to_json(b) for b in q.blocks],
                }
                for q in value
            ]
        data[name] = list(value) if isinstance(value, tuple) else value
    return data


def _block_from_json(data: object) -> Block:
    if not isinstance(data, dict) or data.get("t") not in _BLOCK_TYPES:
        raise StoredFormError(f"stored block is not one we know: {data!r:.80}")
    cls = _BLOCK_TYPES[data.pop("t")]
    try:
        if "resources" in data:
            data["resources"] = [
                Resource(r["kind"], r["key"], r["name"]) for r in data["resources"]
            ]
        if "blocks" in data:
            data["blocks"] = [_block_from_json(b) for b in data["blocks"]]
        if "items" in data:
            data["items"] = [
                Quoted(q["sender"], q["when"], tuple(_block_from_json(b) for b in q["blocks"]))
                for q in data["items"]
            ]
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cast(Block, cls(**values))
    except (TypeError, KeyError) as exc:
        raise StoredFormError(f"stored {cls.__name__} block: {exc}") from exc


def message_to_json(m: Message) -> str:
    """Serialise for the state database; `message_from_json` is its exact inverse."""
    # By hand rather than dataclasses.asdict, whose deep copy was a tenth of the
    # intake's CPU per event. tests/test_model.py checks every field is here.
    data: dict[str, Any] = {name: getattr(m, name) for name in _SCALARS}
    data["blocks"] = [_block_to_json(b) for b in m.blocks]
    data["mentions"] = [{"key": x.key, "name": x.name, "open_id": x.open_id} for x in m.mentions]
    data["v"] = JSON_VERSION
    return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


# The most a message's stored body (its JSON, in UTF-8) may take. Feishu's own 发送消息
# (https://open.feishu.cn/document/server-docs/im-v1/message/create, `content`: "文本消息
# 请求体最大不能超过150KB；卡片及富文本消息请求体最大不能超过30KB", error 230025) bounds
# what people can post; our JSON of it is that text plus a little per block (a bare link
# is kept as its text and its href: twice), so 256 KiB takes any real message whole with
# room to spare. A bigger body is odd or hostile: it would still be acked, but a
# megabyte row makes the commit every ack waits for, and the mail, that much bigger.
BODY_CAP = 256 * 1024
CUT_NOTE = (
    "…（内容过长，已截断：原消息约 {size} KB，此处只保留前 {cap} KB，完整内容请在飞书中查看）"
    "(message too long: truncated from about {size} KB to its first {cap} KB; "
    "see the rest in Feishu)"
)


@dataclass(frozen=True)
class Stored:
    """A message as the state keeps it: the one given, or one cut to BODY_CAP."""

    message: Message
    body: str  # message_to_json(message)
    cut_from: int = 0  # when cut: how many bytes its whole body would have taken


def stored_form(m: Message, cap: int = BODY_CAP) -> Stored:
    """The message and its JSON, cut to `cap` bytes if need be: its blocks are kept in
    order while they fit, the block that does not is cut on a character boundary (a
    card: its own blocks), and a note follows. Never refused: the mail goes out."""
    body = message_to_json(m)
    if len(body) <= cap // 4:  # no character takes more than 4 bytes in UTF-8
        return Stored(m, body)
    size = len(body.encode("utf-8"))
    if size <= cap:
        return Stored(m, body)
    note = (Break(), Placeholder(CUT_NOTE.format(size=size // 1024, cap=cap // 1024)))
    if _size(replace(m, blocks=note)) > cap // 2:
        m = replace(m, mentions=())  # thousands of them: junk; the At blocks keep names
    room = cap - _size(replace(m, blocks=note))
    if room < cap // 2:
        raise ValueError(f"the message's ids alone take over {cap // 2} bytes")
    while True:  # escaping can add a few bytes to a cut text: then cut a little more
        cut = replace(m, blocks=(*_fit(m.blocks, room), *note))
        body = message_to_json(cut)
        over = len(body.encode("utf-8")) - cap
        if over <= 0:
            return Stored(cut, body, size)
        room -= over


def _size(value: Message | Block) -> int:
    if isinstance(value, Message):
        return len(message_to_json(value).encode("utf-8"))
    data = json.dumps(_block_to_json(value), ensure_ascii=False, separators=(",", ":"))
    return len(data.encode("utf-8")) + 1  # and the comma after it


def _fit(blocks: tuple[Block, ...], room: int) -> tuple[Block, ...]:
    """The first blocks that fit in `room` bytes of JSON, the last one cut if it can be."""
    kept: list[Block] = []
    for block in blocks:
        size = _size(block)
        if size <= room:
            kept.append(block)
            room -= size
            continue
        cut = _cut(block, room)
        if cut is not None:
            kept.append(cut)
        break
    return tuple(kept)


def _cut(block: Block, room: int) -> Block | None:
    """`block` within `room` bytes of JSON, or None when nothing of it fits."""
    if isinstance(block, Card):
        inner = _fit(block.blocks, room - _size(replace(block, blocks=())))
        return replace(block, blocks=inner) if inner else None
    if not isinstance(block, Text | Code | Link | Placeholder | Title):
        return None
    # The longest prefix that fits, by characters (never a UTF-8 sequence cut in two):
    # JSON escaping makes a character 1 to 6 bytes, so it is searched for, not computed.
    low, high = 0, min(len(block.text), max(0, room - _size(replace(block, text=""))))
    while low < high:
        middle = (low + high + 1) // 2
        if _size(replace(block, text=block.text[:middle])) <= room:
            low = middle
        else:
            high = middle - 1
    return replace(block, text=block.text[:low]) if low else None


def message_from_json(s: str) -> Message:
    """Rebuild a stored `Message` (either stored version); a corrupt row raises StoredFormError."""
    try:
        data = json.loads(s)
    except ValueError as exc:
        raise StoredFormError(f"stored message is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise StoredFormError("stored message is not a JSON object")
    version = data.pop("v", 1)
    if version == 1:
        data = upgrade_v1(data)
    elif version != JSON_VERSION:
        raise StoredFormError(f"stored message has an unknown format version {version!r}")
    try:
        blocks = tuple(_block_from_json(b) for b in data.pop("blocks"))
        mentions = tuple(
            Mention(m["key"], m["name"], m["open_id"]) for m in data.pop("mentions", [])
        )
        message = Message(**data, blocks=blocks, mentions=mentions)
    except (KeyError, TypeError) as exc:
        raise StoredFormError(f"stored message is missing or has unexpected fields: {exc}") from exc
    for name in ("event_id", "message_id", "chat_id", "msg_type"):
        if not isinstance(getattr(message, name), str):
            raise StoredFormError(f"stored message field {name!r} is not a string")
    return message


def upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 row as version 2: its stored renderings become one Legacy block.

    Version 1 kept the text and HTML rendered when the message arrived, not its
    content, so that rendering is what a mail made from the row shows: the same
    text for rules, reports and subjects, the same HTML body as before.
    """
    text, html = data.pop("text", None), data.pop("html", None)
    title = data.pop("title", "")
    if not isinstance(text, str) or not isinstance(html, str) or not isinstance(title, str):
        raise StoredFormError("stored version-1 message has no text or html string")
    try:
        resources = [
            _resource_json(Resource(r["kind"], r["key"], r["name"]))
            for r in data.pop("resources", [])
        ]
    except (KeyError, TypeError) as exc:
        raise StoredFormError(f"stored version-1 message has a bad resource: {exc}") from exc
    data["blocks"] = [
        {"t": "legacy", "text": text, "html": html, "resources": resources, "title": title}
    ]
    return data
