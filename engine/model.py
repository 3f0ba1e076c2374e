"""A rule's `conditions` and `actions` documents: their models, defaults, limits and validation.

`parse_rule` turns the two JSON documents of a `rules` row into an immutable `Rule`, or raises
`RuleValidationError` listing every problem found, each at the JSON path where it is. `validate_document` does the
same checks on the `{"conditions": …, "actions": …}` file form and returns the problems instead. Everything here is
a pure function of its arguments: hosts are judged by their literal form only (DNS is resolved at send time).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from croniter import croniter
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from engine.conventions import Convention, parse_convention, unknown_convention
from engine.durations import DURATION_PATTERN, parse_duration
from engine.errors import RuleValidationError, ValidationProblem
from engine.fields import CAMPAIGN_METRICS, PACING_SNAPSHOTS, PREVIOUS_PREFIX, SCOPE_COLUMNS, FieldType, field_types
from engine.freshness import DEFAULT_DATA_DELAY, DEFAULT_MAX_WAIT, MAX_WAIT_SETTING
from engine.interpreter import SCOPED_OPERATORS
from engine.naming import NAMING_OPERATOR, bind_conventions
from engine.problem_text import join_path as _join
from engine.problem_text import re2_problem
from engine.problem_text import shown as _shown
from engine.problem_text import suggestion as _suggestion
from engine.storms import SHARE_FLOOR
from engine.windows import LIFETIME, PREVIOUS_PERIOD, TODAY, YESTERDAY, is_known_timezone, parse_window

MAX_DOCUMENT_BYTES = 64 * 1024
MAX_LOGIC_DEPTH = 32
MAX_LOGIC_NODES = 1000
MAX_COOLDOWN_MINUTES = 7 * 24 * 60
DEFAULT_MAX_ALERTS = 100
DEFAULT_MAX_ALERT_SHARE = 0.5
# A recheck reads the first run's rule_evaluations rows, which ClickHouse keeps 90 days.
MIN_RECHECK_AFTER = timedelta(minutes=1)
MAX_RECHECK_AFTER = timedelta(days=30)
MAX_LIFECYCLE_RUNS = 1000
MAX_SCOPE_VALUES = 1000
MAX_SCOPE_VALUE_LENGTH = 255
DEFAULT_SCHEDULE = "0 * * * *"
ALL_ROLES = ("owner", "admin", "member", "viewer")

# The operators of classic JSON Logic that rules may use, plus `matches` and `naming`. `log` is left out on purpose:
# all it does is print to a console during evaluation, which has no place in a rule run and no SQL equivalent.
RULE_OPERATORS = SCOPED_OPERATORS | frozenset(
    "var missing missing_some if ?: == === != !== ! !! or and > >= < <= max min + - * / % in cat substr merge matches"
    " naming"
    .split()
)
_REFUSED_OPERATORS = {"log": 'the "log" operator is not allowed in rules: it only prints to a console'}
_BARE_LOGIC_KEYS = RULE_OPERATORS | frozenset(_REFUSED_OPERATORS)
# Spellings from other languages that string similarity would not map to the right operator.
_OPERATOR_ALIASES = {"=": "==", "<>": "!=", "&&": "and", "||": "or", "not": "!", "regex": "matches"}

Source = Literal["campaign_metrics_daily", "pacing_snapshots"]
Severity = Literal["critical", "warning", "info"]
Channel = Literal["in_app", "email", "slack", "webhook"]
Role = Literal["owner", "admin", "member", "viewer"]
CompareTo = Literal["previous_period"]


# --- single-value checks, shared by the models --------------------------------------------------------------------


def _rule_value_error(reason: str) -> PydanticCustomError:
    return PydanticCustomError("rule_value", "{reason}", {"reason": reason})


def _check_window(name: str) -> str:
    try:
        parse_window(name)
    except RuleValidationError as error:
        raise _rule_value_error(error.problems[0].reason) from None
    return name


def _check_cron(expression: str) -> str:
    if len(expression.split()) != 5:
        raise _rule_value_error(
            f"{_shown(expression)} is not a 5-field cron expression (minute hour day-of-month month day-of-week),"
            ' as in "0 * * * *"'
        )
    if not croniter.is_valid(expression):
        raise _rule_value_error(f"{_shown(expression)} is not a valid cron expression")
    return expression


def _duration_between(text: str, shortest: timedelta, longest: timedelta, limits: str) -> str:
    try:
        delay = parse_duration(text)
    except ValueError as error:
        raise _rule_value_error(str(error)) from None
    if not shortest <= delay <= longest:
        raise _rule_value_error(f"{_shown(text)} must be {limits}")
    return text


def _check_recheck_after(text: str) -> str:
    return _duration_between(text, MIN_RECHECK_AFTER, MAX_RECHECK_AFTER, "between 1m and 30d")


def _check_wait_setting(text: str) -> str:
    return _duration_between(text, timedelta(0), MAX_WAIT_SETTING, f"at most {MAX_WAIT_SETTING.days} days")


WindowName = Annotated[StrictStr, AfterValidator(_check_window)]
RecheckAfter = Annotated[StrictStr, AfterValidator(_check_recheck_after)]
WaitSetting = Annotated[StrictStr, AfterValidator(_check_wait_setting)]
CronExpression = Annotated[StrictStr, AfterValidator(_check_cron)]
ScopeValue = Annotated[StrictStr, Field(max_length=MAX_SCOPE_VALUE_LENGTH)]
ScopeValues = Annotated[tuple[ScopeValue, ...], Field(min_length=1, max_length=MAX_SCOPE_VALUES)]

_WINDOW_PATTERN = (
    r"^(today|yesterday|month_to_date|lifetime|last_([1-9]|[1-9][0-9]|[12][0-9][0-9]|3[0-5][0-9]|36[0-5])_days)$"
)
_LOGIC_SCHEMA = {
    "type": "object",
    "description": "JSON Logic: an object with exactly one operator, whose variables are the source's fields.",
    "minProperties": 1,
    "maxProperties": 1,
    "propertyNames": {"enum": sorted(RULE_OPERATORS)},
}
Logic = Annotated[Any, WithJsonSchema(_LOGIC_SCHEMA)]


# --- the models ---------------------------------------------------------------------------------------------------


class Conditions(BaseModel):
    """What a rule reads and when it matches. Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Conditions")

    source: Source = CAMPAIGN_METRICS
    window: WindowName = Field(
        default=YESTERDAY,
        description=(
            "today, yesterday, last_N_days (N 1 to 365), month_to_date or lifetime, in the organization's local "
            "dates. Default: yesterday for campaign_metrics_daily, today for pacing_snapshots."
        ),
        json_schema_extra={"pattern": _WINDOW_PATTERN},
    )
    compare_to: CompareTo | None = Field(default=None, description="previous_period: fields prev.<name>.")
    scope: dict[str, ScopeValues] | None = Field(
        default=None,
        description=(
            "Filters on the source's columns: campaign_metrics_daily takes dsp_type, advertiser_id, campaign_id; "
            "pacing_snapshots takes entity_type, entity_id."
        ),
        json_schema_extra={"propertyNames": {"enum": sorted({c for cs in SCOPE_COLUMNS.values() for c in cs})}},
    )
    logic: Logic
    schedule: CronExpression = Field(
        default=DEFAULT_SCHEDULE, description="5-field cron in the organization's timezone."
    )
    recheck_after: RecheckAfter | None = Field(
        default=None,
        description=(
            'Evaluates each scheduled run once more this long after its fire time (1m to 30d, as in "24h"), over '
            "the same window, and notifies the entities whose verdict the late data changed."
        ),
        json_schema_extra={"pattern": DURATION_PATTERN},
    )

    data_delay: WaitSetting = Field(
        default=DEFAULT_DATA_DELAY,
        description='How long after a window ends its data is complete once synced, as in "2h" (up to 7d).',
        json_schema_extra={"pattern": DURATION_PATTERN},
    )
    max_wait: WaitSetting = Field(
        default=DEFAULT_MAX_WAIT, description="How long after its fire time a run waits for incomplete data.",
        json_schema_extra={"pattern": DURATION_PATTERN},
    )
    on_stale: Literal["run", "skip"] = Field(
        default="run", description="What a run does when its data is still incomplete after max_wait."
    )

    @property
    def recheck_delay(self) -> timedelta | None:
        """How long after a fire time its recheck is due; None when the rule is not rechecked."""
        return parse_duration(self.recheck_after) if self.recheck_after is not None else None

    @property
    def data_delay_time(self) -> timedelta:
        """How long after a window ends its synced data is complete."""
        return parse_duration(self.data_delay)

    @property
    def max_wait_time(self) -> timedelta:
        """How long after its fire time a run may wait for incomplete data."""
        return parse_duration(self.max_wait)

    @model_validator(mode="before")
    @classmethod
    def _fill_in_defaults(cls, data: Any) -> Any:
        if _is_bare_logic(data):
            data = {"logic": data}
        if isinstance(data, dict) and "window" not in data:
            source = data.get("source", CAMPAIGN_METRICS)
            if source == PACING_SNAPSHOTS:
                data = {**data, "window": TODAY}
            elif source == CAMPAIGN_METRICS:
                data = {**data, "window": YESTERDAY}
        return data


