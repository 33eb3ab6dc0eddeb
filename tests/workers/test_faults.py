"""Nothing stops mail silently: a bad item fails alone, a dead or hung worker ends the process.

The real daemon against the emulator and a real SMTP server. Faults are real: an event
whose values break composing, and, for the workers, code injected into the daemon
process at start-up through `sitecustomize` (the daemon's own modules, patched in its
own interpreter, so the supervision under test is the shipped one).
"""

from __future__ import annotations

import signal
import sqlite3
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.app.test_health import WATCHDOG_USEC, last_feed_gap
from tests.feishu_emulator import FeishuEmulator
from tests.harness import REPO, SMTP_PASSWORD, Bot, NotifySocket, fill, wait_until
from tests.smtp_server import SmtpServer

MakeBot = Callable[..., Bot]
ONE_RULE = "- name: oncall\n  keywords: [故障]\n  to: [oncall@example.com]\n"


def inject(tmp_path: Path, code: str) -> dict[str, str]:
    """Environment that runs `code` in the daemon's interpreter before it starts."""
    site = tmp_path / "inject"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(code), encoding="utf-8")
    return {"PYTHONPATH": f"{site}:{REPO}"}


def test_a_mail_that_cannot_be_composed_fails_alone(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = make_bot(rules=ONE_RULE).start()
    # A create_time of year 33658: stored and acked, but no mail can carry that date.
    bad = emulator.build_message_event("oc_team", "ou_alice", "text", {"text": "故障, 未来"})
    bad["event"]["message"]["create_time"] = "999999999999999"
    emulator.wait_ack(emulator.push_raw(bad))
    bot.wait_log("failed for good after 5 attempts: ValueError", timeout=20)
    good = emulator.push_text("oc_team", "ou_alice", "真的故障了")
    emulator.wait_ack(good)
    [mail] = smtp.wait_for(1, timeout=10)
    assert "真的故障了" in str(mail["Subject"])
    assert bot.stop() == 0


def test_a_worker_that_dies_ends_the_process_with_75(
    make_bot: MakeBot, emulator: FeishuEmulator, tmp_path: Path
) -> None:
    env = inject(
        tmp_path,
        """
        import asyncio
        from feishu_mailbot.workers import actions

        async def run(self):
            await asyncio.sleep(1.0)
            raise RuntimeError("injected fault")

        actions.Actions.run = run
        """,
    )
    bot = make_bot(rules=ONE_RULE)
    bot.start(env=env)
    assert bot.proc is not None
    started = time.monotonic()
    assert bot.proc.wait(15) == 75
    assert time.monotonic() - started < 10
    assert "the actions worker stopped unexpectedly (RuntimeError: injected fault)" in bot.log()


def test_a_hung_worker_with_mail_due_is_a_stall(
    make_bot: MakeBot, emulator: FeishuEmulator, tmp_path: Path
) -> None:
    env = inject(
        tmp_path,
        """
        import asyncio
        from feishu_mailbot.workers import outbox

        async def attempt(self, row, fields):
            await asyncio.Event().wait()  # a send that never ends

        outbox.Outbox._attempt = attempt
        """,
    )
    notify = NotifySocket(tmp_path)
    try:
        bot = make_bot(rules=ONE_RULE, extra="health:\n  worker_stall_after: 10\n")
        bot.start(env={**env, **notify.env(WATCHDOG_USEC)})
        notify.wait("READY=1")
        emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "故障"))
        bot.wait_log("stalled: the outbox worker has work due and has made no progress", 25)
        time.sleep(2.5)
        assert last_feed_gap(notify) > 2.0  # the watchdog is withheld: systemd restarts us
        wait_until(lambda: any(s.startswith("STALLED") for s in notify.statuses()), 5)
    finally:
        notify.close()


def quarantined(bot: Bot) -> dict[str, str]:
    db = sqlite3.connect(bot.config.parent / "state" / "feishu-mailbot.db")
    try:
        return dict(db.execute("SELECT key, reason FROM quarantine").fetchall())
    finally:
        db.close()


