"""The operator's commands (status, queue, show, retry, drop) against a running daemon."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from feishu_mailbot.state.schema import SCHEMA_VERSION
from tests.feishu_emulator import FeishuEmulator
from tests.harness import REPO, Bot, wait_until
from tests.kit import SQLITE, Backend
from tests.smtp_server import SmtpServer

MakeBot = Callable[..., Bot]
ONE_RULE = "- name: oncall\n  keywords: [故障]\n  to: [oncall@example.com]\n"


def queue_ids(bot: Bot, *args: str) -> list[int]:
    listing = json.loads(bot.cli("queue", "--json", *args).stdout)
    return [int(e["id"]) for e in listing]


def failed_mail(
    make_bot: MakeBot,
    emulator: FeishuEmulator,
    smtp: SmtpServer,
    text: str,
    backend: Backend = SQLITE,
) -> tuple[Bot, int]:
    """A running bot with one mail its relay refused for good; the mail's queue id."""
    bot = make_bot(rules=ONE_RULE, extra=backend.config).start()
    smtp.permanent_fail_rcpt("oncall@example.com")
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", text))
    bot.wait_log("failed for good", timeout=15)
    [mail_id] = queue_ids(bot, "--failed")
    return bot, mail_id


def test_status_while_running_and_after_a_stop(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, backend: Backend
) -> None:
    bot = make_bot(rules=ONE_RULE, extra=backend.config).start()
    assert bot.proc is not None
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "故障：状态"))
    smtp.wait_for(1, timeout=10)
    wait_until(lambda: "outbox 0" in bot.cli("status").stdout, 15, "a recorded status")
    out = bot.cli("status")
    assert out.returncode == 0, out.stderr
    assert f"daemon: running (pid {bot.proc.pid}): connected" in out.stdout
    assert "events today: 1" in out.stdout
    assert "mail: 0 pending, 0 retrying, 0 sending, 0 failed" in out.stdout
    data = json.loads(bot.cli("status", "--json").stdout)
    assert data["running"] and data["connected"] and data["pid"] == bot.proc.pid
    assert data["mail"] == {"pending": 0, "retrying": 0, "sending": 0, "failed": 0}
    assert data["database_bytes"] > 0
    prom = bot.cli("status", "--prometheus").stdout
    assert "feishu_mailbot_up 1\n" in prom and "feishu_mailbot_connected 1\n" in prom
    assert 'feishu_mailbot_mail{state="failed"} 0\n' in prom
    assert "# TYPE feishu_mailbot_database_bytes gauge" in prom
    assert bot.stop() == 0
    stopped = bot.cli("status")
    assert "daemon: stopped" in stopped.stdout
    assert "feishu_mailbot_up 0\n" in bot.cli("status", "--prometheus").stdout


def test_a_failed_mail_is_listed_shown_retried_and_delivered_once(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, backend: Backend
) -> None:
    bot, mail_id = failed_mail(make_bot, emulator, smtp, "故障：要重试的邮件", backend)
    listing = bot.cli("queue").stdout
    assert f"{mail_id:>6}  failed" in listing and "oncall@example.com" in listing
    assert "550 5.1.1" in listing
    shown = bot.cli("show", str(mail_id)).stdout
    assert "Subject: [研发群] 张三: 故障：要重试的邮件" in shown
    assert "故障：要重试的邮件" in shown.split("\n\n", 2)[-1]  # the plain text
    assert "failed" in bot.cli("status").stdout
    smtp._refused_rcpts.clear()  # the mailbox exists again
    retried = bot.cli("retry", str(mail_id))
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
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, backend: Backend
) -> None:
    bot, mail_id = failed_mail(make_bot, emulator, smtp, "故障：丢弃", backend)
    refused = bot.cli("drop", str(mail_id))
    assert refused.returncode == 64 and "add --yes" in refused.stderr
    dropped = bot.cli("drop", str(mail_id), "--yes")
    assert dropped.returncode == 0 and "1 mail dropped" in dropped.stdout
    assert queue_ids(bot) == []
    assert bot.cli("drop", str(mail_id), "--yes").returncode == 65  # already gone
    assert bot.cli("show", "999").returncode == 65
    assert bot.stop() == 0


