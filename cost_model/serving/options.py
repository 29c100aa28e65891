"""Execution constants of the serving cost model: what the engine (vLLM, SGLang, TensorRT-LLM) does that is
neither the model, the cluster nor the plan.

Fitted values (the per-step host floor, the per-kernel issue time without CUDA graphs) are read from
``cost_model/calibration/serving_fitted.yaml`` when ``plan-search calibrate --serving`` has written it
(``parameters: {name: {value: ...}}``, the layout of ``fitted.yaml``), else they take the documented prior.
Every field has a physical meaning and a unit in its name; ``__post_init__`` refuses values outside
physical bounds with a ValueError naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..options import CostOptions

SERVING_FITTED_FILE = Path(__file__).resolve().parent.parent / "calibration" / "serving_fitted.yaml"
"""Where ``plan-search calibrate --serving`` stores the serving parameters it fits."""


@lru_cache(maxsize=4)
def serving_fitted_parameters(path: Path = SERVING_FITTED_FILE) -> dict[str, float]:
    """Parameter name -> fitted value from ``serving_fitted.yaml``; empty before any serving calibration."""
    from ..calibration.stored import stored_parameters
    return stored_parameters(path)


GPU_DEPARTURE_PREFIXES = ("hbm.", "gemm.")
"""Names of the serving calibration's per GPU family (x precision) departures in ``serving_fitted.yaml``."""

GPU_EFFICIENCY_FIELDS = {"bf16": "gemm_efficiency", "fp8": "gemm_efficiency_fp8", "fp4": "gemm_efficiency_fp4"}

MAX_EFFICIENCY = 0.98
"""No kernel reaches its peak: a departure never lifts an efficiency above this."""


def _fitted_departures():
    return field(default_factory=lambda: tuple(sorted(
        (name, value) for name, value in serving_fitted_parameters().items() if name.startswith(GPU_DEPARTURE_PREFIXES))))


def fitted_gpu(gpu: Any, departures: tuple[tuple[str, float], ...]) -> Any:
    """``gpu`` with the departures of its family applied: ``hbm.<family>`` multiplies ``hbm_efficiency``,
    ``gemm.<family>.<precision>`` that precision's ``gemm_efficiency[_fp8|_fp4]`` (at most
    :data:`MAX_EFFICIENCY`); unchanged when none names its family."""
    from ..calibration.bands import gpu_family

    values = dict(departures)
    if not values:
        return gpu
    family = gpu_family(gpu)
    update: dict[str, float] = {}
    if f"hbm.{family}" in values:
        update["hbm_efficiency"] = min(gpu.hbm_efficiency * values[f"hbm.{family}"], MAX_EFFICIENCY)
    for precision, name in GPU_EFFICIENCY_FIELDS.items():
        base = getattr(gpu, name, None)
        if f"gemm.{family}.{precision}" in values and base:
            update[name] = min(base * values[f"gemm.{family}.{precision}"], MAX_EFFICIENCY)
    return gpu.model_copy(update=update) if update else gpu


def _fitted(name: str, prior: float):
    return field(default_factory=lambda: serving_fitted_parameters().get(name, prior))


BOUNDS = {
    "gpu_memory_utilization": (0.05, 1.0),
    "kv_block_tokens": (1, 1024),
    "step_overhead_us": (0.0, 200_000.0),
    "step_overhead_per_request_us": (0.0, 1_000.0),
    "eager_kernel_issue_us": (0.0, 500.0),
    "graph_launch_us": (0.0, 10_000.0),
    "cuda_context_gib": (0.0, 8.0),
    "cuda_graph_pool_gib": (0.0, 16.0),
    "non_torch_gib": (0.0, 16.0),
    "nvls_buffer_gib": (0.0, 16.0),
    "cuda_graph_max_batch": (1, 65536),
    "custom_all_reduce_mib": (0.0, 4096.0),
    "deepep_max_dispatch_tokens_per_rank": (1, 65536),
    "gemm_min_rows": (1, 256),
    "ep_kernel_fixed_us": (0.0, 1000.0),
    "moe_gemm_share": (0.05, 1.0),
}


