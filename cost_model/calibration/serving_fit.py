"""Serving calibration: few physical parameters of the serving cost model fitted on the published serving
runs (``data/serving_runs.csv``, :mod:`cost_model.calibration.serving_runs`), judged on sources the fit
never saw.

The estimator is the training calibration's (:mod:`cost_model.calibration.fit`: MAP in log space with
cited priors, Huber loss at 2 sigma, rows weighted 1/sqrt(rows of their source), Gauss-Newton; leave one
``source_group`` out by the chord method), on a :class:`~cost_model.calibration.fit.FitProblem` of its own:

* rows are *observations*: one measured quantity of one run (a Splitwise configuration gives two, its
  prompt time and its per-token time; a TensorRT-LLM run gives its max-load output tokens/s per GPU;
  MLPerf runs, priced through a prompt length that is only an upper bound, are reported beside the fit,
  not in it (:data:`PROMPT_BOUND_WORKLOADS`));
* parameters (:data:`PARAMETERS`) are fields of :class:`cost_model.serving.options.ServingOptions`, which
  reads their fitted values from ``serving_fitted.yaml`` as its defaults, so ``plan-search serve`` prices
  with exactly what was cross-validated here.

Predictions (:func:`predict`), with the serving cost model as it is and nothing per row:

* static batch (Splitwise): TTFT = one prefill step over batch x ISL prompt tokens
  (``InstancePricing.prefill``); TPOT = one decode step at the batch with the mean context ISL + OSL/2
  (``InstancePricing.decode_step``; attention reads grow linearly with context, so the mean step is the
  step at the mean context);
* max load (TensorRT-LLM, MLPerf Offline): ``evaluate_serving``'s max-load output tokens/s per GPU of the
  published layout. The TensorRT-LLM pages' engines run the batch and token limits ``trtllm-bench``
  derived for them (:mod:`~cost_model.calibration.trtllm_bench`; the KV pool the serving model gives the
  engine caps the batch, as the engine's scheduler admits only what its pool holds); MLPerf's, which the
  source does not print, are a grid (:data:`~cost_model.calibration.serving_runs.UNPUBLISHED_MAX_LOAD_CHOICES`).
  Of the candidates left (an unpublished EP degree or KV dtype) the fastest predicted to fit is compared;
* MLPerf Server: ``evaluate_serving`` at the run's request rate, p50 TTFT and TPOT.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from .bands import gpu_family
from .calibrate import SourceReport, parameter_lines, parameter_records, source_lines, source_records
from .fit import Fit, FitProblem, Fold, Parameter, fit, leave_one_source_out
from .serving_runs import MLPERF_WORKLOADS, ServingRun, UNPUBLISHED_MAX_LOAD_CHOICES, load_serving_runs

SERVING_FITTED_FILE = Path(__file__).with_name("serving_fitted.yaml")
"""Where ``plan-search calibrate --serving --write`` stores the fitted serving parameters (read by
:class:`cost_model.serving.options.ServingOptions`)."""

HELD_AT_PRIOR = {
    "step_overhead_us": "the constant per-step host floor shows only in low-batch CUDA-graph decode, which no run of "
                        "the table measures (Splitwise decodes eagerly; the max-load tables run hundreds of requests "
                        "a step, where it cannot be told from the per-request time). Fitted anyway it reaches 16.7 ms, "
                        "a floor under every low-load TPOT that graph-mode engines do not show (Llama 3 8B on one H100 "
                        "decodes at batch 1 in ~6.5-7 ms): it stays at its cited prior, 1 ms.",
    "eager_kernel_issue_us": "only Splitwise's eager profile measures kernel issue from eager PyTorch, and it reads "
                             "19 us per kernel (the full fit, host and GPU time adding without an overlap "
                             "scheduler), the prior's 20 us. Left to the other sources (the fold without Splitwise) "
                             "it reaches 80 us: TensorRT-LLM's mixed prefill-decode steps, eager past the captured "
                             "graphs, cost more than the model gives them, and the issue time would carry that "
                             "unmodelled cost into every eager engine. It stays at its cited prior, 20 us.",
}
"""ServingOptions fields the calibration leaves at their priors, and why."""

OPTION_PARAMETERS: tuple[Parameter, ...] = (
    Parameter("step_overhead_per_request_us", 10.0, 1.0, 0.5, 500.0,
              "CPU time of one engine step per running request (inputs, block-table row, sampling, stop checks, "
              "detokenization)",
              "ServingOptions prior: the vLLM v0.6.0 performance note attributes most of a large batch's step CPU "
              "time to per-request Python work; no per-request figure published (wide prior)"),
    Parameter("moe_gemm_share", 0.53, 0.3, 0.2, 1.0,
              "share of the dense GEMM rate a serving engine's fused-MoE grouped GEMMs reach where compute bound "
              "(their weight streaming stays at the HBM rate)",
              "published fused-MoE kernel rates over the presets' dense rate at the same GPU and precision: vLLM "
              "PR #44818 (H200 BF16 Triton, 4096 tokens, 328 TFLOP/s) 0.49, VeOmni PR #460 (H100 BF16 "
              "torch._grouped_mm, 242) 0.36, Liger-Kernel PR #1294 (H100 BF16 Triton, 523) 0.78, DeepGEMM PR #323 "
              "(H200 FP8 MoE layer with EP, 675) 0.57: geometric mean 0.53, log-sd 0.32 "
              "(ServingOptions.moe_gemm_share)"),
)
"""Parameters that are :class:`~cost_model.serving.options.ServingOptions` fields (it reads their fitted
values from ``serving_fitted.yaml`` as its defaults)."""

HBM_FAMILIES = ("ampere", "hopper", "blackwell")
GEMM_FAMILY_PRECISIONS = (("ampere", "bf16"), ("hopper", "bf16"), ("hopper", "fp8"), ("blackwell", "fp4"))
"""GPU family x weight precision pairs the table measures (MI300X rows are not priced; no Blackwell run is
BF16 or FP8 in it): one serving GEMM departure each."""

GPU_PARAMETERS: tuple[Parameter, ...] = (
    *(Parameter(f"hbm.{family}", 1.0, 0.08, 0.6, 1.15,
                f"{family} GPUs' achieved decode HBM bandwidth relative to the preset's hbm_efficiency (0.85 of peak)",
                "STREAM-like kernels reach 80-90% of HBM peak on every generation (the presets' hbm_efficiency): "
                "prior 1 +- 8%")
      for family in HBM_FAMILIES),
    *(Parameter(f"gemm.{family}.{precision}", 1.0, 0.15, 0.5, 1.5,
                f"{family} {precision} serving GEMMs relative to the preset's training-fitted gemm_efficiency"
                f"{'' if precision == 'bf16' else '_' + precision}",
                "the same cuBLAS/CUTLASS GEMMs as training at prefill sizes (cost_model/calibration/fitted.yaml): "
                "prior 1 +- 15%")
      for family, precision in GEMM_FAMILY_PRECISIONS),
)
"""Per GPU family (x precision) departures of the presets' efficiencies: ServingOptions.gpu_departures
reads them from ``serving_fitted.yaml`` and the step pricing applies them
(:func:`cost_model.serving.options.fitted_gpu`)."""

PARAMETERS: tuple[Parameter, ...] = OPTION_PARAMETERS + GPU_PARAMETERS
"""Every fitted serving parameter."""

BY_NAME = {p.name: p for p in PARAMETERS}

MAX_LOAD = "output_tokens_per_s_per_gpu"


@dataclass(frozen=True)
class Observation:
    """One measured quantity of one run: what the fit calls a row."""

    run: ServingRun
    quantity: str
    measured: float

    @property
    def source_group(self) -> str:
        return self.run.source_group

    @property
    def id(self) -> str:
        return f"{self.run.id}:{self.quantity}"


@dataclass(frozen=True)
class PricedObservation:
    observation: Observation
    predicted: float
    fits: bool
    """The candidate compared is predicted to fit in memory (weights, one max-length request, the batch)."""
    layout: str

    @property
    def error(self) -> float:
        """(predicted - measured) / measured."""
        return (self.predicted - self.observation.measured) / self.observation.measured


FITTED_QUANTITIES = {"max_load": (MAX_LOAD,), "static_batch": ("ttft_ms", "tpot_ms"), "mlperf_server": ()}
"""Quantities of each kind of run the fit compares. MLPerf Server's latencies are reported
(:data:`REPORTED_QUANTITIES`), not fitted: two runs, priced through a prompt-length distribution the
table does not publish (the workload preset takes the 1,024-token cut), at a rate near capacity where a
few percent of throughput moves the queueing delay without bound."""

PROMPT_BOUND_WORKLOADS = frozenset(MLPERF_WORKLOADS.values())
"""Workload presets whose prompt length is an upper bound, not a mean: MLPerf's OpenOrca prompts are cut at
1,024 tokens and the dataset's mean prompt is not published in the sources read, so the presets take
the cut. A run priced through one (MLPerf Offline as well as Server) is reported, not fitted or counted
in the targets: fitted, the bound's extra prefill work reads as slow GEMMs (the two Offline runs come
out about 60% slow) and pulls the GPU families' GEMM shares wherever they are held out."""


