-- Indexes for the operator views (dashboard and CLI), chosen for what they cost the work itself.
-- Every full index on runs gets a new entry three times per run (the insert, the claim and the
-- outcome: a status change is never a HOT update), and three more cost the queue about 20% of
-- its drain and batch-enqueue throughput. So the views lean on the primary key (newest first,
-- filtered as it goes: statuses and queues are few, so a page is found quickly) and on partial
-- indexes that only the rare rows enter. IF NOT EXISTS lets a DBA build them first with
-- CREATE INDEX CONCURRENTLY on a busy table.
-- Runs of one task, newest first; also the loose scan that lists task names.
CREATE INDEX IF NOT EXISTS runs_task_id ON {schema}.runs (task, id);
-- Runs that failed or were cancelled, newest first: the ones operators look for, and rare, so
-- runs that succeed never enter this index.
CREATE INDEX IF NOT EXISTS runs_failed_id ON {schema}.runs (id)
    WHERE status IN ('FAILED', 'CANCELLED');
-- Queued runs of a queue by due time: the oldest waiting run at once, and the list of queues
-- with work. Only the insert enters it (the claim makes the row leave the predicate).
CREATE INDEX IF NOT EXISTS runs_queued_due ON {schema}.runs (queue, run_at)
    WHERE status = 'QUEUED';
-- Runs that ended in a time window: throughput per queue and the per-minute chart. One entry
-- per run, at its end.
CREATE INDEX IF NOT EXISTS runs_finished ON {schema}.runs (finished_at)
    WHERE finished_at IS NOT NULL;
-- A run's children in id order (paged); also serves every lookup by parent_id, so it replaces
-- runs_parent.
CREATE INDEX IF NOT EXISTS runs_parent_id ON {schema}.runs (parent_id, id)
    WHERE parent_id IS NOT NULL;
DROP INDEX IF EXISTS {schema}.runs_parent;
-- Nothing reads runs by creation time faster than newest-first by id does (ids ascend with
-- creation), and this full index cost every run three entries.
DROP INDEX IF EXISTS {schema}.runs_created;
