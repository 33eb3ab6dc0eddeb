"""Who left which rule by mail, and the key of the tokens in our mail's addresses.

The daemon holds the pairs in memory for its rules (core/rules.py skips them)
and reads them again every few seconds, so `subscriptions --restore` from
another process takes effect without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass

from feishu_mailbot.state.db import Tx

TOKENS_KEY = "tokens"  # of List-Unsubscribe, Reply-To and envelope sender tokens


@dataclass(frozen=True)
class Left:
    rule: str
    address: str
    at: float


def key(tx: Tx, fresh: bytes) -> bytes:
    """The state's key of the tokens in our mail's addresses: `fresh` if there was none
    yet (the first instance to ask makes it; every later one reads that one)."""
    tx.execute(
        "INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (TOKENS_KEY, fresh.hex()),
    )
    row = tx.execute("SELECT value FROM secrets WHERE name = ?", (TOKENS_KEY,)).fetchone()
    return bytes.fromhex(str(row[0]))


def leave(tx: Tx, rule: str, address: str, now: float) -> bool:
    """Whether this is news: `address` had not left `rule` before."""
    cur = tx.execute(
        "INSERT INTO unsubscribed (rule, address, left_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        (rule, address.lower(), now),
    )
    return cur.rowcount == 1


def listed(tx: Tx) -> list[Left]:
    rows = tx.execute(
        "SELECT rule, address, left_at FROM unsubscribed ORDER BY address, rule"
    ).fetchall()
    return [Left(str(r[0]), str(r[1]), float(r[2])) for r in rows]


def pairs(tx: Tx) -> frozenset[tuple[str, str]]:
    """(rule, address) of everyone who left, for core.rules."""
    return frozenset(
        (str(r), str(a)) for r, a in tx.execute("SELECT rule, address FROM unsubscribed")
    )


def restore(tx: Tx, address: str, rule: str | None) -> list[str]:
    """`address` gets `rule`'s mail again (every rule's, when None): the rules it had
    left."""
    where, args = "address = ?", [address.lower()]
    if rule is not None:
        where, args = where + " AND rule = ?", [*args, rule]
    rows = tx.execute(f"SELECT rule FROM unsubscribed WHERE {where} ORDER BY rule", args).fetchall()
    tx.execute(f"DELETE FROM unsubscribed WHERE {where}", args)
    return [str(r[0]) for r in rows]
