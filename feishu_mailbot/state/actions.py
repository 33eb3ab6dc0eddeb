"""Queued side effects other than mail: reactions, replies, digest requests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from feishu_mailbot.core.model import ActionRequest
from feishu_mailbot.state.db import Tx
from feishu_mailbot.state.lifecycle import ACTIONS, attempt_failed, attempt_later


@dataclass(frozen=True)
class Action:
    id: int
    kind: str
    message_id: str
    payload: dict[str, Any]
    attempts: int
    created_at: float


def add(tx: Tx, request: ActionRequest, message_id: str, now: float) -> None:
    tx.execute(
        "INSERT INTO actions (kind, message_id, payload, next_attempt_at, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (request.kind, message_id, json.dumps(request.payload, ensure_ascii=False), now, now),
    )


def due(tx: Tx, now: float, limit: int = 50) -> list[Action]:
    rows = tx.execute(
        "SELECT id, kind, message_id, payload, attempts, created_at FROM actions"
        " WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY id LIMIT ?",
        (now, limit),
    ).fetchall()
    return [Action(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]


def next_due_at(tx: Tx) -> float | None:
    row = tx.execute("SELECT MIN(next_attempt_at) FROM actions WHERE status = 'pending'").fetchone()
    return None if row[0] is None else float(row[0])


def finish(tx: Tx, action_id: int, error: str | None = None) -> bool:
    """Done, or failed for good with `error`; False if it had finished already."""
    return attempt_failed(tx, ACTIONS, "fail" if error else "done", action_id, error).done


def retry(tx: Tx, action_id: int, next_attempt_at: float, error: str) -> bool:
    return attempt_later(tx, ACTIONS, action_id, next_attempt_at, error).done
