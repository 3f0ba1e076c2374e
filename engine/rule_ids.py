"""How a rule id given as text (by a person, a task argument or a file) is read."""

from __future__ import annotations

import uuid
from typing import Any


def canonical_rule_id(text: Any) -> str:
    """The canonical form (lower-case, hyphenated) of the UUID `text` writes; raises ValueError when `text` is not
    one (including when it is not a string)."""
    try:
        return str(uuid.UUID(text))
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"not a rule id (a UUID): {text!r}") from None