class Notify(BaseModel):
    """Who hears of an alert and through which channels."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Notify")

    channels: tuple[Channel, ...] = ("in_app",)
    roles: tuple[Role, ...] = ALL_ROLES
    slack_webhook_url: StrictStr | None = Field(
        default=None, description='Required when channels include "slack".', json_schema_extra={"format": "uri"}
    )
    webhook_url: StrictStr | None = Field(
        default=None, description='Required when channels include "webhook".', json_schema_extra={"format": "uri"}
    )

    @field_validator("slack_webhook_url", "webhook_url")
    @classmethod
    def _reachable_url(cls, url: str | None, info: ValidationInfo) -> str | None:
        allowed_hosts = (info.context or {}).get("allowed_hosts", frozenset())
        reason = url_problem(url, allowed_hosts) if url is not None else None
        if reason:
            raise _rule_value_error(reason)
        return url


class Actions(BaseModel):
    """What a match does: its severity, how often it may alert again, and whom it notifies."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Actions")

    severity: Severity = "warning"
    cooldown_minutes: StrictInt = Field(
        default=60, ge=0, le=MAX_COOLDOWN_MINUTES, description="No new alert for an entity within this many minutes."
    )
    notify_on_resolve: StrictBool = False
    max_alerts: StrictInt = Field(
        default=DEFAULT_MAX_ALERTS, ge=1,
        description="A run matching more entities than this is a storm: one incident notice per recipient.",
    )
    max_alert_share: StrictFloat = Field(
        default=DEFAULT_MAX_ALERT_SHARE, gt=0, le=1, allow_inf_nan=False,
        description=f"A run matching more than this share of the entities it evaluated (once over {SHARE_FLOOR} "
                    "match) is a storm.",
    )
    pending_runs: StrictInt = Field(
        default=1, ge=1, le=MAX_LIFECYCLE_RUNS, description="Alert only after this many matching runs in a row."
    )
    recovery_runs: StrictInt = Field(
        default=1, ge=1, le=MAX_LIFECYCLE_RUNS,
        description="Resolve only after this many runs in a row that do not match (and where recover_when holds).",
    )
    recover_when: Logic | None = Field(
        default=None, description="JSON Logic that must also hold, over the same fields, before an entity resolves."
    )
    notify: Notify = Field(default_factory=Notify)


