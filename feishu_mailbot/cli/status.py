"""`feishu-mailbot status`: the snapshot read from the live state, and where it goes.

The words are core/status.py's; the metrics timer writes the Prometheus form
to a file node-exporter reads, through cli/output.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

from feishu_mailbot.app.database import location
from feishu_mailbot.cli.output import write_atomically
from feishu_mailbot.config.settings import Settings
from feishu_mailbot.core import status
from feishu_mailbot.core.exits import Exit
from feishu_mailbot.state import (
    DatabaseError,
    State,
    StateError,
    bounces,
    digests,
    heartbeat,
    inbound,
    instances,
    messages,
    outbox,
    quarantine,
)


def status_text(settings: Settings) -> str:
    """What `status` prints, for the support report; why not, when the state cannot be read."""
    where = location(settings)
    if where.url is None and not where.path.exists():
        return f"{where}: no state database yet (the daemon makes it when it first runs)"
    try:
        state = where.open(readonly=True)
    except (StateError, OSError, *DatabaseError) as e:
        return f"{where}: cannot read it: {e}"
    try:
        return status.text(snapshot(settings, state, time.time()))
    except DatabaseError as e:
        return f"{where}: cannot read it: {e}"
    finally:
        state.close()


def snapshot(settings: Settings, state: State, now: float) -> status.Snapshot:
    return status.Snapshot(
        now=now,
        beat=state.read(heartbeat.last),
        events_today=state.read(
            partial(messages.count_since, since=status.today_began(now, settings.timezone))
        ),
        queue=state.read(outbox.counts),
        oldest_waiting_at=state.read(outbox.oldest_waiting),
        next_retry=state.read(outbox.next_retry),
        digests=tuple(status.LastDigest(*d) for d in state.read(digests.latest)),
        quarantined=state.read(quarantine.held_count),
        db_bytes=state.size(),
        engine=state.engine,
        members=members(state, now),
        inbound=None if settings.inbound is None else state.read(inbound.counts),
        bounced_week=state.read(partial(bounces.count_since, since=now - 7 * 86400)),
    )


def members(state: State, now: float) -> tuple[status.Member, ...]:
    lead = state.read(partial(instances.holder, name=instances.SCHEDULE, now=now))
    return tuple(
        status.Member(i.host, i.pid, i.version, i.seen_at, i.expires_at >= now, i.id == lead)
        for i in state.read(instances.listed)
    )


def run_status(settings: Settings, state: State, args: argparse.Namespace) -> int:
    snap = snapshot(settings, state, time.time())
    if args.prometheus:
        text = status.prometheus(snap)
    elif args.json:
        text = status.as_json(snap) + "\n"
    else:
        text = status.text(snap) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return Exit.OK
    target = Path(args.output)
    try:
        write_atomically(target, text)
    except OSError as e:
        unchanged = " (the file there is unchanged)" if target.exists() else ""
        print(f"{target}: cannot write it: {e.strerror or e}{unchanged}", file=sys.stderr)
        return Exit.CANTCREAT
    return Exit.OK
