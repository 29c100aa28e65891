"""A plan in the launchers' own words: Megatron-LM flags, a torchtitan TOML fragment, NeMo 2.0 Python.

Flag names: Megatron-LM ``megatron/training/arguments.py`` (Megatron-FSDP's
``--data-parallel-sharding-strategy`` values ``optim_grads`` = ZeRO-2 and ``optim_grads_params`` =
ZeRO-3); torchtitan ``torchtitan/config/job_config.py`` ([parallelism], [activation_checkpoint],
[training]); NeMo 2.0 ``nemo.collections.llm`` recipes (``MegatronStrategy``, ``MegatronDataSampler``).
"""

from __future__ import annotations

from typing import Any

from cost_model.ep_overlap import megatron_accepts_overlap
from cost_model.model_spec import ModelSpec
from cost_model.plan import CORE_ATTN, FULL, SELECTIVE, module_names
from cost_model.stages import layers_per_stage
from cost_model.training_spec import TrainingSpec

EMITTERS = ("megatron", "torchtitan", "nemo")


def _uneven_split(model: ModelSpec, pp: int) -> tuple[int, int] | None:
    first, k, last = (int(x) for x in layers_per_stage(model.num_layers, pp))
    if pp > 1 and (first != k or last != k):
        return first, last
    return None


def _recompute_modules(plan: dict[str, Any]) -> list[str]:
    return module_names(plan.get("recompute_modules", CORE_ATTN))


def _offloaded_layers(plan: dict[str, Any]) -> int:
    return plan.get("activation_offload_layers", 0)


