"""Composed mail too large for a database row: one file each, under state_dir/spool.

A 25 MB mail stored in its outbox row would be a 34 MB commit on the event
loop, which every ack waits for; as a file it is written by a worker thread and
the row only names it. A file is written under a temporary name, flushed to
disk and renamed before any row names it, so a named file is always whole.
The directory and its files belong to the state directory's owner even when
root's `send-report` makes them (owner.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import BinaryIO

from feishu_mailbot.state.owner import create_file, make_dir

SUFFIX = ".eml"


class Spool:
    """Blocking file I/O: call it from a thread, never from the event loop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def write(self, mail_id: str, fill: Callable[[BinaryIO], None]) -> str:
        """The name of a new file holding what `fill` wrote.

        Unique per write, not per mail: two digests built at once for the same day
        (the schedule and a chat command) must not share, or remove, one file.
        """
        make_dir(self.directory, 0o700)
        digest = hashlib.sha256(mail_id.encode("utf-8")).hexdigest()[:24]
        name = f"{digest}-{secrets.token_hex(8)}{SUFFIX}"
        partial = self.directory / f".{name}.part"
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
        return name

    def writable(self) -> bool:
        """Whether this process may make and remove files here (or make the directory)."""
        target = self.directory if self.directory.exists() else self.directory.parent
        return os.access(target, os.R_OK | os.W_OK | os.X_OK)

    def path(self, name: str) -> Path:
        return self.directory / name

    def exists(self, name: str) -> bool:
        return (self.directory / name).exists()

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
