"""The state database: planned mail queued off the ack path, recalls of it, migrations."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from feishu_mailbot.core.model import Delivery, Message, Recall, message_to_json
from feishu_mailbot.state import State, messages, outbox, sqlite
from feishu_mailbot.state.messages import Ingest, RecallOutcome
from feishu_mailbot.state.outbox import OutboxRow, mail_id_for
from feishu_mailbot.state.schema import SCHEMA_VERSION
from tests.kit import SQLITE, Backend, message

FIXTURES = Path(__file__).parents[1] / "fixtures"
OPS = Delivery(("ops@example.com",), ("urgent",), "[{chat}] {preview}", False, True)
BOSS = Delivery(("boss@example.com", "cto@example.com"), ("all",), "{preview}", True, False)
RECALL_1 = Recall(event_id="ev_r1", message_id="om_1", chat_id="oc_team", recall_time_ms=0)


class Store:
    """The calls these tests make, each in a transaction of its own."""

    def __init__(self, path: Path, backend: Backend = SQLITE) -> None:
        self.state = backend.state(path)

    def ingest(self, msg: Message, deliveries: Sequence[Delivery], now: float) -> Ingest:
        return self.state.write_now(
            partial(messages.ingest, msg=msg, deliveries=deliveries, now=now)
        )

    def recall(self, event: Recall, now: float) -> RecallOutcome | None:
        return self.state.write_now(partial(messages.recall, event=event, now=now))

    def queue_planned(self, limit: int = 64) -> int:
        return self.state.write_now(partial(outbox.queue_planned, limit=limit))

    def due(self, now: float, limit: int = 50) -> list[OutboxRow]:
        return self.state.read(partial(outbox.due, now=now, limit=limit))

    def pending_count(self) -> int:
        return self.state.read(outbox.pending_count)

    def get_message(self, message_id: str) -> Message | None:
        return self.state.read(partial(messages.get, message_id=message_id))

    def close(self) -> None:
        self.state.close()


def test_planned_mail_reaches_the_outbox_in_batches_oldest_first(
    tmp_path: Path, backend: Backend
) -> None:
    store = Store(tmp_path / "db.sqlite", backend)
    for n in range(5):
        assert store.ingest(message(n), (OPS, BOSS), now=100.0 + n) is Ingest.NEW
    assert store.ingest(message(9), (), now=200.0) is Ingest.NEW  # nothing planned
    assert store.due(now=1000.0) == []  # not in the outbox yet ...
    assert store.pending_count() == 10  # ... but counted as mail to send

    assert store.queue_planned(limit=3) == 3
    assert store.queue_planned(limit=3) == 2  # fewer than asked: none left
    assert store.queue_planned(limit=3) == 0

    rows = store.due(now=1000.0, limit=50)
    assert [r.message_id for r in rows] == [f"om_{n}" for n in range(5) for _ in "ab"]
    boss = next(r for r in rows if r.mail_id == mail_id_for("om_0", BOSS.recipients))
    assert boss.recipients == ("boss@example.com", "cto@example.com")
    assert (boss.kind, boss.rules, boss.subject_template) == ("forward", ("all",), "{preview}")
    assert (boss.confirm, boss.notify_recall, boss.attempts) == (True, False, 0)
    assert store.pending_count() == 10
    assert store.get_message("om_3") == message(3)  # the message itself is untouched
    store.close()


def test_a_large_backlog_of_planned_mail_is_queued_whole(tmp_path: Path, backend: Backend) -> None:
    """Many messages' mail goes in a few multi-row statements (one round trip each to
    PostgreSQL): more rows than one statement takes, and a duplicate among them."""
    store = Store(tmp_path / "db.sqlite", backend)
    for n in range(130):
        assert store.ingest(message(n), (OPS, BOSS), now=100.0 + n) is Ingest.NEW
    store.state.write_now(  # as if an older run had queued one already
        lambda tx: outbox.queue_deliveries(
            tx,
            tx.execute(
                "SELECT message_id, deliveries, received_at FROM messages WHERE message_id = 'om_7'"
            ).fetchall(),
        )
    )
    assert store.queue_planned(limit=500) == 129
    rows = store.due(now=1000.0, limit=1000)
    assert len(rows) == len({r.mail_id for r in rows}) == 260
    assert {r.message_id for r in rows} == {f"om_{n}" for n in range(130)}
    assert store.pending_count() == 260 and store.queue_planned() == 0
    store.close()


def test_a_recall_cancels_planned_mail_that_never_reached_the_outbox(
    tmp_path: Path, backend: Backend
) -> None:
    store = Store(tmp_path / "db.sqlite", backend)
    store.ingest(message(1), (OPS, BOSS), now=100.0)
    store.ingest(message(2), (OPS,), now=101.0)
    outcome = store.recall(RECALL_1, now=102.0)
    assert outcome is not None
    assert (outcome.known, outcome.cancelled, outcome.notices) == (True, 2, 0)
    assert store.pending_count() == 1
    assert store.queue_planned() == 1
    assert [r.message_id for r in store.due(now=1000.0)] == ["om_2"]
    store.close()


def test_a_message_recalled_before_it_arrived_plans_nothing(
    tmp_path: Path, backend: Backend
) -> None:
    store = Store(tmp_path / "db.sqlite", backend)
    outcome = store.recall(RECALL_1, now=100.0)
    assert outcome is not None and not outcome.known
    assert store.ingest(message(1), (OPS,), now=101.0) is Ingest.ALREADY_RECALLED
    assert store.pending_count() == 0
    assert store.queue_planned() == 0
    store.close()


def test_a_version_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    old = sqlite3.connect(path)
    old.executescript((FIXTURES / "schema-v1.sql").read_text(encoding="utf-8"))
    old.execute("PRAGMA user_version=1")
    old.execute(
        "INSERT INTO messages (message_id, event_id, chat_id, sender, created_ms, body,"
        " received_at) VALUES ('om_old', 'ev_old', 'oc_team', 'ou_alice', 0, ?, 1.0)",
        (message_to_json(replace(message(0), event_id="ev_old", message_id="om_old")),),
    )
    old.execute(
        "INSERT INTO outbox (mail_id, message_id, kind, recipients, rules, subject_template,"
        " confirm, notify_recall, status, next_attempt_at, created_at) VALUES"
        " ('om_old/ops@example.com', 'om_old', 'forward', '[\"ops@example.com\"]', '[]',"
        " '{preview}', 0, 0, 'pending', 1.0, 1.0)"
    )
    old.commit()
    old.close()

    store = Store(path)
    assert user_version(path) == SCHEMA_VERSION
    assert [r.mail_id for r in store.due(now=10.0)] == ["om_old/ops@example.com"]
    assert store.ingest(message(1), (OPS,), now=2.0) is Ingest.NEW
    assert store.pending_count() == 2
    assert store.queue_planned() == 1
    assert [r.message_id for r in store.due(now=10.0)] == ["om_old", "om_1"]
    store.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()


def test_mail_an_older_release_put_back_after_a_recall_is_cancelled_by_the_upgrade(
    tmp_path: Path,
) -> None:
    """Schema 7 to 8: the rows the old unguarded UPDATEs left queued for a recalled
    message end cancelled; the flag of a recall during an attempt becomes `recalling`."""
    from feishu_mailbot.state.schema import SQLITE_MIGRATIONS

    path = tmp_path / "db.sqlite"
    old = sqlite3.connect(path)
    old.executescript((FIXTURES / "schema-v1.sql").read_text(encoding="utf-8"))
    old.executescript("".join(SQLITE_MIGRATIONS[v] for v in range(1, 7)))
    old.execute("PRAGMA user_version=7")
    rows = {  # mail: (status, recalled flag, message recalled in `recalls`)
        "reset": ("pending", 0, True),  # cancelled, then mark_retry put it back
        "flagged": ("failed", 1, False),  # recalled while sending, then a 5xx
        "sending": ("sending", 1, False),
        "plain": ("pending", 0, False),
        "late": ("sent", 1, True),  # recalled after it was sent: its notice went
    }
    for mail, (status, flag, recalled) in rows.items():
        old.execute(
            "INSERT INTO outbox (mail_id, message_id, kind, recipients, rules,"
            " subject_template, confirm, notify_recall, status, recalled, next_attempt_at,"
            " created_at, raw) VALUES (?, ?, 'forward', '[]', '[]', '', 0, 0, ?, ?, 1, 1, ?)",
            (mail, f"om_{mail}", status, flag, b"bytes"),
        )
        if recalled:
            old.execute("INSERT INTO recalls VALUES (?, 1)", (f"om_{mail}",))
    old.commit()
    old.close()

    State(path).close()
    db = sqlite3.connect(path)
    found = dict(db.execute("SELECT mail_id, status FROM outbox").fetchall())
    kept = dict(db.execute("SELECT mail_id, raw IS NOT NULL FROM outbox").fetchall())
    db.close()
    assert found == {
        "reset": "cancelled",
        "flagged": "cancelled",
        "sending": "recalling",
        "plain": "pending",
        "late": "sent",
    }
    assert not kept["reset"] and not kept["flagged"] and kept["plain"]


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def old_database(path: Path, rows: int) -> None:
    """A file as a release before retention made it: no auto_vacuum, free pages inside."""
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE filler (x BLOB)")
    old.executemany("INSERT INTO filler VALUES (?)", [(b"x" * 1000,)] * rows)
    old.commit()
    old.execute("DELETE FROM filler")
    old.commit()
    old.close()


def test_an_old_small_database_is_made_shrinkable_once(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    old_database(path, 2000)
    state = State(path)
    assert state.read(lambda tx: tx.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2
    assert state.release(256) == 0
    state.close()


def test_an_old_big_database_is_not_vacuumed_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A VACUUM of gigabytes would outlast the unit's start timeout, every start again."""
    path = tmp_path / "db.sqlite"
    old_database(path, 2000)
    monkeypatch.setattr(sqlite, "VACUUM_AT_OPEN_MAX", 0)  # as if this file were gigabytes
    state = State(path)
    assert state.read(lambda tx: tx.execute("PRAGMA auto_vacuum").fetchone()[0]) == 0
    assert state.read(lambda tx: tx.execute("PRAGMA freelist_count").fetchone()[0]) > 0
    assert state.release(256) == 0  # nothing to give back this way: housekeeping moves on
    state.close()
