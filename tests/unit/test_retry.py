"""worker/retry.py and the task policies of worker/tasks.py, without servers."""

from __future__ import annotations

import random

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from storage.errors import DatabaseUnavailable, QueryFailed
from worker.retry import RetryPolicy
from worker.runner import DEFAULT_LEASE_SECONDS, BadRunRequest, RuleNotFound
from worker.tasks import HELD_RUN_RETRY, RUN_RETRY


def test_a_policy_allows_tries_up_to_its_maximum():
    policy = RetryPolicy(max_attempts=3, backoff_min=1, backoff_max=10)
    assert [policy.allows(n) for n in (1, 2, 3, 4)] == [True, True, False, False]


def test_the_backoff_doubles_up_to_its_cap_with_jitter_on_the_upper_half():
    policy = RetryPolicy(max_attempts=10, backoff_min=5, backoff_max=60)
    rng = random.Random(7)
    for attempts, ceiling in ((1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (9, 60)):
        delays = [policy.delay(attempts, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not one fixed wait


@pytest.mark.parametrize("error", [DatabaseUnavailable("PostgreSQL at x: connecting failed"),
                                   SoftTimeLimitExceeded()])
def test_a_run_retries_a_server_that_is_down_or_hung_before_the_claim(error):
    assert RUN_RETRY.should_retry(error, 1)
    assert RUN_RETRY.should_retry(error, RUN_RETRY.max_attempts - 1)
    assert not RUN_RETRY.should_retry(error, RUN_RETRY.max_attempts)


@pytest.mark.parametrize("error", [RuleNotFound("no rule"), BadRunRequest("no user"), QueryFailed("syntax"),
                                   ValueError("a bug")])
def test_a_run_never_retries_what_another_try_cannot_mend(error):
    assert not RUN_RETRY.should_retry(error, 1)


def test_a_run_held_elsewhere_is_waited_for_past_a_lease_and_for_no_error():
    rng = random.Random(3)
    for _ in range(50):
        total_wait = sum(HELD_RUN_RETRY.delay(n, rng) for n in range(1, HELD_RUN_RETRY.max_attempts))
        assert total_wait > DEFAULT_LEASE_SECONDS
    assert not HELD_RUN_RETRY.should_retry(DatabaseUnavailable("down"), 1)
