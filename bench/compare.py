"""durably side by side with PgQueuer, Procrastinate, DBOS and Absurd, on the same server.

``python -m bench --compare`` (or ``python -m bench.compare``). On first use it creates one
virtual environment per peer under ``bench/.venvs/`` and installs the pinned release from PyPI.
Then, for each workload, each engine runs its adapter (``bench/peers/<engine>_peer.py``, the
protocol is in ``bench/peers/common.py``) in its own environment, each run in a fresh database
on the server of DURABLY_DATABASE_URL / DATABASE_URL (else durably's embedded server), dropped
afterwards. Runs are interleaved (durably, peer, peer, ..., durably, ...) so that drift on a
noisy machine hits every engine alike; every figure is the median of ``--runs`` runs.

Writes ``bench/results/compare.md`` (the table, with durably/peer ratios), ``compare.json``
(every run's figures) and ``compare.png`` (the chart).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script: put the project root, not bench/, first on the path (see bench/queue.py).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.harness import ROOT, database_url, percentile
from durably.storage import describe_url

VENVS = ROOT / "bench" / ".venvs"
PEERS = ROOT / "bench" / "peers"
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Engine:
    """One engine: how to install it, its adapter, and the worker concurrencies to try (the
    best median is reported, so each engine is shown at its best usual setting)."""

    name: str
    label: str
    requirements: tuple[str, ...]  # empty: durably itself, in this environment
    concurrency: tuple[int, ...]
    drain_count: int = 20_000

    @property
    def python(self) -> Path:
        """The interpreter the adapter runs with."""
        return Path(sys.executable) if not self.requirements else VENVS / self.name / "bin/python"

    @property
    def script(self) -> Path:
        """The adapter."""
        return PEERS / f"{self.name}_peer.py"


PSYCOPG = "psycopg[binary]>=3.2"
ENGINES = (
    Engine("durably", "durably", (), (50, 200, 500)),
    # asyncpg: PgQueuer's recommended driver (with psycopg an idle worker waits ~1 s for a job).
    Engine("pgqueuer", "PgQueuer 1.6.0", ("pgqueuer[asyncpg]==1.6.0", PSYCOPG), (100, 500, 1000)),
    Engine(
        "procrastinate",
        "Procrastinate 3.10.0",
        ("procrastinate==3.10.0", PSYCOPG),
        (1, 10, 30),
        drain_count=5_000,
    ),
    Engine("dbos", "DBOS 3.4.0", ("dbos==3.4.0", PSYCOPG), (10, 50), drain_count=5_000),
    Engine(
        "absurd",
        "Absurd 0.5.1",
        ("absurd-sdk==0.5.1", "absurdctl==0.5.1", PSYCOPG),  # absurdctl also needs `psql`
        (4, 50, 500),
        drain_count=5_000,
    ),
)


# -- environments and databases -------------------------------------------------------------


def ensure_venv(engine: Engine) -> None:
    """Create the engine's virtual environment and install it, unless already done for exactly
    these requirements."""
    if not engine.requirements:
        return
    home = VENVS / engine.name
    marker = home / "requirements.txt"
    wanted = "\n".join(engine.requirements) + "\n"
    if marker.exists() and marker.read_text() == wanted:
        return
    print(f"installing {engine.label} into {home} (first use)", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(home)], check=True)
    pip = [
        str(home / "bin/python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]
    subprocess.run([*pip, *engine.requirements], check=True)
    marker.write_text(wanted)


def _server(url: str) -> str:
    """The same server, its maintenance database (where CREATE/DROP DATABASE run)."""
    return make_conninfo(url, dbname="postgres")


@contextmanager
def fresh_database(url: str, engine: Engine) -> Iterator[str]:
    """A new empty database on the server of ``url`` for one run of one engine, dropped after."""
    name = f"durably_compare_{engine.name}"
    statements = [
        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)),
        sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)),
    ]
    with psycopg.connect(_server(url), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
    try:
        params = conninfo_to_dict(url)
        params["dbname"] = name
        yield _as_url(params)
    finally:
        with psycopg.connect(_server(url), autocommit=True) as conn:
            conn.execute(statements[0])


def _as_url(params: dict[str, Any]) -> str:
    """A libpq URL from connection parameters (adapters take --url; some engines want a URL)."""
    user = params.get("user", "postgres")
    password = f":{params['password']}" if params.get("password") else ""
    host = params.get("host", "127.0.0.1")
    port = params.get("port", 5432)
    if str(host).startswith("/"):  # a Unix socket directory (durably's embedded server)
        return f"postgresql://{user}{password}@/{params['dbname']}?host={host}&port={port}"
    return f"postgresql://{user}{password}@{host}:{port}/{params['dbname']}"


def run_adapter(url: str, engine: Engine, workload: str, *options: str) -> dict[str, Any]:
    """One run of one workload by one engine, in a fresh database: its figures."""
    with fresh_database(url, engine) as fresh:
        command = [str(engine.python), str(engine.script), workload, "--url", fresh, *options]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if done.returncode != 0 or not done.stdout.strip():
        err = done.stderr
        shown = err if len(err) < 6000 else f"{err[:3000]}\n[...]\n{err[-3000:]}"
        raise RuntimeError(f"{engine.name} {workload} failed (exit {done.returncode}):\n{shown}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


# -- measurements -----------------------------------------------------------------------------


@dataclass
class Cell:
    """One engine's figures for one table row: a value per run (None: not supported)."""

    values: list[float] = field(default_factory=list)
    unsupported: str = ""
    note: str = ""  # e.g. the concurrency that gave the best median

    @property
    def median(self) -> float | None:
        """The median over runs, or None when the engine lacks the workload."""
        return statistics.median(self.values) if self.values and not self.unsupported else None


