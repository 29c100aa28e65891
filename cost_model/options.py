"""Execution constants of the cost model that are neither the model, the training setup, the cluster
nor the plan: framework overheads, schedule conventions and accounting choices.

Defaults are documented with their origin; :mod:`optimizer` and the CLI pass user overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from hardware.placement import DEFAULT_RANK_ORDER

from .calibration.stored import stored_parameter


ATTENTION_OPTION_BOUNDS = {
    "attention_half_length": (0.0, 16384.0),
    "attention_head_dim_half": (0.0, 256.0),
    "attention_block_tokens": (16.0, 256.0),
    "attention_backward_share": (0.4, 1.0),
    "flash_attention_2_share": (0.2, 1.0),
}
"""Physical bounds of the attention kernel options (documented on each field)."""


@dataclass(frozen=True)
class CostOptions:
    rank_order: str = DEFAULT_RANK_ORDER
    """Megatron-LM's ``--rank-order`` style order of the parallel dimensions, innermost first."""

    workspace_reserve_gib: float = 0.5
    """Device memory a training process holds whatever the plan, beside the model's tensors (GiB per GPU;
    the CUDA context is outside usable memory already): cuBLAS/cuBLASLt workspaces (PyTorch allocates
    4 MiB x 8 per handle and stream on Hopper, ``CUBLAS_WORKSPACE_CONFIG`` ``:4096:8``; Transformer
    Engine 32 MiB per stream on Hopper and newer, ``get_cublas_workspace_size_bytes``), cuDNN attention
    workspaces and the allocator's first segments. Bounds [0, 4]. See :mod:`cost_model.memory`."""

    allocator_fragmentation: float = 0.26
    """PyTorch caching allocator's peak reserved minus peak allocated memory, as a fraction of the transient
    memory (one layer's backward working set and the loss's logit buffers: tensors of many sizes allocated
    and freed within a layer, whose freed blocks the allocator keeps cached and cannot always reuse for the
    next request's size; PyTorch docs, "CUDA semantics: memory management"). Model states are allocated
    once; saved activations come and go in the same sizes every micro-batch and reuse their blocks.
    Bounds [0, 0.5]. Fitted by least squares on log error to the 12 rows with measured peak reserved
    memory (torchtitan's H100 runs, ``torch.cuda.max_memory_reserved``): 0.26, median |error| 8.3%
    then; with the loss phase and a layer's backward no longer summed, torch.distributed.pipelining's
    per-micro-batch buffers and PyTorch TP's gathered GEMM inputs counted (:mod:`cost_model.memory`),
    4.5% at the same 0.26 (not refitted). The published running layouts still fit up to 0.9 (the tightest: Llama 3.1 8B CP2 on
    8 H100, NeMo 24.09, 98.7% of usable at 0.26)."""

    nccl_buffer_mib_per_communicator: float = 294.0
    """NCCL's device buffers per communicator a rank uses (MiB), outside PyTorch's allocator (nvidia-smi
    shows them, ``torch.cuda.max_memory_reserved`` does not): one ring connection per channel, each with
    the Simple (``NCCL_BUFFSIZE`` 4 MiB), LL128 (4.69 MiB: 120 elements x 640 threads x 8 steps x 8 B)
    and LL (0.5 MiB: 8 lines x 512 threads x 8 steps x 16 B) protocol buffers (NCCL ``src/init.cc``
    ``DEFAULT_BUFFSIZE``, ``DEFAULT_LL128_BUFFSIZE``, ``DEFAULT_LL_BUFFSIZE``), times 32 channels
    (``NCCL_MAX_NCHANNELS`` on Hopper/Blackwell NVLink): 32 x 9.19 = 294 MiB. Bounds [0, 2048]."""

    kernel_overhead_us: float = 4.0
    """Fixed cost of one GEMM kernel (launch, tail effects), making small GEMMs less efficient."""

    host_kernel_issue_us: float = field(default_factory=lambda: stored_parameter("host_kernel_issue_us", 20.0))
    """Host (CPU) time to issue one kernel of the cost model's kernel inventory from eager Megatron-Core
    (:mod:`cost_model.host`): a layer part takes at least its kernels x this. Fitted by
    ``plan-search calibrate`` on every measured run (its host-bound MoE runs without CUDA graphs pin it)
    and read from ``cost_model/calibration/fitted.yaml``; 20 us (PyTorch eager dispatch and launch, the
    prior) before any calibration. 0 = ignore the host."""

    gemm_tile: tuple[int, int] = (128, 256)
    """Output tile (rows, columns) one SM computes at a time, for wave quantization: CUTLASS's default
    128 x 256 BF16 tile on Hopper."""

    attention_half_length: float = 512.0
    """Sequence length at which a fused attention kernel reaches half of the GPU's attention efficiency
    (FlashAttention-2, Dao 2023, figures 4-5: throughput at 512 tokens is about half of that at 16K).
    Bounds [0, 16384]."""

    attention_head_dim_half: float = 24.0
    """Head dim at which a flash kernel's efficiency would be half its limit: efficiency d / (d + this),
    relative to head dim 128 (:func:`cost_model.compute.flash_attention_rates`). 24 puts head dim 64 at
    0.86 of head dim 128, as FlashAttention-2 runs forward + backward on A100 (Dao 2023, figure 4:
    ~0.85-0.9); FlashAttention-3's forward on H100 loses more (Shah et al. 2024, figure 5, 16K tokens: ~500 of ~650, 0.77). On the
    llm-foundry rows (MPT-125M/350M at head dim 64 against MPT-760M-3B at 128, 512 to 64K tokens, A100)
    24 leaves no trend with sequence length between the two groups where 48 left 10%. Bounds [0, 256]."""

    attention_block_tokens: float = 128.0
    """Query and key tile of a flash kernel (FlashAttention-2 and -3 use 128 x 128 tiles at head dims
    64-128): with a causal mask the tiles on the diagonal are computed in full and half masked. Bounds
    [16, 256]."""

    attention_backward_share: float = 0.8
    """Rate of a flash kernel's backward relative to its forward, on the FLOPs the papers count (2.5x the
    forward). Measured without a causal mask: FlashAttention-2 up to 73% of A100's peak forward and 63%
    backward (Dao 2023, section 4.1): 0.86; FlashAttention-3 at head dim 128, 16K tokens, 649 forward and
    581 backward TFLOP/s on H100 (Shah et al. 2024, figures 5-6): 0.90. Neither paper reports a causal
    backward, nor the cuDNN backward the reference stack runs. 0.8 is kept below both: at 0.86 the
    calibration fits worse (median |error| 6.5% against 6.4%, the long-context rows' held-out error
    20.0% against 18.7%, with Hopper's head-dim-128 attention prior), so the causal cuDNN backward looks
    slower than the non-causal figures; a measured causal backward should replace it. Bounds [0.4, 1]."""

    flash_attention_2_share: float = field(default_factory=lambda: stored_parameter("flash_attention_2_share", 0.47))
    """Rate of FlashAttention-2 on Hopper and Blackwell relative to the native kernels (cuDNN,
    FlashAttention-3) the GPU presets describe: PyTorch SDPA's FA2 backend reaches 287-304 TFLOP/s
    forward at head dim 128 on H100 (pytorch/benchmark PR #2296), FA3 430-621 (PR #2391, 621 at 16K
    tokens); the FA3 paper (Shah et al. 2024) puts FA2 at 35% of H100's peak (section 1) and FA3 at 649
    of 989 TFLOP/s at head dim 128, 16K tokens (figure 5): a share of 0.49-0.53 at head dim 128; 0.47
    against its 75% headline (head dim 256), the reference the Hopper attention prior still uses
    (:mod:`cost_model.calibration.fit`). Applies to runs whose flash kernel is FlashAttention-2
    (``TrainingSpec.flash_attention_2``, by default the stack's: :mod:`cost_model.stacks`). Bounds [0.2, 1]. Fitted by ``plan-search calibrate`` (read from
    ``cost_model/calibration/fitted.yaml``); 0.47 (the prior) before any calibration."""

    make_vocab_size_divisible_by: int = 128
    """Megatron pads the vocabulary to a multiple of this times tp (``--make-vocab-size-divisible-by``)."""

    grad_bucket_elements: float = 40e6
    """Megatron DDP bucket size; the last bucket's reduction cannot overlap the backward pass."""

    overlap_sm_fraction: float = 0.15
    """Share of the GPU's SMs that NCCL kernels occupy while a collective overlaps compute: NCCL runs one
    thread block per channel, and uses 16-32 channels on Hopper/Blackwell nodes (NCCL_MIN/MAX_NCHANNELS
    defaults), i.e. about 20 of 132 SMs. Assumption, absorbed in the calibration of the GEMM efficiency."""

    pcie_GBps: float = 50.0
    """Host link per GPU (PCIe Gen5 x16 achieves about 50 GB/s per direction) for optimizer offload."""

    cpu_adam_params_per_s: float = 1.0e9
    """Parameters per second one GPU's share of the host CPUs updates with a vectorised CPU Adam
    (DeepSpeed CPU-Adam scale)."""

    mfu_attention_causal: bool = True
    """Count a causal model's attention FLOPs with the causal half only (QK^T and AV over the unmasked
    half of the s x s scores), as Megatron-Core >= 0.14 and Megatron-Bridge count them: model FLOPs are
    then never more than the FLOPs a flash kernel executes, so MFU never exceeds the kernels' efficiency
    (:mod:`cost_model.flops`). False counts the full s x s (Narayanan et al. 2021, PaLM, llm-foundry),
    which puts a long-context MFU above what the GPU executes."""

    cp_comm_type: Literal["p2p", "a2a"] = "p2p"
    """Context parallelism: ring exchange of K/V (Megatron ``--cp-comm-type p2p``, overlapped with the
    attention kernels) or all-to-all (Ulysses, ``a2a``)."""

    def __post_init__(self) -> None:
        for name, (low, high) in ATTENTION_OPTION_BOUNDS.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name} must lie in [{low:g}, {high:g}] (see CostOptions.{name}), got {value!r}")

    def with_changes(self, **changes: Any) -> "CostOptions":
        return replace(self, **changes)
