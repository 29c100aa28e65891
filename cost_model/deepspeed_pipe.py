"""DeepSpeed's pipeline engine: what its stages wait for between neighbours, per micro-batch and in the
fill and drain (stacks with :attr:`cost_model.stacks.StackSpec.pipeline_p2p_serial`).

Read from microsoft/DeepSpeed ``deepspeed/runtime/pipe/`` at v0.5.4 (2021-10-06), the code of
Megatron-DeepSpeed's 2021-2023 runs (``schedule.py`` ``TrainSchedule``, ``engine.py``, ``p2p.py``):

* Serial transfers. ``TrainSchedule.steps`` gives a stage, per micro-batch, a forward step
  ``[RecvActivation, SendGrad, ForwardPass]`` and a backward step ``[SendActivation, RecvGrad,
  BackwardPass]``; each instruction is its own blocking ``p2p.send`` / ``p2p.recv`` (``dist.send`` /
  ``dist.recv`` from torch 1.8, a ``dist.broadcast`` on a two-rank group before), never a paired
  exchange. A middle stage waits for four transfers a micro-batch, the first and last stage for two
  (the first has no previous, the last no next stage). An event simulation of that instruction stream
  with rendezvous transfers (tests/test_deepspeed_pipe.py) gives the step as m T_bottleneck + (p - 1)
  (T_other - the middle ranks' second pair): the fill passes each activation on once per hop and the
  drain each gradient, one transfer each way per rank.
* Partitioned activations and gradients. With tensor parallelism (``grid.model_parallel_size > 1``)
  the engine sets ``is_pipe_partitioned`` and ``is_grad_partitioned``: ``_exec_forward_pass`` cuts the
  stage output into 1/t flat pieces (``PartitionedTensor``) and ``_exec_send_grads`` the input
  gradient; each send is two messages, the piece's ``to_meta()`` long tensor (ndims, shape, parts, rank
  and the t + 1 partition offsets) then the piece. ``PartitionedTensor.full()``, an all-gather over the
  tensor-parallel group, rebuilds the input before a forward, and before a backward the output (cleared
  after its send) and the received gradient. Both came with ``e2fdd254e`` "Big science related changes"
  (2021-09-29, co-authored by MT-NLG's authors; first in v0.5.4), the version whose pipeline takes a
  single tensor between stages, as Megatron-DeepSpeed's ``GPTModelPipe`` sends one (the attention mask
  cached in ``args.attn_mask``, microsoft/Megatron-DeepSpeed ``pretrain_gpt.py`` since 8a132ced,
  2021-06). Before it, only the (hidden, mask) tuples of DeepSpeedExamples' ``GPT2ModelPipe`` were
  partitioned, and gradients went back whole.

All-gathers a micro-batch: the first stage 2 (its output and the gradient, before its backward); the last
stage 1 (its input); a middle stage all 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .communication import AG, P2P, CommPricer, stage_activation_bytes
from .model_spec import ModelSpec
from .plan import PlanArrays
from .training_spec import TrainingSpec

META_LONG_BYTES = 8
"""``PartitionedTensor.to_meta`` is a ``torch.LongTensor``."""


def meta_bytes(tp: np.ndarray, ndims: int = 3) -> np.ndarray:
    """Bytes of one ``to_meta()`` tensor: [ndims, *shape, num_parts, rank, *partition (t + 1 offsets)]
    (deepspeed/runtime/utils.py ``PartitionedTensor.to_meta``, v0.5.4); Megatron's activation is
    [s, b, h], 3 dims."""
    return META_LONG_BYTES * (1 + ndims + 2 + (np.asarray(tp, dtype=float) + 1))


@dataclass
class SerialTransfers:
    """Per plan and stage (plans x 3: first, middle, last), seconds of the pipeline traffic."""

    per_microbatch_s: np.ndarray
    """What the stage waits for in each micro-batch step: its blocking transfers and all-gathers."""
    fill_drain_s: np.ndarray
    """What the stage passes on in the fill and drain, once each way: the bubble's share of it."""
    bytes_per_microbatch: np.ndarray
    """Per plan: bytes one rank sends over the pipeline link per micro-batch (activation + gradient)."""


def serial_transfers(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, pricer: CommPricer) -> SerialTransfers:
    """Seconds of DeepSpeed's pipeline transfers per stage (module docstring)."""
    tp = np.asarray(plans.tp)
    piped = np.asarray(plans.pp) > 1
    partitioned = tp > 1
    whole = stage_activation_bytes(model, training, plans)
    piece = np.where(partitioned, whole / tp, whole)
    meta = np.where(partitioned, pricer.time(P2P, pricer.placements.pp, meta_bytes(tp)), 0.0)
    transfer = pricer.time(P2P, pricer.placements.pp, piece) + meta   # an activation, or a gradient back
    gather = np.where(partitioned, pricer.time(AG, pricer.placements.tp, whole), 0.0)
    gathers = np.where(partitioned[:, None], np.array([[2.0, 3.0, 1.0]]), 0.0)
    one_pair = 2 * transfer[:, None]
    pairs = np.stack([np.ones(len(tp)), np.where(np.asarray(plans.pp) > 2, 2.0, 1.0), np.ones(len(tp))], axis=1)
    per_microbatch = pairs * one_pair + gathers * gather[:, None]
    fill_drain = one_pair + gathers * gather[:, None]
    sent = 2 * pricer.sent(P2P, pricer.placements.pp, piece)
    return SerialTransfers(per_microbatch_s=np.where(piped[:, None], per_microbatch, 0.0),
                           fill_drain_s=np.where(piped[:, None], fill_drain, 0.0),
                           bytes_per_microbatch=np.where(piped, sent, 0.0))
