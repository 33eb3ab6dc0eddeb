"""A recall or a drop is final: no failure path puts the mail back in the queue.

The real daemon, the emulator and aiosmtpd. Each test stops the daemon in the
middle of preparing or sending a mail (a download held at the emulator, a DATA
held at the relay), acts, and then lets the attempt fail: before lifecycle.py
each of these mailed the recalled or dropped message on the next attempt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cli.test_live import queue_ids
from tests.feishu_emulator import FeishuEmulator
from tests.harness import Bot, fill, wait_until
from tests.kit import SQLITE, Backend
from tests.smtp_server import SmtpServer

MakeBot = Callable[..., Bot]
ONE_RULE = "- name: oncall\n  keywords: [故障]\n  to: [oncall@example.com]\n"
IMAGES = "- name: files\n  regex: '\\[图片\\]'\n  to: [files@example.com]\n"
NOTIFY = ONE_RULE + "  notify_recall: true\n"
# Longer than a few retries at retry_initial 0.2 s: a mail put back would be sent in it.
QUIET = 3.0


def statuses(bot: Bot, backend: Backend = SQLITE) -> list[str]:
    state = backend.state(bot.config.parent / "state" / "feishu-mailbot.db", readonly=True)
    try:
        return state.read(
            lambda tx: [r[0] for r in tx.execute("SELECT status FROM outbox ORDER BY rowid")]
        )
    finally:
        state.close()


def image_held(emulator: FeishuEmulator, key: str) -> dict[str, Any]:
    """An image message whose download waits at the emulator, then is rate-limited
    (频控策略: HTTP 429, code 99991400) once released."""
    emulator.register_resource(key, b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png")
    emulator.hold_resource(key)
    emulator.fail_resource(key)
    event = emulator.push_message("oc_team", "ou_alice", "image", {"image_key": key})
    emulator.wait_ack(event)
    emulator.wait_for(lambda: emulator.resources_held == 1, 15)
    return event


def rate_limit_then_heal(emulator: FeishuEmulator, key: str) -> None:
    """The held download answers 429; later ones would succeed, so a mail put back in
    the queue would go out."""
    emulator.release_resource(key)
    wait_until(lambda: emulator.resources_held == 0, 10, "the download answered")
    time.sleep(0.3)
    emulator.fail_resource(key, None)


def test_a_mail_recalled_while_prepared_is_never_sent(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, backend: Backend
) -> None:
    bot = make_bot(rules=IMAGES, extra=backend.config).start()
    event = image_held(emulator, "img_recalled")
    message_id = event["event"]["message"]["message_id"]
    emulator.wait_ack(emulator.push_recall(message_id, "oc_team"))
    bot.wait_log("message recalled: 1 pending mail cancelled")
    rate_limit_then_heal(emulator, "img_recalled")
    time.sleep(QUIET)
    assert smtp.messages == []
    assert statuses(bot, backend) == ["cancelled"]
    assert "is not tried again: its message was recalled" in bot.log()
    assert bot.stop() == 0


def test_a_mail_dropped_while_prepared_is_never_sent(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, backend: Backend
) -> None:
    bot = make_bot(rules=IMAGES, extra=backend.config).start()
    image_held(emulator, "img_dropped")
    [row_id] = queue_ids(bot)
    dropped = bot.cli("drop", str(row_id), "--yes")
    assert dropped.returncode == 0, dropped.stderr
    assert "1 mail dropped" in dropped.stdout
    rate_limit_then_heal(emulator, "img_dropped")
    time.sleep(QUIET)
    assert smtp.messages == []
    assert statuses(bot, backend) == ["dropped"]
    assert "is not tried again: an operator dropped it" in bot.log()
    # And the table refuses to bring it back.
    retried = bot.cli("retry", str(row_id))
    assert retried.returncode == 65
    assert f"mail {row_id}: not retried: an operator dropped it" in retried.stderr
    assert bot.stop() == 0


def test_a_mail_recalled_while_sent_ends_cancelled_if_the_relay_refuses_it(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, backend: Backend
) -> None:
    bot = make_bot(rules=NOTIFY, extra=backend.config).start()
    smtp.hold_data()
    event = emulator.push_text("oc_team", "ou_alice", "故障：撤回中")
    smtp.wait_holding()
    emulator.wait_ack(emulator.push_recall(event["event"]["message"]["message_id"], "oc_team"))
    bot.wait_log("message recalled")
    recalled_while = statuses(bot, backend)
    smtp.answer_data("451 4.3.0 try again later")
    time.sleep(QUIET)
    assert smtp.messages == []  # neither the mail nor a notice of a mail never received
    assert statuses(bot, backend) == ["cancelled"]
    assert recalled_while == ["recalling"]
    assert "1 being sent (cancelled unless the relay accepts it)" in bot.log()
    assert "is not tried again: its message was recalled" in bot.log()
    assert bot.stop() == 0


def test_a_mail_recalled_while_sent_and_accepted_gets_its_recall_notice(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, backend: Backend
) -> None:
    bot = make_bot(rules=NOTIFY, extra=backend.config).start()
    smtp.hold_data()
    event = emulator.push_text("oc_team", "ou_alice", "故障：撤回太晚")
    smtp.wait_holding()
    emulator.wait_ack(emulator.push_recall(event["event"]["message"]["message_id"], "oc_team"))
    bot.wait_log("message recalled")
    smtp.answer_data()  # 250: the relay had it before the recall could stop it
    [mail, notice] = smtp.wait_for(2)
    assert "撤回太晚" in str(mail["Subject"])
    assert str(notice["Subject"]).startswith("[已撤回]")
    assert notice["In-Reply-To"] == mail["Message-ID"]
    wait_until(lambda: statuses(bot, backend) == ["sent", "sent"], 10, "both recorded as sent")
    assert "its message was recalled meanwhile" in bot.log()
    assert bot.stop() == 0


def test_an_attempt_the_full_disk_kept_from_recording_is_finished_without_a_restart(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, small_disk: Path
) -> None:
    """The relay answers while the state cannot record it: the mail is not left
    claimed ('sending') until a restart, but retried once the space is back."""
    bot = make_bot(rules=ONE_RULE).start()
    smtp.hold_data()
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "故障：写不进去"))
    smtp.wait_holding()
    filler = fill(small_disk)
    smtp.answer_data("451 4.3.0 try again later")
    bot.wait_log("outbox paused: the state database refused work", timeout=20)
    assert statuses(bot) == ["sending"]
    time.sleep(1.0)
    filler.unlink()
    freed = time.monotonic()
    [mail] = smtp.wait_for(1, timeout=40)
    took = time.monotonic() - freed
    assert "写不进去" in str(mail["Subject"])
    # Within seconds, not at the end of a long backoff (doorbell.STATE_RETRY_MAX is 5 s); the
    # bound is loose so that a busy machine cannot fail it, a minute-long wait would.
    assert took < 20, f"delivered {took:.1f} s after the space came back"
    wait_until(lambda: statuses(bot) == ["sent"], 10, "the mail recorded as sent")
    assert "outcomes of 1 mail attempts recorded" in bot.log()
    time.sleep(1.0)
    assert len(smtp.received) == 1
    assert bot.stop() == 0


def test_an_accepted_mail_the_full_disk_kept_from_recording_is_not_sent_twice(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, small_disk: Path
) -> None:
    bot = make_bot(rules=ONE_RULE).start()
    smtp.hold_data()
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "故障：已送达未记下"))
    smtp.wait_holding()
    filler = fill(small_disk)
    smtp.answer_data()  # 250: delivered, but "sent" cannot be written
    smtp.wait_for(1)
    bot.wait_log("outbox paused: the state database refused work", timeout=20)
    filler.unlink()
    wait_until(lambda: statuses(bot) == ["sent"], 40, "the mail recorded as sent")
    time.sleep(QUIET)
    assert len(smtp.received) == 1
    assert "outcomes of 1 mail attempts recorded" in bot.log()
    assert bot.stop() == 0
