"""Which HTTP proxy, if any, a connection to Feishu goes through.

`feishu.proxy` in the config wins; else the environment, as curl reads it
(`https_proxy` / `HTTPS_PROXY` for https:// and wss://, `http_proxy` /
`HTTP_PROXY` for http:// and ws://, minus the hosts `no_proxy` / `NO_PROXY`
names), which is how a systemd drop-in (`Environment=https_proxy=…`) reaches
the daemon. Resolved here once for every connection (the endpoint request,
REST, downloads and the WebSocket) and handed to httpx and websockets
explicitly, so they cannot disagree: the SDK's own code passed `proxy=None`
to websockets, and the long connection went direct while the HTTPS requests
went through the proxy.

Only HTTP CONNECT proxies (http://): a SOCKS proxy would need two more
libraries in the package (python-socks for websockets, socksio for httpx)
for what company networks rarely offer alone; a socks:// proxy is a config
error that says so.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from feishu_mailbot.settings import FeishuSettings, Secret


class ProxyError(ValueError):
    """A proxy URL that cannot be used; the message says what was expected."""


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    user: str | None = None
    password: Secret | None = None
    source: str = "feishu.proxy"  # where it came from: the config key or the variable

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def shown(self) -> str:
        """The proxy for a log line or `doctor`: its user, never its password."""
        user = f"{self.user}@" if self.user else ""
        return f"http://{user}{self.address} (from {self.source})"

    def url(self) -> str:
        """The URL httpx and websockets are given, credentials included."""
        if not self.user:
            return f"http://{self.address}"
        secret = self.password.reveal() if self.password else ""
        login = quote(self.user, safe="") + (f":{quote(secret, safe='')}" if secret else "")
        return f"http://{login}@{self.address}"


def parse(text: str, source: str, password: Secret | None = None) -> Proxy:
    """`http://[user[:password]@]host:port`; `password` (from a file) fills a missing one."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as e:
        raise ProxyError(f"{_safe(text)!r} is not a proxy URL: {e}") from None
    if parts.scheme.startswith("socks"):
        raise ProxyError(
            "SOCKS proxies are not supported (expected an HTTP CONNECT proxy, "
            "http://host:port; a local HTTP proxy such as privoxy can forward to SOCKS)"
        )
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise ProxyError(f"{_safe(text)!r} is not a proxy URL (expected http://host:port)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyError(f"{_safe(text)!r} has a path (expected http://host:port only)")
    user = unquote(parts.username) if parts.username else None
    if parts.password:
        if password is not None:
            raise ProxyError("the password is both in the URL and in a file: keep one")
        password = Secret(unquote(parts.password))
    if password is not None and not user:
        raise ProxyError("a proxy password without a user (expected http://user@host:port)")
    return Proxy(parts.hostname, port, user, password, source)


def _safe(text: str) -> str:
    """A proxy URL as an error may show it: without a password."""
    try:
        parts = urlsplit(text.strip())
        if parts.password:
            return text.replace(f":{parts.password}@", ":***@")
    except ValueError:
        pass
    return text if "@" not in text else "…@" + text.rsplit("@", 1)[1]


def configured(settings: FeishuSettings) -> Proxy | None:
    """`feishu.proxy`, checked already when the config was loaded."""
    if settings.proxy is None:
        return None
    return parse(settings.proxy, "feishu.proxy", settings.proxy_password)


def for_url(url: str, settings: FeishuSettings, env: Mapping[str, str]) -> Proxy | None:
    """The proxy a connection to `url` (https://, wss://, http://, ws://) goes through."""
    if settings.proxy is not None:
        return configured(settings)
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme in ("https", "wss")
    names = ("https_proxy", "HTTPS_PROXY") if secure else ("http_proxy", "HTTP_PROXY")
    found = next(((n, env[n]) for n in names if env.get(n, "").strip()), None)
    if found is None or bypassed(host, parts.port, _no_proxy(env)):
        return None
    name, value = found
    return parse(value, name)


def _no_proxy(env: Mapping[str, str]) -> str:
    return env.get("no_proxy") or env.get("NO_PROXY") or ""


def bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether `no_proxy` (curl's rules: `*`, names and their subdomains, a leading dot
    optional, `name:port`, IP addresses and CIDR ranges) sends `host` direct."""
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, only_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if only_port and port is not None and only_port != str(port):
            continue
        name = name.strip("[]")
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(name, strict=False):
                return True
            continue
        except ValueError:
            pass
        name = name.lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False