@dataclass(frozen=True)
class ServingOptions:
    gpu_memory_utilization: float = 0.9
    """Share of the GPU's whole memory the engine may use for weights, activations, graphs, buffers and the
    KV cache (vLLM ``--gpu-memory-utilization``, default 0.9; SGLang ``--mem-fraction-static``; TensorRT-LLM
    ``kv_cache_free_gpu_mem_fraction`` is a share of what is left after the weights, 0.9 by default)."""

    kv_block_tokens: int = 16
    """Tokens per KV-cache page: capacity is a whole number of pages per attention rank (vLLM ``--block-size``,
    default 16 on CUDA; TensorRT-LLM ``tokens_per_block`` 32; SGLang ``--page-size`` 1)."""

    step_overhead_us: float = _fitted("step_overhead_us", 1000.0)
    """CPU time of one engine step that the GPU waits for whatever the mode: scheduling, building the
    step's input tensors (block tables, positions), sampling and output processing. Prior 1 ms: vLLM's
    v0.6.0 performance note ("vLLM v0.6.0: 2.7x Throughput Improvement and 5x Latency Reduction", vLLM blog,
    2024-09-05) measures the GPU idle for most of a Llama 3 8B H100 step before its CPU-overhead work, and
    the decode inter-token latency of Llama 3 8B BF16 on one H100 at batch 1 (about 6.5-7 ms) sits about 1 ms
    above its 16 GB weight read at 85% of 3.35 TB/s (5.6 ms). Fitted by ``calibrate --serving``."""

    step_overhead_per_request_us: float = _fitted("step_overhead_per_request_us", 10.0)
    """CPU time of one engine step per running request of the attention rank: the Python-side work each
    request costs every step (its input ids, positions and block-table row, sampling parameters, appending
    the sampled token, stop checks, detokenization). The vLLM v0.6.0 performance note (vLLM blog,
    2024-09-05) attributes most of a step's CPU time at large batches to these per-request stages; no
    per-request figure is published, so the prior (10 us) is wide and ``calibrate --serving`` fits it:
    at max load with thousands of running requests it, not the GPU, bounds small models' throughput."""

    eager_kernel_issue_us: float = 20.0
    """Host time to issue one kernel from eager PyTorch (CUDA graphs off: vLLM ``--enforce-eager``, SGLang
    ``--disable-cuda-graph``): the Python module, dispatcher and launch. Prior 20 us, the training model's
    prior for eager Megatron-Core (:attr:`cost_model.options.CostOptions.host_kernel_issue_us`); gpt-fast
    ("Accelerating Generative AI with PyTorch II: GPT, Fast", PyTorch blog 2023-11-30) measures eager
    Llama-2-7B decode at 25.5 tokens/s on A100, host bound, about 30 us per kernel. Held at this prior
    (:data:`cost_model.calibration.serving_fit.HELD_AT_PRIOR`: the Splitwise profile reads 19 us, the only
    source that measures it)."""

    overlap_scheduler: bool = False
    """Whether the engine prepares step n+1 on the CPU while the GPU runs step n, so a step takes the longer
    of its host work and its GPU time instead of their sum (:func:`cost_model.serving.step.step_total_s`).
    TensorRT-LLM's PyTorch backend does by default ("Overlap Scheduler", nvidia.github.io/TensorRT-LLM,
    ``disable_overlap_scheduler`` False), as does SGLang since v0.4 (zero-overhead batch scheduler, LMSYS blog
    2024-12-04); vLLM before its optional async scheduling does not: False, the conservative default."""

    overlap_scheduler_on_prefill_instances: bool = True
    """Whether a disaggregated plan's prefill instances keep :attr:`overlap_scheduler` (when it is on).
    TensorRT-LLM's context-only servers run without it (its disaggregated-serving guide; the emitted
    prefill options set ``disable_overlap_scheduler: true``, :mod:`optimizer.emit.trtllm`)."""

    kv_reserved_to_completion: bool = False
    """Whether the engine admits a request only when the KV pool can hold it to completion, its prompt plus
    its maximum output, and reserves that much while it runs: TensorRT-LLM's default capacity scheduler
    ``GUARANTEED_NO_EVICT`` ("Useful Runtime Options", nvidia.github.io/TensorRT-LLM: "GUARANTEED_NO_EVICT
    (default) ... guarantee that a started request is never paused"; NVIDIA's Dynamo mocker of that policy,
    ``dynamo-mocker`` ``src/scheduler/trtllm/policy.rs``: needed blocks = ceil((prompt_len +
    max_output_tokens) / block_size) minus those held). The KV-bound decode batch is then the pool over whole
    requests (input + output), not over the mean context of a request halfway through its output, which is
    what an engine that allocates pages as tokens arrive and preempts when full (vLLM, SGLang) keeps.
    False, the paged-on-demand default."""

    graph_launch_us: float = 30.0
    """Host time to launch one captured CUDA graph of a decode step (``cudaGraphLaunch`` of ~10^3 nodes,
    plus copying the step's inputs into the static buffers). With graphs the GPU's time, not the host's,
    sets a decode step."""

    cuda_context_gib: float = 0.5
    """GPU memory the CUDA context and the driver hold per process before any tensor: the GPU presets'
    ``memory_gib`` is the driver-reported capacity minus 0.5 GiB for it (hardware/presets/*.yaml,
    usable-memory rule), so the whole GPU is ``memory_gib + cuda_context_gib``."""

    non_torch_gib: float = 1.79
    """Memory the engine process holds outside PyTorch's allocator at TP 1, per GPU: the CUDA context,
    cuBLAS/cuDNN handles and workspaces, loaded kernel modules. vLLM's memory profile of Meta-Llama-3-8B on
    one H100 reports ``non_torch_memory 1.79GiB`` (vllm-project/vllm PR #10511, sanity-check log);
    communication buffers for TP > 1 are priced apart (:func:`cost_model.serving.memory.comm_buffer_bytes`)."""

    nvls_buffer_gib: float = 1.49
    """NCCL's NVLink SHARP (NVLS) buffers and multicast objects per GPU of a TP communicator on an NVSwitch
    domain with NVLS (``topology.nvls``). The same vLLM log reports ``non_torch_memory`` 3.58 GiB at TP 2 on
    H100 against 1.79 at TP 1: 1.79 GiB for the TP group, of which the NCCL ring buffers (0.29 GiB,
    :attr:`cost_model.options.CostOptions.nccl_buffer_mib_per_communicator`) and the custom all-reduce's
    8 MiB leave 1.49 GiB (NCCL documents NVLS as memory-hungry: ``NCCL_NVLS_ENABLE=0`` frees it)."""

    cuda_graph_pool_gib: float = 0.5
    """Memory of the captured decode graphs beyond their activations (cudaGraphExec objects and each graph's
    private allocations) per GPU. vLLM logs "Graph capturing finished in 14 secs, took 0.21 GiB" for
    Llama-3.2-1B with 35 graphs (vllm-project/vllm PR #11349), and warned that "CUDA graphs can take
    additional 1~3 GiB memory per GPU" (``worker/model_runner.py``, 2024); 0.5 GiB for the 7-70B models
    between them. The activations of the largest captured batch are priced apart
    (:mod:`cost_model.serving.memory`)."""

    cuda_graph_max_batch: int = 512
    """Largest decode batch captured in a graph (vLLM ``max_cudagraph_capture_size`` / older
    ``max_seq_len_to_capture`` batch list ends at 512; SGLang ``--cuda-graph-max-bs``)."""

    custom_all_reduce_mib: float = 8.0
    """Buffer of the engine's one-shot / two-shot all-reduce for small TP messages, per GPU (vLLM
    ``CustomAllreduce`` ``max_size`` 8 MiB, registered IPC buffers; TensorRT-LLM's allreduce workspace is
    of the same order)."""

    deepep_max_dispatch_tokens_per_rank: int = 128
    """Tokens one rank may dispatch per step in DeepEP's low-latency mode, which sizes its buffers
    (DeepEP ``Buffer.get_low_latency_rdma_size_hint(num_max_dispatch_tokens_per_rank, ...)``; SGLang and vLLM
    pass 128 by default)."""

    ep_kernel_fixed_us: float = 13.5
    """Fixed time of one expert-parallel dispatch or combine kernel beyond its bytes at the link rate and the
    network's latency (:class:`hardware.collectives.CollectiveCost` all-to-all): the kernel's launch, the
    per-expert count signalling and the receivers' polling and unpacking. DeepEP's low-latency kernels
    (github.com/deepseek-ai/DeepEP ``docs/legacy.md`` @b306af0, "Low-latency kernels with pure RDMA": H800,
    128 tokens a rank, hidden 7168, top-8 of 256 experts, FP8 dispatch, BF16 combine) take 77/118/155/173/
    192/194 us to dispatch on EP 8/16/32/64/128/256. The same bytes as an all-to-all on the h800 preset,
    received by the busiest rank (1.06-1.10 x the mean, :func:`cost_model.serving.queueing.moe_max_load_factor`),
    take 49/95/142/166/178/185 us: 7-28 us are left whatever the peer count (so it is not a per-peer
    latency), median 13.5 us over the dispatch rows. The combine rows (twice the bytes) are the check:
    predicted 106/193/283/330/354/367 us, published 114/195/273/314/369/360 (tests/test_serving_step.py)."""

    gemm_min_rows: int = 64
    """Smallest block of rows a tensor-core GEMM computes on GPUs with FP8 tensor cores (Hopper and later;
    16 before them, :data:`cost_model.serving.step.AMPERE_MMA_ROWS`): Hopper's warpgroup MMA is m64nNk16 (PTX ISA,
    "Asynchronous Warpgroup Level Matrix Multiply-Accumulate", wgmma shapes), and CUTLASS's smallest
    Hopper tiles are 64 rows; a decode GEMM of batch 8, or an expert that received 5 tokens, computes 64
    rows. (Weight streaming, not this, bounds small decode GEMMs; it matters for MoE experts with few
    tokens each.)"""

    moe_gemm_share: float = _fitted("moe_gemm_share", 0.53)
    """Share of the dense GEMM rate (the GPU's ``gemm_efficiency[_fp8|_fp4]`` x peak at the experts' MMA
    precision, with its serving departure) that a serving engine's fused-MoE grouped GEMMs reach in their
    compute-bound part: the per-expert problems are small (a few to a few thousand rows each at serving token
    counts), gathered by a permutation index and scheduled by a grouped-GEMM tile scheduler, and reach a lower
    share of the peak than one large dense GEMM. Their weight streaming stays at the HBM rate (a decode
    expert GEMM that streams its weights is not slowed). Applies to the routed experts' two GEMMs of the
    serving step only (:class:`cost_model.serving.step.InstancePricing`), not to training's Transformer
    Engine grouped GEMMs (fitted with the training model). Prior 0.53 (log-sd 0.3): the geometric mean of
    published fused-MoE kernel rates over the dense rate the GPU presets give the same GPU and precision
    (H100/H200 BF16 989 x 0.676 = 669 TFLOP/s; H200 FP8 1979 x 0.598 = 1183 TFLOP/s):

    * vllm-project/vllm PR #44818 (Triton fused MoE, H200 BF16, E=128 N=704 K=2816 top-8, M=4096 tokens,
      tuned): both GEMMs 2 x 4096 x 8 x (1408 x 2816 + 2816 x 704) = 3.90e11 FLOP in 1189.6 us = 328
      TFLOP/s, 0.49;
    * ByteDance-Seed/VeOmni PR #460 (torch._grouped_mm fused MoE forward, H100 BF16, S=32768 H=2048 FFN=768
      E=128 top-8): 242 TFLOP/s, 0.36;
    * linkedin/Liger-Kernel PR #1294 (tuned Triton fused MoE, H100 BF16, T=32768, Qwen3-30B-A3B shapes, its
      peak "roughly half of the H100's dense bf16 peak"): 523 TFLOP/s, 0.78;
    * deepseek-ai/DeepGEMM PR #323 (DeepEP + DeepGEMM FP8 grouped MoE layer, H200, 8192 tokens a rank,
      hidden 7168, 384 experts top-6, EP 4, its dispatch and combine included): 675 TFLOP/s, 0.57.

    ln-shares -0.71, -1.02, -0.25, -0.56: mean -0.64 (0.53), sd 0.32. Fitted by ``calibrate --serving`` on
    the MoE rows."""

    gpu_departures: tuple[tuple[str, float], ...] = _fitted_departures()
    """Per GPU family (x precision) departures of the GPU presets' achieved efficiencies that
    ``calibrate --serving`` fits (``hbm.<family>``, ``gemm.<family>.<precision>``; :func:`fitted_gpu`);
    empty before any serving calibration, i.e. the presets as they are."""

    cost: CostOptions = field(default_factory=CostOptions)
    """The training cost model's options the serving model reuses (GEMM tile, kernel overhead, NCCL
    buffers, attention kernel constants)."""

    def __post_init__(self) -> None:
        for name, (low, high) in BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"ServingOptions.{name} must lie in [{low:g}, {high:g}], got {value!r}")
        if int(self.kv_block_tokens) != self.kv_block_tokens:
            raise ValueError(f"ServingOptions.kv_block_tokens must be a whole number, got {self.kv_block_tokens!r}")

    def for_prefill_instances(self) -> "ServingOptions":
        """The options a disaggregated plan's prefill instances run with
        (:attr:`overlap_scheduler_on_prefill_instances`)."""
        if self.overlap_scheduler and not self.overlap_scheduler_on_prefill_instances:
            return replace(self, overlap_scheduler=False)
        return self

    def for_engine(self, engine: str | None) -> "ServingOptions":
        """These options with the runtime behaviour of ``engine`` (:data:`ENGINE_RUNTIME`); unchanged for
        no engine, where the search prices the conservative defaults (no overlap, pages on demand)."""
        if engine is None:
            return self
        return replace(self, **ENGINE_RUNTIME[engine])

    def with_changes(self, **changes: Any) -> "ServingOptions":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown ServingOptions field(s): {', '.join(unknown)}")
        return replace(self, **changes)


