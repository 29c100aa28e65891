"""The optimizer step of a per-tensor optimizer over FSDP1 shards: Composer's ``DecoupledAdamW``.

Megatron's and Transformer Engine's fused Adam update every parameter in a few multi-tensor kernels, a
memory-bound pass (:func:`cost_model.compute.optimizer_step_bytes`). Composer's ``DecoupledAdamW``
(mosaicml/composer ``composer/optim/decoupled_weight_decay.py``, v0.13-v0.23), which llm-foundry's
``optimizer: decoupled_adamw`` builds, loops over the tensors in Python and issues one eager kernel per
operation (``exp_avg.mul_(beta1).add_(grad, ...)``, ``exp_avg_sq.mul_(beta2).addcmul_(grad, grad, ...)``,
``exp_avg_sq.sqrt()``, ``/ math.sqrt(bias_correction2)``, ``.add_(eps)``, ``param.addcdiv_(exp_avg, denom,
...)``; the decay ``param.mul_`` only when ``weight_decay`` is not 0, and the MPT benchmark yamls set 0),
and Composer's norm clipping under FSDP calls ``FullyShardedDataParallel.clip_grad_norm_``, one
``vector_norm`` and one ``mul_`` per gradient (torch/distributed/fsdp/fully_sharded_data_parallel.py,
torch 1.13-2.3). Per parameter of the local shard, with fp32 parameter, gradient and moments (FSDP's
sharded flat parameter is the fp32 master), the kernels read and write:

==========================  ==========  ==========
kernel                       read (B)    write (B)
==========================  ==========  ==========
exp_avg.mul_                 4           4
.add_(grad)                  8           4
exp_avg_sq.mul_              4           4
.addcmul_(grad, grad)        12          4
exp_avg_sq.sqrt()            4           4
/ sqrt(bias_correction2)     4           4
.add_(eps)                   4           4
param.addcdiv_               12          4
clip: vector_norm(grad)      4           0
clip: grad.mul_              4           4
==========================  ==========  ==========

96 bytes per parameter (:data:`BYTES_PER_PARAMETER`), where a fused Adam moves 30-38, and the gradient
is freed, not zeroed (``zero_grad(set_to_none=True)``). The host issues those 10 kernels per tensor,
plus, from Composer 0.15 (commit 0408b38a5, 2023-05-25, "Change AdamW step to a tensor instead of an
int"), one ``state['step'] += 1`` per tensor on the device and a ``state_steps[i].item()`` per tensor
inside the loop: a device-to-host read that waits for the GPU to finish the previous tensor's kernels,
so the host cannot run ahead. (:data:`HOST_CALLS`).

Which tensors a rank updates depends on how FSDP1 hands its shard to the optimizer:

* ``use_orig_params=True`` (Composer's default from torch 2.0): the optimizer sees the module's own
  parameters, each a view of the part of it that lies in the rank's shard; a rank updates every
  parameter tensor its 1/n of the layer's flat parameter overlaps (FSDP1 flattens a wrapped layer's
  parameters in registration order, pads the flat parameter to a multiple of n and gives rank r the
  r-th of n equal chunks: ``FlatParamHandle.shard`` / ``_get_shard``), and skips the others (their
  ``grad`` is None);
* flat parameters (torch 1.13, no ``use_orig_params``): one tensor per wrapped unit, its whole shard.

With the per-tensor device-to-host read, each tensor's update is serialised: it takes the longer of its
host issue and its kernels' HBM time, and the rank's step is the sum over its tensors; without it the
host runs ahead and the step is the longer of the whole issue and the whole HBM time. The ranks meet at
the next forward's first all-gather, so the step is the slowest rank's.

The issue time of a call is :attr:`cost_model.options.CostOptions.host_kernel_issue_us`, the calibrated
host time of one eager PyTorch kernel (:mod:`cost_model.host`). Every layer is priced with a dense
layer's tensors (Composer's runs are dense MPT models); MoE layers' expert tensors are not listed.
"""

from __future__ import annotations

import numpy as np

from .model_spec import ModelSpec

BYTES_PER_PARAMETER = 96.0
"""HBM bytes per parameter of the local shard one ``DecoupledAdamW`` step with FSDP norm clipping moves
(module docstring table)."""

KERNELS_PER_TENSOR = 10
"""Eager kernels the host issues per tensor: 8 of ``DecoupledAdamW.adamw`` and 2 of FSDP's
``clip_grad_norm_`` (module docstring)."""

STEP_COUNTER_CALLS = 2
"""Host calls per tensor Composer >= 0.15 adds: ``state['step'] += 1`` on a device tensor and its
``.item()`` read-back."""


