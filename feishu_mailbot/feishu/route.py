"""The one way every connection to Feishu takes: the proxy (our own CONNECT tunnel), the CA
bundle, and which hop a failure happened at (core/hops.py words it).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

from feishu_mailbot.config import proxy
from feishu_mailbot.config.settings import FeishuSettings, PemBundle, Proxy, address
from feishu_mailbot.core import hops
from feishu_mailbot.core.hops import Hop
from feishu_mailbot.feishu.errors import HopFailed

HTTP_TIMEOUT = 10.0
CONNECT_TIMEOUT = 15.0


def tls_context(ca_file: PemBundle | None) -> ssl.SSLContext:
    """The system's CAs, and `feishu.ca_file`'s too: a TLS-inspecting proxy's CA added,
    never the public ones taken away (Feishu's own hosts may not be inspected)."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cadata=ca_file.pem)
    return context


class TunnelRefused(ConnectionError):
    """The proxy answered CONNECT with something other than 200."""

    def __init__(self, status: int, line: str) -> None:
        super().__init__(f"proxy answered {line!r}")
        self.status = status
        self.line = line


async def socket_to(
    host: str, port: int, resolve: Callable[[str, int], Awaitable[list[Any]]] | None = None
) -> socket.socket:
    """A connected non-blocking socket: DNS (`resolve`, or the loop's), then TCP to each
    address in turn until one takes it, as httpx and websockets do."""
    loop = asyncio.get_running_loop()
    if resolve is None:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    else:
        infos = await resolve(host, port)
    error: OSError = OSError(f"{host}: no address")
    for family, kind, proto, _, peer in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, peer)
            return sock
        except OSError as e:
            sock.close()
            error = e
        except BaseException:
            sock.close()
            raise
    raise error


async def tunnel(sock: socket.socket, via: Proxy, target: str) -> None:
    """HTTP CONNECT `target` through the proxy `sock` is connected to.

    Ours rather than websockets' (15.0): that one refuses an `HTTP/1.0 200` answer,
    which tinyproxy and other proxies give; any HTTP/1.x 200 opens a tunnel.
    """
    loop = asyncio.get_running_loop()
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if via.user:
        secret = via.password.reveal() if via.password else ""
        token = base64.b64encode(f"{via.user}:{secret}".encode()).decode("ascii")
        lines.append(f"Proxy-Authorization: Basic {token}")
    await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
    head = b""
    while b"\r\n\r\n" not in head:  # the server has nothing to say before we do
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            raise ConnectionError(f"the proxy {via.address} closed the connection")
        head += chunk
        if len(head) > 16384:
            raise ConnectionError(f"the proxy {via.address} answered no HTTP")
    line = head.split(b"\r\n", 1)[0].decode("latin-1").strip()
    parts = line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    if not (line.startswith("HTTP/1.") and status == 200):
        raise TunnelRefused(status, line)


def host_port(url: str) -> str:
    return address(*proxy.endpoint(url))


_AUTH_STATUS = re.compile(r"(?<!\d)(401|407)(?!\d)")