ENGINE_RUNTIME: dict[str, dict[str, bool]] = {
    "vllm": {"overlap_scheduler": True, "overlap_scheduler_on_prefill_instances": True,
             "kv_reserved_to_completion": False},
    "sglang": {"overlap_scheduler": True, "overlap_scheduler_on_prefill_instances": True,
               "kv_reserved_to_completion": False},
    "trtllm": {"overlap_scheduler": True, "overlap_scheduler_on_prefill_instances": False,
               "kv_reserved_to_completion": True},
}
"""How each engine the serve search emits for runs its steps by default, at the releases its arguments are
checked against (``optimizer.emit``'s ``TESTED_VERSION``), so that ``serve --emit ENGINE`` prices the plan the
engine will run:

* vLLM 0.34.0 schedules asynchronously (step n+1 prepared while the GPU runs step n) unless told not to:
  ``SchedulerConfig.async_scheduling`` defaults to None and ``VllmConfig.__post_init__`` sets it True for
  generative models on executors that support it (vllm/config/vllm.py); pages are allocated as tokens
  arrive, with preemption when the pool is full.
* SGLang 0.5.23 runs its overlap scheduler unless ``--disable-overlap-schedule``
  (``Scheduler.enable_overlap = not disable_overlap_schedule``, sglang/srt/managers/scheduler.py; only CPU
  devices and some Mamba cache layouts turn it off); its radix cache allocates as tokens arrive.
* TensorRT-LLM 1.2's PyTorch backend overlaps its scheduler (``disable_overlap_scheduler`` False) except on
  disaggregated context-only servers, and its default capacity scheduler ``GUARANTEED_NO_EVICT`` reserves
  each request's KV cache to completion (see :attr:`ServingOptions.kv_reserved_to_completion`)."""
