"""The engine settings ``trtllm-bench throughput`` derives for itself when its command passes no
``--max_batch_size`` / ``--max_num_tokens``, as the TensorRT-LLM perf-overview runs do.

The perf pages' command (NVIDIA/TensorRT-LLM ``docs/source/performance/perf-overview.md``
@00f37686aa854010d68bcbd0f4ab000221541ca6 and ``docs/source/developer-guide/perf-overview.md``
@03e27c7d5ff0c6e89f8328838c0a8e64f1b34f9d) is ``trtllm-bench --tp $tp_size --pp $pp_size [--ep $ep_size]
--model $model_name throughput --dataset $dataset_file --backend pytorch --extra_llm_api_options
$llm_options`` with ``--kv_cache_free_gpu_mem_fraction 0.95`` "in many cases". With neither limit given,
``tensorrt_llm/bench/benchmark/utils/general.py`` ``get_settings`` (@0171265edef1c67ef334e0db2427148161aa2815)
takes them from ``tensorrt_llm/bench/build/build.py`` ``get_benchmark_engine_settings``
(@000a01de66f0eab4ab05640711f0253f50f5209c), a deterministic heuristic of the model's config, its
checkpoint, the GPU and the dataset's mean ISL/OSL (:func:`benchmark_settings`):

* ``TUNED_QUANTS`` = {NVFP4, FP8, FP8_BLOCK_SCALES, NO_QUANT, None}; any other checkpoint quantization
  (GPT-OSS's MXFP4) gets ``BuildConfig``'s defaults, max_batch_size 2048 and max_num_tokens 8192
  (``tensorrt_llm/builder.py`` @008b2b8d23af95e4e19fa6f354f9c5f6349b2bfc, ``class BuildConfig``);
* otherwise ``tensorrt_llm/bench/build/tuning.py`` ``calc_engine_setting`` and ``finetune_setting``
  (@04cba882084a25665e7f80f5bda71b35b9790b6f) (:func:`calc_engine_setting`, :func:`finetune_setting`);
* chunked prefill is off unless asked for (``get_settings``: ``enable_chunked_prefill`` defaults to False
  and the perf pages' llm_options do not set it), so max_num_tokens is raised to at least
  ``max_isl + max_batch_size``: a whole prompt must fit in one step beside a full decode batch.

The heuristic's own estimates are reproduced on purpose where they differ from what the engine then holds
(the engine's real KV pool is the serving model's memory accounting, and its scheduler admits only what
that pool holds: :func:`cost_model.serving.evaluate._largest_batch`):

* bytes per KV token count ``max(tp, n_kv)`` heads per layer over every ``num_hidden_layers``, with HF's
  ``num_key_value_heads`` and ``head_dim`` (hidden / heads when absent): MLA's latent is not known to it
  (DeepSeek-V3 reads 128 heads of 56), nor sliding windows;
* the engine size is the checkpoint's safetensors *element* count (``ModelConfig.get_param_count``: the sum
  of ``parameter_count`` of the safetensors metadata, ``tensorrt_llm/bench/build/dataclasses.py``
  @04cba882) times 0.5 / 1 / 2 bytes for NVFP4 / FP8 / 16-bit (``tuning.py`` ``BYTES_PER_ELEM``): an NVFP4
  checkpoint stores two weights per uint8 element and an FP8 scale per 16 (:data:`SAFETENSORS_ELEMENTS`),
  so its engine size is counted about half of what it is;
* the GPU memory is NVML's whole-device total in GiB (``tensorrt_llm/bench/build/utils.py``
  ``get_device_memory`` @7ed07f0691dff2c1c89196adee670ce9f4f15f67) times every GPU of the run, activations
  and the CUDA context ignored.

Under attention data parallelism (``enable_attention_dp``) the heuristic still reads ``--tp`` as the
whole TP world, and max_batch_size / max_num_tokens bound each attention rank's own scheduler; the
executor spreads the queued requests evenly over the ranks (``tensorrt_llm/_torch/pyexecutor/
executor_request_queue.py`` ``_schedule_attention_dp_requests``: each rank gets at most
``ceil(requests / ranks)`` and never more than ``max_batch_size``), so a rank cannot run more than its share
of the dataset's requests (:func:`running_requests_per_rank`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..model_spec import ModelSpec
from ..params import ParameterCounts
from ..serving.kv_cache import KV_ELEMENT_BYTES
from ..serving.memory import WEIGHT_FORMAT_BYTES, part_weight_bytes
from ..serving.plan import WEIGHT_PRECISIONS

KV_CACHE_FREE_GPU_MEM_FRACTION = 0.95
"""The perf pages' ``--kv_cache_free_gpu_mem_fraction 0.95`` ("In many cases ... We fall back to 0.90 or
lower if out-of-memory errors are encountered"): the fraction the heuristic sizes its batch with."""

