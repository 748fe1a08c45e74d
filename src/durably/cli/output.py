"""How the CLI prints: tables drawn by rich on a terminal, plain aligned text otherwise (for
``grep``, ``awk`` and logs), JSON with stable keys for scripts, and progress for long actions."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import IO, Any
from uuid import UUID

import click
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

CELL_LIMIT = 60  # characters of a plain-text cell: a table row stays one line


def is_terminal(stream: IO[str] | None = None) -> bool:
    """True when ``stream`` (stdout by default) is a terminal a person reads."""
    stream = stream or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID):
        return str(value)
    return str(value)


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON: times in UTC ISO 8601, ids and counts as numbers."""
    click.echo(json.dumps(value, default=_json_default, indent=2, ensure_ascii=False))


# -- formatting cells ------------------------------------------------------------------------


def fmt_time(value: datetime | None, ms: bool = False) -> str:
    """A time in UTC, to the second (or millisecond)."""
    if value is None:
        return "-"
    text = value.astimezone(UTC).isoformat(sep=" ", timespec="milliseconds" if ms else "seconds")
    return text.removesuffix("+00:00")


def fmt_seconds(seconds: float | None) -> str:
    """A duration or an age, short: 0.25s, 42s, 3m05s, 2h10m, 4d03h."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    whole = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}{(whole % size) // sub_size:02d}{sub}"
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"


def fmt_due(seconds: float | None) -> str:
    """When a delayed run is due, from now (``in 4m10s``); '-' for a run that is not delayed."""
    return "-" if seconds is None else f"in {fmt_seconds(seconds)}"


def fmt_count(count: int | None, cap: int) -> str:
    """A count that stopped at ``cap`` shows as ``cap+``."""
    if count is None:
        return "-"
    return f"{count}+" if count >= cap else str(count)


def fmt_value(value: Any) -> str:
    """Any value as one cell of text: JSON for structures, '-' for nothing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return fmt_time(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def plural(count: int, noun: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def one_line(text: str, limit: int = CELL_LIMIT) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# -- tables ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A table column: its header and how a row gives its cell."""

    header: str
    cell: Callable[[dict[str, Any]], str]
    right: bool = False  # numbers align right
    wrap: bool = False  # on a narrow terminal, only free text wraps: never ids, times, counts


def col(key: str, header: str | None = None, right: bool = False, wrap: bool = False) -> Column:
    """A column showing ``row[key]`` as text."""
    return Column(header or key.upper(), lambda row: fmt_value(row.get(key)), right, wrap)


def print_table(
    rows: Iterable[dict[str, Any]], columns: list[Column], empty: str = "(none)"
) -> None:
    """Rows as a table: drawn by rich on a terminal, plain aligned columns otherwise."""
    cells = [[one_line(c.cell(r)) for c in columns] for r in rows]
    if not cells:
        click.echo(empty)
        return
    if is_terminal():
        table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, show_edge=False)
        for c in columns:
            table.add_column(
                c.header,
                justify="right" if c.right else "left",
                overflow="fold",
                no_wrap=not c.wrap,
                min_width=None if c.wrap else len(c.header),
            )
        for row in cells:
            table.add_row(*row)
        Console(file=sys.stdout, highlight=False).print(table)
        return
    widths = [max(len(c.header), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo(_plain_row([c.header for c in columns], widths, columns))
    for row in cells:
        click.echo(_plain_row(row, widths, columns))


def _plain_row(values: list[str], widths: list[int], columns: list[Column]) -> str:
    parts = [
        v.rjust(w) if c.right else v.ljust(w)
        for v, w, c in zip(values, widths, columns, strict=True)
    ]
    return "  ".join(parts).rstrip()


def print_fields(fields: list[tuple[str, str]]) -> None:
    """``name: value`` lines (easy to grep), names aligned on a terminal."""
    width = max((len(name) for name, _ in fields), default=0) if is_terminal() else 0
    for name, value in fields:
        click.echo(f"{(name + ':').ljust(width + 1)} {value}")


# -- progress -------------------------------------------------------------------------------


class ProgressDisplay:
    """Progress of a long action on stderr: a rich bar on a terminal, else a line per step."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> ProgressDisplay:
        if is_terminal(sys.stderr):
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=sys.stderr),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def advance(self, step: int, note: str = "") -> None:
        """``step`` more units are done; ``note`` says what is being done now."""
        self.update(self.done + step, note)

    def update(self, done: int, note: str = "") -> None:
        """``done`` units are done so far; ``note`` says what is being done now."""
        self.done = done
        if self._bar is not None:
            description = f"{self.label} {note}".rstrip()
            self._bar.update(self._task, completed=self.done, description=description)
        else:
            click.echo(f"{self.label}: {self.done}/{self.total} {note}".rstrip(), err=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
