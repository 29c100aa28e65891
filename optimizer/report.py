"""Plans as JSON documents, CSV and terminal tables (the output schema is documented in the README).

The table fits the terminal: :func:`render_table` leaves out the least useful columns (:data:`DROP_ORDER`)
until it fits the width (``shutil.get_terminal_size``: the ``COLUMNS`` variable, else the terminal, else
80 columns), and :func:`fit_text` wraps the prose around it; ``--wide`` keeps every column.

With an uncertainty band (:mod:`cost_model.calibration.bands`; None before the first calibration, and
then every output is as without bands) the table's tok/s/GPU cells carry the band's ± figure, JSON and
CSV the band's ends (:func:`band_columns`), and :func:`band_note` says what the band is and which leading
plans it leaves tied.
"""

from __future__ import annotations

import io
import math
import re
import shutil
import textwrap
from typing import Any

import numpy as np
from rich.console import Console
from rich import box
from rich.table import Table

from cost_model.calibration.bands import Band
from cost_model.evaluate import MEMORY_PARTS, TIME_PARTS, COMM_DIMS, PlanMetrics
from cost_model.memory import GIB, MEMORY_KIND, MemoryBreakdown
from cost_model.plan import RECOMPUTE_MODES, SCHEDULES, SELECTIVE, module_names
from cost_model.stages import STAGES

from .search import Scenario
from .search_options import PINNABLE_DEGREES, SearchOptions


def _number(value: Any) -> Any:
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    return value


BAND_FIELDS = {"tokens_per_s_per_gpu": "throughput", "time_to_train_days": "duration",
               "gpu_hours": "duration", "cost_usd": "duration"}
"""Outputs that get ``_low`` / ``_high`` ends from the band: throughput scales by the band's factors, the
totals proportional to the step time (days, GPU-hours, cost) by their inverses (a slower run costs more)."""


def band_columns(metrics: PlanMetrics, band: Band | None) -> dict[str, np.ndarray]:
    """``<field>_low`` and ``<field>_high`` of each of :data:`BAND_FIELDS`, one value per plan; empty
    without a band. Days, GPU-hours and cost are NaN where unknown (no token budget, no price)."""
    if band is None:
        return {}
    values = {"tokens_per_s_per_gpu": metrics.tokens_per_s / metrics.plans.num_gpus,
              "time_to_train_days": metrics.time_to_train_s / 86400, "gpu_hours": metrics.gpu_hours,
              "cost_usd": metrics.cost_usd}
    columns = {}
    for name, kind in BAND_FIELDS.items():
        low, high = (band.throughput_range if kind == "throughput" else band.duration_range)(values[name])
        columns[f"{name}_low"], columns[f"{name}_high"] = low, high
    return columns


