"""Shared fixtures: the Feishu emulator, an SMTP server, an HTTP proxy, and the daemon
under test."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from feishu_mailbot.mail.imap import mailbox_name
from tests.dovecot import PROCESSED, Dovecot
from tests.feishu_emulator import FeishuEmulator
from tests.harness import (
    PROXY_PASSWORD,
    PROXY_USER,
    SMTP_PASSWORD,
    SMTP_USER,
    TEST_SECRETS,
    Bot,
    write_config,
)
from tests.http_proxy import Tinyproxy
from tests.kit import Backend
from tests.postgres import Postgres
from tests.smtp_server import SmtpServer

_logs: list[Path] = []


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL cluster for the whole run; each test takes a database of its own."""
    with Postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each engine in turn, for the tests that must hold on both."""
    if request.param == "sqlite":
        return Backend()
    server: Postgres = request.getfixturevalue("postgres")
    return Backend(server.database(), server.password_file)


@pytest.fixture
def emulator() -> Iterator[FeishuEmulator]:
    emu = FeishuEmulator(ping_interval=2, reconnect_interval=1, reconnect_nonce=0)
    emu.start()
    emu.register_chat("oc_team", "研发群")
    emu.register_user("ou_alice", "张三")
    emu.register_user("ou_bob", "Bob")
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """A real Dovecot on loopback (tests/dovecot.py), with the folder PROCESSED."""
    with Dovecot() as server:
        conn = server.session()
        conn.create(mailbox_name(PROCESSED))
        conn.logout()
        yield server


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(require_auth=(SMTP_USER, SMTP_PASSWORD))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _proxy(auth: tuple[str, str] | None) -> Iterator[Tinyproxy]:
    with Tinyproxy(auth=auth) as proxy:
        yield proxy
        # Its log holds each request line: a secret there was sent in a URL.
        leaks = [s for s in TEST_SECRETS if s in proxy.log()]
        assert not leaks, f"secret in a request line the proxy logged: {leaks}"


@pytest.fixture
def http_proxy() -> Iterator[Tinyproxy]:
    """A real tinyproxy on loopback that tunnels CONNECT to any port, no credentials."""
    yield from _proxy(None)


@pytest.fixture
def http_proxy_auth() -> Iterator[Tinyproxy]:
    """The same proxy demanding Basic credentials: PROXY_USER and PROXY_PASSWORD."""
    yield from _proxy((PROXY_USER, PROXY_PASSWORD))


@pytest.fixture
def make_bot(tmp_path: Path, emulator: FeishuEmulator, smtp: SmtpServer) -> Iterator[object]:
    bots: list[Bot] = []

    def make(**config: str) -> Bot:
        path = write_config(tmp_path, feishu_url=emulator.base_url, smtp_port=smtp.port, **config)
        bot = Bot(path, tmp_path)
        bots.append(bot)
        return bot

    yield make
    for bot in bots:
        if bot.proc is not None and bot.proc.poll() is None:
            bot.kill()
        _logs.extend(tmp_path.glob("daemon-*.log"))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """state_dir on a 4 MB tmpfs of its own, so that filling it fills only it."""
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)], check=True)
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log() -> Iterator[None]:
    """No secret may reach any log line of the whole suite (DESIGN §3)."""
    yield
    leaks = []
    for path in _logs:
        if path.exists():
            text = path.read_text("utf-8", "replace")
            leaks += [f"{path}: contains {s!r}" for s in TEST_SECRETS if s in text]
    assert not leaks, "secret leaked into daemon logs:\n" + "\n".join(leaks)