@dataclass
class Row:
    """One workload's line: a figure per engine, and which way is better."""

    name: str
    unit: str
    higher_is_better: bool
    cells: dict[str, Cell] = field(default_factory=dict)


Figure = Callable[[dict[str, Any]], list[float]]


def measure(
    args: argparse.Namespace,
    url: str,
    engines: list[Engine],
    workload: str,
    options: Callable[[Engine], list[str]],
    figures: dict[str, Figure],
) -> dict[str, dict[str, Cell]]:
    """``--runs`` rounds of one workload over the engines (interleaved). ``figures`` turns one
    run's output into each named figure. Returns figure -> engine -> Cell."""
    cells = {f: {e.name: Cell() for e in engines} for f in figures}
    for run in range(args.runs):
        for engine in engines:
            out = run_adapter(url, engine, workload, *options(engine))
            for figure, extract in figures.items():
                cell = cells[figure][engine.name]
                if "unsupported" in out:
                    cell.unsupported = out["unsupported"]
                    continue
                cell.values.extend(extract(out))
                shown = ", ".join(f"{v:,.2f}" for v in extract(out))
                print(
                    f"  run {run + 1} {engine.name:<14} {workload} {figure}: {shown}",
                    file=sys.stderr,
                    flush=True,
                )
            if "unsupported" in out and run == 0:
                print(f"  {engine.name}: {workload} unsupported", file=sys.stderr, flush=True)
    return cells


def _unsupported_everywhere(cells: dict[str, Cell]) -> bool:
    return all(c.unsupported for c in cells.values())


def drain_row(args: argparse.Namespace, url: str, engines: list[Engine]) -> Row:
    """Drain at each engine's concurrencies; each engine's best median is its figure."""
    row = Row("drain no-op jobs, one worker process", "jobs/s", True)
    best: dict[str, Cell] = {}
    for level in range(max(len(e.concurrency) for e in engines)):
        present = [e for e in engines if level < len(e.concurrency)]

        def options(e: Engine, level: int = level) -> list[str]:
            count = min(args.count, e.drain_count)
            return ["--count", str(count), "--concurrency", str(e.concurrency[level])]

        cells = measure(args, url, present, "drain", options, {"rate": lambda o: [o["rate"]]})
        for e in present:
            cell = cells["rate"][e.name]
            cell.note = f"concurrency {e.concurrency[level]}"
            if e.name not in best or (cell.median or 0) > (best[e.name].median or 0):
                best[e.name] = cell
    row.cells = best
    return row


