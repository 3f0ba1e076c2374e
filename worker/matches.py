"""The entities runs matched, named for its alerts and notices.

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
class RunMatches:
    """One run's matched evaluations, with what names them: its source and window."""

    source: str
    bounds: WindowBounds
    matched: Sequence[Evaluation]


def matched_entities(results: ResultStore, org_id: int, runs: Sequence[RunMatches]) -> list[list[Entity]]:
    """Each run's matched evaluations as entities, in their order; a campaign without data keeps its id as its
    name. The campaigns of all the runs (of one organization) are named in one read."""
    ranges = [(run.bounds.previous_first or run.bounds.first, run.bounds.last) for run in runs
              if run.source == CAMPAIGN_METRICS]
    campaign_ids = sorted({evaluation.entity_id for run in runs if run.source == CAMPAIGN_METRICS
                           for evaluation in run.matched})
    identities = results.campaign_identities_in_ranges(org_id, campaign_ids, ranges)
    named = []
    for run in runs:
        if run.source != CAMPAIGN_METRICS:
            named.append(unnamed_entities(run.source, run.matched))
            continue
        found = identities.get((run.bounds.previous_first or run.bounds.first, run.bounds.last), {})
        entities = []
        for evaluation in run.matched:
            identity = found.get(evaluation.entity_id)
            if identity is None:
                entities.append(Entity("campaign", evaluation.entity_id, evaluation.entity_id,
                                       evaluation.condition_results))
            else:
                entities.append(Entity("campaign", evaluation.entity_id, identity.entity_name,
                                       evaluation.condition_results, identity.dsp_type, identity.advertiser_id))
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
