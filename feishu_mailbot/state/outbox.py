"""The outbox: mail to send, each row's life the OUTBOX machine of lifecycle.py.

A row found being sent at start-up was interrupted mid-delivery: it goes
back to pending and is re-sent with the same stored bytes and Message-ID, so
a receiving server (or a human) sees one message, never two different ones;
one recalled or dropped meanwhile ends there instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from feishu_mailbot.core.reply import mail_key
from feishu_mailbot.state.db import Tx, chunks
from feishu_mailbot.state.instances import FREE, ORPHANED
from feishu_mailbot.state.lifecycle import (
    OUTBOX,
    SENDING,
    UNFINISHED,
    Moved,
    attempt_failed,
    attempt_later,
    move,
    move_all,
)

_UNFINISHED = ",".join(f"'{s}'" for s in UNFINISHED)
_SENDING = ",".join(f"'{s}'" for s in SENDING)


@dataclass(frozen=True)
class OutboxRow:
    mail_id: str
    message_id: str
    kind: str  # "forward" | "recall" | "digest" | "supplement" | "immediate"
    recipients: tuple[str, ...]
    rules: tuple[str, ...]
    subject_template: str
    confirm: bool
    notify_recall: bool
    attempts: int
    created_at: float
    subject: str | None
    raw: bytes | None
    spool: str | None = None  # instead of raw, for large mail: a file in State.spool

    @property
    def prepared(self) -> bool:
        return self.raw is not None or self.spool is not None


@dataclass(frozen=True)
class Prepared:
    """A composed mail: its bytes, or the spool file holding them."""

    subject: str
    raw: bytes | None = None
    spool: str | None = None


def mail_id_for(message_id: str, recipients: Sequence[str]) -> str:
    """Stable per (message, recipient set): re-planning the same message yields the same id."""
    return f"{message_id}/{','.join(sorted(r.lower() for r in recipients))}"


def thread_mails(
    tx: Tx, message_ids: Sequence[str], recipients: Sequence[str]
) -> list[tuple[str, str | None]]:
    """Of these messages' forwards to the same recipients, the ones that were or will be
    sent, in the order asked: (mail_id, subject)."""
    wanted = [mail_id_for(m, recipients) for m in message_ids]
    marks = ",".join("?" * len(wanted))
    rows = dict(
        tx.execute(
            f"SELECT mail_id, subject FROM outbox WHERE mail_id IN ({marks})"
            f" AND kind = 'forward' AND status IN ({_UNFINISHED}, 'sent')",
            wanted,
        ).fetchall()
    )
    return [(m, rows[m]) for m in wanted if m in rows]


def queue_planned(tx: Tx, limit: int = 64) -> int:
    """Move the planned mail of up to `limit` messages into the outbox, oldest first.

    Returns how many messages it took: fewer than `limit` means none is left.
    """
    rows = tx.execute(
        "SELECT message_id, deliveries, received_at FROM messages"
        " WHERE planned > 0 ORDER BY received_at LIMIT ?",
        (limit,),
    ).fetchall()
    queue_deliveries(tx, rows)
    return len(rows)


_QUEUE_COLUMNS = 11  # the parameters of one outbox row below
_QUEUE_ROWS = 100  # rows per statement: well under SQLite's 32766 parameters


def queue_deliveries(tx: Tx, planned: Sequence[tuple[str, str, float]]) -> None:
    """Messages' planned mail, (message_id, deliveries JSON, received_at), as outbox rows.

    A few statements however many messages: each is a round trip to a PostgreSQL
    server, and these run in the group commit that acknowledges events.
    """
    if not planned:
        return
    values = [
        (
            mail_id := mail_id_for(message_id, d["to"]),
            mail_key(mail_id),
            message_id,
            json.dumps(d["to"]),
            json.dumps(d["rules"]),
            d["subject"],
            int(d["confirm"]),
            int(d["notify_recall"]),
            OUTBOX.initial,
            received_at,
            received_at,
        )
        for message_id, deliveries, received_at in planned
        for d in json.loads(deliveries)
    ]
    row = "(?, ?, ?, 'forward', ?, ?, ?, ?, ?, ?, ?, ?)"
    for i in range(0, len(values), _QUEUE_ROWS):
        chunk = values[i : i + _QUEUE_ROWS]
        tx.execute(
            "INSERT INTO outbox (mail_id, header_id, message_id, kind, recipients, rules,"
            " subject_template, confirm, notify_recall, status, next_attempt_at,"
            f" created_at) VALUES {', '.join([row] * len(chunk))} ON CONFLICT DO NOTHING",
            [p for v in chunk for p in v],
        )
    ids = [message_id for message_id, _, _ in planned]
    for i in range(0, len(ids), _QUEUE_ROWS * _QUEUE_COLUMNS):
        some = ids[i : i + _QUEUE_ROWS * _QUEUE_COLUMNS]
        tx.execute(
            "UPDATE messages SET deliveries = NULL, planned = 0"
            f" WHERE message_id IN ({','.join('?' * len(some))})",
            some,
        )


def queue(
    tx: Tx,
    *,
    mail_id: str,
    kind: str,
    recipients: Sequence[str],
    prepared: Prepared,
    now: float,
) -> None:
    """A mail composed elsewhere (a digest), ready to send as it is."""
    tx.execute(
        "INSERT INTO outbox (mail_id, header_id, message_id, kind, recipients, rules,"
        " subject_template, confirm, notify_recall, status, next_attempt_at,"
        " created_at, subject, raw, spool) VALUES (?, ?, '', ?, ?, '[]', '', 0, 0, ?, ?,"
        " ?, ?, ?, ?)",
        (
            mail_id,
            mail_key(mail_id),
            kind,
            json.dumps(list(recipients)),
            OUTBOX.initial,
            now,
            now,
            prepared.subject,
            prepared.raw,
            prepared.spool,
        ),
    )


@dataclass(frozen=True)
class Recalled:
    cancelled: int  # forwards that will now never be sent
    sending: int  # forwards being sent: cancelled unless the relay accepts them
    notices: int  # recall notices queued for forwards already sent


def cancel_for_recall(tx: Tx, message_id: str, now: float) -> Recalled:
    """A message was recalled: its forwards not sent yet end here, for good."""
    moved = move_all(tx, OUTBOX, "recall", "message_id = ? AND kind = 'forward'", (message_id,))
    notices = 0
    for (mail_id,) in tx.execute(
        "SELECT mail_id FROM outbox WHERE message_id = ? AND kind = 'forward'"
        " AND status = 'sent' AND notify_recall = 1",
        (message_id,),
    ).fetchall():
        notices += _queue_recall_notice(tx, mail_id, now)
    return Recalled(
        cancelled=sum(m.after == "cancelled" for m in moved),
        sending=sum(m.after == "recalling" for m in moved),
        notices=notices,
    )


def _queue_recall_notice(tx: Tx, mail_id: str, now: float) -> int:
    return tx.execute(
        "INSERT INTO outbox (mail_id, message_id, kind, recipients, rules,"
        " subject_template, confirm, notify_recall, status, next_attempt_at, created_at,"
        " subject)"
        " SELECT mail_id || '#recall', message_id, 'recall', recipients, rules,"
        " subject_template, 0, 0, ?, ?, ?, subject FROM outbox"
        " WHERE mail_id = ? AND notify_recall = 1 ON CONFLICT DO NOTHING",
        (OUTBOX.initial, now, now, mail_id),
    ).rowcount


def requeue_interrupted(tx: Tx, me: str, now: float) -> list[Moved]:
    """Mail caught mid-send by an instance that is gone (this one's last run, or another
    whose lease ran out) goes back to pending (same bytes, same Message-ID), or to its
    end if it was recalled or dropped meanwhile."""
    where = f"status IN ({_SENDING}) AND {ORPHANED}"
    return move_all(tx, OUTBOX, "interrupted", where, (me, now))


def orphaned(tx: Tx, me: str, now: float) -> bool:
    """Whether requeue_interrupted has anything to do (a read: idle rounds write nothing)."""
    return (
        tx.execute(
            f"SELECT 1 FROM outbox WHERE status IN ({_SENDING}) AND {ORPHANED} LIMIT 1",
            (me, now),
        ).fetchone()
        is not None
    )


_COLUMNS = (
    "mail_id, message_id, kind, recipients, rules, subject_template, confirm,"
    " notify_recall, attempts, created_at, subject, raw, spool"
)


def _row(r: Sequence[Any]) -> OutboxRow:
    return OutboxRow(
        mail_id=r[0],
        message_id=r[1],
        kind=r[2],
        recipients=tuple(json.loads(r[3])),
        rules=tuple(json.loads(r[4])),
        subject_template=r[5],
        confirm=bool(r[6]),
        notify_recall=bool(r[7]),
        attempts=r[8],
        created_at=r[9],
        subject=r[10],
        raw=r[11],
        spool=r[12],
    )


def _takeable(me: str | None, now: float) -> tuple[str, tuple[str | float, ...]]:
    """The condition (and its parameters) that keeps to the mail instance `me` may take;
    none for None (a state one daemon has to itself)."""
    return ("", ()) if me is None else (f" AND {FREE}", (me, now))


def due(tx: Tx, now: float, limit: int = 50, me: str | None = None) -> list[OutboxRow]:
    """Mail due now (a look; `claim_due` takes): with `me`, only what that instance may
    take, so that the mail another instance holds does not hide the rest of the queue."""
    free, params = _takeable(me, now)
    rows = tx.execute(
        f"SELECT {_COLUMNS} FROM outbox WHERE status = 'pending' AND next_attempt_at <= ?"
        f"{free} ORDER BY next_attempt_at, created_at LIMIT ?",
        (now, *params, limit),
    ).fetchall()
    return [_row(r) for r in rows]


def claim_due(tx: Tx, me: str, now: float, limit: int = 50) -> list[OutboxRow]:
    """Due mail this instance takes to prepare and send, oldest first: none that another
    live instance holds. On PostgreSQL rows another instance is claiming at this moment
    are skipped, not waited for (FOR UPDATE SKIP LOCKED): two instances drain one queue
    side by side. The outer conditions are checked again on a row another instance
    changed meanwhile, so a claim is never taken over but from a dead instance.
    MATERIALIZED: a subquery in the WHERE may be run again per row by PostgreSQL's
    planner, and would then pick (and lock) more than `limit` rows."""
    rows = tx.execute(
        f"WITH picked AS MATERIALIZED (SELECT mail_id FROM outbox"
        f" WHERE status = 'pending' AND next_attempt_at <= ? AND {FREE}"
        f" ORDER BY next_attempt_at, created_at LIMIT ?{tx.skip_locked})"
        f" UPDATE outbox SET owner = ? WHERE mail_id IN (SELECT mail_id FROM picked)"
        f" AND status = 'pending' AND {FREE} RETURNING {_COLUMNS}, next_attempt_at",
        (now, me, now, limit, me, me, now),
    ).fetchall()
    rows.sort(key=lambda r: (r[13], r[9]))
    return [_row(r) for r in rows]


def next_due_at(tx: Tx, me: str | None = None, now: float = 0.0) -> float | None:
    """When the next mail falls due; with `me`, of the mail that instance may take (a
    live one's claim is `now`'s business of its holder, not a reason to look again)."""
    free, params = _takeable(me, now)
    row = tx.execute(
        f"SELECT MIN(next_attempt_at) FROM outbox WHERE status = 'pending'{free}", params
    ).fetchone()
    return None if row[0] is None else float(row[0])


def pending_count(tx: Tx) -> int:
    """Mail not sent yet: in the outbox, or still planned in its message's row."""
    queued = tx.execute(f"SELECT COUNT(*) FROM outbox WHERE status IN ({_UNFINISHED})").fetchone()[
        0
    ]
    return int(queued) + planned_count(tx)


