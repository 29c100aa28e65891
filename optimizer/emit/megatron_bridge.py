"""Megatron-Bridge's launch of a priced plan: a recipe and ``section.field=value`` overrides.

NeMo 2.0's LLM stack moved to Megatron-Bridge (megatron-bridge 0.3.1 over megatron-core 0.16.1). Its
generic runner, ``scripts/training/run_recipe.py`` of the Megatron-Bridge repository at tag v0.3.1 (not in
the wheel), builds a recipe's ``ConfigContainer`` (``megatron/bridge/training/config.py``), applies the
command's remaining words as Hydra overrides (``process_config_with_overrides`` of
``megatron/bridge/training/utils/omegaconf_utils.py``: ``section.field=value``, ``~key`` deletes,
``+key=`` adds, a ``{_target_: ...}`` value is instantiated) and calls ``pretrain``. What this module
writes:

* the recipe: the model's own recipe where Bridge 0.3.1 ships one (:data:`RECIPES`), else the recipe of
  the closest architecture with every model dimension overridden (``model.num_layers``, ``hidden_size``,
  ... of the ``GPTModelProvider`` / Megatron-Core ``TransformerConfig``); the dimensions are written in
  both cases, so the launch holds the priced model even if a recipe changes;
* ``model.*``: the parallel degrees, the pipeline split (:func:`split_settings`: an uneven split is
  Megatron-Core's embedding and loss accounting, ``account_for_embedding_in_pipeline_split`` /
  ``account_for_loss_in_pipeline_split``, where it builds the priced split, as the Llama 3.1 405B recipe
  sets it; else ``num_layers_in_first_pipeline_stage`` / ``num_layers_in_last_pipeline_stage`` where the
  stages divide into the chunks; else ``pipeline_model_parallel_layout``, the string Megatron-LM is given,
  as the DeepSeek-V3 recipe sets one; the ways not used are cleared, because
  ``TransformerConfig.__post_init__`` refuses them together), recompute, activation offload, MoE
  dispatcher and grouped GEMM, CUDA graphs, dropout;
* ``mixed_precision``: Bridge's ``runtime_config_update`` copies every field of the container's
  ``MixedPrecisionConfig`` over ``model``, ``optimizer`` and ``ddp`` after the overrides, so precision
  set on ``model.*`` would be overwritten (what broke NeMo's FP8). The named recipes
  (``mixed_precision.py``: ``bf16_with_fp8_current_scaling_mixed`` keeps the first and last layer in
  BF16, the FP8 ones gather FP8 parameters) are not the priced plan, so the whole config is replaced by
  one built from the priced precision (``~mixed_precision`` then ``+mixed_precision={_target_: ...}``);
* ``comm_overlap=null``: a recipe's ``CommOverlapConfig`` (``comm_overlap.py``) is applied by
  ``runtime_config_update`` after the overrides and rewrites ``tp_comm_overlap``,
  ``overlap_moe_expert_parallel_comm`` and the DDP overlaps with its own choices (Llama 3 70B turns the TP
  overlap on; DeepSeek-V3 turns the EP overlap off), so it is removed and the priced overlaps are set on
  ``model``/``ddp`` directly (TP overlap then uses Transformer Engine's default userbuffer settings);
* ``ddp.*`` / ``optimizer.*``: ZeRO-1 is the distributed optimizer, ZeRO-2/3 Megatron-FSDP
  (``data_parallel_sharding_strategy`` ``optim_grads`` / ``optim_grads_params``, checkpoints in
  ``fsdp_dtensor``, the only format Bridge's ``validate`` accepts for Megatron-FSDP), the optimizer
  offload, BF16 moments (precision-aware optimizer), grad-reduce dtype and the overlaps;
* the launcher and its environment are Megatron-LM's (:func:`.megatron_lm.launcher`,
  :func:`.megatron_lm.environment`: ``CUDA_DEVICE_MAX_CONNECTIONS=1`` where Megatron-Core's TP/CP
  overlaps rely on it; Bridge does not check it, its performance scripts set it the same way);
* ``train.*`` / ``dataset.sequence_length`` (the field behind Bridge's ``seq_length`` alias): micro-batch,
  global batch, sequence.

:data:`RULES` are the start-up checks of Bridge 0.3.1 and Megatron-Core 0.16.1 (``ConfigContainer.validate``,
``TransformerConfig.__post_init__``, ``OptimizerConfig.__post_init__``, the micro-batch calculator) that a
plan the generic rules accept can still break; the checks Megatron-Core and Transformer Engine make later, on
the GPU (Ulysses heads, flex dispatcher degrees, TP overlap without sequence parallelism, the tp-pp-dp
mapping's expert groups); and the knobs Bridge 0.3.1 cannot express (other rank orders, FP8 dispatch, ALiBi,
sync-free HybridEP, moe recompute under the EP overlap, which 0.16.1 skips silently). The checks Megatron-LM
makes the same way through megatron-core, and the MoE, recompute, FP8-format, rank-order and graph
translations, are :mod:`.megatron_core`'s; :data:`OWN_RULES` are Bridge's alone.
"""

