"""Pipeline stages: which layers each stage holds and how many micro-batches' activations it keeps.

Three representative stages are priced for every plan, along a trailing axis of length 3:

* ``first``  — pipeline rank 0: the embedding, and the most micro-batches in flight;
* ``middle`` — pipeline rank 1 (when pp >= 3): the heaviest stage without embedding or head;
* ``last``   — pipeline rank pp-1: the LM head, logits and loss, one micro-batch in flight.

With pp = 1 the single stage is ``first`` and carries both embedding and head; with pp = 2 there is no
middle stage. Peak memory and the bottleneck time are the maxima over the stages that exist.

Layer split. Megatron splits L layers evenly (L divisible by pp x vpp), or unevenly with
``--decoder-first-pipeline-num-layers``/``--decoder-last-pipeline-num-layers``, with the embedding and the
loss counted as one layer each of the split (``--account-for-embedding-in-pipeline-split`` /
``--account-for-loss-in-pipeline-split``), or chunk by chunk with ``--pipeline-model-parallel-layout``
(Megatron-Core 0.16.1 ``TransformerConfig.__post_init__``, ``transformer_block.get_num_layers_to_build``,
``PipelineParallelLayerLayout``). The uneven split used here gives every middle stage k = ceil(L/pp)
layers and takes the deficit pp*k - L from the first and last stages (half each, the first stage one more
when odd): Llama 3 405B's 126 layers on 16 stages are 7 + 14 x 8 + 7 (Llama 3 paper, section 3.3.2). An
even split is the special case of no deficit; a deficit of 1 (2) is Megatron's split with the embedding
(and the loss) accounted as a layer: (L + 2) / pp layers a rank, the first rank's first chunk one layer
short (Megatron-Bridge's Llama 3.1 405B recipe: 126 + 2 = 128 = 16 x 8, TP4 PP16 VP8 on GB200).

Virtual chunks (:func:`chunk_layers`): each stage's layers go over its vpp chunks as evenly as possible,
the shorter chunks at the outer end of the model, where the embedding (first stage, chunk 0) and the loss
(last stage, chunk vpp-1) sit: the layout ``get_num_layers_to_build`` builds with the embedding and loss
accounted (one layer fewer in exactly those chunks) and with first/last-stage sizes divisible by vpp
(equal chunks). A chunk may hold no decoder layer only if it holds the embedding or the loss (Megatron
builds such a chunk: the layout ``E|t|...`` and ``get_num_layers_to_build`` asserting >= 0); so the first
and last stages need at least vpp - 1 layers and the middle stages' k a multiple of vpp
(:func:`uneven_split_is_valid`).

In-flight micro-batches (activations held at the memory peak): how many chunk forwards each schedule
holds is :func:`cost_model.schedules.in_flight_chunk_forwards` (the one place for every schedule's
warm-up); here they become layer sets over the stage's chunk split. For Megatron-LM's schedules
(``megatron/core/pipeline_parallel/schedules.py``):

* 1F1B: rank r runs pp - r - 1 warm-up forwards, then one more before its first backward, so it holds
  min(pp - r, m) micro-batches of its L/pp layers: the first stage holds p (Narayanan et al. 2021).
* Interleaved with v chunks: warm-up is (pp - r - 1) * 2 + (v - 1) * pp chunks, so rank r holds
  N = min((v-1)*pp + 2*(pp-r-1) + 1, m*v) chunk forwards. Forward i runs chunk (i mod pp*v) // pp
  (``get_model_chunk_id``, micro-batch groups of pp), so chunk j holds F*pp + clip(R - j*pp, 0, pp) of
  them (N = F*pp*v + R), each of that chunk's layers (:func:`in_flight_layer_sets`). With equal chunks
  of L/(pp*v) layers and r = 0 this is (L/pp) * pp * (1 + (pp-1)/(pp*v)) layer-micro-batches: Korthikanti
  et al. 2022's interleaving factor. A short chunk 0 on the first stage matters: it is the chunk most in
  flight (Llama 3 405B PP16 VP8: 112 layer sets held on rank 0 with its embedding-only chunk 0, not the
  143 x 7/8 = 125 of equal chunks).

Schedules with other rank shapes (:mod:`cost_model.schedules`): a V (``zbv``, ``dualpipev``: two chunks a
rank, rank r holding chunks r and 2p-1-r) puts the embedding and the loss both on rank 0, so its short
chunks are both there (first rank k - deficit layers, the last rank k, and no head on it); DualPipe
holds stage r and stage p-1-r on rank r, so a micro-batch passes the mean of the two (the first and last
ranks: (first + last) / 2 layers, each with the embedding and the loss of one direction) while the rank
keeps both stages' parameters (``parameter_copies`` 2). Both spread a rank's layers over the depth, so
their MoE layers are the model's MoE fraction, as with interleaving.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model_spec import ModelSpec
from .plan import FULL, PlanArrays
from .schedules import DUALPIPE, MEGATRON_SCHEDULES, chunks_per_rank, in_flight_chunk_forwards, is_v_shaped, parameter_copies, stage_ends

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
    lm_head_share: np.ndarray | None = None
    """Share of the micro-batches whose LM head and loss the stage computes (DualPipe's end ranks: half
    each); None = 1 wherever ``has_lm_head``."""
    parameter_copies: np.ndarray | None = None
    """Copies of its layers' parameters each stage keeps, (plans, 1): 2 under DualPipe; None = 1."""
    chunks: np.ndarray | None = None
    """Model chunks a rank's layers are split into, (plans,): vpp, 2 for a V; None = vpp."""

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
    chunks = plans.vpp if stages.chunks is None else stages.chunks
    chunk_layers = stages.layers / chunks[:, None]
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
    """Whether the uneven split can run (see the module docstring): every virtual chunk holds a decoder
    layer except that the first stage's chunk 0 may hold only the embedding and the last stage's last
    chunk only the loss (first and last stages >= vpp - 1 layers), and the middle stages' k layers divide
    into vpp chunks."""
    first, k, last = layers_per_stage(num_layers, pp)
    pp = np.asarray(pp)
    vpp = np.asarray(vpp)
    middle_ok = (k % vpp == 0) | (pp <= 2)
    return (first >= vpp - 1) & (last >= vpp - 1) & middle_ok & (pp <= num_layers)


