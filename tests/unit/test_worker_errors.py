"""Every exception the worker raises on purpose belongs to one family."""

from __future__ import annotations

import pytest

from worker.channels import DeliveryFailed
from worker.cli import UsageError
from worker.errors import CommandFailed, WorkerError
from worker.runner import BadRunRequest, RuleNotFound, RuleNotScheduled
from worker.settings import ConfigurationError
from worker.supervisor import AlreadyRunning


@pytest.mark.parametrize("error", [CommandFailed, UsageError, ConfigurationError, AlreadyRunning, DeliveryFailed,
                                   RuleNotFound, RuleNotScheduled, BadRunRequest])
def test_each_worker_exception_is_a_worker_error(error):
    assert issubclass(error, WorkerError)


def test_a_scheduled_run_of_a_disabled_rule_is_a_rule_not_found():
    assert issubclass(RuleNotScheduled, RuleNotFound)