from __future__ import annotations

import shlex
from typing import Any

import numpy as np

from cost_model.model_spec import ModelSpec
from cost_model.plan import PlanArrays
from cost_model.training_spec import TrainingSpec
from hardware.placement import DEFAULT_RANK_ORDER

from . import megatron_core as core
from .emission import Emission
from .knobs import LaunchKnobs, synchronous_reduce_scatter
from .megatron_core import FP4_FORMATS, FP8_FORMATS, FSDP_STRATEGY, cuda_graph_impl, missing_norms, precision_aware_optimizer, \
    prefixed, recompute_settings, uses_tp_pp_dp_mapping
from .megatron_lm import environment, pipeline_layout, plain_split
from .torchrun import launcher

TESTED_VERSION = "megatron-bridge 0.3.1 (megatron-core 0.16.1)"

RUNNER = "scripts/training/run_recipe.py"
"""Bridge's generic recipe runner (Megatron-Bridge repository, tag v0.3.1; not shipped in the wheel)."""

RECIPES: dict[str, str] = {
    "llama3-8b": "llama3_8b_pretrain_config",
    "llama3-70b": "llama3_70b_pretrain_config",
    "llama3-405b": "llama31_405b_pretrain_config",
    "qwen2.5-7b": "qwen25_7b_pretrain_config",
    "qwen3-30b-a3b": "qwen3_30b_a3b_pretrain_config",
    "qwen3-235b-a22b": "qwen3_235b_a22b_pretrain_config",
    "deepseek-v3": "deepseek_v3_pretrain_config",
    "gpt-oss-120b": "gpt_oss_120b_pretrain_config",
}
"""plan-search model preset -> ``megatron.bridge.recipes`` function (0.3.1) building the same model. Only
recipes ``megatron.bridge.recipes`` exports are reachable by ``run_recipe.py`` (``getattr(recipes, name)``):
0.3.1's ``gpt3_175b_pretrain_config`` is not exported (``recipes/gpt/__init__.py`` is empty), so GPT-3
takes the family route."""

FAMILY_RECIPES = {"mla": "deepseek_v3_pretrain_config", "moe": "qwen3_30b_a3b_pretrain_config",
                  "dense": "llama3_8b_pretrain_config"}
"""Recipe whose model code a model without its own recipe borrows (its dimensions are overridden)."""

DROPOUT = 0.1
"""Hidden and attention dropout when the training setup asks for dropout (GPT-3-era value)."""

OWN_RULES: dict[str, str] = {
    "bridge_fsdp_default_rank_order": (
        "Megatron-FSDP (ZeRO-2/3) runs only with the default rank order (ConfigContainer.validate refuses "
        "use_tp_pp_dp_mapping)"),
}
"""Bridge's own rules: ``ConfigContainer.validate``'s. Any stage split is said (:func:`split_settings`)."""

PIPELINE_SCHEDULES = core.PIPELINE_SCHEDULES
"""The pipeline schedules it runs: megatron-core's (:data:`.megatron_core.PIPELINE_SCHEDULES`)."""

