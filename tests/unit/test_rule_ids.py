import pytest

from engine.rule_ids import canonical_rule_id


@pytest.mark.parametrize("text", ["8F14E45F-CEEA-467F-A0E6-8E5B1D6A0A61", "{8f14e45f-ceea-467f-a0e6-8e5b1d6a0a61}",
                                  "8f14e45fceea467fa0e68e5b1d6a0a61", "urn:uuid:8f14e45f-ceea-467f-a0e6-8e5b1d6a0a61"])
def test_every_spelling_of_a_uuid_reads_as_its_canonical_form(text):
    assert canonical_rule_id(text) == "8f14e45f-ceea-467f-a0e6-8e5b1d6a0a61"


@pytest.mark.parametrize("value", ["nope", "", "8f14e45f-ceea-467f-a0e6", 42, None, ["8f14e45fceea467fa0e68e5b1d6a0a61"]])
def test_anything_else_is_refused_with_what_was_given(value):
    with pytest.raises(ValueError) as refused:
        canonical_rule_id(value)
    assert str(refused.value) == f"not a rule id (a UUID): {value!r}"
