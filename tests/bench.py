"""`make bench`: the daemon's performance, measured against the plain lark_oapi client.

Runs the real daemon (`python -m feishu_mailbot --config X run`, as tests/harness.Bot does)
against the Feishu emulator and an aiosmtpd server (a child process, so its Python does not
compete with the emulator's for a GIL) on loopback, every run in a fresh state
dir. Progress goes to stderr; a table and, as the very last line, `BENCH {json}` go to stdout.

Phases (figures are medians over the repetitions):

1. start-up, memory and ack latency - daemon and baseline runs alternate so machine noise
   hits both alike. `ready_s` is Popen → READY=1 on a NOTIFY_SOCKET bound here;
   `baseline_ready_s` is Popen → the emulator accepted the WebSocket of a minimal script
   that does `import lark_oapi` and starts a plain `lark_oapi.ws.Client`. The first
   LOAD_RUNS runs of each then get ACK_EVENTS matching text events at ACK_RATE ev/s while
   the SMTP server delays every mail by SMTP_DELAY s; ack times are the emulator's own
   (data frame written → ack received), RSS is VmRSS from /proc after the load, `db_mb`
   the state database with its WAL once the daemon stopped.
2. ingest ladder - rules that match nothing (so SMTP plays no part), LADDER rates for
   LADDER_SECONDS each, a fresh daemon per step; a step passes when the offered rate was
   reached, every event was acked 200, ack p99 < INGEST_P99_MS and every event is a row in
   the `messages` table once the daemon has stopped. `ingest_eps` is the highest rate passed
   before the first failure.
3. outbox drain - SMTP refused, MAIL_N matching events (one mail each) stored, SMTP back:
   MAIL_N / (SMTP back → last mail received). The bench config sets
   smtp.retry_initial/retry_max to RETRY_INITIAL/RETRY_MAX so backoff does not dominate.

4. attachments - FILES_RULE forwards file messages; a steady daemon gets a 60 MB file (over
   the 20 MB cap: the mail names it) and then a WITHIN_CAP_MB file (downloaded, spooled and
   streamed to the relay) while text events arrive at ATTACH_RATE ev/s. `attach_peak_rss_mb`
   is the daemon's VmHWM once both mails arrived, `attach_rss_growth_mb` that minus its
   VmRSS before the files, `attach_ack_p99_ms` the acks of the text events meanwhile.
5. PostgreSQL (a cluster of its own, fsync on) - `pg_ack_*`: phase 1's load on a daemon
   whose state is there; `pg_mail_per_s` / `pg2_mail_per_s`: phase 3's drain with one
   daemon, and with two sharing one emulator (each event to one of their connections),
   one relay and the database, interleaved. `pg_busy_cores` / `pg2_busy_cores`: CPU-seconds
   of the daemons, PostgreSQL and the relay per second of those drains.

Events are paced on the emulator's own loop with absolute deadlines (event i is due at
t0 + i/rate, late events go out at once), so drift never lowers the offered rate; the rate
actually offered is measured and reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feishu_mailbot.state import State
from tests.feishu_emulator import FeishuEmulator
from tests.harness import REPO, NotifySocket
from tests.postgres import Postgres
from tests.smtp_server import SmtpProcess

CHAT = "oc_team"
SENDER = "ou_alice"
HIT = "BENCHHIT"
MATCH_RULES = f"- name: bench\n  keywords: [{HIT}]\n  to: [ops@example.com]\n"
NOMATCH_RULES = "- name: never\n  keywords: [zz-never-matches-zz]\n  to: [ops@example.com]\n"

READY_RUNS = 5
LOAD_RUNS = 3
ACK_RATE = 500.0
ACK_EVENTS = 5000
SMTP_DELAY = 0.5
LADDER = (500, 1000, 1500, 2000, 3000)
LADDER_SECONDS = 5.0
LADDER_REPS = 3
INGEST_P99_MS = 100.0
MAIL_N = 500
MAIL_REPS = 3
RETRY_INITIAL = 0.05
RETRY_MAX = 0.2
FILES_RULE = "- name: files\n  regex: '\\[文件\\]'\n  to: [files@example.com]\n"
BIG_MB = 60
WITHIN_CAP_MB = 15
ATTACH_RATE = 50.0
ATTACH_EVENTS = 300
ATTACH_REPS = 3
PG_LOAD_RUNS = 3
PG_MAIL_REPS = 3

BASELINE_SCRIPT = """\
import sys

