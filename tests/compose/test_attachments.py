"""Bounded attachments, against the real daemon, the emulator and aiosmtpd.

A file over a cap (or over the relay's SIZE) is not downloaded past the cap
and the mail names it instead; a file within the caps goes through a spool
file, and neither costs the daemon much more memory than the cap itself.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

from tests.feishu_emulator import FeishuEmulator
from tests.harness import REPO, SMTP_PASSWORD, SMTP_USER, Bot, write_config
from tests.smtp_server import SmtpServer

MakeBot = Callable[..., Bot]
MB = 1024 * 1024
FILES = "- name: files\n  regex: '\\[文件\\]'\n  to: [files@example.com]\n"


def memory_kb(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (the most the process ever had resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def post_file(emulator: FeishuEmulator, key: str, name: str) -> dict[str, object]:
    return emulator.push_message(
        "oc_team", "ou_alice", "file", {"file_key": key, "file_name": name}
    )


def attached(mail: EmailMessage) -> dict[str, bytes]:
    return {
        str(part.get_filename()): part.get_payload(decode=True)
        for part in mail.walk()
        if part.get_filename()
    }


def text_of(mail: EmailMessage) -> str:
    body = mail.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def html_of(mail: EmailMessage) -> str:
    body = mail.get_body(("html",))
    assert body is not None
    return str(body.get_content())


def test_a_60_mb_file_is_named_not_sent_and_costs_little_memory(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    big = os.urandom(60 * MB)
    emulator.register_resource("file_big", big, "application/zip", "report.zip")
    emulator.register_resource("file_big_chunked", big, "application/zip", chunked=True)
    bot = make_bot(rules=FILES).start()
    assert bot.proc is not None
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "warm up"))
    steady_kb = memory_kb(bot.proc.pid, "VmRSS")
    post_file(emulator, "file_big", "report.zip")
    acks = [emulator.wait_ack(emulator.push_text("oc_team", "ou_bob", f"x{i}")) for i in range(20)]
    post_file(emulator, "file_big_chunked", "dump.bin")
    acks += [emulator.wait_ack(emulator.push_text("oc_team", "ou_bob", f"y{i}")) for i in range(20)]
    first, second = smtp.wait_for(2, timeout=30)
    peak_kb = memory_kb(bot.proc.pid, "VmHWM")

    # Content-Length said 60 MB: named with its size, never downloaded.
    assert attached(first) == {}
    assert "附件过大，请在飞书中查看:\n- report.zip (60.0 MB)" in text_of(first)
    assert "<li>report.zip (60.0 MB)</li>" in html_of(first)
    # No Content-Length: read up to the 20 MB cap, then abandoned.
    assert attached(second) == {}
    assert "- dump.bin (超过 20.0 MB)" in text_of(second)
    assert emulator.resource_bytes_sent < 40 * MB  # neither was read through
    assert (peak_kb - steady_kb) / 1024 < 40, (steady_kb, peak_kb)
    assert all(a.code == 200 for a in acks)
    assert max(a.ms for a in acks) < 50, " ".join(str(round(a.ms)) for a in acks)
    log = bot.current_log()
    assert "file file_big left out of the mail: 62914560 bytes" in log
    assert bot.stop() == 0


def test_a_file_within_the_caps_goes_through_the_spool_intact(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, tmp_path: Path
) -> None:
    data = os.urandom(3 * MB)
    emulator.register_resource("file_ok", data, "application/pdf", "设计稿.pdf")
    bot = make_bot(rules=FILES).start()
    emulator.wait_ack(post_file(emulator, "file_ok", "设计稿.pdf"))
    [mail] = smtp.wait_for(1, timeout=30)
    assert attached(mail) == {"设计稿.pdf": data}
    assert "附件过大" not in text_of(mail)
    assert bot.stop() == 0
    state = tmp_path / "state"
    assert list((state / "spool").iterdir()) == []  # removed once sent
    db = sqlite3.connect(state / "feishu-mailbot.db")
    rows = db.execute("SELECT status, subject, raw, spool FROM outbox").fetchall()
    assert [(status, raw, spool) for status, _, raw, spool in rows] == [("sent", None, None)]
    assert rows[0][1]  # the subject stays, for `status` and recall notices


def test_the_relays_size_is_honoured(emulator: FeishuEmulator, tmp_path: Path) -> None:
    two, half = os.urandom(2 * MB), os.urandom(MB // 2)
    emulator.register_resource("file_2mb", two, "application/pdf", "a.pdf")
    emulator.register_resource("file_half", half, "application/pdf", "b.pdf")
    # The relay takes mail up to 2 MB (EHLO SIZE): 2 MB of file is 2.7 MB encoded.
    with SmtpServer(require_auth=(SMTP_USER, SMTP_PASSWORD), size_limit=2 * MB) as relay:
        config = write_config(
            tmp_path, feishu_url=emulator.base_url, smtp_port=relay.port, rules=FILES
        )
        bot = Bot(config, tmp_path).start()
        try:
            post_file(emulator, "file_2mb", "a.pdf")
            first = relay.wait_for(1, timeout=30)[0]
            post_file(emulator, "file_half", "b.pdf")
            second = relay.wait_for(2, timeout=30)[1]
        finally:
            assert bot.stop() == 0
    assert attached(first) == {}
    assert "- a.pdf (2.0 MB)" in text_of(first)
    assert attached(second) == {"b.pdf": half}


def test_the_caps_in_the_config_hold(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    two, half = os.urandom(2 * MB), os.urandom(MB // 2)
    emulator.register_resource("file_2mb", two, "application/pdf", "a.pdf")
    emulator.register_resource("file_half", half, "application/pdf", "b.pdf")
    bot = make_bot(rules=FILES, extra="attachments:\n  max_file_mb: 1\n").start()
    post_file(emulator, "file_2mb", "a.pdf")
    first = smtp.wait_for(1, timeout=30)[0]
    post_file(emulator, "file_half", "b.pdf")
    second = smtp.wait_for(2, timeout=30)[1]
    assert attached(first) == {}
    assert "- a.pdf (2.0 MB)" in text_of(first)
    assert attached(second) == {"b.pdf": half}
    assert bot.stop() == 0


def test_a_digest_leaves_out_an_image_its_relay_would_refuse(
    emulator: FeishuEmulator, tmp_path: Path
) -> None:
    """The digest is composed away from the outbox; it asks the relay's SIZE itself."""
    emulator.register_resource("img_big", os.urandom(2 * MB), "image/png")
    emulator.register_resource("img_small", os.urandom(10_000), "image/png")
    reports = "daily_report:\n  chat: oc_team\n  recipients: [boss@example.com]\n"
    with SmtpServer(require_auth=(SMTP_USER, SMTP_PASSWORD), size_limit=2 * MB) as relay:
        config = write_config(
            tmp_path,
            feishu_url=emulator.base_url,
            smtp_port=relay.port,
            rules="- name: never\n  keywords: [zz-never-zz]\n  to: [x@example.com]\n",
            extra=reports,
        )
        bot = Bot(config, tmp_path).start()
        try:
            for key in ("img_big", "img_small"):
                post = {"title": "日报", "content": [[{"tag": "img", "image_key": key}]]}
                emulator.wait_ack(emulator.push_message("oc_team", "ou_alice", "post", post))
            sent = subprocess.run(
                [sys.executable, "-m", "feishu_mailbot", "--config", str(config), "send-report"],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            assert sent.returncode == 0, sent.stderr
            [digest] = relay.wait_for(1, timeout=30)
        finally:
            assert bot.stop() == 0
    images = [p for p in digest.walk() if p.get_content_type() == "image/png"]
    assert len(images) == 1 and len(images[0].get_payload(decode=True)) == 10_000
    assert "[图片未能下载]" in html_of(digest)
    assert "digest image img_big left out: over the attachment caps" in sent.stderr
