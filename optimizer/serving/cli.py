"""``plan-search serve``: search serving plans (``plan-search serve CLUSTER MODEL WORKLOAD``, the
``search`` sub-command implied) or price one (``plan-search serve evaluate ...``).

Exit codes as the training commands: 0 plans meet the SLO (``evaluate``: the plan breaks no rule), 1
none does (with what binds and what would), 2 bad input (one line), 130 Ctrl-C (nothing printed as if
complete).
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, Optional

import typer
from typer.core import TyperGroup

from hardware.errors import InputError

from ..output_format import OutputFormat
from .inputs import (check_supported, check_target, parse_gpu_budget, parse_kv_dtypes, parse_modes,
                     parse_precisions, precision_supported)
from .ranking import NEEDS_TARGET, OBJECTIVES


class _DefaultServeSearch(TyperGroup):
    """Route ``plan-search serve CLUSTER MODEL WORKLOAD ...`` to ``serve search``."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["search", *args]
        return super().parse_args(ctx, args)


serve_app = typer.Typer(cls=_DefaultServeSearch, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                        help="Search inference serving plans (layouts, batch, KV cache, SLOs, $ per million tokens).")


class Engine(str, Enum):
    vllm = "vllm"
    sglang = "sglang"
    trtllm = "trtllm"


class Mode(str, Enum):
    agg = "agg"
    disagg = "disagg"


CLUSTER_ARG = typer.Argument(..., help="Cluster YAML file or preset name (e.g. h100x8).")
MODEL_ARG = typer.Argument(..., help="model.yaml, Hugging Face config.json or preset name (e.g. llama3-70b).")
WORKLOAD_ARG = typer.Argument(..., help="Workload YAML or preset (chat-1k-1k, rag-8k-1k, reasoning-1k-8k, ...).")
PRICE_OPTION = typer.Option(None, "--price", help="Price per GPU-hour in USD (for $ per million tokens).")
RATE_OPTION = typer.Option(None, "--target-rate", help="Open-loop target: requests per second (Poisson).")
CONCURRENCY_OPTION = typer.Option(None, "--target-concurrency", help="Closed-loop target: requests in flight.")
MAX_LEN_OPTION = typer.Option(None, "--max-model-len", help="Longest request in tokens (default: the workload's).")
FORMAT_OPTION = typer.Option(OutputFormat.table, "--format", help="table, json or csv.")
MODEL_PATH_OPTION = typer.Option(None, "--model-path", help="With --emit: the checkpoint (path or Hugging Face id) "
                                 "the engine loads (default: MODEL).")


def _check_emit(engine: Engine | None, output: OutputFormat, model_path: str | None) -> None:
    """--emit has no place in CSV; --model-path only says what --emit's command loads."""
    if engine and output is OutputFormat.csv:
        raise InputError("command line", "--emit", "has no place in CSV output (one row per plan)",
                         "use --format json or table, or drop --emit")
    if model_path is not None and not engine:
        raise InputError("command line", "--model-path", "names the checkpoint of the emitted command, but --emit "
                         "is not given", "add --emit vllm|sglang|trtllm or drop --model-path")


def _inputs(cluster: str, model: str, workload: str, price: float | None, max_model_len: int | None):
    """The cluster (with ``--price``), the model and the workload (with ``--max-model-len``)."""
    from cost_model.model_loader import load_model
    from cost_model.serving.workload import load_workload
    from optimizer.cli import _cluster

    cluster_spec = _cluster(cluster, price)
    model_input = load_model(model)
    workload_spec = load_workload(workload)
    if max_model_len is not None:
        workload_spec = with_max_model_len(workload_spec, max_model_len)
    return cluster_spec, model_input, workload_spec


def with_max_model_len(workload, max_model_len: int):
    """The workload with another longest request (``--max-model-len``), refused in one line when it is
    not a positive whole number of tokens or cannot hold the workload's requests."""
    import dataclasses

    if max_model_len < 1:
        raise InputError("command line", "--max-model-len", f"must be at least 1 token, got {max_model_len}",
                         "fix the value")
    try:
        return dataclasses.replace(workload, max_model_len=max_model_len)
    except ValueError as error:
        raise InputError("command line", "--max-model-len", str(error), "use a longer length") from None


def checkpoint_precision(model_spec) -> str:
    """The weight precision the checkpoint ships (its HF ``quantization_config``, read by the model
    loader into ``checkpoint_weight_format``; BF16 without one)."""
    return model_spec.checkpoint_precision


