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

-- name: rules_with_organization
SELECT r.id::text AS rule_id, r.org_id, r.name, r.module, r.enabled, r.conditions, r.actions,
       o.timezone, o.enabled_modules, o.settings, o.id IS NOT NULL AS organization_exists
FROM rules r LEFT JOIN organizations o ON o.id = r.org_id
WHERE r.id = ANY(%(rule_ids)s::uuid[]);

-- name: user_exists
SELECT 1 AS found FROM users WHERE id = %(user_id)s;

-- name: claim_runs
-- A non-dry first run for (rule, fire time) exists at most once: a rule whose claim conflicts returns no row. The
-- rows go in in rule order (see RunStore.claim_all).
INSERT INTO rule_runs (rule_id, org_id, trigger, scheduled_for, triggered_by, dry_run, status, state,
                       lease_expires_at, transitions)
SELECT claimed.rule_id, claimed.org_id, %(trigger)s::text, %(scheduled_for)s::timestamp, %(triggered_by)s::int,
       %(dry_run)s::boolean, 'running', 'claimed', (now() AT TIME ZONE 'UTC') + make_interval(secs => %(lease_seconds)s),
       jsonb_build_array(jsonb_build_object('state', 'claimed', 'at', now() AT TIME ZONE 'UTC',
                                            'detail', %(detail)s::text))
FROM unnest(%(rule_ids)s::uuid[], %(org_ids)s::int[]) AS claimed(rule_id, org_id)
ORDER BY claimed.rule_id
ON CONFLICT (rule_id, scheduled_for, (trigger = 'recheck')) WHERE NOT dry_run DO NOTHING
RETURNING *;

-- name: claim_recheck
-- The recheck of (rule, fire time), evaluated at evaluated_at. No row when (rule, fire time) has its recheck
-- already, or when another run of the rule evaluates at evaluated_at (as a recheck, or as its fire time).
INSERT INTO rule_runs (rule_id, org_id, trigger, scheduled_for, evaluated_at, dry_run, status, state,
                       lease_expires_at, transitions)
SELECT %(rule_id)s, %(org_id)s, 'recheck', %(scheduled_for)s, %(evaluated_at)s, FALSE, 'running', 'claimed',
       (now() AT TIME ZONE 'UTC') + make_interval(secs => %(lease_seconds)s),
       jsonb_build_array(jsonb_build_object('state', 'claimed', 'at', now() AT TIME ZONE 'UTC',
                                            'detail', %(detail)s::text))
WHERE NOT EXISTS (SELECT 1 FROM rule_runs
                  WHERE rule_id = %(rule_id)s AND scheduled_for = %(evaluated_at)s AND NOT dry_run)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: recheck_claimed
-- The first run of (rule, fire time) no longer waits for its recheck.
UPDATE rule_runs SET recheck_due_at = NULL
WHERE rule_id = %(rule_id)s AND scheduled_for = %(scheduled_for)s AND NOT dry_run AND trigger <> 'recheck';

-- name: schedule_recheck
UPDATE rule_runs SET recheck_due_at = %(due_at)s WHERE id = %(run_id)s;

-- name: due_rechecks
-- The first runs whose recheck is due and was not sent within grace_seconds, each marked as sent now.
UPDATE rule_runs run
SET recheck_sent_at = now() AT TIME ZONE 'UTC', recheck_sends = run.recheck_sends + 1
FROM (SELECT waiting.id FROM rule_runs waiting
      WHERE waiting.recheck_due_at <= (now() AT TIME ZONE 'UTC')
        AND (waiting.recheck_sent_at IS NULL
             OR waiting.recheck_sent_at < (now() AT TIME ZONE 'UTC') - make_interval(secs => %(grace_seconds)s))
      ORDER BY waiting.recheck_due_at
      LIMIT 1000
      FOR UPDATE SKIP LOCKED) due
WHERE run.id = due.id
RETURNING run.rule_id::text AS rule_id, run.scheduled_for, run.recheck_sends;

-- name: forget_rechecks
-- Rechecks no longer worth sending: sent max_sends times, or their rule is disabled or gone.
UPDATE rule_runs run SET recheck_due_at = NULL
WHERE run.recheck_due_at IS NOT NULL
  AND (run.recheck_sends >= %(max_sends)s
       OR NOT EXISTS (SELECT 1 FROM rules r WHERE r.id = run.rule_id AND r.enabled));

