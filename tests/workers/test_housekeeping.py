"""A simulated year: the state stays bounded, and keeps exactly what retention promises.

The shipped workers (outbox, actions, housekeeping) and the reporter run on one
event loop with an injected wall clock that advances a day at a time; the
state, the spool and the emulator's REST API are real, and mail goes to a
delivery backend that keeps it. Each day brings 300 messages: chat nobody mails,
forwards by a rule (five with an image, one of them large enough to be
spooled), reports for the digest, recalls, and one mail a week its relay refuses
for good.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

from feishu_mailbot.compose.daily_report import Reporter
from feishu_mailbot.compose.names import NameResolver
from feishu_mailbot.compose.sources import Sources
from feishu_mailbot.config import load
from feishu_mailbot.config.settings import DAY, Settings
from feishu_mailbot.core import daily_report
from feishu_mailbot.core.model import ActionRequest, Delivery, Image, Message, Recall, Text
from feishu_mailbot.feishu.rest import FeishuApi
from feishu_mailbot.mail.smtp import DeliveryError, Refused
from feishu_mailbot.state import State, Tx, messages, outbox
from feishu_mailbot.workers.actions import Actions
from feishu_mailbot.workers.housekeeping import Housekeeper
from feishu_mailbot.workers.outbox import Outbox
from tests.compose.test_daily_report import FAKETIME
from tests.feishu.test_network import run as cli_run
from tests.feishu_emulator import FeishuEmulator
from tests.harness import Bot, write_config
from tests.kit import MemoryRelay, until
from tests.postgres import Postgres
from tests.smtp_server import SmtpServer

START = datetime(2026, 1, 1, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
DAYS = 365
CHAT = 250  # messages a day that no rule mails
FORWARDS = 20
IMAGES = 5
REPORTS = 10
RECALLS = 2
MB = 1024 * 1024
# What the state may weigh once the retention windows are full. Measured: the database
# 6.6-7.3 MB, its WAL 4-7.5 MB (cut back to 4 MB whenever the checkpointer restarts it).
DB_BOUND = 10 * MB
STATE_BOUND = 20 * MB
CONFIG = """\
daily_report:
  chat: oc_team
  recipients: [boss@example.com]
  acknowledge: none
  trigger_users: [ou_alice]
"""
ONCALL = Delivery(("oncall@example.com",), ("oncall",), "[{chat_name}] {preview}", False, False)
BOUNCE = Delivery(("bounce@example.com",), ("oncall",), "[{chat_name}] {preview}", False, False)


class Relay(MemoryRelay):
    """Counts what it is given (a year of mail would not fit in memory); refuses
    bounce@example.com for good."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse_next = 0
        self.count = 0

    def send(self, raw: bytes | Path, sender: str, recipients: Sequence[str]) -> Refused:
        if "bounce@example.com" in recipients:
            raise DeliveryError("550 5.1.1 no such user", permanent=True)
        self.count += 1
        return {}


def day_of_messages(day: int, at: float) -> list[tuple[Message, tuple[Delivery, ...]]]:
    def message(n: int, blocks: tuple[Text | Image, ...], sender: str = "ou_bob") -> Message:
        return Message(
            event_id=f"ev_{day}_{n}",
            message_id=f"om_{day}_{n}",
            chat_id="oc_team",
            chat_type="group",
            sender_open_id=sender,
            sender_type="user",
            msg_type="post" if len(blocks) > 1 else "text",
            create_time_ms=int((at + n) * 1000),
            blocks=blocks,
        )

    out: list[tuple[Message, tuple[Delivery, ...]]] = []
    for n in range(CHAT):
        out.append((message(n, (Text(f"第 {day} 天的闲聊 #{n}：午饭吃什么？" * 3),)), ()))
    for n in range(CHAT, CHAT + FORWARDS):
        to = (BOUNCE,) if n == CHAT and day % 7 == 0 else (ONCALL,)
        blocks: tuple[Text | Image, ...] = (Text(f"故障 #{n}：数据库连接超时，请处理"),)
        if n < CHAT + IMAGES:
            key = "img_big" if n == CHAT + 1 else "img_small"
            blocks = (*blocks, Image(key))
        out.append((message(n, blocks), to))
    for n in range(CHAT + FORWARDS, CHAT + FORWARDS + REPORTS):
        text = f"日报：第 {day} 天，完成了第 {n} 项工作，明天继续。"
        out.append((message(n, (Text(text),), sender=f"ou_member{n}"), ()))
    return out


def ingest_day(tx: Tx, day: int, at: float) -> None:
    for msg, deliveries in day_of_messages(day, at):
        messages.ingest(tx, msg, deliveries, at)
    for n in range(RECALLS):
        messages.recall(tx, Recall(f"ev_r_{day}_{n}", f"om_{day}_{n}", "oc_team", 0), at)


