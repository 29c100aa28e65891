"""Selecting and joining rows of the serving cost model's per-plan results, whatever their layout.

:class:`~cost_model.serving.evaluate.ServingMetrics` holds, per plan, arrays (one value per plan),
dictionaries of such arrays (memory parts, step parts, rule violations) and nested dataclasses of them
(the memory breakdown, step times). The search keeps a few rows of each chunk of plans it prices;
:func:`take` and :func:`concat` select and join rows of any such structure, so the search does not
restate the metrics' fields (and keeps working as the cost model grows them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


def take(value: Any, index: np.ndarray, n: int) -> Any:
    """Rows ``index`` of every per-plan array (first axis of length ``n``) inside ``value``."""
    if isinstance(value, np.ndarray):
        return value[index] if value.ndim and value.shape[0] == n else value
    if isinstance(value, dict):
        return {key: take(item, index, n) for key, item in value.items()}
    if isinstance(value, (list, tuple)) and len(value) == n and n and not isinstance(value, str):
        picked = [value[int(i)] for i in np.atleast_1d(index)]
        return type(value)(picked) if isinstance(value, tuple) else picked
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "take") and callable(value.take) and _plan_like(value):
            return value.take(index)
        changes = {f.name: take(getattr(value, f.name), index, n) for f in dataclasses.fields(value)
                   if f.init}
        return dataclasses.replace(value, **changes) if changes else value
    return value


def concat(values: list[Any]) -> Any:
    """The rows of several same-shaped structures (results of :func:`take`) one after another."""
    first = values[0]
    if len(values) == 1:
        return first
    if isinstance(first, np.ndarray):
        return np.concatenate(values) if first.ndim else first
    if isinstance(first, dict):
        return {key: concat([v[key] for v in values]) for key in first}
    if isinstance(first, list):
        return [item for v in values for item in v]
    if isinstance(first, tuple) and not hasattr(first, "_fields"):
        return tuple(item for v in values for item in v)
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        changes = {f.name: concat([getattr(v, f.name) for v in values]) for f in dataclasses.fields(first) if f.init}
        return dataclasses.replace(first, **changes)
    return first


def _plan_like(value: Any) -> bool:
    """Plan arrays (ServingPlanArrays, InstanceArrays) select their own rows (they validate lengths)."""
    return type(value).__module__ == "cost_model.serving.plan"
