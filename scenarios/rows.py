"""The tidy result table: one row per scenario x top-K plan, and the column types.

A row holds the scenario's columns (from :class:`scenarios.sweep_file.ScenarioTask.params`), then:

* ``status``: ``ok`` (plans found), ``no_fit`` (nothing fits; ``binding_constraint`` and ``reason``
  say why) or ``error`` (the scenario could not be built or the search failed; ``reason`` holds the
  one-line message);
* ``rank`` (1 = best) and the plan: ``plan`` (a compact label, equal labels = equal plans), ``tp pp dp
  cp ep etp vpp micro_batch num_microbatches recompute recompute_num_layers recompute_modules
  sequence_parallel zero_stage dp_replicate optimizer_offload activation_offload_layers plan_num_gpus``
  (``recompute_modules``: Megatron's selective modules joined by ``+``);
* its metrics, units in the names: ``memory_gib``, ``step_time_s``, ``tokens_per_s``,
  ``tokens_per_s_per_gpu``, ``tflops_per_gpu``, ``mfu``, ``time_to_train_days``, ``gpu_hours``,
  ``cost_usd``, ``energy_mwh``, ``gpu_power_w`` (average board power per GPU), ``power_mw`` and
  ``peak_power_mw`` (the job's average and all-computing facility power, :mod:`cost_model.power`),
  the goodput columns (:mod:`cost_model.goodput`) ``ettr`` (effective-training-time ratio), ``mtbf_h``,
  ``checkpoint_gib_per_rank``, ``checkpoint_gib_job``, ``checkpoint_save_s``, ``checkpoint_interval_s``,
  ``restart_s``, ``lost_work_per_failure_s``, ``spare_gpus``, ``effective_time_to_train_days``,
  ``effective_gpu_hours`` and ``effective_cost_usd`` (failures, checkpoints and restarts counted),
  ``peak_stage``, and the breakdowns flattened with a dot
  (``memory_breakdown_gib.activations``, ``step_time_breakdown_s.pp_bubble``, ``comm_gb_per_step.dp``);
* the search's size: ``num_layouts``, ``num_candidates``, ``num_feasible``.

A ``no_fit`` or ``error`` scenario has one row with the plan columns empty. Search wall time is left out
on purpose: the table is a deterministic function of the inputs, whatever machine or backend ran it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from cost_model.evaluate import COMM_DIMS, MEMORY_PARTS, TIME_PARTS
from optimizer.explain import explain_no_fit
from optimizer.report import plan_records
from optimizer.search import SearchResult

STATUS_COLUMNS = ("status", "binding_constraint", "reason", "num_layouts", "num_candidates", "num_feasible")
PLAN_INT_COLUMNS = ("rank", "tp", "pp", "dp", "cp", "ep", "etp", "vpp", "micro_batch", "num_microbatches",
                    "recompute_num_layers", "zero_stage", "dp_replicate", "activation_offload_layers", "plan_num_gpus")
PLAN_COLUMNS = ("rank", "plan", "tp", "pp", "dp", "cp", "ep", "etp", "vpp", "micro_batch", "num_microbatches",
                "recompute", "recompute_num_layers", "recompute_modules", "sequence_parallel", "zero_stage",
                "dp_replicate", "optimizer_offload", "activation_offload_layers", "plan_num_gpus", "peak_stage")
METRIC_COLUMNS = ("memory_gib", "step_time_s", "tokens_per_s", "tokens_per_s_per_gpu", "tflops_per_gpu", "mfu",
                  "hfu", "time_to_train_days", "gpu_hours", "cost_usd", "energy_mwh", "gpu_power_w", "power_mw",
                  "peak_power_mw", "ettr", "mtbf_h", "checkpoint_gib_per_rank", "checkpoint_gib_job",
                  "checkpoint_save_s", "checkpoint_interval_s", "restart_s", "lost_work_per_failure_s", "spare_gpus",
                  "effective_time_to_train_days", "effective_gpu_hours", "effective_cost_usd")
BREAKDOWN_COLUMNS = (tuple(f"memory_breakdown_gib.{p}" for p in MEMORY_PARTS)
                     + tuple(f"step_time_breakdown_s.{p}" for p in TIME_PARTS)
                     + tuple(f"comm_gb_per_step.{d}" for d in COMM_DIMS))
RESULT_COLUMNS = STATUS_COLUMNS + PLAN_COLUMNS + METRIC_COLUMNS + BREAKDOWN_COLUMNS

# Column types of the combined table (pandas nullable types, so empty plan columns stay typed).
SCENARIO_INT_COLUMNS = ("scenario_index", "num_nodes", "num_gpus", "seq_length", "global_batch_size",
                        "global_batch_tokens", "num_layouts", "num_candidates", "num_feasible")
SCENARIO_FLOAT_COLUMNS = ("gpu_memory_gib", "nic_gbps", "price_per_gpu_hour_usd", "train_tokens")
BOOL_COLUMNS = ("sequence_parallel", "optimizer_offload")


def plan_label(record: dict[str, Any]) -> str:
    """Compact, unambiguous label of a plan, e.g. ``tp8 pp4 dp16 cp1 ep1 vpp2 mbs1 full:2 sp zero1``."""
    recompute = record["recompute"]
    if recompute == "full" and record.get("recompute_num_layers") is not None:
        recompute = f"full:{record['recompute_num_layers']}"
    if recompute == "selective" and record.get("recompute_modules"):
        recompute = "selective:" + "+".join(record["recompute_modules"])
    ep = f"ep{record['ep']}" + (f"/{record['etp']}" if record["etp"] > 1 else "")
    return (f"tp{record['tp']} pp{record['pp']} dp{record['dp']} cp{record['cp']} {ep} vpp{record['vpp']} "
            f"mbs{record['micro_batch']} {recompute} {'sp' if record['sequence_parallel'] else 'nosp'} "
            f"zero{record['zero_stage']}" + (f" hsdp{record['dp_replicate']}" if record.get("dp_replicate", 1) > 1 else "")
            + f"{'+off' if record['optimizer_offload'] else ''}"
            + (f" actoff{record['activation_offload_layers']}" if record.get("activation_offload_layers") else ""))


def empty_result(status: str, reason: str | None, binding: str | None = None,
                 result: SearchResult | None = None) -> dict[str, Any]:
    """The result columns of a scenario without plans."""
    row: dict[str, Any] = {name: None for name in RESULT_COLUMNS}
    row.update(status=status, reason=reason, binding_constraint=binding)
    if result is not None:
        row.update(num_layouts=result.num_layouts, num_candidates=result.num_candidates,
                   num_feasible=result.num_feasible)
    return row


def result_rows(result: SearchResult, explain: bool) -> list[dict[str, Any]]:
    """The result columns of each ranked plan, best first; one ``no_fit`` row when nothing fits."""
    if not result.found:
        if not explain:
            return [empty_result("no_fit", "no plan fits (explanation not requested)", None, result)]
        explanation = explain_no_fit(result)
        return [empty_result("no_fit", explanation.text().replace("\n", "; "), explanation.binding, result)]
    rows = []
    for rank, record in enumerate(plan_records(result.ranked, result.scenario.memory_limit_bytes), start=1):
        row = empty_result("ok", None, None, result)
        row.update(rank=rank, plan=plan_label(record), plan_num_gpus=record["num_gpus"])
        for name in PLAN_COLUMNS + METRIC_COLUMNS:
            if name in record:
                row[name] = record[name]
        row["recompute_modules"] = "+".join(record["recompute_modules"]) or None
        for group in ("memory_breakdown_gib", "step_time_breakdown_s", "comm_gb_per_step"):
            for part, value in record[group].items():
                row[f"{group}.{part}"] = value
        rows.append(row)
    return rows


def typed_frame(rows: list[dict[str, Any]], scenario_columns: list[str]) -> pd.DataFrame:
    """Rows as a DataFrame with a fixed column order and types, sorted by scenario then rank."""
    columns = list(scenario_columns) + [c for c in RESULT_COLUMNS if c not in scenario_columns]
    if any("num_serving_candidates" in row for row in rows):  # serving scenarios' columns (scenarios.serving)
        from .serving import SERVING_COLUMNS

        columns += [c for c in SERVING_COLUMNS if c not in columns]
    frame = pd.DataFrame.from_records(rows, columns=columns)
    for name in frame.columns:
        if name in PLAN_INT_COLUMNS or name in SCENARIO_INT_COLUMNS:
            frame[name] = pd.array([_int_or_na(v) for v in frame[name]], dtype="Int64")
        elif name in METRIC_COLUMNS or name in BREAKDOWN_COLUMNS or name in SCENARIO_FLOAT_COLUMNS:
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
        elif name in BOOL_COLUMNS:
            frame[name] = pd.array([None if _missing(v) else bool(v) for v in frame[name]], dtype="boolean")
        else:
            frame[name] = _inferred(frame[name])
    if len(frame):
        frame = frame.sort_values(["scenario_index", "rank"], na_position="first", kind="stable")
    return frame.reset_index(drop=True)


def _inferred(column: pd.Series) -> pd.Series:
    """Override and label columns: numbers as float64, flags as boolean, anything else as text."""
    present = [v for v in column if not _missing(v)]
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(pd.array([None if _missing(v) else v for v in column], dtype="boolean"), index=column.index)
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.to_numeric(column, errors="coerce").astype("float64")
    return pd.Series([None if _missing(v) else str(v) for v in column], index=column.index, dtype=object)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _int_or_na(value: Any) -> Any:
    return pd.NA if _missing(value) else int(value)


def json_safe(value: Any) -> Any:
    """numpy scalars to Python, so a row survives JSON exactly (floats round-trip through repr)."""
    if isinstance(value, np.generic):
        return value.item()
    return value
