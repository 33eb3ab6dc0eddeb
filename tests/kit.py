"""What in-process tests build their worlds from: a rig, a relay, messages, `until`.

In the spirit of h11's ConnectionPair: `rig` is a worker's whole world on the test's
event loop (a real State on a temp file, the emulator's REST through the config, names,
a clock the test may fake), `MemoryRelay` a delivery backend that keeps what it is
given, so a worker test is a few lines. The daemon-process tests use tests/harness.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from feishu_mailbot.compose.sources import Sources
from feishu_mailbot.config.settings import Settings, SmtpSettings
from feishu_mailbot.core.model import Block, Message, Text
from feishu_mailbot.feishu.rest import FeishuApi
from feishu_mailbot.mail.smtp import DeliveryError, Refused
from feishu_mailbot.state import State, Tx, outbox
from feishu_mailbot.state.outbox import Prepared

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


@asynccontextmanager
async def rig(
    settings: Settings, db: Path, now: Callable[[], float] = time.time
) -> AsyncIterator[Sources]:
    """The state at `db` (or the settings' `database`, opened as the daemon opens it),
    Feishu's REST client and a name resolver, on the clock `now`; closed after the block."""
    where = settings.database
    password = where.password.reveal() if where is not None and where.password else None
    state = State(db, daemon=True, url=where and where.url, password=password)
    api = FeishuApi(settings.feishu)
    try:
        yield Sources.of(settings, state, api, now)
    finally:
        await api.close()
        state.close()


def queued_digest(prepared: Prepared, now: float) -> Callable[[Tx], None]:
    """The work that queues a day's digest mail, as a digest builder would."""
    return partial(
        outbox.queue,
        mail_id="digest/oc_team/2026-12-01/1",
        kind="digest",
        recipients=["boss@example.com"],
        prepared=prepared,
        now=now,
    )


@dataclass(frozen=True)
class Backend:
    """The engine a test runs on: SQLite in the state directory, or a fresh PostgreSQL
    database (tests/postgres.py) with the bot's password in `password_file`."""

    url: str | None = None
    password_file: Path | None = None

    @property
    def name(self) -> str:
        return "sqlite" if self.url is None else "postgresql"

    @property
    def config(self) -> str:
        """The config's `database:` section (none for SQLite)."""
        if self.url is None:
            return ""
        return f"database:\n  url: {self.url}\n  password_file: {self.password_file}\n"

    def state(self, path: Path, **kwargs: Any) -> State:
        """The state as the daemon opens it; `path` places SQLite's file and the spool."""
        password = None
        if self.password_file is not None:
            password = self.password_file.read_text().strip()
        return State(path, url=self.url, password=password, **kwargs)


SQLITE = Backend()


class MemoryRelay:
    """A delivery backend that refuses the first mail it is given, then keeps them.

    Called with the SMTP settings, as the outbox makes its sessions, it hands out
    itself, so every session's mail lands in one list.
    """

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.refuse_next = 1

    def __call__(self, settings: SmtpSettings) -> MemoryRelay:
        return self

    def send(self, raw: bytes | Path, sender: str, recipients: Sequence[str]) -> Refused:
        if self.refuse_next:
            self.refuse_next -= 1
            raise DeliveryError("451 try again later", permanent=False)
        self.sent.append(raw.read_bytes() if isinstance(raw, Path) else raw)
        return {}

    def size_limit(self) -> int | None:
        return None

    def close_if_idle(self, idle_seconds: float) -> bool:
        return False

    def close(self) -> None:
        pass

    def reconfigure(self, settings: SmtpSettings) -> None:
        pass
