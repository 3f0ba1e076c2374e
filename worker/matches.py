"""The entities a run matched, named for its alerts and notices.

A campaign gets its name, DSP and advertiser (what DSP-account grants are matched on) from its latest date with
data in the window or the previous period; a pacing entity is named by its id and typed by its evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.evaluation_document import parse_document
from engine.fields import CAMPAIGN_METRICS
from engine.windows import WindowBounds
from storage.results import Evaluation, ResultStore
from worker.audience import Entity


def matched_entities(results: ResultStore, source: str, org_id: int, bounds: WindowBounds,
                     matched: Sequence[Evaluation]) -> list[Entity]:
    """The matched evaluations as entities, in their order; a campaign without data keeps its id as its name."""
    if source != CAMPAIGN_METRICS:
        return [Entity(parse_document(evaluation.condition_results).entity_type or "", evaluation.entity_id, evaluation.entity_id,
                       evaluation.condition_results) for evaluation in matched]
    identities = results.campaign_identities(org_id, [evaluation.entity_id for evaluation in matched], bounds.last,
                                             bounds.previous_first or bounds.first)
    entities = []
    for evaluation in matched:
        identity = identities.get(evaluation.entity_id)
        if identity is None:
            entities.append(Entity("campaign", evaluation.entity_id, evaluation.entity_id,
                                   evaluation.condition_results))
        else:
            entities.append(Entity("campaign", evaluation.entity_id, identity.entity_name,
                                   evaluation.condition_results, identity.dsp_type, identity.advertiser_id))
    return entities
