"""Behind a company proxy or firewall: the long connection through a real proxy, and
`doctor` naming the hop that fails.

A real tinyproxy (tests/http_proxy.py), the emulator (over TLS from the test CA of
tests/certs.py where TLS matters), aiosmtpd, and a port that takes TCP and never
answers (harness.Blackhole), as the old bot's users met a firewall dropping WebSocket.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import certs
from tests.feishu_emulator import FeishuEmulator
from tests.harness import (
    PROXY_PASSWORD,
    PROXY_USER,
    REPO,
    SMTP_PASSWORD,
    Blackhole,
    Bot,
    NotifySocket,
    wait_until,
    write_config,
)
from tests.http_proxy import Tinyproxy
from tests.postgres import Postgres
from tests.smtp_server import SmtpServer

MakeBot = Callable[..., Bot]
ONE_RULE = "- name: oncall\n  keywords: [故障]\n  to: [oncall@example.com]\n"


def run(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "feishu_mailbot", "--config", str(config), *args],
        capture_output=True, text=True, timeout=90, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )  # fmt: skip


@pytest.fixture
def tls_emulator() -> Iterator[FeishuEmulator]:
    """Feishu over https:// and wss://, its certificate from the test CA."""
    emu = FeishuEmulator(ping_interval=2, tls=certs.server_context(certs.leaf()))
    emu.start()
    emu.register_chat("oc_team", "研发群")
    emu.register_user("ou_alice", "张三")
    try:
        yield emu
    finally:
        emu.stop()


def proxied_bot(
    tmp_path: Path, emulator: FeishuEmulator, smtp: SmtpServer, feishu_extra: str
) -> Bot:
    path = write_config(
        tmp_path,
        feishu_url=emulator.base_url,
        smtp_port=smtp.port,
        rules=ONE_RULE,
        feishu_extra=feishu_extra,
    )
    return Bot(path, tmp_path)


def test_the_long_connection_goes_through_the_proxy_in_the_config(
    tmp_path: Path, emulator: FeishuEmulator, smtp: SmtpServer, http_proxy: Tinyproxy
) -> None:
    bot = proxied_bot(tmp_path, emulator, smtp, f"  proxy: {http_proxy.url}\n").start()
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "故障：经代理"))
    [mail] = smtp.wait_for(1, timeout=15)
    assert "经代理" in str(mail["Subject"])
    here = f"127.0.0.1:{emulator.port}"
    assert f"POST http://{here}/callback/ws/endpoint" in http_proxy.requests()
    assert here in http_proxy.connects()  # the WebSocket, tunnelled
    assert bot.stop() == 0


def test_the_long_connection_goes_through_https_proxy_from_the_environment(
    tmp_path: Path, tls_emulator: FeishuEmulator, smtp: SmtpServer, http_proxy: Tinyproxy
) -> None:
    """As a systemd drop-in sets it: Environment=https_proxy=…; every request to the
    https:// domain and the wss:// long connection are tunnels through the proxy."""
    bot = proxied_bot(tmp_path, tls_emulator, smtp, f"  ca_file: {certs.ca_file()}\n")
    bot.start(env={"https_proxy": http_proxy.url, "no_proxy": "example.invalid"})
    tls_emulator.wait_ack(tls_emulator.push_text("oc_team", "ou_alice", "故障：环境代理"))
    [mail] = smtp.wait_for(1, timeout=15)
    assert "环境代理" in str(mail["Subject"])
    here = f"127.0.0.1:{tls_emulator.port}"
    assert http_proxy.connects().count(here) >= 2  # REST (endpoint, names) and wss
    assert http_proxy.requests() == []  # nothing in the clear
    assert bot.stop() == 0


def test_no_proxy_sends_the_domain_direct(
    tmp_path: Path, tls_emulator: FeishuEmulator, smtp: SmtpServer, http_proxy: Tinyproxy
) -> None:
    bot = proxied_bot(tmp_path, tls_emulator, smtp, f"  ca_file: {certs.ca_file()}\n")
    bot.start(env={"HTTPS_PROXY": http_proxy.url, "NO_PROXY": "localhost,127.0.0.0/8"})
    tls_emulator.wait_ack(tls_emulator.push_text("oc_team", "ou_alice", "故障：直连"))
    smtp.wait_for(1, timeout=15)
    assert http_proxy.connects() == []
    assert bot.stop() == 0


