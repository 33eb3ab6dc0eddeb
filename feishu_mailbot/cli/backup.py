"""`feishu-mailbot backup FILE`: a copy of the live SQLite state to keep, taken while the
daemon runs. A schema migration is one-way (an older release refuses a newer schema,
exit 78), so this is the step before an upgrade; PostgreSQL has pg_dump for it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from feishu_mailbot.app.database import location
from feishu_mailbot.config.settings import Settings
from feishu_mailbot.core.exits import Exit
from feishu_mailbot.state import StateError, sqlite
from feishu_mailbot.state.schema import SCHEMA_VERSION


def run_backup(settings: Settings, args: argparse.Namespace) -> int:
    where = location(settings)
    if where.url is not None:
        print(
            f"the state is in PostgreSQL ({where.url}): back it up there, e.g. "
            f"pg_dump --format=custom --file={args.file} '{where.url}'",
            file=sys.stderr,
        )
        return Exit.UNAVAILABLE
    target = Path(args.file)
    try:
        size = sqlite.backup(str(where.path), target)
    except StateError as e:
        print(str(e), file=sys.stderr)
        return Exit.UNAVAILABLE
    except PermissionError as e:
        print(f"{e.filename}: permission denied: run it as root or as the feishu-mailbot user",
              file=sys.stderr)  # fmt: skip
        return Exit.NOPERM
    except OSError as e:
        print(f"{target}: cannot write it: {e.strerror or e}", file=sys.stderr)
        return Exit.CANTCREAT
    print(f"wrote {target} (0600, {size / 1e6:.1f} MB, schema {SCHEMA_VERSION}) from {where.path}")
    spool = where.path.parent / "spool"
    waiting = [p for p in spool.iterdir() if p.is_file()] if spool.is_dir() else []
    if waiting:
        print(
            f"{len(waiting)} large mails waiting are files in {spool}, not in the copy: copy "
            "that directory too if they must survive a restore"
        )
    return Exit.OK
