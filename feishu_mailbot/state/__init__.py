"""The state database, and the only code in feishu-mailbot that touches it.

Everything is a query function over an open transaction, grouped by domain
(`messages`, `outbox`, `actions`, `digests`, `batches`, `names`), run through one
`State`: `await write(fn)` (group commit: see group_commit.py) and
`read(fn)`; `write_now(fn)` commits at once, for code with no event loop.
Large composed mail lives in `spool` files that outbox rows name.
Callers compose those functions and hold `Tx` only as an opaque handle; they
never see SQL. The engine is SQLite in state_dir (sqlite.py), or PostgreSQL when a
URL is given (postgres.py, shared by several instances); the query modules are
the same for both (db.py says how).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from feishu_mailbot.state import sqlite
from feishu_mailbot.state.checkpoint import Checkpointer
from feishu_mailbot.state.db import (
    DatabaseError,
    LoginRefused,
    MissingDriver,
    PostgresUnavailable,
    StateError,
    Transaction,
    Tx,
    Unavailable,
)
from feishu_mailbot.state.group_commit import GroupCommit
from feishu_mailbot.state.instances import instance_id
from feishu_mailbot.state.owner import reclaim
from feishu_mailbot.state.spool import SharedSpool, Spool

__all__ = [
    "DB_NAME",
    "DatabaseError",
    "Location",
    "LoginRefused",
    "MissingDriver",
    "PostgresUnavailable",
    "Spool",
    "State",
    "StateError",
    "Tx",
    "Unavailable",
]

T = TypeVar("T")
DB_NAME = "feishu-mailbot.db"


@dataclass(frozen=True)
class Location:
    """Where the state is: the SQLite file in `state_dir`, or the PostgreSQL database
    at `url` (the spool stays in `state_dir`)."""

    state_dir: Path
    url: str | None = None
    password: str | None = None

    @property
    def path(self) -> Path:
        return self.state_dir / DB_NAME

    def __str__(self) -> str:
        return str(self.path) if self.url is None else self.url

    def open(self, *, daemon: bool = False, readonly: bool = False) -> State:
        return State(
            self.path, daemon=daemon, readonly=readonly, url=self.url, password=self.password
        )


class State:
    """One connection to the database: the SQLite file at `path`, or the PostgreSQL
    database at `url` (then `path` only places the spool).

    `daemon=True` is for the long-running process: SQLite's automatic WAL
    checkpoints are replaced by checkpoint.py's, off the event loop.
    `readonly=True` reads an existing database and makes or changes nothing in its
    directory (`send-report --dry-run`); writing raises DatabaseError.
    Whatever an operator's command run as root creates in the state directory is
    the directory owner's (owner.py), so the daemon can use it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        daemon: bool = False,
        readonly: bool = False,
        url: str | None = None,
        password: str | None = None,
    ) -> None:
        self.path = str(path)
        self.readonly = readonly
        self.url = url
        self._password = password
        self._announcing: set[str] = set()  # topics to announce in the next group commit
        #: This process among the instances sharing the state (instances.py).
        self.instance = instance_id(socket.gethostname(), os.getpid())
        self._db: Tx
        self._checkpointer: Checkpointer | None = None
        if url is not None:
            from feishu_mailbot.state import postgres  # the driver only when configured

            self._db = postgres.connect(url, password, readonly=readonly)
            if not readonly:  # the spool's home, as it is the SQLite file's
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        elif readonly:
            self._db = sqlite.connect_readonly(self.path)
        else:
            db = sqlite.connect(self.path, autocheckpoint=not daemon)
            self._db = db
            self._checkpointer = Checkpointer(self.path, db) if daemon else None
        self.group = GroupCommit(self._db, self._checkpointer)
        # Mail too large for a row, beside the database (spool.py), and in it where
        # other instances may send it.
        spool = Path(self.path).parent / "spool"
        self.spool = Spool(spool) if url is None else SharedSpool(spool, self._spool_session)
        if not readonly:
            reclaim(self.spool.directory)  # root's, from a release before owner.py

    def _spool_session(self) -> Tx:
        from feishu_mailbot.state import postgres

        assert self.url is not None
        return postgres.Connection(self.url, self._password, readonly=self.readonly)

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
        if self.url is not None:
            return 0  # PostgreSQL's autovacuum keeps the tables' free space in use
        if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            return 0  # an old, big file (db.connect): its free pages are reused instead
        assert isinstance(self._db, sqlite3.Connection)
        self._db.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
        return int(self._db.execute("PRAGMA freelist_count").fetchone()[0])

    def announce(self, topic: str) -> None:
        """Other instances' `topic` workers may look now (PostgreSQL; SQLite has no others).
        Best effort: they poll anyway. On the loop, a NOTIFY in the next group commit,
        once per topic, heard when it commits: it rides with the statements of that batch
        and costs no round trip of its own. Without a loop (an operator's command), at once."""
        if self.url is None or topic in self._announcing:
            return
        from feishu_mailbot.state import postgres

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            with contextlib.suppress(*DatabaseError):
                postgres.announce(self._db, topic, self.instance)
            return
        self._announcing.add(topic)

        def notify(tx: Tx) -> None:
            self._announcing.discard(topic)
            postgres.announce(tx, topic, self.instance)

        self.group.soon(notify)

    def listener(
        self, wakers: Mapping[str, Callable[[], None]]
    ) -> Coroutine[Any, Any, None] | None:
        """What calls `wakers[topic]` when another instance announces work on `topic`;
        None where there is no other instance (SQLite)."""
        if self.url is None:
            return None
        from feishu_mailbot.state import postgres

        return postgres.listen(self.url, self._password, self.instance, wakers)

    @property
    def shared(self) -> bool:
        """Whether other instances may use this state too (PostgreSQL): then mail is
        claimed before it is prepared. A SQLite file has one daemon."""
        return self.url is not None

    @property
    def claimant(self) -> str | None:
        """Who takes due mail: this instance where others share the state, else None
        (whatever is due is this daemon's)."""
        return self.instance if self.shared else None

    @property
    def engine(self) -> str:
        return "sqlite" if self.url is None else "postgresql"

    def size(self) -> int:
        """Bytes on disk: the database and its WAL (SQLite), or the database (PostgreSQL)."""
        if self.url is not None:
            return int(
                self._db.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            )
        return sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))

    def close(self) -> None:
        if isinstance(self.spool, SharedSpool):
            self.spool.close()
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._db.close()