def fitted_runs(runs: list[ServingRun]) -> list[ServingRun]:
    """The runs the fit and the targets use: every kind with fitted quantities, priced through a workload
    whose lengths are known (:data:`PROMPT_BOUND_WORKLOADS`)."""
    return [r for r in runs if FITTED_QUANTITIES[r.kind] and r.workload not in PROMPT_BOUND_WORKLOADS]


REPORTED_QUANTITIES = {"max_load": (MAX_LOAD,), "static_batch": ("ttft_ms", "tpot_ms"),
                       "mlperf_server": (MAX_LOAD, "ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p99")}

MAX_LOG_ERROR = math.log(100.0)
"""A prediction 100 times off (or infinite: a rate the plan cannot carry) counts as 100 times off in the
fit: Huber's loss is linear there already, this only keeps the objective finite."""


def observations(runs: list[ServingRun], quantities: dict[str, tuple[str, ...]] = FITTED_QUANTITIES
                 ) -> list[Observation]:
    return [Observation(run, q, run.measured[q]) for run in runs for q in quantities[run.kind]
            if run.measured.get(q)]


def _bounded_error(priced: "PricedObservation") -> float:
    """The observation's relative error with its log bounded by :data:`MAX_LOG_ERROR` (the fit's residual)."""
    error = priced.error
    if not math.isfinite(error) or error > math.expm1(MAX_LOG_ERROR):
        return math.expm1(MAX_LOG_ERROR)
    return max(error, math.expm1(-MAX_LOG_ERROR))


