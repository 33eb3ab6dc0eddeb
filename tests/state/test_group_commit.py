"""Group commit: events submitted together share one transaction; one failure stays its own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from feishu_mailbot.state import DatabaseError, Tx, messages
from feishu_mailbot.state.messages import Ingest
from tests.kit import SQLITE, Backend, message


def seen(tx: Tx, event_id: str) -> bool:
    """Store the event's message; True if it was new (a unit of intake work)."""
    return messages.ingest(tx, message(event_id), (), 1.0) is Ingest.NEW


class Intake:
    """The daemon's side of the state: group-committed writes, checkpoints off the loop."""

    def __init__(self, path: Path, backend: Backend = SQLITE) -> None:
        self.state = backend.state(path, daemon=True)
        self.run = self.state.write
        self.close = self.state.close

    @property
    def batches(self) -> int:
        return self.state.group.batches

    @property
    def committed(self) -> int:
        return self.state.group.committed


def check_seen(path: Path, event_id: str, backend: Backend = SQLITE) -> bool:
    state = backend.state(path)
    try:
        return state.write_now(lambda tx: seen(tx, event_id))
    finally:
        state.close()


def test_a_batch_commits_together_and_a_failure_rolls_back_alone(
    tmp_path: Path, backend: Backend
) -> None:
    intake = Intake(tmp_path / "db.sqlite", backend)

    def failing(s: Tx) -> bool:
        seen(s, "ev_b")
        raise ValueError("handler bug")

    def at_once(s: Tx) -> None:  # before any statement: its savepoint was never sent
        raise ValueError("handler bug")

    def bad_sql(s: Tx) -> None:  # the statement the server refuses, with its savepoint
        seen(s, "ev_d")
        s.execute("SELECT no_such_column FROM events")

    async def main() -> list[object]:
        return await asyncio.gather(
            intake.run(lambda s: seen(s, "ev_a")),
            intake.run(failing),
            intake.run(lambda s: seen(s, "ev_c")),
            intake.run(lambda s: seen(s, "ev_a")),  # same id in the same batch
            intake.run(at_once),
            intake.run(bad_sql),
            intake.run(lambda s: seen(s, "ev_e")),
            return_exceptions=True,
        )

    results = asyncio.run(main())
    assert results[0] is True and results[2] is True and results[3] is False
    assert isinstance(results[1], ValueError) and isinstance(results[4], ValueError)
    assert isinstance(results[5], DatabaseError) and results[6] is True
    assert intake.batches == 1 and intake.committed == 7
    intake.close()
    assert check_seen(tmp_path / "db.sqlite", "ev_b", backend) is True  # rolled back alone
    assert check_seen(tmp_path / "db.sqlite", "ev_a", backend) is False  # committed
    assert check_seen(tmp_path / "db.sqlite", "ev_d", backend) is True  # rolled back alone
    assert check_seen(tmp_path / "db.sqlite", "ev_e", backend) is False


def test_a_failed_commit_fails_every_waiting_event(tmp_path: Path) -> None:
    import sqlite3

    intake = Intake(tmp_path / "db.sqlite")
    blocker = sqlite3.connect(tmp_path / "db.sqlite", timeout=0.1)
    blocker.execute("PRAGMA busy_timeout=0")
    blocker.execute("BEGIN EXCLUSIVE")
    intake.state.read(lambda tx: tx.execute("PRAGMA busy_timeout=100"))

    async def main() -> None:
        await intake.run(lambda s: seen(s, "ev_x"))

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        asyncio.run(main())
    blocker.execute("ROLLBACK")
    blocker.close()
    intake.close()


def test_the_wal_starts_over_under_continuous_load(tmp_path: Path) -> None:
    """Checkpoints run off the loop, yet the WAL must not grow for ever (checkpoint.py)."""
    path = tmp_path / "db.sqlite"
    intake = Intake(path)
    wal = Path(f"{path}-wal")
    sizes = []

    async def main() -> None:
        for n in range(3000):  # one commit each: the most WAL per event
            await intake.run(lambda s, n=n: seen(s, f"ev_{n}"))
            if n % 500 == 499:
                sizes.append(wal.stat().st_size)

    asyncio.run(main())
    assert intake.batches == 3000
    # Without restarts: ≈5 pages (20 kB) a commit, 60 MB. RESTART_EVERY bounds it near 4 MB.
    assert max(sizes) < 12_000_000, sizes
    intake.close()
    assert check_seen(path, "ev_2999") is False and check_seen(path, "ev_0") is False
