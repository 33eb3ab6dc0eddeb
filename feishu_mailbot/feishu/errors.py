"""What a failed Feishu call is, and which failures are about the message rather than the call."""

from __future__ import annotations

from feishu_mailbot.core.hops import Hop


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
