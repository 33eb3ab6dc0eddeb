"""Two daemons on one PostgreSQL, as two hosts would run them: one App ID, one config.

Feishu gives each event to one of the app's connections (使用长连接接收事件: "集群模式 …
只有其中随机一个客户端会收到消息"); the emulator hands them out in turn. The real
daemons, a real PostgreSQL 15, aiosmtpd.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

from tests.cli.test_live import cli
from tests.feishu_emulator import FeishuEmulator
from tests.harness import Bot, wait_until, write_config
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
        wait_until(lambda: "instances: 2 running" in cli(b, "status").stdout, 15, "both listed")
        for bot in (a, b):
            shown = cli(bot, "status").stdout
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
