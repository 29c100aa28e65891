"""Pipeline stages: which layers each stage holds and how many micro-batches' activations it keeps.

Three representative stages are priced for every plan, along a trailing axis of length 3:

* ``first``  — pipeline rank 0: the embedding, and the most micro-batches in flight;
* ``middle`` — pipeline rank 1 (when pp >= 3): the heaviest stage without embedding or head;
* ``last``   — pipeline rank pp-1: the LM head, logits and loss, one micro-batch in flight.

With pp = 1 the single stage is ``first`` and carries both embedding and head; with pp = 2 there is no
middle stage. Peak memory and the bottleneck time are the maxima over the stages that exist.

Layer split. Megatron splits L layers evenly (L divisible by pp x vpp), or unevenly with
``--decoder-first-pipeline-num-layers``/``--decoder-last-pipeline-num-layers``. The uneven split used
here gives every middle stage k = ceil(L/pp) layers and takes the deficit pp*k - L from the first and
last stages (half each, the first stage one more when odd): Llama 3 405B's 126 layers on 16 stages are
7 + 14 x 8 + 7 (Llama 3 paper, section 3.3.2). An even split is the special case of no deficit.

In-flight micro-batches (activations held at the memory peak), from Megatron-LM's schedules
(``megatron/core/pipeline_parallel/schedules.py``):

* 1F1B: rank r runs pp - r - 1 warm-up forwards, then one more before its first backward, so it holds
  min(pp - r, m) micro-batches of its L/pp layers: the first stage holds p (Narayanan et al. 2021).
* Interleaved with v chunks: warm-up is (pp - r - 1) * 2 + (v - 1) * pp chunks, so rank r holds
  min((v-1)*pp + 2*(pp-r-1) + 1, m*v) chunks of L/(pp*v) layers. For r = 0 this is
  (L/pp) * pp * (1 + (pp-1)/(pp*v)) layer-micro-batches: Korthikanti et al. 2022's interleaving factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model_spec import ModelSpec
from .plan import FULL, PlanArrays

STAGES = ("first", "middle", "last")


@dataclass
class StageLayout:
    """Per plan (rows) and stage (3 columns)."""

    exists: np.ndarray
    """Whether this stage kind exists for the plan."""
    pipeline_rank: np.ndarray
    """Pipeline rank priced for the stage kind."""
    layers: np.ndarray
    """Transformer layers held by one rank of the stage (over all its virtual chunks)."""
    moe_layers: np.ndarray
    """Of those, MoE layers."""
    in_flight_layers: np.ndarray
    """Layer x micro-batch activation sets held at the peak (sum over chunks)."""
    has_embedding: np.ndarray
    has_lm_head: np.ndarray

    @property
    def dense_layers(self) -> np.ndarray:
        return self.layers - self.moe_layers

    @property
    def in_flight_microbatches(self) -> np.ndarray:
        """Micro-batch equivalents in flight: in-flight layer sets / layers on the stage."""
        return np.divide(self.in_flight_layers, self.layers, out=np.zeros_like(self.in_flight_layers),
                         where=self.layers > 0)


def recomputed_layer_share(plans: PlanArrays, stages: StageLayout) -> np.ndarray:
    """Share of each stage's layers that full recompute recomputes (plans, 3).

    Megatron's ``block`` method recomputes the first ``recompute_num_layers`` layers of each virtual
    chunk; -1 means all of them. Zero for plans without full recompute.
    """
    chunk_layers = stages.layers / plans.vpp[:, None]
    asked = plans.recompute_num_layers[:, None].astype(float)
    recomputed = np.where(asked < 0, chunk_layers, np.minimum(asked, chunk_layers))
    share = np.divide(recomputed, chunk_layers, out=np.zeros_like(chunk_layers), where=chunk_layers > 0)
    return np.where(plans.recompute[:, None] == FULL, share, 0.0)


def layers_per_stage(num_layers: int, pp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layers on the first, each middle and the last stage (see module docstring)."""
    pp = np.asarray(pp, dtype=np.int64)
    k = -(-num_layers // pp)  # ceil
    deficit = pp * k - num_layers
    first = np.where(pp == 1, num_layers, k - (deficit + 1) // 2)
    last = np.where(pp == 1, num_layers, k - deficit // 2)
    return first, k, last


def uneven_split_is_valid(num_layers: int, pp: np.ndarray, vpp: np.ndarray) -> np.ndarray:
    """Whether the uneven split can run: the first and last stages need at least one layer per virtual
    chunk, and the middle stages' k layers must divide into vpp chunks."""
    first, k, last = layers_per_stage(num_layers, pp)
    pp = np.asarray(pp)
    vpp = np.asarray(vpp)
    middle_ok = (k % vpp == 0) | (pp <= 2)
    return (first >= vpp) & (last >= vpp) & middle_ok & (pp <= num_layers)


def stage_layout(model: ModelSpec, plans: PlanArrays, num_microbatches: np.ndarray,
                 extra_warmup: np.ndarray | None = None) -> StageLayout:
    """``extra_warmup``: plans whose schedule runs one more warm-up micro-batch chunk (Megatron's EP
    all-to-all overlap, :mod:`cost_model.ep_overlap`), which stays in flight."""
    L = model.num_layers
    pp = plans.pp
    v = plans.vpp
    m = np.asarray(num_microbatches, dtype=np.int64)
    first, k, last = layers_per_stage(L, pp)

    layers = np.stack([first, k, last], axis=1).astype(float)
    exists = np.stack([np.ones_like(pp, bool), pp >= 3, pp >= 2], axis=1)
    ranks = np.stack([np.zeros_like(pp), np.minimum(1, pp - 1), pp - 1], axis=1)

    # MoE layers on each stage, from the per-layer pattern (prefix sums over layer index).
    moe_prefix = np.concatenate([[0], np.cumsum(np.asarray(model.moe_layers or [False] * L, dtype=np.int64))])
    first_moe = moe_prefix[first]
    last_moe = moe_prefix[L] - moe_prefix[L - last]
    # The heaviest middle stage is taken as the one just before the last stage: with the dense layers
    # first (DeepSeek's first_k_dense_replace) it holds the most MoE layers; with alternating
    # patterns all middle stages are alike.
    mid_end = np.clip(L - last, 0, L)
    mid_start = np.clip(mid_end - k, 0, L)
    middle_moe = moe_prefix[mid_end] - moe_prefix[mid_start]
    moe_layers = np.stack([first_moe, middle_moe, last_moe], axis=1).astype(float)
    # Interleaving spreads a rank's chunks over the whole depth: use the model's MoE fraction.
    moe_fraction = model.num_moe_layers / L
    moe_layers = np.where((v > 1)[:, None], layers * moe_fraction, moe_layers)

    pp2, v2, m2, r = pp[:, None], v[:, None], m[:, None], ranks
    extra = (np.zeros(len(plans), dtype=np.int64) if extra_warmup is None
             else np.asarray(extra_warmup, dtype=np.int64))[:, None]
    one_f_one_b = np.minimum(pp2 - r + extra, m2) * layers
    chunks = np.minimum((v2 - 1) * pp2 + 2 * (pp2 - r - 1) + 1 + extra, m2 * v2)
    interleaved = chunks * layers / v2
    in_flight = np.where(v2 > 1, interleaved, one_f_one_b)

    has_embedding = np.stack([np.ones_like(pp, bool), np.zeros_like(pp, bool), np.zeros_like(pp, bool)], axis=1)
    has_lm_head = np.stack([pp == 1, np.zeros_like(pp, bool), pp >= 2], axis=1)
    return StageLayout(exists=exists, pipeline_rank=ranks, layers=layers, moe_layers=moe_layers,
                       in_flight_layers=in_flight.astype(float), has_embedding=has_embedding,
                       has_lm_head=has_lm_head)
