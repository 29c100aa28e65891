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
from cost_model.model_spec import ModelSpec
from cost_model.training_spec import TrainingSpec
from hardware.schema import ClusterSpec
from cost_model.bf16_layers import has_bf16_layers
from cost_model.memory import GIB, fits_in_memory, fp8_primary_weights
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
    predicted_measured_kind_gib: float | None = None
    """The predicted memory in the quantity the source measured (``memory_kind``), to compare like with like."""
    memory_kind: str = "nvidia-smi"
    """What the source's memory figure is: ``nvidia-smi`` (device memory less the CUDA context, the
    printed prediction), ``reserved`` (torch.cuda.max_memory_reserved) or ``allocated``."""
    source_group: str = ""
    """The publication (or family of pages) the row comes from; leave-one-source-out leaves it out whole."""
    stack: str = "megatron-core"
    precision: str = "bf16"
    """The GEMM precision the row was priced with (:func:`precision_label`): ``bf16``, ``fp8 tensorwise``,
    ``fp8 mxfp8``, ``fp4 nvfp4``..., with ``+ fp8 weights`` (FP8 primary weights) and ``bf16 layers N+M``."""

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
        """Relative memory error in the quantity the source measured (``memory_kind``)."""
        if not self.measured_memory_gib:
            return None
        predicted = self.predicted_measured_kind_gib if self.predicted_measured_kind_gib is not None \
            else self.predicted_memory_gib
        return (predicted - self.measured_memory_gib) / self.measured_memory_gib

    @property
    def fits(self) -> bool:
        """The one fit rule of search and evaluate (:func:`cost_model.memory.fits_in_memory`)."""
        return bool(fits_in_memory(self.predicted_memory_gib * GIB, self.usable_memory_gib))


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


@dataclass
class PreparedRow:
    """A published run read once, to be priced many times (calibration trials change only the GPU's
    efficiencies and a few cost options)."""

    row: dict[str, Any]
    where: str
    model: ModelSpec
    training: TrainingSpec
    cluster: ClusterSpec
    records: list[dict[str, Any]]
    unknown: list[str]
    assumptions: list[str]
    plans: PlanArrays
    options: CostOptions
    """The cost options of the row's own conventions (its FLOP count), on top of the defaults."""

    @property
    def id(self) -> str:
        return self.row.get("id", "?")

    @property
    def source_group(self) -> str:
        return self.row.get("source_group") or self.id

    @property
    def has_throughput(self) -> bool:
        """Whether the source publishes tokens/s or TFLOP/s per GPU (what :attr:`ValidationRow.tflops_error`
        compares)."""
        measured = self.row.get("measured") or {}
        return bool(measured.get("tokens_per_s_per_gpu") or measured.get("tflops_per_gpu"))

    def price(self, gpu_overrides: dict[str, float] | None = None, options: CostOptions | None = None) -> ValidationRow:
        """The row priced with the GPU's fields replaced by ``gpu_overrides`` (field -> value)."""
        cluster = self.cluster
        if gpu_overrides:
            with warnings.catch_warnings():  # stated once, as an assumption, by prepare_row
                warnings.filterwarnings("ignore", message=".*do not fill whole", category=UserWarning)
                cluster = cluster.with_overrides({f"gpu.{k}": v for k, v in gpu_overrides.items()}, source=self.where)
        options = self.options if options is None else row_conventions(self.row, options)
        return _compare(self, evaluate(self.model, self.training, cluster, self.plans, options), cluster)


def prepare_row(row: dict[str, Any], source: str) -> PreparedRow:
    """Read a published run: its model, training setup, cluster (with the run's own overrides) and the
    plans to price (one per combination of the memory settings the source does not publish)."""
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
    for key in ("etp", "recompute_num_layers", "activation_offload_layers", "schedule"):
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
    return PreparedRow(row=row, where=where, model=model, training=training, cluster=cluster, records=records,
                       unknown=unknown, assumptions=assumptions, plans=PlanArrays.from_records(records),
                       options=row_conventions(row, CostOptions()))


