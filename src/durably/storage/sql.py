"""The SQL files: every statement durably runs, loaded by name, and the migrations.

Statements live in ``sql/*.sql`` as named blocks (``-- name: claim``), one file per concept;
``{schema}`` in them is replaced by the App's quoted schema name, and values are always bound
parameters. Migrations are ``sql/migrations/NNNN_name.sql``, numbered and forward-only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources


def _parse_named_blocks(text: str) -> dict[str, str]:
    blocks: dict[str, str] = {}
    for chunk in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        name, _, body = chunk.partition("\n")
        blocks[name.strip()] = body.strip().rstrip(";")
    return blocks


def _all_named_blocks() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for file in sorted(resources.files("durably").joinpath("sql").iterdir(), key=lambda f: f.name):
        if file.name.endswith(".sql"):
            found = _parse_named_blocks(file.read_text())
            clash = blocks.keys() & found.keys()
            if clash:
                raise RuntimeError(f"{file.name}: statement names defined twice: {sorted(clash)}")
            blocks.update(found)
    return blocks


QUERIES = _all_named_blocks()


@dataclass(frozen=True)
class Migration:
    """One numbered, forward-only migration file."""

    version: int
    name: str
    template: str


def _migrations() -> list[Migration]:
    found = []
    for entry in resources.files("durably").joinpath("sql", "migrations").iterdir():
        match = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


MIGRATIONS = _migrations()
LATEST_VERSION = MIGRATIONS[-1].version


def statements(schema: str, channel: str) -> dict[str, str]:
    """Every named statement for one schema, with the composed forms assembled."""
    sql = {
        name: q.replace("{schema}", f'"{schema}"').replace("{channel}", f'"{channel}"')
        for name, q in QUERIES.items()
    }
    # The claim has three forms: a single queue is read in index order directly; several
    # queues one by one; and under flow control, the pool's free tasks are claimed as the
    # several-queues form claims them, beside the controlled ones.
    claim = sql.pop("claim")
    plain = claim.replace("{record}", "")
    sql["claim_one_queue"] = plain.replace("{pick}", sql["claim_pick_one_queue"])
    sql["claim_queues"] = plain.replace("{pick}", sql["claim_pick_queues"])
    free = sql["claim_pick_queues"].replace("%(tasks)s", "%(free)s")
    controlled = sql["claim_pick_controlled"].replace("{free}", free)
    sql["claim_controlled"] = claim.replace("{pick}", controlled).replace(
        "{record}", "\n" + sql["claim_record_flow"]
    )
    # So has `finish`: a batch of outcomes in arrays, or one outcome in scalars.
    finish = sql.pop("finish")
    sql["finish"] = finish.replace("{outcomes}", sql["finish_outcomes_many"])
    sql["finish_one"] = finish.replace("{outcomes}", sql["finish_outcomes_one"])
    # And `deadline_fail`: the sweeper's, over the runs due, and a worker's, over its attempt.
    deadline = sql.pop("deadline_fail")
    sql["sweep_deadlines"] = deadline.replace("{due}", sql["deadline_due"])
    sql["deadline_fail_held"] = deadline.replace("{due}", sql["deadline_held"])
    # And `purge_trees`: the sweeper's, by retention, and app.purge's, by age.
    purge = sql.pop("purge_trees")
    sql["sweep_purge"] = purge.replace("{pick}", sql["purge_pick_expired"])
    sql["purge_older"] = purge.replace("{pick}", sql["purge_pick_older"])
    return sql
