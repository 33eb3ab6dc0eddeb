"""The Feishu edge: the SDK's long connection, and the few REST calls we need.

`import lark_oapi` costs ≈4 s and ≈170 MB because the package's __init__ loads
every generated API model (≈11,000 modules). The daemon needs only
`lark_oapi.ws.client`, so `load_ws_client()` imports that module without
running the package __init__; it pulls ≈480 modules instead.

The SDK's `ws.Client` is used as is for the protocol (frames, ping/pong,
split payloads, acks, its reconnect schedule), with small overrides where the
1.7.5 release hurts a daemon:
- the endpoint request runs `requests.post` with no timeout on the event loop
  (lark-oapi #169): one stalled request wedges the process. We fetch the
  endpoint with httpx, asynchronously and with a timeout.
- it records no pong time and gives no hook on frames: we add both, so the
  health model can tell a live connection from a deaf one.
- when its reconnect budget runs out the exception dies in a background task
  and the process idles forever: we catch it and report `gave_up`.
- data frames are decoded, and their acks encoded, by frames.py instead of the
  vendored pure-Python protobuf runtime, ≈4× cheaper per event; the acks are
  the same bytes. Control frames (ping, pong) still go through the SDK.
The REST calls (tenant token, names, resources, replies) also use httpx rather
than the SDK's generated clients, for the same import cost reason.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import importlib.util
import io
import json
import logging
import os
import random
import re
import socket
import ssl
import sys
import time
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from feishu_mailbot.config import proxy
from feishu_mailbot.config.settings import FeishuSettings, PemBundle, Proxy, address
from feishu_mailbot.core import hops
from feishu_mailbot.core.hops import Hop
from feishu_mailbot.core.model import Download
from feishu_mailbot.feishu import frames

log = logging.getLogger(__name__)

HTTP_TIMEOUT = 10.0
ERROR_BODY_BYTES = 65536  # of a JSON error reply to a resource download
CONNECT_TIMEOUT = 15.0
RECONNECT_MAX = 15.0  # so the bot is back within ~15 s of Feishu (or the network) returning


def load_ws_client() -> types.ModuleType:
    """Import `lark_oapi.ws.client` without `lark_oapi/__init__.py`; see the module docstring."""
    if "lark_oapi" not in sys.modules:
        spec = importlib.util.find_spec("lark_oapi")
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError("lark_oapi is not installed")
        package = types.ModuleType("lark_oapi")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        package.__file__ = spec.origin
        sys.modules["lark_oapi"] = package
        # ws.client imports EventDispatcherHandler only as a type annotation; the real
        # module drags in every API model. Our handler object is duck-typed instead.
        dispatcher = types.ModuleType("lark_oapi.event.dispatcher_handler")
        dispatcher.EventDispatcherHandler = object  # type: ignore[attr-defined]
        sys.modules.setdefault("lark_oapi.event.dispatcher_handler", dispatcher)
        # The vendored protobuf's google/__init__ declares a namespace through
        # pkg_resources (≈10 MB, ≈75 ms); a plain package with the same path is enough.
        google = types.ModuleType("lark_oapi.ws.pb.google")
        google.__path__ = [f"{package.__path__[0]}/ws/pb/google"]
        sys.modules.setdefault("lark_oapi.ws.pb.google", google)
    # ws.client imports requests (≈10 MB) for the endpoint call that LongConnection
    # replaces; let it bind a stand-in, then forget it so no one else sees it.
    stand_in = "requests" not in sys.modules
    if stand_in:
        sys.modules["requests"] = types.ModuleType("requests")
    try:
        module = importlib.import_module("lark_oapi.ws.client")
    finally:
        if stand_in:
            del sys.modules["requests"]
    lark_log = logging.getLogger("Lark")
    for handler in list(lark_log.handlers):  # the SDK prints to stdout; route it to ours
        lark_log.removeHandler(handler)
    lark_log.propagate = True
    lark_log.addFilter(_redact_urls)
    return module


_URL_QUERY = re.compile(r"(wss?://[^\s?]+)\?\S*")


def _redact_urls(record: logging.LogRecord) -> bool:
    """The SDK logs the connection URL, whose query carries a connection ticket."""
    message = record.getMessage()
    if "://" in message:
        record.msg = _URL_QUERY.sub(r"\1?…", message)
        record.args = ()
    return True


class FeishuError(Exception):
    """A Feishu API call failed; `code` is Feishu's error code when it sent one."""

    def __init__(self, what: str, message: str, code: int | None = None) -> None:
        self.what = what
        self.code = code
        super().__init__(
            f"{what}: {message}" + (f" (Feishu code {code})" if code is not None else "")
        )


