-- Every statement durably runs, by name. `{schema}` is replaced by the quoted schema name;
-- values are always bound parameters. Notifications carry identifiers only: 'q:<queue>' when
-- runs became claimable, 'done:<id>,<id>' when runs ended, 'cancel:<id>' when a run was cancelled.
-- Postgres refuses a payload of 8000 bytes or more, so every payload is bounded whatever the
-- number of rows: 'done:' lists at most 300 ids (under 6100 bytes even with 19-digit ids; more
-- ended runs make more notifications), and queue names and event keys are at most 1000 bytes.

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS {schema};

-- name: migrations_record_literal
-- The same record with literal values, for `durably db sql` to print.
INSERT INTO {schema}.migrations (version, name) VALUES ({version}, '{name}');

-- name: migrations_bootstrap
CREATE TABLE IF NOT EXISTS {schema}.migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_applied
SELECT version FROM {schema}.migrations ORDER BY version;

-- name: migrations_record
INSERT INTO {schema}.migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: migrations_lock
SELECT pg_advisory_xact_lock(%(namespace)s, -1);

-- name: schema_exists
SELECT to_regclass(%(table)s) IS NOT NULL;

-- name: enqueue
WITH input AS (
    SELECT * FROM unnest(
        %(task)s::text[], %(queue)s::text[], %(priority)s::integer[], %(args)s::text[],
        %(max_retries)s::integer[], %(max_recoveries)s::integer[], %(delay)s::float8[],
        %(schedule_timeout)s::float8[], %(idempotency_key)s::text[], %(durable)s::boolean[],
        %(trace_context)s::text[], %(concurrency_key)s::text[], %(fairness_key)s::text[],
        %(flow)s::boolean[], %(execution_deadline)s::float8[]
    ) WITH ORDINALITY AS t(task, queue, priority, args, max_retries, max_recoveries, delay,
                          schedule_timeout, idempotency_key, durable, trace_context,
                          concurrency_key, fairness_key, flow, execution_deadline, ord)
), inserted AS (
    INSERT INTO {schema}.runs (task, queue, priority, args, max_retries, max_recoveries,
                               run_at, schedule_deadline, idempotency_key, durable,
                               trace_context, concurrency_key, fairness_key, flow,
                               execution_deadline)
    SELECT task, queue, priority, args::jsonb, max_retries, max_recoveries,
           now() + make_interval(secs => delay),
           now() + make_interval(secs => delay + schedule_timeout),
           idempotency_key, durable, trace_context::jsonb, concurrency_key, fairness_key, flow,
           execution_deadline
    FROM input
    ORDER BY ord  -- identities are drawn in this order, so ids ascend in input order
    ON CONFLICT (task, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, task, queue, idempotency_key
)
SELECT id, idempotency_key,
       (SELECT count(pg_notify(%(channel)s, 'q:' || q.queue))
          FROM (SELECT DISTINCT queue FROM inserted) q) AS notified,
       task
FROM inserted;

-- name: enqueue_one
-- `enqueue` of a single run with scalar parameters: no arrays to build, send and unnest.
WITH inserted AS (
    INSERT INTO {schema}.runs (task, queue, priority, args, max_retries, max_recoveries,
                               run_at, schedule_deadline, idempotency_key, durable,
                               trace_context, concurrency_key, fairness_key, flow,
                               execution_deadline)
    VALUES (%(task)s, %(queue)s, %(priority)s, %(args)s::jsonb, %(max_retries)s,
            %(max_recoveries)s, now() + make_interval(secs => %(delay)s::float8),
            now() + make_interval(secs => %(delay)s::float8 + %(schedule_timeout)s::float8),
            %(idempotency_key)s, %(durable)s, %(trace_context)s::jsonb, %(concurrency_key)s,
            %(fairness_key)s, %(flow)s, %(execution_deadline)s::float8)
    ON CONFLICT (task, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, task, queue, idempotency_key
)
SELECT id, idempotency_key, pg_notify(%(channel)s, 'q:' || queue), task FROM inserted;

-- name: existing_by_key
SELECT idempotency_key, id FROM {schema}.runs
WHERE task = %(task)s AND idempotency_key = ANY(%(keys)s::text[]);

-- name: claim
-- Also wakes WAITING runs of these tasks whose timer is due, the 1000 most overdue per claim
-- (20,000 timers due at once are woken over 20 claims, each short), skipping rows another
-- statement holds (a cancel, the sweeper) instead of waiting for them; they come back as marker
-- rows (task NULL) and are claimed by the next claim. The record placeholder after `claimed` is
-- empty, or under flow control `claim_record_flow`. Times are the statement's: under flow control
-- the claim runs in a transaction that first waits for its turn, so `now()` (when that
-- transaction began) could date a start before an earlier claim's; rate windows need them in order.
WITH due_timers AS (
    SELECT id FROM {schema}.runs
    WHERE status = 'WAITING' AND wake_at <= statement_timestamp()
      AND queue = ANY(%(queues)s::text[]) AND task = ANY(%(tasks)s::text[])
    ORDER BY wake_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), woken AS (
    UPDATE {schema}.runs r
    SET status = 'QUEUED', run_at = statement_timestamp(), wake_at = NULL, wait_children = NULL,
        wait_event = NULL
    FROM due_timers d WHERE r.id = d.id
    RETURNING r.id
), picked AS (
    {pick}
), claimed AS (
    UPDATE {schema}.runs r
    SET status = 'RUNNING',
        worker_id = %(worker_id)s,
        attempt = r.attempt + 1,
        lease_expires_at = statement_timestamp() + make_interval(secs => %(lease)s),
        started_at = statement_timestamp(),
        -- The run deadline starts at the first start and is kept by every later one (NULL
        -- stays NULL: make_interval of NULL is NULL).
        deadline_at = coalesce(r.deadline_at,
                               statement_timestamp() + make_interval(secs => r.execution_deadline))
    FROM picked
    WHERE r.id = picked.id
    RETURNING r.id, r.task, r.args, r.attempt, r.failures, r.max_retries, r.durable,
              r.trace_context, r.queue, r.concurrency_key, r.fairness_key,
              EXTRACT(EPOCH FROM r.deadline_at - statement_timestamp())::float8 AS deadline_in
){record}
SELECT c.id, c.task, c.args, c.attempt, c.failures, c.max_retries,
       c.durable AND EXISTS (SELECT 1 FROM {schema}.event_log l WHERE l.run_id = c.id),
       c.trace_context, c.deadline_in
FROM claimed c
UNION ALL
SELECT id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM woken;

-- name: claim_pick_one_queue
-- The `picked` part of `claim` for a worker serving one queue: one ordered index scan.
SELECT id FROM {schema}.runs
    WHERE status = 'QUEUED'
      AND queue = (%(queues)s::text[])[1]
      AND durable = %(durable)s
      AND task = ANY(%(tasks)s::text[])
      AND run_at <= now()
      AND (schedule_deadline IS NULL OR schedule_deadline > now())
    ORDER BY priority DESC, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED

-- name: claim_pick_queues
-- The `picked` part of `claim` for several queues: one ordered, limited index scan per queue
-- (with `queue = ANY(...)` Postgres would read and sort every due queued run on every claim).
-- Also the free half of `claim_pick_controlled`.
SELECT c.id, c.priority FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT id, priority FROM {schema}.runs
        WHERE status = 'QUEUED'
          AND queue = q.name
          AND durable = %(durable)s
          AND task = ANY(%(tasks)s::text[])
          AND run_at <= now()
          AND (schedule_deadline IS NULL OR schedule_deadline > now())
        ORDER BY priority DESC, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) c
    ORDER BY c.priority DESC, c.id
    LIMIT %(limit)s

-- name: claim_pick_controlled
-- The `picked` part of `claim` when some of the pool's tasks are under flow control
-- (docs/flow-control.md): limits across all workers on concurrency and rate, per task, per key
-- and per queue, and fair turns across keys. It runs after `claim_flow_lock` in the same
-- transaction, so the counts below are read by one claimer at a time: no two workers can both
-- fill the same room. Rooms are counted first; then candidates are read, the first runs of each
-- key group (a few index probes per task, queue and group, never the whole queue), and kept
-- stage by stage: within their key's room, then their task's, then their queue's. A candidate
-- dropped at a later stage may have used room at an earlier one, so a claim can take less than
-- it could, never more; the next claim takes the rest. Every stage orders candidates the same
-- way: a fairness key's first run before any key's second (the least recently served key
-- first), then priority, then age. The pool's other tasks are claimed as `claim_pick_queues`
-- claims them (the free placeholder).
WITH RECURSIVE rules AS MATERIALIZED (
    -- One row per controlled task; a limit is NULL when not set.
    SELECT * FROM unnest(%(c_task)s::text[], %(c_cap)s::integer[], %(c_rate_n)s::integer[],
                         %(c_key_cap)s::integer[], %(c_key_rate_n)s::integer[],
                         %(c_ordered)s::boolean[], %(c_fair)s::boolean[])
        AS r(task, cap, rate_n, key_cap, key_rate_n, ordered, fair)
), running AS MATERIALIZED (
    -- Every RUNNING run, read once from the small partial index of running runs (a count
    -- inside the scans below would be evaluated again for every candidate). A dead worker's
    -- runs keep counting until the sweeper recovers them.
    SELECT task, queue FROM {schema}.runs WHERE status = 'RUNNING'
), task_room AS MATERIALIZED (
    -- NULL: no limit (LEAST ignores NULLs).
    SELECT r.*, LEAST(
        r.cap - (SELECT count(*) FROM running WHERE running.task = r.task),
        r.rate_n - (SELECT count(*) FROM {schema}.rate_starts s
                    WHERE s.scope = 't:' || r.task
                      AND s.expires_at > statement_timestamp())) AS room
    FROM rules r
), queue_room AS MATERIALIZED (
    SELECT q.queue, LEAST(
        q.cap - (SELECT count(*) FROM running WHERE running.queue = q.queue),
        q.rate_n - (SELECT count(*) FROM {schema}.rate_starts s
                    WHERE s.scope = 'q:' || q.queue
                      AND s.expires_at > statement_timestamp())) AS room
    FROM unnest(%(q_name)s::text[], %(q_cap)s::integer[], %(q_rate_n)s::integer[])
        AS q(queue, cap, rate_n)
), pairs AS MATERIALIZED (
    -- The (task, queue) pairs with room in both.
    SELECT t.task, q.name AS queue, t.ordered, t.fair
    FROM task_room t CROSS JOIN unnest(%(queues)s::text[]) AS q(name)
    LEFT JOIN queue_room qr ON qr.queue = q.name
    WHERE coalesce(t.room, 1) > 0 AND coalesce(qr.room, 1) > 0
), groups AS (
    -- The key groups of each pair with queued runs: a loose index scan of runs_flow_groups,
    -- one probe per group (and one for a pair with none).
    SELECT p.task, p.queue, p.ordered, p.fair, (
        SELECT coalesce(fairness_key, '') || E'\x1f' || coalesce(concurrency_key, '')
        FROM {schema}.runs
        WHERE status = 'QUEUED' AND flow AND task = p.task AND queue = p.queue
        ORDER BY 1 LIMIT 1) AS grp
    FROM pairs p
    UNION ALL
    SELECT g.task, g.queue, g.ordered, g.fair, (
        SELECT coalesce(fairness_key, '') || E'\x1f' || coalesce(concurrency_key, '')
        FROM {schema}.runs
        WHERE status = 'QUEUED' AND flow AND task = g.task AND queue = g.queue
          AND coalesce(fairness_key, '') || E'\x1f' || coalesce(concurrency_key, '') > g.grp
        ORDER BY 1 LIMIT 1)
    FROM groups g WHERE g.grp IS NOT NULL
), key_room AS MATERIALIZED (
    -- Per concurrency key: runs holding it (executing or suspended) and its recent starts.
    SELECT k.task, k.ckey, LEAST(
        r.key_cap - (SELECT count(*) FROM {schema}.runs h
                     WHERE h.status IN ('RUNNING', 'WAITING') AND h.task = k.task
                       AND h.concurrency_key = k.ckey),
        r.key_rate_n - (SELECT count(*) FROM {schema}.rate_starts s
                        WHERE s.scope = 'k:' || k.task || ':' || k.ckey
                          AND s.expires_at > statement_timestamp())) AS room
    FROM (SELECT DISTINCT task, split_part(grp, E'\x1f', 2) AS ckey FROM groups) k
    JOIN rules r USING (task)
    WHERE k.ckey <> ''
), takes AS MATERIALIZED (
    -- How many runs to read from each group: no more than its task's and its key's room can
    -- start, and for a fair task an even share of the claim (later claims serve the rest).
    SELECT g.task, g.queue, g.ordered, g.grp, LEAST(
        %(limit)s, t.room, kr.room,
        CASE WHEN g.fair THEN ceil(%(limit)s::float8 / count(*) OVER (PARTITION BY g.task))::int END
    ) AS take
    FROM groups g JOIN task_room t USING (task)
    LEFT JOIN key_room kr ON kr.task = g.task AND kr.ckey = split_part(g.grp, E'\x1f', 2)
    WHERE g.grp IS NOT NULL
), candidates AS (
    -- The first due runs of each group, best first.
    SELECT g.task, g.queue, c.*, c.priority AS kprio, true AS ok
    FROM takes g CROSS JOIN LATERAL (
        SELECT id, priority, concurrency_key AS ckey, fairness_key AS fkey FROM {schema}.runs
        WHERE status = 'QUEUED' AND flow AND task = g.task AND queue = g.queue
          AND coalesce(fairness_key, '') || E'\x1f' || coalesce(concurrency_key, '') = g.grp
          AND run_at <= statement_timestamp()
          AND (schedule_deadline IS NULL OR schedule_deadline > statement_timestamp())
        ORDER BY priority DESC, id
        LIMIT g.take
        FOR UPDATE SKIP LOCKED
    ) c
    WHERE g.take > 0 AND NOT g.ordered
    UNION ALL
    -- Strictly ordered keys: the first runs in enqueue order, due or not; a run may start only
    -- if every run of its key enqueued before it has started (`ok`).
    SELECT o.task, o.queue, o.id, o.priority, o.ckey, o.fkey, 0,
           bool_and(o.due) OVER (PARTITION BY o.task, o.ckey ORDER BY o.id)
    FROM (
        SELECT g.task, g.queue, c.* FROM takes g CROSS JOIN LATERAL (
            SELECT id, priority, concurrency_key AS ckey, fairness_key AS fkey,
                   run_at <= statement_timestamp()
                   AND (schedule_deadline IS NULL OR schedule_deadline > statement_timestamp())
                       AS due
            FROM {schema}.runs
            WHERE status = 'QUEUED' AND flow AND task = g.task AND queue = g.queue
              AND coalesce(fairness_key, '') || E'\x1f' || coalesce(concurrency_key, '') = g.grp
            ORDER BY id
            LIMIT g.take
            FOR UPDATE SKIP LOCKED
        ) c
        WHERE g.take > 0 AND g.ordered
    ) o
), ranked AS (
    -- The order every stage keeps: fair turns, then priority, then age.
    SELECT c.*, kr.room AS key_room, t.served_at,
           CASE WHEN c.fkey IS NULL THEN 1 ELSE row_number() OVER (
               PARTITION BY c.task, c.fkey ORDER BY c.priority DESC, c.id) END AS turn,
           row_number() OVER (PARTITION BY c.task, c.ckey ORDER BY c.kprio DESC, c.id) AS kn
    FROM candidates c
    LEFT JOIN key_room kr ON kr.task = c.task AND kr.ckey = c.ckey
    LEFT JOIN {schema}.fair_turns t ON t.task = c.task AND t.key = c.fkey
    WHERE c.ok
), kept_by_key AS (
    SELECT k.*, row_number() OVER (PARTITION BY k.task
        ORDER BY k.turn, k.served_at NULLS FIRST, k.priority DESC, k.id) AS tn
    FROM ranked k WHERE k.kn <= coalesce(k.key_room, k.kn)
), kept_by_task AS (
    SELECT k.*, row_number() OVER (PARTITION BY k.queue
        ORDER BY k.turn, k.served_at NULLS FIRST, k.priority DESC, k.id) AS qn
    FROM kept_by_key k JOIN task_room t USING (task)
    WHERE k.tn <= coalesce(t.room, k.tn)
), kept_by_queue AS (
    SELECT k.id, k.turn, k.served_at, k.priority
    FROM kept_by_task k LEFT JOIN queue_room q USING (queue)
    WHERE k.qn <= coalesce(q.room, k.qn)
)
SELECT u.id FROM (
    SELECT id, turn, served_at, priority FROM kept_by_queue
    UNION ALL
    SELECT f.id, 1, NULL, f.priority FROM ({free}) f
) u
ORDER BY u.turn, u.served_at NULLS FIRST, u.priority DESC, u.id
LIMIT %(limit)s

-- name: claim_record_flow
-- The record part of a controlled claim: one start per rate limit each claimed run counts
-- against, kept for the limit's period, and the fairness keys served. `rates`: the period of
-- each rate limit of the pool, by rule ('t:<task>', 'k:<task>' for the task's keys, 'q:<queue>').
, rates AS (
    SELECT * FROM unnest(%(r_rule)s::text[], %(r_seconds)s::float8[]) AS r(rule, seconds)
), started AS (
    INSERT INTO {schema}.rate_starts (scope, expires_at)
    SELECT s.scope, statement_timestamp() + make_interval(secs => r.seconds)
    FROM claimed c CROSS JOIN LATERAL (VALUES
        ('t:' || c.task, 't:' || c.task),
        ('q:' || c.queue, 'q:' || c.queue),
        ('k:' || c.task, 'k:' || c.task || ':' || nullif(c.concurrency_key, ''))
    ) AS s(rule, scope)
    JOIN rates r ON r.rule = s.rule
    WHERE s.scope IS NOT NULL
), served AS (
    INSERT INTO {schema}.fair_turns (task, key, served_at)
    SELECT DISTINCT task, fairness_key, statement_timestamp()
    FROM claimed WHERE fairness_key IS NOT NULL
    ON CONFLICT (task, key) DO UPDATE SET served_at = excluded.served_at
)

-- name: flow_adopt
-- Runs of these tasks and queues written unmarked by an older durably (which marked only runs it
-- knew to be limited; every run is marked now): the controlled claim reads only runs marked
-- `flow`. Run when a worker starts; reads the queued runs of its queues only.
UPDATE {schema}.runs SET flow = true
WHERE status = 'QUEUED' AND NOT flow
  AND queue = ANY(%(queues)s::text[]) AND task = ANY(%(tasks)s::text[]);

-- name: claim_flow_lock
-- Claims under flow control take turns (the lock ends with the claim's transaction), so each
-- counts with every earlier claim already committed.
SELECT pg_advisory_xact_lock(%(namespace)s, -2);  -- -1: migrations, 0: sweeper, > 0: workers

-- name: next_due
-- Seconds until the next delayed run, durable timer or rate-limit window end of these queues
-- and tasks (runs already due but held back by a limit wait for a run to end, or for this).
SELECT EXTRACT(EPOCH FROM LEAST(
    (SELECT min(run_at) FROM {schema}.runs
     WHERE status = 'QUEUED' AND run_at > now()
       AND queue = ANY(%(queues)s::text[]) AND task = ANY(%(tasks)s::text[])),
    (SELECT min(wake_at) FROM {schema}.runs
     WHERE status = 'WAITING' AND wake_at IS NOT NULL
       AND queue = ANY(%(queues)s::text[]) AND task = ANY(%(tasks)s::text[])),
    (SELECT min(expires_at) FROM {schema}.rate_starts WHERE expires_at > now())
) - now())::float8;

-- name: finish
-- Outcomes: 'ok' completes, 'retry' re-queues after `delay` seconds, 'fail' fails for good,
-- 'release' hands back an attempt that lost the database mid-way: like a recovery, it counts
-- against max_recoveries (not the retry budget) and waits longer each time (0.25 s doubling,
-- up to 30 s), so a database that stays away does not spin the run.
-- Fenced: only the attempt this worker holds, still RUNNING, is written.
WITH outcome AS (
    SELECT o.*, o.outcome = 'retry'
                OR (o.outcome = 'release' AND r.recoveries < r.max_recoveries) AS again
    FROM ({outcomes}) o JOIN {schema}.runs r ON r.id = o.id
), written AS (
    UPDATE {schema}.runs r
    SET status = CASE WHEN o.outcome = 'ok' THEN 'COMPLETED' WHEN o.again THEN 'QUEUED'
                      ELSE 'FAILED' END,
        result = CASE WHEN o.outcome = 'ok' THEN o.result::jsonb END,
        error = o.error::jsonb,
        failures = r.failures + (o.outcome IN ('retry', 'fail'))::integer,
        recoveries = r.recoveries + (o.outcome = 'release')::integer,
        run_at = CASE WHEN o.outcome = 'retry' THEN now() + make_interval(secs => o.delay)
                      WHEN o.again THEN now() + make_interval(secs => least(30, 0.25 * 2 ^ r.recoveries))
                      ELSE r.run_at END,
        worker_id = NULL,
        lease_expires_at = NULL,
        finished_at = CASE WHEN o.again THEN NULL ELSE now() END
    FROM outcome o
    WHERE r.id = o.id AND r.attempt = o.attempt
      AND r.worker_id = %(worker_id)s AND r.status = 'RUNNING'
    RETURNING r.id, r.status, r.queue, r.parent_id
), parents AS (
    -- Parents suspended on these children wake once every child they wait for has ended.
    UPDATE {schema}.runs p
    SET status = 'QUEUED', run_at = now(), wake_at = NULL, wait_children = NULL, wait_event = NULL
    FROM written w
    WHERE p.id = w.parent_id AND w.status <> 'QUEUED' AND p.status = 'WAITING'
      AND w.id = ANY(p.wait_children)
      AND NOT EXISTS (SELECT 1 FROM {schema}.runs c
                      WHERE c.id = ANY(p.wait_children)
                        AND c.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')
                        AND c.id NOT IN (SELECT id FROM written WHERE status <> 'QUEUED'))
    RETURNING p.id, p.queue
)
SELECT id, status,
       (SELECT count(pg_notify(%(channel)s, 'done:' || d.ids))
          FROM (SELECT string_agg(e.id::text, ',') AS ids
                FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM written
                      WHERE status <> 'QUEUED') e
                GROUP BY e.n / 300) d) AS notified,
       (SELECT count(pg_notify(%(channel)s, 'q:' || q.queue))
          FROM (SELECT DISTINCT queue FROM parents) q) AS woken
FROM written;

-- name: finish_outcomes_many
-- The `outcome` part of `finish` for a batch: arrays, unnested.
SELECT * FROM unnest(
        %(ids)s::bigint[], %(attempts)s::integer[], %(outcomes)s::text[], %(results)s::text[],
        %(errors)s::text[], %(delays)s::float8[]
    ) AS t(id, attempt, outcome, result, error, delay)

-- name: finish_outcomes_one
-- The `outcome` part of `finish` for one outcome, the common case when runs end one at a time:
-- scalar parameters, so its plan is cached and finds the run by primary key.
SELECT %(id)s::bigint AS id, %(attempt)s::integer AS attempt, %(outcome)s::text AS outcome,
           %(result)s::text AS result, %(error)s::text AS error, %(delay)s::float8 AS delay

-- name: worker_register
-- Also when the worker reconnects: its row then points at the lock it holds now, and it is
-- alive again even if a sweeper marked it dead meanwhile.
INSERT INTO {schema}.workers (id, lock_id, hostname, pid, queues, tasks, slots)
VALUES (%(worker_id)s, %(lock_id)s, %(hostname)s, %(pid)s, %(queues)s, %(tasks)s, %(slots)s)
ON CONFLICT (id) DO UPDATE
SET lock_id = EXCLUDED.lock_id, heartbeat_at = now(), stopped_at = NULL;

-- name: worker_next_lock_id
SELECT nextval('{schema}.worker_lock_ids')::integer;

-- name: worker_lock
SELECT pg_advisory_lock(%(namespace)s, %(lock_id)s);

-- name: worker_stopped
UPDATE {schema}.workers SET stopped_at = now() WHERE id = %(worker_id)s;

-- name: heartbeat
-- Marks the worker alive, extends the leases of the runs it is executing (or has yet to record)
-- and returns those it still holds; a run missing from the answer was taken away (recovered,
-- cancelled) and its execution must be abandoned. Runs it no longer works on are left to expire.
-- It never waits for a row lock, which user code may hold for as long as it likes (the run
-- of a ctx.transaction, see log_hold): a run whose row is locked keeps its lease as it is this
-- time, and is reported held all the same, from the plain read `mine`, which waits for nothing.
-- A ctx.transaction renews its run's lease itself before it commits (log_hold_renew); the
-- sweeper skips locked rows as well, so the run is not recovered meanwhile.
WITH beat AS (
    UPDATE {schema}.workers SET heartbeat_at = now(), stopped_at = NULL WHERE id = %(worker_id)s
), mine AS (
    SELECT id, attempt FROM {schema}.runs
    WHERE worker_id = %(worker_id)s AND status = 'RUNNING' AND id = ANY(%(ids)s::bigint[])
), free AS (
    SELECT r.id FROM {schema}.runs r JOIN mine USING (id)
    WHERE r.worker_id = %(worker_id)s AND r.status = 'RUNNING'
    FOR NO KEY UPDATE OF r SKIP LOCKED
), extended AS (
    UPDATE {schema}.runs r SET lease_expires_at = now() + make_interval(secs => %(lease)s)
    FROM free WHERE r.id = free.id
)
SELECT id, attempt FROM mine;

-- name: release
-- Graceful shutdown: hand unfinished runs back at once, without counting a failure or recovery.
WITH released AS (
    UPDATE {schema}.runs
    SET status = 'QUEUED', worker_id = NULL, lease_expires_at = NULL, run_at = now()
    WHERE worker_id = %(worker_id)s AND status = 'RUNNING' AND id = ANY(%(ids)s::bigint[])
    RETURNING id, queue
)
SELECT id, (SELECT count(pg_notify(%(channel)s, 'q:' || q.queue))
              FROM (SELECT DISTINCT queue FROM released) q) AS notified
FROM released;

-- name: sweep_lock
SELECT pg_try_advisory_xact_lock(%(namespace)s, 0);

-- name: sweep_dead_workers
-- A worker is dead when its heartbeat is stale or when its session no longer holds its lock.
UPDATE {schema}.workers w SET stopped_at = now()
WHERE stopped_at IS NULL
  AND (heartbeat_at < now() - make_interval(secs => %(dead_after)s)
       OR NOT EXISTS (
           SELECT 1 FROM pg_locks l
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND l.classid = %(namespace)s::oid AND l.objid = w.lock_id::oid))
RETURNING id;

-- name: sweep_orphans
-- Runs whose lease expired or whose worker is gone go back to the queue with a new attempt
-- (the claim bumps it), up to max_recoveries; recovery does not consume the retry budget.
-- A worker is gone when it is marked stopped and its session no longer holds its lock (killed,
-- disconnected). One marked stopped for a stale heartbeat but still holding its lock is alive
-- and connected, only slow (its event loop blocked by a task, the process paused): its runs are
-- recovered when their leases expire, never before, so no run executes twice while its lease is
-- valid. At most `limit` runs per statement: the sweeper repeats it while batches come back full.
WITH live_locks AS MATERIALIZED (
    SELECT l.objid FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = %(namespace)s::oid
), orphan AS (
    SELECT r.id FROM {schema}.runs r
    WHERE r.status = 'RUNNING'
      AND (r.lease_expires_at < now()
           OR NOT EXISTS (SELECT 1 FROM {schema}.workers w
                          WHERE w.id = r.worker_id
                            AND (w.stopped_at IS NULL
                                 OR w.lock_id::oid IN (SELECT objid FROM live_locks))))
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), recovered AS (
    UPDATE {schema}.runs r
    SET status = CASE WHEN r.recoveries < r.max_recoveries THEN 'QUEUED' ELSE 'FAILED' END,
        recoveries = r.recoveries + 1,
        error = CASE WHEN r.recoveries < r.max_recoveries THEN r.error ELSE jsonb_build_object(
            'type', 'WorkerLost',
            'message', format('the run lost its worker %%s times (max_recoveries); it may be killing its worker', r.recoveries + 1),
            'traceback', NULL) END,
        finished_at = CASE WHEN r.recoveries < r.max_recoveries THEN NULL ELSE now() END,
        worker_id = NULL,
        lease_expires_at = NULL,
        run_at = now()
    FROM orphan o WHERE r.id = o.id
    RETURNING r.id, r.status, r.queue
)
SELECT id, status,
       (SELECT count(pg_notify(%(channel)s, 'q:' || q.queue))
          FROM (SELECT DISTINCT queue FROM recovered WHERE status = 'QUEUED') q),
       (SELECT count(pg_notify(%(channel)s, 'done:' || d.ids))
          FROM (SELECT string_agg(f.id::text, ',') AS ids
                FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM recovered
                      WHERE status = 'FAILED') f
                GROUP BY f.n / 300) d)
FROM recovered;

-- name: sweep_rate_starts
-- Rate-limit starts whose window ended no longer count; `limit` rows at a time. Rows are never
-- updated, so their ctid is stable until deleted.
DELETE FROM {schema}.rate_starts
WHERE ctid = ANY(ARRAY(SELECT ctid FROM {schema}.rate_starts WHERE expires_at <= now()
                       LIMIT %(limit)s));

-- name: sweep_fair_turns
-- Fairness keys not served for a day are forgotten (one served again is simply served first
-- once); `limit` rows at a time.
DELETE FROM {schema}.fair_turns t
USING (SELECT task, key FROM {schema}.fair_turns
       WHERE served_at < now() - interval '1 day' LIMIT %(limit)s) old
WHERE t.task = old.task AND t.key = old.key AND t.served_at < now() - interval '1 day';

-- name: sweep_schedule_timeouts
-- Queued runs past their schedule deadline fail; at most `limit` per statement, and rows a
-- claim holds are skipped (the claim takes them or the next sweep fails them).
WITH due AS (
    SELECT id FROM {schema}.runs
    WHERE status = 'QUEUED' AND schedule_deadline < now()
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), expired AS (
    UPDATE {schema}.runs r
    SET status = 'FAILED', finished_at = now(),
        error = jsonb_build_object(
            'type', 'ScheduleTimeout',
            'message', 'no worker picked the run up before its schedule timeout',
            'traceback', NULL)
    FROM due WHERE r.id = due.id
    RETURNING r.id
)
SELECT id, (SELECT count(pg_notify(%(channel)s, 'done:' || d.ids))
              FROM (SELECT string_agg(e.id::text, ',') AS ids
                    FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM expired) e
                    GROUP BY e.n / 300) d)
