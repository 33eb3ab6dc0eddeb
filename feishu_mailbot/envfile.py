"""`feishu-mailbot import-env`: the old bot's `.env` as a complete, commented config.

Pure: text in, YAML text and notes out. Every key of the old bot is either
carried over (with a comment saying how), reported as not needed, or listed as
unknown; nothing is dropped silently. Strings are written as JSON strings,
which are YAML double-quoted scalars, so no value can change the structure.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

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
_LINE = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)")


@dataclass
class Imported:
    yaml: str
    notes: list[str] = field(default_factory=list)  # for stderr: what to check or do
    secrets: dict[str, str] = field(default_factory=dict)  # file name → secret, if asked


def parse(text: str, path: str) -> tuple[dict[str, str], list[str]]:
    """dotenv syntax: KEY=value, quotes, `export`, # comments; problems name their line."""
    values: dict[str, str] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        found = _LINE.fullmatch(line)
        if not found:
            problems.append(f"{path}:{number}: not KEY=value, skipped: {line.strip()[:60]}")
            continue
        key, value = found.groups()
        value = value.strip()
        if value[:1] in ("'", '"') and value[:1] in value[1:]:
            value = value[1 : value.index(value[0], 1)]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        values[key] = value
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
    out.append("")
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
    for key in unknown:
        out.append(f"# {key}: unknown to import-env, not carried over (value not shown)")
        notes.append(f"{key}: unknown key, not carried over; see feishu-mailbot.yaml(5)")
    return Imported("\n".join(out) + "\n", notes, secrets)
