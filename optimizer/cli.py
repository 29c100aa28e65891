"""The ``plan-search`` command line.

``plan-search CLUSTER MODEL`` searches (the ``search`` sub-command is implied); ``evaluate`` prices one
given plan; ``hardware`` lists and shows cluster presets; ``models`` lists model presets; ``serve`` searches
and prices inference serving plans (:mod:`optimizer.serving.cli`). Exit codes:
0 plans found, 1 nothing fits (with the explanation), 2 bad input (one line, never a traceback), 3 the layout
solver stopped before proving its answer (no result is printed), 70 a defect of plan-search itself (one
line; ``PLAN_SEARCH_DEBUG=1`` shows the traceback), 130 interrupted (Ctrl-C).

``search`` pins part of the layout with ``--tp/--pp/--dp/--cp/--ep/--etp`` (rules ``<degree>_pinned`` of
:mod:`optimizer.layout_model`) and ``--vpp/--micro-batch`` (the schedule grid); ``--emit`` prints the
launch of plan ``--emit-plan N`` (or ``all``), each under a header naming the plan's rank and the framework
release it is tested against (``TESTED_VERSION`` of the framework's module in :mod:`optimizer.emit`);
``--version`` lists those releases. Tables and prose fit the terminal's width (``--wide``: every column);
help is click's plain help, which wraps instead of cutting option names at 80 columns.

Once a calibration has written uncertainty bands (``cost_model/calibration/fitted.yaml``, or the file the
``PLAN_SEARCH_FITTED`` environment variable names; set it empty for none), ``search`` and ``evaluate`` show
each throughput with its band (:mod:`cost_model.calibration.bands`) and ``search`` says which leading plans
the band leaves tied; without bands their output is as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import statistics
import sys
import warnings
from enum import Enum
from typing import Any, Optional

import typer
from typer.core import TyperGroup

from cost_model.model_loader import build_training, layered_training, load_model
from cost_model.plan import BY_VPP, CORE_ATTN, RECOMPUTE_CODE, RECOMPUTE_MODULES, SCHEDULES, PlanArrays, module_mask
from cost_model.compute import precision_conflict, precision_fix
from cost_model.evaluate import evaluate as evaluate_plans
from cost_model.memory import GIB, MEMORY_HEADROOM, fits_in_memory
from cost_model.options import CostOptions
from cost_model.stacks import STACK_NAMES
from hardware.cli import app as hardware_app
from hardware.errors import InputError, did_you_mean, shorten
from hardware.loader import load_cluster

from .explain import explain_no_fit
from .layout_model import RULES, LayoutModel, SearchIncomplete
from .models_command import models_app
from .plan_rules import rule_sentence, violations
from .ranking import objective_goodness, tied_with_leader
from .report import (band_note, band_range_text, breakdown_text, fit_text, plan_records, render_table,
                     scenario_header, scenario_record, to_csv, uncertainty_record)
from .output_format import OutputFormat
from .search import Scenario, search
from .search_options import OBJECTIVES, SearchOptions
from .serving.cli import serve_app


class _DefaultSearchGroup(TyperGroup):
    """Route ``plan-search CLUSTER MODEL ...`` to the ``search`` command."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["search", *args]
        return super().parse_args(ctx, args)


