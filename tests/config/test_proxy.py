"""Which proxy a connection to Feishu takes (proxy.py): the config, else the environment
as curl reads it. Pure: no network."""

from __future__ import annotations

import pytest

from feishu_mailbot.config import proxy
from feishu_mailbot.config.settings import FeishuSettings, Secret

FEISHU = FeishuSettings(app_id="cli_x", app_secret=Secret("s"))


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        ("https://open.feishu.cn", {}, None),
        ("https://open.feishu.cn", {"https_proxy": "http://p:3128"}, "p:3128"),
        ("https://open.feishu.cn", {"HTTPS_PROXY": "http://P:8080"}, "p:8080"),
        ("wss://msg-frontier.feishu.cn/ws", {"https_proxy": "http://p:3128"}, "p:3128"),
        ("https://open.feishu.cn", {"http_proxy": "http://p:3128"}, None),
        ("ws://127.0.0.1:9/ws", {"http_proxy": "http://p:3128"}, "p:3128"),
        ("https://open.feishu.cn", {"https_proxy": "http://p:3128", "no_proxy": "feishu.cn"}, None),
        ("https://open.feishu.cn", {"https_proxy": "http://p:1", "no_proxy": ".feishu.cn"}, None),
        ("https://open.feishu.cn", {"https_proxy": "http://p:1", "NO_PROXY": "*"}, None),
        ("https://notfeishu.cn", {"https_proxy": "http://p:1", "no_proxy": "feishu.cn"}, "p:1"),
        ("https://10.1.2.3", {"https_proxy": "http://p:1", "no_proxy": "10.0.0.0/8"}, None),
        ("https://11.1.2.3", {"https_proxy": "http://p:1", "no_proxy": "10.0.0.0/8"}, "p:1"),
        ("https://a.cn:8443", {"https_proxy": "http://p:1", "no_proxy": "a.cn:443"}, "p:1"),
        ("https://a.cn:443", {"https_proxy": "http://p:1", "no_proxy": "a.cn:443"}, None),
        ("https://[::1]:443", {"https_proxy": "http://p:1", "no_proxy": "::1"}, None),
        ("https://[::1]", {"https_proxy": "http://p:1", "no_proxy": "[::1]:443"}, None),
        ("https://[::1]", {"https_proxy": "http://p:1", "no_proxy": "[::1]:8443"}, "p:1"),
        ("https://a.cn", {"https_proxy": "http://p:1", "no_proxy": "a.cn:443"}, None),
        ("https://a.cn", {"https_proxy": "http://p:1", "no_proxy": "a.cn:8443"}, "p:1"),
        ("https://open.feishu.cn", {"https_proxy": "proxy.corp:3128"}, "proxy.corp:3128"),
        ("https://open.feishu.cn", {"ALL_PROXY": "http://all:9"}, "all:9"),
        ("http://127.0.0.1:9", {"all_proxy": "http://all:9", "http_proxy": "http://h:8"}, "h:8"),
    ],
)
def test_the_environment_as_curl_reads_it(
    url: str, env: dict[str, str], expected: str | None
) -> None:
    via = proxy.for_url(url, FEISHU, env)
    assert (via.address if via else None) == expected
    if via is not None:
        assert via.source in env


def test_the_config_wins_over_the_environment() -> None:
    settings = FeishuSettings("cli_x", Secret("s"), proxy=proxy.parse("http://c:1", "feishu.proxy"))
    via = proxy.for_url("https://open.feishu.cn", settings, {"https_proxy": "http://e:2"})
    assert via is not None and via.address == "c:1" and via.source == "feishu.proxy"


def test_a_password_never_shows() -> None:
    via = proxy.parse("http://bob:hunter2@p.example:3128", "https_proxy")
    assert via.shown() == "http://bob@p.example:3128 (from https_proxy)"
    assert "hunter2" in proxy.url_of(via) and "hunter2" not in repr(via)
    settings = FeishuSettings("cli_x", Secret("s"), proxy=via)
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    with pytest.raises(proxy.ProxyError) as info:
        proxy.parse("https://bob:hunter2@p.example:3128", "feishu.proxy")
    assert "hunter2" not in str(info.value)


def test_a_broken_variable_is_named_before_anything_connects() -> None:
    env = {"https_proxy": "socks5://s:1080", "http_proxy": "http://ok:1", "NO_PROXY": "x"}
    [problem] = proxy.environment_errors(env)
    assert problem.startswith("https_proxy: SOCKS proxies are not supported")
    assert proxy.environment_errors({"HTTPS_PROXY": "proxy.corp:3128"}) == []
