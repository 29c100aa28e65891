"""Uncertainty bands of a throughput prediction, from the cross-validated residuals of comparable runs.

The calibration (``plan-search calibrate``) fits the model's global parameters without one source group
at a time and predicts that group's rows (leave-one-source-out). For every comparable set of rows (same
software stack, GPU family and model class) it writes the 10th and 90th percentiles of the residual

    r = predicted / measured - 1        (throughput; r > 0: the model is too fast)

to the ``bands`` section of ``cost_model/calibration/fitted.yaml``::

    bands:
      - stack: megatron-core      # a cost_model.stacks name, or "*" = any stack
        gpu_family: hopper        # ampere | hopper | blackwell | cdna3 | "*"
        model_class: dense        # dense | moe | "*"
        rows: 41                  # rows the percentiles come from
        low: -0.14                # 10th percentile of r
        high: 0.07                # 90th percentile of r

Since ``low <= r <= high`` for 80% of comparable rows, ``measured = predicted / (1 + r)`` lies in
``[predicted / (1 + high), predicted / (1 + low)]``: :class:`Band` keeps those two multipliers of the
prediction (``low_factor``, ``high_factor``). Anything proportional to the step time (time to train,
GPU-hours, cost) scales by the inverse: it lies in ``[value * (1 + low), value * (1 + high)]``.

Which band a prediction gets (:func:`band_for`): the exact (stack, GPU family, model class) group when
it holds at least :data:`MIN_BAND_ROWS` rows, else the first group of at least that many rows among
(stack, family, ``*``), (stack, ``*``, ``*``), (``*``, ``*``, ``*``); no band when none qualifies.

The file: :func:`load_bands` reads ``PLAN_SEARCH_FITTED`` when that environment variable is set (an
empty value turns bands off), else ``fitted.yaml`` beside this module. A missing default file, or a
file without a ``bands`` section, means no bands (before the first calibration); a malformed one is a
one-line :class:`InputError`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hardware.errors import InputError, did_you_mean, read_yaml_mapping

from .stored import FITTED_FILE  # one name for the file, shared with the stored parameters

FITTED_ENV = "PLAN_SEARCH_FITTED"
"""Environment variable naming another fitted file (tests, a user's own calibration); empty = no bands."""

ANY = "*"
GPU_FAMILIES = ("ampere", "hopper", "blackwell", "cdna3")
MODEL_CLASSES = ("dense", "moe")

MIN_BAND_ROWS = 5
"""Fewest rows a group needs for its own band. The 10th and 90th percentiles of fewer than 5 values are
interpolations between the extreme residuals (numpy's linear rule puts the 10th percentile of 4 values at
0.3 of the way from the smallest to the next), so such a band says more about one run than about the model."""

# Marketing names of each family (NVIDIA's architecture whitepapers: A100 = GA100 Ampere; H100 / H200 /
# H800 / H20 / GH200 = GH100 Hopper; B200 / B300 / GB200 / GB300 = Blackwell; AMD's MI300X / MI325X /
# MI300A = CDNA 3). A name is matched on whole tokens, so "80GB" is not a "GB..." part.
_FAMILY_PATTERNS = (
    ("cdna3", re.compile(r"(?<![A-Z0-9])MI3\d\d[AX]?(?![0-9])|CDNA ?3")),
    ("blackwell", re.compile(r"(?<![A-Z0-9])G?B[123]\d\d(?![0-9])|BLACKWELL")),
    ("hopper", re.compile(r"(?<![A-Z0-9])G?H(100|200|800|20)(?![0-9])|HOPPER")),
    ("ampere", re.compile(r"(?<![A-Z0-9])A(100|800)(?![0-9])|AMPERE")),
)


def gpu_family(gpu_spec: Any) -> str:
    """The GPU's architecture family, from its name: ``ampere`` (A100, A800), ``hopper`` (H100, H200, H800,
    H20, GH200), ``blackwell`` (B200, B300, GB200, GB300), ``cdna3`` (MI300X, MI325X) or ``other``.

    The calibration data holds NVIDIA runs only, so ``cdna3`` (and ``other``) usually has no band of its
    own: :func:`band_for` then falls back to the stack's band over every GPU, and says so in its label."""
    name = str(getattr(gpu_spec, "name", gpu_spec)).upper()
    for family, pattern in _FAMILY_PATTERNS:
        if pattern.search(name):
            return family
    return "other"


def model_class(model_spec: Any) -> str:
    """``moe`` for a mixture-of-experts model, else ``dense``."""
    return "moe" if model_spec.is_moe else "dense"


@dataclass(frozen=True)
class Band:
    """Where the measured throughput of a prediction lies for 80% of comparable runs, as multipliers of
    the prediction: ``measured / predicted`` in ``[low_factor, high_factor]``."""

    low_factor: float
    """1 / (1 + 90th-percentile residual): the measured throughput is at least this times the prediction."""
    high_factor: float
    """1 / (1 + 10th-percentile residual)."""
    rows: int
    """Comparable rows the residuals come from."""
    group: tuple[str, str, str]
    """(stack, GPU family, model class) of the band's rows; ``*`` = any."""
    requested: tuple[str, str, str]
    """The (stack, family, class) the prediction asked for; differs from ``group`` after a fallback."""

    @property
    def label(self) -> str:
        """'megatron-core, hopper, dense' (the band's group), with the fallback said when there was one:
        'megatron-core, any GPU, any model (no band for cdna3 moe)'."""
        names = ("any stack", "any GPU", "any model")
        text = ", ".join(names[i] if part == ANY else part for i, part in enumerate(self.group))
        missing = [want for want, got in zip(self.requested, self.group) if got == ANY]
        return text + (f" (no band for {' '.join(missing)})" if missing else "")

    @property
    def plus_minus(self) -> float:
        """Half the band's width relative to the prediction: (high_factor - low_factor) / 2. The band is
        not symmetric (the multipliers are 1/(1+r)); this is the one figure the table shows."""
        return (self.high_factor - self.low_factor) / 2

    @property
    def percent_text(self) -> str:
        """'±9%': :attr:`plus_minus` in whole percent, halves rounded up."""
        return f"\u00b1{math.floor(self.plus_minus * 100 + 0.5)}%"

    def throughput_range(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of a throughput-like prediction (tokens/s, TFLOP/s, MFU): ``value x factor``."""
        values = np.asarray(values, dtype=float)
        return values * self.low_factor, values * self.high_factor

    def duration_range(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of a prediction proportional to the step time (time to train, GPU-hours, cost): a
        slower run takes longer and costs more, so the low end comes from the high throughput factor."""
        values = np.asarray(values, dtype=float)
        return values / self.high_factor, values / self.low_factor

    def record(self) -> dict[str, Any]:
        """The band in JSON output: its group, rows, the residual percentiles and the multipliers."""
        stack, family, klass = self.group
        return {"stack": stack, "gpu_family": family, "model_class": klass, "label": self.label,
                "rows": self.rows, "residual_low": round(1 / self.high_factor - 1, 6),
                "residual_high": round(1 / self.low_factor - 1, 6), "low_factor": round(self.low_factor, 6),
                "high_factor": round(self.high_factor, 6), "plus_minus": round(self.plus_minus, 6),
                "method": "leave-one-source-out residuals, 10th-90th percentile"}


@dataclass(frozen=True)
class BandEntry:
    """One row of the ``bands`` section: the residual percentiles of one group."""

    group: tuple[str, str, str]
    rows: int
    low: float
    high: float


BandTable = dict[tuple[str, str, str], BandEntry]


def fitted_path() -> Path | None:
    """The fitted file to read: ``PLAN_SEARCH_FITTED`` when set (None when it is set empty), else the
    packaged ``fitted.yaml``."""
    override = os.environ.get(FITTED_ENV)
    if override is None:
        return FITTED_FILE
    return Path(override) if override.strip() else None


def load_bands(path: str | Path | None = None) -> BandTable:
    """The ``bands`` section of the fitted file (default: :func:`fitted_path`), keyed by group.

    No file at the default place, or no ``bands`` section, is an empty table; so is an explicit ``path``
    that does not exist. A ``PLAN_SEARCH_FITTED`` naming a file that does not exist is an error (a typo
    there would otherwise silently drop every band)."""
    from_env = path is None and os.environ.get(FITTED_ENV) is not None
    path = fitted_path() if path is None else Path(path)
    if path is None:
        return {}
    if not path.exists():
        if from_env:
            raise InputError(FITTED_ENV, "", f"{path} does not exist",
                             f"point {FITTED_ENV} at a fitted.yaml, or set it empty for no bands")
        return {}
    document = read_yaml_mapping(path)
    section = document.get("bands")
    if section is None:
        return {}
    if not isinstance(section, list):
        raise InputError(path, "bands", f"must be a list of groups, got {type(section).__name__}",
                         "write one '- stack: ... gpu_family: ... model_class: ... rows: ... low: ... high: ...' "
                         "entry per group (or rerun plan-search calibrate --write)")
    table: BandTable = {}
    for index, entry in enumerate(section):
        band = _entry(entry, path, f"bands[{index}]")
        if band.group in table:
            raise InputError(path, f"bands[{index}]", f"repeats the group {'/'.join(band.group)}",
                             "keep one entry per (stack, gpu_family, model_class)")
        table[band.group] = band
    return table


_FIELDS = ("stack", "gpu_family", "model_class", "rows", "low", "high")


def _entry(entry: Any, path: Path, where: str) -> BandEntry:
    """One ``bands`` entry, checked: known family and class names, a positive row count, and
    -1 < low <= high (1 + r is measured/predicted's inverse, so it must stay positive)."""
    if not isinstance(entry, dict):
        raise InputError(path, where, f"must be a mapping, got {type(entry).__name__}",
                         "write stack, gpu_family, model_class, rows, low and high")
    unknown = sorted(set(map(str, entry)) - set(_FIELDS))
    if unknown:
        raise InputError(path, f"{where}.{unknown[0]}", f"is not a band field{did_you_mean(unknown[0], _FIELDS)}",
                         f"use only {', '.join(_FIELDS)}")
    missing = [name for name in _FIELDS if name not in entry]
    if missing:
        raise InputError(path, f"{where}.{missing[0]}", "is missing", f"give {', '.join(_FIELDS)}")
    stack = entry["stack"]
    if not isinstance(stack, str) or not stack.strip():
        raise InputError(path, f"{where}.stack", f"must be a stack name or '*', got {stack!r}",
                         "write e.g. megatron-core")
    for name, allowed in (("gpu_family", GPU_FAMILIES), ("model_class", MODEL_CLASSES)):
        value = entry[name]
        if value != ANY and value not in allowed:
            raise InputError(path, f"{where}.{name}", f"{value!r} is not one of {', '.join(allowed)} or '*'"
                             f"{did_you_mean(str(value), allowed)}", "fix the name")
    rows = entry["rows"]
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise InputError(path, f"{where}.rows", f"must be a positive whole number of rows, got {rows!r}",
                         "write how many rows the percentiles come from")
    values = {}
    for name in ("low", "high"):
        value = entry[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(path, f"{where}.{name}", f"must be a number (a residual such as -0.14), got {value!r}",
                             "write the percentile of predicted/measured - 1")
        if value <= -1:
            raise InputError(path, f"{where}.{name}", f"{value} would make a prediction of at most nothing "
                             "(predicted/measured - 1 is above -1)", "write the residual, not a percentage")
        values[name] = float(value)
    if values["low"] > values["high"]:
        raise InputError(path, f"{where}.low", f"{values['low']} is above high {values['high']}",
                         "low is the 10th percentile, high the 90th")
    return BandEntry(group=(stack, entry["gpu_family"], entry["model_class"]), rows=rows, **values)


def band_for(table: BandTable, stack: str, gpu_family: str, model_class: str) -> Band | None:
    """The band of a prediction for (stack, GPU family, model class): the first group of at least
    :data:`MIN_BAND_ROWS` rows among the exact group, (stack, family, *), (stack, *, *), (*, *, *);
    None when no group qualifies (no calibration yet, or too few comparable rows)."""
    requested = (stack, gpu_family, model_class)
    for group in (requested, (stack, gpu_family, ANY), (stack, ANY, ANY), (ANY, ANY, ANY)):
        entry = table.get(group)
        if entry is not None and entry.rows >= MIN_BAND_ROWS:
            return Band(low_factor=1 / (1 + entry.high), high_factor=1 / (1 + entry.low), rows=entry.rows,
                        group=group, requested=requested)
    return None


def band_for_run(model: Any, training: Any, gpu: Any, table: BandTable | None = None) -> Band | None:
    """The band of a run's predictions: its training stack (default Megatron-Core), the GPU's family and
    the model's class, from ``table`` (default :func:`load_bands`)."""
    table = load_bands() if table is None else table
    stack = getattr(training, "stack", "megatron-core")
    return band_for(table, stack, gpu_family(gpu), model_class(model))


def bands_section(stacks: Any, families: Any, classes: Any, residuals: Any) -> list[dict[str, Any]]:
    """The ``bands`` section for the fitted file, from one leave-one-source-out residual per row
    (``predicted / measured - 1``, each row predicted by the fit made without its source group) and the
    row's stack, GPU family and model class: one entry per group that has rows, at every level of the
    fallback (exact, (stack, family, *), (stack, *, *), (*, *, *)), with its row count and the 10th and
    90th percentiles of its residuals (numpy's linear interpolation between order statistics). Groups of
    fewer than :data:`MIN_BAND_ROWS` rows are written too (the file says how few rows there are) and
    :func:`band_for` passes over them. Sorted by group, ``*`` last."""
    stacks, families, classes = (np.asarray(values, dtype=object) for values in (stacks, families, classes))
    residuals = np.asarray(residuals, dtype=float)
    if not (len(stacks) == len(families) == len(classes) == len(residuals)):
        raise ValueError("bands_section needs one stack, GPU family, model class and residual per row")
    if not np.isfinite(residuals).all() or (residuals <= -1).any():
        raise ValueError("bands_section: every residual must be a finite predicted/measured - 1 above -1")
    levels = ((stacks, families, classes), (stacks, families, None), (stacks, None, None), (None, None, None))
    groups: dict[tuple[str, str, str], np.ndarray] = {}
    for level in levels:
        keys = [tuple(ANY if column is None else str(column[i]) for column in level) for i in range(len(residuals))]
        for key in set(keys):
            groups[key] = residuals[[k == key for k in keys]]
    section = []
    for key in sorted(groups, key=lambda k: tuple((part == ANY, part) for part in k)):
        values = groups[key]
        low, high = np.percentile(values, [10, 90])
        section.append({"stack": key[0], "gpu_family": key[1], "model_class": key[2], "rows": int(len(values)),
                        "low": round(float(low), 4), "high": round(float(high), 4)})
    return section
