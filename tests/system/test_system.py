"""The system test: the .deb on a real systemd (bookworm, booted with systemd-nspawn).

apt install → the example config is refused plainly → configure → systemctl start
(returns after READY) → a chat message becomes an email → journal fields →
reload with a broken config → watchdog kill and restart → kill -9 mid-delivery →
a 2-minute Feishu outage → the state on PostgreSQL → upgrade → remove → purge.

The tests run in file order and share one container: each step starts from
where the previous one left the system, as an operator's would.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.feishu_emulator import FeishuEmulator
from tests.harness import SMTP_PASSWORD, SMTP_USER, TEST_SECRETS, wait_until
from tests.postgres import BOT_PASSWORD, Postgres
from tests.smtp_server import SmtpServer
from tests.system.container import Container, cached_tree

REPO = Path(__file__).resolve().parents[2]
UNIT = "feishu-mailbot.service"
STALL_AFTER = 3


def newest_deb() -> Path:
    debs = sorted((REPO / "dist").glob("feishu-mailbot_*.deb"), key=lambda p: p.stat().st_mtime)
    assert debs, "no .deb in dist/: `make test` builds it with `make deb` first"
    return debs[-1]


@pytest.fixture(scope="module")
def emulator() -> Iterator[FeishuEmulator]:
    emu = FeishuEmulator(ping_interval=2, reconnect_interval=1, reconnect_nonce=0)
    emu.start()
    emu.register_chat("oc_team", "研发群")
    emu.register_user("ou_alice", "张三")
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(require_auth=(SMTP_USER, SMTP_PASSWORD))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def box() -> Iterator[Container]:
    workdir = Path(tempfile.mkdtemp(prefix="feishu-mailbot-system-", dir="/var/tmp"))
    container = Container(workdir).boot(cached_tree())
    yield container
    container.shutdown()


def config_text(emulator: FeishuEmulator, smtp: SmtpServer, keyword: str = "故障") -> str:
    return f"""\
feishu:
  app_id: cli_test
  app_secret_file: /etc/feishu-mailbot/app_secret
  domain: {emulator.base_url}
chats:
  - id: oc_team
smtp:
  host: 127.0.0.1
  port: {smtp.port}
  security: none
  from: "Feishu Mailbot <bot@example.com>"
  username: {SMTP_USER}
  password_file: /etc/feishu-mailbot/smtp_password
  timeout: 10
  retry_initial: 0.5
  retry_max: 2
rules:
  - name: oncall
    keywords: [{keyword}]
    to: [oncall@example.com]
health:
  stall_after: {STALL_AFTER}
  reconnect_budget: 60
