"""A configured recipient as the address mail servers and From headers use.

`rules[].to` and the other address keys may be written `Li Si <lisi@example.com>`; a
reply's From, a delivery report's recipient and an unsubscribe request name the bare
address. Compared in lower case: the domain is case-insensitive, and no provider here
treats the local part's case as another mailbox.
"""

from __future__ import annotations

from collections.abc import Iterable
from email.utils import parseaddr


def bare(address: str) -> str:
    """`lisi@example.com` of `Li Si <LiSi@Example.com>` (or of the bare address)."""
    return (parseaddr(address)[1] or address).strip().lower()


def bare_set(addresses: Iterable[str]) -> frozenset[str]:
    return frozenset(bare(a) for a in addresses)
