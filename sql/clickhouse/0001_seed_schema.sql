-- The seed schema, as specified.

CREATE TABLE IF NOT EXISTS campaign_metrics_daily (
    org_id UInt32,
    date Date,
    dsp_type LowCardinality(String),
    campaign_id String,
    campaign_name String,
    advertiser_id String,
    impressions UInt64,
    clicks UInt64,
    conversions UInt64,
    spend Decimal(18, 4),
    cpm Decimal(18, 4),
    ctr Decimal(10, 6),
    cvr Decimal(10, 6)
) ENGINE = MergeTree()
PARTITION BY (org_id, toYYYYMM(date))
ORDER BY (org_id, date, campaign_id)
TTL date + INTERVAL 2 YEAR;

CREATE TABLE IF NOT EXISTS pacing_snapshots (
    org_id UInt32,
    snapshot_time DateTime,
    entity_type LowCardinality(String), -- 'campaign', 'io', 'line_item'
    entity_id String,
    booked_amount Decimal(18, 4),
    delivered_amount Decimal(18, 4),
    pacing_rate Decimal(10, 4),
    days_elapsed UInt16,
    days_remaining UInt16,
    projected_spend Decimal(18, 4),
    margin_percent Decimal(10, 4)
) ENGINE = MergeTree()
PARTITION BY (org_id, toYYYYMM(snapshot_time))
ORDER BY (org_id, snapshot_time, entity_type, entity_id)
TTL snapshot_time + INTERVAL 1 YEAR;

CREATE TABLE IF NOT EXISTS alert_events (
    org_id UInt32,
    alert_time DateTime,
    rule_id UUID,
    rule_name String,
    severity LowCardinality(String), -- 'critical', 'warning', 'info'
    entity_type LowCardinality(String),
    entity_id String,
    entity_name String,
    condition_details String,
    notified_users Array(UInt32)
) ENGINE = MergeTree()
PARTITION BY (org_id, toYYYYMM(alert_time))
ORDER BY (org_id, alert_time, rule_id)
TTL alert_time + INTERVAL 2 YEAR;

CREATE TABLE IF NOT EXISTS rule_evaluations (
    org_id UInt32,
    eval_time DateTime,
    rule_id UUID,
    entity_id String,
    matched UInt8, -- 0 or 1
    condition_results String, -- JSON
    execution_time_ms UInt32
) ENGINE = MergeTree()
PARTITION BY (org_id, toYYYYMM(eval_time))
ORDER BY (org_id, eval_time, rule_id)
TTL eval_time + INTERVAL 90 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS mv_daily_campaign_summary
ENGINE = SummingMergeTree()
PARTITION BY (org_id, toYYYYMM(date))
ORDER BY (org_id, date, dsp_type)
POPULATE
AS SELECT
    org_id,
    date,
    dsp_type,
    count(DISTINCT campaign_id) as campaign_count,
    sum(impressions) as total_impressions,
    sum(clicks) as total_clicks,
    sum(spend) as total_spend
FROM campaign_metrics_daily
GROUP BY org_id, date, dsp_type;
