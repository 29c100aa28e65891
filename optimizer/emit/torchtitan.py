"""torchtitan's launch for a priced plan: ``torchrun -m torchtitan.train --module M --config F --section.field V``.

Tested against torchtitan 0.3.0 (PyPI). Its configuration is Python, not TOML
(``torchtitan/config/manager.py`` ``ConfigManager.parse_args``): ``--module`` names a model package,
``--config`` a function of its ``config_registry.py`` that returns a ``Trainer.Config``, and every
other field is overridden on the command line through tyro as ``--<section>.<field> <value>``
(``torchtitan/config/configs.py``: ``TrainingConfig``, ``ParallelismConfig``, ``CompileConfig``;
``torchtitan/trainer.py`` ``Trainer.Config``). The activation-checkpointing policy is a tyro
subcommand, written last (``activation_checkpoint:full`` / ``activation_checkpoint:none``,
``torchtitan/distributed/activation_checkpoint.py`` ``ActivationCheckpointingConfig``). The model
(``Trainer.Config.model_spec``: dimensions, attention backend, MoE dispatcher, float8/MXFP8
converters) is suppressed from the command line, so a plan can run only on a model a shipped config
function builds: :data:`CONFIG_FUNCTIONS`, matched by the model's dimensions.

How the priced plan is expressed, and where torchtitan decides it:

* Batch (``trainer.py`` ``Trainer.__init__``): gradient accumulation steps =
  ``global_batch_size / (local_batch_size x dp)``, where dp = ``dp_replicate x dp_shard`` (CP ranks are
  not in the batch mesh, as in the cost model). Without PP, ``local_batch_size`` = the priced micro-batch
  and torchtitan accumulates ``global / (dp x micro-batch)`` steps. With PP, one pipeline step runs
  ``local_batch_size / pipeline_parallel_microbatch_size`` micro-batches
  (``distributed/pipeline_parallel.py`` ``_build_pipeline_schedule``), so ``local_batch_size`` =
  the priced micro-batches x micro-batch and one accumulation step.
* Pipeline split (``pipeline_parallel.py`` ``_get_pipeline_metadata``,
  ``_generate_llm_fqn_per_model_part``): ``pipeline_parallel_layers_per_stage`` = k / vpp (k = layers of a
  middle stage) makes pp x vpp virtual stages, and ``pipeline_parallel_first_stage_less_layers`` /
  ``_last_stage_less_layers`` take the priced deficit off the first and last stage
  (:func:`cost_model.stages.layers_per_stage`): Llama 3 405B's 126 layers on 16 stages are 7 + 14 x 8 + 7.
  Virtual stage i runs on rank i mod pp (``Interleaved1F1B``), so every rank holds the priced layers.
  The split is exact only when k divides into vpp chunks and, interleaved, each end stage is at most one
  layer short: torchtitan takes the whole deficit from the outermost virtual stage (405B at PP16 VP8:
  an embedding-only first virtual stage, as Megatron's accounted split), the priced chunks spread it one
  layer a chunk (rule ``torchtitan_virtual_stages``). ``ZBVZeroBubble`` and ``DualPipeV`` place the
  2 pp virtual stages in a V (rank r holds r and 2pp-1-r, ``pipeline_parallel.py``
  ``generate_stage_to_rank_mapping``), so the first rank holds both short end stages, as priced
  (:mod:`cost_model.schedules`); the schedule's name is :data:`SCHEDULE_NAMES`.
* Data parallelism (``distributed/fsdp.py``, ``models/llama3/parallelize.py``): torchtitan always wraps
  the decoder in FSDP2 over ``dp_shard x cp`` (replicated over ``dp_replicate``). ZeRO-0 is
  ``dp_replicate = dp``, ``dp_shard = 1`` (DDP-like HSDP with shard groups of one), only without CP
  (CP ranks would still shard). ZeRO-3 is ``dp_shard = dp`` with ``fsdp_reshard_after_forward =
  always``: one all-gather in forward, one in backward and one reduce-scatter per micro-batch, what the
  cost model prices (:func:`cost_model.communication.data_parallel_communication`). Hybrid sharding
  (``dp_replicate`` > 1, ZeRO-2/3) is ``data_parallel_replicate_degree = dp_replicate`` x
  ``data_parallel_shard_degree = dp / dp_replicate``: FSDP2's HSDP mesh, sharded over dp_shard x cp,
  reduce-scatter there and all-reduce over the replicas in each backward, as priced. ZeRO-2 as priced
  keeps whole weights, shards gradients and optimizer state, reduce-scatters every micro-batch and
  gathers weights once per step; FSDP2 with ``reshard_after_forward = never`` keeps whole weights from
  forward to backward (the same peak), shards gradients and optimizer state and reduce-scatters every
  micro-batch, but reshards after backward and gathers again at the next micro-batch's forward: the
  same traffic only with one micro-batch per step, so ZeRO-2 is accepted only then. ZeRO-1 (optimizer
  state alone sharded) has no torchtitan form. Without PP, torchtitan's accumulation loop
  (``trainer.py`` ``Trainer.train_step``) never turns gradient sync off, so ZeRO-0 all-reduces after every
  micro-batch where the cost model prices one all-reduce per step: accepted with one micro-batch per step
  (or with PP, below). With PP, torch's pipeline stage turns gradient sync and
  resharding off until the last micro-batch (``torch/distributed/pipelining/stage.py``), so FSDP
  accumulates unsharded gradients the cost model does not price: ZeRO-2/3 are refused with PP.
* Recompute: torchtitan 0.3.0 has ``full`` (``FullAC``: every transformer block), ``selective``
  (per-op: saves matmul/attention outputs, recomputes every second matmul) and ``memory-budget``
  (compiler). Full recompute of every layer is Megatron's ``full`` with all layers of each chunk (the
  cost model counts recomputed layers per chunk only). Megatron's selective modules and full recompute
  of only some layers per chunk have no torchtitan form (0.3.0 dropped the every-Nth-layer option).
* Precision: torchtitan trains with FSDP2 mixed precision (bf16 parameters for compute, fp32 master,
  fp32 gradient reduce and AdamW state). FP8 is a model converter set by the config function:
  ``Float8LinearConverter`` runs torchao's ``rowwise`` recipe only (no tensorwise, delayed or 1x128
  blockwise), ``MXFP8LinearConverter`` is MXFP8 (1x32 blocks, ``llama3_8b_mxfp8``).
* MoE (``config/configs.py`` ``expert_parallel_degree``): experts are split over ep ranks borrowed from
  ``dp_shard x cp x tp`` (no expert tensor parallelism: etp = 1) and FSDP-sharded over the rest; the
  shipped MoE configs dispatch with all-to-all, dropless, with grouped GEMMs.
* Sequence parallelism is a switch of torchtitan's TP (``parallelism.enable_sequence_parallel``, on by
  default): the launch sets it to the plan's, so TP with and without SP both run as priced.
* CUDA graphs: 0.3.0 captures each forward+backward step by default (``training.disable_cuda_graphs``);
  the launch turns it off unless the plan was priced with ``full_iteration`` graphs.
* Context parallelism: the shipped configs use FlexAttention, whose CP all-gathers K and V
  (``distributed/context_parallel/api.py``): the ring's bytes, not overlapped (a difference); no
  all-to-all (Ulysses) CP.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

import numpy as np

from cost_model.bf16_layers import has_bf16_layers
from cost_model.ep_overlap import ep_overlap_active
from cost_model.model_spec import ModelSpec
from cost_model.plan import FULL, SCHEDULES, SELECTIVE, PlanArrays
from cost_model.stages import layers_per_stage
from cost_model.training_spec import TrainingSpec

from .emission import Emission
from .knobs import LaunchKnobs, synchronous_reduce_scatter
from .torchrun import launcher, nodes

TESTED_VERSION = "torchtitan 0.3.0"


@dataclass(frozen=True)
class ConfigFunction:
    """A ``--module``/``--config`` pair of torchtitan 0.3.0 and the model it builds."""

    module: str
    """``--module``: the package under ``torchtitan.models``."""
    config: str
    """``--config``: the function of ``config_registry.py``."""
    precision: str
    """What its model converters run: ``bf16`` (none) or ``mxfp8``."""
    dims: tuple[int, ...]
    """The model's :data:`DIM_FIELDS`, as :class:`cost_model.model_spec.ModelSpec` names them."""
    compiles_model: bool = False
    """The config function turns on ``torch.compile`` of the model (its converter needs it)."""
    context_parallel: bool = True
    """Its attention takes context parallelism: FlexAttention does; gpt-oss's varlen attention does not
    (``distributed/full_dtensor.py`` ``validate_config``, ``context_parallel/api.py``)."""


