-- Durable tasks (guide lessons 5-7): the event log, child runs, waits, and pushed events.

ALTER TABLE {schema}.runs
    ADD COLUMN durable       boolean NOT NULL DEFAULT false,
    ADD COLUMN parent_id     bigint,
    ADD COLUMN parent_seq    integer,
    -- What a WAITING run waits for: a time, children, an event key (any of them wakes it).
    ADD COLUMN wake_at       timestamptz,
    ADD COLUMN wait_children bigint[],
    ADD COLUMN wait_event    text,
    -- Bumped by replay: the log of earlier epochs is archived, not deleted.
    ADD COLUMN log_epoch     integer NOT NULL DEFAULT 0;

CREATE INDEX runs_parent ON {schema}.runs (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX runs_wake ON {schema}.runs (wake_at) WHERE status = 'WAITING' AND wake_at IS NOT NULL;
CREATE INDEX runs_wait_event ON {schema}.runs (wait_event)
    WHERE status = 'WAITING' AND wait_event IS NOT NULL;
CREATE INDEX runs_waiting ON {schema}.runs (id) WHERE status = 'WAITING';

-- One row per durable operation of a durable run, in order.
CREATE TABLE {schema}.event_log (
    run_id       bigint      NOT NULL,
    seq          integer     NOT NULL,
    kind         text        NOT NULL,  -- step, transaction, child, sleep, event, now, uuid, random
    name         text        NOT NULL,
    key          text        NOT NULL,  -- hash of (kind, name, input): non-determinism detection
    input        jsonb,
    result       jsonb,
    error        jsonb,
    child_id     bigint,
    event_id     bigint,
    wake_at      timestamptz,
    done         boolean     NOT NULL,
    attempt      integer     NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    PRIMARY KEY (run_id, seq)
);

-- Logs set aside by replay, kept for audit.
CREATE TABLE {schema}.event_log_archive (
    LIKE {schema}.event_log,
    epoch       integer     NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX event_log_archive_run ON {schema}.event_log_archive (run_id, epoch, seq);

-- Keyed payloads pushed from outside (app.push_event) for durable runs to wait for.
CREATE TABLE {schema}.events (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key        text        NOT NULL,
    payload    jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_key ON {schema}.events (key, id);
