"""Megatron-LM's ``pretrain_gpt.py`` command line for a priced plan (Megatron-LM core_v0.16.1).

Every flag is an option of Megatron-LM's parser at tag core_v0.16.1 (``megatron/training/arguments.py``,
``add_megatron_arguments``; the checked-in list ``tests/conformance/data/megatron_lm_flags.txt`` is
generated from it). The command is the priced plan: ``parse_args`` + ``validate_args`` +
``core_transformer_config_from_args`` (Megatron-Core 0.16.1 ``TransformerConfig.__post_init__``) accept
it and read back the priced degrees, split, schedule, recompute, precision, ZeRO/FSDP and offloads
(``tests/conformance/test_megatron_lm.py``). What the command holds:

* the launcher: ``torchrun`` with one process per GPU, the cluster's GPUs per node
  (:func:`.torchrun.launcher`); the user sets
  ``NODE_RANK`` and ``MASTER_ADDR`` on every node of a multi-node job, and runs it from a Megatron-LM
  checkout at core_v0.16.1;
* the model (:func:`model_arguments`): Megatron's defaults are GPT-2's (LayerNorm, learned positions, GeLU,
  biases on, tied embeddings, 4h MLP, multi-head attention), so every dimension and choice of the priced
  model is written; dense/MoE layer pattern (``--moe-layer-freq``), MLA, MTP, sliding windows and
  attention sinks included;
* data and schedule placeholders, the minimal set a run needs: ``--mock-data`` with Megatron's
  ``NullTokenizer`` of the model's vocabulary (``--vocab-size`` is V - 1: the tokenizer adds the end of
  document token, ``megatron/training/tokenizer/tokenizer.py`` ``_NullTokenizer``), ``--train-iters``
  (from ``training.train_tokens``, else :data:`DEFAULT_TRAIN_ITERS`) and ``--lr`` (:data:`DEFAULT_LR`).
  The user replaces them with ``--data-path``/``--tokenizer-type``/``--tokenizer-model`` and the schedule;
* the plan (:func:`plan_arguments`): degrees, the stage split (plain for an even split whose stages divide
  into the virtual chunks; ``--account-for-embedding/loss-in-pipeline-split`` where the embedding and loss
  counted as layers give the priced split, :func:`accounted_split_flags`; else
  ``--pipeline-model-parallel-layout`` spelling the priced split chunk by chunk, :func:`pipeline_layout`), micro and global batch, recompute, ZeRO-1 = distributed optimizer,
  ZeRO-2/3 = Megatron-FSDP (``optim_grads`` / ``optim_grads_params`` with the flags its user guide calls
  required, ``docs/discussions/megatron-fsdp-user-guide``), offloads, the MoE dispatcher (always written:
  Megatron's default is ``allgather``) with grouped GEMM (what the cost model assumes; off by default),
  CUDA graphs, EP overlap, FP8 recipe, gradient dtype, dropout (Megatron's default is 0.1), and
  ``--attention-backend flash`` for a run priced with flash-attn 2 (``training.flash_attention_2``).

``CUDA_DEVICE_MAX_CONNECTIONS=1`` goes in :attr:`Emission.env` where ``validate_args`` demands it (tp or
cp > 1 before Blackwell, except Megatron-FSDP, which refuses it at 1, and the EP overlap, which wants more
connections); on Blackwell it is harmless. A whole-iteration CUDA graph is ``--cuda-graph-impl local
--cuda-graph-scope full_iteration`` at core_v0.16.1 (the help of ``--cuda-graph-scope``), with
``--no-check-for-nan-in-loss-and-grad`` and, with EP, ``--moe-pad-experts-for-cuda-graph-inference`` (which
``validate_args`` asks for; it pads inference batches only), both demanded by ``validate_args``.

:data:`RULES` are Megatron-LM / Megatron-Core 0.16.1 / Transformer Engine start-up checks the generic plan
rules (:mod:`optimizer.plan_rules`) do not hold, plus the priced knobs Megatron-LM core_v0.16.1 cannot
express; each sentence names its source. The Megatron-Core checks Megatron-Bridge shares, and the MoE,
recompute, FP8-format, rank-order and graph translations, are :mod:`.megatron_core`'s; :data:`OWN_RULES` are
``validate_args``'s alone. :func:`violations` checks them for many plans at once.
"""