DIM_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "ffn_hidden_size", "vocab_size",
              "num_experts", "moe_ffn_hidden_size", "mtp_layers")
"""The dimensions a plan's model is matched on (any name: a model file with Llama 3 8B's dimensions is it)."""

_LLAMA3_8B = (32, 4096, 32, 8, 14336, 128256, 0, 0, 0)
CONFIG_FUNCTIONS: tuple[ConfigFunction, ...] = (
    ConfigFunction("llama3", "llama3_8b", "bf16", _LLAMA3_8B),
    ConfigFunction("llama3", "llama3_8b_mxfp8", "mxfp8", _LLAMA3_8B, compiles_model=True),
    ConfigFunction("llama3", "llama3_70b", "bf16", (80, 8192, 64, 8, 28672, 128256, 0, 0, 0)),
    ConfigFunction("qwen3", "qwen3_30b_a3b", "bf16", (48, 2048, 32, 4, 6144, 151936, 128, 768, 0)),
    ConfigFunction("deepseek_v3", "deepseek_v3_671b", "bf16", (61, 7168, 128, 128, 18432, 129280, 256, 2048, 0)),
    ConfigFunction("gpt_oss", "gpt_oss_120b", "bf16", (36, 2880, 64, 8, 0, 201088, 128, 2880, 0),
                   context_parallel=False),
)
"""torchtitan 0.3.0's config functions a priced plan can launch with (``torchtitan/models/*/config_registry.py``).
Left out: ``llama3_405b`` (it always converts to float8 rowwise, which the cost model does not price),
``deepseek_v3_671b_float8`` (rowwise), the debug and NVFP4 configs, and models the cost model has no
preset for. The conformance test checks these dimensions against the models the functions build."""

