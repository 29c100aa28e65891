"""Hypothesis strategies for the property tests: valid models, training setups, clusters and plans.

Models are drawn as Hugging Face ``config.json`` mappings and go through the project's own loader
(:func:`cost_model.model_loader.model_input_from_mapping`), so every drawn model is one a user could
write. Plans are drawn from the layouts, schedules and knobs that obey the rules the search enforces
(the hardware and framework rules of :mod:`optimizer.layout_model` and :mod:`optimizer.plan_rules`),
written here as plain predicates, independently of the search.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import assume
from hypothesis import strategies as st

from cost_model.compute import precision_conflict
from cost_model.model_loader import build_training, model_input_from_mapping
from cost_model.model_spec import ModelSpec
from cost_model.plan import FULL, NONE, SELECTIVE, PlanArrays
from cost_model.stages import layers_per_stage, uneven_split_is_valid
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster
from hardware.schema import ClusterSpec
from optimizer.search import selective_ladder

# ---- models ------------------------------------------------------------------------------------

HEADS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40, 64, 128)
HEAD_DIMS = (32, 64, 96, 128)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def attention_fields(draw) -> dict:
    """Heads, KV heads (MHA, GQA or MQA) and widths; an explicit head_dim that differs from
    hidden / heads now and then (Qwen3, Gemma)."""
    heads = draw(st.sampled_from(HEADS))
    kv = draw(st.sampled_from(_divisors(heads)))
    head_dim = draw(st.sampled_from(HEAD_DIMS))
    cfg = {"num_attention_heads": heads, "num_key_value_heads": kv}
    if draw(st.booleans()):
        cfg["hidden_size"] = heads * head_dim
    else:
        cfg["hidden_size"] = 64 * draw(st.integers(2, 48))
        cfg["head_dim"] = head_dim
    return cfg


@st.composite
def dense_configs(draw, max_layers: int = 24) -> dict:
    kind = draw(st.sampled_from(["llama", "qwen3", "gpt2", "generic", "sliding"]))
    cfg = draw(attention_fields())
    hidden = cfg["hidden_size"]
    cfg.update({
        "num_hidden_layers": draw(st.integers(1, max_layers)),
        "intermediate_size": 64 * draw(st.integers(1, 4 * hidden // 64)),
        "vocab_size": draw(st.integers(1000, 160_000)),
        "tie_word_embeddings": draw(st.booleans()),
    })
    if kind == "llama":
        cfg.update(model_type="llama", hidden_act="silu", rms_norm_eps=1e-5)
    elif kind == "qwen3":
        cfg.update(model_type="qwen3", hidden_act="silu", rms_norm_eps=1e-6)
    elif kind == "gpt2":
        # learned positions, plain GeLU MLP, LayerNorm, biases everywhere
        cfg.update(model_type="gpt2", activation_function="gelu_new", max_position_embeddings=131072)
    elif kind == "sliding":
        layers = cfg["num_hidden_layers"]
        pattern = draw(st.lists(st.booleans(), min_size=layers, max_size=layers))
        cfg.update(model_type="gemma3_text", hidden_act="gelu_pytorch_tanh", sliding_window=draw(st.sampled_from([128, 512, 4096])),
                   layer_types=["sliding_attention" if s else "full_attention" for s in pattern])
    else:
        cfg.update(hidden_act=draw(st.sampled_from(["silu", "gelu"])),
                   norm_type=draw(st.sampled_from(["rmsnorm", "layernorm"])),
                   add_bias_linear=draw(st.booleans()))
    return cfg


@st.composite
def moe_configs(draw, max_layers: int = 16, mla: bool = False) -> dict:
    """Mixtral, Qwen2/3-MoE, DeepSeek-V3 or GPT-OSS style; with ``mla``, DeepSeek-V3 with latent attention."""
    kind = "deepseek_v3" if mla else draw(st.sampled_from(["mixtral", "qwen3_moe", "qwen2_moe", "deepseek_v3", "gpt_oss"]))
    cfg = draw(attention_fields())
    hidden = cfg["hidden_size"]
    layers = draw(st.integers(1, max_layers))
    experts = draw(st.sampled_from([2, 4, 6, 8, 16, 32, 64]))
    top_k = draw(st.integers(1, min(experts, 8)))
    expert_ffn = 64 * draw(st.integers(1, max(1, 2 * hidden // 64)))
    cfg.update({
        "num_hidden_layers": layers,
        "vocab_size": draw(st.integers(1000, 160_000)),
        "tie_word_embeddings": draw(st.booleans()),
        "num_experts_per_tok": top_k,
        "hidden_act": "silu",
    })
    if kind == "mixtral":
        cfg.update(model_type="mixtral", num_local_experts=experts, intermediate_size=expert_ffn)
    elif kind in ("qwen3_moe", "qwen2_moe"):
        step = draw(st.sampled_from([1, 1, 2]))
        cfg.update(model_type=kind, num_experts=experts, moe_intermediate_size=expert_ffn,
                   intermediate_size=64 * draw(st.integers(1, 4 * hidden // 64)), decoder_sparse_step=step,
                   mlp_only_layers=draw(st.lists(st.integers(0, layers - 1), max_size=2, unique=True)))
        if kind == "qwen2_moe" and draw(st.booleans()):
            cfg["shared_expert_intermediate_size"] = 64 * draw(st.integers(1, 2 * hidden // 64))
    elif kind == "deepseek_v3":
        cfg.update(model_type="deepseek_v3", n_routed_experts=experts, moe_intermediate_size=expert_ffn,
                   intermediate_size=64 * draw(st.integers(1, 4 * hidden // 64)),
                   n_shared_experts=draw(st.integers(0, 2)),
                   first_k_dense_replace=draw(st.integers(0, min(3, layers - 1))))
        if mla:
            cfg.update(mla_fields(draw, cfg["num_attention_heads"]))
    else:
        pattern = draw(st.lists(st.booleans(), min_size=layers, max_size=layers))
        cfg.update(model_type="gpt_oss", num_local_experts=experts, intermediate_size=expert_ffn,
                   sliding_window=128,
                   layer_types=["sliding_attention" if s else "full_attention" for s in pattern])
    return cfg


def mla_fields(draw, heads: int) -> dict:
    """Multi-head latent attention (DeepSeek-V2/V3): compressed KV, optional low-rank query."""
    return {
        "q_lora_rank": draw(st.sampled_from([0, 256, 768, 1536])) or None,
        "kv_lora_rank": draw(st.sampled_from([128, 256, 512])),
        "qk_nope_head_dim": draw(st.sampled_from([32, 64, 128])),
        "qk_rope_head_dim": draw(st.sampled_from([16, 32, 64])),
        "v_head_dim": draw(st.sampled_from([32, 64, 128])),
    }


@st.composite
def dense_mla_configs(draw, max_layers: int = 24) -> dict:
    """A DeepSeek-style MLA model without experts (DeepSeek-V2-Lite's attention on a dense MLP)."""
    cfg = draw(dense_configs(max_layers))
    cfg["model_type"] = "deepseek_v3"
    cfg["tie_word_embeddings"] = False
    for key in ("layer_types", "sliding_window", "max_position_embeddings", "activation_function"):
        cfg.pop(key, None)
    cfg["hidden_act"] = "silu"
    cfg.update(mla_fields(draw, cfg["num_attention_heads"]))
    return cfg


@st.composite
def model_configs(draw, max_layers: int = 24) -> dict:
    """Dense, MoE, MoE with MLA and dense MLA models with at most ``max_layers`` layers."""
    family = draw(st.sampled_from(["mla-moe", "mla-dense", "moe", "dense", "moe", "dense", "dense"]))
    if family == "dense":
        return draw(dense_configs(max_layers))
    if family == "moe":
        return draw(moe_configs(max_layers))
    if family == "mla-moe":
        return draw(moe_configs(max_layers, mla=True))
    return draw(dense_mla_configs(max_layers))


def to_model(config: dict) -> ModelSpec:
    """Through the project's loader, as a user's config.json would go."""
    config = {k: v for k, v in config.items() if v is not None}
    return model_input_from_mapping(config, source="hypothesis", default_name="drawn").spec


models = model_configs().map(to_model)

# ---- training setups ---------------------------------------------------------------------------

GLOBAL_BATCHES = (8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 1024, 2048)


@st.composite
def training_overrides(draw, model: ModelSpec | None = None, max_seq: int = 131072) -> dict:
    precision = draw(st.sampled_from(["bf16", "bf16", "fp8", "fp16"]))
    out = {
        "seq_length": draw(st.sampled_from([s for s in (256, 512, 1024, 2048, 4096, 8192, 32768, 131072) if s <= max_seq])),
        "global_batch_size": draw(st.sampled_from(GLOBAL_BATCHES)),
        "precision": precision,
        "optimizer": draw(st.sampled_from(["adam", "adamw", "sgd"])),
        "grad_dtype": draw(st.sampled_from(["fp32", "bf16"])),
        "optimizer_moments_dtype": draw(st.sampled_from(["fp32", "bf16"])),
        "dropout": draw(st.booleans()),
        "flash_attention": draw(st.booleans()),
        "fused_cross_entropy": draw(st.booleans()),
        "train_tokens": draw(st.sampled_from([None, 1e9, 1.5e12])),
        "tp_comm_overlap": draw(st.booleans()),
        "overlap_grad_reduce": draw(st.booleans()),
        "overlap_param_gather": draw(st.booleans()),
    }
    if precision == "fp8":
        out["fp8_recipe"] = draw(st.sampled_from(["delayed", "tensorwise", "mxfp8", "blockwise"]))
        if out["fp8_recipe"] != "delayed" and model is not None and draw(st.booleans()):
            # BF16 first/last layers (Megatron-Core first_last_layers_bf16), at most the model's layers.
            out["num_layers_at_start_in_bf16"] = draw(st.integers(0, min(2, model.num_layers)))
            out["num_layers_at_end_in_bf16"] = draw(st.integers(0, min(2, model.num_layers)))
    if model is None or model.is_moe:
        dispatcher = draw(st.sampled_from(["alltoall", "deepep", "hybridep"]))
        out["moe_token_dispatcher"] = dispatcher
        out["moe_capacity_factor"] = draw(st.sampled_from([1.0, 1.25, 2.0]))
        out["moe_pad_to_capacity"] = draw(st.booleans())
        out["overlap_moe_expert_parallel_comm"] = draw(st.booleans())
        if dispatcher == "alltoall":
            out["moe_dispatch_fp8"] = draw(st.booleans())
        if dispatcher == "hybridep" and not out["moe_pad_to_capacity"] and draw(st.booleans()):
            out["moe_rank_capacity_factor"] = out["moe_capacity_factor"] * 1.25
            if draw(st.booleans()):
                out["moe_paged_stash_factor"] = out["moe_capacity_factor"] * 1.1
    scopes = ["attn", "moe_router", "moe_preprocess"]
    if model is not None and model.is_moe and (out.get("moe_pad_to_capacity") or "moe_paged_stash_factor" in out):
        scopes += ["moe", "full_iteration"]
    if model is not None and not model.is_moe:
        scopes += ["mlp"]
    out["cuda_graph_scope"] = draw(st.lists(st.sampled_from(scopes), max_size=2, unique=True))
    return out


def to_training(overrides: dict, model: ModelSpec) -> TrainingSpec:
    return build_training({k: v for k, v in overrides.items() if v is not None}, source="hypothesis", model=model)


# ---- clusters ----------------------------------------------------------------------------------

CLUSTERS = ("h100x8", "h100x16", "h100x32", "h100x64", "h100x24", "h100x1024", "a100x8", "a100x16", "h200x16",
            "h800x16", "b200x16", "b200x256", "b300x8", "mi300xx16", "gb200x4", "gb200x8", "gb200x72", "gb200x144",
            "gb300x72")
"""Presets of every GPU family at a few node counts: scale-up domains of 8 and 72, node sizes of 4
and 8, GPU counts with factors 3 (24, 72, 144) as well as powers of two up to 1024."""

_CLUSTER_CACHE: dict[str, ClusterSpec] = {}


def cluster_named(name: str) -> ClusterSpec:
    if name not in _CLUSTER_CACHE:
        _CLUSTER_CACHE[name] = load_cluster(name)
    return _CLUSTER_CACHE[name]


clusters = st.sampled_from(CLUSTERS).map(cluster_named)

# ---- plans -------------------------------------------------------------------------------------


def layouts(model: ModelSpec, training: TrainingSpec, cluster: ClusterSpec, num_gpus: int | None = None,
            max_tp: int = 64) -> list[tuple[int, int, int, int, int, int]]:
    """Every (tp, cp, pp, dp, ep, etp) on ``num_gpus`` GPUs that obeys the layout rules (plain loops)."""
    n = num_gpus or cluster.num_gpus
    domain = cluster.topology.scaleup_domain_gpus
    heads = model.num_attention_heads
    kv = heads if model.is_mla else model.num_kv_heads
    experts = model.num_experts if model.is_moe else 1
    gb, seq = training.global_batch_size, training.seq_length
    out = []
    for tp in _divisors(n):
        if tp > max_tp or domain % tp or heads % tp or (kv % tp and tp % kv):
            continue
        for cp in _divisors(n // tp):
            if cp > 1 and (seq % (2 * cp) or not training.flash_attention):
                continue
            for pp in _divisors(n // (tp * cp)):
                if pp > model.num_layers:
                    continue
                if model.num_layers % pp and not (pp >= 2 and uneven_split_is_valid(model.num_layers, pp, 1)):
                    continue
                dp = n // (tp * cp * pp)
                if gb % dp:
                    continue
                for ep in _divisors(experts):
                    for etp in sorted({1, tp}) if model.is_moe else [1]:
                        if (tp * cp * dp) % (ep * etp):
                            continue
                        out.append((tp, cp, pp, dp, ep, etp))
    return out


def split_ok(layers: int, pp: int, vpp: int) -> bool:
    if layers % (pp * vpp) == 0 and pp <= layers:
        return True
    return pp >= 2 and bool(uneven_split_is_valid(layers, pp, vpp))


def chunk_layers(layers: int, pp: int, vpp: int) -> int:
    """Layers of one virtual chunk of the largest stage."""
    _, k, _ = layers_per_stage(layers, pp)
    return -(-int(k) // vpp)


@dataclass(frozen=True)
class Drawn:
    """One drawn scenario: the model's config, the model, the training setup and the cluster."""

    config: dict
    model: ModelSpec
    training: TrainingSpec
    cluster: ClusterSpec


@st.composite
def scenarios(draw, model_strategy=None, cluster_strategy=None, max_seq: int = 131072) -> Drawn:
    config = draw(model_strategy if model_strategy is not None else model_configs())
    model = to_model(config)
    training = to_training(draw(training_overrides(model, max_seq)), model)
    cluster = draw(cluster_strategy if cluster_strategy is not None else clusters)
    if precision_conflict(training, cluster.gpu):  # MXFP8 before Blackwell: the per-tensor recipe instead
        training = training.with_changes(fp8_recipe="tensorwise")
    return Drawn(config, model, training, cluster)


@st.composite
def plan_records(draw, model: ModelSpec, training: TrainingSpec, cluster: ClusterSpec,
                 layout: tuple | None = None, need_dp: bool = False) -> dict:
    """One plan that obeys every rule of the search, as a record for :meth:`PlanArrays.from_records`."""
    if layout is None:
        options = layouts(model, training, cluster)
        if need_dp:
            options = [o for o in options if o[3] * o[1] > 1]
        assume(options)
        layout = draw(st.sampled_from(options))
    tp, cp, pp, dp, ep, etp = layout
    gb, seq, L = training.global_batch_size, training.seq_length, model.num_layers
    micro = [b for b in (1, 2, 4, 8) if gb % (dp * b) == 0]
    mbs = draw(st.sampled_from(micro))
    m = gb // (dp * mbs)
    vpps = [v for v in range(1, 5) if split_ok(L, pp, v) and (v == 1 or (pp > 1 and m % pp == 0))]
    vpp = draw(st.sampled_from(vpps))
    sp_ok = tp > 1 and (seq // cp) % tp == 0
    if model.is_moe and tp > 1:
        assume(sp_ok)  # MoE with tp > 1 needs sequence parallelism
        sp = True
    else:
        sp = draw(st.booleans()) if sp_ok else False
    zero = draw(st.integers(0, 3)) if dp * cp > 1 else 0
    # Hybrid sharding: copies dividing dp and the expert-data-parallel ranks, a shard group of 2 or more.
    edp = tp * cp * dp // (etp * ep)
    copies = [r for r in (1, 2, 4, 8) if dp % r == 0 and edp % r == 0 and (r == 1 or (zero >= 1 and dp * cp >= 2 * r))]
    replicas = draw(st.sampled_from(copies))
    chunk = chunk_layers(L, pp, vpp)
    mode = draw(st.sampled_from([NONE, SELECTIVE, FULL]))
    record = dict(tp=tp, cp=cp, pp=pp, dp=dp, ep=ep, etp=etp, vpp=vpp, micro_batch=mbs, sequence_parallel=sp,
                  zero_stage=zero, recompute=mode, optimizer_offload=draw(st.booleans()),
                  recompute_num_layers=-1, recompute_modules=0, activation_offload_layers=0, dp_replicate=replicas)
    if mode == SELECTIVE:
        record["recompute_modules"] = draw(st.sampled_from(selective_ladder(model, training.flash_attention)))
    elif mode == FULL and chunk > 1 and draw(st.booleans()):
        record["recompute_num_layers"] = draw(st.integers(1, chunk - 1))
    elif mode == NONE and pp == 1 and L > 1 and draw(st.booleans()):
        record["activation_offload_layers"] = draw(st.integers(1, L - 1))
    return record


def plans_of(records: list[dict]) -> PlanArrays:
    return PlanArrays.from_records(records)