class RuleDocument(BaseModel):
    """The file form of a rule, as `rulesctl validate` reads it."""

    model_config = ConfigDict(extra="forbid", title="Rule document")

    conditions: Conditions
    actions: Actions = Field(default_factory=Actions)


@dataclass(frozen=True)
class Rule:
    """A validated rule: its conditions, its actions, every variable its logic may read with its type, and its
    logic as it is evaluated: `conditions.logic` with its naming conventions bound (engine.naming.bind_conventions;
    a rule validated without the organization's conventions keeps them unbound, and cannot be evaluated)."""

    conditions: Conditions
    actions: Actions
    fields: Mapping[str, FieldType]
    logic: Any
    recover_when: Any = None  # actions.recover_when, its naming conventions bound as in `logic`


# --- public functions ---------------------------------------------------------------------------------------------


def parse_rule(
    conditions: Any, actions: Any, *, timezone: str | None = None, allowed_hosts: frozenset[str] = frozenset(),
    conventions: Mapping[str, Any] | None = None,
) -> Rule:
    """Validates a rule's `conditions` and `actions` documents and returns the immutable Rule they describe.

    Raises RuleValidationError listing every problem found. `timezone` (the organization's) is checked only when
    given. `allowed_hosts` (entries `host` or `host:port`) may receive Slack and webhook posts even though their
    address is loopback, private or link-local. `conventions` (the organization's naming conventions by name, as
    stored, engine.conventions.conventions_in_settings) are checked and bound into `Rule.logic` only when given:
    a naming operation must name one of them, valid, and usable on the rule's source.
    """
    size_problem = _json_problem({"conditions": conditions, "actions": actions})
    if size_problem:
        raise RuleValidationError([size_problem])
    problems, rule = _check_rule(conditions, actions, timezone, allowed_hosts, conventions)
    if problems:
        raise RuleValidationError(problems)
    return rule


