"""Display names looked up from Feishu, kept across restarts."""

from __future__ import annotations

from feishu_mailbot.state.db import Tx


def cached(tx: Tx, kind: str, id_: str, max_age: float, now: float) -> str | None:
    row = tx.execute(
        "SELECT name, fetched_at FROM names WHERE kind = ? AND id = ?", (kind, id_)
    ).fetchone()
    if row is None or now - row[1] > max_age:
        return None
    return str(row[0])


def remember(tx: Tx, kind: str, id_: str, name: str, now: float) -> None:
    tx.execute(
        "INSERT INTO names (kind, id, name, fetched_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (kind, id) DO UPDATE SET name = excluded.name,"
        " fetched_at = excluded.fetched_at",
        (kind, id_, name, now),
    )