ATTENTION_FLOP_COUNTS = ("causal", "full")


def row_conventions(row: dict[str, Any], options: CostOptions) -> CostOptions:
    """``options`` in the row's FLOP convention: ``measured.attention_flops: full`` for sources whose
    TFLOP/s count the whole s x s score matrix of causal attention (Narayanan et al. 2021's
    96*B*s*l*h^2*(1 + s/6h + ...), NeMo 2024, llm-foundry), ``causal`` (the default, plan-search's own
    count and Megatron-Core >= 0.14's) for those that count its unmasked half. Only the FLOP count
    changes, never the time."""
    count = (row.get("measured") or {}).get("attention_flops", "causal")
    if count not in ATTENTION_FLOP_COUNTS:
        raise InputError(str(row.get("id", "?")), "measured.attention_flops", f"{count!r} is not a FLOP count",
                         "write causal (half the s x s scores) or full")
    return options.with_changes(mfu_attention_causal=count == "causal")


def precision_group(label: str) -> str:
    """The GEMM precision and scaling recipe of a :func:`precision_label` ("fp4 nvfp4", "fp8 mxfp8",
    "bf16"), without what it adds after " + " (FP8 weights, BF16 layers): the groups errors are
    reported by."""
    return " ".join(label.split(" + ")[0].split())


def precision_label(training, plan: dict) -> str:
    """How the row's GEMMs and weights were priced: precision and scaling recipe, FP8 primary weights
    (:func:`cost_model.memory.fp8_primary_weights`), BF16 first/last layers (:mod:`cost_model.bf16_layers`)."""
    label = training.precision + (f" {training.quantized_recipe}" if training.quantized_recipe else "")
    if bool(fp8_primary_weights(training, PlanArrays.from_records([plan]))[0]):
        label += " + fp8 weights"
    if has_bf16_layers(training):
        label += f" + bf16 layers {training.num_layers_at_start_in_bf16}+{training.num_layers_at_end_in_bf16}"
    return label


def _compare(prepared: PreparedRow, metrics, cluster: ClusterSpec) -> ValidationRow:
    row, records, unknown = prepared.row, prepared.records, prepared.unknown
    num_gpus = int(row["cluster"]["num_gpus"])
    assumptions = list(prepared.assumptions)
    fitting = fits_in_memory(metrics.memory_bytes, cluster.gpu.memory_gib)
    pick = (int(np.argmax(np.where(fitting, metrics.tokens_per_s, -np.inf))) if fitting.any()
            else int(np.argmin(metrics.memory_bytes)))
    if unknown:
        chosen = ", ".join(f"{k}={records[pick][k]}" for k in unknown)
        how = "the fastest setting predicted to fit" if fitting.any() else "the least memory; none fits"
        assumptions.append(f"{chosen} (not published; {how})")
    measured = row.get("measured") or {}
    memory_kind = measured.get("memory_kind", "nvidia-smi")
    if measured.get("flops_counted", "model") == "hardware":
        predicted = metrics.hardware_flops_per_step[pick] / (metrics.step_time_s[pick] * num_gpus) / 1e12
    else:
        predicted = metrics.tflops_per_gpu[pick]
    plan = records[pick]
    layout = (f"TP{plan['tp']} PP{plan['pp']} DP{plan['dp']}" + (f" CP{plan['cp']}" if plan["cp"] > 1 else "")
              + (f" EP{plan['ep']}" if plan["ep"] > 1 else "") + (f" VP{plan['vpp']}" if plan["vpp"] > 1 else "")
              + (f" MB{plan['micro_batch']}" if plan["micro_batch"] > 1 else "")
              + (f" {plan['schedule']}" if plan.get("schedule") not in (None, "1f1b", "interleaved") else ""))
    return ValidationRow(id=row.get("id", "?"), verified=bool(row.get("verified")), num_gpus=num_gpus, layout=layout,
                         measured_tflops=measured.get("tflops_per_gpu"), predicted_tflops=float(predicted),
                         measured_tokens_per_gpu=measured.get("tokens_per_s_per_gpu"),
                         predicted_tokens_per_gpu=float(metrics.tokens_per_s[pick] / num_gpus),
                         measured_memory_gib=measured.get("memory_gib"),
                         predicted_memory_gib=float(metrics.memory_bytes[pick] / GIB),
                         predicted_measured_kind_gib=float(metrics.extras["memory_by_stage"].of_kind(
                             memory_kind)[pick, metrics.peak_stage[pick]] / GIB),
                         memory_kind=memory_kind,
                         usable_memory_gib=cluster.gpu.memory_gib, assumptions=assumptions,
                         source_group=prepared.source_group, stack=prepared.training.stack,
                         precision=precision_label(prepared.training, plan))


