"""Compare two sweep results (the nightly gate): which scenarios' best plan changed or moved.

For every scenario (joined on ``scenario_id``, which hashes what the sweep file says, so it is the same
from one night to the next) the best plan (rank 1, or the single ``no_fit``/``error`` row) of OLD and
NEW are compared. A scenario is listed when:

* its status changed (``ok`` -> ``no_fit``, ...);
* its best plan changed (the ``plan`` label: every parallel degree and knob);
* ``tokens_per_s``, ``memory_gib`` or ``cost_usd`` moved by more than ``threshold`` relative to OLD
  (|new - old| / |old|; a value that appears or disappears counts as moved); for serving scenarios also
  goodput and output tokens/s per GPU and $ per million output tokens.

Scenarios in only one of the tables are listed as added or removed but do not fail the gate: a sweep
that grew is not a regression. :attr:`Comparison.failed` is what the command turns into exit status 1.

Each listed scenario also says which of its inputs differ between OLD and NEW: every column that is
neither a result nor an identity column (the axis values, the resolved cluster and training figures,
``tool_version``), e.g. ``inputs: price_per_gpu_hour_usd 2.5 -> 3``. When none differs the line says
so, and whether ``inputs_hash`` (the hash of the whole resolved model, cluster and options) moved. A
changed cost model shows as ``tool_version`` (its ``+code.`` fingerprint, :mod:`scenarios.identity`); the
same hash with the same fingerprint means only a dependency or the machine changed; tables written before
the fingerprint existed blame the code or its cost model; a different hash
with equal columns means a model or cluster field the table does not show changed. That is the first
thing a person on call needs to know: did someone change the sweep, or did the tool change?
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from hardware.errors import InputError

from .identity import CODE_LABEL
from .rows import BREAKDOWN_COLUMNS, RESULT_COLUMNS
from .serving import SERVING_COLUMNS

COMPARED_METRICS = ("tokens_per_s", "memory_gib", "cost_usd")
SERVING_COMPARED_METRICS = ("goodput_requests_per_s_per_gpu", "output_tokens_per_s_per_gpu",
                            "cost_usd_per_m_output_tokens")
"""Serving scenarios' metrics (:mod:`scenarios.serving`), compared where both tables have them."""
REQUIRED_COLUMNS = ("scenario_id", "scenario_index", "status", "rank", "plan", "model", "cluster") + COMPARED_METRICS
DEFAULT_THRESHOLD = 0.05
IDENTITY_COLUMNS = ("sweep", "study", "scenario_index", "scenario_id", "inputs_hash")
"""Columns that identify a scenario or hash its inputs rather than being an input themselves."""


@dataclass
class Change:
    scenario_id: str
    label: str
    what: list[str]
    """One short phrase per difference, e.g. 'tokens_per_s -7.3% (12,674 -> 11,750)'."""


@dataclass
class Comparison:
    threshold: float
    compared: int
    changes: list[Change] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.changes)

    def text(self) -> str:
        lines = []
        if self.changes:
            width = max(len(c.label) for c in self.changes)
            lines.append(f"{'scenario':{width}s}  change")
            for change in self.changes:
                for i, what in enumerate(change.what):
                    lines.append(f"{change.label if i == 0 else '':{width}s}  {what}")
        for name, labels in (("added", self.added), ("removed", self.removed)):
            if labels:
                lines.append(f"{len(labels)} scenario(s) {name} (not gated): " + "; ".join(labels))
        lines.append(f"{self.compared} scenarios compared, {len(self.changes)} changed beyond "
                     f"{self.threshold:.1%} or in their best plan")
        return "\n".join(lines)


