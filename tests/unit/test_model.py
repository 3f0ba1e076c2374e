"""Rule documents: defaults, the bare form, every limit, plain problem messages, the JSON Schema, and fuzzing."""

import json
import math
import re
from dataclasses import FrozenInstanceError

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import RuleValidationError, ValidationProblem
from engine.fields import field_types
from engine.model import RULE_OPERATORS, parse_rule, rule_json_schema, validate_document

SPEND_OVER_1000 = {">": [{"var": "spend"}, 1000]}
SLACK_URL = "https://hooks.slack.com/services/T000/B000/XXXX"
WEBHOOK_URL = "https://alerts.example.com/hooks/rules"


def problems_of(conditions, actions=None, **kwargs) -> list[str]:
    """The problems parse_rule raises, as `path: reason` lines, sorted."""
    with pytest.raises(RuleValidationError) as error:
        parse_rule(conditions, {} if actions is None else actions, **kwargs)
    return sorted(str(problem) for problem in error.value.problems)


def logic_problems(logic, **conditions) -> list[str]:
    return problems_of({"logic": logic, **conditions})


def nested_not(levels: int) -> dict:
    """`levels` operations deep: levels-1 `!` around one `var`."""
    logic = {"var": "spend"}
    for _ in range(levels - 1):
        logic = {"!": logic}
    return logic


# --- defaults -------------------------------------------------------------------------------------------------------


def test_every_default_of_a_campaign_rule():
    rule = parse_rule({"logic": SPEND_OVER_1000}, {})
    conditions, actions = rule.conditions, rule.actions
    assert conditions.source == "campaign_metrics_daily"
    assert conditions.window == "yesterday"
    assert conditions.compare_to is None
    assert conditions.scope is None
    assert conditions.logic == SPEND_OVER_1000
    assert conditions.schedule == "0 * * * *"
    assert actions.severity == "warning"
    assert actions.cooldown_minutes == 60
    assert actions.notify_on_resolve is False
    assert actions.notify.channels == ("in_app",)
    assert actions.notify.roles == ("owner", "admin", "member", "viewer")
    assert actions.notify.slack_webhook_url is None
    assert actions.notify.webhook_url is None
    assert dict(rule.fields) == field_types("campaign_metrics_daily", False)
    assert "prev.spend" not in rule.fields


def test_pacing_rules_default_to_today():
    rule = parse_rule({"source": "pacing_snapshots", "logic": {"<": [{"var": "pacing_rate"}, 0.8]}}, {})
    assert rule.conditions.window == "today"
    assert dict(rule.fields) == field_types("pacing_snapshots", False)


def test_an_explicit_window_wins_over_the_default():
    rule = parse_rule({"source": "pacing_snapshots", "window": "last_3_days", "logic": {"var": "pacing_rate"}}, {})
    assert rule.conditions.window == "last_3_days"


def test_compare_to_adds_the_previous_fields():
    rule = parse_rule({"compare_to": "previous_period", "logic": {">": [{"var": "spend"}, {"var": "prev.spend"}]}}, {})
    assert rule.conditions.compare_to == "previous_period"
    assert dict(rule.fields) == field_types("campaign_metrics_daily", True)
    assert "prev.ctr" in rule.fields


def test_nulls_of_optional_keys_mean_left_out():
    rule = parse_rule({"logic": SPEND_OVER_1000, "compare_to": None, "scope": None}, {})
    assert (rule.conditions.compare_to, rule.conditions.scope) == (None, None)


def test_a_full_document_parses():
    conditions = {
        "source": "campaign_metrics_daily",
        "window": "last_7_days",
        "compare_to": "previous_period",
        "scope": {"dsp_type": ["DV360", "TTD"], "advertiser_id": ["adv-1"], "campaign_id": ["c-9"]},
        "logic": {"and": [{">": [{"var": "spend"}, 1000]}, {"<": [{"var": "ctr"}, 0.001]}]},
        "schedule": "*/15 * * * *",
    }
    actions = {
        "severity": "critical",
        "cooldown_minutes": 60,
        "notify_on_resolve": False,
        "notify": {
            "channels": ["in_app", "email", "slack", "webhook"],
            "roles": ["owner", "admin", "member"],
            "slack_webhook_url": SLACK_URL,
            "webhook_url": WEBHOOK_URL,
        },
    }
    rule = parse_rule(conditions, actions, timezone="Europe/Berlin")
    assert rule.conditions.scope == {"dsp_type": ("DV360", "TTD"), "advertiser_id": ("adv-1",), "campaign_id": ("c-9",)}
    assert rule.actions.notify.channels == ("in_app", "email", "slack", "webhook")
    assert rule.actions.notify.roles == ("owner", "admin", "member")
    assert rule.actions.severity == "critical"


def test_a_rule_is_immutable():
    rule = parse_rule({"logic": SPEND_OVER_1000}, {})
    with pytest.raises(FrozenInstanceError):
        rule.actions = None
    with pytest.raises(ValueError):
        rule.conditions.window = "today"
    with pytest.raises(ValueError):
        rule.actions.notify.channels = ("email",)
    with pytest.raises(TypeError):
        rule.fields["spend"] = None


# --- the bare form --------------------------------------------------------------------------------------------------


def test_a_bare_logic_object_means_logic_with_defaults():
    rule = parse_rule(SPEND_OVER_1000, {})
    assert rule.conditions.logic == SPEND_OVER_1000
    assert (rule.conditions.source, rule.conditions.window, rule.conditions.schedule) == (
        "campaign_metrics_daily",
        "yesterday",
        "0 * * * *",
    )