def plan_records(metrics: PlanMetrics, limit_bytes: float, band: Band | None = None) -> list[dict[str, Any]]:
    """One JSON object per plan (fields listed in the README's output schema), with the band's ends of
    throughput, days, GPU-hours and cost (:func:`band_columns`) when there is a band."""
    cols = metrics.plans.to_columns()
    ends = band_columns(metrics, band)
    records = []
    for i in range(len(metrics)):
        record = {
            "tp": cols["tp"][i], "pp": cols["pp"][i], "dp": cols["dp"][i], "cp": cols["cp"][i],
            "ep": cols["ep"][i], "etp": cols["etp"][i], "vpp": cols["vpp"][i],
            "schedule": SCHEDULES[cols["schedule"][i]],
            "micro_batch": cols["micro_batch"][i], "num_microbatches": metrics.num_microbatches[i],
            "recompute": RECOMPUTE_MODES[cols["recompute"][i]],
            "recompute_num_layers": cols["recompute_num_layers"][i] if cols["recompute_num_layers"][i] >= 0 else None,
            "recompute_modules": (module_names(cols["recompute_modules"][i])
                                  if cols["recompute"][i] == SELECTIVE else []),
            "sequence_parallel": cols["sequence_parallel"][i], "zero_stage": cols["zero_stage"][i],
            "dp_replicate": cols["dp_replicate"][i],
            "optimizer_offload": cols["optimizer_offload"][i],
            "activation_offload_layers": cols["activation_offload_layers"][i], "num_gpus": metrics.plans.num_gpus[i],
            "memory_gib": metrics.memory_bytes[i] / GIB, "memory_kind": MEMORY_KIND,
            "memory_breakdown_gib": {p: metrics.memory_parts_bytes[p][i] / GIB for p in MEMORY_PARTS},
            "peak_stage": STAGES[metrics.peak_stage[i]],
            "step_time_s": metrics.step_time_s[i],
            "step_time_breakdown_s": {p: metrics.step_time_parts_s[p][i] for p in TIME_PARTS},
            "tokens_per_s": metrics.tokens_per_s[i],
            "tokens_per_s_per_gpu": metrics.tokens_per_s[i] / metrics.plans.num_gpus[i],
            "tflops_per_gpu": metrics.tflops_per_gpu[i], "mfu": metrics.mfu[i], "hfu": metrics.hfu[i],
            "comm_gb_per_step": {d: metrics.comm_bytes_per_step[d][i] / 1e9 for d in COMM_DIMS},
            "time_to_train_days": metrics.time_to_train_s[i] / 86400, "gpu_hours": metrics.gpu_hours[i],
            "cost_usd": metrics.cost_usd[i], "energy_mwh": metrics.energy_kwh[i] / 1000,
            "gpu_power_w": metrics.gpu_power_w[i], "power_mw": metrics.power_mw[i],
            "peak_power_mw": metrics.peak_power_mw[i],
            **goodput_record(metrics, i),
            "fits": metrics.memory_bytes[i] <= limit_bytes,
            "stages": stage_records(metrics, i),
        }
        record.update({name: values[i] for name, values in ends.items()})
        records.append(_clean(record))
    return records


def goodput_record(metrics: PlanMetrics, i: int) -> dict[str, Any]:
    """Goodput fields of plan ``i`` (:mod:`cost_model.goodput`), named as the CSV columns
    (:meth:`PlanMetrics.to_frame`): the nominal ``time_to_train_days``, ``gpu_hours`` and ``cost_usd``
    assume every step runs, the ``effective_`` ones count failures, checkpoints, restarts and spares."""
    return {"ettr": metrics.ettr[i], "mtbf_h": metrics.mtbf_s[i] / 3600,
            "checkpoint_gib_per_rank": metrics.checkpoint_bytes_per_rank[i] / GIB,
            "checkpoint_gib_job": metrics.checkpoint_bytes_job[i] / GIB,
            "checkpoint_save_s": metrics.checkpoint_save_s[i], "checkpoint_interval_s": metrics.checkpoint_interval_s[i],
            "restart_s": metrics.restart_s[i], "lost_work_per_failure_s": metrics.lost_work_per_failure_s[i],
            "spare_gpus": metrics.spare_gpus[i],
            "effective_time_to_train_days": metrics.effective_time_to_train_s[i] / 86400,
            "effective_gpu_hours": metrics.effective_gpu_hours[i], "effective_cost_usd": metrics.effective_cost_usd[i]}


def stage_records(metrics: PlanMetrics, index: int) -> list[dict[str, Any]]:
    """Memory per GPU of each pipeline stage kind of plan ``index`` that exists (first, middle, last; one
    entry without PP), as the cost model priced it: ``predict_memory``'s per-stage breakdown, which
    :func:`cost_model.evaluate.evaluate` keeps in ``extras`` (empty for metrics joined from blocks,
    which drop it). ``layers`` counts the transformer layers one rank of the stage holds, all its
    virtual chunks together."""
    memory: MemoryBreakdown | None = metrics.extras.get("memory_by_stage")
    layout = metrics.extras.get("stages")
    if memory is None or layout is None:
        return []
    stages = []
    for column, name in enumerate(STAGES):
        if not layout.exists[index, column]:
            continue
        parts = {f"{part}_gib": getattr(memory, part)[index, column] / GIB for part in MEMORY_PARTS}
        stages.append({"stage": name, "pipeline_rank": layout.pipeline_rank[index, column],
                       "layers": int(layout.layers[index, column]), "moe_layers": layout.moe_layers[index, column],
                       "embedding": layout.has_embedding[index, column],
                       "lm_head": layout.has_lm_head[index, column], **parts,
                       "total_gib": memory.total[index, column] / GIB})
    return stages


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return _number(value)


