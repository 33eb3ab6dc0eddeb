"""`feishu-mailbot send-report`: a day's daily-report digest built now and queued (or printed)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime

from feishu_mailbot.app import logs
from feishu_mailbot.config.settings import Settings
from feishu_mailbot.core.exits import Exit


def run_send_report(settings: Settings, args: argparse.Namespace) -> int:
    day_text, dry_run, force = args.date, args.dry_run, args.force
    from datetime import date
    from zoneinfo import ZoneInfo

    from feishu_mailbot.app.database import location
    from feishu_mailbot.compose.daily_report import Reporter
    from feishu_mailbot.compose.names import NameResolver
    from feishu_mailbot.compose.sources import Sources
    from feishu_mailbot.core.daily_report import current_day, kept_days, window_refusal
    from feishu_mailbot.core.text import terminal
    from feishu_mailbot.feishu.errors import FeishuError
    from feishu_mailbot.feishu.rest import FeishuApi
    from feishu_mailbot.state import DatabaseError, StateError

    rs = settings.daily_report
    if rs is None:
        print(
            f"{settings.path}: daily_report: not configured (add the section first)",
            file=sys.stderr,
        )
        return Exit.CONFIG
    today = current_day(time.time(), rs)
    try:
        day = date.fromisoformat(day_text) if day_text else today
    except ValueError:
        print(f"--date {day_text!r}: expected YYYY-MM-DD", file=sys.stderr)
        return Exit.USAGE
    if day > today:
        # Recording a future day as sent would hold back the schedule until then.
        print(
            f"--date {day}: that report day has not begun yet (today is {today})", file=sys.stderr
        )
        return Exit.USAGE
    kept = kept_days(settings.retention.messages)
    if window_refusal(day, today, kept):
        print(
            f"--date {day}: reports are kept for {kept} days (retention.messages_days), "
            "so that day's are gone",
            file=sys.stderr,
        )
        return Exit.USAGE
    where = location(settings)
    if where.url is None:  # reports are there or nowhere; and root must not make the file
        path = where.path
        try:
            present = path.exists()
        except OSError as e:
            reason = e.strerror or str(e)
            print(
                f"{path}: {reason}: run it as root or as the feishu-mailbot user", file=sys.stderr
            )
            return Exit.NOPERM
        if not present:
            print(
                f"{path}: no state database yet (the daemon makes it when it first runs)",
                file=sys.stderr,
            )
            return Exit.UNAVAILABLE
    logs.setup(settings.log_level)

    async def build() -> int:
        # A dry run reads and writes nothing, not even the WAL a connection makes.
        state = where.open(readonly=dry_run)
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
            return Exit.OK
        print(f"Subject: {terminal(outcome.subject, one_line=True)}\nTo: {to}\n")
        print(terminal(outcome.text))
        if not dry_run:
            print(f"queued for {to}; the running daemon sends it within seconds")
        return Exit.OK

    try:
        return asyncio.run(build())
    except FeishuError as e:
        print(f"Feishu: {e}", file=sys.stderr)
        return Exit.UNAVAILABLE
    except StateError as e:
        print(str(e), file=sys.stderr)
        return Exit.UNAVAILABLE
    except DatabaseError as e:  # busy, or a dry run that met the daemon starting: again
        print(f"{where}: {e} (try again)", file=sys.stderr)
        return Exit.TEMPFAIL