"""


def systemctl(box: Container, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return box.run("systemctl", *args, check=check)


def show(box: Container, prop: str) -> str:
    return systemctl(box, "show", "-P", prop, UNIT).stdout.strip()


def journal(box: Container, *args: str) -> str:
    return box.run("journalctl", "-u", UNIT, "--no-pager", *args).stdout


def test_fresh_install_with_the_example_config(box: Container) -> None:
    deb = newest_deb()
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    # The mode in the archive is what exists between unpack and postinst: never world-readable.
    assert re.search(r"^-rw-r----- root/root .* \./etc/feishu-mailbot\.yaml$", listing, re.M)
    (box.root / "var" / "tmp" / deb.name).write_bytes(deb.read_bytes())
    box.run(
        "apt-get", "install", "-y", "--no-install-recommends", f"/var/tmp/{deb.name}", timeout=300
    )
    owner = box.run("stat", "-c", "%U:%G %a", "/etc/feishu-mailbot.yaml").stdout.split()
    assert owner == ["root:feishu-mailbot", "640"]
    for path in (
        "/usr/bin/feishu-mailbot",
        "/usr/share/man/man8/feishu-mailbot.8.gz",
        "/usr/share/man/man5/feishu-mailbot.yaml.5.gz",
        "/usr/share/doc/feishu-mailbot/copyright",
        "/usr/share/doc/feishu-mailbot/changelog.gz",
    ):
        box.run("test", "-e", path)
    # The unedited example: refused with a plain message, exit 78, no restart loop.
    wait_until(lambda: show(box, "ActiveState") == "failed", 30, "the example config refusal")
    time.sleep(6)  # longer than RestartSec: a crash loop would show here
    assert show(box, "NRestarts") == "0"
    assert show(box, "ExecMainStatus") == "78"
    assert "/etc/feishu-mailbot.yaml:" in journal(box)
    assert "still the example placeholder" in journal(box)
    # --man=no: the minimal tree has no man-db; the pages were checked to exist above.
    verify = box.run("systemd-analyze", "verify", "--man=no", UNIT, check=False)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr


def test_coming_from_the_old_bot_as_the_guide_says(
    box: Container, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    """Section 8 of the operator guide, as root, with the real service user: import-env
    with --secrets-dir, check-config --online, systemctl start: active and READY."""
    box.write(
        "/root/old-bot/.env",
        f"FEISHU_APP_ID=cli_test\nFEISHU_APP_SECRET=test-secret\nDAILY_REPORT_CHAT_ID=oc_team\n"
        f"SMTP_SERVER=127.0.0.1\nSMTP_PORT={smtp.port}\nUSE_TLS=False\n"
        f"SMTP_USER={SMTP_USER}\nSMTP_PASSWORD={SMTP_PASSWORD}\n",
        0o600,
    )
    box.run(
        "sh", "-c",
        "(umask 027; feishu-mailbot import-env /root/old-bot/.env "
        "--secrets-dir /etc/feishu-mailbot > /etc/feishu-mailbot.yaml.new) && "
        "mv /etc/feishu-mailbot.yaml.new /etc/feishu-mailbot.yaml",
    )  # fmt: skip
    # The emulator stands in for open.feishu.cn, which the old bot never named.
    box.run("sed", "-i", f"s#^feishu:$#feishu:\\n  domain: {emulator.base_url}#",
            "/etc/feishu-mailbot.yaml")  # fmt: skip
    box.run("sh", "-c", "chgrp feishu-mailbot /etc/feishu-mailbot.yaml && "
            "chmod 0640 /etc/feishu-mailbot.yaml")  # fmt: skip
    owner = box.run("stat", "-c", "%U:%G %a", "/etc/feishu-mailbot").stdout.split()
    assert owner == ["root:feishu-mailbot", "750"]
    checked = box.run("feishu-mailbot", "check-config", "--online")
    assert "doctor: every hop works" in checked.stdout, checked.stdout + checked.stderr
    assert "cannot read it" not in checked.stderr
    systemctl(box, "reset-failed", UNIT)
    systemctl(box, "start", UNIT)  # returns once READY=1 was sent
    assert show(box, "ActiveState") == "active"
    assert "ready:" in journal(box)
    systemctl(box, "stop", UNIT)  # the next step configures it anew
    box.run("rm", "-r", "/root/old-bot")


def test_configured_service_starts_ready_and_hardened(
    box: Container, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    box.write("/etc/feishu-mailbot/app_secret", "test-secret\n", 0o640)
    box.write("/etc/feishu-mailbot/smtp_password", SMTP_PASSWORD + "\n", 0o640)
    box.run("chgrp", "-R", "feishu-mailbot", "/etc/feishu-mailbot")
    box.run("chmod", "0750", "/etc/feishu-mailbot")
    box.write("/etc/feishu-mailbot.yaml", config_text(emulator, smtp), 0o640)
    box.run("chgrp", "feishu-mailbot", "/etc/feishu-mailbot.yaml")
    box.run("feishu-mailbot", "check-config")
    systemctl(box, "reset-failed", UNIT)
    before = emulator.connect_count
    systemctl(box, "start", UNIT)
    # `systemctl start` returned: READY=1 was sent, which happens only once connected.
    assert emulator.connect_count == before + 1 and emulator.connections == 1
    assert show(box, "ActiveState") == "active"
    status = systemctl(box, "status", "--no-pager", UNIT, check=False).stdout
    assert re.search(r"Status: \"connected \d+s, \d+ events today, outbox 0\"", status), status
    exposure = box.run("systemd-analyze", "security", "--no-pager", UNIT).stdout
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", exposure)
    assert level and float(level.group(1)) <= 1.5, exposure[-400:]


def test_message_becomes_mail_with_journal_fields(
    box: Container, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    event = emulator.push_text("oc_team", "ou_alice", "线上故障：请处理")
    [mail] = smtp.wait_for(1, timeout=20)
    assert str(mail["Subject"]) == "[研发群] 张三: 线上故障：请处理"
    message_id = event["event"]["message"]["message_id"]
    records = [json.loads(line) for line in journal(box, "-o", "json").splitlines()]
    accepted = [r for r in records if "message accepted" in r.get("MESSAGE", "")]
    assert accepted, "no 'message accepted' line in the journal"
    assert accepted[0]["MESSAGE_ID"] == message_id
    assert accepted[0]["CHAT_ID"] == "oc_team"
    assert accepted[0]["EVENT_ID"] == event["header"]["event_id"]
    assert accepted[0]["SYSLOG_IDENTIFIER"] == "feishu-mailbot"
    assert accepted[0]["PRIORITY"] == "6"
    whole = journal(box, "-o", "verbose")
    assert not [s for s in TEST_SECRETS if s in whole]


def test_status_as_root_against_the_live_service(box: Container) -> None:
    pid = show(box, "MainPID")
    wait_until(
        lambda: f"daemon: running (pid {pid})" in box.run("feishu-mailbot", "status").stdout,
        15,
        "the daemon's recorded status",
    )
    out = box.run("feishu-mailbot", "status").stdout
    assert "connected" in out and "mail: 0 pending, 0 retrying, 0 sending, 0 failed" in out
    assert "events today: 1" in out
    prom = box.run("feishu-mailbot", "status", "--prometheus").stdout
    assert "feishu_mailbot_up 1\n" in prom
    # The metrics timer ships, for node-exporter, but only the operator turns it on.
    enabled = systemctl(box, "is-enabled", "feishu-mailbot-metrics.timer", check=False)
    assert enabled.stdout.strip() == "disabled", enabled.stdout + enabled.stderr
    box.run("mkdir", "-p", "/var/lib/prometheus/node-exporter")
    systemctl(box, "start", "feishu-mailbot-metrics.service")
    written = box.run("cat", "/var/lib/prometheus/node-exporter/feishu-mailbot.prom").stdout
    assert "feishu_mailbot_connected 1\n" in written


def test_reload_with_a_broken_config_keeps_running(
    box: Container, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    pid = show(box, "MainPID")
    good = config_text(emulator, smtp)
    box.write(
        "/etc/feishu-mailbot.yaml", good.replace("keywords: [故障]", "keywords: [故障"), 0o640
    )
    reload = systemctl(box, "reload", UNIT, check=False)
    assert reload.returncode != 0
    assert show(box, "ActiveState") == "active" and show(box, "MainPID") == pid
    # Even a SIGHUP that bypasses ExecReload's check keeps the old config.
    box.run("kill", "-HUP", pid)
    wait_until(lambda: "reload refused" in journal(box), 15, "the refusal in the journal")
    assert "/etc/feishu-mailbot.yaml:" in journal(box).split("reload refused")[-1]
    emulator.push_text("oc_team", "ou_alice", "又一个故障")
    smtp.wait_for(2, timeout=20)
    box.write("/etc/feishu-mailbot.yaml", good, 0o640)
    systemctl(box, "reload", UNIT)
    assert show(box, "MainPID") == pid


def test_watchdog_restarts_a_stalled_bot_and_pending_mail_goes_once(
    box: Container, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    box.write(f"/etc/systemd/system/{UNIT}.d/test-watchdog.conf", "[Service]\nWatchdogSec=6\n")
    systemctl(box, "daemon-reload")
    systemctl(box, "restart", UNIT)
    pid = show(box, "MainPID")
    sent_before = len(smtp.messages)
    smtp.refuse = True
    emulator.push_text("oc_team", "ou_alice", "故障：等待发送")
    wait_until(lambda: "attempt 1 failed" in journal(box), 20, "a failed attempt")
    emulator.stall_heartbeat(True)
    wait_until(
        lambda: "Watchdog timeout" in box.run("journalctl", "--no-pager", "-u", UNIT).stdout,
        30,
        "systemd's watchdog timeout",
    )
    emulator.stall_heartbeat(False)
    smtp.refuse = False
    wait_until(
        lambda: show(box, "ActiveState") == "active" and show(box, "MainPID") != pid,
        60,
        "the restart",
    )
    assert "Fatal Python error: Aborted" in journal(box)
    smtp.wait_for(sent_before + 1, timeout=30)
    time.sleep(2)
    assert len(smtp.messages) == sent_before + 1
    assert int(show(box, "NRestarts")) >= 1


# Run by the service's own interpreter at start (PYTHONPATH from a drop-in): the first
# start's outbox worker dies of an injected fault; the restarted one is left alone.
INJECT = """\
import os
import sys