-- name: run_for_fire_time
-- The first run of (rule, fire time), or with recheck its recheck.
SELECT * FROM rule_runs
WHERE rule_id = %(rule_id)s AND scheduled_for = %(scheduled_for)s AND NOT dry_run
  AND (trigger = 'recheck') = %(recheck)s;

-- name: take_over_run
-- Only a run whose lease has expired can be taken over, and only by one claimant. A waiting run's lease ends when
-- it is due to be checked again: taking it over is that check, not a lost attempt.
UPDATE rule_runs
SET attempts = attempts + CASE WHEN state = 'waiting' THEN 0 ELSE 1 END,
    lease_expires_at = (now() AT TIME ZONE 'UTC') + make_interval(secs => %(lease_seconds)s),
    transitions = transitions || jsonb_build_array(jsonb_build_object(
        'state', state, 'at', now() AT TIME ZONE 'UTC',
        'detail', CASE WHEN state = 'waiting' THEN 'checked again' ELSE 'taken over after the lease expired' END))
WHERE id = %(run_id)s AND status IN ('running', 'waiting') AND lease_expires_at < (now() AT TIME ZONE 'UTC')
RETURNING *;

-- name: record_transition
-- Only from the state the holder last recorded: a run superseded meanwhile returns no row.
UPDATE rule_runs
SET state = %(state)s::text,
    status = %(status)s::text,
    path = COALESCE(%(path)s::text, path),
    entities = COALESCE(%(entities)s::int, entities),
    matched = COALESCE(%(matched)s::int, matched),
    alerts = COALESCE(%(alerts)s::int, alerts),
    silenced = COALESCE(%(silenced)s::int, silenced),
    acknowledged = COALESCE(%(acknowledged)s::int, acknowledged),
    notified_users = COALESCE(%(notified_users)s::int[], notified_users),
    storm = COALESCE(%(storm)s::boolean, storm),
    error = COALESCE(%(error)s::text, error),
    lifecycle = COALESCE(%(lifecycle)s::jsonb, lifecycle),
    restated = COALESCE(%(restated)s::int, restated),
    stale = COALESCE(%(stale)s::boolean, stale),
    waiting_for = COALESCE(%(waiting_for)s::text, waiting_for),
    waiting_since = CASE WHEN %(status)s::text = 'waiting'
                         THEN COALESCE(waiting_since, now() AT TIME ZONE 'UTC') ELSE waiting_since END,
    lease_expires_at = CASE WHEN %(status)s::text IN ('running', 'waiting')
                            THEN (now() AT TIME ZONE 'UTC') + make_interval(secs => %(lease_seconds)s::int) END,
    finished_at = CASE WHEN %(status)s::text IN ('running', 'waiting') THEN NULL ELSE now() AT TIME ZONE 'UTC' END,
    duration_ms = CASE WHEN %(status)s::text IN ('running', 'waiting') THEN NULL
                       ELSE (EXTRACT(EPOCH FROM (now() AT TIME ZONE 'UTC') - started_at) * 1000)::int END,
    transitions = transitions || jsonb_build_array(jsonb_build_object(
        'state', %(state)s::text, 'at', now() AT TIME ZONE 'UTC', 'detail', %(detail)s::text))
WHERE id = %(run_id)s AND state = %(from_state)s::text
RETURNING *;

-- name: supersede_waiting_runs
-- The waiting runs of the rules for fire times before %(scheduled_for)s, ended by the runs just claimed for them.
UPDATE rule_runs
SET state = 'skipped', status = 'skipped', error = %(reason)s::text, lease_expires_at = NULL,
    finished_at = now() AT TIME ZONE 'UTC',
    duration_ms = (EXTRACT(EPOCH FROM (now() AT TIME ZONE 'UTC') - started_at) * 1000)::int,
    transitions = transitions || jsonb_build_array(jsonb_build_object(
        'state', 'skipped', 'at', now() AT TIME ZONE 'UTC', 'detail', %(reason)s::text))
