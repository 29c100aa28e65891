"""Where a sweep keeps its results: one part file per finished scenario, then one combined table.

Layout of the output directory::

    OUT/parts/<inputs_hash>.json    one per searched scenario: {"params": ..., "rows": [...]}
    OUT/results.parquet             every scenario of the sweep, one row per scenario x plan
    OUT/results.csv                 the same, when asked for

A part is written to a temporary name in the same directory (``.<inputs_hash>.<pid>.<random>.tmp``),
flushed to the disk (``fsync``), renamed over its final name (``os.replace``, atomic on POSIX) and the
directory is fsynced too, so a crash, a kill or a power cut leaves either a whole part or none; the
combined tables are written the same way. Temporary files left by a run that died (its process id is
no longer alive) are removed when the next run starts (:meth:`PartStore.remove_stale`).

Parts are named by the scenario's ``inputs_hash`` (its resolved inputs and the tool version), so a rerun
reuses exactly the scenarios whose inputs did not change. Only a part whose rows are data (``ok`` or
``no_fit``) counts as finished: a part of ``error`` rows is kept so that the table can list the error,
but a rerun searches that scenario again (the error may have been a time limit or a fault of the
machine). A part that cannot be read back (emptied, truncated, not the expected document) is not
finished either: it draws a warning and is recomputed, never a traceback.

Parts are JSON rather than Parquet because a part holds a few rows and JSON writes them in microseconds
with floats that round-trip exactly; the combined table is Parquet.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from hardware.yaml_input import checked_path
from hardware.errors import InputError

from .rows import json_safe

PARTS_DIR = "parts"
RESULTS_PARQUET = "results.parquet"
RESULTS_CSV = "results.csv"
DATA_STATUSES = ("ok", "no_fit")
"""Statuses that are results of a finished search; ``error`` is not, and is searched again on resume."""
STATUSES = DATA_STATUSES + ("error",)

# Temporary names: parts ".<hash>.<pid>.<random>.tmp" (older runs: ".<hash>.<random>.tmp"), tables
# ".results.parquet.<pid>.tmp". The pid tells a live writer (another run in this directory) from a dead one.
_PART_TEMPORARY = re.compile(r"^\.[0-9a-f]+\.(?:(\d+)\.)?[^.]+\.tmp$")
_TABLE_TEMPORARY = re.compile(r"^\.(?:%s|%s)\.(\d+)\.tmp$" % (re.escape(RESULTS_PARQUET), re.escape(RESULTS_CSV)))


class DamagedPart(UserWarning):
    """A part file that could not be read back; its scenario is searched again."""


class PartStore:
    """The per-scenario part files of one output directory."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = checked_path(out_dir, "--out")
        self.parts_dir = self.out_dir / PARTS_DIR
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InputError(self.out_dir, "", "is a file, not a directory", "pass a directory for --out")
        try:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(self.out_dir, "", f"cannot create the output directory ({exc.strerror or exc})",
                             "pass a writable directory for --out") from None

    def path(self, inputs_hash: str) -> Path:
        return self.parts_dir / f"{inputs_hash}.json"

    def remove_stale(self) -> list[Path]:
        """Remove the temporary files of runs that died mid-write (their process is gone); returns them."""
        removed = []
        candidates = [(p, _PART_TEMPORARY.match(p.name)) for p in self.parts_dir.glob(".*.tmp")]
        candidates += [(p, _TABLE_TEMPORARY.match(p.name)) for p in self.out_dir.glob(".*.tmp")]
        for path, match in candidates:
            if match is None:
                continue
            pid = int(match.group(1)) if match.group(1) else None
            if pid is not None and pid != os.getpid() and _alive(pid):
                continue  # another run is writing into this directory right now
            path.unlink(missing_ok=True)
            removed.append(path)
        return removed

    def finished(self, hashes: Iterable[str] | None = None) -> set[str]:
        """Hashes of the scenarios (of ``hashes``, default every part) whose part holds a finished result.

        Each candidate part is read back: a damaged one warns (:class:`DamagedPart`) and is left out, a
        part of ``error`` rows is left out silently; both are searched again."""
        present = {p.stem for p in self.parts_dir.glob("*.json")}
        wanted = present if hashes is None else present & set(hashes)
        done = set()
        for inputs_hash in sorted(wanted):
            try:
                rows = self.read_rows(inputs_hash)
            except DamagedPartError as exc:
                warnings.warn(DamagedPart(f"{exc}; the scenario is searched again"), stacklevel=2)
                continue
            if all(row["status"] in DATA_STATUSES for row in rows):
                done.add(inputs_hash)
        return done

    def write(self, inputs_hash: str, params: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
        """Write one scenario's rows durably and atomically (temporary file, fsync, rename, fsync of the
        directory)."""
        document = {"params": {k: json_safe(v) for k, v in params.items()},
                    "rows": [{k: json_safe(v) for k, v in row.items()} for row in rows]}
        text = json.dumps(document, allow_nan=True)
        target = self.path(inputs_hash)
        temporary = self.parts_dir / f".{inputs_hash}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            with open(temporary, "x", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(self.parts_dir)
        return target

    def read_rows(self, inputs_hash: str) -> list[dict[str, Any]]:
        """One scenario's result rows (its scenario columns come from the sweep being combined, so two
        scenarios with equal resolved inputs but different labels share one part).

        Raises :class:`DamagedPartError` (one line naming the file) when the part cannot be read back."""
        path = self.path(inputs_hash)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise DamagedPartError(path, f"cannot be read back ({exc.__class__.__name__})") from None
        rows = document.get("rows") if isinstance(document, dict) else None
        if (not isinstance(rows, list) or not rows or not isinstance(document.get("params"), dict)
                or not all(isinstance(row, dict) and row.get("status") in STATUSES for row in rows)):
            raise DamagedPartError(path, "is not a part document (params, and rows that each have a status)")
        return rows


class DamagedPartError(Exception):
    """A part file that cannot be read back (one line naming it)."""

    def __init__(self, path: Path, problem: str):
        self.path = path
        super().__init__(f"{path}: {problem}")


def write_results(frame: pd.DataFrame, out_dir: str | Path, csv: bool = False) -> list[Path]:
    """Write the combined table as Parquet (and CSV); each durably through a temporary name and a rename."""
    out_dir = Path(out_dir)
    written = [_atomic(out_dir / RESULTS_PARQUET, lambda p: frame.to_parquet(p, index=False))]
    if csv:
        written.append(_atomic(out_dir / RESULTS_CSV, lambda p: frame.to_csv(p, index=False)))
    return written


def _atomic(target: Path, write: Callable[[Path], Any]) -> Path:
    """Write through ``.<name>.<pid>.tmp``: write, fsync the file, rename, fsync the directory."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(target.parent)
    return target


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_results(path: str | Path, role: str = "results") -> pd.DataFrame:
    """A results table from ``results.parquet``, ``results.csv`` or a sweep output directory."""
    path = checked_path(path, role)
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
