"""`feishu-mailbot [--config PATH] SUBCOMMAND` — exit codes follow sysexits.h."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial
from importlib import import_module

from feishu_mailbot import __version__
from feishu_mailbot.app import logs
from feishu_mailbot.config import load
from feishu_mailbot.config.settings import Settings
from feishu_mailbot.core.exits import Exit

#: Every subcommand once the configuration is loaded: the module and the function that
#: runs it, `f(settings, args)`, imported when used, so `status` (a timer runs it every
#: minute) loads none of the daemon. Those in ON_STATE get the live state too
#: (`f(settings, state, args)`, cli/live.py).
COMMANDS = {
    "run": ("feishu_mailbot.cli.main", "run_daemon"),
    "check-config": ("feishu_mailbot.cli.check", "run_check_config"),
    "doctor": ("feishu_mailbot.cli.doctor", "run_doctor"),
    "send-report": ("feishu_mailbot.cli.daily_report", "run_send_report"),
    "simulate": ("feishu_mailbot.cli.simulate", "run_simulate"),
    "chats": ("feishu_mailbot.cli.chats", "run_chats"),
    "status": ("feishu_mailbot.cli.status", "run_status"),
    "queue": ("feishu_mailbot.cli.queue", "run_queue"),
    "show": ("feishu_mailbot.cli.queue", "run_show"),
    "retry": ("feishu_mailbot.cli.queue", "run_retry"),
    "drop": ("feishu_mailbot.cli.queue", "run_drop"),
    "migrate-state": ("feishu_mailbot.cli.migrate_state", "run_migrate_state"),
    "subscriptions": ("feishu_mailbot.cli.subscriptions", "run_subscriptions"),
    "backup": ("feishu_mailbot.cli.backup", "run_backup"),
}
ON_STATE = frozenset({"status", "queue", "show", "retry", "drop", "subscriptions"})


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="feishu-mailbot",
        description="Forward Feishu (Lark) group messages to email.",
    )
    p.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help=f"configuration file (default: ${load.ENV_PATH} or {load.DEFAULT_PATH})",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    # `--config` after the subcommand too (`feishu-mailbot check-config --config X`), as
    # people type it; unset there, it leaves the one before the subcommand alone.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument(
        "--config", metavar="PATH", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    add = partial(sub.add_parser, parents=[after])
    add("run", help="run the daemon in the foreground (systemd's ExecStart)")
    check = add("check-config", help="validate the configuration")
    check.add_argument(
        "--online",
        action="store_true",
        help="also walk every hop to Feishu and to the relay, as doctor does (sends nothing)",
    )
    doc = add("doctor", help="walk every hop to Feishu and to the relay and name the broken one")
    doc.add_argument(
        "--report", metavar="FILE", help="also write a support bundle (secrets replaced) to FILE"
    )
    rep = add("send-report", help="build the daily-report digest now and queue it")
    rep.add_argument("--date", metavar="YYYY-MM-DD", help="report day (default: the current one)")
    rep.add_argument("--dry-run", action="store_true", help="print the digest, send nothing")
    rep.add_argument("--force", action="store_true", help="send even if already sent that day")
    sim = add("simulate", help="show what a message would trigger, and its email")
    sim.add_argument("--chat", required=True, metavar="CHAT_ID")
    sim.add_argument("--sender", required=True, metavar="OPEN_ID")
    sim.add_argument("text")
    st = add("status", help="connection, events today, the queue, digests, database")
    form = st.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true")
    form.add_argument("--prometheus", action="store_true", help="the Prometheus text format")
    st.add_argument(
        "--output", metavar="FILE", help="write to FILE (atomically, for node-exporter)"
    )
    q = add("queue", help="the mail not yet sent, one line each (like mailq)")
    which = q.add_mutually_exclusive_group()
    which.add_argument(
        "--failed", action="store_true", help="only failed mail, and sent mail that bounced"
    )
    which.add_argument("--pending", action="store_true", help="only mail still to be tried")
    which.add_argument("--quarantined", action="store_true", help="the quarantined events")
    q.add_argument("--json", action="store_true")
    show = add("show", help="headers and text of one queued mail")
    show.add_argument("id", metavar="ID", help="the number `queue` prints, or a MAIL_ID")
    retry = add("retry", help="try mail (or quarantined events) again now")
    retry.add_argument("ids", nargs="*", metavar="ID", help="numbers from `queue`, or MAIL_IDs")
    retry.add_argument("--all-failed", action="store_true", help="every failed mail")
    retry.add_argument("--quarantined", nargs="*", metavar="EVENT", help="quarantined events")
    retry.add_argument("--all-quarantined", action="store_true")
    drop = add("drop", help="remove mail (or quarantined events) for good")
    drop.add_argument("ids", nargs="*", metavar="ID", help="numbers from `queue`, or MAIL_IDs")
    drop.add_argument("--quarantined", nargs="*", metavar="EVENT", help="quarantined events")
    drop.add_argument("--yes", action="store_true", help="really drop them")
    add("chats", help="the chats the bot is in: ids, names, members, allowlisted")
    subs = add("subscriptions", help="who unsubscribed from which rule by mail")
    subs.add_argument(
        "--restore", metavar="ADDRESS", help="send ADDRESS the mail of the rules it left again"
    )
    subs.add_argument("--rule", metavar="NAME", help="with --restore: only this rule")
    back = add("backup", help="copy the live SQLite state to FILE (before an upgrade)")
    back.add_argument("file", metavar="FILE")
    mig = add("migrate-state", help="copy the SQLite state into an empty PostgreSQL database")
    mig.add_argument("--to", required=True, metavar="URL", help="postgresql://user@host/dbname")
    mig.add_argument("--password-file", metavar="FILE", help="the role's password (or ~/.pgpass)")
    imp = add("import-env", help="the old bot's .env as a complete config (stdout)")
    imp.add_argument("env", metavar="PATH", help="the old bot's .env file")
    imp.add_argument(
        "--secrets-dir",
        metavar="DIR",
        help="write the secrets to 0640 files in DIR and refer to them, not inline",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return Exit.USAGE if e.code not in (0, None) else Exit.OK
    if args.command == "import-env":  # before a config exists: it makes one
        from feishu_mailbot.cli.import_env import run_import_env

        return run_import_env(args.env, args.secrets_dir)
    path = args.config or load.default_path()
    try:
        settings = load.load(path)
    except load.ConfigError as e:
        print(f"{e}", file=sys.stderr)
        return Exit.CONFIG
    module, function = COMMANDS[args.command]
    command = getattr(import_module(module), function)
    if args.command in ON_STATE:
        from feishu_mailbot.cli import live

        return live.run(settings, args, command)
    return int(command(settings, args))


def run_daemon(settings: Settings, args: argparse.Namespace) -> int:
    from feishu_mailbot.app import daemon

    logs.setup(settings.log_level)
    return daemon.run(settings)


if __name__ == "__main__":
    sys.exit(main())
