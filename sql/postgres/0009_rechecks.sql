-- Rechecks of late data: a scheduled run of a rule with `conditions.recheck_after` is evaluated once more, as
-- the run of trigger 'recheck' for the same (rule, fire time), over the same window.
ALTER TABLE rule_runs DROP CONSTRAINT rule_runs_trigger_check;
ALTER TABLE rule_runs ADD CONSTRAINT rule_runs_trigger_check
    CHECK (trigger IN ('schedule', 'manual', 'backfill', 'recheck'));

-- One first run per (rule, fire time), whatever asked for it, and one recheck of it.
DROP INDEX rule_runs_one_per_fire_time;
CREATE UNIQUE INDEX rule_runs_one_per_fire_time ON rule_runs (rule_id, scheduled_for, (trigger = 'recheck'))
    WHERE NOT dry_run;

-- A recheck's own evaluation time: its rule_evaluations and alert_events rows carry it, while its window is that
-- of scheduled_for. NULL for every other run, whose rows carry scheduled_for. Two rechecks of a rule never share it.
ALTER TABLE rule_runs ADD COLUMN evaluated_at TIMESTAMP;
CREATE UNIQUE INDEX rule_runs_one_recheck_per_evaluation_time ON rule_runs (rule_id, evaluated_at)
    WHERE evaluated_at IS NOT NULL;
-- How many entities a recheck found restated (their verdict differs from the first run's).
ALTER TABLE rule_runs ADD COLUMN restated INT NOT NULL DEFAULT 0;

-- On a succeeded scheduled run whose rule has recheck_after: when its recheck is due, until the recheck is claimed;
-- when beat last sent it, and how often.
ALTER TABLE rule_runs ADD COLUMN recheck_due_at TIMESTAMP;
ALTER TABLE rule_runs ADD COLUMN recheck_sent_at TIMESTAMP;
ALTER TABLE rule_runs ADD COLUMN recheck_sends INT NOT NULL DEFAULT 0;
CREATE INDEX rule_runs_rechecks_due ON rule_runs (recheck_due_at) WHERE recheck_due_at IS NOT NULL;

-- A recheck's notice: the entities that match now after restated data, and those that no longer match.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_kind_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_kind_check CHECK (kind IN ('alert', 'resolved', 'restated'));
ALTER TABLE notifications DROP CONSTRAINT notifications_kind_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_kind_check CHECK (kind IN ('alert', 'resolved', 'restated'));