def validate_document(
    document: Any, *, timezone: str | None = None, allowed_hosts: frozenset[str] = frozenset()
) -> list[ValidationProblem]:
    """Every problem of a `{"conditions": …, "actions": …}` document (`actions` optional); empty when valid.

    Never raises for any input: a document that is not JSON-shaped, too large or too deep is itself a problem.
    """
    shape_problem = _json_problem(document)
    if shape_problem:
        return [shape_problem]
    if not isinstance(document, dict):
        return [ValidationProblem("", 'a rule document must be a JSON object with "conditions" and "actions"')]
    problems = [
        ValidationProblem(_join("", key), _unknown_key(key, RuleDocument.model_fields))
        for key in document
        if key not in RuleDocument.model_fields
    ]
    if "conditions" not in document:
        problems.append(ValidationProblem("conditions", "is required"))
        problems += _check_actions(document.get("actions", {}), allowed_hosts)[0]
    else:
        # Without an organization, naming operations are checked only in shape (their conventions are unknown).
        problems += _check_rule(document["conditions"], document.get("actions", {}), timezone, allowed_hosts, None)[0]
    return problems


def rule_json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of a rule document `{"conditions": …, "actions": …}`.

    `conditions` is either the conditions object or a bare JSON Logic object, which means `{"logic": <it>}`.
    """
    schema = RuleDocument.model_json_schema()
    schema["properties"]["conditions"] = {
        "anyOf": [{"$ref": "#/$defs/Conditions"}, _LOGIC_SCHEMA],
        "description": 'The conditions object, or a bare JSON Logic object meaning {"logic": <it>} with defaults.',
    }
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def url_problem(url: str, allowed_hosts: frozenset[str]) -> str | None:
    """Why a Slack or webhook URL may not be used (None when it may).

    It must be http(s) with a host. A host that is `localhost`, `*.localhost` or a literal IP address that is not
    public (loopback, private, link-local such as 169.254.169.254, reserved, multicast…) is refused unless it is in
    `allowed_hosts` as `host` or `host:port` (case-insensitive). Names are not resolved here.
    """
    if re.search(r"\s", url):
        return f"{_shown(url)} is not a valid URL: it contains whitespace"
    try:
        scheme, host, port = split_url(url)
    except ValueError:
        return f"{_shown(url)} is not a valid URL"
    if scheme not in ("http", "https"):
        return f"{_shown(url)} must be an http:// or https:// URL"
    if not host:
        return f"{_shown(url)} has no host"
    if is_allowed_host(host, port, allowed_hosts):
        return None
    if host == "localhost" or host.endswith(".localhost") or is_non_public_ip(host):
        return f'{_shown(url)} points to "{host}", which is not a public address; allow it with NOTIFY_ALLOWED_HOSTS'
    return None


# --- checking a rule ----------------------------------------------------------------------------------------------


def _is_bare_logic(conditions: Any) -> bool:
    """True when `conditions` is a bare JSON Logic object: no `logic` key, and one key that is an operator."""
    return (
        isinstance(conditions, dict)
        and len(conditions) == 1
        and next(iter(conditions)) in _BARE_LOGIC_KEYS
    )


def _check_rule(
    conditions: Any, actions: Any, timezone: str | None, allowed_hosts: frozenset[str],
    conventions: Mapping[str, Any] | None,
) -> tuple[list[ValidationProblem], Rule | None]:
    condition_problems, conditions_model = _check_conditions(conditions)
    action_problems, actions_model = _check_actions(actions, allowed_hosts)
    problems = condition_problems + action_problems + _recover_when_problems(conditions, actions)
    if timezone is not None and not is_known_timezone(timezone):
        problems.append(ValidationProblem("timezone", f"unknown timezone {_shown(timezone)}"))
    if problems:
        return problems, None
    logic = conditions_model.logic
    recover_when = actions_model.recover_when
    bound: dict[str, Convention] = {}
    if conventions is not None:
        logic_path = "conditions" if _is_bare_logic(conditions) else "conditions.logic"
        problems, bound = _convention_problems(logic, logic_path, conditions_model.source, conventions)
        if recover_when is not None:
            recover_problems, recover_bound = _convention_problems(recover_when, "actions.recover_when",
                                                                   conditions_model.source, conventions)
            problems += recover_problems
            bound = {**bound, **recover_bound}
        if problems:
            return problems, None
    fields = field_types(conditions_model.source, conditions_model.compare_to is not None)
    return [], Rule(conditions_model, actions_model, MappingProxyType(fields), bind_conventions(logic, bound),
                    None if recover_when is None else bind_conventions(recover_when, bound))


def _check_conditions(raw: Any) -> tuple[list[ValidationProblem], Conditions | None]:
    problems, model = _validate_model(Conditions, raw, "conditions", {})
    if _is_bare_logic(raw):
        problems += _logic_problems(raw, "conditions", field_types(CAMPAIGN_METRICS, False))
        return problems, model
    if not isinstance(raw, dict):
        return problems, model
    source = raw.get("source", CAMPAIGN_METRICS)
    known_source = source if isinstance(source, str) and source in SCOPE_COLUMNS else None
    if "logic" in raw:
        fields = field_types(known_source, raw.get("compare_to") is not None) if known_source else None
        problems += _logic_problems(raw["logic"], "conditions.logic", fields)
    if raw.get("compare_to") == PREVIOUS_PERIOD and raw.get("window") == LIFETIME:
        problems.append(ValidationProblem("conditions.compare_to", "lifetime has no previous period to compare to"))
    if known_source and isinstance(raw.get("scope"), dict):
        problems += _scope_key_problems(raw["scope"], known_source)
    return problems, model


def _recover_when_problems(conditions: Any, actions: Any) -> list[ValidationProblem]:
    """Problems of `actions.recover_when`, checked as the logic is, over the fields of the rule's source."""
    if not isinstance(actions, dict) or actions.get("recover_when") is None:
        return []
    if _is_bare_logic(conditions):
        fields = field_types(CAMPAIGN_METRICS, False)
    elif isinstance(conditions, dict):
        source = conditions.get("source", CAMPAIGN_METRICS)
        known = isinstance(source, str) and source in SCOPE_COLUMNS
        fields = field_types(source, conditions.get("compare_to") is not None) if known else None
    else:
        fields = None
    return _logic_problems(actions["recover_when"], "actions.recover_when", fields)


