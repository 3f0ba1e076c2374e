"""How validation problems are worded: JSON paths, quoted text, and "did you mean" hints."""

from __future__ import annotations

import difflib
import json
import re

import re2

_PLAIN_KEY = re.compile(r'[^\s.\[\]"]+')


def join_path(path: str, key: str | int) -> str:
    """`path` extended by an object key or array index, as in `conditions.logic.and[1].>[0]`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not _PLAIN_KEY.fullmatch(key):
        return f"{path}[{json.dumps(key)}]"
    return f"{path}.{key}" if path else key


def shown(text: str) -> str:
    """`text` quoted for a message, cut short when long."""
    return json.dumps(text if len(text) <= 80 else text[:77] + "...", ensure_ascii=False)


def suggestion(word: str, candidates) -> str:
    """` (did you mean "x"?)` for the candidate closest to `word` (a case-only difference first), or ""."""
    lowered = {candidate.lower(): candidate for candidate in candidates}
    close = [lowered[word.lower()]] if word.lower() in lowered else difflib.get_close_matches(word, list(candidates), 1)
    return f" (did you mean {shown(close[0])}?)" if close else ""


def re2_problem(pattern: str) -> str | None:
    """Why `pattern` is not a valid RE2 pattern, worded for a validation problem; None when it is valid."""
    options = re2.Options()
    options.log_errors = False
    try:
        re2.compile(pattern, options)
    except re2.error as error:
        detail = error.args[0].decode("utf-8", "replace") if error.args and isinstance(error.args[0], bytes) else error
        return f"invalid RE2 pattern: {detail}"
    except UnicodeEncodeError:
        return "invalid RE2 pattern: it is not valid Unicode text"
    return None
