-- Whether a run was a storm (README, "Storm protection"): it matched more than its rule's max_alerts entities, or
-- more than max_alert_share of the entities it evaluated. Dry runs record whether they would have been one.
ALTER TABLE rule_runs ADD COLUMN storm BOOLEAN NOT NULL DEFAULT FALSE;

-- An in-app notification of a storm lists only the first entities: `entity_count` says how many it is about.
ALTER TABLE notifications ADD COLUMN storm BOOLEAN NOT NULL DEFAULT FALSE, ADD COLUMN entity_count INT;
UPDATE notifications SET entity_count = jsonb_array_length(entities);
ALTER TABLE notifications ALTER COLUMN entity_count SET NOT NULL;