async def settle(state: State, *wake: Callable[[], None]) -> None:
    for ring in wake:
        ring()
    await until(lambda: state.read(outbox.pending_count) == 0, 30)


def test_a_simulated_year_stays_bounded_and_keeps_what_retention_promises(
    tmp_path: Path, emulator: FeishuEmulator, smtp: SmtpServer, postgres: Postgres
) -> None:
    for n in range(CHAT + FORWARDS, CHAT + FORWARDS + REPORTS):
        emulator.register_user(f"ou_member{n}", f"成员{n}")
    emulator.register_resource("img_small", os.urandom(30_000), "image/png")
    emulator.register_resource("img_big", os.urandom(400_000), "image/png")
    s: Settings = load.load(
        str(write_config(tmp_path, feishu_url=emulator.base_url, smtp_port=9, extra=CONFIG))
    )
    now = [START]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    relay = Relay()
    sizes: dict[int, tuple[int, int]] = {}  # the database file, and it with its WAL

    async def main() -> dict[str, object]:
        state = State(tmp_path / "state" / "feishu-mailbot.db", daemon=True)
        api = FeishuApi(s.feishu)
        names = NameResolver(s, state, api, wall_clock=clock)
        reporter = Reporter(Sources(s, state, api, names, clock))
        mail = Outbox(Sources(s, state, api, names, clock), lambda: None, transport=relay)
        actions = Actions(s, state, api, reporter, mail.wake, wall_clock=clock)
        keeper = Housekeeper(s, state, wall_clock=clock)
        tasks = [asyncio.create_task(w.run()) for w in (mail, actions, keeper)]

        for day in range(DAYS):
            now[0] = START + day * DAY
            await state.write(partial(ingest_day, day=day, at=now[0]))
            now[0] += 9 * 3600  # 18:00: the day's digest, as the schedule would
            report_day = daily_report.current_day(now[0], reporter.rs)
            assert (await reporter.build(report_day)).queued
            await settle(state, mail.wake)
            rounds = keeper.rounds
            keeper.wake()
            await until(lambda: keeper.rounds > rounds, 30)  # noqa: B023
            sizes[day] = (os.path.getsize(state.path), state.size())

        # The window, seen from the chat: a resend of a day inside it works, outside not.
        today = daily_report.current_day(now[0], reporter.rs)
        inside, outside = today.toordinal() - 5, today.toordinal() - 40
        for n, day_number in enumerate((inside, outside)):
            request = ActionRequest(
                "digest-request",
                {
                    "sender": "ou_alice",
                    "day": date.fromordinal(day_number).isoformat(),
                    "force": True,
                },
            )
            trigger = Message(
                f"ev_t{n}", f"om_t{n}", "oc_team", "group", "ou_alice", "user", "text",
                int(now[0] * 1000), (Text("@Mailbot 重发日报"),),
            )  # fmt: skip
            await state.write(
                partial(
                    messages.ingest, msg=trigger, deliveries=(), now=now[0], requests=(request,)
                )
            )
        actions.wake()
        await until(lambda: len(emulator.sent_messages) == 2, 30)
        await settle(state, mail.wake)

        def facts(tx: object) -> dict[str, object]:
            q = tx.execute  # type: ignore[attr-defined]
            return {
                "oldest_event": q("SELECT MIN(received_at) FROM events").fetchone()[0],
                "old_messages": q(
                    "SELECT COUNT(*) FROM messages WHERE received_at < ?",
                    (now[0] - s.retention.messages,),
                ).fetchone()[0],
                "kept_for_failed": q(
                    "SELECT COUNT(*) FROM messages m JOIN outbox o USING (message_id)"
                    " WHERE o.status = 'failed' AND m.received_at < ?",
                    (now[0] - s.retention.messages,),
                ).fetchone()[0],
                "oldest_mail": q("SELECT MIN(created_at) FROM outbox").fetchone()[0],
                "failed": q("SELECT COUNT(*) FROM outbox WHERE status = 'failed'").fetchone()[0],
                "with_bytes": q(
                    "SELECT COUNT(*) FROM outbox WHERE status = 'sent'"
                    " AND (raw IS NOT NULL OR spool IS NOT NULL)"
                ).fetchone()[0],
                "oldest_digest": q("SELECT MIN(queued_at) FROM digests").fetchone()[0],
                "resends": q("SELECT COUNT(*) FROM digests WHERE kind = 'digest'").fetchone()[0],
            }

        result = state.read(facts)
        result["spool_files"] = sorted(os.listdir(state.spool.directory))
        for worker in (mail, actions, keeper):
            worker.stop()
        await asyncio.gather(*tasks)
        await api.close()
        state.close()
        return result

    facts = asyncio.run(main())
    r = s.retention
    last = START + (DAYS - 1) * DAY + 9 * 3600
    # Dedup keys: only the last week's.
    assert isinstance(facts["oldest_event"], float) and facts["oldest_event"] >= last - r.events
    # Messages: only the last 30 days', but for those whose mail failed (a retry needs them).
    assert facts["old_messages"] == facts["kept_for_failed"]
    # Mail: the last 90 days' metadata; nothing sent keeps its bytes; failed mail stays
    # until the audit period ends (one a week).
    assert isinstance(facts["oldest_mail"], float) and facts["oldest_mail"] >= last - r.mail
    assert facts["failed"] == len([d for d in range(DAYS) if d % 7 == 0 and d >= 275])
    assert facts["with_bytes"] == 0 and facts["spool_files"] == []
    assert isinstance(facts["oldest_digest"], float) and facts["oldest_digest"] >= last - r.mail
    replies = [str(m["content"]["text"]) for m in emulator.sent_messages]
    assert replies[0].startswith("已发送"), replies  # inside the window: resent
    assert "已超过保存期限（30 天）" in replies[1], replies
    assert relay.count == DAYS * (FORWARDS - 1) + sum(d % 7 != 0 for d in range(DAYS)) + DAYS + 1
    # Bounded: once the windows are full (90 days) the state grows no more.
    files = [sizes[d][0] for d in range(120, DAYS)]
    assert max(files) < DB_BOUND, max(files)
    assert max(files) < 1.15 * sizes[120][0], (sizes[120], max(files))
    assert max(sizes[d][1] for d in range(DAYS)) < STATE_BOUND
    # Most of it is the messages window: nearly full by day 30, as retention says.
    assert sizes[30][0] > 0.7 * sizes[120][0]
    moved_to_postgresql(tmp_path, emulator, smtp, postgres, failed=int(str(facts["failed"])))


