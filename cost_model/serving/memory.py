"""Device memory of a serving instance per GPU: weights, KV cache and what the engine holds beside them.

The engine may use ``gpu_memory_utilization`` of the whole GPU (vLLM's rule; the GPU presets'
``memory_gib`` is the driver-reported capacity less the CUDA context, so the whole GPU is
``memory_gib + cuda_context_gib``). From that budget it takes, per GPU:

* weights of the heaviest pipeline stage (:func:`weight_bytes_per_rank`);
* activations: the peak of a forward over the chunked-prefill budget (vLLM's profiling run,
  ``gpu_worker.determine_available_memory``) (:func:`activation_bytes`);
* the CUDA-graph pool (captured decode graphs) when graphs are on;
* communication buffers: NCCL's per communicator, the engine's custom all-reduce buffer, DeepEP's
  low-latency buffers for expert parallelism;
* other: what the process holds outside PyTorch's allocator (CUDA context, library handles);

and what is left is the KV pool, a whole number of pages (:mod:`cost_model.serving.kv_cache`).

Weights per GPU (counts from :class:`cost_model.params.ParameterCounts`):

* attention: Q and O split over the TP ranks, each rank's K and V projections for its ``ceil(n_kv/tp)``
  KV heads (at least one: replicated past ``tp = n_kv``), MLA's down-projections and norms replicated
  (``ParameterCounts.attention_tp_replicated``); attention and everything outside the routed experts is
  replicated across attention-DP ranks;
* dense MLPs and shared experts split over the TP ranks; routed experts over ``ep x moe_tp`` ranks
  (``E / ep`` experts each, each split ``moe_tp`` ways); router and norms replicated;
* embedding and LM head vocabulary-parallel over TP (vLLM ``VocabParallelEmbedding``, ``ParallelLMHead``),
  on the first and last pipeline stage (a tied matrix on both when pp > 1).

Bytes per weight by precision (:func:`part_weight_bytes`): BF16 2; FP8 1 (per-tensor or per-channel
scales, nothing per element) or 1 + 4/128^2 with DeepSeek-V3's fp32 scale per 128 x 128 block; NVFP4 0.5
+ 1/16 = 0.5625 (an E4M3 scale per 16 values; arXiv:2509.25149, section 2); MXFP4 0.5 + 1/32 = 0.53125
(an E8M0 scale per 32 values; OCP Microscaling Formats v1.0, section 5). Embeddings, LM head, norms and
routers stay BF16 (vLLM's and ModelOpt's quantized checkpoints leave them unquantized).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hardware.schema import GPUSpec, TopologySpec

from ..model_spec import CHECKPOINT_FORMAT_PRECISION, ModelSpec
from ..params import ParameterCounts
from .kv_cache import kv_bytes_per_token_per_rank, kv_heads_per_rank, kv_request_bytes_per_rank
from .options import ServingOptions
from .plan import WEIGHT_PRECISIONS, InstanceArrays

GIB = 2.0 ** 30
MIB = 2.0 ** 20

WEIGHT_FORMAT_BYTES = {
    "bf16": 2.0,
    "fp8": 1.0,
    "fp8_block": 1.0 + 4.0 / (128 * 128),
    "nvfp4": 0.5 + 1.0 / 16,
    "mxfp4": 0.5 + 1.0 / 32,
}
"""Bytes per weight of each storage format, scales included (module docstring)."""

ACT_BYTES = 2.0
"""BF16 activations."""
LOGIT_BYTES = 12.0
"""Bytes per vocabulary entry of each sampled request: fp32 logits, the sampler's fp32 probabilities and
its fp32 log-probabilities (vLLM ``Sampler``: ``logits.float()``, ``softmax``, ``log_softmax``)."""


def part_weight_bytes(model: ModelSpec, weight_precision_codes, part: str) -> np.ndarray:
    """Bytes per weight of one layer ``part`` (attention, dense_mlp, shared_experts, experts) under each
    instance's weight precision code.

    bf16 runs every part in BF16. fp8 and fp4 use the checkpoint's format on the parts it quantized when
    the checkpoint is of that kind (GPT-OSS: MXFP4 experts, BF16 attention); parts it left out stay BF16.
    A BF16 checkpoint served in fp8 is quantized on load (vLLM ``--quantization fp8``: per-tensor FP8 on
    every linear layer); one served in fp4 takes NVFP4 on every linear layer (ModelOpt's NVFP4 recipe)."""
    codes = np.asarray(weight_precision_codes, dtype=np.int64)
    out = np.full(codes.shape, WEIGHT_FORMAT_BYTES["bf16"])
    stored = model.checkpoint_weight_format
    quantized_parts = model.checkpoint_quantized_parts or ("attention", "dense_mlp", "shared_experts", "experts")
    for code, name in enumerate(WEIGHT_PRECISIONS):
        if name == "bf16":
            continue
        kind = "fp8" if name == "fp8" else "fp4"
        if stored and CHECKPOINT_FORMAT_PRECISION[stored] == kind:
            value = WEIGHT_FORMAT_BYTES[stored] if part in quantized_parts else WEIGHT_FORMAT_BYTES["bf16"]
        else:
            value = WEIGHT_FORMAT_BYTES["fp8" if kind == "fp8" else "nvfp4"]
        out = np.where(codes == code, value, out)
    return out


@dataclass
class LayerWeights:
    """Weights one GPU holds of each layer kind (elements and bytes, arrays over instances)."""

    attention_bytes: np.ndarray
    dense_mlp_bytes: np.ndarray
    shared_experts_bytes: np.ndarray
    expert_bytes: np.ndarray
    """One routed expert's shard (1/moe_tp of it)."""
    local_experts: np.ndarray
    """Routed experts per EP rank: E / ep."""
    replicated_bytes: np.ndarray
    """Norms and router of one layer (BF16, on every rank)."""
    embedding_bytes: np.ndarray
    lm_head_bytes: np.ndarray

    @property
    def dense_layer_bytes(self) -> np.ndarray:
        return self.attention_bytes + self.dense_mlp_bytes + self.replicated_bytes

    @property
    def moe_layer_bytes(self) -> np.ndarray:
        return self.attention_bytes + self.shared_experts_bytes + self.local_experts * self.expert_bytes \
            + self.replicated_bytes


def layer_weights(model: ModelSpec, instances: InstanceArrays) -> LayerWeights:
    """Per-GPU weight bytes of each part (module docstring)."""
    counts = ParameterCounts(model)
    tp = instances.tp.astype(np.float64)
    h = model.hidden_size
    replicated_attention = counts.attention_tp_replicated
    split_attention = counts.attention - replicated_attention
    if model.is_mla:
        attention = replicated_attention + split_attention / tp
    else:
        kv_width = 2 * model.num_kv_heads * model.head_dim
        kv = h * kv_width + (kv_width if model.qkv_bias else 0)
        kv_share = kv_heads_per_rank(model, tp) / model.num_kv_heads
        attention = replicated_attention + (split_attention - kv) / tp + kv * kv_share
    wp = instances.weight_precision
    ep = np.maximum(instances.ep, 1).astype(np.float64)
    moe_tp = np.maximum(instances.moe_tp, 1).astype(np.float64)
    vocab_share = 1.0 / tp
    return LayerWeights(
        attention_bytes=attention * part_weight_bytes(model, wp, "attention"),
        dense_mlp_bytes=counts.dense_mlp / tp * part_weight_bytes(model, wp, "dense_mlp"),
        shared_experts_bytes=counts.shared_experts / tp * part_weight_bytes(model, wp, "shared_experts"),
        expert_bytes=counts.expert / moe_tp * part_weight_bytes(model, wp, "experts"),
        local_experts=model.num_experts / ep if model.is_moe else np.zeros_like(ep),
        replicated_bytes=np.full(tp.shape, (counts.layer_norms + counts.router) * ACT_BYTES),
        embedding_bytes=counts.embedding * vocab_share * ACT_BYTES,
        lm_head_bytes=counts.lm_head * vocab_share * ACT_BYTES + counts.final_norm * ACT_BYTES,
    )


def _stage_layer_kinds(model: ModelSpec, pp: int) -> list[tuple[int, int]]:
    """(dense, MoE) layers of each pipeline stage, contiguous with the remainder on the first stages."""
    kinds = np.asarray(model.moe_layers if model.is_moe else (False,) * model.num_layers, dtype=bool)
    return [(int(len(chunk) - chunk.sum()), int(chunk.sum())) for chunk in np.array_split(kinds, pp)]


def weight_bytes_per_rank(model: ModelSpec, instances: InstanceArrays) -> np.ndarray:
    """Weight bytes on the most loaded GPU of each instance (heaviest pipeline stage)."""
    weights = layer_weights(model, instances)
    out = np.zeros(len(instances))
    for value in np.unique(instances.pp):
        rows = instances.pp == value
        stages = _stage_layer_kinds(model, int(value))
        best = np.zeros(int(rows.sum()))
        for index, (dense, moe) in enumerate(stages):
            stage = dense * weights.dense_layer_bytes[rows] + moe * weights.moe_layer_bytes[rows]
            if index == 0:
                stage = stage + weights.embedding_bytes[rows]
            if index == len(stages) - 1:
                # The last stage holds the LM head and the final norm; a tied matrix is the embedding,
                # which a last stage other than the first holds a copy of.
                stage = stage + weights.lm_head_bytes[rows]
                if model.tie_embeddings and len(stages) > 1:
                    stage = stage + weights.embedding_bytes[rows]
            best = np.maximum(best, stage)
        out[rows] = best
    return out


def total_weight_bytes(model: ModelSpec, weight_precision_codes) -> np.ndarray:
    """Bytes of the whole model's weights (one copy), per precision code: what one GPU would hold."""
    one = InstanceArrays.from_columns({"tp": np.ones_like(np.atleast_1d(weight_precision_codes)),
                                       "weight_precision": np.atleast_1d(weight_precision_codes),
                                       "max_num_seqs": 1, "max_num_batched_tokens": 1})
    return weight_bytes_per_rank(model, one)


def activation_bytes_per_token(model: ModelSpec, instances: InstanceArrays) -> np.ndarray:
    """Peak live activation bytes per token of one forward on one GPU.

    Inside a layer the residual stream and the normalised hidden state (2h) live beside the widest
    intermediate: the fused QKV output ((a/tp + 2 kv_heads_per_rank) d) with the attention output
    (a d / tp), or the MLP's gate-and-up output (2F/tp) with its activation (F/tp). A MoE layer's fused
    kernel holds per routed pair its gate-and-up output, activation and down output (vLLM ``fused_moe``
    ``intermediate_cache1..3``: 2f/moe_tp + f/moe_tp + h), ``k x attn_dp / ep`` pairs per token of an
    attention rank when the experts are spread (balanced routing)."""
    tp = instances.tp.astype(np.float64)
    h = model.hidden_size
    heads = model.num_attention_heads / tp
    if model.is_mla:
        qkv = heads * model.q_head_dim + model.kv_lora_rank + model.qk_rope_head_dim \
            + heads * (model.qk_nope_head_dim + model.v_head_dim)
    else:
        qkv = (heads + 2 * kv_heads_per_rank(model, tp)) * model.head_dim
    attention = qkv + heads * model.v_dim
    widest = attention
    if model.num_dense_layers:
        widest = np.maximum(widest, 3 * model.ffn_hidden_size / tp)
    if model.is_moe:
        pairs = model.experts_per_token * instances.attn_dp / np.maximum(instances.ep, 1)
        f = model.moe_ffn_hidden_size / np.maximum(instances.moe_tp, 1)
        routed = pairs * (3 * f + h) + 3 * model.shared_expert_ffn_hidden_size / tp
        widest = np.maximum(widest, routed)
    return (2 * h + widest) * ACT_BYTES


def activation_bytes(model: ModelSpec, instances: InstanceArrays, tokens=None, sampling: bool = True) -> np.ndarray:
    """Peak activation bytes of a forward over ``tokens`` per attention rank (default: the chunked-prefill
    budget ``max_num_batched_tokens``), plus (``sampling``) the sampler's tensors for one request per
    running request up to ``max_num_seqs`` (or ``tokens``) over the whole vocabulary, gathered on every TP
    rank (:data:`LOGIT_BYTES`)."""
    tokens = instances.max_num_batched_tokens if tokens is None else np.asarray(tokens, dtype=np.float64)
    sampled = np.minimum(instances.max_num_seqs, tokens) if sampling else 0.0
    return tokens * activation_bytes_per_token(model, instances) + sampled * model.vocab_size * LOGIT_BYTES


def comm_buffer_bytes(model: ModelSpec, instances: InstanceArrays, options: ServingOptions,
                      nvls: bool = False) -> np.ndarray:
    """Communication buffers per GPU: NCCL's per communicator (TP, PP, and the attention-DP / EP group)
    (:attr:`cost_model.options.CostOptions.nccl_buffer_mib_per_communicator`), the custom all-reduce
    buffer for TP, NCCL's NVLS buffers for TP on an NVLS domain (:attr:`ServingOptions.nvls_buffer_gib`),
    and DeepEP's low-latency buffers for EP.

    DeepEP (``csrc/config.hpp`` ``LowLatencyLayout``, ``get_low_latency_rdma_size_hint``): odd/even copies of
    a send area, the larger of T dispatch messages and E x T BF16 combine messages (2h bytes), and of a
    receive area of E x T messages of the larger kind (BF16 hidden plus a 16-byte ``int4`` header:
    2h + 16), T = ``num_max_dispatch_tokens_per_rank``: 2 E T (2h) + 2 E T (2h + 16) = 2 E T (4h + 16)
    bytes (DeepSeek-V3, 128 tokens: 1.88 GB)."""
    nccl = options.cost.nccl_buffer_mib_per_communicator * MIB
    communicators = ((instances.tp > 1).astype(float) + (instances.pp > 1)
                     + ((instances.attn_dp > 1) | (instances.ep > 1)))
    custom = np.where(instances.tp > 1, options.custom_all_reduce_mib * MIB
                      + (options.nvls_buffer_gib * GIB if nvls else 0.0), 0.0)
    deepep = 0.0
    if model.is_moe:
        deepep = np.where(instances.ep > 1, 2.0 * model.num_experts * options.deepep_max_dispatch_tokens_per_rank
                          * (4 * model.hidden_size + 16), 0.0)
    return communicators * nccl + custom + deepep


@dataclass
class ServingMemory:
    """Bytes per GPU of each part, KV capacity and the memory rules, arrays over instances."""

    weights: np.ndarray
    kv: np.ndarray
    """The KV pool: whole pages, never negative."""
    activations: np.ndarray
    cuda_graph: np.ndarray
    comm_buffers: np.ndarray
    other: np.ndarray
    """Memory outside PyTorch's allocator: CUDA context, library handles (:attr:`ServingOptions.non_torch_gib`)."""
    budget: np.ndarray
    """gpu_memory_utilization x the whole GPU."""
    kv_bytes_per_token: np.ndarray
    """KV bytes per token per GPU (every layer of the heaviest stage)."""
    kv_capacity_tokens: np.ndarray
    """Tokens the KV pool of one attention rank holds (whole pages)."""
    max_concurrency: np.ndarray
    """Requests of max_model_len tokens the instance's KV pools hold at once (attention-DP ranks
    together); not capped by max_num_seqs."""
    weights_fit: np.ndarray
    kv_fits_one_request: np.ndarray
    prefill_workspace_fits: np.ndarray

    @property
    def breakdown_gib(self) -> dict[str, np.ndarray]:
        """``weights kv activations cuda_graph comm_buffers other`` in GiB per GPU."""
        return {name: getattr(self, name) / GIB for name in
                ("weights", "kv", "activations", "cuda_graph", "comm_buffers", "other")}


def instance_memory(model: ModelSpec, gpu: GPUSpec, instances: InstanceArrays, max_model_len,
                    options: ServingOptions | None = None, topology: TopologySpec | None = None) -> ServingMemory:
    """Memory per GPU of each instance and the KV capacity that is left (module docstring); ``topology``
    (the cluster's) adds NCCL's NVLS buffers where the scale-up domain has NVLink SHARP."""
    options = options or ServingOptions()
    max_model_len = np.asarray(max_model_len, dtype=np.float64)
    whole_gpu = (gpu.memory_gib + options.cuda_context_gib) * GIB
    budget = np.full(len(instances), options.gpu_memory_utilization * whole_gpu)
    weights = weight_bytes_per_rank(model, instances)
    activations = activation_bytes(model, instances)
    captured = np.minimum(instances.max_num_seqs, options.cuda_graph_max_batch)
    # The graphs' pool holds the largest captured batch's activations; sampling runs outside the graphs.
    cuda_graph = np.where(instances.cuda_graphs, options.cuda_graph_pool_gib * GIB
                          + activation_bytes(model, instances, captured, sampling=False), 0.0)
    comm = comm_buffer_bytes(model, instances, options, nvls=bool(topology is not None and topology.nvls))
    other = np.full(len(instances), options.non_torch_gib * GIB)
    fixed = weights + cuda_graph + comm + other
    left = budget - fixed - activations
    per_token = kv_bytes_per_token_per_rank(model, instances)
    page_bytes = options.kv_block_tokens * per_token
    pages = np.floor(np.maximum(left, 0.0) / page_bytes)
    kv = pages * page_bytes
    request = kv_request_bytes_per_rank(model, instances, max_model_len, options.kv_block_tokens)
    return ServingMemory(
        weights=weights, kv=kv, activations=activations, cuda_graph=cuda_graph, comm_buffers=comm, other=other,
        budget=budget, kv_bytes_per_token=per_token, kv_capacity_tokens=pages * options.kv_block_tokens,
        max_concurrency=np.floor(kv / request) * instances.attn_dp,
        weights_fit=fixed <= budget, kv_fits_one_request=(kv >= request) & (left > 0),
        prefill_workspace_fits=fixed + activations <= budget)


def kv_requests_per_rank(model: ModelSpec, instances: InstanceArrays, memory: ServingMemory, context_tokens,
                         options: ServingOptions | None = None) -> np.ndarray:
    """Requests of ``context_tokens`` whose KV cache one attention rank's pool holds at once: exact for
    sliding-window models, whose sliding layers hold at most the window (``kv_capacity_tokens /
    context_tokens`` counts every layer per token, an underestimate for them)."""
    options = options or ServingOptions()
    request = kv_request_bytes_per_rank(model, instances, context_tokens, options.kv_block_tokens)
    return np.floor(memory.kv / request)
