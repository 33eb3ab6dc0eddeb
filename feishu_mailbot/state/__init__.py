"""The state database, and the only code in feishu-mailbot that touches it.

Everything is a query function over an open transaction, grouped by domain
(`messages`, `outbox`, `actions`, `digests`, `batches`, `names`), run through one
`State`: `await write(fn)` (group commit: see group_commit.py) and
`read(fn)`; `write_now(fn)` commits at once, for code with no event loop.
Large composed mail lives in `spool` files that outbox rows name.
Callers compose those functions and hold `Tx` only as an opaque handle; they
never see SQL. A second backend (PostgreSQL) would be another `State` and
another set of query modules with the same names and signatures, which this
package would pick when the database is opened; callers would not change.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from feishu_mailbot.state.checkpoint import Checkpointer
from feishu_mailbot.state.db import (
    DatabaseError,
    StateError,
    Transaction,
    Tx,
    Unavailable,
    connect,
    connect_readonly,
)
from feishu_mailbot.state.group_commit import GroupCommit
from feishu_mailbot.state.owner import reclaim
from feishu_mailbot.state.spool import Spool

__all__ = ["DB_NAME", "DatabaseError", "Spool", "State", "StateError", "Tx", "Unavailable"]

T = TypeVar("T")
DB_NAME = "feishu-mailbot.db"


class State:
    """One connection to the database at `path`.

    `daemon=True` is for the long-running process: SQLite's automatic WAL
    checkpoints are replaced by checkpoint.py's, off the event loop.
    `readonly=True` reads an existing database and makes or changes nothing in its
    directory (`send-report --dry-run`); writing raises DatabaseError.
    Whatever an operator's command run as root creates in the state directory is
    the directory owner's (owner.py), so the daemon can use it.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, daemon: bool = False, readonly: bool = False
    ) -> None:
        self.path = str(path)
        self.readonly = readonly
        if readonly:
            self._db = connect_readonly(self.path)
        else:
            self._db = connect(self.path, autocheckpoint=not daemon)
        self._checkpointer = Checkpointer(self.path) if daemon else None
        self.group = GroupCommit(self._db, self._checkpointer)
        # Mail too large for a row, beside the database (spool.py).
        self.spool = Spool(Path(self.path).parent / "spool")
        if not readonly:
            reclaim(self.spool.directory)  # root's, from a release before owner.py

    async def write(self, work: Callable[[Tx], T]) -> T:
        """`work` in the next group commit; returns once it is durable."""
        return await self.group.run(work)

    def write_now(self, work: Callable[[Tx], T]) -> T:
        """`work` in a transaction of its own, committed before this returns."""
        with Transaction(self._db):
            return work(self._db)

    def read(self, work: Callable[[Tx], T]) -> T:
        return work(self._db)

    def release(self, pages: int) -> int:
        """Gives up to `pages` free pages back to the file system; how many stay free.

        A transaction of its own, between group commits (which never leave one
        open): executescript, because a plain execute of this pragma frees one page.
        """
        if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            return 0  # an old, big file (db.connect): its free pages are reused instead
        self._db.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
        return int(self._db.execute("PRAGMA freelist_count").fetchone()[0])

    def size(self) -> int:
        """Bytes on disk: the database and its WAL."""
        return sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._db.close()