def poison(emulator: FeishuEmulator, trigger: str) -> dict[str, Any]:
    """One event with the value that broke an earlier release."""
    if trigger == "audio duration ¹":
        emulator.register_resource("file_x", b"#!AMR\n" + bytes(64), "audio/amr")
        return emulator.build_message_event(
            "oc_team", "ou_alice", "audio", {"file_key": "file_x", "duration": "¹"}
        )
    text = "\ud83d 故障" if trigger == "lone surrogate" else "故障"
    event = emulator.build_message_event("oc_team", "ou_alice", "text", {"text": text})
    message = event["event"]["message"]
    if trigger.startswith("create_time"):
        message["create_time"] = {
            "create_time ²": "²",
            "create_time of 5000 digits": "9" * 5000,
            "create_time over 2**63": str(2**63 + 1),
        }[trigger]
    elif trigger == "nested content":  # the content is JSON in a string, nested 100,000 deep
        message["content"] = '{"text": "故障", "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    return event


# What each trigger gets: mailed as well as it can be (the value is junk, the message is
# not), or kept in quarantine (it would fail the same way on every re-push).
TRIGGERS = {
    "create_time ²": "mailed",
    "create_time of 5000 digits": "mailed",
    "audio duration ¹": "mailed",
    "create_time over 2**63": "quarantined",
    "nested content": "quarantined",
    "lone surrogate": "quarantined",
}


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_an_event_that_cannot_be_taken_is_kept_and_acked(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, trigger: str
) -> None:
    bot = make_bot(rules="- name: all\n  regex: '^'\n  to: [all@example.com]\n").start()
    bad = poison(emulator, trigger)
    ack = emulator.wait_ack(emulator.push_raw(bad))
    assert ack.code == 200  # acknowledged either way: no re-push loop
    emulator.wait_ack(emulator.repush(bad))  # a re-push is acked again, and logged once
    good = emulator.push_text("oc_team", "ou_alice", "一条正常的消息")
    emulator.wait_ack(good)
    event_id = bad["header"]["event_id"]
    if TRIGGERS[trigger] == "mailed":
        mails = smtp.wait_for(2, timeout=10)
        assert quarantined(bot) == {}
    else:
        mails = smtp.wait_for(1, timeout=10)
        held = quarantined(bot)
        assert list(held) == [event_id], held
        assert bot.current_log().count("event quarantined") == 1
    assert any("一条正常的消息" in str(m["Subject"]) for m in mails)
    assert bot.stop() == 0


def test_a_busy_database_answers_500_and_the_re_push_is_taken_once(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = make_bot(rules=ONE_RULE).start()
    blocker = sqlite3.connect(bot.config.parent / "state" / "feishu-mailbot.db", timeout=1)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        event = emulator.push_text("oc_team", "ou_alice", "故障：数据库被锁")
        assert emulator.wait_ack(event, timeout=20).code == 500  # not taken: Feishu re-pushes
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert emulator.wait_ack(emulator.repush(event)).code in (200, 500)
    wait_until(lambda: any(a.code == 200 for a in emulator.acks), 10, "an ack of 200")
    smtp.wait_for(1, timeout=10)
    time.sleep(0.5)
    assert len(smtp.messages) == 1 and quarantined(bot) == {}
    assert bot.stop() == 0


REDOS = """\
- name: words
  regex: '^(\\w+\\s?)+$'
  to: [words@example.com]
- name: evil
  regex: '(x+x+)+y'
  to: [evil@example.com]
- name: oncall
  keywords: [故障]
  to: [oncall@example.com]
"""


def test_a_regex_that_backtracks_cannot_hold_up_acks(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = make_bot(rules=REDOS).start()
    acks = []
    for text in ("a" * 29 + "!", "a" * 2999 + "!", "x" * 5000, "x" * 30_000 + " 故障"):
        acks.append(emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", text)))
    assert all(a.code == 200 for a in acks)
    assert max(a.ms for a in acks) < 100, [a.ms for a in acks]
    # The words rule matches the x's (in time); the keyword rule still sees the long one.
    mails = smtp.wait_for(3, timeout=10)
    to = sorted(a.addr_spec for m in mails for a in m["To"].addresses)
    assert to == ["oncall@example.com", "words@example.com", "words@example.com"], to
    log = bot.current_log()
    assert log.count("rule evil: its regex ran out of time") == 1  # once, not per message
    assert "rules[0].regex: '^(\\\\w+\\\\s?)+$' repeats a group that itself repeats" in log
    assert "rules[1].regex: '(x+x+)+y' repeats a group that itself repeats" in log
    assert bot.stop() == 0


def test_a_reload_does_not_wait_for_a_hung_relay(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = make_bot(rules=ONE_RULE).start()
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "故障一"))
    smtp.wait_for(1, timeout=10)  # a connection is open and idle now
    smtp.freeze(8)  # and the relay stops answering, QUIT included
    bot.config.write_text(
        bot.config.read_text("utf-8").replace("  timeout: 5\n", "  timeout: 6\n"), "utf-8"
    )
    assert bot.proc is not None
    bot.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)  # the reload runs on the loop now; an event comes in meanwhile
    ack = emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "故障二"))
    assert ack.ms < 1000, ack.ms  # the loop did not sit in QUIT on a dead relay
    bot.wait_log("configuration reloaded")
    smtp.wait_for(2, timeout=30)  # once the relay answers again, the second mail goes out
    assert bot.stop() == 0


