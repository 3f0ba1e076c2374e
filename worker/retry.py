"""Retry policies as data: how often a task is tried, how long it waits between tries, what is worth another try.

`retry_later` is the one place a task applies a policy; `retrying` applies it to the errors of a block."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from celery import Task
from celery.exceptions import Retry


@dataclass(frozen=True)
class RetryPolicy:
    """At most `max_attempts` tries; the wait before try n+1 is min(backoff_max, backoff_min * 2**(n-1)), jittered.

    `retry_on` lists the errors worth another try; any other error ends the task at once."""

    max_attempts: int
    backoff_min: float
    backoff_max: float
    retry_on: tuple[type[BaseException], ...] = ()

    def allows(self, attempts_made: int) -> bool:
        """True while fewer than `max_attempts` tries have been made."""
        return attempts_made < self.max_attempts

    def should_retry(self, error: BaseException, attempts_made: int) -> bool:
        """True when `error`, after `attempts_made` tries, deserves another try."""
        return isinstance(error, self.retry_on) and self.allows(attempts_made)

    def delay(self, attempts_made: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next try: capped exponential backoff with full jitter on its upper half."""
        ceiling = min(self.backoff_max, self.backoff_min * 2 ** max(0, attempts_made - 1))
        return (rng or random).uniform(ceiling / 2, ceiling)


def retry_later(task: Task, policy: RetryPolicy, error: BaseException | None = None) -> Retry | None:
    """Sends the next try of the running `task` after the policy's delay and returns the Retry for the task to raise;
    None (nothing sent) when the policy allows no more tries or does not retry `error`.

    Without `error` the task asks to be tried again for a reason of its own (its run is held elsewhere)."""
    attempts = task.request.retries + 1
    wanted = policy.allows(attempts) if error is None else policy.should_retry(error, attempts)
    if not wanted:
        return None
    return task.retry(exc=error, countdown=policy.delay(attempts), max_retries=None, throw=False)


@contextmanager
def retrying(task: Task, policy: RetryPolicy) -> Iterator[None]:
    """Turns an error raised in the block into the next try of `task` when `policy` retries it; else re-raises it."""
    try:
        yield
    except Exception as error:
        retry = retry_later(task, policy, error)
        if retry is None:
            raise
        raise retry from None
