"""Two daemons on one PostgreSQL, as two hosts would run them: one App ID, one config.

Feishu gives each event to one of the app's connections (使用长连接接收事件: "集群模式 …
只有其中随机一个客户端会收到消息"); the emulator hands them out in turn. The real
daemons, a real PostgreSQL 15, aiosmtpd.
"""

from __future__ import annotations

import collections
import os
import re
import time
from datetime import datetime, timedelta
from pathlib import Path

from tests.app.test_replies import forwarded, inbound, replies, reply
from tests.compose.test_attachments import FILES, attached, post_file
from tests.compose.test_daily_report import (
    FAKETIME,
    SH,
    WEEKDAYS,
    report_config,
    today_in_shanghai,
)
from tests.dovecot import Dovecot
from tests.feishu_emulator import FeishuEmulator
from tests.harness import Bot, NotifySocket, wait_until, write_config
from tests.postgres import Postgres
from tests.smtp_server import SmtpServer

RULE = "- name: oncall\n  keywords: [故障]\n  to: [oncall@example.com]\n"
EVENTS = 500


def cluster(tmp_path: Path, emulator: FeishuEmulator, smtp: SmtpServer, pg: Postgres) -> Path:
    database = f"database:\n  url: {pg.database()}\n  password_file: {pg.password_file}\n"
    return write_config(
        tmp_path, feishu_url=emulator.base_url, smtp_port=smtp.port, rules=RULE, extra=database
    )


def started(config: Path, log_dir: Path) -> Bot:
    log_dir.mkdir()
    return Bot(config, log_dir).start()


def test_two_instances_share_the_events_and_send_every_mail_once(
    tmp_path: Path, emulator: FeishuEmulator, smtp: SmtpServer, postgres: Postgres
) -> None:
    config = cluster(tmp_path, emulator, smtp, postgres)
    a, b = started(config, tmp_path / "a"), started(config, tmp_path / "b")
    try:
        emulator.wait_for(lambda: emulator.connections == 2, 10)
        events = [emulator.push_text("oc_team", "ou_alice", f"故障 {n}") for n in range(EVENTS)]
        for event in events:
            emulator.wait_ack(event, timeout=60)
        wait_until(lambda: len(smtp.messages) >= EVENTS, 120, f"{EVENTS} mails")
        # Every event reached one instance and was acked once; both took their share.
        devices = collections.Counter(f["device_id"] for f in emulator.data_frames)
        assert len(devices) == 2 and min(devices.values()) > EVENTS // 4, devices
        wait_until(lambda: "instances: 2 running" in b.cli("status").stdout, 15, "both listed")
        for bot in (a, b):
            shown = bot.cli("status").stdout
            assert "database: postgresql" in shown, shown
            assert f"pid {a.proc.pid} " in shown and f"pid {b.proc.pid} " in shown, shown  # type: ignore[union-attr]
            assert shown.count("runs the schedule") == 1, shown
    finally:
        codes = (a.stop(), b.stop())
    numbers = collections.Counter()
    for mail in smtp.messages:
        found = re.search(r"故障 (\d+)", str(mail["Subject"]))
        assert found is not None, mail["Subject"]
        numbers[int(found.group(1))] += 1
    assert sorted(numbers) == list(range(EVENTS))
    assert [n for n, count in numbers.items() if count > 1] == []  # no mail twice
    assert codes == (0, 0)
    assert "Traceback" not in a.log() + b.log()