from __future__ import annotations

import math
import shlex
from itertools import groupby

import numpy as np

from cost_model.model_spec import ModelSpec
from cost_model.plan import PlanArrays
from cost_model.training_spec import TrainingSpec
from hardware.placement import DEFAULT_RANK_ORDER

from . import megatron_core as core
from .emission import Emission
from .knobs import LaunchKnobs, synchronous_reduce_scatter
from .megatron_core import FP4_FORMATS, FP8_FORMATS, FSDP_STRATEGY, cuda_graph_impl, gelu_gate, missing_norms, moe_settings, \
    precision_aware_optimizer, prefixed, recompute_settings, uses_tp_pp_dp_mapping
from .torchrun import launcher, nodes

TESTED_VERSION = "megatron-core 0.16.1 (Megatron-LM core_v0.16.1)"

SCRIPT = "pretrain_gpt.py"
"""Megatron-LM's GPT pre-training entry point (repository root at core_v0.16.1)."""

DEFAULT_TRAIN_ITERS = 100
"""Iterations written when the training setup names no token budget (a placeholder the user replaces)."""

DEFAULT_LR = 3.0e-4
"""Learning rate placeholder: Megatron has no default (``--lr`` None) and the plan does not price it."""

OWN_RULES: dict[str, str] = {
    "megatron_param_gather_overlap_needs_grad_overlap": "overlapping the parameter all-gather needs the gradient "
                                                        "reduce overlapped too (Megatron-LM validate_args)",
    "megatron_learned_positions_cover_sequence": "a learned position table covers the sequence "
                                                 "(max_position_embeddings >= seq_length; Megatron-LM validate_args)",
}
"""Megatron-LM's own ``validate_args`` checks (Megatron-Bridge sizes the learned table by the sequence and
does not tie the two DDP overlaps)."""

PIPELINE_SCHEDULES = core.PIPELINE_SCHEDULES
"""The pipeline schedules it runs: megatron-core's (:data:`.megatron_core.PIPELINE_SCHEDULES`)."""

RULES: dict[str, str] = {**prefixed("megatron_", core.RULES), **OWN_RULES}
"""Megatron-LM's start-up rules the search enforces (name -> sentence): the shared Megatron-Core checks
(:data:`.megatron_core.RULES`, prefixed ``megatron_``), then Megatron-LM's own."""


# --- rules ------------------------------------------------------------------------------------------

def violations(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, *, cp_comm_type: str = "p2p",
               rank_order: str = DEFAULT_RANK_ORDER) -> dict[str, np.ndarray]:
    """For each of :data:`RULES`, True where Megatron-LM refuses the plan (or cannot run it as priced)."""
    shared = core.violations(model, training, plans, cp_comm_type=cp_comm_type, rank_order=rank_order)
    n = len(plans)
    return {
        **prefixed("megatron_", shared),
        "megatron_param_gather_overlap_needs_grad_overlap": np.full(n, training.overlap_param_gather
                                                                    and not training.overlap_grad_reduce)
                                                            & (plans.zero_stage >= 1),
        "megatron_learned_positions_cover_sequence": np.full(n, model.position_embedding_type == "learned"
                                                             and model.max_position_embeddings
                                                             < training.seq_length),
    }


def refused_rules(knobs: LaunchKnobs) -> list[str]:
    """The :data:`RULES` one resolved plan breaks (empty for every plan the search ranks)."""
    broken = violations(knobs.model, knobs.training, knobs.plan_arrays(), cp_comm_type=knobs.cp_comm_type,
                        rank_order=knobs.rank_order)
    return [name for name, mask in broken.items() if mask[0]]


# --- flags ------------------------------------------------------------------------------------------

def moe_arguments(training: TrainingSpec) -> list[str]:
    """The MoE settings of :func:`.megatron_core.moe_settings` as Megatron flags (each field's flag is its name
    dashed); the dispatcher is always written (Megatron's default is ``allgather``, not the priced
    ``alltoall``), unset fields are left out. HybridEP's rank capacity does not exist in core_v0.16.1."""
    args = []
    for field, value in moe_settings(training).items():
        flag = "--" + field.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value not in (None, False):
            args.append(f"{flag} {value}")
    return args


