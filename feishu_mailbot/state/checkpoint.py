"""WAL checkpoints for the daemon's database: copied by a thread, finished on the loop.

SQLite's automatic checkpoint runs inside whichever COMMIT takes the WAL past
1000 pages, with the event loop blocked for milliseconds (docs/design.md).
So the daemon's connection runs with `wal_autocheckpoint=0` and a thread copies
the WAL instead, in PASSIVE mode (it never blocks the writer), on a connection
of its own, every CHECKPOINT_EVERY commits. That is not enough on its own: the
WAL starts over from the top only at a BEGIN that finds every frame in it
copied, and under load a commit nearly always lands while the thread copies
(committing with `synchronous=FULL` keeps the writer busy about half the time),
so the WAL would grow without end with the thread alone. Every RESTART_EVERY
commits the loop therefore copies the rest itself, between two transactions: the
few commits since the thread's last pass, and the next BEGIN starts the WAL over. Only
a few, though: after a burst or on a slow disk the thread may be far behind, and
then the loop waits for it to catch up rather than copy megabytes itself.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 32  # commits between the thread's checkpoints
RESTART_EVERY = 128  # commits between the loop's: the WAL stays under ≈4 MB
# The loop copies only what the thread has not: at most this many commits' worth. A
# thread that fell behind (a burst, a slow disk) catches up first; the WAL waits.
RESTART_SLACK = CHECKPOINT_EVERY // 2
CATCH_UP_PASSES = 4  # PASSIVE passes per round while commits keep adding frames

# What `PRAGMA wal_checkpoint` returns: (busy, frames in the WAL, frames copied).
Result = tuple[int, int, int]


def passive_checkpoint(db: sqlite3.Connection) -> Result:
    """Copy the WAL into the database as far as readers allow, blocking nobody."""
    busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(busy), int(frames), int(copied)


class Checkpointer:
    def __init__(self, db_path: str, writer: sqlite3.Connection) -> None:
        self.path = db_path
        self._writer = writer
        self._wake = threading.Event()
        self._closing = False
        self._commits = 0
        self._restart_at = RESTART_EVERY
        self._caught_up_at = -RESTART_SLACK - 1  # commit count the thread last copied up to
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """On the loop, after each commit."""
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0:
            self._wake.set()

    @property
    def restart_due(self) -> bool:
        return (
            self._commits >= self._restart_at
            and self._commits - self._caught_up_at <= RESTART_SLACK
        )

    def restart(self) -> None:
        """On the loop, between transactions, when `restart_due`: a PASSIVE checkpoint on
        the writer's connection, so the next BEGIN starts the WAL over.
        """
        if not self.restart_due:  # asked twice before the first ran
            return
        try:
            busy, _, _ = passive_checkpoint(self._writer)
        except sqlite3.Error as e:
            self._failed(e)
            busy = 0
        if not busy:  # busy: the thread is copying right now; a later batch tries again
            self._restart_at = self._commits + RESTART_EVERY

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._closing:
                    return
                self._copy(db)
        finally:
            db.close()

    def _copy(self, db: sqlite3.Connection) -> None:
        try:
            for _ in range(CATCH_UP_PASSES):
                start = self._commits  # the loop's counter; a pass sees at least these
                busy, frames, copied = passive_checkpoint(db)
                if busy:
                    break
                if copied >= frames:
                    self._caught_up_at = start
                    break
        except sqlite3.Error as e:
            self._failed(e)
            return
        if self._failing:
            log.info("WAL checkpoints work again")
            self._failing = False

    def _failed(self, error: sqlite3.Error) -> None:
        # Commits and their durability do not depend on checkpoints; the WAL only grows.
        if not self._failing:
            log.warning(
                "cannot checkpoint the state database's WAL (it grows meanwhile): %s", error
            )
            self._failing = True