def megatron_args(plan: dict[str, Any], model: ModelSpec, training: TrainingSpec) -> list[str]:
    args = [
        f"--tensor-model-parallel-size {plan['tp']}",
        f"--pipeline-model-parallel-size {plan['pp']}",
        f"--context-parallel-size {plan['cp']}",
    ]
    if model.is_moe:
        args += [f"--expert-model-parallel-size {plan['ep']}", f"--expert-tensor-parallel-size {plan['etp']}"]
        args += [flag if value is True else f"{flag} {value}" for flag, _, value in _moe_settings(training)]
    if plan["vpp"] > 1:
        args.append(f"--virtual-pipeline-model-parallel-size {plan['vpp']}")
    split = _uneven_split(model, plan["pp"])
    if split:
        args += [f"--decoder-first-pipeline-num-layers {split[0]}", f"--decoder-last-pipeline-num-layers {split[1]}"]
    if plan["sequence_parallel"]:
        args.append("--sequence-parallel")
    args += [f"--micro-batch-size {plan['micro_batch']}", f"--global-batch-size {training.global_batch_size}",
             f"--seq-length {training.seq_length}"]
    if plan["recompute"] == SELECTIVE:
        args += ["--recompute-granularity selective",
                 "--recompute-modules " + " ".join(_recompute_modules(plan))]
    elif plan["recompute"] == FULL:
        layers = plan["recompute_num_layers"]
        if layers < 0:
            _, k, _ = layers_per_stage(model.num_layers, plan["pp"])
            layers = -(-int(k) // plan["vpp"])
        args += ["--recompute-granularity full", "--recompute-method block", f"--recompute-num-layers {layers}"]
    zero = plan["zero_stage"]
    if zero == 1:
        args.append("--use-distributed-optimizer")
    elif zero in (2, 3):
        strategy = "optim_grads" if zero == 2 else "optim_grads_params"
        args += ["--use-megatron-fsdp", f"--data-parallel-sharding-strategy {strategy}",
                 "--use-distributed-optimizer", "--no-gradient-accumulation-fusion", "--ckpt-format fsdp_dtensor"]
    if plan.get("optimizer_offload"):
        args.append("--optimizer-cpu-offload")
    if _offloaded_layers(plan) > 0:
        # Megatron's TransformerConfig also offloads weights unless cpu_offloading_weights=False (the
        # plan is priced with activations only, as NVIDIA's recipes set it).
        args += ["--cpu-offloading", f"--cpu-offloading-num-layers {_offloaded_layers(plan)}"]
    if training.optimizer_moments_dtype == "bf16":
        args += ["--use-precision-aware-optimizer", "--exp-avg-dtype bf16", "--exp-avg-sq-dtype bf16"]
    if training.overlap_grad_reduce:
        args.append("--overlap-grad-reduce")
    if training.overlap_param_gather and zero >= 1:
        args.append("--overlap-param-gather")
    if training.tp_comm_overlap and plan["tp"] > 1:
        args.append("--tp-comm-overlap")
    if _ep_overlap(plan, model, training):
        args.append("--overlap-moe-expert-parallel-comm")
    if training.cuda_graph_scope:
        args += [f"--cuda-graph-impl {_cuda_graph_impl(training)}",
                 f"--cuda-graph-scope {' '.join(training.cuda_graph_scope)}"]
    args.append("--fp16" if training.precision == "fp16" else "--bf16")
    if training.precision == "fp8":
        args += ["--fp8-format hybrid", f"--fp8-recipe {training.fp8_recipe}"]
    return args


def _moe_settings(training: TrainingSpec) -> list[tuple[str, str, Any]]:
    """Megatron flag, Megatron-Core config field and value of each MoE setting: the flex dispatcher and its
    backend, then what sizes the expert buffers up front (what lets CUDA graphs capture an MoE layer):
    drop and pad, or sync-free HybridEP with rank capacity and, optionally, the paged stash."""
    settings = []
    if training.moe_token_dispatcher != "alltoall":
        settings += [("--moe-token-dispatcher-type", "moe_token_dispatcher_type", "flex"),
                     ("--moe-flex-dispatcher-backend", "moe_flex_dispatcher_backend", training.moe_token_dispatcher)]
    if training.moe_pad_to_capacity:
        return settings + [("--moe-expert-capacity-factor", "moe_expert_capacity_factor", training.moe_capacity_factor),
                           ("--moe-pad-expert-input-to-capacity", "moe_pad_expert_input_to_capacity", True)]
    if training.moe_rank_capacity_factor is None:
        return settings
    settings += [("--use-transformer-engine-op-fuser", "use_transformer_engine_op_fuser", True),
                 ("--moe-expert-rank-capacity-factor", "moe_expert_rank_capacity_factor", training.moe_rank_capacity_factor)]
    if training.moe_paged_stash_factor is not None:
        settings += [("--moe-paged-stash", "moe_paged_stash", True),
                     ("--moe-paged-stash-buffer-size-factor-cuda", "moe_paged_stash_buffer_size_factor_cuda",
                      training.moe_paged_stash_factor)]
    return settings


def _ep_overlap(plan: dict[str, Any], model: ModelSpec, training: TrainingSpec) -> bool:
    """The EP all-to-all overlap, where asked for and Megatron accepts it for this plan (elsewhere the
    plan was priced without it, and the flag would stop Megatron at start-up)."""
    return bool(model.is_moe and training.overlap_moe_expert_parallel_comm
                and megatron_accepts_overlap(plan["ep"], plan["recompute"], plan["pp"], plan["vpp"]))


def _cuda_graph_impl(training: TrainingSpec) -> str:
    """Megatron captures a whole iteration with its own graphs; per-layer scopes go through Transformer
    Engine's ``make_graphed_callables`` (``--cuda-graph-impl local`` / ``transformer_engine``)."""
    return "local" if "full_iteration" in training.cuda_graph_scope else "transformer_engine"


def torchtitan_toml(plan: dict[str, Any], model: ModelSpec, training: TrainingSpec) -> str:
    zero = plan["zero_stage"]
    dp = plan["dp"]
    replicate, shard = (dp, 1) if zero == 0 else (1, dp)
    mode = {0: "none", SELECTIVE: "selective", FULL: "full"}[plan["recompute"]]
    lines = [
        "[parallelism]",
        f"data_parallel_replicate_degree = {replicate}",
        f"data_parallel_shard_degree = {shard}",
        f"tensor_parallel_degree = {plan['tp']}",
        f"pipeline_parallel_degree = {plan['pp']}",
        f"context_parallel_degree = {plan['cp']}",
    ]
    if model.is_moe:
        lines += [f"expert_parallel_degree = {plan['ep']}", f"expert_tensor_parallel_degree = {plan['etp']}"]
    if plan["pp"] > 1:
        schedule = "Interleaved1F1B" if plan["vpp"] > 1 else "1F1B"
        lines += [f'pipeline_parallel_schedule = "{schedule}"',
                  f"pipeline_parallel_microbatch_size = {plan['micro_batch']}"]
    if zero in (1, 2):
        lines.append('fsdp_reshard_after_forward = "never"  # ZeRO-2-like: weights stay gathered between fwd and bwd')
    elif zero == 3:
        lines.append('fsdp_reshard_after_forward = "always"')
    lines += ["", "[activation_checkpoint]", f'mode = "{mode}"']
    if plan["recompute"] == SELECTIVE:
        modules = ", ".join(_recompute_modules(plan))
        lines.append(f'selective_ac_option = "op"  # priced as Megatron\'s recompute modules [{modules}]; '
                     "torchtitan's op policy differs (it also recomputes every other matmul)")
    if _offloaded_layers(plan) > 0:
        lines.append(f"# activations of {_offloaded_layers(plan)} layers offloaded to the host in the plan: "
                     "torchtitan has no per-layer activation offload option")
    lines += ["", "[training]",
              f"seq_len = {training.seq_length}",
              f"global_batch_size = {training.global_batch_size}",
              f"local_batch_size = {training.global_batch_size // max(dp, 1)}"]
    if training.precision == "fp8":
        lines += ["", "[quantize.linear.float8]", "enable_fsdp_float8_all_gather = true"]
    return "\n".join(lines)


def nemo_code(plan: dict[str, Any], model: ModelSpec, training: TrainingSpec) -> str:
    strategy = [
        f"tensor_model_parallel_size={plan['tp']}",
        f"pipeline_model_parallel_size={plan['pp']}",
        f"virtual_pipeline_model_parallel_size={plan['vpp'] if plan['vpp'] > 1 else None}",
        f"context_parallel_size={plan['cp']}",
        f"sequence_parallel={bool(plan['sequence_parallel'])}",
    ]
    if model.is_moe:
        strategy += [f"expert_model_parallel_size={plan['ep']}", f"expert_tensor_parallel_size={plan['etp']}"]
    recompute = ""
    if plan["recompute"] == SELECTIVE:
        modules = _recompute_modules(plan)
        recompute = ('recipe.model.config.recompute_granularity = "selective"\n'
                     f"recipe.model.config.recompute_modules = {modules!r}\n")
    elif plan["recompute"] == FULL:
        layers = plan["recompute_num_layers"]
        recompute = ('recipe.model.config.recompute_granularity = "full"\n'
                     'recipe.model.config.recompute_method = "block"\n'
                     f"recipe.model.config.recompute_num_layers = {layers if layers > 0 else 'None  # all layers'}\n")
    if _offloaded_layers(plan) > 0:
        recompute += ("recipe.model.config.cpu_offloading = True\n"
                      f"recipe.model.config.cpu_offloading_num_layers = {_offloaded_layers(plan)}\n"
                      "recipe.model.config.cpu_offloading_weights = False\n")
    if training.precision == "fp8":
        recompute += f'recipe.model.config.fp8 = "hybrid"\nrecipe.model.config.fp8_recipe = "{training.fp8_recipe}"\n'
    if model.is_moe:
        recompute += "".join(f"recipe.model.config.{field} = {value!r}\n" for _, field, value in _moe_settings(training))
    if _ep_overlap(plan, model, training):
        recompute += "recipe.model.config.overlap_moe_expert_parallel_comm = True\n"
    if training.cuda_graph_scope:
        recompute += (f'recipe.model.config.cuda_graph_impl = "{_cuda_graph_impl(training)}"\n'
                      f"recipe.model.config.cuda_graph_scope = {list(training.cuda_graph_scope)!r}\n")
    strategy_text = ",\n    ".join(strategy)
    return (
        "from nemo import lightning as nl\n\n"
        f"recipe.trainer.strategy = nl.MegatronStrategy(\n    {strategy_text},\n)\n"
        f"recipe.data.micro_batch_size = {plan['micro_batch']}\n"
        f"recipe.data.global_batch_size = {training.global_batch_size}\n"
        f"recipe.data.seq_length = {training.seq_length}\n"
        f"recipe.optim.config.use_distributed_optimizer = {plan['zero_stage'] >= 1}\n"
        + recompute
    )


def emit(kind: str, plan: dict[str, Any], model: ModelSpec, training: TrainingSpec) -> str:
    if kind == "megatron":
        return " \\\n  ".join(megatron_args(plan, model, training))
    if kind == "torchtitan":
        return torchtitan_toml(plan, model, training)
    if kind == "nemo":
        return nemo_code(plan, model, training)
    raise ValueError(f"unknown emitter {kind!r}; use one of {', '.join(EMITTERS)}")
