"""Where the configured state is: the one reading of `database:` and `state_dir`.

Light on purpose: every operator command opens the state through it, and none
of them should import the daemon for that.
"""

from __future__ import annotations

from pathlib import Path

from feishu_mailbot.config.settings import Settings
from feishu_mailbot.state import Location


def location(settings: Settings) -> Location:
    """`database.url` (PostgreSQL), or SQLite in `state_dir`."""
    db = settings.database
    if db is None:
        return Location(Path(settings.state_dir))
    password = None if db.password is None else db.password.reveal()
    return Location(Path(settings.state_dir), db.url, password)