MARK = "/var/lib/feishu-mailbot/test-fault-injected"
if not os.path.exists(MARK):
    open(MARK, "w").close()
    sys.path[0:0] = ["/usr/lib/feishu-mailbot", "/usr/lib/feishu-mailbot/vendor"]
    import asyncio
    from feishu_mailbot.workers import outbox

    async def run(self):
        await asyncio.sleep(3)
        raise RuntimeError("injected fault")

    outbox.Outbox.run = run
"""


def test_a_dead_worker_is_restarted_by_systemd_and_pending_mail_goes_once(
    box: Container, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    dropin = f"/etc/systemd/system/{UNIT}.d/test-fault.conf"
    box.write("/usr/local/lib/feishu-mailbot-fault/sitecustomize.py", INJECT)
    box.write(dropin, "[Service]\nEnvironment=PYTHONPATH=/usr/local/lib/feishu-mailbot-fault\n")
    box.run("rm", "-f", "/var/lib/feishu-mailbot/test-fault-injected")
    systemctl(box, "daemon-reload")
    systemctl(box, "restart", UNIT)
    pid, restarts, sent_before = (
        show(box, "MainPID"),
        int(show(box, "NRestarts")),
        len(smtp.messages),
    )
    emulator.push_text("oc_team", "ou_alice", "故障：发信的工人倒下了")
    wait_until(
        lambda: show(box, "ActiveState") == "active" and show(box, "MainPID") != pid,
        60,
        "the restart after the worker died",
    )
    smtp.wait_for(sent_before + 1, timeout=30)
    time.sleep(2)
    subjects = [str(m["Subject"]) for m in smtp.messages[sent_before:]]
    assert subjects == ["[研发群] 张三: 故障：发信的工人倒下了"]
    log = box.run("journalctl", "--no-pager", "-u", UNIT).stdout
    assert "the outbox worker stopped unexpectedly (RuntimeError: injected fault)" in log
    assert "status=75/TEMPFAIL" in log
    assert int(show(box, "NRestarts")) == restarts + 1
    box.run("rm", "-f", dropin)
    systemctl(box, "daemon-reload")


def test_kill_9_during_delivery_loses_and_duplicates_nothing(
    box: Container, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    sent_before = len(smtp.messages)
    smtp.delay_per_message(4)
    connections = smtp.connections
    emulator.push_text("oc_team", "ou_alice", "故障：投递中被 kill -9")
    wait_until(
        lambda: smtp.connections > connections or smtp.messages[sent_before:],
        20,
        "the SMTP transaction to begin",
    )
    time.sleep(1)
    pid = show(box, "MainPID")
    box.run("kill", "-9", pid)
    smtp.delay_per_message(0)
    wait_until(
        lambda: show(box, "ActiveState") == "active" and show(box, "MainPID") != pid,
        60,
        "the restart after kill -9",
    )
    smtp.wait_for(sent_before + 1, timeout=30)
    time.sleep(3)
    subjects = [str(m["Subject"]) for m in smtp.messages[sent_before:]]
    assert subjects == ["[研发群] 张三: 故障：投递中被 kill -9"]


def test_two_minute_feishu_outage_never_leaves_the_unit_failed(
    box: Container, emulator: FeishuEmulator
) -> None:
    emulator.refuse_connections(True)
    emulator.drop_connections()
    states = set()
    end = time.monotonic() + 120
    while time.monotonic() < end:
        states.add(show(box, "ActiveState"))
        time.sleep(2)
    assert "failed" not in states, states
    back = time.monotonic()
    emulator.refuse_connections(False)
    wait_until(
        lambda: emulator.connections >= 1 and show(box, "ActiveState") == "active",
        30,
        "reconnection within 30 s of Feishu's return",
    )
    assert time.monotonic() - back <= 30
    assert show(box, "ActiveState") == "active"


def test_the_hardened_service_keeps_its_state_on_postgresql(
    box: Container, emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    """The driver (psycopg2: libpq, and a wait callback in Python) under the unit's
    MemoryDenyWriteExecute= and SystemCallFilter=: a PostgreSQL 15 on the host, reached
    over TCP with a password file, as a database on another host would be."""
    kept = (box.root / "etc/feishu-mailbot.yaml").read_text("utf-8")
    with Postgres() as pg:
        url = pg.database()
        box.write("/etc/feishu-mailbot/db_password", BOT_PASSWORD + "\n", 0o640)
        box.run("chgrp", "feishu-mailbot", "/etc/feishu-mailbot/db_password")
        database = f"database:\n  url: {url}\n  password_file: /etc/feishu-mailbot/db_password\n"
        box.write("/etc/feishu-mailbot.yaml", kept + database, 0o640)
        box.run("chgrp", "feishu-mailbot", "/etc/feishu-mailbot.yaml")
        sent_before = len(smtp.messages)
        systemctl(box, "restart", UNIT)  # returns after READY: connected, on PostgreSQL
        pid = show(box, "MainPID")
        emulator.push_text("oc_team", "ou_alice", "故障：状态在 PostgreSQL")
        smtp.wait_for(sent_before + 1, timeout=30)
        status = box.run("feishu-mailbot", "status").stdout
        assert "database: postgresql" in status, status
        with pg.admin(url.rsplit("/", 1)[1]) as db:
            assert db.execute("SELECT count(*) FROM messages").fetchone() == (1,)
        log = journal(box, "--since", "-2min")
        assert "Traceback" not in log and "SIGSYS" not in log, log[-2000:]
        assert show(box, "MainPID") == pid  # not killed by a filter and started again
        box.write("/etc/feishu-mailbot.yaml", kept, 0o640)
        box.run("chgrp", "feishu-mailbot", "/etc/feishu-mailbot.yaml")
        systemctl(box, "restart", UNIT)  # back on SQLite before the server goes
    assert show(box, "ActiveState") == "active"


def test_upgrade_keeps_the_config_and_restarts(box: Container) -> None:
    deb = newest_deb()
    work = Path(tempfile.mkdtemp(dir="/var/tmp"))
    subprocess.run(["dpkg-deb", "-R", str(deb), str(work / "pkg")], check=True)
    control = work / "pkg" / "DEBIAN" / "control"
    version = re.search(r"^Version: (\S+)$", control.read_text(), re.M)
    assert version
    control.write_text(
        control.read_text().replace(
            f"Version: {version.group(1)}", f"Version: {version.group(1)}+upgrade1"
        )
    )
    upgraded = box.root / "var" / "tmp" / "feishu-mailbot-upgrade.deb"
    subprocess.run(
        ["dpkg-deb", "-b", "--root-owner-group", str(work / "pkg"), str(upgraded)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    edited = box.run("cat", "/etc/feishu-mailbot.yaml").stdout
    pid = show(box, "MainPID")
    box.run("apt-get", "install", "-y", "/var/tmp/feishu-mailbot-upgrade.deb", timeout=300)
    assert box.run("cat", "/etc/feishu-mailbot.yaml").stdout == edited
    assert box.run("stat", "-c", "%U:%G %a", "/etc/feishu-mailbot.yaml").stdout.split() == [
        "root:feishu-mailbot",
        "640",
    ]
    assert show(box, "ActiveState") == "active" and show(box, "MainPID") != pid


def test_remove_stops_and_purge_leaves_nothing(box: Container) -> None:
    box.run("apt-get", "remove", "-y", "feishu-mailbot", timeout=300)
    assert show(box, "ActiveState") in ("inactive", "")
    box.run("test", "-e", "/etc/feishu-mailbot.yaml")  # remove keeps conffiles
    box.run("apt-get", "purge", "-y", "feishu-mailbot", timeout=300)
    for path in (
        "/etc/feishu-mailbot.yaml",
        "/etc/feishu-mailbot",  # the secrets, whose group purge deletes
        "/var/lib/feishu-mailbot",
        "/usr/lib/feishu-mailbot",
        "/usr/bin/feishu-mailbot",
        "/lib/systemd/system/feishu-mailbot.service",
    ):
        assert box.run("test", "-e", path, check=False).returncode != 0, path
    assert box.run("getent", "passwd", "feishu-mailbot", check=False).returncode != 0
    assert box.run("getent", "group", "feishu-mailbot", check=False).returncode != 0
    assert (
        box.run("dpkg-statoverride", "--list", "/etc/feishu-mailbot.yaml", check=False).returncode
        != 0
    )