def planned_count(tx: Tx) -> int:
    """Mail still planned in its message's row.

    From the partial index alone: the status line asks every few seconds, and
    reading each row's JSON took ≈8 ms with 5000 messages planned.
    """
    return int(
        tx.execute("SELECT COALESCE(SUM(planned), 0) FROM messages WHERE planned > 0").fetchone()[0]
    )


def begin_send(tx: Tx, mail_id: str, me: str, prepared: Prepared | None = None) -> Moved:
    """pending → sending by instance `me`, storing the composed mail with it if new; not
    done if the mail was recalled, dropped or sent meanwhile (`before` says which)."""
    if prepared is None:
        return move(tx, OUTBOX, "claim", mail_id, "owner = ?", (me,))
    return move(
        tx,
        OUTBOX,
        "claim",
        mail_id,
        "owner = ?, subject = ?, raw = ?, spool = ?",
        (me, prepared.subject, prepared.raw, prepared.spool),
    )


@dataclass(frozen=True)
class Sent:
    moved: Moved
    notice: bool  # recalled while it was being sent: a recall notice was queued


def mark_sent(tx: Tx, mail_id: str, now: float) -> Sent:
    """The relay accepted it. Its bytes go: a year of forwards must not keep a year of
    attachments."""
    moved = move(
        tx,
        OUTBOX,
        "accepted",
        mail_id,
        "sent_at = ?, last_error = NULL, attempts = attempts + 1",
        (now,),
    )
    notice = moved.before == "recalling" and _queue_recall_notice(tx, mail_id, now) == 1
    return Sent(moved, notice)


