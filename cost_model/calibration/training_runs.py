"""The public table ``data/training_runs.csv`` as rows :func:`validate.validate_row` prices.

``training_runs.csv`` (556 rows, README ``data/training_runs.md``) was collected by others from papers
and framework repositories; its columns are free text where the sources are ("FULL_SHARD (mixed
precision mode DEFAULT)", "8192 (torchtitan train_configs/... default)"). This module turns each row
into the schema of ``published_runs.yaml`` (model, training, cluster, plan, measured, notes) plus
``source_group`` and ``training.stack``, through explicit tables below, one entry per distinct text,
each saying why. What a source does not publish stays ``None`` (the validator then prices every
unpublished memory choice, :data:`validate.UNPUBLISHED_MEMORY_CHOICES`); what cannot be priced
honestly (row-wise float8, an unknown architecture, a layout whose degrees do not multiply to the GPU count) is
returned as a :class:`SkippedRow` with its reason, never guessed.

:func:`load_all_rows` joins these rows to the curated ``published_runs.yaml`` and drops the CSV rows
that measure the same run as a curated row.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardware.errors import InputError, read_yaml_mapping

from .validate import DEFAULT_DATASET

DEFAULT_CSV = Path(__file__).resolve().parent / "data" / "training_runs.csv"
CSV_SOURCE = "training_runs.csv"

GIB_BYTES = 2**30
"""Bytes per GiB: memory columns in GB (10^9 bytes) are converted to the GiB the validator compares."""


@dataclass(frozen=True)
class SkippedRow:
    """A CSV row that is not priced, and why (one line, naming the column)."""

    id: str
    source_group: str
    reason: str


class _Skip(Exception):
    """Raised inside the conversion of one row: the row is returned as a SkippedRow."""


# --------------------------------------------------------------------------------------------------
# Mapping tables. Keys are the CSV's exact texts; a text not in a table stops that row with a reason
# (a new source must be read and added, not defaulted).
# --------------------------------------------------------------------------------------------------

GPU_TYPES: dict[str, tuple[str, dict[str, float], str]] = {
    # text: (hardware preset, cluster overrides, why)
    "A100-SXM4-80GB (DGX A100, Selene)": (
        "a100-sxm-80gb", {}, "Selene DGX A100 80GB; 8x HDR 200 Gb/s per node is the preset's network"),
    "A100 80GB": (
        "a100-sxm-80gb", {}, "llm-foundry's A100 80GB nodes; 1600 Gbps per node (RoCE) = the preset's 8 x 200 Gb/s"),
    "A100 40GB": (
        "a100-sxm-80gb", {"gpu.memory_gib": 39.5, "gpu.hbm_GBps": 1555},
        "A100 SXM4 40GB: same SMs, clocks, 312 TFLOP/s BF16 and 400 W as the 80GB part, with 40 GB HBM2 at "
        "1,555 GB/s (NVIDIA A100 datasheet); memory 40,960 MiB (nvidia-smi 'A100-SXM4-40GB') = 40.0 GiB minus "
        "the presets' 0.5 GiB context = 39.5 GiB; network 1600 Gbps per node = the preset's 8 x 200 Gb/s"),
    "H100 80GB": (
        "h100-sxm", {}, "llm-foundry's H100 80GB; its network is not stated, the DGX H100 preset's is assumed"),
    "H100-SXM 80GB (DGX-H100)": ("h100-sxm", {}, "DGX H100"),
    "H100": ("h100-sxm", {}, "Megatron-LM README: NVIDIA's H100 (Eos, DGX H100) cluster"),
    "H100 (96GB HBM2e, 500W power limit, Grand Teton)": (
        "h100-sxm", {"gpu.memory_gib": 95.1, "gpu.hbm_GBps": 2400, "gpu.tdp_w": 500},
        "Meta Grand Teton H100 96GB HBM2e at 500 W: the overrides of the curated torchtitan-2412 rows "
        "(published_runs.md section 11; memory 95.1 GiB is that section's assumption). Its dense peak is between "
        "SXM and NVL (torchtitan footnote 2), so throughput errors carry that uncertainty"),
    "H200": ("h200-sxm", {}, "Trainy/WhiteFiber H200 nodes, 400 Gb/s CX-7 per GPU = the preset's network"),
    "B200 (DGX-B200)": ("b200", {}, "DGX B200"),
    "B300 (DGX-B300)": ("b300", {}, "DGX B300 (HGX B300 preset, published_runs.md section 14)"),
    "GB200 (DGX-GB200)": ("gb200-nvl72", {}, "GB200 NVL72 racks"),
    "GB300 (DGX-GB300)": ("gb300-nvl72", {}, "GB300 NVL72 racks"),
}

PRECISIONS: dict[str, tuple[str, str | None, str]] = {
    # lower-cased text: (precision, fp8_recipe or fp4_recipe, why). Megatron-Bridge's "FP8" (26.02 and later tables)
    # is FP8-CS: the curated 26.02 rows read the same cells against the FP8_CS recipe configs.
    "bf16": ("bf16", None, "BF16"),
    "amp_bf16": ("bf16", None, "Composer amp_bf16: BF16 autocast"),
    "fp16 (mixed)": ("fp16", None, "fp16 mixed precision with loss scaling (2021)"),
    "fp8": ("fp8", "tensorwise", "Megatron-Bridge 26.x 'FP8' = FP8-CS, per-tensor current scaling (as the curated 26.02 rows)"),
    "fp8-cs": ("fp8", "tensorwise", "FP8 current scaling = Megatron --fp8-recipe tensorwise"),
    "fp8-mx": ("fp8", "mxfp8", "FP8-MX = MXFP8 1x32 block scaling"),
    "nvfp4": ("fp4", "nvfp4", "NVFP4 = Megatron-Bridge bf16_with_nvfp4_mixed (--fp4-format e2m1 --fp4-recipe nvfp4, "
                              "no fp4 param gather); the performance scripts (scripts/performance/utils/precision.py "
                              "@067f987d) leave first_last_layers_bf16 off, so every transformer layer runs NVFP4"),
    "mxfp8": ("fp8", "mxfp8", "MXFP8 1x32 block scaling"),
    "amp_fp8": ("fp8", "delayed", "Composer amp_fp8: Transformer Engine fp8_autocast with its default DelayedScaling"),
    "bf16 + float8 (nn.linear, torchao)": ("fp8", "tensorwise", "torchao Float8 linear, default dynamic tensorwise scaling"),
    "bf16 + float8 tensorwise": ("fp8", "tensorwise", "torchao Float8 tensorwise"),
    "bf16 + float8 linear (fsdp float8 all-gather)": ("fp8", "tensorwise", "torchao Float8 linear (tensorwise) with float8 all-gathers"),
}
NEMO_FP8_RECIPE = ("fp8", "delayed", "NeMo 24.03 FP8: Transformer Engine DelayedScaling, the only FP8 recipe of that "
                   "container (current scaling arrived with TE 2.x in 2025)")
MLM_README_PRECISION = ("bf16", None, "not printed, read from the README's own arithmetic: TFLOP/s / MFU = 989-998 on "
                        "every row, the H100 dense BF16 peak (989), so MFU is BF16 utilisation (an FP8 run would be "
                        "quoted against 1979)")
UNPRICED_PRECISIONS = {
    "bf16 + float8 rowwise": "precision float8 rowwise: row-wise FP8 scaling is none of the modelled recipes "
                             "(tensorwise, delayed, mxfp8, blockwise) and runs 26-34% slower than tensorwise here",
    "": "precision not published (the 25.09 Megatron-Bridge table has no precision column); BF16 and FP8 "
        "differ by up to 2x and the FP8 recipe is unknown",
}

RECOMPUTE: dict[str, str | None] = {
    # text: recompute mode; None = not published (the validator prices none, selective and full)
    "": None,
    "none": "none",
    "full": "full",
    "full (activation_checkpointing=true)": "full",            # Composer: checkpoint every block (keys lower-cased)
    "full (assumed, as in sc21 scripts)": "full",              # SC21 run scripts: --activations-checkpoint-method uniform
    "selective (llama3_8b.toml default; not stated)": None,    # the source does not state it
}
UNPRICED_RECOMPUTE = {
    "selective (per-op sac)": "recompute: torchtitan's per-op selective checkpointing (saves every other matmul) "
                              "is not Megatron's selective recompute and has no mode here",
}

FSDP_ZERO_STAGE: dict[str, int | None] = {
    # text (up to its first space or parenthesis): ZeRO stage of the equivalent sharding
    "": None,                  # not published
    "0": 1,                    # Megatron-Bridge 'FSDP 0' = Megatron DDP with the recipes' distributed optimizer (ZeRO-1)
    "8": 3,                    # Megatron FSDP: parameters, gradients and optimizer sharded
    "64": 3,
    "FULL_SHARD": 3,           # PyTorch FSDP FULL_SHARD = ZeRO-3
    "SHARD_GRAD_OP": 2,        # PyTorch FSDP SHARD_GRAD_OP = ZeRO-2
    "FSDP2": 3,                # torchtitan fully_shard = ZeRO-3 (PP rows: see _torchtitan)
}

STACKS: tuple[tuple[str, str, str], ...] = (
    # (framework text starts with, stack, why)
    ("Megatron-Bridge / NeMo", "megatron-core", "Megatron-Bridge on Megatron-Core + Transformer Engine"),
    ("NeMo (NeMo2", "megatron-core", "NeMo 24.x/25.x on Megatron-Core + Transformer Engine"),
    ("Megatron-Core", "megatron-core", "Megatron-Core r0.8 + Transformer Engine"),
    ("Megatron-LM PTD-P", "megatron-lm-2021", "Narayanan et al. 2021's Megatron-LM"),
    ("DeepSpeed ZeRO-3", "deepspeed-zero3", "DeepSpeed ZeRO-3 without model parallelism (SC21 Table 2)"),
    ("torchtitan", "torchtitan", "torchtitan (FSDP2, torch.compile, SDPA)"),
    ("MosaicML Composer", "composer-fsdp", "Composer + llm-foundry, PyTorch FSDP1, flash-attn"),
)

MODEL_PRESETS: dict[str, str] = {
    # model name without its '(...)' variant: preset in cost_model/presets/models.yaml (config.json values;
    # the CSV's Llama 3 vocab 128000 is the paper's rounded size, config.json's is 128,256)
    "LLAMA3_8B": "llama3-8b", "LLAMA3-8B": "llama3-8b", "Llama 3.1 8B": "llama3-8b",
    "LLAMA3_70B": "llama3-70b", "Llama 3.1 70B": "llama3-70b",
    "LLAMA3.1_405B": "llama3-405b", "Llama 3.1 405B": "llama3-405b",
    "DeepSeekV3": "deepseek-v3",
    "GPT OSS 120B": "gpt-oss-120b",
    "Qwen3_30B_a3B": "qwen3-30b-a3b",
    "Qwen3_235B_a22B": "qwen3-235b-a22b",
}
LLAMA2_7B = {
    # https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json (the CSV leaves vocab blank)
    "model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 11008,
    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "hidden_act": "silu",
    "rms_norm_eps": 1.0e-5, "tie_word_embeddings": False, "max_position_embeddings": 4096,
}
UNKNOWN_ARCHITECTURES = ("Kimi_K2", "Nemotron_3", "DeepSeekV4")
"""Models whose architecture the table leaves blank and no preset has (Nemotron 3 is a Mamba hybrid)."""

CSV_ARCHITECTURE = {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
                    "kv_heads": "num_key_value_heads", "num_experts": "num_experts", "moe_topk": "num_experts_per_tok",
                    "moe_ffn_hidden": "moe_intermediate_size"}
"""CSV architecture columns checked against a preset (names of the resolved HF config)."""

H100_DENSE_BF16_TFLOPS = 989
"""H100 SXM dense BF16 peak (NVIDIA datasheet), the peak of the Megatron-LM README's MFU (408.8 TFLOP/s
at 41% is 997, 465.9 at 47% is 991): MFU x 989 gives the TFLOP/s of its two strong-scaling endpoints."""


# --------------------------------------------------------------------------------------------------
# Parsing helpers
# --------------------------------------------------------------------------------------------------

def _int(text: str, column: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    value = float(text)
    if value != int(value):
        raise _Skip(f"{column} {text!r} is not a whole number")
    return int(value)


def _float(text: str) -> float | None:
    text = text.strip()
    return float(text) if text else None


def parse_seq_len(text: str) -> int:
    """The leading integer of the seq_len column ('8192 (torchtitan ... default)' -> 8192)."""
    match = re.match(r"\s*(\d+)", text)
    if not match:
        raise _Skip(f"seq_len {text!r} has no number")
    return int(match.group(1))


def memory_gib(value: str, kind: str) -> float | None:
    """memory_gb_per_gpu in GiB. The column's name says GB, but memory_kind says the unit: every row
    that has one says 'GiB ...' (torchtitan logs GiB); a 'GB' kind is converted (10^9 / 2^30)."""
    amount = _float(value)
    if amount is None:
        return None
    unit = kind.strip().split(" ", 1)[0].rstrip(",")
    if unit == "GiB":
        return amount
    if unit == "GB":
        return amount * 1e9 / GIB_BYTES
    raise _Skip(f"memory_kind {kind!r} names no unit (GiB or GB)")


def _model_name(text: str) -> tuple[str, str]:
    """'Qwen3_30B_a3B (tokendrop)' -> ('Qwen3_30B_a3B', 'tokendrop')."""
    match = re.match(r"\s*(.*?)\s*(?:\((.*)\))?\s*$", text)
    return match.group(1), (match.group(2) or "").strip()


def _stack(framework: str) -> tuple[str, str]:
    for prefix, stack, why in STACKS:
        if framework.startswith(prefix):
            return stack, why
    raise _Skip(f"framework {framework!r} is in no stack table entry")


def _fsdp_stage(text: str) -> int | None:
    key = re.split(r"[ (]", text.strip(), maxsplit=1)[0]
    if key not in FSDP_ZERO_STAGE:
        raise _Skip(f"fsdp {text!r} is in no sharding table entry")
    return FSDP_ZERO_STAGE[key]


def _precision(row: dict[str, str]) -> tuple[str, str | None, str]:
    text = row["precision"].strip().lower()
    if row["source_group"] == "mlm_h100" and not text:
        return MLM_README_PRECISION
    if text in UNPRICED_PRECISIONS:
        raise _Skip(UNPRICED_PRECISIONS[text])
    if row["source_group"] == "nemo_longseq" and text == "fp8":
        return NEMO_FP8_RECIPE
    if text not in PRECISIONS:
        raise _Skip(f"precision {row['precision']!r} is in no precision table entry")
    return PRECISIONS[text]


def _recompute(text: str) -> str | None:
    key = text.strip().lower()
    if key in UNPRICED_RECOMPUTE:
        raise _Skip(UNPRICED_RECOMPUTE[key])
    if key not in RECOMPUTE:
        raise _Skip(f"recompute {text!r} is in no recompute table entry")
    return RECOMPUTE[key]


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------

def _gpt_model(row: dict[str, str], name: str, seq_length: int) -> dict[str, Any]:
    """A GPT-2-style model from the CSV's columns (SC21, Megatron-LM README, MPT): GeLU 4h MLP,
    LayerNorm, learned positions, tied embeddings, biases, as the curated SC21 rows. MPT's
    ``MPTConfig`` defaults are the same (learned_pos_emb, no_bias False, no ALiBi in the benchmark
    yamls); Megatron-LM's defaults are too (--position-embedding-type learned_absolute)."""
    hidden = _int(row["hidden"], "hidden")
    ffn = _int(row["ffn_hidden"], "ffn_hidden") or 4 * hidden
    return {"name": name, "num_hidden_layers": _int(row["layers"], "layers"), "hidden_size": hidden,
            "num_attention_heads": _int(row["heads"], "heads"), "intermediate_size": ffn,
            "vocab_size": _int(row["vocab"], "vocab"), "hidden_act": "gelu", "norm_type": "layernorm",
            "position_embedding_type": "learned", "max_position_embeddings": seq_length,
            "tie_word_embeddings": True, "add_bias_linear": True}


