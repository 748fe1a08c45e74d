-- Flow control across all workers (docs/flow-control.md): the keys a run is limited and shared
-- out by, and the starts that rate limits count.
ALTER TABLE {schema}.runs
    ADD COLUMN concurrency_key text,   -- per-key concurrency (and ordering, and key rate limits)
    ADD COLUMN fairness_key    text,   -- round-robin claims across keys (e.g. a tenant)
    -- Under flow control (its task or queue declares limits or keys): claimed by the
    -- controlled claim, through the index below.
    ADD COLUMN flow            boolean NOT NULL DEFAULT false;

-- Queued runs under flow control by task, queue and key group (fairness key, concurrency key;
-- one group for runs without keys). The claim visits each group's first runs: a task with no
-- queued runs costs one probe whatever else the queue holds, and a key with 100,000 queued
-- runs costs no more than a key with 10. Runs not under flow control never enter it.
CREATE INDEX runs_flow_groups ON {schema}.runs
    (task, queue, (coalesce(fairness_key, '') || E'\x1f' || coalesce(concurrency_key, '')),
     priority DESC, id)
    WHERE status = 'QUEUED' AND flow;

-- Runs that hold their concurrency key: executing, or suspended (a durable run keeps its key
-- while it sleeps or waits, so "one at a time per customer" covers the whole workflow).
CREATE INDEX runs_key_held ON {schema}.runs (task, concurrency_key)
    WHERE status IN ('RUNNING', 'WAITING') AND concurrency_key IS NOT NULL;

-- One row per start of a rate-limited run and per limit it counts against ('t:<task>',
-- 'k:<task>:<key>', 'q:<queue>'), kept until the end of its window: a sliding-window log, so
-- no window of the limit's length ever holds more starts than the limit.
CREATE TABLE {schema}.rate_starts (
    scope      text        NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX rate_starts_scope ON {schema}.rate_starts (scope, expires_at);

-- When each fairness key of a task was last given a run: claims serve the least recently
-- served keys first, so turns rotate across claims, not only within one.
CREATE TABLE {schema}.fair_turns (
    task      text        NOT NULL,
    key       text        NOT NULL,
    served_at timestamptz NOT NULL,
    PRIMARY KEY (task, key)
);