def test_problems_in_a_bare_logic_object_have_paths_in_that_document():
    assert problems_of({"and": [{">": [{"var": "spnd"}, 1]}]}) == [
        'conditions.and[0].>[0]: unknown variable "spnd" (did you mean "spend"?)'
    ]


def test_logic_beside_other_keys_must_go_under_logic():
    assert problems_of({"and": [SPEND_OVER_1000], "schedule": "0 * * * *"}) == [
        "conditions.and: unknown key \"and\": JSON Logic goes under \"logic\"",
        "conditions.logic: is required",
    ]


# --- logic ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("literal", [True, False, 1, "spend", None, [SPEND_OVER_1000]])
def test_logic_must_be_an_operation_not_a_literal(literal):
    assert logic_problems(literal) == [
        'conditions.logic: must be a JSON Logic object with one operator, as in {">": [{"var": "spend"}, 0]}'
    ]


def test_an_operation_has_exactly_one_operator():
    assert logic_problems({"and": [{}, {">": [1, 0], "<": [0, 1]}]}) == [
        "conditions.logic.and[0]: an operation must have exactly one operator, found 0 keys",
        "conditions.logic.and[1]: an operation must have exactly one operator, found 2 keys",
    ]


def test_unknown_operators_are_named_with_a_suggestion():
    assert logic_problems({"and": [{"AND": [1]}, {"=": [1, 1]}, {"spend": 1}, {"fliter": [[], 1]}, {"xyzzy": 1}]}) == [
        'conditions.logic.and[0]: unknown operator "AND" (did you mean "and"?)',
        'conditions.logic.and[1]: unknown operator "=" (did you mean "=="?)',
        'conditions.logic.and[2]: unknown operator "spend" (to read the field, write {"var": "spend"})',
        'conditions.logic.and[3]: unknown operator "fliter" (did you mean "filter"?)',
        'conditions.logic.and[4]: unknown operator "xyzzy"',
    ]


def test_log_is_not_allowed():
    assert logic_problems({"log": {"var": "spend"}}) == [
        'conditions.logic: the "log" operator is not allowed in rules: it only prints to a console'
    ]


def test_every_classic_operator_and_matches_is_accepted():
    logic = {
        "and": [
            {"missing": ["spend"]},
            {"missing_some": [1, ["spend", "clicks"]]},
            {"if": [{"var": "spend"}, 1, 0]},
            {"?:": [1, 2, 3]},
            {"==": [1, 1]}, {"===": [1, 1]}, {"!=": [1, 2]}, {"!==": [1, 2]},
            {"!": [False]}, {"!!": [True]},
            {"or": [0, 1]},
            {">": [2, 1]}, {">=": [2, 1]}, {"<": [1, 2]}, {"<=": [1, 2]}, {"<": [1, {"var": "ctr"}, 3]},
            {"max": [1, 2]}, {"min": [1, 2]},
            {"+": [1, 2]}, {"-": [2, 1]}, {"*": [1, 2]}, {"/": [2, 1]}, {"%": [3, 2]},
            {"map": [[1, 2], {"*": [{"var": ""}, 2]}]},
            {"filter": [[1, 2], {">": [{"var": ""}, 1]}]},
            {"reduce": [[1, 2], {"+": [{"var": "current"}, {"var": "accumulator"}]}, 0]},
            {"all": [[1], {"var": ""}]}, {"none": [[0], {"var": ""}]}, {"some": [[1], {"var": ""}]},
            {"merge": [[1], 2]},
            {"in": ["DV", {"var": "dsp_type"}]},
            {"cat": ["a", {"var": "campaign_name"}]},
            {"substr": [{"var": "campaign_name"}, 0, 3]},
            {"matches": [{"var": "campaign_name"}, "^(?i)brand[_-]\\d+$"]},
        ]
    }  # fmt: skip
    assert parse_rule({"logic": logic}, {}).conditions.logic == logic


def test_unknown_variables_are_named_with_a_suggestion():
    assert logic_problems({"or": [{">": [{"var": "spnd"}, 1]}, {"<": [{"var": ["CTR", 0]}, 1]}]}) == [
        'conditions.logic.or[0].>[0]: unknown variable "spnd" (did you mean "spend"?)',
        'conditions.logic.or[1].<[0]: unknown variable "CTR" (did you mean "ctr"?)',
    ]


def test_variables_are_the_fields_of_the_rules_source():
    assert problems_of({"source": "pacing_snapshots", "logic": {">": [{"var": "spend"}, 1]}}) == [
        'conditions.logic.>[0]: unknown variable "spend"'
    ]


def test_previous_fields_need_compare_to():
    assert logic_problems({">": [{"var": "spend"}, {"var": "prev.spend"}]}) == [
        'conditions.logic.>[1]: unknown variable "prev.spend" (prev.* fields need "compare_to": "previous_period")'
    ]


def test_var_with_a_default_is_accepted():
    assert parse_rule({"logic": {">": [{"var": ["spend", 0]}, 1]}}, {}).conditions.logic == {
        ">": [{"var": ["spend", 0]}, 1]
    }


@pytest.mark.parametrize("name", [{"cat": ["sp", "end"]}, [{"var": "campaign_name"}], 5, None, [1]])
def test_variable_names_must_be_literal_strings(name):
    assert logic_problems({">": [{"var": name}, 1]}) == [
        "conditions.logic.>[0]: variable name must be a literal string"
    ]


