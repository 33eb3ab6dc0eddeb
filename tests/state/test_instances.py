"""Several instances on one state: claims that never overlap, leases that run out.

Two `State`s on the same database play two daemons (their `instance` ids told
apart as two hosts would be); time is passed in, as the workers pass their clock.
"""

from __future__ import annotations

import asyncio
import threading
from functools import partial
from pathlib import Path

import pytest

from feishu_mailbot.core.model import Delivery
from feishu_mailbot.state import State, Tx, Unavailable, instances, messages, outbox
from tests.kit import Backend, message, until
from tests.postgres import Postgres

TO = Delivery(("oncall@example.com",), ("oncall",), "{preview}", False, False)
T0 = 1_800_000_000.0


def two(backend: Backend, tmp_path: Path) -> tuple[State, State]:
    a, b = backend.state(tmp_path / "db.sqlite"), backend.state(tmp_path / "db.sqlite")
    a.instance, b.instance = "host-a:100", "host-b:200"
    for s, host in ((a, "host-a"), (b, "host-b")):
        me = instances.Instance(s.instance, host, 1, "test", T0, T0, T0)
        s.write_now(partial(instances.renew, me=me, now=T0))
    return a, b


def queue(state: State, count: int) -> None:
    for n in range(count):
        state.write_now(partial(messages.ingest, msg=message(n), deliveries=(TO,), now=T0))
    state.write_now(partial(outbox.queue_planned, limit=count))


def renew(state: State, now: float) -> None:
    host = state.instance.split(":")[0]
    me = instances.Instance(state.instance, host, 1, "test", T0, now, now)
    state.write_now(partial(instances.renew, me=me, now=now))


def test_two_instances_never_claim_the_same_mail(tmp_path: Path, backend: Backend) -> None:
    a, b = two(backend, tmp_path)
    queue(a, 10)

    def claim(state: State, limit: int) -> set[str]:
        rows = state.write_now(
            partial(outbox.claim_due, me=state.instance, now=T0 + 1, limit=limit)
        )
        return {r.mail_id for r in rows}

    first_a, first_b = claim(a, 3), claim(b, 3)
    assert len(first_a) == len(first_b) == 3 and not first_a & first_b
    # A round takes again what it holds and had not begun, and what nobody holds;
    # never what the other, alive, holds.
    rest_a = claim(a, 50)
    assert first_a < rest_a and not rest_a & first_b and len(rest_a) == 7
    assert claim(b, 50) == first_b
    a.close()
    b.close()


def test_the_mail_another_instance_holds_does_not_hide_the_rest_of_the_queue(
    tmp_path: Path, backend: Backend
) -> None:
    """The outbox worker looks (`due`) before it claims: a look that counted the other's
    mail saw a full round and queued nothing more, and the second instance sat idle
    while the first drained the whole queue alone."""
    a, b = two(backend, tmp_path)
    queue(a, 5)
    held = a.write_now(partial(outbox.claim_due, me=a.instance, now=T0 + 1, limit=2))
    free = {r.mail_id for r in b.read(partial(outbox.due, now=T0 + 1, me=b.instance))}
    assert len(free) == 3 and not free & {r.mail_id for r in held}
    mine = a.read(partial(outbox.due, now=T0 + 1, me=a.instance))
    assert len(mine) == 5  # what it holds and had not begun, and the rest
    assert len(b.read(partial(outbox.due, now=T0 + 1))) == 5  # a look at all of it
    # Once a holds it all, b has nothing due: it waits for a wake-up or its poll, not
    # round after round at once.
    a.write_now(partial(outbox.claim_due, me=a.instance, now=T0 + 1, limit=50))
    assert b.read(partial(outbox.next_due_at, me=b.instance, now=T0 + 1)) is None
    assert b.read(partial(outbox.next_due_at, me=a.instance, now=T0 + 1)) == T0
    assert b.read(outbox.next_due_at) == T0
    a.close()
    b.close()


def test_mail_of_an_instance_that_is_gone_is_taken_over_after_its_lease(
    tmp_path: Path, backend: Backend
) -> None:
    a, b = two(backend, tmp_path)
    queue(a, 2)
    [first, second] = a.write_now(partial(outbox.claim_due, me=a.instance, now=T0 + 1))
    assert a.write_now(partial(outbox.begin_send, mail_id=first.mail_id, me=a.instance)).done
    # a is killed: it renews no more. While its lease runs, b leaves its mail alone.
    renew(b, T0 + 20)
    assert not b.read(partial(outbox.orphaned, me=b.instance, now=T0 + 20))
    assert b.write_now(partial(outbox.requeue_interrupted, me=b.instance, now=T0 + 20)) == []
    assert b.write_now(partial(outbox.claim_due, me=b.instance, now=T0 + 20)) == []
    # Once it has run out, b sends both: the one a was sending, at least once.
    later = T0 + instances.LEASE + 5
    renew(b, later)
    assert b.read(partial(outbox.orphaned, me=b.instance, now=later))
    requeued = b.write_now(partial(outbox.requeue_interrupted, me=b.instance, now=later))
    assert [(m.key, m.before, m.after) for m in requeued] == [(first.mail_id, "sending", "pending")]
    taken = b.write_now(partial(outbox.claim_due, me=b.instance, now=later))
    assert {r.mail_id for r in taken} == {first.mail_id, second.mail_id}
    a.close()
    b.close()


