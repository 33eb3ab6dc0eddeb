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
        "INSERT INTO batch_items (rule, message_id, received_at) VALUES (?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        [(rule, message_id, now) for rule in rules],
    )


def forget(tx: Tx, message_id: str) -> int:
    """A recalled message leaves the batches still waiting; how many it left."""
    return tx.execute(
        "DELETE FROM batch_items WHERE message_id = ? AND mail_id IS NULL", (message_id,)
    ).rowcount


def rules_waiting(tx: Tx) -> set[str]:
    """The rules that have matches waiting."""
    return {r[0] for r in tx.execute("SELECT DISTINCT rule FROM batch_items WHERE mail_id IS NULL")}


def abandon(tx: Tx, rule: str) -> int:
    """The matches waiting for a rule no longer configured: removed; how many."""
    return tx.execute(
        "DELETE FROM batch_items WHERE mail_id IS NULL AND rule = ?", (rule,)
    ).rowcount


def waiting(tx: Tx, rule: str, before: float, limit: int, after: float | None = None) -> list[str]:
    """Up to `limit` of the rule's matches in no digest yet, oldest first: those received
    before `before`, and those stamped after `after` (by a clock that was ahead)."""
    rows = tx.execute(
        "SELECT message_id FROM batch_items WHERE rule = ? AND mail_id IS NULL"
        " AND (received_at < ? OR received_at > ?) ORDER BY received_at, message_id LIMIT ?",
        (rule, before, after if after is not None else float("inf"), limit),
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


def fail(
    tx: Tx,
    *,
    rule: str,
    message_ids: Sequence[str],
    mail_id: str,
    recipients: Sequence[str],
    error: str,
    now: float,
) -> bool:
    """A digest that could not be composed, recorded failed with the matches it was to
    carry: it shows in `queue --failed` and `status`, and its matches stop being tried
    at every tick. False, with nothing written, as for `take`."""
    subject = f"batch digest of {rule}: not composed"
    placeholder = Prepared(subject)  # no bytes: `give_back` is how it is retried
    if not take(
        tx,
        rule=rule,
        message_ids=message_ids,
        mail_id=mail_id,
        recipients=recipients,
        prepared=placeholder,
        now=now,
    ):
        return False
    return outbox.mark_failed(tx, mail_id, error).done


def give_back(tx: Tx, row_ids: Sequence[int] | None) -> dict[int, int]:
    """The operator's retry of failed batch digests that were never composed: their
    matches wait again (the next tick composes them anew) and the failed rows go.
    Per row id given back, how many matches; None: every such failed digest."""
    rows = tx.execute(
        "SELECT rowid, mail_id FROM outbox WHERE kind = 'batch' AND status = 'failed'"
        " AND raw IS NULL AND spool IS NULL"
    ).fetchall()
    wanted = None if row_ids is None else set(row_ids)
    back = {}
    for row_id, mail_id in rows:
        if wanted is None or row_id in wanted:
            # A match recalled while the digest held it (forget left it) goes now.
            tx.execute(
                "DELETE FROM batch_items WHERE mail_id = ? AND message_id IN"
                " (SELECT message_id FROM recalls)",
                (mail_id,),
            )
            back[row_id] = tx.execute(
                "UPDATE batch_items SET mail_id = NULL WHERE mail_id = ?", (mail_id,)
            ).rowcount
            # Not a status change: a digest that never existed as mail is removed, and
            # its matches are composed anew (lifecycle.py has no state for "unmade").
            tx.execute("DELETE FROM outbox WHERE mail_id = ?", (mail_id,))
    return back


def carried(tx: Tx, mail_id: str) -> list[str]:
    """The messages a digest carries."""
    rows = tx.execute(
        "SELECT message_id FROM batch_items WHERE mail_id = ? ORDER BY received_at", (mail_id,)
    ).fetchall()
    return [r[0] for r in rows]
