"""The SQLite engine: the database file in state_dir, its pragmas and its migrations.

WAL mode so the commit that precedes every ack is a single append;
`synchronous=FULL` because an acknowledged event is gone from Feishu for
good and must survive a power cut.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from urllib.parse import quote

from feishu_mailbot.state.db import StateError
from feishu_mailbot.state.owner import create_database
from feishu_mailbot.state.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, SQLITE_MIGRATIONS


class Connection(sqlite3.Connection):
    """sqlite3's own connection (its C methods, no wrapper on the ack path), with what
    db.Tx asks of an engine besides."""

    skip_locked = ""  # one writer at a time: nothing to skip
    returns_old_rows = False


WAL_LIMIT = 4 * 1024 * 1024
VACUUM_AT_OPEN_MAX = 64 * 1024 * 1024  # a few seconds of VACUUM at most
# KiB of SQLite's page cache (its default is 2000): the kernel caches the file anyway, a
# page read from there costs a pread of microseconds, and the daemon's 50 MB budget
# has no 1.5 MB to spare (docs/design.md).
CACHE_KIB = 512


def connect(path: str, *, autocheckpoint: bool) -> Connection:
    """Open (creating if need be) and migrate the database at `path`.

    A database root creates is the state directory's owner's (owner.py), and so
    are the -wal and -shm files SQLite makes beside it.
    """
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        create_database(Path(path))
        db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, factory=Connection
        )
        # Before WAL writes the header of a new file: freed pages can then be given back
        # to the file system bit by bit (State.release) instead of by a whole VACUUM.
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
    except (OSError, sqlite3.Error) as e:
        raise StateError(
            f"{path}: cannot open the state database: {e} (check state_dir and that "
            "the feishu-mailbot user may write there)"
        ) from e
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    db.execute("PRAGMA busy_timeout=5000")
    if not autocheckpoint:
        db.execute("PRAGMA wal_autocheckpoint=0")
    # After a checkpoint that restarts it, the WAL file is cut back to this.
    db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
    _migrate(db, path)
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2 and (
        Path(path).stat().st_size < VACUUM_AT_OPEN_MAX
    ):
        # Made by a release before retention: one VACUUM makes it shrinkable. Not for a
        # big one: that would outlast the unit's start timeout, and be retried for ever;
        # its freed pages are reused instead, so it stops growing at its present size.
        db.execute("VACUUM")
    return db


def connect_readonly(path: str) -> Connection:
    """The database at `path` to read, creating and changing nothing in its directory
    (`send-report --dry-run`).

    A read-only connection to a WAL database still makes the -wal and -shm files when
    they are missing, and cannot remove them afterwards. They exist while the daemon
    runs: then it is opened read-only, as a reader beside the daemon. When they do
    not, nobody is writing and everything is in the database file itself, which is
    then opened `immutable` (no locks, no -shm, no -wal). A daemon started in
    between could make such a read fail ("malformed"); trying again reads it whole.
    """
    file = Path(path)
    if not file.exists():
        raise StateError(f"{path}: no state database yet (the daemon makes it when it first runs)")
    live = Path(path + "-wal").exists()
    uri = f"file:{quote(str(file.resolve()))}?mode=ro" + ("" if live else "&immutable=1")
    try:
        db = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, factory=Connection
        )
        version = db.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as e:
        raise StateError(f"{path}: cannot read the state database: {e}") from e
    if version != SCHEMA_VERSION:
        db.close()
        raise StateError(
            f"{path}: database schema {version}, this program reads {SCHEMA_VERSION}; "
            "start the daemon once (it upgrades the database), then try again"
        )
    db.execute("PRAGMA busy_timeout=5000")
    return db


def _migrate(db: sqlite3.Connection, path: str) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise StateError(
            f"{path}: database schema {version} is newer than this program "
            f"understands ({SCHEMA_VERSION}); upgrade feishu-mailbot (a downgrade cannot "
            "read it)"
        )
    if version == 0:
        steps = SCHEMA
    else:
        history = {**SQLITE_MIGRATIONS, **MIGRATIONS}
        steps = "".join(history[v] for v in range(version, SCHEMA_VERSION))
    db.executescript(f"BEGIN; {steps} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")


def backup(path: str, target: Path) -> int:
    """A consistent copy of the database at `path` in `target`, while the daemon goes
    on writing (SQLite's online backup, in one read transaction), checked whole and
    made a single file; its size in bytes. `target` is the old file or the new one,
    never half: the copy is made in a directory of its own beside it (0700, so that
    nobody else can put a link where SQLite opens the copy or its journal, this may
    run as root) and renamed over it. Never over the live database or its side files."""
    live = Path(path).resolve()
    if target.resolve() in {live, *(live.with_name(live.name + s) for s in _SIDE_FILES)}:
        raise StateError(f"{target}: that is the live state database (expected another file)")
    source = connect_readonly(path)
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError:
        source.close()
        raise
    try:
        partial = work / "copy.db"
        copy = sqlite3.connect(partial, isolation_level=None)
        try:
            source.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")  # one file, nothing beside it
            verdict = copy.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            copy.close()
        if verdict != "ok":
            raise StateError(f"{path}: the copy does not check out ({verdict}); nothing written")
        fd = os.open(partial, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o600)  # the state holds the queue's mail, and names and keys
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, target)
    finally:
        source.close()
        shutil.rmtree(work, ignore_errors=True)
    return target.stat().st_size


_SIDE_FILES = ("-wal", "-shm", "-journal")
