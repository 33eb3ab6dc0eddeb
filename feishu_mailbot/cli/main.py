"""`feishu-mailbot [--config PATH] SUBCOMMAND` — exit codes follow sysexits.h."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from importlib import import_module
from pathlib import Path

from feishu_mailbot import __version__
from feishu_mailbot.app import logs
from feishu_mailbot.config import load
from feishu_mailbot.config.settings import Settings

#: The commands on the live state (cli/live.py): module and function, imported when
#: used, so `status` (a timer runs it every minute) loads none of the daemon.
ON_STATE = {
    "status": ("feishu_mailbot.cli.status", "run_status"),
    "queue": ("feishu_mailbot.cli.queue", "run_queue"),
    "show": ("feishu_mailbot.cli.queue", "run_show"),
    "retry": ("feishu_mailbot.cli.queue", "run_retry"),
    "drop": ("feishu_mailbot.cli.queue", "run_drop"),
}


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
    sub.add_parser("run", help="run the daemon in the foreground (systemd's ExecStart)")
    check = sub.add_parser("check-config", help="validate the configuration")
    check.add_argument(
        "--online",
        action="store_true",
        help="also walk every hop to Feishu and to the relay, as doctor does (sends nothing)",
    )
    doc = sub.add_parser(
        "doctor", help="walk every hop to Feishu and to the relay and name the broken one"
    )
    doc.add_argument(
        "--report", metavar="FILE", help="also write a support bundle (secrets replaced) to FILE"
    )
    rep = sub.add_parser("send-report", help="build the daily-report digest now and queue it")
    rep.add_argument("--date", metavar="YYYY-MM-DD", help="report day (default: the current one)")
    rep.add_argument("--dry-run", action="store_true", help="print the digest, send nothing")
    rep.add_argument("--force", action="store_true", help="send even if already sent that day")
    sim = sub.add_parser("simulate", help="show what a message would trigger, and its email")
    sim.add_argument("--chat", required=True, metavar="CHAT_ID")
    sim.add_argument("--sender", required=True, metavar="OPEN_ID")
    sim.add_argument("text")
    st = sub.add_parser("status", help="connection, events today, the queue, digests, database")
    form = st.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true")
    form.add_argument("--prometheus", action="store_true", help="the Prometheus text format")
    st.add_argument(
        "--output", metavar="FILE", help="write to FILE (atomically, for node-exporter)"
    )
    q = sub.add_parser("queue", help="the mail not yet sent, one line each (like mailq)")
    which = q.add_mutually_exclusive_group()
    which.add_argument("--failed", action="store_true", help="only failed mail")
    which.add_argument("--pending", action="store_true", help="only mail still to be tried")
    which.add_argument("--quarantined", action="store_true", help="the quarantined events")
    q.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="headers and text of one queued mail")
    show.add_argument("id", type=int, metavar="ID")
    retry = sub.add_parser("retry", help="try mail (or quarantined events) again now")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="mail ids from `queue`")
    retry.add_argument("--all-failed", action="store_true", help="every failed mail")
    retry.add_argument("--quarantined", nargs="*", metavar="EVENT", help="quarantined events")
    retry.add_argument("--all-quarantined", action="store_true")
    drop = sub.add_parser("drop", help="remove mail (or quarantined events) for good")
    drop.add_argument("ids", nargs="*", type=int, metavar="ID", help="mail ids from `queue`")
    drop.add_argument("--quarantined", nargs="*", metavar="EVENT", help="quarantined events")
    drop.add_argument("--yes", action="store_true", help="really drop them")
    sub.add_parser("chats", help="the chats the bot is in: ids, names, members, allowlisted")
    imp = sub.add_parser("import-env", help="the old bot's .env as a complete config (stdout)")
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
        return os.EX_USAGE if e.code not in (0, None) else os.EX_OK
    if args.command == "import-env":  # before a config exists: it makes one
        return _import_env(args.env, args.secrets_dir)
    path = args.config or load.default_path()
    try:
        settings = load.load(path)
    except load.ConfigError as e:
        print(f"{e}", file=sys.stderr)
        return os.EX_CONFIG
    if args.command == "run":
        from feishu_mailbot.app import daemon

        logs.setup(settings.log_level)
        return daemon.run(settings)
    if args.command == "check-config":
        print(f"{path}: OK ({len(settings.chats)} chats, {len(settings.rules)} rules)")
        for warning in load.warnings(settings):
            print(f"warning: {warning}", file=sys.stderr)
        if not args.online:
            return os.EX_OK
        return _doctor(settings, None)
    if args.command == "doctor":
        return _doctor(settings, args.report)
    if args.command == "send-report":
        return _send_report(settings, args.date, args.dry_run, args.force)
    if args.command == "simulate":
        return _simulate(settings, args.chat, args.sender, args.text)
    if args.command == "chats":
        return _chats(settings)
    if args.command in ON_STATE:
        from feishu_mailbot.cli import live

        module, function = ON_STATE[args.command]
        return live.run(settings, args, getattr(import_module(module), function))
    parser.error(f"unknown subcommand {args.command}")
    return os.EX_USAGE


def _import_env(env_path: str, secrets_dir: str | None) -> int:
    from feishu_mailbot.cli import import_env

    try:
        text = Path(env_path).read_text(encoding="utf-8-sig")  # a BOM would hide the first key
    except OSError as e:
        print(f"{env_path}: cannot read it: {e.strerror or e}", file=sys.stderr)
        return os.EX_NOINPUT
    except UnicodeDecodeError as e:
        print(f"{env_path}: not UTF-8 text: {e.reason} at byte {e.start}", file=sys.stderr)
        return os.EX_DATAERR
    values, problems = import_env.parse(text, env_path)
    folder = os.path.abspath(secrets_dir) if secrets_dir else None
    imported = import_env.convert(values, env_path, folder)
    if folder is not None and imported.secrets:
        written = _write_secrets(folder, imported.secrets)
        if written != os.EX_OK:
            return written
    sys.stdout.write(imported.yaml)
    for note in [*problems, *imported.notes]:
        print(f"note: {note}", file=sys.stderr)
    return os.EX_OK


def _write_secrets(folder: str, secrets: dict[str, str]) -> int:
    """Each secret into a new 0640 file in `folder`: all of them, or none and EX_CANTCREAT.

    Never over an existing file, never through a symlink: the folder is usually
    /etc/feishu-mailbot, where a running bot's secret may be already, and a link
    planted there must neither send a secret elsewhere nor change another file's
    mode. Owner, group and mode are set on the descriptor, not on a path.
    """
    try:
        made = not os.path.isdir(folder)
        os.makedirs(folder, mode=0o750, exist_ok=True)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        print(f"{folder}: cannot keep secrets there: {e.strerror or e}", file=sys.stderr)
        return os.EX_CANTCREAT
    try:
        if made:  # the daemon must get in: group feishu-mailbot, 0750 whatever the umask
            _give_to_group(dir_fd)
            os.fchmod(dir_fd, 0o750)
        return _write_secrets_at(folder, dir_fd, secrets)
    finally:
        os.close(dir_fd)


def _write_secrets_at(folder: str, dir_fd: int, secrets: dict[str, str]) -> int:
    import stat

    refused = []
    for name in secrets:
        try:
            found = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        what = "is a symbolic link" if stat.S_ISLNK(found.st_mode) else "exists already"
        refused.append(f"{os.path.join(folder, name)}: {what}")
    if refused:
        for problem in refused:
            print(
                f"{problem}; import-env writes secrets only to new files (expected no file "
                "there: remove it if it is stale, or choose another --secrets-dir)",
                file=sys.stderr,
            )
        print("nothing written, no config printed", file=sys.stderr)
        return os.EX_CANTCREAT
    created: list[str] = []
    report = []
    try:
        for name, secret in secrets.items():
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
            created.append(name)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                group = _give_to_group(fd)
                os.fchmod(fd, 0o640)
                out.write(secret + "\n")
                out.flush()
                os.fsync(fd)
            report.append(f"wrote {os.path.join(folder, name)} (0640, {group})")
    except OSError as e:
        import contextlib

        for name in created:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
        where = os.path.join(folder, e.filename) if isinstance(e.filename, str) else folder
        print(
            f"{where}: cannot write the secret: {e.strerror or e}; nothing written, "
            "no config printed",
            file=sys.stderr,
        )
        return os.EX_CANTCREAT
    for line in report:
        print(line, file=sys.stderr)
    return os.EX_OK


def _give_to_group(fd: int) -> str:
    """Group feishu-mailbot, as the package sets its config, when it exists; says which."""
    import grp

    try:
        gid = grp.getgrnam("feishu-mailbot").gr_gid
    except KeyError:
        return "no group feishu-mailbot here: chgrp it so the daemon can read it"
    try:
        os.fchown(fd, -1, gid)
    except PermissionError:
        return "not allowed to chgrp it to feishu-mailbot: do so as root"
    return "group feishu-mailbot"


def _chats(settings: Settings) -> int:
    from feishu_mailbot.core.text import terminal
    from feishu_mailbot.feishu.errors import FeishuError
    from feishu_mailbot.feishu.rest import FeishuApi

    async def listing() -> list[tuple[str, str, int | None]]:
        api = FeishuApi(settings.feishu)
        try:
            return await api.chats()
        finally:
            await api.close()

    try:
        found = asyncio.run(listing())
    except FeishuError as e:
        print(f"Feishu: {e}", file=sys.stderr)
        return os.EX_UNAVAILABLE
    if not found:
        print("the bot is in no group chat yet: add it to one in Feishu (群设置 → 群机器人)")
        return os.EX_OK
    print(f"{'CHAT ID':<40}  {'MEMBERS':>7}  {'ALLOWED':<7}  NAME")
    for chat_id, name, members in found:
        allowed = "yes" if settings.chat(chat_id) else "no"
        count = "?" if members is None else str(members)
        shown = terminal(chat_id, one_line=True)  # both come from Feishu, as chat members set them
        print(f"{shown:<40}  {count:>7}  {allowed:<7}  {terminal(name, one_line=True)}")
    missing = [c.id for c in settings.chats if c.id not in {f[0] for f in found}]
    for chat_id in missing:
        print(f"note: {chat_id} is allowlisted but the bot is not in it", file=sys.stderr)
    return os.EX_OK


def _doctor(settings: Settings, report_to: str | None) -> int:
    from feishu_mailbot.cli import doctor

    code, found = doctor.run(settings)
    if report_to is None:
        return code
    from feishu_mailbot.cli import support
    from feishu_mailbot.cli.output import write_atomically
    from feishu_mailbot.cli.status import status_text
    from feishu_mailbot.mail import smtp

    text = support.build(settings, found, status_text(settings), smtp.scrubber(settings.smtp))
    try:
        write_atomically(Path(report_to), text, 0o600)
    except OSError as e:
        print(f"{report_to}: cannot write it: {e.strerror or e}", file=sys.stderr)
        return os.EX_CANTCREAT
    print(f"wrote {report_to} (0600): attach it to a support ticket; it holds no secret")
    return code


def _send_report(settings: Settings, day_text: str | None, dry_run: bool, force: bool) -> int:
    from datetime import date
    from zoneinfo import ZoneInfo

    from feishu_mailbot.app.daemon import db_path
    from feishu_mailbot.compose.daily_report import Reporter
    from feishu_mailbot.compose.names import NameResolver
    from feishu_mailbot.compose.sources import Sources
    from feishu_mailbot.core.daily_report import current_day, kept_days, window_refusal
    from feishu_mailbot.core.text import terminal
    from feishu_mailbot.feishu.errors import FeishuError
    from feishu_mailbot.feishu.rest import FeishuApi
    from feishu_mailbot.state import DatabaseError, State, StateError

    rs = settings.daily_report
    if rs is None:
        print(
            f"{settings.path}: daily_report: not configured (add the section first)",
            file=sys.stderr,
        )
        return os.EX_CONFIG
    today = current_day(time.time(), rs)
    try:
        day = date.fromisoformat(day_text) if day_text else today
    except ValueError:
        print(f"--date {day_text!r}: expected YYYY-MM-DD", file=sys.stderr)
        return os.EX_USAGE
    if day > today:
        # Recording a future day as sent would hold back the schedule until then.
        print(
            f"--date {day}: that report day has not begun yet (today is {today})", file=sys.stderr
        )
        return os.EX_USAGE
    kept = kept_days(settings.retention.messages)
    if window_refusal(day, today, kept):
        print(
            f"--date {day}: reports are kept for {kept} days (retention.messages_days), "
            "so that day's are gone",
            file=sys.stderr,
        )
        return os.EX_USAGE
    path = db_path(settings)
    try:
        present = path.exists()
    except OSError as e:
        reason = e.strerror or str(e)
        print(f"{path}: {reason}: run it as root or as the feishu-mailbot user", file=sys.stderr)
        return os.EX_NOPERM
    if not present:  # reports are there or nowhere; and root must not make the database
        print(
            f"{path}: no state database yet (the daemon makes it when it first runs)",
            file=sys.stderr,
        )
        return os.EX_UNAVAILABLE
    logs.setup(settings.log_level)

    async def build() -> int:
        # A dry run reads and writes nothing, not even the WAL a connection makes.
        state = State(path, readonly=dry_run)
        api = FeishuApi(settings.feishu)
        try:
            names = NameResolver(settings, state, api)
            outcome = await Reporter(Sources(settings, state, api, names)).build(
                day, force=force, dry_run=dry_run
            )
        finally:
            await api.close()
            state.close()
        to = ", ".join(outcome.recipients)
        if outcome.already_at is not None:
            zone = ZoneInfo(rs.timezone)
            when = datetime.fromtimestamp(outcome.already_at, zone).strftime("%H:%M")
            print(
                f"the digest for {day} was already sent at {when} to {to}; "
                "use --force to send it again"
            )
            return os.EX_OK
        print(f"Subject: {terminal(outcome.subject, one_line=True)}\nTo: {to}\n")
        print(terminal(outcome.text))
        if not dry_run:
            print(f"queued for {to}; the running daemon sends it within seconds")
        return os.EX_OK

    try:
        return asyncio.run(build())
    except FeishuError as e:
        print(f"Feishu: {e}", file=sys.stderr)
        return os.EX_UNAVAILABLE
    except StateError as e:
        print(str(e), file=sys.stderr)
        return os.EX_UNAVAILABLE
    except DatabaseError as e:  # busy, or a dry run that met the daemon starting: again
        print(f"{path}: {e} (try again)", file=sys.stderr)
        return os.EX_TEMPFAIL


def _simulate(settings: Settings, chat_id: str, sender: str, text: str) -> int:
    import json
    from zoneinfo import ZoneInfo

    from feishu_mailbot.cli import queue
    from feishu_mailbot.core import triage
    from feishu_mailbot.core.text import terminal
    from feishu_mailbot.feishu import events
    from feishu_mailbot.mail import forward, headers

    payload = {
        "schema": "2.0",
        "header": {"event_id": "ev_simulated", "event_type": "im.message.receive_v1"},
        "event": {
            "sender": {"sender_id": {"open_id": sender}, "sender_type": "user"},
            "message": {
                "message_id": "om_simulated",
                "chat_id": chat_id,
                "chat_type": "group",
                "message_type": "text",
                "create_time": str(int(time.time() * 1000)),
                "content": json.dumps({"text": text}, ensure_ascii=False),
            },
        },
    }
    zone = ZoneInfo(settings.timezone)
    outcome = triage.triage(events.parse_event(payload, zone=zone), settings, bot_open_id="")
    if not isinstance(outcome, triage.Accept):
        print(
            f"chat {terminal(chat_id, one_line=True)} is not in the `chats` allowlist: "
            "the message would be ignored and not stored"
        )
        return os.EX_OK
    for request in outcome.requests:
        print(f"daily report: {request.kind} would be queued for {request.payload['day']}")
    for name in outcome.batches:
        print(f"rule {name}: collected for its next batch digest")
    if not outcome.deliveries:
        if not outcome.batches:
            print("no rule matches: the message would be stored, and no mail sent")
        return os.EX_OK
    chat = settings.chat(chat_id)
    chat_name = (chat.name if chat else None) or chat_id
    for d in outcome.deliveries:
        msg, date = outcome.message, forward.sent_at(outcome.message, ZoneInfo(settings.timezone))
        mail_id = headers.make_message_id("simulated/" + ",".join(d.recipients))
        env = forward.Envelope(
            settings.smtp.sender, d.recipients, chat_name, sender, d.rules, mail_id
        )
        subject = forward.subject_of(msg, d.subject_template, env, date=date)
        email = forward.forward_mail(msg, env, subject=subject, date=date)
        print(f"rules {', '.join(d.rules)} → one mail to {', '.join(d.recipients)}")
        print("-" * 72)
        print(queue.readable(email.render()))
    return os.EX_OK


if __name__ == "__main__":
    sys.exit(main())
