-- The chaos harness's audit, installed in its private database after durably's migrations.
-- Triggers record facts as the engine writes; the checker judges them afterwards. They watch
-- the engine from outside, so a bug in a fence shows up here even if the engine misses it.
-- Every durably process names its pooled connections "durably pid <pid>" (store.py); the
-- workers table maps a worker id to its pid.

-- Each time a run reaches a terminal status: an outcome must be recorded exactly once.
CREATE TABLE {schema}.chaos_outcomes (
    run_id  bigint      NOT NULL,
    status  text        NOT NULL,
    attempt integer     NOT NULL,
    writer  text        NOT NULL,
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Writes that a fenced-out attempt (or anyone but the holder) should never have made.
CREATE TABLE {schema}.chaos_violations (
    kind    text        NOT NULL,
    run_id  bigint      NOT NULL,
    detail  text        NOT NULL,
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The pid of the durably process whose session runs the current statement (NULL: not durably).
CREATE FUNCTION {schema}.chaos_writer() RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT (regexp_match(current_setting('application_name'), '^durably pid (\d+)$'))[1]::integer
$$;

-- True when the session writing is the worker process that holds this RUNNING attempt.
CREATE FUNCTION {schema}.chaos_is_holder(r {schema}.runs) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT r.status = 'RUNNING' AND EXISTS (
        SELECT 1 FROM {schema}.workers w
        WHERE w.id = r.worker_id AND w.pid = {schema}.chaos_writer())
$$;

CREATE FUNCTION {schema}.chaos_runs_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('COMPLETED', 'FAILED', 'CANCELLED')
       AND OLD.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED') THEN
        INSERT INTO {schema}.chaos_outcomes (run_id, status, attempt, writer)
        VALUES (NEW.id, NEW.status, OLD.attempt, current_setting('application_name'));
    END IF;
    -- A RUNNING attempt may be ended only by its holder (an outcome, a suspension), or taken
    -- back by a sweeper (a recovery: recoveries + 1, no worker, same attempt). Whether the
    -- sweeper was right to recover it depends on what its statement's snapshot saw, which a
    -- trigger cannot see; tests/store/test_properties.py checks the sweeper's rules exactly.
    IF OLD.status = 'RUNNING' AND NEW.status <> 'RUNNING'
       AND NOT {schema}.chaos_is_holder(OLD)
       AND NOT (NEW.recoveries = OLD.recoveries + 1 AND NEW.worker_id IS NULL
                AND NEW.attempt = OLD.attempt AND NEW.status IN ('QUEUED', 'FAILED')) THEN
        INSERT INTO {schema}.chaos_violations (kind, run_id, detail)
        VALUES ('foreign_outcome', OLD.id, format('attempt %s of worker %s set to %s by %s',
                OLD.attempt, OLD.worker_id, NEW.status, current_setting('application_name')));
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER chaos_runs_audit BEFORE UPDATE ON {schema}.runs
    FOR EACH ROW EXECUTE FUNCTION {schema}.chaos_runs_audit();

-- Every event-log write must come from the holder of the run's current attempt, and a finished
-- entry is never written again.
CREATE FUNCTION {schema}.chaos_log_audit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r {schema}.runs;
BEGIN
    SELECT * INTO r FROM {schema}.runs WHERE id = NEW.run_id;
    IF TG_OP = 'INSERT' AND r.attempt <> NEW.attempt THEN
        INSERT INTO {schema}.chaos_violations (kind, run_id, detail)
        VALUES ('stale_append', NEW.run_id, format('entry %s written by attempt %s while the run '
                'is at attempt %s', NEW.seq, NEW.attempt, r.attempt));
    END IF;
    IF NOT {schema}.chaos_is_holder(r) THEN
        INSERT INTO {schema}.chaos_violations (kind, run_id, detail)
        VALUES ('foreign_log_write', NEW.run_id, format('%s of entry %s by %s; run %s of %s',
                TG_OP, NEW.seq, current_setting('application_name'), r.status, r.worker_id));
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.done THEN
        INSERT INTO {schema}.chaos_violations (kind, run_id, detail)
        VALUES ('entry_rewritten', NEW.run_id, format('entry %s was already done', NEW.seq));
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER chaos_log_audit BEFORE INSERT OR UPDATE ON {schema}.event_log
    FOR EACH ROW EXECUTE FUNCTION {schema}.chaos_log_audit();

-- The workload's own tables. ledger: every execution of an external effect, append-only (so
-- re-executions are visible; `started` and `at` bound each execution, so executions of one run
-- that overlapped can be found). applied: effects done inside ctx.transaction, one row per key,
-- `times` counting how often it was applied (must be 1).
CREATE TABLE {schema}.ledger (
    id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    effect   text        NOT NULL,
    run_id   bigint      NOT NULL,
    item     integer     NOT NULL,
    idem_key text        NOT NULL,
    pid      integer     NOT NULL,
    started  timestamptz,
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE {schema}.applied (
    item  integer PRIMARY KEY,
    times integer NOT NULL
);
