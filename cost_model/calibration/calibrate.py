"""Calibration of GEMM efficiencies against published runs, with held-out rows.

Why only this constant: on the verified runs of the dataset, BF16 predictions on A100 are within about
10% with the microbenchmark GEMM efficiency, while every FP8 run (Megatron-Bridge 25.11, H100, B200,
GB200) is over-predicted by 50-65% with the FP8 peak at the same fraction: FP8 GEMMs in Transformer
Engine lose more to scaling, casts and transposes than BF16 GEMMs do. One number per GPU,
``gemm_efficiency_fp8``, is fitted; nothing is fitted per row.

Method: for each GPU, the rows in :data:`CALIBRATION_ROWS` (the largest dense model of each GPU,
Llama 3.1 405B) fix ``gemm_efficiency_fp8`` (or ``gemm_efficiency`` for BF16) so that the median signed
log error of those rows is zero (bisection: predicted throughput rises monotonically with the
efficiency). Every other row of that GPU and precision is held out and reported separately. GPUs
without a BF16 row take a BF16 value derived from their FP8 one (:data:`DERIVED_BF16`). ``plan-search calibrate`` prints both; ``--write`` stores the
values in the GPU presets with the rows they came from.

A second constant, the host's time to issue one kernel (:mod:`cost_model.host`,
``CostOptions.host_kernel_issue_us``), is fitted the same way on :data:`HOST_CALIBRATION_ROWS`: the
most host-bound run whose recipe certainly ran without CUDA graphs. Every other
mixture-of-experts row is held out. The GEMM efficiencies come from dense rows the host term does
not touch, so the two fits do not interact.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cost_model.options import CostOptions
from hardware.errors import read_yaml_mapping

from .validate import DEFAULT_DATASET, ValidationRow, validate_row

CALIBRATION_ROWS = {
    ("h100-sxm", "fp8"): ["megatron-bridge-25.11-h100-llama3.1-405b-fp8"],
    ("b200", "fp8"): ["megatron-bridge-25.11-b200-llama3.1-405b-fp8"],
    ("gb200-nvl72", "fp8"): ["megatron-bridge-25.11-gb200-llama3.1-405b-fp8"],
    ("gb300-nvl72", "fp8"): ["megatron-bridge-25.11-gb300-llama3.1-405b-fp8"],
    ("h100-sxm", "bf16"): ["dgxc-nemo-24.09-h100-llama3.1-405b-bf16-576gpu"],
}
"""Rows that fix each (GPU, precision)'s GEMM efficiency; all other rows of that GPU and precision are
held out. FP8 fits ``gemm_efficiency_fp8``; BF16 (and FP16) fits ``gemm_efficiency``."""

PARAMETER = {"fp8": "gemm_efficiency_fp8", "bf16": "gemm_efficiency"}

HOST_CALIBRATION_ROWS = ["megatron-bridge-25.11-b200-qwen3-235b-a22b-fp8mx"]
"""Rows that fix ``host_kernel_issue_us``: Qwen3-235B-A22B on 64 B200 at one 4096-token sequence per
micro-batch with 16 experts per GPU. Both recipe versions with its layout run it without CUDA graphs
and with the all-to-all dispatcher; its GPU work alone would run about 1.6x faster than measured."""

DERIVED_BF16 = {"b200": "h100-sxm", "gb200-nvl72": "h100-sxm", "gb300-nvl72": "h100-sxm"}
"""GPUs with an FP8 calibration row but no BF16 one: their BF16 efficiency is derived so that their
BF16 to FP8 achieved-rate ratio equals the reference GPU's calibrated ratio (on H100 the calibrated
BF16 rate is about 0.65 of the FP8 rate). Cross-check: BF16 GEMM microbenchmarks on B200 reach
1.42-1.51 PFLOP/s, 0.63-0.67 of the dense peak (pytorch/ao pull request 2427)."""

PROXY_PRESETS = {"h100-sxm": (("h800-sxm", "same die"), ("h200-sxm", "same die")),
                 "b200": (("b300", "same HGX dense peaks, no B300 row"),)}
"""Presets that receive another GPU's calibrated values, and why: H800 and H200 are the same GH100 die at
the same clocks (H800 differs in NVLink, H200 in HBM), so their GEMMs run at the same fraction of peak.
HGX B300 has no calibration row; it takes HGX B200's values, whose dense BF16/FP8 peaks it shares (its
GB300 sibling runs at 1,400 W, not 1,100 W)."""


def calibration_row_ids() -> frozenset[str]:
    """Every row that fixes a calibrated constant (GEMM efficiencies and the host's kernel issue time)."""
    return frozenset(i for ids in CALIBRATION_ROWS.values() for i in ids) | frozenset(HOST_CALIBRATION_ROWS)


def _precision_class(row: dict[str, Any]) -> str:
    precision = (row.get("training") or {}).get("precision", "bf16")
    return "fp8" if precision == "fp8" else "bf16"


@dataclass
class CalibratedGPU:
    gpu: str
    precision: str
    parameter: str
    value: float
    calibration: list[ValidationRow]
    held_out: list[ValidationRow]
    derived_from: str | None = None
    """For a derived value: the reference GPU whose BF16/FP8 ratio it takes."""


def _rows_with(row: dict[str, Any], overrides: dict[str, float]) -> dict[str, Any]:
    """``row`` with its GPU's efficiency parameters replaced by ``overrides`` (parameter -> value)."""
    changed = dict(row)
    cluster = dict(row["cluster"])
    cluster["gpu_overrides"] = {f"gpu.{parameter}": value for parameter, value in overrides.items()}
    changed["cluster"] = cluster
    return changed


def _signed_log_error(rows: list[dict[str, Any]], overrides: dict[str, float], source: str) -> float:
    errors = [math.log(1 + r.tflops_error)
              for r in (validate_row(_rows_with(row, overrides), source) for row in rows)]
    return float(np.median(errors))


MAX_ROUNDS = 10


def calibrate(dataset: str | Path = DEFAULT_DATASET, tolerance: float = 1e-4) -> list[CalibratedGPU]:
    """Fit every (GPU, precision) of :data:`CALIBRATION_ROWS` and derive :data:`DERIVED_BF16`.

    An FP8 run's LM head runs at the BF16 rate, so an FP8 fit depends a little on the GPU's BF16 value,
    which for the derived GPUs depends on the FP8 fit in turn: the fits are repeated, each round pricing
    the other parameter at the previous round's value, until no value changes (3 decimals; two or three
    rounds). The result does not depend on the values the presets held before.
    """
    runs = read_yaml_mapping(dataset)["runs"]
    fitted: dict[str, dict[str, float]] = {}
    results: list[CalibratedGPU] = []
    for _ in range(MAX_ROUNDS):
        results = _calibration_round(runs, str(dataset), tolerance, fitted)
        values: dict[str, dict[str, float]] = {}
        for result in results:
            values.setdefault(result.gpu, {})[result.parameter] = result.value
        if values == fitted:
            break
        fitted = values
    return results


def _calibration_round(runs: list[dict[str, Any]], source: str, tolerance: float,
                       fitted: dict[str, dict[str, float]]) -> list[CalibratedGPU]:
    by_id = {row["id"]: row for row in runs}
    results = []
    for (gpu, precision), ids in CALIBRATION_ROWS.items():
        rows = [by_id[i] for i in ids if i in by_id]
        if not rows:
            continue
        parameter = PARAMETER[precision]
        others = {k: v for k, v in fitted.get(gpu, {}).items() if k != parameter}

        def error(v: float) -> float:
            return _signed_log_error(rows, {**others, parameter: v}, source)

        # Predicted throughput rises with the efficiency.
        value = round(_zero_of(error, 0.05, 1.0, tolerance, rising=True), 3)
        overrides = {**others, parameter: value}
        held = _held_out_rows(runs, gpu, precision, ids)
        results.append(CalibratedGPU(
            gpu=gpu, precision=precision, parameter=parameter, value=value,
            calibration=[validate_row(_rows_with(r, overrides), source) for r in rows],
            held_out=[validate_row(_rows_with(r, overrides), source) for r in held]))
    results.extend(_derived_bf16(results, runs, source))
    return results


def _zero_of(error: Callable[[float], float], low: float, high: float, tolerance: float, rising: bool) -> float:
    """Where a monotonic ``error`` crosses zero between ``low`` and ``high`` (bisection)."""
    while high - low > tolerance:
        middle = (low + high) / 2
        if (error(middle) > 0) == rising:
            high = middle
        else:
            low = middle
    return (low + high) / 2


def _held_out_rows(runs: list[dict[str, Any]], gpu: str, precision: str, ids: list[str]) -> list[dict[str, Any]]:
    return [row for row in runs if row["cluster"]["gpu"] == gpu and row["id"] not in ids
            and _precision_class(row) == precision
            and _has_throughput(row)]


def _derived_bf16(results: list[CalibratedGPU], runs: list[dict[str, Any]], source: str) -> list[CalibratedGPU]:
    """BF16 efficiencies of :data:`DERIVED_BF16` from their FP8 value and the reference's ratio."""
    from hardware.loader import load_cluster

    fitted = {(r.gpu, r.precision): r.value for r in results}
    derived = []
    for gpu, reference in DERIVED_BF16.items():
        if (gpu, "fp8") not in fitted or (reference, "fp8") not in fitted or (reference, "bf16") not in fitted:
            continue
        ref, own = load_cluster(reference).gpu, load_cluster(gpu).gpu
        ratio = (fitted[(reference, "bf16")] * ref.peak_tflops_bf16) / (fitted[(reference, "fp8")] * ref.peak_tflops_fp8)
        value = round(fitted[(gpu, "fp8")] * own.peak_tflops_fp8 * ratio / own.peak_tflops_bf16, 3)
        held = _held_out_rows(runs, gpu, "bf16", [])
        derived.append(CalibratedGPU(
            gpu=gpu, precision="bf16", parameter=PARAMETER["bf16"], value=value, calibration=[],
            held_out=[validate_row(_rows_with(r, {PARAMETER["fp8"]: fitted[(gpu, "fp8")], PARAMETER["bf16"]: value}), source)
                      for r in held],
            derived_from=reference))
    return derived


def write_presets(results: list[CalibratedGPU], presets_dir: Path | None = None) -> list[Path]:
    """Store each fitted value in its GPU preset, citing the calibration rows."""
    presets_dir = presets_dir or Path(str(resources.files("hardware").joinpath("presets")))
    written = []
    targets = [(result, gpu, why) for result in results
               for gpu, why in ((result.gpu, ""), *PROXY_PRESETS.get(result.gpu, ()))]
    for result, gpu, why in targets:
        path = presets_dir / f"{gpu}.yaml"
        text = path.read_text(encoding="utf-8")
        key = result.parameter
        via = f" ({result.gpu}'s: {why})" if why else ""
        if result.derived_from:
            line = (f"  {key}: {result.value:<8}# derived by `plan-search calibrate`: {result.gpu}'s calibrated FP8 "
                    f"rate x {result.derived_from}'s calibrated BF16/FP8 rate ratio{via}")
        else:
            line = (f"  {key}: {result.value:<8}# calibrated by `plan-search calibrate` on "
                    f"{', '.join(r.id for r in result.calibration)}{via} (cost_model/calibration/data/published_runs.yaml)")
        if re.search(rf"^  {key}:.*$", text, flags=re.M):
            text = re.sub(rf"^  {key}:.*$", line, text, count=1, flags=re.M)
        else:
            text = re.sub(r"^(  gemm_efficiency:.*)$", lambda m: m.group(1) + "\n" + line, text, count=1, flags=re.M)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


@dataclass
class CalibratedHost:
    value_us: float
    calibration: list[ValidationRow]
    held_out: list[ValidationRow]


def calibrate_host(dataset: str | Path = DEFAULT_DATASET, tolerance_us: float = 0.01) -> CalibratedHost | None:
    """Fit ``host_kernel_issue_us`` on :data:`HOST_CALIBRATION_ROWS` (median signed log error zero)."""
    from cost_model.model_loader import model_input_from_mapping

    runs = read_yaml_mapping(dataset)["runs"]
    rows = [row for row in runs if row["id"] in HOST_CALIBRATION_ROWS]
    if not rows:
        return None
    source = str(dataset)

    def error(value_us: float) -> float:
        options = CostOptions(host_kernel_issue_us=value_us)
        return float(np.median([math.log(1 + validate_row(row, source, options).tflops_error) for row in rows]))

    # Predicted throughput falls as issuing gets slower.
    value = round(_zero_of(error, 0.0, 200.0, tolerance_us, rising=False), 1)
    options = CostOptions(host_kernel_issue_us=value)
    moe = [row for row in runs if row["id"] not in HOST_CALIBRATION_ROWS and _has_throughput(row)
           and model_input_from_mapping(dict(row["model"]), source=source).spec.is_moe]
    return CalibratedHost(value_us=value,
                          calibration=[validate_row(row, source, options) for row in rows],
                          held_out=[validate_row(row, source, options) for row in moe])


def _has_throughput(row: dict[str, Any]) -> bool:
    measured = row.get("measured") or {}
    return bool(measured.get("tflops_per_gpu") or measured.get("tokens_per_s_per_gpu"))