RULES: dict[str, str] = {**prefixed("bridge_", core.RULES), **OWN_RULES}
"""Megatron-Bridge's start-up rules the search enforces (name -> sentence): the shared Megatron-Core checks
(:data:`.megatron_core.RULES`, prefixed ``bridge_``), then Bridge's own."""


def violations(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, *, cp_comm_type: str = "p2p",
               rank_order: str = DEFAULT_RANK_ORDER) -> dict[str, np.ndarray]:
    """For each of :data:`RULES`, True where Megatron-Bridge refuses the plan."""
    shared = core.violations(model, training, plans, cp_comm_type=cp_comm_type, rank_order=rank_order)
    return {
        **prefixed("bridge_", shared),
        "bridge_fsdp_default_rank_order": np.full(len(plans), uses_tp_pp_dp_mapping(rank_order))
                                          & (plans.zero_stage >= 2),
    }


def recipe(model: ModelSpec) -> str:
    """The Bridge recipe the launch starts from (its model code; every plan knob is overridden)."""
    if model.name in RECIPES:
        return RECIPES[model.name]
    return FAMILY_RECIPES["mla" if model.is_mla else "moe" if model.is_moe else "dense"]


def _value(value: Any) -> str:
    """A Python value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_value(v)}" for k, v in value.items()) + "}"
    return str(value)


POSITION_EMBEDDINGS = {"rope": "rope", "learned": "learned_absolute"}
"""plan-search position embedding -> ``GPTModelProvider.position_embedding_type``."""


def architecture(model: ModelSpec) -> dict[str, Any]:
    """For a model without its own recipe: the provider's architecture switches that the borrowed recipe
    may set differently (the activation function is a callable, which overrides cannot replace)."""
    return {"normalization": "LayerNorm" if model.norm_type == "layernorm" else "RMSNorm",
            "gated_linear_unit": model.gated_mlp, "add_bias_linear": model.linear_bias,
            "add_qkv_bias": model.qkv_bias or model.linear_bias, "qk_layernorm": model.qk_norm,
            "share_embeddings_and_output_weights": model.tie_embeddings,
            "position_embedding_type": POSITION_EMBEDDINGS.get(model.position_embedding_type, "rope"),
            **({"moe_layer_freq": [int(moe) for moe in model.moe_layers],
                "moe_shared_expert_intermediate_size": model.shared_expert_ffn_hidden_size or None}
               if model.is_moe else {})}


def model_dimensions(model: ModelSpec) -> dict[str, Any]:
    """``GPTModelProvider`` / ``TransformerConfig`` shape fields of the priced model."""
    dims: dict[str, Any] = {"num_layers": model.num_layers, "hidden_size": model.hidden_size,
                            "num_attention_heads": model.num_attention_heads, "vocab_size": model.vocab_size,
                            "mtp_num_layers": model.mtp_layers or None}
    if model.ffn_hidden_size > 0:
        dims["ffn_hidden_size"] = model.ffn_hidden_size
    if not model.is_mla:
        dims |= {"num_query_groups": model.num_kv_heads, "kv_channels": model.head_dim}
    if model.is_moe:
        dims |= {"num_moe_experts": model.num_experts, "moe_router_topk": model.experts_per_token,
                 "moe_ffn_hidden_size": model.moe_ffn_hidden_size}
    return dims


def parallel_settings(knobs: LaunchKnobs) -> dict[str, Any]:
    """Degrees and the pipeline split (``model.*``)."""
    out: dict[str, Any] = {
        "tensor_model_parallel_size": knobs.tp, "pipeline_model_parallel_size": knobs.pp,
        "virtual_pipeline_model_parallel_size": knobs.vpp if knobs.vpp > 1 else None,
        "context_parallel_size": knobs.cp, "sequence_parallel": knobs.sequence_parallel and knobs.tp > 1,
        **split_settings(knobs),
    }
    if knobs.cp > 1:
        out["cp_comm_type"] = knobs.cp_comm_type
    if knobs.model.is_moe:
        out |= {"expert_model_parallel_size": knobs.ep, "expert_tensor_parallel_size": knobs.etp}
    return out


def split_settings(knobs: LaunchKnobs) -> dict[str, Any]:
    """The priced stage and chunk split in one of Megatron-Core's four ways, the other three cleared: the
    default (even, stages divisible by vpp), the embedding/loss accounting, first/last stage sizes (each
    stage divisible by vpp and not empty, ``TransformerConfig.__post_init__``), else the layout chunk by
    chunk (an embedding-only first stage, DeepSeek-V3's 61 layers on 32 stages: ``E|t*2|...``; Hydra
    reads ``Et*6|t*7|...`` as a string; ``__post_init__`` parses and validates it)."""
    cleared: dict[str, Any] = {"pipeline_model_parallel_layout": None, "account_for_embedding_in_pipeline_split": False,
                               "account_for_loss_in_pipeline_split": False,
                               "num_layers_in_first_pipeline_stage": None, "num_layers_in_last_pipeline_stage": None}
    if knobs.pp == 1 or plain_split(knobs):
        return cleared
    accounted = knobs.accounted_ends
    if accounted is not None:
        return cleared | {"account_for_embedding_in_pipeline_split": accounted[0],
                          "account_for_loss_in_pipeline_split": accounted[1]}
    if all(layers % knobs.vpp == 0 and layers > 0 for layers in knobs.stage_layers):  # __post_init__: > 0
        return cleared | {"num_layers_in_first_pipeline_stage": knobs.stage_layers[0],
                          "num_layers_in_last_pipeline_stage": knobs.stage_layers[-1]}
    return cleared | {"pipeline_model_parallel_layout": pipeline_layout(knobs)}


def memory_settings(knobs: LaunchKnobs) -> dict[str, Any]:
    """Recompute and activation offload (``model.*``)."""
    out = recompute_settings(knobs)
    if "shared_experts" in knobs.recompute_modules:
        # TransformerConfig: recomputed shared experts cannot also overlap (DeepSeek's recipe overlaps them).
        out["moe_shared_expert_overlap"] = False
    offload = knobs.activation_offload_layers > 0
    out |= {"cpu_offloading": offload, "cpu_offloading_num_layers": knobs.activation_offload_layers,
            "cpu_offloading_activations": True, "cpu_offloading_weights": False,
            "fine_grained_activation_offloading": False}
    return out


def moe_settings(knobs: LaunchKnobs) -> dict[str, Any]:
    """Dispatcher, grouped GEMM, capacity (:func:`.megatron_core.moe_settings`; the recipe's values are
    overwritten, None included) and the EP overlap (``model.*``), as priced."""
    out = core.moe_settings(knobs.training)
    out["overlap_moe_expert_parallel_comm"] = knobs.ep_overlap
    if knobs.ep_overlap:
        # TransformerConfig: the shared-expert overlap (DeepSeek's recipe turns it on) excludes the EP overlap.
        out["moe_shared_expert_overlap"] = False
    return out


def graph_settings(knobs: LaunchKnobs) -> dict[str, Any]:
    """CUDA graphs (``model.*``): off, Transformer Engine per-layer scopes, or the local whole iteration."""
    training = knobs.training
    return {"cuda_graph_impl": cuda_graph_impl(training), "cuda_graph_scope": list(training.cuda_graph_scope)}


def mixed_precision(knobs: LaunchKnobs) -> dict[str, Any]:
    """The ``MixedPrecisionConfig`` of the priced precision, as a Hydra ``_target_`` node: FP8 or NVFP4 GEMMs
    with the priced FP8 parameter gather and BF16 first/last layers (:func:`.megatron_core.low_precision_settings`),
    grads reduced in the priced dtype. NVFP4 is Bridge's ``bf16_with_nvfp4_mixed`` (``fp4 = "e2m1"``,
    ``fp4_recipe = "nvfp4"``, BF16 weights), with BF16 first/last layers only where priced (off in the
    performance scripts)."""
    training = knobs.training
    half = "float16" if training.precision == "fp16" else "bfloat16"
    dtype = {"_target_": f"torch.{half}", "_call_": False}
    out: dict[str, Any] = {"_target_": "megatron.bridge.training.mixed_precision.MixedPrecisionConfig",
                           "bf16": half == "bfloat16", "fp16": half == "float16", "params_dtype": dtype,
                           "pipeline_dtype": dtype, "autocast_enabled": False,
                           "grad_reduce_in_fp32": training.grad_dtype == "fp32"}
    low = core.low_precision_settings(knobs)
    if training.precision == "fp8":
        out |= {"fp8": FP8_FORMATS[training.fp8_recipe], "fp8_recipe": training.fp8_recipe, **low}
        if training.fp8_recipe == "delayed":
            # Bridge's delayed-scaling recipe: amax over a 1024-step history.
            out |= {"fp8_amax_history_len": 1024, "fp8_amax_compute_algo": "max"}
    if training.precision == "fp4":
        out |= {"fp4": FP4_FORMATS[training.fp4_recipe], "fp4_recipe": training.fp4_recipe, **low}
    return out


def optimizer_settings(knobs: LaunchKnobs) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``ddp.*``, ``optimizer.*`` and ``checkpoint.*`` of the ZeRO stage, offload and moments."""
    training = knobs.training
    fsdp = knobs.zero_stage in FSDP_STRATEGY
    distributed = knobs.zero_stage >= 1
    ddp: dict[str, Any] = {"use_distributed_optimizer": distributed, "use_megatron_fsdp": fsdp,
                           "data_parallel_sharding_strategy": FSDP_STRATEGY.get(knobs.zero_stage, "no_shard"),
                           "overlap_grad_reduce": training.overlap_grad_reduce,
                           "overlap_param_gather": training.overlap_param_gather and distributed}
    if knobs.dp_replicate > 1 and distributed:  # hybrid sharding (megatron-core DistributedDataParallelConfig)
        ddp["num_distributed_optimizer_instances"] = knobs.dp_replicate
    bf16_moments = training.optimizer_moments_dtype == "bf16"
    moments = "bfloat16" if bf16_moments else "float32"
    # OptimizerConfig: dtypes other than fp32 need the precision-aware optimizer; without it the BF16 grad
    # buffer is the DDP's (grad_reduce_in_fp32=False) and the optimizer upcasts to fp32 main grads.
    main_grads = "bfloat16" if bf16_moments and training.grad_dtype == "bf16" else "float32"
    optimizer: dict[str, Any] = {"optimizer": "sgd" if training.optimizer == "sgd" else "adam",
                                 "use_distributed_optimizer": distributed,
                                 "optimizer_cpu_offload": knobs.optimizer_offload,
                                 "optimizer_offload_fraction": 1.0 if knobs.optimizer_offload else 0.0,
                                 # The hybrid CPU optimizer takes the precision-aware optimizer's code path.
                                 "use_precision_aware_optimizer": precision_aware_optimizer(training,
                                                                                           knobs.optimizer_offload),
                                 "main_params_dtype": "float32",
                                 "main_grads_dtype": main_grads, "exp_avg_dtype": moments, "exp_avg_sq_dtype": moments}
    checkpoint = {"ckpt_format": "fsdp_dtensor" if fsdp else "torch_dist"}
    return ddp, optimizer, checkpoint


