"""`feishu-mailbot doctor`: every hop to Feishu and to the relay, the broken one named.

The old bot's guide told a person to switch networks and click through proxy
settings until something worked. This walks the way the daemon takes, one hop
at a time, and stops each path at its first failure with what that failure
usually means (hops.CAUSES): a firewall, a proxy refusing CONNECT or wanting
credentials, TLS inspection, a WebSocket dropped on the way, the app's
credentials, scopes or bot capability. Both paths are walked at once and the
whole walk ends within DEADLINE seconds, whatever hangs. Nothing is sent: no
mail, no message; the WebSocket opened to Feishu is closed after one ping.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from feishu_mailbot.config import proxy
from feishu_mailbot.config.settings import Proxy, Settings, address
from feishu_mailbot.core import hops, x509
from feishu_mailbot.core.exits import Exit
from feishu_mailbot.core.hops import Hop
from feishu_mailbot.feishu import frames
from feishu_mailbot.feishu.connection import endpoint
from feishu_mailbot.feishu.errors import CREDENTIAL_ERRORS, SCOPE_ERRORS, FeishuError, HopFailed
from feishu_mailbot.feishu.rest import FeishuApi
from feishu_mailbot.feishu.route import CONNECT_TIMEOUT, Route, TunnelRefused, socket_to, tunnel
from feishu_mailbot.mail import smtp

DEADLINE = 60.0  # the whole run, both paths
# One hop, at most: longer than the edge's own timeouts (feishu.CONNECT_TIMEOUT for the
# WebSocket), so that the edge's words ("timed out after 15 s", which the daemon says too)
# are the ones printed; this only bounds what has no timeout of its own.
HOP_TIMEOUT = CONNECT_TIMEOUT + 5
PONG_WAIT = 10.0  # a pong within Feishu's ping interval, or this if that is longer
SMTP_DEADLINE = 45.0


class _Failed(Exception):
    def __init__(self, detail: str, cause: str, target: str = "") -> None:
        super().__init__(detail)
        self.detail, self.cause, self.target = detail, cause, target


@dataclass
class _Walk:
    """One path's hops so far; `step` times one and stops the path at a failure."""

    path: str
    ends_at: float
    hops: list[Hop]

    async def step(self, name: str, work: Callable[[], Awaitable[str]], cause: str = "") -> bool:
        started = time.monotonic()
        limit = min(HOP_TIMEOUT, self.ends_at - started)
        try:
            if limit <= 0:
                raise TimeoutError
            detail = await asyncio.wait_for(work(), limit)
        except _Failed as e:
            self._add(name, started, False, e.detail, e.cause, e.target)
            return False
        except HopFailed as e:  # the Feishu edge named the hop itself
            hop = e.hop
            self._add(hop.name, started, False, hop.detail, hop.cause, hop.target)
            return False
        except TimeoutError:
            self._add(name, started, False, f"no answer within {limit:.0f} s", cause or "timeout")
            return False
        except FeishuError as e:  # Feishu answered, with a code: what the step is about
            failure = _feishu_cause(e) or (cause if e.code is not None else "")
            self._add(name, started, False, str(e), failure)
            return False
        except Exception as e:  # whatever else: the hop failed, the walk still ends in a line
            self._add(name, started, False, f"{type(e).__name__}: {e}")
            return False
        self._add(name, started, True, detail)
        return True

    def _add(
        self, name: str, started: float, ok: bool, detail: str, cause: str = "", target: str = ""
    ) -> None:
        ms = (time.monotonic() - started) * 1000
        self.hops.append(Hop(self.path, name, ok, ms, detail, cause, target))


def _feishu_cause(e: FeishuError) -> str:
    if e.code in CREDENTIAL_ERRORS:
        return "credentials"
    if e.code in SCOPE_ERRORS:
        return "scopes"
    return ""