FROM expired;

-- name: deadline_fail
-- Fails runs past their run deadline (docs/durable-tasks.md) for good, cancels their unfinished
-- descendants (as cancelling the run would), and wakes the parents waiting on them. The `due`
-- placeholder picks the runs: `deadline_due` for the sweeper (queued and suspended runs, read
-- from the runs_deadline index, so the cost follows the runs due, at most 1000 a sweep), or
-- `deadline_held` for the worker whose attempt reached the deadline (fenced). Ended runs are
-- notified in 'done:' lists of at most 200 ids, well under pg_notify's 8000-byte payload.
WITH RECURSIVE due AS (
    {due}
), failed AS (
    UPDATE {schema}.runs r
    SET status = 'FAILED', finished_at = now(), worker_id = NULL, lease_expires_at = NULL,
        wake_at = NULL, wait_children = NULL, wait_event = NULL,
        error = jsonb_build_object(
            'type', 'DeadlineExceeded',
            'message', format('the run did not finish within its execution deadline of %%s s from its first start (it was %%s); retry it for a fresh deadline, or give it a longer execution_deadline', r.execution_deadline, r.status),
            'traceback', NULL)
    FROM due WHERE r.id = due.id
    RETURNING r.id, r.parent_id
), tree AS (
    SELECT c.id, c.status FROM {schema}.runs c JOIN failed f ON c.parent_id = f.id
    UNION ALL
    SELECT c.id, c.status FROM {schema}.runs c JOIN tree t ON c.parent_id = t.id
), cancelled AS (
    UPDATE {schema}.runs c
    SET status = 'CANCELLED', finished_at = now(), lease_expires_at = NULL
    FROM tree
    WHERE c.id = tree.id AND c.status IN ('QUEUED', 'RUNNING', 'WAITING')
      AND c.id NOT IN (SELECT id FROM due)
    RETURNING c.id, tree.status AS was
), parents AS (
    UPDATE {schema}.runs p
    SET status = 'QUEUED', run_at = now(), wake_at = NULL, wait_children = NULL, wait_event = NULL
    FROM failed f
    WHERE p.id = f.parent_id AND p.status = 'WAITING' AND f.id = ANY(p.wait_children)
      AND p.id NOT IN (SELECT id FROM due) AND p.id NOT IN (SELECT id FROM tree)
      AND NOT EXISTS (SELECT 1 FROM {schema}.runs c
                      WHERE c.id = ANY(p.wait_children)
                        AND c.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')
                        AND c.id NOT IN (SELECT id FROM failed))
    RETURNING p.id, p.queue
), ended AS (
    SELECT id, (row_number() OVER (ORDER BY id) - 1) / 200 AS chunk
    FROM (SELECT id FROM failed UNION ALL SELECT id FROM cancelled) e
)
SELECT (SELECT count(*) FROM failed),
       (SELECT count(pg_notify(%(channel)s, 'cancel:' || id)) FROM cancelled
        WHERE was = 'RUNNING'),
       (SELECT count(pg_notify(%(channel)s, 'done:' || ids))
          FROM (SELECT string_agg(id::text, ',') AS ids FROM ended GROUP BY chunk) d),
       (SELECT count(pg_notify(%(channel)s, 'q:' || q.queue))
          FROM (SELECT DISTINCT queue FROM parents) q);

