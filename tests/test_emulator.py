"""The Feishu emulator speaks the protocol the real ``lark_oapi.ws.Client`` expects.

The SDK tests run the unmodified SDK client in a subprocess (it creates an event loop at import
time, and importing ``lark_oapi`` costs seconds, so one client is shared by the module). The
fault-mode tests drive the emulator with a bare ``websockets`` client and the SDK's ``Frame``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.connection import Connection

try:
    from tests.feishu_emulator import FeishuEmulator, Frame
except ImportError:  # pytest run without the repository root on sys.path
    from feishu_emulator import FeishuEmulator, Frame  # type: ignore[no-redef,import-not-found]

SDK_CLIENT = r"""
import json
import sys

import lark_oapi as lark


def on_message(data):
    m = data.event.message
    info = {"event_id": data.header.event_id, "message_id": m.message_id,
            "chat_id": m.chat_id, "message_type": m.message_type, "content": m.content,
            "sender": data.event.sender.sender_id.open_id,
            "mentions": [(x.key, x.id.open_id, x.name) for x in (m.mentions or [])]}
    print("MSG " + json.dumps(info, ensure_ascii=False), flush=True)


handler = (lark.EventDispatcherHandler.builder("", "")
           .register_p2_im_message_receive_v1(on_message).build())
client = lark.ws.Client(sys.argv[1], sys.argv[2], event_handler=handler,
                        domain=sys.argv[3], log_level=lark.LogLevel.DEBUG)
