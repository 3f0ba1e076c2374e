-- Named ClickHouse queries. Each block starts with `-- name: <name>`; parameters are {name:Type}.

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    name String,
    applied_at DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree
ORDER BY name;

-- name: applied_migrations
SELECT DISTINCT name FROM schema_migrations ORDER BY name;

-- name: evaluation_outcome
-- The entity count of one run and its matched entities, in one read of the run's rows.
SELECT count() AS entities,
       arraySort(groupArrayIf((entity_id, condition_results), matched = 1)) AS matched
FROM rule_evaluations
WHERE org_id = {org_id:UInt32} AND eval_time = {eval_time:DateTime('UTC')} AND rule_id = {rule_id:UUID};

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
SELECT DISTINCT entity_type, entity_id
FROM alert_events
WHERE org_id = {org_id:UInt32} AND rule_id = {rule_id:UUID}
  AND alert_time >= {since:DateTime('UTC')} AND alert_time < {until:DateTime('UTC')}
  AND entity_id IN {entity_ids:Array(String)};

-- name: campaign_identities
-- Each campaign's name, DSP and advertiser on the latest date with data between first and last (the window and
-- its previous period).
SELECT campaign_id AS entity_id, argMax(campaign_name, date) AS entity_name, argMax(dsp_type, date) AS dsp_type,
       argMax(advertiser_id, date) AS advertiser_id
FROM campaign_metrics_daily
WHERE org_id = {org_id:UInt32} AND date >= {first:Date} AND date <= {last:Date}
  AND campaign_id IN {entity_ids:Array(String)}
GROUP BY campaign_id;