def rows_for(args: argparse.Namespace, url: str, engines: list[Engine], workload: str) -> list[Row]:
    """The table rows of one workload."""
    if workload == "drain":
        return [drain_row(args, url, engines)]
    if workload == "enqueue":
        cells = measure(
            args,
            url,
            engines,
            "enqueue",
            lambda e: ["--count", str(args.enqueues)],
            {"rate": lambda o: [o["rate"]]},
        )
        return [Row("enqueue, one at a time", "jobs/s", True, cells["rate"])]
    if workload == "batch":
        options = ["--count", str(args.batch_rows), "--batch", "1000"]
        cells = measure(
            args, url, engines, "batch", lambda e: options, {"rate": lambda o: [o["rate"]]}
        )
        return [Row("enqueue, batches of 1,000", "jobs/s", True, cells["rate"])]
    if workload == "pickup":
        options = ["--samples", str(args.samples), "--pause", str(args.pause)]
        cells = measure(
            args,
            url,
            engines,
            "pickup",
            lambda e: options,
            {
                "p50": lambda o: [percentile(o["latencies_ms"], 0.5)],
                "p99": lambda o: [percentile(o["latencies_ms"], 0.99)],
            },
        )
        return [
            Row("idle pickup latency p50", "ms", False, cells["p50"]),
            Row("idle pickup latency p99", "ms", False, cells["p99"]),
        ]
    if workload == "workflow":
        rows = []
        for in_flight in (1, 10):
            options = ["--count", str(args.workflows), "--in-flight", str(in_flight)]
            cells = measure(
                args,
                url,
                engines,
                "workflow",
                lambda e, o=options: o,
                {"rate": lambda o: [o["rate"]]},
            )
            what = "sequential" if in_flight == 1 else f"{in_flight} in flight"
            rows.append(Row(f"3-step workflow, {what}", "wf/s", True, cells["rate"]))
        return rows
    cells = measure(
        args,
        url,
        engines,
        "steps",
        lambda e: ["--per-count", str(args.per_count)],
        {"ms": lambda o: [step_slope(o["seconds"]) * 1000]},
    )
    return [Row("overhead per checkpointed step", "ms", False, cells["ms"])]


def step_slope(seconds: dict[str, float]) -> float:
    """Least-squares slope of a workflow's seconds against its step count."""
    xs = [float(n) for n in seconds]
    return statistics.linear_regression(xs, list(seconds.values())).slope


# -- output -----------------------------------------------------------------------------------


def ratio(row: Row, engine: str) -> str:
    """durably / peer for one cell, with 'better' or 'worse' for durably."""
    ours, theirs = row.cells["durably"].median, row.cells[engine].median
    if ours is None or theirs is None or theirs == 0:
        return "—"
    value = ours / theirs
    better = value > 1 if row.higher_is_better else value < 1
    return f"{value:.3g}x ({'better' if better else 'worse'})"


def fmt(cell: Cell) -> str:
    """A cell's median as shown in the table."""
    value = cell.median
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def markdown(rows: list[Row], engines: list[Engine], header: str) -> str:
    """The results table: each engine's median and, for each peer, durably/peer."""
    peers = [e for e in engines if e.name != "durably"]
    head = ["workload", "unit", "durably"]
    for e in peers:
        head += [e.label, "durably/" + e.label.split()[0]]
    lines = [header, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            row.name,
            row.unit + (" ↑" if row.higher_is_better else " ↓"),
            fmt(row.cells["durably"]),
        ]
        for e in peers:
            cells += [fmt(row.cells[e.name]), ratio(row, e.name)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"- {e.label}: {row.name}: best at {row.cells[e.name].note}"
        for row in rows
        for e in engines
        if row.cells[e.name].note and row.cells[e.name].median
    ]
    unsupported = sorted(
        {
            f"- {e.label}: {c.unsupported}"
            for row in rows
            for e in engines
            if (c := row.cells[e.name]).unsupported
        }
    )
    lines += ["", "↑ higher is better, ↓ lower is better; — the engine has no such workload.", ""]
    return "\n".join(lines + notes + [""] + unsupported) + "\n"


