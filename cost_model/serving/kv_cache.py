"""The KV cache of a serving instance: exact bytes per token, per request and per GPU.

Per layer and token, an attention layer keeps what later queries read:

* multi-head / grouped-query attention (MHA, GQA, MQA): a key and a value vector per KV head,
  ``2 * n_kv * d_head`` elements (Llama 3 70B: 80 layers x 2 x 8 x 128 x 2 bytes = 327,680 B = 320 KiB
  per token in BF16);
* multi-head latent attention (MLA, DeepSeek-V2/V3): one compressed latent of ``kv_lora_rank`` plus the
  decoupled rotary key of ``qk_rope_head_dim``, shared by all heads, with no separate value (the values
  are up-projected from the same latent): ``kv_lora_rank + qk_rope_head_dim`` elements (DeepSeek-V2
  report, arXiv:2405.04434, section 2.1.4 and table 1: (d_c + d_h^R) l elements per token; DeepSeek-V3:
  61 x (512 + 64) x 2 bytes = 70,272 B per token in BF16).

Sliding-window layers (Mistral, Gemma 2/3, GPT-OSS) keep at most ``sliding_window`` tokens: a request of
``c`` tokens holds ``min(c, w)`` in them (vLLM's hybrid KV-cache manager and TensorRT-LLM's cyclic cache
allocate no more; ``vllm/v1/core/single_type_kv_cache_manager.py`` ``SlidingWindowManager``).

Element bytes: 2 for BF16/FP16, 1 for FP8 (vLLM ``--kv-cache-dtype fp8``, E4M3 with a per-tensor scale,
nothing per element).

Per GPU, tensor parallelism splits the KV heads: each rank holds ``ceil(n_kv / tp)`` heads, and at least
one, so past ``tp = n_kv`` every extra rank holds a copy (vLLM ``num_kv_heads // tp`` with replication when
``tp > num_kv_heads``, ``vllm/config.py get_num_kv_heads``). MLA's latent belongs to no head: every TP rank
holds all of it (vLLM's MLA backends, SGLang), which is why attention data parallelism exists for MLA
models: attention-DP ranks hold different requests instead of copies of the same latents. Pipeline
stages split the layers; the heaviest stage sets the per-GPU figure.

Paged attention allocates whole pages of ``kv_block_tokens`` tokens (vLLM block size 16): a request of
``c`` tokens holds ``ceil(c / B)`` pages in each full-attention layer, and the pool is a whole number of
pages (Kwon et al. 2023, "Efficient Memory Management for Large Language Model Serving with
PagedAttention", section 4.1).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..model_spec import ModelSpec
from .plan import KV_DTYPES, InstanceArrays

KV_ELEMENT_BYTES = {"bf16": 2.0, "fp8": 1.0}
"""Bytes per KV element by :data:`cost_model.serving.plan.KV_DTYPES` name."""

_KV_BYTES_BY_CODE = np.array([KV_ELEMENT_BYTES[name] for name in KV_DTYPES])


def kv_element_bytes(kv_dtype_codes) -> np.ndarray:
    """Bytes per cached element for KV dtype codes (indices into ``KV_DTYPES``)."""
    return _KV_BYTES_BY_CODE[np.asarray(kv_dtype_codes, dtype=np.int64)]


def kv_elements_per_token_per_layer(model: ModelSpec) -> int:
    """Cached elements of one token in one attention layer, whole model (all heads): MLA's latent plus
    rotary key, or a key and a value per KV head."""
    if model.is_mla:
        return model.kv_lora_rank + model.qk_rope_head_dim
    return 2 * model.num_kv_heads * model.head_dim


def _layer_kinds(model: ModelSpec) -> tuple[int, int]:
    """(full-attention layers, sliding-window layers)."""
    sliding = model.num_sliding_window_layers
    return model.num_layers - sliding, sliding


def kv_cache_bytes(model: ModelSpec, kv_dtype_codes, context_tokens) -> np.ndarray:
    """Bytes of KV cache one request of ``context_tokens`` holds, whole model, one copy (no TP
    replication, no page rounding); arrays broadcast."""
    context = np.asarray(context_tokens, dtype=np.float64)
    full, sliding = _layer_kinds(model)
    held = full * context + (sliding * np.minimum(context, model.sliding_window) if sliding else 0.0)
    return held * kv_elements_per_token_per_layer(model) * kv_element_bytes(kv_dtype_codes)


@lru_cache(maxsize=64)
def _heaviest_stage_layers(model: ModelSpec, pp: int) -> tuple[int, int]:
    """(full, sliding) attention layers of the pipeline stage with the most layers (ties: the most full
    layers), layers split into ``pp`` contiguous chunks with the remainder on the first stages (vLLM
    ``get_pp_indices``)."""
    kinds = model.sliding_window_layers if model.num_sliding_window_layers else (False,) * model.num_layers
    best = (0, 0)
    for chunk in np.array_split(np.asarray(kinds, dtype=bool), pp):
        counts = (int(len(chunk) - chunk.sum()), int(chunk.sum()))
        if (sum(counts), counts[0]) > (sum(best), best[0]):
            best = counts
    return best


def stage_attention_layers(model: ModelSpec, pp) -> tuple[np.ndarray, np.ndarray]:
    """Full-attention and sliding-window layers on the heaviest pipeline stage, per plan."""
    pp = np.asarray(pp, dtype=np.int64)
    full = np.empty(pp.shape, dtype=np.float64)
    sliding = np.empty(pp.shape, dtype=np.float64)
    for value in np.unique(pp):  # few distinct stage counts: one split each, not one per plan
        f, s = _heaviest_stage_layers(model, int(value))
        full[pp == value], sliding[pp == value] = f, s
    return full, sliding


def kv_heads_per_rank(model: ModelSpec, tp) -> np.ndarray:
    """KV heads (or MLA latents, 1) each TP rank holds: ceil(n_kv / tp), at least one."""
    tp = np.asarray(tp, dtype=np.float64)
    if model.is_mla:
        return np.ones_like(tp)
    return np.maximum(1.0, np.ceil(model.num_kv_heads / tp))


def kv_bytes_per_token_per_layer_per_rank(model: ModelSpec, instances: InstanceArrays) -> np.ndarray:
    """KV bytes one token adds to one attention layer on one GPU of each instance."""
    if model.is_mla:
        elements = float(kv_elements_per_token_per_layer(model))
    else:
        elements = 2.0 * kv_heads_per_rank(model, instances.tp) * model.head_dim
    return elements * kv_element_bytes(instances.kv_dtype)


def kv_bytes_per_token_per_rank(model: ModelSpec, instances: InstanceArrays) -> np.ndarray:
    """KV bytes one token adds on one GPU (heaviest pipeline stage), counting every attention layer of
    the stage: exact while a request is within the sliding window, an upper bound past it."""
    full, sliding = stage_attention_layers(model, instances.pp)
    return (full + sliding) * kv_bytes_per_token_per_layer_per_rank(model, instances)


def kv_request_bytes_per_rank(model: ModelSpec, instances: InstanceArrays, context_tokens,
                              block_tokens: int = 1) -> np.ndarray:
    """KV bytes one request of ``context_tokens`` holds on one GPU of each instance (heaviest stage),
    in whole pages of ``block_tokens``; sliding-window layers hold at most the window (rounded up to
    pages)."""
    context = np.asarray(context_tokens, dtype=np.float64)
    block = float(block_tokens)
    full, sliding = stage_attention_layers(model, instances.pp)
    full_tokens = np.ceil(context / block) * block
    held = full * full_tokens
    if model.num_sliding_window_layers:
        held = held + sliding * np.ceil(np.minimum(context, model.sliding_window) / block) * block
    return held * kv_bytes_per_token_per_layer_per_rank(model, instances)


def kv_replication(model: ModelSpec, tp) -> np.ndarray:
    """Copies of each KV head (or MLA latent) across the TP ranks of one attention group: tp / n_kv past
    n_kv, 1 below; tp for MLA."""
    tp = np.asarray(tp, dtype=np.float64)
    heads = 1.0 if model.is_mla else float(model.num_kv_heads)
    return np.maximum(1.0, tp * kv_heads_per_rank(model, tp) / heads)
