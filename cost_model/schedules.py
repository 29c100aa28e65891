"""Pipeline schedules: per schedule, the bubble, the micro-batches in flight on each stage, the parameter
copies a rank holds, what the split backward keeps and which communication the schedule hides.

Notation (per pipeline rank, one micro-batch through all the layers the rank holds): ``F`` forward,
``B`` input-gradient backward, ``W`` weight-gradient backward (Qi et al. 2024, "Zero Bubble Pipeline
Parallelism", ICLR 2024, arXiv 2401.10241, section 2), ``T`` = the whole micro-batch step on the rank
(F + B + W plus recompute and exposed communication: what :mod:`cost_model.evaluate` calls ``T_mb``),
``p`` pipeline ranks, ``m`` micro-batches per step, ``v`` model chunks per rank. A step takes
``m T + bubble``. ``W`` is priced from the layer times: every linear layer's backward is two GEMMs of the
forward's shape, dX = dY W^T (input gradient, part of B) and dW = X^T dY (weight gradient, W), so W is
the forward GEMM time (:attr:`cost_model.compute.LayerTimes.gemm_forward`) and attention's core backward
and the element-wise backward belong to B.

========== =========================================== ==================== ===========================
schedule   bubble                                      activations (M_B)    source
========== =========================================== ==================== ===========================
1f1b       (p-1) T                                     p - r                Narayanan et al. 2021 s2.2
interleaved (p-1) T / v                                 Megatron warm-up     Narayanan et al. 2021 s2.2
zb-h1      (p-1)(F + B - W) / v = (p-1)(T - 2W) / v    p - r                Qi et al. 2024 s2.1
zb-h2      (p-1) max(0, F + B - 2W) = (p-1)(T - 3W)+   2(p - r) - 1         Qi et al. 2024 s2.2
zbv        (p-1) max(0, T - 3W) / 2                    p (every rank)       Qi et al. 2024 s6 (ZB-V)
dualpipe   (p/2 - 1)(F&B + B_full - 3W)                p + 1 (every rank)   DeepSeek-V3 s3.2.1 Table 2
dualpipev  (p - 1)(F&B + B_full - 3W) / 2              2p + 1 half-chunks   DualPipe README table
========== =========================================== ==================== ===========================

* 1F1B and interleaved: rank r runs p - r - 1 warm-up forwards then one more before its first backward;
  interleaved, (p - r - 1) * 2 + (v - 1) * p chunk forwards (Megatron-LM
  ``megatron/core/pipeline_parallel/schedules.py``); the bubble is (p-1)/(v m) of the work.
* ZB-H1 keeps 1F1B's warm-up (same peak memory) and moves the W passes into the drain: bubble
  (p-1)(T_F + T_B - T_W) (section 2.1). ZB-H2 adds forwards to the warm-up, holding up to (2p-1) M_B on
  the first worker (section 2.2), rank r 2(p-r)-1; its bubble (p-1)(T_F + T_B - 2T_W) is zero when
  T_F + T_B <= 2 T_W and never negative. With v > 1 (torch's ``ScheduleInterleavedZeroBubble``, ZB1P
  over v stages per rank) each pass is 1/v of the rank's and the ZB-H1 bubble divides by v; its warm-up
  is (v-1) p + (p-1-r) chunk forwards (``_get_warmup_ops`` with ``multiply_factor=1``, p micro-batches a
  round), so rank r holds (v-1) p + p - r at its first backward: p - r, 1F1B's, when v = 1.
* ZB-V: two chunks per rank in a V (rank r holds chunks r and 2p-1-r), so the first rank holds both the
  embedding and the loss; every rank peaks at p M_B, 1F1B's first-stage memory (section 6: "balanced
  peak memory ... same memory constraints as 1F1B"); the passes are chunk passes of half the rank's
  time, filled as ZB-H2 fills the warm-up: (p-1) max(0, f + b - 2w) with f = F/2, b = B/2, w = W/2.
  The authors' table (huggingface.co/spaces/sail/zero-bubble-pipeline-parallellism, description2.md,
  T_F = T_B = T_W): bubble rate 1F1B (p-1)/m, ZB1P (p-1)/3m, ZB2P 0, ZBV 0; activation memory
  1x, 1x, 2x, 1x of 1F1B; pipeline communication volume 1x, 1x, 1x, 2x.
* DualPipe (DeepSeek-V3 technical report, arXiv 2412.19437, section 3.2.1, Table 2): micro-batches enter
  from both ends; rank r holds stage r and stage p-1-r (two copies of the model's parameters: 2x), so
  the first and last ranks both hold the embedding and the loss, each for half the micro-batches. In
  the steady state a forward chunk of one micro-batch runs beside a backward chunk of another (F&B):
  each one's EP all-to-all and PP send runs beside the other's compute. Bubble (PP/2-1)(F&B + B - 3W)
  with B the *full* backward chunk; activations PP + 1 chunks per rank. Here a chunk is one stage
  (the mean of the two a rank holds), so F&B = T and B_full = B + W + recompute.
* DualPipeV (github.com/deepseek-ai/DualPipe README, "cut-in-half" DualPipe; torch
  ``ScheduleDualPipeV``): the same schedule on PP/2 devices holding two chunks each in a V; bubble and
  activations in chunk units as DualPipe's with PP = 2p stages: (p-1)(F&B + B - 3W) of half-rank chunks
  and 2p + 1 half-rank chunks; per device the parameters of 2 of 2p stages: 2x a PP-stage share, which
  is 1x of a 1F1B over the same p devices.

DualPipe's step order (``dualpipe/dualpipe.py`` ``DualPipe.step``, half_rank h = min(r, p-1-r)): step 4
runs half_num_chunks - p + h + 1 iterations of two overlapped F&B pairs (the middle ranks' first pair
unoverlapped), step 5 p/2 - h - 1 more; so of the m chunk forwards of a rank, m - 3p/2 + h + 1 pair with
a backward (DualPipeV, ``dualpipev.py``: 2m - 3p + r + 1 of 2m, the last rank's first pair
unoverlapped); it asserts p even and m even and >= 2p (DualPipeV: m >= 2p).

The split backward's memory. A W pass needs the inputs of the layer's weight GEMMs and their output
gradients until it runs; the papers' peaks hold because a pending W set (M_W = 32 sbh a layer, Table 1)
is no larger than the B set it follows (M_B = 34 sbh + 5 a s^2 b). With recompute a layer keeps less
than M_W between forward and backward: the backward recomputes it and the deferred W must keep it. So
schedules that defer W (zb-h1, zb-h2, zbv, dualpipe, dualpipev; DualPipe's zero-bubble steps) hold,
beside the in-flight activations, one chunk pass's layers of W sets beyond what those layers keep
(:func:`pending_weight_grad_layers`; the W of a chunk runs within the next chunk step).
"""

