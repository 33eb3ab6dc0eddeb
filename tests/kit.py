"""What in-process tests build their worlds from: one message factory, one `until`.

The daemon-process tests drive `tests/harness.py`; these are for tests that run a
worker or the state on their own event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from feishu_mailbot.core.model import Block, Message, Text

WHEN = 1_764_560_000_000  # 2025-12-01 03:33:20 UTC, in ms: when numbered messages are sent


def message(
    n: int | str = 1,
    text: str = "故障: 数据库",
    chat: str = "oc_team",
    when: int = WHEN,
    *,
    sender: str = "ou_alice",
    blocks: tuple[Block, ...] | None = None,
    root: Message | None = None,
) -> Message:
    """Message `om_{n}` of event `ev_{n}` in `chat`, sent at `when` (+ n ms when n is a
    number, so that numbered messages are in order); text, or `blocks` (a post when
    more than one); a reply to `root` in its thread."""
    return Message(
        event_id=f"ev_{n}",
        message_id=f"om_{n}",
        chat_id=chat,
        chat_type="group",
        sender_open_id=sender,
        sender_type="user",
        msg_type="post" if blocks is not None and len(blocks) > 1 else "text",
        create_time_ms=when + (n if isinstance(n, int) else 0),
        blocks=blocks if blocks is not None else (Text(text),),
        root_id=root.message_id if root else "",
        parent_id=root.message_id if root else "",
    )


async def until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """`harness.wait_until` for a test on the event loop: waits without blocking it."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.005)