def test_a_killed_instance_s_mail_and_schedule_move_to_the_other(
    tmp_path: Path, emulator: FeishuEmulator, smtp: SmtpServer, postgres: Postgres
) -> None:
    """kill -9 of the instance that is sending four mails and holds the schedule lock:
    after its lease (database.failover_after: 6) the other sends those mails, takes the
    schedule, and the day's digest, due after the kill, goes out once. One mail carries
    a file over the spool's threshold, deleted in Feishu meanwhile: the other instance
    sends the bytes the first one composed, from the database (spool.py)."""
    data = os.urandom(1024 * 1024)
    emulator.register_resource("file_spec", data, "application/pdf", "设计稿.pdf")
    day = today_in_shanghai()
    at = datetime.combine(day, datetime.strptime("23:00", "%H:%M").time(), SH)
    start = at - timedelta(seconds=30)  # the daemons' clock: 30 s before the digest
    env = {
        "LD_PRELOAD": FAKETIME,
        "FAKETIME": f"{start.timestamp() - time.time():+.0f}",  # an offset: both agree
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    emulator.run_clock_from(start)
    reports = report_config("scheduled", f'at: "23:00"\nweekdays: [{WEEKDAYS[day.weekday()]}]\n')
    url = postgres.database()
    database = (
        f"database:\n  url: {url}\n  password_file: {postgres.password_file}\n  failover_after: 6\n"
    )
    config = write_config(
        tmp_path,
        feishu_url=emulator.base_url,
        smtp_port=smtp.port,
        rules=RULE + FILES,
        extra=reports + database,
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Bot(config, tmp_path / "a").start(env=env)
    b = Bot(config, tmp_path / "b")
    try:
        a.wait_log("this instance runs the schedule")
        emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "日报 今天的进展"))
        smtp.hold_data()
        for n in range(3):
            emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", f"故障 {n}"))
        emulator.wait_ack(post_file(emulator, "file_spec", "设计稿.pdf"))
        wait_until(lambda: smtp.holding == 4, 15, "a's four mails in DATA")
        b.start(env=env)
        emulator.wait_for(lambda: emulator.connections == 2, 10)
        a.kill()  # mid-DATA, holding the schedule lock
        emulator.forget_resource("file_spec")
        for n in range(4):  # its sessions are gone: the relay keeps none of them
            smtp.answer_data("451 4.3.0 the client went away", release=n == 3)
        b.wait_log("mail that an instance now gone was sending goes out again", timeout=20)
        b.wait_log("this instance runs the schedule", timeout=20)
        wait_until(lambda: len(smtp.messages) >= 5, 40, "the four mails and the digest")
        time.sleep(4)  # more schedule ticks: still one digest
    finally:
        b.stop()
    with postgres.admin(url.rsplit("/", 1)[1]) as db:  # the bytes went with the sent mail
        assert db.execute("SELECT count(*) FROM spool_chunks").fetchone() == (0,)
    files = [attached(m) for m in smtp.messages if attached(m)]
    assert files == [{"设计稿.pdf": data}]
    assert "composing again" not in b.log()
    subjects = [str(m["Subject"]) for m in smtp.messages]
    digests = [s for s in subjects if f"日报汇总 {day.isoformat()}" in s]
    forwarded = collections.Counter(
        int(found.group(1)) for s in subjects if (found := re.search(r"故障 (\d+)", s))
    )
    in_flight = 4
    duplicates = sum(count - 1 for count in forwarded.values())
    assert sorted(forwarded) == [0, 1, 2], subjects
    assert duplicates == 0 <= in_flight  # none of a's DATA completed: nothing went twice
    assert len(digests) == 1, subjects
    assert "Traceback" not in a.log() + b.log()


