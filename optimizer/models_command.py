"""``plan-search models [list]`` and ``plan-search models show MODEL|config.json``.

``list`` (also plain ``plan-search models``) prints each bundled preset with its total and active
parameter counts. ``show`` prints what plan-search read from a preset, a ``model.yaml`` or a Hugging Face
``config.json``: every dimension the cost model uses (layers, widths, heads, head dim, MLP and expert
widths, top-k, shared expert, which layers are MoE, which slide, MLA ranks, vocabulary, tied
embeddings, norms) and the parameter counts of :class:`cost_model.params.ParameterCounts`, in billions
to 4 significant figures and as exact integers; ``--json`` gives the same as one JSON object.

Errors are :class:`~hardware.errors.InputError`: the top-level command prints them as one line and exits
with status 2. Fields read but not priced draw one warning line (:mod:`cost_model.model_loader`).
"""

from __future__ import annotations

import json
from typing import Any

import typer

from cost_model.model_loader import list_model_presets, load_model
from cost_model.model_spec import ModelSpec
from cost_model.params import ParameterCounts

models_app = typer.Typer(add_completion=False, rich_markup_mode=None, invoke_without_command=True,
                         help="List model presets, or show what a model file or preset describes.")


@models_app.callback()
def _models(ctx: typer.Context) -> None:
    """List the bundled model presets with their parameter counts (``show`` prints one model in full)."""
    if ctx.invoked_subcommand is None:
        _print_list()


@models_app.command("list")
def list_command() -> None:
    """List the bundled model presets with their parameter counts."""
    _print_list()


def _print_list() -> None:
    for name in list_model_presets():
        spec = load_model(name).spec
        counts = ParameterCounts(spec)
        kind = f"MoE {spec.num_experts}x top-{spec.experts_per_token}" if spec.is_moe else "dense"
        typer.echo(f"{name:16s} {counts.total / 1e9:8.2f}B total  {counts.active / 1e9:7.2f}B active  "
                   f"{spec.num_layers:3d} layers  h={spec.hidden_size:<6d} {kind}")