def scenario_record(scenario: Scenario) -> dict[str, Any]:
    tr, cl = scenario.training, scenario.cluster
    return _clean({
        "model": scenario.model.name, "cluster": cl.name, "gpu": cl.gpu.name,
        "gpus": list(scenario.gpu_counts), "gpu_memory_gib": cl.gpu.memory_gib,
        "memory_limit_gib": scenario.memory_limit_bytes / GIB, "seq_length": tr.seq_length,
        "global_batch_size": tr.global_batch_size, "global_batch_tokens": tr.global_batch_tokens,
        "precision": tr.precision, "train_tokens": tr.train_tokens, "objective": scenario.options.objective,
        "price_per_gpu_hour_usd": cl.economics.price_per_gpu_hour_usd, "pinned": pinned_values(scenario),
        "checkpoint_mode": tr.checkpoint_mode, "hot_spare_nodes_per": list(tr.hot_spare_nodes_per),
    })


def pinned_values(scenario: Scenario) -> dict[str, list[int]]:
    """The values the search was pinned to (``--tp 4-8`` ...), by plan column; empty when nothing is."""
    o = scenario.options
    pins = {degree: list(o.pinned(degree)) for degree in PINNABLE_DEGREES if o.pinned(degree)}
    if o.vpp_values:
        pins["vpp"] = sorted(set(o.vpp_values))
    if set(o.micro_batch_sizes) != set(SearchOptions().micro_batch_sizes):
        pins["micro_batch"] = sorted(set(o.micro_batch_sizes))
    return pins


def scenario_header(scenario: Scenario) -> str:
    tr, cl = scenario.training, scenario.cluster
    gpus = "/".join(str(n) for n in scenario.gpu_counts)
    tokens = tr.global_batch_tokens / 1e6
    return (f"{scenario.model.name} on {cl.name}: {gpus} x {cl.gpu.name} ({cl.gpu.memory_gib:.1f} GiB usable, "
            f"{scenario.memory_limit_bytes / GIB:.1f} GiB limit) | seq {tr.seq_length}, global batch "
            f"{tr.global_batch_size} ({tokens:.1f}M tokens), {tr.precision}, {tr.stack} | objective "
            f"{scenario.options.objective}"
            + "".join(f" | {name} {_value_list(values)}" for name, values in pinned_values(scenario).items()))


def _value_list(values: list[int]) -> str:
    """8 | 8,16 | 4-8 (a run of consecutive values as a range, as the flag takes it)."""
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in runs)


MODULE_ABBREVIATIONS = {"core_attn": "attn", "layernorm": "norm", "mla_up_proj": "mla", "mlp": "mlp",
                        "moe_act": "act", "moe": "moe", "shared_experts": "shared"}


def _recompute_label(mode: int, layers: int, modules: int, offloaded: int = 0) -> str:
    """'none', 'full', 'full:3' (layers per chunk), 'sel:norm+mlp' (selective modules); 'none+off40'
    when the activations of 40 layers are offloaded to the host."""
    name = RECOMPUTE_MODES[mode]
    if mode == SELECTIVE:
        label = "sel:" + "+".join(MODULE_ABBREVIATIONS[m] for m in module_names(modules))
    else:
        label = f"full:{layers}" if name == "full" and layers >= 0 else name
    return label + (f"+off{offloaded}" if offloaded > 0 else "")


