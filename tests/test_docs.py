"""The documentation says what the code does: every key of feishu-mailbot.yaml(5) and of
the shipped example is one the loader takes, with the documented default; every key the
loader takes is documented; every subcommand and flag in README and feishu-mailbot(8)
exists. The loader is asked, not read: a key it does not know is an "unknown key"
error, whatever value it is given."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from feishu_mailbot.cli.main import _parser
from feishu_mailbot.config import load
from feishu_mailbot.config.settings import DAY, MB
from feishu_mailbot.core.exits import Exit

REPO = Path(__file__).resolve().parents[1]
MAN5 = REPO / "packaging" / "debian" / "feishu-mailbot.yaml.5"
MAN8 = REPO / "packaging" / "debian" / "feishu-mailbot.8"
EXAMPLE = REPO / "etc" / "feishu-mailbot.yaml"

# A valid configuration with every section, each with only what it requires.
BASE: dict[str, Any] = {
    "feishu": {"app_id": "cli_a5f3e2d1c0b9", "app_secret": "s3cret"},
    "chats": [{"id": "oc_team"}],
    "smtp": {"host": "127.0.0.1", "from": "bot@example.com"},
    "rules": [{"name": "oncall", "to": ["oncall@example.com"], "keywords": ["故障"]}],
    "daily_report": {"chat": "oc_team", "recipients": ["boss@example.com"]},
    "health": {},
    "attachments": {},
    "retention": {},
    "inbound": {"imap": {"host": "127.0.0.1", "username": "bot", "password": "p"}},
    "database": {"url": "postgresql://bot@127.0.0.1/bot"},
}
# Where a documented key lives in BASE; a list is its first item.
BLOCKS = {"imap": ("inbound", "imap"), "database": ("database",)}
# Settings attributes whose unit or name differs from the key's.
SCALED = {
    ("attachments", "max_file_mb"): ("max_file", MB),
    ("attachments", "max_mail_mb"): ("max_mail", MB),
    ("retention", "events_days"): ("events", DAY),
    ("retention", "messages_days"): ("messages", DAY),
    ("retention", "mail_days"): ("mail", DAY),
}


def man5_keys() -> list[tuple[tuple[str, ...], str, str]]:
    """(where, key, documented default) of each key feishu-mailbot.yaml(5) describes."""
    found = []
    where: tuple[str, ...] = ()
    parent: tuple[str, ...] | None = None  # inside .RS of a block key (imap, database)
    block = ""  # a bare `.B key` line: an .RS after it holds its keys
    skipping = False  # inside .RS of placeholders or values
    after_tp = False
    for line in MAN5.read_text("utf-8").splitlines():
        if line.startswith(".SH SECTION "):
            where, parent, skipping = (line.split()[2],), None, False
        elif line.startswith(".SH OTHER KEYS"):
            where, parent, skipping = (), None, False
        elif line.startswith(".SH"):
            where = ("-",)
        elif line == ".RS":
            parent, skipping = (BLOCKS.get(block) if block else None), not block
        elif line == ".RE":
            parent, skipping = None, False
        elif line in (".TP", ".TQ"):
            after_tp, block = True, ""
            continue
        elif after_tp and where != ("-",) and not skipping:
            words = re.findall(r'(?:^\.BR? |" *\(?(?:or|,) *" *)([a-z_]+)\b', line)
            default = re.search(r"default\s*\"?\s*(?:\\\(dq)?([^\s\"\\)]+)", line)
            for key in words:
                found.append((parent or where, key, default.group(1) if default else ""))
            if re.fullmatch(r"\.B [a-z_]+", line):
                block = words[0]
        after_tp = False
    return found


def probe(where: tuple[str, ...], key: str, value: object = "x") -> str:
    """The loader's word on BASE with `key` set to `value` at `where`: "" if it took it."""
    config = copy.deepcopy(BASE)
    node: Any = config
    for part in where:
        node = node[part]
        if isinstance(node, list):
            node = node[0]
    node[key] = value
    try:
        load.parse(yaml.safe_dump(config, allow_unicode=True), "test.yaml")
    except load.ConfigError as e:
        return str(e)
    return ""


def test_the_base_configuration_is_valid() -> None:
    assert probe(("health",), "stall_after", 90) == ""


def test_every_key_the_man_page_describes_is_one_the_loader_takes() -> None:
    keys = man5_keys()
    assert len(keys) > 60  # the parse found the pages' keys
    unknown = [f"{'.'.join(w)}.{k}" for w, k, _ in keys if "unknown key" in probe(w, k)]
    assert unknown == []


def loader_keys() -> dict[tuple[str, ...], set[str]]:
    """Per place, the keys the loader takes: its "unknown key" error lists them."""
    places = [(), *[(s,) for s in BASE], ("inbound", "imap")]
    out = {}
    for where in places:
        said = probe(where, "zz_no_such_key")
        listed = re.search(r"expected one of: ([a-z_, ]+)\)", said)
        assert listed is not None, (where, said)
        out[where] = set(listed.group(1).split(", "))
    return out