def layer_pattern(flags: tuple[bool, ...]) -> str:
    """A per-layer 0/1 pattern as the Python list expression Megatron's ``moe_freq_type`` evaluates
    (run-length coded: ``([0]*3+[1]*58)``)."""
    runs = [f"[{int(value)}]*{len(list(group))}" for value, group in groupby(flags)]
    return "(" + "+".join(runs) + ")"


def model_arguments(model: ModelSpec, training: TrainingSpec) -> list[str]:
    """The model's dimensions and choices in Megatron's flags (each ``--flag value`` one string)."""
    args = [f"--num-layers {model.num_layers}", f"--hidden-size {model.hidden_size}",
            f"--num-attention-heads {model.num_attention_heads}"]
    if model.ffn_hidden_size > 0:
        args.append(f"--ffn-hidden-size {model.ffn_hidden_size}")
    if model.is_mla:
        args += ["--multi-latent-attention", f"--kv-lora-rank {model.kv_lora_rank}",
                 f"--qk-head-dim {model.qk_nope_head_dim}", f"--qk-pos-emb-head-dim {model.qk_rope_head_dim}",
                 f"--v-head-dim {model.v_head_dim}"]
        if model.q_lora_rank:
            args.append(f"--q-lora-rank {model.q_lora_rank}")
    else:
        if model.num_kv_heads != model.num_attention_heads:
            args += ["--group-query-attention", f"--num-query-groups {model.num_kv_heads}"]
        if model.head_dim * model.num_attention_heads != model.hidden_size:
            args.append(f"--kv-channels {model.head_dim}")
    if model.position_embedding_type == "learned":
        args.append(f"--max-position-embeddings {model.max_position_embeddings}")
    else:
        # RoPE needs no table; validate_args still wants max_position_embeddings >= seq_length.
        args += ["--position-embedding-type rope",
                 f"--max-position-embeddings {max(model.max_position_embeddings, training.seq_length)}"]
    if model.gated_mlp:
        args.append("--swiglu")
    if model.norm_type == "rmsnorm":
        args.append("--normalization RMSNorm")
    if not model.tie_embeddings:
        args.append("--untie-embeddings-and-output-weights")
    if not model.linear_bias:
        args.append("--disable-bias-linear")
        if model.qkv_bias:
            args.append("--add-qkv-bias")
    if model.qk_norm:
        args.append("--qk-layernorm")
    if model.attention_sinks:
        args.append("--softmax-type learnable")
    if model.num_sliding_window_layers:
        # Transformer Engine's window (left, right): a query sees `left` earlier keys and itself.
        args.append(f"--window-size {model.sliding_window - 1},0")
        if model.num_sliding_window_layers < model.num_layers:
            args.append(f"--window-attn-skip-freq {layer_pattern(model.sliding_window_layers)}")
    if model.is_moe:
        args += [f"--num-experts {model.num_experts}", f"--moe-router-topk {model.experts_per_token}",
                 f"--moe-ffn-hidden-size {model.moe_ffn_hidden_size}"]
        if model.experts_per_token == 1:
            # TransformerConfig: a softmax over one chosen expert has zero gradient.
            args.append("--moe-router-pre-softmax")
        if model.shared_expert_ffn_hidden_size:
            args.append(f"--moe-shared-expert-intermediate-size {model.shared_expert_ffn_hidden_size}")
        if model.num_dense_layers:
            args.append(f"--moe-layer-freq {layer_pattern(model.moe_layers)}")
    if model.mtp_layers:
        args.append(f"--mtp-num-layers {model.mtp_layers}")
    return args


def data_arguments(model: ModelSpec, training: TrainingSpec) -> list[str]:
    """Mock data, tokenizer and schedule: placeholders the user replaces (see the module docstring)."""
    if training.train_tokens:
        iters = max(math.ceil(training.train_tokens / training.global_batch_tokens), 1)
    else:
        iters = DEFAULT_TRAIN_ITERS
    return ["--mock-data", "--tokenizer-type NullTokenizer", f"--vocab-size {model.vocab_size - 1}",
            f"--train-iters {iters}", f"--lr {DEFAULT_LR:g}"]


