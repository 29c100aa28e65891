"""Memory per rank of every pipeline stage, with its breakdown.

Model states (bytes per parameter held by the rank):

* weights: 2 (bf16), plus 1 for Transformer Engine's cached FP8 weight copy when GEMMs run in FP8 (1.125, row- and column-wise NVFP4, in FP4);
  except where the weights themselves are FP8 (:func:`fp8_primary_weights`): 1, or 2 for MXFP8;
* gradients: 4 for fp32 main grads (Megatron with ``--bf16``) or 2 for bf16;
* optimizer: 12 for Adam (fp32 master, m, v), 8 for SGD with momentum.

This gives Megatron-LM's ``theoretical_memory_usage.py`` figures: 18 bytes/param without the
distributed optimizer and 6 + 12/d with it; and the classic 16 bytes/param of mixed-precision Adam with
bf16 gradients (ZeRO paper, Rajbhandari et al. 2020, section 3.1: 2 + 2 + 12).

ZeRO stages shard over the ranks that hold the same parameters: dp x cp for dense parameters
(Megatron's data-parallel-with-context group) and the expert-data-parallel ranks for experts. Stage 1
shards the optimizer, 2 also the gradients, 3 also the weights (FSDP), which then needs the gathered
weights of the layer being computed and the one being prefetched. With hybrid sharding (HSDP,
``dp_replicate`` > 1) they shard over a shard group of dp x cp / dp_replicate ranks
(experts: edp / dp_replicate) and each shard is held by dp_replicate ranks.

Parameters on a stage are split by tensor parallelism except what Megatron replicates (norms, MLA's
down-projections, row-parallel biases, the router, learned position table), by expert parallelism x
expert-TP for routed experts, and Megatron pads the vocabulary to a multiple of 128 x tp. The first stage
holds the embedding, the last the LM head (a copy of the embedding when tied and pp > 1, kept in sync by
Megatron's embedding group).

Activations come from :mod:`cost_model.activations` times the layer-micro-batches in flight from
:mod:`cost_model.stages` (each schedule's count: :mod:`cost_model.schedules`), plus, for the schedules
that defer the weight-gradient pass, what those pending passes keep beyond the layers' own activations.
DualPipe keeps two stages' layer parameters on every rank (their gradients and optimizer states with
them, sharded as any others). Activation offload (Megatron ``--cpu-offloading-num-layers N``, pp = 1) keeps
the other layers' activations plus the one whose copy to or from the host is under way.

What is predicted: peak RESERVED device memory, what nvidia-smi shows for the process less the CUDA
context (which the presets' ``memory_gib`` already leaves out). Tensors alive at the peak are what
``torch.cuda.max_memory_allocated`` counts; the process holds more (:class:`MemoryBreakdown`):

* ``transient``: the working set of one layer's backward (its full activations, as if nothing were
  saved: the recomputed layer, or the gradients of the widest ops), the logit-sized buffers of the loss
  on the last stage, ZeRO-3's gathered layers (allocated);
* ``allocator_cache``: the caching allocator's reserved-but-free blocks, ``allocator_fragmentation`` x
  the transient memory (ZeRO-3's gathered layers, of one size, excepted);
  ``torch.cuda.max_memory_reserved`` = allocated + this + the workspaces;
* ``workspaces``: ``workspace_reserve_gib``, cuBLAS/cuDNN/Transformer Engine workspaces, whatever the plan;
* ``communicator_buffers``: NCCL's buffers, ``nccl_buffer_mib_per_communicator`` x the communicators the
  plan's rank uses (:func:`nccl_communicators`), allocated by NCCL outside PyTorch's allocator.

``other`` is their sum. The one fit rule is :func:`fits_in_memory` (no headroom: the prediction already
is what the GPU must hold). Against the 12 published peak-reserved figures (torchtitan on H100, run with
``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``, its ``run_llama_train.sh``) the reserved memory is
2.6-3.3% low on the 8B runs, 3-9% low on the 70B runs and 3.4-16% low on the 405B pipeline-parallel runs
(median 4.5%; the context-parallel 405B runs grow with cp faster than the model, 16% low at cp 8).

What is alive at once: the loss phase (saved logits and their gradients) and one layer's backward working
set never are (the loss's backward frees its buffers first), so the head stage holds the larger of the
two. Pipeline engines that keep buffers per micro-batch (:func:`pipeline_stage_buffer_bytes`,
``torch.distributed.pipelining``) add them to the activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bf16_layers import bf16_difference, bf16_layers_per_stage, bf16_training
from .activations import (ACT_BYTES, NVFP4_BYTES_PER_ELEMENT, embedding_dropout_bytes, layer_activations,
                          lm_head_bytes, logits_transient_bytes)
from .model_spec import ModelSpec
from .options import CostOptions
from .params import ParameterCounts
from .plan import PlanArrays
from .schedules import pending_weight_grad_layers
from .stacks import stack_spec
from .stages import StageLayout, recomputed_layer_share
from .training_spec import TrainingSpec

GIB = float(2**30)
WEIGHT_BYTES = 2

MEMORY_KIND = "peak_reserved"
"""Which memory the predictions are (``memory_kind`` in JSON): the peak RESERVED device memory per GPU,
what nvidia-smi shows less the CUDA context (``torch.cuda.max_memory_reserved`` plus NCCL's buffers),
not the allocated tensors (``torch.cuda.max_memory_allocated``, :attr:`MemoryBreakdown.allocated`)."""

MEMORY_HEADROOM = 0.0
"""Share of the GPU's usable memory a plan must leave free to fit: none. The prediction is the peak
device memory the job holds (:func:`memory_breakdown`: tensors, the caching allocator's reserve,
workspaces and NCCL buffers), i.e. what nvidia-smi shows less the CUDA context, which the presets'
``memory_gib`` already subtracts. A headroom on top would refuse layouts that run: NVIDIA's GB200
recipes (Megatron-Bridge 25.11 / 26.02, Llama 3 70B and 405B) run at 97-99% of usable memory under this
model. The one rule for search, evaluate, explain and validate is :func:`fits_in_memory`; a user who
wants a margin passes ``--headroom``."""


def memory_limit_bytes(gpu_memory_gib: float, headroom: float = MEMORY_HEADROOM) -> float:
    """Most memory a plan may need on a GPU with ``gpu_memory_gib`` usable (GiB, CUDA context already
    out) and the given headroom (a share in [0, 1))."""
    return float(gpu_memory_gib) * GIB * (1.0 - headroom)


def fits_in_memory(memory_bytes: np.ndarray | float, gpu_memory_gib: float,
                   headroom: float = MEMORY_HEADROOM) -> np.ndarray:
    """Whether plans of predicted peak ``memory_bytes`` (per GPU, :class:`MemoryBreakdown` ``total``)
    fit: memory <= (1 - headroom) x usable. The one fit rule of search, evaluate, explain and validate."""
    return np.asarray(memory_bytes) <= memory_limit_bytes(gpu_memory_gib, headroom)


def fp8_primary_weights(training: TrainingSpec, plans: PlanArrays) -> np.ndarray:
    """Plans whose weights are kept in FP8 only, with no bf16 copy (booleans over plans).

    Megatron-Core's ``--fp8-param-gather`` (Transformer Engine ``fp8_model_init``: "keep the compute
    param in fp8, do not use any other intermediate dtype") is what the NeMo and Megatron-Bridge FP8
    recipes run: ``bf16_with_fp8_mixed``, ``bf16_with_fp8_current_scaling_mixed`` and
    ``bf16_with_mxfp8_mixed`` all set ``fp8_param_gather = True`` (NeMo
    ``nemo/collections/llm/recipes/precision/mixed_precision.py``, Megatron-Bridge
    ``src/megatron/bridge/training/mixed_precision.py``). The fp32 master copy lives in the distributed
    optimizer or Megatron-FSDP, which the option needs: ZeRO >= 1. Stacks without it
    (:attr:`cost_model.stacks.StackSpec.fp8_param_gather`: torchtitan's Float8, Megatron-LM 2021,
    DeepSpeed) keep bf16 weights and cast them per GEMM.
    """
    # Megatron-LM validate_args: with optimizer CPU offload, --fp8-param-gather needs --fp8-recipe delayed.
    offload_conflict = plans.optimizer_offload & (training.fp8_recipe != "delayed")
    return ((training.precision == "fp8") & stack_spec(training.stack).fp8_param_gather & (plans.zero_stage >= 1)
            & ~offload_conflict)


def weight_bytes_per_param(training: TrainingSpec, plans: PlanArrays) -> tuple[np.ndarray, np.ndarray]:
    """(bytes of the weights as sharded by ZeRO-3, bytes of an unsharded FP8 cache) per parameter, per plan.

    bf16 weights: 2, and with FP8 GEMMs Transformer Engine's cached FP8 copy, 1 (ZeRO-3 gathers layer by
    layer and keeps no cache). FP8 primary weights (:func:`fp8_primary_weights`): 1 for per-tensor
    scaling (the transpose Hopper's FP8 GEMMs need is made in backward and freed,
    ``keep_fp8_transpose_cache`` False), 2 for MXFP8, whose 1x32 blocks cannot be transposed, so
    Transformer Engine keeps a row-wise and a column-wise copy (``MXFP8Tensor``). NVFP4 GEMMs cache the
    weight's row-wise and column-wise NVFP4 copies (``NVFP4Tensor``, 16x16 blocks): 2 x 0.5625 bytes."""
    primary = fp8_primary_weights(training, plans)
    fp8_weight = 2.0 if training.fp8_recipe == "mxfp8" else 1.0
    sharded = np.where(primary, fp8_weight, float(WEIGHT_BYTES))
    quantized_cache = {"fp8": 1.0, "fp4": 2 * NVFP4_BYTES_PER_ELEMENT}.get(training.precision, 0.0)
    cache = np.where(primary, 0.0, quantized_cache)
    return sharded, cache


