-- One row per rule run. A run moves through explicit states; every transition is appended to
-- `transitions` as {"state", "at", "detail"}. At most one non-dry run exists per (rule, fire time).

CREATE TABLE rule_runs (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    rule_id UUID NOT NULL,
    org_id INT NOT NULL,
    trigger VARCHAR(20) NOT NULL CHECK (trigger IN ('schedule', 'manual', 'backfill')),
    scheduled_for TIMESTAMP NOT NULL,
    triggered_by INT,
    dry_run BOOLEAN NOT NULL DEFAULT FALSE,
    status VARCHAR(20) NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'skipped')),
    state VARCHAR(40) NOT NULL,
    entities INT NOT NULL DEFAULT 0,
    matched INT NOT NULL DEFAULT 0,
    alerts INT NOT NULL DEFAULT 0,
    notified_users INT[] NOT NULL DEFAULT '{}',
    path VARCHAR(20) CHECK (path IN ('sql', 'interpreter')),
    error TEXT,
    attempts INT NOT NULL DEFAULT 1,
    lease_expires_at TIMESTAMP,
    transitions JSONB NOT NULL DEFAULT '[]',
    started_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    finished_at TIMESTAMP,
    duration_ms INT
);

CREATE UNIQUE INDEX rule_runs_one_per_fire_time ON rule_runs(rule_id, scheduled_for) WHERE NOT dry_run;
CREATE INDEX rule_runs_latest ON rule_runs(started_at DESC);
CREATE INDEX rule_runs_rule_latest ON rule_runs(rule_id, started_at DESC);

-- In-app notifications: one row per user per run, listing that user's alerted entities.
CREATE TABLE notifications (
    id BIGSERIAL PRIMARY KEY,
    org_id INT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    user_id INT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    rule_id UUID NOT NULL,
    run_id UUID NOT NULL REFERENCES rule_runs(id) ON DELETE CASCADE,
    severity VARCHAR(20) NOT NULL,
    entities JSONB NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    read_at TIMESTAMP,
    UNIQUE (run_id, user_id)
);

CREATE INDEX notifications_unread ON notifications(user_id, created_at DESC) WHERE read_at IS NULL;
