"""A SQLite state copied into an empty PostgreSQL database (`feishu-mailbot migrate-state`).

Table by table, every row with its rowid, so queue ids and action ids stay what
they were; all of it in one PostgreSQL transaction, so an interrupted copy leaves
the target empty and running it again starts afresh. The instances and locks of
the old single daemon are not copied: whoever starts on the new database
registers anew.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from feishu_mailbot.state.db import Tx

#: Of the daemons sharing a state, not of what they did.
SKIPPED = ("instances", "locks")
BATCH = 1000  # rows an INSERT round trip


@dataclass(frozen=True)
class Count:
    table: str
    source: int
    target: int

    @property
    def equal(self) -> bool:
        return self.source == self.target


def tables(source: Tx) -> list[str]:
    """The SQLite state's tables, in the order they were made."""
    rows = source.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY rowid"
    ).fetchall()
    return [str(r[0]) for r in rows if r[0] not in SKIPPED]


def _columns(source: Tx, table: str) -> list[str]:
    return [str(r[1]) for r in source.execute(f"PRAGMA table_info({table})").fetchall()]


def _rows(source: Tx, table: str, columns: list[str]) -> Iterator[list[tuple[object, ...]]]:
    cursor = source.execute(f"SELECT rowid, {', '.join(columns)} FROM {table} ORDER BY rowid")
    while batch := cursor.fetchmany(BATCH):
        yield [tuple(r) for r in batch]


def counts(source: Tx, target: Tx, names: list[str]) -> list[Count]:
    def count(tx: Tx, table: str) -> int:
        return int(tx.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    return [Count(t, count(source, t), count(target, t)) for t in names]


def copy(source: Tx, target: Tx, names: list[str]) -> None:
    """Every row of `names` from the SQLite `source` into the PostgreSQL `target`, inside
    the target's open transaction."""
    for table in names:
        columns = _columns(source, table)
        marks = ", ".join("?" * (len(columns) + 1))
        insert = f"INSERT INTO {table} (rowid, {', '.join(columns)}) VALUES ({marks})"
        for batch in _rows(source, table, columns):
            target.executemany(insert, batch)
