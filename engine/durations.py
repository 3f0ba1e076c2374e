"""Durations written in rule documents, such as `conditions.recheck_after`: "24h", "90m", "1d12h", "30s", "1w".

A duration is one or more parts, each a whole number and a unit, the units in the order w (weeks), d (days),
h (hours), m (minutes), s (seconds), each at most once, with no spaces; or `0`. Silences and the freshness settings
(`conditions.data_delay`, `max_wait`) take the same durations.
"""

from __future__ import annotations

import re
from datetime import timedelta

from engine.problem_text import shown

_DURATION = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNITS = ("weeks", "days", "hours", "minutes", "seconds")
DURATION_PATTERN = r"^(0|(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?)$"


def parse_duration(text: str) -> timedelta:
    """The timedelta that `text` writes; raises ValueError saying what is wrong when it is not a duration."""
    if text == "0":
        return timedelta(0)
    found = _DURATION.fullmatch(text) if text else None
    if found is None:
        raise ValueError(f"{shown(text)} is not a duration: write a number and a unit, w, d, h, m or s, "
                         'as in "24h", "90m" or "1d12h"')
    try:
        return timedelta(**{unit: int(number) for unit, number in zip(_UNITS, found.groups()) if number})
    except (OverflowError, ValueError):  # past timedelta's range, or digits past int()'s limit
        raise ValueError(f"{shown(text)} is too long a duration") from None
