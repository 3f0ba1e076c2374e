-- Named ClickHouse queries of `rulesctl bench` and `rulesctl load-bench`, run beside storage/queries/clickhouse.sql
-- on their scratch database. Each block starts with `-- name: <name>`; parameters are {name:Type}.

-- name: bench_campaign_metrics
-- Synthetic metrics of one day for campaigns c-0 .. c-<campaigns - 1>, numbers drawn from hashes.
INSERT INTO campaign_metrics_daily
SELECT
    {org_id:UInt32} AS org_id,
    {day:Date} AS date,
    ['DV360', 'TTD', 'META'][number % 3 + 1] AS dsp_type,
    concat('c-', toString(number)) AS campaign_id,
    -- Named by the bench's naming convention (benchmarks/bench.py), 4 in 100 breaking it: the market's case, the
    -- DSP, the quarter's pattern, the month's date.
    concat(if(number % 100 = 1, 'us', ['US', 'EU', 'UK'][number % 3 + 1]), '_',
           if(number % 100 = 2, 'DV36O', dsp_type), '_', ['Brand', 'Perf'][number % 2 + 1], '_',
           if(number % 100 = 3, 'Q5', concat('Q', toString(number % 4 + 1))), '_',
           if(number % 100 = 4, '202613', '202611'), '_L', toString(number)) AS campaign_name,
    concat('adv-', toString(number % 97)) AS advertiser_id,
    1000 + cityHash64(number, {day:Date}, 1) % 99000 AS impressions,
    intDiv(impressions * (cityHash64(number, {day:Date}, 2) % 120), 10000) AS clicks,
    intDiv(clicks * (cityHash64(number, {day:Date}, 3) % 12), 100) AS conversions,
    toDecimal64(impressions * (50 + cityHash64(number, {day:Date}, 4) % 1500) / 100000, 4) AS spend,
    toDecimal64(spend * 1000 / impressions, 4) AS cpm,
    toDecimal32(clicks / impressions, 6) AS ctr,
    toDecimal32(if(clicks = 0, 0, conversions / clicks), 6) AS cvr
FROM numbers({campaigns:UInt64});

-- name: bench_merge_metrics
-- The day-by-day inserts' parts merged, as a table loaded long ago is (ClickHouse merges them in the background).
OPTIMIZE TABLE campaign_metrics_daily FINAL;
