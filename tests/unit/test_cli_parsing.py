"""The CLI's parsing, before any database is reached: a bad argument exits 2 with one line that
says what was wrong and what to write instead."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from durably.cli import main


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["runs", "list", "--limit", "x"], "'x' is not a valid integer"),
        (["runs", "list", "--status", "BOGUS"], "'BOGUS' is not a status: use one or more of"),
        (["runs", "list", "--since", "soon"], "neither a duration (15m, 2h, 1d, 1h30m) nor"),
        (["runs", "show", "abc"], "'abc' is not a valid integer"),
        (["worker", "no_such_module:app"], "cannot import 'no_such_module'"),
    ],
)
def test_a_bad_argument_exits_2_with_one_line(args: list[str], says: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and says in errors[0], result.output
