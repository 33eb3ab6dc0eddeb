"""`feishu-mailbot chats`: the group chats the bot is in, their names, and which are allowed."""

from __future__ import annotations

import argparse
import asyncio
import sys

from feishu_mailbot.config.settings import Settings
from feishu_mailbot.core.exits import Exit


def run_chats(settings: Settings, args: argparse.Namespace) -> int:
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
        return Exit.UNAVAILABLE
    if not found:
        print("the bot is in no group chat yet: add it to one in Feishu (群设置 → 群机器人)")
        return Exit.OK
    print(f"{'CHAT ID':<40}  {'MEMBERS':>7}  {'ALLOWED':<7}  NAME")
    for chat_id, name, members in found:
        allowed = "yes" if settings.chat(chat_id) else "no"
        count = "?" if members is None else str(members)
        shown = terminal(chat_id, one_line=True)  # both come from Feishu, as chat members set them
        print(f"{shown:<40}  {count:>7}  {allowed:<7}  {terminal(name, one_line=True)}")
    missing = [c.id for c in settings.chats if c.id not in {f[0] for f in found}]
    for chat_id in missing:
        print(f"note: {chat_id} is allowlisted but the bot is not in it", file=sys.stderr)
    return Exit.OK
