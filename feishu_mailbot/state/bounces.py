"""Recipients of sent mail that a delivery report says were not reached.

A mail stays `sent`: the relay took it, and its other recipients have it. What
the report adds is a row per recipient, which `queue --failed`, `show` and
`status` read; a report that comes again (a server that repeats it, a mail
taken twice) finds its row and adds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from feishu_mailbot.core.bounce import Failure
from feishu_mailbot.state.db import Tx, chunks


@dataclass(frozen=True)
class Bounced:
    mail_id: str
    failure: Failure
    at: float


def record(tx: Tx, mail_id: str, failure: Failure, now: float) -> bool:
    """Whether this is news: the first report of this recipient of this mail."""
    cur = tx.execute(
        "INSERT INTO bounces (mail_id, recipient, bounced_at, status, diagnostic)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (mail_id, failure.address, now, failure.status, failure.diagnostic),
    )
    return cur.rowcount == 1


def of_mails(tx: Tx, mail_ids: Sequence[str]) -> dict[str, tuple[Bounced, ...]]:
    """The bounces of each of `mail_ids` that has any, oldest first."""
    out: dict[str, list[Bounced]] = {}
    for chunk, marks in chunks(mail_ids):
        for r in tx.execute(
            "SELECT mail_id, recipient, status, diagnostic, bounced_at FROM bounces"
            f" WHERE mail_id IN ({marks}) ORDER BY bounced_at, recipient",
            chunk,
        ):
            out.setdefault(r[0], []).append(Bounced(r[0], Failure(r[1], r[2], r[3]), r[4]))
    return {k: tuple(v) for k, v in out.items()}


def bounced_mail(tx: Tx) -> list[str]:
    """The mails with a bounced recipient, the latest bounce first."""
    rows = tx.execute(
        "SELECT mail_id FROM bounces GROUP BY mail_id ORDER BY MAX(bounced_at) DESC"
    ).fetchall()
    return [str(r[0]) for r in rows]


def count_since(tx: Tx, since: float) -> int:
    """Recipients bounced since `since`."""
    row = tx.execute("SELECT COUNT(*) FROM bounces WHERE bounced_at >= ?", (since,)).fetchone()
    return int(row[0])
