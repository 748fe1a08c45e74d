"""Committed migrations never change: a schema migrated by an older durably must be the schema
a newer one expects. A change goes into a new migration file (CONTRIBUTING.md)."""

from __future__ import annotations

import hashlib
from importlib import resources

from durably.storage import MIGRATIONS

# sha256 of every migration file as committed. A new migration adds its line here.
COMMITTED = {
    "0001_queue.sql": "a105acc615f56724b0fbe46a9cb73b8277efd62544467b094939a7ab72ff6042",
    "0002_durable.sql": "8d427ce27a5b0fb0a793bf126e90d0d9dbfa75db7e860813ba6882633c4e46cc",
    "0003_claim_by_pool.sql": "7d53972bed55e5ea848a018e7cc4ddb57fd665f14d427223154d3ee2883aa6ce",
    "0004_operator_views.sql": "599150ba1d48f0deabd76ea455117d3444341533d5ec0d8a3471eb78664dcd19",
    "0005_trace_context.sql": "315ec7cc74b61d4837a78958c949d5aaf4a200b01205a6cf9674bf934418efb0",
    "0006_flow_control.sql": "6bcbb584ae3fc49215f4b8538fceb860c0c8f75ea42b8e8df5c1b1cf7f2f05c7",
    "0007_schedules.sql": "4111ae274dafb82016515dfb8eb59dabb84c6d6bf886356a0f32a674ed2c1733",
    "0008_sweep_at_volume.sql": "0b92ea80b6fe698e4759b6bf063bb999e2ab4debb9b4c9bf5b2664a6d539f3e6",
    "0009_run_deadline.sql": "85c7e5cbde7e1003688d128831075b0f5b9babd56b76b156cac3fc1d33cee26f",
    "0010_retention.sql": "bf27d7bd0a6fdf3eac0d04f76b6c962d39e44e40a8b5a0586dc97d5a91c85c55",
}


def _files() -> dict[str, bytes]:
    folder = resources.files("durably").joinpath("sql", "migrations")
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.name.endswith(".sql")}


def test_committed_migrations_never_change() -> None:
    for name, content in sorted(_files().items()):
        assert name in COMMITTED, (
            f"{name} is new: add its sha256 ({hashlib.sha256(content).hexdigest()}) to COMMITTED"
        )
        assert hashlib.sha256(content).hexdigest() == COMMITTED[name], (
            f"{name} was edited after it was committed: migrations are forward-only, put the "
            "change in a new migration file"
        )


def test_no_committed_migration_is_missing() -> None:
    assert sorted(_files()) == sorted(COMMITTED)
    assert [m.version for m in MIGRATIONS] == list(range(1, len(COMMITTED) + 1))
