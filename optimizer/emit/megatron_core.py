"""The Megatron-Core 0.16.1 checks and translations Megatron-LM and Megatron-Bridge share.

Megatron-LM core_v0.16.1 and Megatron-Bridge 0.3.1 pin the same megatron-core 0.16.1, so both run the
same ``TransformerConfig.__post_init__`` (``megatron/core/transformer/transformer_config.py``),
``ModelParallelConfig``, ``OptimizerConfig.__post_init__`` (``megatron/core/optimizer/optimizer_config.py``),
``parallel_state.initialize_model_parallel`` and MoE dispatchers. :data:`RULES` holds those checks (plus
the ones both frameworks' own start-ups make the same way, each sentence naming where), keyed by a
suffix: :mod:`.megatron_lm` prefixes them ``megatron_``, :mod:`.megatron_bridge` ``bridge_``, and each
adds its own rules. :func:`violations` checks them for many plans at once (one boolean array per rule
over a :class:`cost_model.plan.PlanArrays`, True where megatron-core refuses the plan or cannot run it
as priced).

Where the two emitters had differed, the source decides:

* full recompute with CUDA graphs: ``TransformerConfig.__post_init__`` asserts
  ``cuda_graph_scope == [full_iteration]`` ("full recompute is only supported with full iteration CUDA
  graph"), so any scope besides ``full_iteration`` (``full_iteration`` with ``attn`` too) is refused;
* the graph scopes (:func:`graph_scope_valid`): with ``cuda_graph_impl == "local"`` (the whole-iteration
  graph) ``__post_init__`` first adds ``moe_router`` and ``moe_preprocess`` to each other, then checks
  the scopes ("moe and moe_router not together", "moe_preprocess only with moe_router", "moe cuda graph is
  only supported for MoE", "mlp cuda graph is only supported for dense layers", "moe cuda graph is only
  supported with drop-padding MoE").

The translations both launches write in their own words live here too: the rank orders
(:data:`RANK_ORDERS`), the graph implementation (:func:`cuda_graph_impl`), the FP8 format of each recipe
(:data:`FP8_FORMATS`, :data:`FP4_FORMATS`), the Megatron-FSDP strategy of each ZeRO stage (:data:`FSDP_STRATEGY`; hybrid
sharding is ``num_distributed_optimizer_instances`` = ``dp_replicate``, for the distributed optimizer and
Megatron-FSDP alike, ``mcore_fsdp_adapter``), the
precision-aware optimizer (:func:`precision_aware_optimizer`), the MoE dispatcher fields
(:func:`moe_settings`) and the recompute fields (:func:`recompute_settings`), each as Megatron-Core field
-> value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cost_model.bf16_layers import check_bf16_layers, has_bf16_layers
from cost_model.ep_overlap import ep_overlap_active
from cost_model.memory import fp8_primary_weights
from cost_model.model_spec import ModelSpec
from cost_model.plan import FULL, MODULE_BIT, SCHEDULES, SELECTIVE, PlanArrays
from cost_model.training_spec import TrainingSpec
from hardware.placement import DEFAULT_RANK_ORDER, parse_rank_order

from .knobs import LaunchKnobs

RANK_ORDERS: dict[str, bool] = {"tp-cp-ep-dp-pp": False, "tp-cp-ep-pp-dp": True}
"""The rank orders Megatron-Core builds -> ``use_tp_pp_dp_mapping`` (Megatron-LM
``megatron/training/initialize.py`` ``_initialize_distributed`` and Megatron-Bridge ``training/initialize.py``
pass ``'tp-cp-ep-pp-dp' if use_tp_pp_dp_mapping else 'tp-cp-ep-dp-pp'`` to
``parallel_state.initialize_model_parallel``)."""

FP8_FORMATS = {"tensorwise": "hybrid", "delayed": "hybrid", "blockwise": "hybrid", "mxfp8": "e4m3"}
"""Transformer Engine FP8 format of each recipe: E4M3 forward / E5M2 backward (hybrid), except MXFP8, which
``MXFP8BlockScaling`` runs in E4M3 (as Megatron-LM's and Megatron-Bridge's MXFP8 recipes set it)."""

FP4_FORMATS = {"nvfp4": "e2m1"}
"""FP4 format of each FP4 recipe: NVFP4 values are E2M1 (Megatron-Core ``TransformerConfig.fp4``, CLI
``--fp4-format``, whose only value is ``e2m1``; ``--fp4-recipe nvfp4`` selects Transformer Engine's
``NVFP4BlockScaling``, ``megatron/core/fp4_utils.py``)."""

FSDP_STRATEGY = {2: "optim_grads", 3: "optim_grads_params"}
"""Megatron-FSDP ``data_parallel_sharding_strategy`` of each ZeRO stage it runs (``DistributedDataParallelConfig``;
ZeRO-1 is the distributed optimizer without Megatron-FSDP)."""

MOE_SCOPES = frozenset({"moe", "moe_router", "moe_preprocess"})
"""CUDA graph scopes that capture part of a MoE layer."""

PIPELINE_SCHEDULES = ("1f1b", "interleaved")
"""The pipeline schedules megatron-core 0.16.1 runs: ``get_forward_backward_func`` picks
``forward_backward_no_pipelining``, ``forward_backward_pipelining_without_interleaving`` (1F1B) or
``..._with_interleaving``; it has no zero-bubble or DualPipe schedule (``delay_wgrad_compute`` defers the
weight gradients only inside the EP-overlap merged step)."""

RULES: dict[str, str] = {
    "pipeline_schedule": "megatron-core 0.16.1 runs 1F1B and interleaved 1F1B only (get_forward_backward_func): "
                         "no zero-bubble (ZB-H1/H2, ZB-V) or DualPipe(V) schedule",
    "rank_order": "megatron-core orders ranks tp-cp-ep-dp-pp, or tp-cp-ep-pp-dp with use_tp_pp_dp_mapping, and no "
                  "other way (parallel_state.initialize_model_parallel as both frameworks' initialize call it)",
    "tp_pp_dp_mapping_expert_dp": "with the tp-cp-ep-pp-dp order and pp > 1, the expert layers' data-parallel size "
                                  "equals the dense layers' (etp x ep = tp x cp; Megatron-Core "
                                  "parallel_state.initialize_model_parallel)",
    "cp_a2a_heads_divisible": "Ulysses context parallelism (cp_comm_type a2a) splits heads: query and KV heads per "
                              "TP rank divisible by cp (Transformer Engine AttnFuncWithCPAndQKVOA2A)",
    "seq_divisible_by_2cp": "with cp > 1 the sequence length is a multiple of 2 x cp, the load-balanced CP split "
                            "(Megatron-LM validate_args, Megatron-Bridge ConfigContainer.validate)",
    "fp8_delayed_no_norm_or_moe_act_recompute": "FP8 delayed scaling cannot recompute the layernorm or moe_act "
                                                "modules (Megatron-Core TransformerConfig)",
    "cuda_graphs_full_recompute_needs_full_iteration": "full recompute runs with CUDA graphs only when the scope is "
                                                       "full_iteration alone (Megatron-Core TransformerConfig)",
    "cuda_graphs_moe_recompute_router": "moe recompute cannot run with a Transformer Engine moe_router CUDA graph "
                                        "(Megatron-Core TransformerConfig)",
    "cuda_graphs_no_activation_offload": "CUDA graphs cannot run with activation offload "
                                         "(Megatron-Core TransformerConfig)",
    "cuda_graphs_dropout_recompute": "with dropout, a part captured in a CUDA graph (attn, mlp, moe, or the whole "
                                     "iteration) cannot also be recomputed (Megatron-Core TransformerConfig)",
    "cuda_graph_scope_valid": "the CUDA graph scopes are ones Megatron-Core captures for this model: moe and "
                              "moe_router not together, moe_preprocess only with moe_router (the whole-iteration "
                              "graph adds each to the other), MoE scopes only on MoE models and moe only with "
                              "padded (drop-and-pad) experts, mlp only where dense layers exist (TransformerConfig)",
    "ep_overlap_moe_recompute": "the EP overlap runs the MoE block piecewise, so moe recompute does not run with it "
                                "(megatron-core 0.16.1 skips it silently; 0.17 refuses it)",
    "ep_overlap_cuda_graphs": "the EP overlap takes only per-layer Transformer Engine CUDA graphs that leave moe "
                              "and mlp uncaptured (Megatron-Core TransformerConfig)",
    "ep_overlap_mtp": "the EP overlap takes at most one MTP layer, and then pp > 1 (Megatron-Core TransformerConfig)",
    "precision_aware_optimizer": "optimizer offload and BF16 Adam moments are the precision-aware optimizer: Adam "
                                 "and the distributed optimizer (ZeRO >= 1) only (Megatron-Core OptimizerConfig; "
                                 "the hybrid CPU optimizer takes its code path)",
    "tp_comm_overlap_needs_sequence_parallel": "TP communication overlap needs sequence parallelism (Transformer "
                                               "Engine userbuffers; Megatron-LM validate_args asserts it)",
    "flex_dispatcher_needs_tp_ep": "the flex dispatcher (DeepEP, HybridEP) needs etp x ep > 1 "
                                   "(Megatron-Core MoEFlexTokenDispatcher)",
    "deepep_no_pad_to_capacity": "DeepEP cannot pad experts to capacity (Megatron-Core TransformerConfig)",
    "no_rank_capacity": "megatron-core 0.16.1 has no sync-free HybridEP rank capacity or paged stash "
                        "(moe_expert_rank_capacity_factor, moe_paged_stash come after core_v0.17.1)",
    "no_fp8_dispatch": "megatron-core 0.16.1 has no FP8 all-to-all for the MoE dispatch",
    "moe_bias_needs_etp1": "MoE layers with biased linear layers need etp = 1 (Megatron-Core TransformerConfig)",
    "no_alibi": "Megatron-Core has no ALiBi position embedding (TransformerConfig position_embedding_type)",
    "bf16_layers_within_stage": "the BF16 first/last layers are at most one pipeline stage's worth each "
                                "(num_layers_at_start/end_in_bf16 <= num_layers // pp; Megatron-Core TransformerConfig)",
    "fsdp_hsdp_dense_only": "Megatron-FSDP's hybrid sharding (ZeRO-2/3 with dp_replicate > 1) builds no expert "
                            "mesh in megatron-core 0.16.1 (FullyShardedDataParallel._init_dist_index sets "
                            "expt_device_mesh only without HSDP), so MoE models shard experts with the "
                            "distributed optimizer's HSDP (ZeRO-1) only",
}
"""The checks both frameworks make through megatron-core 0.16.1 (rule suffix -> sentence)."""


def prefixed(prefix: str, table: dict[str, Any]) -> dict[str, Any]:
    """``table`` with each key prefixed (``megatron_`` / ``bridge_``)."""
    return {prefix + name: value for name, value in table.items()}


# --- shared translations ------------------------------------------------------------------------------

def low_precision_settings(knobs: LaunchKnobs) -> dict[str, Any]:
    """The FP8/FP4 weight and layer settings the plan was priced with, as Megatron-Core fields:
    ``fp8_param_gather`` (FP8 primary weights, :func:`cost_model.memory.fp8_primary_weights`), with
    MXFP8 ``reuse_grad_buf_for_mxfp8_param_ag`` (its bf16 gather through the gradient buffer, which
    Megatron-Bridge's ``MixedPrecisionConfig.finalize`` demands and Megatron-FSDP turns off itself), and the
    BF16 first/last layers (``first_last_layers_bf16``, ``num_layers_at_start_in_bf16``,
    ``num_layers_at_end_in_bf16``; :mod:`cost_model.bf16_layers`). FP4 weights stay BF16 (no
    ``fp4_param``: priced so)."""
    training = knobs.training
    primary = bool(fp8_primary_weights(training, knobs.plan_arrays())[0])
    out: dict[str, Any] = {"fp8_param_gather": primary,
                           "reuse_grad_buf_for_mxfp8_param_ag": primary and training.fp8_recipe == "mxfp8"}
    bf16 = has_bf16_layers(training)
    out |= {"first_last_layers_bf16": bf16,
            "num_layers_at_start_in_bf16": training.num_layers_at_start_in_bf16 if bf16 else 0,
            "num_layers_at_end_in_bf16": training.num_layers_at_end_in_bf16 if bf16 else 0}
    return out


def canonical_order(rank_order: str) -> str:
    """A rank order spelt as the dash-joined dimensions, innermost first."""
    return "-".join(parse_rank_order(rank_order))


def uses_tp_pp_dp_mapping(rank_order: str) -> bool:
    """``use_tp_pp_dp_mapping`` of a rank order (False for orders megatron-core cannot build)."""
    return RANK_ORDERS.get(canonical_order(rank_order), False)


def cuda_graph_impl(training: TrainingSpec) -> str:
    """``cuda_graph_impl``: ``none`` without graphs, ``local`` (Megatron's own graphs) for the whole iteration,
    else ``transformer_engine`` (per-layer ``make_graphed_callables``): ``TransformerConfig`` refuses
    ``full_iteration`` with ``transformer_engine``, and Megatron-LM's ``--cuda-graph-scope`` help takes the
    per-layer scopes with ``transformer_engine`` only."""
    if not training.cuda_graph_scope:
        return "none"
    return "local" if "full_iteration" in training.cuda_graph_scope else "transformer_engine"


def graph_scope(training: TrainingSpec) -> frozenset[str]:
    """The scopes ``TransformerConfig.__post_init__`` checks: the local implementation does not tell
    ``moe_router`` from ``moe_preprocess`` and adds each to the other."""
    scope = frozenset(training.cuda_graph_scope)
    if cuda_graph_impl(training) == "local" and scope & {"moe_router", "moe_preprocess"}:
        scope |= {"moe_router", "moe_preprocess"}
    return scope


def graph_scope_valid(model: ModelSpec, training: TrainingSpec) -> bool:
    """Whether ``TransformerConfig.__post_init__`` accepts the CUDA graph scopes for this model, whatever the
    plan (the ``moe_preprocess`` check on host syncs never fires: the launches set a capacity factor only
    with padding, and no router padding for FP8)."""
    scope = graph_scope(training)
    padded = training.moe_pad_to_capacity
    return not ({"moe", "moe_router"} <= scope
                or ("moe_preprocess" in scope and "moe_router" not in scope)
                or (not model.is_moe and scope & MOE_SCOPES)
                or (model.is_moe and "moe" in scope and not padded)
                or (model.is_moe and model.num_dense_layers == 0 and "mlp" in scope))


def recomputed(plans: PlanArrays, *modules: str) -> np.ndarray:
    """Plans whose selective recompute includes any of ``modules``."""
    mask = sum(MODULE_BIT[name] for name in modules)
    return (plans.recompute == SELECTIVE) & ((plans.recompute_modules & mask) != 0)


def graphed_recompute_with_dropout(training: TrainingSpec, plans: PlanArrays) -> np.ndarray:
    """Selective recompute of a captured part with dropout on: a graph replays fixed dropout masks, so
    ``TransformerConfig`` refuses attention dropout with graphed ``core_attn`` recompute and hidden dropout
    with graphed ``mlp``/``moe`` recompute (the whole iteration captures every part)."""
    if not training.dropout or not training.cuda_graph_scope:
        return np.zeros(len(plans), dtype=bool)
    scope = set(training.cuda_graph_scope)
    whole = "full_iteration" in scope
    return (((whole or "attn" in scope) & recomputed(plans, "core_attn"))
            | ((whole or "mlp" in scope) & recomputed(plans, "mlp"))
            | ((whole or "moe" in scope) & recomputed(plans, "moe")))


def precision_aware_optimizer(training: TrainingSpec, optimizer_offload):
    """Whether the plan runs the precision-aware optimizer: BF16 Adam moments need it (``OptimizerConfig``:
    other moment dtypes only with it), and the hybrid CPU optimizer of the offload takes its code path
    (element-wise on arrays or plain booleans)."""
    return optimizer_offload | (training.optimizer_moments_dtype == "bf16")


def moe_settings(training: TrainingSpec) -> dict[str, Any]:
    """``TransformerConfig`` MoE fields of the priced plan: grouped GEMM (the cost model prices the experts
    as grouped GEMMs; both frameworks default to one GEMM per expert), the dispatcher (``alltoall``, or
    ``flex`` with the DeepEP/HybridEP backend), then drop-and-pad (None / False where the plan is dropless)."""
    flex = training.moe_token_dispatcher != "alltoall"
    padded = training.moe_pad_to_capacity
    return {"moe_grouped_gemm": True, "moe_token_dispatcher_type": "flex" if flex else "alltoall",
            "moe_flex_dispatcher_backend": training.moe_token_dispatcher if flex else None,
            "moe_expert_capacity_factor": training.moe_capacity_factor if padded else None,
            "moe_pad_expert_input_to_capacity": padded}


def recompute_settings(knobs: LaunchKnobs) -> dict[str, Any]:
    """``TransformerConfig`` recompute fields of the priced plan (None where unset): selective with the
    priced modules, or full with the ``block`` method over the priced layers of each virtual chunk."""
    if knobs.recompute == "selective":
        return {"recompute_granularity": "selective", "recompute_method": None, "recompute_num_layers": None,
                "recompute_modules": list(knobs.recompute_modules)}
    if knobs.recompute == "full":
        return {"recompute_granularity": "full", "recompute_method": "block",
                "recompute_num_layers": knobs.recompute_layers_per_chunk}
    return {"recompute_granularity": None, "recompute_method": None, "recompute_num_layers": None}


# --- rules -------------------------------------------------------------------------------------------

def violations(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, *, cp_comm_type: str = "p2p",
               rank_order: str = DEFAULT_RANK_ORDER) -> dict[str, np.ndarray]:
    """For each of :data:`RULES` (by suffix), True where megatron-core 0.16.1 refuses the plan."""
    n = len(plans)

    def every(flag: bool) -> np.ndarray:
        return np.full(n, bool(flag))

    order = canonical_order(rank_order)
    moe = model.is_moe
    # Dense models never set the expert degrees: Megatron-Core takes etp = tp, ep = 1.
    etp = plans.etp if moe else plans.tp
    ep = plans.ep if moe else np.ones_like(plans.tp)
    kv_heads = model.num_attention_heads if model.is_mla else model.num_kv_heads
    q_per_rank = model.num_attention_heads // plans.tp
    kv_per_rank = np.maximum(kv_heads // plans.tp, 1)  # tp > KV heads: one replicated head per rank
    scope = set(training.cuda_graph_scope)
    graphs = bool(scope)
    impl = cuda_graph_impl(training)
    overlap = ep_overlap_active(model, training, plans)
    precision_aware = precision_aware_optimizer(training, plans.optimizer_offload)
    return {
        "pipeline_schedule": ~np.isin(plans.schedule, [SCHEDULES.index(name) for name in PIPELINE_SCHEDULES]),
        "rank_order": every(order not in RANK_ORDERS),
        "tp_pp_dp_mapping_expert_dp": every(order == "tp-cp-ep-pp-dp") & (plans.pp > 1)
                                      & (etp * ep != plans.tp * plans.cp),
        "cp_a2a_heads_divisible": every(cp_comm_type == "a2a") & (plans.cp > 1)
                                  & ((q_per_rank % plans.cp != 0) | (kv_per_rank % plans.cp != 0)),
        "seq_divisible_by_2cp": (plans.cp > 1) & (training.seq_length % (2 * plans.cp) != 0),
        "fp8_delayed_no_norm_or_moe_act_recompute": every(training.precision == "fp8"
                                                          and training.fp8_recipe == "delayed")
                                                    & recomputed(plans, "layernorm", "moe_act"),
        "cuda_graphs_full_recompute_needs_full_iteration": every(graphs and graph_scope(training)
                                                                 != {"full_iteration"})
                                                           & (plans.recompute == FULL),
        "cuda_graphs_moe_recompute_router": every(impl == "transformer_engine" and "moe_router" in scope)
                                            & recomputed(plans, "moe"),
        "cuda_graphs_no_activation_offload": every(graphs) & (plans.activation_offload_layers > 0),
        "cuda_graphs_dropout_recompute": graphed_recompute_with_dropout(training, plans),
        "cuda_graph_scope_valid": every(not graph_scope_valid(model, training)),
        "ep_overlap_moe_recompute": overlap & recomputed(plans, "moe"),
        "ep_overlap_cuda_graphs": overlap & (impl == "local" or bool(scope & {"moe", "mlp"})),
        "ep_overlap_mtp": overlap & ((model.mtp_layers > 1) | ((model.mtp_layers == 1) & (plans.pp == 1))),
        "precision_aware_optimizer": precision_aware & ((plans.zero_stage == 0) | (training.optimizer == "sgd")),
        "tp_comm_overlap_needs_sequence_parallel": every(training.tp_comm_overlap) & (plans.tp > 1)
                                                   & ~plans.sequence_parallel,
        "flex_dispatcher_needs_tp_ep": every(moe and training.moe_token_dispatcher != "alltoall")
                                       & (plans.etp * plans.ep == 1),
        "deepep_no_pad_to_capacity": every(moe and training.moe_token_dispatcher == "deepep"
                                           and training.moe_pad_to_capacity),
        "no_rank_capacity": every(moe and training.moe_rank_capacity_factor is not None),
        "no_fp8_dispatch": every(moe and training.moe_dispatch_fp8),
        "moe_bias_needs_etp1": every(moe and model.linear_bias) & (plans.etp != 1),
        "no_alibi": every(model.position_embedding_type == "alibi"),
        "bf16_layers_within_stage": check_bf16_layers(training, model.num_layers, plans),
        "fsdp_hsdp_dense_only": every(moe) & (plans.zero_stage >= 2) & (plans.dp_replicate > 1),
    }


GELU_ACTIVATIONS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_python", "gelu_accurate")
"""Hugging Face ``hidden_act`` / ``hidden_activation`` names of the GeLU family (Gemma's GeGLU is gated GeLU)."""


# Megatron-Core's GPT layer (``get_gpt_layer_with_transformer_engine_spec``) builds one norm before
# attention and one before the MLP, and a SiLU-gated MLP under ``--swiglu``. A model with more norms or
# another gate trains as a slightly different model of the same size: the priced time and memory still
# hold (norms and activations are priced by their tensor sizes, not their function), so the launch says
# so rather than being refused.


def missing_norms(model: ModelSpec) -> list[str]:
    """The difference a model with post-sublayer norms (Gemma 2/3: four per layer) runs at."""
    if model.norms_per_layer <= 2:
        return []
    return [f"the model has {model.norms_per_layer} norms per layer (pre- and post-sublayer, as Gemma); "
            "Megatron-Core's GPT layer builds 2, so the launch trains without the post-sublayer norms"]


def gelu_gate(model: ModelSpec) -> list[str]:
    """The difference a GeLU-gated MLP (Gemma's GeGLU) runs at under Megatron's SiLU gate."""
    activation = str(model.extra.get("hidden_activation") or model.extra.get("hidden_act") or "silu")
    if not (model.gated_mlp and activation in GELU_ACTIVATIONS):
        return []
    return [f"the model's MLP is GeLU-gated ({activation}); Megatron's gated MLP flag runs SiLU (SwiGLU), "
            "the same size and cost"]