def chart(rows: list[Row], engines: list[Engine], path: Path) -> None:
    """One bar chart per workload, the engines side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 3
    lines = (len(rows) + columns - 1) // columns
    fig, axes = plt.subplots(lines, columns, figsize=(5 * columns, 3.4 * lines), squeeze=False)
    for ax, row in zip(axes.flat, rows, strict=False):
        names = [e.label.split()[0] for e in engines]
        values = [row.cells[e.name].median or 0 for e in engines]
        colors = ["#2a7" if e.name == "durably" else "#89a" for e in engines]
        ax.bar(names, values, color=colors)
        for x, (value, e) in enumerate(zip(values, engines, strict=True)):
            ax.text(x, value, fmt(row.cells[e.name]), ha="center", va="bottom", fontsize=8)
        better = "higher" if row.higher_is_better else "lower"
        ax.set_title(f"{row.name}\n({row.unit}, {better} is better)", fontsize=9)
        ax.tick_params(axis="x", labelsize=8, rotation=20)
    for ax in list(axes.flat)[len(rows) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(rows: list[Row], engines: list[Engine], args: argparse.Namespace, seconds: float) -> None:
    """compare.md, compare.json and compare.png under bench/results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    header = (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
        f"{_cores()} cores, Python {platform.python_version()}, one PostgreSQL server; "
        f"median of {args.runs} runs; {seconds / 60:.0f} min in all."
    )
    (RESULTS / "compare.md").write_text(markdown(rows, engines, header))
    raw = {
        row.name: {
            name: {"values": c.values, "unsupported": c.unsupported, "note": c.note}
            for name, c in row.cells.items()
        }
        for row in rows
    }
    (RESULTS / "compare.json").write_text(json.dumps(raw, indent=1) + "\n")
    chart(rows, engines, RESULTS / "compare.png")


def _cores() -> int:
    import os

    return os.cpu_count() or 1


# -- command line -----------------------------------------------------------------------------

WORKLOADS = ("drain", "enqueue", "batch", "pickup", "workflow", "steps")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench --compare", description=__doc__)
    add = parser.add_argument
    add("--runs", type=int, default=3, help="runs of each figure; the median is reported")
    add("--count", type=int, default=20_000, help="jobs per drain (some peers: fewer, see ENGINES)")
    add("--enqueues", type=int, default=2_000, help="single enqueues per run")
    add("--batch-rows", type=int, default=20_000, help="jobs per batch-enqueue run")
    add("--samples", type=int, default=60, help="pickup samples per run")
    add("--pause", type=float, default=0.05, help="idle seconds before each pickup sample")
    add("--workflows", type=int, default=200, help="workflows per workflow run")
    add("--per-count", type=int, default=10, help="workflows of each step count per steps run")
    add("--only", action="append", choices=WORKLOADS, help="run only these workloads")
    add(
        "--engine",
        action="append",
        choices=[e.name for e in ENGINES],
        help="only these engines (durably is always included)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Install what is missing, run every workload on every engine, write the results."""
    args = parse_args(argv)
    engines = [
        e for e in ENGINES if e.name == "durably" or not args.engine or e.name in args.engine
    ]
    for engine in engines:
        ensure_venv(engine)
    url = database_url()
    print(f"comparing on {describe_url(url)}, {args.runs} runs each", file=sys.stderr)
    started = time.monotonic()
    rows: list[Row] = []
    for workload in args.only or WORKLOADS:
        rows += [
            r
            for r in rows_for(args, url, engines, workload)
            if not _unsupported_everywhere(r.cells)
        ]
    write(rows, engines, args, time.monotonic() - started)
    print((RESULTS / "compare.md").read_text())
    print(f"written: {RESULTS}/compare.md, compare.json, compare.png", file=sys.stderr)


if __name__ == "__main__":
    main()
