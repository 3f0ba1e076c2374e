-- Named ClickHouse queries. Each block starts with `-- name: <name>`; parameters are {name:Type}.

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    name String,
    applied_at DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree
ORDER BY name;

-- name: applied_migrations
SELECT DISTINCT name FROM schema_migrations ORDER BY name;

-- name: run_matches
-- One read of a run's outcome: its entity count, and each matched entity with its entity type, whether an alert
-- of the rule for it lies in [since, until) (the cooldown), and, for campaigns ({campaigns:Bool}), the name, DSP
-- and advertiser on {identity_day:Date} (identified = 0 when the campaign has no row that day).
WITH
    typed AS (
        SELECT entity_id, condition_results,
               if({campaigns:Bool}, 'campaign', JSONExtractString(condition_results, 'entity_type')) AS entity_type
        FROM rule_evaluations
        WHERE org_id = {org_id:UInt32} AND eval_time = {eval_time:DateTime('UTC')} AND rule_id = {rule_id:UUID}
          AND matched = 1
    ),
    identities AS (
        SELECT campaign_id, argMax(campaign_name, date) AS entity_name, argMax(dsp_type, date) AS dsp_type,
               argMax(advertiser_id, date) AS advertiser_id, 1 AS identified
        FROM campaign_metrics_daily
        WHERE {campaigns:Bool} AND org_id = {org_id:UInt32} AND date = {identity_day:Date}
          AND campaign_id IN (SELECT entity_id FROM typed)
        GROUP BY campaign_id
    ),
    cooling AS (
        SELECT DISTINCT toString(entity_type) AS alerted_type, entity_id AS alerted_id, 1 AS hit
        FROM alert_events
        WHERE org_id = {org_id:UInt32} AND rule_id = {rule_id:UUID}
          AND alert_time >= {since:DateTime('UTC')} AND alert_time < {until:DateTime('UTC')}
    )
SELECT
    (SELECT count() FROM rule_evaluations
     WHERE org_id = {org_id:UInt32} AND eval_time = {eval_time:DateTime('UTC')} AND rule_id = {rule_id:UUID}) AS entities,
    arraySort(groupArray((t.entity_id, t.condition_results, t.entity_type, i.identified, i.entity_name, i.dsp_type,
                          i.advertiser_id, c.hit))) AS matched
FROM typed AS t
LEFT JOIN identities AS i ON i.campaign_id = t.entity_id
LEFT JOIN cooling AS c ON c.alerted_type = t.entity_type AND c.alerted_id = t.entity_id;

-- name: delete_evaluations
DELETE FROM rule_evaluations
WHERE org_id = {org_id:UInt32} AND eval_time = {eval_time:DateTime('UTC')} AND rule_id = {rule_id:UUID};

-- name: delete_alerts
DELETE FROM alert_events
WHERE org_id = {org_id:UInt32} AND alert_time = {alert_time:DateTime('UTC')} AND rule_id = {rule_id:UUID};

-- name: campaign_identities
-- Each campaign's name, DSP and advertiser on the latest date with data between first and last (the window and
-- its previous period).
SELECT campaign_id AS entity_id, argMax(campaign_name, date) AS entity_name, argMax(dsp_type, date) AS dsp_type,
       argMax(advertiser_id, date) AS advertiser_id
FROM campaign_metrics_daily
WHERE org_id = {org_id:UInt32} AND date >= {first:Date} AND date <= {last:Date}
  AND campaign_id IN {entity_ids:Array(String)}
GROUP BY campaign_id;

-- name: bench_campaign_metrics
-- Synthetic metrics for `rulesctl bench`: campaigns first_campaign.. of one day, numbers drawn from hashes.
INSERT INTO campaign_metrics_daily
SELECT
    {org_id:UInt32} AS org_id,
    {day:Date} AS date,
    ['DV360', 'TTD', 'META'][number % 3 + 1] AS dsp_type,
    concat('c-', toString(number)) AS campaign_id,
    concat('Campaign ', toString(number)) AS campaign_name,
    concat('adv-', toString(number % 97)) AS advertiser_id,
    1000 + cityHash64(number, {day:Date}, 1) % 99000 AS impressions,
    intDiv(impressions * (cityHash64(number, {day:Date}, 2) % 120), 10000) AS clicks,
    intDiv(clicks * (cityHash64(number, {day:Date}, 3) % 12), 100) AS conversions,
    toDecimal64(impressions * (50 + cityHash64(number, {day:Date}, 4) % 1500) / 100000, 4) AS spend,
    toDecimal64(spend * 1000 / impressions, 4) AS cpm,
    toDecimal32(clicks / impressions, 6) AS ctr,
    toDecimal32(if(clicks = 0, 0, conversions / clicks), 6) AS cvr
FROM numbers({campaigns:UInt64});
