"""The PostgreSQL engine's own edges, on a real server: login, schema, a lost session."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from feishu_mailbot.state import (
    DatabaseError,
    LoginRefused,
    State,
    StateError,
    Tx,
    Unavailable,
    postgres,
    spool,
)
from feishu_mailbot.state.db import Transaction
from feishu_mailbot.state.messages import Ingest, ingest
from feishu_mailbot.state.schema import SCHEMA_VERSION
from tests.kit import message
from tests.postgres import BOT_PASSWORD, Postgres


def open_state(tmp_path: Path, url: str, **kwargs: object) -> State:
    return State(tmp_path / "unused.db", url=url, password=BOT_PASSWORD, **kwargs)  # type: ignore[arg-type]


def test_a_fresh_database_gets_the_schema_once_even_when_two_instances_start_together(
    tmp_path: Path, postgres: Postgres
) -> None:
    url = postgres.database()
    opened: list[State] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(open_state(tmp_path, url))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(opened) == 2
    a, b = opened
    assert a.write_now(lambda tx: ingest(tx, message(1), (), 1.0)) is Ingest.NEW
    assert b.write_now(lambda tx: ingest(tx, message(1), (), 1.0)) is Ingest.DUPLICATE_EVENT
    assert not (tmp_path / "unused.db").exists()  # SQLite's file is not made
    for s in opened:
        s.close()


def test_a_refused_login_is_a_state_error_without_the_password(
    tmp_path: Path, postgres: Postgres
) -> None:
    url = postgres.database()
    with pytest.raises(LoginRefused) as info:
        State(tmp_path / "x.db", url=url, password="not-the-password")
    assert url in str(info.value) and "refused the login" in str(info.value)
    assert "not-the-password" not in str(info.value)
    assert isinstance(info.value, StateError)  # the daemon's exit 78, no restart
    import asyncio

    from feishu_mailbot.cli.doctor import database_hops
    from feishu_mailbot.config import load
    from tests.config.test_load import GOOD, write

    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    config = write(tmp_path, GOOD + f"database:\n  url: {url}\n  password_file: {wrong}\n")
    hops = asyncio.run(database_hops(load.load(config), time.monotonic() + 10))
    assert [(h.name, h.cause) for h in hops] == [("connect", "db-login")], hops


def test_a_server_that_is_down_is_unavailable_not_a_state_error(tmp_path: Path) -> None:
    with Postgres() as down:
        url = down.database()
        down.stop()
        with pytest.raises(Unavailable) as info:
            open_state(tmp_path, url)
    assert isinstance(info.value, DatabaseError)
    assert "PostgreSQL" in str(info.value)


def test_a_newer_schema_or_a_database_of_another_program_is_refused(
    tmp_path: Path, postgres: Postgres
) -> None:
    url = postgres.database()
    open_state(tmp_path, url).close()
    with postgres.admin(url.rsplit("/", 1)[1]) as db:
        db.execute("UPDATE schema_version SET version = version + 1")
    with pytest.raises(StateError, match="newer than this program understands"):
        open_state(tmp_path, url)

    other = postgres.database()
    with postgres.admin(other.rsplit("/", 1)[1]) as db:
        db.execute("CREATE TABLE invoices (id int)")
    with pytest.raises(StateError, match="give the bot a database of its own"):
        open_state(tmp_path, other)


def _kill_sessions(postgres: Postgres, url: str) -> None:
    """The server ends every session of the bot's database (as a restart would)."""
    with postgres.admin(url.rsplit("/", 1)[1]) as db:
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid != pg_backend_pid()"
        )


def test_a_lost_session_is_made_again_but_never_inside_the_transaction_it_broke(
    tmp_path: Path, postgres: Postgres
) -> None:
    url = postgres.database()
    state = open_state(tmp_path, url)

    def kill_sessions() -> None:
        _kill_sessions(postgres, url)

    # Between statements: the next one simply runs on a new session.
    kill_sessions()
    assert state.write_now(lambda tx: ingest(tx, message(1), (), 1.0)) is Ingest.NEW

    # Inside a transaction: its work is lost, and said so; none of it is committed.
    def broken(tx: object) -> None:
        ingest(tx, message(2), (), 1.0)  # type: ignore[arg-type]
        kill_sessions()
        ingest(tx, message(3), (), 1.0)  # type: ignore[arg-type]

    with pytest.raises(Unavailable):
        state.write_now(broken)
    count = state.read(lambda tx: tx.execute("SELECT count(*) FROM messages").fetchone()[0])
    assert count == 1
    assert state.write_now(lambda tx: ingest(tx, message(2), (), 1.0)) is Ingest.NEW
    state.close()


