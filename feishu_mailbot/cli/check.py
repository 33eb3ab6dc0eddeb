"""`feishu-mailbot check-config [--online]`: the file checked; online, every hop too."""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import stat
import sys
from pathlib import Path

from feishu_mailbot.config import load
from feishu_mailbot.config.settings import Settings
from feishu_mailbot.core.exits import Exit

SERVICE_USER = "feishu-mailbot"


def run_check_config(settings: Settings, args: argparse.Namespace) -> int:
    print(f"{settings.path}: OK ({len(settings.chats)} chats, {len(settings.rules)} rules)")
    for warning in [*load.warnings(settings), *unreadable(settings, SERVICE_USER)]:
        print(f"warning: {warning}", file=sys.stderr)
    if not args.online:
        return Exit.OK
    from feishu_mailbot.cli.doctor import run_doctor  # the network stack, only when asked

    return run_doctor(settings, args)


def unreadable(settings: Settings, user: str) -> list[str]:
    """What the service `user` could not read of the config and the files it names, when
    that user exists: root reads everything, so a check run as root says OK to a file the
    daemon will then fail on (exit 78 "Permission denied")."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return []
    groups = {account.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    files = [("the config", Path(settings.path).resolve()), *load.named_files(settings)]
    out = []
    for key, path in files:
        # A link is followed through its own directories, then through its target's.
        blocked = _blocked(path, account.pw_uid, groups) or _blocked(
            path.resolve(), account.pw_uid, groups
        )
        if blocked is not None:
            out.append(f"{key}: {path}: the service user {user} cannot read it: {blocked}")
    return out


def _blocked(path: Path, uid: int, gids: set[int]) -> str | None:
    """Why `uid` (in `gids`) cannot read `path`: the first directory it cannot enter, or
    the file it cannot read, and the command that fixes it; None if it can. Mode bits
    only (an ACL can grant more)."""
    for part in (*reversed(path.parents), path):
        try:
            st = part.stat()
        except OSError as e:
            return f"{part}: {e.strerror}"
        want = "x" if part != path else "r"
        shift = 6 if st.st_uid == uid else 3 if st.st_gid in gids else 0
        bit = (stat.S_IXOTH if want == "x" else stat.S_IROTH) << shift
        if uid != 0 and not st.st_mode & bit:
            owner = _owner(st)
            mode = f"{stat.S_IMODE(st.st_mode):04o}"
            fix = f"chgrp {SERVICE_USER} {part} && chmod g+{want} {part}"
            kind = "directory" if want == "x" else "file"
            return f"the {kind} {part} is {owner} {mode} (run: {fix})"
    return None


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"