def validate_row(row: dict[str, Any], source: str, options: CostOptions | None = None) -> ValidationRow:
    """Price one published run as it is and compare with what was measured."""
    return prepare_row(row, source).price(options=options)


def validate(dataset: str | Path | None = None) -> list[ValidationRow]:
    """Every row of ``dataset`` (a published-runs YAML), or by default of both packaged datasets
    (``published_runs.yaml`` and the priceable rows of ``training_runs.csv``), priced as they are."""
    if dataset is None:
        from .training_runs import load_all_rows

        rows, _ = load_all_rows()
        return [validate_row(row, "datasets") for row in rows]
    return [validate_row(row, str(dataset)) for row in read_runs(dataset)]


def read_runs(dataset: str | Path) -> list[dict[str, Any]]:
    """The ``runs`` of a published-runs YAML (a one-line error when there are none)."""
    runs = read_yaml_mapping(dataset).get("runs")
    if not isinstance(runs, list) or not runs:
        raise InputError(dataset, "runs", "must be a non-empty list of published runs",
                         "see cost_model/calibration/data/published_runs.yaml")
    return runs


def _stats(subset: list[ValidationRow]) -> dict[str, float | int | None]:
    errors = np.array([r.tflops_error for r in subset if r.tflops_error is not None])
    memory = np.array([abs(r.memory_error) for r in subset if r.memory_error is not None])
    return {
        "rows": len(subset),
        "throughput_rows": int(len(errors)),
        "median_abs_throughput_error": float(np.median(np.abs(errors))) if len(errors) else None,
        "median_signed_throughput_error": float(np.median(errors)) if len(errors) else None,
        "worst_abs_throughput_error": float(np.max(np.abs(errors))) if len(errors) else None,
        "throughput_rows_within_10pct": int((np.abs(errors) <= 0.10).sum()),
        "throughput_rows_beyond_25pct": int((np.abs(errors) > 0.25).sum()),
        "memory_rows": int(len(memory)),
        "median_abs_memory_error": float(np.median(memory)) if len(memory) else None,
        "worst_abs_memory_error": float(np.max(memory)) if len(memory) else None,
        "rows_predicted_to_fit": sum(r.fits for r in subset),
    }


def summary(rows: list[ValidationRow]) -> dict[str, Any]:
    """Median (absolute and signed) and worst throughput error, how many rows are within 10% and beyond
    25%, and the memory error: for all rows, the verified rows, and each source group. These rows are
    priced with the calibrated parameters, which were fitted on them: the errors to believe on unseen
    runs are the leave-one-source-out ones of ``plan-search calibrate``."""
    groups: dict[str, list[ValidationRow]] = {}
    for row in rows:
        groups.setdefault(row.source_group, []).append(row)
    return {"all": _stats(rows), "verified": _stats([r for r in rows if r.verified]),
            "sources": {group: _stats(members) for group, members in sorted(groups.items())}}