def _scope_key_problems(scope: dict, source: str) -> list[ValidationProblem]:
    columns = SCOPE_COLUMNS[source]
    return [
        ValidationProblem(
            _join("conditions.scope", key),
            f"unknown scope column {_shown(key)} for {source}{_suggestion(key, columns)};"
            f" expected {', '.join(columns)}",
        )
        for key in scope
        if key not in columns
    ]


def _check_actions(raw: Any, allowed_hosts: frozenset[str]) -> tuple[list[ValidationProblem], Actions | None]:
    context = {"allowed_hosts": frozenset(host.strip().lower() for host in allowed_hosts)}
    problems, model = _validate_model(Actions, raw, "actions", context)
    notify = raw.get("notify", {}) if isinstance(raw, dict) else None
    if isinstance(notify, dict):
        channels = notify.get("channels", ["in_app"])
        if isinstance(channels, list):
            for channel, url_key in (("slack", "slack_webhook_url"), ("webhook", "webhook_url")):
                problems += _channel_url_problems(channel, url_key, channels, notify.get(url_key))
    return problems, model


def _channel_url_problems(channel: str, url_key: str, channels: list, url: Any) -> list[ValidationProblem]:
    path = f"actions.notify.{url_key}"
    if channel in channels and url is None:
        return [ValidationProblem(path, f'is required when channels include "{channel}"')]
    if channel not in channels and url is not None:
        return [ValidationProblem(path, f'is set, but channels do not include "{channel}"')]
    return []


# --- JSON Logic ---------------------------------------------------------------------------------------------------


def _logic_problems(logic: Any, path: str, fields: Mapping[str, FieldType] | None) -> list[ValidationProblem]:
    """Problems of a rule's logic; `fields` None when the source is unknown, so variables cannot be checked.

    The logic must be an object with one operator: a literal such as `true` would match every entity (or none) on
    every run, which is nearly always a mistake; `{"!!": [true]}` says so on purpose if it is really meant.
    """
    if not isinstance(logic, dict):
        example = '{">": [{"var": "spend"}, 0]}'
        return [ValidationProblem(path, f"must be a JSON Logic object with one operator, as in {example}")]
    limit_problems = _logic_limit_problems(logic, path)
    if limit_problems:
        return limit_problems
    problems: list[ValidationProblem] = []
    _walk_logic(logic, path, fields, False, problems)
    return problems


