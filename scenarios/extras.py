"""Optional packages (the ``sweep`` extra: pyarrow, matplotlib, dask) checked before any work.

A command that needs an optional package must say so before it searches anything: finding out after a
study's searches have run, from an ImportError traceback, costs the user the whole run. Each check
imports the package (a package that is present but broken fails the same way as a missing one) and
raises one :class:`InputError` line with the install command.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from hardware.yaml_input import checked_path
from hardware.errors import InputError

INSTALL = "pip install 'plan-search[sweep]'"


def missing(modules: tuple[str, ...]) -> list[str]:
    """The modules of ``modules`` that cannot be imported."""
    absent = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            absent.append(name)
    return absent


def require(modules: tuple[str, ...], command: str, purpose: str) -> None:
    """Raise one InputError line naming the command, the missing packages, what they are for and the fix."""
    absent = missing(modules)
    if absent:
        raise InputError(command, "", f"needs {' and '.join(absent)} for {purpose}, but "
                         f"{'it is' if len(absent) == 1 else 'they are'} not installed", INSTALL)


def require_parquet_reader(path: str | Path) -> None:
    """A results path that will be read as Parquet (a ``.parquet`` file, or a sweep directory holding
    one) needs pyarrow; say so against that path, not 'cannot be read', which blames the file."""
    path = checked_path(path, "results")  # an impossible path is an input error, not OSError
    parquet = path.suffix.lower() == ".parquet" or (path.is_dir() and (path / "results.parquet").exists())
    if parquet and missing(("pyarrow",)):
        raise InputError(path, "", "is Parquet, and reading Parquet needs pyarrow, which is not installed",
                         f"{INSTALL}, or compare the results.csv files (sweep --csv)")
