"""Nothing stops mail silently: a bad item fails alone, a dead or hung worker ends the process.

The real daemon against the emulator and a real SMTP server. Faults are real: an event
whose values break composing, and, for the workers, code injected into the daemon
process at start-up through `sitecustomize` (the daemon's own modules, patched in its
own interpreter, so the supervision under test is the shipped one).
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from tests.feishu_emulator import FeishuEmulator
from tests.harness import REPO, Bot, NotifySocket, wait_until
from tests.smtp_server import SmtpServer
from tests.test_lifecycle import WATCHDOG_USEC, last_feed_gap

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
