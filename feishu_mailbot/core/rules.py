"""Which configured rules a message triggers, and who gets which email.

The central promise is "one address, at most one email per message": when
several rules match and their recipient lists overlap, `plan` merges them so a
person on two lists is not mailed twice, while people whose rule sets differ
still get a mail that names exactly the rules that concerned them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from feishu_mailbot.config.settings import Rule
from feishu_mailbot.core.model import Delivery, Message
from feishu_mailbot.core.text import fold
from feishu_mailbot.core.unsubscribe import receives

# A regex runs on the ack path, so it is bounded: at most this long per rule and message,
# on at most this much text. Past the limit the rule counts as not matching.
RULE_TIMEOUT_MS = 25
MATCH_CHARS = 20_000


@lru_cache(maxsize=1024)
def _folded_keywords(keywords: tuple[str, ...]) -> tuple[str, ...]:
    """Folding is the costly part of matching: do it once per configured keyword list."""
    return tuple(k for k in (fold(k) for k in keywords) if k)


def match(
    rule: Rule, msg: Message, folded_text: str | None = None, slow: set[str] | None = None
) -> bool:
    """True if `msg` is in the rule's chats and hits any keyword or the regex.

    A rule with neither keywords nor regex matches every message in scope:
    that is how an archive address ("send everything") is expressed.
    `folded_text` is `fold(msg.text)` when the caller has it already. A regex
    that runs out of time counts as no match, and its rule's name goes into `slow`.
    """
    if rule.chats and msg.chat_id not in rule.chats:
        return False
    keywords = _folded_keywords(rule.keywords)
    if not keywords and rule.regex is None:
        return True
    if keywords:
        folded = fold(msg.text) if folded_text is None else folded_text
        if any(k in folded for k in keywords):
            return True
    if rule.regex is None:
        return False
    try:
        found = rule.regex.search(msg.text[:MATCH_CHARS], timeout=RULE_TIMEOUT_MS / 1000)
    except TimeoutError:
        if slow is not None:
            slow.add(rule.name)
        return False
    return found is not None


def plan(
    rules: Sequence[Rule],
    msg: Message,
    slow: set[str] | None = None,
    folded: str | None = None,
    left: frozenset[tuple[str, str]] = frozenset(),
) -> tuple[Delivery, ...]:
    """Group recipients by the exact set of matching rules that name them.

    Addresses are compared case-insensitively; the spelling of the first
    occurrence in config order is the one used.  Output is ordered by the
    groups' rule positions, so the same config and message always give the
    same plan (the outbox relies on that for idempotent retries). `folded` is
    fold(msg.text) when the caller has it already (folding is the costly part).
    `left` holds the (rule, address) pairs of those who unsubscribed from a rule.
    """
    if folded is None:
        folded = fold(msg.text)
    matched = [
        (i, rule)
        for i, rule in enumerate(rules)
        if rule.batch is None and match(rule, msg, folded, slow)
    ]
    spelling: dict[str, str] = {}
    rules_for: dict[str, list[int]] = {}
    for index, rule in matched:
        for address in receives(rule.to, rule.name, left) if left else rule.to:
            key = address.strip().casefold()
            if not key:
                continue
            spelling.setdefault(key, address.strip())
            indices = rules_for.setdefault(key, [])
            if not indices or indices[-1] != index:
                indices.append(index)
    groups: dict[tuple[int, ...], list[str]] = {}
    for key, indices in rules_for.items():
        groups.setdefault(tuple(indices), []).append(spelling[key])
    deliveries: list[Delivery] = []
    for group in sorted(groups):
        group_rules = [rules[i] for i in group]
        deliveries.append(
            Delivery(
                recipients=tuple(sorted(groups[group], key=lambda a: (a.casefold(), a))),
                rules=tuple(r.name for r in group_rules),
                subject_template=group_rules[0].subject,
                confirm=any(r.confirm for r in group_rules),
                notify_recall=any(r.notify_recall for r in group_rules),
            )
        )
    return tuple(deliveries)


def batched(
    rules: Sequence[Rule],
    msg: Message,
    slow: set[str] | None = None,
    folded: str | None = None,
) -> tuple[str, ...]:
    """The batched rules (`batch:`/`daily:`) the message is collected for, by name."""
    batching = [rule for rule in rules if rule.batch is not None]
    if not batching:
        return ()
    if folded is None:
        folded = fold(msg.text)
    return tuple(rule.name for rule in batching if match(rule, msg, folded, slow))


__all__ = [
    "Delivery",
    "match",
    "plan",
]
