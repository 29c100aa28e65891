"""The training setup: what is run on the model, independent of how it is laid out on the cluster.

Following Calculon's split of inputs, a plan's cost depends on three separate things: the model
(:mod:`cost_model.model_spec`), the system (:mod:`hardware`) and the execution. The execution is split
again into this *training setup* — sequence length, batch, precision, optimizer, which the user fixes —
and the *plan* (:mod:`cost_model.plan`) — the parallel layout and knobs that the optimizer searches.

Field names follow Megatron-LM's arguments where one exists (``seq_length``, ``global_batch_size``,
``tp_comm_overlap``, ``overlap_grad_reduce``, ``overlap_param_gather``, ``overlap_moe_expert_parallel_comm``).

Every setting is checked when the spec is built: switches are ``true``/``false`` only, numbers are
finite and within the bounds of :mod:`hardware.bounds` (a 10^23-token sequence or an infinite token
budget is refused, not priced).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from hardware.bounds import MAX_GLOBAL_BATCH_TOKENS, OutOfBounds, check_bound, check_number, fmt

from .stacks import stack_spec

PRECISIONS = ("bf16", "fp16", "fp8", "fp4")
FP8_RECIPES = ("tensorwise", "delayed", "mxfp8", "blockwise")
FP4_RECIPES = ("nvfp4",)

MEGATRON_LINEAR_STACKS = ("megatron-core", "megatron-lm-2021", "megatron-deepspeed")
"""Stacks whose tensor-parallel linears are Megatron's (``LinearWithGradAccumulationAndAsyncCommunication``
or Transformer Engine's), the ones that can issue the backward collective asynchronously
(``tp_backward_overlap``)."""
GRAD_DTYPES = ("fp32", "bf16", "fp16")
MOMENT_DTYPES = ("fp32", "bf16")
OPTIMIZERS = ("adam", "adamw", "sgd")
CUDA_GRAPH_SCOPES = ("attn", "mlp", "moe", "moe_router", "moe_preprocess", "full_iteration")
MOE_TOKEN_DISPATCHERS = ("alltoall", "deepep", "hybridep")
CHECKPOINT_MODES = ("sync", "async", "in_memory")
CHECKPOINT_MODES_BY_STACK = {
    "megatron-core": ("sync", "async", "in_memory"),  # --async-save; --non-persistent-ckpt-type local (nvidia-resiliency-ext)
    "torchtitan": ("sync", "async"),                   # checkpoint.async_mode: async / async_with_pinned_mem (torch DCP)
}
"""Checkpoint modes each stack can run (:attr:`TrainingSpec.checkpoint_mode`); a stack not listed saves
synchronously only (Megatron-LM 2021, Megatron-DeepSpeed, DeepSpeed ZeRO-3, Composer and FairScale FSDP
as the runs priced with them used them)."""


@dataclass(frozen=True)
class TrainingSpec:
    seq_length: int = 4096
    """Tokens per sequence (Megatron ``--seq-length``)."""

    global_batch_size: int = 1024
    """Sequences per optimizer step (Megatron ``--global-batch-size``)."""

    precision: Literal["bf16", "fp16", "fp8", "fp4"] = "bf16"
    """Matrix-multiply precision. ``fp16`` (loss-scaled mixed precision, as in GPT-3-era runs) costs the
    same bytes and peak as ``bf16``. ``fp8`` runs GEMMs in FP8 (Transformer Engine) with bf16 weights,
    bf16 activations between layers and FP8 copies of GEMM inputs saved for backward. ``fp4`` runs the
    transformer layers' GEMMs in FP4 E2M1 (Megatron-Core ``--fp4-format e2m1``, Transformer Engine >= 2.7,
    Blackwell only: the GPU preset needs ``peak_tflops_fp4``), with bf16 weights and activations, the
    recipe's quantized copies of GEMM inputs saved for backward and the LM head in bf16."""

    fp8_recipe: Literal["tensorwise", "delayed", "mxfp8", "blockwise"] = "delayed"
    """How FP8 GEMM inputs are scaled (Megatron ``--fp8-recipe``, whose default is ``delayed``):
    ``tensorwise`` is per-tensor current scaling (Megatron-Bridge's FP8-CS), ``mxfp8`` Blackwell's
    1x32 block scaling (FP8-MX), ``blockwise`` DeepSeek-V3's 1x128 / 128x128 blocks. It sets the
    host's kernel count per quantized tensor (:mod:`cost_model.host`) and, for ``tensorwise``, the extra
    read of each input for its amax. Ignored unless ``precision`` is ``fp8``."""

    fp4_recipe: Literal["nvfp4"] = "nvfp4"
    """How FP4 GEMM inputs are scaled (Megatron ``--fp4-recipe``, default and only built-in ``nvfp4``):
    Transformer Engine's ``NVFP4BlockScaling``, 16-element blocks with an FP8 E4M3 scale each and an
    FP32 per-tensor scale, 16x16 (2D) blocks for weights, a random Hadamard transform on the weight-gradient
    GEMM's inputs and stochastic rounding of gradients (NVIDIA, "Pretraining Large Language Models with
    NVFP4", arXiv:2509.25149, section 4). Ignored unless ``precision`` is ``fp4``."""

    num_layers_at_start_in_bf16: int = 0
    """Transformer layers at the start of the model whose GEMMs stay in BF16 in an FP8 or FP4 run
    (Megatron-Core ``first_last_layers_bf16`` with ``num_layers_at_start_in_bf16``; Megatron-Bridge's FP8
    current-scaling recipe keeps 1): priced as BF16 layers, with BF16 weights and saved GEMM inputs
    (:mod:`cost_model.bf16_layers`). 0 = none; ignored for bf16/fp16 runs."""

    num_layers_at_end_in_bf16: int = 0
    """Likewise at the end of the model (``num_layers_at_end_in_bf16``; Megatron-Bridge's Llama 3 8B NVFP4
    recipe keeps the last 4)."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    """Adam/AdamW keep an fp32 master copy and the moments m and v (12 bytes per parameter);
    SGD with momentum keeps the master copy and one moment (8 bytes)."""

    grad_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Dtype of the gradient buffer that is accumulated and reduced. Megatron-LM forces fp32 main
    grads with ``--bf16`` (``accumulate_allreduce_grads_in_fp32``); ``bf16`` halves it, and so does
    ``fp16``: DeepSpeed's fp16 ZeRO-1/2 optimizer accumulates and all-reduces the fp16 ``param.grad``
    (``deepspeed/runtime/zero/stage2.py`` ``allreduce_bucket`` in the parameters' dtype; ``engine.py``
    refuses ``fp32_allreduce`` with ZeRO, v0.5.4)."""

    gradient_accumulation_fusion: bool | None = None
    """Whether the linears accumulate each micro-batch's weight gradient into the gradient buffer inside the
    weight-gradient GEMM (Megatron ``--no-gradient-accumulation-fusion`` turns it off; Megatron-Bridge
    ``model.gradient_accumulation_fusion``). None = the stack's default
    (:attr:`cost_model.stacks.StackSpec.gradient_accumulation_fusion`). Without it the backward of every
    micro-batch adds its gradient into the buffer in a pass of its own
    (:func:`cost_model.compute.gradient_accumulation_bytes`). Set true for a Megatron-LM run of 2022 (from
    83b1e42f30; at d898a8991d, Korthikanti et al.'s code, on by default once the buffer is fp32), which the
    ``megatron-lm-2021`` stack, read at the SC21 code, does not fuse. Only Megatron's linears have it."""

    torch_1_13: bool = False
    """The run used PyTorch 1.13 (llm-foundry's tables of spring 2023, with Composer 0.13). Under a stack
    with ``per_tensor_optimizer`` FSDP1 hands the optimizer one flat shard per wrapped layer (torch 1.13 has
    no ``use_orig_params``) and Composer 0.13's ``DecoupledAdamW`` keeps the step count on the host, so
    the host issues the step without waiting for the GPU (:mod:`cost_model.per_tensor_optimizer`); under
    a stack with ``recompute_early_stop`` the non-reentrant checkpoint of torch 1.13 reruns the whole
    block (:attr:`cost_model.stacks.StackSpec.recompute_early_stop`)."""

    optimizer_moments_dtype: Literal["fp32", "bf16"] = "fp32"
    """Dtype of Adam's m and v. ``bf16`` is Megatron's precision-aware optimizer
    (``--use-precision-aware-optimizer --exp-avg-dtype bf16 --exp-avg-sq-dtype bf16``), as DeepSeek-V3
    runs it: 8 instead of 12 optimizer bytes per parameter."""

    dropout: bool = False
    """Whether hidden and attention dropout are on (they add masks to the saved activations).
    Modern LLM pre-training runs without dropout; GPT-3-era runs used 0.1."""

    flash_attention: bool = True
    """Fused attention that never materialises the s x s score matrix (FlashAttention / cuDNN)."""

    flash_attention_2: bool | None = None
    """Whether the run's flash kernel is FlashAttention-2 (flash-attn 2.x) rather than a kernel written
    for Hopper and Blackwell (cuDNN fused attention, FlashAttention-3); None: the stack's
    (:attr:`cost_model.stacks.StackSpec.flash_attention_2`). A launcher picks it for a Transformer Engine
    run by environment: ``NVTE_FUSED_ATTN=0`` leaves TE's ``FlashAttention`` backend, which with attention
    dropout is flash-attn 2 (TE v1.12 ``get_attention_backend``: "Disabling FlashAttention 3 for dropout";
    otherwise TE prefers ``FusedAttention`` on sm90, "Disabling FlashAttention to give FusedAttention
    preference on Hopper+", v1.8..v1.12 transformer_engine/pytorch/attention.py)."""

    causal: bool = True
    """Causal attention: fused kernels skip the masked half of the score matrix."""

    fused_cross_entropy: bool = True
    """Megatron's vocab-parallel cross entropy: it upcasts the logits to fp32 once and computes the
    softmax and its gradient in place. False = PyTorch's ``log_softmax`` + ``nll_loss`` on an fp32
    copy (torchtitan), whose backward holds the saved log-probabilities, their gradient and the
    input gradient at once (12 bytes per logit); with tp > 1 that is PyTorch's loss parallel on
    vocabulary-sharded logits, whose decomposed backward holds 16."""

    train_tokens: float | None = None
    """Total training tokens, for time-to-train, GPU-hours and cost. None = not asked."""

    tp_comm_overlap: bool = False
    """Overlap tensor-parallel communication with GEMMs (Megatron ``--tp-comm-overlap``)."""

    tp_backward_overlap: bool = False
    """Megatron's asynchronous backward TP collectives (``--async-tensor-model-parallel-allreduce``,
    Megatron-LM ``LinearWithGradAccumulationAndAsyncCommunication``, 2022): a column-parallel linear's
    input-gradient all-reduce (with sequence parallelism its reduce-scatter, and the all-gather of its
    saved input) runs beside its weight-gradient GEMM instead of after it. Korthikanti et al. 2022,
    section 6.2: full recompute costs 39% rather than 33% "due to an optimization in the backward pass
    where we overlap all-reduce communication with the linear weight's gradient computation"
    (:mod:`cost_model.evaluate`). Ignored with ``tp_comm_overlap``, which hides more. Stacks that always do
    it (Megatron-Core with Transformer Engine) say so in ``StackSpec.tp_backward_overlap``; this field turns
    it on for a run of another stack (the 2022 Megatron-LM of Korthikanti et al.)."""

    overlap_grad_reduce: bool = True
    """Overlap the data-parallel gradient reduction with the backward pass (Megatron ``--overlap-grad-reduce``)."""

    overlap_param_gather: bool = True
    """Overlap the distributed optimizer's parameter all-gather with the next forward pass."""

    async_grad_reduce_scatter: bool = False
    """ZeRO-2's per-micro-batch gradient reduce-scatter runs on its own stream and the compute does not
    wait for it at the end of the micro-batch's backward, so it also runs beside the next micro-batch's
    forward, which under ZeRO-2 has no data-parallel traffic of its own (the weights stay gathered).
    Llama 3's FSDP (Dubey et al. 2024, arXiv:2407.21783, section 3.3.2): it "shards optimizer states and
    gradients, but for model shards we do not reshard after forward computation", and DP "can tolerate
    longer network latency by asynchronously prefetching sharded model weights and reducing gradients".
    Stock FSDP2 keeps one reduce-scatter in flight: each layer's post-backward makes the compute stream
    wait for the previous reduce-scatter before issuing its own (torch ``FSDPParamGroup.post_backward``,
    ``torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py``), so the reductions cannot fall more than
    a layer behind the backward; False (the default) keeps them within it. Only ZeRO-2 plans change
    (:mod:`cost_model.evaluate`); no framework plan-search emits runs it (the launches say so)."""

    moe_capacity_factor: float = 1.0
    """Tokens an expert processes relative to a perfectly even split: 1.0 for a balanced dropless run,
    more to account for load imbalance or a capacity factor."""

    moe_pad_to_capacity: bool = False
    """Pad every expert's input to its capacity, ``moe_capacity_factor`` x an even split, dropping the
    tokens beyond it (Megatron ``--moe-expert-capacity-factor`` with ``--moe-pad-expert-input-to-capacity``).
    Shapes are then static: the all-to-all dispatcher needs no device-to-host sync and CUDA graphs may
    capture the whole MoE block (``moe``, ``full_iteration``). False = token-dropless, Megatron's default,
    which syncs per MoE layer and cannot be captured past ``moe_router`` and ``moe_preprocess``."""

    moe_token_dispatcher: Literal["alltoall", "deepep", "hybridep"] = "alltoall"
    """How MoE tokens reach their experts' ranks. ``alltoall`` (Megatron's default
    ``--moe-token-dispatcher-type alltoall``) permutes a row per token-expert pair and sends them with NCCL
    all-to-all. ``deepep`` and ``hybridep`` are Megatron's flex dispatcher (``--moe-token-dispatcher-type
    flex --moe-flex-dispatcher-backend deepep|hybridep``): its kernels send each token once per destination
    rank, however many of that rank's experts it chose, and fuse the global permute
    (:func:`cost_model.activations.dispatched_rows_per_rank`). Dropless runs sync to the host every
    layer with all three, except HybridEP with ``moe_rank_capacity_factor``."""

    moe_rank_capacity_factor: float | None = None
    """Sync-free dropless MoE (Megatron ``--moe-expert-rank-capacity-factor``, which needs the flex
    dispatcher's HybridEP backend and Transformer Engine's fused grouped MLP,
    ``--use-transformer-engine-op-fuser``): each rank receives its tokens into a buffer of this many
    times a perfectly balanced share, sized up front, so the dispatch needs no device-to-host sync; a
    step that overflows it reruns eagerly (not priced: the factor is chosen so that this is rare).
    Expert activations saved for backward live in those buffers unless ``moe_paged_stash_factor`` is
    set; the expert GEMMs still run on the routed tokens only (the fused grouped MLP reads the counts on
    the device). None = no rank capacity (Megatron's default)."""

    moe_paged_stash_factor: float | None = None
    """Megatron's paged stash (``--moe-paged-stash`` with ``--moe-paged-stash-buffer-size-factor-cuda``,
    Megatron's default 1.10): the routed experts' activations for backward are packed into paged GPU
    buffers of this many times a balanced share instead of the rank-capacity buffers. Needs
    ``moe_rank_capacity_factor``; it is also what lets CUDA graphs capture a sync-free MoE layer.
    None = no paged stash."""

    overlap_moe_expert_parallel_comm: bool = False
    """Hide the MoE all-to-alls of one micro-batch behind the compute of another (Megatron
    ``--overlap-moe-expert-parallel-comm``, the merged 1F1B schedule; :mod:`cost_model.ep_overlap`).
    Applies where Megatron allows it: expert parallelism, no full recompute, pp = 1 or a virtual
    pipeline; it keeps one more micro-batch chunk of activations in flight."""

    moe_dispatch_fp8: bool = False
    """Send MoE dispatch all-to-all in FP8 (DeepSeek-V3 does), halving its bytes. With the ``alltoall``
    dispatcher only: Megatron's flex dispatcher sends BF16."""

    stack: str = "megatron-core"
    """Software stack the run uses (:mod:`cost_model.stacks`): ``megatron-core`` (default, Megatron-Core
    with Transformer Engine), ``megatron-lm-2021``, ``megatron-deepspeed``, ``deepspeed-zero3``,
    ``torchtitan``, ``composer-fsdp`` or ``fairscale-fsdp``. It sets which kernels are fused, which overlaps exist and the
    stack's fitted kernel efficiency; settings the input leaves out (flash attention, fused cross
    entropy, overlapped gradient reduction) take the stack's."""

    cuda_graph_scope: tuple[str, ...] = ()
    """Parts of each layer replayed from CUDA graphs (Megatron ``--cuda-graph-scope``: ``attn``, ``mlp``,
    ``moe``, ``moe_router``, ``moe_preprocess``, ``full_iteration``); empty = no CUDA graphs, Megatron's
    default. Captured parts cost no host issue time (:mod:`cost_model.host`)."""

    # ---- checkpoints and restarts (goodput, :mod:`cost_model.goodput`) ----
    checkpoint_mode: Literal["sync", "async", "in_memory"] = "sync"
    """How checkpoints are saved. ``sync``: training stops while every rank writes its shard to the file
    system (Megatron's default). ``async``: training stops only for the copy of the shard to host memory;
    background processes write it (Megatron ``--async-save``, torch DCP ``async_save`` as torchtitan's
    ``checkpoint.async_mode``). ``in_memory``: the host copy goes to a peer node's memory and a restart
    reads it back over the network (Megatron's local checkpoints, ``--non-persistent-ckpt-type local``
    from nvidia-resiliency-ext; Wang et al. 2023, Gemini). :data:`CHECKPOINT_MODES_BY_STACK` lists what
    each stack supports."""

    checkpoint_interval_s: float | None = None
    """Seconds of training between checkpoints; None = the optimum of Young (1974) and Daly (2006) for
    the plan's save time and the job's mean time between failures."""

    hot_spare_nodes_per: tuple[int, ...] = (0,)
    """Hot spares: one idle node held for every N nodes of the job (0 = none). A restart with a spare free
    skips the cluster's ``reliability.reschedule_s``; the spares are paid for as GPU-hours. Several
    values (CLI ``--spares 0,64,16``): each plan gets the one with the fewest effective GPU-hours,
    spares included (:func:`cost_model.goodput.goodput`)."""

    def __post_init__(self) -> None:
        spares = self.hot_spare_nodes_per
        spares = (spares,) if isinstance(spares, int) and not isinstance(spares, bool) else spares
        if (not isinstance(spares, (tuple, list)) or not spares
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in spares)):
            raise ValueError(f"hot_spare_nodes_per must list whole numbers of nodes per spare (0 = no spares), "
                             f"got {self.hot_spare_nodes_per!r}")
        object.__setattr__(self, "hot_spare_nodes_per", tuple(sorted(set(int(n) for n in spares))))
        if self.checkpoint_mode not in CHECKPOINT_MODES:
            raise ValueError(f"checkpoint_mode must be one of {', '.join(CHECKPOINT_MODES)}, got {self.checkpoint_mode!r}")
        supported = CHECKPOINT_MODES_BY_STACK.get(self.stack, ("sync",))
        if self.checkpoint_mode not in supported:
            raise ValueError(f"checkpoint_mode {self.checkpoint_mode} needs a stack that supports it: the {self.stack} "
                             f"stack saves {', '.join(supported)}; use one of those")
        if self.checkpoint_interval_s is not None:
            check_number("checkpoint_interval_s", self.checkpoint_interval_s, minimum=0, above_minimum=True)
        scope = self.cuda_graph_scope
        if isinstance(scope, str):
            scope = (scope,) if scope else ()
        if not isinstance(scope, (tuple, list)) or any(part not in CUDA_GRAPH_SCOPES for part in scope):
            raise ValueError(f"cuda_graph_scope must list parts from {', '.join(CUDA_GRAPH_SCOPES)}, got {scope!r}")
        object.__setattr__(self, "cuda_graph_scope", tuple(sorted(set(scope))))
        if self.flash_attention_2 is not None and not isinstance(self.flash_attention_2, bool):
            raise ValueError(f"flash_attention_2 must be true, false or left out (the stack's kernel), "
                             f"got {self.flash_attention_2!r}")
        for field in fields(self):
            if field.type in ("bool", bool) and not isinstance(getattr(self, field.name), bool):
                raise ValueError(f"{field.name} must be true or false, got {getattr(self, field.name)!r}")
        for name in ("seq_length", "global_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            check_bound(name, value)
        if self.global_batch_tokens > MAX_GLOBAL_BATCH_TOKENS:
            raise OutOfBounds("global_batch_size", f"x seq_length = {fmt(self.global_batch_tokens)} tokens per step is "
                              f"past the bound of {fmt(MAX_GLOBAL_BATCH_TOKENS)} that plan-search accepts (the largest "
                              "runs take ~6x10^7 tokens per step)", "use a smaller batch or shorter sequences")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.fp8_recipe not in FP8_RECIPES:
            raise ValueError(f"fp8_recipe must be one of {', '.join(FP8_RECIPES)}, got {self.fp8_recipe!r}")
        if self.fp4_recipe not in FP4_RECIPES:
            raise ValueError(f"fp4_recipe must be one of {', '.join(FP4_RECIPES)}, got {self.fp4_recipe!r}")
        if self.precision == "fp4" and self.stack not in FP4_STACKS:
            raise ValueError(f"precision fp4 needs a stack that runs NVFP4 GEMMs: the {self.stack} stack has no FP4 "
                             "recipe; use stack megatron-core (Transformer Engine NVFP4) or precision fp8")
        for name in ("num_layers_at_start_in_bf16", "num_layers_at_end_in_bf16"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a whole number of layers (0 = none), got {value!r}")
        if ((self.num_layers_at_start_in_bf16 or self.num_layers_at_end_in_bf16) and self.precision == "fp8"
                and self.fp8_recipe == "delayed"):
            name = "num_layers_at_start_in_bf16" if self.num_layers_at_start_in_bf16 else "num_layers_at_end_in_bf16"
            raise ValueError(f"{name} needs a current or block scaling recipe: Megatron-Core refuses BF16 first/last "
                             "layers with delayed scaling; use fp8_recipe tensorwise, mxfp8 or blockwise, or set it to 0")
        if self.grad_dtype not in GRAD_DTYPES:
            raise ValueError(f"grad_dtype must be one of {', '.join(GRAD_DTYPES)}, got {self.grad_dtype!r}")
        if self.grad_dtype == "fp16" and self.precision != "fp16":
            raise ValueError(f"grad_dtype fp16 is the gradient buffer of an fp16 run (the parameters' dtype); "
                             f"with precision {self.precision} use fp32 or bf16")
        if self.gradient_accumulation_fusion is not None and not isinstance(self.gradient_accumulation_fusion, bool):
            raise ValueError(f"gradient_accumulation_fusion must be true, false or left out (the stack's default), "
                             f"got {self.gradient_accumulation_fusion!r}")
        if self.gradient_accumulation_fusion and self.stack not in MEGATRON_LINEAR_STACKS:
            raise ValueError(f"gradient_accumulation_fusion is Megatron's fused weight-gradient accumulation: the "
                             f"{self.stack} stack's linears have none; leave it out or use one of "
                             f"{', '.join(MEGATRON_LINEAR_STACKS)}")
        if self.gradient_accumulation_fusion and self.stack == "megatron-lm-2021" and self.grad_dtype != "fp32":
            # megatron/arguments.py @d898a8991d: "Gradient accumulation fusion to linear layer weight gradient
            # computation is supported only with fp32 gradient accumulation. Setting gradient_accumulation_fusion
            # to False"
            raise ValueError(f"gradient_accumulation_fusion needs an fp32 gradient buffer in Megatron-LM of 2022 "
                             f"(its arguments.py turns it off otherwise): with grad_dtype {self.grad_dtype} set it false "
                             "or use grad_dtype fp32")
        if self.optimizer_moments_dtype not in MOMENT_DTYPES:
            raise ValueError(f"optimizer_moments_dtype must be one of {', '.join(MOMENT_DTYPES)}, "
                             f"got {self.optimizer_moments_dtype!r}")
        if self.moe_token_dispatcher not in MOE_TOKEN_DISPATCHERS:
            raise ValueError(f"moe_token_dispatcher must be one of {', '.join(MOE_TOKEN_DISPATCHERS)}, "
                             f"got {self.moe_token_dispatcher!r}")
        if self.moe_rank_capacity_factor is not None and self.moe_token_dispatcher != "hybridep":
            raise ValueError("moe_rank_capacity_factor needs moe_token_dispatcher: hybridep (Megatron's sync-free "
                             "dropless dispatch is HybridEP's)")
        if self.moe_dispatch_fp8 and self.moe_token_dispatcher != "alltoall":
            raise ValueError("moe_dispatch_fp8 works with moe_token_dispatcher: alltoall only (Megatron's flex "
                             "dispatcher sends BF16)")
        spec = stack_spec(self.stack)  # a ValueError names the known stacks
        if self.tp_comm_overlap and not spec.tp_comm_overlap:
            raise ValueError(f"tp_comm_overlap needs a stack that overlaps it: the {self.stack} stack cannot overlap tensor-parallel communication; "
                             "set it false or use a stack that does (megatron-core, torchtitan)")
        if self.torch_1_13 and not (spec.per_tensor_optimizer or spec.recompute_early_stop):
            raise ValueError(f"torch_1_13 changes how a PyTorch-native stack optimizes and recomputes: the {self.stack} "
                             "stack has neither a per-tensor optimizer nor PyTorch's checkpoint; set it false or use "
                             "composer-fsdp")
        if self.tp_backward_overlap and self.stack not in MEGATRON_LINEAR_STACKS:
            raise ValueError(f"tp_backward_overlap is Megatron's asynchronous backward collective: the {self.stack} stack "
                             f"runs its tensor-parallel collectives in order; set it false or use one of "
                             f"{', '.join(MEGATRON_LINEAR_STACKS)}")
        if self.overlap_grad_reduce and not spec.overlap_grad_reduce:
            raise ValueError(f"overlap_grad_reduce needs a stack that overlaps it: the {self.stack} stack reduces gradients after the backward pass; "
                             "set it false or use a stack that overlaps it")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.train_tokens is not None:
            check_number("train_tokens", self.train_tokens, minimum=0, above_minimum=True)
        check_number("moe_capacity_factor", self.moe_capacity_factor, minimum=1.0)
        for name in ("moe_rank_capacity_factor", "moe_paged_stash_factor"):
            value = getattr(self, name)
            if value is not None:
                check_number(name, value)
            if value is not None and not value >= self.moe_capacity_factor:
                raise ValueError(f"{name} must be at least moe_capacity_factor ({self.moe_capacity_factor:g}): a "
                                 f"smaller buffer overflows and reruns the step every time, got {value!r}")
        if self.moe_paged_stash_factor is not None and self.moe_rank_capacity_factor is None:
            raise ValueError("moe_paged_stash_factor needs moe_rank_capacity_factor (Megatron's paged stash "
                             "stashes the sync-free dispatcher's buffers)")
        if self.moe_pad_to_capacity and self.moe_rank_capacity_factor is not None:
            raise ValueError("moe_pad_to_capacity and moe_rank_capacity_factor are two ways to make MoE shapes "
                             "static (drop and pad, or sync-free HybridEP): choose one")

    @property
    def quantized_recipe(self) -> str | None:
        """The scaling recipe of the run's low-precision GEMMs (``fp8_recipe`` or ``fp4_recipe``); None
        for bf16 and fp16 GEMMs."""
        if self.precision == "fp8":
            return self.fp8_recipe
        if self.precision == "fp4":
            return self.fp4_recipe
        return None

    @property
    def flash_kernel_is_fa2(self) -> bool:
        """The run's flash kernel is FlashAttention-2: ``flash_attention_2`` if the run states it, else
        its stack's."""
        if self.flash_attention_2 is not None:
            return self.flash_attention_2
        return stack_spec(self.stack).flash_attention_2

    @property
    def recompute_stops_early(self) -> bool:
        """Full recompute stops at each layer's last saved tensor: a stack with ``recompute_early_stop``
        (PyTorch >= 2.1's non-reentrant checkpoint) on a run that is not on torch 1.13."""
        return stack_spec(self.stack).recompute_early_stop and not self.torch_1_13

    @property
    def fuses_gradient_accumulation(self) -> bool:
        """``gradient_accumulation_fusion`` as run: the field where given, else the stack's default."""
        if self.gradient_accumulation_fusion is None:
            return stack_spec(self.stack).gradient_accumulation_fusion
        return self.gradient_accumulation_fusion

    @property
    def global_batch_tokens(self) -> int:
        return self.global_batch_size * self.seq_length

    @property
    def grad_bytes(self) -> int:
        return 4 if self.grad_dtype == "fp32" else 2

    @property
    def optimizer_state_bytes(self) -> int:
        """Bytes per parameter of the optimizer: fp32 master + moments (Adam m and v; SGD momentum)."""
        moment = 4 if self.optimizer_moments_dtype == "fp32" else 2
        return 4 + moment * (2 if self.optimizer in ("adam", "adamw") else 1)

    def with_changes(self, **changes: Any) -> "TrainingSpec":
        return replace(self, **changes)


FP4_STACKS = ("megatron-core",)
"""Stacks that run FP4 GEMMs: Megatron-Core with Transformer Engine >= 2.7 (``NVFP4BlockScaling``);
torchtitan's torchao MX training is MXFP8 only in the priced runs, and the older stacks predate FP4."""


TRAINING_FIELDS = tuple(f.name for f in fields(TrainingSpec))