client.start()
"""


class SdkClient:
    """The real lark_oapi.ws.Client in a subprocess; its stdout lines are collected."""

    def __init__(self, script: Path, emulator: FeishuEmulator) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        self.proc = subprocess.Popen(
            [sys.executable, str(script), emulator.app_id, emulator.app_secret, emulator.base_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
            encoding="utf-8",
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)

    def wait_line(self, predicate: Callable[[str], bool], timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if predicate(line):
                    return line
            seen = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = "\n".join(self.lines[-20:])
                raise AssertionError(f"no matching client output within {timeout}s:\n{tail}")
            with contextlib.suppress(queue.Empty):
                self._new.get(timeout=remaining)

    def wait_message(self, message_id: str, timeout: float = 5.0) -> dict[str, Any]:
        line = self.wait_line(lambda s: s.startswith("MSG ") and message_id in s, timeout)
        info: dict[str, Any] = json.loads(line[4:])
        return info

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._pump_thread.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def emulator() -> Iterator[FeishuEmulator]:
    with FeishuEmulator(ping_interval=1) as emu:
        yield emu
    assert emu.errors == []


@pytest.fixture(scope="module")
def sdk(emulator: FeishuEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SdkClient]:
    script = tmp_path_factory.mktemp("sdk") / "sdk_client.py"
    script.write_text(SDK_CLIENT, encoding="utf-8")
    client = SdkClient(script, emulator)
    try:
        emulator.wait_connected(timeout=20)
        yield client
    finally:
        client.stop()


# ---------------------------------------------------------------------- the real SDK client


def test_sdk_connects_and_gets_pongs(emulator: FeishuEmulator, sdk: SdkClient) -> None:
    assert emulator.endpoint_count >= 1
    assert emulator.connect_count >= 1
    emulator.wait_pings(1, timeout=5)
    assert emulator.last_ping_at is not None
    # The SDK logs "receive pong" at DEBUG after parsing the pong frame's ClientConfig.
    sdk.wait_line(lambda s: "receive pong" in s, timeout=5)
    assert emulator.pong_count >= 1


def test_sdk_receives_chinese_text_and_acks_200(emulator: FeishuEmulator, sdk: SdkClient) -> None:
    emulator.register_user("ou_bot", "邮件机器人")
    text = "@_user_1 今天的日报：修复了登录故障 ✅ — «紧急» 已处理"
    event = emulator.push_text("oc_team", "ou_alice", text, mentions=["ou_bot"])
    message_id = event["event"]["message"]["message_id"]
    got = sdk.wait_message(message_id)
    assert got["event_id"] == event["header"]["event_id"]
    assert got["chat_id"] == "oc_team"
    assert got["message_type"] == "text"
    assert got["sender"] == "ou_alice"
    assert got["mentions"] == [["@_user_1", "ou_bot", "邮件机器人"]]
    assert json.loads(got["content"]) == {"text": text}
    ack = emulator.wait_ack(event)
    assert ack.code == 200
    assert 0 <= ack.ms < 3000 and not ack.late
    assert emulator.ack_codes[ack.frame_id] == 200
    assert event not in emulator.unacked_events()


def test_sdk_reassembles_split_payload(emulator: FeishuEmulator, sdk: SdkClient) -> None:
    text = "分包测试：" + "日报内容，" * 200
    event = emulator.push_text("oc_team", "ou_bob", text, split=3)
    frames = [f for f in emulator.data_frames if f["event_id"] == event["header"]["event_id"]]
    assert [(f["sum"], f["seq"]) for f in frames] == [(3, 0), (3, 1), (3, 2)]
    assert len({f["message_id"] for f in frames}) == 1
    got = sdk.wait_message(event["event"]["message"]["message_id"])
    assert json.loads(got["content"]) == {"text": text}
    assert emulator.wait_ack(event).code == 200


def test_sdk_answers_unhandled_event_with_500(emulator: FeishuEmulator, sdk: SdkClient) -> None:
    # No handler is registered for recalls: the SDK answers "processor not found" with 500.
    event = emulator.push_recall("om_gone", "oc_team")
    assert emulator.wait_ack(event).code == 500


def test_sdk_reconnects_after_drop(emulator: FeishuEmulator, sdk: SdkClient) -> None:
    before = emulator.connect_count
    emulator.drop_connections()
    emulator.wait_connected(timeout=5, total=before + 1)
    event = emulator.push_text("oc_team", "ou_alice", "重连之后")
    sdk.wait_message(event["event"]["message"]["message_id"])
    assert emulator.wait_ack(event).code == 200


# ---------------------------------------------------------------------- bare protocol client


def _post(url: str, body: dict[str, Any], token: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode()
    return _request(urllib.request.Request(url, data=data, headers=headers))


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return _request(urllib.request.Request(url, headers=headers))


def _request(req: urllib.request.Request) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _frame(data: bytes) -> tuple[Any, dict[str, str]]:
    frame = Frame()
    frame.ParseFromString(data)
    return frame, {h.key: h.value for h in frame.headers}


def _ping(service_id: int) -> bytes:
    frame = Frame()
    frame.SeqID = frame.LogID = 0
    frame.service = service_id
    frame.method = 0
    header = frame.headers.add()
    header.key, header.value = "type", "ping"
    return bytes(frame.SerializeToString())


def _ack(frame: Any, code: int = 200) -> bytes:
    frame.payload = json.dumps({"code": code}).encode()
    return bytes(frame.SerializeToString())


async def _open(emu: FeishuEmulator) -> ClientConnection:
    status, body = await asyncio.to_thread(
        _post,
        emu.base_url + "/callback/ws/endpoint",
        {"AppID": emu.app_id, "AppSecret": emu.app_secret},
    )
    assert status == 200 and body["code"] == 0, body
    return await connect(body["data"]["URL"], proxy=None, close_timeout=0.2)


async def _recv(ws: Connection, timeout: float) -> bytes | None:
    try:
        data = await asyncio.wait_for(ws.recv(), timeout)
    except TimeoutError:
        return None
    assert isinstance(data, bytes)
    return data


async def _next_frame(ws: Connection, timeout: float = 2.0) -> tuple[Any, dict[str, str]]:
    data = await _recv(ws, timeout)
    assert data is not None, "no frame received"
    return _frame(data)


def test_endpoint_and_rest_api() -> None:
    with FeishuEmulator() as emu:
        url = emu.base_url
        status, body = _post(url + "/callback/ws/endpoint", {"AppID": "cli_test", "AppSecret": "x"})
        assert (status, body["code"]) == (200, 10003)
        _, body = _post(
            url + "/callback/ws/endpoint", {"AppID": "cli_test", "AppSecret": "test-secret"}
        )
        assert body["data"]["ClientConfig"] == {
            "ReconnectCount": -1,
            "ReconnectInterval": 1,
            "ReconnectNonce": 0,
            "PingInterval": 120,
        }
        token_url = url + "/open-apis/auth/v3/tenant_access_token/internal"
        assert _post(token_url, {"app_id": "cli_test", "app_secret": "x"})[1]["code"] == 10014
        _, body = _post(token_url, {"app_id": "cli_test", "app_secret": "test-secret"})
        token = body["tenant_access_token"]
        assert body["expire"] == 7200 and token.startswith("t-")

        assert _get(url + "/open-apis/im/v1/chats/oc_1") == (
            400,
            {"code": 99991663, "msg": "Invalid access token"},
        )
        emu.register_chat("oc_1", "研发群")
        emu.register_user("ou_1", "张三")
        chat = _get(url + "/open-apis/im/v1/chats/oc_1", token)[1]
        assert chat["data"]["name"] == "研发群"
        user = _get(url + "/open-apis/contact/v3/users/ou_1?user_id_type=open_id", token)[1]
        assert user["data"]["user"]["name"] == "张三"
        assert _get(url + "/open-apis/contact/v3/users/ou_x", token)[1]["code"] == 41050

        emu.register_resource("file_1", b"%PDF-1", "application/pdf", "周报.pdf")
        req = urllib.request.Request(
            url + "/open-apis/im/v1/messages/om_1/resources/file_1?type=file",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.read() == b"%PDF-1"
            assert resp.headers["Content-Type"] == "application/pdf"
            assert "filename*=UTF-8''%E5%91%A8%E6%8A%A5.pdf" in resp.headers["Content-Disposition"]
        missing = url + "/open-apis/im/v1/messages/om_1/resources/nope?type=image"
        assert _get(missing, token)[0] == 404

        event = emu.push_text("oc_1", "ou_1", "hi")  # queued: nobody is connected
        message_id = event["event"]["message"]["message_id"]
        content = json.dumps({"text": "收到"}, ensure_ascii=False)
        reply_url = f"{url}/open-apis/im/v1/messages/{message_id}/reply"
        _, body = _post(reply_url, {"msg_type": "text", "content": content}, token)
        assert body["data"]["message_id"] == "om_reply_1"
        send_url = url + "/open-apis/im/v1/messages?receive_id_type=chat_id"
        send = {"receive_id": "oc_1", "msg_type": "text", "content": content}
        assert _post(send_url, send, token)[1]["data"]["message_id"] == "om_reply_2"
        reaction = {"reaction_type": {"emoji_type": "THUMBSUP"}}
        assert _post(reply_url.replace("reply", "reactions"), reaction, token)[1]["code"] == 0
        assert [(m["kind"], m["chat_id"], m["content"]) for m in emu.sent_messages] == [
            ("reply", "oc_1", {"text": "收到"}),
            ("send", "oc_1", {"text": "收到"}),
        ]
        assert emu.sent_messages[0]["reply_to"] == message_id
        assert emu.reactions[0]["emoji_type"] == "THUMBSUP"

        emu.expire_tokens()
        assert _get(url + "/open-apis/im/v1/chats/oc_1", token)[1]["code"] == 99991677
        assert emu.errors == []


def test_repush_until_acked() -> None:
    async def scenario(emu: FeishuEmulator) -> None:
        async with await _open(emu) as ws:
            event = await asyncio.to_thread(emu.push_text, "oc_1", "ou_1", "重推")
            first, h1 = await _next_frame(ws)
            second, h2 = await _next_frame(ws)
            assert h1["message_id"] == h2["message_id"] and second.payload == first.payload
            assert json.loads(second.payload)["header"] == event["header"]
            await ws.send(_ack(second))
            ack = await asyncio.to_thread(emu.wait_ack, event, 2)
            assert ack.code == 200
            assert await _recv(ws, 0.5) is None  # acked: no third push

    with FeishuEmulator(repush_after=0.2) as emu:
        asyncio.run(scenario(emu))
        assert emu.errors == []


def test_stall_heartbeat_and_go_silent() -> None:
    async def scenario(emu: FeishuEmulator) -> None:
        async with await _open(emu) as ws:
            await ws.send(_ping(1))
            pong, headers = await _next_frame(ws)
            assert (pong.method, headers["type"]) == (0, "pong")
            assert json.loads(pong.payload)["PingInterval"] == 120

            emu.stall_heartbeat()
            await ws.send(_ping(1))
            assert await _recv(ws, 0.3) is None
            assert emu.ping_count == 2 and emu.pong_count == 1
            await asyncio.to_thread(emu.push_text, "oc_1", "ou_1", "still delivered")
            _, headers = await _next_frame(ws)
            assert headers["type"] == "event"
            emu.stall_heartbeat(False)

            await asyncio.to_thread(emu.go_silent)
            event = await asyncio.to_thread(emu.push_text, "oc_1", "ou_1", "held")
            await ws.send(_ping(1))
            assert await _recv(ws, 0.3) is None
            async with await _open(emu) as ws2:  # a fresh connection gets the held event
                frame, headers = await _next_frame(ws2)
                assert json.loads(frame.payload)["header"] == event["header"]
            assert ws.state.name == "OPEN"

    with FeishuEmulator() as emu:
        asyncio.run(scenario(emu))
        assert emu.errors == []


def test_refuse_and_slow() -> None:
    with FeishuEmulator() as emu:
        endpoint = emu.base_url + "/callback/ws/endpoint"
        creds = {"AppID": "cli_test", "AppSecret": "test-secret"}
        emu.refuse_connections()
        with pytest.raises(urllib.error.URLError) as info:
            _post(endpoint, creds)
        assert isinstance(info.value.reason, ConnectionRefusedError)
        emu.refuse_connections(False)
        assert _post(endpoint, creds)[1]["code"] == 0

        emu.refuse_connections(mode="http")
        assert _post(endpoint, creds)[0] == 503
        emu.refuse_connections(False)

        emu.set_slow(0.3)
        start = time.monotonic()
        assert _post(endpoint, creds)[1]["code"] == 0
        assert time.monotonic() - start >= 0.3
        emu.set_slow(0)
        assert emu.errors == []
