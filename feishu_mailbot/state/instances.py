"""The daemons sharing one state, and the work only one of them may do at a time.

Each instance renews its row every few seconds (`renew`); what it holds (mail it
prepares or sends, outbox.owner; a lock) is its own while `expires_at` lies ahead,
and anyone's once it has passed: a killed instance's mail and locks move to the
others within LEASE seconds. That is also how long a mail it was sending when it
died may wait before another instance sends it again (at least once).

An instance is `host:pid`. A dead predecessor on the same host (kill -9, then
systemd's restart) is let go at once (`forget`), without waiting for its lease.
A lock is a row (synapse's LockStore shape: holder, renewed, expiry), not a
session advisory lock, so it works through PgBouncer and on SQLite alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from feishu_mailbot.state.db import Tx

LEASE = 30.0  # seconds an instance's claims outlive its last renewal (database.failover_after)
SCHEDULE = "schedule"  # the lock of the digests, batch boundaries and housekeeping


@dataclass(frozen=True)
class Instance:
    id: str
    host: str
    pid: int
    version: str
    started_at: float
    seen_at: float
    expires_at: float


def instance_id(host: str, pid: int) -> str:
    return f"{host}:{pid}"


def renew(tx: Tx, me: Instance, now: float, lease: float = LEASE) -> None:
    """This instance is alive for `lease` more seconds."""
    tx.execute(
        "INSERT INTO instances (id, host, pid, version, started_at, seen_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE"
        " SET seen_at = excluded.seen_at, expires_at = excluded.expires_at",
        (me.id, me.host, me.pid, me.version, me.started_at, now, now + lease),
    )


def retire(tx: Tx, me: str) -> None:
    """A clean stop: what it held is free at once, not only after LEASE."""
    tx.execute("UPDATE outbox SET owner = NULL WHERE owner = ? AND status = 'pending'", (me,))
    tx.execute("DELETE FROM locks WHERE holder = ?", (me,))
    tx.execute("DELETE FROM instances WHERE id = ?", (me,))


def forget(tx: Tx, ids: list[str]) -> None:
    """Instances known to be dead (a process gone from this host): their leases end now."""
    tx.executemany("UPDATE instances SET expires_at = 0 WHERE id = ?", [(i,) for i in ids])
    tx.executemany("DELETE FROM locks WHERE holder = ?", [(i,) for i in ids])


def listed(tx: Tx) -> list[Instance]:
    rows = tx.execute(
        "SELECT id, host, pid, version, started_at, seen_at, expires_at FROM instances"
        " ORDER BY started_at"
    ).fetchall()
    return [Instance(r[0], r[1], int(r[2]), r[3], r[4], r[5], r[6]) for r in rows]


def prune(tx: Tx, now: float) -> int:
    """Instances gone for a day are forgotten (their claims ended long ago)."""
    return tx.execute("DELETE FROM instances WHERE expires_at < ?", (now - 86400,)).rowcount


#: The SQL condition "`owner` is free for `me`": nobody's, mine, or a dead instance's.
#: Its parameters: (me, now).
FREE = (
    "(owner IS NULL OR owner = ? OR owner NOT IN (SELECT id FROM instances WHERE expires_at >= ?))"
)
#: "`owner` is nobody, or another instance that is dead" (what `me` may take over);
#: its parameters: (me, now). Never `me`: an attempt of mine may be under way.
ORPHANED = (
    "(owner IS NULL OR (owner != ? AND owner NOT IN"
    " (SELECT id FROM instances WHERE expires_at >= ?)))"
)


def acquire(tx: Tx, name: str, me: str, now: float, lease: float = LEASE) -> bool:
    """Take or renew the lock `name` for `lease` seconds; False while another live
    instance holds it."""
    return (
        tx.execute(
            "INSERT INTO locks (name, holder, renewed_at, expires_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
            " renewed_at = excluded.renewed_at, expires_at = excluded.expires_at"
            " WHERE locks.holder = excluded.holder OR locks.expires_at < excluded.renewed_at",
            (name, me, now, now + lease),
        ).rowcount
        == 1
    )


def holder(tx: Tx, name: str, now: float) -> str | None:
    row = tx.execute(
        "SELECT holder FROM locks WHERE name = ? AND expires_at >= ?", (name, now)
    ).fetchone()
    return None if row is None else str(row[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def dead_here(tx: Tx, host: str, me: str, now: float) -> list[str]:
    """Instances of this host whose process is gone, though their lease still runs (a
    kill -9, then systemd's restart): nobody else can be running their mail."""
    rows = tx.execute(
        "SELECT id, pid FROM instances WHERE host = ? AND id != ? AND expires_at >= ?",
        (host, me, now),
    ).fetchall()
    return [str(r[0]) for r in rows if not _alive(int(r[1]))]