def test_var_takes_at_most_a_name_and_a_default():
    assert logic_problems({">": [{"var": ["spend", 0, 1]}, 1]}) == [
        "conditions.logic.>[0]: var takes a variable name and an optional default, nothing more"
    ]
    assert logic_problems({">": [{"var": []}, 1]}) == ["conditions.logic.>[0]: var needs a variable name"]


def test_iteration_bodies_read_the_item_not_fields():
    logic = {
        "and": [
            {"some": [{"var": "spend"}, {">": [{"var": "anything"}, {"var": {"cat": ["x", "y"]}}]}]},
            {"reduce": [[1, 2], {"+": [{"var": "current"}, {"var": "accumulator"}]}, {"var": "clicks"}]},
            {"map": [[[1]], {"map": [{"var": "inner"}, {"var": "deeper"}]}]},
        ]
    }
    assert parse_rule({"logic": logic}, {}).conditions.logic == logic


def test_iteration_collections_and_reduce_initial_values_read_fields():
    assert logic_problems(
        {"and": [{"some": [{"var": "spnd"}, {"var": ""}]}, {"reduce": [[1], {"var": "current"}, {"var": "clcks"}]}]}
    ) == [
        'conditions.logic.and[0].some[0]: unknown variable "spnd" (did you mean "spend"?)',
        'conditions.logic.and[1].reduce[2]: unknown variable "clcks" (did you mean "clicks"?)',
    ]


def test_unknown_operators_inside_iteration_bodies_are_still_refused():
    assert logic_problems({"all": [[1], {"log": 1}]}) == [
        'conditions.logic.all[1]: the "log" operator is not allowed in rules: it only prints to a console'
    ]


def test_missing_asks_about_fields_only():
    assert logic_problems({"or": [{"missing": ["spend", "spnd"]}, {"missing_some": [1, ["clicks", "clix"]]}]}) == [
        'conditions.logic.or[0].missing[1]: unknown variable "spnd" (did you mean "spend"?)',
        'conditions.logic.or[1].missing_some[1][1]: unknown variable "clix" (did you mean "clicks"?)',
    ]


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(?=brand)", "invalid RE2 pattern: invalid perl operator: (?="),
        ("(a)\\1", "invalid RE2 pattern: invalid escape sequence: \\1"),
        ("[a-", "invalid RE2 pattern: missing ]: [a-"),
    ],
)
def test_matches_patterns_must_be_re2(pattern, reason):
    assert logic_problems({"matches": [{"var": "campaign_name"}, pattern]}) == [
        f"conditions.logic.matches[1]: {reason}"
    ]


def test_matches_takes_text_and_pattern():
    assert logic_problems({"matches": [{"var": "campaign_name"}]}) == [
        "conditions.logic: matches takes two arguments: [text, pattern]"
    ]
    computed = {"matches": [{"var": "campaign_name"}, {"cat": ["^", {"var": "advertiser_id"}]}]}
    assert parse_rule({"logic": computed}, {}).conditions.logic == computed


def test_nan_is_not_a_json_number():
    assert logic_problems({">": [{"var": "spend"}, math.nan]}) == [
        "conditions.logic.>[1]: NaN and Infinity are not JSON numbers"
    ]


# --- limits ---------------------------------------------------------------------------------------------------------

TOO_LARGE = ValidationProblem("", "the rule document is larger than 64 KiB of JSON")


