"""Logging set-up: journald when systemd captured stderr, a readable line otherwise.

Event lines carry structured fields as upper-case `extra=` keys (CHAT_ID,
MESSAGE_ID, EVENT_ID, RULE, MAIL_ID, and INBOUND_ID for a mail that came in, by its
own Message-ID): JournalHandler turns those into journal
fields as they are, and the stderr format appends them as KEY=value.
"""

from __future__ import annotations

import logging
import os
import sys

FIELDS = ("CHAT_ID", "MESSAGE_ID", "EVENT_ID", "RULE", "MAIL_ID", "INBOUND_ID")
IDENTIFIER = "feishu-mailbot"

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class LineFormatter(logging.Formatter):
    """`LEVEL logger: message KEY=value …`, one line per record even for tracebacks."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = [f"{k}={getattr(record, k)}" for k in FIELDS if hasattr(record, k)]
        if extras:
            text += " " + " ".join(extras)
        if record.exc_info:
            text += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return text


def stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM=dev:ino for the stream it connected stderr to."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup(level: str = "info") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_journal_handler() if stderr_is_journal() else _stderr_handler())
    set_level(level)


def _journal_handler() -> logging.Handler:
    from systemd.journal import JournalHandler

    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=IDENTIFIER)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def _stderr_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    return handler


def set_level(level: str) -> None:
    logging.getLogger().setLevel(LEVELS.get(level, logging.INFO))
    # httpx logs every request at INFO; a request that fails surfaces in our own lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # The SDK is chatty at INFO (every reconnect attempt twice); keep its warnings.
    logging.getLogger("Lark").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
