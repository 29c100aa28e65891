"""Serving plans as JSON records, CSV rows and terminal tables; units in every name.

A record (:func:`plan_records`) holds the plan's layout per phase, its memory breakdown per GPU
(``memory_gib``: weights kv activations cuda_graph comm_buffers other, and the total), the KV capacity
in tokens and the requests one instance holds at once, TTFT and TPOT at p50/p90/p99 (queueing
included), output tokens/s per GPU and per user, goodput per GPU, the GPUs a target rate needs, $ per
million output and input tokens counting every GPU, the step breakdowns (milliseconds), the
``bottleneck`` label and the rules the plan breaks. CSV flattens the record with dots
(``memory_gib.decode.kv``). The table fits the terminal, as the training table does
(:func:`optimizer.report.render_table`): columns of :data:`DROP_ORDER` go first.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from cost_model.serving.evaluate import MAX_LOAD_FIELDS

from ..report import _clean, fit_text, terminal_width

MEMORY_PARTS = ("weights", "kv", "activations", "cuda_graph", "comm_buffers", "other")
"""Per-GPU memory parts of an instance (:class:`cost_model.serving.memory.ServingMemory`)."""
STEP_PARTS = ("host_s", "hbm_s", "gemm_s", "attention_s", "tp_comm_s", "ep_comm_s", "pp_s", "total_s")
"""Parts of a step time (:class:`cost_model.serving.step.StepTimes`)."""
PERCENTILES = ("p50", "p90", "p99")
METRIC_FIELDS = ("kv_capacity_tokens", "max_concurrency", "max_decode_batch", "decode_batch",
                 *(f"ttft_ms_{p}" for p in PERCENTILES), *(f"tpot_ms_{p}" for p in PERCENTILES),
                 "output_tokens_per_s_per_gpu", "tokens_per_s_per_user", "goodput_requests_per_s_per_gpu",
                 "requests_per_s", "goodput_requests_per_s", "max_load_output_tokens_per_s_per_gpu",
                 "min_gpus_for_target", "cost_usd_per_m_output_tokens", "cost_usd_per_m_input_tokens",
                 "prefill_decode_ratio", "kv_transfer_ms", "ttft_ms_slo", "tpot_ms_slo", *MAX_LOAD_FIELDS)
"""Per-plan metrics copied to records under the cost model's own names."""


# --- labels -----------------------------------------------------------------------------------------------

def layout_label(instance: dict[str, Any]) -> str:
    """``TP4``, ``TP8 PP2``, ``TP1 DP8 EP8`` (attention DP 8, experts over 8 ranks), ``TP8 EP4 MoE-TP2``."""
    parts = [f"TP{instance['tp']}"]
    if instance["pp"] > 1:
        parts.append(f"PP{instance['pp']}")
    if instance["attn_dp"] > 1:
        parts.append(f"DP{instance['attn_dp']}")
    if instance["ep"] > 1:
        parts.append(f"EP{instance['ep']}")
        if instance["moe_tp"] > 1:
            parts.append(f"MoE-TP{instance['moe_tp']}")
    return " ".join(parts)


def plan_label(record: dict[str, Any]) -> str:
    """A plan in a line: ``2x TP4`` (aggregated) or ``P 1x TP4 + D 3x TP8`` (disaggregated), from
    :meth:`ServingPlanArrays.record`."""
    if record["mode"] == "agg":
        return f"{record['decode_instances']}x {layout_label(record['decode'])}"
    return (f"P {record['prefill_instances']}x {layout_label(record['prefill'])} + "
            f"D {record['decode_instances']}x {layout_label(record['decode'])}")


# --- per-plan values --------------------------------------------------------------------------------------

def _column(metrics: Any, name: str) -> np.ndarray | None:
    value = getattr(metrics, name, None)
    return None if value is None else np.asarray(value)


def memory_parts_gib(metrics: Any, phase: str) -> dict[str, np.ndarray] | None:
    """Per-GPU memory of the phase's instances by part and in total, GiB (None where the cost model has
    none for the phase)."""
    parts = getattr(metrics, "memory_gib", {}).get(phase)
    if not parts:
        return None
    out = {p: np.asarray(parts[p], dtype=float) for p in MEMORY_PARTS}
    out["total"] = sum(out.values())
    return out


def step_parts_ms(metrics: Any, phase: str) -> dict[str, np.ndarray] | None:
    """The phase's step time by part, milliseconds (decode: one step at the evaluated batch; prefill: one
    chunked-prefill step of the chunk budget)."""
    step = getattr(metrics, f"{phase}_step", None)
    if not step:
        return None
    return {p.removesuffix("_s") + "_ms": np.asarray(step[p], dtype=float) * 1e3 for p in STEP_PARTS if p in step}