def test_postgresql_stopped_for_20_s_under_load_loses_nothing_and_sends_nothing_twice(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    """Events of the outage are answered 500 and re-pushed (every 2 s, as Feishu would
    later) until they are taken; the daemon keeps running, fed the watchdog throughout
    (a restart would not bring the database back) and says on STATUS= why it waits."""
    emulator = FeishuEmulator(ping_interval=2, repush_after=2.0, max_repush=60)
    emulator.start()
    emulator.register_chat("oc_team", "研发群")
    emulator.register_user("ou_alice", "张三")
    pushed: list[str] = []
    notify = NotifySocket(tmp_path)

    def push(during: float, every: float) -> None:
        ends = time.monotonic() + during
        while time.monotonic() < ends:
            event = emulator.push_text("oc_team", "ou_alice", f"故障 {len(pushed)}")
            pushed.append(event["header"]["event_id"])
            time.sleep(every)

    bot: Bot | None = None
    try:
        with Postgres() as pg:
            config = cluster(tmp_path, emulator, smtp, pg)
            bot = Bot(config, tmp_path).start(env=notify.env(2_000_000))  # feed every 1 s
            push(3, 0.05)  # load before
            pg.stop()
            down = time.monotonic()
            push(20, 0.1)  # and during the outage: 20 s
            bot.wait_log("database unreachable", timeout=5)
            assert bot.proc is not None and bot.proc.poll() is None  # no restart for this
            fed = [t for t in notify.times("WATCHDOG=1") if t > down]
            gaps = [b - a for a, b in zip([down, *fed], fed, strict=False)]
            assert len(fed) >= 15 and max(gaps) < 3, (len(fed), gaps)  # never withheld
            said = [s for s in notify.statuses() if "database unreachable" in s]
            assert said, notify.statuses()[-3:]
            pg.start()
            push(3, 0.05)  # and after
            assert time.monotonic() - down >= 20
            wait_until(lambda: len(smtp.messages) >= len(pushed), 120, "every event's mail")
            time.sleep(3)  # re-pushes still under way would show up as second mails now
            final = {a.event_id: a.code for a in emulator.acks}  # the last answer to each
            refused = {a.event_id for a in emulator.acks if a.code == 500}
            assert bot.stop() == 0
    finally:
        if bot is not None and bot.proc is not None and bot.proc.poll() is None:
            bot.kill()  # a failed assertion: no daemon left running after the test
        emulator.stop()
        notify.close()
    numbers = collections.Counter(
        int(found.group(1))
        for m in smtp.messages
        if (found := re.search(r"故障 (\d+)", str(m["Subject"])))
    )
    assert sorted(numbers) == list(range(len(pushed)))  # nothing lost
    assert [n for n, count in numbers.items() if count > 1] == []  # nothing twice
    assert len(refused) > 50, len(refused)  # the outage's events were answered 500 ...
    assert {final[e] for e in pushed} == {200}  # ... and taken once re-pushed
    assert "database unreachable" in bot.log() and "Traceback" not in bot.log()


def test_only_the_schedule_holder_reads_the_mailbox_and_the_other_takes_over(
    tmp_path: Path,
    emulator: FeishuEmulator,
    smtp: SmtpServer,
    postgres: Postgres,
    dovecot: Dovecot,
) -> None:
    """Replies by mail with two instances: one reads the bot's mailbox (the schedule
    lock's holder), so a reply is posted once; after a kill -9 the other reads it."""
    database = (
        f"database:\n  url: {postgres.database()}\n  password_file: {postgres.password_file}\n"
        "  failover_after: 6\n"
    )
    config = write_config(
        tmp_path, feishu_url=emulator.base_url, smtp_port=smtp.port,
        rules="- name: oncall\n  keywords: [故障]\n  to: [oncall@example.com, lisi@example.com]\n",
        extra=database + inbound(dovecot),
    )  # fmt: skip
    a = started(config, tmp_path / "a")
    a.wait_log("this instance runs the schedule")
    b = started(config, tmp_path / "b")
    try:
        a.wait_log("inbound: reading INBOX")
        message_id, mail = forwarded(emulator, smtp, "集群故障")
        dovecot.append(reply(mail, "lisi@example.com", "第一封", 1))
        wait_until(lambda: replies(emulator, message_id), 20, "the first reply")
        assert "inbound: reading" not in b.log()
        a.kill()
        b.wait_log("this instance runs the schedule", timeout=30)
        b.wait_log("inbound: reading INBOX", timeout=20)
        dovecot.append(reply(mail, "lisi@example.com", "第二封", 2))
        wait_until(lambda: len(replies(emulator, message_id)) == 2, 20, "the second reply")
        time.sleep(1.0)
    finally:
        b.stop()
    texts = [r["content"]["text"].split("\n")[1] for r in replies(emulator, message_id)]
    assert texts == ["第一封", "第二封"]
    assert "Traceback" not in a.log() + b.log()
