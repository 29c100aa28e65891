"""Execution constants of the cost model that are neither the model, the training setup, the cluster
nor the plan: framework overheads, schedule conventions and accounting choices.

Defaults are documented with their origin; :mod:`optimizer` and the CLI pass user overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from hardware.placement import DEFAULT_RANK_ORDER


@dataclass(frozen=True)
class CostOptions:
    rank_order: str = DEFAULT_RANK_ORDER
    """Megatron-LM's ``--rank-order`` style order of the parallel dimensions, innermost first."""

    framework_reserved_gib: float = 1.5
    """Memory taken outside the model's tensors: NCCL communicator buffers, cuBLAS/cuDNN workspaces and
    the PyTorch allocator's minimum pools (GiB per GPU). CUDA context is outside usable memory already."""

    allocator_fragmentation: float = 0.05
    """Extra fraction of the dynamic (activation and transient) memory lost to caching-allocator
    fragmentation."""

    kernel_overhead_us: float = 4.0
    """Fixed cost of one GEMM kernel (launch, tail effects), making small GEMMs less efficient."""

    host_kernel_issue_us: float = 39.3
    """Host (CPU) time to issue one kernel of the cost model's kernel inventory from eager Megatron-Core
    (:mod:`cost_model.host`): a layer part takes at least its kernels x this. Fitted by
    ``plan-search calibrate`` on Qwen3-235B-A22B on 64 B200 (Megatron-Bridge 25.11, no CUDA graphs);
    it predicts the held-out DeepSeek-V3 run on 256 B200 within 2%. 0 = ignore the host."""

    gemm_tile: tuple[int, int] = (128, 256)
    """Output tile (rows, columns) one SM computes at a time, for wave quantization: CUTLASS's default
    128 x 256 BF16 tile on Hopper."""

    attention_half_length: float = 512.0
    """Sequence length at which a fused attention kernel reaches half of the GPU's attention efficiency
    (FlashAttention-2, Dao 2023, figures 4-5: throughput at 512 tokens is about half of that at 16K)."""

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

    mfu_attention_causal: bool = False
    """Count attention FLOPs of the model with the causal half only. False follows Narayanan et al. 2021
    and PaLM (full s x s), so MFU is comparable with published figures."""

    cp_comm_type: Literal["p2p", "a2a"] = "p2p"
    """Context parallelism: ring exchange of K/V (Megatron ``--cp-comm-type p2p``, overlapped with the
    attention kernels) or all-to-all (Ulysses, ``a2a``)."""

    def with_changes(self, **changes: Any) -> "CostOptions":
        return replace(self, **changes)
