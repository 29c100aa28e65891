"""Plans as JSON documents, CSV and terminal tables (the output schema is documented in the README)."""

from __future__ import annotations

import io
import math
from typing import Any

from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich import box
from rich.table import Table

from cost_model.evaluate import MEMORY_PARTS, TIME_PARTS, COMM_DIMS, PlanMetrics
from cost_model.memory import GIB
from cost_model.plan import RECOMPUTE_MODES, SELECTIVE, module_names
from cost_model.stages import STAGES

from .search import Scenario

if TYPE_CHECKING:  # pandas is imported by whoever builds the frame
    import pandas as pd


def _number(value: Any) -> Any:
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    return value


def plan_records(metrics: PlanMetrics, limit_bytes: float) -> list[dict[str, Any]]:
    """One JSON object per plan (fields listed in the README's output schema)."""
    cols = metrics.plans.to_columns()
    records = []
    for i in range(len(metrics)):
        record = {
            "tp": cols["tp"][i], "pp": cols["pp"][i], "dp": cols["dp"][i], "cp": cols["cp"][i],
            "ep": cols["ep"][i], "etp": cols["etp"][i], "vpp": cols["vpp"][i],
            "micro_batch": cols["micro_batch"][i], "num_microbatches": metrics.num_microbatches[i],
            "recompute": RECOMPUTE_MODES[cols["recompute"][i]],
            "recompute_num_layers": cols["recompute_num_layers"][i] if cols["recompute_num_layers"][i] >= 0 else None,
            "recompute_modules": (module_names(cols["recompute_modules"][i])
                                  if cols["recompute"][i] == SELECTIVE else []),
            "sequence_parallel": cols["sequence_parallel"][i], "zero_stage": cols["zero_stage"][i],
            "optimizer_offload": cols["optimizer_offload"][i],
            "activation_offload_layers": cols["activation_offload_layers"][i], "num_gpus": metrics.plans.num_gpus[i],
            "memory_gib": metrics.memory_bytes[i] / GIB,
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
            "fits": metrics.memory_bytes[i] <= limit_bytes,
        }
        records.append(_clean(record))
    return records


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
        "price_per_gpu_hour_usd": cl.economics.price_per_gpu_hour_usd,
    })


def scenario_header(scenario: Scenario) -> str:
    tr, cl = scenario.training, scenario.cluster
    gpus = "/".join(str(n) for n in scenario.gpu_counts)
    tokens = tr.global_batch_tokens / 1e6
    return (f"{scenario.model.name} on {cl.name}: {gpus} x {cl.gpu.name} ({cl.gpu.memory_gib:.1f} GiB usable, "
            f"{scenario.memory_limit_bytes / GIB:.1f} GiB limit) | seq {tr.seq_length}, global batch "
            f"{tr.global_batch_size} ({tokens:.1f}M tokens), {tr.precision} | objective {scenario.options.objective}")


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


def render_table(metrics: PlanMetrics, title: str, width: int = 200) -> str:
    table = Table(title=title, title_justify="left", show_lines=False, pad_edge=False, box=box.SIMPLE_HEAD)
    headers = ["#", "TP", "PP", "DP", "CP", "EP", "VPP", "MBS", "recompute", "SP", "ZeRO", "mem GiB",
               "step s", "tok/s/GPU", "TFLOP/s/GPU", "MFU", "days", "cost $M"]
    for h in headers:
        table.add_column(h, justify="right" if h not in ("recompute",) else "left")
    cols = metrics.plans.to_columns()
    for i in range(len(metrics)):
        days = metrics.time_to_train_s[i] / 86400
        cost = metrics.cost_usd[i] / 1e6
        table.add_row(
            str(i + 1), str(cols["tp"][i]), str(cols["pp"][i]), str(cols["dp"][i]), str(cols["cp"][i]),
            f"{cols['ep'][i]}" + (f"/{cols['etp'][i]}" if cols["etp"][i] > 1 else ""), str(cols["vpp"][i]),
            str(cols["micro_batch"][i]), _recompute_label(cols["recompute"][i], cols["recompute_num_layers"][i],
                                                              cols["recompute_modules"][i],
                                                              cols["activation_offload_layers"][i]),
            "y" if cols["sequence_parallel"][i] else "n",
            str(cols["zero_stage"][i]) + ("+off" if cols["optimizer_offload"][i] else ""),
            f"{metrics.memory_bytes[i] / GIB:.1f}", f"{metrics.step_time_s[i]:.3f}",
            f"{metrics.tokens_per_s[i] / metrics.plans.num_gpus[i]:,.0f}", f"{metrics.tflops_per_gpu[i]:.0f}",
            f"{metrics.mfu[i]:.1%}", "-" if math.isnan(days) else f"{days:.1f}",
            "-" if math.isnan(cost) else f"{cost:.2f}",
        )
    buffer = io.StringIO()
    Console(file=buffer, width=width, force_terminal=False, color_system=None).print(table)
    return buffer.getvalue()


def breakdown_text(metrics: PlanMetrics, index: int = 0) -> str:
    """The full memory and time breakdown of one plan."""
    parts = [f"  memory per GPU {metrics.memory_bytes[index] / GIB:.2f} GiB ({STAGES[metrics.peak_stage[index]]} stage): "
             + ", ".join(f"{p} {metrics.memory_parts_bytes[p][index] / GIB:.2f}" for p in MEMORY_PARTS)]
    parts.append(f"  step time {metrics.step_time_s[index]:.3f} s: "
                 + ", ".join(f"{p} {metrics.step_time_parts_s[p][index]:.3f}" for p in TIME_PARTS
                             if metrics.step_time_parts_s[p][index] > 0))
    parts.append("  traffic per GPU per step: "
                 + ", ".join(f"{d.upper()} {metrics.comm_bytes_per_step[d][index] / 1e9:.1f} GB" for d in COMM_DIMS
                             if metrics.comm_bytes_per_step[d][index] > 0))
    return "\n".join(parts)


def to_csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False)
