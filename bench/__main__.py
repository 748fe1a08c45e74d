"""``python -m bench --compare [options]``: durably side by side with its peers (bench.compare).

The other benchmarks have their own entry points: ``python -m bench.queue``, ``bench.durable``,
``bench.growth``, ``bench.ceiling``, ``bench.chaos`` (see bench/README.md).
"""

from __future__ import annotations

import sys

from bench import compare


def main() -> None:
    """Dispatch ``--compare``; anything else prints where the benchmarks are."""
    argv = sys.argv[1:]
    if "--compare" not in argv:
        print(__doc__.strip())
        sys.exit(0 if argv in ([], ["-h"], ["--help"]) else 2)
    argv.remove("--compare")
    compare.main(argv)


if __name__ == "__main__":
    main()
