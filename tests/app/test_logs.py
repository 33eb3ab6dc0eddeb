"""A relay that echoes the client's AUTH in its 535: the password stays hidden.

AUTH PLAIN sends base64("\\0user\\0password"), AUTH LOGIN base64(user) and then
base64(password); a careless relay repeats them in its refusal, and that reply
reaches `check-config --online`, the journal and `queue`. The real daemon and
the real CLI against aiosmtpd in its echo_auth mode.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.feishu_emulator import FeishuEmulator
from tests.harness import REPO, SMTP_PASSWORD, SMTP_USER, Bot, write_config
from tests.smtp_server import SmtpServer

ONE_RULE = "- name: oncall\n  keywords: [故障]\n  to: [oncall@example.com]\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


USER, PASSWORD = SMTP_USER.encode(), SMTP_PASSWORD.encode()
FORMS = {
    "the password": SMTP_PASSWORD,
    "AUTH LOGIN's base64": b64(PASSWORD),
    "AUTH PLAIN's blob": b64(b"\0" + USER + b"\0" + PASSWORD),
    "AUTH PLAIN's blob with an authzid": b64(USER + b"\0" + USER + b"\0" + PASSWORD),
}


def assert_no_password(text: str) -> None:
    found = [name for name, form in FORMS.items() if form in text]
    assert not found, f"{found} in {text!r}"
    for token in re.findall(r"[A-Za-z0-9+/]{4,}={0,2}", text):
        try:
            decoded = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
        except binascii.Error:
            continue
        assert PASSWORD not in decoded, f"{token} decodes to the password"


def echoing_relay(mechanism: str) -> SmtpServer:
    """A relay that wants another password, offers one mechanism, and echoes the AUTH."""
    return SmtpServer(
        require_auth=(SMTP_USER, "not-" + SMTP_PASSWORD),
        auth_mechanisms=(mechanism,),
        echo_auth=True,
    )


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "feishu_mailbot", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_check_config_online_hides_what_the_relay_echoes(
    tmp_path: Path, emulator: FeishuEmulator, mechanism: str
) -> None:
    with echoing_relay(mechanism) as relay:
        config = write_config(tmp_path, feishu_url=emulator.base_url, smtp_port=relay.port)
        out = run(config, "check-config", "--online")
    assert out.returncode == 69, out.stdout + out.stderr
    echoed = f"authentication rejected (535 5.7.8 rejected AUTH {mechanism} "
    assert "SMTP    AUTH               FAILED" in out.stdout, out.stdout
    assert echoed in out.stdout, out.stdout  # the relay did echo, and the line was kept
    assert_no_password(out.stdout + out.stderr)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_the_delivery_log_and_queue_hide_what_the_relay_echoes(
    tmp_path: Path, emulator: FeishuEmulator, mechanism: str
) -> None:
    with echoing_relay(mechanism) as relay:
        config = write_config(
            tmp_path, feishu_url=emulator.base_url, smtp_port=relay.port, rules=ONE_RULE
        )
        bot = Bot(config, tmp_path).start()
        try:
            emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "故障：回显密码的中继"))
            bot.wait_log(f"rejected AUTH {mechanism} ", timeout=15)
            listing = run(config, "queue")
        finally:
            bot.kill()
    assert "AUTH failed: authentication rejected (535" in bot.log()
    assert f"rejected AUTH {mechanism} " in listing.stdout, listing.stdout
    assert_no_password(bot.log() + listing.stdout + listing.stderr)