def test_a_proxy_with_basic_auth_works_with_the_right_credentials(
    tmp_path: Path, emulator: FeishuEmulator, smtp: SmtpServer, http_proxy_auth: Tinyproxy
) -> None:
    secret = tmp_path / "proxy-password"
    secret.write_text(PROXY_PASSWORD + "\n", encoding="utf-8")
    where = http_proxy_auth.url.removeprefix("http://")
    extra = f"  proxy: http://{PROXY_USER}@{where}\n  proxy_password_file: {secret}\n"
    bot = proxied_bot(tmp_path, emulator, smtp, extra).start()
    emulator.wait_ack(emulator.push_text("oc_team", "ou_alice", "故障：认证代理"))
    smtp.wait_for(1, timeout=15)
    assert f"127.0.0.1:{emulator.port}" in http_proxy_auth.connects()
    doctor = run(bot.config, "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert PROXY_PASSWORD not in doctor.stdout + doctor.stderr
    assert bot.stop() == 0


@pytest.mark.parametrize("given", ["no credentials", "wrong credentials"])
def test_doctor_names_a_proxy_that_wants_credentials(
    tmp_path: Path,
    emulator: FeishuEmulator,
    smtp: SmtpServer,
    http_proxy_auth: Tinyproxy,
    given: str,
) -> None:
    """Tinyproxy answers 407 without credentials and 401 to wrong ones; either is the
    proxy's word, not the app secret's (the old online check blamed the secret)."""
    wrong = "wr0ng-proxy-pass"
    where = http_proxy_auth.url.removeprefix("http://")
    url = f"http://{where}" if given == "no credentials" else f"http://{PROXY_USER}:{wrong}@{where}"
    bot = proxied_bot(tmp_path, emulator, smtp, f"  proxy: {url}\n")
    out = run(bot.config, "doctor")
    text = out.stdout + out.stderr
    assert out.returncode == 69, text
    status = "407" if given == "no credentials" else "401"
    assert "proxy CONNECT      FAILED" in text
    assert f"proxy {where} answered 'HTTP/1.0 {status}" in text
    assert "feishu.proxy_password_file" in text  # what to do
    assert "app_secret" not in text
    for secret in (
        wrong,
        PROXY_PASSWORD,
        base64.b64encode(f"{PROXY_USER}:{wrong}".encode()).decode(),
    ):
        assert secret not in text


def test_a_firewall_dropping_websocket_is_named_by_doctor_and_the_daemon(
    make_bot: MakeBot, emulator: FeishuEmulator, tmp_path: Path
) -> None:
    blackhole = Blackhole()
    emulator.websocket_at = blackhole.address
    notify = NotifySocket(tmp_path)
    try:
        bot = make_bot(rules=ONE_RULE)
        started = time.monotonic()
        out = run(bot.config, "doctor")
        took = time.monotonic() - started
        assert out.returncode == 69, out.stdout + out.stderr
        assert took < 60
        assert "WebSocket upgrade  FAILED" in out.stdout
        said = f"to {blackhole.address} timed out after 15 s"
        assert said in out.stdout
        assert "a firewall or proxy may be blocking WebSocket" in out.stdout
        assert "doctor: Feishu path broken at WebSocket upgrade" in out.stdout

        bot.start(env=notify.env(), wait_ready=False)
        line = f"WebSocket upgrade {said}: a firewall or proxy may be blocking WebSocket"
        bot.wait_log(line, timeout=30)
        wait_until(lambda: any(line in s for s in notify.statuses()), 10, "STATUS= naming it")
        assert "run feishu-mailbot doctor" in bot.current_log()
    finally:
        notify.close()
        blackhole.close()


def test_a_cause_is_logged_once_not_at_every_retry(
    make_bot: MakeBot, emulator: FeishuEmulator
) -> None:
    closed = Blackhole()
    port = closed.port
    closed.close()  # nothing listens there now: each attempt is refused at once
    emulator.websocket_at = f"127.0.0.1:{port}"
    bot = make_bot(rules=ONE_RULE).start(wait_ready=False)
    wait_until(lambda: emulator.endpoint_count >= 4, 30, "four attempts")
    log = bot.current_log()
    assert log.count("cannot connect to Feishu: TCP") == 1, log
    emulator.websocket_at = None  # the firewall is opened: it connects
    bot.wait_log("ready:", timeout=30)
    assert bot.stop() == 0


def test_doctor_names_the_issuer_of_a_certificate_it_does_not_trust(
    tmp_path: Path, tls_emulator: FeishuEmulator, smtp: SmtpServer
) -> None:
    """As behind a TLS-inspecting proxy: the company CA is named, and ca_file fixes it."""
    bot = proxied_bot(tmp_path, tls_emulator, smtp, "")
    out = run(bot.config, "doctor")
    assert out.returncode == 69
    assert "TLS                FAILED" in out.stdout
    assert f"certificate issued by CN={certs.CA_NAME}" in out.stdout
    assert "feishu.ca_file" in out.stdout
    trusted = proxied_bot(tmp_path, tls_emulator, smtp, f"  ca_file: {certs.ca_file()}\n")
    out = run(trusted.config, "doctor")
    assert out.returncode == 0, out.stdout
    assert f"certificate issued by CN={certs.CA_NAME}" in out.stdout
    assert "every hop works" in out.stdout


def test_check_config_online_walks_the_hops_too(make_bot: MakeBot) -> None:
    bot = make_bot(rules=ONE_RULE)
    out = run(bot.config, "check-config", "--online")
    assert out.returncode == 0, out.stdout + out.stderr
    for hop in ("tenant token", "WebSocket upgrade", "pong", "bot info", "AUTH"):
        assert hop in out.stdout


def test_the_support_report_holds_no_secret(
    tmp_path: Path, emulator: FeishuEmulator, smtp: SmtpServer, http_proxy_auth: Tinyproxy
) -> None:
    secret = tmp_path / "proxy-password"
    secret.write_text(PROXY_PASSWORD, encoding="utf-8")
    where = http_proxy_auth.url.removeprefix("http://")
    extra = f"  proxy: http://{PROXY_USER}@{where}\n  proxy_password_file: {secret}\n"
    bot = proxied_bot(tmp_path, emulator, smtp, extra).start()
    bot.stop()
    report = tmp_path / "ticket.txt"
    out = run(bot.config, "doctor", "--report", str(report))
    assert out.returncode == 0, out.stdout + out.stderr
    text = report.read_text("utf-8")
    assert oct(report.stat().st_mode & 0o777) == "0o600"
    for part in ("== versions ==", "lark-oapi", "== configuration", "== doctor ==", "== status =="):
        assert part in text
    assert "app_secret: <redacted>" in text and "password: <redacted>" in text
    assert "WebSocket upgrade" in text
    plain = ("test-secret", SMTP_PASSWORD, PROXY_PASSWORD)
    encoded = [base64.b64encode(f"\0bot\0{SMTP_PASSWORD}".encode()).decode(),
               base64.b64encode(SMTP_PASSWORD.encode()).decode(),
               base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()]  # fmt: skip
    for value in (*plain, *encoded):
        assert value not in text, value


def test_a_broken_proxy_variable_ends_the_daemon_with_78_and_doctor_names_it(
    make_bot: MakeBot,
) -> None:
    bot = make_bot(rules=ONE_RULE)
    bot.start(env={"https_proxy": "socks5://127.0.0.1:1080"}, wait_ready=False)
    assert bot.proc is not None and bot.proc.wait(20) == 78
    assert "https_proxy: SOCKS proxies are not supported" in bot.current_log()
    assert "Traceback" not in bot.current_log()
    out = run(bot.config, "doctor", env={"https_proxy": "socks5://127.0.0.1:1080"})
    assert out.returncode == 69
    assert "config             FAILED" in out.stdout and "https_proxy: SOCKS" in out.stdout


def test_an_https_proxy_wanting_credentials_is_named_by_the_daemon(
    tmp_path: Path, tls_emulator: FeishuEmulator, smtp: SmtpServer, http_proxy_auth: Tinyproxy
) -> None:
    """Over https:// httpx meets the 407 in its own CONNECT: the daemon says the proxy
    wants credentials, not that the app secret is wrong."""
    bot = proxied_bot(tmp_path, tls_emulator, smtp, f"  ca_file: {certs.ca_file()}\n")
    bot.start(env={"https_proxy": http_proxy_auth.url}, wait_ready=False)
    bot.wait_log("cannot connect to Feishu: proxy CONNECT", timeout=20)
    log = bot.current_log()
    assert "407" in log and "the proxy wants credentials" in log
    assert "app_secret" not in log
    bot.kill()


def test_a_rest_call_that_gets_no_answer_names_the_hop(tmp_path: Path) -> None:
    """Not 'check the app secret': a refused connection is the network's."""
    from feishu_mailbot.config import load
    from feishu_mailbot.feishu.errors import HopFailed
    from feishu_mailbot.feishu.rest import FeishuApi
    from tests.smtp_server import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    settings = load.load(str(write_config(tmp_path, feishu_url=closed, smtp_port=9)))

    async def ask() -> None:
        api = FeishuApi(settings.feishu)
        try:
            await api.tenant_token()
        finally:
            await api.close()

    with pytest.raises(HopFailed) as info:
        asyncio.run(ask())
    assert info.value.hop.name == "TCP" and info.value.hop.cause == "tcp"
    assert "run feishu-mailbot doctor" in str(info.value)


def test_doctor_walks_to_the_database_and_names_what_is_wrong(
    tmp_path: Path, emulator: FeishuEmulator, smtp: SmtpServer, postgres: Postgres
) -> None:
    def doctor(url: str, password_file: Path) -> tuple[int, str]:
        database = f"database:\n  url: {url}\n  password_file: {password_file}\n"
        config = write_config(
            tmp_path, feishu_url=emulator.base_url, smtp_port=smtp.port, extra=database
        )
        out = run(config, "doctor")
        return out.returncode, out.stdout + out.stderr

    url = postgres.database()
    code, text = doctor(url, postgres.password_file)
    assert code == 0, text
    assert re.search(r"DB\s+connect\s+ok .* PostgreSQL 15\.\d+ as bot", text), text
    assert "empty: the daemon creates its tables at the first start" in text
    assert "to Feishu, the relay and the database" in text

    wrong = tmp_path / "wrong.password"
    wrong.write_text("n0t-the-password\n")
    code, text = doctor(url, wrong)
    assert code == 69 and re.search(r"DB\s+connect\s+FAILED", text), text
    assert "a pg_hba.conf line for this host" in text  # what to do
    assert "n0t-the-password" not in text and "DB path broken at connect" in text

    with Postgres() as down:
        gone = down.database()
        down.stop()
    code, text = doctor(gone, postgres.password_file)
    assert code == 69 and "the database server does not answer" in text, text