@models_app.command("show")
def show_command(
    model: str = typer.Argument(..., metavar="MODEL", help="Preset name, model.yaml or config.json path."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Print every dimension read from MODEL and its total and active parameter counts."""
    spec = load_model(model).spec
    record = model_record(spec)
    if as_json:
        typer.echo(json.dumps(record, indent=2))
    else:
        typer.echo(show_text(record))


def billions(count: int) -> str:
    """A parameter count in billions to 4 significant figures: 107.8B, 17.17B, 9.242B."""
    return f"{count / 1e9:.4g}B"


def layer_pattern(flags: tuple[bool, ...], what: str) -> str:
    """``24 of 48 layers MoE (every 2nd)``: how many layers have a property, and its period when the
    layers that have it are every k-th (counting from 1, as HF's interleave and window patterns do)."""
    total, count = len(flags), sum(flags)
    if not count:
        return f"none of {total} layers {what}"
    if count == total:
        return f"all {total} layers {what}"
    text = f"{count} of {total} layers {what}"
    for period in range(2, total + 1):
        if all(flag == ((i + 1) % period == 0) for i, flag in enumerate(flags)):
            return f"{text} (every {_ordinal(period)})"
        if all(flag == ((i + 1) % period != 0) for i, flag in enumerate(flags)):
            return f"{text} (all but every {_ordinal(period)})"
    first = [i for i, flag in enumerate(flags) if flag]
    if first == list(range(first[0], total)):
        return f"{text} (layers {first[0]}..{total - 1})"
    return text


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def model_record(spec: ModelSpec) -> dict[str, Any]:
    """Everything ``show`` prints, as plain JSON values."""
    counts = ParameterCounts(spec)
    record: dict[str, Any] = {
        "name": spec.name, "num_layers": spec.num_layers, "hidden_size": spec.hidden_size,
        "num_attention_heads": spec.num_attention_heads, "num_kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim, "q_head_dim": spec.q_head_dim, "v_head_dim": spec.v_dim, "dense_ffn_hidden_size": spec.ffn_hidden_size if spec.num_dense_layers else 0,
        "gated_mlp": spec.gated_mlp, "vocab_size": spec.vocab_size, "tie_embeddings": spec.tie_embeddings,
        "norm_type": spec.norm_type, "norms_per_layer": spec.norms_per_layer, "qk_norm": spec.qk_norm,
        "qkv_bias": spec.qkv_bias, "linear_bias": spec.linear_bias,
        "position_embedding_type": spec.position_embedding_type, "attention_sinks": spec.attention_sinks,
        "sliding_window": spec.sliding_window,
        "sliding_window_layers": [i for i, flag in enumerate(spec.sliding_window_layers) if flag]
        if spec.sliding_window else [],
        "sliding_window_pattern": layer_pattern(spec.sliding_window_layers or (False,) * spec.num_layers,
                                                "slide") if spec.sliding_window else "none",
        "moe": None, "mla": None, "mtp_layers": spec.mtp_layers,
        "parameters": {"total": counts.total, "active": counts.active,
                       "total_b": billions(counts.total), "active_b": billions(counts.active)},
    }
    if spec.is_moe:
        record["moe"] = {
            "num_experts": spec.num_experts, "experts_per_token": spec.experts_per_token,
            "expert_ffn_hidden_size": spec.moe_ffn_hidden_size,
            "shared_expert_ffn_hidden_size": spec.shared_expert_ffn_hidden_size,
            "moe_layers": [i for i, flag in enumerate(spec.moe_layers) if flag],
            "pattern": layer_pattern(spec.moe_layers, "MoE"),
        }
    if spec.is_mla:
        record["mla"] = {"q_lora_rank": spec.q_lora_rank, "kv_lora_rank": spec.kv_lora_rank,
                         "qk_nope_head_dim": spec.qk_nope_head_dim, "qk_rope_head_dim": spec.qk_rope_head_dim,
                         "v_head_dim": spec.v_head_dim}
    return record


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def show_text(record: dict[str, Any]) -> str:
    """The text form of :func:`model_record`: one ``label: value`` line per fact."""
    r = record
    dense = (f"{r['dense_ffn_hidden_size']:,} ({'gated, 3 matrices' if r['gated_mlp'] else 'plain, 2 matrices'})"
             if r["dense_ffn_hidden_size"] else "none (no dense layers)")
    norms = (f"{r['norm_type']}, {r['norms_per_layer']} per layer"
             + (", q/k norms" if r["qk_norm"] else ""))
    heads = (f"head dim {r['head_dim']}" if not r["mla"]
             else f"head dims q/k {r['q_head_dim']}, v {r['v_head_dim']} (MLA)")
    lines = [
        f"model: {r['name']}",
        f"layers: {r['num_layers']}",
        f"hidden size: {r['hidden_size']:,}",
        f"attention heads: {r['num_attention_heads']} query, {r['num_kv_heads']} key/value, {heads}",
        f"dense MLP width: {dense}",
    ]
    moe = r["moe"]
    if moe:
        shared = f"{moe['shared_expert_ffn_hidden_size']:,}" if moe["shared_expert_ffn_hidden_size"] else "none"
        lines += [f"experts: {moe['num_experts']} routed of width {moe['expert_ffn_hidden_size']:,}, "
                  f"top-{moe['experts_per_token']}, shared expert width {shared}",
                  f"MoE layers: {moe['pattern']}"]
    else:
        lines.append("experts: none (dense model)")
    window = (f"{r['sliding_window']:,} tokens on {r['sliding_window_pattern']}" if r["sliding_window"]
              else "none (every layer attends to the whole sequence)")
    lines.append(f"sliding window: {window}")
    mla = r["mla"]
    if mla:
        lines.append(f"MLA: q_lora_rank {mla['q_lora_rank']}, kv_lora_rank {mla['kv_lora_rank']}, qk_nope_head_dim "
                     f"{mla['qk_nope_head_dim']}, qk_rope_head_dim {mla['qk_rope_head_dim']}, v_head_dim {mla['v_head_dim']}")
    else:
        lines.append("MLA: no")
    lines += [
        f"vocabulary: {r['vocab_size']:,}, tied embeddings: {_yes(r['tie_embeddings'])}",
        f"norms: {norms}",
        f"biases: q/k/v {_yes(r['qkv_bias'])}, other linear layers {_yes(r['linear_bias'])}; "
        f"positions: {r['position_embedding_type']}; attention sinks: {_yes(r['attention_sinks'])}",
    ]
    if r["mtp_layers"]:
        lines.append(f"multi-token-prediction modules: {r['mtp_layers']} (not in the counts below)")
    p = r["parameters"]
    lines += [f"total parameters: {p['total_b']} ({p['total']:,})",
              f"active parameters: {p['active_b']} ({p['active']:,})"]
    return "\n".join(lines)
