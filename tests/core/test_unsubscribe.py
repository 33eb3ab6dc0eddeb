"""List-Unsubscribe tokens and the requests that carry them (core/unsubscribe.py)."""

from __future__ import annotations

from urllib.parse import unquote

from feishu_mailbot.core.unsubscribe import asked, mailto, receives, rule_token, rules_named

KEY = b"k" * 32


def test_a_request_names_the_rules_of_the_mail_whose_address_it_used() -> None:
    uri = mailto("bot@example.com", KEY, ("值班", "db"))
    subject = unquote(uri.partition("?subject=")[2])
    assert subject == f"unsubscribe {rule_token(KEY, '值班')}.{rule_token(KEY, 'db')}"
    for sent in (subject, f"Re: {subject}", f"[EXT] {subject.upper()}"):
        assert rules_named(KEY, asked(sent), ["oncall", "db", "值班"]) == ("db", "值班")


def test_tokens_made_without_the_key_or_for_another_rule_name_nothing() -> None:
    forged = unquote(mailto("bot@example.com", b"x" * 32, ("oncall",)).partition("=")[2])
    assert asked(forged) and rules_named(KEY, asked(forged), ["oncall"]) == ()
    assert asked("please unsubscribe me") == ()
    assert asked("unsubscribe 12345") == ()  # too short to be a token


def test_who_left_is_matched_by_the_bare_address_however_the_config_writes_it() -> None:
    to = ("李四 <LiSi@Example.com>", "oncall@example.com")
    left = frozenset({("oncall", "lisi@example.com")})
    assert receives(to, "oncall", left) == ("oncall@example.com",)
    assert receives(to, "db", left) == to