PIPELINE_SCHEDULES = ("1f1b", "interleaved", "zb-h1", "zbv", "dualpipev")
"""The pipeline schedules torchtitan 0.3.0 runs, through torch's ``get_schedule_class``
(``torch/distributed/pipelining/schedules.py``): no ZB-H2 and no bidirectional DualPipe."""

SCHEDULE_NAMES = {"1f1b": "1F1B", "interleaved": "Interleaved1F1B", "zb-h1": "InterleavedZeroBubble",
                  "zbv": "ZBVZeroBubble", "dualpipev": "DualPipeV"}
"""``parallelism.pipeline_parallel_schedule`` of each schedule: torch's ``ScheduleInterleavedZeroBubble``
is ZB1P (ZB-H1) over several stages a rank; ``ScheduleZBVZeroBubble`` and ``ScheduleDualPipeV`` need
exactly two stages a rank, placed in a V (``generate_stage_to_rank_mapping`` style ``"v"``)."""

RULES: dict[str, str] = {
    "torchtitan_pipeline_schedule": "torch's pipelining (torchtitan 0.3.0) runs 1F1B, Interleaved1F1B, "
                                    "InterleavedZeroBubble (ZB-H1), ZBVZeroBubble and DualPipeV: no ZB-H2 and no "
                                    "bidirectional DualPipe",
    "torchtitan_zero_bubble_stages": "InterleavedZeroBubble is a multi-stage schedule: torchtitan builds it with at "
                                     "least 2 stages a rank (ZB-H1 needs vpp >= 2)",
    "torchtitan_model_config": "torchtitan 0.3.0 takes the model from a shipped config function (--config); one "
                               "exists for these dimensions and precision only for Llama 3 8B (BF16, MXFP8), Llama 3 "
                               "70B, Qwen3 30B-A3B, DeepSeek-V3 671B without MTP and gpt-oss 120B (BF16)",
    "torchtitan_zero1": "torchtitan has no ZeRO-1 (optimizer state alone sharded): FSDP2 shards weights and gradients too",
    "torchtitan_zero2_microbatches": "ZeRO-2 runs in torchtitan as FSDP2 with fsdp_reshard_after_forward=never, which "
                                     "gathers the weights again for every micro-batch: it matches the priced ZeRO-2 "
                                     "only with one micro-batch per step",
    "torchtitan_fsdp_with_pipeline": "with pipeline parallelism torch's pipeline stage accumulates unsharded gradients "
                                     "until the last micro-batch, so ZeRO-2/3 (FSDP2) with pp > 1 holds memory the plan "
                                     "was not priced with",
    "torchtitan_ddp_microbatches": "torchtitan all-reduces the gradients after every micro-batch without pipeline "
                                   "parallelism (no gradient-sync skip while accumulating): ZeRO-0 matches the "
                                   "priced once-per-step all-reduce only with one micro-batch per step or with pp > 1",
    "torchtitan_ddp_with_cp": "torchtitan always fully shards weights over the context-parallel ranks, so ZeRO-0 (DDP) "
                              "needs cp = 1",
    "torchtitan_selective_recompute": "torchtitan's selective activation checkpointing is per-op (every second matmul), "
                                      "not Megatron's selective modules",
    "torchtitan_partial_full_recompute": "torchtitan's full activation checkpointing recomputes every layer: it cannot "
                                         "recompute only some layers of each chunk",
    "torchtitan_expert_tensor_parallel": "torchtitan has no expert tensor parallelism: MoE plans need etp = 1",
    "torchtitan_expert_parallel_ranks": "torchtitan takes the expert-parallel ranks from dp_shard x cp x tp: ep must "
                                        "divide it (dp_shard is dp with ZeRO-2/3, 1 with ZeRO-0)",
    "torchtitan_virtual_stages": "torchtitan splits layers into pp x vpp equal virtual stages less the first and last "
                                 "stage's deficit, taken from the outermost virtual stage alone: the middle stages' "
                                 "layers must divide into vpp chunks and, with virtual stages, each end stage be at "
                                 "most one layer short (the priced split spreads a larger deficit one layer a chunk, "
                                 "as Megatron does)",
    "torchtitan_pipeline_microbatches": "torch's pipeline schedules need at least pp micro-batches (1F1B) and, "
                                        "interleaved, micro-batches divisible by their rounds (max(1, m // pp))",
    "torchtitan_cp_a2a": "torchtitan has no all-to-all (Ulysses) context parallelism",
    "torchtitan_tp_divides_heads": "tp divides the query and the KV heads: torchtitan shards heads without "
                                   "replicating KV heads (Decoder.update_from_config)",
    "torchtitan_tied_embeddings_pipeline": "torchtitan cannot tie the embedding and output weights across pipeline "
                                           "stages (Decoder.update_from_config)",
    "torchtitan_cp_attention": "torchtitan's context parallelism needs FlexAttention; gpt-oss's config runs varlen "
                               "attention, which it refuses with cp > 1",
    "torchtitan_sequence_divisible": "torchtitan needs the sequence divisible by tp (with sequence parallelism) times "
                                     "2 x cp (with context parallelism)",
    "torchtitan_global_batch": "torchtitan needs the global batch divisible by dp x micro-batch",
    "torchtitan_activation_offload": "torchtitan 0.3.0 has no activation offload",
    "torchtitan_optimizer_offload": "torchtitan's CPU offload (FSDP) moves weights and gradients too, not the optimizer "
                                    "alone",
    "torchtitan_moe_dispatcher": "torchtitan's shipped MoE configs dispatch with a dropless all-to-all in BF16 (no "
                                 "DeepEP/HybridEP config for these models, no drop-and-pad, no FP8 dispatch)",
    "torchtitan_ep_overlap": "torchtitan has no EP all-to-all overlap across micro-batches: no Megatron-style "
                             "merged 1F1B, and its DualPipeV runs each F&B pair's passes one after the other (no "
                             "OVERLAP_F_B callback registered outside the graph_trainer experiment)",
    "torchtitan_cuda_graphs": "torchtitan 0.3.0 captures whole forward+backward steps only (full_iteration), not with "
                              "pipeline parallelism and not with a synchronising expert-parallel dispatcher",
    "torchtitan_dropout": "torchtitan's models have no dropout",
    "torchtitan_fp4": "torchtitan 0.3.0 has no NVFP4 training recipe (its torchao converters are Float8 and MXFP8 "
                      "only); run FP4 with Megatron-LM or Megatron-Bridge",
    "torchtitan_bf16_layers": "torchtitan 0.3.0 converts every decoder Linear to Float8/MXFP8 alike (its "
                              "quantize.linear filter_fqns names modules, not first/last layers); BF16 first/last "
                              "layers run with Megatron-LM or Megatron-Bridge",
    "torchtitan_grad_dtype": "torchtitan reduces and keeps gradients in fp32 (training.mixed_precision_reduce)",
    "torchtitan_optimizer_state": "torchtitan's shipped configs run AdamW with fp32 moments",
    "torchtitan_attention": "torchtitan's shipped configs run causal FlexAttention (fused, no materialised scores), "
                            "priced as its stack's flash-attn 2 rate: a run stated with another kernel "
                            "(training.flash_attention_2: false) is not what it launches",
}
"""torchtitan's start-up rules and what it cannot express, enforced by the search (name -> sentence)."""


