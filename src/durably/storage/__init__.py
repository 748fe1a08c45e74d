"""The storage layer: the only code that runs SQL (see CONTRIBUTING.md, "Layers").

Every statement lives in a ``sql/*.sql`` file of named blocks, one file per concept, or in
``sql/migrations/NNNN_name.sql``; ``{schema}`` in them is replaced by the App's quoted schema
name, and values are always bound parameters. Connections come from one psycopg async pool in
autocommit mode, so a single statement costs one round trip; statements that must commit together
run in an explicit transaction. It takes and returns the records of :mod:`durably.records`.
"""

from .connection import (
    UserCodeFailed,
    check_schema_name,
    connect,
    describe_url,
    first_line,
    is_transient,
)
from .retention import PurgeProgress
from .sql import LATEST_VERSION, MIGRATIONS, QUERIES, Migration
from .store import Store
from .sweep import SWEEP_BATCH, SWEEP_ROUNDS
from .views import runs_filter

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "QUERIES",
    "SWEEP_BATCH",
    "SWEEP_ROUNDS",
    "Migration",
    "PurgeProgress",
    "Store",
    "UserCodeFailed",
    "check_schema_name",
    "connect",
    "describe_url",
    "first_line",
    "is_transient",
    "runs_filter",
]
