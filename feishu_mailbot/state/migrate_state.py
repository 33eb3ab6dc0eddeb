"""A SQLite state copied into an empty PostgreSQL database (`feishu-mailbot migrate-state`).

Table by table, every row with its rowid, so queue ids and action ids stay what
they were; all of it in one PostgreSQL transaction, so an interrupted copy leaves
the target empty and running it again starts afresh. The instances and locks of
the old single daemon are not copied: whoever starts on the new database
registers anew. The large mails' spool files go into spool_chunks (spool.py),
where every instance can read them; the SQLite state's own spool_chunks is
always empty.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from feishu_mailbot.state import spool as spooling
from feishu_mailbot.state.db import Tx
from feishu_mailbot.state.spool import Spool

#: Of the daemons sharing a state, not of what they did; and the spool, copied from files.
SKIPPED = ("instances", "locks", "spool_chunks")
SPOOL = "spool files"  # the line of the counts for them
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


def counts(source: Tx, target: Tx, names: list[str], spool: Spool) -> list[Count]:
    def count(tx: Tx, table: str) -> int:
        return int(tx.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    files = len(_spooled(source, spool))
    stored = int(target.execute("SELECT count(DISTINCT name) FROM spool_chunks").fetchone()[0])
    return [
        *(Count(t, count(source, t), count(target, t)) for t in names),
        Count(SPOOL, files, stored),
    ]


def _spooled(source: Tx, spool: Spool) -> list[str]:
    """The spool files the outbox names that are there to copy."""
    rows = source.execute("SELECT DISTINCT spool FROM outbox WHERE spool IS NOT NULL").fetchall()
    return [str(r[0]) for r in rows if spool.exists(str(r[0]))]


def copy(source: Tx, target: Tx, names: list[str], spool: Spool) -> None:
    """Every row of `names` from the SQLite `source` into the PostgreSQL `target`, and
    the files of `spool` the outbox names, inside the target's open transaction."""
    for table in names:
        columns = _columns(source, table)
        marks = ", ".join("?" * (len(columns) + 1))
        insert = f"INSERT INTO {table} (rowid, {', '.join(columns)}) VALUES ({marks})"
        for batch in _rows(source, table, columns):
            target.executemany(insert, batch)
    now = time.time()
    for name in _spooled(source, spool):
        spooling.store(target, name, spool.path(name), now)