def mark_retry(tx: Tx, mail_id: str, next_attempt_at: float, error: str) -> Moved:
    """Due again at `next_attempt_at`; a mail recalled or dropped meanwhile ends instead."""
    return attempt_later(tx, OUTBOX, mail_id, next_attempt_at, error)


def mark_failed(tx: Tx, mail_id: str, error: str) -> Moved:
    return attempt_failed(tx, OUTBOX, "fail", mail_id, error)


def spooled(tx: Tx) -> set[str]:
    """The spool files some row still names."""
    return {r[0] for r in tx.execute("SELECT spool FROM outbox WHERE spool IS NOT NULL")}


@dataclass(frozen=True)
class QueueEntry:
    """A mail as `feishu-mailbot queue` shows it; `id` is the row's short number.

    Without the mail's bytes: a queue of large mail is listed without reading them.
    """

    id: int
    mail_id: str
    kind: str
    status: str  # pending | retrying | sending | recalling | dropping | failed | …
    created_at: float
    attempts: int
    next_attempt_at: float
    recipients: tuple[str, ...]
    subject: str | None
    last_error: str | None
    message_id: str
    spool: str | None
    composed: bool


_ENTRY = (
    "SELECT rowid, mail_id, kind, CASE WHEN status = 'pending' AND attempts > 0"
    " THEN 'retrying' ELSE status END, created_at, attempts, next_attempt_at, recipients,"
    " subject, last_error, message_id, spool, raw IS NOT NULL OR spool IS NOT NULL FROM outbox"
)


