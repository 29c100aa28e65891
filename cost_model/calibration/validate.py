"""Predictions against published measurements: ``plan-search validate``.

Each row of the dataset (``cost_model/calibration/data/published_runs.yaml``; its README ``published_runs.md`` gives
every source) names a model, a training setup, a GPU and GPU count, the layout that was run and what
was measured. The row's layout is priced with the cost model as it is, and compared with the measured
throughput: tokens/s per GPU where the source publishes them (they need no FLOP convention:
Megatron-Bridge, for one, counts causal attention at half and adds the MTP layer, which this model's
FLOP count does not), else TFLOP/s per GPU in the row's own FLOP convention (``flops_counted: model``
= no recompute FLOPs, ``hardware`` = recompute counted, as Narayanan et al. 2021 and BLOOM report);
and with the measured memory where one is published. Nothing is fitted per row.
"""

from __future__ import annotations

import itertools
import warnings

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cost_model.evaluate import evaluate
from cost_model.memory import GIB
from cost_model.model_loader import build_training, model_input_from_mapping
from cost_model.options import CostOptions
from cost_model.plan import PlanArrays, module_mask
from hardware.errors import InputError, read_yaml_mapping
from hardware.loader import load_cluster

DEFAULT_DATASET = Path(__file__).resolve().parent / "data" / "published_runs.yaml"


@dataclass
class ValidationRow:
    id: str
    verified: bool
    num_gpus: int
    layout: str
    measured_tflops: float | None
    predicted_tflops: float
    measured_tokens_per_gpu: float | None
    predicted_tokens_per_gpu: float
    measured_memory_gib: float | None
    predicted_memory_gib: float
    usable_memory_gib: float
    assumptions: list[str]

    @property
    def tflops_error(self) -> float | None:
        """Relative throughput error, (predicted - measured) / measured: in tokens/s per GPU where the
        source publishes them, else in TFLOP/s per GPU."""
        if self.measured_tokens_per_gpu:
            return (self.predicted_tokens_per_gpu - self.measured_tokens_per_gpu) / self.measured_tokens_per_gpu
        if self.measured_tflops:
            return (self.predicted_tflops - self.measured_tflops) / self.measured_tflops
        return None

    @property
    def memory_error(self) -> float | None:
        if not self.measured_memory_gib:
            return None
        return (self.predicted_memory_gib - self.measured_memory_gib) / self.measured_memory_gib

    @property
    def fits(self) -> bool:
        return self.predicted_memory_gib <= self.usable_memory_gib


UNPUBLISHED_MEMORY_CHOICES = {"recompute": ("none", "selective", "full"), "zero_stage": (0, 1, 2, 3)}
"""When a source does not publish these memory settings, the row is priced with each combination and keeps
the fastest one predicted to fit (the least memory when none fits): the question is whether the layout
fits under some setting, as a user of the search would pick it."""


