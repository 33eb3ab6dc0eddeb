"""A Feishu open-platform emulator for tests and ``make demo``.

The real ``lark_oapi.ws.Client`` connects to it over real WebSockets and speaks the real
protocol with the SDK's own protobuf ``Frame`` (``lark_oapi.ws.pb.pbbp2_pb2``):

* ``POST /callback/ws/endpoint`` hands out a ``ws://`` URL plus a ``ClientConfig``;
* the client's CONTROL ``ping`` frames are answered with ``pong`` frames whose payload is the
  ``ClientConfig`` JSON;
* events are DATA frames (headers ``type=event``, ``message_id``, ``sum``, ``seq``,
  ``trace_id``), optionally split over several frames; the client acks by echoing the frame
  with a ``{"code": 200}`` payload, which is recorded in :attr:`FeishuEmulator.acks`;
* unacknowledged events can be re-pushed (``repush_after``), like Feishu does.

The REST side covers what the bot uses: tenant access token, reply/send message, reactions,
message resources, user and chat info.

The server is aiohttp on 127.0.0.1 (random free port) in a background thread with its own
event loop; every public method is synchronous and thread-safe (it schedules onto that loop
and waits), so sync pytest tests and the demo script can drive it.

Fault modes:

* :meth:`stall_heartbeat` - pings are still read and counted but no ``pong`` frame goes back;
  everything else (events, WebSocket-level pongs) keeps working.
* :meth:`go_silent` - the *currently open* connections become half-open: nothing is sent on
  them any more (no pongs, no events, no WebSocket-level pongs, no close reply) and everything
  received is ignored; the sockets stay open. Connections made afterwards are normal, so a
  client that detects the stall and reconnects recovers. ``go_silent(False)`` revives them.
* :meth:`drop_connections` - aborts the TCP transport of every WebSocket (the client sees an
  abnormal closure, 1006, without a close frame).
* :meth:`refuse_connections` - ``mode="tcp"`` (default) closes the listening socket, so new
  TCP connects get ECONNREFUSED (endpoint POSTs, WS handshakes and REST calls all fail, as in a
  network outage); idle keep-alive HTTP connections are closed too, and any request that still
  arrives on an old connection is aborted. Established WebSockets stay up. Turning it off
  re-binds the *same* port. ``mode="http"`` keeps TCP up but answers the endpoint POST and the
  WS handshake with HTTP 503 (REST keeps working).
* :meth:`set_slow` - every HTTP request (including the endpoint POST and the WS handshake) is
  delayed by that many seconds before it is handled.

Event delivery follows Feishu's cluster mode: each event goes to exactly one connection
(round-robin over the open, non-silent ones, for determinism). With no usable connection the
event is queued and delivered as soon as one appears.

REST business errors are returned with HTTP 400 and the Feishu ``code``/``msg`` in the body,
except the endpoint's wrong-secret answer (HTTP 200, code 10003) as the SDK expects.
A token invalidated by :meth:`expire_tokens` gets code 99991677 (token expired); a token that
was never issued gets 99991663.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import secrets
import socket
import ssl
import sys
import threading
import time
import types
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import WSMsgType, web

__all__ = ["Ack", "FeishuEmulator"]

T = TypeVar("T")


def _load_frame_class() -> Any:
    """Return the SDK's protobuf ``Frame`` class without importing all of ``lark_oapi``.

    ``import lark_oapi`` costs seconds (it loads thousands of modules). The generated protobuf
    module and the protobuf runtime the SDK vendors only need their own sub-packages, so when
    ``lark_oapi`` is not imported yet, placeholder package modules stand in for ``lark_oapi``
    and ``lark_oapi.ws`` while ``lark_oapi.ws.pb.pbbp2_pb2`` loads, and are removed again
    afterwards. A later real ``import lark_oapi`` then runs its ``__init__`` normally and
    reuses the already loaded ``lark_oapi.ws.pb`` modules (same ``Frame`` class).
    """
    if "lark_oapi" not in sys.modules:
        spec = importlib.util.find_spec("lark_oapi")
        if spec is not None and spec.submodule_search_locations:
            root = next(iter(spec.submodule_search_locations))
            placeholders = {
                "lark_oapi": root,
                "lark_oapi.ws": os.path.join(root, "ws"),
            }
            for name, path in placeholders.items():
                module = types.ModuleType(name)
                module.__path__ = [path]
                sys.modules[name] = module
            try:
                from lark_oapi.ws.pb.pbbp2_pb2 import Frame as frame_cls

                return frame_cls
            finally:
                for name in placeholders:
                    loaded = sys.modules.get(name)
                    if loaded is not None and getattr(loaded, "__file__", None) is None:
                        del sys.modules[name]
    from lark_oapi.ws.pb.pbbp2_pb2 import Frame as frame_cls

    return frame_cls


Frame: Any = _load_frame_class()

# Protocol constants (lark_oapi.ws.const / lark_oapi.ws.enum).
_METHOD_CONTROL = 0
_METHOD_DATA = 1
_AUTH_FAILED = 514
_EXCEED_CONN_LIMIT = 1000040350
_SERVICE_ID = 1


def _hex(n: int = 16) -> str:
    return secrets.token_hex(n // 2)


def _digest(prefix: str, value: str, n: int = 24) -> str:
    return prefix + hashlib.sha1(value.encode()).hexdigest()[:n]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _json(data: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.json_response(dict(data), status=status, dumps=_dumps)


def _error(code: int, msg: str, status: int = 400) -> web.Response:
    return _json({"code": code, "msg": msg}, status)


# Which scope each REST path needs (the first matching fragment wins).
_SCOPES = (
    ("/contact/v3/users/", "contact:user.base:readonly"),
    ("/resources/", "im:resource"),
    ("/reactions", "im:message.reactions:write_only"),
    ("/reply", "im:message:send_as_bot"),
    ("/im/v1/images", "im:resource"),
    ("/im/v1/chats/", "im:chat:readonly"),
)


@dataclass
class Ack:
    """One acknowledgement frame received from a client."""

    frame_id: str  # the frame's ``message_id`` header
    event_id: str  # ``header.event_id`` of the event it acknowledges ("" if unknown)
    code: int  # the ``code`` of the JSON payload: 200 ok, 500 handler error
    ms: float  # time from the (latest) push of the frame to this ack, in milliseconds
    late: bool  # ``ms`` exceeded the emulator's ``ack_timeout``
    at: float  # time.time() when it arrived
    payload: dict[str, Any]  # the decoded JSON payload


@dataclass
class _Delivery:
    frame_id: str
    event: dict[str, Any]
    event_id: str
    payload: bytes
    split: int
    trace_id: str
    attempts: int = 0
    sent_at: float | None = None  # monotonic time of the latest push
    acked: bool = False  # acked with code 200
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    request: web.Request
    device_id: str
    service_id: int
    opened_at: float = field(default_factory=time.time)
    silent: bool = False
    seq: int = 0
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    @property
    def gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()


class FeishuEmulator:
    """Feishu open platform on 127.0.0.1: long-connection endpoint, WebSocket and REST API."""

    def __init__(
        self,
        app_id: str = "cli_test",
        app_secret: str = "test-secret",
        *,
        ping_interval: int = 120,
        reconnect_count: int = -1,
        reconnect_interval: int = 1,
        reconnect_nonce: int = 0,
        repush_after: float | None = None,
        max_repush: int = 3,
        ack_timeout: float = 3.0,
        tenant_key: str = "tenant_test",
        max_connections: int = 50,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.app_id = app_id
        self.tls = tls  # serve https:// and wss:// with this server context
        self.websocket_at: str | None = None  # host:port the endpoint sends clients to
        self.app_secret = app_secret
        self.tenant_key = tenant_key
        self.repush_after = repush_after
        self.max_repush = max_repush
        self.ack_timeout = ack_timeout
        self.max_connections = max_connections
        self._client_config: dict[str, int] = {
            "ReconnectCount": reconnect_count,
            "ReconnectInterval": reconnect_interval,
            "ReconnectNonce": reconnect_nonce,
            "PingInterval": ping_interval,
        }
        self.port = port
        # Recorded traffic (appended on the emulator thread, read from any thread).
        self.acks: list[Ack] = []
        self.ack_codes: dict[str, int] = {}  # frame message_id -> code of the latest ack
        self.sent_messages: list[dict[str, Any]] = []
        self.reactions: list[dict[str, Any]] = []
        self.bot_open_id = "ou_mailbot"
        self._clock_offset = 0.0  # seconds added to the real clock (see run_clock_from)
        # Scopes the app "lacks": calls that need one answer 99991672, as Feishu does.
        self.missing_scopes: set[str] = set()
        self.pushed_events: list[dict[str, Any]] = []
        self.data_frames: list[dict[str, Any]] = []  # headers of every event frame written
        self.errors: list[str] = []  # unexpected exceptions inside the emulator
        self.connect_count = 0  # accepted WebSocket handshakes, ever
        self.endpoint_count = 0  # successful endpoint POSTs, ever
        self.ping_count = 0
        self.pong_count = 0
        self.last_ping_at: float | None = None  # time.time() of the latest ping frame
        self.token_count = 0
        # Registries.
        self._users: dict[str, str] = {}
        self._chats: dict[str, str] = {}
        self._resources: dict[str, tuple[bytes, str, str | None]] = {}
        self._chunked: set[str] = set()
        self._members: dict[str, int] = {}
        self.chat_page_size = 100  # most chats per page of the chat list (Feishu: ≤ 100)
        self.resource_bytes_sent = 0  # of resource bodies, to see downloads cut short
        self._message_chats: dict[str, str] = {}
        # 获取指定消息的内容: every pushed message as that API returns it, and each merged
        # forward's children (flat, each naming its upper_message_id), in order.
        self._message_items: dict[str, dict[str, Any]] = {}
        self._forward_children: dict[str, list[dict[str, Any]]] = {}
        self._message_errors: dict[str, tuple[int, str, int]] = {}
        self._reply_errors: dict[str, tuple[int, str, int]] = {}
        self._resource_errors: dict[str, tuple[int, str, int]] = {}
        self._resource_gates: dict[str, asyncio.Event] = {}  # hold_resource
        self.resources_held = 0  # downloads waiting at a gate now
        self.resource_requests: list[tuple[str, str]] = []  # (message_id, file_key) asked for
        # 获取单个用户信息: errors to answer, how long each answer takes, and how many
        # were asked for at once at most (reset it to measure a stretch).
        self._user_errors: dict[str, tuple[int, str, int]] = {}
        self.user_delay = 0.0
        self.user_requests: Counter[str] = Counter()  # open_id → requests
        self.user_in_flight = 0
        self.user_in_flight_max = 0
        # Internal state, owned by the emulator loop.
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._expired_tokens: set[str] = set()
        self._device_ids: set[str] = set()
        self._conns: list[_Conn] = []
        self._rr = 0
        self._pending: list[_Delivery] = []
        self._deliveries: dict[str, _Delivery] = {}
        self._stall = False
        self._refuse: str | None = None
        self._slow = 0.0
        self._reply_n = 0
        self._by_uuid: dict[str, dict[str, Any]] = {}
        #: Images uploaded (上传图片): image_key, file name, content type, bytes.
        self.uploaded_images: list[dict[str, Any]] = []
        self.rest_calls: Counter[str] = Counter()  # open-apis path → requests received
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._listen_sock: socket.socket | None = None
        self._stopping = False

    # ------------------------------------------------------------------ clock

    def run_clock_from(self, moment: datetime) -> None:
        """Stamp create_time etc. as if the clock read `moment` now and ran on from it: as a
        daemon under libfaketime sees it, so its received and created times agree."""
        self._clock_offset = moment.timestamp() - time.time()

    def _now_ms(self) -> str:
        return str(int((time.time() + self._clock_offset) * 1000))

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> FeishuEmulator:
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="feishu-emulator", daemon=True
        )
        self._thread.start()
        self._call(self._startup())
        return self

    def stop(self, timeout: float = 5.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if not self._stopping:
            self._stopping = True
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FeishuEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(self._on_loop_exception)
        try:
            loop.run_forever()
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    def _on_loop_exception(self, loop: asyncio.AbstractEventLoop, ctx: dict[str, Any]) -> None:
        exc = ctx.get("exception")
        if isinstance(exc, (ConnectionError, asyncio.CancelledError)) or self._stopping:
            return
        self.errors.append(f"{ctx.get('message')}: {exc!r}")

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("emulator is not running")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("FeishuEmulator methods must not be called from its own loop")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    async def _startup(self) -> None:
        # An image upload is up to 10 MB (上传图片); aiohttp's default takes 1 MB.
        app = web.Application(middlewares=[self._middleware], client_max_size=11 * 1024 * 1024)
        app.router.add_post("/callback/ws/endpoint", self._h_endpoint)
        app.router.add_get("/ws", self._h_ws)
        app.router.add_post("/open-apis/auth/v3/tenant_access_token/internal", self._h_token)
        app.router.add_get(
            "/open-apis/im/v1/messages/{message_id}/resources/{file_key}", self._h_resource
        )
        app.router.add_get("/open-apis/im/v1/messages/{message_id}", self._h_message)
        app.router.add_get("/open-apis/contact/v3/users/{open_id}", self._h_user)
        app.router.add_get("/open-apis/im/v1/chats/{chat_id}", self._h_chat)
        app.router.add_get("/open-apis/im/v1/chats", self._h_chats)
        app.router.add_get("/open-apis/bot/v3/info", self._h_bot_info)
        app.router.add_post("/open-apis/im/v1/messages/{message_id}/reply", self._h_reply)
        app.router.add_post("/open-apis/im/v1/images", self._h_image)
        app.router.add_get("/open-apis/application/v6/scopes", self._h_scopes)
        app.router.add_post("/open-apis/im/v1/messages/{message_id}/reactions", self._h_reaction)
        app.router.add_post("/open-apis/im/v1/messages", self._h_send)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        await self._bind()

    async def _bind(self) -> None:
        # The emulator owns the listening socket so refuse mode can stop accepting cleanly.
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.setblocking(False)
        site = web.SockSite(self._runner, sock, ssl_context=self.tls)
        await site.start()
        self._site, self._listen_sock = site, sock
        self.port = int(sock.getsockname()[1])

    async def _unbind(self) -> None:
        """Close the listening socket: new TCP connects get ECONNREFUSED."""
        site, sock = self._site, self._listen_sock
        if site is None or sock is None:
            return
        self._site = self._listen_sock = None
        # Stop accepting first and let connections asyncio already accepted finish their
        # setup; closing the server right away would leak them (CPython 3.11's
        # Server._attach asserts on a closed server and the accepted socket is never closed).
        asyncio.get_running_loop().remove_reader(sock.fileno())
        await asyncio.sleep(0.02)
        await site.stop()  # closes the listening socket; the backlog is reset by the kernel

    async def _shutdown(self) -> None:
        for delivery in self._deliveries.values():
            if delivery.timer is not None:
                delivery.timer.cancel()
        for conn in list(self._conns):
            conn.abort()
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
        self._notify()

    # ------------------------------------------------------------------ test controls

    def register_user(self, open_id: str, name: str) -> None:
        self._users[open_id] = name

    def register_chat(self, chat_id: str, name: str, members: int = 3) -> None:
        """A group the bot is in, with `members` people besides it."""
        self._chats[chat_id] = name
        self._members[chat_id] = members

    def register_resource(
        self,
        file_key: str,
        data: bytes,
        content_type: str,
        filename: str | None = None,
        *,
        chunked: bool = False,
    ) -> None:
        """`chunked`: sent without a Content-Length, so only reading it shows its size."""
        self._resources[file_key] = (bytes(data), content_type, filename)
        if chunked:
            self._chunked.add(file_key)
        else:
            self._chunked.discard(file_key)

    def forget_resource(self, file_key: str) -> None:
        """From now on the resource is gone (a file deleted in Feishu): 404s."""
        self._resources.pop(file_key, None)

    def set_client_config(self, **changes: int) -> None:
        """Change the ClientConfig sent from now on (endpoint and pongs).

        Keys: ``ping_interval``, ``reconnect_count``, ``reconnect_interval``, ``reconnect_nonce``.
        """
        names = {
            "ping_interval": "PingInterval",
            "reconnect_count": "ReconnectCount",
            "reconnect_interval": "ReconnectInterval",
            "reconnect_nonce": "ReconnectNonce",
        }
        for key, value in changes.items():
            self._client_config[names[key]] = int(value)

    @property
    def client_config(self) -> dict[str, int]:
        return dict(self._client_config)

    def expire_tokens(self) -> None:
        """Invalidate every tenant access token issued so far (they answer 99991677)."""
        self._expired_tokens.update(self._tokens)
        self._tokens.clear()

    def build_message_event(
        self,
        chat_id: str,
        sender_open_id: str,
        message_type: str,
        content: Mapping[str, Any],
        *,
        message_id: str | None = None,
        event_id: str | None = None,
        mentions: Sequence[str | tuple[str, str] | Mapping[str, Any]] | None = None,
        chat_type: str = "group",
        root_id: str = "",
        parent_id: str = "",
    ) -> dict[str, Any]:
        """An ``im.message.receive_v1`` event (schema 2.0), as Feishu sends it.

        ``mentions`` items are an open_id (name from :meth:`register_user`), an
        ``(open_id, name)`` pair, or a ready Feishu mention dict; they get the keys
        ``@_user_1``, ``@_user_2``, ... in order (use those keys in the text).
        """
        message_id = message_id or f"om_{_hex(32)}"
        now = self._now_ms()
        feishu_mentions: list[dict[str, Any]] = []
        for i, item in enumerate(mentions or (), start=1):
            if isinstance(item, Mapping):
                feishu_mentions.append(dict(item))
                continue
            if isinstance(item, str):
                open_id, name = item, self._users.get(item, item)
            else:
                open_id, name = item
            feishu_mentions.append(
                {
                    "key": f"@_user_{i}",
                    "id": self._user_ids(open_id),
                    "name": name,
                    "tenant_key": self.tenant_key,
                }
            )
        message: dict[str, Any] = {
            "message_id": message_id,
            "root_id": root_id,
            "parent_id": parent_id,
            "create_time": now,
            "update_time": now,
            "chat_id": chat_id,
            "chat_type": chat_type,
            "message_type": message_type,
            "content": _dumps(dict(content)),
        }
        if feishu_mentions:
            message["mentions"] = feishu_mentions
        return {
            "schema": "2.0",
            "header": self._event_header("im.message.receive_v1", event_id),
            "event": {
                "sender": {
                    "sender_id": self._user_ids(sender_open_id),
                    "sender_type": "user",
                    "tenant_key": self.tenant_key,
                },
                "message": message,
            },
        }

    def push_text(
        self,
        chat_id: str,
        sender_open_id: str,
        text: str,
        *,
        message_id: str | None = None,
        event_id: str | None = None,
        mentions: Sequence[str | tuple[str, str] | Mapping[str, Any]] | None = None,
        chat_type: str = "group",
        split: int = 1,
    ) -> dict[str, Any]:
        return self.push_message(
            chat_id,
            sender_open_id,
            "text",
            {"text": text},
            message_id=message_id,
            event_id=event_id,
            mentions=mentions,
            chat_type=chat_type,
            split=split,
        )

    def push_message(
        self,
        chat_id: str,
        sender_open_id: str,
        message_type: str,
        content: Mapping[str, Any],
        *,
        message_id: str | None = None,
        event_id: str | None = None,
        mentions: Sequence[str | tuple[str, str] | Mapping[str, Any]] | None = None,
        chat_type: str = "group",
        root_id: str = "",
        parent_id: str = "",
        split: int = 1,
    ) -> dict[str, Any]:
        """Push an ``im.message.receive_v1`` event (text, post, image, file, ...)."""
        event = self.build_message_event(
            chat_id,
            sender_open_id,
            message_type,
            content,
            message_id=message_id,
            event_id=event_id,
            mentions=mentions,
            chat_type=chat_type,
            root_id=root_id,
            parent_id=parent_id,
        )
        return self.push_raw(event, split=split)

    def push_forward(
        self,
        chat_id: str,
        sender_open_id: str,
        children: Sequence[Mapping[str, Any]],
        *,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        """Push a merged forward (合并转发) of `children`, which GET message then serves.

        A child is ``{"sender": open_id, "msg_type": …, "content": {…}}``, optionally with
        ``"sender_type": "app"``, ``"deleted": True``, ``"mentions"`` or ``"message_id"``;
        a nested forward is ``{"sender": …, "msg_type": "merge_forward", "children": […]}``.
        The event's content is the fixed ``{"content": "Merged and Forwarded Message"}`` of
        接收消息内容结构; the children follow 获取指定消息的内容: "1 条合并转发消息和 N 条子消息",
        each with ``upper_message_id`` naming the message one level up.
        """
        message_id = message_id or f"om_{_hex(32)}"
        flat: list[dict[str, Any]] = []
        self._flatten_forward(message_id, chat_id, children, flat, int(self._now_ms()) - 3_600_000)
        self._forward_children[message_id] = flat
        return self.push_message(
            chat_id,
            sender_open_id,
            "merge_forward",
            {"content": "Merged and Forwarded Message"},
            message_id=message_id,
        )

    def _flatten_forward(
        self,
        upper: str,
        chat_id: str,
        children: Sequence[Mapping[str, Any]],
        out: list[dict[str, Any]],
        start_ms: int,
    ) -> None:
        for n, child in enumerate(children):
            child_id = str(child.get("message_id") or f"om_{_hex(32)}")
            content: Any = child.get("content", {})
            if child.get("msg_type") == "merge_forward":
                content = {"content": "Merged and Forwarded Message"}
            message = {
                "message_id": child_id,
                "create_time": str(start_ms + n * 60_000),
                "chat_id": chat_id,
                "message_type": child.get("msg_type", "text"),
                "content": _dumps(content) if not isinstance(content, str) else content,
                "mentions": [
                    {"key": m["key"], "id": {"open_id": m["id"]}, "name": m["name"]}
                    for m in child.get("mentions", ())
                ],
            }
            item = self._item(message, str(child["sender"]), child.get("sender_type", "user"))
            item["upper_message_id"] = upper
            if child.get("deleted"):
                item["deleted"] = True
                item.pop("body")
            out.append(item)
            if child.get("msg_type") == "merge_forward":
                self._flatten_forward(child_id, chat_id, child["children"], out, start_ms)

    def _item(self, message: Mapping[str, Any], sender: str, sender_type: str) -> dict[str, Any]:
        """A message as 获取指定消息的内容 returns it (mentions' id is a string there)."""
        item: dict[str, Any] = {
            "message_id": str(message["message_id"]),
            "msg_type": message.get("message_type", "text"),
            "create_time": str(message.get("create_time") or self._now_ms()),
            "update_time": str(message.get("create_time") or self._now_ms()),
            "deleted": False,
            "updated": False,
            "chat_id": str(message.get("chat_id", "")),
            "sender": {
                "id": sender,
                "id_type": "app_id" if sender_type == "app" else "open_id",
                "sender_type": sender_type,
                "tenant_key": self.tenant_key,
            },
            "body": {"content": message.get("content", "")},
        }
        for key in ("root_id", "parent_id"):
            if message.get(key):
                item[key] = message[key]
        mentions = [
            {
                "key": m.get("key"),
                "id": (m.get("id") or {}).get("open_id", ""),
                "id_type": "open_id",
                "name": m.get("name", ""),
                "tenant_key": self.tenant_key,
            }
            for m in message.get("mentions") or ()
        ]
        if mentions:
            item["mentions"] = mentions
        return item

    def remember_message(self, event: Mapping[str, Any]) -> None:
        """Keep a message for 获取指定消息的内容 without pushing it (one from before the bot)."""
        message, sender = event["event"]["message"], event["event"]["sender"]
        item = self._item(message, str(sender["sender_id"]["open_id"]), "user")
        self._message_items[item["message_id"]] = item

    def fail_message(
        self,
        message_id: str,
        code: int | None = 230110,
        msg: str = "message deleted",
        status: int = 400,
    ) -> None:
        """GET message for `message_id` answers this Feishu error from now on; code -1
        drops the connection instead, as a network failure would. None heals it."""
        _set_failure(self._message_errors, message_id, code, msg, status)

    def fail_reply(
        self,
        message_id: str,
        code: int | None = 230110,
        msg: str = "message deleted",
        status: int = 400,
    ) -> None:
        """Replies to `message_id` answer this error from now on, as fail_message does
        for reading it (-1: the connection drops); None heals it."""
        _set_failure(self._reply_errors, message_id, code, msg, status)

    def fail_resource(
        self,
        file_key: str,
        code: int | None = 99991400,
        msg: str = "request trigger frequency limit",
        status: int = 429,
    ) -> None:
        """The resource `file_key` answers this error from now on, as fail_message does;
        the default is the rate limit of 频控策略 ("HTTP/1.1 429 Too Many Requests",
        code 99991400)."""
        if code is None:
            self._resource_errors.pop(file_key, None)
        else:
            self._resource_errors[file_key] = (code, msg, status)

    def hold_resource(self, file_key: str) -> None:
        """Downloads of `file_key` wait, from now on, until release_resource: a test can
        act while the daemon is in the middle of preparing a mail."""
        self._resource_gates[file_key] = self._call(self._gate())

    def release_resource(self, file_key: str) -> None:
        gate = self._resource_gates.pop(file_key)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(gate.set)

    @staticmethod
    async def _gate() -> asyncio.Event:
        return asyncio.Event()  # made on the emulator's loop, where it is awaited

    def fail_user(
        self,
        open_id: str,
        code: int | None = 99991400,
        msg: str = "request trigger frequency limit",
        status: int = 429,
    ) -> None:
        """User info for `open_id` answers this error from now on, as fail_resource does
        (the default: 频控策略's rate limit); None heals it."""
        if code is None:
            self._user_errors.pop(open_id, None)
        else:
            self._user_errors[open_id] = (code, msg, status)

    def push_recall(
        self, message_id: str, chat_id: str, *, event_id: str | None = None
    ) -> dict[str, Any]:
        event = {
            "schema": "2.0",
            "header": self._event_header("im.message.recalled_v1", event_id),
            "event": {
                "message_id": message_id,
                "chat_id": chat_id,
                "recall_time": self._now_ms(),
                "recall_type": "message_owner",
            },
        }
        return self.push_raw(event)

    def push_raw(self, event: Mapping[str, Any], split: int = 1) -> dict[str, Any]:
        """Push any event dict as one DATA frame (or ``split`` frames). Returns the event."""
        event = dict(event)
        self._call(self._push(event, split))
        return event

    def repush(self, event: Mapping[str, Any], split: int = 1) -> dict[str, Any]:
        """Deliver the same event (same event_id/message_id) again, in a new frame."""
        return self.push_raw(event, split=split)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` (re-checked on every emulator state change) is true."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(f"condition not met within {timeout}s")

    def wait_connected(self, timeout: float = 10.0, *, total: int | None = None) -> None:
        """Wait for an open WebSocket (and, with ``total``, for that many handshakes ever)."""

        def ok() -> bool:
            return self.connections > 0 and (total is None or self.connect_count >= total)

        self.wait_for(ok, timeout)

    def wait_disconnected(self, timeout: float = 10.0) -> None:
        self.wait_for(lambda: self.connections == 0, timeout)

    def wait_pings(self, count: int, timeout: float = 10.0) -> None:
        self.wait_for(lambda: self.ping_count >= count, timeout)

    def wait_ack(self, key: str | Mapping[str, Any], timeout: float = 10.0) -> Ack:
        """First ack for an event (its event_id, or the event dict) or for a frame id."""
        if isinstance(key, Mapping):
            key = str(key["header"]["event_id"])
        found: list[Ack] = []

        def match() -> bool:
            found[:] = [a for a in self.acks if key in (a.event_id, a.frame_id)]
            return bool(found)

        try:
            self.wait_for(match, timeout)
        except TimeoutError:
            raise TimeoutError(f"no ack for {key} within {timeout}s") from None
        return found[0]

    def unacked_events(self) -> list[dict[str, Any]]:
        """Events pushed but not (yet) acknowledged with code 200."""

        async def collect() -> list[dict[str, Any]]:
            return [d.event for d in self._deliveries.values() if not d.acked]

        return self._call(collect())

    @property
    def connections(self) -> int:
        """Number of currently open WebSockets."""
        return len(self._conns)

    def stall_heartbeat(self, on: bool = True) -> None:
        self._stall = on

    def go_silent(self, on: bool = True) -> None:
        self._call(self._go_silent(on))

    def drop_connections(self) -> None:
        self._call(self._drop())

    def refuse_connections(self, on: bool = True, *, mode: str = "tcp") -> None:
        if mode not in ("tcp", "http"):
            raise ValueError("mode must be 'tcp' or 'http'")
        self._call(self._set_refuse(mode if on else None))

    def set_slow(self, seconds: float) -> None:
        self._slow = max(0.0, float(seconds))

    # ------------------------------------------------------------------ event helpers

    def _event_header(self, event_type: str, event_id: str | None) -> dict[str, Any]:
        return {
            "event_id": event_id or f"ev_{_hex(32)}",
            "event_type": event_type,
            "create_time": self._now_ms(),
            "token": "",
            "app_id": self.app_id,
            "tenant_key": self.tenant_key,
        }

    @staticmethod
    def _user_ids(open_id: str) -> dict[str, str]:
        return {
            "open_id": open_id,
            "union_id": _digest("on_", open_id),
            "user_id": _digest("u", open_id, 8),
        }

    # ------------------------------------------------------------------ delivery (loop)

    async def _push(self, event: dict[str, Any], split: int) -> None:
        header = event.get("header") or {}
        body = event.get("event") or {}
        message = body.get("message") if isinstance(body, dict) else None
        if isinstance(message, dict) and message.get("message_id") and message.get("chat_id"):
            self._message_chats[str(message["message_id"])] = str(message["chat_id"])
            sender = body.get("sender") or {}
            item = self._item(
                message, str((sender.get("sender_id") or {}).get("open_id", "")), "user"
            )
            self._message_items.setdefault(item["message_id"], item)
        delivery = _Delivery(
            frame_id=uuid.uuid4().hex,
            event=event,
            event_id=str(header.get("event_id", "")),
            # A lone surrogate goes out as the \ud83d escape, as Feishu would send it.
            payload=_dumps(event).encode("utf-8", "backslashreplace"),
            split=max(1, int(split)),
            trace_id=uuid.uuid4().hex,
        )
        self._deliveries[delivery.frame_id] = delivery
        self.pushed_events.append(event)
        await self._deliver(delivery)

    def _pick_conn(self) -> _Conn | None:
        usable = [c for c in self._conns if not c.silent and not c.gone]
        if not usable:
            return None
        self._rr += 1
        return usable[self._rr % len(usable)]

    async def _deliver(self, delivery: _Delivery) -> None:
        while True:
            conn = self._pick_conn()
            if conn is None:
                self._pending.append(delivery)
                return
            if await self._send_delivery(conn, delivery):
                return
            conn.abort()  # broken connection: try another one (or queue)

    def _frames(self, conn: _Conn, delivery: _Delivery) -> list[bytes]:
        payload, n = delivery.payload, min(delivery.split, max(1, len(delivery.payload)))
        size = -(-len(payload) // n)
        frames = []
        for seq in range(n):
            frame = Frame()
            conn.seq += 1
            frame.SeqID = conn.seq
            frame.LogID = 0
            frame.service = conn.service_id
            frame.method = _METHOD_DATA
            for key, value in (
                ("type", "event"),
                ("message_id", delivery.frame_id),
                ("sum", str(n)),
                ("seq", str(seq)),
                ("trace_id", delivery.trace_id),
            ):
                header = frame.headers.add()
                header.key = key
                header.value = value
            frame.payload = payload[seq * size : (seq + 1) * size]
            frames.append(frame.SerializeToString())
            self.data_frames.append(
                {
                    "message_id": delivery.frame_id,
                    "event_id": delivery.event_id,
                    "sum": n,
                    "seq": seq,
                    "trace_id": delivery.trace_id,
                    "device_id": conn.device_id,
                    "attempt": delivery.attempts + 1,
                }
            )
        return frames

    async def _send_delivery(self, conn: _Conn, delivery: _Delivery) -> bool:
        frames = self._frames(conn, delivery)
        delivery.attempts += 1
        delivery.sent_at = time.monotonic()
        for data in frames:
            if not await self._send(conn, data):
                return False
        if self.repush_after is not None and delivery.attempts <= self.max_repush:
            loop = asyncio.get_running_loop()
            if delivery.timer is not None:
                delivery.timer.cancel()
            delivery.timer = loop.call_later(self.repush_after, self._repush_due, delivery.frame_id)
        return True

    def _repush_due(self, frame_id: str) -> None:
        delivery = self._deliveries.get(frame_id)
        if delivery is None or delivery.acked or self._stopping:
            return
        delivery.timer = None
        asyncio.get_running_loop().create_task(self._deliver(delivery))

    async def _send(self, conn: _Conn, data: bytes) -> bool:
        if conn.silent:
            return True  # half-open: written into the void
        try:
            async with conn.send_lock:
                await conn.ws.send_bytes(data)
            return True
        except Exception:
            return False

    async def _flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        for delivery in pending:
            if not delivery.acked:
                await self._deliver(delivery)

    async def _go_silent(self, on: bool) -> None:
        for conn in self._conns:
            conn.silent = on
        if not on:
            await self._flush_pending()

    async def _drop(self) -> None:
        for conn in list(self._conns):
            conn.abort()

    async def _set_refuse(self, mode: str | None) -> None:
        self._refuse = mode
        if mode == "tcp" and self._site is not None:
            await self._unbind()
            # Cut every HTTP connection (idle keep-alive ones included) except WebSockets.
            assert self._runner is not None
            server = self._runner.server
            if server is not None:
                ws_handlers = {id(c.request.protocol) for c in self._conns}
                for handler in server.connections:
                    if id(handler) not in ws_handlers:
                        handler.force_close()
        elif mode != "tcp" and self._site is None and not self._stopping:
            await self._bind()

    # ------------------------------------------------------------------ HTTP (loop)

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if request.path.startswith("/open-apis/"):
            self.rest_calls[request.path] += 1
        if self._slow:
            await asyncio.sleep(self._slow)
        if self._refuse == "tcp":
            # Arrived on a connection accepted before the listener was closed.
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:
            self.errors.append(f"{request.method} {request.path}: {exc!r}")
            return _error(1, f"emulator error: {exc!r}", 500)

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def _auth_error(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        expiry = self._tokens.get(token)
        if expiry is not None and expiry > time.monotonic():
            for fragment, scope in _SCOPES:
                if fragment in request.path and scope in self.missing_scopes:
                    return _error(
                        99991672,
                        f"Access denied. One of the following scopes is required: [{scope}].",
                    )
            return None
        if token in self._expired_tokens or expiry is not None:
            return _error(99991677, "Authentication token expired")
        return _error(99991663, "Invalid access token")

    async def _h_endpoint(self, request: web.Request) -> web.Response:
        if self._refuse == "http":
            return _error(1, "system busy", 503)
        body = await self._body(request)
        if body.get("AppID") != self.app_id or body.get("AppSecret") != self.app_secret:
            return _error(10003, "invalid app_id or app_secret", 200)
        device_id = str(uuid.uuid4())
        self._device_ids.add(device_id)
        self.endpoint_count += 1
        self._notify()
        # 事件订阅 › 使用长连接接收事件: the endpoint answers the URL of the long connection,
        # a host of its own in production; `websocket_at` sends clients elsewhere.
        where = self.websocket_at or f"127.0.0.1:{self.port}"
        scheme = "wss" if self.tls else "ws"
        url = f"{scheme}://{where}/ws?device_id={device_id}&service_id={_SERVICE_ID}"
        return _json(
            {
                "code": 0,
                "msg": "ok",
                "data": {"URL": url, "ClientConfig": dict(self._client_config)},
            }
        )

    async def _h_ws(self, request: web.Request) -> web.StreamResponse:
        if self._refuse == "http":
            return _error(1, "system busy", 503)
        device_id = request.query.get("device_id", "")
        service_id = request.query.get("service_id", "")
        if device_id not in self._device_ids or not service_id.isdigit():
            return self._handshake_error(0, "invalid device_id or service_id")
        if len(self._conns) >= self.max_connections:
            return self._handshake_error(_EXCEED_CONN_LIMIT, "exceed connection limit")
        ws = web.WebSocketResponse(autoping=False, autoclose=False, timeout=1.0)
        try:
            await ws.prepare(request)
        except Exception:
            return ws
        conn = _Conn(ws=ws, request=request, device_id=device_id, service_id=int(service_id))
        self._conns.append(conn)
        self.connect_count += 1
        self._notify()
        try:
            await self._flush_pending()
            await self._read_loop(conn)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception as exc:
            if not self._stopping:
                self.errors.append(f"websocket {device_id}: {exc!r}")
        finally:
            self._conns.remove(conn)
            conn.abort()
            self._notify()
        return ws

    @staticmethod
    def _handshake_error(auth_code: int, msg: str) -> web.Response:
        headers = {
            "handshake-status": str(_AUTH_FAILED),
            "handshake-msg": msg,
            "handshake-autherrcode": str(auth_code),
        }
        return web.Response(status=403, text=msg, headers=headers)

    async def _read_loop(self, conn: _Conn) -> None:
        ws = conn.ws
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING):
                # The client closes. A silent (half-open) peer never answers.
                while conn.silent and not conn.gone and not self._stopping:
                    await asyncio.sleep(0.05)
                await ws.close(drain=False)
                return
            if conn.silent:
                continue
            if msg.type == WSMsgType.PING:
                with contextlib.suppress(Exception):
                    async with conn.send_lock:
                        await ws.pong(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await self._on_frame(conn, msg.data)

    async def _on_frame(self, conn: _Conn, data: bytes) -> None:
        frame = Frame()
        try:
            frame.ParseFromString(data)
        except Exception as exc:
            self.errors.append(f"undecodable frame: {exc!r}")
            return
        headers = {h.key: h.value for h in frame.headers}
        kind = headers.get("type")
        if frame.method == _METHOD_CONTROL and kind == "ping":
            self.ping_count += 1
            self.last_ping_at = time.time()
            if frame.service != conn.service_id:
                self.errors.append(f"ping with service {frame.service} != {conn.service_id}")
            if not self._stall:
                await self._send(conn, self._pong_frame(conn))
                self.pong_count += 1
            self._notify()
        elif frame.method == _METHOD_DATA:
            self._on_ack(headers.get("message_id", ""), bytes(frame.payload))

    def _pong_frame(self, conn: _Conn) -> bytes:
        frame = Frame()
        frame.SeqID = 0
        frame.LogID = 0
        frame.service = conn.service_id
        frame.method = _METHOD_CONTROL
        header = frame.headers.add()
        header.key = "type"
        header.value = "pong"
        frame.payload = _dumps(self._client_config).encode()
        return bytes(frame.SerializeToString())

    def _on_ack(self, frame_id: str, payload: bytes) -> None:
        try:
            body = json.loads(payload.decode("utf-8"))
            code = int(body.get("code"))
        except (ValueError, TypeError, AttributeError):
            self.errors.append(f"bad ack payload for {frame_id}: {payload[:200]!r}")
            return
        delivery = self._deliveries.get(frame_id)
        now = time.monotonic()
        ms = (now - delivery.sent_at) * 1000 if delivery and delivery.sent_at else 0.0
        ack = Ack(
            frame_id=frame_id,
            event_id=delivery.event_id if delivery else "",
            code=code,
            ms=ms,
            late=ms > self.ack_timeout * 1000,
            at=time.time(),
            payload=body,
        )
        self.acks.append(ack)
        self.ack_codes[frame_id] = code
        if delivery is not None and code == 200:
            delivery.acked = True
            if delivery.timer is not None:
                delivery.timer.cancel()
                delivery.timer = None
        self._notify()

    # ------------------------------------------------------------------ REST (loop)

    async def _h_token(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if body.get("app_id") != self.app_id or body.get("app_secret") != self.app_secret:
            return _error(10014, "app secret invalid")
        token = f"t-{_hex(40)}"
        self._tokens[token] = time.monotonic() + 7200
        self.token_count += 1
        return _json({"code": 0, "msg": "ok", "tenant_access_token": token, "expire": 7200})

    @staticmethod
    def _failure(request: web.Request, code: int, msg: str, status: int) -> web.Response:
        if code == -1 and request.transport is not None:
            request.transport.abort()
            raise ConnectionResetError("dropped, as asked")
        return _error(code, msg, status)

    async def _h_resource(self, request: web.Request) -> web.StreamResponse:
        if (err := self._auth_error(request)) is not None:
            return err
        if request.query.get("type") not in ("image", "file"):
            return _error(234001, "Invalid request param.")
        key, message_id = request.match_info["file_key"], request.match_info["message_id"]
        self.resource_requests.append((message_id, key))
        if (gate := self._resource_gates.get(key)) is not None:
            self.resources_held += 1
            self._notify()
            await gate.wait()
            self.resources_held -= 1
        if key in self._resource_errors:
            return self._failure(request, *self._resource_errors[key])
        if self._resources_unsupported(message_id):
            # 获取消息中的资源文件: "暂不支持获取合并转发消息中的子消息、卡片消息中的资源
            # 文件。如果请求时传入了合并转发消息或子消息的 ID、卡片消息 ID，则会返回错误码
            # 234043。"
            return _error(234043, "Unsupported message type.")
        resource = self._resources.get(key)
        if resource is None:
            return _error(234003, "File not in msg.", 404)
        data, content_type, filename = resource
        headers = {"Content-Type": content_type}
        if filename:
            ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_")
            headers["Content-Disposition"] = (
                f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"
            )
        # 获取消息中的资源文件 answers with the file itself (up to 100 MB), streamed as a
        # file server would: a client that stops reading stops the sending.
        response = web.StreamResponse(headers=headers)
        if request.match_info["file_key"] in self._chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = len(data)
        await response.prepare(request)
        view = memoryview(data)
        try:
            for start in range(0, len(view), 65536):
                await response.write(view[start : start + 65536])
                self.resource_bytes_sent += len(view[start : start + 65536])
            await response.write_eof()
        except ConnectionError:
            pass  # the client had what it wanted
        return response

    async def _h_message(self, request: web.Request) -> web.Response:
        """获取指定消息的内容: one item, or a merged forward followed by its children."""
        if (err := self._auth_error(request)) is not None:
            return err
        message_id = request.match_info["message_id"]
        if message_id in self._message_errors:
            return self._failure(request, *self._message_errors[message_id])
        item = self._message_items.get(message_id)
        if item is None:
            return _error(230110, "message not found")  # as for a deleted one
        items = [item, *self._forward_children.get(message_id, ())]
        return _json({"code": 0, "msg": "success", "data": {"items": items}})

    def _resources_unsupported(self, message_id: str) -> bool:
        item = self._message_items.get(message_id)
        if item is not None and item["msg_type"] in ("merge_forward", "interactive"):
            return True
        return any(
            c["message_id"] == message_id for cs in self._forward_children.values() for c in cs
        )

    async def _h_user(self, request: web.Request) -> web.Response:
        if (err := self._auth_error(request)) is not None:
            return err
        open_id = request.match_info["open_id"]
        self.user_requests[open_id] += 1
        self.user_in_flight += 1
        self.user_in_flight_max = max(self.user_in_flight_max, self.user_in_flight)
        try:
            if self.user_delay:
                await asyncio.sleep(self.user_delay)
            if open_id in self._user_errors:
                return self._failure(request, *self._user_errors[open_id])
            name = self._users.get(open_id)
            if name is None:
                return _error(41050, "no user authority error")
            user = {**self._user_ids(open_id), "name": name, "en_name": name}
            return _json({"code": 0, "msg": "success", "data": {"user": user}})
        finally:
            self.user_in_flight -= 1

    async def _h_chat(self, request: web.Request) -> web.Response:
        if (err := self._auth_error(request)) is not None:
            return err
        chat_id = request.match_info["chat_id"]
        name = self._chats.get(chat_id)
        if name is None:
            return _error(232011, "chat not found")
        # 获取群信息 (im/v1/chat/get): user_count and bot_count are strings there.
        data = {
            "chat_id": chat_id,
            "name": name,
            "chat_mode": "group",
            "chat_type": "private",
            "user_count": str(self._members.get(chat_id, 0)),
            "bot_count": "1",
        }
        return _json({"code": 0, "msg": "success", "data": data})

    async def _h_chats(self, request: web.Request) -> web.Response:
        """获取用户或机器人所在的群列表 (im/v1/chat/list): groups only, paged by page_token."""
        if (err := self._auth_error(request)) is not None:
            return err
        size = min(int(request.query.get("page_size", "20")), self.chat_page_size)
        start = int(request.query.get("page_token") or 0)
        ids = sorted(self._chats)
        page = ids[start : start + size]
        items = [
            {"chat_id": c, "name": self._chats[c], "owner_id_type": "open_id", "external": False}
            for c in page
        ]
        more = start + size < len(ids)
        data = {"items": items, "has_more": more, "page_token": str(start + size) if more else ""}
        return _json({"code": 0, "msg": "success", "data": data})

    async def _h_bot_info(self, request: web.Request) -> web.Response:
        """The bot's own identity: how the bot recognises an @-mention of itself."""
        if (err := self._auth_error(request)) is not None:
            return err
        bot = {"open_id": self.bot_open_id, "app_name": "Mailbot", "activate_status": 2}
        return _json({"code": 0, "msg": "ok", "bot": bot})

    def _record_message(
        self, kind: str, chat_id: str | None, reply_to: str | None, body: Mapping[str, Any]
    ) -> web.Response:
        raw = body.get("content")
        try:
            content = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            content = raw
        # 回复消息 (POST /open-apis/im/v1/messages/:message_id/reply; its body, as the
        # SDK's ReplyMessageRequestBody: content, msg_type, reply_in_thread, uuid): a
        # request with a uuid already used within the hour sends nothing new.
        uuid = body.get("uuid")
        if isinstance(uuid, str) and uuid in self._by_uuid:
            return _json({"code": 0, "msg": "success", "data": self._by_uuid[uuid]})
        self._reply_n += 1
        message_id = f"om_reply_{self._reply_n}"
        self.sent_messages.append(
            {
                "kind": kind,
                "message_id": message_id,
                "reply_to": reply_to,
                "chat_id": chat_id,
                "msg_type": body.get("msg_type"),
                "content": content,
                "reply_in_thread": bool(body.get("reply_in_thread")),
                "uuid": uuid,
                "at": time.time(),
            }
        )
        self._notify()
        data = {
            "message_id": message_id,
            "root_id": reply_to or "",
            "parent_id": reply_to or "",
            "msg_type": body.get("msg_type"),
            "create_time": self._now_ms(),
            "chat_id": chat_id,
            "sender": {"id": self.app_id, "id_type": "app_id", "sender_type": "app"},
            "body": {"content": raw},
        }
        if isinstance(uuid, str):
            self._by_uuid[uuid] = data
        return _json({"code": 0, "msg": "success", "data": data})

    async def _h_reply(self, request: web.Request) -> web.Response:
        if (err := self._auth_error(request)) is not None:
            return err
        body = await self._body(request)
        if not body.get("msg_type") or not isinstance(body.get("content"), str):
            return _error(230001, "invalid message content")
        reply_to = request.match_info["message_id"]
        if reply_to in self._reply_errors:
            return self._failure(request, *self._reply_errors[reply_to])
        return self._record_message("reply", self._message_chats.get(reply_to), reply_to, body)

    async def _h_scopes(self, request: web.Request) -> web.Response:
        # 查询租户授权状态 (GET /open-apis/application/v6/scopes; 权限要求: 无): each
        # scope the app asks for with grant_status 1 (已授权) or 2 (未授权). The app
        # here asks for every scope a path needs; `missing_scopes` are not granted.
        if (err := self._auth_error(request)) is not None:
            return err
        asked = sorted({scope for _, scope in _SCOPES} | {"im:message", "im:message.group_msg"})
        listed = [
            {"scope_name": s, "grant_status": 2 if s in self.missing_scopes else 1} for s in asked
        ]
        return _json({"code": 0, "msg": "success", "data": {"scopes": listed}})

    async def _h_image(self, request: web.Request) -> web.Response:
        # 上传图片 (POST /open-apis/im/v1/images, multipart/form-data: image_type
        # "message" or "avatar", image the file; at most 10 MB, never empty; answers
        # data.image_key).
        if (err := self._auth_error(request)) is not None:
            return err
        form = await request.post()
        image = form.get("image")
        if form.get("image_type") not in ("message", "avatar") or not isinstance(
            image, web.FileField
        ):
            return _error(99992402, "field validation failed")
        data = image.file.read()
        if not data or len(data) > 10 * 1024 * 1024:
            return _error(99992402, "field validation failed: image size")
        key = f"img_v3_{len(self.uploaded_images) + 1:04d}"
        self.uploaded_images.append(
            {"image_key": key, "name": image.filename, "content_type": image.content_type,
             "data": data}
        )  # fmt: skip
        return _json({"code": 0, "msg": "success", "data": {"image_key": key}})

    async def _h_send(self, request: web.Request) -> web.Response:
        if (err := self._auth_error(request)) is not None:
            return err
        if request.query.get("receive_id_type") != "chat_id":
            return _error(99992402, "field validation failed: receive_id_type")
        body = await self._body(request)
        if not body.get("receive_id") or not body.get("msg_type"):
            return _error(99992402, "field validation failed")
        if not isinstance(body.get("content"), str):
            return _error(230001, "invalid message content")
        return self._record_message("send", str(body["receive_id"]), None, body)

    async def _h_reaction(self, request: web.Request) -> web.Response:
        if (err := self._auth_error(request)) is not None:
            return err
        body = await self._body(request)
        reaction_type = body.get("reaction_type")
        emoji = reaction_type.get("emoji_type") if isinstance(reaction_type, dict) else None
        if not emoji:
            return _error(231001, "reaction type is invalid")
        message_id = request.match_info["message_id"]
        self.reactions.append({"message_id": message_id, "emoji_type": emoji, "at": time.time()})
        self._notify()
        data = {
            "reaction_id": f"r_{len(self.reactions)}",
            "operator": {"operator_id": self.app_id, "operator_type": "app"},
            "action_time": self._now_ms(),
            "reaction_type": {"emoji_type": emoji},
        }
        return _json({"code": 0, "msg": "success", "data": data})


def _set_failure(
    failures: dict[str, tuple[int, str, int]], key: str, code: int | None, msg: str, status: int
) -> None:
    """`key` fails with (code, msg, status) from now on; code None heals it."""
    if code is None:
        failures.pop(key, None)
    else:
        failures[key] = (code, msg, status)
