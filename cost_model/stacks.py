"""Software stacks: what the framework a run uses changes about its kernels, overlaps and efficiency.

The same layout of the same model on the same GPUs runs at different speeds under different software:
Megatron-Core with Transformer Engine fuses the norms into the GEMMs and runs cuDNN flash attention;
Megatron-LM of 2021 materialises the s x s score matrix; PyTorch FSDP1 (llm-foundry) gathers each
layer's weights on the critical path of a rate-limited prefetch. A stack is therefore an input of the
training setup (``training.stack``), and it sets

* which kernels are fused: the default of ``training.flash_attention`` (a run that states it wins), and
  whether element-wise work next to the GEMMs (norm, bias, activation, casts) is fused into them;
* which overlaps exist: tensor-parallel communication overlap, ZeRO-3/FSDP weight prefetch behind the
  previous layer's compute, data-parallel gradient reduction behind the backward pass;
* how close its kernels come to the reference stack's: ``kernel_efficiency``, the share of
  Megatron-Core + Transformer Engine's GEMM and attention throughput the stack reaches on the same
  shapes (1.0 for the reference). It is the only fitted number of a stack: ``plan-search calibrate``
  fits it on every run of that stack and stores it in ``cost_model/presets/stacks.yaml``, where each
  stack's description, sources and fitted value live.

The stack names are those of the ecosystem: ``megatron-core`` (default), ``megatron-lm-2021``,
``megatron-deepspeed``, ``deepspeed-zero3``, ``torchtitan``, ``composer-fsdp``, ``fairscale-fsdp``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from hardware.errors import InputError, read_yaml_mapping

DEFAULT_STACK = "megatron-core"


@dataclass(frozen=True)
class StackSpec:
    """One software stack, as read from ``cost_model/presets/stacks.yaml``."""

    name: str
    """Ecosystem name, e.g. ``megatron-core``."""

    description: str
    """What the stack is, with the versions the entry describes."""

    flash_attention: bool
    """Whether its attention is a fused (flash) kernel that never materialises the s x s scores; the
    default of ``training.flash_attention`` for runs that do not state it."""

    flash_attention_2: bool
    """Whether its flash kernel is FlashAttention-2 (flash-attn 2.x, PyTorch SDPA's flash backend) rather
    than one written for Hopper and Blackwell (cuDNN fused attention, FlashAttention-3): FA2 runs there
    at ``CostOptions.flash_attention_2_share`` of the GPU presets' attention rate
    (:func:`cost_model.compute.flash_attention_rates`); on Ampere it is the native kernel."""

    fused_elementwise: bool
    """Whether norms, bias, activation and FP8 casts next to the GEMMs are fused into them or into one
    kernel each (Transformer Engine's LayerNormLinear, torch.compile); False = one PyTorch kernel per
    operation, each a read and write of the activation."""

    fused_yarn_rope: bool
    """Whether a YaRN-scaled rotary embedding (HF ``rope_scaling`` ``rope_type: yarn``, GPT-OSS) runs in the
    stack's fused RoPE kernel. Megatron-Core does not: Megatron-Bridge turns ``apply_rope_fusion`` off for
    any ``position_embedding_type`` but ``rope`` and maps YaRN models to ``yarn``
    (src/megatron/bridge/utils/fusions.py ``validate_rope_fusion_compatibility`` at v0.2.0..v0.6.0;
    models/gpt_oss/gpt_oss_bridge.py), and Megatron-Core itself falls back to the unfused RoPE when the YaRN
    attention factor (``mscale``, 0.1 ln(32) + 1 = 1.35 for GPT-OSS) is not 1 (megatron/core/models/common/
    embeddings/rope_utils.py ``apply_rotary_pos_emb``, core_v0.16.0+): multiply by cos, rotate half (chunk,
    negate, concatenate), multiply by sin, add, concatenate with the pass-through part, each a kernel
    (``_apply_rotary_pos_emb_bshd``), priced as an eager stack's rotary embedding
    (:func:`cost_model.compute.unfused_rotary_bytes`). MLA applies its rotary part in its own path and is
    left out."""

    fused_cross_entropy: bool
    """Megatron's vocab-parallel fused cross entropy; False = PyTorch's log_softmax + nll_loss."""

    tp_comm_overlap: bool
    """Whether the stack can overlap tensor-parallel communication with GEMMs (Megatron
    ``--tp-comm-overlap``, torchtitan async TP)."""

    fsdp_prefetch: bool
    """Whether ZeRO-3/FSDP prefetches the next layer's weights behind the current layer's compute."""

    collective_fill_exposed: bool
    """Whether each per-layer ZeRO-2/3 collective's ring latency (the fill of NCCL's ring pipeline,
    ``(n - d)`` NVLink and ``d - 1`` network steps, :meth:`hardware.collectives.CollectiveCost.fill_latency_s`)
    stays on the critical path although its bandwidth time hides behind the compute
    (:mod:`cost_model.evaluate`).

    Set for Composer's FSDP1 (``composer-fsdp``) from llm-foundry's own benchmark tables
    (mosaicml/llm-foundry ``scripts/train/benchmarking/README.md`` @8c8dd48f): at a fixed model, layer
    and micro-batch the step grows with the GPU count by about one ring latency per per-layer collective,
    at the presets' per-step latencies (912 us per collective more at 512 than at 128 H100 ranks):

    ========  ==========  =======================  ========================  ======================
    model     sharding    collectives per step     measured step growth      ring latency x count
                                                   128 -> 512 H100           (912 us each)
    ========  ==========  =======================  ========================  ======================
    mpt-1b    ZeRO-2      48 (RS + AG per layer)   60 ms (401 -> 362 TF/s)   44 ms
    mpt-3b    ZeRO-2      64                       57 ms (419 -> 388)        58 ms
    mpt-7b    ZeRO-3      96 (2 AG + RS)           98 ms (452 -> 417)        88 ms
    ========  ==========  =======================  ========================  ======================

    while the bandwidth time of those collectives (1-3 ms per layer) is well inside each layer's compute
    (10-25 ms). Why the fill is not hidden is not settled: those large-scale runs synchronise the host
    with the GPU before every all-gather (``limit_all_gathers: true``: ``_unshard`` waits on the free event
    of the layer two back) although they prefetch both ways (``--fsdp_config_forward_prefetch true``,
    ``--fsdp_config_backward_prefetch BACKWARD_PRE`` in ``scripts/train/benchmarking/sweep.py`` @5e85bd62d;
    the smaller tables of b2a43a147 ran Composer's defaults, ``BACKWARD_POST`` and no forward prefetch), and
    all of a process group's collectives share one NCCL stream (``torch.distributed.fsdp.BackwardPrefetch``
    docstring), which leaves little slack around each collective. Other FSDP stacks leave it off: the FSDP2 (torchtitan), FairScale and Megatron-Core rows
    do not vary the GPU count at a fixed layout, and turning it on there moves them by under 1%."""

    unsharded_grad_prep: bool
    """Whether each micro-batch's backward makes memory-bound passes over every layer's whole unsharded
    gradient before its ZeRO-2/3 reduce-scatter (PyTorch FSDP1: assembled from its views, cast to the
    reduce dtype, pre-divided; :func:`cost_model.compute.unsharded_gradient_bytes`). Megatron-Core writes
    the weight gradients straight into its fp32 buffer (``gradient_accumulation_fusion``) and has none.
    The passes run on the compute stream (the assembly) and on FSDP1's post-backward stream beside the
    next layer's backward; a GEMM fills every SM and a full-grid element-wise kernel's blocks only run as
    the GEMM's retire, so their time adds to the step (:mod:`cost_model.evaluate`)."""

    overlap_grad_reduce: bool
    """Whether the data-parallel gradient reduction runs behind the backward pass (bucketed)."""

    recompute_early_stop: bool
    """Whether full recompute runs PyTorch's non-reentrant ``torch.utils.checkpoint``, which from torch 2.1
    stops the recomputed forward once it has re-saved every tensor the backward needs
    (``_StopRecomputationError`` when the recompute's saved-tensor count reaches the original's;
    pytorch/pytorch #96866, "Make early stop the default for checkpoint", March 2023, first in 2.1). A
    GEMM's inputs are saved before it runs (the autograd kernels build ``SavedVariable`` s, then
    redispatch), so the recompute of a transformer block stops before the MLP's output projection: the
    layer's ``forward_after_last_save`` (:class:`cost_model.compute.LayerTimes`) is not rerun. Composer's
    ``checkpoint_wrapper(..., CheckpointImpl.NO_REENTRANT)`` under llm-foundry's
    ``activation_checkpointing_reentrant: false``; Megatron's and DeepSpeed's own checkpoint functions
    rerun the whole block. ``training.torch_1_13`` turns it off for a run on PyTorch 1.13, whose
    non-reentrant checkpoint reran the whole function on the first unpack."""

    per_tensor_optimizer: bool
    """Whether the optimizer loops over the parameter tensors in Python, eager kernels per tensor, with
    a per-tensor device-to-host read of its step count, over FSDP1's module parameters (Composer's
    ``DecoupledAdamW`` >= 0.15 under ``use_orig_params``): the step is priced tensor by tensor on the
    slowest rank (:mod:`cost_model.per_tensor_optimizer`) instead of one memory-bound pass
    (:func:`cost_model.compute.optimizer_step_bytes`). ``training.torch_1_13`` prices the older release (one
    flat shard per wrapped layer, no read-back)."""

    fp8_param_gather: bool
    """Whether FP8 runs keep the weights in FP8 only, with the fp32 master in the distributed optimizer
    (Megatron-Core ``--fp8-param-gather``, set by every NeMo / Megatron-Bridge FP8 recipe): 1 byte per
    parameter instead of bf16 weights plus a per-GEMM cast (:func:`cost_model.memory.fp8_primary_weights`)."""

    loss_logit_bytes: int
    """Bytes per logit the loss keeps for backward: 4 for an fp32 softmax kept in place (Megatron's
    vocab-parallel cross entropy, PyTorch's log_softmax on fp32), 2 for flash-attn's CrossEntropyLoss,
    which keeps the bf16 logits (:func:`cost_model.activations.saved_logit_bytes`)."""

    per_tensor_collectives: bool
    """Whether ZeRO-3 gathers and reduce-scatters each parameter tensor by itself through
    ``torch.distributed``'s list collectives (:mod:`cost_model.communication`), instead of one flat buffer
    per layer or bucket. DeepSpeed 0.3.x (April 2021, the ZeRO-3 of Narayanan et al. 2021 Table 2):
    ``deepspeed/runtime/zero/partition_parameters.py`` ``_allgather_param`` builds ``world_size``
    ``narrow`` views of a flat buffer and calls ``torch.distributed.all_gather(partitions, ...)`` for one
    parameter; ``_reduce_scatter_gradient`` calls ``torch.distributed.reduce_scatter(input_list[rank],
    input_list)`` for one gradient (microsoft/DeepSpeed tag v0.3.16). PyTorch's
    ``ProcessGroupNCCL::allgather`` copies each rank's piece out of the flat NCCL buffer: one copy kernel
    per rank and collective. The same coordinator (``stage3.py`` ``PartitionedParameterCoordinator``)
    never gathers the tensors under ``stage3_param_persistence_threshold`` (norms, biases) and, under
    full recompute, gathers each layer again for its recomputed forward and again for its backward
    except the layer's last tensor (:mod:`cost_model.deepspeed_zero3`)."""

    zero3_gradient_all_reduce: bool
    """Whether ZeRO-3 reduces the gradients with an all-reduce of flattened buckets (twice a
    reduce-scatter's bytes, each rank then keeping its partition) rather than a reduce-scatter:
    DeepSpeed ZeRO-3 with its v0.3.13-v0.4.0 default ``contiguous_gradients: false``
    (``stage3.py`` ``reduce_ipg_grads`` -> ``buffered_reduce_fallback`` -> ``allreduce_bucket``,
    microsoft/DeepSpeed tag v0.3.16; :mod:`cost_model.deepspeed_zero3`)."""

    zero1_gradient_all_reduce: bool
    """Whether ZeRO-1 all-reduces the whole gradient (twice a reduce-scatter's bytes) before each rank
    updates its partition and all-gathers the weights: DeepSpeed's ZeRO-1 (``stage2.py`` with
    ``partition_grads=False``: ``reduce_gradients`` -> ``reduce_ipg_grads`` -> ``buffered_reduce_fallback``
    -> ``dist.all_reduce`` of each flattened bucket, then ``step`` -> ``dist.all_gather`` of the fp16
    partitions, microsoft/DeepSpeed v0.5.4) and its ``BF16_Optimizer`` (the pipeline engine's
    ``_bf16_reduce_grads`` -> ``buffered_allreduce_fallback`` of the fp32 gradients, then
    ``all_gather_dp_groups``, v0.6.5). Megatron's distributed optimizer reduce-scatters."""

    pipeline_scatter_gather: bool
    """Whether pipeline sends carry 1/tp of the activation from each tensor-parallel rank, all-gathered
    over NVLink by the receiver, even without sequence parallelism (Megatron-LM's scatter/gather
    optimisation, Narayanan et al. 2021 section 4.1; Megatron-Core sends the whole tensor)."""

    pipeline_stage_buffers: bool
    """Whether pipeline parallelism keeps step-long buffers per micro-batch (:func:`cost_model.memory.
    pipeline_stage_buffer_bytes`): ``torch.distributed.pipelining`` (torchtitan) allocates, for every
    micro-batch of the step, a receive buffer for the stage input and one for the output gradient
    (``PipelineStage._prepare_forward_infra`` / ``_prepare_backward_infra``), keeps each stage output
    in ``fwd_cache`` until its backward, and on the last stage keeps every micro-batch's output (the
    logits) in ``output_chunks``, which ``PipelineScheduleSingle.step`` concatenates with
    ``merge_chunks`` at the end of the step (pytorch/pytorch ``torch/distributed/pipelining/stage.py``,
    ``schedules.py`` @0138610331c9; a later ``return_outputs=False`` makes the last two optional).
    Megatron's and DeepSpeed's pipeline engines receive into buffers that live only while the
    micro-batch is in flight."""

    tp_backward_overlap: bool
    """Whether a column-parallel linear's backward issues its input-gradient collective asynchronously and
    runs its weight-gradient GEMM beside it (:attr:`cost_model.training_spec.TrainingSpec.tp_backward_overlap`,
    which turns the same on for one run): Transformer Engine's ``_Linear.backward`` /
    ``_LayerNormLinear.backward`` start the reduce-scatter (with sequence parallelism) or all-reduce of the
    input gradient with ``async_op=True`` before the weight-gradient GEMM and wait for it after
    (``transformer_engine/pytorch/module/linear.py``, ``layernorm_linear.py``); Megatron-LM's
    ``LinearWithGradAccumulationAndAsyncCommunication`` did the same before Transformer Engine
    (Korthikanti et al. 2022, section 6.2). PyTorch tensor parallelism runs the collective in the DTensor
    redistribution, in order."""

    tp_saves_gathered_input: bool
    """Whether, under sequence parallelism, the column-parallel GEMMs (QKV, MLP fc1, LM head) save the
    all-gathered full-sequence input for their weight gradient: PyTorch tensor parallelism
    (``torch.distributed.tensor.parallel``, torchtitan) redistributes the sequence-sharded input to
    replicated before ``F.linear``, which saves what it was given. Megatron's sequence-parallel linears
    save the local shard and all-gather it again in backward (Korthikanti et al. 2022, section 4.2.2),
    the :mod:`cost_model.activations` inventory's ``/t``."""

    pipeline_p2p_overlap: bool
    """Whether the interleaved schedule's pipeline sends run beside the next chunk's compute (Megatron-Core
    ``--overlap-p2p-communication``, on by default in Megatron-LM's arguments; torch's pipelining runtime
    posts them asynchronously), or the rank waits for each chunk pair's exchange with both neighbours:
    Megatron-LM before 2023-05 (``send_forward_backward_recv_forward_backward``, a ``batch_isend_irecv``
    then ``torch.cuda.synchronize()``, ``megatron/schedules.py`` / ``p2p_communication.py``, NVIDIA/Megatron-LM
    6985e58938 and d898a8991d). :func:`cost_model.schedules.blocking_exchanges_per_microbatch`. 1F1B waits
    for its exchanges on every stack."""

    pipeline_p2p_batched: bool
    """Whether a pipeline rank's send to and receive from one neighbour go out together, one
    ``batch_isend_irecv`` the rank waits for (Megatron-LM ``p2p_communication._communicate``, 2021 to
    Megatron-Core's ``p2p_communication.py``), so that 1F1B's first and last ranks wait for one exchange a
    micro-batch and the middle ones for two (:func:`cost_model.schedules.blocking_exchanges_per_microbatch`);
    False keeps two transfers a micro-batch on every rank."""

    pipeline_p2p_serial: bool
    """Whether each pipeline send and receive is its own blocking call, in DeepSpeed's order: a middle
    stage waits for four transfers a micro-batch (RecvActivation, SendGrad, SendActivation, RecvGrad of
    ``TrainSchedule``), the end stages for two, each activation and gradient cut into 1/tp pieces plus a
    meta tensor under tensor parallelism and all-gathered by the stage that uses it
    (:mod:`cost_model.deepspeed_pipe`, microsoft/DeepSpeed ``deepspeed/runtime/pipe/`` v0.5.4). It
    replaces ``pipeline_p2p_batched`` and ``pipeline_scatter_gather`` for 1F1B."""

    float16_optimizer_copies: bool
    """Whether the optimizer step runs Megatron-LM's ``Float16OptimizerWithFloat16Params`` passes around
    its fused Adam (``megatron/optimizer/optimizer.py``, NVIDIA/Megatron-LM 6985e58938 of Aug 2021 and
    d898a8991d of May 2022, ``step``): ``_copy_model_grads_to_main_grads`` hands Adam an fp32 copy of each
    gradient (``main_param.grad = model_param.main_grad.float()``: read the buffer's bytes, write 4; a no-op
    when the buffer is already fp32), the unscale, norm and Adam then read 4-byte gradients, and
    ``_copy_main_params_to_model_params`` writes the 16-bit weights in a separate pass after Adam
    (``multi_tensor_scale`` with factor 1.0: read the fp32 master, 4, write 2) instead of Adam writing them
    (:func:`cost_model.compute.optimizer_step_bytes`). Set for ``megatron-lm-2021`` only: the other stacks'
    optimizer paths were not read for this (Megatron-Core's distributed optimizer also copies main to model
    parameters apart from Adam, Transformer Engine's FusedAdam with master weights does not)."""

    gradient_accumulation_fusion: bool
    """Whether the stack's linears write each micro-batch's weight gradient straight into the gradient buffer
    in their weight-gradient GEMM (Megatron's ``gradient_accumulation_fusion``: ``fused_weight_gradient_mlp_cuda
    .wgrad_gemm_accum_fp32``, NVIDIA/Megatron-LM 83b1e42f30 of Feb 2022; Megatron-Core and Transformer Engine's
    ``wgrad`` GEMM with ``accumulate=True``), so ``param.grad`` stays empty and nothing adds it. Without it a
    stack that keeps an unsharded gradient buffer (ZeRO-0/1) pays an element-wise pass over the stage's
    parameters per micro-batch (:func:`cost_model.compute.gradient_accumulation_bytes`, priced for
    Megatron's and DeepSpeed's stacks). The default of ``training.gradient_accumulation_fusion``: true for
    Megatron-Core; false for Megatron-LM of 2021 (6985e58938, the SC21 code, has no fusion) and DeepSpeed;
    the FSDP stacks have none either, but accumulate the reduce-scattered shard (not priced here)."""

    gradient_accumulation_cast_then_add: bool
    """Whether, without that fusion, the stack brings a 16-bit micro-batch gradient into an fp32 buffer as a
    cast and then an add (18 bytes a parameter) rather than Megatron DDP's one mixed-dtype ``add_`` (10):
    DeepSpeed's ``BF16_Optimizer.update_hp_grads`` runs ``hp_grad.data.add_(lp.grad.data.to(hp_grad.dtype))``
    after every micro-batch's backward (``deepspeed/runtime/bf16_optimizer.py``, called from ``pipe/engine.py``
    ``_exec_backward_pass``, microsoft/DeepSpeed v0.6.5; :func:`cost_model.compute.gradient_accumulation_bytes`)."""

    kernel_efficiency: float
    """Share of the reference stack's GEMM and attention throughput reached on the same shapes (fitted
    by ``plan-search calibrate``; 1.0 = Megatron-Core + Transformer Engine)."""

    sources: tuple[str, ...] = ()
    """Where the switches above come from."""


SWITCHES = ("flash_attention", "flash_attention_2", "fused_elementwise", "fused_yarn_rope", "fused_cross_entropy",
            "tp_comm_overlap", "fsdp_prefetch", "collective_fill_exposed", "unsharded_grad_prep",
            "overlap_grad_reduce", "recompute_early_stop", "per_tensor_optimizer", "fp8_param_gather",
            "per_tensor_collectives", "zero3_gradient_all_reduce", "zero1_gradient_all_reduce", "pipeline_scatter_gather",
            "pipeline_stage_buffers", "tp_backward_overlap", "tp_saves_gathered_input", "pipeline_p2p_overlap",
            "pipeline_p2p_batched", "pipeline_p2p_serial", "float16_optimizer_copies",
            "gradient_accumulation_fusion", "gradient_accumulation_cast_then_add")


def _stack_from_mapping(name: str, entry: dict[str, Any], where: str) -> StackSpec:
    fields = {f for f in StackSpec.__dataclass_fields__ if f != "name"}
    unknown = set(entry) - fields
    missing = {f for f in fields if f != "sources"} - set(entry)
    if unknown or missing:
        problem = f"unknown fields {sorted(unknown)}" if unknown else f"missing fields {sorted(missing)}"
        raise InputError(where, f"stacks.{name}", problem, f"give exactly {', '.join(sorted(fields))}")
    efficiency = entry["kernel_efficiency"]
    if not isinstance(efficiency, (int, float)) or isinstance(efficiency, bool) or not 0.2 <= efficiency <= 1.5:
        raise InputError(where, f"stacks.{name}.kernel_efficiency", f"{efficiency!r} is not a share in [0.2, 1.5]",
                         "give the share of Megatron-Core's kernel throughput the stack reaches")
    for switch in SWITCHES:
        if not isinstance(entry[switch], bool):
            raise InputError(where, f"stacks.{name}.{switch}", f"{entry[switch]!r} is not true or false", "write true or false")
    if entry["loss_logit_bytes"] not in (2, 4) or isinstance(entry["loss_logit_bytes"], bool):
        raise InputError(where, f"stacks.{name}.loss_logit_bytes", f"{entry['loss_logit_bytes']!r} is not 2 or 4",
                         "write 4 (an fp32 softmax) or 2 (bf16 logits)")
    return StackSpec(name=name, **{**entry, "kernel_efficiency": float(efficiency),
                                    "sources": tuple(entry.get("sources") or ())})


STACKS_FILE = "stacks.yaml"


@lru_cache(maxsize=None)
def stacks() -> dict[str, StackSpec]:
    """Every stack of ``cost_model/presets/stacks.yaml`` by name."""
    path = Path(str(resources.files("cost_model").joinpath("presets", STACKS_FILE)))
    data = read_yaml_mapping(path)
    entries = data.get("stacks") or {}
    return {name: _stack_from_mapping(name, entry, str(path)) for name, entry in entries.items()}


STACK_NAMES = ("megatron-core", "megatron-lm-2021", "megatron-deepspeed", "deepspeed-zero3", "torchtitan",
               "composer-fsdp", "fairscale-fsdp")
"""The stacks plan-search prices (the keys of ``stacks.yaml``)."""


def stack_spec(name: str) -> StackSpec:
    """The stack called ``name``; a ValueError names the known ones."""
    known = stacks()
    if name not in known:
        raise ValueError(f"stack must be one of {', '.join(known)}, got {name!r}")
    return known[name]