def test_a_session_lost_inside_a_group_commit_acks_none_of_its_batch(
    tmp_path: Path, postgres: Postgres
) -> None:
    """Three events in one batch, the session lost in the second: the first one's rows
    went with the session, and the third must not commit alone on a new one. All three
    fail (each event is answered 500 and re-pushed), and the next batch runs on a new
    session."""
    import asyncio

    url = postgres.database()
    state = open_state(tmp_path, url)

    def killing(tx: Tx) -> Ingest:
        _kill_sessions(postgres, url)
        return ingest(tx, message(2), (), 1.0)

    async def batch() -> list[object]:
        return await asyncio.gather(
            state.write(lambda tx: ingest(tx, message(1), (), 1.0)),
            state.write(killing),
            state.write(lambda tx: ingest(tx, message(3), (), 1.0)),
            return_exceptions=True,
        )

    outcomes = asyncio.run(batch())
    assert all(isinstance(o, Unavailable) for o in outcomes), outcomes
    assert state.read(lambda tx: tx.execute("SELECT count(*) FROM messages").fetchone()[0]) == 0
    assert asyncio.run(state.write(lambda tx: ingest(tx, message(1), (), 1.0))) is Ingest.NEW
    state.close()


def test_a_value_the_driver_refuses_undoes_only_its_own_unit_of_the_batch(
    tmp_path: Path, postgres: Postgres
) -> None:
    """PostgreSQL's text holds no NUL; psycopg2 refuses such a value before sending.
    The savepoint that went nowhere must still be the one rolled back: the event
    before it in the batch stays stored, as its ack says."""
    import asyncio

    state = open_state(tmp_path, postgres.database())

    async def batch() -> list[object]:
        return await asyncio.gather(
            state.write(lambda tx: ingest(tx, message(1), (), 1.0)),
            state.write(lambda tx: ingest(tx, message(2, sender="ou_\x00"), (), 1.0)),
            state.write(lambda tx: ingest(tx, message(3), (), 1.0)),
            return_exceptions=True,
        )

    first, refused, third = asyncio.run(batch())
    assert first is Ingest.NEW and third is Ingest.NEW, (first, third)
    assert isinstance(refused, DatabaseError) and "NUL" in str(refused), refused
    stored = state.read(lambda tx: tx.execute("SELECT message_id FROM messages").fetchall())
    assert sorted(r[0] for r in stored) == ["om_1", "om_3"]
    state.close()


def test_a_read_only_state_refuses_to_write(tmp_path: Path, postgres: Postgres) -> None:
    url = postgres.database()
    open_state(tmp_path, url).close()
    reader = open_state(tmp_path, url, readonly=True)
    with pytest.raises(DatabaseError):
        reader.write_now(lambda tx: ingest(tx, message(1), (), 1.0))
    assert reader.read(lambda tx: tx.execute("SELECT count(*) FROM messages").fetchone()[0]) == 0
    assert reader.size() > 0 and reader.engine == "postgresql"
    reader.close()


def test_the_daemon_exits_78_for_a_refused_login_and_75_for_a_server_that_is_down(
    tmp_path: Path, postgres: Postgres
) -> None:
    """78: the unit does not restart it, the operator must fix the login; 75: it does."""
    from tests.config.test_load import GOOD, run_cli, write

    (tmp_path / "db.pw").write_text("wrong-password\n")
    url = postgres.database()
    config = write(tmp_path, GOOD + f"state_dir: {tmp_path}\ndatabase:\n  url: {url}\n"
                   "  password_file: db.pw\n")  # fmt: skip
    refused = run_cli("--config", config, "run")
    assert refused.returncode == 78, refused.stderr
    assert "refused the login" in refused.stderr and "wrong-password" not in refused.stderr

    with Postgres() as down:
        other = down.database()
        down.stop()
    config = write(tmp_path, GOOD + f"state_dir: {tmp_path}\ndatabase:\n  url: {other}\n")
    unreachable = run_cli("--config", config, "run")
    assert unreachable.returncode == 75, unreachable.stderr
    assert "database unreachable" in unreachable.stderr
    assert "Traceback" not in refused.stderr + unreachable.stderr