DROP_ORDER = ("nominal d", "ETTR", "TFLOP/s/GPU", "compact", "step s", "days", "cost $M", "MFU", "SP", "VPP", "CP", "EP", "MBS")
"""How a narrow terminal's table is made to fit, step by step until it does: first the nominal days
(every step run; ``days`` and ``cost $M`` are the effective ones, failures counted) and ETTR, then
TFLOP/s/GPU (it says what tok/s/GPU says in other units), then one space between the columns instead of three ("compact"),
then step time, the training totals and MFU, then knob columns (SP, VPP, CP, EP, MBS). ``#``, TP, PP,
DP, recompute, ZeRO, memory and tok/s/GPU always stay."""


def terminal_width() -> int:
    """Columns of the output: ``COLUMNS``, else the terminal's, else 80 (a pipe, a test's captured output)."""
    return shutil.get_terminal_size((80, 24)).columns


def render_table(metrics: PlanMetrics, title: str, width: int | None = None, wide: bool = False,
                 band: Band | None = None) -> str:
    """The plans as a table no wider than ``width`` (default: :func:`terminal_width`): columns of
    :data:`DROP_ORDER` are left out, in that order, until it fits, and the days and cost columns when no
    plan has them (no ``--train-tokens`` or no price). ``wide`` keeps every column. With a ``band``, each
    tok/s/GPU cell carries its ± figure (``10,583 ±9%``)."""
    spread = f" {band.percent_text}" if band is not None else ""
    headers = ["#", "TP", "PP", "DP", "CP", "EP", "VPP", "MBS", "recompute", "SP", "ZeRO", "reserved GiB",
               "step s", "tok/s/GPU", "TFLOP/s/GPU", "MFU", "ETTR", "nominal d", "days", "cost $M"]
    cols = metrics.plans.to_columns()
    rows = []
    for i in range(len(metrics)):
        nominal = metrics.time_to_train_s[i] / 86400
        days = metrics.effective_time_to_train_s[i] / 86400
        cost = metrics.effective_cost_usd[i] / 1e6
        rows.append([
            str(i + 1), str(cols["tp"][i]), str(cols["pp"][i]), str(cols["dp"][i]), str(cols["cp"][i]),
            f"{cols['ep'][i]}" + (f"/{cols['etp'][i]}" if cols["etp"][i] > 1 else ""),
            str(cols["vpp"][i]) + ("" if cols["schedule"][i] <= 1 else f" {SCHEDULES[cols['schedule'][i]]}"),
            str(cols["micro_batch"][i]), _recompute_label(cols["recompute"][i], cols["recompute_num_layers"][i],
                                                              cols["recompute_modules"][i],
                                                              cols["activation_offload_layers"][i]),
            "y" if cols["sequence_parallel"][i] else "n",
            str(cols["zero_stage"][i]) + (f" r{cols['dp_replicate'][i]}" if cols["dp_replicate"][i] > 1 else "")
            + ("+off" if cols["optimizer_offload"][i] else ""),
            f"{metrics.memory_bytes[i] / GIB:.1f}", f"{metrics.step_time_s[i]:.3f}",
            f"{metrics.tokens_per_s[i] / metrics.plans.num_gpus[i]:,.0f}{spread}", f"{metrics.tflops_per_gpu[i]:.0f}",
            f"{metrics.mfu[i]:.1%}", f"{metrics.ettr[i]:.1%}", "-" if math.isnan(nominal) else f"{nominal:.1f}",
            "-" if math.isnan(days) else f"{days:.1f}",
            "-" if math.isnan(cost) else f"{cost:.2f}",
        ])
    shown = list(headers)
    if not wide:
        for empty in ("nominal d", "days", "cost $M"):
            if rows and all(row[headers.index(empty)] == "-" for row in rows):
                shown.remove(empty)
    limit = width or terminal_width()
    compact = False
    text = _table_text(title, headers, rows, shown, compact)
    for step in () if wide else DROP_ORDER:
        if max(len(line) for line in text.splitlines()) <= limit:
            break
        if step == "compact":
            compact = True
        elif step in shown:
            shown.remove(step)
        text = _table_text(title, headers, rows, shown, compact)
    return text


