"""The entities runs evaluated, named for their alerts and notices.

A campaign gets its name, DSP and advertiser (what DSP-account grants are matched on) from its latest date with
data in the window or the previous period; a pacing entity is named by its id and typed by its evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.evaluation_document import parse_document
from engine.fields import CAMPAIGN_METRICS
from engine.windows import WindowBounds
from storage.results import Evaluation, ResultStore
from worker.audience import Entity


@dataclass(frozen=True)
class RunEntities:
    """Some of one run's evaluated entities (as unnamed_entities gives them), with what names them: its source and
    window."""

    source: str
    bounds: WindowBounds
    entities: Sequence[Entity]


def named_entities(results: ResultStore, org_id: int, runs: Sequence[RunEntities]) -> list[list[Entity]]:
    """Each run's entities, in their order, each campaign with the name, DSP and advertiser of its latest date with
    data in the run's window or previous period (one without data keeps its id as its name); everything else of
    an entity is kept. The campaigns of all the runs (of one organization) are named in one read."""
    ranges = [(run.bounds.previous_first or run.bounds.first, run.bounds.last) for run in runs
              if run.source == CAMPAIGN_METRICS]
    campaign_ids = sorted({entity.entity_id for run in runs if run.source == CAMPAIGN_METRICS
                           for entity in run.entities})
    identities = results.campaign_identities_in_ranges(org_id, campaign_ids, ranges)
    named = []
    for run in runs:
        found = (identities.get((run.bounds.previous_first or run.bounds.first, run.bounds.last), {})
                 if run.source == CAMPAIGN_METRICS else {})
        entities = []
        for entity in run.entities:
            identity = found.get(entity.entity_id)
            # Built directly: dataclasses.replace costs twice as much, once per matched campaign.
            entities.append(entity if identity is None else Entity(
                entity.entity_type, entity.entity_id, identity.entity_name, entity.condition_details,
                identity.dsp_type, identity.advertiser_id))
        named.append(entities)
    return named


def unnamed_entities(source: str, evaluations: Sequence[Evaluation]) -> list[Entity]:
    """The evaluated entities of a rule over `source`, each named by its id: what a pacing entity is named by, and
    all a dry run needs to know of a campaign."""
    if source == CAMPAIGN_METRICS:
        return [Entity("campaign", evaluation.entity_id, evaluation.entity_id, evaluation.condition_results)
                for evaluation in evaluations]
    return [Entity(parse_document(evaluation.condition_results).entity_type or "", evaluation.entity_id,
                   evaluation.entity_id, evaluation.condition_results) for evaluation in evaluations]
