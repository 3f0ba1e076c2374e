-- Named PostgreSQL queries of `rulesctl bench` and `rulesctl load-bench`, run beside storage/queries/postgres.sql
-- on their scratch database. Each block starts with `-- name: <name>`; parameters are %(name)s.

-- name: bench_naming_conventions
UPDATE organizations SET settings = jsonb_build_object('naming_conventions', %(conventions)s::jsonb)
WHERE id = %(org_id)s;

-- name: load_bench_runs
SELECT rule_id::text AS rule_id, scheduled_for, status,
       EXTRACT(EPOCH FROM finished_at - scheduled_for)::float AS lag_s
FROM rule_runs
WHERE NOT dry_run AND scheduled_for BETWEEN %(first)s AND %(last)s;

-- name: load_bench_unfinished
SELECT count(*) AS runs, count(*) FILTER (WHERE status = 'running') AS unfinished
FROM rule_runs
WHERE NOT dry_run AND scheduled_for BETWEEN %(first)s AND %(last)s;

-- name: load_bench_rules_created_now
-- Only the rules of the load-bench's own organizations: `org_ids` are those it created in its scratch database.
UPDATE rules SET created_at = now() WHERE org_id = ANY(%(org_ids)s);

-- name: bench_run_stages
-- When each run last entered the states that bound its stages (each transition's `at` is its transaction's start).
SELECT max((t ->> 'at')::timestamp) FILTER (WHERE t ->> 'state' = 'compiled') AS compiled,
       max((t ->> 'at')::timestamp) FILTER (WHERE t ->> 'state' = 'evaluated') AS evaluated,
       max((t ->> 'at')::timestamp) FILTER (WHERE t ->> 'state' = 'alerted') AS alerted,
       max((t ->> 'at')::timestamp) FILTER (WHERE t ->> 'state' = 'succeeded') AS succeeded
FROM rule_runs CROSS JOIN LATERAL jsonb_array_elements(transitions) AS t
WHERE id = ANY(%(run_ids)s::uuid[])
GROUP BY id;