def _table_text(title: str, headers: list[str], rows: list[list[str]], shown: list[str], compact: bool) -> str:
    """The table with the ``shown`` columns, at its natural width (never wrapped: the caller drops columns);
    ``compact``: one space between columns instead of three."""
    table = Table(title=title, title_justify="left", show_lines=False, pad_edge=False, box=box.SIMPLE_HEAD,
                  padding=(0, 0, 0, 0) if compact else (0, 1))
    index = [headers.index(h) for h in shown]
    for h in shown:
        table.add_column(h, justify="left" if h == "recompute" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(row[i] for i in index))
    buffer = io.StringIO()
    Console(file=buffer, width=1000, force_terminal=False, color_system=None).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def fit_text(text: str, width: int | None = None) -> str:
    """``text`` with each line longer than ``width`` (default: :func:`terminal_width`) wrapped, the
    continuation indented two spaces past the line's own indent. Lines break after a list separator
    (", ", "; ", ": ") where they can, so a "name value" pair of a breakdown stays on one line."""
    limit = width or terminal_width()
    lines: list[str] = []
    for line in text.splitlines():
        if len(line) <= limit:
            lines.append(line)
            continue
        indent = line[:len(line) - len(line.lstrip())] + "  "
        current = ""
        for piece in re.split(r"(?<=, )|(?<=; )|(?<=: )|(?<= \| )", line):
            if current.strip() and len(current) + len(piece.rstrip()) > limit:
                lines.append(current.rstrip())
                current = indent
            current += piece
        if current.strip():
            lines.append(current.rstrip())
    # a piece longer than the line by itself: ordinary word wrapping
    wrapped: list[str] = []
    for line in lines:
        if len(line) <= limit:
            wrapped.append(line)
        else:
            indent = line[:len(line) - len(line.lstrip())]
            wrapped.extend(textwrap.wrap(line, width=limit, subsequent_indent=indent + "  ",
                                         break_on_hyphens=False) or [line])
    return "\n".join(wrapped)


def breakdown_text(metrics: PlanMetrics, index: int = 0) -> str:
    """The full memory and time breakdown of one plan."""
    parts = [f"  peak reserved memory per GPU {metrics.memory_bytes[index] / GIB:.2f} GiB ({STAGES[metrics.peak_stage[index]]} stage): "
             + ", ".join(f"{p} {metrics.memory_parts_bytes[p][index] / GIB:.2f}" for p in MEMORY_PARTS)]
    parts.append(f"  step time {metrics.step_time_s[index]:.3f} s: "
                 + ", ".join(f"{p} {metrics.step_time_parts_s[p][index]:.3f}" for p in TIME_PARTS
                             if metrics.step_time_parts_s[p][index] > 0))
    parts.append("  traffic per GPU per step: "
                 + ", ".join(f"{d.upper()} {metrics.comm_bytes_per_step[d][index] / 1e9:.1f} GB" for d in COMM_DIMS
                             if metrics.comm_bytes_per_step[d][index] > 0))
    parts.append(goodput_text(metrics, index))
    return "\n".join(parts)


def goodput_text(metrics: PlanMetrics, index: int = 0) -> str:
    """One plan's goodput in a line: failures, checkpoints, restarts and the ETTR they leave."""
    spares = metrics.spare_gpus[index]
    return (f"  goodput: ETTR {metrics.ettr[index]:.1%}; a failure every {metrics.mtbf_s[index] / 3600:,.1f} h; "
            f"checkpoint {metrics.checkpoint_bytes_per_rank[index] / 1e9:.2f} GB per GPU, "
            f"{metrics.checkpoint_save_s[index]:.1f} s stopped every {metrics.checkpoint_interval_s[index] / 60:.1f} min; "
            f"restart {metrics.restart_s[index] / 60:.1f} min" + (f"; {spares:,.0f} spare GPUs" if spares else ""))


