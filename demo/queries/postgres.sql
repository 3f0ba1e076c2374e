-- The demo's named PostgreSQL statements (demo/data.py), run by a Postgres pool made with this file as its extra
-- queries.

-- name: organization_by_slug
SELECT id, name, timezone FROM organizations WHERE slug = %(slug)s;

-- name: set_organization_settings
UPDATE organizations SET settings = %(settings)s::jsonb WHERE id = %(org_id)s;

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
INSERT INTO dsp_accounts (org_id, dsp_type, external_id, name, last_sync_at)
VALUES (%(org_id)s, %(dsp_type)s, %(external_id)s, %(name)s, %(last_sync_at)s)
RETURNING id;

-- name: insert_grant
INSERT INTO entity_permissions (user_id, org_id, entity_type, entity_id, permission, granted_by, expires_at)
VALUES (%(user_id)s, %(org_id)s, %(entity_type)s, %(entity_id)s, %(permission)s, %(granted_by)s, %(expires_at)s);

-- name: point_demo_channels
-- The demo rules that post to Slack and a webhook post to the local inbox instead; a rule already pointing there
-- is left as it is, so beat sees no change.
UPDATE rules
SET actions = jsonb_set(jsonb_set(actions, '{notify,slack_webhook_url}', to_jsonb(%(slack_url)s::text)),
                        '{notify,webhook_url}', to_jsonb(%(webhook_url)s::text)),
    updated_at = now() AT TIME ZONE 'UTC'
WHERE org_id = (SELECT id FROM organizations WHERE slug = %(slug)s)
  AND actions -> 'notify' ? 'slack_webhook_url' AND actions -> 'notify' ? 'webhook_url'
  AND (actions #>> '{notify,slack_webhook_url}', actions #>> '{notify,webhook_url}')
      IS DISTINCT FROM (%(slack_url)s::text, %(webhook_url)s::text)
RETURNING name;

-- name: set_demo_sync_time
-- The demo accounts other than the lagging one (external id %(lagging_id)s) synced at %(synced)s, that one %(lag)s
-- before.
UPDATE dsp_accounts
SET last_sync_at = CASE WHEN external_id = %(lagging_id)s THEN %(synced)s - %(lag)s ELSE %(synced)s END
WHERE org_id = %(org_id)s;