from __future__ import annotations

import numpy as np

from .plan import SCHEDULE_CODE, SCHEDULES

ONE_F_ONE_B, INTERLEAVED, ZB_H1, ZB_H2, ZBV, DUALPIPE, DUALPIPEV = (SCHEDULE_CODE[name] for name in SCHEDULES)

V_SHAPED = (ZBV, DUALPIPEV)
"""Two chunks per rank in a V: rank r holds chunks r and 2p-1-r (torch ``generate_stage_to_rank_mapping``
style ``"v"``)."""
SPLIT_BACKWARD = (ZB_H1, ZB_H2, ZBV, DUALPIPE, DUALPIPEV)
"""Schedules that run the weight-gradient pass apart from the input-gradient pass."""
BIDIRECTIONAL = (DUALPIPE, DUALPIPEV)
"""Schedules that pair a forward chunk with a backward chunk of another micro-batch (F&B)."""
MEGATRON_SCHEDULES = (ONE_F_ONE_B, INTERLEAVED)
"""What Megatron-LM core_v0.16.1 runs (``get_forward_backward_func``): no zero-bubble or DualPipe."""


def _is(schedule: np.ndarray, codes) -> np.ndarray:
    return np.isin(np.asarray(schedule), codes)


def is_v_shaped(schedule: np.ndarray) -> np.ndarray:
    return _is(schedule, V_SHAPED)