def _logic_limit_problems(logic: Any, path: str) -> list[ValidationProblem]:
    """Depth and size of the logic, counted without recursion and stopping after MAX_LOGIC_NODES nodes.

    Every value is a node (an operation, its argument list, an array, a scalar); each operation and each array
    (but not an operation's own argument list) is one level deeper than what holds it.
    """
    problems = []
    nodes = 0
    stack = [(logic, 1)]
    while stack and nodes <= MAX_LOGIC_NODES:
        node, level = stack.pop()
        nodes += 1
        if isinstance(node, (dict, list)) and level > MAX_LOGIC_DEPTH and not problems:
            problems.append(ValidationProblem(path, f"is nested deeper than {MAX_LOGIC_DEPTH} levels"))
        if isinstance(node, dict):
            for arguments in node.values():
                if isinstance(arguments, list):
                    nodes += 1
                    stack.extend((argument, level + 1) for argument in arguments)
                else:
                    stack.append((arguments, level + 1))
        elif isinstance(node, list):
            stack.extend((item, level + 1) for item in node)
    if nodes > MAX_LOGIC_NODES:
        problems.append(ValidationProblem(path, f"has more than {MAX_LOGIC_NODES:,} nodes"))
    return problems


def _walk_logic(
    node: Any, path: str, fields: Mapping[str, FieldType] | None, in_item: bool, problems: list[ValidationProblem]
) -> None:
    """Appends the problems of operators, variables and patterns at and below `node` to `problems`.

    `in_item` is true inside an iteration body, where `var` names the current item (or `current` and
    `accumulator` in reduce) rather than a field.
    """
    if isinstance(node, list):
        for index, item in enumerate(node):
            _walk_logic(item, f"{path}[{index}]", fields, in_item, problems)
        return
    if isinstance(node, float) and not math.isfinite(node):
        problems.append(ValidationProblem(path, "NaN and Infinity are not JSON numbers"))
        return
    if not isinstance(node, dict):
        return
    if len(node) != 1:
        problems.append(ValidationProblem(path, f"an operation must have exactly one operator, found {len(node)} keys"))
        return
    operator, arguments = next(iter(node.items()))
    operator_path = _join(path, operator)
    if isinstance(arguments, list):
        argument_list = arguments
        argument_paths = [f"{operator_path}[{index}]" for index in range(len(arguments))]
    else:
        argument_list, argument_paths = [arguments], [operator_path]

    if operator not in RULE_OPERATORS:
        problems.append(ValidationProblem(path, _unknown_operator(operator, fields)))
    elif operator == "var" and not in_item:
        problems += _var_problems(argument_list, path, fields)
    elif operator == "missing" and not in_item and fields is not None:
        problems += _missing_problems(argument_list, argument_paths, fields)
    elif operator == "missing_some" and not in_item and fields is not None and len(argument_list) == 2:
        names = argument_list[1]
        if isinstance(names, list):
            problems += _missing_problems(names, [f"{argument_paths[1]}[{i}]" for i in range(len(names))], fields)
    elif operator == "matches":
        problems += _matches_problems(argument_list, argument_paths, path)
    elif operator == NAMING_OPERATOR:
        problems += _naming_shape_problems(argument_list, path, in_item)
    for index, (argument, argument_path) in enumerate(zip(argument_list, argument_paths)):
        in_body = operator in SCOPED_OPERATORS and index == 1
        _walk_logic(argument, argument_path, fields, in_item or in_body, problems)


def _var_problems(arguments: list, path: str, fields: Mapping[str, FieldType] | None) -> list[ValidationProblem]:
    if not arguments:
        return [ValidationProblem(path, "var needs a variable name")]
    if len(arguments) > 2:
        return [ValidationProblem(path, "var takes a variable name and an optional default, nothing more")]
    name = arguments[0]
    if not isinstance(name, str):
        return [ValidationProblem(path, "variable name must be a literal string")]
    if fields is not None and name not in fields:
        return [ValidationProblem(path, _unknown_variable(name, fields))]
    return []


def _missing_problems(names: list, paths: list[str], fields: Mapping[str, FieldType]) -> list[ValidationProblem]:
    """The literal variable names that `missing` or `missing_some` asks about must be fields too."""
    return [
        ValidationProblem(path, _unknown_variable(name, fields))
        for name, path in zip(names, paths)
        if isinstance(name, str) and name not in fields
    ]


def _matches_problems(arguments: list, paths: list[str], path: str) -> list[ValidationProblem]:
    if len(arguments) != 2:
        return [ValidationProblem(path, "matches takes two arguments: [text, pattern]")]
    pattern = arguments[1]
    if not isinstance(pattern, str):
        return []
    reason = re2_problem(pattern)
    return [ValidationProblem(paths[1], reason)] if reason else []