def test_a_mail_is_named_by_its_number_or_by_the_journals_mail_id(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, backend: Backend
) -> None:
    bot, number = failed_mail(make_bot, emulator, smtp, "故障：按 MAIL_ID", backend)
    (entry,) = json.loads(bot.cli("queue", "--json").stdout)
    mail_id = entry["mail_id"]
    assert f"MAIL_ID={mail_id}" in bot.log()  # as the journal names it
    by_number, by_name = bot.cli("show", str(number)), bot.cli("show", mail_id)
    assert by_name.returncode == 0 and by_name.stdout == by_number.stdout
    for args in (("retry", "om_gone/x@example.com"), ("drop", "abc", "--yes"), ("show", "x")):
        out = bot.cli(*args)
        assert out.returncode == 65, (args, out.stderr)
        assert f"no mail {args[1]} in the outbox" in out.stderr and "Traceback" not in out.stderr
    assert bot.cli("drop", mail_id, "--yes").stdout.startswith("1 mail dropped")
    assert bot.stop() == 0


def queued_mail(bot: Bot, count: int, size: int = 0, spooled: bool = False) -> list[int]:
    """`count` digests queued in the bot's (stopped) state, `size` bytes each; their ids."""
    from feishu_mailbot.state import State, outbox
    from feishu_mailbot.state.outbox import Prepared

    state = State(bot.config.parent / "state" / "feishu-mailbot.db")
    body = b"Subject: big\r\n\r\n" + b"x" * size
    for n in range(count):
        mail_id = f"digest/{n}"
        if spooled:
            state.spool.directory.mkdir(exist_ok=True)
            name = f"{n:024x}-0123456789abcdef.eml"
            state.spool.path(name).write_bytes(body)
            prepared = Prepared(f"big {n}", spool=name)
        else:
            prepared = Prepared(f"big {n}", raw=body)
        state.write_now(
            partial(
                outbox.queue,
                mail_id=mail_id,
                kind="digest",
                recipients=["boss@example.com"],
                prepared=prepared,
                now=time.time(),
            )
        )
    ids = state.read(lambda tx: [r[0] for r in tx.execute("SELECT rowid FROM outbox")])
    state.close()
    return ids


