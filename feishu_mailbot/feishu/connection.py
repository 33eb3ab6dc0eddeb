"""The SDK's long connection, as a daemon needs it.

`load_ws_client()` imports `lark_oapi.ws.client` without the package's
__init__, which loads every generated API model (docs/design.md).

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
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import random
import re
import sys
import time
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from feishu_mailbot.config.settings import FeishuSettings
from feishu_mailbot.core import hops
from feishu_mailbot.core.hops import Hop
from feishu_mailbot.feishu import frames
from feishu_mailbot.feishu.errors import FeishuError, HopFailed
from feishu_mailbot.feishu.route import Route, describe, host_port

log = logging.getLogger(__name__)

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
                    log.debug("ping failed: %s", describe(e))
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
                error = describe(e)
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
        self.state.last_error = describe(error)
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
        hop = Hop(hops.FEISHU, "proxy CONNECT", False, 0, detail, "proxy-auth", host_port(url))
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
