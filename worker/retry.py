"""Retry policies as data: how often a task is tried, how long it waits between tries, what never retries."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """At most `max_attempts` tries; the wait before try n+1 is min(backoff_max, backoff_min * 2**(n-1)), jittered."""

    max_attempts: int
    backoff_min: float
    backoff_max: float
    never_retry: tuple[type[BaseException], ...] = ()

    def allows(self, attempts_made: int) -> bool:
        """True while fewer than `max_attempts` tries have been made."""
        return attempts_made < self.max_attempts

    def should_retry(self, error: BaseException, attempts_made: int) -> bool:
        """True when `error`, after `attempts_made` tries, deserves another try."""
        return self.allows(attempts_made) and not isinstance(error, self.never_retry)

    def delay(self, attempts_made: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next try: capped exponential backoff with full jitter on its upper half."""
        ceiling = min(self.backoff_max, self.backoff_min * 2 ** max(0, attempts_made - 1))
        return (rng or random).uniform(ceiling / 2, ceiling)
