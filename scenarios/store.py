"""Where a sweep keeps its results: one part file per finished scenario, then one combined table.

Layout of the output directory::

    OUT/parts/<inputs_hash>.json    one per finished scenario: {"params": ..., "rows": [...]}
    OUT/results.parquet             every scenario of the sweep, one row per scenario x plan
    OUT/results.csv                 the same, when asked for

A part is written to a temporary name in the same directory and renamed over its final name
(``os.replace``, atomic on POSIX and Windows), so a crash or Ctrl-C leaves either a whole part or none.
Parts are named by the scenario's ``inputs_hash`` (its resolved inputs and the tool version), so a rerun
reuses exactly the scenarios whose inputs did not change. Parts are JSON rather than Parquet because
a part holds a few rows and JSON writes them in microseconds with floats that round-trip exactly;
the combined table is Parquet.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from hardware.errors import InputError

from .rows import json_safe

PARTS_DIR = "parts"
RESULTS_PARQUET = "results.parquet"
RESULTS_CSV = "results.csv"


class PartStore:
    """The per-scenario part files of one output directory."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.parts_dir = self.out_dir / PARTS_DIR
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InputError(self.out_dir, "", "is a file, not a directory", "pass a directory for --out")
        self.parts_dir.mkdir(parents=True, exist_ok=True)

    def path(self, inputs_hash: str) -> Path:
        return self.parts_dir / f"{inputs_hash}.json"

    def finished(self) -> set[str]:
        """Hashes of the scenarios whose part file exists."""
        return {p.stem for p in self.parts_dir.glob("*.json")}

    def write(self, inputs_hash: str, params: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
        """Write one scenario's rows atomically (temporary file + rename)."""
        document = {"params": {k: json_safe(v) for k, v in params.items()},
                    "rows": [{k: json_safe(v) for k, v in row.items()} for row in rows]}
        target = self.path(inputs_hash)
        handle, temporary = tempfile.mkstemp(prefix=f".{inputs_hash}.", suffix=".tmp", dir=self.parts_dir)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(document, stream, allow_nan=True)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target

    def read_rows(self, inputs_hash: str) -> list[dict[str, Any]]:
        """One scenario's result rows (its scenario columns come from the sweep being combined, so two
        scenarios with equal resolved inputs but different labels share one part)."""
        document = json.loads(self.path(inputs_hash).read_text(encoding="utf-8"))
        return document["rows"]


def write_results(frame: pd.DataFrame, out_dir: str | Path, csv: bool = False) -> list[Path]:
    """Write the combined table as Parquet (and CSV); both through a temporary name and a rename."""
    out_dir = Path(out_dir)
    written = [_atomic(out_dir / RESULTS_PARQUET, lambda p: frame.to_parquet(p, index=False))]
    if csv:
        written.append(_atomic(out_dir / RESULTS_CSV, lambda p: frame.to_csv(p, index=False)))
    return written


def _atomic(target: Path, write) -> Path:
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def read_results(path: str | Path, role: str = "results") -> pd.DataFrame:
    """A results table from ``results.parquet``, ``results.csv`` or a sweep output directory."""
    path = Path(path)
    if path.is_dir():
        for name in (RESULTS_PARQUET, RESULTS_CSV):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise InputError(path, "", f"holds no {RESULTS_PARQUET} or {RESULTS_CSV}",
                             "pass a sweep output directory or a results file")
    if not path.exists():
        raise InputError(path, "", "file not found", f"pass the {role} table of a sweep (results.parquet)")
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow and pandas raise many kinds; the user only needs to know which file
        raise InputError(path, "", f"cannot be read as a results table ({exc.__class__.__name__})",
                         "pass results.parquet or results.csv written by 'plan-search sweep'") from None
