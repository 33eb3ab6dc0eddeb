"""`subscriptions`: who left which rule by mail (List-Unsubscribe), and `--restore`.

The daemon reads the list every few seconds, so a restore takes effect without a
reload; mail that was not sent meanwhile is not sent afterwards.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from functools import partial
from zoneinfo import ZoneInfo

from feishu_mailbot.config.settings import Settings
from feishu_mailbot.core.exits import Exit
from feishu_mailbot.core.text import terminal
from feishu_mailbot.state import State, subscriptions


def run_subscriptions(settings: Settings, state: State, args: argparse.Namespace) -> int:
    if args.rule is not None and args.restore is None:
        print("subscriptions: --rule goes with --restore ADDRESS", file=sys.stderr)
        return Exit.USAGE
    if args.restore is not None:
        back = state.write_now(partial(subscriptions.restore, address=args.restore, rule=args.rule))
        if not back:
            which = f" {args.rule}" if args.rule else " any rule"
            print(f"{args.restore} had not left{which} (see feishu-mailbot subscriptions)",
                  file=sys.stderr)  # fmt: skip
            return Exit.DATAERR
        print(f"{args.restore} gets the mail of {', '.join(back)} again (within a few seconds)")
        return Exit.OK
    left = state.read(subscriptions.listed)
    if not left:
        print("nobody has unsubscribed")
        return Exit.OK
    zone = ZoneInfo(settings.timezone)
    print(f"{'ADDRESS':<32}  {'RULE':<20}  LEFT")
    for entry in left:
        when = datetime.fromtimestamp(entry.at, zone).strftime("%Y-%m-%d %H:%M")
        address = terminal(entry.address, one_line=True)
        print(f"{address:<32}  {terminal(entry.rule, one_line=True):<20}  {when}")
    return Exit.OK