# Plain click help (rich_markup_mode=None): rich's help panels cut long option names ("--global-batch-t…")
# to fit 80 columns, because the longest name (--[no-]overlap-moe-expert-parallel-comm) sets the column.
app = typer.Typer(cls=_DefaultSearchGroup, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Search every TP x PP x DP x CP x EP layout of a training run and rank the plans that fit.")
app.add_typer(hardware_app, name="hardware", help="List and show GPU and cluster presets.")
app.add_typer(models_app, name="models")
app.add_typer(serve_app, name="serve")


def version_text() -> str:
    """plan-search's installed version and the framework releases its launch commands are tested against
    (each emitter's ``TESTED_VERSION``, :data:`optimizer.emit.FRAMEWORK_MODULES`)."""
    from importlib.metadata import PackageNotFoundError, version

    from .emit import FRAMEWORK_MODULES

    try:
        own = version("plan-search")
    except PackageNotFoundError:  # run from a source tree that was never installed
        own = "unknown (not installed)"
    lines = [f"plan-search {own}", "launch commands tested against:"]
    lines += [f"  {name}: {module.TESTED_VERSION}" for name, module in FRAMEWORK_MODULES.items()]
    return "\n".join(lines)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit(0)


@app.callback()
def _main_options(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and the framework releases emitted for, and exit."),
) -> None:
    """Search every TP x PP x DP x CP x EP layout of a training run and rank the plans that fit."""


class Emitter(str, Enum):
    megatron = "megatron"
    megatron_bridge = "megatron-bridge"
    torchtitan = "torchtitan"


class CPComm(str, Enum):
    p2p = "p2p"
    a2a = "a2a"


class Recompute(str, Enum):
    none = "none"
    selective = "selective"
    full = "full"


def _check_precision(training, cluster) -> None:
    """Refuse a precision the cluster's GPU cannot run (FP4 before Blackwell) before searching."""
    conflict = precision_conflict(training, cluster.gpu)
    if conflict:
        field, _ = precision_fix(training)
        fix = ("use --fp8-recipe tensorwise, delayed or blockwise" if field == "training.fp8_recipe"
               else "use --precision fp8 or bf16")
        raise InputError("training", field, conflict, fix + ", or a cluster of Blackwell GPUs (b200, gb200-nvl72, ...)")


def _parse_gpus(text: str | None, cluster) -> tuple[int, ...]:
    """``N``, ``A,B,C`` or ``A-B`` (whole nodes: power-of-two node counts between A and B, and both ends).

    A range runs upward (``64-8`` is refused, not read as 8-64); every count must be whole nodes of the
    cluster, which also bounds it by the cluster's size."""
    if text is None:
        return ()
    example = "write e.g. --gpus 512, --gpus 256,512 or --gpus 256-1024"
    per_node = cluster.topology.gpus_per_node
    try:
        if "-" in text:
            low, high = (int(x) for x in text.split("-", 1))
            if low > high:
                raise InputError("command line", "--gpus", f"the range {low}-{high} runs downward",
                                 f"write the smaller count first: --gpus {high}-{low}")
            nodes = {n for n in (2 ** k for k in range(0, 40)) if low <= n * per_node <= high}
            counts = {n * per_node for n in nodes} | {v for v in (low, high) if v % per_node == 0}
        else:
            counts = {int(x) for x in text.split(",")}
    except ValueError as error:
        if isinstance(error, InputError):
            raise
        raise InputError("command line", "--gpus", f"{text!r} is not a GPU count, list or range", example) from None
    bad = sorted(c for c in counts if c <= 0 or c % per_node or c > cluster.num_gpus)
    if bad or not counts:
        raise InputError("command line", "--gpus", f"{bad or text} is not a positive multiple of the "
                         f"{per_node} GPUs per node up to the cluster's {cluster.num_gpus}",
                         "use whole nodes of the cluster")
    return tuple(sorted(counts))


def _parse_values(flag: str, text: str | None, most: int, what: str) -> tuple[int, ...]:
    """A pinned value: ``N``, ``A,B,C``, ``A-B`` (every integer from A to B) or a mix (``1,4-8``).

    Each value from 1 to ``most`` (``what`` says what bounds it); a range runs upward. Returns () when
    the flag is not given (the value is free)."""
    if text is None:
        return ()
    values: set[int] = set()
    for item in text.split(","):
        match = re.fullmatch(r"\s*([+-]?\d{1,18})\s*(?:-\s*([+-]?\d{1,18})\s*)?", item)
        if not match:
            raise InputError("command line", flag, f"{shorten(text, 40)!r} is not a number, list or range",
                             f"write e.g. {flag} 8, {flag} 8,16 or {flag} 4-8")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if low > high:
            raise InputError("command line", flag, f"the range {low}-{high} runs downward",
                             f"write the smaller value first: {flag} {high}-{low}")
        if low < 1:
            raise InputError("command line", flag, f"must be at least 1, got {low}", "fix the value")
        if high > most:
            raise InputError("command line", flag, f"{high:,} is more than {what}", f"use at most {most:,}")
        values.update(range(low, high + 1))
    return tuple(sorted(values))


PIN_HELP = "Pin the {}: N, A,B or A-B."
"""Help of the search's pin flags (one short line: rich cuts long help columns at 80 columns)."""


STACK_OPTION = typer.Option(None, "--stack", help="Software stack: " + ", ".join(STACK_NAMES)
                            + " (default: the model file's training.stack, else megatron-core).")


EP_OVERLAP_OPTION = typer.Option(
    None, "--overlap-moe-expert-parallel-comm/--no-overlap-moe-expert-parallel-comm",
    help="Hide MoE all-to-alls behind another micro-batch (Megatron's merged 1F1B).")
DISPATCHER_OPTION = typer.Option(None, "--moe-token-dispatcher",
                                 help="alltoall, deepep or hybridep (Megatron's flex dispatcher).")
"""MoE training options that ``search`` and ``evaluate`` both take."""
CHECKPOINT_OPTION = typer.Option(None, "--checkpoint-mode",
                                 help="sync (default), async (Megatron --async-save) or in_memory (peer memory).")
SPARES_OPTION = typer.Option(None, "--spares", help=(
    "Hot spares: one spare node per N job nodes, 0 = none; a list 0,64,16 lets each plan take the one with "
    "the fewest effective GPU-hours."))
"""Goodput options (:mod:`cost_model.goodput`) that ``search`` and ``evaluate`` both take."""


def _parse_spares(text: str | None) -> tuple[int, ...] | None:
    """``--spares 0,64,16`` as (0, 16, 64); None when not given."""
    if text is None:
        return None
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 0:
        raise InputError("command line", "--spares", f"must list whole numbers of job nodes per spare, got {text!r}",
                         "e.g. --spares 0,64,16 (0 = no spares)")
    return values

TRAINING_FLAGS = {"seq_length": "--seq-len", "global_batch_size": "--global-batch", "hot_spare_nodes_per": "--spares"}
"""Command-line flags whose name is not the training setting's with dashes."""


def _training(model_input, **settings):
    """The model file's training section, with the command-line settings that were given on top.

    A flag overrides the file, including the file's other way of giving the batch (``--global-batch``
    replaces the file's ``global_batch_tokens``); both batch flags at once are refused. A bad value is
    reported against the flag that gave it, not against the model file."""
    given = {key: value for key, value in settings.items() if value is not None}
    if "global_batch_size" in given and "global_batch_tokens" in given:
        raise InputError("command line", "--global-batch-tokens", "is given together with --global-batch, and both "
                         "set the batch", "keep one: --global-batch (sequences) or --global-batch-tokens (tokens)")
    overrides = layered_training(model_input.training_overrides, given)
    try:
        return build_training(overrides, source=model_input.source or "training", model=model_input.spec)
    except InputError as error:
        key = error.field.removeprefix("training.")
        if key not in given:
            raise
        flag = TRAINING_FLAGS.get(key, "--" + key.replace("_", "-"))
        fix = error.fix if error.fix and error.fix != "fix the training setting" else "fix the option's value"
        raise InputError("command line", flag, error.problem, fix) from None


def _inputs(cluster: str, model: str, price: float | None, **training_settings):
    """The cluster (with a price override), the model and its training setup with command-line settings."""
    model_input = load_model(model)
    return _cluster(cluster, price), model_input, _training(model_input, **training_settings)


def _cluster(name: str, price: float | None):
    """The cluster, with ``--price`` (reported against the flag when it is not a sane price)."""
    cluster = load_cluster(name)
    if price is not None:
        try:
            cluster = cluster.with_overrides({"economics.price_per_gpu_hour_usd": price}, source="command line")
        except InputError as error:
            raise InputError("command line", "--price", error.problem, error.fix) from None
    return cluster


_OPTION_FLAGS = {"memory_headroom": "--headroom", "top_k": "--top", "objective": "--objective",
                 "zero_stages": "--zero", "recompute_modes": "--recompute", "rank_order": "--rank-order",
                 "gpu_counts": "--gpus", "schedules": "--schedule", "dp_replicate_values": "--dp-replicate"}
"""The flag that sets each search option, for errors (SearchOptions names the option first)."""


def _framework(framework: Emitter | None, emitter: Emitter | None) -> str:
    """The launcher the plans are searched for: ``--framework``, else ``--emit``'s, else Megatron-LM. The
    emitted plan must be one its framework accepts, so the two cannot differ."""
    if framework and emitter and framework is not emitter:
        raise InputError("command line", "--framework", f"{framework.value} differs from --emit {emitter.value}: "
                         "the emitted plan would be one searched for another launcher",
                         "drop --framework or give both the same launcher")
    return (framework or emitter or Emitter.megatron).value


def _options(**values: Any) -> SearchOptions:
    try:
        return SearchOptions(**{k: v for k, v in values.items() if v is not None})
    except ValueError as exc:
        message = str(exc)
        flag = _OPTION_FLAGS.get(message.split(" ", 1)[0], "options")
        raise InputError("command line", flag, message, "fix the option's value") from None


def _check_plan_flags(cluster_spec, model_spec, training, *, degrees: dict[str, int | None], vpp: int,
                      micro_batch: int, recompute_num_layers: int, activation_offload_layers: int) -> None:
    """Each of evaluate's plan flags within what the cluster and the model allow, the wrong flag named.

    A degree above the cluster's GPU count cannot be a layout (and a huge one would overflow the plan's
    64-bit columns); -1 or 1..layers is what Megatron's ``--recompute-num-layers`` accepts; a micro-batch
    cannot hold more sequences than the global batch."""
    gpus, layers = cluster_spec.num_gpus, model_spec.num_layers
    for name, value in degrees.items():
        if value is None:
            continue
        if value < 1:
            raise InputError("command line", f"--{name}", f"must be at least 1, got {value}", "fix the value")
        if value > gpus:
            raise InputError("command line", f"--{name}", f"{value:,} is more than the cluster's {gpus:,} GPUs",
                             f"use at most {gpus:,} or a larger cluster")
    for flag, value, most, what in (("--vpp", vpp, layers, f"the model's {layers} layers"),
                                    ("--micro-batch", micro_batch, training.global_batch_size,
                                     f"the global batch of {training.global_batch_size:,} sequences")):
        if value < 1:
            raise InputError("command line", flag, f"must be at least 1, got {value}", "fix the value")
        if value > most:
            raise InputError("command line", flag, f"{value:,} is more than {what}", f"use at most {most:,}")
    if recompute_num_layers != -1 and not 1 <= recompute_num_layers <= layers:
        raise InputError("command line", "--recompute-num-layers", f"must be -1 (all layers of each chunk) or "
                         f"1..{layers} (the model's layers), got {recompute_num_layers}", "fix the value")
    if not 0 <= activation_offload_layers <= layers:
        raise InputError("command line", "--activation-offload-layers", f"must be 0..{layers} (the model's layers), "
                         f"got {activation_offload_layers}", "fix the value")


@app.command("search")
def search_command(
    cluster: str = typer.Argument(..., help="Cluster YAML file or preset name (e.g. h100x1024)."),
    model: str = typer.Argument(..., help="model.yaml, Hugging Face config.json or preset name (e.g. llama3-70b)."),
    top: int = typer.Option(10, "--top", help="Plans to show."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPU counts: N, A,B,C or A-B (whole nodes)."),
    global_batch: Optional[int] = typer.Option(None, "--global-batch", help="Global batch in sequences."),
    global_batch_tokens: Optional[int] = typer.Option(None, "--global-batch-tokens", help="Global batch in tokens."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Sequence length."),
    train_tokens: Optional[float] = typer.Option(None, "--train-tokens", help="Training tokens, for time and cost."),
    precision: Optional[str] = typer.Option(None, "--precision", help="bf16, fp16, fp8 or fp4 (NVFP4, Blackwell)."),
    fp8_recipe: Optional[str] = typer.Option(None, "--fp8-recipe",
                                             help="tensorwise, delayed (default), mxfp8 or blockwise."),
    objective: str = typer.Option("throughput", "--objective", help=f"One of: {', '.join(OBJECTIVES)}."),
    output: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, json or csv."),
    emitter: Optional[Emitter] = typer.Option(None, "--emit", help="Print the best plan's launcher arguments."),
    framework: Optional[Emitter] = typer.Option(None, "--framework",
                                                help="Launcher the plans must run on (default: --emit's, else megatron)."),
    pareto: bool = typer.Option(False, "--pareto", help="Show the cost-versus-time Pareto plans instead."),
    headroom: float = typer.Option(MEMORY_HEADROOM, "--headroom",
                                  help="Fraction of usable GPU memory kept free (default none)."),
    price: Optional[float] = typer.Option(None, "--price", help="Price per GPU-hour in USD."),
    tp_comm_overlap: Optional[bool] = typer.Option(None, "--tp-comm-overlap/--no-tp-comm-overlap",
                                                   help="Overlap TP communication with GEMMs."),
    ep_overlap: Optional[bool] = EP_OVERLAP_OPTION,
    dispatcher: Optional[str] = DISPATCHER_OPTION,
    grad_dtype: Optional[str] = typer.Option(None, "--grad-dtype", help="fp32 (Megatron main grads), bf16, or fp16 (an fp16 run's buffer)."),
    dropout: Optional[bool] = typer.Option(None, "--dropout/--no-dropout", help="Hidden and attention dropout."),
    stack: Optional[str] = STACK_OPTION,
    flash_attention: Optional[bool] = typer.Option(None, "--flash-attention/--no-flash-attention",
                                                   help="Fused attention (no s x s scores in memory)."),
    cp_comm: CPComm = typer.Option(CPComm.p2p, "--cp-comm", help="Context parallelism: p2p ring or a2a (Ulysses)."),
    allow_offload: bool = typer.Option(False, "--allow-offload",
                                       help="Also try optimizer and (without PP) activation offload to the host."),
    per_layout: bool = typer.Option(False, "--per-layout", help="Show the best plan of each layout only."),
    recompute: Optional[list[Recompute]] = typer.Option(None, "--recompute", help="Limit recompute modes (repeatable)."),
    zero: Optional[list[int]] = typer.Option(None, "--zero", help="Limit ZeRO stages (repeatable)."),
    dp_replicate: Optional[str] = typer.Option(
        None, "--dp-replicate", help="Hybrid sharding (HSDP) copies to try with ZeRO >= 1 (a value, list or range; "
                                     "1 = no HSDP). Default: shard groups of 1, 2 or 4 scale-up domains."),
    rank_order: str = typer.Option("tp-cp-ep-dp-pp", "--rank-order", help="Rank order, innermost first."),
    tp: Optional[str] = typer.Option(None, "--tp", help=PIN_HELP.format("tensor-parallel size")),
    pp: Optional[str] = typer.Option(None, "--pp", help=PIN_HELP.format("pipeline-parallel size")),
    dp: Optional[str] = typer.Option(None, "--dp", help=PIN_HELP.format("data-parallel size")),
    cp: Optional[str] = typer.Option(None, "--cp", help=PIN_HELP.format("context-parallel size")),
    ep: Optional[str] = typer.Option(None, "--ep", help=PIN_HELP.format("expert-parallel size")),
    etp: Optional[str] = typer.Option(None, "--etp", help=PIN_HELP.format("expert tensor-parallel size")),
    vpp: Optional[str] = typer.Option(None, "--vpp", help=PIN_HELP.format("virtual pipeline stages")),
    micro_batch: Optional[str] = typer.Option(None, "--micro-batch", help=PIN_HELP.format("micro-batch size")),
    schedule: Optional[list[str]] = typer.Option(
        None, "--schedule", help="Pipeline schedules to try (repeatable or a comma list): "
                                 + ", ".join(SCHEDULES) + ". Default: every one the framework runs."),
    wide: bool = typer.Option(False, "--wide", help="Show every table column, whatever the terminal width."),
    checkpoint_mode: Optional[str] = CHECKPOINT_OPTION,
    spares: Optional[str] = SPARES_OPTION,
    emit_plan: Optional[str] = typer.Option(None, "--emit-plan",
                                            help="With --emit: the plan's rank in the table (default 1), or all."),
) -> None:
    """Search and rank every feasible plan (this is what ``plan-search CLUSTER MODEL`` runs).

    --tp, --pp, --dp, --cp, --ep, --etp, --vpp and --micro-batch pin part of the layout: the search
    keeps only plans with those values (a value, a list 8,16 or a range 4-8)."""
    cluster_spec, model_input, training = _inputs(
        cluster, model, price, seq_length=seq_len, global_batch_size=global_batch,
        global_batch_tokens=global_batch_tokens, train_tokens=train_tokens, precision=precision,
        fp8_recipe=fp8_recipe, tp_comm_overlap=tp_comm_overlap, overlap_moe_expert_parallel_comm=ep_overlap,
        moe_token_dispatcher=dispatcher, grad_dtype=grad_dtype, dropout=dropout, flash_attention=flash_attention,
        stack=stack, checkpoint_mode=checkpoint_mode, hot_spare_nodes_per=_parse_spares(spares))
    if emitter and output is OutputFormat.csv:
        raise InputError("command line", "--emit", "has no place in CSV output (one row per plan)",
                         "use --format json (each emission an object) or table, or drop --emit")
    if emit_plan is not None and not emitter:
        raise InputError("command line", "--emit-plan", "says which plan to emit, but --emit is not given",
                         "add --emit megatron|megatron-bridge|torchtitan or drop --emit-plan")
    gpus_total, layers = cluster_spec.num_gpus, model_input.spec.num_layers
    pins = {f"{name}_values": _parse_values(f"--{name}", text, gpus_total, f"the cluster's {gpus_total:,} GPUs")
            for name, text in (("tp", tp), ("pp", pp), ("dp", dp), ("cp", cp), ("ep", ep), ("etp", etp))}
    pins["vpp_values"] = _parse_values("--vpp", vpp, layers, f"the model's {layers} layers")
    pins["micro_batch_sizes"] = _parse_values("--micro-batch", micro_batch, training.global_batch_size,
                                              f"the global batch of {training.global_batch_size:,} sequences")
    options = _options(gpu_counts=_parse_gpus(gpus, cluster_spec), top_k=top, objective=objective,
                       memory_headroom=headroom, allow_offload=allow_offload, rank_order=rank_order,
                       framework=_framework(framework, emitter),
                       best_per_layout=per_layout,
                       recompute_modes=tuple(r.value for r in recompute) if recompute else None,
                       zero_stages=tuple(sorted(set(zero))) if zero else None,
                       dp_replicate_values=_parse_values("--dp-replicate", dp_replicate, gpus_total,
                                                         f"the cluster's {gpus_total:,} GPUs") or None,
                       schedules=tuple(name.strip() for item in schedule for name in item.split(",")) if schedule else None,
                       **{key: values for key, values in pins.items() if values})
    emit_ranks = _parse_emit_plan(emit_plan or "1", top)
    _check_precision(training, cluster_spec)
    scenario = Scenario(model=model_input.spec, training=training, cluster=cluster_spec, options=options,
                        cost_options=CostOptions(cp_comm_type=cp_comm.value))
    # The search keeps the running cost-time front itself (bounded memory, whatever the GPU range).
    with _progress_bar(enabled=output is OutputFormat.table) as progress:
        result = search(scenario, pareto=pareto, progress=progress)
    explanation = None if result.found else explain_no_fit(result)
    ranked = result.pareto if pareto and result.found else result.ranked
    emissions = _emissions(emitter, ranked, emit_ranks, scenario) if emitter and ranked is not None else []
    band = _band(scenario)
    tied = _tied_plans(ranked, objective, band) if ranked is not None and not pareto else None

    if output is OutputFormat.json:
        document = {
            "scenario": scenario_record(scenario),
            "search": {"layouts": result.num_layouts, "candidates": result.num_candidates,
                       "feasible": result.num_feasible, "timed": result.num_timed,
                       "seconds": round(result.seconds["total"], 4)},
            "plans": plan_records(ranked, scenario.memory_limit_bytes, band) if ranked is not None else [],
            "explanation": explanation.to_dict() if explanation else None,
        }
        if band is not None:
            document["uncertainty"] = uncertainty_record(band, tied)
        if emitter:
            document["emit"] = [_emission_record(rank, emission) for rank, emission in emissions]
        typer.echo(json.dumps(document, indent=2))
    elif output is OutputFormat.csv:
        typer.echo(to_csv(ranked, scenario.memory_limit_bytes, band=band) if ranked is not None else "", nl=False)
    else:
        typer.echo(fit_text(scenario_header(scenario)))
        typer.echo(fit_text(f"{result.num_layouts:,} layouts, {result.num_candidates:,} plans, "
                            f"{result.num_feasible:,} fit in memory; searched in {result.seconds['total']:.2f} s"))
        if ranked is not None:
            title = "Pareto plans (time vs cost)" if pareto else f"Top {len(ranked)} plans by {objective}"
            typer.echo(render_table(ranked, title, wide=wide, band=band))
            if band is not None:
                typer.echo(fit_text(band_note(band, tied or 0, len(ranked))))
            typer.echo("Best plan:")
            typer.echo(fit_text(breakdown_text(ranked, 0)))
        if explanation:
            typer.echo(fit_text("No plan fits: " + explanation.text()))
        for rank, emission in emissions:
            typer.echo(_emission_text(rank, emission))
    raise typer.Exit(0 if result.found else 1)


def _band(scenario: Scenario):
    """The uncertainty band of the scenario's throughput predictions (:mod:`cost_model.calibration.bands`:
    the run's stack, GPU family and model class); None before a calibration has written one."""
    from cost_model.calibration.bands import band_for_run

    return band_for_run(scenario.model, scenario.training, scenario.cluster.gpu)


def _tied_plans(ranked, objective: str, band) -> int | None:
    """How many leading plans the band leaves tied with plan 1 (:func:`optimizer.ranking.tied_with_leader`);
    None without a band or for an objective the throughput band does not apply to."""
    goodness = objective_goodness(ranked, objective) if band is not None else None
    return None if goodness is None else tied_with_leader(goodness, band.plus_minus)


def _parse_emit_plan(text: str, top: int) -> tuple[int, ...] | None:
    """``--emit-plan``: a 1-based rank in the shown table (up to ``--top``), or ``all`` (None)."""
    if text.strip().lower() == "all":
        return None
    try:
        rank = int(text)
    except ValueError:
        raise InputError("command line", "--emit-plan", f"{shorten(text, 40)!r} is not a plan rank",
                         "write a rank from the table (1 is the best plan) or all") from None
    if not 1 <= rank <= top:
        raise InputError("command line", "--emit-plan", f"must be a rank from 1 to --top {top}, got {rank}",
                         "write a rank from the table (1 is the best plan) or all")
    return (rank,)


def _emissions(emitter: Emitter, ranked, ranks: tuple[int, ...] | None, scenario: Scenario) -> list:
    """(rank, Emission) for the asked ranks of the shown plans (every one for ``all``)."""
    ranks = tuple(range(1, len(ranked) + 1)) if ranks is None else ranks
    if max(ranks) > len(ranked):
        raise InputError("command line", "--emit-plan", f"plan {max(ranks)} is not shown: the table has "
                         f"{len(ranked)} plan{'s' * (len(ranked) != 1)}", "write a rank from the table or all")
    return [(rank, _emission(emitter, ranked, rank - 1, scenario)) for rank in ranks]


def _emission_record(rank: int, emission) -> dict[str, Any]:
    """One emission in JSON output (the README's output schema): the plan's rank in ``plans``, the framework
    and the release it is tested against, the command as an argument list, the environment, what the
    framework runs differently from the priced plan, and the text a user pastes."""
    return {"plan": rank, "framework": emission.framework, "tested_version": emission.tested_version,
            "argv": list(emission.argv), "env": dict(emission.env), "differences": list(emission.differences),
            "text": emission.text}


def _emission_text(rank: int, emission) -> str:
    """One emission in table output: a header naming the plan's rank and the tested release, the text,
    then what differs from the priced plan (never wrapped: it is pasted as it is)."""
    lines = [f"\n{emission.framework} launch of plan {rank} (tested with {emission.tested_version}):",
             emission.text]
    if emission.differences:
        lines.append("differs from the priced plan:")
        lines.extend(f"  - {difference}" for difference in emission.differences)
    return "\n".join(lines)


PROGRESS_AFTER_S = 1.0
"""A search shows its progress bar once it has run this long (a quick search never flashes one)."""


@contextlib.contextmanager
def _progress_bar(enabled: bool, label: str = "searching layouts"):
    """A ``progress(done, total)`` callback for :func:`optimizer.search.search` that draws a rich progress
    bar of the layouts crossed (``label`` says what is counted), on stderr, once the search has run
    :data:`PROGRESS_AFTER_S`; None (no
    bar) unless ``enabled`` (table output) and stderr is a terminal, so JSON, CSV, pipes and tests'
    captured output never see one. The bar is erased when the search ends or is interrupted, so a Ctrl-C
    leaves only ``plan-search: aborted``."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    import time

    started = time.perf_counter()
    bar: dict[str, Any] = {}

    def progress(done: int, total: int) -> None:
        if "progress" not in bar:
            if time.perf_counter() - started < PROGRESS_AFTER_S:
                return
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            bar["progress"] = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                       TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            bar["progress"].start()
            bar["task"] = bar["progress"].add_task("search", total=total)
        bar["progress"].update(bar["task"], completed=done, total=total)

    try:
        yield progress
    finally:
        if "progress" in bar:
            bar["progress"].stop()


def _emission(emitter: Emitter, metrics, index: int, scenario: Scenario):
    """The launch of plan ``index`` of ``metrics`` (the Python API's :func:`optimizer.emit_launch`)."""
    from . import emit_launch

    return emit_launch(scenario, metrics, index, emitter.value)


@app.command("evaluate")
def evaluate_command(
    cluster: str = typer.Argument(..., help="Cluster YAML file or preset name."),
    model: str = typer.Argument(..., help="model.yaml, config.json or preset name."),
    tp: int = typer.Option(1, "--tp"), pp: int = typer.Option(1, "--pp"), dp: Optional[int] = typer.Option(None, "--dp", help="Default: the rest of the cluster."),
    cp: int = typer.Option(1, "--cp"), ep: int = typer.Option(1, "--ep"), etp: Optional[int] = typer.Option(
        None, "--etp", help="Expert tensor parallelism (default: --tp for an MoE model, as Megatron's "
                            "--expert-tensor-parallel-size; 1 for a dense model)."),
    vpp: int = typer.Option(1, "--vpp"), micro_batch: int = typer.Option(1, "--micro-batch"),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="Pipeline schedule: " + ", ".join(SCHEDULES)
                                           + " (default 1f1b, interleaved with --vpp > 1)."),
    recompute: Recompute = typer.Option(Recompute.none, "--recompute"),
    recompute_num_layers: int = typer.Option(-1, "--recompute-num-layers", help="-1 = all layers of each chunk."),
    recompute_modules: Optional[list[str]] = typer.Option(
        None, "--recompute-modules",
        help="With --recompute selective: Megatron modules to recompute (repeatable): "
             + ", ".join(RECOMPUTE_MODULES) + ". Default core_attn."),
    sequence_parallel: bool = typer.Option(False, "--sequence-parallel/--no-sequence-parallel"),
    zero_stage: int = typer.Option(0, "--zero-stage"),
    dp_replicate: int = typer.Option(1, "--dp-replicate", help="Hybrid sharding (HSDP): copies of the ZeRO-sharded "
                                     "states, each over dp x cp / N ranks (needs --zero-stage >= 1; 1 = none)."),
    optimizer_offload: bool = typer.Option(False, "--optimizer-offload"),
    activation_offload_layers: int = typer.Option(
        0, "--activation-offload-layers",
        help="Layers whose activations go to host memory (Megatron --cpu-offloading-num-layers)."),
    global_batch: Optional[int] = typer.Option(None, "--global-batch"),
    global_batch_tokens: Optional[int] = typer.Option(None, "--global-batch-tokens"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len"),
    train_tokens: Optional[float] = typer.Option(None, "--train-tokens"),
    precision: Optional[str] = typer.Option(None, "--precision"),
    fp8_recipe: Optional[str] = typer.Option(None, "--fp8-recipe", help="tensorwise, delayed, mxfp8 or blockwise."),
    tp_comm_overlap: Optional[bool] = typer.Option(None, "--tp-comm-overlap/--no-tp-comm-overlap"),
    ep_overlap: Optional[bool] = EP_OVERLAP_OPTION,
    dispatcher: Optional[str] = DISPATCHER_OPTION,
    grad_dtype: Optional[str] = typer.Option(None, "--grad-dtype", help="fp32, bf16, or fp16 (fp16 runs)."),
    dropout: Optional[bool] = typer.Option(None, "--dropout/--no-dropout"),
    stack: Optional[str] = STACK_OPTION,
    flash_attention: Optional[bool] = typer.Option(None, "--flash-attention/--no-flash-attention"),
    cp_comm: CPComm = typer.Option(CPComm.p2p, "--cp-comm", help="p2p ring or a2a (Ulysses)."),
    headroom: float = typer.Option(MEMORY_HEADROOM, "--headroom", help="Fraction of usable GPU memory kept free."),
    price: Optional[float] = typer.Option(None, "--price"),
    output: OutputFormat = typer.Option(OutputFormat.table, "--format"),
    emitter: Optional[Emitter] = typer.Option(None, "--emit"),
    framework: Optional[Emitter] = typer.Option(None, "--framework",
                                                help="Launcher whose start-up rules the plan must pass."),
    wide: bool = typer.Option(False, "--wide", help="Show every table column, whatever the terminal width."),
    checkpoint_mode: Optional[str] = CHECKPOINT_OPTION,
    spares: Optional[str] = SPARES_OPTION,
) -> None:
    """Price one given plan: memory and time breakdown, whether it fits and why not."""
    if emitter and output is OutputFormat.csv:
        raise InputError("command line", "--emit", "has no place in CSV output (one row per plan)",
                         "use --format json (each emission an object) or table, or drop --emit")
    cluster_spec, model_input, training = _inputs(
        cluster, model, price, seq_length=seq_len, global_batch_size=global_batch,
        global_batch_tokens=global_batch_tokens, train_tokens=train_tokens, precision=precision,
        fp8_recipe=fp8_recipe, tp_comm_overlap=tp_comm_overlap, overlap_moe_expert_parallel_comm=ep_overlap,
        moe_token_dispatcher=dispatcher, grad_dtype=grad_dtype, dropout=dropout, flash_attention=flash_attention,
        stack=stack, checkpoint_mode=checkpoint_mode, hot_spare_nodes_per=_parse_spares(spares))
    if etp is None:  # Megatron's validate_args sets expert_tensor_parallel_size to the TP size when not given
        etp = tp if model_input.spec.is_moe else 1
    _check_plan_flags(cluster_spec, model_input.spec, training,
                      degrees={"tp": tp, "pp": pp, "cp": cp, "dp": dp, "ep": ep, "etp": etp}, vpp=vpp,
                      micro_batch=micro_batch, recompute_num_layers=recompute_num_layers,
                      activation_offload_layers=activation_offload_layers)
    if zero_stage not in (0, 1, 2, 3):
        raise InputError("command line", "--zero-stage", f"must be 0, 1, 2 or 3, got {zero_stage}", "fix the value")
    if pp > model_input.spec.num_layers:
        raise InputError("command line", "--pp", f"{pp} pipeline stages for {model_input.spec.num_layers} layers",
                         "use at most one stage per layer")
    if schedule is not None and schedule not in SCHEDULES:
        raise InputError("command line", "--schedule", f"unknown schedule {schedule!r}",
                         f"use one of {', '.join(SCHEDULES)}")
    modules = CORE_ATTN
    if recompute_modules:
        if recompute is not Recompute.selective:
            raise InputError("command line", "--recompute-modules", "applies only to selective recompute",
                             "add --recompute selective or drop --recompute-modules")
        try:
            modules = module_mask(name.strip() for item in recompute_modules for name in item.split(","))
        except ValueError as error:
            raise InputError("command line", "--recompute-modules", str(error), "fix the module name") from None
    model_parallel = tp * pp * cp
    if model_parallel > cluster_spec.num_gpus:
        raise InputError("command line", "--tp x --pp x --cp", f"{tp} x {pp} x {cp} = {model_parallel:,} GPUs is more "
                         f"than the cluster's {cluster_spec.num_gpus:,}", "lower a degree or use a larger cluster")
    if dp is None:
        dp = cluster_spec.num_gpus // model_parallel
    if dp_replicate < 1 or dp % dp_replicate != 0 or (dp_replicate > 1 and (zero_stage < 1 or dp * cp < 2 * dp_replicate)):
        raise InputError("command line", "--dp-replicate", f"{dp_replicate} copies of the sharded states need ZeRO >= 1 "
                         f"and a divisor of dp ({dp}) leaving at least 2 ranks a shard group",
                         "use 1 (no hybrid sharding) or a divisor of dp with --zero-stage 1, 2 or 3")
    if model_parallel * dp > cluster_spec.num_gpus:
        raise InputError("command line", "--dp", f"tp x pp x cp x dp = {model_parallel * dp:,} does not fit "
                         f"the cluster's {cluster_spec.num_gpus:,} GPUs", "lower a degree or use a larger cluster")
    options = _options(memory_headroom=headroom, gpu_counts=(tp * pp * cp * dp,),
                       framework=_framework(framework, emitter))
    _check_precision(training, cluster_spec)
    scenario = Scenario(model=model_input.spec, training=training, cluster=cluster_spec, options=options,
                        cost_options=CostOptions(cp_comm_type=cp_comm.value))
    plan = PlanArrays.from_columns(dict(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, etp=etp, vpp=vpp, micro_batch=micro_batch,
                                        recompute=RECOMPUTE_CODE[recompute.value],
                                        recompute_num_layers=recompute_num_layers, recompute_modules=modules,
                                        sequence_parallel=sequence_parallel, zero_stage=zero_stage,
                                        dp_replicate=dp_replicate, optimizer_offload=optimizer_offload,
                                        activation_offload_layers=activation_offload_layers,
                                        schedule=schedule if schedule is not None else BY_VPP))
    metrics = evaluate_plans(scenario.model, training, cluster_spec, plan, scenario.costs)
    layout = dict(num_gpus=tp * pp * cp * dp, tp=tp, cp=cp, pp=pp, dp=dp, ep=ep, etp=etp)
    broken = LayoutModel(scenario.model, training, cluster_spec, options, (layout["num_gpus"],)).broken_rules(layout)
    costs = scenario.costs
    broken += [name for name, mask in violations(scenario.model, training, plan, options.uneven_pipeline,
                                                 options.framework, cp_comm_type=costs.cp_comm_type,
                                                 rank_order=costs.rank_order).items() if mask[0]]
    over = metrics.memory_bytes[0] - scenario.memory_limit_bytes
    reasons = [_reason(name) for name in broken]
    if not fits_in_memory(metrics.memory_bytes[0], cluster_spec.gpu.memory_gib, options.memory_headroom):
        reasons.append(f"memory_per_gpu: needs {metrics.memory_bytes[0] / GIB:.1f} GiB, limit "
                       f"{scenario.memory_limit_bytes / GIB:.1f} GiB ({over / GIB:.1f} GiB over)")
    fits = not reasons
    band = _band(scenario)
    if output is OutputFormat.json:
        record = plan_records(metrics, scenario.memory_limit_bytes, band)[0]
        record["fits"] = fits
        record["why_not"] = reasons
        document = {"scenario": scenario_record(scenario), "plan": record}
        if band is not None:
            document["uncertainty"] = uncertainty_record(band)
        if emitter:
            document["emit"] = [_emission_record(1, _emission(emitter, metrics, 0, scenario))]
        typer.echo(json.dumps(document, indent=2))
    elif output is OutputFormat.csv:
        typer.echo(to_csv(metrics, scenario.memory_limit_bytes, fits=fits, band=band), nl=False)
    else:
        typer.echo(fit_text(scenario_header(scenario)))
        typer.echo(render_table(metrics, "Plan", wide=wide, band=band))
        if band is not None:
            typer.echo(fit_text(band_note(band)))
            typer.echo(fit_text(band_range_text(metrics, band)))
        typer.echo(fit_text(breakdown_text(metrics, 0)))
        typer.echo(fit_text("fits: yes" if fits else "fits: no\n  " + "\n  ".join(reasons)))
        if emitter:
            typer.echo(_emission_text(1, _emission(emitter, metrics, 0, scenario)))
    raise typer.Exit(0 if fits else 1)


def _reason(rule: str) -> str:
    """'name: what it requires' for a named rule; a broken degree arrives as its own sentence."""
    description = RULES.get(rule) or rule_sentence(rule)
    return f"{rule}: {description}" if description else rule


@app.command("validate")
def validate_command(
    dataset: Optional[str] = typer.Argument(None, help="A published-runs YAML of your own (default: the packaged "
                                            "published_runs.yaml and training_runs.csv)."),
    source: Optional[str] = typer.Option(None, "--source", help="Only the rows of this source_group."),
    output: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json."),
    serving: bool = typer.Option(False, "--serving", help="The serving runs (serving_runs.csv: TensorRT-LLM, "
                                 "MLPerf, Splitwise) priced by the serving cost model instead of the training runs."),
) -> None:
    """Price every published layout and compare with what was measured; show the cross-validated error."""
    if serving:
        _validate_serving(dataset, source, output)
        return
    from cost_model.calibration.validate import summary, validate
    rows = validate(dataset)
    if source:
        groups = sorted({r.source_group for r in rows})
        if source not in groups:
            raise InputError("--source", "", f"{source!r} is not a source group of the dataset{did_you_mean(source, groups)}",
                             f"use one of {', '.join(groups)}")
        rows = [r for r in rows if r.source_group == source]
    stats = summary(rows)
    cross = _stored_cross_validation() if dataset is None else None
    if output is OutputFormat.json:
        typer.echo(json.dumps({"rows": [{**r.__dict__, "tflops_error": r.tflops_error, "memory_error": r.memory_error,
                                         "fits": r.fits} for r in rows], "summary": stats,
                               "cross_validation": cross}, indent=2))
        return
    typer.echo(f"{'run':44s} {'GPUs':>6s} {'layout':24s} {'meas':>7s} {'pred':>7s} {'error':>7s} "
               f"{'res GiB':>8s} {'fits':>4s}  source")
    for r in rows:
        error = "-" if r.tflops_error is None else f"{r.tflops_error:+.0%}"
        measured = "-" if r.measured_tflops is None else f"{r.measured_tflops:.0f}"
        if r.measured_tokens_per_gpu:
            measured = f"{r.predicted_tflops / (1 + r.tflops_error):.0f}*"  # TFLOP/s implied by tokens/s
        typer.echo(f"{r.id[:44]:44s} {r.num_gpus:6d} {r.layout[:24]:24s} {measured:>7s} {r.predicted_tflops:7.0f} "
                   f"{error:>7s} {r.predicted_memory_gib:8.1f} {'yes' if r.fits else 'NO':>4s}  {r.source_group}"
                   f"{'' if r.verified else ' (unverified)'}{'' if r.precision == 'bf16' else f'  [{r.precision}]'}")
    typer.echo("TFLOP/s per GPU in this model's FLOP count (or with recompute where the source counts it); * = the "
               "source publishes tokens/s per GPU, compared as such (meas = the TFLOP/s those tokens/s imply).")
    typer.echo("")
    typer.echo(_source_table(stats, cross))
    typer.echo(_precision_lines(rows))
    if cross and cross.get("precisions"):
        from cost_model.calibration.calibrate import precision_line
        typer.echo(precision_line(cross["precisions"]))
    for label in ("verified", "all"):
        s = stats[label]
        if s["throughput_rows"]:
            typer.echo(f"{label}: {s['throughput_rows']} rows with throughput, median |error| "
                       f"{s['median_abs_throughput_error']:.1%} (signed {s['median_signed_throughput_error']:+.1%}), "
                       f"{s['throughput_rows_within_10pct']} within 10%, {s['throughput_rows_beyond_25pct']} beyond 25%; "
                       f"{s['rows_predicted_to_fit']} of {s['rows']} predicted to fit in memory")
        if s["memory_rows"]:
            typer.echo(f"{label}: {s['memory_rows']} rows with measured memory per GPU, median |error| "
                       f"{s['median_abs_memory_error']:.1%}, worst {s['worst_abs_memory_error']:.1%}")
    if cross:
        o = cross["overall"]
        typer.echo(f"leave-one-source-out (plan-search calibrate, each source priced by a fit without it): median "
                   f"|error| {o['held_out_median_abs_error']:.1%}, signed {o['held_out_median_signed_error']:+.1%}, worst "
                   f"source {o['worst_source_median_abs_error']:.1%}; layout ranking: median Kendall tau "
                   f"{o['median_kendall_tau']:.2f} over {o['ranking_groups']} groups, measured best in the predicted "
                   f"top 3 in {o['groups_with_best_in_top3']}")
        from cost_model.calibration.calibrate import RankingGroup, ranking_lines
        for line in ranking_lines([RankingGroup.from_record(g) for g in cross.get("rankings", [])]):
            typer.echo(line)


def _validate_serving(dataset: Optional[str], source: Optional[str], output: OutputFormat) -> None:
    """``validate --serving``: every serving run priced with the stored serving calibration."""
    from cost_model.calibration.serving_fit import (stored_cross_validation, validate_serving, validation_json,
                                                    validation_lines)
    from cost_model.calibration.serving_runs import DEFAULT_CSV, load_serving_runs
    runs, _ = load_serving_runs(dataset or DEFAULT_CSV)
    if source:
        groups = sorted({r.source_group for r in runs})
        if source not in groups:
            raise InputError("--source", "", f"{source!r} is not a source group of the serving runs"
                             f"{did_you_mean(source, groups)}", f"use one of {', '.join(groups)}")
        runs = [r for r in runs if r.source_group == source]
    priced = validate_serving(runs)
    cross = stored_cross_validation() if dataset is None else None
    if output is OutputFormat.json:
        typer.echo(json.dumps(validation_json(priced, cross), indent=2))
    else:
        typer.echo("\n".join(validation_lines(priced, cross)))


def _precision_lines(rows) -> str:
    """Median throughput error of the rows of each GEMM precision and recipe (the first words of
    ``ValidationRow.precision``), in the current fit."""
    from cost_model.calibration.validate import precision_group
    groups: dict[str, list[float]] = {}
    for r in rows:
        if r.tflops_error is not None:
            groups.setdefault(precision_group(r.precision), []).append(r.tflops_error)
    parts = [f"{name} {len(errors)} rows {statistics.median(abs(e) for e in errors):.1%} "
             f"(signed {statistics.median(errors):+.1%})" for name, errors in sorted(groups.items())]
    return "by precision (median |error|): " + "; ".join(parts)


def _stored_cross_validation() -> dict | None:
    """The leave-one-source-out report the last ``calibrate --write`` stored, if any."""
    from cost_model.calibration.bands import FITTED_FILE
    from hardware.errors import read_yaml_mapping
    if not FITTED_FILE.exists():
        return None
    return read_yaml_mapping(FITTED_FILE).get("cross_validation")


def _source_table(stats: dict, cross: dict | None) -> str:
    held = {s["source_group"]: s for s in (cross or {}).get("sources", [])}
    lines = [f"{'source':20s} {'rows':>5s} {'median |err|':>12s} {'signed':>8s} {'>25%':>5s}"
             + (f" {'held out |err|':>14s} {'signed':>8s}" if held else "")]
    for group, s in stats["sources"].items():
        if not s["throughput_rows"]:
            continue
        line = (f"{group[:20]:20s} {s['throughput_rows']:5d} {s['median_abs_throughput_error']:12.1%} "
                f"{s['median_signed_throughput_error']:+8.1%} {s['throughput_rows_beyond_25pct']:5d}")
        if group in held:
            line += f" {held[group]['held_out_median_abs_error']:14.1%} {held[group]['held_out_median_signed_error']:+8.1%}"
        lines.append(line)
    if held:
        lines.append("held out = priced by the fit made without that source (plan-search calibrate)")
    return "\n".join(lines)


@app.command("calibrate")
def calibrate_command(
    dataset: Optional[str] = typer.Argument(None, help="A published-runs YAML of your own (default: the packaged "
                                            "published_runs.yaml and training_runs.csv)."),
    write: bool = typer.Option(False, "--write", help="Store the fitted values: GPU presets, stacks.yaml and "
                               "cost_model/calibration/fitted.yaml (parameters, cross-validation, bands)."),
    serving: bool = typer.Option(False, "--serving", help="Fit the serving model's parameters (the host's per-request "
                                 "step time and eager kernel issue time, per GPU family HBM and GEMM departures) on "
                                 "serving_runs.csv; "
                                 "--write stores cost_model/calibration/serving_fitted.yaml."),
) -> None:
    """Fit the global parameters on every measured run, cross-validate them leaving out one source at a
    time, and derive the uncertainty bands."""
    if serving:
        _calibrate_serving(dataset, write)
        return
    from cost_model.calibration.calibrate import (calibrate, dataset_rows, measured_rows, parameter_lines, precision_line,
                                                  precision_records, ranking_lines, source_lines,
                                                  write as write_calibration)
    from cost_model.calibration.fit import PARAMETERS
    from cost_model.calibration.validate import read_runs
    if dataset is None:
        rows, skipped = dataset_rows()
        typer.echo(f"{len(rows)} measured runs from {len({r.source_group for r in rows})} sources ({len(skipped)} rows "
                   "of training_runs.csv cannot be priced: python -m cost_model.calibration.training_runs lists why)",
                   err=True)
    else:
        rows = measured_rows(read_runs(dataset), str(dataset))
        if write:
            raise InputError("--write", "", "stores the packaged calibration; a dataset of your own is reported only",
                             "drop --write, or calibrate without a dataset")
    result = calibrate(rows, progress=lambda line: typer.echo(line, err=True))
    typer.echo("\n".join([*parameter_lines(PARAMETERS, result.fit), "", *source_lines(result.sources)]))
    o = result.overall()
    typer.echo(f"all {o['rows']} rows: fitted median |error| {o['fitted_median_abs_error']:.1%}; leave-one-source-out "
               f"median |error| {o['held_out_median_abs_error']:.1%}, signed {o['held_out_median_signed_error']:+.1%}, "
               f"{o['held_out_rows_beyond_25pct']} beyond 25%, worst source {o['worst_source_median_abs_error']:.1%}")
    typer.echo(precision_line(precision_records(result.held_out)))
    typer.echo(f"layout ranking within {o['ranking_groups']} groups of >= 4 layouts (one model, one cluster): median "
               f"Kendall tau {o['median_kendall_tau']:.2f}; measured best in the predicted top 3 in "
               f"{o['groups_with_best_in_top3']}")
    for line in ranking_lines(result.rankings):
        typer.echo(line)
    if write:
        for path in write_calibration(result):
            typer.echo(f"wrote {path}")


def _calibrate_serving(dataset: Optional[str], write: bool) -> None:
    """``calibrate --serving``: fit the serving parameters, cross-validate by source, report the targets."""
    from cost_model.calibration.serving_fit import calibrate_serving, report_lines, write_serving
    from cost_model.calibration.serving_runs import DEFAULT_CSV, load_serving_runs, skip_counts
    if dataset is not None and write:
        raise InputError("--write", "", "stores the packaged serving calibration; a table of your own is reported "
                         "only", "drop --write, or calibrate --serving without a table")
    runs, skipped = load_serving_runs(dataset or DEFAULT_CSV)
    typer.echo(f"{len(runs)} serving runs from {len({r.source_group for r in runs})} sources ({len(skipped)} CSV rows "
               "cannot be priced: python -m cost_model.calibration.serving_runs lists why)", err=True)
    for reason, count in skip_counts(skipped).items():
        typer.echo(f"  skipped {count}: {reason}", err=True)
    result = calibrate_serving(runs, progress=lambda line: typer.echo(line, err=True))
    typer.echo("\n".join(report_lines(result)))
    if write:
        typer.echo(f"wrote {write_serving(result)}")


from scenarios.cli import register as _register_scenarios  # noqa: E402  (sweep, compare, whatif)
_register_scenarios(app)


def main(fast_exit: bool = False) -> None:
    """Entry point: run the app; input errors become one line and exit status 2. ``fast_exit`` (the
    ``plan-search`` program, :mod:`optimizer.entry`) leaves without the interpreter's teardown; callers
    in a process that goes on, such as tests, keep the default."""
    if hasattr(signal, "SIGPIPE"):
        # `plan-search ... | head`: end quietly on the closed pipe, as Unix tools do (status 141 in the
        # shell), instead of exit status 1, which means "nothing fits".
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = app(standalone_mode=False) or 0
            if code == 130:  # typer turns KeyboardInterrupt into Exit(130) before it reaches us
                raise KeyboardInterrupt
        except InputError as exc:
            typer.echo(f"plan-search: error: {exc}", err=True)
            code = 2
        except (typer.Abort, KeyboardInterrupt):
            # Ctrl-C: whatever was being computed is dropped (finished sweep parts stay on disk); never
            # printed or stored as if complete.
            typer.echo("plan-search: aborted", err=True)
            code = 130
        except SearchIncomplete as exc:
            typer.echo(f"plan-search: error: {exc}", err=True)
            code = 3
        except Exception as exc:
            # Usage errors of the command-line parser (click's, or the copy newer typer versions ship):
            # recognised by their interface rather than their class.
            if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
                typer.echo(f"plan-search: error: {exc.format_message()}", err=True)
                code = 2
            elif os.environ.get("PLAN_SEARCH_DEBUG"):
                raise
            else:
                code = _internal_error(exc)
        seen: set[str] = set()
        for warning in caught:  # a sweep can raise the same warning once per scenario: say it once
            text = str(warning.message)
            if text not in seen:
                seen.add(text)
                typer.echo(f"plan-search: warning: {text}", err=True)
    if fast_exit:
        # Everything is printed: flush and leave without the interpreter's teardown (freeing every
        # module's objects, OR-Tools' and pandas' included, takes tens of milliseconds and changes
        # nothing).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


INTERNAL_ERROR = 70
"""Exit status of a defect in plan-search itself (BSD sysexits' EX_SOFTWARE), apart from bad input (2)."""


def _internal_error(exc: BaseException) -> int:
    """A defect of plan-search, not of the input: one line that says so, where it happened and how to get
    the whole traceback for a report; never a wall of traceback in front of a user."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
    message = shorten(" ".join(f"{type(exc).__name__}: {exc}".split()), 300)
    typer.echo(f"plan-search: internal error{where}: {message}; this is a plan-search bug: please report it "
               "with the command line (PLAN_SEARCH_DEBUG=1 prints the traceback)", err=True)
    return INTERNAL_ERROR

