"""Chat content on an operator's terminal: control characters escaped, never raw.

DESIGN's "what bad input gets": a chat member who posts ``ESC ] 52`` must not
write the operator's clipboard when the operator runs `show`, nor retitle the
terminal, clear it, or reorder what it shows. Each command is run for real
(the daemon, the emulator, aiosmtpd) and its stdout read as bytes: text mode
would turn a lone CR into a line break and hide it.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.cli.test_live import failed_mail, queue_ids
from tests.compose.test_daily_report import bot_with_reports, report_config
from tests.feishu_emulator import FeishuEmulator
from tests.harness import REPO, Bot, wait_until, write_config
from tests.smtp_server import SmtpServer

MakeBot = Callable[..., Bot]

# A bidi override (early: the subject shows it), an OSC 52 clipboard write, a title
# change, a CSI clear and a C1 CSI colour, BS, a lone CR; and what must come through
# intact: Chinese, emoji (one with a zero-width joiner), a second line and a tab.
HOSTILE = (
    "故障 \u202eevil\u202c \x1b]52;c;ZWNobyBvd25lZA==\x07 \x1b]0;owned\x07 \x1b[2J "
    "\x9b31mred back\bspace\rCR 😀👩\u200d💻\n第二行\t制表"
)
RAW = {
    "ESC": b"\x1b",
    "BEL": b"\x07",
    "BS": b"\x08",
    "CR": b"\r",
    "C1 CSI": "\x9b".encode(),
    "RLO": "\u202e".encode(),
}


def run(*args: str, config: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "feishu_mailbot", "--config", str(config), *args],
        capture_output=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def escaped(out: bytes) -> str:
    """stdout with no raw control reaching the terminal; decoded, for the escaped forms."""
    leaked = [name for name, raw in RAW.items() if raw in out]
    assert not leaked, f"raw {leaked} written to the terminal: {out!r}"
    text = out.decode("utf-8")
    assert "\\x1b]52;c;ZWNobyBvd25lZA==\\x07" in text and "\\x1b]0;owned\\x07" in text, text
    assert "\\x9b31mred" in text and "\\u202eevil\\u202c" in text, text
    assert "😀👩\u200d💻" in text, text
    return text


def test_the_one_escaping_function() -> None:
    from feishu_mailbot.core.text import terminal, terminal_json

    layout = "张三：上线了 😀👩\u200d💻\n\t- 第二行\r\n第三行"
    assert terminal(layout) == layout.replace("\r\n", "\n")  # layout and text kept
    assert terminal(HOSTILE, one_line=True).count("\n") == 0
    assert terminal("a\rb\x7f\x85\u2028\u2066c\ud83d") == "a\\x0db\\x7f\\x85\\u2028\\u2066c\\ud83d"
    assert terminal(" a \n\t b ", one_line=True) == "a b"
    doc = terminal_json({"subject": HOSTILE})
    assert json.loads(doc) == {"subject": HOSTILE}  # still JSON, meaning the same
    assert not any(raw.decode() in doc for raw in RAW.values())


def test_show_and_queue_escape_a_hostile_message(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot, mail_id = failed_mail(make_bot, emulator, smtp, HOSTILE)
    shown = run("show", str(mail_id), config=bot.config)
    assert shown.returncode == 0, shown.stderr
    text = escaped(shown.stdout)
    assert "space\\x0dCR" in text
    assert "\n第二行\t制表" in text  # the body keeps its lines and tabs
    listing = run("queue", config=bot.config)
    assert listing.returncode == 0, listing.stderr
    leaked = [name for name, raw in RAW.items() if raw in listing.stdout]
    assert not leaked and "\\u202eevil\\u202c" in listing.stdout.decode(), listing.stdout
    as_json = run("queue", "--json", config=bot.config)
    assert not [name for name, raw in RAW.items() if raw in as_json.stdout], as_json.stdout
    [entry] = json.loads(as_json.stdout)
    assert "\u202eevil" in entry["subject"]  # JSON escapes, read back as they were
    assert queue_ids(bot) == [mail_id]
    assert bot.stop() == 0


def test_send_report_dry_run_escapes_the_reports(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    bot = bot_with_reports(make_bot, emulator, extra=report_config()).start()
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "日报：" + HOSTILE))
    wait_until(lambda: emulator.reactions, 15, "the acknowledging reaction")
    dry = run("send-report", "--dry-run", config=bot.config)
    assert dry.returncode == 0, dry.stderr
    text = escaped(dry.stdout)
    assert "第二行\t制表" in text
    assert bot.stop() == 0


def test_simulate_shows_the_mail_readable_and_escaped(tmp_path: Path) -> None:
    config = write_config(tmp_path, feishu_url="http://127.0.0.1:9", smtp_port=25)
    out = run("simulate", "--chat", "oc_team", "--sender", "ou_a", HOSTILE, config=config)
    assert out.returncode == 0, out.stderr
    text = escaped(out.stdout)
    mail = email.message_from_string(text.split("-" * 72 + "\n", 1)[1], policy=email.policy.default)
    assert str(mail["Subject"]).startswith("[研发群] ou_a: 故障")
    assert "\n第二行\t制表" in text  # the plain text, as the recipient reads it


def test_chats_escapes_a_hostile_chat_name(make_bot: MakeBot, emulator: FeishuEmulator) -> None:
    emulator.register_chat("oc_evil", "群\x1b]0;owned\x07\x9b2J\u202e名 😀")
    out = run("chats", config=make_bot().config)
    assert out.returncode == 0, out.stderr
    assert not [name for name, raw in RAW.items() if raw in out.stdout], out.stdout
    assert "群\\x1b]0;owned\\x07\\x9b2J\\u202e名 😀" in out.stdout.decode()
