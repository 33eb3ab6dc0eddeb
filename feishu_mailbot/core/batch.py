"""Batched rules (`batch: 1h`, `daily: "18:00"`): when a digest is due, and what it holds.

A batched rule's matches wait in the state; at each boundary the ones received
before it go out as one digest, grouped by chat and by thread (its mail is
mail/batch.py, in the daily report's look). Boundaries of `batch:` are counted
from local midnight in the team's timezone, so `1h` means on the hour and `6h`
means 00, 06, 12 and 18 o'clock. compose/batch.py reads the state and queues it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from feishu_mailbot.config.settings import Batch
from feishu_mailbot.core.daily_report import Entry
from feishu_mailbot.core.model import Message


def _step(batch: Batch) -> timedelta:
    return timedelta(days=1) if batch.at is not None else timedelta(seconds=batch.every)


def _aware(wall: datetime, zone: tzinfo | None) -> datetime:
    """A wall-clock time in `zone`; one that does not exist (a DST gap) moves past it."""
    return datetime.fromtimestamp(wall.replace(tzinfo=zone).timestamp(), zone)


def boundary(now: datetime, batch: Batch) -> datetime:
    """The latest moment at or before `now` (aware) that a digest is due."""
    wall = now.replace(tzinfo=None)
    midnight = wall.replace(hour=0, minute=0, second=0, microsecond=0)
    if batch.at is not None:
        due = midnight.replace(hour=batch.at.hour, minute=batch.at.minute)
    else:  # wall-clock steps from midnight: the same hours every day, DST or not
        seconds = int((wall - midnight).total_seconds())
        due = midnight + timedelta(seconds=seconds - seconds % int(batch.every))
    while _aware(due, now.tzinfo).timestamp() > now.timestamp():
        due -= _step(batch)  # later today, or in a DST gap that is still ahead
    return _aware(due, now.tzinfo)


def window_start(end: datetime, batch: Batch) -> datetime:
    """The boundary before `end`: where a digest due at `end` begins, when on time."""
    return _aware(end.replace(tzinfo=None) - _step(batch), end.tzinfo)


@dataclass(frozen=True)
class ChatGroup:
    name: str
    threads: tuple[tuple[Entry, ...], ...]  # each: a thread's matches, oldest first

    @property
    def count(self) -> int:
        return sum(len(t) for t in self.threads)


@dataclass(frozen=True)
class Roundup:
    rule: str
    start: datetime  # of the messages shown (earlier than the window after downtime)
    end: datetime
    chats: tuple[ChatGroup, ...]

    @property
    def count(self) -> int:
        return sum(c.count for c in self.chats)


def build(
    rule: str,
    start: datetime,
    end: datetime,
    found: Sequence[tuple[Message, str, str]],
) -> Roundup:
    """(message, sender's name, chat's name) → the digest, chats and threads in order of
    their first match; a reply joins the thread of its root."""
    chats: dict[str, dict[str, list[Entry]]] = {}
    names: dict[str, str] = {}
    for msg, sender, chat in sorted(found, key=lambda f: (f[0].create_time_ms, f[0].message_id)):
        names.setdefault(msg.chat_id, chat)
        threads = chats.setdefault(msg.chat_id, {})
        threads.setdefault(msg.root_id or msg.message_id, []).append(Entry(msg, sender))
    earliest = min((m.create_time_ms for m, _, _ in found), default=0)
    if earliest:
        start = min(start, datetime.fromtimestamp(earliest / 1000, end.tzinfo))
    groups = tuple(
        ChatGroup(names[chat_id], tuple(tuple(t) for t in threads.values()))
        for chat_id, threads in chats.items()
    )
    return Roundup(rule, start, end, groups)