def _entry(r: Any) -> QueueEntry:
    return QueueEntry(
        id=r[0],
        mail_id=r[1],
        kind=r[2],
        status=r[3],
        created_at=r[4],
        attempts=r[5],
        next_attempt_at=r[6],
        recipients=tuple(json.loads(r[7])),
        subject=r[8],
        last_error=r[9],
        message_id=r[10],
        spool=r[11],
        composed=bool(r[12]),
    )


def queued(tx: Tx, statuses: Sequence[str]) -> list[QueueEntry]:
    """Mail in any of `statuses` (pending, retrying, sending, …, failed), oldest first."""
    rows = tx.execute(
        f"{_ENTRY} WHERE status IN ({_UNFINISHED}, 'failed') ORDER BY created_at"
    ).fetchall()
    return [e for e in map(_entry, rows) if e.status in statuses]


def entries_of(tx: Tx, mail_ids: Sequence[str]) -> list[QueueEntry]:
    """The mails `mail_ids` still in the table, in that order."""
    found: dict[str, QueueEntry] = {}
    for chunk, marks in chunks(mail_ids):
        for r in tx.execute(f"{_ENTRY} WHERE mail_id IN ({marks})", chunk):
            found[r[1]] = _entry(r)
    return [found[m] for m in mail_ids if m in found]


def row_ids(tx: Tx, names: Sequence[str]) -> dict[str, int | None]:
    """Each of `names` as the short number `queue` prints: a number is one already, and
    anything else is a MAIL_ID as the journal writes it (None: no such mail)."""
    out: dict[str, int | None] = {}
    for name in names:
        if name.isdecimal():
            out[name] = int(name)
            continue
        row = tx.execute("SELECT rowid FROM outbox WHERE mail_id = ?", (name,)).fetchone()
        out[name] = None if row is None else int(row[0])
    return out