def config_function(model: ModelSpec, training: TrainingSpec) -> ConfigFunction | None:
    """The shipped config function that builds ``model`` in ``training``'s precision, or None."""
    precision = training.fp8_recipe if training.precision == "fp8" else training.precision
    dims = tuple(int(getattr(model, name)) for name in DIM_FIELDS)
    for candidate in CONFIG_FUNCTIONS:
        if candidate.dims == dims and candidate.precision == precision:
            return candidate
    return None


def dp_shard_degree(zero_stage: np.ndarray | int, dp: np.ndarray | int,
                    dp_replicate: np.ndarray | int = 1) -> np.ndarray | int:
    """torchtitan's ``data_parallel_shard_degree``: dp / dp_replicate with ZeRO-2/3 (FSDP2, HSDP when
    dp_replicate > 1), 1 with ZeRO-0 (replicated)."""
    if isinstance(dp, np.ndarray):
        return np.where(np.asarray(zero_stage) >= 2, dp // np.maximum(dp_replicate, 1), 1)
    return dp // max(int(dp_replicate), 1) if zero_stage >= 2 else 1


def stage_weights(num_layers: int, pp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Middle-stage layers k and torchtitan's first/last ``_stage_less_layers`` giving the priced split."""
    first, k, last = layers_per_stage(num_layers, pp)
    return k, np.where(pp > 1, k - first, 0), np.where(pp > 1, k - last, 0)


def violations(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, *, cp_comm_type: str = "p2p",
               **_: Any) -> dict[str, np.ndarray]:
    """For each of :data:`RULES`, True where torchtitan 0.3.0 refuses the plan or cannot run it as priced."""
    n = len(plans)
    every = np.ones(n, dtype=bool)
    none = np.zeros(n, dtype=bool)
    tp, pp, dp, cp, ep, vpp, mbs = plans.tp, plans.pp, plans.dp, plans.cp, plans.ep, plans.vpp, plans.micro_batch
    zero = plans.zero_stage
    gbs = training.global_batch_size
    m = gbs // np.maximum(dp * mbs, 1)
    k, first_less, last_less = stage_weights(model.num_layers, pp)
    chunk = -(-k // vpp)
    shard = dp_shard_degree(zero, dp, plans.dp_replicate)
    sp_div = np.where(plans.sequence_parallel & (tp > 1), tp, 1)
    cp_div = np.where(cp > 1, 2 * cp, 1)
    rounds = np.maximum(1, m // pp)
    scope = training.cuda_graph_scope
    moe = model.is_moe
    chosen = config_function(model, training)
    return {
        "torchtitan_pipeline_schedule": ~np.isin(plans.schedule, [SCHEDULES.index(name)
                                                                   for name in PIPELINE_SCHEDULES]),
        "torchtitan_zero_bubble_stages": (plans.schedule == SCHEDULES.index("zb-h1")) & (vpp < 2),
        "torchtitan_model_config": every if chosen is None else none,
        "torchtitan_zero1": zero == 1,
        "torchtitan_zero2_microbatches": (zero == 2) & (m > 1),
        "torchtitan_fsdp_with_pipeline": (zero >= 2) & (pp > 1),
        "torchtitan_ddp_microbatches": (zero == 0) & (pp == 1) & (m > 1),
        "torchtitan_ddp_with_cp": (zero == 0) & (cp > 1),
        "torchtitan_selective_recompute": plans.recompute == SELECTIVE,
        "torchtitan_partial_full_recompute": ((plans.recompute == FULL) & (plans.recompute_num_layers >= 0)
                                              & (plans.recompute_num_layers < chunk)),
        "torchtitan_expert_tensor_parallel": (plans.etp != 1) if moe else none,
        "torchtitan_expert_parallel_ranks": ((shard * cp * tp) % ep != 0) if moe else none,
        "torchtitan_virtual_stages": (pp > 1) & (vpp > 1) & ((k % vpp != 0) | (np.maximum(first_less, last_less)
                                                                               > np.minimum(1, k // vpp))),
        "torchtitan_pipeline_microbatches": (pp > 1) & np.where(vpp > 1, m % rounds != 0, m < pp),
        "torchtitan_cp_a2a": (cp > 1) & (cp_comm_type == "a2a"),
        "torchtitan_tp_divides_heads": (model.num_attention_heads % plans.tp != 0)
                                       | (model.num_kv_heads % plans.tp != 0),
        "torchtitan_tied_embeddings_pipeline": (pp > 1) & model.tie_embeddings,
        "torchtitan_cp_attention": (cp > 1) & (chosen is not None and not chosen.context_parallel),
        "torchtitan_sequence_divisible": training.seq_length % (sp_div * cp_div) != 0,
        "torchtitan_global_batch": gbs % (dp * mbs) != 0,
        "torchtitan_activation_offload": plans.activation_offload_layers > 0,
        "torchtitan_optimizer_offload": plans.optimizer_offload.astype(bool),
        "torchtitan_moe_dispatcher": every if moe and (training.moe_token_dispatcher != "alltoall"
                                                       or training.moe_pad_to_capacity
                                                       or training.moe_dispatch_fp8) else none,
        "torchtitan_ep_overlap": ep_overlap_active(model, training, plans),
        "torchtitan_cuda_graphs": (none if not scope else every if scope != ("full_iteration",)
                                   else (pp > 1) | ((ep > 1) if moe else none)),
        "torchtitan_dropout": every if training.dropout else none,
        "torchtitan_fp4": every if training.precision == "fp4" else none,
        "torchtitan_bf16_layers": every if has_bf16_layers(training) else none,
        "torchtitan_grad_dtype": every if training.grad_dtype != "fp32" else none,
        "torchtitan_optimizer_state": (every if training.optimizer == "sgd" or training.optimizer_moments_dtype != "fp32"
                                       else none),
        "torchtitan_attention": (every if not (training.flash_attention and training.causal)
                                 or training.flash_attention_2 is False else none),
    }


def _flag(name: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        section, _, field = name.rpartition(".")
        return [f"--{name}" if value else f"--{section}.no-{field.replace('_', '-')}"]
    return [f"--{name}", str(value)]


def overrides(knobs: LaunchKnobs) -> list[tuple[str, Any]]:
    """(``section.field``, value) of every field the launch sets, in ``Trainer.Config`` order."""
    training = knobs.training
    pipelined = knobs.pp > 1
    local_batch = knobs.micro_batch * knobs.num_microbatches if pipelined else knobs.micro_batch
    async_tp = training.tp_comm_overlap and knobs.tp > 1
    chosen = config_function(knobs.model, training)
    fields: list[tuple[str, Any]] = [
        ("training.local_batch_size", local_batch),
        ("training.global_batch_size", training.global_batch_size),
        ("training.seq_len", training.seq_length),
        ("training.disable_cuda_graphs", "full_iteration" not in training.cuda_graph_scope),
        ("parallelism.data_parallel_replicate_degree", knobs.dp if knobs.zero_stage < 2 else knobs.dp_replicate),
        ("parallelism.data_parallel_shard_degree", dp_shard_degree(knobs.zero_stage, knobs.dp, knobs.dp_replicate)),
        ("parallelism.fsdp_reshard_after_forward", "always" if knobs.zero_stage == 3 else "never"),
        ("parallelism.tensor_parallel_degree", knobs.tp),
        ("parallelism.enable_sequence_parallel", bool(knobs.sequence_parallel and knobs.tp > 1)),
        ("parallelism.pipeline_parallel_degree", knobs.pp),
    ]
    if pipelined:
        k, first_less, last_less = (int(np.asarray(x).reshape(-1)[0])
                                   for x in stage_weights(knobs.model.num_layers, np.array([knobs.pp])))
        fields += [
            ("parallelism.pipeline_parallel_schedule", SCHEDULE_NAMES.get(knobs.schedule, knobs.schedule)),
            ("parallelism.pipeline_parallel_layers_per_stage", k // knobs.vpp),
            ("parallelism.pipeline_parallel_first_stage_less_layers", first_less),
            ("parallelism.pipeline_parallel_last_stage_less_layers", last_less),
            ("parallelism.pipeline_parallel_microbatch_size", knobs.micro_batch),
        ]
    fields.append(("parallelism.context_parallel_degree", knobs.cp))
    if knobs.model.is_moe:
        fields.append(("parallelism.expert_parallel_degree", knobs.ep))
    compiles = async_tp or (chosen is not None and chosen.compiles_model)
    fields += [("compile.enable", compiles)]
    if compiles:
        fields += [("compile.components", "model,loss"), ("compile.enable_async_tensor_parallel", async_tp)]
    return fields


def activation_checkpoint(knobs: LaunchKnobs) -> str:
    """The tyro subcommand of the priced recompute (the rules leave none or full of every layer)."""
    return "activation_checkpoint:full" if knobs.recompute == "full" else "activation_checkpoint:none"


def refused(knobs: LaunchKnobs) -> list[str]:
    """The sentences of the rules this one plan breaks (an evaluated plan is not filtered by the search)."""
    found = violations(knobs.model, knobs.training, knobs.plan_arrays(), cp_comm_type=knobs.cp_comm_type)
    return [RULES[name] for name, mask in found.items() if mask[0]]


def differences(knobs: LaunchKnobs) -> tuple[str, ...]:
    """What torchtitan runs differently from the priced plan: first what it cannot run at all (rules this
    plan breaks), then what it runs otherwise where the rules let it through."""
    training = knobs.training
    notes = [f"cannot run as priced: {sentence}" for sentence in refused(knobs)]
    notes += ["torchtitan's loss is chunked cross entropy (ChunkedLossWrapper): the logits are never whole, so the "
             "last stage needs less memory than priced"]
    if knobs.cp > 1:
        notes.append("FlexAttention context parallelism all-gathers K and V: the priced ring's bytes, not overlapped "
                     "with attention, and each rank holds the whole sequence's K and V while attention runs")
    chosen = config_function(knobs.model, training)
    if chosen is not None and chosen.compiles_model or training.tp_comm_overlap and knobs.tp > 1:
        notes.append("the model runs under torch.compile (needed by MXFP8 or async TP): fused kernels the cost model "
                     "does not price")
    if chosen is not None and chosen.precision == "mxfp8":
        notes.append("llama3_8b_mxfp8 converts every Linear to MXFP8, the output layer (lm_head) too, which the cost "
                     "model prices in BF16")
    if not training.overlap_grad_reduce or not training.overlap_param_gather:
        notes.append("FSDP2 always overlaps the gradient reduce and weight gather, priced here as not overlapped")
    if "full_iteration" in training.cuda_graph_scope:
        notes.append("torchtitan captures one CUDA graph per forward+backward micro-batch, Megatron one per iteration")
    if training.fuses_gradient_accumulation and knobs.num_microbatches > 1:
        notes.append("torchtitan has no fused weight-gradient accumulation (priced as Megatron's "
                     "gradient_accumulation_fusion): autograd adds each later micro-batch's gradient into the last, "
                     "a memory-bound pass per micro-batch not priced")
    return tuple(notes + synchronous_reduce_scatter(knobs, "FSDP2"))


def _lines(knobs: LaunchKnobs) -> list[list[str]]:
    """The command in lines: torchrun with the trainer and its config, one line per override, the recompute policy."""
    chosen = config_function(knobs.model, knobs.training)
    module, config = (chosen.module, chosen.config) if chosen else ("<no torchtitan model>", "<no config>")
    head = launcher(knobs) + ["-m", "torchtitan.train", "--module", module, "--config", config]
    return [head] + [_flag(name, value) for name, value in overrides(knobs)] + [[activation_checkpoint(knobs)]]


def _quote(word: str) -> str:
    """Shell quoting that leaves the launcher's ``$NODE_RANK``/``$MASTER_ADDR`` for the shell to expand."""
    return f'"{word}"' if word.startswith("$") else shlex.quote(word)


def argv(knobs: LaunchKnobs) -> list[str]:
    """The command as a list: torchrun, then torchtitan's trainer with the plan's overrides."""
    return [word for line in _lines(knobs) for word in line]


def emit(knobs: LaunchKnobs) -> Emission:
    per_node, count = nodes(knobs)
    header = f"# {TESTED_VERSION}: {knobs.world_size} GPUs, {count} node(s) of {per_node}"
    if count > 1:
        header += " (set NODE_RANK and MASTER_ADDR on each)"
    body = " \\\n  ".join(" ".join(_quote(word) for word in line) for line in _lines(knobs))
    return Emission(framework="torchtitan", tested_version=TESTED_VERSION, argv=tuple(argv(knobs)),
                    differences=differences(knobs), text=header + "\n" + body)
