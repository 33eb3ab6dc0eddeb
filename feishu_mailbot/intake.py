"""Group commit: the events that arrive together share one transaction, off the loop.

An event may be acknowledged to Feishu only once it is durable, and with
`synchronous=FULL` durability costs an fsync. One fsync per event on the event
loop capped intake at a few hundred events per second and put the disk's
latency into every ack and every heartbeat. Here the work of all events
waiting at a moment is committed together, in a worker thread with its own
SQLite connection, while the loop goes on receiving; each event's work runs in
a savepoint, so one failing event (answered 500, re-pushed by Feishu) does not
undo its neighbours.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from feishu_mailbot.store import Store

T = TypeVar("T")
_Work = tuple[Callable[[Store], Any], "asyncio.Future[Any]"]


class Intake:
    def __init__(self, store: Store) -> None:
        self.store = store
        # A thread of its own: commits must never queue behind slow SMTP sessions or
        # mail composing in the shared default executor, and SQLite likes one thread.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intake")
        self._pending: list[_Work] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0
        self.committed = 0

    async def run(self, work: Callable[[Store], T]) -> T:
        """Run `work` in the next batch; returns once that batch is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((work, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                loop = asyncio.get_running_loop()
                outcomes = await loop.run_in_executor(self._thread, self._commit, batch)
            except Exception as e:  # the commit itself failed: none of the batch is durable
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches += 1
            self.committed += len(batch)
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _commit(self, batch: list[_Work]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        with self.store.transaction():
            for work, _ in batch:
                try:
                    with self.store.transaction():  # a savepoint: a failure undoes only this
                        outcomes.append((True, work(self.store)))
                except Exception as e:
                    outcomes.append((False, e))
        return outcomes

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.store.close()
