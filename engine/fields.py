"""The variables a rule's logic may read, per source, with the type each reaches the logic as."""

from enum import Enum


class FieldType(str, Enum):
    """The JSON Logic type of a field's value: numbers arrive as floats, text as strings, Booleans as true/false."""

    NUMBER = "number"
    STRING = "string"
    BOOLEAN = "boolean"


CAMPAIGN_METRICS = "campaign_metrics_daily"
PACING_SNAPSHOTS = "pacing_snapshots"

PREVIOUS_PREFIX = "prev."
# Whether the campaign's DSP account had synced the window's data at T (engine.freshness); it has no `prev.` twin.
FRESH = "fresh"

_CAMPAIGN_FIELDS: dict[str, FieldType] = {
    "campaign_id": FieldType.STRING,
    "campaign_name": FieldType.STRING,
    "advertiser_id": FieldType.STRING,
    "dsp_type": FieldType.STRING,
    "impressions": FieldType.NUMBER,
    "clicks": FieldType.NUMBER,
    "conversions": FieldType.NUMBER,
    "spend": FieldType.NUMBER,
    "cpm": FieldType.NUMBER,
    "ctr": FieldType.NUMBER,
    "cvr": FieldType.NUMBER,
    "days": FieldType.NUMBER,
}

_PACING_FIELDS: dict[str, FieldType] = {
    "entity_type": FieldType.STRING,
    "entity_id": FieldType.STRING,
    "booked_amount": FieldType.NUMBER,
    "delivered_amount": FieldType.NUMBER,
    "pacing_rate": FieldType.NUMBER,
    "days_elapsed": FieldType.NUMBER,
    "days_remaining": FieldType.NUMBER,
    "projected_spend": FieldType.NUMBER,
    "margin_percent": FieldType.NUMBER,
    "snapshot_time": FieldType.STRING,
}

_BASE_FIELDS = {CAMPAIGN_METRICS: _CAMPAIGN_FIELDS, PACING_SNAPSHOTS: _PACING_FIELDS}
_RUN_FIELDS: dict[str, dict[str, FieldType]] = {CAMPAIGN_METRICS: {FRESH: FieldType.BOOLEAN}, PACING_SNAPSHOTS: {}}

# Columns a rule's `scope` may filter on, per source.
SCOPE_COLUMNS: dict[str, tuple[str, ...]] = {
    CAMPAIGN_METRICS: ("dsp_type", "advertiser_id", "campaign_id"),
    PACING_SNAPSHOTS: ("entity_type", "entity_id"),
}


def field_types(source: str, with_previous: bool) -> dict[str, FieldType]:
    """Every variable name a rule over `source` may read, mapped to its type.

    With `with_previous` (a rule that has `compare_to`), each field of the data also exists as `prev.<field>`;
    `fresh` (campaigns) describes the run's data, so it has no previous twin.
    """
    base = _BASE_FIELDS[source]
    fields = dict(base)
    if with_previous:
        fields.update({PREVIOUS_PREFIX + name: kind for name, kind in base.items()})
    fields.update(_RUN_FIELDS[source])
    return fields
