"""Expert-parallel all-to-all hidden behind another micro-batch's compute (Megatron's EP A2A overlap).

Megatron-Core's ``--overlap-moe-expert-parallel-comm`` runs the forward of one micro-batch and the
backward of another as one merged step (``megatron/core/pipeline_parallel/combined_1f1b.py``), so each
all-to-all of one runs beside a compute block of the other. The pairing is DeepSeek-V3's (DeepSeek-V3
technical report, section 3.2.1, figure 4; Megatron's MoE guide, "EP A2A overlap"):

    forward dispatch   beside   the other micro-batch's MoE (expert) backward
    forward combine    beside   the other micro-batch's attention backward
    backward dispatch  beside   the other micro-batch's MoE forward
    backward combine   beside   the other micro-batch's attention forward

so in a merged step a layer exposes only what each all-to-all takes beyond the block beside it.

Only steady-state steps are merged. With one pipeline stage the first forward and the last backward
run alone: (m - 1) of m micro-batches pair up. Interleaved pipelines merge the 1F1B phase; Megatron
adds one warm-up micro-batch so that the merged forward and backward are independent
(``megatron/core/pipeline_parallel/schedules.py``), so rank r pairs (m v - w) of its m v chunk passes,
w = min(2 (p - r - 1) + (v - 1) p + 1, m v). The merged step runs the forward of layer i beside the
backward of the other chunk's last remaining layer and then releases that layer
(``megatron/core/models/common/model_chunk_schedule_plan.py``), so the extra warm-up chunk only replaces
the plain schedule's steady-state forward: the memory model holds one more layer's activations than the
plain schedule (L + 1 layers with one stage), not one more chunk (:func:`cost_model.stages.stage_layout`).

Not modelled: a merged step's other costs. One CPU thread issues both micro-batches' kernels, and the
dropless dispatchers' device-to-host sync can hold it while the other micro-batch's work drains; only
the SMs the hidden all-to-all occupies are charged (``CostOptions.overlap_sm_fraction``).

Megatron accepts the flag only with expert parallelism, the ``alltoall`` or ``flex`` dispatcher, no
full recompute, and a virtual pipeline when pp > 1 (``TransformerConfig.__post_init__``). Plans outside
those conditions are priced without the overlap, and the emitters leave the flag out for them.

DualPipe and DualPipeV (:mod:`cost_model.schedules`) pair a forward chunk with another micro-batch's
backward chunk in their steady state by construction, with the same pairing (DeepSeek-V3 figure 4); with
the overlap asked for, their F&B pairs hide the all-to-alls as the merged steps do, with the pair counts
of their own step order and no extra warm-up chunk (their PP + 1 in-flight chunks already hold it). The
share of paired chunk passes of every schedule is :func:`cost_model.schedules.paired_chunk_share`.
"""

from __future__ import annotations

import numpy as np

from .model_spec import ModelSpec
from .plan import FULL, PlanArrays
from .schedules import BIDIRECTIONAL, MEGATRON_SCHEDULES, paired_chunk_share
from .training_spec import TrainingSpec


def megatron_accepts_overlap(ep, recompute, pp, vpp):
    """Whether Megatron accepts ``--overlap-moe-expert-parallel-comm`` for this layout (element-wise on
    arrays or plain numbers)."""
    return (ep > 1) & (recompute != FULL) & ((pp == 1) | (vpp > 1))


def ep_overlap_active(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> np.ndarray:
    """Plans on which Megatron runs the EP all-to-all overlap the training setup asks for."""
    if not (training.overlap_moe_expert_parallel_comm and model.is_moe):
        return np.zeros(len(plans), dtype=bool)
    megatron = np.isin(plans.schedule, MEGATRON_SCHEDULES) & megatron_accepts_overlap(
        plans.ep, plans.recompute, plans.pp, plans.vpp)
    return megatron | (np.isin(plans.schedule, BIDIRECTIONAL) & (plans.ep > 1))


def merged_share(plans: PlanArrays, num_microbatches: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Share of each stage's chunk passes that run merged with another micro-batch's (plans, stages):
    :func:`cost_model.schedules.paired_chunk_share` of the plans' schedules."""
    return paired_chunk_share(plans.schedule, plans.pp, plans.vpp, num_microbatches, ranks)


def exposed_in_merged_step(dispatch_fwd_s: np.ndarray, combine_fwd_s: np.ndarray, a2a_bwd_s: np.ndarray,
                           attention_fwd_s: np.ndarray, attention_bwd_s: np.ndarray, moe_fwd_s: np.ndarray,
                           moe_bwd_s: np.ndarray) -> np.ndarray:
    """All-to-all seconds of one MoE layer left exposed in a merged step (per plan).

    ``a2a_bwd_s`` is both backward all-to-alls together; they move the same bytes, half each."""
    half_bwd = a2a_bwd_s / 2
    return (np.maximum(0.0, dispatch_fwd_s - moe_bwd_s) + np.maximum(0.0, combine_fwd_s - attention_bwd_s)
            + np.maximum(0.0, half_bwd - moe_fwd_s) + np.maximum(0.0, half_bwd - attention_fwd_s))
