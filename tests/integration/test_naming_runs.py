"""Naming conventions in rule runs, end to end on the real PostgreSQL and the embedded ClickHouse: every token kind,
wrong token counts, cross-field checks and suggestions (also for tokens over 64 KiB), the same `condition_results`
bytes on the SQL path and on the interpreter, conventions read afresh on each run, and a deleted convention failing
the run.

Every expected document below is written out by hand from the names the test inserts.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from psycopg.types.json import Jsonb

from worker.runner import RuleRunner, RunRequest
from benchmarks.bench import NAMING_CONVENTION as CAMPAIGN

T = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=3)
YESTERDAY = (T.date() - timedelta(days=1)).isoformat()

INSERTION_ORDER = {"delimiter": "|", "tokens": [
    {"name": "advertiser", "equals": "advertiser_id"},
    {"name": "channel", "values": ["Display", "Video"], "ignore_case": True},
    {"name": "start", "date": "YYYY-MM-DD"},
    {"name": "note", "free": True, "optional": True}]}
NAMING = {"window": "yesterday", "logic": {"naming": [{"var": "campaign_name"}, "campaign"]}}


def _diagnosis(token, position, value, reason, suggest=None) -> str:
    return json.dumps({"token": token, "position": position, "value": value, "reason": reason, "suggest": suggest},
                      separators=(",", ":"), ensure_ascii=False)


CAMPAIGNS = {  # campaign id: (name, dsp_type, the expected naming diagnosis)
    "c01": ("US_DV360_Brand_Q1_202611_Spring", "DV360", "null"),
    "c02": ("US_DV36O_Brand_Q1", "DV360", _diagnosis("dsp", 2, "DV36O", "does not equal the campaign's dsp_type",
                                                     "DV360")),
    "c03": ("us_DV360_Brand_Q1", "DV360", _diagnosis("market", 1, "us", "wrong case", "US")),
    "c04": ("US_DV360_Brnd_Q1", "DV360", _diagnosis("objective", 3, "Brnd", "not an allowed value", "Brand")),
    "c05": ("US_DV360_Brand_Q5", "DV360", _diagnosis("period", 4, "Q5", "does not match ^Q[1-4]$")),
    "c06": ("US_DV360_Brand_Q1_202613_Spring", "DV360",
            _diagnosis("month", 5, "202613", "not a date in the form YYYYMM")),
    "c07": ("US_DV360_Brand", "DV360", _diagnosis("period", 4, "", "too few tokens: 3, at least 4")),
    "c08": ("US_DV360_Brand_Q1_202611_Spring_extra", "DV360",
            _diagnosis(None, 7, "extra", "too many tokens: 7, at most 6")),
    "c09": ("US_DV360_Brand_Q1_202611_", "DV360", _diagnosis("label", 6, "", "is empty")),
    "c10": ("XX_DV360_Brand_Q1", "DV360", _diagnosis("market", 1, "XX", "not an allowed value")),
    "c11": ("US_TTD_Perf_Q4", "TTD", "null"),
    "c12": ("EU_DV360_Brand_Q2_Spring", "DV360", "null"),
}
ORDERS = {  # campaign id: (name, advertiser_id, the expected naming diagnosis)
    "o1": ("adv-1|display|2024-02-29", "adv-1", "null"),
    "o2": ("adv-1|Vidoe|2024-02-29", "adv-1", _diagnosis("channel", 2, "Vidoe", "not an allowed value", "Video")),
    "o3": ("adv-2|Video|2024-02-29", "adv-1", _diagnosis("advertiser", 1, "adv-2",
                                                         "does not equal the campaign's advertiser_id", "adv-1")),
    "o4": ("adv-1|Video|2023-02-29", "adv-1", _diagnosis("start", 3, "2023-02-29",
                                                         "not a date in the form YYYY-MM-DD")),
    "o5": ("adv-1|Video|2024-02-29|launch|x", "adv-1", _diagnosis(None, 5, "x", "too many tokens: 5, at most 4")),
    "o6": ("adv-1", "adv-1", _diagnosis("channel", 2, "", "too few tokens: 1, at least 3")),
    "o7": ("adv-9|VIDEO|2026-12-31|launch", "adv-9", "null"),
}


def _organization(env, conventions: dict) -> int:
    org = env.org(timezone="UTC")
    env.pg("UPDATE organizations SET settings = %s WHERE id = %s", (Jsonb({"naming_conventions": conventions}), org))
    return org


def _set_conventions(env, org: int, conventions: dict) -> None:
    env.pg("UPDATE organizations SET settings = jsonb_set(settings, '{naming_conventions}', %s) WHERE id = %s",
           (Jsonb(conventions), org))


def _both_paths(env, rule: str) -> tuple[dict, dict]:
    """The rule run on the SQL path as of T and on the interpreter as of T + 1 hour (the same window)."""
    sql_run = env.run(rule, T)
    interpreter = RuleRunner(env.postgres, env.clickhouse, interpreter_only=True)
    interpreted_run = interpreter.run(RunRequest(rule_id=rule, scheduled_for=T + timedelta(hours=1)))
    return sql_run, interpreted_run


def _documents(env, rule: str, at: datetime) -> dict[str, tuple[int, str]]:
    return {row["entity_id"]: (row["matched"], row["condition_results"]) for row in env.evaluations(rule, at)}


def test_every_token_kind_and_count_on_both_paths(env):
    org = _organization(env, {"campaign": CAMPAIGN})
    rule = env.rule(org, NAMING, module="taxonomy")
    env.metrics(*({"org_id": org, "date": YESTERDAY, "campaign_id": campaign, "campaign_name": name,
                   "dsp_type": dsp_type} for campaign, (name, dsp_type, _) in CAMPAIGNS.items()))

    sql_run, interpreted_run = _both_paths(env, rule)

    assert (sql_run["status"], sql_run["path"]) == ("succeeded", "sql")
    assert (interpreted_run["status"], interpreted_run["path"]) == ("succeeded", "interpreter")
    expected = {
        campaign: (int(diagnosis != "null"), f'{{"campaign_name":{json.dumps(name)},"dsp_type":"{dsp_type}",'
                                             f'"naming":{diagnosis},"conditions":[{json.dumps(diagnosis != "null")}]}}')
        for campaign, (name, dsp_type, diagnosis) in CAMPAIGNS.items()
    }
    assert _documents(env, rule, T) == expected
    assert _documents(env, rule, T + timedelta(hours=1)) == expected
    assert sql_run["matched"] == interpreted_run["matched"] == 9


def test_advertiser_dates_ignore_case_and_optional_tokens_on_both_paths(env):
    org = _organization(env, {"io": INSERTION_ORDER})
    rule = env.rule(org, {"window": "yesterday", "logic": {"naming": [{"var": "campaign_name"}, "io"]}},
                    module="taxonomy")
    env.metrics(*({"org_id": org, "date": YESTERDAY, "campaign_id": campaign, "campaign_name": name,
                   "advertiser_id": advertiser} for campaign, (name, advertiser, _) in ORDERS.items()))

    sql_run, interpreted_run = _both_paths(env, rule)

    assert sql_run["path"] == "sql" and interpreted_run["path"] == "interpreter"
    expected = {
        campaign: (int(diagnosis != "null"), f'{{"advertiser_id":"{advertiser}","campaign_name":{json.dumps(name)},'
                                             f'"naming":{diagnosis},"conditions":[{json.dumps(diagnosis != "null")}]}}')
        for campaign, (name, advertiser, diagnosis) in ORDERS.items()
    }
    assert _documents(env, rule, T) == expected
    assert _documents(env, rule, T + timedelta(hours=1)) == expected


def test_naming_beside_other_conditions_records_the_first_broken_check(env):
    org = _organization(env, {"campaign": CAMPAIGN, "io": INSERTION_ORDER})
    logic = {"and": [{">": [{"var": "spend"}, 1]}, {"or": [{"naming": [{"var": "campaign_name"}, "io"]},
                                                           {"naming": [{"var": "campaign_name"}, "campaign"]}]}]}
    rule = env.rule(org, {"window": "yesterday", "logic": logic})
    env.metrics({"org_id": org, "date": YESTERDAY, "campaign_id": "c1", "campaign_name": "US_DV360_Brand_Q1",
                 "spend": 5},
                {"org_id": org, "date": YESTERDAY, "campaign_id": "c2", "campaign_name": "adv-1|Video|2024-02-29",
                 "spend": 5})

    _both_paths(env, rule)

    io_break = _diagnosis("channel", 2, "", "too few tokens: 1, at least 3")
    campaign_break = _diagnosis("dsp", 2, "", "too few tokens: 1, at least 4")
    for at in (T, T + timedelta(hours=1)):
        documents = _documents(env, rule, at)
        assert json.loads(documents["c1"][1])["naming"] == json.loads(io_break)
        assert json.loads(documents["c2"][1])["naming"] == json.loads(campaign_break)
        assert documents["c1"][0] == documents["c2"][0] == 1


def test_alerts_and_in_app_notifications_carry_the_diagnosis(env):
    org = _organization(env, {"campaign": CAMPAIGN})
    owner = env.user()
    env.member(owner, org, "owner")
    rule = env.rule(org, NAMING, {"notify": {"channels": ["in_app"]}}, module="taxonomy")
    env.metrics({"org_id": org, "date": YESTERDAY, "campaign_id": "c02", "campaign_name": "US_DV36O_Brand_Q1"})

    result = env.run(rule, T)

    assert result["alerts"] == 1
    [alert] = env.alerts(rule)
    assert alert["details"]["naming"] == json.loads(CAMPAIGNS["c02"][2])
    [notification] = env.pg("SELECT entities FROM notifications WHERE user_id = %s", (owner,))
    assert notification["entities"][0]["naming"] == json.loads(CAMPAIGNS["c02"][2])


def test_a_convention_change_takes_effect_on_the_next_run(env):
    org = _organization(env, {"campaign": CAMPAIGN})
    rule = env.rule(org, NAMING, module="taxonomy")
    env.metrics({"org_id": org, "date": YESTERDAY, "campaign_id": "c1", "campaign_name": "FR_DV360_Brand_Q1"})

    before = env.run(rule, T)
    markets = {**CAMPAIGN["tokens"][0], "values": ["US", "EU", "UK", "FR"]}
    _set_conventions(env, org, {"campaign": {**CAMPAIGN, "tokens": [markets, *CAMPAIGN["tokens"][1:]]}})
    after = env.run(rule, T + timedelta(hours=1))

    assert (before["matched"], after["matched"]) == (1, 0)
    assert json.loads(_documents(env, rule, T)["c1"][1])["naming"]["reason"] == "not an allowed value"
    assert json.loads(_documents(env, rule, T + timedelta(hours=1))["c1"][1])["naming"] is None


def test_a_deleted_convention_fails_the_run_saying_so(env):
    org = _organization(env, {"campaign": CAMPAIGN})
    rule = env.rule(org, NAMING, module="taxonomy")
    env.metrics({"org_id": org, "date": YESTERDAY, "campaign_id": "c1", "campaign_name": "US_DV360_Brand_Q1"})
    assert env.run(rule, T)["status"] == "succeeded"

    _set_conventions(env, org, {"campaigns": CAMPAIGN})
    result = env.run(rule, T + timedelta(hours=1))

    assert result["status"] == "failed"
    assert result["error"] == ('conditions.logic: the organization has no naming convention "campaign"'
                               ' (did you mean "campaigns"?)')
    assert env.count("rule_evaluations", rule) == 1


def test_an_invalid_stored_convention_fails_the_run_with_its_path(env):
    org = _organization(env, {"campaign": {"delimiter": "_", "tokens": [{"name": "market", "values": []}]}})
    rule = env.rule(org, NAMING, module="taxonomy")

    result = env.run(rule, T)

    assert result["status"] == "failed"
    assert result["error"] == ('conditions.logic: the naming convention "campaign" is invalid: tokens[0].values: '
                               'must be a list of 1 to 1,000 allowed values')


def test_a_cross_field_convention_on_pacing_snapshots_fails_validation(env):
    org = _organization(env, {"campaign": CAMPAIGN})
    rule = env.rule(org, {"source": "pacing_snapshots", "logic": {"naming": [{"var": "entity_id"}, "campaign"]}})

    result = env.run(rule, T)

    assert result["status"] == "failed"
    assert result["error"] == ('conditions.logic: the naming convention "campaign" compares tokens with the '
                               "campaign's dsp_type, which only campaign_metrics_daily rules have")


def test_a_convention_without_cross_fields_checks_pacing_entities_on_both_paths(env):
    ids = {"delimiter": "-", "tokens": [{"name": "prefix", "values": ["IO"]}, {"name": "number", "pattern": "^[0-9]{4}$"}]}
    org = _organization(env, {"ids": ids})
    rule = env.rule(org, {"source": "pacing_snapshots", "window": "today",
                          "logic": {"naming": [{"var": "entity_id"}, "ids"]}}, module="taxonomy")
    moment = (T - timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S")
    env.snapshots({"org_id": org, "snapshot_time": moment, "entity_type": "io", "entity_id": "IO-1001"},
                  {"org_id": org, "snapshot_time": moment, "entity_type": "io", "entity_id": "io-1002"})

    sql_run, interpreted_run = _both_paths(env, rule)

    assert (sql_run["path"], interpreted_run["path"]) == ("sql", "interpreter")
    expected = {
        "IO-1001": (0, '{"entity_id":"IO-1001","entity_type":"io","naming":null,"conditions":[false]}'),
        "io-1002": (1, '{"entity_id":"io-1002","entity_type":"io","naming":'
                       + _diagnosis("prefix", 1, "io", "wrong case", "IO") + ',"conditions":[true]}'),
    }
    assert _documents(env, rule, T) == expected
    assert _documents(env, rule, T + timedelta(hours=1)) == expected


LONGEST = "A" * 255  # the longest allowed value a convention may have
LONG_TOKENS = {"delimiter": "_", "tokens": [{"name": "market", "values": ["US", LONGEST], "ignore_case": True},
                                            {"name": "label", "free": True}]}
LONG_NAMES = {  # campaign id: (name, the expected naming diagnosis); a token of 70,000 bytes is over ClickHouse's
    # 64 KiB for editDistanceUTF8 (the suggestion compares only a token's first 510 code points)
    "x": ("X" * 70_000 + "_launch", _diagnosis("market", 1, "X" * 70_000, "not an allowed value")),
    "e": ("é" * 35_000 + "_launch", _diagnosis("market", 1, "é" * 35_000, "not an allowed value")),
    "a": ("a" * 70_000 + "_launch", _diagnosis("market", 1, "a" * 70_000, "not an allowed value")),
    "near": ("a" * 255 + "B" * 127 + "_launch",
             _diagnosis("market", 1, "a" * 255 + "B" * 127, "not an allowed value", LONGEST)),
    "far": ("a" * 255 + "B" * 128 + "_launch", _diagnosis("market", 1, "a" * 255 + "B" * 128, "not an allowed value")),
    "case": ("a" * 255 + "_launch", "null"),
    "us": ("us_" + "X" * 70_000, "null"),
}


def test_tokens_over_64_kib_get_the_same_diagnosis_on_both_paths(env):
    org = _organization(env, {"long": LONG_TOKENS})
    rule = env.rule(org, {"window": "yesterday", "logic": {"naming": [{"var": "campaign_name"}, "long"]}},
                    module="taxonomy")
    env.metrics(*({"org_id": org, "date": YESTERDAY, "campaign_id": campaign, "campaign_name": name}
                  for campaign, (name, _) in LONG_NAMES.items()))

    sql_run, interpreted_run = _both_paths(env, rule)

    assert (sql_run["status"], sql_run["path"]) == ("succeeded", "sql"), sql_run
    assert (interpreted_run["status"], interpreted_run["path"]) == ("succeeded", "interpreter"), interpreted_run
    expected = {
        campaign: (int(diagnosis != "null"), f'{{"campaign_name":{json.dumps(name, ensure_ascii=False)},'
                                             f'"naming":{diagnosis},"conditions":[{json.dumps(diagnosis != "null")}]}}')
        for campaign, (name, diagnosis) in LONG_NAMES.items()
    }
    assert _documents(env, rule, T) == expected
    assert _documents(env, rule, T + timedelta(hours=1)) == expected