def _check_against_preset(row: dict[str, str], preset: str) -> list[str]:
    from cost_model.model_loader import model_preset_config

    config = model_preset_config(preset)
    aliases = {"num_experts": ("num_experts", "n_routed_experts", "num_local_experts"),
               "moe_intermediate_size": ("moe_intermediate_size", "intermediate_size")}
    notes = []
    for column, field in CSV_ARCHITECTURE.items():
        given = _int(row[column], column)
        if given is None:
            continue
        values = [config.get(key) for key in aliases.get(field, (field,)) if config.get(key) is not None]
        if field == "num_key_value_heads" and not values:
            values = [config.get("num_attention_heads")]
        if given not in values:
            raise _Skip(f"{column} {given} disagrees with preset {preset} ({values}): architecture unclear")
    vocab = _int(row["vocab"], "vocab")
    if vocab and vocab != config.get("vocab_size"):
        notes.append(f"vocab {config.get('vocab_size')} from the {preset} preset's config.json (the table says {vocab})")
    return notes


def _model(row: dict[str, str], seq_length: int) -> tuple[dict[str, Any], str, list[str]]:
    """(model mapping, variant text, notes)."""
    name, variant = _model_name(row["model"])
    if any(name.startswith(prefix) for prefix in UNKNOWN_ARCHITECTURES):
        raise _Skip(f"model {name}: architecture not in the table and no preset (missing architecture)")
    if name in MODEL_PRESETS:
        preset = MODEL_PRESETS[name]
        return {"preset": preset}, variant, _check_against_preset(row, preset)
    if name == "LLAMA2-7B":
        return {"name": "llama2-7b", **LLAMA2_7B}, variant, ["architecture: Llama-2-7b-hf config.json"]
    if row["source_group"] in ("sc21_t2", "mlm_h100", "llmfoundry"):
        if not (row["layers"] and row["hidden"] and row["heads"] and row["vocab"]):
            raise _Skip(f"model {name}: layers/hidden/heads/vocab incomplete (missing architecture)")
        return _gpt_model(row, re.sub(r"\W+", "-", name.lower()).strip("-"), seq_length), variant, []
    raise _Skip(f"model {row['model']!r} is in no model table entry (missing architecture)")