def document_of_size(size: int, text: str = "x") -> dict:
    """A valid rule document whose compact UTF-8 JSON is exactly `size` bytes (by the json module)."""
    shell = {"conditions": {"logic": {"==": [{"var": "campaign_name"}, ""]}}, "actions": {}}
    padding = size - len(json.dumps(shell, separators=(",", ":")).encode())
    per_char = len(text.encode())
    filler = text * (padding // per_char) + "x" * (padding % per_char)
    document = {"conditions": {"logic": {"==": [{"var": "campaign_name"}, filler]}}, "actions": {}}
    assert len(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()) == size
    return document


def test_a_document_of_exactly_64_kib_is_accepted():
    assert validate_document(document_of_size(65_536)) == []
    assert validate_document(document_of_size(65_536, "é")) == []


def test_a_document_one_byte_over_64_kib_is_refused():
    assert validate_document(document_of_size(65_537)) == [TOO_LARGE]
    assert validate_document(document_of_size(65_538, "é")) == [TOO_LARGE]


def test_parse_rule_measures_conditions_and_actions_together():
    document = document_of_size(65_537)
    with pytest.raises(RuleValidationError) as error:
        parse_rule(document["conditions"], document["actions"])
    assert error.value.problems == [TOO_LARGE]


def test_a_10_mb_document_is_refused_by_size_alone():
    huge = {"conditions": {"logic": {"in": ["x" * 10_000_000, [{"var": "nope"}] * 100_000]}}, "actions": "bad"}
    assert validate_document(huge) == [TOO_LARGE]
    many_keys = {"conditions": {"logic": SPEND_OVER_1000}, "actions": {f"k{i}": i for i in range(1_000_000)}}
    assert validate_document(many_keys) == [TOO_LARGE]
    with pytest.raises(RuleValidationError) as error:
        parse_rule({"logic": {"in": [1, list(range(2_000_000))]}}, {})
    assert error.value.problems == [TOO_LARGE]


def test_a_100000_deep_nested_list_is_refused_without_recursion_error():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert validate_document({"conditions": {"logic": {"in": [1, deep]}}}) == [TOO_LARGE]
    with pytest.raises(RuleValidationError) as error:
        parse_rule(deep, deep)
    assert error.value.problems == [TOO_LARGE]


def test_deep_logic_within_the_size_limit_is_refused_without_recursion_error():
    deep: list = [1]
    for _ in range(30_000):
        deep = [deep]
    assert validate_document({"conditions": {"logic": {"in": [1, deep]}}}) == [
        ValidationProblem("conditions.logic", "is nested deeper than 32 levels"),
        ValidationProblem("conditions.logic", "has more than 1,000 nodes"),
    ]


def test_logic_32_levels_deep_is_accepted_and_33_refused():
    assert parse_rule({"logic": nested_not(32)}, {}).conditions.logic == nested_not(32)
    assert logic_problems(nested_not(33)) == ["conditions.logic: is nested deeper than 32 levels"]


def test_an_operations_own_argument_list_is_not_a_level_but_an_array_is():
    logic = {"var": "spend"}
    for _ in range(31):
        logic = {"!": [logic]}
    assert parse_rule({"logic": logic}, {}).conditions.logic == logic
    # `in` is level 1, so its array argument nested 31 deep reaches level 32.
    assert parse_rule({"logic": {"in": [1, nest(31, 1)]}}, {}).conditions.logic == {"in": [1, nest(31, 1)]}
    assert logic_problems({"in": [1, nest(32, 1)]}) == ["conditions.logic: is nested deeper than 32 levels"]


def test_logic_of_1000_nodes_is_accepted_and_1001_refused():
    # and-object, its argument list, then 499 × (var object, its name) = 1,000 nodes.
    accepted = {"and": [{"var": "spend"}] * 499}
    assert parse_rule({"logic": accepted}, {}).conditions.logic == accepted
    assert logic_problems({"and": [{"var": "spend"}] * 499 + [1]}) == ["conditions.logic: has more than 1,000 nodes"]


def test_bad_cron_expressions_are_refused():
    assert problems_of({"logic": SPEND_OVER_1000, "schedule": "0 * * * * *"}) == [
        'conditions.schedule: "0 * * * * *" is not a 5-field cron expression '
        '(minute hour day-of-month month day-of-week), as in "0 * * * *"'
    ]
    assert problems_of({"logic": SPEND_OVER_1000, "schedule": "@hourly"}) == [
        'conditions.schedule: "@hourly" is not a 5-field cron expression '
        '(minute hour day-of-month month day-of-week), as in "0 * * * *"'
    ]
    assert problems_of({"logic": SPEND_OVER_1000, "schedule": "61 * * * *"}) == [
        'conditions.schedule: "61 * * * *" is not a valid cron expression'
    ]
    assert problems_of({"logic": SPEND_OVER_1000, "schedule": 5}) == ["conditions.schedule: must be a string"]


@pytest.mark.parametrize("schedule", ["*/15 * * * *", "0 9 * * mon-fri", "30 6 1 * *", "0 0 1 jan *"])
def test_good_cron_expressions_are_accepted(schedule):
    assert parse_rule({"logic": SPEND_OVER_1000, "schedule": schedule}, {}).conditions.schedule == schedule


def test_the_timezone_is_checked_only_when_given():
    assert problems_of({"logic": SPEND_OVER_1000}, timezone="Mars/Olympus_Mons") == [
        'timezone: unknown timezone "Mars/Olympus_Mons"'
    ]
    assert parse_rule({"logic": SPEND_OVER_1000}, {}, timezone="Pacific/Kiritimati").conditions.window == "yesterday"


@pytest.mark.parametrize(
    ("window", "reason"),
    [
        ("last_0_days", 'window "last_0_days" is out of range: N in last_N_days must be 1 to 365'),
        ("last_366_days", 'window "last_366_days" is out of range: N in last_N_days must be 1 to 365'),
        (
            "last_x_days",
            'unknown window "last_x_days": expected today, yesterday, last_N_days (N from 1 to 365), '
            "month_to_date or lifetime",
        ),
    ],
)
def test_windows_out_of_range_are_refused(window, reason):
    assert problems_of({"logic": SPEND_OVER_1000, "window": window}) == [f"conditions.window: {reason}"]


def test_compare_to_is_previous_period_and_not_with_lifetime():
    assert problems_of({"logic": SPEND_OVER_1000, "window": "lifetime", "compare_to": "previous_period"}) == [
        "conditions.compare_to: lifetime has no previous period to compare to"
    ]
    assert problems_of({"logic": SPEND_OVER_1000, "compare_to": "previous_perod"}) == [
        'conditions.compare_to: must be "previous_period" (did you mean "previous_period"?)'
    ]


def test_scope_columns_depend_on_the_source():
    assert problems_of({"logic": SPEND_OVER_1000, "scope": {"campaign": ["c-1"], "entity_type": ["io"]}}) == [
        'conditions.scope.campaign: unknown scope column "campaign" for campaign_metrics_daily '
        '(did you mean "campaign_id"?); expected dsp_type, advertiser_id, campaign_id',
        'conditions.scope.entity_type: unknown scope column "entity_type" for campaign_metrics_daily; '
        "expected dsp_type, advertiser_id, campaign_id",
    ]
    pacing = {"source": "pacing_snapshots", "logic": {"var": "pacing_rate"}, "scope": {"entity_type": ["io"]}}
    assert parse_rule(pacing, {}).conditions.scope == {"entity_type": ("io",)}


def test_scope_values_are_non_empty_lists_of_short_strings():
    scope = {
        "dsp_type": [],
        "advertiser_id": [f"adv-{i}" for i in range(1001)],
        "campaign_id": ["c-1", 7, "x" * 256],
    }
    assert problems_of({"logic": SPEND_OVER_1000, "scope": scope}) == [
        "conditions.scope.advertiser_id: must have at most 1,000 items",
        "conditions.scope.campaign_id[1]: must be a string",
        "conditions.scope.campaign_id[2]: must be at most 255 characters",
        "conditions.scope.dsp_type: must not be empty",
    ]
    accepted = {"campaign_id": [f"c-{i}" for i in range(1000)], "dsp_type": ["x" * 255]}
    assert len(parse_rule({"logic": SPEND_OVER_1000, "scope": accepted}, {}).conditions.scope["campaign_id"]) == 1000


# --- actions --------------------------------------------------------------------------------------------------------


def test_action_values_are_checked():
    actions = {"severity": "warnng", "cooldown_minutes": 10_081, "notify_on_resolve": "yes"}
    assert problems_of({"logic": SPEND_OVER_1000}, actions) == [
        "actions.cooldown_minutes: must be at most 10080",
        "actions.notify_on_resolve: must be true or false",
        'actions.severity: must be one of "critical", "warning", "info" (did you mean "warning"?)',
    ]


@pytest.mark.parametrize(
    ("cooldown", "reason"),
    [
        (-1, "must be at least 0"),
        ("60", "must be a whole number"),
        (True, "must be a whole number"),
        (1.5, "must be a whole number"),
    ],
)
def test_cooldown_is_a_whole_number_of_minutes_up_to_a_week(cooldown, reason):
    assert problems_of({"logic": SPEND_OVER_1000}, {"cooldown_minutes": cooldown}) == [
        f"actions.cooldown_minutes: {reason}"
    ]


def test_cooldown_bounds_are_accepted():
    assert parse_rule({"logic": SPEND_OVER_1000}, {"cooldown_minutes": 0}).actions.cooldown_minutes == 0
    assert parse_rule({"logic": SPEND_OVER_1000}, {"cooldown_minutes": 10_080}).actions.cooldown_minutes == 10_080


def test_channels_and_roles_come_from_fixed_lists():
    notify = {"channels": ["in_app", "sms"], "roles": ["owner", "admn"]}
    assert problems_of({"logic": SPEND_OVER_1000}, {"notify": notify}) == [
        'actions.notify.channels[1]: must be one of "in_app", "email", "slack", "webhook"',
        'actions.notify.roles[1]: must be one of "owner", "admin", "member", "viewer" (did you mean "admin"?)',
    ]


def test_slack_and_webhook_urls_are_required_exactly_with_their_channel():
    assert problems_of({"logic": SPEND_OVER_1000}, {"notify": {"channels": ["slack", "webhook"]}}) == [
        'actions.notify.slack_webhook_url: is required when channels include "slack"',
        'actions.notify.webhook_url: is required when channels include "webhook"',
    ]
    urls_alone = {"notify": {"slack_webhook_url": SLACK_URL, "webhook_url": WEBHOOK_URL}}
    assert problems_of({"logic": SPEND_OVER_1000}, urls_alone) == [
        'actions.notify.slack_webhook_url: is set, but channels do not include "slack"',
        'actions.notify.webhook_url: is set, but channels do not include "webhook"',
    ]


def slack_problems(url: str, allowed_hosts: frozenset[str] = frozenset()) -> list[str]:
    notify = {"channels": ["slack"], "slack_webhook_url": url}
    try:
        parse_rule({"logic": SPEND_OVER_1000}, {"notify": notify}, allowed_hosts=allowed_hosts)
    except RuleValidationError as error:
        return [str(problem) for problem in error.problems]
    return []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/hook",
        "https://api.LOCALHOST/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.5.4/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/",
        "http://0.0.0.0/",
        "http://[::1]/hook",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:169.254.169.254]/",
        "http://2130706433/",
        "http://127.1/",
        "http://0x7f.0.0.1/",
        "http://224.0.0.1/",
    ],
)
def test_urls_to_non_public_addresses_are_refused(url):
    [problem] = slack_problems(url)
    assert problem.startswith(f"actions.notify.slack_webhook_url: {json.dumps(url)} points to ")
    assert problem.endswith("which is not a public address; allow it with NOTIFY_ALLOWED_HOSTS")