def best_plans(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """The best row of each scenario, indexed by scenario_id (InputError when a column is missing)."""
    for column in REQUIRED_COLUMNS:
        if column not in frame.columns:
            raise InputError(source, column, "column is missing", "pass a results table written by 'plan-search sweep'")
    rank = pd.to_numeric(frame["rank"], errors="coerce")
    best = frame[(rank == 1) | (frame["status"] != "ok")]
    if best["scenario_id"].duplicated().any():
        duplicate = best.loc[best["scenario_id"].duplicated(), "scenario_id"].iloc[0]
        raise InputError(source, "scenario_id", f"{duplicate} has more than one best row",
                         "pass one sweep's results, not several concatenated")
    return best.set_index("scenario_id")


def compare_tables(old: pd.DataFrame, new: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD,
                   old_source: str = "OLD", new_source: str = "NEW") -> Comparison:
    """See the module docstring."""
    if not (isinstance(threshold, (int, float)) and threshold >= 0 and math.isfinite(threshold)):
        raise InputError("command line", "--threshold", f"must be a non-negative fraction, got {threshold!r}",
                         "e.g. --threshold 0.05 for 5%")
    old_best, new_best = best_plans(old, old_source), best_plans(new, new_source)
    common = [sid for sid in new_best.sort_values("scenario_index").index if sid in old_best.index]
    inputs = input_columns(old, new)
    result = Comparison(threshold=threshold, compared=len(common))
    result.added = [_label(new_best.loc[s]) for s in new_best.index if s not in old_best.index]
    result.removed = [_label(old_best.loc[s]) for s in old_best.index if s not in new_best.index]
    for sid in common:
        before, after = old_best.loc[sid], new_best.loc[sid]
        what = []
        if before["status"] != after["status"]:
            what.append(f"status {before['status']} -> {after['status']}")
        elif _text(before["plan"]) != _text(after["plan"]):
            what.append(f"best plan {_text(before['plan'])} -> {_text(after['plan'])}")
        serving = [m for m in SERVING_COMPARED_METRICS if m in before.index and m in after.index]
        for metric in COMPARED_METRICS + tuple(serving):
            moved = _moved(_float(before[metric]), _float(after[metric]), threshold)
            if moved:
                what.append(f"{metric} {moved}")
        if what:
            what.append(_input_changes(before, after, inputs))
            result.changes.append(Change(scenario_id=sid, label=_label(after), what=what))
    return result


def input_columns(old: pd.DataFrame, new: pd.DataFrame) -> list[str]:
    """The columns that record a scenario's inputs, in NEW's order (then OLD's): everything that is not a
    result column of the search and not an identity column."""
    excluded = set(RESULT_COLUMNS) | set(IDENTITY_COLUMNS) | set(SERVING_COLUMNS)
    return [c for c in dict.fromkeys(list(new.columns) + list(old.columns)) if c not in excluded]


def _input_changes(before: pd.Series, after: pd.Series, columns: list[str]) -> str:
    """'inputs: a 1 -> 2; b x -> y', or why no input column differs."""
    changed = []
    for column in columns:
        old = before[column] if column in before.index else None
        new = after[column] if column in after.index else None
        if column not in before.index or column not in after.index:
            changed.append(f"{column} {'(absent)' if column not in before.index else _fmt(old)} -> "
                           f"{'(absent)' if column not in after.index else _fmt(new)}")
        elif not _same(old, new):
            changed.append(f"{column} {_fmt(old)} -> {_fmt(new)}")
    if changed:
        return "inputs: " + "; ".join(changed)
    same_hash = ("inputs_hash" in before.index and "inputs_hash" in after.index
                 and _text(before["inputs_hash"]) == _text(after["inputs_hash"]))
    if same_hash:
        if CODE_LABEL in _text(after.get("tool_version", "")):
            # The hash covers the code fingerprint too: same code, same inputs, different numbers.
            return ("inputs: none changed (same inputs_hash, same code): a dependency (ortools, numpy, ...) or "
                    "the machine changed")
        return "inputs: none changed (same inputs_hash): the code or its cost model changed"
    return ("inputs: no recorded input column changed, but inputs_hash did: a model or cluster field the table "
            "does not show changed")


def _same(a: Any, b: Any) -> bool:
    if _is_missing(a) or _is_missing(b):
        return _is_missing(a) and _is_missing(b)
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _moved(old: float, new: float, threshold: float) -> str | None:
    """'+7.3% (a -> b)' when the value moved by more than the threshold, else None."""
    if math.isnan(old) and math.isnan(new):
        return None
    if math.isnan(old) or math.isnan(new):
        return f"{_fmt(old)} -> {_fmt(new)}"
    if old == new:
        return None
    relative = (new - old) / abs(old) if old else math.inf
    if abs(relative) <= threshold:
        return None
    return f"{relative:+.1%} ({_fmt(old)} -> {_fmt(new)})"


def _label(row: pd.Series) -> str:
    """model on cluster plus the scenario's other axis values, for a person to recognise the scenario."""
    parts = [f"{row['model']} on {row['cluster']}"]
    for name in row.index:
        if "." in name and name not in BREAKDOWN_COLUMNS and not _is_missing(row[name]):
            parts.append(f"{name}={_fmt(row[name])}")
    for name in ("seq_length", "global_batch_tokens", "workload", "objective"):
        if name in row.index and not _is_missing(row[name]):
            parts.append(f"{name}={_fmt(row[name])}")
    return ", ".join(parts)


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _float(value: Any) -> float:
    return float("nan") if _is_missing(value) else float(value)


def _text(value: Any) -> str:
    return "-" if _is_missing(value) else str(value)


def _fmt(value: Any) -> str:
    if _is_missing(value):
        return "-"
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)
