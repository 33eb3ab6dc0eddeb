"""Mail that came in to the bot's mailbox: the mail of ours it answers, and what became
of it, once per mail; and per mailbox how far the bot has read.

A mail is taken once by its own Message-ID, whatever its UID: the same mail seen
again (after a reconnect, a restart, a mailbox recreated with a new UIDVALIDITY,
or moved back by a person) finds its row and is left alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from feishu_mailbot.core.reply import Answered
from feishu_mailbot.core.status import INBOUND_OUTCOMES
from feishu_mailbot.state.db import Tx

# What became of a mail: posted into a thread, refused (why is in `detail`), failed
# (Feishu refused it, or it could not be read), a delivery report read, or an
# unsubscribe request taken (the rules in `detail`).
POSTED, REFUSED, FAILED, REPORT, UNSUBSCRIBED = INBOUND_OUTCOMES


@dataclass(frozen=True)
class Cursor:
    uidvalidity: int
    last_uid: int


_OURS = "SELECT header_id, mail_id, message_id, recipients, kind FROM outbox"


def _ours(row: Sequence[Any]) -> tuple[Answered, str]:
    return Answered(str(row[1]), str(row[2]), tuple(json.loads(row[3]))), str(row[4])


def answered(tx: Tx, keys: Sequence[str]) -> tuple[Answered, str] | None:
    """Of the mails `keys` name (core.reply.named_keys, nearest first), the nearest
    that is ours: it, and its kind (forward, recall, digest…)."""
    if not keys:
        return None
    marks = ",".join("?" * len(keys))
    rows = {r[0]: r for r in tx.execute(f"{_OURS} WHERE header_id IN ({marks})", tuple(keys))}
    for key in keys:
        if key in rows:
            return _ours(rows[key])
    return None


def tokened(tx: Tx, start: str) -> tuple[str, Answered, str] | None:
    """The mail whose header_id begins with `start` (a core.reply.token's first part): its
    header_id, to check the token's HMAC against, it, and its kind. A range on the
    index, where a LIKE would read the table."""
    row = tx.execute(
        f"{_OURS} WHERE header_id >= ? AND header_id <= ? LIMIT 1", (start, start + "g")
    ).fetchone()
    return None if row is None else (str(row[0]), *_ours(row))


def taken(tx: Tx, message_id: str) -> bool:
    """Whether this mail was taken before (posted, refused or failed for good)."""
    row = tx.execute("SELECT 1 FROM inbound WHERE message_id = ?", (message_id,)).fetchone()
    return row is not None


def record(
    tx: Tx, message_id: str, now: float, outcome: str, detail: str, mail_id: str | None
) -> None:
    tx.execute(
        "INSERT INTO inbound (message_id, received_at, outcome, detail, mail_id)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (message_id, now, outcome, detail, mail_id),
    )


def cursor(tx: Tx, mailbox: str) -> Cursor | None:
    row = tx.execute(
        "SELECT uidvalidity, last_uid FROM inbound_cursor WHERE mailbox = ?", (mailbox,)
    ).fetchone()
    return None if row is None else Cursor(int(row[0]), int(row[1]))


def advance(tx: Tx, mailbox: str, uidvalidity: int, uid: int) -> None:
    """Everything up to `uid` in this mailbox (as it is now) has been taken."""
    tx.execute(
        "INSERT INTO inbound_cursor (mailbox, uidvalidity, last_uid) VALUES (?, ?, ?)"
        " ON CONFLICT (mailbox) DO UPDATE SET uidvalidity = excluded.uidvalidity,"
        " last_uid = excluded.last_uid",
        (mailbox, uidvalidity, uid),
    )


def counts(tx: Tx) -> dict[str, int]:
    """How many mails came in, by what became of them."""
    return {
        str(outcome): int(n)
        for outcome, n in tx.execute("SELECT outcome, COUNT(*) FROM inbound GROUP BY 1")
    }
