"""The exit statuses of every command: sysexits.h's, each with one meaning across
commands, so a script or systemd's RestartPreventExitStatus= can act on the number.
README, the operator guide and feishu-mailbot(8) list the same table (tests/test_docs.py
holds them to it)."""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    OK = 0
    #: The command line: an unknown subcommand or flag, a missing argument, `drop`
    #: without --yes (it then says what it would drop).
    USAGE = 64
    #: What was named is not there or not right: a mail or event that is not in the
    #: queue, import-env's file not UTF-8, `subscriptions --restore` of one who had not left.
    DATAERR = 65
    #: A file to read is missing or unreadable (import-env's .env, migrate-state's source
    #: or password file).
    NOINPUT = 66
    #: Something needed is not there or refused: a hop `doctor` walks, Feishu for
    #: send-report or chats, no state database yet, the PostgreSQL login or schema.
    UNAVAILABLE = 69
    #: migrate-state copied rows whose counts then differ: do not switch.
    SOFTWARE = 70
    #: A file could not be created (a secret, `status --output`, `doctor --report`, a
    #: non-empty migrate-state target).
    CANTCREAT = 73
    #: Try again later: the state database busy or unreachable; the daemon stalled
    #: without a watchdog, or a worker died (systemd starts it again).
    TEMPFAIL = 75
    #: The state database is not readable or writable by this user: run it as root or
    #: as the feishu-mailbot user.
    NOPERM = 77
    #: The configuration is invalid, or Feishu refused the app's credentials: fix it,
    #: systemd does not restart the daemon until then.
    CONFIG = 78