class HopFailed(FeishuError):
    """Connecting failed at a hop short of Feishu's answer (DNS, TCP, the proxy, TLS, the
    WebSocket upgrade): the journal and STATUS= say which, in `hops`' words."""

    def __init__(self, hop: Hop) -> None:
        super().__init__(hop.name, hop.detail)
        self.hop = hop

    def __str__(self) -> str:
        return self.hop.sentence()


# Feishu's "the app lacks a permission (scope)" codes: an operator must add the scope
# in the developer console and publish a new app version.
SCOPE_ERRORS = {99991672, 99991679}

# Feishu codes that mean the credentials themselves are wrong: retrying cannot help.
CREDENTIAL_ERRORS = {10003, 10014, 99991661, 99991663, 99991664, 99991665}


def refused(e: FeishuError) -> bool:
    """Whether Feishu answered about the message or resource itself, so asking again
    gets the same answer: the im API's own codes, 230xxx for messages (deleted, no
    permission) and 234xxx for their resources (234043: a card's or a forwarded
    message's). Any other code (a rate limit, a missing scope, a server error) is
    about the call, and the call is worth making again."""
    return e.code is not None and e.code // 1000 in (230, 234)


# 频控策略 (https://open.feishu.cn/document/server-docs/api-call-guide/frequency-control):
# over an API's limit Feishu answers "HTTP/1.1 429 Too Many Requests" (400 for some older
# APIs) with {"code": 99991400, "msg": "request trigger frequency limit"}, and the
# x-ogw-ratelimit-reset header says in how many seconds the window opens again.
RATE_LIMITED = 99991400


def unanswered(e: FeishuError) -> bool:
    """Whether the call got no answer about what it asked: no response at all, or the
    rate limit. Asking again later may get one. For APIs outside im (a user's name),
    whose codes refused() does not know: any other code there is Feishu's answer (a
    missing scope, a user outside the app's range), and asking again gets the same."""
    return e.code is None or e.code == RATE_LIMITED


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


def _target(url: str) -> str:
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
        target = _target(url)
        where = via.address if via else target
        text = _describe(error)
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


@dataclass
class ConnectionState:
    """What the long connection has been doing; read by the health model and STATUS."""

    connected: bool = False
    connected_since: float | None = None
    last_frame_at: float | None = None
    last_pong_at: float | None = None
    reconnecting_since: float | None = None
    reconnect_attempts: int = 0
    last_error: str | None = None
    gave_up: bool = False
    connects: int = 0