def broken_rules(metrics: Any, index: int) -> list[str]:
    """The named rules plan ``index`` breaks, in the cost model's order."""
    return [name for name, mask in metrics.violations.items() if bool(np.asarray(mask)[index])]


def plan_records(kept, scenario) -> list[dict[str, Any]]:
    """One JSON object per plan, in order (the module docstring lists the fields)."""
    plans, metrics = kept.plans, kept.metrics
    columns = {name: _column(metrics, name) for name in METRIC_FIELDS}
    phases = ("decode",) if not plans.disaggregated.any() else ("prefill", "decode")
    memory = {phase: memory_parts_gib(metrics, phase) for phase in ("prefill", "decode")}
    steps = {phase: step_parts_ms(metrics, phase) for phase in ("prefill", "decode")}
    bottleneck = getattr(metrics, "bottleneck", None)
    records = []
    for i in range(len(plans)):
        plan = plans.record(i)
        disagg = plan["mode"] == "disagg"
        shown = ("prefill", "decode") if disagg else ("decode",)
        record: dict[str, Any] = {
            "rank": i + 1, "plan": plan_label(plan), "mode": plan["mode"], "num_gpus": plan["num_gpus"],
            "instances": _instances(plan),
        }
        record["memory_gib"] = {("instance" if not disagg else phase): {p: v[i] for p, v in memory[phase].items()}
                                for phase in shown if memory[phase] is not None}
        for name, values in columns.items():
            if values is not None:
                record[name] = values[i]
        record["step_ms"] = {phase: {p: v[i] for p, v in steps[phase].items()}
                             for phase in ("prefill", "decode") if steps[phase] is not None}
        record["bottleneck"] = None if bottleneck is None else str(np.asarray(bottleneck)[i])
        record["broken_rules"] = broken_rules(metrics, i)
        record["meets_slo"] = not record["broken_rules"]
        records.append(_clean(record))
    del phases
    return records


def _instances(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's instance kinds: one for aggregated plans, prefill then decode for disaggregated ones."""
    kinds = [("serve", plan["decode"], plan["decode_instances"])] if plan["mode"] == "agg" else [
        ("prefill", plan["prefill"], plan["prefill_instances"]), ("decode", plan["decode"], plan["decode_instances"])]
    return [{"role": role, "count": count, "gpus_per_instance": layout["tp"] * layout["pp"] * layout["attn_dp"],
             "layout": layout_label(layout), **layout} for role, layout, count in kinds]


def to_csv(kept, scenario) -> str:
    """One CSV row per plan: the record flattened with dots, instance kinds as ``prefill.`` / ``decode.``
    (aggregated plans fill ``decode.``), broken rules joined by ``+``."""
    import csv

    rows = []
    for record in plan_records(kept, scenario):
        flat: dict[str, Any] = {}
        for key, value in record.items():
            if key == "instances":
                for instance in value:
                    role = "decode" if instance["role"] == "serve" else instance["role"]
                    for name, item in instance.items():
                        if name != "role":
                            flat[f"{role}.{name}"] = item
            elif key == "broken_rules":
                flat[key] = "+".join(value)
            elif isinstance(value, dict):
                for name, item in _flatten(value, key).items():
                    flat[name] = item
            else:
                flat[key] = value
        rows.append(flat)
    header: list[str] = []
    for row in rows:
        header += [k for k in row if k not in header]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in header})
    return buffer.getvalue()