def plain_split(knobs: LaunchKnobs) -> bool:
    """Whether Megatron's default split (L / pp layers per stage, / vpp per chunk) is the priced one."""
    return not knobs.uneven_pipeline and knobs.stage_layers[0] % knobs.vpp == 0


def pipeline_layout(knobs: LaunchKnobs) -> str:
    """``--pipeline-model-parallel-layout`` of the priced split (Megatron-Core
    ``PipelineParallelLayerLayout``: one ``|``-separated entry per virtual stage, virtual-stage major,
    ``E`` embedding, ``t`` a decoder layer, ``m`` an MTP layer, ``L`` the loss; ``x*n`` repeats). The
    chunks are the priced ones (:attr:`LaunchKnobs.stage_chunks`); a chunk of the first (last) stage may
    hold only ``E`` (``L``)."""
    pp, vpp = knobs.pp, knobs.vpp
    stages = []
    for v in range(vpp):
        for rank in range(pp):
            first, last = (rank, v) == (0, 0), (rank, v) == (pp - 1, vpp - 1)
            size = knobs.stage_chunks[rank][v]
            body = ("E" if first else "") + (f"t*{size}" if size > 1 else "t" * size)
            if last:
                body += (f"m*{knobs.model.mtp_layers}" if knobs.model.mtp_layers > 1 else "m" * knobs.model.mtp_layers)
                body += "L"
            stages.append(body)
    return "|".join(stages)


def accounted_split_flags(knobs: LaunchKnobs) -> list[str] | None:
    """``--account-for-embedding-in-pipeline-split`` (and ``-loss-``) where they build the priced split
    (:attr:`LaunchKnobs.accounted_ends`; ``validate_args`` and ``TransformerConfig.__post_init__`` then
    check (L + 1 + 1) divisible by pp and the layers a rank by vpp), else None. Models with MTP layers keep
    the layout, which places them."""
    ends = knobs.accounted_ends
    if ends is None or knobs.model.mtp_layers:
        return None
    embedding, loss = ends
    return (["--account-for-embedding-in-pipeline-split"] if embedding else []) + (
        ["--account-for-loss-in-pipeline-split"] if loss else [])


def pipeline_arguments(knobs: LaunchKnobs) -> list[str]:
    """Pipeline degree, virtual stages and the stage split: Megatron's default, its embedding/loss-accounted
    split (what NVIDIA's Llama 3.1 405B recipes use), else the layout chunk by chunk."""
    args = [f"--pipeline-model-parallel-size {knobs.pp}"]
    if knobs.pp == 1:
        return args
    virtual = [f"--num-virtual-stages-per-pipeline-rank {knobs.vpp}"] if knobs.vpp > 1 else []
    if plain_split(knobs):
        return args + virtual
    accounted = accounted_split_flags(knobs)
    if accounted is not None:
        return args + virtual + accounted
    return args + [f"--pipeline-model-parallel-layout {pipeline_layout(knobs)}"]


def recompute_arguments(knobs: LaunchKnobs) -> list[str]:
    """:func:`.megatron_core.recompute_settings` as Megatron flags (each field's flag is its name dashed)."""
    args = []
    for field, value in recompute_settings(knobs).items():
        if value is not None:
            words = " ".join(value) if isinstance(value, list) else value
            args.append(f"--{field.replace('_', '-')} {words}")
    return args


