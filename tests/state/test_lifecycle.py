"""A mail's life under random interleavings: Hypothesis drives the real state module.

A `RuleBasedStateMachine` plays the outbox worker, Feishu and the operator
against the real query functions (state/outbox.py, state/messages.py, whose
status changes all go through state/lifecycle.py) on a real SQLite file: accept,
prepare (ok, for now, for good), SMTP (250, 4xx, 5xx, the connection lost after
DATA), a recall, a drop, a retry, a write the database refuses (a real SQLite
error: the connection is made query-only for it, and the transaction rolls back)
and a restart. Like the worker, it keeps an attempt's outcome that could not be
written and writes it first at its next round.

A failure prints the steps and a `@reproduce_failure` blob (print_blob), and
Hypothesis keeps the example in .hypothesis/ for the next run.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from feishu_mailbot.core.model import Delivery, Recall
from feishu_mailbot.state import State, Tx, Unavailable, messages, outbox
from feishu_mailbot.state.lifecycle import OUTBOX, SENDING
from feishu_mailbot.state.outbox import Prepared
from tests.kit import message
from tests.postgres import Postgres

TO = ("oncall@example.com",)
TABLES = ("events", "messages", "recalls", "outbox", "actions", "digests", "digest_entries")
# A write the database refuses: one in five, so that most attempts get somewhere.
FAILS = st.sampled_from([False, False, False, False, True])


@dataclass
class Attempt:
    """One attempt of the worker at one mail, while it is under way."""

    mail_id: str
    claimed_at: int | None = None  # when its claim was written (MailLife._seq); None: preparing


class MailLife(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="mail-life-", dir=_fast_tmp()))
        self.state_opened = False
        self.state = self._open()
        self.step = 0  # the clock: a tick is a second
        self.order = 0  # what happened before what (_seq)
        self.messages = 0
        self.live: dict[str, Attempt] = {}  # mail_id → its attempt under way
        self.unrecorded: dict[str, Callable[[Tx], Any]] = {}
        self.accepted: dict[str, list[int]] = {}  # mail_id → claims of the accepted tries
        self.ended: dict[str, tuple[str, int]] = {}  # mail_id → (recall|drop, when)
        self.notify: dict[str, bool] = {}

    def teardown(self) -> None:
        # Whatever the steps left, a restart brings every mail to an end or to pending
        # with a due time: nothing is stranded.
        self._restart()
        for mail_id, status, due in self._rows():
            assert status in ("pending", "sent", "failed", "cancelled", "dropped"), mail_id
            assert status != "pending" or due is not None, mail_id
        self.state.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _open(self) -> State:
        return State(self.dir / "state.db")

    def _refuse_writes(self, refuse: bool) -> None:
        """From now on the database refuses (or takes again) every write."""
        on = "ON" if refuse else "OFF"
        self.state.read(lambda tx: tx.execute(f"PRAGMA query_only = {on}"))

    def _seq(self) -> int:
        self.order += 1
        return self.order

    # -- the database, as the worker meets it ------------------------------------------

    def _write(self, work: Callable[[Tx], Any], fails: bool = False) -> Any:
        """`work` in a transaction; `fails`: SQLite refuses it and it is rolled back."""
        if not fails:
            return self.state.write_now(work)
        self._refuse_writes(True)
        try:
            with pytest.raises(Unavailable):
                self.state.write_now(work)
        finally:
            self._refuse_writes(False)
        return None

    def _outcome(self, mail_id: str, work: Callable[[Tx], Any], fails: bool) -> None:
        """An attempt's end: written, or kept for the next round as the worker keeps it."""
        before = self._status(mail_id)
        self._write(work, fails)
        if not fails:
            event(f"an attempt's outcome took {before} to {self._status(mail_id)}")
        if fails:
            self.unrecorded[mail_id] = work
        self.live.pop(mail_id, None)

    def _rows(self) -> list[tuple[str, str, float | None]]:
        return self.state.read(
            lambda tx: tx.execute(
                "SELECT mail_id, status, next_attempt_at FROM outbox WHERE kind = 'forward'"
            ).fetchall()
        )

    def _status(self, mail_id: str) -> str | None:
        row = self.state.read(
            lambda tx: tx.execute("SELECT status FROM outbox WHERE mail_id = ?", (mail_id,))
        ).fetchone()
        return None if row is None else str(row[0])

    def _restart(self) -> None:
        self.state.close()
        self.state = self._open()
        self.live.clear()
        self.unrecorded.clear()  # the process that held them is gone
        # The process before has another instance id: what it held is orphaned.
        self.state.write_now(partial(outbox.requeue_interrupted, me="next-run", now=self.step))

    @initialize(mails=st.integers(1, 4), queued=st.sampled_from([True, True, False]))
    def some_mail(self, mails: int, queued: bool) -> None:
        """A few mails to begin with, most often being tried already: most steps then act
        on mail (Hypothesis leaves some rules out of each example, `round` too)."""
        for _ in range(mails):
            self.accept(notify=self.messages % 2 == 0)
        if queued:  # and taken by a first round: attempts under way from the start
            self._write(partial(outbox.queue_planned, limit=64))
            self.live = {m: Attempt(m) for m in self._due()}

    # -- Feishu --------------------------------------------------------------------------

    @rule(notify=st.booleans())
    def accept(self, notify: bool) -> None:
        self.messages += 1
        msg = message(self.messages, f"故障 {self.messages}")
        delivery = Delivery(TO, ("oncall",), "{preview}", False, notify)
        self._write(partial(messages.ingest, msg=msg, deliveries=(delivery,), now=self.step))
        self.notify[outbox.mail_id_for(msg.message_id, TO)] = notify

    def _target(self, data: st.DataObject) -> str:
        """A mail to act on: most often one that an attempt is under way for, or that
        is being sent (a recall or a drop then is what the table must get right)."""
        sending = sorted(m for m, a in self.live.items() if a.claimed_at is not None)
        among = data.draw(st.sampled_from(["sending", "under way", "any"]))
        if among == "sending" and sending:
            return data.draw(st.sampled_from(sending))
        if among != "any" and self.live:
            return data.draw(st.sampled_from(sorted(self.live)))
        n = data.draw(st.integers(1, self.messages))
        return outbox.mail_id_for(f"om_{n}", TO)

    @rule(data=st.data())
    def recall(self, data: st.DataObject) -> None:
        mail_id = self._target(data)
        message_id = mail_id.split("/")[0]
        before = self._status(mail_id)
        recall = Recall(f"ev_recall_{self._seq()}", message_id, "oc_team", 0)
        self._write(partial(messages.recall, event=recall, now=self.step))
        if before not in ("sent", "cancelled", "dropped"):
            self.ended.setdefault(mail_id, ("recall", self._seq()))
        if self._status(mail_id) == "sent" and self.notify[mail_id]:
            assert self._status(mail_id + "#recall") is not None, "no recall notice"

    # -- the worker ----------------------------------------------------------------------

    def _due(self) -> list[str]:
        return [
            r.mail_id
            for r in self.state.read(partial(outbox.due, now=self.step, limit=100))
            if r.kind == "forward" and r.mail_id not in self.live
        ]

    @rule(data=st.data(), fails=FAILS)
    def round(self, data: st.DataObject, fails: bool) -> None:
        """The worker's round, a second after the last: first what it could not write
        before, then planned mail into the outbox, then due mail taken for attempts."""
        self.step += 1
        if self.unrecorded:
            works = list(self.unrecorded.values())
            self._write(lambda tx: [w(tx) for w in works], fails)
            event(f"unrecorded outcomes written{' (refused again)' if fails else ''}")
            if fails:
                return
            self.unrecorded.clear()
        self._write(partial(outbox.queue_planned, limit=64))
        if due := self._due():
            for mail_id in data.draw(st.lists(st.sampled_from(due), min_size=1, unique=True)):
                self.live[mail_id] = Attempt(mail_id)

    @precondition(lambda self: bool(self.live))
    @rule(
        data=st.data(),
        prepared=st.sampled_from(["ok", "ok", "later", "fail"]),
        reply=st.sampled_from(["250", "4xx", "5xx", "lost after DATA"]),
        relay_kept_it=st.booleans(),
        fails=FAILS,
    )
    def attempt(
        self, data: st.DataObject, prepared: str, reply: str, relay_kept_it: bool, fails: bool
    ) -> None:
        """One attempt under way takes its next step: prepared (and claimed), or sent."""
        attempt = self.live[data.draw(st.sampled_from(sorted(self.live)))]
        if attempt.claimed_at is None:
            self._prepared(attempt, prepared, fails)
        else:
            self._smtp(attempt, reply, relay_kept_it, fails)

    def _prepared(self, attempt: Attempt, outcome: str, fails: bool) -> None:
        if outcome != "ok":
            failure = self._failure(attempt.mail_id, permanent=outcome == "fail")
            self._outcome(attempt.mail_id, failure, fails)
            return
        composed = Prepared("subject", raw=b"Subject: subject\r\n\r\nbody\r\n")
        claim = partial(
            outbox.begin_send, mail_id=attempt.mail_id, me=self.state.instance, prepared=composed
        )
        moved = self._write(claim, fails)
        if moved is None or not moved.done:  # refused, or recalled or dropped meanwhile
            assert fails or attempt.mail_id in self.ended, moved
            event("a claim refused" if fails else f"a claim found the mail {moved.before}")
            self.live.pop(attempt.mail_id)
            return
        assert attempt.mail_id not in self.ended, "claimed after a recall or a drop"
        attempt.claimed_at = self._seq()

    def _smtp(self, attempt: Attempt, reply: str, relay_kept_it: bool, fails: bool) -> None:
        """The relay answers; after "lost after DATA" it may or may not have kept the mail,
        and the worker, which cannot tell, tries again later."""
        assert attempt.claimed_at is not None
        if reply == "250" or (reply == "lost after DATA" and relay_kept_it):
            self.accepted.setdefault(attempt.mail_id, []).append(attempt.claimed_at)
        if reply == "250":
            work: Callable[[Tx], Any] = partial(
                outbox.mark_sent, mail_id=attempt.mail_id, now=self.step
            )
        else:
            work = self._failure(attempt.mail_id, permanent=reply == "5xx")
        self._outcome(attempt.mail_id, work, fails)

    def _failure(self, mail_id: str, permanent: bool) -> Callable[[Tx], Any]:
        if permanent:
            return partial(outbox.mark_failed, mail_id=mail_id, error="550 no")
        return partial(outbox.mark_retry, mail_id=mail_id, next_attempt_at=self.step + 1, error="x")

    @rule(now=st.sampled_from([False, False, False, False, True]))
    def restart(self, now: bool) -> None:
        """Killed and started again: one step in five that pick it (it ends all attempts)."""
        if now:
            self._restart()

    # -- the operator --------------------------------------------------------------------

    def _row_id(self, data: st.DataObject) -> tuple[int, str] | None:
        mail_id = self._target(data)
        row = self.state.read(
            lambda tx: tx.execute("SELECT rowid FROM outbox WHERE mail_id = ?", (mail_id,))
        ).fetchone()
        return None if row is None else (int(row[0]), mail_id)

    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        if (found := self._row_id(data)) is None:
            return
        row_id, mail_id = found
        before = self._status(mail_id)
        moved, _ = self._write(partial(outbox.drop, row_ids=[row_id]))
        assert moved[row_id].done == (before in ("pending", "failed", "sending"))
        if moved[row_id].done:
            self.ended.setdefault(mail_id, ("drop", self._seq()))

    @rule(data=st.data(), every_failed=st.booleans())
    def retry(self, data: st.DataObject, every_failed: bool) -> None:
        if every_failed:
            self._write(partial(outbox.retry_now, row_ids=None, now=self.step))
            return
        if (found := self._row_id(data)) is None:
            return
        row_id, mail_id = found
        before = self._status(mail_id)
        moved = self._write(partial(outbox.retry_now, row_ids=[row_id], now=self.step))
        assert moved[row_id].done == (before in ("pending", "failed")), (before, moved)

    # -- what must always hold -----------------------------------------------------------

    @invariant()
    def every_mail_is_in_one_known_state(self) -> None:
        for mail_id, status, due in self._rows():
            assert status in OUTBOX.states, (mail_id, status)
            if status == "pending":
                assert due is not None, mail_id
            if status in SENDING:  # an attempt under way, or its outcome still to write
                assert mail_id in self.live or mail_id in self.unrecorded, (mail_id, status)
            if status == "sent":
                assert mail_id in self.accepted, f"{mail_id} sent but never accepted"
            if status == "cancelled":
                assert self.ended.get(mail_id, ("",))[0] == "recall", mail_id
            if status == "dropped":
                assert self.ended.get(mail_id, ("",))[0] == "drop", mail_id

    @invariant()
    def a_recall_or_a_drop_is_final(self) -> None:
        """Once recalled or dropped, a mail is at that end, or sent by the attempt that
        was under way (and may still be: its outcome not yet written)."""
        for mail_id, (how, _) in self.ended.items():
            status = self._status(mail_id)
            if how == "recall":
                allowed = {"cancelled", "recalling", "sent"}
            else:
                allowed = {"dropped", "dropping", "sent"}
            assert status in allowed, (mail_id, how, status)

    @invariant()
    def nothing_is_sent_after_a_recall_or_a_drop(self) -> None:
        for mail_id, (_, at) in self.ended.items():
            late = [c for c in self.accepted.get(mail_id, []) if c > at]
            assert not late, f"{mail_id} claimed at {late} after its end at {at}"

    @invariant()
    def a_failed_mail_is_listed_as_failed(self) -> None:
        failed = {m for m, s, _ in self._rows() if s == "failed"}
        listed = self.state.read(partial(outbox.queued, statuses=("failed",)))
        assert failed == {e.mail_id for e in listed if e.kind == "forward"}