def _naming_shape_problems(arguments: list, path: str, in_item: bool) -> list[ValidationProblem]:
    if len(arguments) != 2 or not isinstance(arguments[1], str):
        return [ValidationProblem(path, 'naming takes two arguments: [text, "<convention name>"], the name literal')]
    if in_item:
        return [ValidationProblem(path, "naming reads the campaign itself, so it cannot be used inside "
                                        "map, filter, reduce, all, none or some")]
    return []


def _convention_problems(logic: Any, path: str, source: str, conventions: Mapping[str, Any]
                         ) -> tuple[list[ValidationProblem], dict[str, Convention]]:
    """The problems of the conventions the logic's naming operations name, and those conventions parsed."""
    problems: list[ValidationProblem] = []
    parsed: dict[str, Convention] = {}
    for operation_path, name in _naming_references(logic, path):
        if name not in conventions:
            problems.append(ValidationProblem(operation_path, unknown_convention(name, conventions)))
            continue
        try:
            convention = parsed.get(name) or parse_convention(name, conventions[name])
        except RuleValidationError as error:
            problems.append(ValidationProblem(operation_path, f"the naming convention {_shown(name)} is invalid: "
                                              f"{error}"))
            continue
        parsed[name] = convention
        if convention.cross_fields and source != CAMPAIGN_METRICS:
            problems.append(ValidationProblem(operation_path, (
                f"the naming convention {_shown(name)} compares tokens with the campaign's "
                f"{' and '.join(convention.cross_fields)}, which only {CAMPAIGN_METRICS} rules have")))
    return problems, parsed


def _naming_references(node: Any, path: str) -> list[tuple[str, str]]:
    """(path, convention name) of every naming operation at or below `node` (validated in shape already)."""
    if isinstance(node, list):
        return [found for index, item in enumerate(node) for found in _naming_references(item, f"{path}[{index}]")]
    if not (isinstance(node, dict) and len(node) == 1):
        return []
    operator, arguments = next(iter(node.items()))
    operator_path = _join(path, operator)
    found = [(path, arguments[1])] if operator == NAMING_OPERATOR else []
    if isinstance(arguments, list):
        return found + [item for index, argument in enumerate(arguments)
                        for item in _naming_references(argument, f"{operator_path}[{index}]")]
    return found + _naming_references(arguments, operator_path)


def _unknown_operator(operator: str, fields: Mapping[str, FieldType] | None) -> str:
    if operator in _REFUSED_OPERATORS:
        return _REFUSED_OPERATORS[operator]
    if fields is not None and operator in fields:
        return f'unknown operator {_shown(operator)} (to read the field, write {{"var": "{operator}"}})'
    if operator in _OPERATOR_ALIASES:
        return f"unknown operator {_shown(operator)} (did you mean {_shown(_OPERATOR_ALIASES[operator])}?)"
    return f"unknown operator {_shown(operator)}{_suggestion(operator, RULE_OPERATORS)}"


def _unknown_variable(name: str, fields: Mapping[str, FieldType]) -> str:
    if name.startswith(PREVIOUS_PREFIX) and name[len(PREVIOUS_PREFIX):] in fields:
        return f'unknown variable {_shown(name)} (prev.* fields need "compare_to": "previous_period")'
    return f"unknown variable {_shown(name)}{_suggestion(name, fields)}"


# --- the document's size and JSON shape ---------------------------------------------------------------------------


def _json_problem(document: Any) -> ValidationProblem | None:
    """The first reason `document` is not a JSON value of at most MAX_DOCUMENT_BYTES (compact UTF-8 encoding).

    Iterative and stops as soon as the budget is spent, so a huge or very deep document is refused fast.
    """
    budget = MAX_DOCUMENT_BYTES
    too_large = ValidationProblem("", f"the rule document is larger than {MAX_DOCUMENT_BYTES // 1024} KiB of JSON")
    stack: list[tuple[Any, Any]] = [(document, None)]
    while stack:
        value, link = stack.pop()
        if isinstance(value, dict):
            # An entry takes at least 5 bytes ("":0 and a comma), so a huge object is refused before it is walked.
            if 5 * len(value) + 1 > budget:
                return too_large
            budget -= 2 + max(len(value) - 1, 0) + len(value)
            for key, item in value.items():
                if not isinstance(key, str):
                    return ValidationProblem(_path_of(link), "object keys must be strings")
                budget -= _scalar_bytes(key, budget)
                stack.append((item, (link, key)))
        elif isinstance(value, list):
            if 2 * len(value) + 1 > budget:
                return too_large
            budget -= 2 + max(len(value) - 1, 0)
            stack.extend((item, (link, index)) for index, item in enumerate(value))
        elif value is None or isinstance(value, (str, bool, int, float)):
            budget -= _scalar_bytes(value, budget)
        else:
            return ValidationProblem(_path_of(link), f"is not a JSON value (a Python {type(value).__name__})")
        if budget < 0:
            return too_large
    return None