def test_the_schedule_lock_moves_only_when_its_holder_is_gone(
    tmp_path: Path, backend: Backend
) -> None:
    a, b = two(backend, tmp_path)

    def acquire(state: State, now: float) -> bool:
        return state.write_now(
            partial(instances.acquire, name=instances.SCHEDULE, me=state.instance, now=now)
        )

    assert acquire(a, T0) and not acquire(b, T0 + 1)
    assert acquire(a, T0 + 10) and not acquire(b, T0 + 11)  # a renews: it keeps it
    assert a.read(partial(instances.holder, name=instances.SCHEDULE, now=T0 + 12)) == a.instance
    gone = T0 + 10 + instances.LEASE + 1  # a stopped renewing
    assert acquire(b, gone) and not acquire(a, gone + 1)
    # A clean stop lets go at once.
    b.write_now(partial(instances.retire, me=b.instance))
    assert acquire(a, gone + 2)
    assert [i.id for i in a.read(instances.listed)] == [a.instance]
    a.close()
    b.close()


def test_claimers_on_postgresql_skip_each_other_s_rows_instead_of_waiting(
    tmp_path: Path, postgres: Postgres
) -> None:
    """FOR UPDATE SKIP LOCKED: while a's claim is not committed yet, b takes the next
    rows at once (a short lock_timeout would fail it if it waited)."""
    backend = Backend(postgres.database(), postgres.password_file)
    a, b = two(backend, tmp_path)
    queue(a, 6)
    b.read(lambda tx: tx.execute("SET lock_timeout = '1s'"))
    a_rows: list[str] = []
    b_rows: list[str] = []
    a_claimed, b_done = threading.Event(), threading.Event()

    def a_claims(tx: Tx) -> None:
        a_rows.extend(r.mail_id for r in outbox.claim_due(tx, a.instance, T0 + 1, 3))
        a_claimed.set()
        assert b_done.wait(10)  # hold the transaction open until b has claimed

    thread = threading.Thread(target=a.write_now, args=(a_claims,))
    thread.start()
    assert a_claimed.wait(10)
    b_rows.extend(
        r.mail_id
        for r in b.write_now(partial(outbox.claim_due, me=b.instance, now=T0 + 1, limit=3))
    )
    b_done.set()
    thread.join()
    assert len(a_rows) == 3 and len(b_rows) == 3
    assert not set(a_rows) & set(b_rows)
    a.close()
    b.close()


def test_a_claim_without_skip_locked_would_wait(tmp_path: Path, postgres: Postgres) -> None:
    """The control for the test above: the same rows taken FOR UPDATE by a, without
    SKIP LOCKED, make b wait for the lock and time out."""
    backend = Backend(postgres.database(), postgres.password_file)
    a, b = two(backend, tmp_path)
    queue(a, 2)
    b.read(lambda tx: tx.execute("SET lock_timeout = '200ms'"))
    locked, release = threading.Event(), threading.Event()

    def a_locks(tx: Tx) -> None:
        tx.execute("SELECT mail_id FROM outbox FOR UPDATE").fetchall()
        locked.set()
        assert release.wait(10)

    thread = threading.Thread(target=a.write_now, args=(a_locks,))
    thread.start()
    assert locked.wait(10)
    with pytest.raises(Unavailable):
        b.write_now(lambda tx: tx.execute("UPDATE outbox SET owner = 'x'"))
    # ... while the claim skips what a holds, and finds nothing else.
    assert b.write_now(partial(outbox.claim_due, me=b.instance, now=T0 + 1)) == []
    release.set()
    thread.join()
    a.close()
    b.close()


def test_an_instance_hears_the_work_another_announces_but_not_its_own(
    tmp_path: Path, postgres: Postgres
) -> None:
    backend = Backend(postgres.database(), postgres.password_file)
    a, b = two(backend, tmp_path)
    heard: dict[str, list[str]] = {"a": [], "b": []}

    async def main() -> None:
        listeners = []
        for state, name in ((a, "a"), (b, "b")):
            ears = heard[name]
            coroutine = state.listener(
                {"outbox": partial(ears.append, "outbox"), "actions": partial(ears.append, "a")}
            )
            assert coroutine is not None
            listeners.append(asyncio.create_task(coroutine))
        await until(lambda: heard["a"] and heard["b"], what="both listening")
        for ears in heard.values():
            ears.clear()  # the wake-up every (re)connect gives
        a.announce("outbox")
        await until(lambda: heard["b"] == ["outbox"], what="b hearing a's mail")
        await asyncio.sleep(0.3)
        assert heard["a"] == []  # its own announcement wakes nobody twice
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)

    asyncio.run(main())
    assert Backend().state(tmp_path / "sqlite.db").listener({}) is None  # nobody else
    a.close()
    b.close()