def parameter_copies(schedule: np.ndarray) -> np.ndarray:
    """Copies of a stage's layer parameters one rank holds: 2 for DualPipe (stage r and stage p-1-r,
    DeepSeek-V3 Table 2 "Parameter 2x"), else 1 (DualPipeV's two chunks are the rank's own share of a
    V split, 1x of 1F1B over the same devices)."""
    return np.where(np.asarray(schedule) == DUALPIPE, 2.0, 1.0)


def chunks_per_rank(schedule: np.ndarray, vpp: np.ndarray) -> np.ndarray:
    """Model chunks a rank's layers are split into (its forward passes per micro-batch)."""
    return np.where(is_v_shaped(schedule), 2, np.asarray(vpp))


def in_flight_chunk_forwards(schedule: np.ndarray, pp: np.ndarray, vpp: np.ndarray, m: np.ndarray,
                             ranks: np.ndarray) -> np.ndarray:
    """Chunk forwards whose activations rank ``ranks`` holds at its peak (plans x stages; pp, vpp, m as
    columns). A chunk is 1/chunks_per_rank of the rank's layers; for DualPipe one of the two stages it
    holds (the mean of both). Megatron's EP-overlap warm-up chunk adds one layer, not a chunk, to the
    peak (:func:`cost_model.stages.stage_layout`)."""
    s = np.asarray(schedule)[:, None]
    p, v, r = pp, vpp, ranks
    one_f_one_b = np.minimum(p - r, m)
    interleaved = np.minimum((v - 1) * p + 2 * (p - r - 1) + 1, m * v)
    return np.select(
        [s == ONE_F_ONE_B, s == INTERLEAVED, s == ZB_H1, s == ZB_H2, s == ZBV, s == DUALPIPE, s == DUALPIPEV],
        [one_f_one_b,
         interleaved,
         np.minimum((v - 1) * p + p - r, m * v),
         np.minimum(2 * (p - r) - 1, m),
         np.minimum(2 * p, 2 * m) + 0 * r,           # p M_B = 2p half-rank chunks, every rank
         np.minimum(p + 1, m) + 0 * r,               # PP + 1 chunks, every rank
         np.minimum(2 * p + 1, 2 * m) + 0 * r],      # PP + 1 with PP = 2p stages of half a rank
        one_f_one_b)


def bubble_s(schedule: np.ndarray, pp: np.ndarray, vpp: np.ndarray, step_s: np.ndarray, full_backward_s: np.ndarray,
             weight_grad_s: np.ndarray) -> np.ndarray:
    """Pipeline bubble per step (per plan): see the module table. ``step_s`` is T (one micro-batch on the
    bottleneck rank, exposed communication included: DualPipe's F&B), ``full_backward_s`` B + W (plus
    recompute), ``weight_grad_s`` W."""
    s = np.asarray(schedule)
    p = np.asarray(pp, dtype=float)
    v = np.asarray(vpp, dtype=float)
    T, B, W = step_s, full_backward_s, weight_grad_s
    return np.select(
        [s == ONE_F_ONE_B, s == INTERLEAVED, s == ZB_H1, s == ZB_H2, s == ZBV, s == DUALPIPE, s == DUALPIPEV],
        [(p - 1) * T,
         (p - 1) * T / v,
         (p - 1) * np.maximum(0.0, T - 2 * W) / v,
         (p - 1) * np.maximum(0.0, T - 3 * W),
         (p - 1) * np.maximum(0.0, T - 3 * W) / 2,
         np.maximum(p / 2 - 1, 0.0) * np.maximum(0.0, T + B - 3 * W),
         (p - 1) * np.maximum(0.0, T + B - 3 * W) / 2],
        (p - 1) * T)


def other_ranks_mean_s(per_stage_s: np.ndarray, exists: np.ndarray, pp: np.ndarray,
                       bottleneck_s: np.ndarray) -> np.ndarray:
    """Mean of a per-rank time over the pipeline ranks other than the bottleneck (per plan), from the
    three priced stage kinds (:mod:`cost_model.stages`: the first rank, pp - 2 middle ranks alike, the
    last rank): what 1F1B's fill and drain pass through, (p - 1) of it being the bubble. Equal ranks
    give the bottleneck's own time; pp = 1 has no other rank (the bottleneck's time is returned)."""
    p = np.asarray(pp, dtype=float)
    counts = np.stack([np.ones_like(p), np.maximum(p - 2.0, 0.0), np.ones_like(p)], axis=1)
    total = np.sum(np.where(exists, per_stage_s, 0.0) * np.where(exists, counts, 0.0), axis=1)
    return np.where(p > 1, (total - bottleneck_s) / np.maximum(p - 1.0, 1.0), bottleneck_s)


