"""The few REST calls we need (tenant token, names, resources, replies), over httpx
through the one `Route`; the SDK's generated clients cost seconds of import (docs/design.md).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from feishu_mailbot.config.settings import FeishuSettings
from feishu_mailbot.core.model import Download
from feishu_mailbot.feishu.errors import SCOPE_ERRORS, FeishuError, HopFailed
from feishu_mailbot.feishu.route import Route

log = logging.getLogger(__name__)
ERROR_BODY_BYTES = 65536  # of a JSON error reply to a resource download


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
        files: dict[str, tuple[str, bytes, str]] | None = None,
        data: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        for attempt in (0, 1):
            headers = {}
            if auth:
                headers["Authorization"] = f"Bearer {await self.tenant_token(refresh=attempt == 1)}"
            try:
                response = await self._http.request(
                    method, path, json=json_body, params=params, headers=headers,
                    files=files, data=data,
                )  # fmt: skip
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

    async def reply_text(
        self, message_id: str, text: str, *, uuid: str | None = None, in_thread: bool = False
    ) -> None:
        """回复消息 with a text message; see `reply`."""
        await self.reply(message_id, "text", {"text": text}, uuid=uuid, in_thread=in_thread)

    async def reply(
        self,
        message_id: str,
        msg_type: str,
        content: dict[str, Any],
        *,
        uuid: str | None = None,
        in_thread: bool = False,
    ) -> None:
        """回复消息: `in_thread` posts into the message's thread (话题), `uuid` makes a
        second call with it within an hour a no-op at Feishu."""
        body: dict[str, Any] = {
            "msg_type": msg_type,
            "content": json.dumps(content, ensure_ascii=False),
        }
        if in_thread:
            body["reply_in_thread"] = True
        if uuid is not None:
            body["uuid"] = uuid
        await self._json(
            "POST",
            f"/open-apis/im/v1/messages/{_segment(message_id)}/reply",
            "reply",
            json_body=body,
        )

    async def scopes(self) -> dict[str, bool]:
        """查询租户授权状态 (GET /open-apis/application/v6/scopes, no scope needed): the
        scopes the app asks for, and whether the tenant granted each."""
        payload = await self._json("GET", "/open-apis/application/v6/scopes", "scopes")
        listed = (payload.get("data") or {}).get("scopes") or []
        return {
            str(s.get("scope_name")): s.get("grant_status") == 1
            for s in listed
            if isinstance(s, dict)
        }

    async def upload_image(self, name: str, content_type: str, data: bytes) -> str:
        """上传图片 (POST /open-apis/im/v1/images, image_type=message): its image_key,
        for a `post` message. Feishu takes up to 10 MB (core.reply.IMAGE_LIMIT)."""
        payload = await self._json(
            "POST",
            "/open-apis/im/v1/images",
            "image upload",
            files={"image": (name, data, content_type)},
            data={"image_type": "message"},
        )
        key = (payload.get("data") or {}).get("image_key")
        if not isinstance(key, str) or not key:
            raise FeishuError("image upload", "no image_key in the response")
        return key


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
