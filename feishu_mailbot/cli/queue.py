"""`queue`, `show`, `retry` and `drop`: the outbox as Postfix's mailq shows a queue.

One line a mail, and one mail whole. Subjects, bodies, names and relay replies
are chat or remote content: they reach the terminal only through
`core.text.terminal`. `retry` and `drop` move a mail only as the table of a
mail's life allows (state/lifecycle.py) and say why for each one it refuses.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from email.message import EmailMessage
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from feishu_mailbot.config.settings import Settings
from feishu_mailbot.core.bounce import describe
from feishu_mailbot.core.exits import Exit
from feishu_mailbot.core.text import terminal, terminal_json
from feishu_mailbot.state import State, Tx, batches, bounces, outbox, quarantine
from feishu_mailbot.state.bounces import Bounced
from feishu_mailbot.state.lifecycle import REFUSALS, SENDING, Moved
from feishu_mailbot.state.outbox import QueueEntry
from feishu_mailbot.state.quarantine import Held


def _when(at: float, zone: str) -> str:
    return datetime.fromtimestamp(at, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


def lines(
    entries: Sequence[QueueEntry], zone: str, bounced: Mapping[str, Sequence[Bounced]] = {}
) -> list[str]:
    """One mail a line, then its subject, its last error and each bounced recipient; a
    sent mail listed for its bounces is `bounced`."""
    if not entries:
        return ["the outbox is empty"]
    out = [f"{'ID':>6}  {'STATE':<8}  {'QUEUED':<16}  {'TRIES':>5}  TO / SUBJECT / LAST ERROR"]
    for e in entries:
        state = "bounced" if e.status == "sent" and e.mail_id in bounced else e.status
        out.append(
            f"{e.id:>6}  {state:<8}  {_when(e.created_at, zone):<16}  {e.attempts:>5}  "
            + terminal(", ".join(e.recipients), one_line=True)
        )
        out.append(f"{'':>42}{terminal(e.subject or '(not composed yet)', one_line=True)[:100]}")
        if e.last_error:
            out.append(f"{'':>42}{terminal(e.last_error, one_line=True)[:200]}")
        for b in bounced.get(e.mail_id, ()):
            said = terminal(describe(b.failure), one_line=True)[:200]
            out.append(f"{'':>42}bounced {_when(b.at, zone)}: {said}")
    return out


def as_json(entries: Sequence[QueueEntry], bounced: Mapping[str, Sequence[Bounced]] = {}) -> str:
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
            "bounced": [
                {
                    "recipient": b.failure.address,
                    "status": b.failure.status,
                    "diagnostic": b.failure.diagnostic,
                    "at": b.at,
                }
                for b in bounced.get(e.mail_id, ())
            ],
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


def show(entry: QueueEntry, raw: bytes | None, zone: str, bounced: Sequence[Bounced] = ()) -> str:
    """Headers and plain text of a mail; before it is composed, what is known of it."""
    head = [
        f"id {entry.id} ({entry.mail_id}), {entry.kind}, {entry.status}, "
        f"queued {_when(entry.created_at, zone)}, {entry.attempts} attempts",
        f"to: {terminal(', '.join(entry.recipients), one_line=True)}",
    ]
    if entry.last_error:
        head.append(f"last error: {terminal(entry.last_error, one_line=True)}")
    for b in bounced:
        said = terminal(describe(b.failure), one_line=True)
        head.append(f"bounced {_when(b.at, zone)}: {said}")
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


def run_queue(settings: Settings, state: State, args: argparse.Namespace) -> int:
    if args.quarantined:
        held = state.read(quarantine.entries)
        print("\n".join(held_lines(held, settings.timezone)))
        return Exit.OK
    wanted = (
        ("failed",)
        if args.failed
        else ("pending", "retrying")
        if args.pending
        else ("pending", "retrying", *SENDING, "failed")
    )
    entries = state.read(partial(outbox.queued, statuses=wanted))
    bounced: dict[str, tuple[Bounced, ...]] = {}
    if "failed" in wanted:  # and sent mail a delivery report came back for, latest first
        listed = {e.mail_id for e in entries}
        more = [m for m in state.read(bounces.bounced_mail) if m not in listed]
        entries += state.read(partial(outbox.entries_of, mail_ids=more))
        bounced = state.read(partial(bounces.of_mails, mail_ids=[e.mail_id for e in entries]))
    planned = state.read(outbox.planned_count)
    if args.json:
        print(as_json(entries, bounced))
        return Exit.OK
    print("\n".join(lines(entries, settings.timezone, bounced)))
    if planned and not args.failed:
        print(f"and {planned} mail planned, entering the outbox as it is sent")
    return Exit.OK


def _row_ids(state: State, names: Sequence[str]) -> list[int] | None:
    """The mails named by number or by MAIL_ID; None (said on stderr) if one is unknown."""
    found = state.read(partial(outbox.row_ids, names=names))
    unknown = [name for name, row_id in found.items() if row_id is None]
    for name in unknown:
        print(f"no mail {terminal(name, one_line=True)} in the outbox (see feishu-mailbot queue)",
              file=sys.stderr)  # fmt: skip
    return None if unknown else [r for r in found.values() if r is not None]


def run_show(settings: Settings, state: State, args: argparse.Namespace) -> int:
    ids = _row_ids(state, [args.id])
    if ids is None:
        return Exit.DATAERR
    entry = state.read(partial(outbox.entry, row_id=ids[0]))
    if entry is None:
        print(f"no mail {args.id} in the outbox (see feishu-mailbot queue)", file=sys.stderr)
        return Exit.DATAERR
    raw = state.read(partial(outbox.raw_of, row_id=ids[0]))
    if raw is None and entry.spool is not None:
        raw = state.spool.read(entry.spool)  # None: sent (or dropped) while we looked
    bounced = state.read(partial(bounces.of_mails, mail_ids=[entry.mail_id]))
    print(show(entry, raw, settings.timezone, bounced.get(entry.mail_id, ())))
    return Exit.OK


def _refusals(moved: dict[int, Moved], verb: str) -> None:
    """One line on stderr per mail asked for that the table leaves where it is."""
    for row_id, m in moved.items():
        if m.before is None:
            print(f"mail {row_id}: not in the outbox (see feishu-mailbot queue)", file=sys.stderr)
        elif not m.done:
            why = REFUSALS.get(m.before, f"it is {m.before}")
            print(f"mail {row_id}: not {verb}: {why}", file=sys.stderr)


def run_retry(settings: Settings, state: State, args: argparse.Namespace) -> int:
    if args.quarantined is not None or args.all_quarantined:
        keys = None if args.all_quarantined else args.quarantined
        if keys == []:
            print("retry --quarantined: name the events (or --all-quarantined)", file=sys.stderr)
            return Exit.USAGE
        n = state.write_now(partial(quarantine.retry, keys=keys))
        print(f"{n} quarantined events to be taken again by the running daemon")
        return Exit.OK
    if not args.ids and not args.all_failed:
        print("retry: name mail ids from `queue`, or --all-failed", file=sys.stderr)
        return Exit.USAGE
    ids = None if args.all_failed else _row_ids(state, args.ids)
    if ids is None and not args.all_failed:
        return Exit.DATAERR

    def retry(tx: Tx) -> tuple[dict[int, int], dict[int, Moved]]:
        back = batches.give_back(tx, ids)  # never composed: composed anew, not resent
        rest = None if ids is None else [i for i in ids if i not in back]
        return back, outbox.retry_now(tx, rest, time.time()) if rest != [] else {}

    back, moved = state.write_now(retry)
    state.announce("outbox")
    _refusals(moved, "retried")
    for row_id, matches in back.items():
        print(f"mail {row_id}: its {matches} matches go into a new batch digest at the next look")
    n = sum(m.done for m in moved.values()) + len(back)
    print(f"{n} mail due now; the running daemon sends it within seconds")
    return Exit.OK if n or ids is None else Exit.DATAERR


def run_drop(settings: Settings, state: State, args: argparse.Namespace) -> int:
    if not args.ids and not args.quarantined:
        print("drop: name mail ids from `queue`, or --quarantined EVENT...", file=sys.stderr)
        return Exit.USAGE
    if not args.yes:
        what = args.ids or args.quarantined
        print(f"drop: would drop {', '.join(map(str, what))} for good; add --yes", file=sys.stderr)
        return Exit.USAGE
    if args.quarantined:
        n = state.write_now(partial(quarantine.drop, keys=args.quarantined))
        print(f"{n} quarantined events dropped")
        return Exit.OK
    ids = _row_ids(state, args.ids)
    if ids is None:
        return Exit.DATAERR
    moved, files = state.write_now(partial(outbox.drop, row_ids=ids))
    for name in files:
        state.spool.remove(name)
    _refusals(moved, "dropped")
    for row_id, m in moved.items():
        if m.after == "dropping":
            print(
                f"mail {row_id}: being sent right now: dropped unless the relay accepts "
                "this attempt (see feishu-mailbot show)",
                file=sys.stderr,
            )
    n = sum(m.done for m in moved.values())
    print(f"{n} mail dropped")
    return Exit.OK if n else Exit.DATAERR
