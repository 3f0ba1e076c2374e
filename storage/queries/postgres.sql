-- Named PostgreSQL queries. Each block starts with `-- name: <name>`; parameters are %(name)s.

-- name: database_exists
SELECT 1 AS found FROM pg_database WHERE datname = %(name)s;

-- name: migration_lock
SELECT pg_advisory_xact_lock(7426001) AS locked;

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    name TEXT PRIMARY KEY,
    applied_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);

-- name: applied_migrations
SELECT name FROM schema_migrations ORDER BY name;

-- name: record_migration
INSERT INTO schema_migrations (name) VALUES (%(name)s);

-- name: rule_with_organization
SELECT r.id::text AS rule_id, r.org_id, r.name, r.module, r.enabled, r.conditions, r.actions,
       o.timezone, o.enabled_modules, o.id IS NOT NULL AS organization_exists
FROM rules r LEFT JOIN organizations o ON o.id = r.org_id
WHERE r.id = %(rule_id)s;

-- name: user_exists
SELECT 1 AS found FROM users WHERE id = %(user_id)s;

-- name: claim_run
-- A non-dry run for (rule, fire time) exists at most once; a conflicting claim returns no row.
INSERT INTO rule_runs (rule_id, org_id, trigger, scheduled_for, triggered_by, dry_run, status, state,
                       lease_expires_at, transitions)
VALUES (%(rule_id)s, %(org_id)s, %(trigger)s, %(scheduled_for)s, %(triggered_by)s, %(dry_run)s, 'running', 'claimed',
        (now() AT TIME ZONE 'UTC') + make_interval(secs => %(lease_seconds)s),
        jsonb_build_array(jsonb_build_object('state', 'claimed', 'at', now() AT TIME ZONE 'UTC',
                                             'detail', %(detail)s::text)))
ON CONFLICT (rule_id, scheduled_for) WHERE NOT dry_run DO NOTHING
RETURNING *;

-- name: run_for_fire_time
SELECT * FROM rule_runs WHERE rule_id = %(rule_id)s AND scheduled_for = %(scheduled_for)s AND NOT dry_run;

-- name: take_over_run
-- Only a run whose lease has expired can be taken over, and only by one claimant.
UPDATE rule_runs
SET attempts = attempts + 1,
    lease_expires_at = (now() AT TIME ZONE 'UTC') + make_interval(secs => %(lease_seconds)s),
    transitions = transitions || jsonb_build_array(jsonb_build_object(
        'state', state, 'at', now() AT TIME ZONE 'UTC', 'detail', 'taken over after the lease expired'))
WHERE id = %(run_id)s AND status = 'running' AND lease_expires_at < (now() AT TIME ZONE 'UTC')
RETURNING *;

-- name: record_transition
UPDATE rule_runs
SET state = %(state)s::text,
    status = %(status)s::text,
    path = COALESCE(%(path)s::text, path),
    entities = COALESCE(%(entities)s::int, entities),
    matched = COALESCE(%(matched)s::int, matched),
    alerts = COALESCE(%(alerts)s::int, alerts),
    notified_users = COALESCE(%(notified_users)s::int[], notified_users),
    error = COALESCE(%(error)s::text, error),
    lease_expires_at = CASE WHEN %(status)s::text = 'running'
                            THEN (now() AT TIME ZONE 'UTC') + make_interval(secs => %(lease_seconds)s::int) END,
    finished_at = CASE WHEN %(status)s::text = 'running' THEN NULL ELSE now() AT TIME ZONE 'UTC' END,
    duration_ms = CASE WHEN %(status)s::text = 'running' THEN NULL
                       ELSE (EXTRACT(EPOCH FROM (now() AT TIME ZONE 'UTC') - started_at) * 1000)::int END,
    transitions = transitions || jsonb_build_array(jsonb_build_object(
        'state', %(state)s::text, 'at', now() AT TIME ZONE 'UTC', 'detail', %(detail)s::text))
WHERE id = %(run_id)s
RETURNING *;

-- name: record_audit
INSERT INTO audit_logs (org_id, user_id, action, resource_type, resource_id, details)
VALUES (%(org_id)s, %(user_id)s, %(action)s, %(resource_type)s, %(resource_id)s, %(details)s);

-- name: organization_by_slug
SELECT id, name, timezone FROM organizations WHERE slug = %(slug)s;

-- name: insert_organization
INSERT INTO organizations (name, slug, timezone, currency, enabled_modules)
VALUES (%(name)s, %(slug)s, %(timezone)s, %(currency)s, %(enabled_modules)s)
RETURNING id;

-- name: insert_user
INSERT INTO users (email, password_hash, full_name, email_verified)
VALUES (%(email)s, %(password_hash)s, %(full_name)s, %(email_verified)s)
ON CONFLICT (email) DO UPDATE SET full_name = EXCLUDED.full_name
RETURNING id;

-- name: insert_membership
INSERT INTO org_memberships (user_id, org_id, role, invited_by)
VALUES (%(user_id)s, %(org_id)s, %(role)s, %(invited_by)s)
ON CONFLICT (user_id, org_id) DO UPDATE SET role = EXCLUDED.role;

-- name: insert_dsp_account
INSERT INTO dsp_accounts (org_id, dsp_type, external_id, name)
VALUES (%(org_id)s, %(dsp_type)s, %(external_id)s, %(name)s)
RETURNING id;

-- name: insert_grant
INSERT INTO entity_permissions (user_id, org_id, entity_type, entity_id, permission, granted_by, expires_at)
VALUES (%(user_id)s, %(org_id)s, %(entity_type)s, %(entity_id)s, %(permission)s, %(granted_by)s, %(expires_at)s);

-- name: insert_rule
INSERT INTO rules (org_id, name, module, enabled, conditions, actions, created_by)
VALUES (%(org_id)s, %(name)s, %(module)s, TRUE, %(conditions)s, %(actions)s, %(created_by)s)
RETURNING id::text AS id;

-- name: recent_runs
SELECT * FROM rule_runs
WHERE %(rule_id)s::uuid IS NULL OR rule_id = %(rule_id)s::uuid
ORDER BY started_at DESC, id
LIMIT %(limit)s;

-- name: schedulable_rules
-- Every enabled rule with what beat needs to compute its fire times.
SELECT r.id::text AS rule_id, r.org_id, r.conditions, o.timezone,
       (r.created_at AT TIME ZONE current_setting('TimeZone')) AT TIME ZONE 'UTC' AS created_at
FROM rules r JOIN organizations o ON o.id = r.org_id
WHERE r.enabled
ORDER BY r.id;

-- name: enabled_rules_of_organization
SELECT id::text AS rule_id FROM rules WHERE org_id = %(org_id)s AND enabled ORDER BY id;