def blocking_exchanges_per_microbatch(schedule: np.ndarray, pp: np.ndarray, vpp: np.ndarray,
                                      overlapped: bool, batched: bool = True) -> np.ndarray:
    """Pipeline transfers each stage waits for per micro-batch (plans x 3: first, middle, last), in units
    of one activation sent one way between neighbours (:func:`cost_model.communication.pipeline_p2p`).

    1F1B and its zero-bubble variants exchange on the critical path: Megatron-LM's steady state runs
    ``send_forward_recv_backward`` after each forward and ``send_backward_recv_forward`` after each
    backward, each a ``batch_isend_irecv`` the rank waits for (``megatron/schedules.py``
    ``forward_backward_pipelining_without_interleaving`` and ``p2p_communication._communicate``,
    NVIDIA/Megatron-LM 6985e58938, Aug 2021, d898a8991d, May 2022; ``megatron/core/pipeline_parallel``
    keeps them blocking). Each exchange sends one tensor each way on one link, one transfer's time;
    the first stage has no previous and the last no next stage, so they wait for one exchange a
    micro-batch, the middle stages for two. A last stage made heavier by the LM head therefore runs
    T_last + 1 exchange a micro-batch while its neighbour runs T_mid + 2 (the slower sets the pace).

    ``batched`` False: a stack whose sends and receives are not paired in one exchange is priced as
    before this accounting, two transfers a micro-batch on every stage (whose fill and drain are the
    2 (p - 1) of 2 (m + p - 1)). DeepSpeed's PipelineEngine runs RecvActivation, SendGrad,
    SendActivation and RecvGrad as separate blocking calls (``deepspeed/runtime/pipe/schedule.py``
    ``TrainSchedule``): a stack with ``pipeline_p2p_serial`` is priced by :mod:`cost_model.deepspeed_pipe`
    instead.

    The interleaved schedule of Megatron-LM before ``--overlap-p2p-communication`` (added 2023-05,
    NVIDIA/Megatron-LM f9283c5a8a) runs one ``send_forward_backward_recv_forward_backward`` after every
    forward-backward chunk pair, sending to and receiving from both neighbours at once: two transfers on
    the rank's link per chunk pair, 2 v per micro-batch, on every rank (``overlapped`` False: the stack's
    :attr:`cost_model.stacks.StackSpec.pipeline_p2p_overlap`). Where the stack overlaps them, and under
    DualPipe's F&B pairs, the steady state waits for none (:func:`fill_drain_p2p_transfers`).

    The fill and drain pass the same exchanges from rank to rank: they are in the bubble, which prices
    the other ranks' micro-batch steps (:func:`bubble_s`)."""
    s = np.asarray(schedule)
    p = np.asarray(pp)
    v = np.asarray(vpp, dtype=float)
    on_path = _is(s, (ONE_F_ONE_B, ZB_H1, ZB_H2))
    ends = np.where(p > 1, 1.0, 0.0)
    middle = np.where(p > 2, 2.0, 0.0)
    if not batched:
        ends, middle = 2.0 * ends, np.where(p > 2, 2.0, 0.0)
    one_f_one_b = np.stack([ends, middle, ends], axis=1)
    chunked = 0.0 if overlapped else 1.0
    every_rank = np.where((p > 1) & _is(s, (INTERLEAVED,)), 2.0 * v * chunked, 0.0)[:, None]
    return np.where(on_path[:, None], one_f_one_b, every_rank * np.ones((1, 3)))


