-- The alert lifecycle of each (rule, entity): normal -> pending -> firing -> recovering -> normal, for every rule.
-- `streak` counts the matching runs in a row of a pending entity, or the recovered runs in a row of a recovering
-- one. `conditions_hash` is the hash of the rule's conditions that the state was reached under: a row whose hash
-- differs from the rule's current one reads as normal. `evaluated_at` is the latest fire time that wrote the row;
-- a run as of that time or earlier never writes it again.
ALTER TABLE alert_states
    ADD COLUMN state VARCHAR(20) NOT NULL DEFAULT 'normal'
        CHECK (state IN ('normal', 'pending', 'firing', 'recovering')),
    ADD COLUMN streak INT NOT NULL DEFAULT 0,
    ADD COLUMN conditions_hash TEXT NOT NULL DEFAULT '';
UPDATE alert_states SET state = 'firing' WHERE firing;
DROP INDEX alert_states_firing;
ALTER TABLE alert_states DROP COLUMN firing;
-- Whether the entity alerted and has not resolved yet (firing or recovering).
ALTER TABLE alert_states ADD COLUMN firing BOOLEAN GENERATED ALWAYS AS (state IN ('firing', 'recovering')) STORED;
CREATE INDEX alert_states_not_normal ON alert_states(rule_id) WHERE state <> 'normal';

-- Every change of an alert state, with the run and the fire time that made it; one per (rule, entity, T).
CREATE TABLE alert_state_history (
    rule_id UUID NOT NULL,
    entity_type VARCHAR(100) NOT NULL,
    entity_id VARCHAR(255) NOT NULL,
    org_id INT NOT NULL,
    from_state VARCHAR(20) NOT NULL,
    to_state VARCHAR(20) NOT NULL,
    run_id UUID NOT NULL,
    at TIMESTAMP NOT NULL,
    PRIMARY KEY (rule_id, entity_type, entity_id, at)
);

CREATE INDEX alert_state_history_of_run ON alert_state_history(run_id);

-- What the run's alert stage (or, for a dry run, its simulation) left its entities in: counts per state.
ALTER TABLE rule_runs ADD COLUMN lifecycle JSONB;
