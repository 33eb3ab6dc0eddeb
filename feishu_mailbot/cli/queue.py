"""What `queue` and `show` print: one line a mail, like Postfix's mailq, and one mail.

Pure: entries come from the state (outbox.QueueEntry, quarantine.Held). Subjects,
bodies, names and relay replies are chat or remote content: they reach the
terminal only through `present.terminal`.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Sequence
from datetime import datetime
from email.message import EmailMessage
from typing import Any
from zoneinfo import ZoneInfo

from feishu_mailbot.mail.html import terminal, terminal_json
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
            + terminal(", ".join(e.recipients), one_line=True)
        )
        out.append(f"{'':>42}{terminal(e.subject or '(not composed yet)', one_line=True)[:100]}")
        if e.last_error:
            out.append(f"{'':>42}{terminal(e.last_error, one_line=True)[:200]}")
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
    return terminal_json(rows)


def held_lines(held: Sequence[Held], zone: str) -> list[str]:
    if not held:
        return ["no quarantined events"]
    out = [f"{'EVENT':<36}  {'STATE':<6}  {'RECEIVED':<16}  REASON"]
    for h in held:
        reason = terminal(h.reason, one_line=True)
        out.append(f"{h.key:<36}  {h.status:<6}  {_when(h.received_at, zone):<16}  {reason}")
    return out


def show(entry: QueueEntry, raw: bytes | None, zone: str) -> str:
    """Headers and plain text of a mail; before it is composed, what is known of it."""
    head = [
        f"id {entry.id} ({entry.mail_id}), {entry.kind}, {entry.status}, "
        f"queued {_when(entry.created_at, zone)}, {entry.attempts} attempts",
        f"to: {terminal(', '.join(entry.recipients), one_line=True)}",
    ]
    if entry.last_error:
        head.append(f"last error: {terminal(entry.last_error, one_line=True)}")
    if raw is None:
        return "\n".join([*head, _without_bytes(entry)])
    return "\n".join([*head, "", readable(raw)])


def _without_bytes(entry: QueueEntry) -> str:
    subject = terminal(entry.subject or "", one_line=True)
    if entry.status in ("sent", "cancelled", "dropped"):
        return f"subject: {subject}\n({entry.status}: a finished mail keeps no text)"
    if entry.composed:  # its spool file went while we looked
        return f"subject: {subject}\n(its file is gone: sent or dropped meanwhile; see `queue`)"
    if entry.kind == "batch" and entry.status == "failed":
        return f"subject: {subject}\n(never composed: `retry` composes it again)"
    return "(not composed yet: the outbox composes it when it is due)"


def readable(raw: bytes) -> str:
    """A mail as its reader sees it: decoded headers, the plain text, the files' names.

    `show` and `simulate` print it; the HTML part says the same, and MIME's
    base64 would hide the text from the operator.
    """
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    headers = [f"{k}: {terminal(str(v), one_line=True)}" for k, v in parsed.items()]
    body = parsed.get_body(("plain",))
    text = body.get_content() if body is not None else "(no plain-text part)"
    files = [str(p.get_filename()) for p in parsed.iter_attachments() if p.get_filename()]
    tail = [f"attachments: {terminal(', '.join(files), one_line=True)}"] if files else []
    return "\n".join([*headers, "", terminal(str(text).rstrip()), *tail])
