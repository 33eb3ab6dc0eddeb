"""`feishu-mailbot check-config [--online]`: the file checked; online, every hop too."""

from __future__ import annotations

import argparse
import os
import sys

from feishu_mailbot.config import load
from feishu_mailbot.config.settings import Settings


def run_check_config(settings: Settings, args: argparse.Namespace) -> int:
    print(f"{settings.path}: OK ({len(settings.chats)} chats, {len(settings.rules)} rules)")
    for warning in load.warnings(settings):
        print(f"warning: {warning}", file=sys.stderr)
    if not args.online:
        return os.EX_OK
    from feishu_mailbot.cli.doctor import run_doctor  # the network stack, only when asked

    return run_doctor(settings, args)
