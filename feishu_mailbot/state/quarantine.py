"""Events that fail the same way on every re-push, kept raw so they are not lost.

Acknowledged once they are here: Feishu would otherwise re-push them for as
long as it re-pushes, each time failing identically. An operator can list
them and, once a release handles them, retry them.
"""

from __future__ import annotations

from feishu_mailbot.state.db import Tx


def hold(tx: Tx, key: str, reason: str, payload: bytes, now: float) -> bool:
    """Keep the event; False if it was held already (a re-push of the same event)."""
    cur = tx.execute(
        "INSERT OR IGNORE INTO quarantine (key, received_at, reason, payload) VALUES (?, ?, ?, ?)",
        (key, now, reason, payload),
    )
    return cur.rowcount == 1


def held_count(tx: Tx) -> int:
    return int(tx.execute("SELECT COUNT(*) FROM quarantine WHERE status = 'held'").fetchone()[0])