def gathered_weight_bytes(training: TrainingSpec, plans: PlanArrays) -> np.ndarray:
    """Bytes per parameter of a weight all-gather over the data-parallel (shard) group, per plan.

    2 for bf16 weights. With FP8 primary weights (:func:`fp8_primary_weights`) per-tensor and block
    recipes gather the FP8 bytes, 1: the distributed optimizer's parameter buffer is ``torch.uint8``
    (Megatron-Core ``distributed_data_parallel.py``, "its actual data is stored in the form of a torch
    uint8 tensor"). MXFP8 gathers bf16, 2: ``reuse_grad_buf_for_mxfp8_param_ag`` (which Megatron-Bridge
    requires with MXFP8 param gather, ``MixedPrecisionConfig.finalize``) all-gathers into the gradient
    buffer viewed as bf16 and quantizes after (``param_and_grad_buffer.py``, "Create a shared buffer for
    param AG and grad RS")."""
    primary = fp8_primary_weights(training, plans)
    return np.where(primary & (training.fp8_recipe != "mxfp8"), 1.0, float(WEIGHT_BYTES))


def padded_vocab(model: ModelSpec, plans: PlanArrays, options: CostOptions) -> np.ndarray:
    """Megatron pads V to a multiple of make_vocab_size_divisible_by x tp."""
    multiple = options.make_vocab_size_divisible_by * plans.tp
    return -(-model.vocab_size // multiple) * multiple


def pipeline_stage_buffer_bytes(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, stages: StageLayout,
                                vocab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(step-long pipeline buffers, the last stage's kept outputs) per rank, (plans, 3), for stacks whose
    pipeline keeps buffers per micro-batch (:attr:`cost_model.stacks.StackSpec.pipeline_stage_buffers`,
    ``torch.distributed.pipelining``); zeros elsewhere and without pipeline parallelism.

    Each of the rank's ``chunks`` model chunks holds, for the m micro-batches of the step, a receive
    buffer of its input unless it is the first stage (``PipelineStage._prepare_forward_infra``) and a
    receive buffer of its output gradient unless it is the last (``_prepare_backward_infra``); the input
    buffers of the micro-batches in flight are their first layer's saved input, already counted. Each
    in-flight micro-batch's stage output stays in ``fwd_cache`` until its backward. A stage boundary
    tensor is one layer input (:func:`cost_model.activations.layer_input_bytes`: b x s/cp x h, split by
    sequence parallelism). The last stage appends every micro-batch's output, the activation-dtype
    logits (b x s/cp x V/tp: loss parallel keeps them vocabulary-sharded), to ``output_chunks``
    (``forward_one_chunk``), held until the step ends."""
    zeros = np.zeros_like(stages.layers)
    if not stack_spec(training.stack).pipeline_stage_buffers:
        return zeros, zeros
    piped = stages.exists & (plans.pp[:, None] > 1)
    m = np.maximum(plans.num_microbatches(training.global_batch_size), 1)[:, None].astype(float)
    chunks = (plans.vpp if stages.chunks is None else stages.chunks)[:, None].astype(float)
    boundary = layer_activations(model, training, plans).layer_input[:, None]
    in_flight = stages.in_flight_microbatches
    receiving = chunks - stages.has_embedding
    sending = chunks - stages.has_lm_head
    buffers = (receiving * np.maximum(m - in_flight, 0.0) + sending * (m + in_flight)) * boundary
    logits = ACT_BYTES * (plans.micro_batch * training.seq_length / plans.cp)[:, None] * vocab[:, None] / plans.tp[:, None]
    outputs = np.where(stages.has_lm_head, m * logits, 0.0)
    return np.where(piped, buffers, 0.0), np.where(piped, outputs, 0.0)


@dataclass
class StageParameters:
    """Parameters one rank of each stage holds, (plans, 3 stages)."""

    dense: np.ndarray
    """Non-expert parameters (sharded by ZeRO over dp x cp)."""
    expert: np.ndarray
    """Routed-expert parameters (sharded by ZeRO over expert-data-parallel ranks)."""
    largest_layer: np.ndarray
    """Parameters of the largest layer on one rank, unsharded (FSDP gathers layer by layer)."""

    @property
    def total(self) -> np.ndarray:
        return self.dense + self.expert


def stage_parameters(model: ModelSpec, counts: ParameterCounts, plans: PlanArrays, stages: StageLayout,
                     options: CostOptions) -> StageParameters:
    t = plans.tp[:, None].astype(float)
    h = model.hidden_size
    mlp_row_bias = h if model.linear_bias else 0
    replicated_attention = counts.attention_tp_replicated + counts.layer_norms
    dense_layer = (counts.dense_layer - replicated_attention - mlp_row_bias) / t + replicated_attention + mlp_row_bias
    moe_shared = counts.attention + counts.shared_experts - counts.attention_tp_replicated
    moe_nonexpert = moe_shared / t + replicated_attention + counts.router + mlp_row_bias
    experts_per_rank = model.num_experts * counts.expert / (plans.ep * plans.etp)[:, None]

    vocab = padded_vocab(model, plans, options)[:, None].astype(float)
    positions = model.max_position_embeddings * h if model.position_embedding_type == "learned" else 0
    embedding = vocab * h / t + positions
    head = vocab * h / t + counts.final_norm
    if model.tie_embeddings:
        head = np.where(plans.pp[:, None] > 1, head, counts.final_norm)

    # DualPipe keeps two stages' layers (cost_model.schedules.parameter_copies); embedding and head once.
    copies = 1.0 if stages.parameter_copies is None else stages.parameter_copies
    dense = (copies * (stages.dense_layers * dense_layer + stages.moe_layers * moe_nonexpert)
             + np.where(stages.has_embedding, embedding, 0.0) + np.where(stages.has_lm_head, head, 0.0))
    expert = copies * stages.moe_layers * experts_per_rank
    largest = np.maximum(np.where(stages.dense_layers > 0, dense_layer, 0.0),
                         np.where(stages.moe_layers > 0, moe_nonexpert + experts_per_rank, 0.0))
    return StageParameters(dense=dense, expert=expert, largest_layer=largest)


def nccl_communicators(model: ModelSpec, plans: PlanArrays) -> np.ndarray:
    """NCCL communicators one rank moves data on (each holds its own buffers, allocated at the first
    collective since NCCL 2.22's lazy connection, ``NCCL_RUNTIME_CONNECT``): tensor, context, data
    (dp x cp, Megatron's gradient group) and pipeline (send/recv) parallel groups of more than one rank,
    and for MoE models the expert, expert-tensor and expert-data-parallel groups. Megatron creates more
    groups (model-parallel, embedding, position-embedding) that carry no traffic in a training step."""
    count = ((plans.tp > 1).astype(float) + (plans.cp > 1) + (plans.dp * plans.cp > 1) + (plans.pp > 1))
    # Hybrid sharding adds the shard group and the replica group (Megatron-Core's intra- and
    # inter-instance groups); the whole dp x cp group stays (loss and gradient-norm reductions).
    hybrid = (plans.dp_replicate > 1) & (plans.zero_stage >= 1)
    count = count + 2 * hybrid
    if model.is_moe:
        count = count + (plans.ep > 1) + (plans.etp > 1) + (plans.expert_data_parallel > 1) + 2 * hybrid
    return count


@dataclass
class MemoryBreakdown:
    """Bytes per rank, (plans, 3 stages)."""

    weights: np.ndarray
    gradients: np.ndarray
    optimizer: np.ndarray
    activations: np.ndarray
    transient: np.ndarray
    """Allocated at the peak beside the saved activations: one layer's backward working set, the loss's
    logit buffers, ZeRO-3's gathered layers."""
    allocator_cache: np.ndarray
    """Reserved by PyTorch's caching allocator but not allocated at the peak (fragmentation)."""
    workspaces: np.ndarray
    """cuBLAS/cuDNN/Transformer Engine workspaces (in PyTorch's allocator)."""
    communicator_buffers: np.ndarray
    """NCCL buffers (outside PyTorch's allocator)."""
    offloaded_bytes: np.ndarray
    """Activation bytes per micro-batch that go to host memory and come back (activation offload)."""

    @property
    def other(self) -> np.ndarray:
        """Everything beside model states and saved activations."""
        return self.transient + self.allocator_cache + self.workspaces + self.communicator_buffers

    @property
    def allocated(self) -> np.ndarray:
        """Peak allocated memory: ``torch.cuda.max_memory_allocated``."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.transient

    @property
    def allocator_reserved(self) -> np.ndarray:
        """Peak reserved by PyTorch's allocator: ``torch.cuda.max_memory_reserved`` (torchtitan's logged
        ``memory``): allocated + allocator cache + workspaces, without NCCL's buffers."""
        return self.allocated + self.allocator_cache + self.workspaces

    @property
    def total(self) -> np.ndarray:
        """Peak reserved device memory, what nvidia-smi shows less the CUDA context: the predicted
        memory of a plan, and what :func:`fits_in_memory` compares with the usable memory."""
        return self.allocator_reserved + self.communicator_buffers

    def of_kind(self, kind: str) -> np.ndarray:
        """The quantity a measurement of ``kind`` reads, to compare like with like: ``nvidia-smi`` (the
        process's device memory less the CUDA context: :attr:`total`), ``reserved``
        (``torch.cuda.max_memory_reserved``, torchtitan's logged memory: :attr:`allocator_reserved`) or
        ``allocated`` (``torch.cuda.max_memory_allocated``: :attr:`allocated`)."""
        if kind not in MEASURED_MEMORY_KINDS:
            raise ValueError(f"memory kind must be one of {', '.join(MEASURED_MEMORY_KINDS)}, got {kind!r}")
        return {"nvidia-smi": self.total, "reserved": self.allocator_reserved, "allocated": self.allocated}[kind]


MEASURED_MEMORY_KINDS = ("nvidia-smi", "reserved", "allocated")
"""What a published memory figure can be: see :meth:`MemoryBreakdown.of_kind`."""


def memory_breakdown(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, stages: StageLayout,
                     params: StageParameters, options: CostOptions) -> MemoryBreakdown:
    zero = plans.zero_stage[:, None]
    # ZeRO shards over the shard group: all of dp x cp, or 1/dp_replicate of it with hybrid sharding.
    dense_group = plans.shard_group[:, None].astype(float)
    expert_group = plans.expert_shard_group[:, None].astype(float)

    def sharded(stage_at_least: int) -> np.ndarray:
        """Parameters per rank when ZeRO at or above ``stage_at_least`` shards them."""
        on = zero >= stage_at_least
        return (np.where(on, params.dense / dense_group, params.dense)
                + np.where(on, params.expert / expert_group, params.expert))

    weight_bytes, fp8_cache = (b[:, None] for b in weight_bytes_per_param(training, plans))
    weights = weight_bytes * sharded(3) + fp8_cache * np.where(zero >= 3, 0.0, params.total)
    gradients = training.grad_bytes * sharded(2)
    optimizer = training.optimizer_state_bytes * sharded(1)
    optimizer = np.where(plans.optimizer_offload[:, None], 0.0, optimizer)

    layer = layer_activations(model, training, plans)
    moe_share = np.divide(stages.moe_layers, stages.layers, out=np.zeros_like(stages.layers),
                          where=stages.layers > 0)
    kept = (1 - moe_share) * layer.dense_full[:, None] + moe_share * layer.moe_full[:, None]
    working = (np.where(stages.dense_layers > 0, layer.dense_no_recompute[:, None], 0.0))
    working = np.maximum(working, np.where(stages.moe_layers > 0, layer.moe_no_recompute[:, None], 0.0))

    # Full recompute keeps only the input of the recomputed layers of each chunk (Megatron 'block').
    recomputed_share = recomputed_layer_share(plans, stages)
    per_layer = recomputed_share * layer.layer_input[:, None] + (1 - recomputed_share) * kept
    # Activation offload (pp = 1: one micro-batch in flight) keeps the layers it does not offload
    # plus the one whose copy is under way.
    offloaded = np.minimum(plans.activation_offload_layers[:, None].astype(float), stages.layers)
    resident = np.where(offloaded > 0, np.maximum(stages.layers - offloaded + 1, 1.0), stages.layers)
    resident_share = np.divide(resident, stages.layers, out=np.ones_like(resident), where=stages.layers > 0)
    activations = stages.in_flight_layers * per_layer * np.minimum(resident_share, 1.0)
    bf16_counts = bf16_layers_per_stage(training, stages)
    if bf16_counts.any():  # first/last layers kept in BF16 in an FP8/FP4 run (cost_model.bf16_layers)
        bf16_layer = layer_activations(model, bf16_training(training), plans)
        more = bf16_difference(bf16_counts, stages, (layer.dense_full, layer.moe_full),
                               (bf16_layer.dense_full, bf16_layer.moe_full))
        activations = activations + stages.in_flight_microbatches * (1 - recomputed_share) * more
        # Their weights keep no quantized copy, and stay BF16 where the others are FP8 primary weights.
        bf16_params = bf16_counts * params.largest_layer
        weights = (weights - fp8_cache * np.where(zero >= 3, 0.0, bf16_params)
                   + (WEIGHT_BYTES - weight_bytes) * bf16_params / np.where(zero >= 3, dense_group, 1.0))
    # A deferred weight-gradient pass (zero-bubble, DualPipe) keeps its GEMM inputs and output gradients
    # beyond what the layer kept from forward (cost_model.schedules, "The split backward's memory").
    weight_grad_set = (1 - moe_share) * layer.dense_no_recompute[:, None] + moe_share * layer.moe_no_recompute[:, None]
    activations = activations + (pending_weight_grad_layers(plans.schedule, stages.layers, plans.vpp)
                                 * np.maximum(0.0, weight_grad_set - per_layer))

    vocab = padded_vocab(model, plans, options).astype(float)
    activations = activations + np.where(
        stages.has_embedding,
        stages.in_flight_microbatches * embedding_dropout_bytes(model, training, plans)[:, None], 0.0)
    head = np.where(stages.has_lm_head, lm_head_bytes(model, training, plans, vocab)[:, None], 0.0)
    activations = activations + head

    # The loss's buffers and a layer's backward working set are never allocated together: the loss's
    # backward frees its saved logits and their gradients (LM-head backward included) before the last
    # layer's backward starts. The head stage peaks at the larger of the two phases.
    loss_phase = head + np.where(stages.has_lm_head, logits_transient_bytes(training, plans, vocab)[:, None], 0.0)
    transient = np.maximum(working, loss_phase) - head
    stage_buffers, last_stage_outputs = pipeline_stage_buffer_bytes(model, training, plans, stages, vocab)
    # torch.distributed.pipelining's step() concatenates the last stage's kept outputs after the last
    # backward, when only they (and the stage buffers) are left beside the model states.
    transient = np.maximum(transient, last_stage_outputs - activations)
    activations = activations + stage_buffers + last_stage_outputs
    fsdp_buffers = np.where(zero >= 3, 2 * weight_bytes * params.largest_layer, 0.0)
    cache = options.allocator_fragmentation * transient
    workspaces = np.full_like(activations, options.workspace_reserve_gib * GIB)
    nccl = (options.nccl_buffer_mib_per_communicator * 2**20 * nccl_communicators(model, plans))[:, None]
    return MemoryBreakdown(weights=weights, gradients=gradients, optimizer=optimizer, activations=activations,
                           transient=transient + fsdp_buffers, allocator_cache=cache, workspaces=workspaces,
                           communicator_buffers=np.broadcast_to(nccl, activations.shape).copy(),
                           offloaded_bytes=offloaded * per_layer)
