"""Seen events, accepted messages and recalls.

A message's planned mail waits in its row (`deliveries`, `planned`) until the
outbox worker moves it into the outbox (outbox.queue_planned), so the commit
an ack waits for stays small (docs/design.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from feishu_mailbot.core.model import (
    ActionRequest,
    Delivery,
    Message,
    Recall,
    message_from_json,
    stored_form,
)
from feishu_mailbot.state import actions, outbox
from feishu_mailbot.state import batches as batches_q
from feishu_mailbot.state.db import Tx


class Ingest(Enum):
    NEW = "new"
    DUPLICATE_EVENT = "duplicate event_id"
    DUPLICATE_MESSAGE = "duplicate message_id"
    ALREADY_RECALLED = "recalled before it arrived"


@dataclass(frozen=True)
class RecallOutcome:
    known: bool  # we had stored the message
    cancelled: int  # pending mails that will now never be sent
    sending: int  # mails being sent: cancelled unless the relay accepts that attempt
    notices: int  # "recalled" follow-ups queued for mails already sent


def _deliveries_to_json(deliveries: Sequence[Delivery]) -> str:
    return json.dumps(
        [
            {
                "to": list(d.recipients),
                "rules": list(d.rules),
                "subject": d.subject_template,
                "confirm": d.confirm,
                "notify_recall": d.notify_recall,
            }
            for d in deliveries
        ],
        ensure_ascii=False,
    )


def _mark_seen(tx: Tx, event_id: str, now: float) -> bool:
    """Record an event id; False if it was seen before (a Feishu re-push)."""
    cur = tx.execute(
        "INSERT INTO events (event_id, received_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (event_id, now),
    )
    return cur.rowcount == 1


def ingest(
    tx: Tx,
    msg: Message,
    deliveries: Sequence[Delivery],
    now: float,
    requests: Sequence[ActionRequest] = (),
    batches: Sequence[str] = (),
    body: str = "",
) -> Ingest:
    """Record one accepted message, the mail it asks for and its other work.

    `body` is the message's stored form when the caller made it already (triage
    does); else it is made here. Either way it is cut to model.BODY_CAP.
    """
    if not _mark_seen(tx, msg.event_id, now):
        return Ingest.DUPLICATE_EVENT
    # One statement for the row and whether a recall came first (one round trip less to
    # a PostgreSQL server): no row back when the message is stored already.
    inserted = tx.execute(
        "INSERT INTO messages"
        " (message_id, event_id, chat_id, sender, created_ms, body, received_at,"
        " deliveries, planned) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
        " RETURNING EXISTS (SELECT 1 FROM recalls WHERE message_id = ?)",
        (
            msg.message_id,
            msg.event_id,
            msg.chat_id,
            msg.sender_open_id,
            msg.create_time_ms,
            body or stored_form(msg).body,
            now,
            _deliveries_to_json(deliveries) if deliveries else None,
            len(deliveries),
            msg.message_id,
        ),
    ).fetchall()
    if not inserted:
        return Ingest.DUPLICATE_MESSAGE
    if inserted[0][0]:
        tx.execute(
            "UPDATE messages SET recalled = 1, deliveries = NULL, planned = 0 WHERE message_id = ?",
            (msg.message_id,),
        )
        return Ingest.ALREADY_RECALLED
    for request in requests:
        actions.add(tx, request, msg.message_id, now)
    if batches:
        batches_q.add(tx, batches, msg.message_id, now)
    return Ingest.NEW


def recall(tx: Tx, event: Recall, now: float) -> RecallOutcome | None:
    """Apply a recall; None if this recall event was already applied."""
    if not _mark_seen(tx, event.event_id, now):
        return None
    tx.execute(
        "INSERT INTO recalls (message_id, recalled_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (event.message_id, now),
    )
    planned = tx.execute(
        "SELECT deliveries, received_at FROM messages WHERE message_id = ? AND planned > 0",
        (event.message_id,),
    ).fetchone()
    if planned is not None:  # not in the outbox yet: cancelled there like the rest
        outbox.queue_deliveries(tx, [(event.message_id, planned[0], planned[1])])
    known = (
        tx.execute(
            "UPDATE messages SET recalled = 1 WHERE message_id = ?", (event.message_id,)
        ).rowcount
        == 1
    )
    mail = outbox.cancel_for_recall(tx, event.message_id, now)
    cancelled = mail.cancelled + batches_q.forget(tx, event.message_id)
    return RecallOutcome(known, cancelled, mail.sending, mail.notices)


def get(tx: Tx, message_id: str) -> Message | None:
    row = tx.execute("SELECT body FROM messages WHERE message_id = ?", (message_id,)).fetchone()
    return None if row is None else message_from_json(row[0])


def count_since(tx: Tx, since: float) -> int:
    return int(
        tx.execute("SELECT COUNT(*) FROM messages WHERE received_at >= ?", (since,)).fetchone()[0]
    )


def between(tx: Tx, chat_id: str, start_ms: int, end_ms: int) -> list[Message]:
    """A chat's messages created in [start_ms, end_ms), oldest first, minus recalled ones."""
    rows = tx.execute(
        "SELECT body FROM messages WHERE chat_id = ? AND created_ms >= ? AND created_ms < ?"
        " AND recalled = 0 ORDER BY created_ms, rowid",
        (chat_id, start_ms, end_ms),
    ).fetchall()
    return [message_from_json(r[0]) for r in rows]