def _fast_tmp() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


MailLife.TestCase.settings = settings(
    max_examples=800,
    stateful_step_count=30,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
test_a_mail_s_life = MailLife.TestCase


def test_a_mail_s_life_on_postgresql(postgres: Postgres) -> None:
    """The same machine on PostgreSQL: one database, emptied for each example. A write is
    refused as a busy server refuses it: another session holds the tables locked, and
    the wait for the lock times out. Fewer examples: each costs a few hundred round
    trips to the server."""
    url = postgres.database()
    password = postgres.password_file.read_text().strip()
    State(Path(tempfile.gettempdir()) / "unused.db", url=url, password=password).close()

    class OnPostgres(MailLife):
        def _open(self) -> State:
            state = State(self.dir / "state.db", url=url, password=password)
            if not self.state_opened:
                state.write_now(lambda tx: tx.execute(f"TRUNCATE {', '.join(TABLES)}"))
                self.state_opened = True
            return state

        def _refuse_writes(self, refuse: bool) -> None:
            if refuse:
                blocker.execute("BEGIN")
                blocker.execute(f"LOCK TABLE {', '.join(TABLES)} IN ACCESS EXCLUSIVE MODE")
                self.state.read(lambda tx: tx.execute("SET lock_timeout = '20ms'"))
            else:
                blocker.execute("ROLLBACK")
                self.state.read(lambda tx: tx.execute("SET lock_timeout = '10s'"))

    with postgres.admin(url.rsplit("/", 1)[1]) as blocker:
        run_state_machine_as_test(
            OnPostgres, settings=settings(MailLife.TestCase.settings, max_examples=300)
        )