def _grid(model_spec, cluster_spec, gpus: str | None, modes: str | None, precision: str | None,
          kv_dtype: str | None):
    """The search grid from the flags: GPU budget, modes, precisions (default: the checkpoint's, on a
    GPU that runs it, else BF16) and KV dtypes (default BF16: FP8 KV changes what the model computes,
    so it is the user's choice, and the advice says when it would help)."""
    from .grid import ServingGrid

    low, high = parse_gpu_budget(gpus, cluster_spec)
    precisions = parse_precisions(precision)
    if precisions is None:
        native = checkpoint_precision(model_spec)
        precisions = (native,) if precision_supported(cluster_spec.gpu, native) else ("bf16",)
    check_supported("--precision", precisions, cluster_spec.gpu)
    kv_dtypes = parse_kv_dtypes(kv_dtype) or ("bf16",)
    check_supported("--kv-dtype", kv_dtypes, cluster_spec.gpu)
    return ServingGrid(max_gpus=high, min_gpus=low, is_moe=bool(model_spec.num_experts),
                       num_experts=model_spec.num_experts, num_layers=model_spec.num_layers,
                       weight_precisions=precisions, kv_dtypes=kv_dtypes, modes=parse_modes(modes) or ("agg",))


@serve_app.command("search")
def serve_search_command(
    cluster: str = CLUSTER_ARG,
    model: str = MODEL_ARG,
    workload: str = WORKLOAD_ARG,
    objective: str = typer.Option("goodput_per_gpu", "--objective", help=f"One of: {', '.join(OBJECTIVES)}."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPU budget: N (at most N) or A-B (default: the cluster)."),
    target_rate: Optional[float] = RATE_OPTION,
    target_concurrency: Optional[float] = CONCURRENCY_OPTION,
    price: Optional[float] = PRICE_OPTION,
    modes: Optional[str] = typer.Option(None, "--modes", help="agg, disagg or agg,disagg (default agg)."),
    precision: Optional[str] = typer.Option(None, "--precision",
                                            help="Weight precisions: bf16,fp8,fp4 (default: the checkpoint's)."),
    kv_dtype: Optional[str] = typer.Option(None, "--kv-dtype", help="KV cache dtypes: bf16,fp8 (default bf16)."),
    max_model_len: Optional[int] = MAX_LEN_OPTION,
    top: int = typer.Option(10, "--top", help="Plans to show."),
    pareto: bool = typer.Option(False, "--pareto", help="Show the tokens/s/GPU vs tokens/s/user frontier instead."),
    output: OutputFormat = FORMAT_OPTION,
    engine: Optional[Engine] = typer.Option(None, "--emit", help="Print the best plan's engine arguments; the "
                                            "search keeps only plans the engine starts."),
    model_path: Optional[str] = MODEL_PATH_OPTION,
    all_knobs: bool = typer.Option(False, "--all-knobs", help="List every knob variant of a layout (default: "
                                   "the best batch limit, chunk budget and CUDA-graph setting of each)."),
    wide: bool = typer.Option(False, "--wide", help="Show every table column, whatever the terminal width."),
) -> None:
    """Search serving plans and rank those that meet the workload's SLOs (what ``plan-search serve C M W`` runs)."""
    from .advice import advise
    from .report import (plan_records, render_plans, scenario_header, scenario_record, search_line, to_csv,
                         breakdown_text)
    from .search import ServingScenario, search_serving
    from ..report import fit_text

    if objective not in OBJECTIVES:
        raise InputError("command line", "--objective", f"{objective!r} is not one of {', '.join(OBJECTIVES)}",
                         f"write e.g. --objective {OBJECTIVES[0]}")
    if top < 1:
        raise InputError("command line", "--top", f"must be at least 1, got {top}", "fix the value")
    _check_emit(engine, output, model_path)
    check_target(target_rate, target_concurrency)
    cluster_spec, model_input, workload_spec = _inputs(cluster, model, workload, price, max_model_len)
    if objective in NEEDS_TARGET and target_rate is None and target_concurrency is None \
            and not _has_arrival(workload_spec):
        raise InputError("command line", "--objective", f"{objective} needs a load to size for",
                         "add --target-rate REQ_PER_S or --target-concurrency C")
    grid = _grid(model_input.spec, cluster_spec, gpus, modes, precision, kv_dtype)
    scenario = ServingScenario(model=model_input.spec, cluster=cluster_spec, workload=workload_spec, grid=grid,
                               objective=objective, top_k=top, target_rate_per_s=target_rate,
                               target_concurrency=target_concurrency, model_source=model,
                               best_per_layout=not all_knobs, engine=engine.value if engine else None)
    from optimizer.cli import _progress_bar

    with _progress_bar(enabled=output is OutputFormat.table, label="pricing serving plans") as progress:
        result = search_serving(scenario, pareto=pareto, progress=progress)
    shown = result.pareto if pareto else result.ranked
    advice = None if result.found else advise(result)
    emissions = _emissions(engine, shown, scenario, model_path) if engine and shown is not None else []
    if output is OutputFormat.json:
        document = {"scenario": scenario_record(scenario), "search": search_record(result),
                    "plans": plan_records(shown, scenario) if shown is not None else [],
                    "advice": advice.to_dict() if advice else None}
        if engine:
            document["emit"] = [_emission_record(e) for e in emissions]
        typer.echo(json.dumps(document, indent=2))
    elif output is OutputFormat.csv:
        typer.echo(to_csv(shown, scenario) if shown is not None else "", nl=False)
    else:
        typer.echo(fit_text(scenario_header(scenario)))
        typer.echo(fit_text(search_line(result)))
        if shown is not None:
            title = ("Pareto frontier: output tok/s/GPU vs tok/s/user (servable plans)" if pareto
                     else f"Top {len(shown)} plans by {objective}")
            typer.echo(render_plans(shown, scenario, title, wide=wide))
            typer.echo("Plan 1:")
            typer.echo(fit_text(breakdown_text(shown, scenario, 0)))
        if advice:
            typer.echo(fit_text(advice.text()))
        for emission in emissions:
            typer.echo(_emission_text(emission))
    raise typer.Exit(0 if result.found else 1)


def search_record(result) -> dict[str, Any]:
    """The search's counts in JSON: plans in the grid, priced (fewer when coarse to fine), servable (every
    rule but the latency SLOs), meeting the SLO, broken per rule and broken alone; seconds."""
    return {"grid_plans": result.grid_plans, "candidates": result.candidates, "servable": result.servable,
            "meeting_slo": result.meeting_slo,
            "broken": result.broken, "broken_alone": result.broken_alone,
            "seconds": round(result.seconds["total"], 4)}


def _has_arrival(workload) -> bool:
    return getattr(workload, "request_rate_per_s", None) is not None or getattr(workload, "concurrency", None) is not None


def _emissions(engine: Engine, kept, scenario, model_path: str | None) -> list:
    """The engine arguments of plan 1 (one emission per instance kind: prefill and decode when
    disaggregated), loading ``model_path`` (default: the MODEL argument)."""
    from optimizer.emit.serving import emit_serving

    if not len(kept):
        return []
    return list(emit_serving(engine.value, kept.plans.record(0), scenario.model, model_path or scenario.model_source,
                             scenario.workload.model_len, speculative=scenario.workload.speculative,
                             gpus_per_node=scenario.cluster.topology.gpus_per_node, gpu=scenario.cluster.gpu))


def _emission_record(emission) -> dict[str, Any]:
    """One emission in JSON output: the engine, the release it is checked against, the command as an
    argument list, the environment, what the engine runs differently from the priced plan, the text."""
    return {"plan": 1, "engine": emission.framework, "tested_version": emission.tested_version,
            "argv": list(emission.argv), "env": dict(emission.env), "differences": list(emission.differences),
            "text": emission.text}


def _emission_text(emission) -> str:
    lines = [f"\n{emission.framework} arguments of plan 1 (tested with {emission.tested_version}):", emission.text]
    if emission.differences:
        lines.append("differs from the priced plan:")
        lines.extend(f"  - {difference}" for difference in emission.differences)
    return "\n".join(lines)


@serve_app.command("evaluate")
def serve_evaluate_command(
    cluster: str = CLUSTER_ARG,
    model: str = MODEL_ARG,
    workload: str = WORKLOAD_ARG,
    mode: Mode = typer.Option(Mode.agg, "--mode", help="agg (every instance prefills and decodes) or disagg."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel size of each (decode) instance."),
    pp: int = typer.Option(1, "--pp", help="Pipeline stages."),
    ep: int = typer.Option(1, "--ep", help="Expert-parallel size."),
    attn_dp: int = typer.Option(1, "--attn-dp", help="Attention data-parallel ranks."),
    moe_tp: Optional[int] = typer.Option(None, "--moe-tp", help="Tensor split of each expert (default tp x attn-dp / ep)."),
    replicas: int = typer.Option(1, "--replicas", help="Instances (disagg: decode instances)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="bf16, fp8 or fp4 (default: the checkpoint's)."),
    kv_dtype: str = typer.Option("bf16", "--kv-dtype", help="bf16 or fp8."),
    max_num_seqs: int = typer.Option(256, "--max-num-seqs", help="Requests per attention rank at once."),
    max_num_batched_tokens: int = typer.Option(8192, "--max-num-batched-tokens", help="Chunked-prefill token budget."),
    cuda_graphs: bool = typer.Option(True, "--cuda-graphs/--no-cuda-graphs", help="Replay CUDA graphs for decode."),
    prefill_tp: Optional[int] = typer.Option(None, "--prefill-tp", help="disagg: prefill instance TP (default --tp)."),
    prefill_pp: Optional[int] = typer.Option(None, "--prefill-pp", help="disagg: prefill pipeline stages."),
    prefill_ep: Optional[int] = typer.Option(None, "--prefill-ep", help="disagg: prefill expert-parallel size."),
    prefill_attn_dp: Optional[int] = typer.Option(None, "--prefill-attn-dp", help="disagg: prefill attention DP."),
    prefill_instances: int = typer.Option(1, "--prefill-instances", help="disagg: prefill instances."),
    target_rate: Optional[float] = RATE_OPTION,
    target_concurrency: Optional[float] = CONCURRENCY_OPTION,
    price: Optional[float] = PRICE_OPTION,
    max_model_len: Optional[int] = MAX_LEN_OPTION,
    output: OutputFormat = FORMAT_OPTION,
    engine: Optional[Engine] = typer.Option(None, "--emit", help="Print the plan's engine arguments and check "
                                            "the engine's start-up rules."),
    model_path: Optional[str] = MODEL_PATH_OPTION,
    wide: bool = typer.Option(False, "--wide", help="Show every table column, whatever the terminal width."),
) -> None:
    """Price one serving plan: memory, latency, throughput, cost, and every rule it breaks (why_not)."""
    from .report import (breakdown_text, nic_notes, plan_records, render_plans, scenario_header, scenario_record,
                         to_csv, why_not)
    from .search import Kept, ServingScenario, evaluate
    from ..report import fit_text

    _check_emit(engine, output, model_path)
    check_target(target_rate, target_concurrency)
    cluster_spec, model_input, workload_spec = _inputs(cluster, model, workload, price, max_model_len)
    spec = model_input.spec
    names = parse_precisions(precision) or (checkpoint_precision(spec),)
    kv = parse_kv_dtypes(kv_dtype)
    for flag, values in (("--precision", names), ("--kv-dtype", kv)):
        if len(values) != 1:
            raise InputError("command line", flag, "evaluate prices one plan: give one value", f"e.g. {flag} {values[0]}")
    plans = evaluate_plan_arrays(
        mode=mode.value, tp=tp, pp=pp, ep=ep, attn_dp=attn_dp, moe_tp=moe_tp, replicas=replicas,
        weight_precision=names[0], kv_dtype=kv[0], max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, cuda_graphs=cuda_graphs,
        prefill={"tp": prefill_tp, "pp": prefill_pp, "ep": prefill_ep, "attn_dp": prefill_attn_dp},
        prefill_instances=prefill_instances)
    from .grid import ServingGrid

    grid = ServingGrid(max_gpus=max(int(plans.num_gpus[0]), 1), is_moe=bool(spec.num_experts),
                       num_experts=spec.num_experts, num_layers=spec.num_layers, weight_precisions=names,
                       kv_dtypes=kv, modes=(mode.value,))
    scenario = ServingScenario(model=spec, cluster=cluster_spec, workload=workload_spec, grid=grid,
                               target_rate_per_s=target_rate, target_concurrency=target_concurrency,
                               top_k=1, model_source=model, engine=engine.value if engine else None)
    metrics = evaluate(scenario, plans)
    kept = Kept(plans, metrics)
    reasons = why_not(kept, scenario, 0)
    notes = nic_notes(kept, scenario, 0)
    emissions = _emissions(engine, kept, scenario, model_path) if engine else []
    if output is OutputFormat.json:
        record = plan_records(kept, scenario)[0]
        record["why_not"] = reasons
        record["priced_on_nic"] = notes
        document = {"scenario": scenario_record(scenario), "plan": record}
        if engine:
            document["emit"] = [_emission_record(e) for e in emissions]
        typer.echo(json.dumps(document, indent=2))
    elif output is OutputFormat.csv:
        typer.echo(to_csv(kept, scenario), nl=False)
    else:
        typer.echo(fit_text(scenario_header(scenario)))
        typer.echo(render_plans(kept, scenario, "Plan", wide=wide))
        typer.echo(fit_text(breakdown_text(kept, scenario, 0)))
        for note in notes:
            typer.echo(fit_text(f"  priced on the NIC: {note}"))
        typer.echo(fit_text("meets every rule: yes" if not reasons else
                            "meets every rule: no\n  " + "\n  ".join(reasons)))
        for emission in emissions:
            typer.echo(_emission_text(emission))
    raise typer.Exit(0 if not reasons else 1)


def evaluate_plan_arrays(*, mode: str, tp: int, pp: int, ep: int, attn_dp: int, moe_tp: int | None,
                         replicas: int, weight_precision: str, kv_dtype: str, max_num_seqs: int,
                         max_num_batched_tokens: int, cuda_graphs: bool, prefill: dict[str, int | None],
                         prefill_instances: int):
    """The one plan ``serve evaluate`` prices, each flag checked: degrees, counts and budgets from 1 to
    :data:`LARGEST_VALUE`, tp x attn_dp divisible by ep (the MoE regrouping). A plan that is possible to write but breaks a serving rule (more GPUs than the cluster, heads
    not divisible, KV not fitting) is priced and reported by ``why_not``, not refused here; a group wider
    than the NVLink domain is priced on the NIC and said so."""
    from cost_model.serving.plan import InstanceArrays, ServingPlanArrays

    values = {"--tp": tp, "--pp": pp, "--ep": ep, "--attn-dp": attn_dp, "--replicas": replicas,
              "--max-num-seqs": max_num_seqs, "--max-num-batched-tokens": max_num_batched_tokens,
              "--prefill-instances": prefill_instances, "--moe-tp": moe_tp,
              **{f"--prefill-{k.replace('_', '-')}": v for k, v in prefill.items()}}
    for flag, value in values.items():
        if value is None:
            continue
        if value < 1:
            raise InputError("command line", flag, f"must be at least 1, got {value}", "fix the value")
        if value > LARGEST_VALUE:
            raise InputError("command line", flag, f"{value:,} is beyond any serving deployment",
                             f"use at most {LARGEST_VALUE:,}")

    def instance(tp_: int, pp_: int, ep_: int, attn_dp_: int, moe_tp_: int | None, flags: str) -> InstanceArrays:
        ranks = tp_ * attn_dp_
        if moe_tp_ is None:
            if ranks % ep_:
                raise InputError("command line", f"--{flags}ep", f"{ep_} does not divide tp x attn-dp = {ranks}: the "
                                 "MoE layers regroup the attention ranks as moe-tp x ep", "use a divisor of tp x attn-dp")
            moe_tp_ = ranks // ep_
        elif moe_tp_ * ep_ != ranks:
            raise InputError("command line", "--moe-tp", f"moe-tp x ep = {moe_tp_ * ep_} differs from tp x attn-dp "
                             f"= {ranks}", "the MoE layers regroup the same ranks: make the products equal")
        return InstanceArrays.from_columns({
            "tp": tp_, "pp": pp_, "ep": ep_, "attn_dp": attn_dp_, "moe_tp": moe_tp_,
            "weight_precision": weight_precision, "kv_dtype": kv_dtype, "max_num_seqs": max_num_seqs,
            "max_num_batched_tokens": max_num_batched_tokens, "cuda_graphs": cuda_graphs})

    decode = instance(tp, pp, ep, attn_dp, moe_tp, "")
    if mode == "agg":
        if any(v is not None for v in prefill.values()) or prefill_instances != 1:
            raise InputError("command line", "--prefill-*", "set a prefill instance, which only disaggregated "
                             "plans have", "add --mode disagg or drop the --prefill-* flags")
        plans = ServingPlanArrays.aggregated(decode, replicas)
    else:
        first = instance(prefill["tp"] or tp, prefill["pp"] or pp, prefill["ep"] or ep,
                         prefill["attn_dp"] or attn_dp, None if any(prefill.values()) else moe_tp, "prefill-")
        plans = ServingPlanArrays.disaggregated_plans(first, decode, prefill_instances, replicas)
    return plans


LARGEST_VALUE = 2 ** 20
"""Largest degree, count or token budget ``serve evaluate`` takes: beyond every cluster preset (the
plan's products stay far inside 64-bit integers). A plan larger than its cluster is priced and reported
by the ``fits_cluster`` rule."""