def test_the_refusal_names_the_host():
    assert slack_problems("http://169.254.169.254/latest") == [
        'actions.notify.slack_webhook_url: "http://169.254.169.254/latest" points to "169.254.169.254", '
        "which is not a public address; allow it with NOTIFY_ALLOWED_HOSTS"
    ]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/x", '"ftp://hooks.example.com/x" must be an http:// or https:// URL'),
        ("hooks.example.com/x", '"hooks.example.com/x" must be an http:// or https:// URL'),
        ("https:///path-only", '"https:///path-only" has no host'),
        ("https://hooks.example.com:99999/x", '"https://hooks.example.com:99999/x" is not a valid URL'),
        ("https://hooks.example .com/x", '"https://hooks.example .com/x" is not a valid URL: it contains whitespace'),
    ],
)
def test_urls_must_be_http_with_a_host(url, reason):
    assert slack_problems(url) == [f"actions.notify.slack_webhook_url: {reason}"]


def test_allowed_hosts_open_a_host_or_a_host_and_port_case_insensitively():
    assert slack_problems("http://LocalHost:8080/hook", frozenset({"localhost"})) == []
    assert slack_problems("http://localhost:8080/hook", frozenset({"LOCALHOST:8080"})) == []
    assert slack_problems("http://10.0.0.5/hook", frozenset({"10.0.0.5:80"})) == []
    assert slack_problems("http://[::1]:9000/hook", frozenset({"[::1]:9000"})) == []
    assert len(slack_problems("http://localhost:9090/hook", frozenset({"localhost:8080"}))) == 1
    assert len(slack_problems("http://10.0.0.6/hook", frozenset({"10.0.0.5"}))) == 1