# --- pricing -------------------------------------------------------------------------------------------

@dataclass
class _Prepared:
    model: Any
    cluster: Any
    instances: Any
    """Candidate InstanceArrays (one per combination of unpublished settings)."""
    workload: Any


def _engine_limits(run: ServingRun, model: Any, gpu: Any, kv_dtype: str) -> list[tuple[int, int]]:
    """(max_num_seqs per attention rank, max_num_batched_tokens) candidates of a max-load run: trtllm-bench's
    own derivation for the TensorRT-LLM pages (one pair: :func:`~cost_model.calibration.trtllm_bench.
    benchmark_settings` at the run's KV dtype, the batch bounded by the rank's share of the dataset's
    requests), else every combination of :data:`UNPUBLISHED_MAX_LOAD_CHOICES`."""
    if not run.trtllm_bench:
        return [(seqs, chunk) for seqs in UNPUBLISHED_MAX_LOAD_CHOICES["max_num_seqs"]
                for chunk in UNPUBLISHED_MAX_LOAD_CHOICES["max_num_batched_tokens"]]
    from cost_model.serving.options import ServingOptions

    from .trtllm_bench import benchmark_settings, running_requests_per_rank

    lay = run.layout
    # NVML's whole-device total: the preset's usable memory plus the CUDA context it leaves out.
    device_gib = gpu.memory_gib + ServingOptions().cuda_context_gib
    settings = benchmark_settings(model, device_gib, run.weight_precision, kv_dtype, lay["tp"] * lay["attn_dp"],
                                  lay["pp"], run.isl, run.osl)
    return [(running_requests_per_rank(settings.max_batch_size, run.num_requests, lay["attn_dp"]),
             settings.max_num_tokens)]


def _candidates(run: ServingRun, model: Any, gpu: Any) -> list[dict[str, Any]]:
    lay = run.layout
    eps = [lay["ep"]] if lay["ep"] else sorted({1, lay["tp"] * lay["attn_dp"]})
    base = {"tp": lay["tp"], "pp": lay["pp"], "attn_dp": lay["attn_dp"], "weight_precision": run.weight_precision,
            "cuda_graphs": run.cuda_graphs}
    if run.kind == "static_batch":
        return [{**base, "ep": 1, "moe_tp": lay["tp"] * lay["attn_dp"], "kv_dtype": run.kv_dtypes[0],
                 "max_num_seqs": run.batch, "max_num_batched_tokens": int(run.batch * run.isl)}]
    out = []
    for ep in eps:
        for kv in run.kv_dtypes:
            for seqs, chunk in _engine_limits(run, model, gpu, kv):
                out.append({**base, "ep": ep, "moe_tp": (lay["tp"] * lay["attn_dp"]) // ep, "kv_dtype": kv,
                            "max_num_seqs": seqs, "max_num_batched_tokens": chunk})
    return out


