"""Which digests were queued for which report day, and which reports each one held."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from feishu_mailbot.state import outbox
from feishu_mailbot.state.db import Tx
from feishu_mailbot.state.outbox import Prepared


@dataclass(frozen=True)
class DigestRecord:
    mail_id: str
    kind: str  # "digest" | "supplement" | "immediate"
    recipients: tuple[str, ...]
    queued_at: float


def for_day(tx: Tx, chat_id: str, day: str) -> list[DigestRecord]:
    rows = tx.execute(
        "SELECT mail_id, kind, recipients, queued_at FROM digests"
        " WHERE chat_id = ? AND day = ? ORDER BY queued_at",
        (chat_id, day),
    ).fetchall()
    return [DigestRecord(r[0], r[1], tuple(json.loads(r[2])), r[3]) for r in rows]


def last_day(tx: Tx, chat_id: str) -> str | None:
    row = tx.execute(
        "SELECT MAX(day) FROM digests WHERE chat_id = ? AND kind = 'digest'", (chat_id,)
    ).fetchone()
    return None if row[0] is None else str(row[0])


def included(tx: Tx, chat_id: str, day: str) -> set[str]:
    rows = tx.execute(
        "SELECT e.message_id FROM digest_entries e JOIN digests d USING (mail_id)"
        " WHERE d.chat_id = ? AND d.day = ?",
        (chat_id, day),
    ).fetchall()
    return {r[0] for r in rows}


def queue(
    tx: Tx,
    *,
    mail_id: str,
    chat_id: str,
    day: str,
    kind: str,
    recipients: Sequence[str],
    prepared: Prepared,
    message_ids: Sequence[str],
    now: float,
) -> bool:
    """Record the digest and queue its mail together; False if already queued."""
    cur = tx.execute(
        "INSERT INTO digests (mail_id, chat_id, day, kind, recipients, queued_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (mail_id, chat_id, day, kind, json.dumps(list(recipients)), now),
    )
    if cur.rowcount == 0:
        return False
    tx.executemany(
        "INSERT INTO digest_entries (mail_id, message_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
        [(mail_id, m) for m in message_ids],
    )
    outbox.queue(tx, mail_id=mail_id, kind=kind, recipients=recipients, prepared=prepared, now=now)
    return True


def latest(tx: Tx) -> list[tuple[str, str, str, float]]:
    """Per chat, its last digest (or supplement): (chat_id, day, kind, queued_at)."""
    rows = tx.execute(
        "SELECT chat_id, day, kind, queued_at FROM digests d WHERE queued_at ="
        " (SELECT MAX(queued_at) FROM digests e WHERE e.chat_id = d.chat_id)"
        " ORDER BY chat_id, mail_id"
    ).fetchall()
    last = {r[0]: (r[0], r[1], r[2], float(r[3])) for r in reversed(rows)}  # one per chat
    return [last[chat] for chat in sorted(last)]