def layer_tensor_sizes(model: ModelSpec) -> np.ndarray:
    """Elements of each parameter tensor of one dense transformer layer, in registration order (the
    order FSDP1 flattens them): first norm (weight, bias), fused QKV (weight, bias), output projection
    (weight, bias), second norm, MLP input projection (fused gate/up when gated), MLP output
    projection, each with its bias where the model has them (``qkv_bias``, ``linear_bias``). MPT's block
    registers ``norm_1``, ``attn.Wqkv``, ``attn.out_proj``, ``norm_2``, ``ffn.up_proj``, ``ffn.down_proj``
    in this order (llm-foundry ``llmfoundry/models/mpt/modeling_mpt.py`` / ``layers/blocks.py`` v0.3.0)."""
    h = model.hidden_size
    q = model.num_attention_heads * model.head_dim
    kv = model.num_kv_heads * model.head_dim
    ffn_in = model.ffn_hidden_size * (2 if model.gated_mlp else 1)
    norm = [h, h] if model.norm_type == "layernorm" else [h]
    bias = bool(model.linear_bias)
    sizes: list[int] = list(norm)
    sizes += [h * (q + 2 * kv)] + ([q + 2 * kv] if (model.qkv_bias or bias) else [])
    sizes += [q * h] + ([h] if bias else [])
    sizes += norm
    sizes += [h * ffn_in] + ([ffn_in] if bias else [])
    sizes += [model.ffn_hidden_size * h] + ([h] if bias else [])
    return np.array(sizes, dtype=np.float64)


def shard_pieces(sizes: np.ndarray, ranks: int) -> np.ndarray:
    """(ranks, tensors): elements of each tensor in each rank's shard of the flat parameter that
    concatenates ``sizes``, padded to a multiple of ``ranks`` and cut into equal chunks (FSDP1
    ``FlatParamHandle._get_shard``)."""
    ends = np.cumsum(sizes)
    starts = ends - sizes
    chunk = np.ceil(ends[-1] / ranks)
    lo = np.arange(ranks, dtype=np.float64)[:, None] * chunk
    return np.clip(np.minimum(ends, lo + chunk) - np.maximum(starts, lo), 0.0, None)


def root_tensor_sizes(model: ModelSpec) -> np.ndarray:
    """Elements of the tensors outside the wrapped layers, which FSDP1's root unit flattens: the token
    embedding, learned positions where the model has them, the final norm, and an untied LM head
    (MPT registers ``wte``, ``wpe``, then ``norm_f`` after the blocks)."""
    h = model.hidden_size
    sizes = [model.vocab_size * h]
    if model.position_embedding_type == "learned":
        sizes.append(max(model.max_position_embeddings, 1) * h)
    sizes += [h, h] if model.norm_type == "layernorm" else [h]
    if not model.tie_embeddings:
        sizes.append(model.vocab_size * h)
    return np.array(sizes, dtype=np.float64)


def rank_step_s(sizes: np.ndarray, ranks: int, flat_shards: bool, call_s: float, hbm_Bps: float) -> np.ndarray:
    """(ranks,): seconds each rank spends updating one FSDP unit whose parameters are ``sizes``.

    Module parameters (``flat_shards`` False): every tensor the rank's chunk overlaps, each after the
    previous one's read-back, so the longer of its issue and its HBM time, tensor by tensor. Flat shards:
    one tensor, no read-back, the longer of the issue and the HBM time."""
    pieces = shard_pieces(sizes, max(int(ranks), 1))
    if flat_shards:
        total = pieces.sum(axis=1)
        return np.where(total > 0, np.maximum(KERNELS_PER_TENSOR * call_s, total * BYTES_PER_PARAMETER / hbm_Bps), 0.0)
    calls = KERNELS_PER_TENSOR + STEP_COUNTER_CALLS
    return np.where(pieces > 0, np.maximum(calls * call_s, pieces * BYTES_PER_PARAMETER / hbm_Bps), 0.0).sum(axis=1)


def optimizer_step_s(model: ModelSpec, shard_ranks: np.ndarray, stage_layers: np.ndarray, root_stage: np.ndarray,
                     flat_shards: bool, call_s: float, hbm_Bps: float) -> np.ndarray:
    """(plans, stages): the slowest rank's optimizer step, in seconds, of each stage: its layers' units
    and, on ``root_stage`` (plans, stages; the first stage), the root unit's tensors.

    ``shard_ranks`` (plans,): ranks each unit is sharded over (dp x cp, or dp_shard under HSDP)."""
    layer = layer_tensor_sizes(model)
    root = root_tensor_sizes(model)
    out = np.zeros(stage_layers.shape)
    ranks = np.asarray(shard_ranks, dtype=np.int64)
    for n in np.unique(ranks):
        rows = ranks == n
        per_layer = rank_step_s(layer, int(n), flat_shards, call_s, hbm_Bps)
        per_root = rank_step_s(root, int(n), flat_shards, call_s, hbm_Bps)
        layers = stage_layers[rows][..., None]
        with_root = root_stage[rows][..., None]
        out[rows] = (layers * per_layer + np.where(with_root, per_root, 0.0)).max(axis=-1)
    return out
