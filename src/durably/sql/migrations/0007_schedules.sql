-- Schedules (docs/scheduling.md): a task enqueued on a cron. Workers fire due schedules; each
-- firing inserts its run with the idempotency key 'schedule:<name>:<fire time>' and moves
-- next_fire_at on, in one transaction.
CREATE TABLE {schema}.schedules (
    name          text        PRIMARY KEY,
    task          text        NOT NULL,
    cron          text        NOT NULL,
    timezone      text        NOT NULL DEFAULT 'UTC',
    -- The run's input, as runs.args stores it: {"args": [...], "kwargs": {...}}.
    args          jsonb       NOT NULL DEFAULT '{"args": [], "kwargs": {}}',
    -- What to enqueue for ticks that passed while no worker could fire them.
    catch_up      text        NOT NULL DEFAULT 'latest' CHECK (catch_up IN ('all', 'latest', 'none')),
    -- Declared by @app.task(cron=...) and kept in step with the code by every starting worker.
    declared      boolean     NOT NULL DEFAULT false,
    paused        boolean     NOT NULL DEFAULT false,
    -- The next tick to fire (database clock); NULL while paused.
    next_fire_at  timestamptz CHECK ((next_fire_at IS NULL) = paused),
    last_fired_at timestamptz,  -- the fire time of the last tick enqueued
    last_run_id   bigint,       -- and its run
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Every worker asks for the earliest unpaused schedules of its tasks about once a second.
CREATE INDEX schedules_due ON {schema}.schedules (next_fire_at) WHERE NOT paused;