def chunk_layers(stage_layers: int, vpp: int, outer_end: str) -> list[int]:
    """Decoder layers of each of one stage's vpp virtual chunks, chunk 0 first: as even as possible, the
    shorter chunks at the ``outer_end`` (``"first"``: chunk 0, where the embedding sits on the first
    stage; ``"last"``: chunk vpp-1, where the loss sits on the last stage). What the emitters write."""
    base, extra = divmod(int(stage_layers), int(vpp))
    if outer_end == "first":
        return [base + (j >= vpp - extra) for j in range(vpp)]
    return [base + (j < extra) for j in range(vpp)]


def _forwards_on_chunks(n: np.ndarray, pp: np.ndarray, v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Of the first n interleaved forwards of a rank, how many run chunks lo <= j < hi: forward i runs chunk
    (i mod pp*v) // pp, so n = F*pp*v + R gives each chunk F*pp, and the remainder R fills chunks in order
    pp at a time."""
    cycles, rest = np.divmod(n, pp * v)
    return (hi - lo) * cycles * pp + np.clip(rest - lo * pp, 0, (hi - lo) * pp)


def in_flight_layer_sets(forwards: np.ndarray, pp: np.ndarray, v: np.ndarray, stage_layers: np.ndarray,
                         outer_end_first: np.ndarray) -> np.ndarray:
    """Layer x micro-batch activation sets a rank holds with ``forwards`` chunk forwards in flight, its
    ``stage_layers`` split into v chunks as :func:`chunk_layers` does (the short chunks at chunk 0 where
    ``outer_end_first``, else at chunk v-1): base layers on every chunk held, one more on each held forward
    of the ``extra`` longer chunks."""
    base, extra = np.divmod(stage_layers, v)
    lo = np.where(outer_end_first, v - extra, 0)
    hi = np.where(outer_end_first, v, extra)
    return base * forwards + _forwards_on_chunks(forwards, pp, v, lo, hi)


def stage_layout(model: ModelSpec, plans: PlanArrays, num_microbatches: np.ndarray,
                 extra_warmup: np.ndarray | None = None) -> StageLayout:
    """``extra_warmup``: plans whose schedule runs Megatron's EP all-to-all overlap
    (:mod:`cost_model.ep_overlap`): one more warm-up chunk, then merged steps that run the new chunk's
    forward layer i beside the backward of the held chunk's last remaining layer, which is released
    after it (``megatron/core/models/common/model_chunk_schedule_plan.py`` ``run``: ``get_layer(i)`` /
    ``pop_layer()`` / ``release_state()``; ``combined_1f1b.py``). The held chunks then equal the plain
    schedule's peak, which already counts the steady-state forward, and the merged step adds the one
    layer both chunks hold at once: one layer over the plain peak, not a chunk."""
    L = model.num_layers
    pp = plans.pp
    schedule = plans.schedule
    v = chunks_per_rank(schedule, plans.vpp)
    m = np.asarray(num_microbatches, dtype=np.int64)
    first, k, last = layers_per_stage(L, pp)
    v_shape = is_v_shaped(schedule) & (pp >= 2)
    dual = (schedule == DUALPIPE) & (pp >= 2)
    # A V holds both short end chunks on rank 0; DualPipe's end ranks pass the mean of stages 0 and p-1.
    first, last = np.where(v_shape, first + last - k, first), np.where(v_shape, k, last)
    ends = (first + last) / 2
    first, last = np.where(dual, ends, first), np.where(dual, ends, last)

    layers = np.stack([first, k, last], axis=1).astype(float)
    exists = np.stack([np.ones_like(pp, bool), pp >= 3, pp >= 2], axis=1)
    ranks = np.stack([np.zeros_like(pp), np.minimum(1, pp - 1), pp - 1], axis=1)

    # MoE layers on each stage, from the per-layer pattern (prefix sums over layer index).
    moe_prefix = np.concatenate([[0], np.cumsum(np.asarray(model.moe_layers or [False] * L, dtype=np.int64))])
    # (DualPipe's fractional end stages take the model's MoE fraction below.)
    first_i, last_i = np.floor(first).astype(np.int64), np.ceil(last).astype(np.int64)
    first_moe = moe_prefix[first_i]
    last_moe = moe_prefix[L] - moe_prefix[L - last_i]
    # The heaviest middle stage is taken as the one just before the last stage: with the dense layers
    # first (DeepSeek's first_k_dense_replace) it holds the most MoE layers; with alternating
    # patterns all middle stages are alike.
    mid_end = np.clip(L - last_i, 0, L)
    mid_start = np.clip(mid_end - k, 0, L)
    middle_moe = moe_prefix[mid_end] - moe_prefix[mid_start]
    moe_layers = np.stack([first_moe, middle_moe, last_moe], axis=1).astype(float)
    # Interleaving spreads a rank's chunks over the whole depth: use the model's MoE fraction.
    moe_fraction = model.num_moe_layers / L
    moe_layers = np.where(((v > 1) | dual)[:, None], layers * moe_fraction, moe_layers)

    pp2, v2, m2, r = pp[:, None], v[:, None], m[:, None], ranks
    # DualPipe's F&B pairs merge the same way inside their own PP + 1 chunks: no extra warm-up, no extra layer.
    extra = (np.zeros(len(plans), dtype=np.int64) if extra_warmup is None
             else np.asarray(extra_warmup, dtype=np.int64) * np.isin(schedule, MEGATRON_SCHEDULES))[:, None]
    chunks = in_flight_chunk_forwards(schedule, pp2, v2, m2, r)
    # The first stage's short chunks sit at chunk 0 (with the embedding), the others' at chunk v-1.
    short_first = np.stack([np.ones_like(pp, bool), np.ones_like(pp, bool), np.zeros_like(pp, bool)], axis=1)
    split = in_flight_layer_sets(chunks, pp2, v2, np.floor(layers).astype(np.int64), short_first)
    # EP overlap's merged step: one layer of two chunks at once (docstring), never past every micro-batch's.
    in_flight = np.minimum(np.where(v2 > 1, split, chunks * layers) + extra, m2 * layers)

    has_embedding, has_lm_head, head_share = stage_ends(schedule, pp)
    return StageLayout(exists=exists, pipeline_rank=ranks, layers=layers, moe_layers=moe_layers,
                       in_flight_layers=in_flight.astype(float), has_embedding=has_embedding,
                       has_lm_head=has_lm_head, lm_head_share=head_share,
                       parameter_copies=parameter_copies(schedule)[:, None], chunks=v)