WHERE rule_id = ANY(%(rule_ids)s::uuid[]) AND status = 'waiting' AND NOT dry_run
  AND scheduled_for < %(scheduled_for)s
RETURNING id;

-- name: run_by_id
SELECT * FROM rule_runs WHERE id = %(run_id)s;

-- name: record_audit
INSERT INTO audit_logs (org_id, user_id, action, resource_type, resource_id, details)
VALUES (%(org_id)s, %(user_id)s, %(action)s, %(resource_type)s, %(resource_id)s, %(details)s);

-- name: insert_organization
INSERT INTO organizations (name, slug, timezone, currency, enabled_modules)
VALUES (%(name)s, %(slug)s, %(timezone)s, %(currency)s, %(enabled_modules)s)
RETURNING id;

-- name: insert_rule
INSERT INTO rules (org_id, name, module, enabled, conditions, actions, created_by)
VALUES (%(org_id)s, %(name)s, %(module)s, TRUE, %(conditions)s, %(actions)s, %(created_by)s)
RETURNING id::text AS id;

-- name: recent_runs
SELECT * FROM rule_runs
WHERE %(rule_id)s::uuid IS NULL OR rule_id = %(rule_id)s::uuid
ORDER BY started_at DESC, id
LIMIT %(limit)s;

-- name: schedulable_rule_versions
-- Every enabled rule with a digest of what its schedule, its validity (naming conventions included) and its batch
-- (organization, source) depend on: beat re-reads only the rules whose digest changed.
SELECT r.id::text AS rule_id,
       md5(concat_ws('|', r.org_id::text, r.conditions::text, r.actions::text, o.timezone, o.settings::text,
                     r.created_at::text, r.updated_at::text, o.updated_at::text)) AS version
FROM rules r JOIN organizations o ON o.id = r.org_id
WHERE r.enabled;

-- name: schedulable_rules
-- The enabled rules (those of rule_ids, those of org_id, when given) with what the scheduler needs: its batch is
-- org_id and the source of `conditions`. `edited_at` is the latest change of the rule or its organization, to the
-- second and never in the future, in UTC.
SELECT r.id::text AS rule_id, r.org_id, r.conditions, r.actions, o.timezone, o.settings,
       md5(concat_ws('|', r.org_id::text, r.conditions::text, r.actions::text, o.timezone, o.settings::text,
                     r.created_at::text, r.updated_at::text, o.updated_at::text)) AS version,
       (r.created_at AT TIME ZONE current_setting('TimeZone')) AT TIME ZONE 'UTC' AS created_at,
       (date_trunc('second', least(greatest(r.created_at, r.updated_at, o.updated_at), LOCALTIMESTAMP))
        AT TIME ZONE current_setting('TimeZone')) AT TIME ZONE 'UTC' AS edited_at
FROM rules r JOIN organizations o ON o.id = r.org_id
WHERE r.enabled AND (%(rule_ids)s::uuid[] IS NULL OR r.id = ANY(%(rule_ids)s::uuid[]))
  AND (%(org_id)s::int IS NULL OR r.org_id = %(org_id)s::int)
ORDER BY r.id;

-- name: abandoned_runs
-- Non-dry runs whose holder stopped renewing the lease: sent again, they are taken over and finished. A waiting
-- run whose check is overdue by more than %(waiting_grace_seconds)s (its retried task is lost) is sent again too.
SELECT id::text AS run_id, rule_id::text AS rule_id, scheduled_for, trigger, triggered_by, attempts
FROM rule_runs
WHERE NOT dry_run
  AND ((status = 'running'
        AND lease_expires_at < (now() AT TIME ZONE 'UTC') - make_interval(secs => %(grace_seconds)s))
       OR (status = 'waiting'
           AND lease_expires_at < (now() AT TIME ZONE 'UTC') - make_interval(secs => %(waiting_grace_seconds)s)))
ORDER BY lease_expires_at
LIMIT 1000;

-- name: fail_abandoned_dry_runs
-- A dry run writes nothing, so one whose holder is gone is simply ended.
UPDATE rule_runs
SET status = 'failed', state = 'failed', error = 'the process running this dry run stopped',
    finished_at = now() AT TIME ZONE 'UTC', lease_expires_at = NULL,
    transitions = transitions || jsonb_build_array(jsonb_build_object(
        'state', 'failed', 'at', now() AT TIME ZONE 'UTC', 'detail', 'the process running this dry run stopped'))