-- name: deadline_due
-- The `due` part of `deadline_fail` for the sweeper. A RUNNING run is left to its worker, whose
-- attempt times out at the deadline; should the worker die, recovery queues the run, and the
-- same sweep then finds it here.
SELECT id FROM {schema}.runs
WHERE deadline_at < now() AND deadline_at IS NOT NULL AND status IN ('QUEUED', 'WAITING')
ORDER BY deadline_at
LIMIT 1000
FOR UPDATE SKIP LOCKED

-- name: deadline_held
-- The `due` part of `deadline_fail` for a worker whose attempt reached the run's deadline:
-- only the attempt it still holds.
SELECT id FROM {schema}.runs
WHERE id = %(run_id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s
  AND status = 'RUNNING'
FOR UPDATE

-- name: cancel
-- Cancels a run and every unfinished run below it (its children, theirs, ...).
WITH RECURSIVE tree AS (
    SELECT id FROM {schema}.runs WHERE id = %(id)s
    UNION ALL
    SELECT c.id FROM {schema}.runs c JOIN tree t ON c.parent_id = t.id
), cancelled AS (
    UPDATE {schema}.runs
    SET status = 'CANCELLED', finished_at = now(), lease_expires_at = NULL
    WHERE id IN (SELECT id FROM tree) AND status IN ('QUEUED', 'RUNNING', 'WAITING')
    RETURNING id
)
SELECT id, pg_notify(%(channel)s, 'cancel:' || id), pg_notify(%(channel)s, 'done:' || id)
FROM cancelled
ORDER BY id = %(id)s DESC;

-- name: run_get
SELECT id, task, queue, status, priority, args, result, error, attempt, failures, max_retries,
       recoveries, idempotency_key, run_at, worker_id, created_at, started_at, finished_at
FROM {schema}.runs WHERE id = %(id)s;

-- name: run_status
SELECT status, result, error, task FROM {schema}.runs WHERE id = %(id)s;

-- name: runs_list
SELECT id, task, queue, status, priority, args, result, error, attempt, failures, max_retries,
       recoveries, idempotency_key, run_at, worker_id, created_at, started_at, finished_at
FROM {schema}.runs
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: listen
LISTEN {channel};

-- name: log_load
-- The whole event log of a run in one query, with the state of each child it spawned and, for
-- timers, the seconds left (database clock).
SELECT l.seq, l.kind, l.name, l.key, l.input, l.result, l.error, l.child_id, l.event_id,
       EXTRACT(EPOCH FROM l.wake_at - now())::float8, l.done, c.status, c.result, c.error
FROM {schema}.event_log l
LEFT JOIN {schema}.runs c ON c.id = l.child_id
WHERE l.run_id = %(run_id)s
ORDER BY l.seq;

-- name: log_append
-- Appends one entry, fenced: the run row is locked (FOR SHARE) only if this worker still holds
-- this attempt, so a recovery cannot slip in between the check and the insert.
WITH held AS (
    SELECT id FROM {schema}.runs
    WHERE id = %(run_id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s
      AND status = 'RUNNING'
    FOR SHARE
)
INSERT INTO {schema}.event_log (run_id, seq, kind, name, key, input, result, error, wake_at, done,
                                attempt, completed_at)
SELECT id, %(seq)s, %(kind)s, %(name)s, %(key)s, %(input)s::jsonb,
       COALESCE(%(result)s::jsonb,
                CASE WHEN %(kind)s = 'now' THEN to_jsonb(EXTRACT(EPOCH FROM now())::float8) END),
       %(error)s::jsonb,
       now() + make_interval(secs => %(sleep)s),
       %(done)s, %(attempt)s, CASE WHEN %(done)s THEN now() END
FROM held
RETURNING result, EXTRACT(EPOCH FROM wake_at - now())::float8;

-- name: log_spawn
-- Records a child entry and creates the child run in the same statement, fenced. A child whose
-- idempotency key names a run that already exists is that run, as with enqueue: the entry
-- points at it (one run per entry, always), and it stays another run's child, or none's.
-- Returns (child id or NULL, run held?): held without a child is a key inserted concurrently,
-- not visible to this statement yet.
WITH held AS (
    SELECT id FROM {schema}.runs
    WHERE id = %(run_id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s
      AND status = 'RUNNING'
    FOR SHARE
), child AS (
    INSERT INTO {schema}.runs (task, queue, priority, args, max_retries, max_recoveries,
                               run_at, schedule_deadline, idempotency_key, durable, parent_id,
                               parent_seq, trace_context, concurrency_key, fairness_key, flow,
                               execution_deadline)
    SELECT %(task)s, %(queue)s, %(priority)s, %(args)s::jsonb, %(max_retries)s,
           %(max_recoveries)s, now() + make_interval(secs => %(delay)s::float8),
           now() + make_interval(secs => %(delay)s::float8 + %(schedule_timeout)s::float8),
           %(idempotency_key)s, %(durable)s, held.id, %(seq)s, %(trace_context)s::jsonb,
           %(concurrency_key)s, %(fairness_key)s, %(flow)s, %(execution_deadline)s::float8
    FROM held
    ON CONFLICT (task, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, queue
), chosen AS (
    SELECT id FROM child
    UNION ALL
    SELECT r.id FROM {schema}.runs r, held
    WHERE r.task = %(task)s AND r.idempotency_key = %(idempotency_key)s
      AND NOT EXISTS (SELECT 1 FROM child)
), entry AS (
    INSERT INTO {schema}.event_log (run_id, seq, kind, name, key, input, child_id, done, attempt)
    SELECT %(run_id)s, %(seq)s, 'child', %(task)s, %(key)s, %(args)s::jsonb, chosen.id, false,
           %(attempt)s
    FROM chosen
)
SELECT (SELECT id FROM chosen), EXISTS (SELECT 1 FROM held),
       (SELECT count(pg_notify(%(channel)s, 'q:' || queue)) FROM child);

-- name: log_complete
-- Marks a pending entry (child, sleep, event wait) done with its outcome, fenced.
WITH held AS (
    SELECT id FROM {schema}.runs
    WHERE id = %(run_id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s
      AND status = 'RUNNING'
    FOR SHARE
)
UPDATE {schema}.event_log l
SET done = true, result = %(result)s::jsonb, error = %(error)s::jsonb, completed_at = now()
FROM held
WHERE l.run_id = held.id AND l.seq = %(seq)s AND NOT l.done
RETURNING l.seq;

-- name: log_take_event
-- The first event with this key pushed since the run was created and not taken by an earlier
-- wait of this run (in push order: transaction time, then id), recorded in the waiting entry in
-- the same statement, fenced.
WITH held AS (
    SELECT id, created_at FROM {schema}.runs
    WHERE id = %(run_id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s
      AND status = 'RUNNING'
    FOR SHARE
), ev AS (
    -- In push order (events_key_created): the scan starts at the run's creation, so the key's
    -- older history is never read, and stops at the first event not taken yet.
    -- The creation time is a scalar subquery, not a join, so it bounds the index scan itself.
    SELECT e.id, e.payload FROM {schema}.events e
    WHERE e.key = %(key)s AND e.created_at >= (SELECT created_at FROM held)
      AND NOT EXISTS (SELECT 1 FROM {schema}.event_log l
                      WHERE l.run_id = %(run_id)s AND l.event_id = e.id)
    ORDER BY e.created_at, e.id
    LIMIT 1
)
UPDATE {schema}.event_log l
SET done = true, event_id = ev.id, result = ev.payload, completed_at = now()
FROM held, ev
WHERE l.run_id = held.id AND l.seq = %(seq)s AND NOT l.done
RETURNING ev.id, ev.payload;

-- name: log_hold
-- Inside ctx.transaction: lock the run row for the rest of the caller's transaction, fenced, so
-- no recovery, cancellation or outcome can slip in while user code runs. FOR SHARE, like the
-- fence of log_append: the run's own appends (of operations run beside the transaction, or
-- inside its function) do not wait for it. Two transactions of one run would each hold it and
-- wait for the other to upgrade it in log_hold_renew, so a run's transactions take turns
-- (DurableRun.transaction).
SELECT id FROM {schema}.runs
WHERE id = %(run_id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s
  AND status = 'RUNNING'
FOR SHARE;

-- name: log_hold_renew
-- The last statement of a ctx.transaction: the heartbeat skipped the run while user code held
-- its row, so its lease may have run out; renewed before the commit releases the row, so no
-- sweep can take the run before the next heartbeat. clock_timestamp(): now() is when the
-- transaction began, possibly long ago.
UPDATE {schema}.runs SET lease_expires_at = clock_timestamp() + make_interval(secs => %(lease)s)
WHERE id = %(run_id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s
  AND status = 'RUNNING'
RETURNING id;

-- name: children_status
SELECT id, status, result, error FROM {schema}.runs WHERE id = ANY(%(ids)s::bigint[]);

-- name: suspend
-- Releases the run's slot: WAITING until a child ends, the timer fires or the event arrives.
-- If what it waits for already happened (committed before this statement), it is QUEUED at once.
UPDATE {schema}.runs r
SET status = CASE WHEN ready.yes THEN 'QUEUED' ELSE 'WAITING' END,
    worker_id = NULL, lease_expires_at = NULL, run_at = now(),
    wake_at = now() + make_interval(secs => %(wake_in)s),
    wait_children = %(children)s::bigint[],
    wait_event = %(event)s
FROM (SELECT
        COALESCE(%(wake_in)s <= 0, false)
        -- Every child waited for ended (as `finish` wakes a parent): one ended among many
        -- would only re-execute the parent to suspend it again.
        OR (COALESCE(cardinality(%(children)s::bigint[]) > 0, false)
            AND NOT EXISTS (SELECT 1 FROM {schema}.runs c
                            WHERE c.id = ANY(%(children)s::bigint[])
                              AND c.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')))
        -- The first event not taken yet, read from the run's creation on (see log_take_event);
        -- in a subquery with its own LIMIT so EXISTS keeps the ordered index scan.
        OR EXISTS (SELECT 1 FROM (
                       SELECT e.id FROM {schema}.events e
                       WHERE e.key = %(event)s
                         AND e.created_at >= (SELECT created_at FROM {schema}.runs
                                              WHERE id = %(run_id)s)
                         AND NOT EXISTS (SELECT 1 FROM {schema}.event_log l
                                         WHERE l.run_id = %(run_id)s AND l.event_id = e.id)
                       ORDER BY e.created_at, e.id
                       LIMIT 1) first_event) AS yes
     ) ready
WHERE r.id = %(run_id)s AND r.attempt = %(attempt)s AND r.worker_id = %(worker_id)s
  AND r.status = 'RUNNING'
RETURNING r.status;

-- name: sweep_wake_ready
-- Backstop for wake-ups that raced with a suspension: WAITING runs whose children all ended
-- (as `finish` wakes them) or whose event arrived go back to the queue, at most `limit` per statement. (Timers are woken by the
-- claim itself.) Events are read from the run's creation on (events_key_created), so a key's
-- history costs nothing; the inner LIMIT keeps that ordered index scan (under a bare EXISTS the
-- planner may pick a sequential scan of all events, thinking the first row comes early).
WITH ready AS (
    SELECT r.id FROM {schema}.runs r
    WHERE r.status = 'WAITING'
      AND (r.wait_children IS NOT NULL OR r.wait_event IS NOT NULL)
      AND ((cardinality(r.wait_children) > 0
            AND NOT EXISTS (SELECT 1 FROM {schema}.runs c WHERE c.id = ANY(r.wait_children)
                            AND c.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')))
           OR (r.wait_event IS NOT NULL AND EXISTS (SELECT 1 FROM (
               SELECT e.id FROM {schema}.events e
               WHERE e.key = r.wait_event AND e.created_at >= r.created_at
                 AND NOT EXISTS (SELECT 1 FROM {schema}.event_log l
                                 WHERE l.run_id = r.id AND l.event_id = e.id)
               ORDER BY e.created_at, e.id
               LIMIT 1) first_event)))
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), woken AS (
    UPDATE {schema}.runs r
    SET status = 'QUEUED', run_at = now(), wake_at = NULL, wait_children = NULL, wait_event = NULL
    FROM ready WHERE r.id = ready.id
    RETURNING r.id, r.queue
)
SELECT id, (SELECT count(pg_notify(%(channel)s, 'q:' || q.queue))
              FROM (SELECT DISTINCT queue FROM woken) q)
FROM woken;

-- name: push_event
WITH ev AS (
    INSERT INTO {schema}.events (key, payload) VALUES (%(key)s, %(payload)s::jsonb) RETURNING id
), woken AS (
    UPDATE {schema}.runs
    SET status = 'QUEUED', run_at = now(), wake_at = NULL, wait_children = NULL, wait_event = NULL
    WHERE status = 'WAITING' AND wait_event = %(key)s
    RETURNING id, queue
)
SELECT (SELECT id FROM ev),
       (SELECT count(pg_notify(%(channel)s, 'q:' || q.queue))
          FROM (SELECT DISTINCT queue FROM woken) q),
       pg_notify(%(channel)s, 'ev:' || %(key)s);

-- name: retry
-- A failed or cancelled run back to the queue, its log kept: it resumes after its last
-- checkpoint. So does every run below it that a cancel or failure took down while it was still
-- awaited: the children whose log entry is not done and that failed or were cancelled, and,
-- recursively, theirs (a cancel takes a whole tree down; a retry brings the whole tree back).
-- UNION, not UNION ALL: a run reached twice is kept once, so the walk ends on any log shape.
-- What the runs were waiting for, their worker and lease and their schedule deadline (they were
-- picked up once already) are cleared: a re-queued run starts clean.
WITH RECURSIVE tree AS (
    SELECT id FROM {schema}.runs WHERE id = %(id)s AND status IN ('FAILED', 'CANCELLED')
    UNION
    SELECT c.id
    FROM tree t
    -- One index probe of each run's log. The fence (OFFSET 0) keeps the planner from joining
    -- the whole log against a work table it guesses is tiny: a tree of 10,000 runs would then
    -- cost 10,000 scans of the log.
    CROSS JOIN LATERAL (
        SELECT l.child_id FROM {schema}.event_log l
        WHERE l.run_id = t.id AND l.kind = 'child' AND NOT l.done
        OFFSET 0
    ) l
    JOIN {schema}.runs c ON c.id = l.child_id AND c.status IN ('FAILED', 'CANCELLED')
), requeued AS (
    UPDATE {schema}.runs r
    SET status = 'QUEUED', run_at = now(), failures = 0, recoveries = 0, error = NULL,
        result = NULL, finished_at = NULL, worker_id = NULL, lease_expires_at = NULL,
        wake_at = NULL, wait_children = NULL, wait_event = NULL, schedule_deadline = NULL,
        deadline_at = NULL  -- started again by hand: a fresh deadline from the next start
    FROM tree
    WHERE r.id = tree.id AND r.status IN ('FAILED', 'CANCELLED')
    RETURNING r.id, r.queue
)
SELECT id, (SELECT count(pg_notify(%(channel)s, 'q:' || q.queue))
              FROM (SELECT DISTINCT queue FROM requeued) q)
FROM requeued
WHERE id = %(id)s;

-- name: replay
-- Sets the log aside (archived under the run's current epoch) and runs the run from scratch.
WITH target AS (
    SELECT id, log_epoch FROM {schema}.runs
    WHERE id = %(id)s AND status IN ('COMPLETED', 'FAILED', 'CANCELLED')
    FOR UPDATE
), archived AS (
    INSERT INTO {schema}.event_log_archive
    SELECT l.*, target.log_epoch, now() FROM {schema}.event_log l, target
    WHERE l.run_id = target.id
), cleared AS (
    DELETE FROM {schema}.event_log WHERE run_id IN (SELECT id FROM target)
), queued AS (
    UPDATE {schema}.runs r
    SET status = 'QUEUED', run_at = now(), log_epoch = r.log_epoch + 1, failures = 0,
        recoveries = 0, error = NULL, result = NULL, finished_at = NULL, worker_id = NULL,
        deadline_at = NULL
    FROM target WHERE r.id = target.id
    RETURNING r.id, r.queue
)
SELECT id, pg_notify(%(channel)s, 'q:' || queue) FROM queued;

-- name: fork
-- A new run of the same task and input whose log starts with the first N entries of the source.
-- The fork owns its pending work: a child the source spawned but had not seen end is not shared
-- (cancelling or retrying the source would reach into the fork), so its entry is left out and
-- the fork spawns a child of its own at that sequence number when it gets there. A child that
-- has already completed is final: its result is copied, recorded as done, and not run again.
-- Pending sleeps and event waits are copied as they are (same deadline as the source's).
WITH src AS (
    SELECT * FROM {schema}.runs WHERE id = %(id)s AND durable
), created AS (
    INSERT INTO {schema}.runs (task, queue, priority, args, max_retries, max_recoveries, durable,
                               concurrency_key, fairness_key, flow, execution_deadline)
    SELECT task, queue, priority, args, max_retries, max_recoveries, durable, concurrency_key,
           fairness_key, flow, execution_deadline
    FROM src
    RETURNING id, queue
), copied AS (
    INSERT INTO {schema}.event_log (run_id, seq, kind, name, key, input, result, error, child_id,
                                    event_id, wake_at, done, attempt, created_at, completed_at)
    SELECT created.id, l.seq, l.kind, l.name, l.key, l.input,
           CASE WHEN c.id IS NULL THEN l.result ELSE c.result END, l.error, l.child_id,
           l.event_id, l.wake_at, l.done OR c.id IS NOT NULL, 0, l.created_at,
           COALESCE(l.completed_at, c.finished_at)
    FROM {schema}.event_log l
    LEFT JOIN {schema}.runs c ON c.id = l.child_id AND l.kind = 'child' AND NOT l.done
    CROSS JOIN created
    WHERE l.run_id = %(id)s AND l.seq < %(at_event)s
      AND (l.kind <> 'child' OR l.done OR c.status = 'COMPLETED')
)
SELECT id, pg_notify(%(channel)s, 'q:' || queue) FROM created;

-- name: log_list
SELECT seq, kind, name, key, input, result, error, child_id, event_id, wake_at, done, attempt,
       created_at, completed_at
FROM {schema}.event_log WHERE run_id = %(run_id)s ORDER BY seq;
