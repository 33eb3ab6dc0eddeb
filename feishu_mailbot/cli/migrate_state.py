"""`feishu-mailbot migrate-state --to URL`: the SQLite state into an empty PostgreSQL.

With the daemon stopped: the copy is one transaction in the target, verified by
counting every table on both sides. Run again after a success it finds the same
counts and says so (exit 0); a target holding anything else is refused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from feishu_mailbot.app.database import location
from feishu_mailbot.config.load import database_url_problem
from feishu_mailbot.config.settings import Settings
from feishu_mailbot.core import status
from feishu_mailbot.core.exits import Exit
from feishu_mailbot.state import DatabaseError, State, StateError, Tx, heartbeat
from feishu_mailbot.state import migrate_state as copying


def _report(found: list[copying.Count]) -> None:
    width = max(len(c.table) for c in found)
    for c in found:
        mark = "" if c.equal else "   <- differs"
        print(f"  {c.table:<{width}}  {c.source:>9}  {c.target:>9}{mark}")


def run_migrate_state(settings: Settings, args: argparse.Namespace) -> int:
    if problem := database_url_problem(args.to):
        print(f"--to: {problem}", file=sys.stderr)
        return Exit.USAGE
    where = location(settings)
    if where.url is not None:
        print(
            f"{settings.path}: database.url is set already: migrate-state copies the SQLite "
            "state of state_dir; run it before adding the database section",
            file=sys.stderr,
        )
        return Exit.USAGE
    password = None
    if args.password_file is not None:
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            print(f"{args.password_file}: cannot read it: {e.strerror or e}", file=sys.stderr)
            return Exit.NOINPUT
    if not where.path.exists():
        print(f"{where.path}: no state database to copy", file=sys.stderr)
        return Exit.NOINPUT
    try:
        source = State(where.path, readonly=True)
    except StateError as e:
        print(str(e), file=sys.stderr)
        return Exit.UNAVAILABLE
    try:
        return _copy(source, args.to, password)
    except StateError as e:
        print(str(e), file=sys.stderr)
        return Exit.UNAVAILABLE
    except DatabaseError as e:
        print(f"{args.to}: {e} (nothing was copied)", file=sys.stderr)
        return Exit.TEMPFAIL
    finally:
        source.close()


def _copy(source: State, url: str, password: str | None) -> int:
    beat = source.read(heartbeat.last)
    if beat is not None and beat.line != "stopped" and time.time() - beat.at < status.STALE_AFTER:
        print(
            f"the daemon is running (pid {beat.pid}): stop it first "
            "(systemctl stop feishu-mailbot), then run migrate-state again",
            file=sys.stderr,
        )
        return Exit.TEMPFAIL
    target = State(source.path, url=url, password=password)  # creates the schema if empty
    try:
        names = source.read(copying.tables)

        def counted() -> list[copying.Count]:
            return source.read(
                lambda s: target.read(lambda t: copying.counts(s, t, names, source.spool))
            )

        before = counted()
        if any(c.target for c in before):
            if all(c.equal for c in before):
                print(f"{url}: already holds this state, the same rows in every table:")
                _report(before)
                return Exit.OK
            full = next(c for c in before if c.target)
            print(
                f"{url}: not empty ({full.table} has {full.target} rows): migrate-state "
                "copies into an empty database only",
                file=sys.stderr,
            )
            return Exit.CANTCREAT

        def copy(t: Tx) -> None:
            from feishu_mailbot.state import postgres

            source.read(lambda s: copying.copy(s, t, names, source.spool))
            assert isinstance(t, postgres.Connection)
            postgres.reset_identities(t)

        target.write_now(copy)
        after = counted()
    finally:
        target.close()
    print(f"copied {source.path} to {url}:")
    print(f"  {'table':<{max(len(c.table) for c in after)}}  {'SQLite':>9}  {'PostgreSQL':>9}")
    _report(after)
    if not all(c.equal for c in after):
        print("the counts differ: do not switch to this database", file=sys.stderr)
        return Exit.SOFTWARE
    print(
        "next: add a database section with this url to the config (its password in "
        "database.password_file), then start the daemon"
    )
    return Exit.OK
