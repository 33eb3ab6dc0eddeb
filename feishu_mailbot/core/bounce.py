"""Delivery reports (bounces): which recipients of a mail of ours could not be reached,
and what the remote server said.

The relay accepts a mail and only later learns that an address is gone; the
report comes back to the envelope sender, which is the bot's mailbox when
`inbound:` reads it. A standard report (RFC 3464) names each recipient with an
Action and a Status; the others (qmail, some Exchange and Chinese providers)
are prose, in which the bot looks for the mail's own recipients only. A report
changes nothing but what `queue --failed` and `status` say, so it needs no
authentication: a forged one can at worst mark an address bounced.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from feishu_mailbot.core.addresses import bare_set
from feishu_mailbot.core.text import single_line

MAX_DIAGNOSTIC = 300  # characters of the remote server's words kept


@dataclass(frozen=True)
class Failure:
    """One recipient the report says was not reached."""

    address: str  # lower case
    status: str  # RFC 3463's 5.1.1, or "" when the report gives none
    diagnostic: str  # the remote server's words, one line


@dataclass(frozen=True)
class Report:
    """A delivery report as plain data (mail/bounce.py reads it from the bytes)."""

    failures: tuple[Failure, ...]  # per recipient, when it is a standard one
    returned_ids: tuple[str, ...]  # Message-IDs (without <>) of the mail it returns
    text: str  # its human-readable part, where a non-standard one says who failed
    standard: bool  # RFC 3464: `failures` is complete, `text` is not searched


# Senders and subjects of the reports servers send without RFC 3464.
_DAEMON = re.compile(r"^(?:mailer-daemon|postmaster|mail-daemon|mailerdaemon)@", re.IGNORECASE)
_SUBJECT = re.compile(
    r"(?:Undeliver(?:ed|able)|Delivery\s+(?:Status\s+Notification\s*\(Failure\)|failure|"
    r"has\s+failed)|Returned\s+mail|failure\s+notice|Mail\s+delivery\s+failed|"
    r"系统退信|退信|投递失败|未能送达|无法投递|邮件被退回)",
    re.IGNORECASE,
)
_STATUS = re.compile(r"\b([45]\.\d{1,3}\.\d{1,3})\b")


def looks_like_report(
    from_address: str, subject: str, headers: Mapping[str, Sequence[str]]
) -> bool:
    """A report without RFC 3464's form: from a mail daemon, or with an empty
    Return-Path, and a subject that says so."""
    return_path = next(iter(headers.get("return-path", ())), "").strip()
    daemon = bool(_DAEMON.match(from_address)) or return_path == "<>"
    return daemon and bool(_SUBJECT.search(subject))


# Where a prose report starts quoting the mail it returns: its To: line names every
# recipient, not only those that failed.
_QUOTED = re.compile(
    r"^\s*(?:-{2,}.*(?:copy|original|returned|原邮件|原始邮件|退回的邮件).*"
    r"|(?:Return-Path|Received|From|To|Cc|Subject|Date|Message-ID)\s*:.*)$",
    re.IGNORECASE,
)


def failed(report: Report, recipients: Sequence[str]) -> tuple[Failure, ...]:
    """The recipients of our mail (`recipients`) that `report` says were not reached.

    A standard report names them; any other address in it (an alias it expanded to,
    a recipient of another mail) is not ours to mark. A non-standard one is searched,
    up to where it quotes the returned mail, for each recipient's whole address, and
    the line naming it is the diagnostic.
    """
    ours = bare_set(recipients)
    if report.standard:
        seen = {f.address: f for f in report.failures if f.address in ours}
        return tuple(seen.values())
    lines = report.text.splitlines()
    end = next((i for i, line in enumerate(lines) if _QUOTED.match(line)), len(lines))
    lines = lines[:end]
    out: list[Failure] = []
    for address in sorted(ours):
        whole = re.compile(rf"(?<![\w.+-]){re.escape(address)}(?![\w.-])", re.IGNORECASE)
        said = [i for i, line in enumerate(lines) if whole.search(line)]
        if not said:
            continue
        # The address's line and the next: qmail writes "<a@b>:" then the reply.
        words = single_line(" ".join(lines[said[0] : said[0] + 2]))
        status = _STATUS.search(words)
        out.append(Failure(address, status.group(1) if status else "", words[:MAX_DIAGNOSTIC]))
    return tuple(out)


def status_of(text: str) -> str:
    """An RFC 3463 status as a report states it ("5.1.1", "5.1.1 (bad mailbox)"), or
    "" for anything else: a report is anyone's text, and this is stored."""
    found = _STATUS.match(text.strip())
    return found.group(1) if found else ""


def describe(failure: Failure) -> str:
    """How the journal, `queue --failed` and `show` say it."""
    status = f"{failure.status} " if failure.status else ""
    return f"{failure.address}: {status}{failure.diagnostic or 'no reason given'}".rstrip()
