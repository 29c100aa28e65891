"""Serving scenarios in sweeps and procurement studies.

A sweep with a ``workload`` axis is a serving sweep: each combination of model, cluster, overrides,
workload and objective is one ``plan-search serve`` search. Its fixed settings sit under ``serving:``::

    name: serving-nightly
    objective: goodput_per_gpu           # a serving objective (goodput_per_gpu, cost_per_mtok, min_gpus,
                                         # throughput_per_gpu)
    serving: {gpus: 8, modes: [agg], weight_precisions: [bf16, fp8], kv_dtypes: [bf16],
              target_rate_per_s: 10}     # any of these; gpus is N or "A-B"
    axes:
      model: [llama3-70b]
      cluster: [h100x8, h200x8]
      workload: [chat-1k-1k, rag-8k-1k]  # presets or files (relative to the sweep file)

A procurement study's ``serving:`` section (``scenarios.procurement``) prices the same cluster options
for a serving fleet beside the training run: ``{workload: chat-1k-1k, model: ..., target_rate_per_s: 50,
objective: min_gpus, ...}``.

Rows: the training table's status, rank, ``plan`` (:func:`optimizer.serving.report.plan_label`) and
``plan_num_gpus`` columns, then :data:`SERVING_COLUMNS` (units in the names). A scenario where nothing
meets the SLO is a ``no_fit`` row whose ``binding_constraint`` is the rule the most plans break alone
and whose ``reason`` counts the rules broken (the relaxations of ``plan-search serve`` are searched
again there, not in a sweep).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hardware.errors import InputError, did_you_mean

SERVING_KEYS = ("gpus", "modes", "weight_precisions", "kv_dtypes", "target_rate_per_s", "target_concurrency",
                "max_model_len")
"""Fixed settings of a serving sweep's ``serving:`` section."""
STUDY_SERVING_KEYS = ("workload", "model", "objective", "top_k") + SERVING_KEYS
"""Keys of a procurement study's ``serving:`` section."""
SERVING_COLUMNS = ("mode", "prefill_layout", "prefill_instances", "decode_layout", "decode_instances",
                   "weight_precision", "kv_dtype", "max_num_seqs", "max_num_batched_tokens", "cuda_graphs",
                   "kv_capacity_tokens", "max_concurrency", "ttft_ms_p50", "ttft_ms_p90", "ttft_ms_p99",
                   "tpot_ms_p50", "tpot_ms_p90", "tpot_ms_p99", "output_tokens_per_s_per_gpu",
                   "tokens_per_s_per_user", "goodput_requests_per_s_per_gpu", "max_load_output_tokens_per_s_per_gpu",
                   "min_gpus_for_target", "cost_usd_per_m_output_tokens", "cost_usd_per_m_input_tokens", "bottleneck",
                   "num_serving_candidates", "num_meeting_slo")
"""Result columns of a serving scenario (after the training table's status, rank, plan and plan_num_gpus)."""


def serving_settings(raw: Any, source: str, where: str = "serving") -> dict[str, Any]:
    """A ``serving:`` section checked key by key (one InputError naming ``where.key``)."""
    from cost_model.serving.plan import KV_DTYPES, MODES, WEIGHT_PRECISIONS

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(source, where, "must be a mapping of serving settings", "e.g. serving: {gpus: 8, modes: [agg]}")
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        field = f"{where}.{key}"
        if key not in SERVING_KEYS:
            raise InputError(source, field, f"unknown serving setting{did_you_mean(str(key), SERVING_KEYS)}",
                             f"known settings: {', '.join(SERVING_KEYS)}")
        if key == "gpus":
            text = str(value)
            if isinstance(value, bool) or not re.fullmatch(r"\d{1,9}(-\d{1,9})?", text):
                raise InputError(source, field, f"must be a GPU count N or a range \"A-B\", got {value!r}",
                                 "e.g. gpus: 8 or gpus: \"8-32\"")
            settings[key] = text
        elif key in ("modes", "weight_precisions", "kv_dtypes"):
            known = {"modes": MODES, "weight_precisions": WEIGHT_PRECISIONS, "kv_dtypes": KV_DTYPES}[key]
            values = value if isinstance(value, list) else [value]
            bad = [v for v in values if v not in known]
            if bad or not values:
                raise InputError(source, field, f"must list names among {', '.join(known)}, got {value!r}",
                                 f"e.g. {key}: [{known[0]}]")
            settings[key] = tuple(v for v in known if v in values)
        else:
            integer = key in ("target_concurrency", "max_model_len")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                    or (integer and value != int(value)):
                raise InputError(source, field, f"must be a positive {'whole ' if integer else ''}number, got {value!r}",
                                 "fix the value")
            settings[key] = int(value) if integer else float(value)
    if "target_rate_per_s" in settings and "target_concurrency" in settings:
        raise InputError(source, f"{where}.target_concurrency", "is given together with target_rate_per_s",
                         "keep one: an open-loop rate or a closed-loop concurrency")
    return settings