def test_queue_lists_large_mail_without_reading_it(make_bot: MakeBot) -> None:
    """40 digests of 4 MB: `queue` reads their subjects, not their 160 MB."""
    bot = make_bot(rules=ONE_RULE)
    bot.start().stop()
    queued_mail(bot, 40, size=4 * 1024 * 1024)
    # The command runs under a parent of its own, which reports its child's peak RSS.
    measure = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr);"
        "sys.exit(r.returncode)"
    )
    command = [sys.executable, "-m", "feishu_mailbot", "--config", str(bot.config), "queue"]
    for form in ([], ["--json"]):
        out = subprocess.run(
            [sys.executable, "-c", measure, *command, *form], capture_output=True, text=True,
            timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert out.returncode == 0 and "big 39" in out.stdout, out.stderr
        peak_mb = int(out.stderr.split()[-1]) / 1024
        print(f"queue {form}: {peak_mb:.0f} MB at peak")
        assert peak_mb < 100, f"queue {form} peaked at {peak_mb:.0f} MB"


def test_show_survives_the_mail_file_vanishing_while_it_reads(
    make_bot: MakeBot, tmp_path: Path
) -> None:
    """The daemon sends a spooled mail and removes its file just as `show` reads it."""
    bot = make_bot(rules=ONE_RULE)
    bot.start().stop()
    [row_id] = queued_mail(bot, 1, size=300 * 1024, spooled=True)
    site = tmp_path / "inject"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import pathlib\n"
        "read = pathlib.Path.read_bytes\n"
        "def vanishing(self):\n"
        "    if self.suffix == '.eml':\n"
        "        self.unlink()  # the daemon sent it and removed it, just now\n"
        "    return read(self)\n"
        "pathlib.Path.read_bytes = vanishing\n",
        encoding="utf-8",
    )
    out = subprocess.run(
        [sys.executable, "-m", "feishu_mailbot", "--config", str(bot.config), "show", str(row_id)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{site}:{REPO}"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert "subject: big 0" in out.stdout and "its file is gone" in out.stdout


def test_a_quarantined_event_is_listed_retried_and_dropped(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, backend: Backend
) -> None:
    bot = make_bot(rules=ONE_RULE, extra=backend.config).start()
    # An event an older release could not take: kept raw, as the daemon keeps it.
    event = emulator.build_message_event(
        "oc_team", "ou_alice", "text", {"text": "故障：隔离后重试"}
    )
    key = event["header"]["event_id"]
    poison = emulator.build_message_event("oc_team", "ou_alice", "text", {"text": "\ud83d 故障"})
    emulator.wait_ack(emulator.push_raw(poison))
    bot.wait_log("event quarantined")
    state = backend.state(bot.config.parent / "state" / "feishu-mailbot.db")
    state.write_now(
        lambda tx: tx.execute(
            "INSERT INTO quarantine (key, received_at, reason, payload) VALUES (?, ?, ?, ?)",
            (key, time.time(), "KeyError: 'fixed since'", json.dumps(event).encode()),
        )
    )
    state.close()
    held = bot.cli("queue", "--quarantined").stdout
    assert key in held and "fixed since" in held and poison["header"]["event_id"] in held
    assert "quarantined events: 2" in bot.cli("status").stdout
    retried = bot.cli("retry", "--all-quarantined")
    assert "2 quarantined events to be taken again" in retried.stdout
    [mail] = smtp.wait_for(1, timeout=10)  # the one this release takes
    assert "隔离后重试" in str(mail["Subject"])
    bot.wait_log("quarantined event taken on retry")
    # The poison is held again, with today's reason; then the operator drops it.
    wait_until(
        lambda: key not in bot.cli("queue", "--quarantined").stdout, 10, "the retried one released"
    )
    bad = poison["header"]["event_id"]
    assert re.search(rf"{bad}\s+held", bot.cli("queue", "--quarantined").stdout)
    assert bot.cli("drop", "--quarantined", bad, "--yes").stdout.startswith("1 quarantined")
    assert "no quarantined events" in bot.cli("queue", "--quarantined").stdout
    assert bot.stop() == 0


def test_a_user_who_cannot_read_the_state_gets_one_line(make_bot: MakeBot) -> None:
    bot = make_bot(rules=ONE_RULE).start()
    # As installed, an ordinary user cannot read the config (0640 root:feishu-mailbot) ...
    out = bot.cli("status", user=65534)
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


OLD_ENV = """\
# 飞书机器人配置
FEISHU_APP_ID=cli_a5f3e2d1c0b9
FEISHU_APP_SECRET=Qm7rT2vX9pL4sK8w
FEISHU_VERIFICATION_TOKEN=vt_1234567890
FEISHU_ENCRYPT_KEY=ek_abcdef

# 日报功能配置
DAILY_REPORT_ENABLED=True
DAILY_REPORT_CHAT_ID=oc_5ad573a6411d72b8305fda3a9c15c70e  # 重要：配置目标群组ID
DAILY_REPORT_SEND_MODE=manual
DAILY_REPORT_RECIPIENTS=manager@example.com, cto@example.com

# SMTP邮件配置
SMTP_SERVER=smtp.gmail.com
SMTP_PORT=587
SMTP_USER=team.bot@gmail.com
SMTP_PASSWORD="app pass #1"
USE_TLS=True
LOG_FILE=logs/bot.log
"""


def import_env(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = tmp_path / ".env"
    env.write_text(OLD_ENV, "utf-8")
    return subprocess.run(
        [sys.executable, "-m", "feishu_mailbot", "import-env", str(env), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_import_env_makes_a_config_that_means_what_the_old_one_did(tmp_path: Path) -> None:
    from feishu_mailbot.config import load

    made = import_env(tmp_path)
    assert made.returncode == 0, made.stderr
    path = tmp_path / "feishu-mailbot.yaml"
    path.write_text(made.stdout, "utf-8")
    checked = subprocess.run(
        [sys.executable, "-m", "feishu_mailbot", "--config", str(path), "check-config"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    s = load.load(str(path))
    assert (s.feishu.app_id, s.feishu.app_secret.reveal()) == (
        "cli_a5f3e2d1c0b9",
        "Qm7rT2vX9pL4sK8w",
    )
    assert [c.id for c in s.chats] == ["oc_5ad573a6411d72b8305fda3a9c15c70e"]
    assert s.daily_report is not None and s.daily_report.chat == s.chats[0].id
    assert s.daily_report.mode == "manual"
    assert s.daily_report.recipients == ("manager@example.com", "cto@example.com")
    assert (s.smtp.host, s.smtp.port, s.smtp.security) == ("smtp.gmail.com", 587, "starttls")
    assert s.smtp.username == "team.bot@gmail.com"
    assert s.smtp.password is not None and s.smtp.password.reveal() == "app pass #1"
    assert "team.bot@gmail.com" in s.smtp.sender
    assert "USE_TLS=True on port 587: STARTTLS" in made.stdout  # every choice says why
    notes = made.stderr
    assert "FEISHU_VERIFICATION_TOKEN dropped" in notes and "FEISHU_ENCRYPT_KEY dropped" in notes
    assert "LOG_FILE: unknown key, not carried over" in notes
    assert "logs/bot.log" not in made.stdout  # an unknown key's value is not echoed


def test_import_env_can_keep_the_secrets_in_files(tmp_path: Path) -> None:
    from feishu_mailbot.config import load

    secrets = tmp_path / "secrets"
    made = import_env(tmp_path, "--secrets-dir", str(secrets))
    assert made.returncode == 0, made.stderr
    assert "Qm7rT2vX9pL4sK8w" not in made.stdout and "app pass" not in made.stdout
    for name in ("app_secret", "smtp_password"):
        assert (secrets / name).stat().st_mode & 0o777 == 0o640
    path = tmp_path / "feishu-mailbot.yaml"
    path.write_text(made.stdout, "utf-8")
    s = load.load(str(path))
    assert s.feishu.app_secret.reveal() == "Qm7rT2vX9pL4sK8w"
    assert s.smtp.password is not None and s.smtp.password.reveal() == "app pass #1"


def test_chats_lists_where_the_bot_is_and_what_is_allowed(
    make_bot: MakeBot, emulator: FeishuEmulator
) -> None:
    emulator.register_chat("oc_other", "隔壁群", members=12)
    emulator.chat_page_size = 1  # every chat on a page of its own: the pages are followed
    bot = make_bot()
    out = bot.cli("chats")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.search(r"^oc_other\s+12\s+no\s+隔壁群$", out.stdout, re.M), lines
    assert re.search(r"^oc_team\s+3\s+yes\s+研发群$", out.stdout, re.M), lines


def test_status_can_write_the_node_exporter_file(make_bot: MakeBot, tmp_path: Path) -> None:
    bot = make_bot(rules=ONE_RULE).start()
    target = tmp_path / "feishu-mailbot.prom"
    wait_until(
        lambda: (
            bot.cli("status", "--prometheus", "--output", str(target)).returncode == 0
            and "feishu_mailbot_up 1" in target.read_text()
        ),
        15,
        "the metrics file",
    )
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert bot.stop() == 0


def test_status_output_cannot_be_sent_elsewhere_by_a_planted_link(
    make_bot: MakeBot, tmp_path: Path
) -> None:
    """The partial file was `.NAME.PID`, opened following symlinks: a link planted under
    the name the next run would use sent the metrics, as root, into any file."""
    bot = make_bot(rules=ONE_RULE).start()
    assert bot.stop() == 0
    out_dir, elsewhere = tmp_path / "textfile", tmp_path / "elsewhere"
    out_dir.mkdir()
    elsewhere.mkdir()
    victim = elsewhere / "victim"
    victim.write_text("untouched\n")
    target = out_dir / "feishu-mailbot.prom"
    # exec keeps the shell's pid, so the link is where that run's partial file goes.
    planted = subprocess.run(
        ["sh", "-c", 'ln -s "$1" "$2.$$" && exec "$3" -m feishu_mailbot --config "$4" '
         'status --prometheus --output "$5"', "sh", str(victim), str(out_dir / f".{target.name}"),
         sys.executable, str(bot.config), str(target)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert planted.returncode == 0, planted.stderr
    assert victim.read_text() == "untouched\n"
    assert "# TYPE feishu_mailbot_up gauge" in target.read_text()
    assert target.stat().st_mode & 0o777 == 0o644 and not target.is_symlink()
    [link] = [p for p in out_dir.iterdir() if p.name.startswith(".")]
    assert link.is_symlink()  # not ours: left alone


def test_status_output_on_a_full_disk_leaves_no_partial_file(
    make_bot: MakeBot, tmp_path: Path
) -> None:
    bot = make_bot(rules=ONE_RULE).start()
    assert bot.stop() == 0
    small = tmp_path / "textfile"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        target = small / "feishu-mailbot.prom"
        target.write_text("feishu_mailbot_up 1\n")
        filler = small / "filler"
        with open(filler, "wb", buffering=0) as fill, contextlib.suppress(OSError):
            while True:
                fill.write(b"\0" * 4096)
        out = bot.cli("status", "--prometheus", "--output", str(target))
        assert out.returncode == 73, (out.returncode, out.stderr)  # EX_CANTCREAT
        assert sorted(p.name for p in small.iterdir()) == ["feishu-mailbot.prom", "filler"]
        assert out.stderr == f"{target}: cannot write it: No space left on device" + (
            " (the file there is unchanged)\n"
        )
        assert target.read_text() == "feishu_mailbot_up 1\n"
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_prometheus_values_keep_every_digit(make_bot: MakeBot) -> None:
    """`%g` printed a digest's time as 1.79611e+09 (an hour off) and sizes to 6 digits."""
    bot = make_bot(rules=ONE_RULE).start()
    assert bot.stop() == 0
    path = bot.config.parent / "state" / "feishu-mailbot.db"
    db = sqlite3.connect(path)
    with db:
        db.execute(
            "INSERT INTO digests (mail_id, chat_id, day, kind, recipients, queued_at)"
            " VALUES ('digest/oc_team/2026-12-01', 'oc_team', '2026-12-01', 'digest', '[]', ?)",
            (1796112345.678,),
        )
        db.execute(  # a database of more than six digits of bytes
            "INSERT INTO quarantine (key, received_at, reason, payload) VALUES (?, ?, ?, ?)",
            ("ev_large", time.time(), "large", os.urandom(1_300_000)),
        )
    db.close()
    out = bot.cli("status", "--prometheus")
    assert out.returncode == 0, out.stderr
    values = dict(line.rsplit(" ", 1) for line in out.stdout.splitlines() if line[:1] != "#")
    assert values['feishu_mailbot_last_digest_timestamp_seconds{chat="oc_team"}'] == (
        "1796112345.678"
    )
    size = values["feishu_mailbot_database_bytes"]
    assert size.isdigit(), size  # every byte: the file, and the WAL the command itself wrote
    assert 0 <= int(size) - path.stat().st_size < 65536, (size, path.stat().st_size)
    assert values["feishu_mailbot_quarantined"] == "1"
    assert values['feishu_mailbot_mail{state="pending"}'] == "0"


def test_durations_read_alike_in_the_status_line_and_in_status() -> None:
    from feishu_mailbot.core.status import duration, today_began

    assert [duration(s) for s in (-1, 42, 17 * 60, 3 * 3600 + 300, 60 * 3600)] == [
        "0s", "42s", "17m", "3h05m", "2.5d",
    ]  # fmt: skip
    noon = 1_764_561_600.0  # 2025-12-01 12:00 in Shanghai
    assert noon - today_began(noon, "Asia/Shanghai") == 12 * 3600


def test_a_backup_of_the_live_state_restores_its_queue(
    make_bot: MakeBot, emulator: FeishuEmulator, smtp: SmtpServer, tmp_path: Path
) -> None:
    """`backup` while the daemon writes; then the guide's restore: stop, put the copy in
    place (and no WAL beside it), start. The failed mail is there again."""
    bot, number = failed_mail(make_bot, emulator, smtp, "故障：备份")
    for n in range(20):  # the daemon writing while the copy is taken
        emulator.push_text("oc_team", "ou_alice", f"闲聊 {n}")
    copy = tmp_path / "backups" / "state.db"
    copy.parent.mkdir()
    out = bot.cli("backup", str(copy))
    assert out.returncode == 0, out.stderr
    assert f"wrote {copy} (0600," in out.stdout and f"schema {SCHEMA_VERSION})" in out.stdout
    assert copy.stat().st_mode & 0o777 == 0o600 and list(copy.parent.iterdir()) == [copy]
    with contextlib.closing(sqlite3.connect(copy)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert db.execute("SELECT count(*) FROM outbox WHERE status = 'failed'").fetchone() == (1,)
    assert bot.cli("drop", str(number), "--yes").returncode == 0
    assert queue_ids(bot, "--failed") == []
    assert bot.stop() == 0
    state = bot.config.parent / "state" / "feishu-mailbot.db"
    for leftover in (Path(f"{state}-wal"), Path(f"{state}-shm")):
        leftover.unlink(missing_ok=True)
    state.write_bytes(copy.read_bytes())
    bot.start()
    assert queue_ids(bot, "--failed") == [number]
    assert bot.stop() == 0
    bad = bot.cli("backup", str(tmp_path / "no-such-dir" / "state.db"))
    assert bad.returncode == 73 and "cannot write it" in bad.stderr
    live = bot.cli("backup", f"{state}-wal")
    assert live.returncode == 69 and "that is the live state database" in live.stderr


def test_backup_points_a_postgresql_state_at_pg_dump(make_bot: MakeBot, backend: Backend) -> None:
    bot = make_bot(rules=ONE_RULE, extra=backend.config)
    out = bot.cli("backup", "/tmp/never-written.db")
    if backend.name == "sqlite":  # no state database yet
        assert out.returncode == 69 and "no state database yet" in out.stderr
    else:
        assert out.returncode == 69 and "pg_dump --format=custom" in out.stderr
    assert not Path("/tmp/never-written.db").exists()
