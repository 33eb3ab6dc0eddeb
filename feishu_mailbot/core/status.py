"""What an operator asks first (`status`, the STATUS= line), as text, JSON or Prometheus.

`Snapshot` is read from the state by the command (cli/status.py); here it only
becomes words. The daemon records a `Beat` every few seconds (state/heartbeat.py),
so an old one means the daemon is not running, or hung.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from feishu_mailbot.core.text import terminal, terminal_json

# What became of mail that came in (state/inbound.py's outcomes).
INBOUND_OUTCOMES = ("posted", "refused", "failed", "report", "unsubscribed")
STALE_AFTER = 30.0  # seconds without a heartbeat: the daemon is not running (or hung)


@dataclass(frozen=True)
class Beat:
    """What the running daemon last said about itself, for `status` in another process."""

    pid: int
    at: float  # wall clock of the last record
    connected: bool
    since: float | None  # wall clock: connected (or trying to) since
    line: str  # the STATUS= line systemd shows


@dataclass(frozen=True)
class LastDigest:
    chat_id: str
    day: str
    kind: str
    queued_at: float


@dataclass(frozen=True)
class Member:
    """An instance sharing the state, as `status` shows it."""

    host: str
    pid: int
    version: str
    seen_at: float
    alive: bool  # its lease has not run out
    leads: bool  # holds the schedule lock


@dataclass(frozen=True)
class Snapshot:
    now: float
    beat: Beat | None
    events_today: int
    queue: dict[str, int]  # pending, retrying, sending, failed
    oldest_waiting_at: float | None
    next_retry: tuple[float, str] | None  # (when, last error) of the soonest retry
    digests: tuple[LastDigest, ...]
    quarantined: int
    db_bytes: int
    engine: str = "sqlite"
    members: tuple[Member, ...] = ()
    inbound: dict[str, int] | None = None  # mail in, by outcome; None: `inbound:` not set
    bounced_week: int = 0  # recipients a delivery report came back for, in 7 days


def running(s: Snapshot) -> bool:
    return s.beat is not None and s.beat.line != "stopped" and s.now - s.beat.at < STALE_AFTER


def today_began(now: float, timezone: str) -> float:
    """Midnight in the team's zone: where "events today" start counting."""
    local = datetime.fromtimestamp(now, ZoneInfo(timezone))
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def duration(seconds: float) -> str:
    """`42s`, `17m`, `3h05m`, `2.5d`: for the STATUS= line and for `status`."""
    seconds = max(0.0, seconds)
    minutes = int(seconds // 60)
    if minutes < 1:
        return f"{int(seconds)}s"
    hours, minutes = divmod(minutes, 60)
    if hours >= 48:
        return f"{seconds / 86400:.1f}d"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def text(s: Snapshot) -> str:
    if s.beat is None:
        daemon = "daemon: never ran with this state directory"
    elif running(s):
        daemon = f"daemon: running (pid {s.beat.pid}): {terminal(s.beat.line, one_line=True)}"
    elif s.beat.line == "stopped":
        daemon = f"daemon: stopped {duration(s.now - s.beat.at)} ago"
    else:
        daemon = (
            f"daemon: NOT RUNNING or hung: last heard {duration(s.now - s.beat.at)} ago "
            f"({terminal(s.beat.line, one_line=True)}); see systemctl status feishu-mailbot"
        )
    q = s.queue
    lines = [
        daemon,
        f"events today: {s.events_today}",
        f"mail: {q['pending']} pending, {q['retrying']} retrying, {q['sending']} sending, "
        f"{q['failed']} failed" + (" (feishu-mailbot queue --failed)" if q["failed"] else ""),
    ]
    if s.oldest_waiting_at is not None:
        lines.append(f"oldest waiting mail: queued {duration(s.now - s.oldest_waiting_at)} ago")
    if s.next_retry is not None:
        at, error = s.next_retry
        lines.append(f"next retry in {duration(at - s.now)}: {terminal(error, one_line=True)}")
    for d in s.digests:
        chat = terminal(d.chat_id, one_line=True)
        lines.append(f"last {d.kind} for {chat}: {d.day}, {duration(s.now - d.queued_at)} ago")
    if s.bounced_week:
        lines.append(
            f"bounced recipients in 7 days: {s.bounced_week} (feishu-mailbot queue --failed)"
        )
    if s.inbound is not None:
        n = s.inbound
        lines.append(
            f"mail in: {n.get('posted', 0)} replies posted, {n.get('refused', 0)} refused, "
            f"{n.get('failed', 0)} failed, {n.get('report', 0)} delivery reports, "
            f"{n.get('unsubscribed', 0)} unsubscribed"
        )
    if s.quarantined:
        lines.append(f"quarantined events: {s.quarantined} (feishu-mailbot queue --quarantined)")
    alive = [m for m in s.members if m.alive]
    if len(s.members) > 1 or s.engine != "sqlite":
        lines.append(f"instances: {len(alive)} running")
        for m in s.members:
            state = "runs the schedule" if m.leads else "" if m.alive else "gone"
            lines.append(
                f"  {terminal(m.host, one_line=True)} pid {m.pid} ({m.version}): last seen "
                f"{duration(s.now - m.seen_at)} ago" + (f", {state}" if state else "")
            )
    lines.append(f"database: {s.engine}, {s.db_bytes / 1e6:.1f} MB")
    return "\n".join(lines)


def as_json(s: Snapshot) -> str:
    data: dict[str, Any] = {
        "running": running(s),
        "pid": s.beat.pid if s.beat else None,
        "connected": bool(s.beat and s.beat.connected and running(s)),
        "connected_since": s.beat.since if s.beat and s.beat.connected else None,
        "status": s.beat.line if s.beat else None,
        "heartbeat_age_s": round(s.now - s.beat.at, 1) if s.beat else None,
        "events_today": s.events_today,
        "mail": s.queue,
        "oldest_waiting_age_s": (
            None if s.oldest_waiting_at is None else round(s.now - s.oldest_waiting_at, 1)
        ),
        "next_retry": (
            None if s.next_retry is None else {"at": s.next_retry[0], "last_error": s.next_retry[1]}
        ),
        "last_digests": [d.__dict__ for d in s.digests],
        "quarantined": s.quarantined,
        "bounced_week": s.bounced_week,
        "mail_in": s.inbound,
        "database_bytes": s.db_bytes,
        "database_engine": s.engine,
        "instances": [
            {
                "host": m.host,
                "pid": m.pid,
                "version": m.version,
                "last_seen_age_s": round(s.now - m.seen_at, 1),
                "alive": m.alive,
                "schedule": m.leads,
            }
            for m in s.members
        ],
    }
    return terminal_json(data)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample(value: float) -> str:
    """A sample value with every digit: counts and bytes as integers, times as `repr`.

    `%g` keeps six significant digits: a digest queued at 1796112345.678 came out as
    1.79611e+09, an hour off, and a 1,314,816-byte database as 1.31482e+06. The text
    format reads Go's float syntax, which `repr` (shortest round-trip) writes.
    """
    return str(value) if isinstance(value, int) else repr(float(value))


def prometheus(s: Snapshot) -> str:
    """The Prometheus text exposition format, for node-exporter's textfile collector."""
    out: list[str] = []

    def metric(name: str, help_: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP feishu_mailbot_{name} {help_}")
        out.append(f"# TYPE feishu_mailbot_{name} gauge")
        out.extend(f"feishu_mailbot_{name}{labels} {_sample(value)}" for labels, value in samples)

    up = running(s)
    metric("up", "1 if the daemon recorded its status in the last 30 s.", [("", int(up))])
    connected = int(bool(up and s.beat and s.beat.connected))
    metric("connected", "1 if the long connection to Feishu is up.", [("", connected)])
    metric("events_today", "Messages taken today (in the configured timezone).",
           [("", s.events_today)])  # fmt: skip
    metric(
        "mail",
        "Mail not yet sent, by state.",
        [(f'{{state="{k}"}}', int(v)) for k, v in s.queue.items()],
    )
    age = 0.0 if s.oldest_waiting_at is None else s.now - s.oldest_waiting_at
    metric("oldest_waiting_seconds", "Age of the oldest mail not yet sent.", [("", age)])
    metric(
        "last_digest_timestamp_seconds",
        "When the last digest of a report chat was queued.",
        [(f'{{chat="{_label(d.chat_id)}"}}', d.queued_at) for d in s.digests],
    )
    metric("quarantined", "Events held in quarantine.", [("", s.quarantined)])
    metric("bounced_week", "Recipients a delivery report came back for, in 7 days.",
           [("", s.bounced_week)])  # fmt: skip
    if s.inbound is not None:
        metric(
            "mail_in",
            "Mail that came in to the bot's mailbox and is remembered, by what became of it.",
            [(f'{{outcome="{k}"}}', s.inbound.get(k, 0)) for k in INBOUND_OUTCOMES],
        )
    metric("database_bytes", "The state database (and its WAL, for SQLite).", [("", s.db_bytes)])
    metric(
        "instance_up",
        "1 per instance sharing the state whose lease has not run out.",
        [(f'{{host="{_label(m.host)}",pid="{m.pid}"}}', int(m.alive)) for m in s.members],
    )
    metric(
        "instance_schedule",
        "1 for the instance that runs the schedule (digests, batches, housekeeping).",
        [(f'{{host="{_label(m.host)}",pid="{m.pid}"}}', int(m.leads)) for m in s.members],
    )
    return "\n".join(out) + "\n"