# --------------------------------------------------------------------------------------------------
# Per-source knobs: what each source's recipes set that the table does not show, with citations.
# Each returns (training additions, plan additions, notes).
# --------------------------------------------------------------------------------------------------

LLAMA70B_OFFLOAD_LAYERS = {"GB200 (DGX-GB200)": 40, "GB300 (DGX-GB300)": 20}
"""cpu_offloading_num_layers of Megatron-Bridge's Llama 3 70B TP1 PP1 recipes on NVL72 (25.11 and 26.02,
published_runs.md section 14): the layout does not fit 70B without it."""


GPT_OSS_RECOMPUTE = {"B200 (DGX-B200)": ["layernorm", "moe_act"], "GB200 (DGX-GB200)": ["layernorm", "moe_act"],
                     "H100-SXM 80GB (DGX-H100)": ["layernorm", "moe_act"], "B300 (DGX-B300)": None,
                     "GB300 (DGX-GB300)": None}
"""Recompute of Megatron-Bridge's GPT-OSS 120B performance configs per GPU, the same in every release read
(scripts/performance/configs/gpt_oss/workload_base_configs.py at v0.2.0, gpt_oss_workload_base_configs.py at
v0.3.0 and v0.4.0, src/megatron/bridge/perf_recipes/gpt_oss/b200/gpt_oss.py at v0.6.0): B200, GB200 and H100
recompute the ``layernorm`` and ``moe_act`` modules (selective); B300 and GB300 recompute nothing and capture
CUDA graphs instead."""


_QWEN3_PERF_CONFIGS = "scripts/performance/configs/qwen/qwen3_workload_base_configs.py"
_QWEN3_FLEX_GRAPHS = ("Megatron-Bridge v0.3.1, v0.4.0 and v0.4.1 (the 26.02.01, 26.04 and 26.04.01 containers) alike: "
                      f"{_QWEN3_PERF_CONFIGS} QWEN3_30B_A3B_PRETRAIN_CONFIG_<GPU>_<precision>_V1 sets "
                      "moe_flex_dispatcher_backend hybridep and Transformer Engine CUDA graphs of cuda_graph_scope on Blackwell, "
                      "hybridep with EP 16 and no graphs on H100 (qwen3_llm_pretrain.py: moe_token_dispatcher_type flex)")
_QWEN3_FULL_ITERATION = ("the MXFP8 Blackwell configs of {tag} ({configs}) add cuda_graph_impl full_iteration with "
                         "set_full_iter_cg_configs / _enable_hybridep_full_iteration_mxfp8: moe_paged_stash, "
                         "moe_expert_rank_capacity_factor 1.5, moe_paged_stash_buffer_size_factor_cuda 1.2 (sync-free "
                         "dropless HybridEP){overlap}; their cutedsl_fused_grouped_mlp and fp8_dot_product_attention are "
                         "not priced")
_QWEN3_TE_GRAPHS = ("moe_router", "moe_preprocess")
_QWEN3_SYNC_FREE = {"moe_token_dispatcher": "hybridep", "cuda_graph_scope": ["full_iteration"],
                    "moe_rank_capacity_factor": 1.5, "moe_paged_stash_factor": 1.2}
_QWEN3_FLEX_BY_GPU = {"GB300 (DGX-GB300)": {"moe_token_dispatcher": "hybridep", "cuda_graph_scope": list(_QWEN3_TE_GRAPHS)},
                      "GB200 (DGX-GB200)": {"moe_token_dispatcher": "hybridep", "cuda_graph_scope": list(_QWEN3_TE_GRAPHS)},
                      "B300 (DGX-B300)": {"moe_token_dispatcher": "hybridep", "cuda_graph_scope": list(_QWEN3_TE_GRAPHS)},
                      "B200 (DGX-B200)": {"moe_token_dispatcher": "hybridep",
                                          "cuda_graph_scope": ["attn", *_QWEN3_TE_GRAPHS]},
                      "H100-SXM 80GB (DGX-H100)": {"moe_token_dispatcher": "hybridep"}}
_QWEN3_SYNC_FREE_BY_GPU = {gpu: dict(_QWEN3_SYNC_FREE) for gpu in ("GB300 (DGX-GB300)", "GB200 (DGX-GB200)", "B300 (DGX-B300)")}
QWEN3_30B_RECIPES: dict[str, tuple[dict[str, dict[str, Any]], str]] = {
    "26.02.01": (_QWEN3_FLEX_BY_GPU, _QWEN3_FLEX_GRAPHS),
    "26.04": (_QWEN3_FLEX_BY_GPU, _QWEN3_FLEX_GRAPHS),
    "26.04.01": (_QWEN3_FLEX_BY_GPU, _QWEN3_FLEX_GRAPHS),
    "26.06": ({**_QWEN3_FLEX_BY_GPU, **{gpu: {**knobs, "overlap_moe_expert_parallel_comm": True}
                                        for gpu, knobs in _QWEN3_SYNC_FREE_BY_GPU.items()}},
              _QWEN3_FULL_ITERATION.format(tag="v0.5.0", configs=_QWEN3_PERF_CONFIGS,
                                           overlap=", with moe_a2a_overlap True")),
    "26.06.01": ({**_QWEN3_FLEX_BY_GPU, **{gpu: {**knobs, "overlap_moe_expert_parallel_comm": True}
                                           for gpu, knobs in _QWEN3_SYNC_FREE_BY_GPU.items()}},
                 _QWEN3_FULL_ITERATION.format(tag="v0.5.1", configs=_QWEN3_PERF_CONFIGS,
                                              overlap=", with moe_a2a_overlap True")),
    "26.08": ({**_QWEN3_FLEX_BY_GPU, **_QWEN3_SYNC_FREE_BY_GPU},
              _QWEN3_FULL_ITERATION.format(tag="v0.6.0", configs="src/megatron/bridge/perf_recipes/qwen/<gpu>/qwen3_moe.py "
                                           "qwen3_30b_a3b_pretrain_8gpu_<gpu>_fp8mx_config, common.py",
                                           overlap=", without the EP all-to-all overlap")),
}
"""Token dispatcher and CUDA graphs of Megatron-Bridge's Qwen3-30B-A3B performance configs per container (the
release tag of each: 26.02.01 = v0.3.1, 26.04 = v0.4.0, 26.04.01 = v0.4.1, 26.06 = v0.5.0, 26.06.01 = v0.5.1,
26.08 = v0.6.0, the tags dated with the summary commits), per GPU of the tables: container -> ({gpu_type:
training fields}, citation). The 25.11 and 26.02 rows are the curated ones (published_runs.yaml); their CSV
twins are joined away. H100 runs FP8-CS with HybridEP and no graphs in every release from v0.3.1
(QWEN3_30B_A3B_PRETRAIN_CONFIG_H100_FP8_CS_V1 at v0.3.1-v0.5.1, qwen3_30b_a3b_pretrain_16gpu_h100_fp8cs_config at
v0.6.0)."""

_QWEN3_235B_GRAPHS = ["attn", *_QWEN3_TE_GRAPHS]
_QWEN3_235B_FLEX = ("Megatron-Bridge {tags}: " + _QWEN3_PERF_CONFIGS + " QWEN3_235B_A22B_PRETRAIN_CONFIG_<GPU>_FP8_<CS|MX>_V2: "
                    "GB300 = GB300_BF16_V2 and GB200 = GB200_FP8_CS_V1 + 256 GPUs, both hybridep with Transformer Engine "
                    "graphs of [attn, moe_router, moe_preprocess]; B300 and H100 leave the backend unset and "
                    "qwen3_llm_pretrain.py sets moe_token_dispatcher_type alltoall; H100_FP8_CS_V1 moe_a2a_overlap True")
_QWEN3_235B_2602_01 = {"GB200 (DGX-GB200)": {"moe_token_dispatcher": "hybridep", "cuda_graph_scope": _QWEN3_235B_GRAPHS},
                       "H100-SXM 80GB (DGX-H100)": {"overlap_moe_expert_parallel_comm": True}}
