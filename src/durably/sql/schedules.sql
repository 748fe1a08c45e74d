-- Schedules (docs/scheduling.md): statements of durably/schedules.py. Every statement that
-- returns schedules returns the columns of schedule_list, in its order.

-- name: schedule_now
SELECT now();

-- name: schedule_list
SELECT name, task, cron, timezone, args, catch_up, declared, paused, next_fire_at,
       last_fired_at, last_run_id, created_at, updated_at
FROM {schema}.schedules
ORDER BY name;

-- name: schedule_get
-- One schedule.
SELECT name, task, cron, timezone, args, catch_up, declared, paused, next_fire_at,
       last_fired_at, last_run_id, created_at, updated_at
FROM {schema}.schedules
WHERE name = %(name)s;

-- name: schedule_save
-- app.schedule(): insert, or update the schedule of that name. Its next tick is kept unless the
-- cron or the time zone changed; a paused schedule stays paused. A schedule declared by
-- @app.task(cron=...) belongs to the code and is left alone (no row returned).
INSERT INTO {schema}.schedules AS s (name, task, cron, timezone, args, catch_up, next_fire_at)
VALUES (%(name)s, %(task)s, %(cron)s, %(timezone)s, %(args)s::jsonb, %(catch_up)s,
        %(next_fire_at)s)
ON CONFLICT (name) DO UPDATE SET
    task = excluded.task,
    cron = excluded.cron,
    timezone = excluded.timezone,
    args = excluded.args,
    catch_up = excluded.catch_up,
    next_fire_at = CASE
        WHEN s.paused THEN NULL
        WHEN (s.cron, s.timezone) IS DISTINCT FROM (excluded.cron, excluded.timezone)
            THEN excluded.next_fire_at
        ELSE s.next_fire_at END,
    updated_at = now()
WHERE NOT s.declared
RETURNING name, task, cron, timezone, args, catch_up, declared, paused, next_fire_at,
          last_fired_at, last_run_id, created_at, updated_at;

-- name: schedule_declare
-- A starting worker's @app.task(cron=...): the same upsert, but it owns the row, and writes
-- nothing when nothing changed (so workers starting together leave next_fire_at alone).
INSERT INTO {schema}.schedules AS s (name, task, cron, timezone, args, catch_up, declared,
                                     next_fire_at)
VALUES (%(name)s, %(task)s, %(cron)s, %(timezone)s, %(args)s::jsonb, %(catch_up)s, true,
        %(next_fire_at)s)
ON CONFLICT (name) DO UPDATE SET
    task = excluded.task,
    cron = excluded.cron,
    timezone = excluded.timezone,
    args = excluded.args,
    catch_up = excluded.catch_up,
    declared = true,
    next_fire_at = CASE
        WHEN s.paused THEN NULL
        WHEN (s.cron, s.timezone) IS DISTINCT FROM (excluded.cron, excluded.timezone)
            THEN excluded.next_fire_at
        ELSE s.next_fire_at END,
    updated_at = now()
WHERE (s.task, s.cron, s.timezone, s.args, s.catch_up, s.declared)
      IS DISTINCT FROM (excluded.task, excluded.cron, excluded.timezone, excluded.args,
                        excluded.catch_up, true)
RETURNING name;

-- name: schedule_forget
-- A starting worker's tasks that no longer declare a cron: their declared schedules go.
DELETE FROM {schema}.schedules
WHERE declared AND task = ANY(%(tasks)s)
RETURNING name;

-- name: schedule_due
-- The earliest unpaused schedules of a worker's tasks: the due ones (wait_s <= 0) to fire, and
-- how long until the next one is due. A due schedule's ticks were missed when its oldest one
-- came due before any live worker of its task had started (no worker ran then), or is more than
-- %(missed_after)s seconds overdue (workers ran but could not fire it: the database was away).
SELECT s.name, s.task, s.cron, s.timezone, s.args, s.catch_up, s.next_fire_at, now() AS now,
       extract(epoch FROM s.next_fire_at - now())::float8 AS wait_s,
       CASE WHEN s.next_fire_at > now() THEN false  -- not due: no need to look at workers
            ELSE s.next_fire_at < now() - make_interval(secs => %(missed_after)s)
                 OR NOT EXISTS (
                     SELECT 1 FROM {schema}.workers w
                     WHERE w.stopped_at IS NULL AND w.started_at <= s.next_fire_at
                       AND s.task = ANY(w.tasks))
       END AS missed
FROM {schema}.schedules s
WHERE NOT s.paused AND s.task = ANY(%(tasks)s)
ORDER BY s.next_fire_at
LIMIT %(limit)s;

-- name: schedule_advance
-- Firing, first statement: only the worker that still sees the tick it read moves the schedule
-- on (others wait for its row lock, then match nothing), so one worker inserts the runs.
UPDATE {schema}.schedules
SET next_fire_at = %(next_fire_at)s,
    last_fired_at = coalesce(%(fired_at)s, last_fired_at)
WHERE name = %(name)s AND NOT paused AND next_fire_at = %(expected)s
RETURNING name;

-- name: schedule_fired
-- Firing, last statement: the run of the latest tick enqueued.
UPDATE {schema}.schedules SET last_run_id = %(run_id)s WHERE name = %(name)s;

-- name: schedule_pause
UPDATE {schema}.schedules
SET paused = true, next_fire_at = NULL, updated_at = now()
WHERE name = %(name)s
RETURNING name, task, cron, timezone, args, catch_up, declared, paused, next_fire_at,
          last_fired_at, last_run_id, created_at, updated_at;

-- name: schedule_resume
-- From the next tick after now: the ticks of the paused time are not caught up.
UPDATE {schema}.schedules
SET paused = false, next_fire_at = %(next_fire_at)s, updated_at = now()
WHERE name = %(name)s AND paused
RETURNING name, task, cron, timezone, args, catch_up, declared, paused, next_fire_at,
          last_fired_at, last_run_id, created_at, updated_at;

-- name: schedule_delete
DELETE FROM {schema}.schedules WHERE name = %(name)s RETURNING name;
