"""Group commit: events submitted together share one transaction; one failure stays its own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from feishu_mailbot.intake import Intake
from feishu_mailbot.store import Store


def test_a_batch_commits_together_and_a_failure_rolls_back_alone(tmp_path: Path) -> None:
    intake = Intake(Store(tmp_path / "db.sqlite"))

    def failing(s: Store) -> bool:
        s.record_event("ev_b", 1.0)
        raise ValueError("handler bug")

    async def main() -> list[object]:
        return await asyncio.gather(
            intake.run(lambda s: s.record_event("ev_a", 1.0)),
            intake.run(failing),
            intake.run(lambda s: s.record_event("ev_c", 1.0)),
            intake.run(lambda s: s.record_event("ev_a", 2.0)),  # same id in the same batch
            return_exceptions=True,
        )

    results = asyncio.run(main())
    assert results[0] is True and results[2] is True and results[3] is False
    assert isinstance(results[1], ValueError)
    assert intake.batches == 1 and intake.committed == 4
    intake.close()
    check = Store(tmp_path / "db.sqlite")
    assert check.record_event("ev_b", 3.0) is True  # rolled back with its savepoint
    assert check.record_event("ev_a", 3.0) is False  # committed
    check.close()


def test_a_failed_commit_fails_every_waiting_event(tmp_path: Path) -> None:
    import sqlite3

    intake = Intake(Store(tmp_path / "db.sqlite"))
    blocker = sqlite3.connect(tmp_path / "db.sqlite", timeout=0.1)
    blocker.execute("PRAGMA busy_timeout=0")
    blocker.execute("BEGIN EXCLUSIVE")
    intake.store._db.execute("PRAGMA busy_timeout=100")

    async def main() -> None:
        await intake.run(lambda s: s.record_event("ev_x", 1.0))

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        asyncio.run(main())
    blocker.execute("ROLLBACK")
    blocker.close()
    intake.close()
