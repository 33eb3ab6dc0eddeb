"""What the running daemon last said about itself, for `status` in another process."""

from __future__ import annotations

from feishu_mailbot.core.status import Beat
from feishu_mailbot.state.db import Tx

__all__ = ["Beat", "last", "record"]


def record(tx: Tx, beat: Beat) -> None:
    tx.execute(
        "INSERT INTO heartbeat (id, pid, at, connected, since, line) VALUES (1, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, at = excluded.at,"
        " connected = excluded.connected, since = excluded.since, line = excluded.line",
        (beat.pid, beat.at, int(beat.connected), beat.since, beat.line),
    )


def last(tx: Tx) -> Beat | None:
    row = tx.execute("SELECT pid, at, connected, since, line FROM heartbeat").fetchone()
    return None if row is None else Beat(row[0], row[1], bool(row[2]), row[3], row[4])
