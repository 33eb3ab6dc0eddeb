"""The state's tables: one schema history for both engines.

Written in SQLite's words; postgres.py turns the few type names that differ into
PostgreSQL's (`ddl`), so a table is declared once. Steps after version 8 must run on
both engines: plain ALTER/CREATE/UPDATE, with the types below.
"""

from __future__ import annotations

SCHEMA_VERSION = 12

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

# The daemons sharing the state (instances.py): each renews its row while it runs, and
# what it holds (outbox.owner, a lock) is free again once `expires_at` has passed.
_INSTANCES = """
CREATE TABLE instances (
    id         TEXT PRIMARY KEY,  -- host:pid
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    version    TEXT NOT NULL,
    started_at REAL NOT NULL,
    seen_at    REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE locks (
    name       TEXT PRIMARY KEY,  -- e.g. 'schedule': work only one instance may do
    holder     TEXT NOT NULL,     -- instances.id
    renewed_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
"""

# Spool files (spool.py) where every instance can read them: on PostgreSQL the instance
# that sends a large mail may not be the one that composed it. Empty on SQLite, whose
# one daemon reads its spool directory.
_SPOOL_CHUNKS = """
CREATE TABLE spool_chunks (
    name       TEXT NOT NULL,     -- the spool file's name, as outbox.spool holds it
    seq        INTEGER NOT NULL,  -- 0, 1, …: the file's parts of spool.CHUNK bytes
    data       BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (name, seq)
);
"""

# Mail that came in to the bot's mailbox (inbound.py): each once, by its Message-ID,
# with what became of it; and per mailbox the last UID taken. outbox.header_id is the
# left part of each mail's own Message-ID, which a reply's In-Reply-To names.
_INBOUND = """
CREATE TABLE inbound (
    message_id  TEXT PRIMARY KEY,  -- the incoming mail's, without <>
    received_at REAL NOT NULL,
    outcome     TEXT NOT NULL,     -- posted | refused | failed | report | unsubscribed
    detail      TEXT NOT NULL,     -- why, in the journal's words
    mail_id     TEXT               -- the mail of ours it answers
);
CREATE TABLE inbound_cursor (
    mailbox     TEXT PRIMARY KEY,  -- username@host/folder
    uidvalidity INTEGER NOT NULL,
    last_uid    INTEGER NOT NULL
);
CREATE INDEX outbox_header ON outbox (header_id);
"""

# Recipients a delivery report says a sent mail did not reach (bounces.py): once each.
_BOUNCES = """
CREATE TABLE bounces (
    mail_id     TEXT NOT NULL,
    recipient   TEXT NOT NULL,
    bounced_at  REAL NOT NULL,
    status      TEXT NOT NULL,  -- RFC 3463's 5.1.1, or ''
    diagnostic  TEXT NOT NULL,  -- the remote server's words
    PRIMARY KEY (mail_id, recipient)
);
CREATE INDEX bounces_at ON bounces (bounced_at);
"""

# Who left which rule by mail (subscriptions.py), until `subscriptions --restore`; and
# keys the state keeps (the one that makes List-Unsubscribe tokens), as hex.
_SUBSCRIPTIONS = """
CREATE TABLE unsubscribed (
    rule     TEXT NOT NULL,
    address  TEXT NOT NULL,  -- lower case
    left_at  REAL NOT NULL,
    PRIMARY KEY (rule, address)
);
CREATE TABLE secrets (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
"""

SCHEMA = (
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
    spool            TEXT,  -- instead of raw: the name of a spool file (spool.py)
    owner            TEXT,  -- the instance preparing or sending it (instances.py)
    header_id        TEXT   -- core/reply.mail_key(mail_id); NULL in mail from before 11
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
    + _INSTANCES
    + _SPOOL_CHUNKS
    + _INBOUND
    + _BOUNCES
    + _SUBSCRIPTIONS
)

# Step from version N to N+1, for databases made by an older release, on both engines.
MIGRATIONS = {
    # Several instances share the state: who holds a mail, who is alive, who schedules.
    8: "ALTER TABLE outbox ADD COLUMN owner TEXT;\n" + _INSTANCES,
    # A large mail's bytes where every instance can read them.
    9: _SPOOL_CHUNKS,
    # Replies by mail: our mail's Message-IDs, findable; what came in, and where.
    10: "ALTER TABLE outbox ADD COLUMN header_id TEXT;\n" + _INBOUND,
    # Delivery reports that came back to the bot's mailbox; unsubscribing by mail.
    11: _BOUNCES + _SUBSCRIPTIONS,
}

# The steps before PostgreSQL came (with version 8), for SQLite only.
SQLITE_MIGRATIONS = {
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
