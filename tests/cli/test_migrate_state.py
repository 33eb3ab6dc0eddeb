"""`migrate-state --to URL`: what it refuses, and ids that survive the move.

The full move of a simulated year, then served by the daemon on PostgreSQL, is at
the end of tests/workers/test_housekeeping.py.
"""

from __future__ import annotations

import os
import re
import time
from functools import partial
from pathlib import Path

from feishu_mailbot.core.model import Delivery
from feishu_mailbot.core.status import Beat
from feishu_mailbot.state import State, heartbeat, messages, outbox
from feishu_mailbot.state.outbox import Prepared
from tests.feishu.test_network import run
from tests.harness import write_config
from tests.kit import Backend, message, queued_digest
from tests.postgres import Postgres

TO = Delivery(("oncall@example.com",), ("oncall",), "{preview}", False, False)
PENDING = partial(outbox.queued, statuses=("pending",))


def small_state(tmp_path: Path, mails: int = 3) -> Path:
    """A config and its SQLite state: a few messages, their mail queued, the daemon stopped."""
    config = write_config(tmp_path, feishu_url="http://127.0.0.1:9", smtp_port=9)
    state = State(tmp_path / "state" / "feishu-mailbot.db")
    for n in range(mails):
        state.write_now(partial(messages.ingest, msg=message(n), deliveries=(TO,), now=1.0))
    state.write_now(partial(outbox.queue_planned, limit=mails))
    state.write_now(partial(heartbeat.record, beat=Beat(1, time.time(), False, None, "stopped")))
    state.close()
    return config


def migrate(config: Path, pg: Postgres, url: str) -> tuple[int, str]:
    out = run(config, "migrate-state", "--to", url, "--password-file", str(pg.password_file))
    return out.returncode, out.stdout + out.stderr


def test_the_queue_ids_are_the_same_after_the_move_and_new_ones_follow(
    tmp_path: Path, postgres: Postgres
) -> None:
    """And a large digest's spool file goes into the database, where the instance that
    sends it reads it; a second run finds the same rows and changes nothing."""
    config = small_state(tmp_path)
    sqlite = State(tmp_path / "state" / "feishu-mailbot.db")
    big = os.urandom(300 * 1024)
    name = sqlite.spool.write("digest/oc_team/2026-12-01/1", lambda out: out.write(big))
    digest = Prepared("日报汇总 2026-12-01", spool=name)
    sqlite.write_now(queued_digest(digest, now=2.0))
    before = sorted((e.id, e.mail_id) for e in sqlite.read(PENDING))
    sqlite.close()
    url = postgres.database()
    code, text = migrate(config, postgres, url)
    assert code == 0, text
    assert re.search(r"spool files\s+1\s+1\n", text), text
    moved = Backend(url, postgres.password_file).state(tmp_path / "elsewhere" / "x.db")
    assert sorted((e.id, e.mail_id) for e in moved.read(PENDING)) == before
    assert moved.spool.read(name) == big
    code, text = migrate(config, postgres, url)
    assert code == 0 and "already holds this state" in text, text
    moved.write_now(partial(messages.ingest, msg=message(9), deliveries=(TO,), now=2.0))
    moved.write_now(partial(outbox.queue_planned, limit=5))
    ids = sorted(e.id for e in moved.read(PENDING))
    assert ids == [*(i for i, _ in before), max(i for i, _ in before) + 1]  # no collision
    moved.close()


def test_a_database_with_other_rows_is_refused_and_left_as_it_was(
    tmp_path: Path, postgres: Postgres
) -> None:
    config = small_state(tmp_path)
    url = postgres.database()
    other = Backend(url, postgres.password_file).state(tmp_path / "unused.db")
    other.write_now(partial(messages.ingest, msg=message(42), deliveries=(), now=1.0))
    other.close()
    code, text = migrate(config, postgres, url)
    assert code == 73 and "not empty (events has 1 rows)" in text, text
    kept = Backend(url, postgres.password_file).state(tmp_path / "unused.db")
    assert kept.read(lambda tx: tx.execute("SELECT message_id FROM messages").fetchall()) == [
        ("om_42",)
    ]
    kept.close()


def test_a_running_daemon_or_a_database_already_configured_is_refused(
    tmp_path: Path, postgres: Postgres
) -> None:
    config = small_state(tmp_path)
    state = State(tmp_path / "state" / "feishu-mailbot.db")
    state.write_now(partial(heartbeat.record, beat=Beat(4242, time.time(), True, 1.0, "up")))
    state.close()
    url = postgres.database()
    code, text = migrate(config, postgres, url)
    assert code == 75 and "the daemon is running (pid 4242): stop it first" in text, text

    with_db = config.read_text() + f"database:\n  url: {url}\n"
    config.write_text(with_db)
    code, text = migrate(config, postgres, url)
    assert code == 64 and "database.url is set already" in text, text
    bad = run(config, "migrate-state", "--to", "postgresql://bot:pw@h/db")
    assert bad.returncode == 64 and "holds a password" in bad.stderr
