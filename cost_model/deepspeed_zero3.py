"""Which parameter tensors DeepSpeed ZeRO-3 (v0.3.13 to v0.4.0, 2021) gathers and how it reduces gradients.

DeepSpeed's ZeRO-3 of 2021 works tensor by tensor (microsoft/DeepSpeed tag v0.3.16,
``deepspeed/runtime/zero/stage3.py`` and ``constants.py``; the same code and defaults from v0.3.13 to
v0.4.0, i.e. through Narayanan et al. 2021's Table 2 runs):

* **Persistent tensors are never gathered.** ``persistent_parameters()`` marks every tensor of at most
  ``stage3_param_persistence_threshold`` elements (default 100,000) ``ds_persist``: each rank keeps it
  whole and ``fetch_sub_module`` skips it. In a GPT layer of hidden size h that is the norms and the
  biases while 4h <= 10^5; only the QKV, output, fc1 and fc2 weights are gathered (4 collectives, not 12).
* **A recomputed layer is gathered three times.** ``PartitionedParameterCoordinator`` fetches a
  submodule's tensors in its forward pre-hook and releases them in its post-hook unless
  ``_keep_for_later``: the parameters of the submodules traced between this use and the next one
  (``get_reuse_distance_in_numel``) are fewer than ``stage3_max_reuse_distance`` (default 10^9). Under
  activation checkpointing the trace of one step is forward, then per layer in reverse: its recomputed
  forward, its backward. So every gathered tensor is fetched in the forward, fetched again in the
  recomputed forward, and again in the backward, except the layer's last one (fc2), whose backward comes
  right after its recomputed forward (reuse distance 0): it stays gathered. Without recompute, twice.
* **Gradients are all-reduced, bucket by bucket.** ZeRO-3's default ``contiguous_gradients`` is False
  (``ZERO3_OPTIMIZATION_CONTIGUOUS_GRADIENTS_DEFAULT``, v0.3.13 to v0.4.0; True from v0.4.5). Then
  ``reduce_ipg_grads`` calls ``buffered_reduce_fallback``, whose ``allreduce_bucket`` flattens the
  bucket and runs ``dist.all_reduce`` on it (twice a reduce-scatter's bytes); each rank then keeps its
  partition (``partition_previous_reduced_grads``). The gradient hook
  (``reduce_independent_p_g_buckets_and_remove_grads``) flushes the bucket whenever the next gradient
  would take it past ``reduce_bucket_size`` (default 5 x 10^8 elements), so a tensor larger than that
  goes alone: :func:`gradient_buckets_per_layer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model_spec import ModelSpec

PERSISTENCE_THRESHOLD_ELEMENTS = 1e5
"""``stage3_param_persistence_threshold`` default (``ZERO_OPTIMIZATION_PARAM_PERSISTENCE_THRESHOLD_DEFAULT``,
``deepspeed/runtime/zero/constants.py`` v0.3.16)."""

REDUCE_BUCKET_ELEMENTS = 5e8
"""``reduce_bucket_size`` default (``ZERO_OPTIMIZATION_REDUCE_BUCKET_SIZE_DEFAULT``, same file)."""


def layer_parameter_tensors(model: ModelSpec, tp: np.ndarray) -> np.ndarray | None:
    """Elements of each parameter tensor of one dense decoder layer on one rank, in forward order,
    (tensors, plans); None for layers this list does not describe (MLA, MoE).

    Megatron's GPT layer: norm 1 (weight, bias for LayerNorm), fused QKV weight and bias, output
    projection weight and bias, norm 2, fc1 (gate and up fused) weight and bias, fc2 weight and bias.
    Tensor parallelism splits the projections and their column-parallel biases; the norms and the
    row-parallel biases stay whole. The sum is :attr:`cost_model.params.ParameterCounts.dense_layer` at tp 1."""
    if model.is_mla or model.is_moe or model.qk_norm or model.attention_sinks or model.norms_per_layer != 2:
        return None
    t = np.asarray(tp, dtype=float)
    h, norm = model.hidden_size, float(model.norm_params)
    qkv_width = (model.num_attention_heads + 2 * model.num_kv_heads) * model.head_dim
    q_width = model.num_attention_heads * model.head_dim
    fc1_width = model.ffn_hidden_size * (2 if model.gated_mlp else 1)
    biased = model.linear_bias
    whole = np.ones_like(t)
    tensors = [norm * whole,
               h * qkv_width / t, (qkv_width / t if (model.qkv_bias or biased) else 0 * t),
               q_width * h / t, (h * whole if biased else 0 * t),
               norm * whole,
               h * fc1_width / t, (fc1_width / t if biased else 0 * t),
               model.ffn_hidden_size * h / t, (h * whole if biased else 0 * t)]
    return np.stack(tensors)


def gathered_tensors(tensors: np.ndarray) -> np.ndarray:
    """Which tensors ZeRO-3 gathers (booleans, same shape): those above the persistence threshold."""
    return tensors > PERSISTENCE_THRESHOLD_ELEMENTS


@dataclass(frozen=True)
class GatherPlan:
    """What DeepSpeed's coordinator gathers of one layer, arrays over plans."""

    collectives: np.ndarray
    """Gathered tensors per layer: one list all-gather each."""
    gathered_share: np.ndarray
    """Share of the layer's parameters in gathered tensors (the persistent ones stay whole)."""
    kept_share: np.ndarray
    """Share of the gathered parameters in the layer's last gathered tensor, which a recomputed
    forward leaves gathered for the backward (reuse distance 0)."""


