-- The (rule, T) pairs beat, `rulesctl dispatch` and rules.evaluate_org have sent as rules.evaluate tasks. Beat's
-- sweeper sends again a pair that has no run after a grace period (its task was lost before the claim), and
-- forgets a pair once it has a run, once its rule is disabled or gone, or once it was sent again too often.
CREATE TABLE sent_fire_times (
    rule_id UUID NOT NULL REFERENCES rules(id) ON DELETE CASCADE,
    scheduled_for TIMESTAMP NOT NULL,
    trigger VARCHAR(20) NOT NULL CHECK (trigger IN ('schedule', 'manual')),
    sent_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    resends INT NOT NULL DEFAULT 0,
    PRIMARY KEY (rule_id, scheduled_for)
);

CREATE INDEX sent_fire_times_by_time ON sent_fire_times(sent_at);
