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
from urllib.parse import quote, unquote, urlsplit

from feishu_mailbot.config.settings import FeishuSettings, Proxy, Secret


class ProxyError(ValueError):
    """A proxy URL that cannot be used; the message says what was expected."""


def url_of(via: Proxy) -> str:
    """The URL httpx is given, credentials included: never to be shown."""
    if not via.user:
        return f"http://{via.address}"
    secret = via.password.reveal() if via.password else ""
    login = quote(via.user, safe="") + (f":{quote(secret, safe='')}" if secret else "")
    return f"http://{login}@{via.address}"


def endpoint(url: str) -> tuple[str, int]:
    """The host and port a URL connects to, its scheme's port if it names none."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme in ("https", "wss") else 80)


def parse(text: str, source: str, password: Secret | None = None) -> Proxy:
    """`http://[user[:password]@]host:port`; `password` (from a file) fills a missing one.
    Without a scheme, http:// is meant (curl and httpx read `proxy.corp:3128` so)."""
    text = text.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
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


#: The variables read, as curl reads them: the scheme's own, then all_proxy.
SECURE = ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
PLAIN = ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")


def for_url(url: str, settings: FeishuSettings, env: Mapping[str, str]) -> Proxy | None:
    """The proxy a connection to `url` (https://, wss://, http://, ws://) goes through."""
    if settings.proxy is not None:
        return settings.proxy
    parts = urlsplit(url)
    host, port = endpoint(url)
    names = SECURE if parts.scheme in ("https", "wss") else PLAIN
    found = next(((n, env[n]) for n in names if env.get(n, "").strip()), None)
    if found is None or bypassed(host, port, _no_proxy(env)):
        return None
    name, value = found
    return parse(value, name)


def environment_errors(env: Mapping[str, str]) -> list[str]:
    """What is wrong with the proxy variables set, each naming its variable: checked at
    start, so that a typo ends the daemon with exit 78 rather than at each connection."""
    errors = []
    for name in dict.fromkeys((*SECURE, *PLAIN)):
        if env.get(name, "").strip():
            try:
                parse(env[name], name)
            except ProxyError as e:
                errors.append(f"{name}: {e}")
    return errors


def _no_proxy(env: Mapping[str, str]) -> str:
    return env.get("no_proxy") or env.get("NO_PROXY") or ""


def bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether `no_proxy` (curl's rules: `*`, names and their subdomains, a leading dot
    optional, `name:port`, `[v6]:port`, IP addresses and CIDR ranges) sends `host` direct."""
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, only_port = _split_port(entry)
        if only_port is not None and only_port != port:
            continue
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


def _split_port(entry: str) -> tuple[str, int | None]:
    """`name:port`, `[v6]:port`, or a bare name or address (a bare IPv6 has no port)."""
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
        return name, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        name, port = entry.split(":")
        return name, int(port) if port.isdigit() else None
    return entry, None