def test_public_hosts_and_names_are_accepted_without_resolving_them():
    assert slack_problems("https://hooks.slack.com/services/T/B/X") == []
    assert slack_problems("http://8.8.8.8:8080/hook") == []
    assert slack_problems("https://internal-looking.example/hook") == []


# --- every problem at once ------------------------------------------------------------------------------------------


def test_every_problem_is_reported_at_once_with_its_path():
    conditions = {
        "sorce": "campaign_metrics_daily",
        "window": "last_400_days",
        "compare_to": "previous_period",
        "scope": {"dsp": ["DV360"], "campaign_id": []},
        "schedule": "0 * * *",
        "logic": {
            "and": [
                {">": [{"var": "spend"}, 1000]},
                {">": [{"var": "spnd"}, 0]},
                {"matches": [{"var": "campaign_name"}, "(?<=x)"]},
                {"=": [{"var": "prev.clicks"}, 0]},
            ]
        },
    }
    actions = {
        "sevrity": "critical",
        "cooldown_minutes": -5,
        "notify": {"channels": ["slack", "pager"], "webhook_url": "http://169.254.169.254/"},
    }
    assert problems_of(conditions, actions, timezone="Nowhere/Town") == [
        "actions.cooldown_minutes: must be at least 0",
        'actions.notify.channels[1]: must be one of "in_app", "email", "slack", "webhook"',
        'actions.notify.slack_webhook_url: is required when channels include "slack"',
        'actions.notify.webhook_url: "http://169.254.169.254/" points to "169.254.169.254", '
        "which is not a public address; allow it with NOTIFY_ALLOWED_HOSTS",
        'actions.notify.webhook_url: is set, but channels do not include "webhook"',
        'actions.sevrity: unknown key "sevrity" (did you mean "severity"?)',
        'conditions.logic.and[1].>[0]: unknown variable "spnd" (did you mean "spend"?)',
        "conditions.logic.and[2].matches[1]: invalid RE2 pattern: invalid perl operator: (?<=",
        'conditions.logic.and[3]: unknown operator "=" (did you mean "=="?)',
        'conditions.schedule: "0 * * *" is not a 5-field cron expression '
        '(minute hour day-of-month month day-of-week), as in "0 * * * *"',
        "conditions.scope.campaign_id: must not be empty",
        'conditions.scope.dsp: unknown scope column "dsp" for campaign_metrics_daily; '
        "expected dsp_type, advertiser_id, campaign_id",
        'conditions.sorce: unknown key "sorce" (did you mean "source"?)',
        'conditions.window: window "last_400_days" is out of range: N in last_N_days must be 1 to 365',
        'timezone: unknown timezone "Nowhere/Town"',
    ]


def test_messages_carry_no_validation_library_jargon():
    messages = problems_of(
        {"source": 1, "window": [], "scope": "x", "logic": {}, "schedule": None, "extra": 1},
        {"severity": None, "cooldown_minutes": "x", "notify": [], "notify_on_resolve": 0},
    )
    assert messages == [
        "actions.cooldown_minutes: must be a whole number",
        "actions.notify: must be an object",
        "actions.notify_on_resolve: must be true or false",
        'actions.severity: must be one of "critical", "warning", "info"',
        'conditions.extra: unknown key "extra"',
        "conditions.logic: an operation must have exactly one operator, found 0 keys",
        "conditions.schedule: must be a string",
        "conditions.scope: must be an object",
        'conditions.source: must be one of "campaign_metrics_daily", "pacing_snapshots"',
        "conditions.window: must be a string",
    ]


def test_keys_that_are_not_identifiers_are_quoted_in_paths():
    assert problems_of({"logic": SPEND_OVER_1000, "odd key.name": 1}) == [
        'conditions["odd key.name"]: unknown key "odd key.name"'
    ]


def test_long_values_are_cut_short_in_messages():
    [problem] = logic_problems({"var": "s" * 5000})
    assert problem == f'conditions.logic: unknown variable "{"s" * 77}..."'


# --- the file form --------------------------------------------------------------------------------------------------


def test_a_valid_document_has_no_problems_and_actions_are_optional():
    assert validate_document({"conditions": {"logic": SPEND_OVER_1000}}) == []
    assert validate_document({"conditions": SPEND_OVER_1000, "actions": {"severity": "info"}}) == []


def test_a_document_must_be_an_object_with_conditions():
    assert validate_document([]) == [
        ValidationProblem("", 'a rule document must be a JSON object with "conditions" and "actions"')
    ]
    assert validate_document({"condition": {}, "actions": {"severity": "loud"}}) == [
        ValidationProblem("condition", 'unknown key "condition" (did you mean "conditions"?)'),
        ValidationProblem("conditions", "is required"),
        ValidationProblem("actions.severity", 'must be one of "critical", "warning", "info"'),
    ]
    assert validate_document({"conditions": SPEND_OVER_1000, "actions": None}) == [
        ValidationProblem("actions", "must be an object")
    ]


