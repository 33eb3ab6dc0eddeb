"""YAML configuration → frozen `Settings`, with errors an operator can act on.

We validate the composed YAML node tree rather than the loaded dict so every
error can name the file and line (`PATH:LINE: key.path: problem (expected …)`).
Unknown keys are errors: a typo such as `keyword:` must not silently disable a
rule.
"""

from __future__ import annotations

import dataclasses
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import time
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import regex
import yaml

from feishu_mailbot.config import proxy
from feishu_mailbot.config.settings import (
    ACKNOWLEDGE_MODES,
    DAY,
    MATCH_MODES,
    MB,
    SEND_MODES,
    AttachmentSettings,
    Batch,
    Chat,
    DatabaseSettings,
    FeishuSettings,
    HealthSettings,
    ImapSettings,
    InboundSettings,
    PemBundle,
    ReportSettings,
    RetentionSettings,
    RosterMember,
    Rule,
    Secret,
    Security,
    Settings,
    SmtpSettings,
)
from feishu_mailbot.core import reply
from feishu_mailbot.core.rules import RULE_TIMEOUT_MS
from feishu_mailbot.core.subjects import validate_digest_subject, validate_subject_template

DEFAULT_PATH = "/etc/feishu-mailbot.yaml"
DEFAULT_TIMEZONE = "Asia/Shanghai"
ENV_PATH = "FEISHU_MAILBOT_CONFIG"

DEFAULT_SUBJECT = "[{chat_name}] {sender_name}: {preview}"


class ConfigError(Exception):
    """One configuration problem, already formatted for stderr / the journal."""

    def __init__(self, path: str, line: int | None, key: str, problem: str) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.problem = problem
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


def default_path() -> str:
    return os.environ.get(ENV_PATH) or DEFAULT_PATH


@dataclass(frozen=True)
class _Node:
    """A YAML node with its key path, so every check can point at file:line."""

    path: str  # the config file
    key: str  # dotted key path, e.g. rules[0].to
    node: yaml.Node

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1

    def error(self, problem: str) -> ConfigError:
        return ConfigError(self.path, self.line, self.key, problem)

    def child(self, key: str, node: yaml.Node) -> _Node:
        return _Node(self.path, f"{self.key}.{key}" if self.key else key, node)


T = TypeVar("T")


def _mapping(n: _Node, required: set[str], optional: set[str]) -> dict[str, _Node]:
    if not isinstance(n.node, yaml.MappingNode):
        raise n.error("must be a mapping (expected `key: value` lines)")
    allowed = required | optional
    out: dict[str, _Node] = {}
    for knode, vnode in n.node.value:
        if not isinstance(knode, yaml.ScalarNode):
            raise n.child("?", knode).error("keys must be plain words")
        key = str(knode.value)
        child = n.child(key, vnode)
        if key not in allowed:
            hint = f"; did you mean `{_closest(key, allowed)}`?" if _closest(key, allowed) else ""
            raise ConfigError(
                n.path,
                knode.start_mark.line + 1,
                child.key,
                f"unknown key (expected one of: {', '.join(sorted(allowed))}){hint}",
            )
        if key in out:
            raise ConfigError(n.path, knode.start_mark.line + 1, child.key, "duplicate key")
        out[key] = child
    for key in sorted(required - out.keys()):
        raise ConfigError(n.path, n.line, n.child(key, n.node).key, "missing (required)")
    return out