import lark_oapi

handler = (
    lark_oapi.EventDispatcherHandler.builder("", "")
    .register_p2_im_message_receive_v1(lambda data: None)
    .build()
)
client = lark_oapi.ws.Client(
    sys.argv[1], sys.argv[2], event_handler=handler, domain=sys.argv[3],
    log_level=lark_oapi.LogLevel.WARNING,
)
client.start()
"""

_T0 = time.monotonic()


def progress(text: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {text}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


# -- the emulator side -----------------------------------------------------------------


def new_emulator() -> FeishuEmulator:
    emu = FeishuEmulator().start()
    emu.register_chat(CHAT, "研发群")
    emu.register_user(SENDER, "张三")
    return emu


def build_events(emu: FeishuEmulator, n: int, tag: str, hit: bool) -> list[dict[str, Any]]:
    word = HIT if hit else "plain"
    return [
        emu.build_message_event(CHAT, SENDER, "text", {"text": f"{word} 故障 {tag} #{i}"})
        for i in range(n)
    ]


def offer(emu: FeishuEmulator, events: Sequence[dict[str, Any]], rate: float) -> float:
    """Push `events` at `rate` ev/s with absolute deadlines; returns the rate achieved.

    Runs on the emulator's loop (its private `_loop`/`_push`: one cross-thread round trip per
    event would cost more than the pacing allows at thousands of events/s); falls back to
    the public, synchronous `push_raw` if those internals are gone.
    """
    loop = getattr(emu, "_loop", None)
    push = getattr(emu, "_push", None)
    if loop is not None and push is not None:

        async def pace() -> float:
            clock = asyncio.get_running_loop().time
            t0 = clock()
            for i, event in enumerate(events):
                delay = t0 + i / rate - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                await push(event, 1)
            return clock() - t0

        timeout = len(events) / rate * 3 + 30
        elapsed = asyncio.run_coroutine_threadsafe(pace(), loop).result(timeout)
    else:
        t0 = time.monotonic()
        for i, event in enumerate(events):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            emu.push_raw(event)
        elapsed = time.monotonic() - t0
    return (len(events) - 1) / elapsed if elapsed > 0 else math.inf


@dataclass
class AckStats:
    offered_eps: float
    acked: int  # events acked with code 200
    ms: list[float]  # first 200-ack time per event
    non_200: int

    @property
    def p50(self) -> float:
        return percentile(self.ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.ms, 99)


def collect_acks(
    emu: FeishuEmulator, events: Sequence[dict[str, Any]], offered_eps: float, timeout: float
) -> AckStats:
    wanted = {e["header"]["event_id"] for e in events}

    def acked() -> dict[str, float]:
        first: dict[str, float] = {}
        for ack in list(emu.acks):
            if ack.code == 200 and ack.event_id in wanted and ack.event_id not in first:
                first[ack.event_id] = ack.ms
        return first

    with contextlib.suppress(TimeoutError):
        wait_until(lambda: len(acked()) >= len(wanted), timeout, "acks")
    first = acked()
    non_200 = sum(1 for a in list(emu.acks) if a.code != 200)
    return AckStats(offered_eps, len(first), list(first.values()), non_200)


# -- the daemon and the baseline -----------------------------------------------------------


def config_text(
    directory: Path, emu: FeishuEmulator, smtp_port: int, rules: str, extra: str = ""
) -> str:
    return (
        "feishu:\n"
        "  app_id: cli_test\n"
        "  app_secret: test-secret\n"
        f"  domain: {emu.base_url}\n"
        f"chats:\n  - id: {CHAT}\n    name: 研发群\n"
        "smtp:\n"
        "  host: 127.0.0.1\n"
        f"  port: {smtp_port}\n"
        "  security: none\n"
        '  from: "Feishu Mailbot <bot@example.com>"\n'
        "  timeout: 5\n"
        f"  retry_initial: {RETRY_INITIAL}\n"
        f"  retry_max: {RETRY_MAX}\n"
        f"rules:\n{textwrap.indent(rules, '  ')}"
        f"state_dir: {directory / 'state'}\n"
        f"{extra}"
    )


@dataclass
class Daemon:
    """One fresh daemon process with its own state dir, emulator and SMTP server."""

    root: Path
    rules: str
    smtp_refused: bool = False
    smtp_delay: float = 0.0
    # PostgreSQL instead of SQLite: (url, password file); emulator and relay may be shared
    # by several daemons (one cluster), and are then closed by whoever made them.
    database: tuple[str, Path] | None = None
    shared: tuple[FeishuEmulator, SmtpProcess] | None = None
    emu: FeishuEmulator = field(init=False)
    smtp: SmtpProcess = field(init=False)
    proc: subprocess.Popen[bytes] | None = None
    ready_s: float = math.nan

    def __post_init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="d", dir=self.root))
        if self.shared is not None:
            self.emu, self.smtp = self.shared
        else:
            self.emu = new_emulator()
            # In a process of its own: here its Python would compete with the emulator's.
            self.smtp = SmtpProcess(self.smtp_delay, refuse=self.smtp_refused)
        extra = ""
        if self.database is not None:
            url, password_file = self.database
            extra = f"database:\n  url: {url}\n  password_file: {password_file}\n"
        self.config = self.dir / "feishu-mailbot.yaml"
        self.config.write_text(
            config_text(self.dir, self.emu, self.smtp.port, self.rules, extra), encoding="utf-8"
        )
        self.notify = NotifySocket(self.dir)
        self.log_path = self.dir / "daemon.log"

    def start(self) -> float:
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.notify.env()}
        with open(self.log_path, "wb") as log:
            t0 = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "feishu_mailbot", "--config", str(self.config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )
        proc = self.proc
        try:
            wait_until(
                lambda: self.notify.first("READY=1") is not None or proc.poll() is not None,
                30,
                "READY=1",
            )
        except TimeoutError:
            raise RuntimeError(f"daemon not ready in 30 s:\n{self.log_tail()}") from None
        ready = self.notify.first("READY=1")
        if ready is None:
            raise RuntimeError(f"daemon exited ({proc.returncode}):\n{self.log_tail()}")
        self.ready_s = ready - t0
        return self.ready_s

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int:
        code = 0
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        return code

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()
        if self.shared is None:
            self.emu.stop()
            self.smtp.stop()

    def db_mb(self) -> float:
        state = self.dir / "state"
        return sum(p.stat().st_size for p in state.glob("feishu-mailbot.db*")) / 1e6

    def stored(self, events: Sequence[dict[str, Any]]) -> tuple[int, int]:
        """(lost, duplicates) among `events` in the `messages` table; call after stop()."""
        return stored(self.dir / "state" / "feishu-mailbot.db", self.database, events)

    def mail_duplicates(self) -> int:
        ids = self.smtp.message_ids()
        return len(ids) - len(set(ids))


def stored(
    path: Path, database: tuple[str, Path] | None, events: Sequence[dict[str, Any]]
) -> tuple[int, int]:
    """(lost, duplicates) among `events` in the `messages` table of the state."""
    if database is None:
        db = sqlite3.connect(path)
        try:
            rows = db.execute("SELECT message_id, event_id FROM messages").fetchall()
        finally:
            db.close()
    else:
        url, password_file = database
        state = State(path, url=url, password=password_file.read_text().strip(), readonly=True)
        try:
            rows = state.read(
                lambda tx: tx.execute("SELECT message_id, event_id FROM messages").fetchall()
            )
        finally:
            state.close()
    offered = {e["event"]["message"]["message_id"] for e in events}
    stored_ids = [r[0] for r in rows if r[0] in offered]
    event_ids = [r[1] for r in rows]
    duplicates = (len(stored_ids) - len(set(stored_ids))) + (len(event_ids) - len(set(event_ids)))
    return len(offered - set(stored_ids)), duplicates


@dataclass
class Baseline:
    """A plain `import lark_oapi` + `lark_oapi.ws.Client` script against its own emulator."""

    root: Path
    emu: FeishuEmulator = field(init=False)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="b", dir=self.root))
        self.script = self.dir / "baseline.py"
        self.script.write_text(BASELINE_SCRIPT, encoding="utf-8")
        self.emu = new_emulator()
        self.log_path = self.dir / "baseline.log"

    def start(self) -> float:
        args = [sys.executable, str(self.script), "cli_test", "test-secret", self.emu.base_url]
        with open(self.log_path, "wb") as log:
            t0 = time.monotonic()
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = t0 + 60
        while True:  # woken by the emulator on connect; checks the process every 0.5 s
            with contextlib.suppress(TimeoutError):
                self.emu.wait_for(lambda: self.emu.connect_count >= 1, 0.5)
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                raise RuntimeError(f"baseline exited ({self.proc.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"baseline not connected in 60 s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.emu.stop()


# -- phases ------------------------------------------------------------------------------


@dataclass
class LoadResult:
    ready_s: float
    rss_mb: float = math.nan
    acks: AckStats | None = None
    cpu_s: float = math.nan
    lost: int = 0
    duplicates: int = 0
    db_mb: float = math.nan  # the state database and its WAL once the daemon stopped


def daemon_run(
    root: Path, load: bool, i: int, database: tuple[str, Path] | None = None
) -> LoadResult:
    d = Daemon(root, MATCH_RULES, smtp_delay=SMTP_DELAY, database=database)
    try:
        result = LoadResult(d.start())
        if load:
            events = build_events(d.emu, ACK_EVENTS, f"d{i}", hit=True)
            cpu0 = cpu_seconds(d.pid)
            rate = offer(d.emu, events, ACK_RATE)
            result.acks = collect_acks(d.emu, events, rate, timeout=30)
            result.cpu_s = cpu_seconds(d.pid) - cpu0
            time.sleep(1.0)  # steady state after the load
            result.rss_mb = rss_mb(d.pid)
            code = d.stop()
            result.db_mb = d.db_mb() if database is None else math.nan
            if code != 0:
                progress(f"daemon exited {code}:\n{d.log_tail()}")
            result.lost, dup = d.stored(events)
            result.duplicates = dup + d.mail_duplicates()
        return result
    finally:
        d.close()


def baseline_run(root: Path, load: bool, i: int) -> LoadResult:
    b = Baseline(root)
    try:
        result = LoadResult(b.start())
        if load:
            events = build_events(b.emu, ACK_EVENTS, f"b{i}", hit=True)
            cpu0 = cpu_seconds(b.pid)
            rate = offer(b.emu, events, ACK_RATE)
            result.acks = collect_acks(b.emu, events, rate, timeout=30)
            result.cpu_s = cpu_seconds(b.pid) - cpu0
            time.sleep(1.0)
            result.rss_mb = rss_mb(b.pid)
        return result
    finally:
        b.close()


@dataclass
class Step:
    target: int
    offered_eps: float
    p99: float
    acked: int
    n: int
    lost: int
    duplicates: int

    @property
    def ok(self) -> bool:
        return (
            self.offered_eps >= 0.95 * self.target
            and self.acked == self.n
            and self.p99 < INGEST_P99_MS
            and self.lost == 0
            and self.duplicates == 0
        )


def ingest_step(root: Path, rate: int, rep: int) -> Step:
    d = Daemon(root, NOMATCH_RULES)
    try:
        d.start()
        n = int(rate * LADDER_SECONDS)
        events = build_events(d.emu, n, f"i{rep}-{rate}", hit=False)
        offered = offer(d.emu, events, rate)
        acks = collect_acks(d.emu, events, offered, timeout=15)
        d.stop()
        lost, dup = d.stored(events)
        return Step(rate, offered, acks.p99, acks.acked, n, lost, dup)
    finally:
        d.close()


@dataclass
class Drain:
    mail_per_s: float
    first_mail_s: float
    lost: int
    duplicates: int
    # CPU-seconds of the daemons, PostgreSQL and the relay per second of the drain: how
    # much of the machine's cores the drain kept busy (PostgreSQL drains only).
    busy_cores: float = math.nan


def drain_run(root: Path, rep: int) -> Drain:
    d = Daemon(root, MATCH_RULES, smtp_refused=True)
    try:
        d.start()
        events = build_events(d.emu, MAIL_N, f"m{rep}", hit=True)
        offered = offer(d.emu, events, 1000)
        acks = collect_acks(d.emu, events, offered, timeout=30)
        if acks.acked != MAIL_N:
            raise RuntimeError(f"only {acks.acked} of {MAIL_N} events acked:\n{d.log_tail()}")
        t0 = time.monotonic()
        d.smtp.refuse = False
        d.smtp.wait_for(1, timeout=60)
        first = time.monotonic() - t0
        d.smtp.wait_for(MAIL_N, timeout=300)
        elapsed = time.monotonic() - t0
        time.sleep(0.3)  # a duplicate would show up here
        d.stop()
        lost, dup = d.stored(events)
        return Drain(MAIL_N / elapsed, first, lost, dup + d.mail_duplicates())
    finally:
        d.close()


def cluster_drain_run(
    root: Path, rep: int, pg: Postgres, database: tuple[str, Path], instances: int
) -> Drain:
    """The outbox drain on PostgreSQL: `instances` daemons sharing one emulator (which
    hands each event to one of their connections), one relay and one database."""
    emu = new_emulator()
    smtp = SmtpProcess(0.0, refuse=True)
    daemons = [
        Daemon(root, MATCH_RULES, database=database, shared=(emu, smtp)) for _ in range(instances)
    ]
    try:
        for d in daemons:
            d.start()
        wait_until(lambda: emu.connections == instances, 30, "every instance connected")
        events = build_events(emu, MAIL_N, f"p{instances}-{rep}", hit=True)
        offered = offer(emu, events, 1000)
        acks = collect_acks(emu, events, offered, timeout=30)
        if acks.acked != MAIL_N:
            raise RuntimeError(f"only {acks.acked} of {MAIL_N} events acked")
        pids = [*(d.pid for d in daemons), smtp.pid, *pg.pids()]
        cpu0 = sum(cpu_seconds(p) for p in pids)
        t0 = time.monotonic()
        smtp.refuse = False
        smtp.wait_for(1, timeout=60)
        first = time.monotonic() - t0
        smtp.wait_for(MAIL_N, timeout=300)
        elapsed = time.monotonic() - t0
        busy = (sum(cpu_seconds(p) for p in pids) - cpu0) / elapsed
        time.sleep(0.3)  # a duplicate would show up here
        for d in daemons:
            d.stop()
        lost, dup = daemons[0].stored(events)
        return Drain(MAIL_N / elapsed, first, lost, dup + daemons[0].mail_duplicates(), busy)
    finally:
        for d in daemons:
            d.close()
        emu.stop()
        smtp.stop()


@dataclass
class Attach:
    peak_rss_mb: float
    growth_mb: float
    acks: AckStats
    events: int


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def attach_run(root: Path, rep: int, big: bytes, within: bytes) -> Attach:
    d = Daemon(root, FILES_RULE + MATCH_RULES)
    try:
        d.start()
        d.emu.register_resource("file_big", big, "application/zip", "big.zip")
        d.emu.register_resource("file_ok", within, "application/pdf", "ok.pdf")
        warm = build_events(d.emu, 50, f"w{rep}", hit=False)
        offer(d.emu, warm, 100)
        collect_acks(d.emu, warm, 100, timeout=10)
        time.sleep(0.5)
        steady = memory_mb(d.pid, "VmRSS")
        events = build_events(d.emu, ATTACH_EVENTS, f"a{rep}", hit=False)
        for key, name in (("file_big", "big.zip"), ("file_ok", "ok.pdf")):
            content = {"file_key": key, "file_name": name}
            file_event = d.emu.build_message_event(CHAT, SENDER, "file", content)
            events.insert(len(events) // 4, file_event)
        rate = offer(d.emu, events, ATTACH_RATE)
        acks = collect_acks(d.emu, events, rate, timeout=30)
        d.smtp.wait_for(2, timeout=120)
        peak = memory_mb(d.pid, "VmHWM")
        d.stop()
        return Attach(peak, peak - steady, acks, len(events))
    finally:
        d.close()


# -- report -------------------------------------------------------------------------------


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def rounded(value: float, digits: int) -> float | None:
    return None if math.isnan(value) else round(value, digits)


def main(argv: Sequence[str] | None = None) -> int:
    global READY_RUNS, LOAD_RUNS, LADDER_REPS, MAIL_REPS, ATTACH_REPS, PG_LOAD_RUNS, PG_MAIL_REPS
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="1 repetition of everything")
    args = parser.parse_args(argv)
    if args.quick:
        READY_RUNS = LOAD_RUNS = LADDER_REPS = MAIL_REPS = ATTACH_REPS = 1
        PG_LOAD_RUNS = PG_MAIL_REPS = 1

    started = time.monotonic()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fmb-bench-") as tmp:
        root = Path(tmp)

        daemon_runs: list[LoadResult] = []
        baseline_runs: list[LoadResult] = []
        for i in range(READY_RUNS):
            load = i < LOAD_RUNS
            r = daemon_run(root, load, i)
            daemon_runs.append(r)
            progress(
                f"daemon #{i + 1}: ready {r.ready_s:.2f}s"
                + (
                    f", ack p50 {r.acks.p50:.1f} p99 {r.acks.p99:.1f} ms at "
                    f"{r.acks.offered_eps:.0f} ev/s, {r.acks.acked}/{ACK_EVENTS} acked, "
                    f"rss {r.rss_mb:.1f} MB, cpu {r.cpu_s:.1f}s, lost {r.lost}, dup "
                    f"{r.duplicates}"
                    if r.acks
                    else ""
                )
            )
            b = baseline_run(root, load, i)
            baseline_runs.append(b)
            progress(
                f"baseline #{i + 1}: ready {b.ready_s:.2f}s"
                + (
                    f", ack p50 {b.acks.p50:.1f} p99 {b.acks.p99:.1f} ms, "
                    f"{b.acks.acked}/{ACK_EVENTS} acked, rss {b.rss_mb:.1f} MB, "
                    f"cpu {b.cpu_s:.1f}s"
                    if b.acks
                    else ""
                )
            )

        ladder: list[list[Step]] = []
        for rep in range(LADDER_REPS):
            steps: list[Step] = []
            for rate in LADDER:
                s = ingest_step(root, rate, rep)
                steps.append(s)
                progress(
                    f"ingest rep {rep + 1} {rate} ev/s: offered {s.offered_eps:.0f}, "
                    f"p99 {s.p99:.1f} ms, acked {s.acked}/{s.n}, lost {s.lost}, dup "
                    f"{s.duplicates} -> {'ok' if s.ok else 'FAIL'}"
                )
                if not s.ok:
                    break
            ladder.append(steps)

        drains: list[Drain] = []
        for rep in range(MAIL_REPS):
            dr = drain_run(root, rep)
            drains.append(dr)
            progress(
                f"drain rep {rep + 1}: {dr.mail_per_s:.0f} mails/s (first mail after "
                f"{dr.first_mail_s:.2f}s), lost {dr.lost}, dup {dr.duplicates}"
            )

        attaches: list[Attach] = []
        big, within = os.urandom(BIG_MB * 1024 * 1024), os.urandom(WITHIN_CAP_MB * 1024 * 1024)
        for rep in range(ATTACH_REPS):
            at = attach_run(root, rep, big, within)
            attaches.append(at)
            progress(
                f"attachments rep {rep + 1}: peak rss {at.peak_rss_mb:.1f} MB "
                f"(+{at.growth_mb:.1f}), ack p99 {at.acks.p99:.1f} ms, "
                f"{at.acks.acked}/{at.events} acked"
            )
        del big, within

        pg_loads: list[LoadResult] = []
        pg_drains: dict[int, list[Drain]] = {1: [], 2: []}
        with Postgres(fsync=True) as pg:  # durable, as a production server is
            for i in range(PG_LOAD_RUNS):
                r = daemon_run(root, True, 100 + i, (pg.database(), pg.password_file))
                pg_loads.append(r)
                assert r.acks is not None
                progress(
                    f"postgresql daemon #{i + 1}: ack p50 {r.acks.p50:.1f} p99 "
                    f"{r.acks.p99:.1f} ms, {r.acks.acked}/{ACK_EVENTS} acked, rss "
                    f"{r.rss_mb:.1f} MB, lost {r.lost}, dup {r.duplicates}"
                )
            for rep in range(PG_MAIL_REPS):
                for n in (1, 2):  # interleaved: noise hits both alike
                    dr = cluster_drain_run(root, rep, pg, (pg.database(), pg.password_file), n)
                    pg_drains[n].append(dr)
                    progress(
                        f"postgresql drain, {n} instance(s), rep {rep + 1}: "
                        f"{dr.mail_per_s:.0f} mails/s, {dr.busy_cores:.2f} cores busy, lost "
                        f"{dr.lost}, dup {dr.duplicates}"
                    )

    loaded = [r for r in daemon_runs if r.acks]
    base_loaded = [r for r in baseline_runs if r.acks]
    ingest_per_rep = [max([s.target for s in steps if s.ok], default=0) for steps in ladder]
    unacked = sum(ACK_EVENTS - r.acks.acked for r in loaded if r.acks)
    pg_all_drains = [d for runs in pg_drains.values() for d in runs]
    lost = (
        sum(r.lost for r in loaded)
        + sum(s.lost for steps in ladder for s in steps)
        + sum(d.lost for d in drains)
        + sum(r.lost for r in pg_loads)
        + sum(d.lost for d in pg_all_drains)
    )
    duplicates = (
        sum(r.duplicates for r in loaded)
        + sum(s.duplicates for steps in ladder for s in steps)
        + sum(d.duplicates for d in drains)
        + sum(r.duplicates for r in pg_loads)
        + sum(d.duplicates for d in pg_all_drains)
    )
    pg_mail = median([d.mail_per_s for d in pg_drains[1]])
    pg2_mail = median([d.mail_per_s for d in pg_drains[2]])
    ladder_p99 = {
        str(rate): rounded(
            median([s.p99 for steps in ladder for s in steps if s.target == rate]), 1
        )
        for rate in LADDER
    }
    figures: dict[str, Any] = {
        "ready_s": rounded(median([r.ready_s for r in daemon_runs]), 3),
        "baseline_ready_s": rounded(median([r.ready_s for r in baseline_runs]), 3),
        "rss_mb": rounded(median([r.rss_mb for r in loaded]), 1),
        "baseline_rss_mb": rounded(median([r.rss_mb for r in base_loaded]), 1),
        "ack_p50_ms": rounded(median([r.acks.p50 for r in loaded if r.acks]), 2),
        "ack_p99_ms": rounded(median([r.acks.p99 for r in loaded if r.acks]), 2),
        "ingest_eps": median(ingest_per_rep),
        "mail_per_s": rounded(median([d.mail_per_s for d in drains]), 1),
        "lost": lost,
        "duplicates": duplicates,
        "unacked": unacked,
        "db_mb": rounded(median([r.db_mb for r in loaded]), 2),
        "attach_peak_rss_mb": rounded(median([a.peak_rss_mb for a in attaches]), 1),
        "attach_rss_growth_mb": rounded(median([a.growth_mb for a in attaches]), 1),
        "attach_ack_p99_ms": rounded(median([a.acks.p99 for a in attaches]), 2),
        "pg_ack_p50_ms": rounded(median([r.acks.p50 for r in pg_loads if r.acks]), 2),
        "pg_ack_p99_ms": rounded(median([r.acks.p99 for r in pg_loads if r.acks]), 2),
        "pg_mail_per_s": rounded(pg_mail, 1),
        "pg2_mail_per_s": rounded(pg2_mail, 1),
        "pg2_over_pg": rounded(pg2_mail / pg_mail, 2),
        "pg_busy_cores": rounded(median([d.busy_cores for d in pg_drains[1]]), 2),
        "pg2_busy_cores": rounded(median([d.busy_cores for d in pg_drains[2]]), 2),
        "pg_rss_mb": rounded(median([r.rss_mb for r in pg_loads]), 1),
        # context
        "ack_offered_eps": rounded(median([r.acks.offered_eps for r in loaded if r.acks]), 1),
        "ack_events": ACK_EVENTS,
        "smtp_delay_s": SMTP_DELAY,
        "baseline_ack_p50_ms": rounded(median([r.acks.p50 for r in base_loaded if r.acks]), 2),
        "baseline_ack_p99_ms": rounded(median([r.acks.p99 for r in base_loaded if r.acks]), 2),
        "cpu_ms_per_event": rounded(median([r.cpu_s for r in loaded]) * 1000 / ACK_EVENTS, 3),
        "baseline_cpu_ms_per_event": rounded(
            median([r.cpu_s for r in base_loaded]) * 1000 / ACK_EVENTS, 3
        ),
        "ingest_rules": "match nothing",
        "ingest_p99_by_rate": ladder_p99,
        "ingest_eps_runs": ingest_per_rep,
        "mail_n": MAIL_N,
        "mail_first_s": rounded(median([d.first_mail_s for d in drains]), 3),
        "retry_initial": RETRY_INITIAL,
        "retry_max": RETRY_MAX,
        "attach_files_mb": [BIG_MB, WITHIN_CAP_MB],
        "runs": {
            "ready": len(daemon_runs),
            "baseline_ready": len(baseline_runs),
            "ack_load": len(loaded),
            "ingest_ladder": len(ladder),
            "mail": len(drains),
            "attachments": len(attaches),
            "pg_ack_load": len(pg_loads),
            "pg_mail": len(pg_drains[1]),
            "pg2_mail": len(pg_drains[2]),
        },
        "bench_s": round(time.monotonic() - started, 1),
        # the machine is shared: how busy it was around the bench
        "loadavg_1m": [load_start, os.getloadavg()[0]],
    }
    print_table(figures, daemon_runs, baseline_runs)
    print("BENCH " + json.dumps(figures, ensure_ascii=False, separators=(",", ":")))
    return 0


def print_table(f: dict[str, Any], daemon: list[LoadResult], baseline: list[LoadResult]) -> None:
    def g(key: str) -> float:
        value = f.get(key)
        return math.nan if value is None else float(value)

    ratio = g("ready_s") / g("baseline_ready_s") if g("baseline_ready_s") else math.nan
    rows = [
        ("start → READY=1 (s)", fmt(g("ready_s")), fmt(g("baseline_ready_s")), "≤ 1.0, ≤ 1/3 base"),
        ("  ratio daemon/baseline", fmt(ratio), "", ""),
        ("RSS after load (MB)", fmt(g("rss_mb"), 1), fmt(g("baseline_rss_mb"), 1), "≤ 50"),
        (
            f"ack p50 (ms) @{fmt(g('ack_offered_eps'), 0)} ev/s, SMTP +{SMTP_DELAY:g}s",
            fmt(g("ack_p50_ms")),
            fmt(g("baseline_ack_p50_ms")),
            "",
        ),
        ("ack p99 (ms)", fmt(g("ack_p99_ms")), fmt(g("baseline_ack_p99_ms")), "≤ 10"),
        (
            "CPU per event (ms)",
            fmt(g("cpu_ms_per_event"), 3),
            fmt(g("baseline_cpu_ms_per_event"), 3),
            "",
        ),
        (f"ingest (ev/s, p99 < {INGEST_P99_MS:g} ms)", fmt(g("ingest_eps"), 0), "", "≥ 1000"),
        (f"outbox drain (mail/s, N={MAIL_N})", fmt(g("mail_per_s"), 1), "", "≥ 200"),
        (
            f"peak RSS, {BIG_MB} + {WITHIN_CAP_MB} MB files (MB)",
            fmt(g("attach_peak_rss_mb"), 1),
            "",
            "",
        ),
        ("  growth over steady state (MB)", fmt(g("attach_rss_growth_mb"), 1), "", "≤ 40"),
        (
            f"  ack p99 meanwhile (ms) @{ATTACH_RATE:g} ev/s",
            fmt(g("attach_ack_p99_ms")),
            "",
            "< 50",
        ),
        (f"state after {ACK_EVENTS} events + mail (MB)", fmt(g("db_mb"), 2), "", ""),
        ("PostgreSQL: ack p50 (ms), same load", fmt(g("pg_ack_p50_ms")), "", ""),
        ("  ack p99 (ms)", fmt(g("pg_ack_p99_ms")), "", "≤ 15"),
        ("  drain, 1 instance (mail/s)", fmt(g("pg_mail_per_s"), 1), "", ""),
        ("  drain, 2 instances (mail/s)", fmt(g("pg2_mail_per_s"), 1), "", "≥ 1.5 × 1"),
        (
            f"  cores busy, 1 / 2 instances (of {os.cpu_count()})",
            f"{fmt(g('pg_busy_cores'))} / {fmt(g('pg2_busy_cores'))}",
            "",
            "",
        ),
        ("lost", str(f["lost"]), "", "0"),
        ("duplicates", str(f["duplicates"]), "", "0"),
    ]
    print(f"{'figure':<44} {'daemon':>10} {'baseline':>10}  target")
    print("-" * 86)
    for name, ours, base, target in rows:
        print(f"{name:<44} {ours:>10} {base:>10}  {target}")
    print("-" * 86)
    print(
        "ready runs (s): daemon "
        + " ".join(fmt(r.ready_s) for r in daemon)
        + " | baseline "
        + " ".join(fmt(r.ready_s) for r in baseline)
    )
    ladder = " ".join(f"{k}:{v}" for k, v in f["ingest_p99_by_rate"].items())
    print(f"ingest p99 ms by offered rate (median): {ladder}; per ladder {f['ingest_eps_runs']}")
    print(
        f"mail: first mail {fmt(g('mail_first_s'))}s after SMTP came back; "
        f"retry_initial {RETRY_INITIAL}, retry_max {RETRY_MAX}; bench took {f['bench_s']}s"
    )
    print(
        f"unacked after 30 s: {f['unacked']}; load average (1 min) at start/end: "
        + "/".join(f"{x:.2f}" for x in f["loadavg_1m"])
    )


if __name__ == "__main__":
    sys.exit(main())