def test_validate_document_checks_timezone_and_allowed_hosts():
    document = {
        "conditions": SPEND_OVER_1000,
        "actions": {"notify": {"channels": ["webhook"], "webhook_url": "http://hooks.internal.localhost/x"}},
    }
    allowed_hosts = frozenset({"hooks.internal.localhost"})
    assert validate_document(document, timezone="Asia/Tokyo", allowed_hosts=allowed_hosts) == []
    assert [p.path for p in validate_document(document, timezone="Asia/Tokio")] == [
        "actions.notify.webhook_url",
        "timezone",
    ]


def test_python_values_that_are_not_json_are_problems_not_crashes():
    assert validate_document({"conditions": {"logic": {"in": [1, {1, 2}]}}}) == [
        ValidationProblem("conditions.logic.in[1]", "is not a JSON value (a Python set)")
    ]
    assert validate_document({"conditions": {1: "x"}}) == [
        ValidationProblem("conditions", "object keys must be strings")
    ]


# --- the JSON Schema ------------------------------------------------------------------------------------------------

_ANNOTATIONS = {"title", "description", "default", "format", "$schema", "$defs"}


def schema_accepts(instance, schema: dict, root: dict) -> bool:
    """A small JSON Schema validator for the keywords the rule schema uses; unknown keywords fail the test."""
    types = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }
    checks = {
        "$ref": lambda ref: schema_accepts(instance, root["$defs"][ref.removeprefix("#/$defs/")], root),
        "anyOf": lambda options: any(schema_accepts(instance, option, root) for option in options),
        "type": lambda kind: types[kind](instance),
        "enum": lambda values: instance in values,
        "const": lambda value: instance == value,
        "pattern": lambda pattern: not isinstance(instance, str) or re.search(pattern, instance) is not None,
        "maxLength": lambda n: not isinstance(instance, str) or len(instance) <= n,
        "minimum": lambda n: not types["number"](instance) or instance >= n,
        "maximum": lambda n: not types["number"](instance) or instance <= n,
        "minItems": lambda n: not isinstance(instance, list) or len(instance) >= n,
        "maxItems": lambda n: not isinstance(instance, list) or len(instance) <= n,
        "items": lambda item: not isinstance(instance, list) or all(schema_accepts(i, item, root) for i in instance),
        "minProperties": lambda n: not isinstance(instance, dict) or len(instance) >= n,
        "maxProperties": lambda n: not isinstance(instance, dict) or len(instance) <= n,
        "required": lambda keys: not isinstance(instance, dict) or all(key in instance for key in keys),
        "propertyNames": lambda names: not isinstance(instance, dict)
        or all(schema_accepts(key, names, root) for key in instance),
        "properties": lambda properties: not isinstance(instance, dict)
        or all(schema_accepts(instance[k], s, root) for k, s in properties.items() if k in instance),
        "additionalProperties": lambda extra: not isinstance(instance, dict)
        or all(
            extra is True or (extra is not False and schema_accepts(value, extra, root))
            for key, value in instance.items()
            if key not in schema.get("properties", {})
        ),
    }
    for keyword, value in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        assert keyword in checks, f"the test validator does not know {keyword}"
        if not checks[keyword](value):
            return False
    return True


FULL_DOCUMENT = {
    "conditions": {
        "source": "campaign_metrics_daily",
        "window": "last_7_days",
        "compare_to": "previous_period",
        "scope": {"dsp_type": ["DV360", "TTD"], "advertiser_id": ["adv-1"], "campaign_id": ["c-9"]},
        "logic": {"and": [{">": [{"var": "spend"}, 1000]}, {"<": [{"var": "ctr"}, 0.001]}]},
        "schedule": "*/15 * * * *",
    },
    "actions": {
        "severity": "critical",
        "cooldown_minutes": 60,
        "notify_on_resolve": False,
        "notify": {
            "channels": ["in_app", "email", "slack", "webhook"],
            "roles": ["owner", "admin", "member"],
            "slack_webhook_url": "https://…",
            "webhook_url": "https://…",
        },
    },
}


def test_the_schema_describes_the_document():
    schema = rule_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert set(schema["properties"]) == {"conditions", "actions"}
    assert schema["required"] == ["conditions"]
    assert schema["additionalProperties"] is False
    conditions = schema["$defs"]["Conditions"]
    assert set(conditions["properties"]) == {"source", "window", "compare_to", "scope", "logic", "schedule",
                                             "recheck_after", "data_delay", "max_wait", "on_stale"}
    assert conditions["required"] == ["logic"]
    assert conditions["properties"]["recheck_after"]["pattern"] == r"^(0|(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?)$"
    assert conditions["properties"]["max_wait"]["pattern"] == conditions["properties"]["recheck_after"]["pattern"]
    assert conditions["properties"]["schedule"]["default"] == "0 * * * *"
    assert schema["$defs"]["Actions"]["properties"]["cooldown_minutes"]["maximum"] == 10_080
    channels = schema["$defs"]["Notify"]["properties"]["channels"]
    assert set(channels["items"]["enum"]) == {"in_app", "email", "slack", "webhook"}
    json.dumps(schema)


def test_the_schema_accepts_a_full_document_and_the_bare_form():
    schema = rule_json_schema()
    assert schema_accepts(FULL_DOCUMENT, schema, schema)
    assert schema_accepts({"conditions": FULL_DOCUMENT["conditions"]}, schema, schema)
    assert schema_accepts({"conditions": SPEND_OVER_1000}, schema, schema)
    pacing = {"conditions": {"source": "pacing_snapshots", "logic": {"var": "pacing_rate"}}}
    assert schema_accepts(pacing, schema, schema)