def fill_drain_p2p_transfers(schedule: np.ndarray, pp: np.ndarray, overlapped: bool) -> np.ndarray:
    """Pipeline transfers on the critical path per step outside the micro-batch steps (per plan): the
    fill and drain of the schedules whose steady-state sends overlap the next chunk (Megatron
    ``--overlap-p2p-communication``, torch's pipelining runtime posting them asynchronously, DualPipe's
    F&B pairs: DeepSeek-V3 section 3.2.1, "both all-to-all and PP communication can be fully hidden"),
    2 (p - 1); none where every exchange is waited for (:func:`blocking_exchanges_per_microbatch` puts
    them in the micro-batch steps, and the bubble carries the fill and drain's)."""
    s = np.asarray(schedule)
    p = np.asarray(pp, dtype=float)
    blocking = _is(s, (ONE_F_ONE_B, ZB_H1, ZB_H2)) | (_is(s, (INTERLEAVED,)) & (not overlapped))
    return np.where(blocking | (p <= 1), 0.0, 2 * (p - 1))


def paired_chunk_share(schedule: np.ndarray, pp: np.ndarray, vpp: np.ndarray, m: np.ndarray,
                       ranks: np.ndarray) -> np.ndarray:
    """Share of a rank's chunk passes that run beside another micro-batch's (plans x stages): the steps
    in which one's EP all-to-all hides behind the other's compute.

    Megatron's merged 1F1B (:mod:`cost_model.ep_overlap`): with one stage, m - 1 of m micro-batches; with
    an interleaved pipeline, the m v - w passes after a warm-up of w = min(2(p-r-1) + (v-1)p + 1, m v)
    chunks. DualPipe: m - 3p/2 + h + 1 of m (h = min(r, p-1-r); one fewer on the two middle ranks);
    DualPipeV: 2m - 3p + r + 1 of 2m (one fewer on the last rank) (``DualPipe.step``, ``DualPipeV.step``,
    steps 4 and 5). Other schedules pair nothing."""
    s = np.asarray(schedule)[:, None]
    p, v = np.asarray(pp)[:, None], np.asarray(vpp)[:, None]
    m = np.asarray(m)[:, None].astype(float)
    r = np.asarray(ranks)
    total = m * v
    warmup = np.where(p == 1, 1, np.minimum(2 * (p - r - 1) + (v - 1) * p + 1, total))
    megatron = np.divide(total - warmup, total, out=np.zeros(np.broadcast(total, r).shape), where=total > 0)
    half_rank = np.minimum(r, p - 1 - r)
    # The two middle ranks of DualPipe (DualPipeV's last rank) run their first step-4 pair unoverlapped.
    dualpipe = np.clip((m - 1.5 * p + half_rank + 1 - (half_rank == p // 2 - 1)) / np.maximum(m, 1), 0.0, 1.0)
    dualpipev = np.clip((2 * m - 3 * p + r + 1 - (r == p - 1)) / np.maximum(2 * m, 1), 0.0, 1.0)
    return np.select([_is(s, MEGATRON_SCHEDULES), s == DUALPIPE, s == DUALPIPEV], [megatron, dualpipe, dualpipev],
                     0.0)


def pending_weight_grad_layers(schedule: np.ndarray, stage_layers: np.ndarray, vpp: np.ndarray) -> np.ndarray:
    """Layers whose W pass is pending beside the peak's in-flight activations (plans x stages): one chunk
    pass's layers on the schedules that defer W (module docstring), none on the others."""
    s = np.asarray(schedule)[:, None]
    chunks = chunks_per_rank(schedule, vpp)[:, None]
    return np.where(_is(s, SPLIT_BACKWARD), stage_layers / chunks, 0.0)


def stage_ends(schedule: np.ndarray, pp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(has embedding, has LM head, share of the micro-batches whose loss the stage computes) for the
    first, middle and last stage (plans x 3). 1F1B-like: the embedding on the first rank, the head on
    the last. V shapes: both on the first rank (chunks 0 and 2p-1), none on the last. DualPipe: both on
    the first and the last rank, each computing the loss of one direction's half of the micro-batches."""
    s = np.asarray(schedule)
    p = np.asarray(pp)
    yes, no = np.ones_like(p, bool), np.zeros_like(p, bool)
    v_shape = is_v_shaped(s)
    dual = s == DUALPIPE
    embedding = np.stack([yes, no, np.where(dual, p >= 2, no)], axis=1)
    head = np.stack([(p == 1) | v_shape | dual, no, (p >= 2) & ~v_shape], axis=1)
    share = np.where(dual[:, None] & (p >= 2)[:, None], 0.5, 1.0) * head
    return embedding, head, share
