"""The design stays shardable (docs/scaling.md, "Sharding"): every statement durably runs is
classified by how it would run on a cluster distributed by workflow, and every statement on the
hot path of one run addresses that run by a bound id, so that adding the shard key (the root
run id) beside it routes the statement to one shard. A new statement fails this test until it
is classified here, with the docs' reasoning."""

from __future__ import annotations

import re

from durably.storage import QUERIES

# Statements of one run (or of runs a worker holds, by id): routed to the run's shard.
ROUTED = {
    "enqueue", "enqueue_one", "log_load", "log_append", "log_spawn", "log_complete",
    "log_take_event", "log_hold", "log_hold_renew", "children_status", "suspend", "log_list",
    "finish", "finish_outcomes_many", "finish_outcomes_one", "cancel", "run_get", "run_status",
    "retry", "replay", "fork", "heartbeat", "release", "deadline_held",
}  # fmt: skip
# Scans of due work that each shard runs over its own rows (its workers' claims, its sweeper).
PER_SHARD = {
    "claim", "claim_pick_one_queue", "claim_pick_queues", "next_due", "claim_pick_controlled",
    "claim_record_flow", "flow_adopt", "claim_flow_lock", "sweep_orphans",
    "sweep_schedule_timeouts", "sweep_wake_ready", "sweep_rate_starts", "sweep_fair_turns",
    "deadline_fail", "deadline_due", "purge_trees", "purge_pick_expired", "purge_pick_older",
    "purge_count",
}  # fmt: skip
# Small tables every shard sees whole (reference tables), or keyed tables of their own:
# migrations, schedules, workers, events (by key), idempotency keys (by task and key).
GLOBAL = {
    "create_schema", "migrations_record_literal", "migrations_bootstrap", "migrations_applied",
    "migrations_record", "migrations_lock", "schema_exists", "schedule_now", "schedule_list",
    "schedule_get", "schedule_save", "schedule_declare", "schedule_forget", "schedule_due",
    "schedule_advance", "schedule_fired", "schedule_pause", "schedule_resume", "schedule_delete",
    "worker_register", "worker_next_lock_id", "worker_lock", "worker_stopped", "listen",
    "sweep_lock", "sweep_dead_workers", "sweep_workers", "push_event", "sweep_events",
    "existing_by_key",
}  # fmt: skip
# The operator's views: fanned out to every shard (or a replica), never on the hot path.
OPERATOR = {
    "ops_limits", "ops_runs_filter", "ops_runs_columns", "ops_runs_older", "ops_runs_newer",
    "ops_runs_count", "ops_run", "ops_events", "ops_event", "ops_children", "ops_task_names",
    "ops_workers", "ops_queues", "ops_throughput", "runs_list",
}  # fmt: skip

# How a routed statement names its run(s): a bound id, a bound array of ids, or a new row.
BY_ID = re.compile(
    r"\b(?:id|run_id|parent_id)\s*=\s*(?:%\((?:id|run_id)\)s|ANY\(%\((?:ids|run_id)\)s)"
    r"|\bunnest\(\s*%\(ids\)s|%\(id\)s::bigint AS id|INSERT INTO \{schema\}\.runs|\{outcomes\}"
)


def test_every_statement_is_classified_once() -> None:
    classes = [ROUTED, PER_SHARD, GLOBAL, OPERATOR]
    classified = [name for group in classes for name in group]
    assert sorted(classified) == sorted(set(classified)), "a statement is in two classes"
    unclassified = sorted(set(QUERIES) - set(classified))
    assert not unclassified, f"classify these statements for sharding: {unclassified}"
    assert not set(classified) - set(QUERIES), "classified statements that no longer exist"


def test_every_routed_statement_names_its_runs_by_id() -> None:
    unrouted = [name for name in sorted(ROUTED) if not BY_ID.search(QUERIES[name])]
    assert not unrouted, f"hot statements that do not name their run by a bound id: {unrouted}"