def test_the_schema_refuses_what_validation_refuses_in_shape():
    schema = rule_json_schema()
    refused = [
        {"actions": {}},
        {"conditions": SPEND_OVER_1000, "extra": 1},
        {"conditions": {"logic": SPEND_OVER_1000, "sorce": "x"}},
        {"conditions": {"logic": SPEND_OVER_1000, "window": "last_366_days"}},
        {"conditions": SPEND_OVER_1000, "actions": {"severity": "loud"}},
        {"conditions": SPEND_OVER_1000, "actions": {"cooldown_minutes": 10_081}},
        {"conditions": SPEND_OVER_1000, "actions": {"notify": {"channels": ["sms"]}}},
        {"conditions": {"logic": {"log": 1}}},
    ]
    for document in refused:
        assert not schema_accepts(document, schema, schema), document


# --- fuzzing --------------------------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=60,
)


def nest(depth: int, inner):
    for _ in range(depth):
        inner = [inner]
    return inner


huge_values = st.one_of(
    st.builds(lambda n: "x" * n, st.integers(60_000, 3_000_000)),
    st.builds(nest, st.integers(30, 120_000), json_scalars),
    st.builds(lambda n: list(range(n)), st.integers(1, 200_000)),
    st.builds(lambda bits: 1 << bits, st.integers(60, 300_000)),
)
field_names = st.sampled_from(["spend", "ctr", "prev.spend", "pacing_rate", "spnd", "", "current"])
logic_values = st.recursive(
    json_scalars | st.builds(lambda name: {"var": name}, field_names | json_values),
    lambda children: st.dictionaries(
        st.sampled_from(sorted(RULE_OPERATORS)) | st.sampled_from(["log", "=", "foo"]),
        st.lists(children, max_size=4) | children,
        min_size=1,
        max_size=1,
    ),
    max_leaves=40,
)
condition_documents = st.one_of(
    json_values,
    logic_values,
    st.fixed_dictionaries(
        {"logic": logic_values},
        optional={
            "source": st.sampled_from(["campaign_metrics_daily", "pacing_snapshots", "x"]) | json_values,
            "window": st.sampled_from(["today", "lifetime", "last_7_days", "last_0_days"]) | json_values,
            "compare_to": st.sampled_from(["previous_period", None]) | json_values,
            "scope": json_values,
            "schedule": st.sampled_from(["0 * * * *", "* * *"]) | json_values,
        },
    ),
)
action_documents = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "severity": json_values,
            "cooldown_minutes": json_values,
            "notify": st.fixed_dictionaries(
                {},
                optional={
                    "channels": st.lists(st.sampled_from(["in_app", "slack", "webhook", "sms"])) | json_values,
                    "slack_webhook_url": st.sampled_from(["http://127.0.0.1/", "https://a.example/", "::"])
                    | json_values,
                    "webhook_url": json_values,
                },
            ),
        },
    ),
)
documents = st.one_of(
    json_values,
    huge_values,
    st.fixed_dictionaries({"conditions": condition_documents}, optional={"actions": action_documents}),
    st.fixed_dictionaries({"conditions": huge_values | condition_documents}, optional={"actions": huge_values}),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents)
def test_validate_document_never_raises_on_any_json(document):
    problems = validate_document(document, timezone="UTC", allowed_hosts=frozenset({"a.example"}))
    assert isinstance(problems, list)
    for problem in problems:
        assert isinstance(problem, ValidationProblem)
        assert isinstance(problem.path, str)
        assert isinstance(problem.reason, str) and problem.reason
        assert "Input should be" not in problem.reason


# --- the alert lifecycle's actions ------------------------------------------------------------------------------------


def test_pending_and_recovery_runs_default_to_one_and_recover_when_to_none():
    rule = parse_rule({"logic": {">": [{"var": "spend"}, 1]}}, {})
    assert (rule.actions.pending_runs, rule.actions.recovery_runs, rule.recover_when) == (1, 1, None)


def test_recover_when_is_validated_like_logic_over_the_rules_source_with_its_json_path():
    conditions = {"source": "pacing_snapshots", "logic": {"<": [{"var": "pacing_rate"}, 0.5]}}
    with pytest.raises(RuleValidationError) as raised:
        parse_rule(conditions, {"pending_runs": 0, "recovery_runs": 1001,
                                "recover_when": {"and": [{">": [{"var": "pacing_rat"}, 0.8]}, {"log": [1]}]}})
    assert [str(problem) for problem in raised.value.problems] == [
        "actions.pending_runs: must be at least 1",
        "actions.recovery_runs: must be at most 1000",
        'actions.recover_when.and[0].>[0]: unknown variable "pacing_rat" (did you mean "pacing_rate"?)',
        'actions.recover_when.and[1]: the "log" operator is not allowed in rules: it only prints to a console',
    ]
    rule = parse_rule(conditions, {"recover_when": {">": [{"var": "pacing_rate"}, 0.8]}})
    assert rule.recover_when == {">": [{"var": "pacing_rate"}, 0.8]}


def test_the_schema_describes_the_lifecycle_actions():
    actions = rule_json_schema()["$defs"]["Actions"]["properties"]
    assert (actions["pending_runs"]["minimum"], actions["recovery_runs"]["maximum"]) == (1, 1000)
    assert {"type": "null"} in actions["recover_when"]["anyOf"]
