"""Config validation: every bad config exits 78 with PATH:LINE: key: problem."""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from feishu_mailbot.config import load
from feishu_mailbot.config.settings import DAY, MB, AttachmentSettings, RetentionSettings
from tests import certs

GOOD = """\
feishu:
  app_id: cli_test
  app_secret: test-secret
  domain: http://127.0.0.1:9
chats:
  - id: oc_team
    name: 研发群
  - oc_other
smtp:
  host: 127.0.0.1
  port: 2525
  security: none
  from: "Bot <bot@example.com>"
rules:
  - name: oncall
    keywords: [故障, urgent]
    to: [oncall@example.com]
  - name: archive
    regex: '(?i)release\\s+\\d+'
    chats: [oc_team]
    to: archive@example.com
    subject: "{chat_name}: {preview}"
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def test_good_config_parses(tmp_path: Path) -> None:
    s = load.load(write(tmp_path, GOOD))
    assert s.feishu.app_id == "cli_test"
    assert s.feishu.app_secret.reveal() == "test-secret"
    assert "test-secret" not in repr(s)
    assert [c.id for c in s.chats] == ["oc_team", "oc_other"]
    assert s.chats[0].name == "研发群"
    assert s.smtp.port == 2525 and s.smtp.security == "none"
    assert s.rules[0].keywords == ("故障", "urgent")
    assert s.rules[1].to == ("archive@example.com",)
    assert s.rules[1].regex is not None and s.rules[1].regex.search("Release 3")
    assert s.state_dir == "/var/lib/feishu-mailbot"


def test_secret_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-file\n")
    text = GOOD.replace("app_secret: test-secret", "app_secret_file: secret")
    s = load.load(write(tmp_path, text))
    assert s.feishu.app_secret.reveal() == "from-file"


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "words"),
    [
        ("  host: 127.0.0.1", "  host: [127.0.0.1", 11, "", "flow sequence started at line 10"),
        ("  port: 2525", "  prot: 2525", 11, "smtp.prot", "unknown key"),
        ("  app_id: cli_test\n", "", 2, "feishu.app_id", "missing"),
        (
            "to: [oncall@example.com]",
            "to: [oncall-at-example.com]",
            17,
            "rules[0].to[0]",
            "not an email address",
        ),
        (
            "regex: '(?i)release",
            "regex: '(?i)release(",
            19,
            "rules[1].regex",
            "invalid regular expression",
        ),
        ("  port: 2525", "  port: many", 11, "smtp.port", "must be a number"),
        ("chats: [oc_team]", "chats: [oc_nope]", 20, "rules[1].chats[0]", "allowlist"),
        ('subject: "{chat_name}', 'subject: "{chat}', 22, "rules[1].subject", "placeholder"),
        ("keywords: [故障, urgent]", "keyword: [故障]", 16, "rules[0].keyword", "keywords"),
    ],
)
def test_bad_configs_name_file_line_and_key(
    tmp_path: Path, old: str, new: str, line: int, key: str, words: str
) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(load.ConfigError) as info:
        load.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    if key:
        assert f": {key}: " in message, message
    assert words in message, message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(load.ConfigError, match="no such file"):
        load.load(str(tmp_path / "absent.yaml"))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, "-m", "feishu_mailbot", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_daemon_refuses_bad_config_with_exit_78(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("  app_id: cli_test\n", ""))
    for command in (["run"], ["check-config"]):
        result = run_cli("--config", path, *command)
        assert result.returncode == 78
        assert f"{path}:2: feishu.app_id: missing" in result.stderr
        assert "Traceback" not in result.stderr


def test_shipped_example_config_asks_for_credentials() -> None:
    example = Path(__file__).resolve().parents[2] / "etc" / "feishu-mailbot.yaml"
    result = run_cli("--config", str(example), "check-config")
    assert result.returncode == 78
    assert ": still the example placeholder" in result.stderr


@pytest.mark.parametrize(
    ("placeholder", "key"),
    [
        ("app_secret: changeme", "feishu.app_secret"),
        ("app_id: cli_xxxxxxxxxxxxxxxx", "feishu.app_id"),
        ("id: oc_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "chats[0]"),
        ("host: smtp.example.com", "smtp.host"),
    ],
)
def test_each_placeholder_of_the_shipped_example_is_refused_by_its_key(
    tmp_path: Path, placeholder: str, key: str
) -> None:
    """The example with everything filled in but one placeholder: that one is named."""
    example = Path(__file__).resolve().parents[2] / "etc" / "feishu-mailbot.yaml"
    text = example.read_text("utf-8")
    filled = {
        "app_secret: changeme": "app_secret: s3cret-from-the-console",
        "app_id: cli_xxxxxxxxxxxxxxxx": "app_id: cli_a5f3e2d1c0b9",
        "id: oc_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx": "id: oc_5ad573a6411d72b8305fda3a9c15c70e",
        "host: smtp.example.com": "host: smtp.qiye.163.com",
        "password_file: /etc/feishu-mailbot/smtp_password": "password: from-the-relay",
    }
    for shipped, real in filled.items():
        assert shipped in text
        if shipped != placeholder:
            text = text.replace(shipped, real, 1)
    path = tmp_path / "feishu-mailbot.yaml"
    path.write_text(text, "utf-8")
    result = run_cli("--config", str(path), "check-config")
    assert result.returncode == 78, result.stdout
    assert f"{key}: " in result.stderr and "still the example placeholder" in result.stderr
    if placeholder == "host: smtp.example.com":  # and the rest of the example is fine
        text = text.replace(placeholder, filled[placeholder])
        path.write_text(text, "utf-8")
        assert run_cli("--config", str(path), "check-config").returncode == 0


def test_check_config_ok(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    result = run_cli("--config", path, "check-config")
    assert result.returncode == 0, result.stderr
    assert "OK (2 chats, 2 rules)" in result.stdout
    after = run_cli("check-config", "--config", path)  # as people type it, too
    assert after.returncode == 0 and after.stdout == result.stdout, after.stderr


def test_usage_error_is_64() -> None:
    assert run_cli("no-such-command").returncode == 64


REPORT = "daily_report:\n  chat: oc_team\n  recipients: [boss@example.com]\n"


def test_one_time_zone_for_forwards_and_digests(tmp_path: Path) -> None:
    default = load.load(write(tmp_path, GOOD))
    assert default.timezone == "Asia/Shanghai"
    berlin = load.load(write(tmp_path, GOOD + "timezone: Europe/Berlin\n" + REPORT))
    assert berlin.timezone == "Europe/Berlin"
    assert berlin.daily_report is not None and berlin.daily_report.timezone == "Europe/Berlin"
    # A config from an earlier release, with the zone only under daily_report, still works.
    legacy = load.load(write(tmp_path, GOOD + REPORT + "  timezone: Asia/Tokyo\n"))
    assert legacy.timezone == "Asia/Tokyo"
    assert legacy.daily_report is not None and legacy.daily_report.timezone == "Asia/Tokyo"


def test_two_different_time_zones_are_an_error(tmp_path: Path) -> None:
    text = GOOD + "timezone: Europe/Berlin\n" + REPORT + "  timezone: Asia/Tokyo\n"
    path = write(tmp_path, text)
    with pytest.raises(load.ConfigError) as info:
        load.load(path)
    assert str(info.value).startswith(f"{path}:{text.count(chr(10))}: daily_report.timezone: ")
    assert "differs from the top-level timezone 'Europe/Berlin'" in str(info.value)
    with pytest.raises(load.ConfigError, match=r":\d+: timezone: unknown time zone"):
        load.load(write(tmp_path, GOOD + "timezone: Mars/Olympus\n"))


def test_simulate_shows_what_a_message_would_do(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "timezone: Europe/Berlin\n")
    other = run_cli("--config", path, "simulate", "--chat", "oc_nope", "--sender", "ou_a", "故障")
    assert other.returncode == 0 and "not in the `chats` allowlist" in other.stdout
    quiet = run_cli("--config", path, "simulate", "--chat", "oc_team", "--sender", "ou_a", "你好")
    assert quiet.returncode == 0 and "no rule matches" in quiet.stdout
    hit = run_cli("--config", path, "simulate", "--chat", "oc_team", "--sender", "ou_a", "故障了")
    assert hit.returncode == 0, hit.stderr
    assert "rules oncall → one mail to oncall@example.com" in hit.stdout
    raw = hit.stdout.split("-" * 72 + "\n", 1)[1]
    mail = email.message_from_string(raw, policy=email.policy.default)
    assert mail["Subject"] == "[研发群] ou_a: 故障了"
    # The one time zone: Berlin is UTC+1 or UTC+2, never Shanghai's +8.
    offset = mail["Date"].datetime.utcoffset()
    assert offset is not None and offset.total_seconds() in (3600, 7200)


def test_check_config_warns_about_nested_quantifiers(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("regex: '(?i)release\\s+\\d+'", "regex: '^(a+)+$'"))
    result = run_cli("--config", path, "check-config")
    assert result.returncode == 0, result.stderr
    assert f"warning: {path}: rules[1].regex: '^(a+)+$' repeats a group" in result.stderr
    assert "25 ms limit" in result.stderr
    plain = load.load(write(tmp_path, GOOD))
    assert load.warnings(plain) == []  # (?i)release\s+\d+ repeats nothing repeated


def test_attachment_caps(tmp_path: Path) -> None:
    assert load.load(write(tmp_path, GOOD)).attachments == AttachmentSettings()
    s = load.load(write(tmp_path, GOOD + "attachments:\n  max_file_mb: 5\n  max_mail_mb: 7.5\n"))
    assert (s.attachments.max_file, s.attachments.max_mail) == (5 * MB, int(7.5 * MB))
    path = write(tmp_path, GOOD + "attachments:\n  max_file_mb: 150\n")
    with pytest.raises(load.ConfigError) as info:
        load.load(path)
    assert str(info.value) == (
        f"{path}:24: attachments.max_file_mb: 150 is out of range (expected 0…50)"
    )


def test_retention(tmp_path: Path) -> None:
    assert load.load(write(tmp_path, GOOD)).retention == RetentionSettings()
    text = GOOD + "retention:\n  events_days: 3\n  messages_days: 60\n  mail_days: 365\n"
    r = load.load(write(tmp_path, text)).retention
    assert (r.events, r.messages, r.mail) == (3 * DAY, 60 * DAY, 365 * DAY)
    path = write(tmp_path, GOOD + "retention:\n  messages_days: 1\n")
    with pytest.raises(load.ConfigError) as info:
        load.load(path)
    assert "retention.messages_days: 1 is out of range (expected 2…3650)" in str(info.value)


PIN = (
    "53:8B:A5:E0:38:C8:00:9C:AB:84:06:65:3B:6A:9E:03:"
    "10:19:0E:4D:1F:8D:92:73:14:9E:02:38:18:01:21:BA"
)


@pytest.mark.parametrize("written", [PIN, PIN.lower(), PIN.replace(":", ""), f'"{PIN.lower()}"'])
def test_smtp_tls_fingerprint_is_kept_in_one_form(tmp_path: Path, written: str) -> None:
    pinned = f"  security: none\n  tls_fingerprint: {written}\n"
    s = load.load(write(tmp_path, GOOD.replace("  security: none\n", pinned)))
    assert s.smtp.tls_fingerprint == PIN  # as msmtp --serverinfo prints it
    assert load.load(write(tmp_path, GOOD)).smtp.tls_fingerprint is None


@pytest.mark.parametrize(
    "written",
    [
        PIN[:-3],  # one byte short
        PIN.replace(":", "")[:40],  # a SHA-1 fingerprint
        PIN.replace(":", "-"),
        PIN.replace("53:8B", "538B"),  # colons in some places only
        "SHA256:" + PIN,
        PIN.replace("53", "G3"),
        "yes",
    ],
)
def test_a_bad_smtp_tls_fingerprint_is_a_config_error(tmp_path: Path, written: str) -> None:
    path = write(tmp_path, GOOD.replace("  security: none\n", f"  tls_fingerprint: {written}\n"))
    with pytest.raises(load.ConfigError) as info:
        load.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}:12: smtp.tls_fingerprint: "), message
    assert "(expected the SHA-256 fingerprint of the relay's certificate" in message, message
    result = run_cli("--config", path, "check-config")
    assert (result.returncode, result.stderr) == (78, message + "\n")


def test_smtp_ca_file_is_read_at_load_relative_to_the_config(tmp_path: Path) -> None:
    from tests import certs

    pem = Path(certs.ca_file()).read_text()
    (tmp_path / "relay-ca.pem").write_text("# Főtanúsítvány, the relay's CA\n" + pem)
    text = GOOD.replace("  security: none\n", "  ca_file: relay-ca.pem\n")
    s = load.load(write(tmp_path, text))
    assert s.smtp.ca_file is not None
    assert s.smtp.ca_file.path == str(tmp_path / "relay-ca.pem")
    assert s.smtp.ca_file.pem == pem  # the certificates only
    assert load.load(write(tmp_path, GOOD)).smtp.ca_file is None


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "cannot read {file}: No such file or directory (expected a readable PEM file)"),
        ("", "{file} holds no certificate"),
        ("not a certificate\n", "{file} holds no certificate"),
        (b"0\x82\x01\x00\xff\xfe", "{file} is not PEM text"),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "{file} has a certificate block that does not decode",
        ),
    ],
    ids=["missing", "empty", "text", "der", "broken-pem"],
)
def test_an_unusable_smtp_ca_file_is_a_config_error_naming_key_and_file(
    tmp_path: Path, content: str | bytes | None, words: str
) -> None:
    ca = tmp_path / "relay-ca.pem"
    if isinstance(content, bytes):
        ca.write_bytes(content)
    elif content is not None:
        ca.write_text(content)
    path = write(tmp_path, GOOD.replace("  security: none\n", f"  ca_file: {ca}\n"))
    with pytest.raises(load.ConfigError) as info:
        load.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}:12: smtp.ca_file: "), message
    assert words.format(file=ca) in message, message
    assert "(expected" in message, message
    result = run_cli("--config", path, "check-config")
    assert (result.returncode, result.stderr) == (78, message + "\n")


SMTP_LOGIN = '  from: "Bot <bot@example.com>"\n  username: bot\n  password: pw\n'


@pytest.mark.parametrize(
    ("key", "written", "reads_as"),
    [
        ("feishu.app_secret", "0123456", "a number"),  # YAML 1.1: octal, 42798
        ("feishu.app_secret", "12:30:45", "a number"),  # YAML 1.1: base 60, 45045
        ("feishu.app_secret", "1_000", "a number"),
        ("feishu.app_secret", "6.02e+23", "a number"),
        ("feishu.app_secret", "yes", "true or false"),
        ("feishu.app_secret", "2024-05-01", "a date"),
        ("smtp.password", "0123456", "a number"),
        ("smtp.password", "12:30:45", "a number"),
        ("smtp.password", "off", "true or false"),
    ],
)
def test_a_secret_yaml_would_change_is_an_error_that_says_quote_it(
    tmp_path: Path, key: str, written: str, reads_as: str
) -> None:
    text = GOOD.replace('  from: "Bot <bot@example.com>"\n', SMTP_LOGIN)
    name = key.split(".")[1]
    line = {"feishu.app_secret": 3, "smtp.password": 15}[key]
    assert text.splitlines()[line - 1].startswith(f"  {name}: ")
    path = write(tmp_path, text.replace(f"  {name}: ", f"  {name}: {written}  #", 1))
    with pytest.raises(load.ConfigError) as info:
        load.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: {key}: "), message
    assert f"as {reads_as}" in message and "quote it" in message, message
    assert written not in message.removeprefix(path)  # a secret is never shown
    result = run_cli("--config", path, "check-config")
    assert (result.returncode, result.stderr) == (78, message + "\n")


def test_a_quoted_secret_is_taken_as_written(tmp_path: Path) -> None:
    text = GOOD.replace('  from: "Bot <bot@example.com>"\n', SMTP_LOGIN)
    text = text.replace("app_secret: test-secret", 'app_secret: "0123456"')
    s = load.load(write(tmp_path, text.replace("password: pw", "password: '12:30:45'")))
    assert s.feishu.app_secret.reveal() == "0123456"
    assert s.smtp.password is not None and s.smtp.password.reveal() == "12:30:45"


@pytest.mark.parametrize(
    ("extra", "files", "key", "words"),
    [
        (
            "  proxy: socks5://127.0.0.1:1080\n",
            {},
            "feishu.proxy",
            "SOCKS proxies are not supported",
        ),
        ("  proxy: https://127.0.0.1:3128\n", {}, "feishu.proxy", "expected http://host:port"),
        ("  proxy: http://127.0.0.1\n", {}, "feishu.proxy", "expected http://host:port"),
        (
            "  proxy: http://u:pw-in-url@127.0.0.1:3128\n  proxy_password_file: pw\n",
            {"pw": "pw-in-file"},
            "feishu.proxy",
            "both in the URL and in a file",
        ),
        (
            "  proxy_password_file: pw\n",
            {"pw": "x"},
            "feishu.proxy_password_file",
            "without feishu.proxy",
        ),
        ("  ca_file: missing.pem\n", {}, "feishu.ca_file", "cannot read"),
        (
            "  ca_file: junk.pem\n",
            {"junk.pem": "not a certificate"},
            "feishu.ca_file",
            "holds no certificate",
        ),
    ],
)
def test_bad_network_settings_are_config_errors(
    tmp_path: Path, extra: str, files: dict[str, str], key: str, words: str
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    text = GOOD.replace("  domain: http://127.0.0.1:9\n", "  domain: http://127.0.0.1:9\n" + extra)
    with pytest.raises(load.ConfigError) as info:
        load.load(write(tmp_path, text))
    message = str(info.value)
    assert f": {key}: " in message and words in message, message
    assert "pw-in-url" not in message and "pw-in-file" not in message


def test_a_proxy_and_its_password_file(tmp_path: Path) -> None:
    from feishu_mailbot.config import proxy

    (tmp_path / "pw").write_text("s3cret:@/\n", encoding="utf-8")
    extra = "  proxy: http://alice@proxy.corp.example:3128\n  proxy_password_file: pw\n"
    text = GOOD.replace("  domain: http://127.0.0.1:9\n", "  domain: http://127.0.0.1:9\n" + extra)
    s = load.load(write(tmp_path, text))
    via = proxy.for_url("https://open.feishu.cn", s.feishu, {})
    assert via is not None and via.address == "proxy.corp.example:3128"
    assert via.shown() == "http://alice@proxy.corp.example:3128 (from feishu.proxy)"
    assert proxy.url_of(via) == "http://alice:s3cret%3A%40%2F@proxy.corp.example:3128"
    assert "s3cret" not in repr(s) and "s3cret" not in via.shown()


def test_a_database_section_with_its_password_file(tmp_path: Path) -> None:
    (tmp_path / "db.pw").write_text("pg-s3cret\n", encoding="utf-8")
    text = (
        GOOD
        + "database:\n  url: postgresql://bot@db.example:5433/mailbot\n  password_file: db.pw\n"
    )
    s = load.load(write(tmp_path, text))
    assert s.database is not None
    assert s.database.url == "postgresql://bot@db.example:5433/mailbot"
    assert s.database.password is not None and s.database.password.reveal() == "pg-s3cret"
    assert "pg-s3cret" not in repr(s)
    assert load.load(write(tmp_path, GOOD)).database is None  # SQLite in state_dir


@pytest.mark.parametrize(
    ("section", "key", "words"),
    [
        ("  url: postgresql://bot:pw-in-url@db/mailbot\n", "database.url", "holds a password"),
        ("  url: mysql://bot@db/mailbot\n", "database.url", "is not a PostgreSQL URL"),
        ("  url: postgresql://bot@db\n", "database.url", "is not a PostgreSQL URL"),
        ("  url: postgresql://bot@db:port/x\n", "database.url", "expected postgresql://"),
        (
            "  url: postgresql://bot@db/x\n  password_file: none.pw\n",
            "database.password_file",
            "cannot read",
        ),
        ("  password_file: x\n", "database.url", "missing"),
        ("  url: postgresql://bot@db/x\n  pasword: x\n", "database.pasword", "did you mean"),
    ],
)
def test_bad_database_settings_are_config_errors(
    tmp_path: Path, section: str, key: str, words: str
) -> None:
    with pytest.raises(load.ConfigError) as info:
        load.load(write(tmp_path, GOOD + "database:\n" + section))
    message = str(info.value)
    assert f"{key}" in message and words in message, message
    assert "pw-in-url" not in message


def test_an_inbound_section_with_its_password_file(tmp_path: Path) -> None:
    (tmp_path / "imap.pw").write_text("imap-s3cret\n", encoding="utf-8")
    text = GOOD + (
        "inbound:\n  imap:\n    host: imap.example.com\n    username: bot@example.com\n"
        "    password_file: imap.pw\n  processed: 已处理\n  trusted_authserv_id: mx.example.com\n"
        f"  ca_file: {certs.ca_file()}\n  reply_address: bot+{{token}}@example.com\n"
    )
    s = load.load(write(tmp_path, text))
    assert s.inbound is not None
    imap = s.inbound.imap
    assert (imap.host, imap.port, imap.security, imap.mailbox) == (
        "imap.example.com",
        993,
        "tls",
        "INBOX",
    )
    assert imap.password.reveal() == "imap-s3cret" and "imap-s3cret" not in repr(s)
    assert (s.inbound.processed, s.inbound.trusted_authserv_id) == ("已处理", "mx.example.com")
    assert imap.ca_file is not None and "BEGIN CERTIFICATE" in imap.ca_file.pem
    assert s.inbound.reply_address == "bot+{token}@example.com"
    assert load.load(write(tmp_path, GOOD)).inbound is None


IMAP = "  imap:\n    host: h\n    username: u\n    password: p\n"


@pytest.mark.parametrize(
    ("section", "key", "words"),
    [
        ("  processed: x\n", "inbound.imap", "missing"),
        (
            IMAP + "  processed: INBOX\n",
            "inbound.processed",
            "is the folder replies are read from",
        ),
        ("  imap:\n    host: h\n    username: u\n", "inbound.imap.password", "missing"),
        (
            IMAP + "    security: ssl\n",
            "inbound.imap.security",
            "expected starttls, tls or none",
        ),
        (
            IMAP + "    port: 0\n",
            "inbound.imap.port",
            "",
        ),
        (
            IMAP + "  proccessed: x\n",
            "inbound.proccessed",
            "did you mean",
        ),
        (
            IMAP + "  reply_address: bot@{token}.example.com\n",
            "inbound.reply_address",
            "where the provider delivers sub-addresses",
        ),
        (
            IMAP + '  reply_address: "bot@example.com"\n  verp: true\n',
            "inbound.verp",
            "needs reply_address with a {token}",
        ),
        (
            IMAP + "  reply_address: Bot <bot@example.com>\n",
            "inbound.reply_address",
            "is not a reply address",
        ),
        (
            IMAP + "  reply_address: feishu-mailbot-notifications-x+{token}@example.com\n",
            "inbound.reply_address",
            "local part of 66 characters with a token in it (servers take 64)",
        ),
    ],
)
def test_bad_inbound_settings_are_config_errors(
    tmp_path: Path, section: str, key: str, words: str
) -> None:
    with pytest.raises(load.ConfigError) as info:
        load.load(write(tmp_path, GOOD + "inbound:\n" + section))
    message = str(info.value)
    assert key in message and words in message, message


def test_check_config_names_what_the_service_user_could_not_read(tmp_path: Path) -> None:
    """Root reads everything: the check says which file, or which directory on the way,
    the daemon's user would fail on, and the command that fixes it."""
    from feishu_mailbot.cli.check import unreadable

    top = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        top.chmod(0o755)
        secrets = top / "secrets"
        secrets.mkdir(mode=0o750)  # root:root, as `mkdir` as root leaves it
        secret = secrets / "app_secret"
        secret.write_text("s3cret\n", "utf-8")
        secret.chmod(0o640)
        config = top / "feishu-mailbot.yaml"
        config.write_text(
            GOOD.replace("  app_secret: test-secret\n", f"  app_secret_file: {secret}\n"), "utf-8"
        )
        config.chmod(0o644)
        settings = load.load(str(config))
        (warning,) = unreadable(settings, "nobody")
        assert warning.startswith(f"feishu.app_secret_file: {secret}: the service user nobody")
        assert f"the directory {secrets} is root:root 0750" in warning
        assert f"(run: chgrp feishu-mailbot {secrets} && chmod g+x {secrets})" in warning
        os.chown(secrets, -1, 65534)  # nobody's group
        (warning,) = unreadable(settings, "nobody")
        assert f"the file {secret} is root:root 0640" in warning
        os.chown(secret, -1, 65534)
        assert unreadable(settings, "nobody") == []
        assert unreadable(settings, "no-such-user-here") == []
        hidden = top / "root-only"  # a link, readable, to a file in root's own directory
        hidden.mkdir(mode=0o700)
        (hidden / "app_secret").write_text("s3cret\n", "utf-8")
        secret.unlink()
        secret.symlink_to(hidden / "app_secret")
        (warning,) = unreadable(settings, "nobody")
        assert f"the directory {hidden} is root:root 0700" in warning
    finally:
        shutil.rmtree(top)