_QWEN3_235B_2604 = {**_QWEN3_235B_2602_01,
                    "GB300 (DGX-GB300)": {"moe_token_dispatcher": "hybridep", "cuda_graph_scope": _QWEN3_235B_GRAPHS}}
_QWEN3_235B_2606 = {"GB300 (DGX-GB300)": {**_QWEN3_SYNC_FREE, "overlap_moe_expert_parallel_comm": True},
                    "GB200 (DGX-GB200)": {**_QWEN3_SYNC_FREE, "overlap_moe_expert_parallel_comm": True},
                    "H100-SXM 80GB (DGX-H100)": {"overlap_moe_expert_parallel_comm": True}}
QWEN3_235B_RECIPES: dict[str, tuple[dict[str, dict[str, Any]], str]] = {
    "26.02.01": (_QWEN3_235B_2602_01, _QWEN3_235B_FLEX.format(tags="v0.3.1")),
    "26.04": (_QWEN3_235B_2604, _QWEN3_235B_FLEX.format(tags="v0.4.0")),
    "26.04.01": (_QWEN3_235B_2604, _QWEN3_235B_FLEX.format(tags="v0.4.1")),
    "26.06": (_QWEN3_235B_2606, _QWEN3_FULL_ITERATION.format(tag="v0.5.0", configs=_QWEN3_PERF_CONFIGS + " QWEN3_235B_A22B_"
                                                                "PRETRAIN_CONFIG_GB300|GB200_FP8_MX_V2", overlap=", with moe_a2a_overlap True")),
    "26.06.01": (_QWEN3_235B_2606, _QWEN3_FULL_ITERATION.format(tag="v0.5.1", configs=_QWEN3_PERF_CONFIGS + " QWEN3_235B_A22B_"
                                                                   "PRETRAIN_CONFIG_GB300|GB200_FP8_MX_V2", overlap=", with moe_a2a_overlap True")),
    "26.08": ({gpu: dict(_QWEN3_SYNC_FREE) for gpu in ("GB300 (DGX-GB300)", "GB200 (DGX-GB200)")},
              _QWEN3_FULL_ITERATION.format(tag="v0.6.0", configs="src/megatron/bridge/perf_recipes/qwen/<gpu>/qwen3_moe.py "
                                           "qwen3_235b_a22b_pretrain_256gpu_<gpu>_fp8mx_config", overlap=", without the EP all-to-all overlap")),
}
"""Qwen3-235B-A22B's counterpart of :data:`QWEN3_30B_RECIPES` (same tags, the 256-GPU V2 configs the tables
print): B300 rows keep Megatron's all-to-all dispatcher without graphs (no entry), H100 runs the all-to-all with
the EP overlap (``H100_FP8_CS_V1 moe_a2a_overlap=True`` at v0.3.1-v0.5.1)."""
QWEN3_RECIPES = {"qwen3-30b-a3b": QWEN3_30B_RECIPES, "qwen3-235b-a22b": QWEN3_235B_RECIPES}


def _megatron_bridge(row, model, plan, training, variant):
    notes = ["recipe knobs as the curated Megatron-Bridge rows (published_runs.md sections 4, 12-14): "
             "grad_dtype bf16 (grad_reduce_in_fp32 False), no dropout, sequence parallel when TP > 1; "
             "recompute, CUDA graphs, token dispatcher and offloading are in per-container recipes not read here"]
    extra_training: dict[str, Any] = {"grad_dtype": "bf16", "dropout": False}
    extra_plan: dict[str, Any] = {"sequence_parallel": plan["tp"] > 1}
    preset = model.get("preset")
    if preset == "deepseek-v3":
        # Every DeepSeek-V3 perf config uses selective recompute of mla_up_proj and Megatron's
        # precision-aware optimizer with bf16 moments (curated DeepSeek-V3 rows, section 4).
        extra_training["optimizer_moments_dtype"] = "bf16"
        extra_plan.update(recompute="selective", recompute_modules=["mla_up_proj"])
        notes.append("DeepSeek-V3 recipes: recompute_modules [mla_up_proj], bf16 Adam moments; MTP layer not modelled"
                     + (f" (table: {variant})" if "MTP" in variant else ""))
    if preset in ("llama3-8b", "llama3-70b", "llama3-405b") and plan["tp"] > 1:
        # The dense Llama recipes' userbuffers TP overlap when TP > 1, except under NVFP4: every performance
        # config of Llama 3 / 3.1 from the first NVFP4 release to the last read turns it off for NVFP4
        # (scripts/performance/configs/llama/llama3_llm_pretrain.py and llama31_llm_pretrain.py:
        # ``cfg.comm_overlap.tp_comm_overlap = False if precision == "nvfp4"`` at v0.3.0, v0.3.1, v0.4.0, v0.4.2,
        # v0.5.0; src/megatron/bridge/perf_recipes/llama/gb200|gb300/llama31.py ``*_nvfp4_config``
        # ``tp_comm_overlap = False`` at v0.6.0), so its TP collectives run exposed.
        overlap = training["precision"] != "fp4"
        extra_training["tp_comm_overlap"] = overlap
        notes.append("tp_comm_overlap on (dense Llama recipes, TP > 1)" if overlap else
                     "tp_comm_overlap off (the NVFP4 perf configs turn it off, llama3*_llm_pretrain.py)")
    if preset == "llama3-70b" and plan["tp"] == 1 and plan["pp"] == 1 and row["gpu_type"] in LLAMA70B_OFFLOAD_LAYERS:
        # Every recipe read for Llama 3 70B at TP1 PP1 on NVL72 offloads activations to the Grace host
        # (cpu_offloading_num_layers; curated rows megatron-bridge-25.11/26.02-gb200/gb300-llama3-70b-fp8):
        # rows without a curated twin take their GPU's recipe value.
        extra_plan["activation_offload_layers"] = LLAMA70B_OFFLOAD_LAYERS[row["gpu_type"]]
        notes.append(f"activation offload {extra_plan['activation_offload_layers']} layers (the recipes of this "
                     "layout on this GPU, as the curated rows read them)")
    if preset == "gpt-oss-120b" and row["gpu_type"] in GPT_OSS_RECOMPUTE:
        modules = GPT_OSS_RECOMPUTE[row["gpu_type"]]
        extra_plan.update(recompute="selective", recompute_modules=modules) if modules else \
            extra_plan.update(recompute="none")
        notes.append("GPT-OSS recipes: " + (f"selective recompute of {', '.join(modules)}" if modules
                                            else "no recompute (CUDA graphs)"))
    container = re.search(r"\((\d\d\.\d\d(?:\.\d\d)?) NeMo Container\)", row["framework"])
    recipes = QWEN3_RECIPES.get(preset, {}).get(container.group(1)) if container else None
    if not variant and recipes and row["gpu_type"] in recipes[0]:
        knobs = recipes[0][row["gpu_type"]]
        extra_training.update(knobs)
        # set_qwen3_common_configs (qwen3_llm_pretrain.py, v0.3.1-v0.5.1) and every v0.6.0 perf_recipes/qwen
        # config set recompute_granularity/method/num_layers None: no recompute (the table has no column).
        extra_plan["recompute"] = "none"
        notes.append(f"{preset} recipe of the {container.group(1)} container: "
                     + ", ".join(f"{key} {value}" for key, value in knobs.items())
                     + f", no recompute ({recipes[1]}; recompute None in set_qwen3_common_configs)")
    if variant == "tokendrop":
        # Megatron-Bridge 'tokendrop': capacity factor 1.0 with inputs padded to capacity
        extra_training.update(moe_capacity_factor=1.0, moe_pad_to_capacity=True)
        notes.append("token drop: capacity factor 1.0, padded to capacity")
    return extra_training, extra_plan, notes


def _nemo_longseq(row, model, plan, training, variant):
    # NeMo's Llama configs: hidden/attention dropout 0, sequence parallel with TP (NeMo llama recipes).
    return ({"dropout": False}, {"sequence_parallel": plan["tp"] > 1},
            ["NeMo Llama recipes: no dropout, sequence parallel when TP > 1; recompute and ZeRO stage not published"])


MLM_README_OVERLAP_FLAGS = "--overlap-grad-reduce --overlap-param-gather --tp-comm-overlap"
"""The overlap flags of the Megatron-LM README's H100 benchmarks (README.md 'Training Speed and Scalability',
added with the figures in f2e5db402c, 2024-07-15): "We perform fine-grained overlapping of data-parallel
(``--overlap-grad-reduce --overlap-param-gather``), tensor-parallel (``--tp-comm-overlap``) and
pipeline-parallel communication (enabled by default)". The sentence opens the section and precedes both
figures; the weak-scaling table and the strong-scaling plot carry the same "Megatron-Core r0.8.0" legend,
so the strong-scaling rows (whose CSV ``other_metrics`` is empty) ran with them too."""

