"""How long to wait before trying a mail or an action again, and when to give up."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from feishu_mailbot.settings import Settings

# An item that raises something unexpected (a bug, a stored value a library refuses) is
# tried this many times, with backoff, before it is marked failed: it will not get better.
UNEXPECTED_ATTEMPTS = 5


@dataclass(frozen=True)
class RetryPolicy:
    initial: float = 5.0
    maximum: float = 600.0
    give_up_after: float = 2 * 24 * 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        smtp = settings.smtp
        return cls(smtp.retry_initial, smtp.retry_max, smtp.give_up_after)


def backoff(attempt: int, policy: RetryPolicy, rand: Callable[[], float] = random.random) -> float:
    """Exponential with 'equal jitter': half fixed, half random, so retries spread out."""
    delay = min(policy.maximum, policy.initial * (2 ** min(attempt, 30)))
    return float(delay / 2 + rand() * delay / 2)
