"""The SQLite database itself: connection, schema, migrations, transactions.

WAL mode so the commit that precedes every ack is a single append;
`synchronous=FULL` because an acknowledged event is gone from Feishu for
good and must survive a power cut.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from urllib.parse import quote

from feishu_mailbot.state.owner import create_database

#: What every query function of this package is handed: the open transaction.
Tx = sqlite3.Connection
#: What a failing statement raises; callers outside the package catch this name.
DatabaseError = sqlite3.Error
#: The database cannot do it now (locked, busy, disk full, I/O): trying again later may
#: work. Any other error with a unit of work will repeat on every try.
Unavailable = sqlite3.OperationalError

SCHEMA_VERSION = 8
WAL_LIMIT = 4 * 1024 * 1024
VACUUM_AT_OPEN_MAX = 64 * 1024 * 1024  # a few seconds of VACUUM at most

# Events that fail the same way on every re-push, kept as Feishu sent them.
_QUARANTINE = """
CREATE TABLE quarantine (
    key         TEXT PRIMARY KEY,  -- the event_id, or sha256: of the payload if it has none
    received_at REAL NOT NULL,
    reason      TEXT NOT NULL,
    payload     BLOB NOT NULL,
    status      TEXT NOT NULL DEFAULT 'held'  -- lifecycle.QUARANTINE
);
"""

# The running daemon's last word about itself (heartbeat.py), for `status`.
_HEARTBEAT = """
CREATE TABLE heartbeat (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    pid       INTEGER NOT NULL,
    at        REAL NOT NULL,
    connected INTEGER NOT NULL,
    since     REAL,
    line      TEXT NOT NULL
);
"""

# The matches of batched rules (batches.py); mail_id is the digest that carried one.
_BATCH_ITEMS = """
CREATE TABLE batch_items (
    rule        TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    received_at REAL NOT NULL,
    mail_id     TEXT,
    PRIMARY KEY (rule, message_id)
);
CREATE INDEX batch_items_waiting ON batch_items (rule, received_at) WHERE mail_id IS NULL;
CREATE INDEX batch_items_message ON batch_items (message_id);
"""

_SCHEMA = (
    """