def _flatten(value: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            out.update(_flatten(item, f"{prefix}.{key}"))
        else:
            out[f"{prefix}.{key}"] = item
    return out


# --- scenario ---------------------------------------------------------------------------------------------

def scenario_record(scenario) -> dict[str, Any]:
    cl, w, g = scenario.cluster, scenario.workload, scenario.grid
    slo = w.slo
    return _clean({
        "model": scenario.model.name, "cluster": cl.name, "gpu": cl.gpu.name, "gpu_memory_gib": cl.gpu.memory_gib,
        "gpus_min": g.min_gpus, "gpus_max": g.max_gpus, "workload": w.name,
        "input_tokens_mean": w.input_tokens.mean(), "output_tokens_mean": w.output_tokens.mean(),
        "max_model_len": w.model_len, "prefix_cache_hit_rate": w.prefix_cache_hit_rate,
        "arrival": w.arrival, "request_rate_per_s": scenario.target_rate_per_s or w.request_rate_per_s,
        "concurrency": scenario.target_concurrency or w.concurrency,
        "slo": None if slo is None else {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms,
                                         "percentile": slo.percentile, "attainment": slo.attainment},
        "objective": scenario.objective, "modes": list(g.modes), "weight_precisions": list(g.weight_precisions),
        "kv_dtypes": list(g.kv_dtypes), "price_per_gpu_hour_usd": cl.economics.price_per_gpu_hour_usd,
    })


def scenario_header(scenario) -> str:
    cl, w, g = scenario.cluster, scenario.workload, scenario.grid
    gpus = f"{g.max_gpus}" if g.min_gpus <= 1 else f"{g.min_gpus}-{g.max_gpus}"
    target = (f" | target {scenario.target_rate_per_s:g} req/s" if scenario.target_rate_per_s
              else f" | target {scenario.target_concurrency:g} in flight" if scenario.target_concurrency else "")
    return (f"{scenario.model.name} on {cl.name}: up to {gpus} x {cl.gpu.name} | {w.describe()}{target} | "
            f"modes {','.join(g.modes)}, weights {','.join(g.weight_precisions)}, KV {','.join(g.kv_dtypes)} | "
            f"objective {scenario.objective}")


def search_line(result) -> str:
    grid = (f" of {result.grid_plans:,} (coarse to fine)" if result.grid_plans > result.candidates else "")
    return (f"{result.candidates:,} plans priced{grid}, {result.servable:,} servable (every rule but the latency "
            f"SLOs), {result.meeting_slo:,} meet the SLO; searched in {result.seconds['total']:.2f} s")


# --- table ------------------------------------------------------------------------------------------------

HEADERS = ("#", "plan", "GPUs", "W", "KV", "seqs", "chunk", "graphs", "KV tok", "conc", "TTFT ms", "TPOT ms",
           "tok/s/GPU", "tok/s/user", "goodput/GPU", "min GPUs", "$/Mtok out", "bottleneck")
DROP_ORDER = ("graphs", "chunk", "KV tok", "min GPUs", "conc", "seqs", "W", "KV", "goodput/GPU")
"""Columns left out, in this order, until the table fits the terminal."""


def slo_column(workload) -> str:
    """The percentile column (p50, p90, p99) the table shows latencies at: the smallest at or above the
    SLO's quantile, p99 without an SLO (as MLPerf reports)."""
    quantile = workload.slo.quantile if workload.slo is not None else 0.99
    return next((p for p, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)) if q >= quantile - 1e-12), "p99")


def render_plans(kept, scenario, title: str, width: int | None = None, wide: bool = False) -> str:
    """The plans as a table no wider than ``width`` (default: the terminal's); TTFT and TPOT at the SLO's
    percentile (:func:`slo_column`, named in the title); ``wide`` keeps every column."""
    records = plan_records(kept, scenario)
    p = slo_column(scenario.workload)
    load = getattr(kept.metrics, "load", "")
    title = f"{title} (TTFT, TPOT at {p}" + (f", {load})" if load else ")")
    rows = []
    for r in records:
        decode = r["instances"][-1]
        rows.append([
            str(r["rank"]) + ("" if r["meets_slo"] else "!"), r["plan"], str(r["num_gpus"]), decode["weight_precision"],
            decode["kv_dtype"], str(decode["max_num_seqs"]), str(decode["max_num_batched_tokens"]),
            "y" if decode["cuda_graphs"] else "n", _n(r.get("kv_capacity_tokens"), "{:,.0f}"),
            _n(r.get("max_concurrency"), "{:,.0f}"), _n(r.get(f"ttft_ms_{p}"), "{:,.0f}"),
            _n(r.get(f"tpot_ms_{p}"), "{:.1f}"), _n(r.get("output_tokens_per_s_per_gpu"), "{:,.0f}"),
            _n(r.get("tokens_per_s_per_user"), "{:,.1f}"), _n(r.get("goodput_requests_per_s_per_gpu"), "{:.3f}"),
            _n(r.get("min_gpus_for_target"), "{:,.0f}"), _n(r.get("cost_usd_per_m_output_tokens"), "${:.2f}"),
            r.get("bottleneck") or "-"])
    shown = list(HEADERS)
    if not wide:
        for optional in ("min GPUs", "$/Mtok out"):
            if rows and all(row[HEADERS.index(optional)] == "-" for row in rows):
                shown.remove(optional)
    limit = width or terminal_width()
    text = _table_text(title, rows, shown)
    for column in () if wide else DROP_ORDER:
        if max(len(line) for line in text.splitlines()) <= limit:
            break
        if column in shown:
            shown.remove(column)
        text = _table_text(title, rows, shown)
    if any(not r["meets_slo"] for r in records):
        text += "! = breaks a rule (see broken_rules in --format json)\n"
    if load == "max load" and scenario.workload.slo is not None:
        text += fit_text("max load: latencies with every engine full; a plan meets the SLO at its goodput, the "
                         "largest rate within it (give --target-rate to see the latencies at a load)", limit) + "\n"
    return text


