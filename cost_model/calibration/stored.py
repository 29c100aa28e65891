"""The fitted parameters as the last ``plan-search calibrate --write`` stored them in ``fitted.yaml``.

Read by the cost model where a fitted value has no other home (the host's kernel issue time, the
default of :class:`cost_model.options.CostOptions`) and by reports that say whether a GPU runs on fitted
values. The GPU and stack efficiencies themselves live in their presets (``hardware/presets``,
``cost_model/presets/stacks.yaml``), where ``--write`` puts them too."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from hardware.errors import read_yaml_mapping

FITTED_FILE = Path(__file__).with_name("fitted.yaml")
"""Where ``plan-search calibrate --write`` stores the fitted parameters, cross-validation and bands."""


@lru_cache(maxsize=4)
def stored_parameters(path: Path = FITTED_FILE) -> dict[str, float]:
    """Parameter name -> fitted value; empty when nothing is stored."""
    if not path.exists():
        return {}
    document = read_yaml_mapping(path)
    entries = document.get("parameters") or {}
    return {name: float(entry["value"]) for name, entry in entries.items()
            if isinstance(entry, dict) and isinstance(entry.get("value"), (int, float))}


def stored_parameter(name: str, default: float) -> float:
    """The stored value of ``name``, or ``default`` (a cited prior) before the first calibration."""
    return stored_parameters().get(name, default)
