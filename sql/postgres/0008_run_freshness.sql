-- Data freshness of a run: a run whose window's data is incomplete is `waiting` (status and state) until the data
-- is complete or its max_wait has passed. `waiting_for` says what it waited (or, run on stale data, went without)
-- for, `waiting_since` when it began waiting, `stale` whether it was evaluated on incomplete data.
ALTER TABLE rule_runs
    ADD COLUMN stale BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN waiting_for TEXT,
    ADD COLUMN waiting_since TIMESTAMP,
    DROP CONSTRAINT rule_runs_status_check,
    ADD CONSTRAINT rule_runs_status_check
        CHECK (status IN ('running', 'waiting', 'succeeded', 'failed', 'skipped'));

CREATE INDEX rule_runs_waiting ON rule_runs(rule_id, scheduled_for) WHERE status = 'waiting';