MLM_README_UNTIED_EMBEDDINGS = (
    "untied input embedding and output layer (--untie-embeddings-and-output-weights): the README's model sizes "
    "count both V x h matrices. 12*l*h^2 per layer + 2*V*h (+ positions) gives 1.75, 7.13, 16.1, 31.5, 69.8, 118.5, "
    "177.2, 313.6 and 461.5 B for the table's 1.7B, 7.1B, 16B, 32B, 70B, 119B, 177B, 314B and 462B; one V x h "
    "matrix (tied) gives 1.49, 6.59, 15.3, 30.6, 68.7, 117.2, 175.6, 311.5, 459.1 B, which the table does not "
    "print, and the strong-scaling text's 'slightly more than 175 billion parameters due to larger vocabulary "
    "size' is 177.2 B, not 175.6")
"""Why the README's GPT models are priced with an output layer of their own (see :func:`_mlm_h100`)."""


MLM_STRONG_SCALING_DP = (2, 3, 6, 12, 24, 48, 64, 96)
"""Data-parallel degrees of the README's strong-scaling points (images/strong_scaling.png, f2e5db402c): GPT-3
177B at TP 8 x PP 6 on 96, 144, 288, 576, 1152, 2304, 3072 and 4608 GPUs, read off the plot's log axis (the
eight dots sit at 96, 143, 286, 575, 1153, 2318, 3073 and 4618 GPUs), all with 1152 sequences a step."""


