-- Silences: while one is in force at a run's T (starts_at <= T < ends_at), the entities it covers are alerted as
-- usual (evaluations and alert_events are facts) but nobody is notified of them. A NULL scope column covers every
-- value: no rule_id, every rule of the organization; no entity, every entity; no dsp_type or advertiser_id, any.
-- `request_id` is the id of the task that created the row, so a redelivered task never adds a second one.
CREATE TABLE silences (
    id BIGSERIAL PRIMARY KEY,
    org_id INT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    rule_id UUID REFERENCES rules(id) ON DELETE CASCADE,
    entity_type VARCHAR(100),
    entity_id VARCHAR(255),
    dsp_type VARCHAR(50),
    advertiser_id VARCHAR(255),
    starts_at TIMESTAMP NOT NULL,
    ends_at TIMESTAMP NOT NULL,
    created_by INT REFERENCES users(id) ON DELETE SET NULL,
    comment TEXT,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    request_id TEXT UNIQUE,
    -- An expired silence that never started ends when it starts.
    CHECK (ends_at >= starts_at),
    CHECK ((entity_type IS NULL) = (entity_id IS NULL))
);

CREATE INDEX silences_in_force ON silences(org_id, ends_at);

-- Acknowledgements: a user has seen a firing (rule, entity); it is not notified again until a run finds it no
-- longer matching, which ends the acknowledgement (ended_at = that run's T, in its `alerted` transaction).
CREATE TABLE acknowledgements (
    id BIGSERIAL PRIMARY KEY,
    org_id INT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    rule_id UUID NOT NULL REFERENCES rules(id) ON DELETE CASCADE,
    entity_type VARCHAR(100) NOT NULL,
    entity_id VARCHAR(255) NOT NULL,
    created_by INT REFERENCES users(id) ON DELETE SET NULL,
    comment TEXT,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    ended_at TIMESTAMP,
    ended_by_run UUID REFERENCES rule_runs(id) ON DELETE SET NULL,
    request_id TEXT UNIQUE
);

CREATE UNIQUE INDEX acknowledgements_one_open ON acknowledgements(rule_id, entity_type, entity_id)
    WHERE ended_at IS NULL;
CREATE INDEX acknowledgements_of_rule ON acknowledgements(org_id, rule_id);

-- What a run withheld: matched entities a silence covered, and matched entities an acknowledgement covered.
ALTER TABLE rule_runs ADD COLUMN silenced INT NOT NULL DEFAULT 0;
ALTER TABLE rule_runs ADD COLUMN acknowledged INT NOT NULL DEFAULT 0;