BENCH_BYTES_PER_ELEMENT = {"fp4": 0.5, "fp8": 1.0, "bf16": 2.0}
"""``tuning.py`` ``BYTES_PER_ELEM`` by the checkpoint's quant_algo: NVFP4 0.5, FP8 and FP8_BLOCK_SCALES 1,
NO_QUANT (and anything else) 2; applied to safetensors elements, not to weights."""

SAFETENSORS_ELEMENTS = {"bf16": 1.0, "fp8": 1.0, "fp8_block": 1.0 + 1.0 / 128 ** 2, "nvfp4": 0.5 + 1.0 / 16,
                        "mxfp4": 0.5 + 1.0 / 32}
"""Safetensors elements stored per weight by storage format (what ``get_param_count`` sums): one BF16 or
F8_E4M3 element per weight (per-tensor scales are single elements: left out); DeepSeek-V3's FP8 adds an fp32
scale per 128 x 128 block; NVFP4 packs two E2M1 weights per uint8 element beside an E4M3 scale per 16
(ModelOpt's ``weight`` [out, in/2] U8 and ``weight_scale`` [out, in/16]); MXFP4 an E8M0 scale per 32
(OCP Microscaling Formats v1.0, section 5)."""

_FORMAT_OF_BYTES = {value: name for name, value in WEIGHT_FORMAT_BYTES.items()}

BUILD_CONFIG_DEFAULTS = (2048, 8192)
"""``BuildConfig`` max_batch_size and max_num_tokens: what an untuned quantization (MXFP4) runs with."""

MAX_REQUESTS_CAP = 4096
"""``finetune_setting``: the batch is capped at 4096 requests "to avoid decoder buffer size becoming too large"."""
MAX_TOKENS_CAP = 32768
"""``finetune_setting``: the token budget is capped at 32768 "to avoid TRT activation buffer becoming too large"."""

_PARTS = ("attention", "dense_mlp", "shared_experts", "experts")


@dataclass(frozen=True)
class BenchSettings:
    """What one trtllm-bench run ran with, per attention rank."""

    max_batch_size: int
    max_num_tokens: int
    """After the chunked-prefill-off floor (max_isl + max_batch_size)."""
    tuned: bool
    """False: the checkpoint's quantization is not in TUNED_QUANTS and BuildConfig's defaults ran."""
    kv_cache_max_requests: float | None
    """The heuristic's estimate of the requests its KV cache holds (None when untuned)."""


def checkpoint_elements(model: ModelSpec, weight_precision: str) -> float:
    """Safetensors elements of the checkpoint served at ``weight_precision`` (``get_param_count``): each
    layer part in the storage format the serving model gives it (:func:`cost_model.serving.memory.
    part_weight_bytes`, read back to its format), embeddings, LM head, norms and routers one BF16 element
    each. Multi-token-prediction modules are not counted (:attr:`ParameterCounts.total` leaves them out)."""
    counts = ParameterCounts(model)
    code = WEIGHT_PRECISIONS.index(weight_precision)
    per_part = {"attention": counts.attention * model.num_layers,
                "dense_mlp": counts.dense_mlp * model.num_dense_layers,
                "shared_experts": counts.shared_experts * model.num_moe_layers,
                "experts": counts.expert * model.num_experts * model.num_moe_layers if model.is_moe else 0}
    elements = 0.0
    for part in _PARTS:
        stored = _FORMAT_OF_BYTES[float(part_weight_bytes(model, [code], part)[0])]
        elements += per_part[part] * SAFETENSORS_ELEMENTS[stored]
    unquantized = (counts.embedding + counts.lm_head + counts.final_norm + counts.layer_norms * model.num_layers
                   + counts.router * model.num_moe_layers)
    return elements + unquantized


def is_tuned(model: ModelSpec, weight_precision: str) -> bool:
    """Whether the checkpoint's quant_algo is in ``TUNED_QUANTS``: NVFP4, FP8 (per-tensor or block), none.
    An MXFP4 checkpoint (GPT-OSS) is W4A16_MXFP4 / W4A8_MXFP4_* to TensorRT-LLM: not tuned."""
    return not (weight_precision == "fp4" and model.checkpoint_weight_format == "mxfp4")


