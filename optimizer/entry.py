"""The ``plan-search`` console script: a Ctrl-C that arrives while the command's modules are still being
imported (OR-Tools, pandas and numpy take a noticeable part of a second) ends like any other Ctrl-C,
with ``plan-search: aborted`` and status 130, instead of a traceback from the middle of an import.

A KeyboardInterrupt raised inside the initialisation of a compiled module (OR-Tools' pybind11 module)
comes out as ``ImportError: initialization failed``, not as KeyboardInterrupt; so during the imports
SIGINT only sets a flag, and the flag is acted on once the imports are done (or have failed).
"""

from __future__ import annotations

import signal
import sys


def _aborted() -> None:
    sys.stderr.write("plan-search: aborted\n")
    sys.exit(130)


def main() -> None:
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        from optimizer.cli import main as run
    except BaseException:
        if interrupted:
            _aborted()
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        _aborted()
    run(fast_exit=True)  # the program itself: no interpreter teardown after the output is flushed
