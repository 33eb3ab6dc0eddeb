"""Every status column's states and transitions, and the one function that changes them.

Everything that moves a row from one status to another lives here (h11's rule
for its state machine): each table with a status is a `Machine`, its events a
table of allowed moves, and `move` is the only statement in the code that
writes a status. A move is guarded by the state it finds: on SQLite, the
row's state read and then an UPDATE `… WHERE key = ? AND status = ?` whose row
count is checked; on PostgreSQL, one UPDATE that locks the row as it reads it
and returns the states before and after. An event that finds the row in a
state it does not leave changes nothing and says so, so no late failure path
can put a recalled or dropped mail back in the queue. A new row starts in its
machine's `initial` state.

Mail that is planned but not yet queued lives in its message's row
(messages.deliveries) and has no status: it enters the outbox as `pending`, and
a recall that finds it planned queues it and cancels it in one transaction.
Digests (daily and batched) are outbox rows too, so they share its machine.
A batched match waits (batch_items.mail_id NULL) until the transaction that
queues its digest carries it; that is a foreign key, not a status.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from feishu_mailbot.state.db import Tx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Machine:
    """A table's states, and per event the state each state it leaves goes to."""

    table: str
    key: str
    initial: str
    states: tuple[str, ...]
    events: Mapping[str, Mapping[str, str]]
    #: Per state entered, columns set to NULL on the way in (a finished mail's bytes).
    clears: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for event, moves in self.events.items():
            unknown = (set(moves) | set(moves.values())) - set(self.states)
            assert not unknown, f"{self.table}.{event}: unknown states {unknown}"

    def target(self, event: str, state: str) -> str | None:
        """Where `event` takes a row in `state`; None if it does not leave that state."""
        return self.events[event].get(state)

    def leaves(self, event: str) -> tuple[str, ...]:
        return tuple(self.events[event])


_MAIL_BYTES = ("raw", "spool")
_OWNER = ("owner",)  # the instance preparing or sending it (instances.py)

#: A mail: queued (pending, with a due time), being sent (an SMTP attempt under way,
#: or a recall or a drop waiting for that attempt's end), and its four ends.
OUTBOX = Machine(
    table="outbox",
    key="mail_id",
    initial="pending",
    states=(
        "pending",
        "sending",
        "recalling",  # recalled while sending: sent only if that attempt is accepted
        "dropping",  # dropped by the operator while sending: the same
        "sent",
        "failed",
        "cancelled",  # its message was recalled in Feishu
        "dropped",  # the operator dropped it
    ),
    events={
        # The outbox worker takes a due mail for an SMTP attempt.
        "claim": {"pending": "sending"},
        # The relay accepted it: sent, and a recall that came meanwhile gets its notice.
        "accepted": {"sending": "sent", "recalling": "sent", "dropping": "sent"},
        # Preparing or sending failed for now: due again later, unless recalled or dropped.
        "later": {
            "pending": "pending",
            "sending": "pending",
            "recalling": "cancelled",
            "dropping": "dropped",
        },
        # Failed for good (permanent error, or retried for too long).
        "fail": {
            "pending": "failed",
            "sending": "failed",
            "recalling": "cancelled",
            "dropping": "dropped",
        },
        # Its message was recalled in Feishu: final, except for an attempt under way.
        "recall": {"pending": "cancelled", "failed": "cancelled", "sending": "recalling"},
        # `feishu-mailbot drop`: the same, by the operator.
        "drop": {"pending": "dropped", "failed": "dropped", "sending": "dropping"},
        # `feishu-mailbot retry`: due now, with fresh attempts.
        "retry": {"pending": "pending", "failed": "pending"},
        # The attempt's process is gone (found at start-up) or lost the state mid-send.
        "interrupted": {"sending": "pending", "recalling": "cancelled", "dropping": "dropped"},
    },
    # A mail that leaves the attempt (or its claim) is nobody's again: `owner` goes.
    clears={
        "pending": _OWNER,
        "sent": (*_MAIL_BYTES, *_OWNER),
        "failed": _OWNER,
        "cancelled": (*_MAIL_BYTES, *_OWNER),
        "dropped": (*_MAIL_BYTES, *_OWNER),
    },
)

#: A side effect other than mail (actions.py).
ACTIONS = Machine(
    table="actions",
    key="id",
    initial="pending",
    states=("pending", "done", "failed"),
    events={
        "later": {"pending": "pending"},
        "done": {"pending": "done"},
        "fail": {"pending": "failed"},
    },
)

#: An event that failed the same way on every re-push (quarantine.py).
QUARANTINE = Machine(
    table="quarantine",
    key="key",
    initial="held",
    states=("held", "retry", "released", "dropped"),
    events={
        # `feishu-mailbot retry --quarantined`: the daemon takes it again.
        "retry": {"held": "retry"},
        # Taken again and it failed the same way: held again, with today's reason.
        "held_again": {"retry": "held"},
        # Taken again and it went through.
        "release": {"retry": "released"},
        "drop": {"held": "dropped", "retry": "dropped"},
    },
)

MACHINES = (OUTBOX, ACTIONS, QUARANTINE)

#: Mail an SMTP attempt may be under way for.
SENDING = ("sending", "recalling", "dropping")
#: Mail not at one of its ends yet.
UNFINISHED = ("pending", *SENDING)

