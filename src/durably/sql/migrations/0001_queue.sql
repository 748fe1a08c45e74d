-- The task queue (guide lessons 2-4): one row per run, one row per worker.

CREATE TABLE {schema}.runs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task             text        NOT NULL,
    queue            text        NOT NULL DEFAULT 'default',
    status           text        NOT NULL DEFAULT 'QUEUED'
                     CHECK (status IN ('QUEUED', 'RUNNING', 'WAITING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    priority         integer     NOT NULL DEFAULT 0,
    args             jsonb       NOT NULL,
    result           jsonb,
    error            jsonb,
    -- The fencing token: bumped by every claim, checked by every later write.
    attempt          integer     NOT NULL DEFAULT 0,
    -- Failures of the task body, counted against max_retries.
    failures         integer     NOT NULL DEFAULT 0,
    max_retries      integer     NOT NULL DEFAULT 0,
    -- Times the run was taken back from a lost worker; capped separately from retries.
    recoveries       integer     NOT NULL DEFAULT 0,
    max_recoveries   integer     NOT NULL DEFAULT 20,
    idempotency_key  text,
    run_at           timestamptz NOT NULL DEFAULT now(),
    schedule_deadline timestamptz,
    worker_id        uuid,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);

-- The claim reads this index in order: queued runs of a queue, highest priority first, oldest first.
CREATE INDEX runs_claim ON {schema}.runs (queue, priority DESC, id) WHERE status = 'QUEUED';
-- Heartbeats, recovery and shutdown look up a worker's running runs.
CREATE INDEX runs_running ON {schema}.runs (worker_id) WHERE status = 'RUNNING';
-- The sweeper finds queued runs past their schedule timeout.
CREATE INDEX runs_schedule_deadline ON {schema}.runs (schedule_deadline)
    WHERE status = 'QUEUED' AND schedule_deadline IS NOT NULL;
CREATE UNIQUE INDEX runs_idempotency ON {schema}.runs (task, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_created ON {schema}.runs (created_at);

CREATE SEQUENCE {schema}.worker_lock_ids;

CREATE TABLE {schema}.workers (
    id            uuid        PRIMARY KEY,
    -- The worker holds pg_advisory_lock(<schema key>, lock_id) on its listener connection for as
    -- long as it lives, so the sweeper sees a killed worker as soon as Postgres drops its session.
    lock_id       integer     NOT NULL,
    hostname      text        NOT NULL,
    pid           integer     NOT NULL,
    queues        text[]      NOT NULL,
    tasks         text[]      NOT NULL,
    slots         integer     NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz
);
