"""`feishu-mailbot import-env`: the old bot's .env read as python-dotenv read it, secrets kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from feishu_mailbot.cli import import_env, main
from feishu_mailbot.config.load import load as load_config
from feishu_mailbot.config.settings import Settings

ENV = """\
FEISHU_APP_ID=cli_a5f3e2d1c0b9
FEISHU_APP_SECRET=Qm7rT2vX9pL4sK8w
DAILY_REPORT_CHAT_ID=oc_5ad573a6411d72b8305fda3a9c15c70e
SMTP_SERVER=smtp.qiye.163.com
SMTP_USER=team.bot@example.com
SMTP_PASSWORD=app-pass-42
"""


def run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, *args: str
) -> tuple[int, str, str, Path]:
    """The real subcommand on a real file; returns (exit code, stdout, stderr, .env path)."""
    env = tmp_path / ".env"
    env.write_bytes(text.encode("utf-8"))
    code = main.main(["import-env", str(env), *args])
    out = capsys.readouterr()
    return code, out.out, out.err, env


def load(tmp_path: Path, yaml_text: str) -> Settings:
    path = tmp_path / "feishu-mailbot.yaml"
    path.write_text(yaml_text, "utf-8")
    return load_config(str(path))


def test_a_byte_order_mark_does_not_hide_the_first_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err, _ = run(tmp_path, capsys, "\ufeff" + ENV)
    assert code == 0, err
    assert load(tmp_path, out).feishu.app_id == "cli_a5f3e2d1c0b9"
    assert "FEISHU_APP_ID is missing" not in err and "not KEY=value" not in err


# What python-dotenv's parser makes of each line (checked against its parse_stream).
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('A="pa\\"ss#word=1"', 'pa"ss#word=1'),  # \" and # inside double quotes
        ('A="b\\\\c"', "b\\c"),
        ('A="b\\nc"', "b\nc"),
        ('A="\\a\\b\\f\\r\\t\\v\\q"', "\a\b\f\r\t\v\\q"),  # only these escapes; \q stays
        ('A="ends\\\\"', "ends\\"),
        ('A="b" # comment', "b"),
        ('A="multi\nline"', "multi\nline"),  # a double-quoted value may span lines
        ("A='a\\nb #c'", "a\\nb #c"),  # single quotes: literal but for \' and \\
        ("A='b\\'c'", "b'c"),
        ("A='b c '", "b c "),
        ("A=b #c", "b"),  # unquoted: ` #` starts a comment
        ("A=b\t#c", "b"),
        ("A=b#c", "b#c"),
        ("A= #c", "#c"),  # the blanks after = belong to the =
        ("A=b  c ", "b  c"),
        ('A=b\\"c', 'b\\"c'),  # no escapes outside double quotes
        ("A=", ""),
        ("export A=b", "b"),
        ("'A'=b", "b"),
        (" A = b ", "b"),
        ("\ufeffA=b", "b"),
    ],
)
def test_values_are_read_as_python_dotenv_reads_them(text: str, value: str) -> None:
    values, problems = import_env.parse(text + "\n", "x.env")
    assert (values, problems) == ({"A": value}, [])


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("A='it''s'", 1),  # text after the closing quote
        ('A="b"junk', 1),
        ("a: b", 1),
        ("X=1\nBARE", 2),  # a key without =: python-dotenv sets nothing
    ],
)
def test_lines_python_dotenv_rejects_are_problems(text: str, line: int) -> None:
    values, problems = import_env.parse(text + "\n", "x.env")
    assert "A" not in values and "BARE" not in values
    assert len(problems) == 1 and problems[0].startswith(f"x.env:{line}: "), problems


def test_a_quoted_secret_arrives_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = ENV.replace("Qm7rT2vX9pL4sK8w", '"pa\\"ss#word=1"')
    text = text.replace("app-pass-42", "'it is #1 \\n'")
    code, out, err, _ = run(tmp_path, capsys, text)
    assert code == 0, err
    s = load(tmp_path, out)
    assert s.feishu.app_secret.reveal() == 'pa"ss#word=1'
    assert s.smtp.password is not None and s.smtp.password.reveal() == "it is #1 \\n"


def test_problems_name_the_line_and_key_never_the_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        "FEISHU_APP_ID=cli_a5f3e2d1c0b9\n"
        "Qm7rT2vX9pL4sK8w\n"  # 2: a secret pasted without its key
        "SMTP_USER=team.bot@example.com\n"
        'SMTP_PASSWORD="first-half\n'  # 4: a value on two lines
        'second-half"\n'
        'FEISHU_APP_SECRET="s3cr3t, never closed\n'  # 6
        "tail-of-s3cr3t\n"  # 7: then read as a line of its own
        "\x1b[2J=1\n"  # a key python-dotenv takes, that would clear the terminal
    )
    code, out, err, env = run(tmp_path, capsys, text)
    assert code == 0, err
    for secret in ("Qm7rT2vX9pL4sK8w", "s3cr3t", "first-half", "second-half"):
        assert secret not in err, err
    assert "Qm7rT2vX9pL4sK8w" not in out and "s3cr3t" not in out
    assert f"{env}:2: " in err
    assert f"{env}:6: FEISHU_APP_SECRET: " in err
    assert f"{env}:7: " in err
    assert f"{env}:4" not in err and f"{env}:5" not in err
    assert "\x1b" not in err and "\x1b" not in out and "\\x1b[2J: unknown key" in err
    filled = out.replace('"REPLACE_ME"', '"set-by-hand"').replace(
        "smtp.example.com", "smtp.corp.cn"
    )
    s = load(tmp_path, filled)
    assert s.smtp.password is not None and s.smtp.password.reveal() == "first-half\nsecond-half"


@pytest.mark.parametrize("dangling", [False, True])
def test_a_planted_symlink_neither_redirects_a_secret_nor_changes_a_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dangling: bool
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    elsewhere = tmp_path / "elsewhere"
    if not dangling:
        elsewhere.write_text("keep me\n")
        elsewhere.chmod(0o600)
    (secrets / "app_secret").symlink_to(elsewhere)
    code, out, err, _ = run(tmp_path, capsys, ENV, "--secrets-dir", str(secrets))
    assert code == os.EX_CANTCREAT
    if dangling:
        assert not elsewhere.exists()
    else:
        assert elsewhere.read_text() == "keep me\n"
        assert elsewhere.stat().st_mode & 0o777 == 0o600
    assert (secrets / "app_secret").is_symlink()
    assert not (secrets / "smtp_password").exists()  # all or nothing
    assert out == ""  # no config that names files which were not written
    assert f"{secrets / 'app_secret'}: " in err and "symbolic link" in err
    assert "Qm7rT2vX9pL4sK8w" not in err and "app-pass-42" not in err


def test_an_existing_secret_file_is_refused_and_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    live = secrets / "smtp_password"
    live.write_text("the live one\n")
    live.chmod(0o640)
    code, out, err, _ = run(tmp_path, capsys, ENV, "--secrets-dir", str(secrets))
    assert code == os.EX_CANTCREAT
    assert live.read_text() == "the live one\n" and live.stat().st_mode & 0o777 == 0o640
    assert not (secrets / "app_secret").exists()
    assert out == ""
    assert f"{live}: exists already" in err and "remove it" in err
    code, out, err, _ = run(tmp_path, capsys, ENV, "--secrets-dir", str(tmp_path / "new"))
    assert code == 0, err
    for name in ("app_secret", "smtp_password"):
        assert (tmp_path / "new" / name).stat().st_mode & 0o777 == 0o640
    assert load(tmp_path, out).feishu.app_secret.reveal() == "Qm7rT2vX9pL4sK8w"


def test_a_secrets_dir_it_makes_lets_the_daemon_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = tmp_path / "etc" / "feishu-mailbot"
    old = os.umask(0o077)  # root's umask on a hardened host
    try:
        code, _, err, _ = run(tmp_path, capsys, ENV, "--secrets-dir", str(secrets))
    finally:
        os.umask(old)
    assert code == 0, err
    assert secrets.stat().st_mode & 0o777 == 0o750
    assert secrets.stat().st_gid == (secrets / "app_secret").stat().st_gid


def test_the_config_says_what_the_new_defaults_change_in_the_chat(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _, _ = run(tmp_path, capsys, ENV + "DAILY_REPORT_ENABLED=True\n")
    assert code == 0
    assert "acknowledge: reaction   # default: an OK reaction on each report taken," in out
    assert "im:message.reactions:write_only" in out
    assert "without one, anyone in the chat may trigger" in out
    assert "With no rules (the old bot had none), only the daily report is mailed." in out
    assert load(tmp_path, out).daily_report is not None  # comments only: still valid