def optimizer_arguments(knobs: LaunchKnobs) -> list[str]:
    """ZeRO stage, optimizer, offload, moment and gradient dtypes, data-parallel overlaps."""
    training = knobs.training
    args = []
    if training.optimizer == "sgd":
        args.append("--optimizer sgd")
    if knobs.zero_stage == 1:
        args.append("--use-distributed-optimizer")
    if knobs.zero_stage <= 1 and not training.fuses_gradient_accumulation:
        # The priced per-micro-batch accumulation pass (cost_model.compute.gradient_accumulation_bytes).
        args.append("--no-gradient-accumulation-fusion")
    if knobs.zero_stage in (2, 3):
        args += ["--use-megatron-fsdp", f"--data-parallel-sharding-strategy {FSDP_STRATEGY[knobs.zero_stage]}",
                 "--use-distributed-optimizer", "--no-gradient-accumulation-fusion", "--ckpt-format fsdp_dtensor"]
    low = core.low_precision_settings(knobs)
    if low["fp8_param_gather"]:  # FP8 primary weights, as priced (cost_model.memory.fp8_primary_weights)
        args.append("--fp8-param-gather")
    if low["reuse_grad_buf_for_mxfp8_param_ag"]:
        args.append("--reuse-grad-buf-for-mxfp8-param-ag")
    if low["first_last_layers_bf16"]:
        args += ["--first-last-layers-bf16", f"--num-layers-at-start-in-bf16 {low['num_layers_at_start_in_bf16']}",
                 f"--num-layers-at-end-in-bf16 {low['num_layers_at_end_in_bf16']}"]
    if knobs.dp_replicate > 1 and knobs.zero_stage >= 1:
        # Hybrid sharding: the distributed optimizer (or Megatron-FSDP) in dp_replicate copies, each over
        # dp x cp / dp_replicate consecutive ranks (parallel_state intra-/inter-instance groups).
        args.append(f"--num-distributed-optimizer-instances {knobs.dp_replicate}")
    if precision_aware_optimizer(training, knobs.optimizer_offload):
        args.append("--use-precision-aware-optimizer")
    if knobs.optimizer_offload:
        args.append("--optimizer-cpu-offload")
    if training.optimizer_moments_dtype == "bf16":
        args += ["--exp-avg-dtype bf16", "--exp-avg-sq-dtype bf16"]
    # The priced gradient buffer, written either way (Megatron-FSDP's guide recommends bf16).
    if training.grad_dtype == "bf16":
        args.append("--grad-reduce-in-bf16")
    elif training.grad_dtype == "fp32":
        args.append("--accumulate-allreduce-grads-in-fp32")
    # fp16: an --fp16 run's buffer takes the parameters' dtype when neither flag is given
    if training.overlap_grad_reduce:
        args.append("--overlap-grad-reduce")
    if training.overlap_param_gather and knobs.zero_stage >= 1:
        args.append("--overlap-param-gather")
    return args


def precision_arguments(training: TrainingSpec) -> list[str]:
    args = ["--fp16" if training.precision == "fp16" else "--bf16"]
    if training.precision == "fp8":
        args += [f"--fp8-format {FP8_FORMATS[training.fp8_recipe]}", f"--fp8-recipe {training.fp8_recipe}"]
    if training.precision == "fp4":
        # NVFP4 GEMMs in every transformer layer, BF16 weights (no --fp4-param-gather), as priced.
        args += [f"--fp4-format {FP4_FORMATS[training.fp4_recipe]}", f"--fp4-recipe {training.fp4_recipe}"]
    return args


def plan_arguments(knobs: LaunchKnobs) -> list[str]:
    """The priced plan's flags, one ``--flag value`` string each."""
    model, training = knobs.model, knobs.training
    args = [f"--tensor-model-parallel-size {knobs.tp}", *pipeline_arguments(knobs),
            f"--context-parallel-size {knobs.cp}"]
    if knobs.cp > 1 and knobs.cp_comm_type != "p2p":
        args.append(f"--cp-comm-type {knobs.cp_comm_type}")
    if uses_tp_pp_dp_mapping(knobs.rank_order):
        args.append("--use-tp-pp-dp-mapping")
    if model.is_moe:
        args += [f"--expert-model-parallel-size {knobs.ep}", f"--expert-tensor-parallel-size {knobs.etp}"]
        args += moe_arguments(training)
    if knobs.sequence_parallel:
        args.append("--sequence-parallel")
    args += [f"--micro-batch-size {knobs.micro_batch}", f"--global-batch-size {training.global_batch_size}",
             f"--seq-length {training.seq_length}"]
    if not training.dropout:
        args += ["--attention-dropout 0.0", "--hidden-dropout 0.0"]
    if training.flash_attention_2:
        # Priced as flash-attn 2: core_v0.16.1 LanguageModule._set_attention_backend turns --attention-backend
        # flash into NVTE_FLASH_ATTN=1 NVTE_FUSED_ATTN=0 NVTE_UNFUSED_ATTN=0 (the default, auto, lets TE
        # prefer cuDNN on Hopper).
        args.append("--attention-backend flash")
    args += recompute_arguments(knobs)
    args += optimizer_arguments(knobs)
    if knobs.activation_offload_layers > 0:
        args.append(f"--cpu-offloading-num-layers {knobs.activation_offload_layers}")
    if training.tp_comm_overlap and knobs.tp > 1:
        args.append("--tp-comm-overlap")
    if knobs.ep_overlap:
        args.append("--overlap-moe-expert-parallel-comm")
    args += graph_arguments(knobs)
    args += precision_arguments(training)
    return args