def moved_to_postgresql(
    tmp_path: Path, emulator: FeishuEmulator, smtp: SmtpServer, postgres: Postgres, failed: int
) -> None:
    """The year's state copied by `migrate-state` (counts equal, and again: nothing to
    do); the daemon then runs on PostgreSQL and serves days from before the move: a
    digest of an old day, the failed mail retried."""
    end = datetime.fromtimestamp(START + (DAYS - 1) * DAY + 11 * 3600, ZoneInfo("UTC"))
    clock = {  # the CLI and the daemon at the year's end, as the simulation left it
        "LD_PRELOAD": FAKETIME,
        "FAKETIME": end.strftime("@%Y-%m-%d %H:%M:%S"),
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "TZ": "UTC",
    }
    url = postgres.database()
    old_config = tmp_path / "feishu-mailbot.yaml"
    args = ["migrate-state", "--to", url, "--password-file", str(postgres.password_file)]
    copied = cli_run(old_config, *args, env=clock)
    assert copied.returncode == 0, copied.stderr
    rows = {
        line.split()[0]: line.split()[1:]
        for line in copied.stdout.splitlines()
        if line.startswith("  ") and len(line.split()) == 3
    }
    assert rows["messages"][0] == rows["messages"][1] and int(rows["messages"][0]) > 1000
    assert rows["outbox"][0] == rows["outbox"][1] and "differs" not in copied.stdout
    again = cli_run(old_config, *args, env=clock)
    assert again.returncode == 0 and "already holds this state" in again.stdout, again.stderr

    new_dir = tmp_path / "on-postgresql"
    new_dir.mkdir()
    database = f"database:\n  url: {url}\n  password_file: {postgres.password_file}\n"
    config = write_config(
        new_dir, feishu_url=emulator.base_url, smtp_port=smtp.port, extra=CONFIG + database
    )
    day = (end - timedelta(days=20)).astimezone(ZoneInfo("Asia/Shanghai")).date().isoformat()
    old_digest = cli_run(config, "send-report", "--date", day, "--dry-run", "--force", env=clock)
    assert old_digest.returncode == 0, old_digest.stderr
    assert f"日报汇总 {day}" in old_digest.stdout and "日报：第" in old_digest.stdout
    bot = Bot(config, new_dir).start(env=clock)
    try:
        retried = cli_run(config, "retry", "--all-failed", env=clock)
        assert retried.returncode == 0 and f"{failed} mail due now" in retried.stdout, retried
        smtp.wait_for(failed, timeout=30)
    finally:
        assert bot.stop() == 0
    assert {str(m["To"]) for m in smtp.messages} == {"bounce@example.com"}
