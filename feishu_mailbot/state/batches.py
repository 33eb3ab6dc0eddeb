"""The matches of batched rules, waiting for their digest or carried by one.

A match is written with its message, in the commit the ack waits for, and
marked with the digest's mail id in the transaction that queues that digest:
so each match is in exactly one digest, whatever restarts, and a recall
removes a match that is still waiting.
"""

from __future__ import annotations

from collections.abc import Sequence

from feishu_mailbot.state import outbox
from feishu_mailbot.state.db import Tx
from feishu_mailbot.state.outbox import Prepared


def add(tx: Tx, rules: Sequence[str], message_id: str, now: float) -> None:
    tx.executemany(
        "INSERT OR IGNORE INTO batch_items (rule, message_id, received_at) VALUES (?, ?, ?)",
        [(rule, message_id, now) for rule in rules],
    )


def forget(tx: Tx, message_id: str) -> int:
    """A recalled message leaves the batches still waiting; how many it left."""
    return tx.execute(
        "DELETE FROM batch_items WHERE message_id = ? AND mail_id IS NULL", (message_id,)
    ).rowcount


def abandon(tx: Tx, rules: Sequence[str]) -> dict[str, int]:
    """Matches waiting for a rule no longer configured: removed, counted by rule."""
    marks = ",".join("?" * len(rules))
    rows = tx.execute(
        f"SELECT rule, COUNT(*) FROM batch_items WHERE mail_id IS NULL"
        f" AND rule NOT IN ({marks}) GROUP BY rule",
        tuple(rules),
    ).fetchall()
    tx.execute(
        f"DELETE FROM batch_items WHERE mail_id IS NULL AND rule NOT IN ({marks})", tuple(rules)
    )
    return {r[0]: int(r[1]) for r in rows}


def waiting(tx: Tx, rule: str, before: float) -> list[str]:
    """The rule's matches received before `before` and in no digest yet, oldest first."""
    rows = tx.execute(
        "SELECT message_id FROM batch_items WHERE rule = ? AND mail_id IS NULL"
        " AND received_at < ? ORDER BY received_at, message_id",
        (rule, before),
    ).fetchall()
    return [r[0] for r in rows]


def take(
    tx: Tx,
    *,
    rule: str,
    message_ids: Sequence[str],
    mail_id: str,
    recipients: Sequence[str],
    prepared: Prepared,
    now: float,
) -> bool:
    """Queue the digest and mark its matches, together; False, with nothing written, if
    the digest was queued already or a match has left (recalled) since it was read."""
    if tx.execute("SELECT 1 FROM outbox WHERE mail_id = ?", (mail_id,)).fetchone():
        return False
    marks = ",".join("?" * len(message_ids))
    still = tx.execute(
        f"SELECT COUNT(*) FROM batch_items WHERE rule = ? AND mail_id IS NULL"
        f" AND message_id IN ({marks})",
        (rule, *message_ids),
    ).fetchone()[0]
    if still != len(message_ids):
        return False
    tx.execute(
        f"UPDATE batch_items SET mail_id = ? WHERE rule = ? AND message_id IN ({marks})",
        (mail_id, rule, *message_ids),
    )
    outbox.queue(
        tx, mail_id=mail_id, kind="batch", recipients=recipients, prepared=prepared, now=now
    )
    return True


def carried(tx: Tx, mail_id: str) -> list[str]:
    """The messages a digest carries."""
    rows = tx.execute(
        "SELECT message_id FROM batch_items WHERE mail_id = ? ORDER BY received_at", (mail_id,)
    ).fetchall()
    return [r[0] for r in rows]