def graph_arguments(knobs: LaunchKnobs) -> list[str]:
    training = knobs.training
    if not training.cuda_graph_scope:
        return []
    impl = cuda_graph_impl(training)
    args = [f"--cuda-graph-impl {impl}", f"--cuda-graph-scope {' '.join(training.cuda_graph_scope)}"]
    if impl == "local":
        # validate_args: a whole-iteration graph cannot read the loss back to check it for NaN.
        args.append("--no-check-for-nan-in-loss-and-grad")
        if knobs.model.is_moe and knobs.ep > 1:
            # validate_args asks for it with local graphs and EP; it pads only inference batches.
            args.append("--moe-pad-experts-for-cuda-graph-inference")
    return args


def arguments(knobs: LaunchKnobs) -> list[str]:
    """Every ``pretrain_gpt.py`` flag, one ``--flag value`` string each: model, data, plan."""
    return model_arguments(knobs.model, knobs.training) + data_arguments(knobs.model, knobs.training) \
        + plan_arguments(knobs)


def environment(knobs: LaunchKnobs) -> tuple[tuple[str, str], ...]:
    """``CUDA_DEVICE_MAX_CONNECTIONS=1`` where validate_args demands it (see the module docstring)."""
    needs_one = (knobs.tp > 1 or knobs.cp > 1) and knobs.zero_stage < 2 and not knobs.ep_overlap
    return (("CUDA_DEVICE_MAX_CONNECTIONS", "1"),) if needs_one else ()


def differences(knobs: LaunchKnobs) -> tuple[str, ...]:
    """What the launch runs differently from the priced plan (nothing, for a plan the search ranks with
    Megatron's rules, except a model part the cost model does not price)."""
    out = [f"Megatron-LM refuses or cannot run this plan: {RULES[name]}" for name in refused_rules(knobs)]
    if knobs.model.mtp_layers:
        out.append(f"the launch runs the model's {knobs.model.mtp_layers} multi-token-prediction layer(s), "
                   "which the cost model does not price")
    return tuple(out + missing_norms(knobs.model) + gelu_gate(knobs.model)
                 + synchronous_reduce_scatter(knobs, "Megatron FSDP"))


def _quote(word: str) -> str:
    return f'"{word}"' if word.startswith("$") else shlex.quote(word)


def emit(knobs: LaunchKnobs) -> Emission:
    flags = arguments(knobs)
    head = launcher(knobs) + [SCRIPT]
    argv = tuple(head) + tuple(part for flag in flags for part in shlex.split(flag))
    env = environment(knobs)
    lines = [f"# {TESTED_VERSION}: run from a Megatron-LM checkout at core_v0.16.1 on each of the "
             f"{nodes(knobs)[1]} node(s) (NODE_RANK, MASTER_ADDR set); "
             "replace --mock-data, the tokenizer, --train-iters and --lr with your data and schedule"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env]
    body = [" ".join(_quote(word) for word in head)]
    body += ["  " + " ".join(_quote(word) for word in shlex.split(flag)) for flag in flags]
    text = "\n".join(lines) + "\n" + " \\\n".join(body)
    return Emission(framework="megatron", tested_version=TESTED_VERSION, argv=argv, env=env,
                    differences=differences(knobs), text=text)
