"""Unsubscribe by mail: the List-Unsubscribe address of a rule's mail, and the rules an
unsubscribe request names.

A forward goes once to all its recipients, so its List-Unsubscribe cannot name
one of them: it names the mail's rules, by a token each (an HMAC with a key kept
in the state, so nobody makes one for a rule whose mail they never got), and the
request's From says who leaves. Tokens are per rule, not per mail: they still
work when the mail itself is long gone from the state.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from urllib.parse import quote

from feishu_mailbot.core.addresses import bare

WORD = "unsubscribe"
_TOKEN = 12  # hex digits of a rule's token
_ASKED = re.compile(rf"\b{WORD}\s+([0-9a-f]{{{_TOKEN}}}(?:\.[0-9a-f]{{{_TOKEN}}})*)\b", re.I)


def rule_token(key: bytes, rule: str) -> str:
    mac = hmac.new(key, f"unsubscribe\n{rule}".encode(), hashlib.sha256)
    return mac.hexdigest()[:_TOKEN]


def mailto(address: str, key: bytes, rules: Sequence[str]) -> str:
    """The List-Unsubscribe URI (RFC 2369) of a mail sent for `rules`: a mail to the
    bot's `address` whose subject names them."""
    tokens = ".".join(rule_token(key, r) for r in rules)
    return f"mailto:{address}?subject={quote(f'{WORD} {tokens}')}"


def list_id(key: bytes, rule: str, domain: str) -> str:
    """The List-Id (RFC 2919) of a rule's mail, which mail clients filter on: a
    dot-atom, without its angle brackets."""
    return f"r{rule_token(key, rule)}.{domain}"


def asked(subject: str) -> tuple[str, ...]:
    """The rule tokens an unsubscribe request's subject names (() when it is none):
    the subject List-Unsubscribe gave, also under a "Re:" or a client's prefix."""
    found = _ASKED.search(subject)
    return tuple(found.group(1).lower().split(".")) if found else ()


def rules_named(key: bytes, tokens: Sequence[str], rules: Iterable[str]) -> tuple[str, ...]:
    """The configured `rules` whose tokens are among `tokens`, in config order."""
    wanted = set(tokens)
    return tuple(r for r in rules if rule_token(key, r) in wanted)


def receives(to: Iterable[str], rule: str, left: frozenset[tuple[str, str]]) -> tuple[str, ...]:
    """The addresses of a rule's `to` that still get its mail: `left` holds the (rule,
    address in lower case) pairs of those who unsubscribed."""
    return tuple(a for a in to if (rule, bare(a)) not in left)