def gather_plan(model: ModelSpec, tp: np.ndarray) -> GatherPlan | None:
    """:class:`GatherPlan` of each plan's tensor-parallel degree; None where the layer's tensors are not
    listed (:func:`layer_parameter_tensors`)."""
    tensors = layer_parameter_tensors(model, tp)
    if tensors is None:
        return None
    gathered = gathered_tensors(tensors)
    elements = np.where(gathered, tensors, 0.0)
    last_index = len(tensors) - 1 - np.argmax(gathered[::-1], axis=0)
    last = np.take_along_axis(elements, last_index[None], 0)[0]
    return GatherPlan(collectives=gathered.sum(axis=0).astype(float),
                      gathered_share=elements.sum(axis=0) / tensors.sum(axis=0),
                      kept_share=last / elements.sum(axis=0))


def gather_passes(plan: GatherPlan | None, recomputed_share: np.ndarray | float) -> np.ndarray | float:
    """Times a micro-batch gathers the layer's gathered bytes: forward and backward, plus for the
    recomputed share of the layers the recomputed forward, less the tensor the backward finds gathered.
    (plans, 3) where ``recomputed_share`` is."""
    kept = 0.0 if plan is None else plan.kept_share[:, None]
    return 2.0 + recomputed_share * (1.0 - kept)


GATHER_COPY_BYTES_PER_ELEMENT = 6.0
"""HBM bytes per gathered 2-byte element beside the all-gather itself: ``_allgather_param`` allocates the
full tensor with ``torch.zeros`` (write 2) and PyTorch's ``ProcessGroupNCCL::allgather`` of a list gathers
into a flat buffer and copies each rank's piece out of it (read 2, write 2)."""

ALL_REDUCE_COPY_BYTES_PER_ELEMENT = 12.0
"""HBM bytes per 2-byte gradient element around DeepSpeed's bucket all-reduce (``allreduce_bucket``,
``allreduce_and_copy``): the flatten (read 2, write 2), the pre-divide ``div_`` (read 2, write 2) and
the copy back into the gradients (read 2, write 2)."""


def memory_pass_bytes(plan: GatherPlan | None, layer_params: np.ndarray, recomputed_share: np.ndarray | float,
                      all_reduce: bool) -> np.ndarray:
    """HBM bytes per micro-batch of DeepSpeed ZeRO-3's copies around its collectives, per stage
    (``layer_params``: the stage's parameters, (plans, 3)): the gathers' buffer fills and piece copies
    (:data:`GATHER_COPY_BYTES_PER_ELEMENT`) and, where gradients are all-reduced, the buckets' flatten,
    pre-divide and copy back (:data:`ALL_REDUCE_COPY_BYTES_PER_ELEMENT`)."""
    share = 1.0 if plan is None else plan.gathered_share[:, None]
    gathers = GATHER_COPY_BYTES_PER_ELEMENT * share * gather_passes(plan, recomputed_share)
    return layer_params * (gathers + (ALL_REDUCE_COPY_BYTES_PER_ELEMENT if all_reduce else 0.0))


def gradient_buckets_per_layer(tensors: np.ndarray) -> np.ndarray:
    """All-reduces per layer in the steady state, per plan (a rate: layers smaller than the bucket
    share one).

    DeepSpeed's gradient hook, in the order the backward produces the gradients (the layer's tensors in
    reverse), flushes the bucket when the next gradient would take it past ``reduce_bucket_size``; an
    empty bucket sends nothing. Counted over layers 2 to 8 of a run of identical layers, so buckets that
    span layers count once. A GPT-3 175B layer: 5 (three of them carry only norms and biases); GPT 530B: 6."""
    filled = np.zeros(tensors.shape[1])
    count = np.zeros(tensors.shape[1])
    for layer in range(8):
        for size in tensors[::-1]:
            flush = (size > 0) & (filled + size > REDUCE_BUCKET_ELEMENTS)
            count += np.where(layer > 0, flush & (filled > 0), False)
            filled = np.where(flush, 0.0, filled) + size
    return count / 7