def _table_text(title: str, rows: list[list[str]], shown: list[str]) -> str:
    table = Table(title=title, title_justify="left", pad_edge=False, box=box.SIMPLE_HEAD, padding=(0, 1))
    index = [HEADERS.index(h) for h in shown]
    for h in shown:
        table.add_column(h, justify="left" if h in ("plan", "bottleneck") else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(row[i] for i in index))
    buffer = io.StringIO()
    Console(file=buffer, width=1000, force_terminal=False, color_system=None).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def _n(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value)


def breakdown_text(kept, scenario, index: int = 0) -> str:
    """One plan's memory per GPU and step times by part, latencies, throughput and cost, in lines."""
    record = plan_records(kept.rows(np.asarray([index])), scenario)[0]
    lines = []
    for phase, parts in record["memory_gib"].items():
        lines.append(f"  memory per GPU ({phase}) {parts['total']:.2f} GiB: "
                     + ", ".join(f"{p} {parts[p]:.2f}" for p in MEMORY_PARTS if p in parts))
    for phase, parts in record["step_ms"].items():
        what = ("decode step" if phase == "decode" else
                f"prefill step of {record['instances'][0]['max_num_batched_tokens']:,} tokens")
        lines.append(f"  {what} {parts.get('total_ms', float('nan')):.2f} ms: "
                     + ", ".join(f"{p.removesuffix('_ms')} {v:.2f}" for p, v in parts.items()
                                 if p != "total_ms" and v and v > 0))
    lines.append("  TTFT ms p50/p90/p99 " + "/".join(_n(record.get(f"ttft_ms_{p}"), "{:,.0f}") for p in PERCENTILES)
                 + "; TPOT ms p50/p90/p99 " + "/".join(_n(record.get(f"tpot_ms_{p}"), "{:.1f}") for p in PERCENTILES))
    lines.append(f"  KV capacity {_n(record.get('kv_capacity_tokens'), '{:,.0f}')} tokens per attention rank, "
                 f"{_n(record.get('max_concurrency'), '{:,.0f}')} requests per instance; output "
                 f"{_n(record.get('output_tokens_per_s_per_gpu'), '{:,.0f}')} tok/s/GPU, "
                 f"{_n(record.get('tokens_per_s_per_user'), '{:,.1f}')} tok/s/user; goodput "
                 f"{_n(record.get('goodput_requests_per_s_per_gpu'), '{:.3f}')} req/s/GPU; bottleneck "
                 f"{record.get('bottleneck') or '-'}")
    cost_out, cost_in = record.get("cost_usd_per_m_output_tokens"), record.get("cost_usd_per_m_input_tokens")
    if cost_out is not None:
        lines.append(f"  cost ${cost_out:.3f} per million output tokens, ${_n(cost_in, '{:.3f}')} per million input "
                     f"tokens (all {record['num_gpus']} GPUs)")
    if record.get("min_gpus_for_target") is not None:
        lines.append(f"  GPUs for the target load: {record['min_gpus_for_target']:,.0f}")
    return "\n".join(lines)


def why_not(kept, scenario, index: int) -> list[str]:
    """'rule: what it requires' for each rule plan ``index`` breaks (as the training ``evaluate`` says it):
    the cost model's rules (:data:`cost_model.serving.rules.SERVING_RULES`) and, with an engine, its
    start-up rules (:func:`optimizer.emit.serving.serving_rules`)."""
    from cost_model.serving.rules import SERVING_RULES

    sentences = dict(SERVING_RULES)
    if getattr(scenario, "engine", None):
        from optimizer.emit.serving import serving_rules

        sentences.update(serving_rules(scenario.engine))
    return [f"{name}: {sentences[name]}" if name in sentences else name for name in broken_rules(kept.metrics, index)]


def nic_notes(kept, scenario, index: int) -> list[str]:
    """Groups of plan ``index`` wider than the NVLink domain, priced on the NIC (not refused)."""
    from cost_model.serving.rules import NIC_GROUPS

    plans = kept.plans
    # an attention-DP x EP group exists only where there is attention DP or EP; without, it is the TP group
    regrouped = any(int(getattr(kind, name)[index]) > 1 for kind in (plans.prefill, plans.decode)
                    for name in ("attn_dp", "ep"))
    return [f"{name}: {NIC_GROUPS[name]}" for name, mask in kept.metrics.nic_groups.items()
            if bool(np.asarray(mask)[index]) and (name != "attn_dp_x_ep" or regrouped)]