def _scalar_bytes(value: Any, budget: int) -> int:
    """The compact UTF-8 JSON size of a scalar, or any number over `budget` when it is surely larger."""
    if isinstance(value, str):
        if len(value) + 2 > budget:
            return budget + 1
        return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 14_000:
        # str() refuses ints of over 4,300 digits; the bit length gives the digit count to within one.
        return int((value.bit_length() - 1) * math.log10(2)) + 1 + (value < 0)
    return len(json.dumps(value))


def _path_of(link: Any) -> str:
    keys = []
    while link is not None:
        link, key = link
        keys.append(key)
    path = ""
    for key in reversed(keys):
        path = _join(path, key)
    return path


# --- pydantic errors in plain words -------------------------------------------------------------------------------


def _validate_model(
    model: type[BaseModel], raw: Any, root: str, context: dict
) -> tuple[list[ValidationProblem], BaseModel | None]:
    try:
        return [], model.model_validate(raw, context=context)
    except ValidationError as error:
        problems = [
            ValidationProblem(_loc_path(root, item["loc"]), _plain_reason(item, model)) for item in error.errors()
        ]
        return problems, None


def _loc_path(root: str, loc: tuple) -> str:
    path = root
    for key in loc:
        path = _join(path, key)
    return path


_TYPE_REASONS = {
    "missing": "is required",
    "string_type": "must be a string",
    "int_type": "must be a whole number",
    "bool_type": "must be true or false",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
}


def _plain_reason(item: Mapping[str, Any], model: type[BaseModel]) -> str:
    kind, context = item["type"], item.get("ctx", {})
    if kind in _TYPE_REASONS:
        return _TYPE_REASONS[kind]
    if kind == "rule_value":
        return context["reason"]
    if kind == "extra_forbidden":
        return _unknown_key(str(item["loc"][-1]), _model_at(model, item["loc"][:-1]).model_fields)
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", context["expected"])
        hint = _suggestion(item["input"], choices) if isinstance(item["input"], str) else ""
        if len(choices) == 1:
            return f"must be {_shown(choices[0])}{hint}"
        return f"must be one of {', '.join(_shown(choice) for choice in choices)}{hint}"
    if kind == "greater_than":
        return f"must be more than {_bound(context['gt'])}"
    if kind == "greater_than_equal":
        return f"must be at least {_bound(context['ge'])}"
    if kind == "less_than_equal":
        return f"must be at most {_bound(context['le'])}"
    if kind == "too_short":
        return "must not be empty" if context["min_length"] == 1 else f"needs at least {context['min_length']} items"
    if kind == "too_long":
        return f"must have at most {context['max_length']:,} items"
    if kind == "string_too_long":
        return f"must be at most {context['max_length']} characters"
    return item["msg"].replace("Input should be", "must be")


def _bound(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel]:
    for key in loc:
        model = model.model_fields[key].annotation
    return model


def _unknown_key(key: str, known: Mapping[str, Any]) -> str:
    if key in RULE_OPERATORS:
        return f'unknown key {_shown(key)}: JSON Logic goes under "logic"'
    return f"unknown key {_shown(key)}{_suggestion(key, known)}"


# --- URLs and hosts ---------------------------------------------------------------------------------------------


def split_url(url: str) -> tuple[str, str | None, int]:
    """(scheme, host, port) of `url`; the host lower-case without brackets or a trailing dot, the port defaulted."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname.rstrip(".") if parts.hostname else None
    return parts.scheme, host, port


def is_allowed_host(host: str, port: int, allowed_hosts: frozenset[str]) -> bool:
    """True when `host` or `host:port` is listed in `allowed_hosts` (lower-case, IPv6 with or without brackets)."""
    shown_host = f"[{host}]" if ":" in host else host
    return bool({host, shown_host, f"{host}:{port}", f"{shown_host}:{port}"} & allowed_hosts)


def is_non_public_ip(host: str) -> bool:
    """True when `host` is an IP address (in any form a resolver accepts) that is not a public unicast address."""
    address = _literal_ip(host)
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def _literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # Forms such as 127.1, 0x7f.0.0.1 or 2130706433 are IPv4 addresses to the resolver at send time.
    if re.fullmatch(r"[0-9a-fx.]+", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None