def to_csv(metrics: PlanMetrics, limit_bytes: float, fits: bool | None = None, band: Band | None = None) -> str:
    """One CSV row per plan: :meth:`PlanMetrics.to_frame`'s columns with the recompute mode as its name
    (``none``, ``selective``, ``full``), the selective modules as Megatron's names joined by ``+``
    (``core_attn+mlp``; empty unless selective) and a ``fits`` column: the plan's memory within
    ``limit_bytes``, or ``fits`` when the caller decided it (``evaluate`` also checks the rules). With a
    ``band``, the band's ends of throughput, days, GPU-hours and cost follow (:func:`band_columns`)."""
    frame = metrics.to_frame()
    for name, values in band_columns(metrics, band).items():
        frame[name] = values
    modes, masks = frame["recompute"].to_numpy(), frame["recompute_modules"].to_numpy()
    frame["recompute"] = [RECOMPUTE_MODES[mode] for mode in modes]
    frame["recompute_modules"] = ["+".join(module_names(mask)) if mode == SELECTIVE else ""
                                  for mode, mask in zip(modes, masks)]
    frame["fits"] = metrics.memory_bytes <= limit_bytes if fits is None else fits
    return frame.to_csv(index=False)


def uncertainty_record(band: Band | None, tied_plans: int | None = None) -> dict[str, Any] | None:
    """The band once per result in JSON output (``uncertainty``): its group, rows, residual percentiles
    and multipliers, and how many leading plans it leaves tied (:func:`optimizer.ranking.tied_with_leader`;
    absent where the objective is not throughput-like). None without a band."""
    if band is None:
        return None
    record = band.record()
    if tied_plans is not None:
        record["tied_plans"] = tied_plans
        record["tie_rule"] = ("a plan is tied with plan 1 when its objective is within plus_minus of plan 1's, "
                              "as are all plans ranked between them")
    return record


def band_note(band: Band, tied_plans: int = 0, shown: int = 0, width: int | None = None) -> str:
    """What the ± means, under the table, and the leading plans the band leaves tied (when 2 or more):
    'Plans 1-3 are tied within the model's ±9% error band (leave-one-source-out, 41 comparable runs)'.
    Each sentence is wrapped to ``width`` (default: :func:`terminal_width`)."""
    sentences = [f"{band.percent_text} on tok/s/GPU: 80% of {band.rows} comparable published runs "
                 f"({band.label}) measured {band.low_factor:.2f}x to {band.high_factor:.2f}x the prediction, "
                 "leave-one-source-out."]
    if tied_plans >= 2:
        every = " (every plan shown)" if tied_plans == shown else ""
        plans = "Plans 1 and 2 are" if tied_plans == 2 else f"Plans 1-{tied_plans}{every} are"
        sentences.append(f"{plans} tied within the model's {band.percent_text} error band (leave-one-source-out, "
                         f"{band.rows} comparable runs): the model cannot resolve their order.")
    limit = width or terminal_width()
    return "\n".join(textwrap.fill(sentence, width=limit, subsequent_indent="  ", break_on_hyphens=False)
                     for sentence in sentences)


def band_range_text(metrics: PlanMetrics, band: Band, index: int = 0) -> str:
    """The band's ends of one plan's throughput, and of its effective days and cost where known (as the
    table shows them: the band scales the step time, and the effective totals with it):
    '  80% band: 851-1,093 tok/s/GPU, 10.2-13.1 days, $0.52-0.67M'."""
    ends = {name: float(values[index]) for name, values in band_columns(metrics, band).items()}
    parts = [f"{ends['tokens_per_s_per_gpu_low']:,.0f}-{ends['tokens_per_s_per_gpu_high']:,.0f} tok/s/GPU"]
    days_low, days_high = (float(end[0]) for end in band.duration_range(metrics.effective_time_to_train_s[index:index + 1] / 86400))
    cost_low, cost_high = (float(end[0]) for end in band.duration_range(metrics.effective_cost_usd[index:index + 1]))
    if math.isfinite(days_low):
        parts.append(f"{days_low:.1f}-{days_high:.1f} days")
    if math.isfinite(cost_low):
        parts.append(f"${cost_low / 1e6:.2f}-{cost_high / 1e6:.2f}M")
    return "  80% band: " + ", ".join(parts)
