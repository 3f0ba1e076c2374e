"""Naming conventions: the documents kept in `organizations.settings` under `naming_conventions.<name>`, their
validation with JSON paths, their JSON Schema, and where each token of a name stands.

A convention (the README's "Naming conventions" has a worked example):

    {"delimiter": "_", "min_tokens": 4, "max_tokens": 6, "tokens": [
      {"name": "market", "values": ["US", "EU", "UK"]},
      {"name": "dsp", "equals": "dsp_type"},
      {"name": "objective", "values": ["Brand", "Perf"], "ignore_case": false},
      {"name": "period", "pattern": "^Q[1-4]$"},
      {"name": "month", "date": "YYYYMM", "optional": true},
      {"name": "label", "free": true}]}

A name is split at every delimiter; its token count must lie between `min_tokens` and `max_tokens` (by default
the number of required tokens, at least 1, and the number of all tokens). A name with fewer tokens than the
convention leaves out its optional tokens, the last ones first; when `min_tokens` allows still fewer, the last
tokens are missing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


from engine.errors import RuleValidationError, ValidationProblem
from engine.problem_text import join_path as _join
from engine.problem_text import re2_problem
from engine.problem_text import shown as _shown
from engine.problem_text import suggestion as _suggestion

MAX_TOKENS = 20
MAX_VALUES = 1000
MAX_TEXT_LENGTH = 255
MAX_DELIMITER_LENGTH = 8
CROSS_FIELDS = ("dsp_type", "advertiser_id")
TOKEN_KINDS = ("values", "pattern", "date", "free", "equals")
_TOKEN_KEYS = frozenset({"name", "optional", "ignore_case", *TOKEN_KINDS})
_CONVENTION_KEYS = frozenset({"delimiter", "min_tokens", "max_tokens", "tokens"})
# A date format: the fields YYYY or YY, MM and DD, each at most once, optionally separated by "-", "/" or ".".
_DATE_PIECE = re.compile(r"YYYY|YY|MM|DD|[-/.]")
DATE_FORMAT_EXAMPLES = ("YYYY", "YYYYMM", "YYYY-MM", "YYYYMMDD", "YYYY-MM-DD", "YYMMDD", "DD.MM.YYYY", "MM/DD/YYYY")


@dataclass(frozen=True)
class DateFormat:
    """A date format: its text, the RE2 pattern of its shape, and the 0-based (offset, width) of each field."""

    text: str
    shape: str
    year: tuple[int, int]
    month: tuple[int, int] | None
    day: tuple[int, int] | None


@dataclass(frozen=True)
class Token:
    """One token of a convention: its name, whether it may be left out, and its check (`kind` is one of
    TOKEN_KINDS; `values` with `ignore_case`, `pattern`, `date` or `equals` hold what that kind needs)."""

    name: str
    kind: str
    optional: bool = False
    values: tuple[str, ...] = ()
    ignore_case: bool = False
    pattern: str | None = None
    date: DateFormat | None = None
    equals: str | None = None


@dataclass(frozen=True)
class Convention:
    """A validated naming convention."""

    name: str
    delimiter: str
    min_tokens: int
    max_tokens: int
    tokens: tuple[Token, ...]

    @property
    def cross_fields(self) -> tuple[str, ...]:
        """The campaign fields its `equals` tokens compare with, in CROSS_FIELDS order."""
        return tuple(field for field in CROSS_FIELDS if any(token.equals == field for token in self.tokens))

    def layout(self, count: int) -> tuple[Token, ...]:
        """The tokens at positions 1..count of a name with `count` tokens (min_tokens <= count <= max_tokens)."""
        left_out = len(self.tokens) - count
        skipped: set[int] = set()
        for index in reversed(range(len(self.tokens))):
            if len(skipped) == left_out:
                break
            if self.tokens[index].optional:
                skipped.add(index)
        return tuple(token for index, token in enumerate(self.tokens) if index not in skipped)[:count]


def conventions_in_settings(settings: Any) -> dict[str, Any]:
    """The raw convention documents of an organization's `settings` (`naming_conventions`), by name; none unless
    both are JSON objects."""
    if not isinstance(settings, dict):
        return {}
    conventions = settings.get("naming_conventions")
    return dict(conventions) if isinstance(conventions, dict) else {}


def parse_convention(name: str, document: Any) -> Convention:
    """The Convention described by `document`; RuleValidationError listing every problem (paths as in
    convention_problems)."""
    problems = convention_problems(document)
    if problems:
        raise RuleValidationError(problems)
    tokens = tuple(_token(raw) for raw in document["tokens"])
    required = sum(1 for token in tokens if not token.optional)
    return Convention(name, document["delimiter"], document.get("min_tokens", max(required, 1)),
                      document.get("max_tokens", len(tokens)), tokens)


def convention_problems(document: Any) -> list[ValidationProblem]:
    """Every problem of a convention document, each at its JSON path (`tokens[2].values[0]`); empty when valid.
    Never raises."""
    if not isinstance(document, dict):
        return [ValidationProblem("", "a naming convention must be a JSON object with a delimiter and tokens")]
    problems = [ValidationProblem(_join("", key), _unknown(key, _CONVENTION_KEYS)) for key in document
                if key not in _CONVENTION_KEYS]
    delimiter = document.get("delimiter")
    if "delimiter" not in document:
        problems.append(ValidationProblem("delimiter", "is required"))
    elif not isinstance(delimiter, str) or not 1 <= len(delimiter) <= MAX_DELIMITER_LENGTH:
        problems.append(ValidationProblem("delimiter", f"must be text of 1 to {MAX_DELIMITER_LENGTH} characters"))
    elif "\x00" in delimiter:
        problems.append(ValidationProblem("delimiter", "must not contain NUL"))
    tokens = document.get("tokens")
    if "tokens" not in document:
        problems.append(ValidationProblem("tokens", "is required"))
    elif not isinstance(tokens, list) or not 1 <= len(tokens) <= MAX_TOKENS:
        problems.append(ValidationProblem("tokens", f"must be a list of 1 to {MAX_TOKENS} tokens"))
        tokens = None
    else:
        seen: set[str] = set()
        for index, token in enumerate(tokens):
            problems += _token_problems(token, f"tokens[{index}]", seen)
    problems += _count_problems(document, tokens)
    return problems


def _count_problems(document: dict, tokens: list | None) -> list[ValidationProblem]:
    counts = {}
    problems = []
    for key in ("min_tokens", "max_tokens"):
        if key in document:
            value = document[key]
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TOKENS:
                problems.append(ValidationProblem(key, f"must be a whole number from 1 to {MAX_TOKENS}"))
            else:
                counts[key] = value
    if tokens is None or problems:
        return problems
    optional = sum(1 for token in tokens if isinstance(token, dict) and token.get("optional") is True)
    lowest = counts.get("min_tokens", max(len(tokens) - optional, 1))
    highest = counts.get("max_tokens", len(tokens))
    if highest > len(tokens):
        problems.append(ValidationProblem("max_tokens", f"is {highest}, but the convention has {len(tokens)} tokens"))
    if lowest > highest:
        problems.append(ValidationProblem("min_tokens", f"is {lowest}, more than max_tokens ({highest})"))
    return problems


def _token_problems(token: Any, path: str, seen: set[str]) -> list[ValidationProblem]:
    if not isinstance(token, dict):
        return [ValidationProblem(path, 'must be an object such as {"name": "market", "values": ["US", "EU"]}')]
    problems = [ValidationProblem(_join(path, key), _unknown(key, _TOKEN_KEYS)) for key in token
                if key not in _TOKEN_KEYS]
    name = token.get("name")
    if "name" not in token:
        problems.append(ValidationProblem(_join(path, "name"), "is required"))
    elif not isinstance(name, str) or not 1 <= len(name) <= 64:
        problems.append(ValidationProblem(_join(path, "name"), "must be text of 1 to 64 characters"))
    elif name in seen:
        problems.append(ValidationProblem(_join(path, "name"), f"{_shown(name)} names an earlier token too"))
    else:
        seen.add(name)
    for flag in ("optional", "ignore_case"):
        if flag in token and not isinstance(token[flag], bool):
            problems.append(ValidationProblem(_join(path, flag), "must be true or false"))
    kinds = [kind for kind in TOKEN_KINDS if kind in token]
    if len(kinds) != 1:
        found = f", found {', '.join(kinds)}" if kinds else ""
        problems.append(ValidationProblem(path, f"needs exactly one of {', '.join(TOKEN_KINDS)}{found}"))
        return problems
    kind = kinds[0]
    if "ignore_case" in token and kind != "values":
        problems.append(ValidationProblem(_join(path, "ignore_case"), "applies only to a token with values"))
    reason = _KIND_CHECKS[kind](token[kind])
    if isinstance(reason, list):
        problems += [ValidationProblem(f"{_join(path, kind)}[{index}]", why) for index, why in reason]
    elif reason:
        problems.append(ValidationProblem(_join(path, kind), reason))
    return problems


def _values_problem(values: Any) -> str | list[tuple[int, str]] | None:
    if not isinstance(values, list) or not 1 <= len(values) <= MAX_VALUES:
        return f"must be a list of 1 to {MAX_VALUES:,} allowed values"
    return [(index, f"must be text of 1 to {MAX_TEXT_LENGTH} characters") for index, value in enumerate(values)
            if not isinstance(value, str) or not 1 <= len(value) <= MAX_TEXT_LENGTH or "\x00" in value] or None


def _pattern_problem(pattern: Any) -> str | None:
    if not isinstance(pattern, str) or not 1 <= len(pattern) <= MAX_TEXT_LENGTH:
        return f"must be an RE2 pattern of 1 to {MAX_TEXT_LENGTH} characters"
    if "\x00" in pattern:
        return "must not contain NUL"
    return re2_problem(pattern)


def _date_problem(text: Any) -> str | None:
    try:
        date_format(text)
    except ValueError as error:
        return str(error)
    return None


def _free_problem(free: Any) -> str | None:
    return None if free is True else "must be true"


def _equals_problem(field: Any) -> str | None:
    if field in CROSS_FIELDS:
        return None
    hint = _suggestion(field, CROSS_FIELDS) if isinstance(field, str) else ""
    return f"must be one of {', '.join(_shown(name) for name in CROSS_FIELDS)}{hint}"


_KIND_CHECKS = {"values": _values_problem, "pattern": _pattern_problem, "date": _date_problem,
                "free": _free_problem, "equals": _equals_problem}


def date_format(text: Any) -> DateFormat:
    """The DateFormat of `text` (see _DATE_PIECE); ValueError saying what is wrong."""
    examples = ", ".join(DATE_FORMAT_EXAMPLES)
    if not isinstance(text, str) or not text or "".join(_DATE_PIECE.findall(text)) != text:
        return _refuse_date(
            f"must be a date format made of YYYY or YY, MM, DD and the separators - / . (as in {examples})")
    pieces = _DATE_PIECE.findall(text)
    fields = [piece for piece in pieces if piece[0] in "YMD"]
    if len(fields) != len(set(field[0] for field in fields)):
        return _refuse_date(f"{_shown(text)} names a field twice")
    if not any(field[0] == "Y" for field in fields):
        return _refuse_date(f"{_shown(text)} has no year (YYYY or YY)")
    if "DD" in fields and "MM" not in fields:
        return _refuse_date(f"{_shown(text)} has a day but no month")
    offsets: dict[str, tuple[int, int]] = {}
    shape = ""
    offset = 0
    for piece in pieces:
        if piece[0] in "YMD":
            offsets[piece[0]] = (offset, len(piece))
            shape += f"[0-9]{{{len(piece)}}}"
        else:
            shape += re.escape(piece)
        offset += len(piece)
    return DateFormat(text, f"^{shape}$", offsets["Y"], offsets.get("M"), offsets.get("D"))


def _refuse_date(reason: str) -> DateFormat:
    raise ValueError(reason)


def _token(raw: dict) -> Token:
    kind = next(kind for kind in TOKEN_KINDS if kind in raw)
    optional = raw.get("optional", False)
    if kind == "values":
        return Token(raw["name"], kind, optional, values=tuple(raw["values"]),
                     ignore_case=raw.get("ignore_case", False))
    if kind == "pattern":
        return Token(raw["name"], kind, optional, pattern=raw["pattern"])
    if kind == "date":
        return Token(raw["name"], kind, optional, date=date_format(raw["date"]))
    if kind == "equals":
        return Token(raw["name"], kind, optional, equals=raw["equals"])
    return Token(raw["name"], kind, optional)


def convention_json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of a naming convention document."""
    token_kinds = [
        {"required": ["values"], "properties": {"values": {
            "type": "array", "minItems": 1, "maxItems": MAX_VALUES,
            "items": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_LENGTH},
            "description": "The allowed values; compared exactly unless ignore_case (ASCII letters)."}}},
        {"required": ["pattern"], "properties": {"pattern": {
            "type": "string", "minLength": 1, "maxLength": MAX_TEXT_LENGTH,
            "description": "An RE2 pattern searched in the token (anchor it with ^ and $ for the whole token)."}}},
        {"required": ["date"], "properties": {"date": {
            "type": "string", "pattern": "^(YYYY|YY|MM|DD|[-/.])+$",
            "description": f"A date format: YYYY or YY, MM, DD and - / . (as in {', '.join(DATE_FORMAT_EXAMPLES)})."}}},
        {"required": ["free"], "properties": {"free": {"const": True, "description": "Any text that is not empty."}}},
        {"required": ["equals"], "properties": {"equals": {
            "enum": list(CROSS_FIELDS), "description": "Equals the campaign's dsp_type or advertiser_id."}}},
    ]
    kind_names = list(TOKEN_KINDS)
    token = {
        "type": "object",
        "title": "Token",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 64},
            "optional": {"type": "boolean", "default": False,
                         "description": "May be left out of a name that has fewer tokens than the convention."},
            "ignore_case": {"type": "boolean", "default": False},
            **{kind: {} for kind in kind_names},
        },
        "oneOf": [{**kind, "not": {"anyOf": [{"required": [other]} for other in kind_names
                                             if other != kind["required"][0]]}} for kind in token_kinds],
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Naming convention",
        "description": ("organizations.settings.naming_conventions.<name>. Without min_tokens and max_tokens a name "
                        "has from the number of required tokens to the number of all tokens."),
        "type": "object",
        "required": ["delimiter", "tokens"],
        "additionalProperties": False,
        "properties": {
            "delimiter": {"type": "string", "minLength": 1, "maxLength": MAX_DELIMITER_LENGTH},
            "min_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS},
            "tokens": {"type": "array", "minItems": 1, "maxItems": MAX_TOKENS, "items": {"$ref": "#/$defs/Token"}},
        },
        "$defs": {"Token": token},
    }


def unknown_convention(name: str, known: Mapping[str, Any]) -> str:
    """The reason a rule may not name convention `name`, which the organization does not have."""
    return f"the organization has no naming convention {_shown(name)}{_suggestion(name, known)}"


def _unknown(key: str, known: frozenset[str]) -> str:
    return f"unknown key {_shown(key)}{_suggestion(key, sorted(known))}"