def interleaved_micro_batches(global_batch: int, pp: int, dps: tuple[int, ...]) -> list[int]:
    """Micro-batch sizes that every data-parallel degree of a series can run under Megatron-Core's
    interleaved schedule, which needs whole micro-batches per rank and their number divisible by the
    pipeline size (core_r0.8.0 ``forward_backward_pipelining_with_interleaving``: "number of microbatches
    ... is not divisible by pipeline-model-parallel-size when using interleaved schedule")."""
    return [b for b in range(1, global_batch + 1)
            if all(global_batch % (dp * b) == 0 and (global_batch // (dp * b)) % pp == 0 for dp in dps)]


def _mlm_h100(row, model, plan, training, variant):
    flags = row["other_metrics"].strip() or MLM_README_OVERLAP_FLAGS
    notes = ["GPT with Megatron-LM defaults: dropout 0.1 (--hidden-dropout/--attention-dropout), learned positions; "
             "recompute, micro-batch and virtual pipeline size not published",
             MLM_README_UNTIED_EMBEDDINGS]
    if not row["other_metrics"].strip():
        notes.append("overlap flags from the README's section text (the strong-scaling plot has none of its own): "
                     + MLM_README_OVERLAP_FLAGS)
    model["tie_word_embeddings"] = False
    extra_plan: dict[str, Any] = {}
    if "--overlap-param-gather" in flags:
        # Megatron-LM arguments.py: --overlap-param-gather requires --use-distributed-optimizer (ZeRO-1)
        extra_plan["zero_stage"] = 1
        notes.append("zero_stage 1: --overlap-param-gather needs the distributed optimizer")
    overlap = "--tp-comm-overlap" in flags
    # --tp-comm-overlap requires --sequence-parallel (Megatron-LM arguments.py)
    extra_plan["sequence_parallel"] = plan["tp"] > 1
    if "strong-scaling" in row["source"] and plan["pp"] > 1:
        # One micro-batch size for the series (assumed); 1152 sequences at DP 64 and DP 96 leave only 1.
        sizes = interleaved_micro_batches(_int(row["global_batch"], "global_batch"), plan["pp"], MLM_STRONG_SCALING_DP)
        if len(sizes) == 1:
            extra_plan["micro_batch"] = sizes[0]
            notes.append(f"micro_batch {sizes[0]}: the only size every strong-scaling point (DP {MLM_STRONG_SCALING_DP}) "
                         "can run under the interleaved schedule with one size for the series")
    if plan["pp"] > 1:
        # core_r0.8.0 megatron/training/arguments.py (validate_args): without
        # --num-layers-per-virtual-pipeline-stage it sets overlap_p2p_comm False ("non-interleaved schedule
        # does not support overlapping p2p communication"), so the README's pipeline overlap "enabled by
        # default" is the interleaved schedule; its virtual stage count is not published.
        notes.append("interleaved schedule (the README's overlapped pipeline communication exists only there in "
                     "core_r0.8.0 arguments.py); virtual pipeline size not published")
    return {"dropout": True, "tp_comm_overlap": overlap and plan["tp"] > 1}, extra_plan, notes


def _sc21(row, model, plan, training, variant):
    # GPT-3-era runs: dropout 0.1, no flash attention (the stacks' default), no sequence parallelism.
    # DeepSpeed's fp16 ZeRO reduces the fp16 gradients (2 bytes; deepspeed/runtime/zero/stage3.py keeps
    # fp32 only in the optimizer's partition). Megatron's PTD-P rows accumulate and all-reduce fp16
    # gradients too: every SC21 script sources examples/sc21/CONFIG.sh (NVIDIA/Megatron-LM @6985e58938),
    # whose MEGATRON_PARAMS give --fp16 --loss-scale 8192 and no --accumulate-allreduce-grads-in-fp32 (fp32
    # accumulation is forced for --bf16 only, megatron/arguments.py), so the buffer is the fp16 param.grad.
    deepspeed = "ZeRO-3" in row.get("framework", "")
    return ({"dropout": True, "grad_dtype": "fp16"}, {"sequence_parallel": False},
            ["SC21: fp16, dropout 0.1, no sequence parallelism"
             + ("; 2-byte gradients (DeepSpeed fp16 ZeRO)" if deepspeed else
                "; fp16 gradient buffer (examples/sc21/CONFIG.sh @6985e58938: --fp16, no "
                "--accumulate-allreduce-grads-in-fp32)")])


LLMFOUNDRY_TORCH_1_13_GPUS = ("A100 40GB",)
"""llm-foundry's table sections measured before its October 2023 refresh: the A100 40GB section is in
``scripts/train/benchmarking/README.md`` as of its first commit there (300cc5c58, 2023-05-03), when
llm-foundry pinned ``mosaicml==0.13.4`` and ``torch==1.13.1`` (setup.py at 300cc5c58). The H100 and A100
80GB sections were (re)measured for b2a43a147 (2023-10-19) with ``run_config``'s llm-foundry v0.3.0
(``mosaicml>=0.16.3,<0.17``) on ``mosaicml/pytorch:2.1.0_cu121`` (sweep.sh), and the H100 large-scale
section for 5e85bd62d (2024-01-06) with llm-foundry main (``mosaicml>=0.17.2,<0.18``, ``torch>=2.1,<2.1.1``;
sweep.py): torch 2.1 with Composer >= 0.15 for all three (:attr:`cost_model.training_spec.TrainingSpec.torch_1_13`)."""


def _llmfoundry(row, model, plan, training, variant):
    fsdp = row["fsdp"]
    grad = "bf16" if "PURE" in fsdp else "fp32"
    # Composer FSDP mixed_precision: DEFAULT reduces gradients in fp32, PURE in bf16 (composer/distributed)
    old = row["gpu_type"] in LLMFOUNDRY_TORCH_1_13_GPUS
    notes = [f"Composer FSDP mixed precision {'PURE' if grad == 'bf16' else 'DEFAULT'}: gradients reduced in {grad}; "
             "MPTConfig pdrop 0 (no dropout); decoupled AdamW",
             "Composer 0.13.4 / torch 1.13.1 (table of 2023-05): flat optimizer shards, no step read-back, whole-block "
             "recompute" if old else
             "Composer >= 0.16 / torch 2.1 (tables of 2023-10 and 2024-01): DecoupledAdamW over module parameters with a "
             "step read-back per tensor; the non-reentrant recompute stops before the MLP output projection"]
    return ({"grad_dtype": grad, "dropout": False, "flash_attention": True, "optimizer": "adamw",
             "torch_1_13": old},
            {"sequence_parallel": False}, notes)


def _torchtitan(row, model, plan, training, variant):
    # AsyncTP is named in the caption ('+ AsyncTP') or the variant ('async TP'); 'async-TP speedup=' is a
    # column of both variants of the async-TP table and says nothing about the row.
    text = re.sub(r"async-tp speedup=[\d.]+", "", row["other_metrics"].lower())
    async_tp = "async" in text and "vanilla" not in text
    extra_plan: dict[str, Any] = {"sequence_parallel": plan["tp"] > 1}
    notes = ["torchtitan knobs as the curated torchtitan-2412 rows (published_runs.md section 11): fp32 gradient "
             "reduce, AdamW, no dropout, PyTorch cross entropy (stack default)"]
    if plan["pp"] > 1 and plan.get("zero_stage") == 3:
        # With PP torchtitan keeps reshard_after_forward off and defers the reduce-scatter to the last
        # micro-batch: ZeRO-1's memory (section 11).
        extra_plan["zero_stage"] = 1
        notes.append("zero_stage 1: FSDP2 under PP holds gathered weights and full gradients for the step")
    return ({"grad_dtype": "fp32", "dropout": False, "optimizer": "adamw", "tp_comm_overlap": async_tp and plan["tp"] > 1},
            extra_plan, notes)


SOURCE_KNOBS = {"mbridge": _megatron_bridge, "nemo_longseq": _nemo_longseq, "mlm_h100": _mlm_h100,
                "sc21_t2": _sc21, "llmfoundry": _llmfoundry, "torchtitan": _torchtitan,
                "torchtitan_asynctp": _torchtitan, "torchtitan_h200": _torchtitan}


def _local_batch(row: dict[str, str]) -> int | None:
    match = re.search(r"local_batch_size=(\d+)", row["other_metrics"])
    return int(match.group(1)) if match else None


def _torchtitan_batches(row: dict[str, str], plan: dict[str, Any], notes: list[str]) -> tuple[int | None, int | None]:
    """(micro-batch, global batch) of a torchtitan row from its local batch size: global = local x FSDP
    degree; without PP there is no accumulation (micro = local); with PP torchtitan splits the local batch
    into pp x stages-per-rank micro-batches (2 stages per rank interleaved), as section 11 reads it."""
    local = _local_batch(row)
    if local is None:
        return None, None
    micro = local
    if plan["pp"] > 1:
        stages = 2 if "interleaved" in row["other_metrics"].lower() else 1
        plan["vpp"] = stages
        micro = local // (plan["pp"] * stages)
        notes.append(f"PP: local batch {local} in {plan['pp'] * stages} micro-batches of {micro}")
    return max(micro, 1), local * plan["dp"]


# --------------------------------------------------------------------------------------------------
# One row
# --------------------------------------------------------------------------------------------------

def _layout(row: dict[str, str], num_gpus: int, notes: list[str]) -> dict[str, Any]:
    plan = {key: _int(row[key], key) for key in ("tp", "pp", "dp", "cp", "ep", "vpp", "micro_batch")}
    for key in ("tp", "pp", "cp", "ep"):
        if plan[key] is None:
            plan[key] = 1  # a degree the table leaves blank is not used by that run (captions: '1D FSDP', 'FSDP + CP')
    model_parallel = plan["tp"] * plan["pp"] * plan["cp"]
    if plan["dp"] is None:
        if num_gpus % model_parallel:
            raise _Skip(f"layout: {num_gpus} GPUs is not a multiple of tp*pp*cp = {model_parallel}")
        plan["dp"] = num_gpus // model_parallel
        notes.append(f"dp = GPUs/(tp*pp*cp) = {plan['dp']}")
    if model_parallel * plan["dp"] != num_gpus:
        raise _Skip(f"layout inconsistent: tp*pp*dp*cp = {model_parallel * plan['dp']} != num_gpus {num_gpus}")
    return plan


@dataclass(frozen=True)
class Erratum:
    """A plan cell of the table that the framework's own recipe of that release contradicts."""

    plan: dict[str, int]
    """The corrected plan fields (``tp``, ``pp``, ``dp``, ``cp``, ``ep``, ``vpp``, ``micro_batch``)."""
    citation: str
    """The primary source that shows the corrected values (file @ commit, config name)."""


_MBRIDGE_26_02_01 = ("Megatron-Bridge r0.3 (26.02.01 container): the recipe at v0.3.0, v0.3.1 and 5c86b2b1d alike, "
                     "scripts/performance/configs/llama/")
ERRATA: dict[str, Erratum] = {
    # The 26.02.01 table (docs/performance-summary-archive.md @067f987d, line 397 on) prints some GB300/GB200
    # Llama layouts that its own recipes do not run, where the other containers' rows print the recipe's.
    "mbridge-249": Erratum(
        {"micro_batch": 1},
        "Megatron-Bridge r0.2 (25.11 container): scripts/performance/configs/gpt_oss/workload_base_configs.py at "
        "v0.2.0, v0.2.1 and v0.2.2, GPT_OSS_120B_H100_BF16_BASE_CONFIG = BASE (micro_batch_size=1) + "
        "pipeline_model_parallel_size=4; the table's MBS 4 / GA 2 are the B200 row's cells (512 / (4 x 64)), as "
        "the curated row megatron-bridge-25.11-h100-gpt-oss-120b-bf16 reads it"),
    "mbridge-243": Erratum(
        {"ep": 64},
        "Megatron-Bridge r0.2 (25.11 container): scripts/performance/configs/gpt_oss/workload_base_configs.py at "
        "v0.2.0, v0.2.1 and v0.2.2, GPT_OSS_120B_B200_BF16_BASE_CONFIG = BASE + expert_model_parallel_size=64, "
        "micro_batch_size=4, recompute [layernorm, moe_act]; the table's EP 8 is BASE's. 8213 tokens/s/GPU is the "
        "26.02 B200 EP 64 row's 8047, not the 26.04 B200 EP 8 rows' 13045-13568; as the curated row "
        "megatron-bridge-25.11-b200-gpt-oss-120b-bf16 reads it"),
    "mbridge-250": Erratum(
        {"vpp": 12, "micro_batch": 1},
        "Megatron-Bridge r0.2 (25.11 container): scripts/performance/configs/qwen3/workload_base_configs.py at v0.2.0, "
        "v0.2.1 and v0.2.2, QWEN3_30B_A3B_H100_FP8_CS_BASE_CONFIG = BASE (EP 8, GBS 512, micro_batch_size 1) + "
        "num_gpus=16, pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=12, moe_a2a_overlap=True; "
        "the table's VP 24 / MBS 2 / GA 32 are the 25.09 tokendrop H100 row's cells (mbridge-267), as the curated row "
        "megatron-bridge-25.11-h100-qwen3-30b-a3b-fp8 reads it"),
    "mbridge-181": Erratum(
        {"pp": 1, "dp": 16, "ep": 16, "vpp": 1},
        "Megatron-Bridge v0.3.1 (26.02.01 container, tag 2026-03-20): scripts/performance/configs/qwen/"
        "qwen3_workload_base_configs.py QWEN3_30B_A3B_PRETRAIN_CONFIG_H100_FP8_CS_V1 = BASE (GBS 512) + num_gpus=16, "
        "global_batch_size=1024, expert_model_parallel_size=16, moe_a2a_overlap=False, hybridep - no pipeline (v0.3.0, "
        "the 26.02 container, had PP 2, VP 12, EP 8, DeepEP); the table prints the 26.02 row's PP2 VP12 EP8, while its "
        "9058 tokens/s/GPU is the 26.04, 26.04.01 and 26.06 rows' (mbridge-137/091/050: PP 1, EP 16, 8826-8960) and "
        "1.77x the 26.02 row's 5113 at PP2 VP12 EP8"),
    "mbridge-155": Erratum(
        {"tp": 1, "pp": 4, "dp": 16, "vpp": 5, "micro_batch": 1},
        f"{_MBRIDGE_26_02_01}llama3_workload_base_configs.py LLAMA3_70B_PRETRAIN_CONFIG_GB300_NVFP4_V2 = "
        "BASE (TP1, MBS 1) + pipeline_model_parallel_size=4, virtual_pipeline_model_parallel_size=5, as the 26.02, "
        "26.04 and 26.04.01 rows mbridge-191/111/066 print; the table's TP1 PP1 MBS2 DDP cannot hold a 70B model "
        "(>1 TB/GPU)"),
    "mbridge-157": Erratum(
        {"pp": 4, "dp": 16, "vpp": 5, "micro_batch": 1},
        f"{_MBRIDGE_26_02_01}llama3_workload_base_configs.py LLAMA3_70B_PRETRAIN_CONFIG_GB300_FP8_MX_V2 = "
        "BASE (MBS 1) + pipeline_model_parallel_size=4, virtual_pipeline_model_parallel_size=5 (the table: VP n/a, "
        "MBS 2), as the 26.02 and 26.04 rows mbridge-193/113/065 print"),
    "mbridge-163": Erratum(
        {"vpp": 8},
        f"{_MBRIDGE_26_02_01}llama31_workload_base_configs.py LLAMA31_405B_PRETRAIN_CONFIG_GB200_NVFP4_V2 = V1 "
        "(TP4 PP16 CP1, virtual_pipeline_model_parallel_size=8) with 256 GPUs, GBS 1536 (the table: VP 4), as "
        "the 26.02, 26.04 and 26.06 rows mbridge-199/119/038 print"),
    "mbridge-166": Erratum(
        {"tp": 4, "cp": 1},
        f"{_MBRIDGE_26_02_01}llama31_workload_base_configs.py LLAMA31_405B_PRETRAIN_CONFIG_GB300_FP8_CS_V2: "
        "tensor_model_parallel_size=4, pipeline 8, context_parallel_size=1, virtual 4 (the table prints the MXFP8 "
        "row's TP2 CP2), as the 26.02 and 26.04 rows mbridge-202/122 print"),
}
"""Rows whose published layout the framework's recipe of that release contradicts: row id -> the recipe's
plan fields, applied by :func:`convert_row` and named in the row's notes."""


_GPT_OSS_26_06_01 = ("NVIDIA-NeMo/Megatron-Bridge docs/performance-summary-archive.md @067f987d, 26.06.01 NeMo "
                     "Container, GPT OSS 120B table: both cells carry the footnote [^gpt-oss-note], a 'performance "
                     "regression in GPT-OSS 120B pre-training' that is a known issue (NVIDIA/cudnn-frontend#256: the "
                     "CuTe-DSL MoE grouped GEMM with dGLU, grouped_gemm_dglu_wrapper_sm100, 10x slower from "
                     "cudnn-frontend 1.24.0 on GPT-OSS and DeepSeek-V3 workloads; the recipe runs "
                     "cutedsl_fused_grouped_mlp), to be resolved in the next container; the 26.06 and 26.08 rows of "
                     "the same layouts measured 1.6x these")
KNOWN_REGRESSIONS: dict[str, str] = {"mbridge-021": _GPT_OSS_26_06_01, "mbridge-022": _GPT_OSS_26_06_01}
"""Rows whose own source marks them as measured under a software regression it names: row id -> the
citation. They measure a kernel bug, not the layout, so they are neither fitted nor validated."""


def _apply_erratum(row_id: str, plan: dict[str, Any], num_gpus: int, notes: list[str]) -> None:
    erratum = ERRATA.get(row_id)
    if erratum is None:
        return
    published = {key: plan[key] for key in erratum.plan}
    plan.update(erratum.plan)
    if plan["tp"] * plan["pp"] * plan["cp"] * plan["dp"] != num_gpus:
        raise ValueError(f"erratum of {row_id}: tp*pp*cp*dp != {num_gpus} GPUs")
    changed = ", ".join(f"{key} {published[key]} -> {value}" for key, value in erratum.plan.items()
                        if published[key] != value)
    notes.append(f"ERRATUM (layout corrected from the recipe: {changed}): {erratum.citation}")


def _check_experts(row: dict[str, str], plan: dict[str, Any]) -> None:
    """Megatron's expert parallelism folds the tp x cp x dp ranks of a stage into ep x expert-dp (ETP 1):
    ep must divide tp*cp*dp and the number of experts."""
    experts = _int(row["num_experts"], "num_experts")
    if plan["ep"] > 1:
        if not experts:
            raise _Skip(f"layout: ep {plan['ep']} on a model without experts")
        if experts % plan["ep"] or (plan["tp"] * plan["cp"] * plan["dp"]) % plan["ep"]:
            raise _Skip(f"layout: ep {plan['ep']} does not divide both the {experts} experts and tp*cp*dp")


def _grad_accum_note(row: dict[str, str], plan: dict[str, Any], global_batch: int, notes: list[str]) -> None:
    ga = _int(row["grad_accum"], "grad_accum")
    micro = plan.get("micro_batch")
    if ga is not None and micro:
        expected = global_batch / (micro * plan["dp"])
        if expected != ga:
            notes.append(f"SUSPECT: published GA {ga} but GBS/(MBS*DP) = {global_batch}/({micro}*{plan['dp']}) = {expected:g}; "
                         "layout kept as published")


FULL_ATTENTION_FLOP_SOURCES = ("sc21_t2", "mlm_h100", "nemo_longseq", "llmfoundry")


def _measured(row: dict[str, str], notes: list[str]) -> dict[str, Any]:
    group = row["source_group"]
    measured: dict[str, Any] = {
        "tokens_per_s_per_gpu": _float(row["tokens_per_s_per_gpu"]),
        "tflops_per_gpu": _float(row["tflops_per_gpu"]),
        # SC21's TFLOP/s count the recompute forward (96*B*s*l*h^2*(...)); every other source's are model FLOPs
        "flops_counted": "hardware" if group == "sc21_t2" else "model",
        # Whose TFLOP/s count the whole s x s scores of causal attention: SC21's 96*B*s*l*h^2*(1 + s/6h + ...),
        # Megatron-LM's README and NeMo 2024 (num_floating_point_operations / flops_formulas before
        # Megatron-Core 0.14 halved it), llm-foundry (attn_flops_per_seq = 4*l*s^2*h). Megatron-Bridge and
        # torchtitan's tokens/s need no count.
        "attention_flops": "full" if group in FULL_ATTENTION_FLOP_SOURCES else "causal",
        "mfu": _float(row["mfu_pct"]) / 100 if row["mfu_pct"].strip() else None,
        "step_time_s": _float(row["iteration_time_s"]),
        "memory_gib": memory_gib(row["memory_gb_per_gpu"], row["memory_kind"]),
    }
    if measured["tflops_per_gpu"] is None and measured["tokens_per_s_per_gpu"] is None and measured["mfu"] is not None \
            and group == "mlm_h100":
        measured["tflops_per_gpu"] = round(measured["mfu"] * H100_DENSE_BF16_TFLOPS, 1)
        notes.append(f"tflops_per_gpu derived: MFU {row['mfu_pct']}% x {H100_DENSE_BF16_TFLOPS} (README's peak)")
    if measured["memory_gib"] is not None:
        notes.append(f"memory: {row['memory_kind']}")
        # torchtitan logs torch.cuda.max_memory_reserved (torchtitan/components/metrics.py, DeviceMemoryMonitor).
        if group.startswith("torchtitan"):
            measured["memory_kind"] = "reserved"
        if not row["recompute"].strip() or "not stated" in row["recompute"]:
            # The memory of an unpublished recompute setting cannot be compared: the validator would pick
            # the fastest setting that fits, not the one that ran.
            measured["memory_gib"] = None
            notes.append("memory not compared: recompute not published")
    if not (measured["tokens_per_s_per_gpu"] or measured["tflops_per_gpu"] or measured["memory_gib"]):
        raise _Skip("no throughput or memory measured")
    return measured


def convert_row(row: dict[str, str]) -> dict[str, Any]:
    """One CSV row as a validator row; raises _Skip with the reason when it cannot be priced."""
    notes: list[str] = []
    group = row["source_group"]
    if row["run_id"] in KNOWN_REGRESSIONS:
        raise _Skip(f"a known software regression, as its source marks it: {KNOWN_REGRESSIONS[row['run_id']]}")
    num_gpus = _int(row["num_gpus"], "num_gpus")
    if row["gpu_type"] not in GPU_TYPES:
        raise _Skip(f"gpu_type {row['gpu_type']!r} is in no GPU table entry")
    preset, overrides, gpu_why = GPU_TYPES[row["gpu_type"]]
    precision, fp8_recipe, precision_why = _precision(row)
    stack, stack_why = _stack(row["framework"])
    recompute = _recompute(row["recompute"])
    seq_length = parse_seq_len(row["seq_len"])
    model, variant, model_notes = _model(row, seq_length)
    notes += model_notes
    plan = _layout(row, num_gpus, notes)
    _apply_erratum(row["run_id"], plan, num_gpus, notes)
    _check_experts(row, plan)
    zero_stage = _fsdp_stage(row["fsdp"])
    if zero_stage is None and row["zero_stage"].strip():
        zero_stage = _int(row["zero_stage"], "zero_stage")
    if zero_stage is None and group.startswith("torchtitan") and re.search(r"FSDP=\d+", row["source_locator"]):
        zero_stage = 3  # the async-TP table's caption (in source_locator) says 'FSDP=32': FSDP2 = ZeRO-3
        notes.append("FSDP from the table caption in source_locator")
    if plan["vpp"] is None and plan["pp"] == 1:
        plan["vpp"] = 1  # no pipeline, no virtual stages
    plan.update(recompute=recompute, zero_stage=zero_stage)

    global_batch = _int(row["global_batch"], "global_batch")
    if group.startswith("torchtitan"):
        micro, local_global = _torchtitan_batches(row, plan, notes)
        plan["micro_batch"] = plan["micro_batch"] or micro
        if global_batch is None:
            global_batch = local_global
            notes.append(f"global batch = local batch x FSDP degree = {global_batch}")
    if global_batch is None:
        raise _Skip("global_batch not published")
    _grad_accum_note(row, plan, global_batch, notes)

    training: dict[str, Any] = {"seq_length": seq_length, "global_batch_size": global_batch, "precision": precision,
                                "stack": stack}
    if fp8_recipe:
        training["fp4_recipe" if precision == "fp4" else "fp8_recipe"] = fp8_recipe
    extra_training, extra_plan, knob_notes = SOURCE_KNOBS[group](row, model, plan, training, variant)
    training.update(extra_training)
    plan.update(extra_plan)
    notes += knob_notes
    measured = _measured(row, notes)
    notes = [f"GPU: {gpu_why}", f"precision {row['precision']!r}: {precision_why}", f"stack: {stack_why}"] + notes
    if row["notes"].strip():
        notes.append(f"CSV notes: {row['notes'].strip()}")
    return {
        "id": row["run_id"], "source_group": group, "source": row["source"], "source_url": row["source_locator"],
        "verified": row["verbatim"].strip() == "yes",
        "model": model, "training": training,
        "cluster": {"gpu": preset, "num_gpus": num_gpus, **({"overrides": dict(overrides)} if overrides else {})},
        "plan": plan, "measured": measured, "notes": "; ".join(notes),
    }


def load_training_runs(path: str | Path = DEFAULT_CSV) -> tuple[list[dict[str, Any]], list[SkippedRow]]:
    """Every row of ``training_runs.csv`` as a validator row, or as a SkippedRow saying why not."""
    rows, skipped = [], []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            try:
                rows.append(convert_row(row))
            except _Skip as reason:
                skipped.append(SkippedRow(row["run_id"], row["source_group"], str(reason)))
            except (ValueError, KeyError) as error:
                raise InputError(path, f"{row.get('run_id', '?')}", f"cannot be read: {error}",
                                 "fix the row or add its text to a table in cost_model/calibration/training_runs.py") from None
    return rows, skipped


# --------------------------------------------------------------------------------------------------
# Joining with the curated rows
# --------------------------------------------------------------------------------------------------

LAYOUT_KEYS = ("tp", "pp", "dp", "cp", "ep", "vpp")
DUPLICATE_TOLERANCE = 0.01
"""Relative difference under which two measurements of one configuration are the same number (table
cells are rounded to 3-4 digits; different runs of one layout differ by more)."""


def _configuration(row: dict[str, Any]) -> tuple:
    plan, training = row.get("plan") or {}, row.get("training") or {}
    precision = training.get("precision", "bf16")
    recipe = training.get("fp8_recipe") if precision == "fp8" else training.get("fp4_recipe") if precision == "fp4" else None
    return ((row.get("cluster") or {}).get("gpu"), int((row.get("cluster") or {}).get("num_gpus", 0)), precision, recipe,
            *(int(plan.get(key) or 1) for key in LAYOUT_KEYS))


def _same(a: float | None, b: float | None) -> bool:
    return bool(a) and bool(b) and abs(a - b) <= DUPLICATE_TOLERANCE * max(abs(a), abs(b))


@dataclass
class JoinReport:
    """How the CSV rows met the curated ones."""

    duplicates_dropped: list[tuple[str, str]]
    """(CSV id, YAML id) of CSV rows dropped: the curated row measures the same run."""

    memory_merged: list[tuple[str, str]]
    """(CSV id, YAML id) of CSV rows kept for their throughput, which the curated row lacks, with their
    memory removed because the curated row compares the same memory."""


def join_rows(yaml_rows: list[dict[str, Any]], csv_rows: list[dict[str, Any]]
              ) -> tuple[list[dict[str, Any]], JoinReport]:
    """The curated rows, then the CSV rows that measure something the curated rows do not. A CSV row
    is the same run as a curated row when GPU preset, GPU count, precision (with FP8 recipe) and
    layout agree and the tokens/s per GPU agree within 1%; where the curated row publishes no
    tokens/s but the same memory (torchtitan-2412), the CSV row keeps its throughput only."""
    by_configuration: dict[tuple, list[dict[str, Any]]] = {}
    for row in yaml_rows:
        by_configuration.setdefault(_configuration(row), []).append(row)
    kept, report = [], JoinReport([], [])
    for row in csv_rows:
        measured = row["measured"]
        twin, closest = None, math.inf
        for curated in by_configuration.get(_configuration(row), []):
            theirs = curated.get("measured") or {}
            ours_tps, theirs_tps = measured.get("tokens_per_s_per_gpu"), theirs.get("tokens_per_s_per_gpu")
            if _same(ours_tps, theirs_tps) and abs(ours_tps - theirs_tps) < closest:
                # the closest curated measurement: two containers' rows of one layout can both be within 1%
                twin, closest = ("drop", curated), abs(ours_tps - theirs_tps)
            elif twin is None and not theirs_tps and _same(measured.get("memory_gib"), theirs.get("memory_gib")):
                twin = ("merge", curated)
        if twin and twin[0] == "drop":
            report.duplicates_dropped.append((row["id"], twin[1]["id"]))
            continue
        if twin:
            row = {**row, "measured": {**measured, "memory_gib": None},
                   "notes": row["notes"] + f"; memory compared in curated row {twin[1]['id']}"}
            report.memory_merged.append((row["id"], twin[1]["id"]))
        kept.append(row)
    return list(yaml_rows) + kept, report


def load_all_rows(include_csv: bool = True, dataset: str | Path = DEFAULT_DATASET, csv_path: str | Path = DEFAULT_CSV,
                  ) -> tuple[list[dict[str, Any]], list[SkippedRow]]:
    """Curated rows of ``published_runs.yaml`` plus, with ``include_csv``, the CSV rows that are not
    the same run as a curated one (:func:`join_rows`; its report is :func:`load_all_rows_report`)."""
    rows, skipped, _ = load_all_rows_report(include_csv, dataset, csv_path)
    return rows, skipped


def load_all_rows_report(include_csv: bool = True, dataset: str | Path = DEFAULT_DATASET,
                         csv_path: str | Path = DEFAULT_CSV) -> tuple[list[dict[str, Any]], list[SkippedRow], JoinReport]:
    runs = read_yaml_mapping(dataset).get("runs") or []
    if not include_csv:
        return list(runs), [], JoinReport([], [])
    csv_rows, skipped = load_training_runs(csv_path)
    rows, report = join_rows(runs, csv_rows)
    return rows, skipped, report


# --------------------------------------------------------------------------------------------------
# Summary per source group
# --------------------------------------------------------------------------------------------------

def source_group_table(rows: list[dict[str, Any]], skipped: list[SkippedRow], results: dict[str, Any]) -> str:
    """Rows converted and skipped (by reason) and the median signed and |error| of throughput per
    source_group; ``results`` maps row id to its :class:`validate.ValidationRow`."""
    import statistics
    from collections import Counter, defaultdict

    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row.get("source_group", "?")].append(row)
    skips: dict[str, Counter] = defaultdict(Counter)
    for skip in skipped:
        skips[skip.source_group][_reason_kind(skip.reason)] += 1
    lines = ["| source_group | rows | skipped | throughput rows | median signed | median abs | memory rows | median mem signed |",
             "|---|---|---|---|---|---|---|---|"]
    for group in sorted(set(groups) | set(skips)):
        errors = [results[r["id"]].tflops_error for r in groups[group] if r["id"] in results
                  and results[r["id"]].tflops_error is not None]
        memory = [results[r["id"]].memory_error for r in groups[group] if r["id"] in results
                  and results[r["id"]].memory_error is not None]
        skip_text = ", ".join(f"{n} {kind}" for kind, n in skips[group].most_common()) or "0"
        fmt = lambda xs, f: f"{f(xs):+.1%}" if xs else "-"
        lines.append(f"| {group} | {len(groups[group])} | {skip_text} | {len(errors)} | "
                     f"{fmt(errors, statistics.median)} | {fmt([abs(e) for e in errors], statistics.median).lstrip('+')} | "
                     f"{len(memory)} | {fmt(memory, statistics.median)} |")
    return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    for key in ("rowwise", "precision not published", "per-op", "missing architecture", "layout"):
        if key in reason:
            return key
    return reason[:40]


def main() -> None:
    import time

    from .validate import validate_row

    rows, skipped, report = load_all_rows_report()
    csv_ids = {row["id"] for row in load_training_runs()[0]}
    start = time.perf_counter()
    results = {row["id"]: validate_row(row, CSV_SOURCE if row["id"] in csv_ids else "published_runs.yaml") for row in rows}
    elapsed = time.perf_counter() - start
    print(source_group_table(rows, skipped, results))
    print(f"\n{len(rows)} rows validated in {elapsed:.1f} s ({elapsed / max(len(rows), 1) * 1000:.0f} ms a row); "
          f"{len(skipped)} CSV rows skipped; {len(report.duplicates_dropped)} CSV rows dropped as duplicates of curated "
          f"rows; {len(report.memory_merged)} kept for throughput with memory compared in the curated row")


if __name__ == "__main__":
    main()