def _row_plan(row: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    plan = dict(row.get("plan") or {})
    assumptions = []
    for key, default in (("micro_batch", 1), ("vpp", 1), ("cp", 1), ("ep", 1), ("sequence_parallel", False)):
        if plan.get(key) is None:
            plan[key] = default
            assumptions.append(f"{key}={default} (not published)")
    for key in ("tp", "pp", "dp"):
        if not isinstance(plan.get(key), int):
            raise InputError(where, f"plan.{key}", "is missing or not a whole number", "give the published degree")
    return plan, assumptions


def validate_row(row: dict[str, Any], source: str, options: CostOptions | None = None) -> ValidationRow:
    where = f"{source}: {row.get('id', '?')}"
    model = model_input_from_mapping(dict(row["model"]), source=where, default_name=row.get("id", "model")).spec
    training = build_training(dict(row.get("training") or {}), source=where, model=model)
    cluster_info = row.get("cluster") or {}
    num_gpus = int(cluster_info["num_gpus"])
    cluster = load_cluster(cluster_info["gpu"])
    per_node = cluster.topology.gpus_per_node
    plan, assumptions = _row_plan(row, where)
    overrides: dict[str, Any] = {"topology.num_nodes": -(-num_gpus // per_node)}
    overrides.update(cluster_info.get("overrides") or {})      # what the run's cluster changes, e.g. its network
    overrides.update(cluster_info.get("gpu_overrides") or {})  # a calibration trial's efficiency
    with warnings.catch_warnings():  # the row states it once, as an assumption
        warnings.filterwarnings("ignore", message=".*do not fill whole", category=UserWarning)
        cluster = cluster.with_overrides(overrides, source=where)
    topology = cluster.topology
    if topology.domain_gpus not in (topology.scaleup_domain_gpus, num_gpus):
        assumptions.append(f"groups inside {topology.domain_gpus}-GPU slices of the {topology.scaleup_domain_gpus}"
                           "-GPU scale-up domains (the job does not fill whole racks)")
    record = {k: plan[k] for k in ("tp", "pp", "dp", "cp", "ep", "vpp", "micro_batch", "sequence_parallel")}
    for key in ("recompute_num_layers", "activation_offload_layers"):
        if plan.get(key) is not None:
            record[key] = plan[key]
    if plan.get("recompute_modules"):
        try:
            record["recompute_modules"] = module_mask(plan["recompute_modules"])
        except ValueError as error:
            raise InputError(where, "plan.recompute_modules", str(error), "use Megatron's module names") from None
    unknown = [key for key in UNPUBLISHED_MEMORY_CHOICES if plan.get(key) is None]
    choices = [dict(zip(unknown, values)) for values in itertools.product(*(UNPUBLISHED_MEMORY_CHOICES[k] for k in unknown))]
    records = [{**record, **{k: plan[k] for k in UNPUBLISHED_MEMORY_CHOICES if k not in unknown}, **choice}
               for choice in choices]
    metrics = evaluate(model, training, cluster, PlanArrays.from_records(records), options)
    fitting = metrics.memory_bytes / GIB <= cluster.gpu.memory_gib
    pick = (int(np.argmax(np.where(fitting, metrics.tokens_per_s, -np.inf))) if fitting.any()
            else int(np.argmin(metrics.memory_bytes)))
    if unknown:
        chosen = ", ".join(f"{k}={records[pick][k]}" for k in unknown)
        how = "the fastest setting predicted to fit" if fitting.any() else "the least memory; none fits"
        assumptions.append(f"{chosen} (not published; {how})")
    measured = row.get("measured") or {}
    if measured.get("flops_counted", "model") == "hardware":
        predicted = metrics.hardware_flops_per_step[pick] / (metrics.step_time_s[pick] * num_gpus) / 1e12
    else:
        predicted = metrics.tflops_per_gpu[pick]
    layout = (f"TP{plan['tp']} PP{plan['pp']} DP{plan['dp']}" + (f" CP{plan['cp']}" if plan["cp"] > 1 else "")
              + (f" EP{plan['ep']}" if plan["ep"] > 1 else "") + (f" VP{plan['vpp']}" if plan["vpp"] > 1 else ""))
    return ValidationRow(id=row.get("id", "?"), verified=bool(row.get("verified")), num_gpus=num_gpus, layout=layout,
                         measured_tflops=measured.get("tflops_per_gpu"), predicted_tflops=float(predicted),
                         measured_tokens_per_gpu=measured.get("tokens_per_s_per_gpu"),
                         predicted_tokens_per_gpu=float(metrics.tokens_per_s[pick] / num_gpus),
                         measured_memory_gib=measured.get("memory_gib"),
                         predicted_memory_gib=float(metrics.memory_bytes[pick] / GIB),
                         usable_memory_gib=cluster.gpu.memory_gib, assumptions=assumptions)


def validate(dataset: str | Path = DEFAULT_DATASET) -> list[ValidationRow]:
    data = read_yaml_mapping(dataset)
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise InputError(dataset, "runs", "must be a non-empty list of published runs", "see cost_model/calibration/data/published_runs.yaml")
    return [validate_row(row, str(dataset)) for row in runs]


def summary(rows: list[ValidationRow], calibration_ids: frozenset[str] = frozenset()
            ) -> dict[str, dict[str, float | int | None]]:
    """Median and worst absolute throughput and memory error, and how many throughput errors are within
    10% and beyond 25%: for the rows that fixed a calibrated constant (``calibration_ids``), for the
    verified rows held out from it, for all verified rows and for all rows."""
    result = {}
    groups = (("calibration", [r for r in rows if r.id in calibration_ids]),
              ("held_out", [r for r in rows if r.verified and r.id not in calibration_ids]),
              ("verified", [r for r in rows if r.verified]), ("all", rows))
    for label, subset in groups:
        if label == "calibration" and not calibration_ids:
            continue
        tflops = np.array([abs(r.tflops_error) for r in subset if r.tflops_error is not None])
        memory = np.array([abs(r.memory_error) for r in subset if r.memory_error is not None])
        result[label] = {
            "rows": len(subset),
            "throughput_rows": int(len(tflops)),
            "median_abs_throughput_error": float(np.median(tflops)) if len(tflops) else None,
            "worst_abs_throughput_error": float(np.max(tflops)) if len(tflops) else None,
            "throughput_rows_within_10pct": int((tflops <= 0.10).sum()),
            "throughput_rows_beyond_25pct": int((tflops > 0.25).sum()),
            "memory_rows": int(len(memory)),
            "median_abs_memory_error": float(np.median(memory)) if len(memory) else None,
            "worst_abs_memory_error": float(np.max(memory)) if len(memory) else None,
            "rows_predicted_to_fit": sum(r.fits for r in subset),
        }
    return result
