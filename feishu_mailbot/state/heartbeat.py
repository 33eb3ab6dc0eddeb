"""What the running daemon last said about itself, for `status` in another process."""

from __future__ import annotations

from dataclasses import dataclass

from feishu_mailbot.state.db import Tx


@dataclass(frozen=True)
class Beat:
    pid: int
    at: float  # wall clock of the last record
    connected: bool
    since: float | None  # wall clock: connected (or trying to) since
    line: str  # the STATUS= line systemd shows


def record(tx: Tx, beat: Beat) -> None:
    tx.execute(
        "INSERT OR REPLACE INTO heartbeat (id, pid, at, connected, since, line)"
        " VALUES (1, ?, ?, ?, ?, ?)",
        (beat.pid, beat.at, int(beat.connected), beat.since, beat.line),
    )


def last(tx: Tx) -> Beat | None:
    row = tx.execute("SELECT pid, at, connected, since, line FROM heartbeat").fetchone()
    return None if row is None else Beat(row[0], row[1], bool(row[2]), row[3], row[4])
