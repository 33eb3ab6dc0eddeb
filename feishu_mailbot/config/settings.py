"""The validated configuration as plain frozen data.

Kept apart from config.py (which parses YAML and reports errors) so the pure
core can import the types without pulling in the YAML machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import time
from typing import Literal

import regex


class Secret:
    """A string that refuses to show itself in repr/str, so it cannot leak into logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def address(host: str, port: int) -> str:
    """host:port, an IPv6 literal in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Proxy:
    """An HTTP CONNECT proxy (proxy.py chooses and parses it); its password a Secret, so
    no repr of the settings shows it."""

    host: str
    port: int
    user: str | None = None
    password: Secret | None = None
    source: str = "feishu.proxy"  # where it came from: the config key or the variable

    @property
    def address(self) -> str:
        return address(self.host, self.port)

    def shown(self) -> str:
        """The proxy for a log line or `doctor`: its user, never its password."""
        user = f"{self.user}@" if self.user else ""
        return f"http://{user}{self.address} (from {self.source})"


@dataclass(frozen=True)
class PemBundle:
    """CA certificates from a `*ca_file` key, read when the config is loaded: a file
    that goes away or changes later cannot break (or silently widen) the trust of a
    running daemon; a reload reads it again. `path` is for messages."""

    path: str
    pem: str


@dataclass(frozen=True)
class FeishuSettings:
    app_id: str
    app_secret: Secret
    domain: str = "https://open.feishu.cn"
    proxy: Proxy | None = None  # feishu.proxy (its password from proxy_password_file)
    ca_file: PemBundle | None = None  # trusted for Feishu besides the system's CAs


@dataclass(frozen=True)
class Chat:
    id: str
    name: str | None = None


Security = Literal["starttls", "tls", "none"]


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    security: Security
    sender: str  # the `from` key: an RFC 5322 address, optionally with a display name
    username: str | None = None
    password: Secret | None = None
    timeout: float = 30.0
    retry_initial: float = 5.0  # first retry delay; doubles per attempt, with jitter
    retry_max: float = 600.0
    give_up_after: float = 2 * 24 * 3600.0  # then the mail is marked failed and logged
    # Trusted besides the system's store, as msmtp's tls_trust_file but added, not instead.
    ca_file: PemBundle | None = None
    # SHA-256 of the relay's certificate, AB:CD:… upper-case (msmtp's tls_fingerprint):
    # when set, this certificate and no other, whoever signed it.
    tls_fingerprint: str | None = None


@dataclass(frozen=True)
class ImapSettings:
    """inbound.imap: the bot's own mailbox, where replies to its mail arrive."""

    host: str
    port: int
    security: Security
    username: str
    password: Secret
    mailbox: str = "INBOX"
    timeout: float = 30.0
    ca_file: PemBundle | None = None  # trusted besides the system's CAs, as for SMTP


@dataclass(frozen=True)
class InboundSettings:
    """inbound: replies to the bot's mail, read from its mailbox and posted into the
    Feishu thread of the message the mail forwarded."""

    imap: ImapSettings
    # A mailbox to move a mail into once it is taken; None: it is only flagged \Seen.
    processed: str | None = None
    # The receiving server whose Authentication-Results are believed (RFC 8601
    # authserv-id); None: none is asked for.
    trusted_authserv_id: str | None = None
    # Where replies go (Reply-To): "bot+{token}@example.com" names each mail by a token;
    # None: smtp.from.
    reply_address: str | None = None
    # The envelope sender takes the token too (VERP: a delivery report names its mail):
    # only where the relay accepts a MAIL FROM other than the login (163, QQ do not).
    verp: bool = False


@dataclass(frozen=True)
class Batch:
    """A rule that collects its matches into one digest mail: every `every` seconds
    (boundaries counted from local midnight), or daily at `at`."""

    every: float = 0.0
    at: time | None = None


@dataclass(frozen=True)
class Rule:
    name: str
    to: tuple[str, ...]
    keywords: tuple[str, ...] = ()
    regex: regex.Pattern[str] | None = None  # the regex module: matching takes a timeout
    chats: tuple[str, ...] = ()  # empty: every allowed chat
    subject: str = "[{chat_name}] {sender_name}: {preview}"
    confirm: bool = False  # reply in the chat once the mail is sent
    notify_recall: bool = False  # send a short "recalled" mail if recalled after delivery
    batch: Batch | None = None  # collect matches into digests instead of a mail each