class LongConnection:
    """Owns one SDK ws.Client; `handle(payload)` is called for each event, on the loop.

    We run the ping loop and the reconnect schedule ourselves (the SDK's own are
    driven by the server's ClientConfig: pings every 120 s and reconnects every
    120 s on Feishu, too slow to detect a deaf connection or to recover within
    seconds of an outage ending). Frames, acks and split payloads stay the SDK's.
    """

    def __init__(
        self,
        settings: FeishuSettings,
        handle: Callable[[bytes], Awaitable[None]],
        *,
        ping_every: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        route: Route | None = None,
    ) -> None:
        self.settings = settings
        self.route = route or Route(settings)
        self.state = ConnectionState()
        self.ping_every = ping_every
        self._handle = handle
        self._clock = clock
        self._ws = load_ws_client()
        self._client = _make_client(self._ws, self)
        self._closing = False
        self._pinger: asyncio.Task[Any] | None = None
        self._receiver: asyncio.Task[Any] | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The SDK schedules its tasks on a module-level loop created at import: run on it."""
        loop: asyncio.AbstractEventLoop = self._ws.loop
        return loop

    async def connect(self) -> None:
        """First connection; raises on failure so the caller can decide to retry or give up."""
        await self._client._connect()
        self._pinger = self.loop.create_task(self._ping_loop())

    async def close(self) -> None:
        """Stop pinging and receiving first, so nothing sees a 'lost' connection to repair."""
        self._closing = True
        for task in (self._pinger, self._receiver):
            if task is not None:
                task.cancel()
        await self._client._disconnect()

    async def _ping_loop(self) -> None:
        while True:
            client = self._client
            # Feishu's interval (ClientConfig) is an upper bound; we ping at least that often.
            interval = min(self.ping_every, float(client._ping_interval or self.ping_every))
            if client._conn is not None and client._service_id:
                try:
                    frame = self._ws._new_ping_frame(int(client._service_id))
                    await client._write_message(frame.SerializeToString())
                except Exception as e:  # a dead socket shows up in the receive loop
                    log.debug("ping failed: %s", _describe(e))
            await asyncio.sleep(interval)

    async def _reconnect(self) -> None:
        """Reconnect until it works, backing off 1 s → RECONNECT_MAX with jitter.

        We never give up here: the health model decides when an outage has lasted
        longer than its budget, and then systemd restarts the whole process.
        """
        self.state.reconnecting_since = self.state.reconnecting_since or self._clock()
        delay = 1.0
        while not self._closing:
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            if self._closing:
                return
            self.state.reconnect_attempts += 1
            try:
                await self._client._connect()
                return
            except Exception as e:
                error = _describe(e)
                changed, self.state.last_error = error != self.state.last_error, error
                log.log(  # once per cause, not once per retry
                    logging.WARNING if changed else logging.DEBUG,
                    "reconnect attempt %d failed: %s",
                    self.state.reconnect_attempts,
                    error,
                )
            delay = min(delay * 2, RECONNECT_MAX)

    # -- callbacks from the client subclass -------------------------------------------

    def _on_connected(self) -> None:
        now = self._clock()
        st = self.state
        st.connected, st.connected_since, st.last_frame_at = True, now, now
        st.reconnecting_since, st.reconnect_attempts, st.gave_up = None, 0, False
        st.connects += 1
        log.info("connected to Feishu (connection #%d)", st.connects)

    def _on_disconnected(self) -> None:
        if self.state.connected:
            self.state.connected = False
            self.state.connected_since = None
            if self._closing:
                log.info("Feishu long connection closed")
            else:
                log.warning("Feishu long connection lost")

    def _on_gave_up(self, error: BaseException) -> None:
        self.state.gave_up = True
        self.state.last_error = _describe(error)
        log.error("Feishu reconnect loop died: %s", self.state.last_error)

    def _on_frame(self) -> None:
        self.state.last_frame_at = self._clock()

    def _on_pong(self) -> None:
        self.state.last_pong_at = self._clock()

    @property
    def last_heard_at(self) -> float | None:
        times = [t for t in (self.state.last_frame_at, self.state.last_pong_at) if t is not None]
        return max(times) if times else None

    async def fetch_endpoint(self) -> tuple[str, dict[str, Any] | None]:
        return await endpoint(self.settings, self.route)


async def endpoint(settings: FeishuSettings, route: Route) -> tuple[str, dict[str, Any] | None]:
    """The long connection's URL and ClientConfig, from Feishu's endpoint."""
    url = settings.domain + "/callback/ws/endpoint"
    body = {"AppID": settings.app_id, "AppSecret": settings.app_secret.reveal()}
    async with route.http() as http:
        try:
            response = await http.post(url, json=body, headers={"locale": "en"})
        except httpx.HTTPError as e:
            raise HopFailed(route.failure("endpoint", url, e)) from e
    if response.status_code == 407:  # a plain-HTTP proxy that wants credentials
        via = route.proxy(url)
        detail = f"proxy {via.address if via else '?'} answered 407"
        hop = Hop(hops.FEISHU, "proxy CONNECT", False, 0, detail, "proxy-auth", _target(url))
        raise HopFailed(hop)
    if response.status_code != 200:
        raise FeishuError("long-connection endpoint", f"HTTP {response.status_code}")
    try:
        payload = response.json()
    except ValueError as e:
        raise FeishuError("long-connection endpoint", "response is not JSON") from e
    code = payload.get("code")
    if code != 0:
        raise FeishuError("long-connection endpoint", str(payload.get("msg")), code)
    data = payload.get("data") or {}
    return str(data.get("URL")), data.get("ClientConfig")


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return _URL_QUERY.sub(r"\1?…", text)


def _make_client(ws: types.ModuleType, owner: LongConnection) -> Any:
    """Subclass the SDK client at run time (the module is imported lazily, see above)."""
    base: Any = ws.Client

    acks = {code: ws.JSON.marshal(ws.Response(code=code)).encode() for code in (200, 500)}

    class Client(base):  # type: ignore[misc]
        _conn: Any

        async def _connect(self) -> None:
            await self._lock.acquire()
            try:
                if self._conn is not None:
                    return
                url, client_config = await owner.fetch_endpoint()
                if client_config:
                    self._configure(ws.ClientConfig(client_config))
                conn_url = ws.build_connection_url(url, self._connection_host)
                query = ws.parse_qs(ws.urlparse(conn_url).query)
                conn = await owner.route.websocket(conn_url)
                self._conn, self._conn_url = conn, conn_url
                self._conn_id = query[ws.DEVICE_ID][0]
                self._service_id = query[ws.SERVICE_ID][0]
                owner._on_connected()
                owner._receiver = ws.loop.create_task(self._receive_message_loop())
            except ws.InvalidHandshake as e:
                ws._parse_ws_conn_exception(e)
            finally:
                self._lock.release()

        async def _disconnect(self) -> None:
            owner._on_disconnected()
            await super()._disconnect()

        async def _reconnect(self) -> None:
            if owner._closing:
                return
            try:
                await owner._reconnect()
            except Exception as e:  # a bug here must not leave the process idling deaf
                owner._on_gave_up(e)

        async def _handle_message(self, msg: bytes) -> None:
            """Data frames through frames.py; control frames (pings, pongs) to the SDK."""
            owner._on_frame()
            try:
                frame = frames.decode(msg)
            except frames.FrameError as e:
                log.error("undecodable frame from Feishu ignored: %s", e)
                return
            if frame.method == frames.DATA:
                await self._handle_data(frame)
            else:
                await super()._handle_message(msg)

        async def _handle_data(self, frame: frames.Frame) -> None:
            """The SDK's data-frame handling, but awaiting our (async, group-committed) handler.

            The SDK calls a synchronous handler and acks when it returns; ours must
            wait for the batch commit, and the loop must stay free meanwhile.
            """
            payload = frame.payload or b""
            total = int(frame.header("sum", "1"))
            if total > 1:
                payload = self._combine(
                    frame.header("message_id"), total, int(frame.header("seq", "0")), payload
                )
                if payload is None:
                    return
            if frame.header("type") != "event":
                return  # card callbacks are not ours; the SDK does not answer them either
            started = time.monotonic()
            code = 200
            try:
                await owner._handle(payload)
            except Exception as e:
                code = 500
                log.error("event not stored, Feishu will re-push it: %s", e)
            frame.headers.append(("biz_rt", str(int((time.monotonic() - started) * 1000))))
            frame.payload = acks[code]
            await self._write_message(frames.encode(frame))

        async def _handle_control_frame(self, frame: Any) -> None:
            for header in frame.headers:
                if header.key == "type" and header.value == "pong":
                    owner._on_pong()
            await super()._handle_control_frame(frame)

    # The SDK sets its logger's level in __init__ (INFO by default); keep the one logs.py chose.
    keep_level = types.SimpleNamespace(value=logging.getLogger("Lark").level or logging.WARNING)
    client = Client(
        owner.settings.app_id,
        owner.settings.app_secret.reveal(),
        log_level=keep_level,
        event_handler=None,
        domain=owner.settings.domain,
        auto_reconnect=True,
    )
    return client


class FeishuApi:
    """REST calls with a cached tenant token. All async, all with timeouts."""

    def __init__(
        self,
        settings: FeishuSettings,
        clock: Callable[[], float] = time.monotonic,
        route: Route | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._route = route or Route(settings)
        self._http = self._route.http()
        self._token: str | None = None
        self._token_expires = 0.0
        # what → Feishu's message, for calls refused for a missing scope (shown in STATUS).
        self.missing_permissions: dict[str, str] = {}

    async def close(self) -> None:
        await self._http.aclose()

    async def tenant_token(self, *, refresh: bool = False) -> str:
        if self._token and not refresh and self._clock() < self._token_expires:
            return self._token
        body = {"app_id": self.settings.app_id, "app_secret": self.settings.app_secret.reveal()}
        payload = await self._json(
            "POST",
            "/open-apis/auth/v3/tenant_access_token/internal",
            "tenant access token",
            json_body=body,
            auth=False,
        )
        token = payload.get("tenant_access_token")
        if not isinstance(token, str) or not token:
            raise FeishuError("tenant access token", "no token in the response")
        expire = float(payload.get("expire") or 7200)
        self._token, self._token_expires = token, self._clock() + max(60.0, expire - 300)
        return token

    async def _json(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json_body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        auth: bool = True,
    ) -> dict[str, Any]:
        for attempt in (0, 1):
            headers = {}
            if auth:
                headers["Authorization"] = f"Bearer {await self.tenant_token(refresh=attempt == 1)}"
            try:
                response = await self._http.request(
                    method, path, json=json_body, params=params, headers=headers
                )
            except httpx.HTTPError as e:  # no answer: which hop is in the way
                raise HopFailed(self._route.failure(what, self.settings.domain, e)) from e
            try:
                payload: dict[str, Any] = response.json()
            except ValueError as e:
                raise FeishuError(what, f"HTTP {response.status_code}, not JSON") from e
            code = payload.get("code")
            if code == 0:
                self.missing_permissions.pop(what, None)
                return payload
            if auth and attempt == 0 and code in (99991663, 99991668, 99991661):
                continue  # token expired or revoked early: fetch a new one once
            if code in SCOPE_ERRORS:
                self._missing_permission(what, str(payload.get("msg")))
            raise FeishuError(
                what,
                str(payload.get("msg") or f"HTTP {response.status_code}"),
                code if isinstance(code, int) else None,
            )
        raise AssertionError("unreachable")

    def _missing_permission(self, what: str, message: str) -> None:
        if what not in self.missing_permissions:
            log.error(
                "Feishu refused %s for a missing permission: %s; add the scope in the developer "
                "console (Permissions & Scopes) and publish a new app version",
                what,
                message,
            )
        self.missing_permissions[what] = message

    async def user_name(self, open_id: str) -> str:
        payload = await self._json(
            "GET",
            f"/open-apis/contact/v3/users/{_segment(open_id)}",
            "user info",
            params={"user_id_type": "open_id"},
        )
        return str(((payload.get("data") or {}).get("user") or {}).get("name") or open_id)

    async def chat_name(self, chat_id: str) -> str:
        payload = await self._json(
            "GET", f"/open-apis/im/v1/chats/{_segment(chat_id)}", "chat info"
        )
        return str((payload.get("data") or {}).get("name") or chat_id)

    async def message_items(self, message_id: str) -> list[dict[str, Any]]:
        """获取指定消息的内容: the message, or a merged forward with all its children."""
        payload = await self._json(
            "GET",
            f"/open-apis/im/v1/messages/{_segment(message_id)}",
            "message content",
            params={"user_id_type": "open_id"},
        )
        items = (payload.get("data") or {}).get("items")
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    async def resource(self, message_id: str, key: str, kind: str, limit: int) -> Download:
        """The resource, streamed, or only its size when it is over `limit` bytes.

        Streamed so that a 100 MB file costs at most `limit` bytes of memory:
        a Content-Length over the limit ends the request before the body, and a
        body that grows past it is abandoned there.
        """
        what = f"message resource {key}"
        for attempt in (0, 1):
            token = await self.tenant_token(refresh=attempt == 1)
            try:
                async with self._http.stream(
                    "GET",
                    f"/open-apis/im/v1/messages/{_segment(message_id)}/resources/{_segment(key)}",
                    params={"type": "image" if kind == "image" else "file"},
                    headers={"Authorization": f"Bearer {token}"},
                ) as response:
                    content_type = response.headers.get("content-type", "application/octet-stream")
                    if response.status_code == 200 and not content_type.startswith(
                        "application/json"
                    ):
                        return await _download(response, content_type, limit)
                    body = await _head(response, ERROR_BODY_BYTES)
            except httpx.HTTPError as e:
                raise HopFailed(self._route.failure(what, self.settings.domain, e)) from e
            try:
                payload = json.loads(body)
            except ValueError:
                payload = {}
            if not isinstance(payload, dict):
                payload = {}
            code = payload.get("code")
            if attempt == 0 and code in (99991663, 99991668, 99991661):
                continue
            if code in SCOPE_ERRORS:
                self._missing_permission("message resource", str(payload.get("msg")))
            raise FeishuError(
                what,
                str(payload.get("msg") or f"HTTP {response.status_code}"),
                code if isinstance(code, int) else None,
            )
        raise AssertionError("unreachable")

    async def chats(self) -> list[tuple[str, str, int | None]]:
        """The group chats the bot is in: (chat_id, name, members or None if not said).

        获取用户或机器人所在的群列表 pages through them; the member count is only in
        获取群信息 (user_count, a string), one request a chat.
        """
        found: list[tuple[str, str]] = []
        token = ""
        while True:
            params = {"page_size": "100", **({"page_token": token} if token else {})}
            payload = await self._json("GET", "/open-apis/im/v1/chats", "chat list", params=params)
            data = payload.get("data") or {}
            for item in data.get("items") or []:
                if isinstance(item, dict) and isinstance(item.get("chat_id"), str):
                    found.append((item["chat_id"], str(item.get("name") or "")))
            token = str(data.get("page_token") or "")
            if not data.get("has_more") or not token:
                break
        out = []
        for chat_id, name in found:
            info = await self._json(
                "GET", f"/open-apis/im/v1/chats/{_segment(chat_id)}", "chat info"
            )
            count = str((info.get("data") or {}).get("user_count") or "")
            out.append((chat_id, name, int(count) if count.isascii() and count.isdigit() else None))
        return out

    async def bot_info(self) -> dict[str, Any]:
        """获取机器人信息: the bot's open_id, name and activate_status (2: enabled)."""
        payload = await self._json("GET", "/open-apis/bot/v3/info", "bot info")
        bot = payload.get("bot")
        return bot if isinstance(bot, dict) else {}

    async def bot_open_id(self) -> str:
        """The bot's own open_id, to recognise an @-mention of the bot in a message."""
        open_id = (await self.bot_info()).get("open_id")
        if not isinstance(open_id, str) or not open_id:
            raise FeishuError("bot info", "no open_id in the response")
        return open_id

    async def react(self, message_id: str, emoji: str) -> None:
        await self._json(
            "POST",
            f"/open-apis/im/v1/messages/{_segment(message_id)}/reactions",
            "reaction",
            json_body={"reaction_type": {"emoji_type": emoji}},
        )

    async def reply_text(self, message_id: str, text: str) -> None:
        await self._json(
            "POST",
            f"/open-apis/im/v1/messages/{_segment(message_id)}/reply",
            "reply",
            json_body={
                "msg_type": "text",
                "content": json.dumps({"text": text}, ensure_ascii=False),
            },
        )


