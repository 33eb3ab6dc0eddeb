"""What `queue` and `show` print: one line a mail, like Postfix's mailq, and one mail.

Pure: entries come from the state (outbox.QueueEntry, quarantine.Held).
"""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Sequence
from datetime import datetime
from email.message import EmailMessage
from typing import Any
from zoneinfo import ZoneInfo

from feishu_mailbot.present import single_line
from feishu_mailbot.state.outbox import QueueEntry
from feishu_mailbot.state.quarantine import Held


def _when(at: float, zone: str) -> str:
    return datetime.fromtimestamp(at, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


def lines(entries: Sequence[QueueEntry], zone: str) -> list[str]:
    if not entries:
        return ["the outbox is empty"]
    out = [f"{'ID':>6}  {'STATE':<8}  {'QUEUED':<16}  {'TRIES':>5}  TO / SUBJECT / LAST ERROR"]
    for e in entries:
        out.append(
            f"{e.id:>6}  {e.status:<8}  {_when(e.created_at, zone):<16}  {e.attempts:>5}  "
            + ", ".join(e.recipients)
        )
        out.append(f"{'':>42}{single_line(e.subject or '(not composed yet)')[:100]}")
        if e.last_error:
            out.append(f"{'':>42}{single_line(e.last_error)[:200]}")
    return out


def as_json(entries: Sequence[QueueEntry]) -> str:
    rows: list[dict[str, Any]] = [
        {
            "id": e.id,
            "mail_id": e.mail_id,
            "kind": e.kind,
            "state": e.status,
            "queued_at": e.created_at,
            "attempts": e.attempts,
            "next_attempt_at": e.next_attempt_at,
            "recipients": list(e.recipients),
            "subject": e.subject,
            "last_error": e.last_error,
            "message_id": e.message_id,
        }
        for e in entries
    ]
    return json.dumps(rows, ensure_ascii=False, indent=2)


def held_lines(held: Sequence[Held], zone: str) -> list[str]:
    if not held:
        return ["no quarantined events"]
    out = [f"{'EVENT':<36}  {'STATE':<6}  {'RECEIVED':<16}  REASON"]
    out += [
        f"{h.key:<36}  {h.status:<6}  {_when(h.received_at, zone):<16}  {single_line(h.reason)}"
        for h in held
    ]
    return out


def show(entry: QueueEntry, raw: bytes | None, zone: str) -> str:
    """Headers and plain text of a mail; before it is composed, what is known of it."""
    head = [
        f"id {entry.id} ({entry.mail_id}), {entry.kind}, {entry.status}, "
        f"queued {_when(entry.created_at, zone)}, {entry.attempts} attempts",
        f"to: {', '.join(entry.recipients)}",
    ]
    if entry.last_error:
        head.append(f"last error: {single_line(entry.last_error)}")
    if raw is None:
        return "\n".join([*head, "(not composed yet: the outbox composes it when it is due)"])
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    headers = [f"{k}: {v}" for k, v in parsed.items()]
    body = parsed.get_body(("plain",))
    text = body.get_content() if body is not None else "(no plain-text part)"
    files = [str(p.get_filename()) for p in parsed.iter_attachments() if p.get_filename()]
    tail = [f"attachments: {', '.join(files)}"] if files else []
    return "\n".join([*head, "", *headers, "", str(text).rstrip(), *tail])