def override_map(knobs: LaunchKnobs) -> dict[str, Any]:
    """Every override, ``section.field`` -> value (``mixed_precision`` is written separately)."""
    training = knobs.training
    own_recipe = knobs.model.name in RECIPES
    model: dict[str, Any] = {**model_dimensions(knobs.model), **({} if own_recipe else architecture(knobs.model)),
                             **parallel_settings(knobs),
                             "seq_length": training.seq_length, **memory_settings(knobs)}
    if knobs.model.is_moe:
        model |= moe_settings(knobs)
    model |= graph_settings(knobs)
    interleaved = knobs.pp > 1 and knobs.vpp > 1
    model |= {"tp_comm_overlap": training.tp_comm_overlap and knobs.tp > 1,
              # Megatron-LM's defaults (--overlap-p2p-communication with interleaving, batched p2p without).
              "overlap_p2p_comm": interleaved, "batch_p2p_comm": not interleaved,
              # As priced (cost_model.compute.gradient_accumulation_bytes); Megatron-FSDP (ZeRO-2/3) runs without
              # it (Bridge's ConfigContainer turns it off for use_megatron_fsdp).
              "gradient_accumulation_fusion": training.fuses_gradient_accumulation and knobs.zero_stage < 2,
              "hidden_dropout": DROPOUT if training.dropout else 0.0,
              "attention_dropout": DROPOUT if training.dropout else 0.0}
    ddp, optimizer, checkpoint = optimizer_settings(knobs)
    out = {f"model.{k}": v for k, v in model.items()}
    out |= {"train.micro_batch_size": knobs.micro_batch, "train.global_batch_size": training.global_batch_size,
            "dataset.sequence_length": training.seq_length}
    out |= {f"ddp.{k}": v for k, v in ddp.items()}
    out |= {f"optimizer.{k}": v for k, v in optimizer.items()}
    out |= {f"checkpoint.{k}": v for k, v in checkpoint.items()}
    out["dist.use_tp_pp_dp_mapping"] = uses_tp_pp_dp_mapping(knobs.rank_order)
    # A recipe's CommOverlapConfig (Llama 3 70B/405B, DeepSeek-V3) rewrites the TP, EP and DP overlaps on
    # model, ddp and optimizer in runtime_config_update, after the overrides: the priced ones are set above.
    out["comm_overlap"] = None
    if "full_iteration" in training.cuda_graph_scope:
        # ConfigContainer.validate: the NaN check reads the loss on the host, which a captured step cannot.
        out["rerun_state_machine.check_for_nan_in_loss"] = False
    return out


