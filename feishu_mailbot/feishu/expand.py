"""What a message needs from Feishu before it is mailed, and the message with it.

A shared group or contact card shows its name; a merged forward shows the
conversation it carries. For a merge_forward, GET /open-apis/im/v1/messages/{id}
(获取指定消息的内容) answers "1 条合并转发消息和 N 条子消息" in one flat list: each
child names the message one level up in `upper_message_id`, nested forwards
included, so one request gives the whole tree. This module is pure: lookups.py
fetches the items and the names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import tzinfo
from typing import Any

from feishu_mailbot.core.model import (
    FORWARD_LABEL,
    Block,
    Card,
    Forwarded,
    Mention,
    Placeholder,
    Quoted,
    Share,
)
from feishu_mailbot.feishu.events import Context, content_blocks, number, shown_time

MAX_DEPTH = 3  # forwards inside forwards shown; deeper ones stay a placeholder
MAX_ITEMS = 50  # messages shown per forward; the rest are counted
TOO_DEEP = f"{FORWARD_LABEL}（嵌套过深，请在飞书中查看）"
NOT_EXPANDED = "未能展开合并转发的内容（{}），请在飞书中查看"
APP_SENDER = "机器人"


def _children(
    items: Sequence[Mapping[str, Any]], root_id: str
) -> dict[str, list[Mapping[str, Any]]]:
    tree: dict[str, list[Mapping[str, Any]]] = {}
    for item in items:
        upper = item.get("upper_message_id")
        if item.get("message_id") == root_id and not upper:
            continue  # the forward itself
        tree.setdefault(upper if isinstance(upper, str) and upper else root_id, []).append(item)
    for siblings in tree.values():
        siblings.sort(key=lambda i: number(i.get("create_time")))
    return tree


def sender_of(item: Mapping[str, Any]) -> tuple[str, str]:
    """(sender_type, id): a user's open_id, an app's app_id."""
    sender = item.get("sender")
    if not isinstance(sender, Mapping):
        return "", ""
    kind, id_ = sender.get("sender_type"), sender.get("id")
    return (kind if isinstance(kind, str) else "", id_ if isinstance(id_, str) else "")


def user_ids(items: Sequence[Mapping[str, Any]], root_id: str) -> list[str]:
    """The open_ids whose names `conversation` shows, each once, in the order shown:
    the senders of at most MAX_ITEMS messages a level, MAX_DEPTH levels deep. A
    forward of 1,500 messages from 1,500 people asks Feishu for 50 names, not 1,500."""
    tree = _children(items, root_id)
    found: dict[str, None] = {}

    def level(parent: str, depth: int) -> None:
        for item in tree.get(parent, [])[:MAX_ITEMS]:
            kind, id_ = sender_of(item)
            if kind == "user" and id_:
                found[id_] = None
            shown_inside = item.get("deleted") is not True and depth < MAX_DEPTH
            if item.get("msg_type") == "merge_forward" and shown_inside:
                level(str(item.get("message_id") or ""), depth + 1)

    level(root_id, 1)
    return list(found)


def item_blocks(item: Mapping[str, Any], zone: tzinfo) -> tuple[Block, ...]:
    """One item of 获取指定消息的内容 as blocks, parsed as its event's content would be."""
    body = item.get("body")
    raw = body.get("content") if isinstance(body, Mapping) else None
    return content_blocks(str(item.get("msg_type") or ""), raw, Context(mentions_of(item), zone))


def mentions_of(item: Mapping[str, Any]) -> tuple[Mention, ...]:
    """Mentions in 获取指定消息的内容's shape: id is a string there, not an object."""
    raw = item.get("mentions")
    out = []
    for m in raw if isinstance(raw, list) else []:
        if isinstance(m, Mapping) and isinstance(m.get("key"), str):
            out.append(Mention(m["key"], str(m.get("name") or ""), str(m.get("id") or "")))
    return tuple(out)


def conversation(
    items: Sequence[Mapping[str, Any]],
    root_id: str,
    names: Mapping[str, str],
    zone: tzinfo,
) -> Forwarded:
    """The forward `root_id` as a quoted conversation, within MAX_DEPTH and MAX_ITEMS."""
    tree = _children(items, root_id)
    if not tree.get(root_id):
        return Forwarded(note=NOT_EXPANDED.format("飞书未返回其中的消息"))
    return _level(tree, root_id, names, zone, 1)


def _level(
    tree: Mapping[str, list[Mapping[str, Any]]],
    parent: str,
    names: Mapping[str, str],
    zone: tzinfo,
    depth: int,
) -> Forwarded:
    children = tree.get(parent, [])
    quoted = []
    for item in children[:MAX_ITEMS]:
        msg_type = str(item.get("msg_type") or "")
        message_id = str(item.get("message_id") or "")
        if item.get("deleted") is True:
            blocks: tuple[Any, ...] = (Placeholder("[此消息已撤回或删除]"),)
        elif msg_type == "merge_forward":
            blocks = (
                (_level(tree, message_id, names, zone, depth + 1),)
                if depth < MAX_DEPTH
                else (Placeholder(TOO_DEEP),)
            )
        else:
            blocks = item_blocks(item, zone)
        when = shown_time(item.get("create_time"), zone)
        quoted.append(Quoted(_sender_name(item, names), when, blocks))
    return Forwarded(tuple(quoted), more=max(0, len(children) - MAX_ITEMS))


def _sender_name(item: Mapping[str, Any], names: Mapping[str, str]) -> str:
    kind, id_ = sender_of(item)
    if kind == "user":
        return names.get(id_) or id_ or "未知用户"
    return APP_SENDER if kind == "app" else (id_ or "未知发送者")


# --------------------------------------------------------------------------- shared cards


def shares(blocks: Sequence[Block]) -> list[Share]:
    """The shared cards whose names are to be looked up, nested ones included."""
    found: list[Share] = []
    for block in blocks:
        if isinstance(block, Share) and block.id and not block.name:
            found.append(block)
        elif isinstance(block, Card):
            found += shares(block.blocks)
        elif isinstance(block, Forwarded):
            for item in block.items:
                found += shares(item.blocks)
    return found


def named(blocks: Sequence[Block], names: Mapping[tuple[str, str], str]) -> tuple[Block, ...]:
    """The blocks with each shared card's name, from (kind, id) → name."""

    def one(block: Block) -> Block:
        if isinstance(block, Share) and (block.kind, block.id) in names:
            return replace(block, name=names[(block.kind, block.id)])
        if isinstance(block, Card):
            return replace(block, blocks=named(block.blocks, names))
        if isinstance(block, Forwarded):
            items = tuple(replace(q, blocks=named(q.blocks, names)) for q in block.items)
            return replace(block, items=items)
        return block

    return tuple(one(b) for b in blocks)