def test_every_key_the_loader_takes_is_in_the_man_page_and_the_example() -> None:
    documented = {(w, k) for w, k, _ in man5_keys()}
    example = EXAMPLE.read_text("utf-8")
    missing, not_shown = [], []
    for where, keys in loader_keys().items():
        for key in sorted(keys):
            if where == () and key in BASE:
                continue  # a section: described as one
            if (where, key) not in documented and key not in BLOCKS:
                missing.append(f"{'.'.join((*where, key))}")
            if not re.search(rf"^[\s#]*(?:- )?{key}:", example, re.M):
                not_shown.append(f"{'.'.join((*where, key))}")
    assert missing == [], "not in feishu-mailbot.yaml(5)"
    assert not_shown == [], "not in etc/feishu-mailbot.yaml"


def test_every_key_of_the_shipped_example_is_one_the_loader_takes() -> None:
    taken = set().union(*loader_keys().values())
    lines = EXAMPLE.read_text("utf-8").splitlines()
    keys = {m.group(1) for x in lines if (m := re.match(r"^\s*#?\s*(?:- )?([a-z_]+):\s", x))}
    prose = {"note", "e", "or"}  # words before a colon in the example's comments
    assert sorted(keys - taken - prose) == []


def default_cases() -> list[tuple[tuple[str, ...], str, str]]:
    return [
        (w, k, d)
        for w, k, d in man5_keys()
        if re.fullmatch(r"[0-9.]+|[a-z]+|https?://\S+|/\S+|[A-Z][a-z]+/[A-Z]\w+", d)
    ]


@pytest.mark.parametrize(("where", "key", "default"), default_cases())
def test_a_documented_default_is_the_loaders(
    where: tuple[str, ...], key: str, default: str
) -> None:
    config = copy.deepcopy(BASE)
    settings = load.parse(yaml.safe_dump(config, allow_unicode=True), "test.yaml")
    node: Any = settings
    for part in where:
        node = getattr(node, part)
        if isinstance(node, tuple):
            node = node[0]
    name, scale = SCALED.get((where[-1] if where else "", key), (key, 1))
    if name == "from" or not hasattr(node, name):
        pytest.fail(f"{'.'.join((*where, key))}: no such setting to compare")
    value = getattr(node, name)
    if re.fullmatch(r"[0-9.]+", default):
        assert float(value) == float(default) * scale
    else:
        assert str(value).lower() == default.lower()


def cli_lines(text: str) -> list[str]:
    return [
        x for x in text.splitlines() if re.match(r"\s*feishu-mailbot (\[--config PATH\] )?[a-z]", x)
    ]


def test_every_subcommand_and_flag_in_readme_and_man8_exists() -> None:
    parser = _parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[attr-defined]
    lines = cli_lines(
        (REPO / "README.md").read_text("utf-8").split("## Using it", 1)[1].split("\n\n", 2)[1]
    )
    synopsis = MAN8.read_text("utf-8").split(".SH SYNOPSIS", 1)[1].split(".SH", 1)[0]
    for entry in synopsis.split(".br"):
        words = re.sub(r"\\f[BIRP]|\\|\.[A-Z]+ ?", " ", entry).replace("\\-", "-")
        lines.append(" ".join(words.split()))
    checked = 0
    for line in lines:
        words = re.sub(r"\[--config PATH\]|--config", " ", line).split()
        sub = next((w for w in words[1:] if re.fullmatch(r"[a-z][a-z-]+", w)), None)
        if sub is None:
            continue
        assert sub in commands, line
        flags = {f for a in commands[sub]._actions for f in a.option_strings}
        for flag in re.findall(r"--[a-z][a-z-]*", line.replace("--config", "")):
            assert flag in flags, (sub, flag, line)
        checked += 1
    assert checked >= 2 * (len(commands) - 1)  # README and man 8 name every command


def test_one_table_of_exit_statuses_in_the_code_readme_the_guide_and_man8() -> None:
    codes = {int(e) for e in Exit}
    man8 = MAN8.read_text("utf-8").split(".SH EXIT STATUS", 1)[1].split(".SH ", 1)[0]
    assert {int(c) for c in re.findall(r"^\.TP\n\.B (\d+)$", man8, re.M)} == codes
    for doc in (REPO / "README.md", REPO / "docs" / "operator-guide.md"):
        rows = re.findall(r"^\| (\d+) \| ", doc.read_text("utf-8"), re.M)
        assert sorted(map(int, rows)) == sorted(codes), doc.name
    package = REPO / "feishu_mailbot"
    assert [p for p in package.rglob("*.py") if "os.EX_" in p.read_text("utf-8")] == []
