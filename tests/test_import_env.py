"""`feishu-mailbot import-env`: the old bot's .env read as python-dotenv read it, secrets kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from feishu_mailbot import cli, config

ENV = """\
FEISHU_APP_ID=cli_a5f3e2d1c0b9
FEISHU_APP_SECRET=Qm7rT2vX9pL4sK8w
DAILY_REPORT_CHAT_ID=oc_5ad573a6411d72b8305fda3a9c15c70e
SMTP_SERVER=smtp.example.com
SMTP_USER=team.bot@example.com
SMTP_PASSWORD=app-pass-42
"""


def run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, *args: str
) -> tuple[int, str, str, Path]:
    """The real subcommand on a real file; returns (exit code, stdout, stderr, .env path)."""
    env = tmp_path / ".env"
    env.write_bytes(text.encode("utf-8"))
    code = cli.main(["import-env", str(env), *args])
    out = capsys.readouterr()
    return code, out.out, out.err, env


def load(tmp_path: Path, yaml_text: str) -> config.Settings:
    path = tmp_path / "feishu-mailbot.yaml"
    path.write_text(yaml_text, "utf-8")
    return config.load(str(path))


def test_a_byte_order_mark_does_not_hide_the_first_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err, _ = run(tmp_path, capsys, "\ufeff" + ENV)
    assert code == 0, err
    assert load(tmp_path, out).feishu.app_id == "cli_a5f3e2d1c0b9"
    assert "FEISHU_APP_ID is missing" not in err and "not KEY=value" not in err
