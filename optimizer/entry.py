"""The ``plan-search`` console script: a Ctrl-C that arrives while the command's modules are still being
imported (OR-Tools, pandas and numpy take a noticeable part of a second) ends like any other Ctrl-C,
with ``plan-search: aborted`` and status 130, instead of a traceback from the middle of an import."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from optimizer.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("plan-search: aborted\n")
        sys.exit(130)
    run()