WHERE status = 'running' AND dry_run
  AND lease_expires_at < (now() AT TIME ZONE 'UTC') - make_interval(secs => %(grace_seconds)s)
RETURNING id;

-- name: stalled_deliveries
-- Deliveries whose task should have run by now: pending past their time, or claimed by a process that is gone.
SELECT id, attempts FROM deliveries
WHERE (status = 'pending' AND next_attempt_at < (now() AT TIME ZONE 'UTC') - make_interval(secs => %(grace_seconds)s))
   OR (status = 'sending' AND lease_expires_at < (now() AT TIME ZONE 'UTC') - make_interval(secs => %(grace_seconds)s))
ORDER BY id
LIMIT 1000;

-- name: record_sent_fire_times
-- The fire times about to be sent, in one statement; a pair recorded already keeps its row, a deleted rule's none.
INSERT INTO sent_fire_times (rule_id, scheduled_for, trigger)
SELECT s.rule_id, s.scheduled_for, s.trigger
FROM unnest(%(rule_ids)s::uuid[], %(scheduled_fors)s::timestamp[], %(triggers)s::text[])
     AS s(rule_id, scheduled_for, trigger)
JOIN rules r ON r.id = s.rule_id
ON CONFLICT (rule_id, scheduled_for) DO NOTHING;

-- name: forget_sent_fire_times
-- Sent fire times that need no watching any more: they have a run, their rule is disabled (a scheduled one), or
-- they were sent again max_resends times.
DELETE FROM sent_fire_times s
USING rules r
WHERE r.id = s.rule_id
  AND (s.resends >= %(max_resends)s
       OR (s.trigger = 'schedule' AND NOT r.enabled)
       OR EXISTS (SELECT 1 FROM rule_runs run
                  WHERE run.rule_id = s.rule_id AND run.scheduled_for = s.scheduled_for AND NOT run.dry_run));

-- name: unclaimed_fire_times
-- Fire times sent more than grace_seconds ago that still have no run: their task was lost before the claim.
-- Each is marked as sent again now, so the next sweep waits another grace period for it.
UPDATE sent_fire_times s
SET sent_at = now() AT TIME ZONE 'UTC', resends = s.resends + 1
FROM (SELECT rule_id, scheduled_for FROM sent_fire_times waiting
      WHERE waiting.sent_at < (now() AT TIME ZONE 'UTC') - make_interval(secs => %(grace_seconds)s)
        AND NOT EXISTS (SELECT 1 FROM rule_runs run WHERE run.rule_id = waiting.rule_id
                        AND run.scheduled_for = waiting.scheduled_for AND NOT run.dry_run)
      ORDER BY waiting.sent_at
      LIMIT 1000
      FOR UPDATE SKIP LOCKED) lost
WHERE s.rule_id = lost.rule_id AND s.scheduled_for = lost.scheduled_for
RETURNING s.rule_id::text AS rule_id, s.scheduled_for, s.trigger, s.resends;

