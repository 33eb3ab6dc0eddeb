"""`doctor --report FILE`: the old guide's "技术支持" list as one file for a ticket.

Versions, the configuration with every secret replaced, the hops `doctor`
walked, `status`, and the unit's last 100 journal lines, scrubbed. What goes
in is built as text, then every secret the configuration holds (and the
base64 forms an SMTP relay may echo) is replaced once more over the whole
file, so a secret that reached a journal line cannot reach the ticket.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import yaml

from feishu_mailbot import __version__
from feishu_mailbot.config.settings import Settings
from feishu_mailbot.core.hops import Hop

JOURNAL_LINES = 100
# Keys whose values are secrets wherever they appear in the configuration.
SECRET_KEYS = {"app_secret", "password"}
# Keys holding a URL that may carry a password.
URL_KEYS = {"proxy", "url"}
HIDDEN = "<redacted>"


def redact_config(text: str) -> str:
    """The configuration as written, comments kept, each secret value replaced."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        return f"(the configuration does not parse, so it is left out: {e})\n"
    spans: list[tuple[int, int, str]] = []
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else ""
                if isinstance(value, yaml.ScalarNode) and name in SECRET_KEYS:
                    spans.append((value.start_mark.index, value.end_mark.index, HIDDEN))
                elif isinstance(value, yaml.ScalarNode) and name in URL_KEYS:
                    shown = _url_without_password(str(value.value))
                    if shown != value.value:
                        spans.append((value.start_mark.index, value.end_mark.index, shown))
                else:
                    stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    for start, end, replacement in sorted(spans, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _url_without_password(url: str) -> str:
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, login = head.rpartition("//")
    user = login.split(":", 1)[0]
    return f"{scheme}//{user}:{HIDDEN}@{tail}"


def secrets_of(settings: Settings) -> list[str]:
    """Every secret the running configuration holds, from the YAML or from files."""
    found = [settings.feishu.app_secret.reveal()]
    via = settings.feishu.proxy
    if via is not None and via.password is not None:
        found.append(via.password.reveal())
    if settings.smtp.password is not None:
        found.append(settings.smtp.password.reveal())
    return [s for s in found if s]


def _versions() -> list[str]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not found"

    os_name = "unknown"
    release = Path("/etc/os-release")
    if release.exists():
        for line in release.read_text("utf-8", "replace").splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    package = _run(["dpkg-query", "-W", "-f=${Version}", "feishu-mailbot"]) or "not installed"
    libraries = ", ".join(f"{n} {version(n)}" for n in ("lark-oapi", "websockets", "httpx"))
    return [
        f"feishu-mailbot {__version__} (Debian package: {package})",
        f"Python {sys.version.split()[0]} ({sys.executable})",
        libraries,
        f"{os_name}, kernel {platform.release()}",
    ]


def _run(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({command[0]}: {e})"
    return done.stdout.strip() if done.returncode == 0 else ""


def _environment() -> list[str]:
    shown = []
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        if (value := os.environ.get(name)) is not None:
            shown.append(f"{name}={_url_without_password(value)}")
    return shown or ["no proxy variables set"]


def build(
    settings: Settings,
    found: Sequence[Hop],
    status_text: str,
    scrub: Callable[[str], str],
    journal: Callable[[], str] | None = None,
) -> str:
    try:
        config_text = Path(settings.path).read_text("utf-8")
    except OSError as e:
        config_text = f"(cannot read it: {e.strerror})\n"
    logs = (journal or _journal)()
    parts = [
        f"feishu-mailbot support report, {time.strftime('%Y-%m-%dT%H:%M:%S%z')}",
        "",
        "== versions ==",
        *_versions(),
        "",
        "== environment ==",
        *_environment(),
        "",
        f"== configuration: {settings.path} (secrets replaced) ==",
        redact_config(config_text).rstrip(),
        "",
        "== doctor ==",
        *[h.line() + (f"  → {h.advice()}" if h.advice() else "") for h in found],
        "",
        "== status ==",
        status_text.rstrip(),
        "",
        f"== journal: the last {JOURNAL_LINES} lines of feishu-mailbot.service ==",
        logs.rstrip(),
        "",
    ]
    text = "\n".join(parts)
    for secret in secrets_of(settings):
        text = text.replace(secret, HIDDEN)
    return scrub(text)


def _journal() -> str:
    lines = _run(
        [
            "journalctl",
            "-u",
            "feishu-mailbot.service",
            "-n",
            str(JOURNAL_LINES),
            "--no-pager",
            "-o",
            "short-iso",
        ]
    )
    return lines or "(no journal: journalctl found nothing for the unit, or is not here)"
