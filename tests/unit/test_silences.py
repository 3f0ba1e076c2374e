"""engine.silences (and worker.silencing's durations) without servers: which entities silences and acknowledgements cover, what a run withholds and
which acknowledgements end, who may create them, and how their fields are checked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.silences import (OpenAcknowledgement, Quieting, SilenceScope, comment_problem, period_problem, refusal,
                             scope_problem)
from worker.audience import Entity
from worker.silencing import BadSilenceRequest, parse_length

RULE, OTHER_RULE = "0b5c5a9e-0000-4000-8000-000000000001", "0b5c5a9e-0000-4000-8000-000000000002"
C1 = Entity("campaign", "c1", "Spring Sale", "{}", "DV360", "adv-1")
C2 = Entity("campaign", "c2", "Brand Push", "{}", "TTD", "adv-2")
IO = Entity("io", "IO-1", "IO-1", "{}")
NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(("scope", "covered"), [
    (SilenceScope(), {"c1", "c2", "IO-1"}),
    (SilenceScope(rule_id=RULE), {"c1", "c2", "IO-1"}),
    (SilenceScope(rule_id=OTHER_RULE), set()),
    (SilenceScope(entity_type="campaign", entity_id="c1"), {"c1"}),
    (SilenceScope(entity_type="io", entity_id="c1"), set()),
    (SilenceScope(dsp_type="TTD"), {"c2"}),
    (SilenceScope(advertiser_id="adv-1"), {"c1"}),
    (SilenceScope(dsp_type="DV360", advertiser_id="adv-2"), set()),
    (SilenceScope(rule_id=RULE, entity_type="io", entity_id="IO-1"), {"IO-1"}),
])
def test_a_silence_covers_the_entities_within_every_field_it_sets(scope, covered):
    assert {entity.entity_id for entity in (C1, C2, IO) if scope.covers(RULE, entity)} == covered


def test_a_run_withholds_silenced_and_acknowledged_matches_and_counts_each_once():
    quieting = Quieting(silences=(SilenceScope(dsp_type="DV360"), SilenceScope(entity_type="campaign", entity_id="c1")),
                        acknowledgements=(OpenAcknowledgement(4, RULE, "campaign", "c1"),
                                          OpenAcknowledgement(5, RULE, "io", "IO-1")))

    hush = quieting.hush(RULE, [C1, C2, IO])

    # c1 is silenced twice and acknowledged: one silenced entity; IO-1 acknowledged; c2 is told.
    assert (hush.silenced, hush.acknowledged, hush.ending) == (1, 1, ())
    assert hush.withheld == {("campaign", "c1"), ("io", "IO-1")}
    assert hush.told([C1, C2, IO]) == [C2]


def test_an_acknowledgement_ends_when_its_entity_no_longer_matches_and_its_resolved_notice_is_told():
    quieting = Quieting(acknowledgements=(OpenAcknowledgement(4, RULE, "campaign", "c1"),
                                          OpenAcknowledgement(7, OTHER_RULE, "campaign", "c2")))

    hush = quieting.hush(RULE, [C2], resolved=[C1])

    assert (hush.silenced, hush.acknowledged, hush.ending) == (0, 0, (4,))
    assert hush.told([C1]) == [C1]


def test_a_silence_withholds_a_resolved_notice_too():
    hush = Quieting(silences=(SilenceScope(rule_id=RULE),)).hush(RULE, [C2], resolved=[C1])

    assert hush.silenced == 1 and hush.told([C1]) == [] and hush.told([C2]) == []


def test_silences_of_other_rules_do_not_concern_a_rule():
    quieting = Quieting(silences=(SilenceScope(rule_id=OTHER_RULE),),
                        acknowledgements=(OpenAcknowledgement(1, OTHER_RULE, "campaign", "c1"),))

    assert not quieting.concerns(RULE) and quieting.concerns(OTHER_RULE)
    assert quieting.hush(RULE, [C1]).told([C1]) == [C1]


@pytest.mark.parametrize(("role", "grant", "scope", "allowed"), [
    ("owner", False, SilenceScope(), True),
    ("admin", False, SilenceScope(dsp_type="TTD"), True),
    ("member", True, SilenceScope(rule_id=RULE), True),
    ("member", True, SilenceScope(entity_type="campaign", entity_id="c1"), True),
    ("member", False, SilenceScope(rule_id=RULE), False),
    ("viewer", True, SilenceScope(rule_id=RULE), False),
    (None, False, SilenceScope(rule_id=RULE), False),
])
def test_owners_admins_and_members_with_an_edit_grant_may_and_nobody_else(role, grant, scope, allowed):
    assert (refusal(7, 3, role, grant, "silence it", scope) is None) is allowed


def test_a_refusal_says_who_may():
    assert refusal(7, 3, "member", False, "silence rule R", SilenceScope(rule_id=RULE, entity_type="campaign",
                                                                           entity_id="c1")) == (
        f"user 7 (member) may not silence rule R: that takes an owner, an admin or a member with an unexpired edit "
        f"grant on rule {RULE} or campaign c1")
    assert refusal(7, 3, "member", False, "silence every rule", SilenceScope(dsp_type="TTD")) == (
        "user 7 (member) may not silence every rule: that takes an owner or an admin")
    assert refusal(7, 3, None, False, "x", SilenceScope()) == "user 7 may not x: not a member of organization 3"


@pytest.mark.parametrize(("scope", "problem"), [
    (SilenceScope(entity_type="campaign"), "entity_type and entity_id: give both (one entity) or neither"),
    (SilenceScope(entity_id="c1"), "entity_type and entity_id: give both (one entity) or neither"),
    (SilenceScope(dsp_type=" "), "dsp_type: must not be empty"),
    (SilenceScope(dsp_type="D" * 51), "dsp_type: at most 50 characters, got 51"),
    (SilenceScope(entity_type="campaign", entity_id="c\x001"), "entity_id: must not hold a NUL character"),
])
def test_a_bad_scope_is_named(scope, problem):
    assert scope_problem(scope).startswith(problem)


def test_a_good_scope_and_comment_have_no_problem():
    assert scope_problem(SilenceScope(RULE, "campaign", "c1", "DV360", "adv-1")) is None
    assert comment_problem(None) is None and comment_problem("planned burst") is None
    assert comment_problem("x" * 1001) == "comment: at most 1000 characters, got 1001"


@pytest.mark.parametrize(("starts", "ends", "problem"), [
    (NOW, NOW + timedelta(hours=2), None),
    (NOW - timedelta(days=1), NOW + timedelta(minutes=1), None),
    (NOW, NOW, "the silence must end after it starts"),
    (NOW - timedelta(hours=2), NOW - timedelta(hours=1), "the silence would end before now"),
    (NOW, NOW + timedelta(days=366), "a silence lasts at most 365 days"),
])
def test_a_silence_period_ends_after_it_starts_after_now_and_within_a_year(starts, ends, problem):
    assert period_problem(starts, ends, NOW) == problem


@pytest.mark.parametrize(("text", "duration"), [
    ("30m", timedelta(minutes=30)), ("2h", timedelta(hours=2)), (" 1d ", timedelta(days=1)),
    ("1w", timedelta(weeks=1)), ("1d12h", timedelta(hours=36)), ("0h", None), ("2", None), ("h", None),
    ("1.5h", None), ("-2h", None), ("2 hours", None), (None, None),
])
def test_a_silence_lasts_a_duration_longer_than_zero(text, duration):
    if duration is None:
        with pytest.raises(BadSilenceRequest, match="--for: not a duration such as 30m, 2h, 1d or 1w"):
            parse_length(text, "--for")
    else:
        assert parse_length(text, "--for") == duration