def test_a_relay_that_trickles_holds_up_neither_acks_nor_the_mail(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = make_bot(rules=ONE_RULE)
    bot.config.write_text(
        bot.config.read_text("utf-8").replace("  timeout: 5\n", "  timeout: 1\n"), "utf-8"
    )
    bot.start()
    smtp.trickle(0.3)  # every read gets a byte before the 1 s timeout; DATA never ends
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "故障: 磁盘满了"))
    acks = []
    for i in range(10):  # while a worker thread sits in the trickle
        acks.append(emulator.wait_ack(emulator.push_text("oc_team", "ou_bob", f"hello {i}")))
        time.sleep(0.4)
    bot.wait_log("the transaction took over its 4 s deadline", timeout=15)
    assert max(a.ms for a in acks) < 1000, [round(a.ms) for a in acks]
    smtp.trickle(0)
    [mail] = smtp.wait_for(1, timeout=20)  # retried on a fresh connection, sent once
    assert "磁盘满了" in str(mail["Subject"])
    time.sleep(1.0)
    assert len(smtp.received) == 1
    assert bot.stop() == 0


def test_a_full_disk_loses_nothing_and_sends_everything_once(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, small_disk: Path
) -> None:
    smtp.refuse = True
    bot = make_bot(rules=ONE_RULE).start()
    first = emulator.push_text("oc_team", "ou_alice", "故障一：磁盘满之前")
    assert emulator.wait_ack(first).code == 200  # stored; its mail waits for the relay
    bot.wait_log("connect failed", timeout=15)
    filler = fill(small_disk)
    smtp.refuse = False
    bot.wait_log("outbox paused: the state database refused work", timeout=20)
    second = emulator.push_text("oc_team", "ou_alice", "故障二：磁盘满的时候")
    assert emulator.wait_ack(second, timeout=20).code == 500  # not taken: Feishu re-pushes
    assert smtp.messages == []  # nothing is sent that could not be recorded as sent
    filler.unlink()
    assert emulator.wait_ack(emulator.repush(second), timeout=20).code in (200, 500)
    wait_until(lambda: [a.code for a in emulator.acks].count(200) == 2, 20, "both acked")
    bot.wait_log("outbox resumed", timeout=40)
    smtp.wait_for(2, timeout=40)
    time.sleep(1.0)
    subjects = sorted(str(m["Subject"]) for m in smtp.messages)
    assert len(subjects) == 2 and "磁盘满之前" in subjects[0] + subjects[1], subjects
    assert bot.stop() == 0


def test_a_reload_with_the_fixed_smtp_password_sends_waiting_mail_at_once(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    """A wrong password: the relay answers 535 and the mail waits out its backoff (10
    minutes here). The fixed password and a reload send it now, not at the next try."""
    bot = make_bot(rules=ONE_RULE)
    good = bot.config.read_text("utf-8")
    slow = good.replace("  retry_initial: 0.2\n", "  retry_initial: 600\n").replace(
        "  retry_max: 1\n", "  retry_max: 600\n"
    )
    bot.config.write_text(slow.replace(SMTP_PASSWORD, "wr0ng-smtp-pass"), "utf-8")
    bot.start()
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "故障：密码错了"))
    bot.wait_log("retrying in", timeout=15)
    assert smtp.received == []
    bot.config.write_text(slow, "utf-8")
    assert bot.proc is not None
    bot.proc.send_signal(signal.SIGHUP)
    bot.wait_log("smtp.* changed: 1 waiting mails are tried now")
    (mail,) = smtp.wait_for(1, timeout=10)
    assert "密码错了" in str(mail["Subject"])
    assert bot.stop() == 0