class Route:
    """How this process reaches Feishu: the TLS trust and, per URL, the proxy (proxy.py).

    Every connection to Feishu is made from here, so the endpoint request, REST, the
    downloads and the WebSocket take the same way out. One per process: the daemon
    hands the same Route to the long connection and to the REST client, so the system's
    CAs are loaded once.
    """

    def __init__(self, settings: FeishuSettings, env: Mapping[str, str] = os.environ) -> None:
        self.settings = settings
        self.tls = tls_context(settings.ca_file)
        self._env = dict(env)

    def proxy(self, url: str) -> Proxy | None:
        return proxy.for_url(url, self.settings, self._env)

    def http(self) -> httpx.AsyncClient:
        """A client for the Feishu domain; trust_env off: the proxy was chosen here."""
        via = self.proxy(self.settings.domain)
        return httpx.AsyncClient(
            base_url=self.settings.domain,
            timeout=HTTP_TIMEOUT,
            proxy=proxy.url_of(via) if via else None,
            verify=self.tls,
            trust_env=False,
        )

    async def websocket(self, url: str) -> Any:
        """The long connection's WebSocket, through the proxy's tunnel if there is one,
        within CONNECT_TIMEOUT; raises HopFailed naming the hop it was at."""
        import websockets

        via = self.proxy(url)
        host, port = proxy.endpoint(url)
        # No permessage-deflate: frames are small protobuf, and compressing them cost
        # more CPU per event than anything but the commit. proxy=None: chosen here.
        options: dict[str, Any] = {"compression": None, "proxy": None, "open_timeout": None}
        if url.startswith("wss:"):
            options["ssl"] = self.tls
            options["server_hostname"] = host
        at = "TCP" if via else "WebSocket upgrade"  # the hop a failure belongs to
        sock: socket.socket | None = None

        async def connect() -> Any:
            nonlocal at, sock
            if via is not None:
                sock = await socket_to(via.host, via.port)
                at = "proxy CONNECT"
                await tunnel(sock, via, address(host, port))
                options["sock"] = sock
                at = "WebSocket upgrade"
            return await websockets.connect(url, **options)

        try:
            return await asyncio.wait_for(connect(), CONNECT_TIMEOUT)
        except BaseException as e:
            if sock is not None:
                sock.close()
            if isinstance(e, TimeoutError | OSError | websockets.exceptions.InvalidHandshake):
                raise HopFailed(self.failure(at, url, e)) from e
            raise

    def failure(self, hop: str, url: str, error: BaseException) -> Hop:
        """What an exception connecting to `url` says about which hop failed; `hop` is
        where the caller was (TCP to the proxy, its CONNECT, the upgrade, a REST call)."""
        via = self.proxy(url)
        target = host_port(url)
        where = via.address if via else target
        text = describe(error)
        if isinstance(error, TunnelRefused | httpx.ProxyError):
            answer = error.line if isinstance(error, TunnelRefused) else text
            cause = "proxy-auth" if _AUTH_STATUS.search(answer) else "proxy-refused"
            detail = f"proxy {where} answered {answer}"
            return Hop(hops.FEISHU, "proxy CONNECT", False, 0, detail, cause, target)
        timed_out = isinstance(error, TimeoutError | httpx.TimeoutException)
        if hop == "proxy CONNECT" and timed_out:
            detail = f"proxy {where} did not answer CONNECT within {CONNECT_TIMEOUT:g} s"
            return Hop(hops.FEISHU, hop, False, 0, detail, "proxy-refused", target)
        if _caused_by(error, socket.gaierror, "Name or service not known"):
            name = via.host if via else proxy.endpoint(url)[0]
            return Hop(hops.FEISHU, "DNS", False, 0, f"{name}: {text}", "dns", name)
        if _caused_by(error, ssl.SSLCertVerificationError, "CERTIFICATE_VERIFY_FAILED"):
            return Hop(hops.FEISHU, "TLS", False, 0, text, "tls-untrusted", target)
        if _caused_by(error, ssl.SSLError, "[SSL"):
            return Hop(hops.FEISHU, "TLS", False, 0, text, "tls", target)
        if timed_out and hop == "WebSocket upgrade":
            detail = f"to {target} timed out after {CONNECT_TIMEOUT:g} s"
            return Hop(hops.FEISHU, hop, False, 0, detail, "websocket", target)
        if timed_out:
            return Hop(hops.FEISHU, "TCP", False, 0, f"{where} timed out", "timeout", where)
        if isinstance(error, ConnectionError | httpx.ConnectError | OSError):
            return Hop(hops.FEISHU, "TCP", False, 0, f"{where}: {text}", "tcp", where)
        cause = "websocket" if hop == "WebSocket upgrade" else ""
        return Hop(hops.FEISHU, hop, False, 0, text, cause, target)


def _caused_by(error: BaseException, kind: type[BaseException], words: str) -> bool:
    """Whether `error` or what it was raised from is a `kind`, or says `words` (httpx
    wraps the OSError or SSLError it met in an error of its own, keeping its text)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, kind) or words in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


_URL_QUERY = re.compile(r"(wss?://[^\s?]+)\?\S*")


def describe(error: BaseException) -> str:
    """An error in words, without the query of a URL in it (a connection ticket)."""
    text = str(error) or type(error).__name__
    return _URL_QUERY.sub(r"\1?…", text)
