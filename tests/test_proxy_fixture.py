"""The proxy fixture itself, with real traffic through Debian's tinyproxy: what the
bot's proxy tests will rely on (requests and tunnels logged, credentials enforced,
nothing left running) is shown here first, without the bot."""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidProxyMessage

from tests.harness import PROXY_PASSWORD, PROXY_USER
from tests.http_proxy import Tinyproxy, _listening


class Origin(ThreadingHTTPServer):
    """A tiny HTTP server on loopback that records what reached it, headers and all."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def paths(self) -> list[str]:
        return [f"{method} {path}" for method, path, _ in self.seen]


class _Handler(BaseHTTPRequestHandler):
    server: Origin

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        self.server.seen.append((self.command, self.path, dict(self.headers.items())))
        body = f"origin saw {self.command} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def connect_through(proxy: Tinyproxy, target: str, credentials: str | None = None) -> socket.socket:
    """A raw CONNECT to `target` through the proxy; the socket, once the status line is read."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    auth = ""
    if credentials is not None:
        auth = f"Proxy-Authorization: Basic {base64.b64encode(credentials.encode()).decode()}\r\n"
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode())
    return sock


def read_head(sock: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n\r\n", 1)[0].decode("latin-1")


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_plain_http_request_is_proxied_and_logged(http_proxy: Tinyproxy, origin: Origin) -> None:
    url = f"http://127.0.0.1:{origin.port}/callback/ws/endpoint"
    with httpx.Client(proxy=http_proxy.url, timeout=5) as client:
        reply = client.post(url, json={"AppID": "cli_test"})
    assert reply.status_code == 200
    assert reply.text == "origin saw POST /callback/ws/endpoint"
    assert origin.paths() == ["POST /callback/ws/endpoint"]
    assert "Via" not in origin.seen[0][2]  # DisableViaHeader: the origin cannot tell
    assert http_proxy.requests() == [f"POST {url}"]
    assert http_proxy.connects() == []


def test_connect_tunnel_is_opened_and_logged(http_proxy: Tinyproxy, origin: Origin) -> None:
    target = f"127.0.0.1:{origin.port}"  # a random port: no ConnectPort restriction
    with connect_through(http_proxy, target) as sock:
        assert read_head(sock).startswith("HTTP/1.0 200 Connection established")
        sock.sendall(b"GET /through-the-tunnel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_all(sock).endswith(b"origin saw GET /through-the-tunnel")
    assert http_proxy.connects() == [target]
    assert http_proxy.requests() == []  # what goes through a tunnel is not the proxy's to see


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def test_a_websocket_goes_through_the_tunnel(http_proxy: Tinyproxy) -> None:
    """A WebSocket (the Feishu event stream's transport) over a CONNECT tunnel of its own."""

    async def scenario() -> str:
        async with serve(echo, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            tunnel = connect_through(http_proxy, f"127.0.0.1:{port}")
            assert read_head(tunnel).startswith("HTTP/1.0 200 Connection established")
            uri = f"ws://127.0.0.1:{port}/ws"
            async with connect(uri, sock=tunnel, proxy=None) as ws:
                await ws.send("ping through the proxy")
                answer = await asyncio.wait_for(ws.recv(), 5)
            assert http_proxy.connects() == [f"127.0.0.1:{port}"]
            return str(answer)

    assert asyncio.run(scenario()) == "ping through the proxy"


def test_websockets_own_proxy_support_and_tinyproxy(http_proxy: Tinyproxy) -> None:
    """websockets' `proxy=` before 16 refuses tinyproxy's HTTP/1.0 answer to CONNECT
    (python-websockets/websockets#1609, fixed by #1618): the bot cannot hand its proxy
    to such a websockets and expect a tunnel. This fails once the venv's websockets
    takes HTTP/1.0, to say that the workaround can go."""

    async def scenario() -> str:
        async with serve(echo, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            uri = f"ws://127.0.0.1:{port}/ws"
            async with connect(uri, proxy=http_proxy.url, open_timeout=5) as ws:
                await ws.send("hello")
                return str(await asyncio.wait_for(ws.recv(), 5))

    if int(importlib.metadata.version("websockets").split(".")[0]) < 16:
        with pytest.raises(InvalidProxyMessage) as failure:
            asyncio.run(scenario())
        assert "expected HTTP/1.1: HTTP/1.0 200" in str(failure.value.__cause__)
    else:
        assert asyncio.run(scenario()) == "hello"
    assert len(http_proxy.connects()) == 1


def test_basic_auth_lets_the_right_credentials_through(
    http_proxy_auth: Tinyproxy, origin: Origin
) -> None:
    url = f"http://127.0.0.1:{origin.port}/with-credentials"
    proxy_url = http_proxy_auth.url_with(PROXY_USER, PROXY_PASSWORD)
    with httpx.Client(proxy=proxy_url, timeout=5) as client:
        assert client.get(url).status_code == 200
    assert origin.paths() == ["GET /with-credentials"]
    assert "Proxy-Authorization" not in origin.seen[0][2]  # the proxy keeps them to itself
    with connect_through(
        http_proxy_auth, f"127.0.0.1:{origin.port}", f"{PROXY_USER}:{PROXY_PASSWORD}"
    ) as sock:
        assert read_head(sock).startswith("HTTP/1.0 200 Connection established")
    assert http_proxy_auth.connects() == [f"127.0.0.1:{origin.port}"]


def test_basic_auth_refuses_missing_or_wrong_credentials(
    http_proxy_auth: Tinyproxy, origin: Origin
) -> None:
    """None get 407 with a Basic challenge; wrong ones get 401 from tinyproxy 1.11 (not
    407): a client that only knows 407 as "proxy auth failed" misreads the second."""
    url = f"http://127.0.0.1:{origin.port}/x"
    with httpx.Client(proxy=http_proxy_auth.url, timeout=5) as client:
        reply = client.get(url)
    assert reply.status_code == 407
    assert reply.headers["Proxy-Authenticate"].startswith("Basic")
    with httpx.Client(proxy=http_proxy_auth.url_with(PROXY_USER, "wrong"), timeout=5) as client:
        assert client.get(url).status_code == 401
    for credentials in (None, f"{PROXY_USER}:wrong"):
        with connect_through(http_proxy_auth, f"127.0.0.1:{origin.port}", credentials) as sock:
            assert read_head(sock).split()[1] in ("407", "401")
    assert origin.seen == []  # nothing reached the origin


def test_stop_leaves_no_process_port_or_directory(origin: Origin) -> None:
    proxy = Tinyproxy().start()
    assert proxy.proc is not None and proxy.dir is not None
    directory: Path = proxy.dir
    # An open tunnel must not keep it alive.
    with connect_through(proxy, f"127.0.0.1:{origin.port}") as sock:
        assert read_head(sock).startswith("HTTP/1.0 200")
        proxy.stop()
    assert proxy.proc.returncode is not None
    assert not Path(f"/proc/{proxy.proc.pid}").exists()
    assert not _listening(proxy.port)
    assert not directory.exists()
