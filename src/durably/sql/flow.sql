-- Flow control: the claim that keeps queue limits, rates and fair turns.
-- `{schema}` is replaced by the quoted schema name; values are always bound parameters.

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
