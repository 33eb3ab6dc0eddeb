"""The message model's stored form: every field round-trips, version-1 rows still read."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from feishu_mailbot.core.model import (
    Card,
    Message,
    Resource,
    Stored,
    StoredFormError,
    Text,
    message_from_json,
    message_to_json,
    stored_form,
)
from feishu_mailbot.mail import html
from feishu_mailbot.mail.html import image_cid
from tests.feishu.test_events import MENTIONS, POST, parse_message, receive

# Written by the release before blocks: the content it got, what it stored, how it rendered.
V1 = json.loads((Path(__file__).parents[1] / "fixtures" / "messages-v1.json").read_text("utf-8"))
ROW_IDS = [f"{json.loads(r['stored'])['msg_type']}-{i}" for i, r in enumerate(V1)]


def test_json_round_trip() -> None:
    m = parse_message(receive("post", POST, mentions=MENTIONS))
    stored = message_to_json(m)
    assert "张三" in stored  # UTF-8 kept readable in the database
    data = json.loads(stored)
    assert data["v"] == 2
    every_field = {f.name for f in dataclasses.fields(Message) if f.init}
    assert set(data) == every_field | {"v"}
    assert message_from_json(stored) == m
    plain = parse_message(receive("file", {"file_key": "f", "file_name": "a.txt"}))
    assert message_from_json(message_to_json(plain)) == plain


def test_message_from_json_rejects_corrupt_rows() -> None:
    with pytest.raises(StoredFormError):
        message_from_json("{")
    with pytest.raises(StoredFormError):
        message_from_json('{"event_id": "x"}')
    with pytest.raises(StoredFormError, match="version"):
        message_from_json('{"v": 99}')
    with pytest.raises(StoredFormError, match="block"):
        message_from_json(json.dumps({"v": 2, "blocks": [{"t": "nonsense"}]}))


@pytest.mark.parametrize("row", V1, ids=ROW_IDS)
def test_a_version_1_row_reads_as_it_was_rendered(row: dict[str, Any]) -> None:
    """Rows written by the previous release (tests/fixtures/messages-v1.json was made by it)."""
    m = message_from_json(row["stored"])
    assert m.text == row["text"]
    assert m.title == row["title"]
    assert m.resources == tuple(Resource(*r) for r in row["resources"])
    every_image = {image_cid(r.key) for r in m.resources}
    assert html.html(m.blocks, every_image) == row["html"]
    if any(r.kind == "image" for r in m.resources):
        assert "cid:" not in html.html(m.blocks) and "[图片未能下载]" in html.html(m.blocks)
    # Stored again, it is a version-2 row that reads back the same.
    assert message_from_json(message_to_json(m)) == m


@pytest.mark.parametrize("row", V1, ids=ROW_IDS)
def test_blocks_render_what_version_1_rendered(row: dict[str, Any]) -> None:
    """The same content, parsed into blocks today, gives the text and HTML it gave then."""
    old = json.loads(row["stored"])
    payload = receive(old["msg_type"], row["content"], mentions=row["mentions"])
    m = parse_message(payload)
    assert m.text == row["text"]
    assert m.title == row["title"]
    assert html.html(m.blocks, {image_cid(r.key) for r in m.resources}) == row["html"]


def test_nested_blocks_round_trip() -> None:
    """Cards and expanded forwards hold blocks of their own; they store and read back."""
    from feishu_mailbot.core.model import Card, Forwarded, Image, Quoted, Share, Text

    inner = Forwarded((Quoted("李四", "2026-12-01 10:00", (Text("更早"),)),), more=2)
    blocks = (
        Card("卡片", "告警", (Text("CPU 95%"), Image("img_a")), "red"),
        Forwarded((Quoted("张三", "2026-12-01 10:01", (inner, Share("chat", "oc_x", "值班群"))),)),
    )
    m = dataclasses.replace(parse_message(receive("text", {"text": "x"})), blocks=blocks)
    again = message_from_json(message_to_json(m))
    assert again == m and again.text == m.text
    assert again.resources == (Resource("image", "img_a", ""),)
    assert "> 张三 · 2026-12-01 10:01" in m.text and ">   > 李四 · 2026-12-01 10:00" in m.text


def test_a_body_over_the_cap_is_cut_to_it_never_refused() -> None:
    """Whatever the blocks (text that escapes to more bytes than it has, a card), the
    stored body fits the cap, reads back, keeps its beginning whole and says it was cut."""
    nasty = '"\\\x01' * 40_000 + "😀" * 40_000  # each of the first three JSON-escapes longer
    card = Card("卡片", "告警", (Text("第一段"), Text("长" * 200_000), Text("末段")), "red")
    for blocks in ((Text("开头"), Text(nasty)), (card,), (Text("短"), card, Text("之后"))):
        m = dataclasses.replace(parse_message(receive("text", {"text": "x"})), blocks=blocks)
        stored = stored_form(m, cap=64 * 1024)
        assert stored.cut_from > 64 * 1024
        assert len(stored.body.encode("utf-8")) <= 64 * 1024
        back = message_from_json(stored.body)
        assert back == stored.message and "内容过长，已截断" in back.text
        kept = back.text[: back.text.index("\n…（内容过长")]
        assert m.text.startswith(kept) and len(kept) > 1000
    small = parse_message(receive("post", POST, mentions=MENTIONS))
    assert stored_form(small) == Stored(small, message_to_json(small))
