"""How long to wait before trying a mail or an action again, and when to give up."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from feishu_mailbot.config.settings import Settings

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

    def min_attempts(self) -> int:
        """The fewest attempts retrying takes to span give_up_after: every delay at its
        longest (backoff's jitter only shortens them)."""
        attempts, waited = 1, 0.0
        while waited < self.give_up_after:
            waited += min(self.maximum, self.initial * (2 ** min(attempts - 1, 30)))
            attempts += 1
        return attempts

    def expired(self, age: float, attempts: int) -> bool:
        """Time to give up: older than give_up_after *and* retried for that long.

        The age alone comes from the wall clock, which can jump: a clock set
        forward by a week must not fail every queued mail at its next attempt.
        """
        return age > self.give_up_after and attempts >= self.min_attempts()


def backoff(attempt: int, policy: RetryPolicy, rand: Callable[[], float] = random.random) -> float:
    """Exponential with 'equal jitter': half fixed, half random, so retries spread out."""
    delay = min(policy.maximum, policy.initial * (2 ** min(attempt, 30)))
    return float(delay / 2 + rand() * delay / 2)