def test_a_host_without_the_driver_is_told_which_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The .deb only Recommends python3-psycopg2 (SQLite needs none): a host configured
    for PostgreSQL without it gets the package's name, from the daemon (exit 78, no
    restart) and from doctor's DB hop, not a traceback."""
    import asyncio
    import subprocess
    import sys

    from feishu_mailbot.cli.doctor import database_hops
    from feishu_mailbot.config import load
    from tests.config.test_load import GOOD, write

    blocked = tmp_path / "blocked" / "psycopg2"  # as on a host without the package
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'psycopg2'\")\n"
    )
    url = "postgresql://bot@127.0.0.1:9/fmb"
    config = write(tmp_path, GOOD + f"state_dir: {tmp_path}\ndatabase:\n  url: {url}\n")
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-m", "feishu_mailbot", "--config", config, "run"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": f"{blocked.parent}:{repo}"},
    )
    assert out.returncode == 78, out.stderr
    assert "apt install python3-psycopg2" in out.stderr and "Traceback" not in out.stderr

    monkeypatch.setitem(sys.modules, "psycopg2", None)  # the same, in this process
    monkeypatch.delitem(sys.modules, "feishu_mailbot.state.postgres")
    monkeypatch.delattr("feishu_mailbot.state.postgres")
    hops = asyncio.run(database_hops(load.load(config), time.monotonic() + 10))
    assert [(h.name, h.cause) for h in hops] == [("connect", "db-driver")], hops
    assert "apt install python3-psycopg2" in hops[0].detail


def test_a_schema_8_database_is_brought_up_to_date_in_place(
    tmp_path: Path, postgres: Postgres
) -> None:
    """Made by the first release with PostgreSQL (no instances, no outbox.owner, no
    spool_chunks, nothing of inbound mail or bounces): every step since runs, in order."""
    url = postgres.database()
    state = open_state(tmp_path, url)
    state.write_now(lambda tx: ingest(tx, message(1), (), 1.0))
    state.close()
    with postgres.admin(url.rsplit("/", 1)[1]) as db:
        db.execute(
            "DROP TABLE instances, locks, spool_chunks, inbound, inbound_cursor, bounces,"
            " unsubscribed, secrets"
        )
        db.execute("ALTER TABLE outbox DROP COLUMN owner, DROP COLUMN header_id")
        db.execute("UPDATE schema_version SET version = 8")
    state = open_state(tmp_path, url)
    assert state.read(lambda tx: tx.execute("SELECT version FROM schema_version").fetchone()) == (
        SCHEMA_VERSION,
    )
    assert state.read(lambda tx: tx.execute("SELECT count(*) FROM messages").fetchone()[0]) == 1
    assert state.read(lambda tx: tx.execute("SELECT owner FROM outbox").fetchall()) == []
    assert state.read(lambda tx: tx.execute("SELECT * FROM spool_chunks").fetchall()) == []
    assert state.read(lambda tx: tx.execute("SELECT header_id FROM outbox").fetchall()) == []
    assert state.read(lambda tx: tx.execute("SELECT * FROM inbound_cursor").fetchall()) == []
    state.close()


def test_statements_that_wait_for_the_next_one_keep_their_meaning(
    tmp_path: Path, postgres: Postgres
) -> None:
    """BEGIN, SAVEPOINT and RELEASE go out with the statement after them, in one simple
    query with its parameters bound by the client: what each returns, a literal %, a
    transaction the server never saw rolled back, and one that fails half-way."""
    state = open_state(tmp_path, postgres.database())

    def work(tx: Tx) -> tuple[object, ...]:
        with Transaction(tx):  # a savepoint, sent with the next statement
            plain = tx.execute("SELECT '100%'").fetchone()[0]
            bound = tx.execute("SELECT '100%' || ?", ("，好",)).fetchone()[0]
        with Transaction(tx):
            stored = ingest(tx, message(1), (), 1.0)
        return plain, bound, stored

    assert state.write_now(work) == ("100%", "100%，好", Ingest.NEW)

    def nothing_sent(tx: Tx) -> None:
        raise ValueError("before any statement")

    with pytest.raises(ValueError):
        state.write_now(nothing_sent)
    assert not state.read(lambda tx: tx.in_transaction)

    def half(tx: Tx) -> None:
        ingest(tx, message(2), (), 1.0)
        tx.execute("SELECT no_such_column FROM messages")

    with pytest.raises(DatabaseError):
        state.write_now(half)
    assert state.read(lambda tx: tx.execute("SELECT count(*) FROM messages").fetchone()[0]) == 1
    state.close()


