"""`feishu-mailbot import-env`: the old bot's `.env` as a complete, commented config.

The conversion is pure, text in and YAML text and notes out; `run_import_env`
at the end is the command that reads the file and writes the secrets' files.
Every key of the old bot is either carried over (with a comment saying how),
reported as not needed, or listed as unknown; nothing is dropped silently.
Strings are written as JSON strings, which are YAML double-quoted scalars, so
no value can change the structure.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from feishu_mailbot.core.exits import Exit
from feishu_mailbot.core.text import terminal

# Keys the long connection does not use: the old bot's webhook mode needed them.
NOT_NEEDED = {
    "FEISHU_VERIFICATION_TOKEN": "verifies webhook callbacks; the long connection needs none",
    "FEISHU_ENCRYPT_KEY": "decrypts webhook callbacks; the long connection needs none",
}
KNOWN = {
    "FEISHU_APP_ID",
    "FEISHU_APP_SECRET",
    "DAILY_REPORT_ENABLED",
    "DAILY_REPORT_CHAT_ID",
    "DAILY_REPORT_SEND_MODE",
    "DAILY_REPORT_RECIPIENTS",
    "SMTP_SERVER",
    "SMTP_PORT",
    "SMTP_USER",
    "SMTP_PASSWORD",
    "USE_TLS",
    *NOT_NEEDED,
}


@dataclass
class Imported:
    yaml: str
    notes: list[str] = field(default_factory=list)  # for stderr: what to check or do
    secrets: dict[str, str] = field(default_factory=dict)  # file name → secret, if asked


# python-dotenv's grammar (its parser.py): the old bot read its .env with it, so a value
# here means what it meant there. A double-quoted value may span lines and knows the
# escapes \\ \' \" \a \b \f \n \r \t \v; a single-quoted one only \\ and \'; an
# unquoted one ends at blanks before a `#`. Written from its rules, not imported: no
# dependency for a one-off migration.
_NEWLINE = re.compile(r"\r\n|\n|\r")
_SPACE = re.compile(r"\s*")
_BLANKS = re.compile(r"[^\S\r\n]*")
_EXPORT = re.compile(r"(?:export[^\S\r\n]+)?")
_QUOTED_KEY = re.compile(r"'([^']+)'")
_KEY = re.compile(r"[^=#\s]+")
_SINGLE = re.compile(r"'((?:\\'|[^'])*)'")
_DOUBLE = re.compile(r'"((?:\\"|[^"])*)"')
_UNQUOTED = re.compile(r"[^\r\n]*")
_END = re.compile(r"[^\S\r\n]*(?:#[^\r\n]*)?(?:\r\n|\n|\r|$)")
_REST = re.compile(r"[^\r\n]*(?:\r\n|\n|\r)?")
_SINGLE_ESCAPES = re.compile(r"\\[\\']")
_DOUBLE_ESCAPES = re.compile(r"\\[\\'\"abfnrtv]")
_ESCAPED = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_EXPANDED = re.compile(r"\$\{[^}:]*(?::-[^}]*)?\}")  # what load_dotenv() would interpolate


class _Unreadable(Exception):
    """A statement python-dotenv would skip with a warning; carries where reading stopped."""

    def __init__(self, key: str | None, at: int) -> None:
        super().__init__()
        self.key = key
        self.at = at


def _unescape(escapes: re.Pattern[str], value: str) -> str:
    return escapes.sub(lambda m: _ESCAPED.get(m.group()[1], m.group()[1]), value)


def _value(text: str, pos: int, key: str) -> tuple[str, int]:
    """The value starting at `pos` and where it ends."""
    quote = text[pos : pos + 1]
    if quote in ("'", '"'):
        found = (_SINGLE if quote == "'" else _DOUBLE).match(text, pos)
        if found is None:
            raise _Unreadable(key, pos)
        escapes = _SINGLE_ESCAPES if quote == "'" else _DOUBLE_ESCAPES
        return _unescape(escapes, found.group(1)), found.end()
    found = _UNQUOTED.match(text, pos)
    assert found is not None  # matches the empty string too
    return re.sub(r"\s+#.*", "", found.group()).rstrip(), found.end()


def _statement(text: str, pos: int) -> tuple[str | None, str | None, int]:
    """(key, value, end) of the statement at `pos`: no key for a comment, no value without =."""
    pos = _match(_EXPORT, text, pos, None)
    if text.startswith("#", pos):
        return None, None, _match(_END, text, pos, None)
    quoted = text.startswith("'", pos)
    found = (_QUOTED_KEY if quoted else _KEY).match(text, pos)
    if found is None:
        raise _Unreadable(None, pos)
    key = found.group(1 if quoted else 0)
    pos = _match(_BLANKS, text, found.end(), key)
    value = None
    if text.startswith("=", pos):
        value, pos = _value(text, _match(_BLANKS, text, pos + 1, key), key)
    return key, value, _match(_END, text, pos, key)


def _match(pattern: re.Pattern[str], text: str, pos: int, key: str | None) -> int:
    found = pattern.match(text, pos)
    if found is None:
        raise _Unreadable(key, pos)
    return found.end()


def parse(text: str, path: str) -> tuple[dict[str, str], list[str]]:
    """KEY=value as python-dotenv reads it; problems name the line, never its text.

    A line that cannot be read may be a secret pasted in, or the rest of a value
    whose quote was never closed, so only its number (and its key, if it is one of
    ours) is shown.
    """
    text = text.removeprefix("\ufeff")
    line_starts = [found.end() for found in _NEWLINE.finditer(text)]
    values: dict[str, str] = {}
    problems = []
    pos = 0
    while (pos := _match(_SPACE, text, pos, None)) < len(text):
        where = f"{path}:{bisect.bisect_right(line_starts, pos) + 1}"
        try:
            key, value, pos = _statement(text, pos)
        except _Unreadable as e:
            pos = _match(_REST, text, e.at, None)
            if e.key in KNOWN:
                problems.append(
                    f"{where}: {e.key}: cannot be read as KEY=value (an unclosed quote, "
                    "or text after the closing one?), skipped; its value is not shown"
                )
            else:
                problems.append(f"{where}: not KEY=value, skipped; the line is not shown")
            continue
        if key is None:
            continue
        if value is None:
            named = f"{key}: " if key in KNOWN else ""
            problems.append(f'{where}: {named}no "=" (expected KEY=value), skipped')
            continue
        values[key] = value
        if key in KNOWN and _EXPANDED.search(value):
            problems.append(
                f"{where}: {key}: has ${{…}}, which the old bot's python-dotenv replaced "
                "from its environment; copied as written: check it"
            )
    return values, problems


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _q(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def convert(values: dict[str, str], path: str, secrets_dir: str | None) -> Imported:
    notes: list[str] = []
    secrets: dict[str, str] = {}
    out = [f"# Made by `feishu-mailbot import-env {path}`: check each comment, then run", "#"]
    out.append("#   feishu-mailbot check-config --online")
    out.append("")

    def secret(key: str, yaml_key: str, file_name: str, indent: str) -> None:
        value = values.get(key, "")
        if not value:
            out.append(f"{indent}{yaml_key}: {_q('REPLACE_ME')}  # {key} was not in the .env")
            notes.append(f"{key} is missing: set {yaml_key} by hand")
        elif secrets_dir:
            secrets[file_name] = value
            out.append(f"{indent}{yaml_key}_file: {_q(f'{secrets_dir}/{file_name}')}  # from {key}")
        else:
            out.append(f"{indent}{yaml_key}: {_q(value)}  # from {key}; keep this file 0640")

    out.append("feishu:")
    app_id = values.get("FEISHU_APP_ID", "")
    out.append(f"  app_id: {_q(app_id or 'cli_REPLACE_ME')}  # FEISHU_APP_ID")
    if not app_id:
        notes.append("FEISHU_APP_ID is missing: set feishu.app_id by hand")
    secret("FEISHU_APP_SECRET", "app_secret", "app_secret", "  ")
    out.append("  # domain: https://open.larksuite.com   # for Lark (international)")
    out.append("")

    chat = values.get("DAILY_REPORT_CHAT_ID", "")
    out.append("# Only these chats are read. The old bot read every chat it was in unless")
    out.append("# DAILY_REPORT_CHAT_ID was set; `feishu-mailbot chats` lists the ids.")
    out.append("chats:")
    if chat:
        out.append(f"  - id: {_q(chat)}  # DAILY_REPORT_CHAT_ID")
    else:
        out.append(f"  - id: {_q('oc_REPLACE_ME')}  # no DAILY_REPORT_CHAT_ID in the .env")
        notes.append("no DAILY_REPORT_CHAT_ID: list the chats to read (feishu-mailbot chats)")
    out.append("")

    out.append("smtp:")
    host = values.get("SMTP_SERVER", "")
    out.append(f"  host: {_q(host or 'smtp.example.com')}  # SMTP_SERVER")
    if not host:
        notes.append("SMTP_SERVER is missing: set smtp.host by hand")
    port_text = values.get("SMTP_PORT", "").strip()
    port = int(port_text) if port_text.isdigit() else 587
    tls = _truthy(values.get("USE_TLS", "true"))
    if port == 465:
        security, why = "tls", "port 465 is TLS from the first byte"
    elif tls:
        security, why = "starttls", f"USE_TLS=True on port {port}: STARTTLS, never cleartext"
    else:
        security, why = "none", "USE_TLS=False: cleartext; only for a relay on this host"
        notes.append("USE_TLS=False: mail and the SMTP password travel unencrypted")
    out.append(f"  port: {port}  # SMTP_PORT" + ("" if port_text else " (not set: 587)"))
    out.append(f"  security: {security}  # {why}")
    user = values.get("SMTP_USER", "")
    if user:
        out.append(f"  username: {_q(user)}  # SMTP_USER")
        secret("SMTP_PASSWORD", "password", "smtp_password", "  ")
    sender = user if "@" in user else "feishu-mailbot@example.com"
    out.append(f"  from: {_q(f'Feishu Mailbot <{sender}>')}  # the old bot sent as SMTP_USER")
    if "@" not in user:
        notes.append("smtp.from: set the address mail is sent from")
    out.append("")

    enabled = _truthy(values.get("DAILY_REPORT_ENABLED", "false"))
    recipients = [r.strip() for r in values.get("DAILY_REPORT_RECIPIENTS", "").split(",")]
    recipients = [r for r in recipients if r]
    mode = values.get("DAILY_REPORT_SEND_MODE", "manual").strip().lower() or "manual"
    if mode not in ("manual", "scheduled", "immediate"):
        notes.append(f"DAILY_REPORT_SEND_MODE={mode!r} is not known here: manual was used")
        mode = "manual"
    prefix = "" if enabled else "# "
    if not enabled:
        out.append("# DAILY_REPORT_ENABLED was not True: the section is left commented out.")
    out.append(f"{prefix}daily_report:")
    out.append(f"{prefix}  chat: {_q(chat or 'oc_REPLACE_ME')}  # DAILY_REPORT_CHAT_ID")
    listed = ", ".join(_q(r) for r in recipients) or _q("manager@example.com")
    out.append(f"{prefix}  recipients: [{listed}]  # DAILY_REPORT_RECIPIENTS")
    if enabled and not recipients:
        notes.append("DAILY_REPORT_RECIPIENTS is empty: set daily_report.recipients")
    out.append(f"{prefix}  mode: {mode}  # DAILY_REPORT_SEND_MODE; also: scheduled, immediate")
    if mode == "manual":
        out.append(f"{prefix}  # '@bot 发送日报' in the chat, or `feishu-mailbot send-report`")
    # What this release does in the chat that the old bot did not, by default.
    out.append(
        f"{prefix}  # acknowledge: reaction   # default: an OK reaction on each report taken,"
    )
    out.append(f"{prefix}  #                         # seen in the chat; needs the scope")
    out.append(
        f"{prefix}  #                         # im:message.reactions:write_only; none: silent"
    )
    out.append(f"{prefix}  # roster: [...]           # without one, anyone in the chat may trigger")
    out.append(f"{prefix}  #                         # the digest; with one, only its members")
    out.append("")
    out.append("# With no rules (the old bot had none), only the daily report is mailed.")
    out.append("# Keyword rules (forward matching messages by mail) were not in the .env:")
    out.append("# rules:")
    out.append("#   - name: oncall")
    out.append("#     keywords: [故障, 紧急]")
    out.append("#     to: [oncall@example.com]")

    dropped = [k for k in values if k in NOT_NEEDED]
    unknown = [k for k in values if k not in KNOWN]
    if dropped or unknown:
        out.append("")
    for key in dropped:
        out.append(f"# {key}: not carried over: {NOT_NEEDED[key]}")
        notes.append(f"{key} dropped: {NOT_NEEDED[key]}")
    for key in (terminal(k, one_line=True) for k in unknown):  # dotenv keys may hold controls
        out.append(f"# {key}: unknown to import-env, not carried over (value not shown)")
        notes.append(f"{key}: unknown key, not carried over; see feishu-mailbot.yaml(5)")
    return Imported("\n".join(out) + "\n", notes, secrets)


# --------------------------------------------------------------------------- the command


def run_import_env(env_path: str, secrets_dir: str | None) -> int:
    """The command: reads the .env, prints the config, writes the secrets' files."""
    try:
        text = Path(env_path).read_text(encoding="utf-8-sig")  # a BOM would hide the first key
    except OSError as e:
        print(f"{env_path}: cannot read it: {e.strerror or e}", file=sys.stderr)
        return Exit.NOINPUT
    except UnicodeDecodeError as e:
        print(f"{env_path}: not UTF-8 text: {e.reason} at byte {e.start}", file=sys.stderr)
        return Exit.DATAERR
    values, problems = parse(text, env_path)
    folder = os.path.abspath(secrets_dir) if secrets_dir else None
    imported = convert(values, env_path, folder)
    if folder is not None and imported.secrets:
        written = _write_secrets(folder, imported.secrets)
        if written != Exit.OK:
            return written
    sys.stdout.write(imported.yaml)
    for note in [*problems, *imported.notes]:
        print(f"note: {note}", file=sys.stderr)
    return Exit.OK


