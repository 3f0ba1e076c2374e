-- Named ClickHouse queries. Each block starts with `-- name: <name>`; parameters are {name:Type}.

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    name String,
    applied_at DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree
ORDER BY name;

-- name: applied_migrations
SELECT DISTINCT name FROM schema_migrations ORDER BY name;

-- name: evaluation_outcomes
-- The entity count, the matched entities and (for the rules of recovering_rule_ids) the unmatched ones whose
-- recover_when does not hold of each run of one organization and T, in one read of their rows; a rule without
-- rows is absent. The key can only be written by the document itself: a quote inside a JSON text is escaped.
-- (`matched` there is the column, not the alias.)
SELECT rule_id, count() AS entities,
       arraySort(groupArrayIf((entity_id, condition_results), matched = 1)) AS matched,
       arraySort(groupArrayIf((entity_id, condition_results),
                              has({recovering_rule_ids:Array(UUID)}, rule_id) AND rule_evaluations.matched = 0
                              AND position(condition_results, '"recover_when":false') > 0)) AS unrecovered
FROM rule_evaluations
WHERE org_id = {org_id:UInt32} AND eval_time = {eval_time:DateTime('UTC')} AND rule_id IN {rule_ids:Array(UUID)}
GROUP BY rule_id;

-- name: restated_evaluations
-- The rows of one recheck marked restated: those that match now first, each group in entity order.
SELECT entity_id, matched, condition_results
FROM rule_evaluations
WHERE org_id = {org_id:UInt32} AND eval_time = {eval_time:DateTime('UTC')} AND rule_id = {rule_id:UUID}
  AND JSONExtractBool(condition_results, 'restated')
ORDER BY matched DESC, entity_id, condition_results;

-- name: copy_evaluations
-- One run's rows written again for another T of the same rule whose window resolved to the same dates.
INSERT INTO rule_evaluations (org_id, eval_time, rule_id, entity_id, matched, condition_results, execution_time_ms)
SELECT org_id, {target_eval_time:DateTime('UTC')}, rule_id, entity_id, matched, condition_results,
       {execution_time_ms:UInt32}
FROM rule_evaluations
WHERE org_id = {org_id:UInt32} AND eval_time = {eval_time:DateTime('UTC')} AND rule_id = {rule_id:UUID};

-- name: delete_evaluations
DELETE FROM rule_evaluations
WHERE org_id = {org_id:UInt32} AND eval_time = {eval_time:DateTime('UTC')} AND rule_id = {rule_id:UUID};

-- name: delete_alerts
DELETE FROM alert_events
WHERE org_id = {org_id:UInt32} AND alert_time = {alert_time:DateTime('UTC')} AND rule_id = {rule_id:UUID};

-- name: alerts_in_cooldown
-- For each rule (numbered from 1 in rule_ids) with any, the (entity_type, entity_id) pairs with an alert of the rule
-- from its own start of cooldown (sinces[i] for rule_ids[i]) until before T: one row per rule, so that thousands
-- of entities cooling down cost no row (and no UUID) each.
SELECT indexOf({rule_ids:Array(UUID)}, rule_id) AS rule_number, groupUniqArray((entity_type, entity_id)) AS cooling
FROM alert_events
WHERE org_id = {org_id:UInt32} AND rule_id IN {rule_ids:Array(UUID)}
  AND alert_time >= {since:DateTime('UTC')} AND alert_time < {until:DateTime('UTC')}
  AND alert_time >= {sinces:Array(DateTime('UTC'))}[indexOf({rule_ids:Array(UUID)}, rule_id)]
  AND entity_id IN {entity_ids:Array(String)}
GROUP BY rule_id;

-- name: campaign_identities
-- For each of `lasts` (numbered from 1), each campaign's latest date with data from `first` to that last day, and
-- its name, DSP and advertiser on that date.
SELECT last_number, campaign_id AS entity_id, max(date) AS latest, argMax(campaign_name, date) AS entity_name,
       argMax(dsp_type, date) AS dsp_type, argMax(advertiser_id, date) AS advertiser_id
FROM (
    SELECT campaign_id, campaign_name, dsp_type, advertiser_id, date,
           arrayJoin(arrayFilter(number -> date <= {lasts:Array(Date)}[number],
                                 range(1, length({lasts:Array(Date)}) + 1))) AS last_number
    FROM campaign_metrics_daily
    WHERE org_id = {org_id:UInt32} AND date >= {first:Date} AND date <= {last:Date}
      AND campaign_id IN {entity_ids:Array(String)}
)
GROUP BY last_number, campaign_id;

-- name: alerts_of_entity
-- How many alerts a rule has raised on one entity (what an acknowledgement of a rule without firing state needs).
SELECT count() AS alerts
FROM alert_events
WHERE org_id = {org_id:UInt32} AND rule_id = {rule_id:UUID} AND entity_type = {entity_type:String}
  AND entity_id = {entity_id:String};
