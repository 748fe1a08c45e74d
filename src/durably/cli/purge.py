"""``durably runs purge``: remove old finished workflows by hand, counted, confirmed, batched."""

from __future__ import annotations

import sys

import click

from ..app import App
from ..records import ENDED
from ..storage import PurgeProgress
from .common import TEXT, database_options, friendly_errors, refuse, resolve_app
from .filters import Moment, parse_moment, parse_statuses
from .output import ProgressDisplay, plural


@click.command("purge")
@click.option(
    "--older-than",
    required=True,
    callback=parse_moment,
    help="Remove workflows whose runs all ended longer ago than this: 90s, 15m, 2h, 7d, 1w.",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    callback=parse_statuses,
    help="Only workflows whose root run has this status: COMPLETED, FAILED or CANCELLED "
    "(repeat it or separate with commas; default all three).",
)
@click.option("--task", "tasks", type=TEXT, multiple=True, help="Only workflows of this task.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@database_options
@friendly_errors
def runs_purge(
    older_than: Moment,
    statuses: tuple[str, ...],
    tasks: tuple[str, ...],
    yes: bool,
    app_spec: str | None,
    database_url: str | None,
    schema: str | None,
) -> None:
    """Remove finished workflows (a run and every run below it, with their event logs) that
    ended longer ago than --older-than, whatever their retention. Workflows with a run that has
    not finished are never removed. Counted and confirmed first, then removed in batches, each
    its own transaction: interrupting it loses nothing and leaves no workflow half removed."""
    if older_than.ago is None:
        raise click.BadParameter(
            f"{older_than.text!r} is not a duration: give an age such as 7d, 12h or 1h30m",
            param_hint="--older-than",
        )
    wrong = [s for s in statuses if s not in ENDED]
    if wrong:
        raise click.BadParameter(
            f"{' and '.join(wrong)}: only finished runs are purged; give {', '.join(ENDED)}, or "
            "leave --status out for all three",
            param_hint="--status",
        )
    app = resolve_app(app_spec, database_url, schema)
    chosen = statuses or ENDED
    found = app.purge_count(older_than.ago, statuses=chosen, tasks=tasks or None)
    what = f"ended more than {older_than.text} ago, {'/'.join(chosen)}" + (
        f", task {' or '.join(tasks)}" if tasks else ""
    )
    if not found:
        click.echo(f"no workflow matches ({what}): nothing to purge")
        return
    click.echo(f"{plural(found, 'workflow')} match ({what})")
    if not yes and not _confirmed(found):
        refuse("not confirmed, nothing was removed (answer y, or pass --yes to purge)")
    removed = _purge(app, older_than.ago, chosen, tasks, found)
    click.echo(f"purged {plural(removed, 'run')} of the {plural(found, 'workflow')} that matched")


def _confirmed(count: int) -> bool:
    try:
        return click.confirm(
            f"Remove {plural(count, 'workflow')} with their runs and event logs?", default=False
        )
    except click.Abort:  # no answer at all: stdin closed
        click.echo("", err=True)
        return False


def _purge(
    app: App, ago: float, statuses: tuple[str, ...], tasks: tuple[str, ...], found: int
) -> int:
    """Purge with a progress display; an interrupt keeps what was removed and says so."""
    done = PurgeProgress(0, 0)
    with ProgressDisplay("purge", found) as progress:

        def advance(now: PurgeProgress) -> None:
            nonlocal done
            done = now
            progress.update(
                min(now.workflows, found), f"({plural(now.runs_removed, 'run')} removed)"
            )

        try:
            return app.purge(ago, statuses=statuses, tasks=tasks or None, progress=advance)
        except KeyboardInterrupt:
            click.echo(
                f"interrupted: {plural(done.runs_removed, 'run')} removed; the rest is untouched",
                err=True,
            )
            sys.exit(1)