def _closest(key: str, allowed: set[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.7)
    return found[0] if found else None


def _scalar(n: _Node) -> Any:
    if not isinstance(n.node, yaml.ScalarNode):
        raise n.error("must be a single value, not a list or mapping")
    return yaml.SafeLoader("").construct_object(n.node)


def _str(n: _Node, *, empty_ok: bool = False) -> str:
    value = _scalar(n)
    if isinstance(value, bool) or value is None or isinstance(value, list | dict):
        raise n.error("must be a string (expected text, quoted if it looks like a number)")
    text = str(value)
    if not empty_ok and not text.strip():
        raise n.error("must not be empty")
    return text


def _bool(n: _Node) -> bool:
    value = _scalar(n)
    if not isinstance(value, bool):
        raise n.error("must be true or false")
    return value


def _number(n: _Node, *, minimum: float, maximum: float) -> float:
    value = _scalar(n)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise n.error(f"must be a number (expected {minimum:g}…{maximum:g})")
    if not minimum <= value <= maximum:
        raise n.error(f"{value} is out of range (expected {minimum:g}…{maximum:g})")
    return float(value)


def _list(n: _Node, item: Callable[[_Node], T], *, allow_scalar: bool = True) -> tuple[T, ...]:
    if isinstance(n.node, yaml.ScalarNode) and allow_scalar:
        return (item(n),)
    if not isinstance(n.node, yaml.SequenceNode):
        raise n.error("must be a list (expected `- item` lines or [a, b])")
    return tuple(
        item(_Node(n.path, f"{n.key}[{i}]", child)) for i, child in enumerate(n.node.value)
    )


def _email(n: _Node) -> str:
    text = _str(n)
    if not _is_email(text):
        raise n.error(f"{text!r} is not an email address (expected user@example.com)")
    return text


def _is_email(text: str) -> bool:
    name, addr = parseaddr(text)
    if not addr or re.fullmatch(r"[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+", addr) is None:
        return False
    try:
        Address(display_name=name, addr_spec=addr)
    except (ValueError, IndexError):
        return False
    return not any(c in text for c in "\r\n")


# What YAML 1.1 makes of an unquoted word that a secret may well be.
_READ_AS = {
    "tag:yaml.org,2002:int": "a number",  # 0123456 is octal, 12:30:45 base 60, 1_000 is 1000
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "true or false",  # yes, no, on, off too
    "tag:yaml.org,2002:timestamp": "a date",
}


def _secret_text(n: _Node) -> str:
    """A secret exactly as written, or an error: never the number YAML made of it.

    str() of what YAML read would pass silently for a different secret (0123456
    becomes 42798), and the login would then fail far from its cause. The error
    says what YAML read, never the value.
    """
    if isinstance(n.node, yaml.ScalarNode) and n.node.tag != "tag:yaml.org,2002:str":
        if n.node.tag == "tag:yaml.org,2002:null":
            raise n.error("is empty (expected the secret, quoted)")
        read_as = _READ_AS.get(n.node.tag, f"the YAML type {n.node.tag}")
        name = n.key.rsplit(".", 1)[-1]
        raise n.error(
            f"YAML reads this unquoted value as {read_as}, not as the characters written "
            f'(expected a string: quote it, e.g. {name}: "…")'
        )
    return _str(n)


def _secret(
    section: dict[str, _Node], parent: _Node, key: str, *, required: bool, config_dir: Path
) -> Secret | None:
    file_key = f"{key}_file"
    if key in section and file_key in section:
        raise section[file_key].error(f"set either `{key}` or `{file_key}`, not both")
    if key in section:
        return Secret(_secret_text(section[key]))
    if file_key in section:
        n = section[file_key]
        path = Path(_str(n))
        if not path.is_absolute():
            path = config_dir / path
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise n.error(f"cannot read {path}: {e.strerror} (expected a readable file)") from e
        if not value:
            raise n.error(f"{path} is empty (expected the secret in it)")
        return Secret(value)
    if required:
        raise parent.child(key, parent.node).error(f"missing (set `{key}` or `{file_key}`)")
    return None


def _url(n: _Node) -> str:
    text = _str(n).rstrip("/")
    if not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", text):
        raise n.error(f"{text!r} is not a URL (expected e.g. https://open.feishu.cn)")
    return text


_PLACEHOLDER_SECRETS = {"", "changeme", "your-app-secret"}


def _feishu(n: _Node, config_dir: Path) -> FeishuSettings:
    m = _mapping(
        n,
        {"app_id"},
        {"app_secret", "app_secret_file", "domain", "proxy", "proxy_password_file", "ca_file"},
    )
    app_id = _str(m["app_id"])
    if re.fullmatch(r"cli_x+", app_id):
        raise m["app_id"].error(
            "still the example placeholder (expected the App ID from the developer console's "
            "Credentials page)"
        )
    if not re.fullmatch(r"cli_[0-9A-Za-z]+", app_id):
        raise m["app_id"].error(
            f"{app_id!r} does not look like a Feishu app id "
            "(expected cli_… from the developer console's Credentials page)"
        )
    secret = _secret(m, n, "app_secret", required=True, config_dir=config_dir)
    assert secret is not None
    if secret.reveal() in _PLACEHOLDER_SECRETS:
        raise (m.get("app_secret") or m["app_secret_file"]).error(
            "still the example placeholder (expected the App Secret from the developer console)"
        )
    domain = _url(m["domain"]) if "domain" in m else "https://open.feishu.cn"
    password = _secret(m, n, "proxy_password", required=False, config_dir=config_dir)
    via = None
    if "proxy" in m:
        try:
            via = proxy.parse(_str(m["proxy"]), "feishu.proxy", password)
        except proxy.ProxyError as e:
            raise m["proxy"].error(str(e)) from None
    elif password is not None:
        raise m["proxy_password_file"].error("set without feishu.proxy (expected both or neither)")
    ca_file = _pem_bundle(m["ca_file"], config_dir) if "ca_file" in m else None
    return FeishuSettings(app_id, secret, domain, via, ca_file)


def database_url_problem(url: str) -> str | None:
    """What is wrong with a `database.url` (also `migrate-state --to`), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises for a port that is not a number)
    except ValueError as e:
        return f"{e} (expected postgresql://user@host/dbname)"
    if parts.scheme not in ("postgresql", "postgres") or not (parts.path.strip("/") or parts.query):
        return (
            "is not a PostgreSQL URL (expected postgresql://user@host/dbname; leave the "
            "database section out for SQLite in state_dir)"
        )
    if parts.password is not None:
        return (
            "holds a password, which would then show wherever the URL does "
            "(expected it in database.password_file, or in ~/.pgpass)"
        )
    return None


def _database(n: _Node, config_dir: Path) -> DatabaseSettings:
    m = _mapping(n, {"url"}, {"password", "password_file", "failover_after"})
    url = _str(m["url"])
    if problem := database_url_problem(url):
        raise m["url"].error(problem)
    password = _secret(m, n, "password", required=False, config_dir=config_dir)
    failover = (
        _number(m["failover_after"], minimum=5, maximum=600) if "failover_after" in m else 30.0
    )
    return DatabaseSettings(url, password, failover)


# Names RFC 2606 keeps for documentation: they never resolve, so one is a placeholder.
_EXAMPLE_HOST = re.compile(r"(?:.+\.)?example\.(?:com|net|org)\.?|(?:.+\.)?example\.?", re.I)


def _host(n: _Node) -> str:
    host = _str(n)
    if _EXAMPLE_HOST.fullmatch(host):
        raise n.error(
            f"{host!r} is still the example placeholder, a name that never resolves "
            "(expected your relay's host name)"
        )
    return host


def _chat(n: _Node) -> Chat:
    if isinstance(n.node, yaml.ScalarNode):
        chat_id = _str(n)
        name = None
    else:
        m = _mapping(n, {"id"}, {"name"})
        chat_id = _str(m["id"])
        name = _str(m["name"]) if "name" in m else None
    if re.fullmatch(r"oc_x+", chat_id):
        raise n.error(
            "still the example placeholder (expected a chat id: `feishu-mailbot chats` lists "
            "the chats the bot is in)"
        )
    if not re.fullmatch(r"oc_[0-9A-Za-z_-]+", chat_id):
        raise n.error(f"{chat_id!r} is not a chat id (expected oc_…)")
    return Chat(id=chat_id, name=name)


def _smtp(n: _Node, config_dir: Path) -> SmtpSettings:
    m = _mapping(
        n,
        {"host", "from"},
        {
            "port",
            "security",
            "username",
            "password",
            "password_file",
            "timeout",
            "retry_initial",
            "retry_max",
            "give_up_after",
            "ca_file",
            "tls_fingerprint",
        },
    )
    host = _host(m["host"])
    security = _security(m)
    default_port = {"starttls": 587, "tls": 465, "none": 25}[security]
    port = int(_number(m["port"], minimum=1, maximum=65535)) if "port" in m else default_port
    username = _str(m["username"]) if "username" in m else None
    password = _secret(m, n, "password", required=False, config_dir=config_dir)
    if password is not None and username is None:
        raise (m.get("password") or m["password_file"]).error(
            "a password without `username` is never used (expected username too)"
        )
    timeout = _number(m["timeout"], minimum=1, maximum=600) if "timeout" in m else 30.0
    return SmtpSettings(
        host=host,
        port=port,
        security=security,
        sender=_email(m["from"]),
        username=username,
        password=password,
        timeout=timeout,
        retry_initial=_number(m["retry_initial"], minimum=0.01, maximum=3600)
        if "retry_initial" in m
        else 5.0,
        retry_max=_number(m["retry_max"], minimum=0.01, maximum=86400)
        if "retry_max" in m
        else 600.0,
        give_up_after=_number(m["give_up_after"], minimum=1, maximum=30 * 86400)
        if "give_up_after" in m
        else 2 * 24 * 3600.0,
        ca_file=_pem_bundle(m["ca_file"], config_dir) if "ca_file" in m else None,
        tls_fingerprint=_fingerprint(m["tls_fingerprint"]) if "tls_fingerprint" in m else None,
    )


def _security(m: dict[str, _Node], default: Security = "starttls") -> Security:
    text = _str(m["security"]) if "security" in m else default
    if text not in ("starttls", "tls", "none"):
        raise m["security"].error(f"{text!r} is not valid (expected starttls, tls or none)")
    return text  # type: ignore[return-value]


def _imap(n: _Node, config_dir: Path, ca_file: PemBundle | None) -> ImapSettings:
    m = _mapping(
        n,
        {"host", "username"},
        {"port", "security", "password", "password_file", "mailbox", "timeout"},
    )
    security = _security(m, "tls")
    default_port = {"starttls": 143, "tls": 993, "none": 143}[security]
    password = _secret(m, n, "password", required=True, config_dir=config_dir)
    assert password is not None
    return ImapSettings(
        host=_str(m["host"]),
        port=int(_number(m["port"], minimum=1, maximum=65535)) if "port" in m else default_port,
        security=security,
        username=_str(m["username"]),
        password=password,
        mailbox=_str(m["mailbox"]) if "mailbox" in m else "INBOX",
        timeout=_number(m["timeout"], minimum=1, maximum=600) if "timeout" in m else 30.0,
        ca_file=ca_file,
    )


def _inbound(n: _Node, config_dir: Path) -> InboundSettings:
    m = _mapping(
        n, {"imap"}, {"processed", "trusted_authserv_id", "ca_file", "reply_address", "verp"}
    )
    ca_file = _pem_bundle(m["ca_file"], config_dir) if "ca_file" in m else None
    imap = _imap(m["imap"], config_dir, ca_file)
    processed = _str(m["processed"]) if "processed" in m else None
    reply_address = _reply_address(m["reply_address"]) if "reply_address" in m else None
    verp = _bool(m["verp"]) if "verp" in m else False
    if verp and "{token}" not in (reply_address or ""):
        raise m["verp"].error(
            "needs reply_address with a {token} (expected e.g. reply_address: "
            '"bot+{token}@example.com"), whose sub-address the envelope sender takes'
        )
    if processed == imap.mailbox:
        raise m["processed"].error(
            f"{processed!r} is the folder replies are read from (expected another folder)"
        )
    return InboundSettings(
        imap=imap,
        processed=processed,
        trusted_authserv_id=(
            _str(m["trusted_authserv_id"]) if "trusted_authserv_id" in m else None
        ),
        reply_address=reply_address,
        verp=verp,
    )


def _reply_address(n: _Node) -> str:
    """An address, or one with `{token}` once in its local part, which stays within the
    64 characters servers take (RFC 5321) with the longest token in it."""
    text = _str(n)
    longest = text.replace("{token}", reply.BOUNCE + "0" * reply.TOKEN_LENGTH)
    if "<" in text or "{token}" in text.partition("@")[2] or not _is_email(longest):
        raise n.error(
            f"{text!r} is not a reply address (expected bot@example.com, or "
            "bot+{token}@example.com where the provider delivers sub-addresses)"
        )
    local = longest.partition("@")[0]
    if len(local) > 64:
        raise n.error(
            f"{text!r} would have a local part of {len(local)} characters with a token in it "
            "(servers take 64): shorten what is before the @"
        )
    return text


_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31}|[0-9A-Fa-f]{64}")


def _fingerprint(n: _Node) -> str:
    """A SHA-256 certificate fingerprint as openssl, msmtp or a browser show it, kept
    as AB:CD:… so that a mismatch prints both the same way."""
    value = _scalar(n) if isinstance(n.node, yaml.ScalarNode) else None
    text = str(value).strip() if isinstance(value, str) else ""
    if not _HEX_PAIRS.fullmatch(text):
        shown = f"{n.node.value!r}" if isinstance(n.node, yaml.ScalarNode) else "this"
        raise n.error(
            f"{shown} is not a SHA-256 fingerprint (expected the SHA-256 fingerprint of the "
            "relay's certificate: 64 hex digits, in pairs separated by colons or not, as "
            "`msmtp --serverinfo --tls --tls-certcheck=off` or `openssl x509 -noout "
            "-fingerprint -sha256` print it; quote it)"
        )
    digits = text.replace(":", "").upper()
    return ":".join(digits[i : i + 2] for i in range(0, 64, 2))


_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]*?-----END CERTIFICATE-----"
)


def _pem_bundle(n: _Node, config_dir: Path) -> PemBundle:
    """A `*ca_file`: read and parsed now, so a wrong file is a config error (exit 78)
    rather than a TLS failure at the first connection, minutes later."""
    path = Path(_str(n))
    if not path.is_absolute():
        path = config_dir / path
    expected = "expected a PEM file of CA certificates, -----BEGIN CERTIFICATE----- blocks"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise n.error(f"cannot read {path}: {e.strerror} (expected a readable PEM file)") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise n.error(
            f"{path} is not PEM text ({expected}; a binary DER certificate converts with "
            "`openssl x509 -inform der -in DER-FILE -out PEM-FILE`)"
        ) from e
    # Only the certificates: bundles carry comments (in UTF-8 too), some a key as well.
    pem = "".join(f"{block}\n" for block in _PEM_CERTIFICATE.findall(text))
    if not pem:
        raise n.error(f"{path} holds no certificate ({expected})")
    try:
        ssl.create_default_context().load_verify_locations(cadata=pem)
    except ssl.SSLError:
        # OpenSSL's words ("no start line: cadata …") would only confuse here.
        raise n.error(f"{path} has a certificate block that does not decode ({expected})") from None
    return PemBundle(path=str(path), pem=pem)


def _rule(n: _Node, chat_ids: set[str]) -> Rule:
    m = _mapping(
        n,
        {"name", "to"},
        {"chats", "keywords", "regex", "subject", "confirm", "notify_recall", "batch", "daily"},
    )
    name = _str(m["name"])
    keywords = _list(m["keywords"], _str) if "keywords" in m else ()
    pattern = None
    if "regex" in m:
        source = _str(m["regex"])
        try:
            pattern = regex.compile(source)
        except regex.error as e:
            raise m["regex"].error(
                f"invalid regular expression: {e} (expected Python re syntax)"
            ) from e
    if not keywords and pattern is None:
        raise n.error("needs `keywords` or `regex` (a rule without either would match nothing)")
    chats = _list(m["chats"], _str) if "chats" in m else ()
    for i, chat_id in enumerate(chats):
        if chat_id not in chat_ids:
            raise _Node(n.path, f"{n.key}.chats[{i}]", m["chats"].node).error(
                f"{chat_id!r} is not in the `chats` allowlist (expected one of the listed chats)"
            )
    subject = _str(m["subject"]) if "subject" in m else DEFAULT_SUBJECT
    problem = validate_subject_template(subject)
    if problem:
        raise m["subject"].error(problem)
    batch = _batch(n, m)
    return Rule(
        name=name,
        to=_list(m["to"], _email),
        keywords=keywords,
        regex=pattern,
        chats=chats,
        subject=subject,
        confirm=_bool(m["confirm"]) if "confirm" in m else False,
        notify_recall=_bool(m["notify_recall"]) if "notify_recall" in m else False,
        batch=batch,
    )


_BATCH_UNITS = {"m": 60, "h": 3600}


def _batch(n: _Node, m: dict[str, _Node]) -> Batch | None:
    """`batch: 1h` or `daily: "18:00"`; per-mail settings make no sense for a digest."""
    if "batch" in m and "daily" in m:
        raise m["daily"].error("give `batch` or `daily`, not both")
    if "batch" not in m and "daily" not in m:
        return None
    for key in ("subject", "confirm", "notify_recall"):
        if key in m:
            raise m[key].error(
                f"`{key}` is per mail; a rule with `batch` or `daily` sends digests"
                " (remove it, or the batching)"
            )
    if "daily" in m:
        return Batch(at=_time_of_day(m["daily"]))
    text = str(_scalar(m["batch"])).strip()
    found = re.fullmatch(r"(\d+)\s*([mh])", text)
    seconds = int(found.group(1)) * _BATCH_UNITS[found.group(2)] if found else 0
    if not found or not 300 <= seconds <= DAY or DAY % seconds:
        raise m["batch"].error(
            f"{text!r} is not a batch interval (expected minutes or hours that divide a day,"
            " from 5m to 24h: 15m, 30m, 1h, 2h, 6h…)"
        )
    return Batch(every=float(seconds))


_WEEKDAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


def _time_of_day(n: _Node) -> time:
    value = _scalar(n)
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 18:30 as the sexagesimal number 1110.
        value = f"{value // 60:02d}:{value % 60:02d}"
    text = str(value)
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text)
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise n.error(f'{text!r} is not a time of day (expected HH:MM, e.g. "18:30")')
    return time(int(match.group(1)), int(match.group(2)))


def _choice(n: _Node, choices: tuple[str, ...]) -> str:
    text = _str(n)
    if text not in choices:
        raise n.error(f"{text!r} is not valid (expected one of: {', '.join(choices)})")
    return text


def _weekday(n: _Node) -> int:
    text = _str(n).strip().lower()[:3]
    if text not in _WEEKDAYS:
        raise n.error(f"{_str(n)!r} is not a weekday (expected mon, tue, wed, thu, fri, sat, sun)")
    return _WEEKDAYS[text]


def _roster_member(n: _Node) -> RosterMember:
    m = _mapping(n, {"name", "open_id"}, set())
    open_id = _str(m["open_id"])
    if not re.fullmatch(r"ou_[0-9A-Za-z_-]+", open_id):
        raise m["open_id"].error(f"{open_id!r} is not an open_id (expected ou_…)")
    return RosterMember(name=_str(m["name"]), open_id=open_id)


def _zone_name(n: _Node) -> str:
    name = _str(n)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise n.error(
            f"unknown time zone {name!r} (expected an IANA name like Asia/Shanghai)"
        ) from e
    return name


def _timezone(top: dict[str, _Node]) -> str:
    """The one time zone (top-level `timezone`) of forwards, digests and simulate.

    Releases before it had `daily_report.timezone`; a config that still says
    only that keeps working, with that zone for everything.
    """
    own = _zone_name(top["timezone"]) if "timezone" in top else None
    report = top["daily_report"].node if "daily_report" in top else None
    old: _Node | None = None
    if isinstance(report, yaml.MappingNode):
        for key, value in report.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "timezone":
                old = top["daily_report"].child("timezone", value)
    if old is None:
        return own or DEFAULT_TIMEZONE
    legacy = _zone_name(old)
    if own is not None and own != legacy:
        raise old.error(
            f"{legacy!r} differs from the top-level timezone {own!r} (one time zone serves "
            "forwards and digests: remove daily_report.timezone)"
        )
    return legacy


def _daily_report(n: _Node, chat_ids: set[str], timezone: str) -> ReportSettings:
    fields = {f.name for f in dataclasses.fields(ReportSettings)}
    m = _mapping(n, {"chat", "recipients"}, fields - {"chat", "recipients"})
    d = ReportSettings(chat="", recipients=())
    chat = _str(m["chat"])
    if chat not in chat_ids:
        raise m["chat"].error(f"{chat!r} is not in the `chats` allowlist (add it there first)")
    weekdays = tuple(sorted(set(_list(m["weekdays"], _weekday)))) if "weekdays" in m else d.weekdays
    mode = _choice(m["mode"], SEND_MODES) if "mode" in m else d.mode
    if mode == "scheduled" and not weekdays:
        raise m["weekdays"].error("is empty, so a scheduled digest would never go out")
    subject = _str(m["subject"]) if "subject" in m else d.subject
    problem = validate_digest_subject(subject)
    if problem:
        raise m["subject"].error(problem)
    users = _list(m["trigger_users"], _str) if "trigger_users" in m else ()
    return ReportSettings(
        chat=chat,
        recipients=_list(m["recipients"], _email),
        match=_choice(m["match"], MATCH_MODES) if "match" in m else d.match,
        prefixes=_list(m["prefixes"], _str) if "prefixes" in m else d.prefixes,
        timezone=timezone,
        cutoff=_time_of_day(m["cutoff"]) if "cutoff" in m else d.cutoff,
        mode=mode,
        at=_time_of_day(m["at"]) if "at" in m else d.at,
        weekdays=weekdays,
        trigger=_str(m["trigger"]) if "trigger" in m else d.trigger,
        resend_trigger=_str(m["resend_trigger"]) if "resend_trigger" in m else d.resend_trigger,
        trigger_users=users,
        acknowledge=_choice(m["acknowledge"], ACKNOWLEDGE_MODES)
        if "acknowledge" in m
        else d.acknowledge,
        reaction=_str(m["reaction"]) if "reaction" in m else d.reaction,
        supplements=_bool(m["supplements"]) if "supplements" in m else d.supplements,
        roster=_list(m["roster"], _roster_member, allow_scalar=False) if "roster" in m else (),
        subject=subject,
    )


def _health(n: _Node) -> HealthSettings:
    m = _mapping(n, set(), {"stall_after", "reconnect_budget", "worker_stall_after"})
    default = HealthSettings()
    return HealthSettings(
        worker_stall_after=_number(m["worker_stall_after"], minimum=10, maximum=86400)
        if "worker_stall_after" in m
        else default.worker_stall_after,
        stall_after=_number(m["stall_after"], minimum=1, maximum=3600)
        if "stall_after" in m
        else default.stall_after,
        reconnect_budget=_number(m["reconnect_budget"], minimum=1, maximum=86400)
        if "reconnect_budget" in m
        else default.reconnect_budget,
    )


def _megabytes(n: _Node) -> int:
    # 50: a forward and a digest may hold their files at once, within the unit's MemoryHigh.
    return int(_number(n, minimum=0, maximum=50) * MB)


def _attachments(n: _Node) -> AttachmentSettings:
    m = _mapping(n, set(), {"max_file_mb", "max_mail_mb"})
    default = AttachmentSettings()
    return AttachmentSettings(
        max_file=_megabytes(m["max_file_mb"]) if "max_file_mb" in m else default.max_file,
        max_mail=_megabytes(m["max_mail_mb"]) if "max_mail_mb" in m else default.max_mail,
    )


def _retention(n: _Node) -> RetentionSettings:
    m = _mapping(n, set(), {"events_days", "messages_days", "mail_days"})
    d = RetentionSettings()

    def days(key: str, default: float, minimum: float) -> float:
        return _number(m[key], minimum=minimum, maximum=3650) * DAY if key in m else default

    # Two days at least: a recall (allowed for 24 h) still needs its message for the notice.
    return RetentionSettings(
        events=days("events_days", d.events, 1),
        messages=days("messages_days", d.messages, 2),
        mail=days("mail_days", d.mail, 1),
    )


def parse(text: str, path: str) -> Settings:
    """Validate `text` (the content of `path`); raise ConfigError on the first problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        context = ""
        if e.context and e.context_mark and e.context_mark is not mark:
            context = f", {e.context} started at line {e.context_mark.line + 1}"
        raise ConfigError(
            path,
            line,
            "",
            f"YAML syntax error: {e.problem}{context} (check indentation and quoting)",
        ) from e
    except yaml.YAMLError as e:
        raise ConfigError(path, None, "", f"YAML error: {e}") from e
    if root is None:
        raise ConfigError(
            path, 1, "", "file is empty (expected the feishu, chats and smtp sections)"
        )
    top = _Node(path, "", root)
    m = _mapping(
        top,
        {"feishu", "chats", "smtp"},
        {
            "rules",
            "daily_report",
            "health",
            "attachments",
            "retention",
            "state_dir",
            "log_level",
            "timezone",
            "database",
            "inbound",
        },
    )
    timezone = _timezone(m)
    config_dir = Path(path).resolve().parent
    chats = _list(m["chats"], _chat, allow_scalar=False)
    if not chats:
        raise m["chats"].error(
            "is empty (expected at least one chat id: messages from others are ignored)"
        )
    chat_ids = {c.id for c in chats}
    rules = (
        _list(m["rules"], lambda r: _rule(r, chat_ids), allow_scalar=False) if "rules" in m else ()
    )
    names = [r.name for r in rules]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise _Node(path, f"rules[{i}].name", m["rules"].node.value[i]).error(
                f"duplicate rule name {name!r} (expected unique names)"
            )
    log_level = _str(m["log_level"]) if "log_level" in m else "info"
    if log_level not in ("debug", "info", "warning", "error"):
        raise m["log_level"].error(f"{log_level!r} (expected debug, info, warning or error)")
    state_dir = _str(m["state_dir"]) if "state_dir" in m else "/var/lib/feishu-mailbot"
    return Settings(
        path=path,
        feishu=_feishu(m["feishu"], config_dir),
        chats=chats,
        smtp=_smtp(m["smtp"], config_dir),
        rules=rules,
        daily_report=(
            _daily_report(m["daily_report"], chat_ids, timezone) if "daily_report" in m else None
        ),
        health=_health(m["health"]) if "health" in m else HealthSettings(),
        attachments=_attachments(m["attachments"]) if "attachments" in m else AttachmentSettings(),
        retention=_retention(m["retention"]) if "retention" in m else RetentionSettings(),
        state_dir=state_dir,
        log_level=log_level,
        timezone=timezone,
        database=_database(m["database"], config_dir) if "database" in m else None,
        inbound=_inbound(m["inbound"], config_dir) if "inbound" in m else None,
    )


# A group that repeats something repeatable, itself repeated: (a+)+, (\w+\s?)*, (x|xy){2,}.
_NESTED = re.compile(r"\((?:[^()\\]|\\.)*(?:[+*]|\{\d*,?\d*\})(?:[^()\\]|\\.)*\)(?:[+*]|\{\d*,)")


def named_files(settings: Settings) -> list[tuple[str, Path]]:
    """The files a valid config makes the daemon read besides itself (`*_file` keys:
    secrets, CA certificates), with their keys; relative ones as the loader resolves
    them. For check-config, which looks whether the service user can read them."""
    text = Path(settings.path).read_text(encoding="utf-8")
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    config_dir = Path(settings.path).resolve().parent
    found: list[tuple[str, Path]] = []

    def walk(node: yaml.Node, key: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                name = f"{key}.{k.value}" if key else str(k.value)
                if str(k.value).endswith("_file") and isinstance(v, yaml.ScalarNode):
                    path = Path(str(v.value))
                    found.append((name, path if path.is_absolute() else config_dir / path))
                else:
                    walk(v, name)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{key}[{i}]")

    if root is not None:
        walk(root, "")
    return found


def warnings(settings: Settings) -> list[str]:
    """What is valid but risky, for check-config and the journal at start."""
    out = []
    for i, rule in enumerate(settings.rules):
        if rule.regex is not None and _NESTED.search(rule.regex.pattern):
            out.append(
                f"{settings.path}: rules[{i}].regex: {rule.regex.pattern!r} repeats a group "
                "that itself repeats (like (a+)+), which can take minutes on some texts; it "
                f"is matched with a {RULE_TIMEOUT_MS} ms limit and counts as no match past it"
            )
    return out


def load(path: str) -> Settings:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(
            path, None, "", "no such file (expected the config; see /usr/share/doc/feishu-mailbot)"
        ) from e
    except PermissionError as e:
        raise ConfigError(
            path, None, "", "permission denied (run as root or as the feishu-mailbot user)"
        ) from e
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, "", f"not UTF-8 text: {e.reason} at byte {e.start}") from e
    return parse(text, path)