async def _resolve(host: str, port: int) -> list[Any]:
    """getaddrinfo in a daemon thread of its own: a resolver that never answers must not
    hold the process past its deadline, as the loop's executor would at exit."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[Any]] = loop.create_future()

    def settle(found: Any) -> None:
        if done.done():  # the step gave up waiting
            return
        if isinstance(found, OSError):
            done.set_exception(found)
        else:
            done.set_result(found)

    def lookup() -> None:
        try:
            found: Any = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            found = e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, found)

    threading.Thread(target=lookup, daemon=True, name="doctor-dns").start()
    return await done


class _Probe:
    """A raw connection along the route to the Feishu domain: DNS, TCP, the proxy's
    CONNECT and TLS, each its own hop, the way httpx takes them."""

    def __init__(self, settings: Settings, route: Route) -> None:
        self.settings = settings
        self.route = route
        self.url = settings.feishu.domain
        self.host, self.port = proxy.endpoint(self.url)
        self.via: Proxy | None = route.proxy(self.url)
        self.first = (self.via.host, self.via.port) if self.via else (self.host, self.port)
        self.addresses: list[Any] = []
        self.sock: socket.socket | None = None

    async def dns(self) -> str:
        host, port = self.first
        try:
            self.addresses = await _resolve(host, port)
        except OSError as e:
            raise _Failed(f"{host}: {e.strerror or e}", "dns", host) from e
        shown = ", ".join(dict.fromkeys(str(a[4][0]) for a in self.addresses))
        note = " (Feishu's own name is resolved by the proxy)" if self.via else ""
        return f"{host} → {shown}{note}"

    async def tcp(self) -> str:
        target = address(*self.first)
        addresses = self.addresses

        async def given(host: str, port: int) -> list[Any]:
            return addresses

        try:
            self.sock = await socket_to(*self.first, resolve=given)
        except OSError as e:
            raise _Failed(f"{target}: {e.strerror or e}", "tcp", target) from e
        peer = self.sock.getpeername()
        return f"connected to {address(peer[0], peer[1])}" + (" (the proxy)" if self.via else "")

    async def connect(self) -> str:
        assert self.via is not None and self.sock is not None
        target = address(self.host, self.port)
        try:
            await tunnel(self.sock, self.via, target)
        except TunnelRefused as e:
            cause = "proxy-auth" if e.status in (401, 407) else "proxy-refused"
            raise _Failed(f"proxy {self.via.address} answered {e.line!r}", cause, target) from e
        except OSError as e:
            raise _Failed(f"proxy {self.via.address}: {e}", "proxy-refused", target) from e
        return f"{self.via.shown()} tunnels to {target}"

    async def tls(self) -> str:
        assert self.sock is not None
        target = address(self.host, self.port)
        try:
            _, writer = await asyncio.open_connection(
                sock=self.sock, ssl=self.route.tls, server_hostname=self.host
            )
        except ssl.SSLCertVerificationError as e:
            self.sock = None  # asyncio owns it now, and closed it
            issuer = await self._issuer_unverified()
            detail = f"certificate issued by {issuer}: {e.verify_message}"
            raise _Failed(detail, "tls-untrusted", target) from e
        except (ssl.SSLError, OSError) as e:
            self.sock = None
            raise _Failed(f"handshake failed: {e}", "tls", target) from e
        self.sock = None
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj else None
        writer.close()
        issuer = x509.issuer_or_why(der) if der else "?"
        return f"{sslobj.version() if sslobj else 'TLS'}, certificate issued by {issuer}"

    async def _issuer_unverified(self) -> str:
        """The issuer of a certificate that failed verification, read over a second
        connection that does not verify and is used for nothing else."""
        again = _Probe(self.settings, self.route)
        try:
            await again.dns()
            await again.tcp()
            if again.via:
                await again.connect()
            reading = ssl.create_default_context()
            reading.check_hostname = False
            reading.verify_mode = ssl.CERT_NONE
            _, writer = await asyncio.open_connection(
                sock=again.sock, ssl=reading, server_hostname=self.host
            )
            again.sock = None
            sslobj = writer.get_extra_info("ssl_object")
            der = sslobj.getpeercert(binary_form=True) if sslobj else None
            writer.close()
            return x509.issuer_or_why(der) if der else "an unknown issuer"
        except (OSError, _Failed):
            return "an issuer it could not read"
        finally:
            again.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


async def feishu_hops(settings: Settings, ends_at: float) -> list[Hop]:
    walk = _Walk(hops.FEISHU, ends_at, [])
    feishu = settings.feishu
    if feishu.proxy is None and (wrong := proxy.environment_errors(os.environ)):
        detail = "; ".join(wrong) + " (fix the variable, or set feishu.proxy)"
        walk.hops.append(Hop(hops.FEISHU, "config", False, 0, detail))
        return walk.hops
    route = Route(settings.feishu)
    probe = _Probe(settings, route)

    async def config() -> str:
        via = probe.via.shown() if probe.via else "direct (no proxy)"
        ca = f", also trusting {feishu.ca_file.path}" if feishu.ca_file else ""
        return f"{settings.path}: app {feishu.app_id}, {feishu.domain}, {via}{ca}"

    api = FeishuApi(feishu, route=route)
    try:
        steps: list[tuple[str, Callable[[], Awaitable[str]]]] = [
            ("config", config),
            ("DNS", probe.dns),
            ("TCP", probe.tcp),
        ]
        if probe.via:
            steps.append(("proxy CONNECT", probe.connect))
        if urlsplit(feishu.domain).scheme == "https":
            steps.append(("TLS", probe.tls))
        for name, work in steps:
            if not await walk.step(name, work):
                return walk.hops
        probe.close()
        if not await walk.step("tenant token", lambda: _token(api), "credentials"):
            return walk.hops
        found: dict[str, Any] = {}

        async def ask_endpoint() -> str:
            url, client_config = await endpoint(feishu, route)
            found.update(url=url, config=client_config or {})
            host, port = proxy.endpoint(url)
            return f"long connection at {urlsplit(url).scheme}://{host}:{port}"

        if not await walk.step("endpoint", ask_endpoint, "endpoint"):
            return walk.hops
        socket_hops = _Socket(route, found["url"], found["config"])
        try:
            if not await walk.step("WebSocket upgrade", socket_hops.upgrade, "websocket"):
                return walk.hops
            if not await walk.step("pong", socket_hops.pong, "pong"):
                return walk.hops
        finally:
            await socket_hops.close()
        if not await walk.step("bot info", lambda: _bot(api), "bot"):
            return walk.hops
        await walk.step("chats", lambda: _chats(api, settings), "chats")
        if settings.inbound is not None:
            await walk.step("reply scopes", lambda: _reply_scopes(api), "reply-scopes")
        return walk.hops
    finally:
        probe.close()
        await api.close()


async def _token(api: FeishuApi) -> str:
    await api.tenant_token()
    return "obtained"


# 获取机器人信息 (GET /open-apis/bot/v3/info): bot.activate_status, the app's state in
# this tenant. "需要启用机器人能力 … 开启机器人能力并发布后即可".
_ACTIVATION = {
    0: "initialised, not installed by the tenant yet (0: 初始化，租户待安装)",
    1: "disabled by the tenant (1: 租户停用)",
    3: "installed, waiting to be enabled (3: 安装后待启用)",
    4: "upgraded, waiting to be enabled (4: 升级待启用)",
    5: "disabled: the license expired (5: license过期停用)",
    6: "disabled: the Lark plan expired or was downgraded (6: Lark套餐到期或降级停用)",
}


async def _bot(api: FeishuApi) -> str:
    info = await api.bot_info()
    status = info.get("activate_status")
    if status != 2 and isinstance(status, int):
        raise _Failed(f"the app is {_ACTIVATION.get(status, f'in state {status}')}", "bot")
    return f"bot {info.get('app_name') or '?'} ({info.get('open_id') or '?'}), enabled"


async def _chats(api: FeishuApi, settings: Settings) -> str:
    found = {chat_id: name for chat_id, name, _ in await api.chats()}
    allowed = [c.id for c in settings.chats]
    missing = [c for c in allowed if c not in found]
    inside = [f"{found[c] or c} ({c})" for c in allowed if c in found]
    if missing:
        where = f"in {len(inside)} of {len(allowed)} allowlisted chats; not in {', '.join(missing)}"
        raise _Failed(where, "chats")
    return f"in all {len(allowed)} allowlisted chats: {', '.join(inside)}"


# What posting a reply by mail needs (回复消息: any one of im:message,
# im:message:send_as_bot; 上传图片: im:resource), as 查询租户授权状态 lists them.
_REPLY_SCOPES = (("im:message:send_as_bot", "im:message"), ("im:resource",))


async def _reply_scopes(api: FeishuApi) -> str:
    granted = {name for name, ok in (await api.scopes()).items() if ok}
    lacking = [" or ".join(any_of) for any_of in _REPLY_SCOPES if not granted & set(any_of)]
    if lacking:
        raise _Failed(f"not granted: {', '.join(lacking)}", "reply-scopes")
    have = [next(s for s in any_of if s in granted) for any_of in _REPLY_SCOPES]
    return f"granted: {', '.join(have)}"


class _Socket:
    """The long connection's WebSocket, opened the daemon's way, for one ping."""

    def __init__(self, route: Route, url: str, client_config: dict[str, Any]) -> None:
        self.route = route
        self.url = url
        self.config = client_config
        self.conn: Any = None

    async def upgrade(self) -> str:
        self.conn = await self.route.websocket(self.url)  # HopFailed names what failed
        host, port = proxy.endpoint(self.url)
        via = self.route.proxy(self.url)
        return f"{host}:{port} upgraded to WebSocket" + (f" through {via.address}" if via else "")

    async def pong(self) -> str:
        query = parse_qs(urlsplit(self.url).query)
        service = int((query.get("service_id") or ["0"])[0] or 0)
        interval = float(self.config.get("PingInterval") or PONG_WAIT)
        wait = min(interval, PONG_WAIT)
        started = time.monotonic()
        ping = frames.Frame(service=service, method=0, headers=[("type", "ping")])
        await self.conn.send(frames.encode(ping))
        while (left := started + wait - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(self.conn.recv(), left)
            except TimeoutError:
                break
            frame = frames.decode(data) if isinstance(data, bytes) else None
            if frame is not None and frame.method == 0 and frame.header("type") == "pong":
                return f"pong in {(time.monotonic() - started) * 1000:.0f} ms"
        host, port = proxy.endpoint(self.url)
        raise _Failed(f"no pong from {host}:{port} within {wait:.0f} s", "pong", f"{host}:{port}")

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.conn.close(), 2)


async def database_hops(settings: Settings, ends_at: float) -> list[Hop]:
    """The shared database, when `database:` is configured: the login, then the schema."""
    walk = _Walk(hops.DATABASE, ends_at, [])
    db = settings.database
    if db is None:
        return []
    from feishu_mailbot.state import (
        LoginRefused,
        MissingDriver,
        PostgresUnavailable,
        StateError,
        schema,
    )

    password = None if db.password is None else db.password.reveal()
    found: list[int | None] = []

    async def connect() -> str:
        try:
            from feishu_mailbot.state import postgres  # StateError: no driver

            who, version = await asyncio.to_thread(postgres.probe, db.url, password)
        except StateError as e:
            cause = (
                "db-login"
                if isinstance(e, LoginRefused)
                else "db-driver"
                if isinstance(e, MissingDriver)
                else "db-schema"
            )
            raise _Failed(str(e), cause) from None
        except PostgresUnavailable as e:
            raise _Failed(str(e), "db-unreachable") from None
        found.append(version)
        return who

    async def check_schema() -> str:
        version = found[0]
        if version is None:
            return "empty: the daemon creates its tables at the first start"
        if version > schema.SCHEMA_VERSION:
            raise _Failed(
                f"schema {version} is newer than this release's {schema.SCHEMA_VERSION}: "
                "upgrade feishu-mailbot on this host",
                "db-schema",
            )
        if version < schema.SCHEMA_VERSION:
            return f"schema {version}: the daemon upgrades it to {schema.SCHEMA_VERSION} at start"
        return f"schema {version}"

    if await walk.step("connect", connect, "db-unreachable"):
        await walk.step("schema", check_schema, "db-schema")
    return walk.hops


async def imap_hops(settings: Settings, ends_at: float) -> list[Hop]:
    """The bot's mailbox, when `inbound:` is configured: logged in, its folders there."""
    inbound = settings.inbound
    if inbound is None:
        return []
    from feishu_mailbot.mail.imap import ImapError, Mailbox  # imaplib only then

    walk = _Walk(hops.IMAP, ends_at, [])
    box = Mailbox(inbound.imap)

    def look() -> str:
        filing = () if inbound.processed is None else (inbound.processed,)
        try:
            opened = box.open(filing)
        except ImapError as e:
            raise _Failed(str(e), "imap") from None
        finally:
            box.shutdown()
        waits = "IDLE" if opened.idle else "no IDLE: asked every minute"
        return f"{inbound.imap.username} on {inbound.imap.host}, {inbound.imap.mailbox}: {waits}"

    await walk.step("mailbox", lambda: asyncio.to_thread(look), "imap")
    return walk.hops


