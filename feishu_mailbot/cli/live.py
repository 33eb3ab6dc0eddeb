"""The live state, opened for an operator's command.

Safe while the daemon runs: the commands read and write the database through the
same State as the daemon, in short transactions of their own (SQLite's lock
and busy timeout order them with the daemon's commits). The daemon looks
at its outbox every second and at asked-for quarantine retries too, so a
retry goes out within a second or two.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from feishu_mailbot.app.database import location
from feishu_mailbot.config.settings import Settings
from feishu_mailbot.core.exits import Exit
from feishu_mailbot.state import DatabaseError, State, StateError

Command = Callable[[Settings, State, argparse.Namespace], int]


def open_state(settings: Settings) -> State | int:
    """The state, or the exit code after a one-line reason on stderr."""
    where = location(settings)
    if where.url is None:
        path = where.path
        try:
            path.stat()
        except FileNotFoundError:
            print(
                f"{path}: no state database yet (the daemon makes it when it first runs)",
                file=sys.stderr,
            )
            return Exit.UNAVAILABLE
        except PermissionError:
            pass  # said below
        if not os.access(path, os.R_OK | os.W_OK):
            print(
                f"{path}: permission denied: run it as root or as the feishu-mailbot user",
                file=sys.stderr,
            )
            return Exit.NOPERM
    try:
        return where.open()
    except StateError as e:
        print(str(e), file=sys.stderr)
        return Exit.UNAVAILABLE
    except DatabaseError as e:  # the server is down or refuses: maybe not for long
        print(f"{where}: {e}", file=sys.stderr)
        return Exit.TEMPFAIL


def run(settings: Settings, args: argparse.Namespace, command: Command) -> int:
    """`command` on the opened state; a busy database is a temporary failure (75)."""
    state = open_state(settings)
    if isinstance(state, int):
        return state
    try:
        return command(settings, state, args)
    except DatabaseError as e:
        print(f"{location(settings)}: {e} (the daemon may be busy: try again)", file=sys.stderr)
        return Exit.TEMPFAIL
    finally:
        state.close()