#: Why the operator's `retry` / `drop` leaves a mail as it is, by the state it is in.
REFUSALS = {
    "sending": "it is being sent right now; look again in a moment",
    "recalling": "its message was recalled while it was being sent",
    "dropping": "it was dropped while it was being sent",
    "sent": "it was sent",
    "cancelled": "its message was recalled in Feishu",
    "dropped": "an operator dropped it",
    "failed": "it failed",
    "pending": "it is waiting to be sent",
}


@dataclass(frozen=True)
class Moved:
    """What `move` found and did: `before` None if no such row, `after` None if unmoved."""

    key: Any
    before: str | None
    after: str | None

    @property
    def done(self) -> bool:
        return self.after is not None


def move(
    tx: Tx,
    machine: Machine,
    event: str,
    key: Any,
    also: str = "",
    params: Sequence[Any] = (),
) -> Moved:
    """Apply `event` to one row; `also` are further `column = expression` assignments
    (with `params`) made in the same statement, and only if the row moves."""
    if tx.returns_old_rows:
        moved = _move_where(tx, machine, event, f"{machine.key} = ?", (key,), also, params)
        if moved:
            return moved[0]
        row = tx.execute(  # rarely: a row that is gone, or in a state the event leaves as is
            f"SELECT status FROM {machine.table} WHERE {machine.key} = ?", (key,)
        ).fetchone()
        before = None if row is None else str(row[0])
        log.debug("%s %s: %s leaves it %s", machine.table, key, event, before)
        return Moved(key, before, None)
    row = tx.execute(
        f"SELECT status FROM {machine.table} WHERE {machine.key} = ?", (key,)
    ).fetchone()
    if row is None:
        return Moved(key, None, None)
    before = str(row[0])
    after = machine.target(event, before)
    if after is None:
        log.debug("%s %s: %s leaves it %s", machine.table, key, event, before)
        return Moved(key, before, None)
    sets = ["status = ?", *(f"{c} = NULL" for c in machine.clears.get(after, ()))]
    if also:
        sets.append(also)
    changed = tx.execute(
        f"UPDATE {machine.table} SET {', '.join(sets)} WHERE {machine.key} = ? AND status = ?",
        (after, *params, key, before),
    ).rowcount
    if changed != 1:  # another writer moved it between the two statements
        log.debug("%s %s: %s found it moved already", machine.table, key, event)
        return Moved(key, before, None)
    return Moved(key, before, after)


def _move_where(
    tx: Tx,
    machine: Machine,
    event: str,
    where: str,
    where_params: Sequence[Any],
    also: str,
    params: Sequence[Any],
) -> list[Moved]:
    """`event` on every row `where` selects that it leaves, in one statement that
    returns each row's state before and after (an engine with `returns_old_rows`).

    A round trip to a PostgreSQL server is most of what a move costs, and the
    outbox moves each mail twice per attempt. The rows are locked as they are
    read, so the state a move starts from is the one it leaves.
    """
    moves = machine.events[event]
    froms = ", ".join(f"'{s}'" for s in moves)
    cases = " ".join(f"WHEN '{b}' THEN '{a}'" for b, a in moves.items())
    sets = [f"status = CASE o.status {cases} END"]
    for column in dict.fromkeys(c for a in moves.values() for c in machine.clears.get(a, ())):
        befores = ", ".join(
            f"'{b}'" for b, a in moves.items() if column in machine.clears.get(a, ())
        )
        sets.append(f"{column} = CASE WHEN o.status IN ({befores}) THEN NULL ELSE t.{column} END")
    if also:
        sets.append(also)
    rows = tx.execute(
        f"UPDATE {machine.table} AS t SET {', '.join(sets)}"
        f" FROM (SELECT {machine.key}, status FROM {machine.table}"
        f" WHERE ({where}) AND status IN ({froms}) FOR UPDATE) AS o"
        f" WHERE t.{machine.key} = o.{machine.key}"
        f" RETURNING o.{machine.key}, o.status, t.status",
        (*params, *where_params),
    ).fetchall()
    return [Moved(key, str(before), str(after)) for key, before, after in rows]


def attempt_later(tx: Tx, machine: Machine, key: Any, next_attempt_at: float, error: str) -> Moved:
    """The attempt failed for now: due again at `next_attempt_at` (if the row still waits)."""
    also = "attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
    return move(tx, machine, "later", key, also, (next_attempt_at, error))


def attempt_failed(tx: Tx, machine: Machine, event: str, key: Any, error: str | None) -> Moved:
    """The attempt ended (`event`: done or fail), with `error` kept when it failed."""
    return move(tx, machine, event, key, "attempts = attempts + 1, last_error = ?", (error,))


def move_all(
    tx: Tx,
    machine: Machine,
    event: str,
    where: str,
    where_params: Sequence[Any] = (),
    also: str = "",
    params: Sequence[Any] = (),
) -> list[Moved]:
    """Apply `event` to every row `where` selects that is in a state the event leaves."""
    if tx.returns_old_rows:
        return _move_where(tx, machine, event, where, where_params, also, params)
    froms = machine.leaves(event)
    marks = ",".join("?" * len(froms))
    keys = [
        r[0]
        for r in tx.execute(
            f"SELECT {machine.key} FROM {machine.table} WHERE ({where}) AND status IN ({marks})",
            (*where_params, *froms),
        ).fetchall()
    ]
    return [m for k in keys if (m := move(tx, machine, event, k, also, params)).done]