def finetune_setting(kv_cache_max_requests: float, input_len: float, output_len: float, pp: int) -> tuple[int, int]:
    """``tuning.py`` ``finetune_setting`` with optimistic tuning on: the batch is the KV estimate over the
    pipeline stages, rounded up (at least 64; to 32 below 256, 128 below 1024, else 256); the token budget
    is the batch's prompt and decode tokens of one step, batch x (1 + ISL/OSL), rounded up (at least 2048;
    to 256 below 4096, 512 below 8192, else 1024)."""
    raw_bs = min(kv_cache_max_requests, MAX_REQUESTS_CAP) / pp
    raw_token = min(raw_bs * (1 + input_len / output_len), MAX_TOKENS_CAP)
    max_bs = max(64, _round_up_in_bands(raw_bs, ((256, 32), (1024, 128)), 256))
    max_token = max(2048, _round_up_in_bands(raw_token, ((4096, 256), (8192, 512)), 1024))
    return max_bs, max_token


def _round_up_in_bands(value: float, bands: tuple[tuple[int, int], ...], last_step: int) -> int:
    """``value`` rounded up to a multiple of the step of the first band it lies below ((below, step), ...),
    else of ``last_step``: ``finetune_setting``'s if/elif ladders."""
    step = next((step for below, step in bands if value < below), last_step)
    return step * math.ceil(value / step)


def kv_cache_max_requests(model: ModelSpec, device_memory_gib: float, weight_precision: str, kv_dtype: str,
                          tp: int, pp: int, input_len: float, output_len: float,
                          fraction: float = KV_CACHE_FREE_GPU_MEM_FRACTION) -> float:
    """``tuning.py`` ``calc_engine_setting``'s estimate of the requests of ISL + OSL tokens the run's KV cache
    holds (module docstring: its own estimate, in GiB of 1024^3 bytes):
    (device GiB x tp x pp - elements x bytes per element / 1024^3) x fraction
    / (2 x layers x max(tp, n_kv) x head_dim x KV bytes / 1024^3 x (ISL + OSL))."""
    gib = 1024.0 ** 3
    per_token_gib = (2 * model.num_layers * max(tp, model.num_kv_heads) * model.head_dim
                     * KV_ELEMENT_BYTES[kv_dtype] / gib)
    engine_gib = checkpoint_elements(model, weight_precision) * BENCH_BYTES_PER_ELEMENT[weight_precision] / gib
    available_gib = device_memory_gib * tp * pp - engine_gib
    return available_gib * fraction / (per_token_gib * (input_len + output_len))


def benchmark_settings(model: ModelSpec, device_memory_gib: float, weight_precision: str, kv_dtype: str,
                       tp: int, pp: int, input_len: float, output_len: float, max_input_len: float | None = None,
                       fraction: float = KV_CACHE_FREE_GPU_MEM_FRACTION) -> BenchSettings:
    """max_batch_size and max_num_tokens of one ``trtllm-bench throughput`` run without either given
    (module docstring). ``tp`` is trtllm-bench's ``--tp``: every GPU of a pipeline stage, attention-DP ranks
    included; ``device_memory_gib`` NVML's total of one GPU."""
    max_input_len = input_len if max_input_len is None else max_input_len
    if is_tuned(model, weight_precision):
        requests = kv_cache_max_requests(model, device_memory_gib, weight_precision, kv_dtype, tp, pp,
                                         input_len, output_len, fraction)
        if requests < 1:
            raise ValueError(f"trtllm-bench refuses the run: its KV estimate holds {requests:.2f} requests")
        max_bs, max_tokens = finetune_setting(requests, input_len, output_len, pp)
    else:
        requests = None
        max_bs, max_tokens = BUILD_CONFIG_DEFAULTS
    # get_settings: chunked prefill off -> max_num_tokens = max(max_num_tokens, max_isl + max_batch_size).
    max_tokens = max(max_tokens, int(math.ceil(max_input_len)) + max_bs)
    return BenchSettings(max_batch_size=max_bs, max_num_tokens=max_tokens, tuned=requests is not None,
                         kv_cache_max_requests=requests)


def running_requests_per_rank(max_batch_size: int, num_requests: int | None, attn_dp: int) -> int:
    """Most requests one attention rank runs at once: max_batch_size, and no more than its share of the
    dataset's requests, ceil(requests / ranks) (the attention-DP balancer; one rank without it)."""
    if num_requests is None:
        return max_batch_size
    return min(max_batch_size, -(-num_requests // max(attn_dp, 1)))
