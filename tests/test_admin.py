"""The operator's commands (status, queue, show, retry, drop) against a running daemon."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.feishu_emulator import FeishuEmulator
from tests.harness import REPO, Bot, wait_until
from tests.smtp_server import SmtpServer

MakeBot = Callable[..., Bot]
ONE_RULE = "- name: oncall\n  keywords: [故障]\n  to: [oncall@example.com]\n"


def cli(bot: Bot, *args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "feishu_mailbot", "--config", str(bot.config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def queue_ids(bot: Bot, *args: str) -> list[int]:
    listing = json.loads(cli(bot, "queue", "--json", *args).stdout)
    return [int(e["id"]) for e in listing]


def test_status_while_running_and_after_a_stop(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = make_bot(rules=ONE_RULE).start()
    assert bot.proc is not None
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "故障：状态"))
    smtp.wait_for(1, timeout=10)
    wait_until(lambda: "outbox 0" in cli(bot, "status").stdout, 15, "a recorded status")
    out = cli(bot, "status")
    assert out.returncode == 0, out.stderr
    assert f"daemon: running (pid {bot.proc.pid}): connected" in out.stdout
    assert "events today: 1" in out.stdout
    assert "mail: 0 pending, 0 retrying, 0 sending, 0 failed" in out.stdout
    data = json.loads(cli(bot, "status", "--json").stdout)
    assert data["running"] and data["connected"] and data["pid"] == bot.proc.pid
    assert data["mail"] == {"pending": 0, "retrying": 0, "sending": 0, "failed": 0}
    assert data["database_bytes"] > 0
    prom = cli(bot, "status", "--prometheus").stdout
    assert "feishu_mailbot_up 1\n" in prom and "feishu_mailbot_connected 1\n" in prom
    assert 'feishu_mailbot_mail{state="failed"} 0\n' in prom
    assert "# TYPE feishu_mailbot_database_bytes gauge" in prom
    assert bot.stop() == 0
    stopped = cli(bot, "status")
    assert "daemon: stopped" in stopped.stdout
    assert "feishu_mailbot_up 0\n" in cli(bot, "status", "--prometheus").stdout


def test_a_failed_mail_is_listed_shown_retried_and_delivered_once(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = make_bot(rules=ONE_RULE).start()
    smtp.permanent_fail_rcpt("oncall@example.com")
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "故障：要重试的邮件"))
    bot.wait_log("failed for good", timeout=15)
    [mail_id] = queue_ids(bot, "--failed")
    listing = cli(bot, "queue").stdout
    assert f"{mail_id:>6}  failed" in listing and "oncall@example.com" in listing
    assert "550 5.1.1" in listing
    shown = cli(bot, "show", str(mail_id)).stdout
    assert "Subject: [研发群] 张三: 故障：要重试的邮件" in shown
    assert "故障：要重试的邮件" in shown.split("\n\n", 2)[-1]  # the plain text
    assert "failed" in cli(bot, "status").stdout
    smtp._refused_rcpts.clear()  # the mailbox exists again
    retried = cli(bot, "retry", str(mail_id))
    assert retried.returncode == 0, retried.stderr
    assert "1 mail due now" in retried.stdout
    started = time.monotonic()
    [mail] = smtp.wait_for(1, timeout=10)
    assert time.monotonic() - started < 5  # picked up within a second or two
    assert "要重试的邮件" in str(mail["Subject"])
    time.sleep(1.5)
    assert len(smtp.received) == 1 and queue_ids(bot) == []
    assert bot.stop() == 0


def test_drop_needs_yes_and_takes_only_waiting_or_failed_mail(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = make_bot(rules=ONE_RULE).start()
    smtp.permanent_fail_rcpt("oncall@example.com")
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "故障：丢弃"))
    bot.wait_log("failed for good", timeout=15)
    [mail_id] = queue_ids(bot, "--failed")
    refused = cli(bot, "drop", str(mail_id))
    assert refused.returncode == 64 and "add --yes" in refused.stderr
    dropped = cli(bot, "drop", str(mail_id), "--yes")
    assert dropped.returncode == 0 and "1 mail dropped" in dropped.stdout
    assert queue_ids(bot) == []
    assert cli(bot, "drop", str(mail_id), "--yes").returncode == 65  # already gone
    assert cli(bot, "show", "999").returncode == 65
    assert bot.stop() == 0


def test_a_quarantined_event_is_listed_retried_and_dropped(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = make_bot(rules=ONE_RULE).start()
    # An event an older release could not take: kept raw, as the daemon keeps it.
    event = emulator.build_message_event(
        "oc_team", "ou_alice", "text", {"text": "故障：隔离后重试"}
    )
    key = event["header"]["event_id"]
    poison = emulator.build_message_event("oc_team", "ou_alice", "text", {"text": "\ud83d 故障"})
    emulator.wait_ack(emulator.push_raw(poison))
    bot.wait_log("event quarantined")
    db = sqlite3.connect(bot.config.parent / "state" / "feishu-mailbot.db")
    with db:
        db.execute(
            "INSERT INTO quarantine (key, received_at, reason, payload) VALUES (?, ?, ?, ?)",
            (key, time.time(), "KeyError: 'fixed since'", json.dumps(event).encode()),
        )
    db.close()
    held = cli(bot, "queue", "--quarantined").stdout
    assert key in held and "fixed since" in held and poison["header"]["event_id"] in held
    assert "quarantined events: 2" in cli(bot, "status").stdout
    retried = cli(bot, "retry", "--all-quarantined")
    assert "2 quarantined events to be taken again" in retried.stdout
    [mail] = smtp.wait_for(1, timeout=10)  # the one this release takes
    assert "隔离后重试" in str(mail["Subject"])
    bot.wait_log("quarantined event taken on retry")
    # The poison is held again, with today's reason; then the operator drops it.
    wait_until(
        lambda: key not in cli(bot, "queue", "--quarantined").stdout, 10, "the retried one released"
    )
    bad = poison["header"]["event_id"]
    assert re.search(rf"{bad}\s+held", cli(bot, "queue", "--quarantined").stdout)
    assert cli(bot, "drop", "--quarantined", bad, "--yes").stdout.startswith("1 quarantined")
    assert "no quarantined events" in cli(bot, "queue", "--quarantined").stdout
    assert bot.stop() == 0


def test_a_user_who_cannot_read_the_state_gets_one_line(make_bot: MakeBot) -> None:
    bot = make_bot(rules=ONE_RULE).start()
    # As installed, an ordinary user cannot read the config (0640 root:feishu-mailbot) ...
    out = cli(bot, "status", user=65534)
    assert out.returncode == 78 and out.stderr.count("\n") == 1
    assert "permission denied (run as root or as the feishu-mailbot user)" in out.stderr
    # ... nor, with a readable copy, the state directory (0750 feishu-mailbot).
    with tempfile.TemporaryDirectory() as public:
        os.chmod(public, 0o755)
        copy = Path(public) / "feishu-mailbot.yaml"
        copy.write_text(bot.config.read_text("utf-8"), "utf-8")
        copy.chmod(0o644)
        out = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-m", "feishu_mailbot", "--config", str(copy), "status"],
            capture_output=True, text=True, timeout=60, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    assert out.returncode == 77, (out.returncode, out.stderr)
    assert out.stderr.count("\n") == 1 and "permission denied: run it as root" in out.stderr
    assert bot.stop() == 0
