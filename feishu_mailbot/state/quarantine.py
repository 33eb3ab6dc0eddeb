"""Events that fail the same way on every re-push, kept raw so they are not lost.

Acknowledged once they are here: Feishu would otherwise re-push them for as
long as it re-pushes, each time failing identically. An operator can list
them and, once a release handles them, retry them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from feishu_mailbot.state.db import Tx
from feishu_mailbot.state.lifecycle import QUARANTINE, move, move_all


def hold(tx: Tx, key: str, reason: str, payload: bytes, now: float) -> bool:
    """Keep the event; False if it was held already (a re-push of the same event)."""
    cur = tx.execute(
        "INSERT INTO quarantine (key, received_at, reason, payload) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (key, now, reason, payload),
    )
    if cur.rowcount == 1:
        return True
    # An operator's retry that failed again: held again, with today's reason.
    return move(tx, QUARANTINE, "held_again", key, "reason = ?", (reason,)).done


def held_count(tx: Tx) -> int:
    return int(tx.execute("SELECT COUNT(*) FROM quarantine WHERE status = 'held'").fetchone()[0])


@dataclass(frozen=True)
class Held:
    key: str
    received_at: float
    reason: str
    status: str  # held | retry (asked for by the operator) | released | dropped
    payload: bytes


def entries(tx: Tx, statuses: Sequence[str] = ("held", "retry")) -> list[Held]:
    marks = ",".join("?" * len(statuses))
    rows = tx.execute(
        "SELECT key, received_at, reason, status, payload FROM quarantine"
        f" WHERE status IN ({marks}) ORDER BY received_at",
        tuple(statuses),
    ).fetchall()
    return [Held(*r) for r in rows]


def retry(tx: Tx, keys: Sequence[str] | None) -> int:
    """Asks the running daemon to take these events again (None: every held one)."""
    if keys is None:
        return len(move_all(tx, QUARANTINE, "retry", "1 = 1"))
    return sum(move(tx, QUARANTINE, "retry", k).done for k in dict.fromkeys(keys))


def drop(tx: Tx, keys: Sequence[str]) -> int:
    dropped = (move(tx, QUARANTINE, "drop", k, "payload = ?", (b"",)) for k in dict.fromkeys(keys))
    return sum(m.done for m in dropped)


def settle(tx: Tx, key: str) -> bool:
    """After the daemon took a retried event: released, unless it was held again."""
    return move(tx, QUARANTINE, "release", key).done
