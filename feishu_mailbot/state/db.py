"""What every engine's connection offers the query functions, and what it raises.

The query modules are written once, in SQLite's dialect with `?` parameters;
an engine's connection takes that as it is (sqlite3) or translates it
(postgres.py). They are handed a `Tx` and use nothing but `execute`,
`executemany` and the cursor's rows and `rowcount`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchmany(self, size: int = ..., /) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Tx(Protocol):
    """The open connection (in a transaction, for a write) a query function is given."""

    #: " FOR UPDATE SKIP LOCKED" where the engine has row locks, else "": ends the
    #: subquery that picks rows to claim, so claimers do not queue up behind each other.
    skip_locked: str
    #: Whether `UPDATE … FROM … RETURNING` can name a row as it was before the update
    #: (PostgreSQL; SQLite's RETURNING sees only the new row): a move is then one statement.
    returns_old_rows: bool

    @property
    def in_transaction(self) -> bool: ...
    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...
    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...
    def close(self) -> None: ...


class StateError(Exception):
    """The state database cannot be used; restarting will not help, an operator must act."""


class LoginRefused(StateError):
    """PostgreSQL refused the role's login: the URL, the password or pg_hba.conf."""


class MissingDriver(StateError):
    """`database:` names PostgreSQL, and this host lacks its driver."""


class PostgresError(Exception):
    """A PostgreSQL statement failed (postgres.py's translation of the driver's error)."""


class PostgresUnavailable(PostgresError):
    """The server cannot be reached, or asked for the work to be tried again."""


#: What a failing statement raises; callers outside the package catch this name.
DatabaseError = (sqlite3.Error, PostgresError)
#: The database cannot do it now (locked, busy, disk full, I/O, server unreachable):
#: trying again later may work. Any other error with a unit of work will repeat on every
#: try.
Unavailable = (sqlite3.OperationalError, PostgresUnavailable)


class Transaction:
    """BEGIN IMMEDIATE … COMMIT/ROLLBACK; inside a batch, a SAVEPOINT of its own.

    sqlite3's implicit transactions are too implicit. The savepoint lets one
    event's work fail and roll back without undoing the rest of its batch.
    """

    def __init__(self, db: Tx) -> None:
        self._db = db
        self._nested = False

    def __enter__(self) -> None:
        self._nested = self._db.in_transaction
        self._db.execute("SAVEPOINT work" if self._nested else "BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._nested:
            self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        elif exc_type is None:
            self._db.execute("RELEASE work")
        else:
            self._db.execute("ROLLBACK TO work")
            self._db.execute("RELEASE work")


def rollback(db: Tx) -> None:
    """Best effort: after a failed COMMIT the transaction may be gone already."""
    with contextlib.suppress(*DatabaseError):
        if db.in_transaction:
            db.execute("ROLLBACK")


IN_LIST = 500  # values in one `IN (?, …)`: under every engine's limit of parameters


def chunks(values: Sequence[str]) -> Iterator[tuple[tuple[str, ...], str]]:
    """`values` in slices for `… IN ({marks})`: each slice, and its `?, ?, …`."""
    for i in range(0, len(values), IN_LIST):
        part = tuple(values[i : i + IN_LIST])
        yield part, ",".join("?" * len(part))
