-- The demo's named ClickHouse queries (demo/data.py), run by a ClickHouse client made with this file as its extra
-- queries.

-- name: demo_metric_rows
SELECT count() AS n FROM campaign_metrics_daily WHERE org_id = {org_id:UInt32};