def load_workload_entry(label: str, base_dir: Path, source: str, where: str):
    """A workload preset or file (relative to the sweep or study file); errors name the entry."""
    from cost_model.serving.workload import load_workload
    from hardware.yaml_input import names_existing_file

    path = None
    if label.lower().endswith((".yaml", ".yml", ".json")) or "/" in label:
        candidate = base_dir / label
        path = candidate if names_existing_file(candidate) else Path(label)
    try:
        return load_workload(path if path is not None else label)
    except InputError as exc:
        raise InputError(source, where, f"{exc}", "fix the workload name or file") from None


def serving_scenario(model_spec, cluster, workload, settings: dict[str, Any], objective: str, top_k: int,
                     model_source: str | None = None):
    """The :class:`~optimizer.serving.search.ServingScenario` of one combination (raises InputError or
    ValueError when the combination cannot be searched: a GPU budget over the cluster, FP8 on an A100)."""
    from optimizer.serving.cli import checkpoint_precision
    from optimizer.serving.grid import ServingGrid
    from optimizer.serving.inputs import check_supported, parse_gpu_budget, precision_supported
    from optimizer.serving.search import ServingScenario

    low, high = parse_gpu_budget(settings.get("gpus"), cluster)
    native = checkpoint_precision(model_spec)
    precisions = settings.get("weight_precisions") or ((native,) if precision_supported(cluster.gpu, native) else ("bf16",))
    kv_dtypes = settings.get("kv_dtypes") or ("bf16",)
    check_supported("weight_precisions", precisions, cluster.gpu)
    check_supported("kv_dtypes", kv_dtypes, cluster.gpu)
    if "max_model_len" in settings:
        workload = workload.with_changes(max_model_len=settings["max_model_len"])
    grid = ServingGrid(max_gpus=high, min_gpus=low, is_moe=bool(model_spec.num_experts),
                       num_experts=model_spec.num_experts, num_layers=model_spec.num_layers,
                       weight_precisions=precisions, kv_dtypes=kv_dtypes, modes=settings.get("modes") or ("agg",))
    return ServingScenario(model=model_spec, cluster=cluster, workload=workload, grid=grid, objective=objective,
                           top_k=top_k, target_rate_per_s=settings.get("target_rate_per_s"),
                           target_concurrency=settings.get("target_concurrency"), model_source=model_source)


def is_serving(scenario: Any) -> bool:
    from optimizer.serving.search import ServingScenario

    return isinstance(scenario, ServingScenario)


def serving_rows(scenario) -> list[dict[str, Any]]:
    """Search one serving scenario; its rows (see the module docstring), best first."""
    from optimizer.serving.report import plan_records
    from optimizer.serving.search import search_serving

    from .rows import empty_result

    result = search_serving(scenario, pareto=False)
    counts = {"num_serving_candidates": result.candidates, "num_meeting_slo": result.meeting_slo}
    if not result.found:
        binding = sorted(result.broken_alone.items(), key=lambda item: (-item[1], -result.broken.get(item[0], 0), item[0]))
        top = binding[0][0] if binding and binding[0][1] > 0 else (
            max(result.broken, key=lambda name: (result.broken[name], name)) if result.broken else None)
        broken = "; ".join(f"{name} {count:,}" for name, count in sorted(result.broken.items(),
                                                                        key=lambda item: (-item[1], item[0])) if count)
        row = empty_result("no_fit", f"no plan of {result.candidates:,} meets every rule; plans breaking each rule: "
                           f"{broken}", top)
        row.update(counts)
        return [row]
    rows = []
    for record in plan_records(result.ranked, scenario):
        row = empty_result("ok", None)
        row.update(counts, rank=record["rank"], plan=record["plan"], plan_num_gpus=record["num_gpus"],
                   mode=record["mode"])
        decode = record["instances"][-1]
        prefill = record["instances"][0] if record["mode"] == "disagg" else None
        row.update(decode_layout=decode["layout"], decode_instances=decode["count"],
                   prefill_layout=prefill["layout"] if prefill else None,
                   prefill_instances=prefill["count"] if prefill else None,
                   weight_precision=decode["weight_precision"], kv_dtype=decode["kv_dtype"],
                   max_num_seqs=decode["max_num_seqs"], max_num_batched_tokens=decode["max_num_batched_tokens"],
                   cuda_graphs=decode["cuda_graphs"])
        for name in SERVING_COLUMNS:
            if name in record:
                row[name] = record[name]
        rows.append(row)
    return rows
