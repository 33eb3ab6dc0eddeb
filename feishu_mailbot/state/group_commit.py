"""Group commit: the events that arrive together share one transaction and one fsync.

An event may be acknowledged to Feishu only once it is durable, and with
`synchronous=FULL` durability costs an fsync. Committing each event on its own
capped intake at a few hundred events per second. Here every unit of work
submitted during one turn of the loop (the frames read together, the outbox's
bookkeeping) runs in one transaction, each unit in a savepoint of its own, so
one failing event (answered 500, re-pushed by Feishu) does not undo its
neighbours. While one batch commits, the next accumulates in the socket and in
`_pending`, so the batch grows with the load by itself.

The commit runs on the loop, blocking it for the fsync: the designs that moved
it to a thread were measured and were no better (docs/design.md).

A batch is begun, filled and committed inside one loop callback, so the
connection is never left inside a transaction between callbacks: reads on it
(State.read) never see, or join, a batch half done. In the daemon its WAL
checkpoints are not SQLite's automatic ones, which ran inside a commit and
blocked the loop for 4-10 ms: see checkpoint.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from feishu_mailbot.state.checkpoint import Checkpointer
from feishu_mailbot.state.db import Transaction, Tx, rollback

T = TypeVar("T")
_Work = tuple[Callable[[Tx], Any], "asyncio.Future[Any]"]


class GroupCommit:
    def __init__(self, db: Tx, checkpointer: Checkpointer | None) -> None:
        self._db = db
        self._checkpointer = checkpointer
        self._pending: list[_Work] = []
        self._scheduled = False
        self.batches = 0
        self.committed = 0

    async def run(self, work: Callable[[Tx], T]) -> T:
        """Run `work` in the next batch; returns once that batch is committed."""
        return await self._enqueue(work)

    def soon(self, work: Callable[[Tx], object]) -> None:
        """Run `work` in the next batch, for nobody to wait on: best effort, a failure
        is dropped (an announcement to other instances, which poll anyway)."""
        self._enqueue(work).add_done_callback(lambda f: f.cancelled() or f.exception())

    def _enqueue(self, work: Callable[[Tx], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((work, future))
        if not self._scheduled:
            # After the callbacks already queued: the frames read this loop turn join in.
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        try:
            outcomes = self._apply(batch)
            self._db.execute("COMMIT")
        except Exception as e:  # the transaction failed: none of the batch is durable
            rollback(self._db)
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        self.batches += 1
        self.committed += len(batch)
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        checkpointer = self._checkpointer
        if checkpointer is None:
            return
        checkpointer.committed()
        if checkpointer.restart_due:  # queued after the acks this batch releases
            asyncio.get_running_loop().call_soon(checkpointer.restart)

    def _apply(self, batch: list[_Work]) -> list[tuple[bool, Any]]:
        """Run each unit in its own savepoint of one new transaction, left open to commit."""
        outcomes: list[tuple[bool, Any]] = []
        self._db.execute("BEGIN IMMEDIATE")
        for work, _ in batch:
            try:
                with Transaction(self._db):  # a savepoint: a failure undoes only this
                    outcomes.append((True, work(self._db)))
            except Exception as e:
                outcomes.append((False, e))
        return outcomes