CREATE TABLE events (
    event_id    TEXT PRIMARY KEY,
    received_at REAL NOT NULL
);
CREATE TABLE messages (
    message_id  TEXT PRIMARY KEY,
    event_id    TEXT NOT NULL,
    chat_id     TEXT NOT NULL,
    sender      TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    body        TEXT NOT NULL,
    recalled    INTEGER NOT NULL DEFAULT 0,
    received_at REAL NOT NULL,
    deliveries  TEXT,  -- planned mail not yet in the outbox (JSON); see messages.ingest
    planned     INTEGER NOT NULL DEFAULT 0  -- how many mails `deliveries` holds
);
CREATE TABLE recalls (
    message_id  TEXT PRIMARY KEY,
    recalled_at REAL NOT NULL
);
CREATE TABLE outbox (
    mail_id          TEXT PRIMARY KEY,
    message_id       TEXT NOT NULL,
    kind             TEXT NOT NULL,
    recipients       TEXT NOT NULL,
    rules            TEXT NOT NULL,
    subject_template TEXT NOT NULL,
    confirm          INTEGER NOT NULL,
    notify_recall    INTEGER NOT NULL,
    status           TEXT NOT NULL,  -- lifecycle.OUTBOX
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    last_error       TEXT,
    subject          TEXT,
    raw              BLOB,  -- the composed mail; dropped once sent
    created_at       REAL NOT NULL,
    sent_at          REAL,
    spool            TEXT  -- instead of raw: the name of a spool file (spool.py)
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
CREATE INDEX outbox_message ON outbox (message_id);
CREATE INDEX messages_received ON messages (received_at);
CREATE INDEX messages_chat_time ON messages (chat_id, created_ms);
CREATE INDEX messages_planned ON messages (received_at, planned) WHERE planned > 0;
-- Side effects other than mail (reactions, replies, digest requests), queued in the
-- same transaction as the message that caused them and done by the action worker.
CREATE TABLE actions (
    id              INTEGER PRIMARY KEY,
    kind            TEXT NOT NULL,
    message_id      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',  -- lifecycle.ACTIONS
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT,
    created_at      REAL NOT NULL
);
CREATE INDEX actions_due ON actions (status, next_attempt_at);
-- One row per digest mail queued: what makes "a digest for a day is sent once" hold
-- across restarts, triggers and the schedule.
CREATE TABLE digests (
    mail_id    TEXT PRIMARY KEY,
    chat_id    TEXT NOT NULL,
    day        TEXT NOT NULL,
    kind       TEXT NOT NULL,
    recipients TEXT NOT NULL,
    queued_at  REAL NOT NULL
);
CREATE INDEX digests_day ON digests (chat_id, day);
CREATE TABLE digest_entries (
    mail_id    TEXT NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (mail_id, message_id)
);
CREATE TABLE names (
    kind       TEXT NOT NULL,
    id         TEXT NOT NULL,
    name       TEXT NOT NULL,
    fetched_at REAL NOT NULL,
    PRIMARY KEY (kind, id)
);
"""
    + _QUARANTINE
    + _HEARTBEAT
    + _BATCH_ITEMS
)

# Step from version N to N+1, for databases made by an older release.
_MIGRATIONS = {
    1: """
ALTER TABLE messages ADD COLUMN deliveries TEXT;
ALTER TABLE messages ADD COLUMN planned INTEGER NOT NULL DEFAULT 0;
CREATE INDEX messages_planned ON messages (received_at, planned) WHERE planned > 0;
""",
    # Nothing to alter: from 3 on, `messages.body` may hold model.py's JSON version 2,
    # which a release that only reads version 1 must refuse to open, not misread.
    2: "",
    3: _QUARANTINE,
    # Large mail moves to spool files; sent mail keeps its subject and metadata only.
    4: """
ALTER TABLE outbox ADD COLUMN spool TEXT;
UPDATE outbox SET raw = NULL WHERE status = 'sent';
""",
    5: _HEARTBEAT,
    6: _BATCH_ITEMS,
    # A recall that came while a mail was being sent is a state of its own (lifecycle.py),
    # no longer a flag beside `sending` that a failed attempt could overlook.
    # Forwards an older release put back in the queue after their message was recalled
    # (a failed attempt overwrote `cancelled`, or reset a flagged row) end here, cancelled.
    7: """
UPDATE outbox SET status = 'recalling' WHERE status = 'sending' AND recalled = 1;
UPDATE outbox SET status = 'cancelled', raw = NULL, spool = NULL
 WHERE kind = 'forward' AND status IN ('pending', 'failed')
 AND (recalled = 1 OR message_id IN (SELECT message_id FROM recalls)
      OR message_id IN (SELECT message_id FROM messages WHERE recalled = 1));
ALTER TABLE outbox DROP COLUMN recalled;
""",
}


class StateError(Exception):
    """The state database cannot be used; restarting will not help, an operator must act."""


def connect(path: str, *, autocheckpoint: bool) -> sqlite3.Connection:
    """Open (creating if need be) and migrate the database at `path`.

    A database root creates is the state directory's owner's (owner.py), and so
    are the -wal and -shm files SQLite makes beside it.
    """
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        create_database(Path(path))
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
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


def connect_readonly(path: str) -> sqlite3.Connection:
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
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
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
        steps = _SCHEMA
    else:
        steps = "".join(_MIGRATIONS[v] for v in range(version, SCHEMA_VERSION))
    db.executescript(f"BEGIN; {steps} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")


class Transaction:
    """BEGIN IMMEDIATE … COMMIT/ROLLBACK; inside a batch, a SAVEPOINT of its own.

    sqlite3's implicit transactions are too implicit. The savepoint lets one
    event's work fail and roll back without undoing the rest of its batch.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
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


def rollback(db: sqlite3.Connection) -> None:
    """Best effort: after a failed COMMIT the transaction may be gone already."""
    with contextlib.suppress(sqlite3.Error):
        if db.in_transaction:
            db.execute("ROLLBACK")