async def walk(settings: Settings) -> list[Hop]:
    """The paths at once, within DEADLINE: Feishu's hops, the relay's, the database's,
    the bot's mailbox."""
    started = time.monotonic()
    relay = asyncio.to_thread(smtp.walk, settings.smtp, deadline=min(SMTP_DEADLINE, DEADLINE - 5))
    feishu = feishu_hops(settings, started + DEADLINE - 5)
    database = database_hops(settings, started + DEADLINE - 5)
    mailbox = imap_hops(settings, started + DEADLINE - 5)
    found = await asyncio.gather(feishu, relay, database, mailbox)
    return [hop for path in found for hop in path]


def lines(found: list[Hop]) -> list[str]:
    out = []
    for hop in found:
        out.append(hop.line())
        if advice := hop.advice():
            out.append(f"{'':>8}→ {advice}")
    return out


def verdict(found: list[Hop]) -> tuple[bool, str]:
    broken = [h for h in found if not h.ok]
    if not broken:
        paths = ["Feishu", "the relay"]
        if any(h.path == hops.DATABASE for h in found):
            paths.append("the database")
        if any(h.path == hops.IMAP for h in found):
            paths.append("the bot's mailbox")
        to = ", ".join(paths[:-1]) + " and " + paths[-1]
        return True, f"doctor: every hop works, to {to}; nothing was sent"
    where = "; ".join(f"{h.path} path broken at {h.name}" for h in broken)
    return False, f"doctor: {where}"


def run(settings: Settings) -> tuple[int, list[Hop]]:
    found = asyncio.run(walk(settings))
    for line in lines(found):
        print(line)
    ok, summary = verdict(found)
    print(summary)
    return (Exit.OK if ok else Exit.UNAVAILABLE), found


def run_doctor(settings: Settings, args: argparse.Namespace) -> int:
    """`doctor`, and `check-config --online` after the file checked out."""
    report_to = getattr(args, "report", None)
    code, found = run(settings)
    if report_to is None:
        return code
    from feishu_mailbot.cli import support
    from feishu_mailbot.cli.output import write_atomically
    from feishu_mailbot.cli.status import status_text
    from feishu_mailbot.mail import smtp

    text = support.build(settings, found, status_text(settings), smtp.scrubber(settings.smtp))
    try:
        write_atomically(Path(report_to), text, 0o600)
    except OSError as e:
        print(f"{report_to}: cannot write it: {e.strerror or e}", file=sys.stderr)
        return Exit.CANTCREAT
    print(f"wrote {report_to} (0600): attach it to a support ticket; it holds no secret")
    return code
