"""Composed mail too large for a database row: one file each, under state_dir/spool.

A 25 MB mail stored in its outbox row would be a 34 MB commit on the event
loop, which every ack waits for; as a file it is written by a worker thread and
the row only names it. A file is written under a temporary name, flushed to
disk and renamed before any row names it, so a named file is always whole.
The directory and its files belong to the state directory's owner even when
root's `send-report` makes them (owner.py).

Where several instances share a PostgreSQL state, each file is also stored in
the database (`SharedSpool`, table spool_chunks) before any row names it: the
instance that sends the mail may not be the one that composed it (that one
died). The bytes are kept, not composed again, because a digest cannot be
(its images were fetched for that one mail) and a forward's attachment may be
gone from Feishu by then; the relay is still fed from a local file, fetched
into this directory first by whichever instance sends it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import BinaryIO, TypeVar

from feishu_mailbot.state.db import Transaction, Tx
from feishu_mailbot.state.owner import create_file, make_dir

T = TypeVar("T")
SUFFIX = ".eml"
CHUNK = 1024 * 1024  # bytes of a file per spool_chunks row


class Spool:
    """Blocking file I/O: call it from a thread, never from the event loop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def write(self, mail_id: str, fill: Callable[[BinaryIO], None]) -> str:
        """The name of a new file holding what `fill` wrote.

        Unique per write, not per mail: two digests built at once for the same day
        (the schedule and a chat command) must not share, or remove, one file.
        """
        digest = hashlib.sha256(mail_id.encode("utf-8")).hexdigest()[:24]
        name = f"{digest}-{secrets.token_hex(8)}{SUFFIX}"
        self._create(name, fill)
        return name

    def _create(self, name: str, fill: Callable[[BinaryIO], None]) -> None:
        make_dir(self.directory, 0o700)
        # Unique: two threads may fetch one file from the database at once (SharedSpool).
        partial = self.directory / f".{name}.{secrets.token_hex(4)}.part"
        try:
            with open(create_file(partial, 0o600), "wb") as out:
                fill(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, self.directory / name)
            directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)  # the rename itself survives a power cut
            finally:
                os.close(directory)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise

    def writable(self) -> bool:
        """Whether this process may make and remove files here (or make the directory)."""
        target = self.directory if self.directory.exists() else self.directory.parent
        return os.access(target, os.R_OK | os.W_OK | os.X_OK)

    def path(self, name: str) -> Path:
        return self.directory / name

    def exists(self, name: str) -> bool:
        return (self.directory / name).exists()

    def read(self, name: str) -> bytes | None:
        """The whole file (for `queue show`), or None if it is gone."""
        try:
            return self.path(name).read_bytes() if self.exists(name) else None
        except FileNotFoundError:  # sent or dropped meanwhile
            return None

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / name).unlink()

    def sweep(self, keep: Collection[str], older_than: float) -> int:
        """Removes files no row names (mail cancelled, a crash mid-write) once they are
        `older_than` seconds old; how many."""
        removed = 0
        cutoff = time.time() - older_than
        # Not ours to read (root's, see owner.py): the daemon said so at start, and the
        # outbox must go on with the mail that needs no spool.
        with contextlib.suppress(FileNotFoundError, PermissionError):
            for entry in self.directory.iterdir():
                if entry.name in keep:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime < cutoff:
                        entry.unlink()
                        removed += 1
        return removed


class _Absent(Exception):
    """Not in the database either."""


class SharedSpool(Spool):
    """The spool of a state several instances share: each file in the database too.

    Blocking, like Spool, and on a database session of its own (`connect`, made at
    first use), which the threads calling it take turns on: the event loop's session
    must never wait for a multi-megabyte statement.
    """

    def __init__(self, directory: Path, connect: Callable[[], Tx]) -> None:
        super().__init__(directory)
        self._connect = connect
        self._db: Tx | None = None
        self._lock = threading.Lock()

    def _run(self, work: Callable[[Tx], T]) -> T:
        with self._lock:
            if self._db is None:
                self._db = self._connect()
            with Transaction(self._db):
                return work(self._db)

    def write(self, mail_id: str, fill: Callable[[BinaryIO], None]) -> str:
        name = super().write(mail_id, fill)
        try:
            self._run(lambda tx: store(tx, name, self.path(name), time.time()))
        except BaseException:
            super().remove(name)
            raise
        return name

    def exists(self, name: str) -> bool:
        """Whether the file is here, or was fetched here from the database now."""
        if super().exists(name):
            return True

        def fetch(out: BinaryIO) -> None:
            if not self._run(lambda tx: load(tx, name, out)):
                raise _Absent

        try:
            self._create(name, fetch)
        except _Absent:
            return False
        return True

    def remove(self, name: str) -> None:
        super().remove(name)
        self._run(lambda tx: tx.execute("DELETE FROM spool_chunks WHERE name = ?", (name,)))

    def sweep(self, keep: Collection[str], older_than: float) -> int:
        removed = super().sweep(keep, older_than)
        cutoff = time.time() - older_than

        def forget(tx: Tx) -> int:
            names = {
                str(r[0])
                for r in tx.execute(
                    "SELECT DISTINCT name FROM spool_chunks WHERE created_at < ?", (cutoff,)
                ).fetchall()
            }
            gone = sorted(names - set(keep))
            for name in gone:
                tx.execute("DELETE FROM spool_chunks WHERE name = ?", (name,))
            return len(gone)

        return removed + self._run(forget)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def store(tx: Tx, name: str, path: Path, now: float) -> None:
    """The file at `path` as spool `name`'s chunks (inside `tx`'s transaction)."""
    with open(path, "rb") as source:
        seq = 0
        while data := source.read(CHUNK):
            tx.execute(
                "INSERT INTO spool_chunks (name, seq, data, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (name, seq, data, now),
            )
            seq += 1


def load(tx: Tx, name: str, out: BinaryIO) -> bool:
    """Spool `name`'s chunks written to `out`, one at a time; False if there are none."""
    seq = 0
    while (
        row := tx.execute(
            "SELECT data FROM spool_chunks WHERE name = ? AND seq = ?", (name, seq)
        ).fetchone()
    ) is not None:
        out.write(bytes(row[0]))
        seq += 1
    return seq > 0