async def _download(response: httpx.Response, content_type: str, limit: int) -> Download:
    filename = _filename(response.headers.get("content-disposition", ""))
    content_type = content_type.split(";")[0].strip()
    length = response.headers.get("content-length", "")
    size = int(length) if length.isascii() and length.isdigit() and len(length) < 20 else None
    if size is not None and size > limit:
        return Download(None, content_type, filename, size)
    body = io.BytesIO()  # getvalue() hands over its buffer: no second copy of the file
    async for chunk in response.aiter_bytes():
        if body.tell() + len(chunk) > limit:
            # Longer than its Content-Length said, or than the limit: either way unknown.
            return Download(None, content_type, filename, None)
        body.write(chunk)
    return Download(body.getvalue(), content_type, filename, body.tell())


async def _head(response: httpx.Response, limit: int) -> bytes:
    """At most `limit` bytes of an error reply: an error page is no reason to read 100 MB."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk[: limit - len(body)]
        if len(body) >= limit:
            break
    return bytes(body)


def _segment(value: str) -> str:
    """An id from an event as one URL path segment: a '/', '?' or control character in it
    must not change which endpoint is asked (httpx refuses some outright, InvalidURL)."""
    return quote(value, safe="")


def _filename(disposition: str) -> str | None:
    from email.message import Message as _Headers

    if not disposition:
        return None
    headers = _Headers()
    headers["content-disposition"] = disposition
    name = headers.get_filename()
    return str(name) if name else None
