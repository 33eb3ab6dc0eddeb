"""What a year leaves behind: old rows deleted in small batches.

`prune` is one batch: the caller repeats it while it returns `limit` rows, so
that no commit (which acks wait for) carries more than a few hundred
deletions. Nothing still needed goes: a message stays while mail of it is
planned, queued or failed (a retry composes from it) or while it waits in a
batch, and failed mail stays
until the operator drops it or the audit period ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from feishu_mailbot.state.db import Tx
from feishu_mailbot.state.lifecycle import UNFINISHED


@dataclass(frozen=True)
class Cutoffs:
    """Wall-clock times: what was received (or finished) before one of them goes."""

    events: float  # dedup keys
    messages: float  # messages and recalls
    mail: float  # finished mail's metadata, digest records, done actions, quarantine, names


@dataclass(frozen=True)
class Pruned:
    rows: int
    spool: tuple[str, ...]  # files of the mail deleted, for the caller to remove


# A message stays while mail of it may still be sent, or retried once it failed.
_KEPT = ", ".join(f"'{s}'" for s in (*UNFINISHED, "failed"))

# (table, the cutoff it compares with, the condition on its rows, `?` for the cutoff)
_RULES = (
    ("events", "events", "received_at < ?"),
    ("recalls", "messages", "recalled_at < ?"),
    (
        "messages",
        "messages",
        "received_at < ? AND planned = 0 AND NOT EXISTS (SELECT 1 FROM outbox o"
        " WHERE o.message_id = messages.message_id AND o.status IN"
        f" ({_KEPT})) AND NOT EXISTS (SELECT 1 FROM batch_items b"
        " WHERE b.message_id = messages.message_id AND b.mail_id IS NULL)",
    ),
    # A waiting match stays until its digest carries it (or its rule is removed).
    ("batch_items", "messages", "mail_id IS NOT NULL AND received_at < ?"),
    ("outbox", "mail", "status IN ('sent', 'cancelled', 'failed', 'dropped') AND created_at < ?"),
    ("digest_entries", "mail", "mail_id IN (SELECT mail_id FROM digests WHERE queued_at < ?)"),
    ("digests", "mail", "queued_at < ?"),
    ("actions", "mail", "status != 'pending' AND created_at < ?"),
    ("quarantine", "mail", "received_at < ?"),
    ("names", "mail", "fetched_at < ?"),
    ("inbound", "mail", "received_at < ?"),
    ("bounces", "mail", "bounced_at < ?"),
)


def prune(tx: Tx, cutoffs: Cutoffs, limit: int) -> Pruned:
    """Deletes up to `limit` rows that the cutoffs retire, table by table."""
    removed, files = 0, []
    for table, cutoff, condition in _RULES:
        left = limit - removed
        if left <= 0:
            break
        spool = "spool" if table == "outbox" else "NULL"
        rows = tx.execute(
            f"SELECT rowid, {spool} FROM {table} WHERE {condition} LIMIT ?",
            (getattr(cutoffs, cutoff), left),
        ).fetchall()
        tx.executemany(f"DELETE FROM {table} WHERE rowid = ?", [(r[0],) for r in rows])
        removed += len(rows)
        files += [r[1] for r in rows if r[1] is not None]
    return Pruned(removed, tuple(files))


def oldest_message_at(tx: Tx) -> float | None:
    row = tx.execute("SELECT MIN(received_at) FROM messages").fetchone()
    return None if row[0] is None else float(row[0])