def overrides(knobs: LaunchKnobs) -> list[str]:
    """The Hydra overrides ``run_recipe.py`` passes to ``process_config_with_overrides``, in order."""
    items = [f"{key}={_value(value)}" for key, value in override_map(knobs).items()]
    return items + ["~mixed_precision", f"+mixed_precision={_value(mixed_precision(knobs))}"]


def differences(knobs: LaunchKnobs) -> tuple[str, ...]:
    """What the launch runs differently from the priced plan."""
    out = []
    if knobs.model.name not in RECIPES:
        out.append(f"no Megatron-Bridge 0.3.1 recipe for {knobs.model.name}: the launch starts from "
                   f"{recipe(knobs.model)} with the dimensions and architecture switches overridden; the "
                   "activation function stays that recipe's")
    if knobs.training.flash_attention_2:
        # Megatron-Core's LanguageModule._set_attention_backend asserts the NVTE_* variables match
        # model.attention_backend (auto: NVTE_FUSED_ATTN=1), so the priced kernel is a recipe change.
        out.append("priced with flash-attn 2 (training.flash_attention_2); the launch keeps the recipe's "
                   "attention_backend, which on Hopper runs cuDNN fused attention: set "
                   "cfg.model.attention_backend = AttnBackend.flash to run the priced kernel")
    return tuple(out + missing_norms(knobs.model) + synchronous_reduce_scatter(knobs, "Megatron FSDP"))


def emit(knobs: LaunchKnobs) -> Emission:
    items = overrides(knobs)
    head = launcher(knobs) + [RUNNER, "--recipe", recipe(knobs.model)]
    argv = tuple(head + items)
    env = environment(knobs)
    # $NODE_RANK / $MASTER_ADDR are the launcher's placeholders: left for the shell to expand.
    words = [f"{k}={v}" for k, v in env] + [w if w.startswith("$") else shlex.quote(w) for w in head]
    lines = [f"# {TESTED_VERSION}: Megatron-Bridge's {RUNNER} (repository tag v0.3.1), from the repository root",
             " ".join(words) + " \\"]
    lines += [f"  {shlex.quote(item)} \\" for item in items[:-1]] + [f"  {shlex.quote(items[-1])}"]
    return Emission(framework="megatron-bridge", tested_version=TESTED_VERSION, argv=argv, env=env,
                    differences=differences(knobs), text="\n".join(lines))