def test_a_spool_file_reaches_every_instance_through_the_database(
    tmp_path: Path, postgres: Postgres
) -> None:
    """The instance that sends a large mail may not be the one that composed it: the
    file is in spool_chunks too, fetched (by several threads at once) into another
    instance's spool directory, and gone everywhere once removed or swept."""
    url = postgres.database()
    a, b = (State(tmp_path / n / "x.db", url=url, password=BOT_PASSWORD) for n in "ab")
    data = os.urandom(2 * spool.CHUNK + 12345)  # three chunks
    name = a.spool.write("om_1/a@example.com", lambda out: out.write(data))
    assert not b.spool.path(name).exists()
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(b.spool.exists, [name] * 4)) == [True] * 4
    assert b.spool.path(name).read_bytes() == data == b.spool.read(name)
    assert [p.name for p in b.spool.directory.iterdir()] == [name]  # no part left behind
    b.spool.remove(name)
    fresh = State(tmp_path / "c" / "x.db", url=url, password=BOT_PASSWORD)
    assert not fresh.spool.exists(name) and fresh.spool.read(name) is None

    # A file no row names, once old, goes from the database; one a row names stays.
    kept = a.spool.write("digest/oc_team/2026-12-01/1", lambda out: out.write(b"kept"))
    orphan = a.spool.write("om_2/a@example.com", lambda out: out.write(b"orphan"))
    with postgres.admin(url.rsplit("/", 1)[1]) as db:
        db.execute("UPDATE spool_chunks SET created_at = created_at - 7200")
    assert fresh.spool.sweep({kept}, older_than=3600) == 1
    assert fresh.spool.exists(kept) and not State(
        tmp_path / "d" / "x.db", url=url, password=BOT_PASSWORD
    ).spool.exists(orphan)

    # Where the database refuses the bytes, no local file is left to be named either.
    (tmp_path / "e").mkdir()
    reader = State(tmp_path / "e" / "x.db", url=url, password=BOT_PASSWORD, readonly=True)
    with pytest.raises(DatabaseError):
        reader.spool.write("om_3/a@example.com", lambda out: out.write(b"x"))
    assert list(reader.spool.directory.iterdir()) == []
    for state in (a, b, fresh, reader):
        state.close()


def test_a_transaction_whose_begin_never_reached_the_server_fails_as_unavailable(
    tmp_path: Path,
) -> None:
    """The server went away between two batches; the BEGIN and SAVEPOINT that wait for
    the batch's first statement fail with it. When the server is back before the
    savepoint is rolled back, that ROLLBACK TO must not run on a new session, outside
    any transaction (a PostgresError that quarantined the event): unavailable, so
    Feishu re-pushes it."""
    with Postgres() as pg:
        state = open_state(tmp_path, pg.database())
        assert state.write_now(lambda tx: ingest(tx, message(1), (), 1.0)) is Ingest.NEW
        pg.stop()

        def work(tx: Tx) -> None:
            with Transaction(tx):  # an event's savepoint in its batch
                try:
                    ingest(tx, message(2), (), 1.0)
                finally:
                    pg.start()  # back before the savepoint is rolled back

        with pytest.raises(Unavailable):
            state.write_now(work)
        assert state.write_now(lambda tx: ingest(tx, message(2), (), 1.0)) is Ingest.NEW
        state.close()


def test_a_server_that_stops_answering_fails_the_statement_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stopped mid-session (SIGSTOP here; a firewall that starts dropping an
    established connection looks the same): TCP would wait for ever, and the event loop
    with it. The statement fails as unavailable after postgres.ANSWER_TIMEOUT (2 s here,
    15 in the daemon), and the next one, once the server is back, runs on a new session."""
    monkeypatch.setattr(postgres, "ANSWER_TIMEOUT", 2.0)
    with Postgres() as pg:
        state = open_state(tmp_path, pg.database())
        assert state.write_now(lambda tx: ingest(tx, message(1), (), 1.0)) is Ingest.NEW
        stopped = pg.pids()
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            # Its session gave up after 2 s; the one retry (the session died while idle)
            # finds no server to connect to within postgres.CONNECT_TIMEOUT.
            with pytest.raises(
                Unavailable, match=r"did not answer the (statement in 2|connection in 5) s"
            ):
                state.write_now(lambda tx: ingest(tx, message(2), (), 1.0))
            assert time.monotonic() - started < 30  # it returned: the loop is not held
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
        assert state.write_now(lambda tx: ingest(tx, message(2), (), 1.0)) is Ingest.NEW
        state.close()
