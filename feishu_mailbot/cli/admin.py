"""The operator's commands on a live state: status, queue, show, retry, drop.

Safe while the daemon runs: they read and write the database through the
same State as the daemon, in short transactions of their own (SQLite's lock
and busy timeout order them with the daemon's commits). The daemon looks
at its outbox every second and at asked-for quarantine retries too, so a
retry here goes out within a second or two.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
import time
from functools import partial
from pathlib import Path

from feishu_mailbot.cli import queue, status
from feishu_mailbot.config.settings import Settings
from feishu_mailbot.state import (
    DB_NAME,
    DatabaseError,
    State,
    StateError,
    Tx,
    batches,
    digests,
    heartbeat,
    messages,
    outbox,
    quarantine,
)
from feishu_mailbot.state.lifecycle import REFUSALS, SENDING, Moved


def _open(settings: Settings) -> State | int:
    """The state, or the exit code after a one-line reason on stderr."""
    path = Path(settings.state_dir) / DB_NAME
    try:
        path.stat()
    except FileNotFoundError:
        print(
            f"{path}: no state database yet (the daemon makes it when it first runs)",
            file=sys.stderr,
        )
        return os.EX_UNAVAILABLE
    except PermissionError:
        pass  # said below
    if not os.access(path, os.R_OK | os.W_OK):
        print(
            f"{path}: permission denied: run it as root or as the feishu-mailbot user",
            file=sys.stderr,
        )
        return os.EX_NOPERM
    try:
        return State(path)
    except StateError as e:
        print(str(e), file=sys.stderr)
        return os.EX_UNAVAILABLE


def run(settings: Settings, args: argparse.Namespace) -> int:
    state = _open(settings)
    if isinstance(state, int):
        return state
    try:
        command = {
            "status": _status,
            "queue": _queue,
            "show": _show,
            "retry": _retry,
            "drop": _drop,
        }[args.command]
        return command(settings, state, args)
    except DatabaseError as e:
        print(f"{state.path}: {e} (the daemon may be busy: try again)", file=sys.stderr)
        return os.EX_TEMPFAIL
    finally:
        state.close()


def status_text(settings: Settings) -> str:
    """What `status` prints, for the support report; why not, when the state cannot be read."""
    path = Path(settings.state_dir) / DB_NAME
    if not path.exists():
        return f"{path}: no state database yet (the daemon makes it when it first runs)"
    try:
        state = State(path, readonly=True)
    except (StateError, DatabaseError, OSError) as e:
        return f"{path}: cannot read it: {e}"
    try:
        return status.text(snapshot(settings, state, time.time()))
    except DatabaseError as e:
        return f"{path}: cannot read it: {e}"
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
    )


def write_atomically(target: Path, text: str, mode: int = 0o644) -> None:
    """`target` becomes a complete file of `text` with `mode`, or stays as it was.

    A reader (node-exporter) sees the old file or the new one, never half. The
    partial file has a name nobody can guess and is created with O_EXCL and
    O_NOFOLLOW, so a link planted in the directory (this may run as root) cannot
    send the write into another file; its mode is set on the descriptor, whatever
    the umask. On any failure (a full disk) it is removed again. The rename
    replaces `target` itself, never what a symlink there points to.
    """
    partial = target.with_name(f".{target.name}.{secrets.token_hex(8)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(partial, flags, 0o600)
    try:
        with open(fd, "wb", closefd=True) as out:
            os.fchmod(fd, mode)
            out.write(text.encode("utf-8"))
            out.flush()
            os.fsync(fd)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def _status(settings: Settings, state: State, args: argparse.Namespace) -> int:
    snap = snapshot(settings, state, time.time())
    if args.prometheus:
        text = status.prometheus(snap)
    elif args.json:
        text = status.as_json(snap) + "\n"
    else:
        text = status.text(snap) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return os.EX_OK
    target = Path(args.output)
    try:
        write_atomically(target, text)
    except OSError as e:
        unchanged = " (the file there is unchanged)" if target.exists() else ""
        print(f"{target}: cannot write it: {e.strerror or e}{unchanged}", file=sys.stderr)
        return os.EX_CANTCREAT
    return os.EX_OK


def _queue(settings: Settings, state: State, args: argparse.Namespace) -> int:
    if args.quarantined:
        held = state.read(quarantine.entries)
        print("\n".join(queue.held_lines(held, settings.timezone)))
        return os.EX_OK
    wanted = (
        ("failed",)
        if args.failed
        else ("pending", "retrying")
        if args.pending
        else ("pending", "retrying", *SENDING, "failed")
    )
    entries = state.read(partial(outbox.queued, statuses=wanted))
    planned = state.read(outbox.planned_count)
    if args.json:
        print(queue.as_json(entries))
        return os.EX_OK
    print("\n".join(queue.lines(entries, settings.timezone)))
    if planned and not args.failed:
        print(f"and {planned} mail planned, entering the outbox as it is sent")
    return os.EX_OK


def _show(settings: Settings, state: State, args: argparse.Namespace) -> int:
    entry = state.read(partial(outbox.entry, row_id=args.id))
    if entry is None:
        print(f"no mail {args.id} in the outbox (see feishu-mailbot queue)", file=sys.stderr)
        return os.EX_DATAERR
    raw = state.read(partial(outbox.raw_of, row_id=args.id))
    if raw is None and entry.spool is not None:
        try:
            raw = state.spool.path(entry.spool).read_bytes()
        except FileNotFoundError:  # sent (or dropped) while we looked
            raw = None
    print(queue.show(entry, raw, settings.timezone))
    return os.EX_OK


def _refusals(moved: dict[int, Moved], verb: str) -> None:
    """One line on stderr per mail asked for that the table leaves where it is."""
    for row_id, m in moved.items():
        if m.before is None:
            print(f"mail {row_id}: not in the outbox (see feishu-mailbot queue)", file=sys.stderr)
        elif not m.done:
            why = REFUSALS.get(m.before, f"it is {m.before}")
            print(f"mail {row_id}: not {verb}: {why}", file=sys.stderr)


def _retry(settings: Settings, state: State, args: argparse.Namespace) -> int:
    if args.quarantined is not None or args.all_quarantined:
        keys = None if args.all_quarantined else args.quarantined
        if keys == []:
            print("retry --quarantined: name the events (or --all-quarantined)", file=sys.stderr)
            return os.EX_USAGE
        n = state.write_now(partial(quarantine.retry, keys=keys))
        print(f"{n} quarantined events to be taken again by the running daemon")
        return os.EX_OK
    if not args.ids and not args.all_failed:
        print("retry: name mail ids from `queue`, or --all-failed", file=sys.stderr)
        return os.EX_USAGE
    ids = None if args.all_failed else args.ids

    def retry(tx: Tx) -> tuple[dict[int, int], dict[int, Moved]]:
        back = batches.give_back(tx, ids)  # never composed: composed anew, not resent
        rest = None if ids is None else [i for i in ids if i not in back]
        return back, outbox.retry_now(tx, rest, time.time()) if rest != [] else {}

    back, moved = state.write_now(retry)
    _refusals(moved, "retried")
    for row_id, matches in back.items():
        print(f"mail {row_id}: its {matches} matches go into a new batch digest at the next look")
    n = sum(m.done for m in moved.values()) + len(back)
    print(f"{n} mail due now; the running daemon sends it within seconds")
    return os.EX_OK if n or ids is None else os.EX_DATAERR


def _drop(settings: Settings, state: State, args: argparse.Namespace) -> int:
    if not args.ids and not args.quarantined:
        print("drop: name mail ids from `queue`, or --quarantined EVENT...", file=sys.stderr)
        return os.EX_USAGE
    if not args.yes:
        what = args.ids or args.quarantined
        print(f"drop: would drop {', '.join(map(str, what))} for good; add --yes", file=sys.stderr)
        return os.EX_USAGE
    if args.quarantined:
        n = state.write_now(partial(quarantine.drop, keys=args.quarantined))
        print(f"{n} quarantined events dropped")
        return os.EX_OK
    moved, files = state.write_now(partial(outbox.drop, row_ids=args.ids))
    for name in files:
        state.spool.remove(name)
    _refusals(moved, "dropped")
    for row_id, m in moved.items():
        if m.after == "dropping":
            print(
                f"mail {row_id}: being sent right now: dropped unless the relay accepts "
                "this attempt (see feishu-mailbot show)",
                file=sys.stderr,
            )
    n = sum(m.done for m in moved.values())
    print(f"{n} mail dropped")
    return os.EX_OK if n else os.EX_DATAERR
