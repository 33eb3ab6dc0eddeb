"""systemd integration of the real daemon: readiness, watchdog, STATUS, reload, stop.

A test-bound NOTIFY_SOCKET plays systemd's part; the emulator produces each
failure the old bot died of. Bounds on timing here are functional (did the
watchdog stop within the stall threshold?), loose enough for a busy machine.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.feishu_emulator import FeishuEmulator
from tests.harness import REPO, Bot, NotifySocket, wait_until
from tests.smtp_server import SmtpServer

MakeBot = Callable[..., Bot]
STALL_AFTER = 3.0
HEALTH = f"health:\n  stall_after: {STALL_AFTER}\n"
WATCHDOG_USEC = 2_000_000  # → WATCHDOG=1 every second
ONE_RULE = "- name: oncall\n  keywords: [故障]\n  to: [oncall@example.com]\n"


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()


def start(make_bot: MakeBot, notify: NotifySocket, extra: str = HEALTH, **kw: str) -> Bot:
    bot = make_bot(extra=extra, **kw)
    bot.start(env=notify.env(WATCHDOG_USEC))
    notify.wait("READY=1")
    return bot


def last_feed_gap(notify: NotifySocket) -> float:
    feeds = notify.times("WATCHDOG=1")
    return time.monotonic() - feeds[-1] if feeds else float("inf")


def test_ready_only_after_the_first_connection(
    make_bot: MakeBot, emulator: FeishuEmulator, notify: NotifySocket
) -> None:
    emulator.refuse_connections(True)
    bot = make_bot(extra=HEALTH)
    bot.start(env=notify.env(WATCHDOG_USEC), wait_ready=False)
    bot.wait_log("cannot connect to Feishu", timeout=15)
    time.sleep(1.5)
    assert notify.first("READY=1") is None
    assert any(s.startswith("connecting") for s in notify.statuses())
    assert notify.times("WATCHDOG=1"), "the watchdog is fed while connecting (start timeout rules)"
    refused_until = time.monotonic()
    emulator.refuse_connections(False)
    ready_at = notify.wait("READY=1", timeout=30)
    assert ready_at > refused_until
    assert emulator.connect_count == 1
    wait_until(lambda: any(s.startswith("connected") for s in notify.statuses()), 10, "STATUS")


def test_watchdog_cadence_and_status(
    make_bot: MakeBot, emulator: FeishuEmulator, notify: NotifySocket
) -> None:
    start(make_bot, notify)
    time.sleep(4)
    feeds = notify.times("WATCHDOG=1")
    gaps = [b - a for a, b in itertools.pairwise(feeds)]
    assert len(feeds) >= 3
    assert all(0.5 < g < 2.0 for g in gaps[1:]), gaps  # ≈ WATCHDOG_USEC/2, never flooding
    status = notify.statuses()[-1]
    assert status.startswith("connected ") and "events today" in status and "outbox 0" in status


def test_wrong_watchdog_pid_means_no_watchdog(
    make_bot: MakeBot, emulator: FeishuEmulator, notify: NotifySocket
) -> None:
    bot = make_bot(extra=HEALTH)
    bot.start(env={**notify.env(WATCHDOG_USEC), "WATCHDOG_PID": "1"})
    time.sleep(2)
    assert notify.first("READY=1") is not None
    assert notify.times("WATCHDOG=1") == []


def assert_stalls(bot: Bot, notify: NotifySocket, since: float, why: str) -> None:
    """WATCHDOG=1 stops within the stall threshold (plus one feed interval and slack)."""
    bot.wait_log("stalled: ", timeout=STALL_AFTER + 10)
    assert why in bot.current_log()
    feeds_after = [t for t in notify.times("WATCHDOG=1") if t > since]
    assert not feeds_after or feeds_after[-1] - since <= STALL_AFTER + 2.0, feeds_after
    time.sleep(2.0)
    assert last_feed_gap(notify) > 2.0
    assert any(s.startswith("STALLED") for s in notify.statuses())


def test_stall_when_server_stops_answering_pings(
    make_bot: MakeBot, emulator: FeishuEmulator, notify: NotifySocket
) -> None:
    bot = start(make_bot, notify)
    since = time.monotonic()
    emulator.stall_heartbeat(True)
    assert_stalls(bot, notify, since, "no pong or frame from Feishu")
    # systemd would now send SIGABRT; faulthandler puts the stack in the journal.
    assert bot.stop(signal.SIGABRT) == -signal.SIGABRT
    log = bot.current_log()
    assert "Fatal Python error: Aborted" in log
    assert "most recent call first" in log


def test_stall_when_the_connection_goes_half_open(
    make_bot: MakeBot, emulator: FeishuEmulator, notify: NotifySocket
) -> None:
    bot = start(make_bot, notify)
    since = time.monotonic()
    emulator.go_silent(True)
    assert_stalls(bot, notify, since, "no pong or frame from Feishu")


def test_stall_when_reconnecting_exceeds_the_budget(
    make_bot: MakeBot, emulator: FeishuEmulator, notify: NotifySocket
) -> None:
    bot = start(make_bot, notify, extra=HEALTH + "  reconnect_budget: 4\n")
    emulator.refuse_connections(True)
    since = time.monotonic()
    emulator.drop_connections()
    bot.wait_log("Feishu long connection lost")
    assert_stalls(bot, notify, since, "over the budget")


def test_stall_when_the_event_loop_is_blocked(
    make_bot: MakeBot, emulator: FeishuEmulator, notify: NotifySocket, tmp_path: Path
) -> None:
    # Something on the loop that does not return (once a catastrophically backtracking
    # regex did this; rules now run with a time limit): here a blocking call injected into
    # rule matching when a message says "block".
    site = tmp_path / "inject"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import time\n"
        "from feishu_mailbot.core import rules\n"
        "_match = rules.match\n"
        "def match(rule, msg, *args):\n"
        "    if 'block' in msg.text:\n"
        "        time.sleep(3600)\n"
        "    return _match(rule, msg, *args)\n"
        "rules.match = match\n",
        encoding="utf-8",
    )
    bot = make_bot(extra=HEALTH, rules=ONE_RULE)
    bot.start(env={**notify.env(WATCHDOG_USEC), "PYTHONPATH": f"{site}:{REPO}"})
    notify.wait("READY=1")
    since = time.monotonic()
    emulator.push_text("oc_team", "ou_alice", "block")
    time.sleep(STALL_AFTER + 2)
    feeds_after = [t for t in notify.times("WATCHDOG=1") if t > since]
    assert not feeds_after or feeds_after[-1] - since < 1.5, feeds_after
    assert last_feed_gap(notify) > STALL_AFTER
    # systemd's watchdog would now abort us; the stack names the culprit.
    assert bot.stop(signal.SIGABRT) == -signal.SIGABRT
    log = bot.current_log()
    assert "Fatal Python error: Aborted" in log
    assert "sitecustomize.py" in log and "in match" in log


def test_short_outage_recovers_in_process(
    make_bot: MakeBot, emulator: FeishuEmulator, notify: NotifySocket
) -> None:
    bot = start(make_bot, notify)
    emulator.refuse_connections(True)
    emulator.drop_connections()
    bot.wait_log("Feishu long connection lost")
    time.sleep(5)
    emulator.refuse_connections(False)
    wait_until(lambda: emulator.connect_count >= 2, 30, "a reconnect")
    time.sleep(1.5)
    feeds = notify.times("WATCHDOG=1")
    gaps = [b - a for a, b in itertools.pairwise(feeds)]
    assert max(gaps) < 2.0, gaps  # never stopped feeding
    assert "stalled" not in bot.current_log()
    assert bot.proc is not None and bot.proc.poll() is None
    wait_until(lambda: notify.statuses()[-1].startswith("connected"), 10, "connected STATUS")
    assert any(s.startswith("reconnecting") for s in notify.statuses())


def test_sighup_reload_applies_rules_without_reconnecting(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, notify: NotifySocket
) -> None:
    bot = start(make_bot, notify, rules=ONE_RULE)
    text = bot.config.read_text("utf-8")
    bot.config.write_text(text.replace("keywords: [故障]", "keywords: [故障, 宕机]"), "utf-8")
    reload_at = time.monotonic()
    assert bot.proc is not None
    bot.proc.send_signal(signal.SIGHUP)
    notify.wait("RELOADING=1", after=reload_at)
    notify.wait("READY=1", after=reload_at)
    bot.wait_log("configuration reloaded")
    emulator.push_text("oc_team", "ou_alice", "服务器宕机了")
    [mail] = smtp.wait_for(1)
    assert "宕机" in str(mail["Subject"])
    assert emulator.connect_count == 1

    broken = bot.config.read_text("utf-8").replace("keywords: [故障, 宕机]", "keywords: [故障")
    bot.config.write_text(broken, "utf-8")
    bot.proc.send_signal(signal.SIGHUP)
    bot.wait_log("reload refused, keeping the running configuration")
    assert f"{bot.config}:" in bot.current_log().split("reload refused")[1].splitlines()[0]
    emulator.push_text("oc_team", "ou_alice", "又宕机了")
    smtp.wait_for(2)
    assert bot.proc.poll() is None and emulator.connect_count == 1


def test_sigterm_during_slow_smtp_neither_loses_nor_duplicates(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, notify: NotifySocket
) -> None:
    bot = start(make_bot, notify, rules=ONE_RULE)
    smtp.delay_per_message(3)
    event = emulator.push_text("oc_team", "ou_alice", "故障：慢 SMTP")
    emulator.wait_ack(event)
    wait_until(lambda: smtp.connections >= 1, 10, "the SMTP transaction to start")
    time.sleep(0.5)
    stop_at = time.monotonic()
    assert bot.stop(signal.SIGTERM) == 0
    notify.wait("STOPPING=1", after=stop_at - 1)
    delivered_before_stop = len(smtp.messages)
    smtp.delay_per_message(0)
    bot.start(env=notify.env(WATCHDOG_USEC))
    if delivered_before_stop == 0:
        smtp.wait_for(1, timeout=15)
    time.sleep(1.5)
    assert len(smtp.messages) == 1
    assert bot.stop() == 0


def test_log_lines_carry_structured_fields(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, notify: NotifySocket
) -> None:
    bot = start(make_bot, notify, rules=ONE_RULE)
    event = emulator.push_text("oc_team", "ou_alice", "故障")
    smtp.wait_for(1)
    bot.wait_log("mail forward sent")
    message_id = event["event"]["message"]["message_id"]
    accepted = next(line for line in bot.current_log().splitlines() if "message accepted" in line)
    for field in (
        "CHAT_ID=oc_team",
        f"MESSAGE_ID={message_id}",
        f"EVENT_ID={event['header']['event_id']}",
        "RULE=oncall",
    ):
        assert field in accepted
    sent = next(line for line in bot.current_log().splitlines() if "mail forward sent" in line)
    assert f"MESSAGE_ID={message_id}" in sent and "MAIL_ID=" in sent


def test_missing_scope_is_named_in_the_log_and_in_status(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, notify: NotifySocket
) -> None:
    emulator.missing_scopes.add("contact:user.base:readonly")
    bot = start(make_bot, notify, rules=ONE_RULE)
    emulator.push_text("oc_team", "ou_alice", "故障")
    [mail] = smtp.wait_for(1)
    assert "ou_alice" in str(mail["Subject"])  # the mail still goes, with the open_id
    bot.wait_log("Feishu refused user info for a missing permission")
    assert "contact:user.base:readonly" in bot.current_log()
    wait_until(
        lambda: "missing Feishu permission for user info" in notify.statuses()[-1], 15, "STATUS"
    )
