-- Deliveries: one row per message a run owes someone, written in the transaction that records the run's
-- `alerted` state. notifications.deliver claims a row (status 'sending', attempts + 1, a lease), sends it, and
-- records 'sent' or, after the last attempt, 'failed'. `idempotency_key` travels with every send of the row.
CREATE TABLE deliveries (
    id BIGSERIAL PRIMARY KEY,
    idempotency_key UUID NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    run_id UUID NOT NULL REFERENCES rule_runs(id) ON DELETE CASCADE,
    org_id INT NOT NULL,
    rule_id UUID NOT NULL,
    kind VARCHAR(20) NOT NULL CHECK (kind IN ('alert', 'resolved')),
    channel VARCHAR(20) NOT NULL CHECK (channel IN ('in_app', 'email', 'slack', 'webhook')),
    recipient TEXT NOT NULL,
    user_id INT,
    payload JSONB NOT NULL,
    status VARCHAR(20) NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    attempts INT NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at TIMESTAMP,
    lease_expires_at TIMESTAMP,
    sent_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    UNIQUE (run_id, kind, channel, recipient)
);

CREATE INDEX deliveries_unfinished ON deliveries(next_attempt_at) WHERE status IN ('pending', 'sending');
CREATE INDEX deliveries_of_run ON deliveries(run_id);

-- Whether each (rule, entity) is firing, for rules with notify_on_resolve: a firing entity that stops matching
-- gets one resolved notice. `evaluated_at` is the latest fire time that set the row; older runs never overwrite it.
CREATE TABLE alert_states (
    rule_id UUID NOT NULL,
    entity_type VARCHAR(100) NOT NULL,
    entity_id VARCHAR(255) NOT NULL,
    org_id INT NOT NULL,
    firing BOOLEAN NOT NULL,
    entity_name TEXT NOT NULL,
    dsp_type TEXT NOT NULL DEFAULT '',
    advertiser_id TEXT NOT NULL DEFAULT '',
    condition_details JSONB,
    changed_at TIMESTAMP NOT NULL,
    evaluated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (rule_id, entity_type, entity_id)
);

CREATE INDEX alert_states_firing ON alert_states(rule_id) WHERE firing;

-- A run may owe a user both an alert and a resolved notice.
ALTER TABLE notifications ADD COLUMN kind VARCHAR(20) NOT NULL DEFAULT 'alert' CHECK (kind IN ('alert', 'resolved'));
ALTER TABLE notifications DROP CONSTRAINT notifications_run_id_user_id_key;
ALTER TABLE notifications ADD CONSTRAINT notifications_one_per_user_per_run UNIQUE (run_id, user_id, kind);
