-- Retention and purge (docs/retention.md): finished workflows removed whole, with their logs;
-- events no run can take any more; stopped workers. Every statement handles a bounded batch in
-- its own transaction. `{schema}` is replaced by the quoted schema name; values are always
-- bound parameters.

-- name: purge_trees
-- Removes the picked workflows (a root run and every run below it) with their event logs and
-- archived logs, when every run of the tree may go: ended (COMPLETED, FAILED, CANCELLED) and,
-- by retention, past its own retention (`by_retention`), or else finished more than `older_than` seconds ago.
-- The `pick` placeholder chooses the roots (`purge_pick_expired` for the sweeper,
-- `purge_pick_older` for `app.purge`), locked. Every run of a picked tree is then locked and
-- read as now committed: a run retried, replayed or still running keeps its whole tree, and
-- a run another transaction holds keeps it until a later batch. A root kept by retention
-- because of a run below it is given the tree's retention (the latest of its runs', or none
-- when one of them keeps everything; a minute more while one has not ended), so the sweeper
-- does not pick it again before then. Rows are reached through `= ANY(ARRAY(...))`: an index
-- probe per id, whatever the planner guesses of the tree's size (a hash join would read a
-- whole history table).
WITH RECURSIVE picked AS (
    {pick}
), tree AS (
    SELECT id AS root, id FROM picked
    UNION ALL
    -- One index probe per run of the tree (OFFSET 0 keeps the probe: joined whole, the planner
    -- may merge-join against every child in the table).
    SELECT t.root, c.id
    FROM tree t CROSS JOIN LATERAL (
        SELECT id FROM {schema}.runs WHERE parent_id = t.id OFFSET 0
    ) c
), locked AS (
    SELECT r.id, r.finished_at, r.retention,
           r.status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND r.finished_at IS NOT NULL
           AND CASE WHEN %(by_retention)s
                    THEN r.retention IS NOT NULL
                         AND {schema}.purge_due(r.finished_at, r.retention) < now()
                    ELSE r.finished_at < now() - make_interval(secs => %(older_than)s) END AS removable
    FROM {schema}.runs r
    WHERE r.id = ANY(ARRAY(SELECT id FROM tree))
    FOR UPDATE SKIP LOCKED
), verdict AS (
    SELECT t.root,
           bool_and(coalesce(l.removable, false)) AS removable,
           bool_or(l.finished_at IS NOT NULL AND l.retention IS NULL) AS kept_for_good,
           greatest(max({schema}.purge_due(l.finished_at, l.retention)),
                    now() + interval '1 minute') AS next_due
    FROM tree t LEFT JOIN locked l ON l.id = t.id
    GROUP BY t.root
), doomed AS (
    SELECT t.id FROM tree t JOIN verdict v ON v.root = t.root WHERE v.removable
), gone_log AS (
    DELETE FROM {schema}.event_log WHERE run_id = ANY(ARRAY(SELECT id FROM doomed))
), gone_archive AS (
    DELETE FROM {schema}.event_log_archive WHERE run_id = ANY(ARRAY(SELECT id FROM doomed))
), postponed AS (
    UPDATE {schema}.runs r
    SET retention = CASE WHEN v.kept_for_good THEN NULL
                         ELSE extract(epoch FROM v.next_due - r.finished_at)::float8 END
    FROM verdict v
    WHERE %(by_retention)s AND r.id = v.root AND NOT v.removable
      AND r.id IN (SELECT id FROM locked)
    RETURNING r.id
), removed AS (
    DELETE FROM {schema}.runs WHERE id = ANY(ARRAY(SELECT id FROM doomed)) RETURNING id
)
-- One row per picked root, in pick order: with the runs removed and roots postponed in all.
SELECT p.id, p.finished_at, (SELECT count(*) FROM removed), (SELECT count(*) FROM postponed)
FROM picked p
ORDER BY p.finished_at, p.id;

-- name: purge_pick_expired
-- The `pick` of `purge_trees` for the sweeper: finished roots past their retention, read from
-- the runs_purge index in due order, so the cost follows the runs due, not the history kept.
SELECT id, finished_at FROM {schema}.runs
WHERE {schema}.purge_due(finished_at, retention) < now()
  AND parent_id IS NULL AND retention IS NOT NULL AND finished_at IS NOT NULL
ORDER BY {schema}.purge_due(finished_at, retention)
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: purge_pick_older
-- The `pick` of `purge_trees` for `app.purge`: finished roots that ended more than `older_than` seconds ago, of
-- the given statuses (and tasks, when given), in end order after the last batch's
-- (`after_at`, `after_id`), so a tree kept by one batch is not picked again by the next: a
-- range of the runs_finished_id index.
SELECT id, finished_at FROM {schema}.runs
WHERE finished_at IS NOT NULL AND finished_at < now() - make_interval(secs => %(older_than)s)
  AND (finished_at, id) > (%(after_at)s::timestamptz, %(after_id)s::bigint)
  AND parent_id IS NULL
  AND status = ANY(%(statuses)s::text[])
  AND (%(tasks)s::text[] IS NULL OR task = ANY(%(tasks)s::text[]))
ORDER BY finished_at, id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: purge_count
-- How many workflows (root runs) `app.purge` would consider, before it starts.
SELECT count(*) FROM {schema}.runs
WHERE finished_at IS NOT NULL AND finished_at < now() - make_interval(secs => %(older_than)s)
  AND parent_id IS NULL
  AND status = ANY(%(statuses)s::text[])
  AND (%(tasks)s::text[] IS NULL OR task = ANY(%(tasks)s::text[]));

-- name: sweep_events
-- Events older than the retention that no run can take any more: a run takes only events
-- pushed since it was created, so once every durable run older than an event has ended, no run
-- can take it. A durable run that lives longer than the retention keeps the events pushed since
-- it started until it ends. `limit` rows at a time, oldest first.
DELETE FROM {schema}.events
WHERE id IN (
    SELECT e.id FROM {schema}.events e
    WHERE e.created_at < now() - make_interval(secs => %(retention)s)
      AND e.created_at < coalesce(
          (SELECT r.created_at FROM {schema}.runs r
           WHERE r.durable AND r.finished_at IS NULL  -- not ended (runs_live_durable)
           ORDER BY r.created_at LIMIT 1),
          'infinity')
    ORDER BY e.id
    LIMIT %(limit)s);

-- name: sweep_workers
-- Workers stopped longer ago than the retention, with no run left on them; `limit` at a time.
DELETE FROM {schema}.workers w
WHERE w.id IN (
    SELECT s.id FROM {schema}.workers s
    WHERE s.stopped_at < now() - make_interval(secs => %(retention)s)
      AND NOT EXISTS (SELECT 1 FROM {schema}.runs r
                      WHERE r.worker_id = s.id AND r.status = 'RUNNING')
    ORDER BY s.stopped_at
    LIMIT %(limit)s);