-- name: audience
-- The members of the organization allowed to hear of each entity (the README's Notifications), one row per
-- (entity with its DSP and advertiser, user), with the user's role. `entities` is a JSON array of
-- [entity_type, entity_id, dsp_type, advertiser_id] arrays: one text parameter, however many entities.
WITH entity AS (
    SELECT DISTINCT e ->> 0 AS entity_type, e ->> 1 AS entity_id, e ->> 2 AS dsp_type, e ->> 3 AS advertiser_id
    FROM json_array_elements(%(entities)s::json) AS e
),
member AS (
    SELECT m.user_id, m.role, u.email, COALESCE(u.email_verified, FALSE) AS email_verified
    FROM org_memberships m JOIN users u ON u.id = m.user_id
    WHERE m.org_id = %(org_id)s AND m.role = ANY(%(roles)s::text[])
),
live_grant AS (
    SELECT p.user_id, p.entity_type, p.entity_id
    FROM entity_permissions p JOIN member m ON m.user_id = p.user_id
    WHERE p.org_id = %(org_id)s AND (p.expires_at IS NULL OR p.expires_at > %(at)s)
),
account AS (
    SELECT d.id::text AS account_id, d.dsp_type, d.external_id FROM dsp_accounts d WHERE d.org_id = %(org_id)s
),
granted AS (
    SELECT e.entity_type, e.entity_id, e.dsp_type, e.advertiser_id, g.user_id
    FROM entity e JOIN live_grant g ON g.entity_type = e.entity_type AND g.entity_id = e.entity_id
    UNION
    SELECT e.entity_type, e.entity_id, e.dsp_type, e.advertiser_id, g.user_id
    FROM entity e
    JOIN account a ON e.entity_type = 'campaign' AND a.dsp_type = e.dsp_type AND a.external_id = e.advertiser_id
    JOIN live_grant g ON g.entity_type = 'dsp_account' AND g.entity_id = a.account_id
),
allowed AS (
    SELECT e.entity_type, e.entity_id, e.dsp_type, e.advertiser_id, m.user_id
    FROM entity e CROSS JOIN member m WHERE m.role IN ('owner', 'admin')
    UNION
    SELECT entity_type, entity_id, dsp_type, advertiser_id, user_id FROM granted
)
SELECT a.entity_type, a.entity_id, a.dsp_type, a.advertiser_id, m.user_id, m.email, m.email_verified, m.role
FROM allowed a JOIN member m ON m.user_id = a.user_id
ORDER BY a.entity_type, a.entity_id, a.dsp_type, a.advertiser_id, m.user_id;

-- name: alert_states_not_normal
SELECT rule_id::text AS rule_id, entity_type, entity_id, entity_name, dsp_type, advertiser_id,
       condition_details::text AS condition_details, state, streak, conditions_hash, evaluated_at
FROM alert_states WHERE rule_id = ANY(%(rule_ids)s::uuid[]) AND state <> 'normal';

-- name: write_alert_states
-- A row last written as of T or later is left alone; a history row follows each row written with a new state.
-- Its arrays (one element per entity) go in binary: parsing them as text costs more than writing the rows.
WITH x AS (
    SELECT * FROM unnest(%(rule_ids)b::uuid[], %(run_ids)b::uuid[], %(hashes)b::text[], %(entity_types)b::text[],
                         %(entity_ids)b::text[], %(names)b::text[], %(dsp_types)b::text[],
                         %(advertiser_ids)b::text[], %(details)b::text[], %(befores)b::text[], %(afters)b::text[],
                         %(streaks)b::int[])
        AS x(rule_id, run_id, conditions_hash, entity_type, entity_id, entity_name, dsp_type, advertiser_id,
             details, before, after, streak)
), written AS (
    INSERT INTO alert_states (rule_id, entity_type, entity_id, org_id, state, streak, conditions_hash, entity_name,
                              dsp_type, advertiser_id, condition_details, changed_at, evaluated_at)
    SELECT rule_id, entity_type, entity_id, %(org_id)b, after, streak, conditions_hash, entity_name, dsp_type,
           advertiser_id, details::jsonb, %(at)b, %(at)b
    FROM x
    ON CONFLICT (rule_id, entity_type, entity_id) DO UPDATE
    SET state = EXCLUDED.state, streak = EXCLUDED.streak, conditions_hash = EXCLUDED.conditions_hash,
        entity_name = EXCLUDED.entity_name, dsp_type = EXCLUDED.dsp_type, advertiser_id = EXCLUDED.advertiser_id,
        condition_details = COALESCE(EXCLUDED.condition_details, alert_states.condition_details),
        changed_at = CASE WHEN alert_states.state = EXCLUDED.state THEN alert_states.changed_at
                          ELSE EXCLUDED.changed_at END,
        evaluated_at = EXCLUDED.evaluated_at
    WHERE alert_states.evaluated_at < EXCLUDED.evaluated_at
    RETURNING rule_id, entity_type, entity_id
)
INSERT INTO alert_state_history (rule_id, entity_type, entity_id, org_id, from_state, to_state, run_id, at)
SELECT x.rule_id, x.entity_type, x.entity_id, %(org_id)b, x.before, x.after, x.run_id, %(at)b
FROM x JOIN written USING (rule_id, entity_type, entity_id)
WHERE x.before <> x.after
ON CONFLICT DO NOTHING;

-- name: insert_notification
INSERT INTO notifications (org_id, user_id, rule_id, run_id, severity, entities, kind, storm, entity_count)
VALUES (%(org_id)s, %(user_id)s, %(rule_id)s, %(run_id)s, %(severity)s, %(entities)s, %(kind)s, %(storm)s,
        %(entity_count)s)
ON CONFLICT (run_id, user_id, kind) DO NOTHING;

-- name: insert_delivery
INSERT INTO deliveries (idempotency_key, run_id, org_id, rule_id, kind, channel, recipient, user_id, payload, status,
                        attempts, sent_at, next_attempt_at)
VALUES (%(idempotency_key)s, %(run_id)s, %(org_id)s, %(rule_id)s, %(kind)s, %(channel)s, %(recipient)s, %(user_id)s,
        %(payload)s, %(status)s::text, %(attempts)s,
        CASE WHEN %(status)s::text = 'sent' THEN now() AT TIME ZONE 'UTC' END,
        CASE WHEN %(status)s::text = 'pending' THEN now() AT TIME ZONE 'UTC' END)
ON CONFLICT (run_id, kind, channel, recipient) DO NOTHING;

-- name: pending_deliveries_of_runs
SELECT id FROM deliveries WHERE run_id = ANY(%(run_ids)s::uuid[]) AND status = 'pending' ORDER BY id;

-- name: claim_delivery
-- Only a pending delivery that is due, or one whose sender vanished, is claimed, and by one process only.
UPDATE deliveries
SET status = 'sending', attempts = attempts + 1,
    lease_expires_at = (now() AT TIME ZONE 'UTC') + make_interval(secs => %(lease_seconds)s)
WHERE id = %(delivery_id)s
  AND ((status = 'pending' AND next_attempt_at <= (now() AT TIME ZONE 'UTC') + interval '2 seconds')
       OR (status = 'sending' AND lease_expires_at < (now() AT TIME ZONE 'UTC')))
RETURNING *;

-- name: record_delivery_sent
UPDATE deliveries
SET status = 'sent', sent_at = now() AT TIME ZONE 'UTC', lease_expires_at = NULL, next_attempt_at = NULL,
    last_error = NULL
WHERE id = %(delivery_id)s AND status = 'sending';

-- name: record_delivery_retry
UPDATE deliveries
SET status = 'pending', last_error = %(error)s, lease_expires_at = NULL,
    next_attempt_at = (now() AT TIME ZONE 'UTC') + make_interval(secs => %(delay_seconds)s)
WHERE id = %(delivery_id)s AND status = 'sending';

-- name: record_delivery_failed
UPDATE deliveries
SET status = 'failed', last_error = %(error)s, lease_expires_at = NULL, next_attempt_at = NULL
WHERE id = %(delivery_id)s AND status = 'sending';

-- name: renew_leases
-- Renews the lease of each run still running among run_ids.
UPDATE rule_runs
SET lease_expires_at = (now() AT TIME ZONE 'UTC') + make_interval(secs => %(lease_seconds)s::int)
WHERE id = ANY(%(run_ids)s::uuid[]) AND status = 'running';

-- name: silences_and_acknowledgements_at
-- The organization's silences in force at T for every rule or one of rule_ids, and the acknowledgements of
-- rule_ids open at T (made by T, not ended by then), one row each; `kind` says which.
SELECT 'silence' AS kind, id, rule_id::text AS rule_id, entity_type, entity_id, dsp_type, advertiser_id
FROM silences
WHERE org_id = %(org_id)s AND starts_at <= %(at)s AND ends_at > %(at)s
  AND (rule_id IS NULL OR rule_id = ANY(%(rule_ids)s::uuid[]))
UNION ALL
SELECT 'acknowledgement', id, rule_id::text, entity_type, entity_id, NULL, NULL
FROM acknowledgements
WHERE org_id = %(org_id)s AND rule_id = ANY(%(rule_ids)s::uuid[]) AND created_at <= %(at)s
  AND (ended_at IS NULL OR ended_at > %(at)s)
ORDER BY kind, id;

-- name: silencer_standing
-- Whether the organization, the user and the rule (its organization) exist, the user's role in the organization
-- (NULL: not a member), and whether they hold an unexpired 'edit' grant there on the rule or on the entity.
SELECT EXISTS (SELECT 1 FROM organizations WHERE id = %(org_id)s) AS organization_exists,
       EXISTS (SELECT 1 FROM users WHERE id = %(user_id)s) AS user_exists,
       (SELECT org_id FROM rules WHERE id = %(rule_id)s::uuid) AS rule_org_id,
       (SELECT role FROM org_memberships WHERE user_id = %(user_id)s AND org_id = %(org_id)s) AS role,
       EXISTS (SELECT 1 FROM entity_permissions p
               WHERE p.user_id = %(user_id)s AND p.org_id = %(org_id)s AND p.permission = 'edit'
                 AND (p.expires_at IS NULL OR p.expires_at > %(at)s)
                 AND ((p.entity_type = 'rule' AND p.entity_id = %(rule_id)s::text)
                      OR (p.entity_type = %(entity_type)s::text AND p.entity_id = %(entity_id)s::text)))
           AS holds_edit_grant;

-- name: silence_of_request
SELECT * FROM silences WHERE request_id = %(request_id)s::text;

-- name: insert_silence
INSERT INTO silences (org_id, rule_id, entity_type, entity_id, dsp_type, advertiser_id, starts_at, ends_at,
                      created_by, comment, request_id)
VALUES (%(org_id)s, %(rule_id)s::uuid, %(entity_type)s, %(entity_id)s, %(dsp_type)s, %(advertiser_id)s,
        %(starts_at)s, %(ends_at)s, %(created_by)s, %(comment)s, %(request_id)s::text)
RETURNING *;

-- name: silence_for_update
SELECT * FROM silences WHERE id = %(silence_id)s FOR UPDATE;

-- name: end_silence
-- A silence that has not started yet ends when it starts, so it never is in force.
UPDATE silences SET ends_at = GREATEST(starts_at, %(at)s) WHERE id = %(silence_id)s RETURNING *;

-- name: silences_of_organization
-- An expired silence that never started (ends_at = starts_at) has ended too.
SELECT * FROM silences
WHERE org_id = %(org_id)s AND (%(include_ended)s OR (ends_at > %(at)s AND ends_at > starts_at))
ORDER BY starts_at, id;

-- name: organization_exists
SELECT 1 AS found FROM organizations WHERE id = %(org_id)s;

-- name: alert_state_of_entity
SELECT firing FROM alert_states
WHERE rule_id = %(rule_id)s AND entity_type = %(entity_type)s AND entity_id = %(entity_id)s;

-- name: acknowledgement_of_request
SELECT * FROM acknowledgements WHERE request_id = %(request_id)s::text;

-- name: open_acknowledgement
SELECT * FROM acknowledgements
WHERE rule_id = %(rule_id)s AND entity_type = %(entity_type)s AND entity_id = %(entity_id)s AND ended_at IS NULL;

-- name: insert_acknowledgement
INSERT INTO acknowledgements (org_id, rule_id, entity_type, entity_id, created_by, comment, request_id)
VALUES (%(org_id)s, %(rule_id)s, %(entity_type)s, %(entity_id)s, %(created_by)s, %(comment)s,
        %(request_id)s::text)
RETURNING *;

-- name: end_acknowledgements
-- The acknowledgements among ids still open end at the run's T.
UPDATE acknowledgements SET ended_at = %(at)s, ended_by_run = %(run_id)s
WHERE id = ANY(%(ids)s::bigint[]) AND ended_at IS NULL;

-- name: dsp_accounts_of_organizations
-- The DSP accounts of the organization %(org_id)s (of every organization when NULL); last_sync_at is UTC.
SELECT id, org_id, dsp_type, external_id, name, status, last_sync_at
FROM dsp_accounts
WHERE %(org_id)s::int IS NULL OR org_id = %(org_id)s::int
ORDER BY org_id, dsp_type, external_id;

-- name: pipelines_of_organizations
-- The pipelines of the organization %(org_id)s (of every organization when NULL).
SELECT id::text AS id, org_id, name, connector_type, status
FROM pipelines
WHERE %(org_id)s::int IS NULL OR org_id = %(org_id)s::int
ORDER BY org_id, connector_type, name;