_PREPARED: dict[str, _Prepared] = {}


def prepare(run: ServingRun) -> _Prepared:
    """The run's model, cluster, candidate instances and workload, read once."""
    if run.id in _PREPARED:
        return _PREPARED[run.id]
    from cost_model.model_loader import load_model
    from cost_model.serving.plan import InstanceArrays
    from cost_model.serving.workload import load_workload, workload_from_mapping
    from hardware.loader import load_cluster

    model = load_model(run.model).spec
    cluster = load_cluster(run.gpu)
    per_node = cluster.topology.gpus_per_node
    with warnings.catch_warnings():  # a run smaller than a rack: groups inside slices of it, said once
        warnings.filterwarnings("ignore", message=".*do not fill whole", category=UserWarning)
        cluster = cluster.with_overrides({"topology.num_nodes": -(-run.num_gpus // per_node)}, source=run.id)
    candidates = _candidates(run, model, cluster.gpu)
    instances = InstanceArrays.from_columns({k: [c[k] for c in candidates] for k in candidates[0]})
    if run.workload:
        workload = load_workload(run.workload)
    else:
        mapping: dict[str, Any] = {"input_tokens": int(run.isl), "output_tokens": int(run.osl)}
        workload = workload_from_mapping(mapping, source=run.id, default_name=run.id)
    _PREPARED[run.id] = _Prepared(model=model, cluster=cluster, instances=instances, workload=workload)
    return _PREPARED[run.id]


def options_at(values: dict[str, float]):
    """ServingOptions with the fitted fields and GPU family departures at ``values``."""
    from cost_model.serving.options import ServingOptions

    departures = tuple(sorted((p.name, values[p.name]) for p in GPU_PARAMETERS if p.name in values))
    return ServingOptions().with_changes(**{p.name: values[p.name] for p in OPTION_PARAMETERS if p.name in values},
                                         gpu_departures=departures)


def _fits(memory) -> np.ndarray:
    return np.asarray(memory.weights_fit & memory.kv_fits_one_request & memory.prefill_workspace_fits, dtype=bool)


_MEMO: dict[tuple, dict[str, Any]] = {}


def predict(run: ServingRun, values: dict[str, float]) -> dict[str, Any]:
    """Predicted quantities of ``run`` at parameter ``values``: ``{quantity: value, "fits": bool,
    "layout": text}`` (memoised on the run and the values: one run answers several observations)."""
    key = (run.id, tuple(sorted(values.items())))
    if key in _MEMO:
        return _MEMO[key]
    from cost_model.serving.memory import instance_memory
    from cost_model.serving.step import price_instances

    prepared = prepare(run)
    # the family departures travel in the options, as the product reads them; the engine's scheduler is the run's
    options = options_at(values).with_changes(overlap_scheduler=run.overlap_scheduler,
                                              kv_reserved_to_completion=run.kv_reserved_to_completion)
    cluster = prepared.cluster
    out: dict[str, Any] = {}
    if run.kind == "static_batch":
        pricing = price_instances(prepared.model, cluster, prepared.instances, options)
        batch = np.asarray([run.batch], dtype=float)
        out["ttft_ms"] = float(pricing.prefill(batch * run.isl, 0.0, request_tokens=run.isl).total_s[0] * 1e3)
        out["tpot_ms"] = float(pricing.decode_step(batch, np.asarray([run.isl + run.osl / 2])).total_s[0] * 1e3)
        memory = instance_memory(prepared.model, cluster.gpu, prepared.instances, int(run.isl + run.osl), options)
        # a static batch holds every request's whole context at once
        batch_fits = memory.kv_capacity_tokens >= run.batch * (run.isl + run.osl)
        out["fits"] = bool((_fits(memory) & batch_fits)[0])
        out["layout"] = run.layout_text
    else:
        from cost_model.serving.evaluate import evaluate_serving
        from cost_model.serving.plan import ServingPlanArrays

        plans = ServingPlanArrays.aggregated(prepared.instances, run.replicas)
        metrics = evaluate_serving(prepared.model, cluster, prepared.workload, plans, options,
                                   target_rate_per_s=run.request_rate_per_s if run.kind == "mlperf_server" else None)
        memory = instance_memory(prepared.model, cluster.gpu, prepared.instances, int(prepared.workload.model_len),
                                 options)
        fits = _fits(memory)
        throughput = np.asarray(metrics.max_load_output_tokens_per_s_per_gpu if run.kind == "max_load"
                                else metrics.output_tokens_per_s_per_gpu, dtype=float)
        pick = int(np.argmax(np.where(fits, throughput, -np.inf))) if fits.any() else int(np.argmax(throughput))
        out[MAX_LOAD] = float(throughput[pick])
        for q in ("ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p99"):
            out[q] = float(np.asarray(getattr(metrics, q))[pick])
        out["fits"] = bool(fits.any())
        record = prepared.instances.record(pick)
        out["layout"] = (f"{run.layout_text} EP{record['ep']} kv {record['kv_dtype']} seqs {record['max_num_seqs']} "
                         f"chunk {record['max_num_batched_tokens']}")
    if len(_MEMO) > 20_000:
        _MEMO.clear()
    _MEMO[key] = out
    return out


def price(observation: Observation, values: dict[str, float]) -> PricedObservation:
    predicted = predict(observation.run, values)
    return PricedObservation(observation=observation, predicted=predicted[observation.quantity],
                             fits=predicted["fits"], layout=predicted["layout"])


def row_parameters(observation: Observation) -> list[str]:
    """The parameters an observation depends on: the host's per-request time always, the fused-MoE GEMM share
    for a MoE model, its GPU family's HBM departure wherever decode runs (not a prompt time), its family x
    precision GEMM departure."""
    run = observation.run
    names = ["step_overhead_per_request_us"]
    if run.is_moe:  # only MoE models run fused-MoE grouped GEMMs
        names.append("moe_gemm_share")
    family = _family(run)
    if observation.quantity != "ttft_ms" and f"hbm.{family}" in BY_NAME:
        names.append(f"hbm.{family}")
    if f"gemm.{family}.{run.weight_precision}" in BY_NAME:
        names.append(f"gemm.{family}.{run.weight_precision}")
    return names


@lru_cache(maxsize=64)
def _family_of_preset(preset: str) -> str:
    from hardware.loader import load_cluster

    return gpu_family(load_cluster(preset).gpu)


def _family(run: ServingRun) -> str:
    return _family_of_preset(run.gpu)


def serving_gpu_overrides(gpu: Any, values: dict[str, float]) -> dict[str, float]:
    """The GPU fields the family departures in ``values`` change, and to what
    (:func:`cost_model.serving.options.fitted_gpu`, which the serving model applies)."""
    from cost_model.serving.options import GPU_DEPARTURE_PREFIXES, fitted_gpu

    departures = tuple(sorted((k, v) for k, v in values.items() if k.startswith(GPU_DEPARTURE_PREFIXES)))
    changed = fitted_gpu(gpu, departures)
    return {name: getattr(changed, name) for name in ("hbm_efficiency", "gemm_efficiency", "gemm_efficiency_fp8",
                                                      "gemm_efficiency_fp4")
            if getattr(changed, name, None) != getattr(gpu, name, None)}


SERVING = FitProblem(parameters=PARAMETERS, row_parameters=row_parameters, price=price, error=_bounded_error)
"""The serving calibration problem."""


def priors() -> dict[str, float]:
    return {p.name: p.prior for p in PARAMETERS}


# --- calibration and its report -------------------------------------------------------------------------

@dataclass
class ServingCalibration:
    fit: Fit
    folds: list[Fold]
    sources: list[SourceReport]
    held_out: list[PricedObservation]
    """Every observation priced by the fit made without its source."""
    fitted: list[PricedObservation]
    """Every observation priced by the fit on all sources."""
    at_priors: list[PricedObservation]
    targets: dict[str, Any] = field(default_factory=dict)


def _median_abs(priced: list[PricedObservation]) -> float | None:
    return float(np.median([abs(p.error) for p in priced])) if priced else None


def generation_pairs(priced: list[PricedObservation]) -> tuple[int, int]:
    """(pairs ordered as measured, pairs) over runs of one source, model, quantity and workload on two
    different GPUs: whether the faster GPU is predicted faster. Max-load tokens/s per GPU compares each
    GPU's published layout and precision (the tables print the best one per GPU); Splitwise's latencies
    compare the same TP degree and batch. Throughput is better higher, times lower (the order of the
    values is compared either way); a pair measured within 2% is a tie and not counted."""
    groups: dict[tuple, list[PricedObservation]] = {}
    for p in priced:
        run = p.observation.run
        if run.kind == "mlperf_server":  # latencies at a rate near capacity: not a generation's speed
            continue
        key = (run.source_group, run.model, p.observation.quantity, run.isl, run.osl, run.workload)
        if run.kind == "static_batch":
            key += (run.batch, run.layout["tp"])
        groups.setdefault(key, []).append(p)
    right = total = 0
    for members in groups.values():
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                a, b = members[i], members[j]
                if a.observation.run.gpu == b.observation.run.gpu:
                    continue
                ma, mb = a.observation.measured, b.observation.measured
                if abs(ma - mb) <= 0.02 * max(ma, mb):
                    continue
                total += 1
                right += (ma > mb) == (a.predicted > b.predicted)
    return right, total


def targets(held_out: list[PricedObservation], reported: list[PricedObservation] = ()) -> dict[str, Any]:
    """The issue's targets on the held-out predictions; ``reported`` (runs not fitted) count only in
    whether every published configuration fits."""
    max_load = [p for p in held_out if p.observation.quantity == MAX_LOAD and p.observation.run.kind == "max_load"]
    dense = [p for p in max_load if not p.observation.run.is_moe]
    moe = [p for p in max_load if p.observation.run.is_moe]
    tpot = [p for p in held_out if p.observation.quantity == "tpot_ms"]
    ttft = [p for p in held_out if p.observation.quantity == "ttft_ms"]
    ttft_low = [p for p in ttft if p.observation.run.batch == 1]
    right, pairs = generation_pairs(held_out)
    runs = {p.observation.run.id: p.fits for p in [*held_out, *reported]}
    return {
        "max_load_dense": {"rows": len(dense), "median_abs_error": _median_abs(dense), "target": 0.15},
        "max_load_moe": {"rows": len(moe), "median_abs_error": _median_abs(moe), "target": 0.25},
        "tpot_at_layout_and_batch": {"rows": len(tpot), "median_abs_error": _median_abs(tpot), "target": 0.15},
        "ttft_low_load": {"rows": len(ttft_low), "median_abs_error": _median_abs(ttft_low), "target": 0.20,
                          "what": "Splitwise prompt time of one request (batch 1)"},
        "ttft_static_batches": {"rows": len(ttft), "median_abs_error": _median_abs(ttft),
                                "what": "Splitwise prompt time at every batch (batch x ISL tokens in one step)"},
        "gpu_generation_pairs": {"ordered": right, "pairs": pairs,
                                 "share": right / pairs if pairs else None, "target": 0.90},
        "published_configurations_fit": {"fit": sum(runs.values()), "runs": len(runs)},
    }


def calibrate_serving(runs: list[ServingRun] | None = None, progress: Callable[[str], None] | None = None,
                      max_iterations: int = 6, fold_iterations: int = 3) -> ServingCalibration:
    """Fit :data:`PARAMETERS` on every observation of ``runs`` (default: the packaged table), cross-validate
    by source and report the issue's targets on the held-out predictions."""
    if runs is None:
        runs, _ = load_serving_runs()
    fitted_set = fitted_runs(runs)
    rows = observations(fitted_set)
    at_priors = [price(o, priors()) for o in rows]
    full = fit(rows, max_iterations=max_iterations, progress=progress, problem=SERVING)
    folds = leave_one_source_out(full, max_iterations=fold_iterations, progress=progress)
    held: dict[str, PricedObservation] = {}
    for fold in folds:
        for priced in fold.held_out:
            held[priced.observation.id] = priced
    held_out = [held[o.id] for o in rows]
    fitted = [price(o, full.values) for o in rows]
    sources = []
    for group in sorted({o.source_group for o in rows}):
        members = [i for i, o in enumerate(rows) if o.source_group == group]
        errors = np.array([held_out[i].error for i in members])
        sources.append(SourceReport(
            source_group=group, rows=len(members),
            fitted_median_abs=float(np.median([abs(fitted[i].error) for i in members])),
            held_out_median_abs=float(np.median(np.abs(errors))),
            held_out_median_signed=float(np.median(errors)),
            held_out_worst_abs=float(np.max(np.abs(errors)))))
    fold_values = {fold.source_group: fold.values for fold in folds}
    reported = [price(o, fold_values.get(o.source_group, full.values))
                for o in observations([r for r in runs if id(r) not in {id(f) for f in fitted_set}],
                                      REPORTED_QUANTITIES)]
    return ServingCalibration(fit=full, folds=folds, sources=sources, held_out=held_out, fitted=fitted,
                              at_priors=at_priors,
                              targets={**targets(held_out, reported), "reported_only": reported_lines(reported)})


def reported_lines(priced: list[PricedObservation]) -> list[dict[str, Any]]:
    """Runs reported but not fitted (MLPerf Offline and Server): each reported quantity, measured and
    predicted (by the fit without the run's source where there is one)."""
    return [{"run": p.observation.run.id, "kind": p.observation.run.kind, "quantity": p.observation.quantity,
             "measured": p.observation.measured, "predicted": p.predicted if math.isfinite(p.predicted) else None,
             "error": p.error if math.isfinite(p.predicted) else None} for p in priced]


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def fitted_document(calibration: ServingCalibration) -> str:
    document = {
        "parameters": parameter_records(PARAMETERS, calibration.fit),
        "cross_validation": {
            "method": "leave-one-source-out: fit without a source_group, price its observations",
            "targets": _round(calibration.targets),
            "sources": source_records(calibration.sources),
        },
    }
    header = ("# Written by `plan-search calibrate --serving --write` (cost_model/calibration/serving_fit.py); do not "
              "edit by hand.\n# parameters: ServingOptions fields fitted on data/serving_runs.csv, with their priors; "
              "ServingOptions reads them as defaults.\n# cross_validation: the issue's targets and each source's "
              "errors with that source left out of the fit.\n")
    return header + yaml.safe_dump(document, sort_keys=False, width=120)


def write_serving(calibration: ServingCalibration, path: Path | None = None) -> Path:
    """Store the fitted serving parameters (atomically, as ``calibrate --write`` stores its files)."""
    from .calibrate import _store
    from .stored import stored_parameters

    path = path or SERVING_FITTED_FILE
    _store({path: fitted_document(calibration)})
    stored_parameters.cache_clear()
    try:
        from cost_model.serving.options import serving_fitted_parameters
        serving_fitted_parameters.cache_clear()
    except ImportError:  # the serving options module is older than this file
        pass
    return path


def report_lines(calibration: ServingCalibration) -> list[str]:
    """The calibration as text: parameters, each source held out, the issue's targets."""
    lines = [*parameter_lines(PARAMETERS, calibration.fit), "", *source_lines(calibration.sources)]
    lines.append("")
    lines.extend(target_lines(calibration.targets))
    return lines


def target_lines(t: dict[str, Any]) -> list[str]:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    def verdict(x: float | None, target: float) -> str:
        return "" if x is None else ("  met" if x <= target else "  MISSED")

    lines = ["targets (leave-one-source-out predictions):"]
    for key, label in (("max_load_dense", "max-load tokens/s/GPU, dense"), ("max_load_moe", "max-load tokens/s/GPU, MoE"),
                       ("tpot_at_layout_and_batch", "TPOT at layout and batch"), ("ttft_low_load", "TTFT at low load")):
        e = t[key]
        lines.append(f"  {label:34s} median |error| {pct(e['median_abs_error']):>6s} of {e['rows']:4d} "
                     f"(target <= {e['target']:.0%}){verdict(e['median_abs_error'], e['target'])}")
    e = t["ttft_static_batches"]
    lines.append(f"  {'TTFT, every static batch':34s} median |error| {pct(e['median_abs_error']):>6s} of {e['rows']:4d}")
    g = t["gpu_generation_pairs"]
    lines.append(f"  {'GPU generations ordered':34s} {g['ordered']} of {g['pairs']} pairs ({pct(g['share'])}, target >= 90%)"
                 f"{verdict(None if g['share'] is None else 1 - g['share'], 0.10)}")
    f = t["published_configurations_fit"]
    lines.append(f"  {'published configurations that fit':34s} {f['fit']} of {f['runs']}")
    for e in t.get("reported_only") or []:
        predicted = "cannot carry the rate" if e["predicted"] is None else f"{e['predicted']:.4g} ({e['error']:+.0%})"
        scenario = "Server" if e["kind"] == "mlperf_server" else "Offline"
        lines.append(f"  MLPerf {scenario} (reported, not fitted) {e['run']} {e['quantity']}: measured "
                     f"{e['measured']:.4g}, predicted {predicted}")
    return lines


# --- validate --serving -----------------------------------------------------------------------------------

def stored_values(path: Path | None = None) -> dict[str, float]:
    """The fitted values ``serving_fitted.yaml`` holds (each parameter's prior where it holds none)."""
    from .stored import stored_parameters

    stored = stored_parameters(path or SERVING_FITTED_FILE)
    return {p.name: stored.get(p.name, p.prior) for p in PARAMETERS}


def validate_serving(runs: list[ServingRun] | None = None, values: dict[str, float] | None = None
                     ) -> list[PricedObservation]:
    """Every observation priced as the serving model stands (the stored fitted values, else the priors)."""
    if runs is None:
        runs, _ = load_serving_runs()
    values = stored_values() if values is None else values
    return [price(o, values) for o in observations(runs, REPORTED_QUANTITIES)]


def stored_cross_validation(path: Path | None = None) -> dict[str, Any] | None:
    """The leave-one-source-out report the last ``calibrate --serving --write`` stored, if any."""
    from hardware.errors import read_yaml_mapping

    path = path or SERVING_FITTED_FILE
    return read_yaml_mapping(path).get("cross_validation") if path.exists() else None


def validation_lines(priced: list[PricedObservation], cross: dict[str, Any] | None) -> list[str]:
    """``validate --serving`` as text: one line per observation, the median error per source and quantity,
    the targets on these in-sample predictions and, when stored, on the held-out ones."""
    lines = [f"{'run':46s} {'GPU':12s} {'layout':40s} {'quantity':28s} {'meas':>9s} {'pred':>9s} {'error':>7s} fits"]
    for p in priced:
        run = p.observation.run
        predicted, error = ((f"{p.predicted:9.4g}", f"{p.error:+7.0%}") if math.isfinite(p.predicted)
                            else ("overload", "-"))  # the plan cannot carry the run's request rate
        lines.append(f"{run.id[:46]:46s} {run.gpu[:12]:12s} {p.layout[:40]:40s} {p.observation.quantity[:28]:28s} "
                     f"{p.observation.measured:9.4g} {predicted:>9s} {error:>7s} {'yes' if p.fits else 'NO'}")
    lines.append("")
    lines.append(f"{'source':20s} {'quantity':28s} {'rows':>5s} {'median |err|':>12s} {'signed':>8s}")
    keys = sorted({(p.observation.source_group, p.observation.quantity) for p in priced})
    for group, quantity in keys:
        errors = np.array([p.error for p in priced if (p.observation.source_group, p.observation.quantity)
                           == (group, quantity)])
        finite = errors[np.isfinite(errors)]
        if not len(finite):
            lines.append(f"{group[:20]:20s} {quantity[:28]:28s} {len(errors):5d} {'overload':>12s}")
            continue
        lines.append(f"{group[:20]:20s} {quantity[:28]:28s} {len(errors):5d} {np.median(np.abs(finite)):12.1%} "
                     f"{np.median(finite):+8.1%}" + (f"  ({len(errors) - len(finite)} overloaded)"
                                                    if len(finite) < len(errors) else ""))
    lines.append("")
    lines.extend(line.replace("leave-one-source-out predictions", "in-sample: the stored fit on every source")
                 for line in target_lines(targets(priced)))
    if cross and cross.get("targets"):
        lines.append("")
        lines.extend(target_lines(cross["targets"]))
        lines.append(f"{'source':20s} {'rows':>5s} {'held out |err|':>14s} {'signed':>8s}")
        for s in cross.get("sources", []):
            lines.append(f"{s['source_group'][:20]:20s} {s['rows']:5d} {s['held_out_median_abs_error']:14.1%} "
                         f"{s['held_out_median_signed_error']:+8.1%}")
    return lines


def validation_json(priced: list[PricedObservation], cross: dict[str, Any] | None) -> dict[str, Any]:
    return {"rows": [{"run": p.observation.run.id, "source_group": p.observation.source_group,
                      "quantity": p.observation.quantity, "measured": p.observation.measured,
                      "predicted": p.predicted if math.isfinite(p.predicted) else None,
                      "error": p.error if math.isfinite(p.error) else None, "fits": p.fits, "layout": p.layout,
                      "assumptions": list(p.observation.run.assumptions)} for p in priced],
            "targets": targets(priced), "cross_validation": cross}