def _write_secrets(folder: str, secrets: dict[str, str]) -> int:
    """Each secret into a new 0640 file in `folder`: all of them, or none and EX_CANTCREAT.

    Never over an existing file, never through a symlink: the folder is usually
    /etc/feishu-mailbot, where a running bot's secret may be already, and a link
    planted there must neither send a secret elsewhere nor change another file's
    mode. Owner, group and mode are set on the descriptor, not on a path.
    """
    try:
        made = not os.path.isdir(folder)
        os.makedirs(folder, mode=0o750, exist_ok=True)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        print(f"{folder}: cannot keep secrets there: {e.strerror or e}", file=sys.stderr)
        return Exit.CANTCREAT
    try:
        if made:  # the daemon must get in: group feishu-mailbot, 0750 whatever the umask
            _give_to_group(dir_fd)
            os.fchmod(dir_fd, 0o750)
        return _write_secrets_at(folder, dir_fd, secrets)
    finally:
        os.close(dir_fd)


def _write_secrets_at(folder: str, dir_fd: int, secrets: dict[str, str]) -> int:
    import stat

    refused = []
    for name in secrets:
        try:
            found = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        what = "is a symbolic link" if stat.S_ISLNK(found.st_mode) else "exists already"
        refused.append(f"{os.path.join(folder, name)}: {what}")
    if refused:
        for problem in refused:
            print(
                f"{problem}; import-env writes secrets only to new files (expected no file "
                "there: remove it if it is stale, or choose another --secrets-dir)",
                file=sys.stderr,
            )
        print("nothing written, no config printed", file=sys.stderr)
        return Exit.CANTCREAT
    created: list[str] = []
    report = []
    try:
        for name, secret in secrets.items():
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
            created.append(name)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                group = _give_to_group(fd)
                os.fchmod(fd, 0o640)
                out.write(secret + "\n")
                out.flush()
                os.fsync(fd)
            report.append(f"wrote {os.path.join(folder, name)} (0640, {group})")
    except OSError as e:
        import contextlib

        for name in created:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
        where = os.path.join(folder, e.filename) if isinstance(e.filename, str) else folder
        print(
            f"{where}: cannot write the secret: {e.strerror or e}; nothing written, "
            "no config printed",
            file=sys.stderr,
        )
        return Exit.CANTCREAT
    for line in report:
        print(line, file=sys.stderr)
    return Exit.OK


def _give_to_group(fd: int) -> str:
    """Group feishu-mailbot, as the package sets its config, when it exists; says which."""
    import grp

    try:
        gid = grp.getgrnam("feishu-mailbot").gr_gid
    except KeyError:
        return "no group feishu-mailbot here: chgrp it so the daemon can read it"
    try:
        os.fchown(fd, -1, gid)
    except PermissionError:
        return "not allowed to chgrp it to feishu-mailbot: do so as root"
    return "group feishu-mailbot"