def entry(tx: Tx, row_id: int) -> QueueEntry | None:
    row = tx.execute(f"{_ENTRY} WHERE rowid = ?", (row_id,)).fetchone()
    return None if row is None else _entry(row)


def raw_of(tx: Tx, row_id: int) -> bytes | None:
    """The composed mail's bytes when a row holds them (not a spool file's)."""
    row = tx.execute("SELECT raw FROM outbox WHERE rowid = ?", (row_id,)).fetchone()
    return None if row is None or row[0] is None else bytes(row[0])


def counts(tx: Tx) -> dict[str, int]:
    """How many mails are in each state; `pending` includes mail still planned, and
    `sending` the mail recalled or dropped while being sent."""
    out = {"pending": planned_count(tx), "retrying": 0, "sending": 0, "failed": 0}
    for status, retrying, n in tx.execute(
        "SELECT status, attempts > 0, COUNT(*) FROM outbox"
        f" WHERE status IN ({_UNFINISHED}, 'failed') GROUP BY 1, 2"
    ):
        key = "retrying" if status == "pending" and retrying else status
        out["sending" if key in SENDING else key] += n
    return out


def oldest_waiting(tx: Tx) -> float | None:
    """When the oldest mail not yet sent was queued (planned mail counts from its message)."""
    row = tx.execute(
        f"SELECT MIN(t) FROM (SELECT MIN(created_at) AS t FROM outbox WHERE status IN"
        f" ({_UNFINISHED}) UNION ALL SELECT MIN(received_at) FROM messages"
        " WHERE planned > 0) AS waiting"
    ).fetchone()
    return None if row[0] is None else float(row[0])


def next_retry(tx: Tx) -> tuple[float, str] | None:
    row = tx.execute(
        "SELECT next_attempt_at, last_error FROM outbox WHERE status = 'pending'"
        " AND attempts > 0 ORDER BY next_attempt_at LIMIT 1"
    ).fetchone()
    return None if row is None else (float(row[0]), str(row[1] or ""))


def _mail_ids(tx: Tx, row_ids: Sequence[int]) -> dict[int, str]:
    marks = ",".join("?" * len(row_ids))
    return dict(
        tx.execute(f"SELECT rowid, mail_id FROM outbox WHERE rowid IN ({marks})", tuple(row_ids))
    )


def waiting_due_now(tx: Tx, now: float) -> int:
    """Mail waiting for its next attempt is due at once (the relay's settings changed:
    the fix for a wrong password should not wait out a 10-minute backoff); how many."""
    cur = tx.execute(
        "UPDATE outbox SET next_attempt_at = ? WHERE status = 'pending' AND attempts > 0"
        " AND next_attempt_at > ?",
        (now, now),
    )
    return int(cur.rowcount)


def retry_now(tx: Tx, row_ids: Sequence[int] | None, now: float) -> dict[int, Moved]:
    """The operator's retry: due at once with fresh attempts, if the table allows it;
    None: every failed mail. Per row id asked for (or moved), what was found and done."""
    also, params = "attempts = 0, next_attempt_at = ?", (now,)
    if row_ids is None:
        ids = {
            r[0]: r[1]
            for r in tx.execute("SELECT rowid, mail_id FROM outbox WHERE status = 'failed'")
        }
    else:
        ids = _mail_ids(tx, row_ids)
    return {
        row_id: move(tx, OUTBOX, "retry", ids[row_id], also, params)
        if row_id in ids
        else Moved(row_id, None, None)
        for row_id in (ids if row_ids is None else row_ids)
    }


def drop(tx: Tx, row_ids: Sequence[int]) -> tuple[dict[int, Moved], list[str]]:
    """The operator's drop: per row id what was found and done, and the spool files of
    the mail dropped, for the caller to remove."""
    ids = _mail_ids(tx, row_ids)
    files = dict(
        tx.execute(
            f"SELECT rowid, spool FROM outbox WHERE rowid IN ({','.join('?' * len(row_ids))})"
            " AND spool IS NOT NULL",
            tuple(row_ids),
        )
    )
    moved = {
        row_id: move(tx, OUTBOX, "drop", ids[row_id])
        if row_id in ids
        else Moved(row_id, None, None)
        for row_id in row_ids
    }
    dropped = [files[i] for i, m in moved.items() if m.after == "dropped" and i in files]
    return moved, dropped