@dataclass(frozen=True)
class HealthSettings:
    # Seconds without a pong or frame from Feishu (or with the event loop blocked)
    # before we stop feeding the watchdog. We ping every stall_after/3 seconds.
    stall_after: float = 90.0
    # How long a reconnect may take before it counts as a stall (and systemd restarts us).
    reconnect_budget: float = 300.0
    # How long a worker with work due may go without progress (a round begun, an item
    # done) before it counts as a stall. Longer than stall_after: one digest with many
    # images, or one mail through a slow relay, may take minutes.
    worker_stall_after: float = 300.0


MB = 1024 * 1024


@dataclass(frozen=True)
class AttachmentSettings:
    """Caps on the files a mail carries, in bytes of the files themselves.

    Feishu takes files up to 100 MB; most relays refuse mail over 25 MB or so
    (and say so in EHLO SIZE, which is honoured too). A file over a cap stays
    in Feishu and the mail names it instead.
    """

    max_file: int = 20 * MB
    max_mail: int = 25 * MB


DAY = 24 * 3600.0


@dataclass(frozen=True)
class RetentionSettings:
    """How long the state keeps what (seconds).

    Feishu re-pushes an unacknowledged event within hours and may replay after a
    reconnect; a message is needed while a digest, supplement, resend or recall
    notice may still be made of it; finished mail keeps only its metadata, for
    an audit trail.
    """

    events: float = 7 * DAY  # dedup keys
    messages: float = 30 * DAY  # also how far back a digest can be asked for
    mail: float = 90 * DAY  # sent, cancelled and failed mail, digest records, quarantine


MATCH_MODES = ("prefix", "all")
SEND_MODES = ("immediate", "manual", "scheduled")
ACKNOWLEDGE_MODES = ("none", "reaction", "reply")


@dataclass(frozen=True)
class RosterMember:
    name: str
    open_id: str


@dataclass(frozen=True)
class ReportSettings:
    """daily_report: which chat's 日报 are collected, and how the digest goes out."""

    chat: str
    recipients: tuple[str, ...]
    match: str = "prefix"  # "prefix" | "all"
    prefixes: tuple[str, ...] = ("日报", "#日报", "【日报】")
    timezone: str = "Asia/Shanghai"  # always Settings.timezone (config.py copies it here)
    # A report posted before the cutoff counts for the previous day (night owls at 01:30).
    cutoff: time = time(4, 0)
    mode: str = "manual"  # "immediate" | "manual" | "scheduled"
    at: time = time(18, 30)
    weekdays: tuple[int, ...] = (0, 1, 2, 3, 4)  # Monday=0, of the report day
    trigger: str = "发送日报"
    resend_trigger: str = "重发日报"
    # open_ids allowed to trigger; empty = roster members, or anyone if there is no roster.
    trigger_users: tuple[str, ...] = ()
    acknowledge: str = "reaction"  # "none" | "reaction" | "reply"
    reaction: str = "OK"
    supplements: bool = True
    roster: tuple[RosterMember, ...] = ()
    subject: str = "日报汇总 {date} · {chat_name} · {submitted}/{expected} 已提交"


@dataclass(frozen=True)
class DatabaseSettings:
    """database: a PostgreSQL shared by every instance; absent, SQLite in state_dir."""

    url: str  # a libpq URL without its password
    password: Secret | None = None  # else libpq's own: ~/.pgpass, PGPASSFILE, a service
    # Seconds after an instance's last renewal before the others take over its mail and
    # the schedule; also the window in which a mail it was sending may go out twice.
    failover_after: float = 30.0


@dataclass(frozen=True)
class Settings:
    path: str
    feishu: FeishuSettings
    chats: tuple[Chat, ...]
    smtp: SmtpSettings
    rules: tuple[Rule, ...] = ()
    health: HealthSettings = field(default_factory=HealthSettings)
    attachments: AttachmentSettings = field(default_factory=AttachmentSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    daily_report: ReportSettings | None = None
    state_dir: str = "/var/lib/feishu-mailbot"
    log_level: str = "info"
    timezone: str = "Asia/Shanghai"  # forwards, digests and simulate show times in it
    database: DatabaseSettings | None = None
    inbound: InboundSettings | None = None

    def chat(self, chat_id: str) -> Chat | None:
        for chat in self.chats:
            if chat.id == chat_id:
                return chat
        return None
