"""Price N plans in one vectorised call: memory per rank, step time, throughput, MFU, time and cost.

Step time (all per rank of the bottleneck stage; "exposed" = not hidden behind compute):

    T_mb    = forward + backward + recompute + exposed TP + exposed CP + EP + exposed ZeRO-2/3 traffic
              + the gradient accumulation pass of a run without ``gradient_accumulation_fusion``
    T_pipe  = m * T_mb + bubble                    the schedule's bubble (:mod:`cost_model.schedules`):
                                                   (p-1) T_mb / v for 1F1B and interleaved (Narayanan et
                                                   al. 2021, section 2.2), less with zero-bubble and
                                                   DualPipe; its T_mb (and B, W) the mean of the ranks
                                                   other than the bottleneck (fill and drain pass them)
    step    = T_pipe + exposed pipeline send/recv + exposed data-parallel sync + optimizer step

The breakdown reports forward + backward as ``compute`` and ``host_issue``: the seconds the GPU waits
for the CPU to issue kernels (:mod:`cost_model.host`), which CUDA graphs or bigger micro-batches remove.

Overlap rules, each a documented simplification of what Megatron-LM / FSDP do:

* TP: exposed, unless ``tp_comm_overlap`` (Megatron ``--tp-comm-overlap``), which hides it behind the
  layer's GEMMs up to their duration. With ``tp_backward_overlap`` (Megatron's asynchronous backward
  collectives, 2022+; always on in Transformer Engine's linears,
  :attr:`cost_model.stacks.StackSpec.tp_backward_overlap`) each column-parallel linear's input-gradient
  all-reduce, or with sequence parallelism its reduce-scatter and the all-gather of its saved input, runs beside its
  weight-gradient GEMM; what stays exposed backward is the all-gather of the row-parallel output
  gradient (sequence parallelism only). Korthikanti et al. 2022 Table 4 (one 22B layer, A100, TP 8):
  backward 11.9 ms without recompute, 19.5 ms with full recompute (the forward's 7.7 ms, all-reduces
  included, again); the model gives 12.1 and 19.9 with it at the stored fit of 487797a (forward 7.8 ms;
  with sequence parallelism 7.2 forward and 11.8 backward).
* CP ring (p2p): a rank computes cp attention blocks and receives cp - 1 K/V chunks (backward: K/V and
  dK/dV), each transfer beside one block: the first block (the local chunk) runs while the first chunk
  arrives, and the last block has no transfer beside it. With the causal load balancing of Megatron /
  Transformer Engine (each rank holds chunks i and 2cp-1-i) every block is the same work, 1/cp of the
  layer's attention, so exposed = (cp - 1) * max(0, transfer - attention / cp) per layer, forward and
  backward (Liu et al. 2023, Ring Attention, section 3; TE ``AttnFuncWithCPAndKVP2P``). CP all-to-all
  is exposed.
* EP all-to-all: exposed, unless ``overlap_moe_expert_parallel_comm`` (Megatron's merged 1F1B, or the
  F&B pairs of DualPipe/DualPipeV), which hides each all-to-all of the steady-state steps behind a
  compute block of the other micro-batch (:mod:`cost_model.ep_overlap`).
* Pipeline send/recv: 1F1B (and ZB-H1/H2) waits for its exchanges, one a micro-batch on the first and
  last stage, two on the middle ones, in the micro-batch step; so does Megatron-LM's interleaved
  schedule before ``--overlap-p2p-communication`` (two transfers a chunk pair); the fill and drain
  pass them through the bubble (:func:`cost_model.schedules.blocking_exchanges_per_microbatch`). The
  interleaved, V and DualPipe schedules that overlap them expose only the fill and drain's, 2*(p - 1)
  (:func:`cost_model.schedules.fill_drain_p2p_transfers`). DeepSpeed's pipeline engine
  (``pipeline_p2p_serial``) sends and receives one tensor per blocking call: four transfers a
  micro-batch on a middle stage, two on the end stages, one each way per rank in the fill and drain,
  each a meta tensor and a 1/tp piece all-gathered where it is used (:mod:`cost_model.deepspeed_pipe`).
* DP gradient sync (ZeRO-0/1) with ``overlap_grad_reduce`` hides behind the last micro-batch's
  backward, except the last bucket (40M elements); the distributed optimizer's weight all-gather with
  ``overlap_param_gather`` hides behind the first micro-batch's forward, except one bucket.
* ZeRO-2 reduce-scatters every micro-batch during its backward (and beside the next micro-batch's
  forward with ``training.async_grad_reduce_scatter``, Llama 3's FSDP: only the last micro-batch's
  reduce-scatter then has nothing but its backward to hide behind); ZeRO-3 (FSDP) prefetches each layer's
  weights during the previous layer's compute: exposed is what exceeds the compute, plus the first
  layer's all-gather. A stack without prefetch (``fsdp_prefetch: false`` in
  :mod:`cost_model.stacks`) runs every gather and reduce-scatter on the critical path: DeepSpeed 0.3.x
  ZeRO-3 calls ``torch.cuda.synchronize()`` before each parameter's all-gather
  (``partition_parameters.py`` ``_allgather_param``) and again after each module's fetch
  (``stage3.py`` ``_synchronize_communication``), so no compute runs beside its collectives; the device-wide
  synchronisation also waits for the gradient all-reduce running on its reduction stream, and the copies
  around those collectives (buffer fills, per-rank pieces, bucket flatten and copy back:
  :func:`cost_model.deepspeed_zero3.memory_pass_bytes` at the HBM's streaming rate) add to them. A stack with
  ``collective_fill_exposed`` (Composer's FSDP1) keeps each per-layer collective's ring latency on the
  critical path although its bandwidth time hides (:attr:`cost_model.stacks.StackSpec.collective_fill_exposed`):
  ZeRO-3 pays two all-gathers' and a reduce-scatter's per layer and micro-batch, ZeRO-2 a reduce-scatter's
  per layer and micro-batch and an all-gather's per layer and step, never more than the collectives take.
  A stack with ``unsharded_grad_prep`` (FSDP1) also pays, every micro-batch, the memory-bound passes over
  each layer's unsharded gradient before its reduce-scatter (:func:`cost_model.compute.unsharded_gradient_bytes`
  at the HBM's streaming rate), reported with the ZeRO traffic.
* Overlapped communication still costs: NCCL kernels occupy a share of the SMs while they run
  (``overlap_sm_fraction``), so every second of hidden communication slows the compute beside it by
  that share.
* Activation offload (Megatron ``--cpu-offloading``): each offloaded layer's activations go to the host
  during forward and come back during backward over the GPU's host link (PCIe, or NVLink-C2C on Grace
  systems), on copy engines beside the compute; exposed is what the copies take beyond it.
* Optimizer step: memory bound (:func:`cost_model.compute.optimizer_step_bytes`): Adam reads and
  writes fp32 master, m, v, reads the gradient and writes bf16 weights (30 bytes per parameter of the
  local shard; 22 for SGD, 22 for Adam with bf16 moments), reads the gradient once more for the norm
  clipping, twice more under fp16 loss scaling, and zeroes the gradient buffer; Megatron-LM's 2021-2022
  fp16 optimizer also casts the gradients to an fp32 copy and writes the 16-bit weights in a pass of their
  own (:attr:`cost_model.stacks.StackSpec.float16_optimizer_copies`). Offloaded: the gradient goes to the
  host and the bf16 weight comes back over PCIe, and the host CPUs run Adam. A stack with ``per_tensor_optimizer``
  (Composer's ``DecoupledAdamW``) updates tensor by tensor with eager kernels and a read-back of each
  tensor's step count: the slowest rank's sum over the tensors of its shard of the longer of their host
  issue and their HBM time (:mod:`cost_model.per_tensor_optimizer`).
* Gradient accumulation: without ``gradient_accumulation_fusion`` (Megatron's fused weight-gradient
  accumulation; :attr:`cost_model.training_spec.TrainingSpec.fuses_gradient_accumulation`) each micro-batch's
  backward adds its weight gradients into the rank's unsharded (ZeRO-0/1) gradient buffer in a memory-bound
  pass over the stage's parameters (:func:`cost_model.compute.gradient_accumulation_bytes` at the HBM's
  streaming rate), reported with the compute; priced for Megatron's and DeepSpeed's stacks.
* Full recompute reruns each layer's forward; under a stack with ``recompute_early_stop`` (PyTorch's
  non-reentrant checkpoint from torch 2.1) it stops at the layer's last saved tensor and skips the MLP
  output projection (:attr:`cost_model.stacks.StackSpec.recompute_early_stop`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from hardware.schema import ClusterSpec

from .communication import (CommPricer, data_parallel_communication, layer_communication, pipeline_p2p, place)
from .compute import (gemm_precision_rate, gradient_accumulation_bytes, layer_times, lm_head_times,
                      optimizer_step_bytes, precision_conflict, precision_fix, unsharded_gradient_bytes)
from .deepspeed_pipe import serial_transfers
from .deepspeed_zero3 import memory_pass_bytes
from .flops import model_flops_per_step, recompute_flops_per_step
from .ep_overlap import ep_overlap_active, exposed_in_merged_step, merged_share
from .goodput import Goodput, goodput
from .host import graph_scope_conflict
from .memory import (GIB, MemoryBreakdown, StageParameters, gathered_weight_bytes, memory_breakdown, padded_vocab,
                     stage_parameters)
from .model_spec import ModelSpec
from .options import CostOptions
from .params import ParameterCounts
from .per_tensor_optimizer import optimizer_step_s as per_tensor_optimizer_step_s
from .activations import recomputes
from .bf16_layers import bf16_difference, bf16_layers_per_stage, bf16_training
from .plan import PlanArrays
from .power import plan_power
from .schedules import ONE_F_ONE_B, blocking_exchanges_per_microbatch, bubble_s, fill_drain_p2p_transfers, other_ranks_mean_s
from .stages import STAGES, StageLayout, recomputed_layer_share, stage_layout
from .stacks import stack_spec
from .training_spec import MEGATRON_LINEAR_STACKS, TrainingSpec

MEMORY_PARTS = ("weights", "gradients", "optimizer", "activations", "other")
TIME_PARTS = ("compute", "host_issue", "recompute", "tp_comm", "cp_comm", "ep_comm", "pp_bubble", "pp_comm", "dp_comm",
              "offload", "overlap_contention", "optimizer")
COMM_DIMS = ("tp", "cp", "ep", "pp", "dp")
GOODPUT_FIELDS = ("ettr", "mtbf_s", "checkpoint_bytes_per_rank", "checkpoint_bytes_job", "checkpoint_save_s",
                  "checkpoint_interval_s", "restart_s", "lost_work_per_failure_s", "spare_gpus",
                  "effective_time_to_train_s", "effective_gpu_hours", "effective_cost_usd")
"""The goodput fields of :class:`PlanMetrics` (:mod:`cost_model.goodput`), one value per plan."""


@dataclass
class PlanMetrics:
    """Everything the cost model predicts for N plans; every array has length N."""

    plans: PlanArrays
    num_microbatches: np.ndarray
    memory_bytes: np.ndarray
    """Predicted peak RESERVED memory per GPU (what nvidia-smi shows less the CUDA context:
    ``torch.cuda.max_memory_reserved`` plus NCCL's buffers; :data:`cost_model.memory.MEMORY_KIND`), of the
    most loaded pipeline stage; what :func:`cost_model.memory.fits_in_memory` compares with usable memory."""
    memory_parts_bytes: dict[str, np.ndarray]
    """Breakdown of that stage (weights, gradients, optimizer, activations, other)."""
    peak_stage: np.ndarray
    """Index into STAGES of the most loaded stage."""
    step_time_s: np.ndarray
    step_time_parts_s: dict[str, np.ndarray]
    """Breakdown of the step time; the parts add up to step_time_s."""
    bottleneck_stage: np.ndarray
    tokens_per_s: np.ndarray
    model_flops_per_step: float
    hardware_flops_per_step: np.ndarray
    mfu: np.ndarray
    """Model FLOPs per second over the dense peak of the run's precision. Model FLOPs count a causal
    model's attention at its causal half (:mod:`cost_model.flops`; ``CostOptions.mfu_attention_causal``),
    so MFU never exceeds the efficiency of the kernels that ran."""
    hfu: np.ndarray
    """As ``mfu``, with the FLOPs that recomputation repeats added (Korthikanti et al. 2022, section 6.3)."""
    tflops_per_gpu: np.ndarray
    """Model TFLOP/s achieved per GPU."""
    comm_bytes_per_step: dict[str, np.ndarray]
    """Bytes each rank of the bottleneck stage sends per step, per parallel dimension."""
    time_to_train_s: np.ndarray
    gpu_hours: np.ndarray
    cost_usd: np.ndarray
    energy_kwh: np.ndarray
    """Facility energy of the run: average power x time to train (:mod:`cost_model.power`)."""
    gpu_power_w: np.ndarray
    """Average board power of one GPU over a step: TDP x the power fraction of each state (computing,
    communicating, waiting) weighted by its share of the step (:mod:`cost_model.power`)."""
    power_mw: np.ndarray
    """Average facility power of the job: GPUs, the rest of their nodes and the PUE, in megawatts."""
    peak_power_mw: np.ndarray
    """Facility power while every GPU computes at once (what a site's supply must carry), in megawatts."""
    # ---- goodput (:mod:`cost_model.goodput`): failures, checkpoints and restarts ----
    ettr: np.ndarray
    """Effective training time ratio: useful work / wall time under the cluster's failure rates."""
    mtbf_s: np.ndarray
    """Mean time between failures of the job (its GPUs and nodes)."""
    checkpoint_bytes_per_rank: np.ndarray
    """Checkpoint bytes the bottleneck rank writes (weights, optimizer states, RNG/data state)."""
    checkpoint_bytes_job: np.ndarray
    """Checkpoint bytes of the whole job."""
    checkpoint_save_s: np.ndarray
    """Seconds training stops per checkpoint (the write, or the host copy when asynchronous)."""
    checkpoint_interval_s: np.ndarray
    """Training seconds between checkpoints (Young/Daly optimum unless the training spec sets one)."""
    restart_s: np.ndarray
    """Expected seconds from a failure back to training."""
    lost_work_per_failure_s: np.ndarray
    """Expected work a failure throws away."""
    spare_gpus: np.ndarray
    """GPUs of the hot-spare nodes held (and paid for) beside the job's (``TrainingSpec.hot_spare_nodes_per``)."""
    effective_time_to_train_s: np.ndarray
    """time_to_train_s / ettr: the time that counts failures, checkpoints and restarts."""
    effective_gpu_hours: np.ndarray
    """GPU-hours over the effective time, spares included."""
    effective_cost_usd: np.ndarray
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.step_time_s)

    @property
    def memory_gib(self) -> np.ndarray:
        return self.memory_bytes / GIB

    @classmethod
    def concatenate(cls, parts: list["PlanMetrics"]) -> "PlanMetrics":
        """Join metrics of consecutive blocks of plans (the per-stage extras are dropped)."""
        if len(parts) == 1:
            return parts[0]

        def join(values):
            first = values[0]
            if isinstance(first, dict):
                return {key: np.concatenate([v[key] for v in values]) for key in first}
            return np.concatenate(values)

        arrays = {f: join([getattr(p, f) for p in parts]) for f in (
            "num_microbatches", "memory_bytes", "memory_parts_bytes", "peak_stage", "step_time_s",
            "step_time_parts_s", "bottleneck_stage", "tokens_per_s", "hardware_flops_per_step", "mfu", "hfu",
            "tflops_per_gpu", "comm_bytes_per_step", "time_to_train_s", "gpu_hours", "cost_usd", "energy_kwh",
            "gpu_power_w", "power_mw", "peak_power_mw")}
        arrays.update({f: join([getattr(p, f) for p in parts]) for f in GOODPUT_FIELDS})
        return cls(plans=PlanArrays.concatenate([p.plans for p in parts]),
                   model_flops_per_step=parts[0].model_flops_per_step, **arrays)

    def to_frame(self) -> "pd.DataFrame":
        """One row per plan: the plan columns, then metrics (memory in GiB, times in seconds)."""
        import pandas as pd  # here, not at module level: a search that prints a table never needs pandas

        columns = {name: value for name, value in self.plans.to_columns().items()}
        columns["num_gpus"] = self.plans.num_gpus
        columns["num_microbatches"] = self.num_microbatches
        columns["memory_gib"] = self.memory_gib
        for part in MEMORY_PARTS:
            columns[f"memory_{part}_gib"] = self.memory_parts_bytes[part] / GIB
        columns["peak_stage"] = np.asarray(STAGES)[self.peak_stage]
        columns["step_time_s"] = self.step_time_s
        for part in TIME_PARTS:
            columns[f"time_{part}_s"] = self.step_time_parts_s[part]
        columns["tokens_per_s"] = self.tokens_per_s
        columns["tokens_per_s_per_gpu"] = self.tokens_per_s / self.plans.num_gpus
        columns["tflops_per_gpu"] = self.tflops_per_gpu
        columns["mfu"] = self.mfu
        columns["hfu"] = self.hfu
        for dim in COMM_DIMS:
            columns[f"comm_{dim}_gb_per_step"] = self.comm_bytes_per_step[dim] / 1e9
        columns["time_to_train_days"] = self.time_to_train_s / 86400
        columns["gpu_hours"] = self.gpu_hours
        columns["cost_usd"] = self.cost_usd
        columns["energy_mwh"] = self.energy_kwh / 1000
        columns["gpu_power_w"] = self.gpu_power_w
        columns["power_mw"] = self.power_mw
        columns["peak_power_mw"] = self.peak_power_mw
        columns["ettr"] = self.ettr
        columns["mtbf_h"] = self.mtbf_s / 3600
        columns["checkpoint_gib_per_rank"] = self.checkpoint_bytes_per_rank / GIB
        columns["checkpoint_gib_job"] = self.checkpoint_bytes_job / GIB
        columns["checkpoint_save_s"] = self.checkpoint_save_s
        columns["checkpoint_interval_s"] = self.checkpoint_interval_s
        columns["restart_s"] = self.restart_s
        columns["lost_work_per_failure_s"] = self.lost_work_per_failure_s
        columns["spare_gpus"] = self.spare_gpus
        columns["effective_time_to_train_days"] = self.effective_time_to_train_s / 86400
        columns["effective_gpu_hours"] = self.effective_gpu_hours
        columns["effective_cost_usd"] = self.effective_cost_usd
        return pd.DataFrame(columns)


def _pick(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.take_along_axis(values, index[:, None], axis=1)[:, 0]


@dataclass
class MemoryPrediction:
    """Memory of every stage and the peak, with what the time model reuses."""

    num_microbatches: np.ndarray
    stages: StageLayout
    params: StageParameters
    by_stage: MemoryBreakdown
    peak_stage: np.ndarray
    peak_bytes: np.ndarray
    parts: dict[str, np.ndarray]


def predict_memory(model: ModelSpec, training: TrainingSpec, plans: PlanArrays,
                   options: CostOptions | None = None) -> MemoryPrediction:
    """Peak memory per GPU of every plan (the most loaded pipeline stage) and its breakdown.

    Cheaper than :func:`evaluate`; the search uses it to find which plans fit before timing them.
    """
    options = options or CostOptions()
    m = np.maximum(plans.num_microbatches(training.global_batch_size), 1)
    stages = stage_layout(model, plans, m, extra_warmup=ep_overlap_active(model, training, plans))
    params = stage_parameters(model, ParameterCounts(model), plans, stages, options)
    memory = memory_breakdown(model, training, plans, stages, params, options)
    totals = np.where(stages.exists, memory.total, -np.inf)
    peak_stage = np.argmax(totals, axis=1)
    parts = {part: _pick(getattr(memory, part), peak_stage) for part in MEMORY_PARTS}
    return MemoryPrediction(num_microbatches=m, stages=stages, params=params, by_stage=memory,
                            peak_stage=peak_stage, peak_bytes=_pick(totals, peak_stage), parts=parts)


BLOCK_PLANS = 16384
"""Plans priced per numpy pass. Blocks of this size keep the temporaries in the allocator's reuse
range; one pass over 10^6 plans spends a fifth of its time faulting in fresh pages."""


def evaluate(model: ModelSpec, training: TrainingSpec, cluster: ClusterSpec, plans: PlanArrays,
             options: CostOptions | None = None) -> PlanMetrics:
    """Predict memory and time of every plan (see the module docstring for the time model)."""
    conflict = graph_scope_conflict(model, training)
    if conflict:
        raise ValueError(conflict)
    conflict = precision_conflict(training, cluster.gpu)
    if conflict:
        raise ValueError(f"{conflict}; {precision_fix(training)[1]}")
    if len(plans) > BLOCK_PLANS:
        blocks = [plans.take(slice(i, i + BLOCK_PLANS)) for i in range(0, len(plans), BLOCK_PLANS)]
        return PlanMetrics.concatenate([_evaluate(model, training, cluster, b, options) for b in blocks])
    return _evaluate(model, training, cluster, plans, options)


def peak_memory_bytes(model: ModelSpec, training: TrainingSpec, plans: PlanArrays,
                      options: CostOptions | None = None) -> np.ndarray:
    """Peak memory per GPU of every plan, in blocks (what the search screens feasibility with)."""
    if not len(plans):
        return np.zeros(0)
    return np.concatenate([predict_memory(model, training, plans.take(slice(i, i + BLOCK_PLANS)), options).peak_bytes
                           for i in range(0, len(plans), BLOCK_PLANS)])


def _selective_collectives(plans: PlanArrays) -> dict[str, np.ndarray]:
    """Share of a layer's forward collectives that the selective recompute modules send again."""
    return {
        "dense_tp": np.where(recomputes(plans, "mlp"), 0.5, 0.0),  # the MLP's all-gather + reduce-scatter
        "moe_tp": np.where(recomputes(plans, "moe"), 0.5, 0.0),
        "ep": np.where(recomputes(plans, "moe"), 1.0, 0.0),         # dispatch and combine
        "cp": np.where(recomputes(plans, "core_attn"), 1.0, 0.0),   # the K/V ring (or all-to-all)
    }


def _evaluate(model: ModelSpec, training: TrainingSpec, cluster: ClusterSpec, plans: PlanArrays,
              options: CostOptions | None = None) -> PlanMetrics:
    options = options or CostOptions()
    gpu = cluster.gpu
    memory_result = predict_memory(model, training, plans, options)
    m, stages, params = memory_result.num_microbatches, memory_result.stages, memory_result.params
    memory, peak_stage, memory_bytes = memory_result.by_stage, memory_result.peak_stage, memory_result.peak_bytes
    memory_parts = memory_result.parts

    # ---- compute per micro-batch per stage ----
    dense_t, moe_t = layer_times(model, training, plans, gpu, options)
    vocab = padded_vocab(model, plans, options).astype(float)
    head_fwd, head_bwd, _ = lm_head_times(model, training, plans, gpu, options, vocab)
    Ld, Lm = stages.dense_layers, stages.moe_layers
    head = stages.has_lm_head

    def per_stage(dense_values, moe_values):
        return Ld * dense_values[:, None] + Lm * moe_values[:, None]

    head_share = np.where(head, 1.0 if stages.lm_head_share is None else stages.lm_head_share, 0.0)
    forward = per_stage(dense_t.forward, moe_t.forward) + head_share * head_fwd[:, None]
    backward = per_stage(dense_t.backward, moe_t.backward) + head_share * head_bwd[:, None]
    # Weight-gradient GEMMs: each linear layer's dW = X^T dY has its forward GEMM's shape (schedules.py).
    weight_grad = per_stage(dense_t.gemm_forward, moe_t.gemm_forward)
    share = recomputed_layer_share(plans, stages)
    layers_forward = per_stage(dense_t.forward, moe_t.forward)
    host_waits = per_stage(dense_t.host_exposed, moe_t.host_exposed)
    selective = per_stage(dense_t.selective_recompute, moe_t.selective_recompute)
    bf16_counts = bf16_layers_per_stage(training, stages)
    if bf16_counts.any():  # first/last layers kept in BF16 in an FP8/FP4 run (cost_model.bf16_layers)
        dense_b, moe_b = layer_times(model, bf16_training(training), plans, gpu, options)

        def bf16_extra(name: str) -> np.ndarray:
            return bf16_difference(bf16_counts, stages, (getattr(dense_t, name), getattr(moe_t, name)),
                                   (getattr(dense_b, name), getattr(moe_b, name)))

        forward, backward = forward + bf16_extra("forward"), backward + bf16_extra("backward")
        weight_grad, layers_forward = weight_grad + bf16_extra("gemm_forward"), layers_forward + bf16_extra("forward")
        host_waits, selective = host_waits + bf16_extra("host_exposed"), selective + bf16_extra("selective_recompute")
    if training.recompute_stops_early:
        layers_forward = layers_forward - per_stage(dense_t.forward_after_last_save, moe_t.forward_after_last_save)
    recompute = share * layers_forward + selective

    # ---- communication per micro-batch per stage ----
    placements = place(cluster, plans, options)
    pricer = CommPricer(cluster, placements)
    dense_c, moe_c = layer_communication(model, training, plans, pricer, options)
    # Recomputed forwards send their collectives again: whole layers under full recompute; the MLP's
    # half of the TP traffic ('mlp', 'moe'), the dispatch and combine ('moe') and the CP exchange
    # ('core_attn') under selective recompute.
    again = _selective_collectives(plans)
    repeat = 1.0 + share
    tp_fwd = (per_stage(dense_c.tp_fwd_s * (1 + again["dense_tp"]), moe_c.tp_fwd_s * (1 + again["moe_tp"]))
              * repeat)
    tp_total = tp_fwd + per_stage(dense_c.tp_bwd_s, moe_c.tp_bwd_s)
    if training.tp_comm_overlap:
        gemm = per_stage(dense_t.gemm_forward, moe_t.gemm_forward) * (3.0 + share)
        tp_exposed = np.maximum(0.0, tp_total - gemm)
    elif training.tp_backward_overlap or stack_spec(training.stack).tp_backward_overlap:
        # The backward's asynchronous collectives (module docstring) take what the forward's pairs take:
        # one all-reduce, or one reduce-scatter plus one all-gather of the saved input, per pair; they
        # hide behind the weight-gradient GEMMs (the forward GEMMs' shapes, schedules.py).
        asynchronous = per_stage(dense_c.tp_fwd_s, moe_c.tp_fwd_s)
        tp_exposed = tp_total - np.minimum(asynchronous, per_stage(dense_t.gemm_forward, moe_t.gemm_forward))
    else:
        tp_exposed = tp_total
    tp_hidden = tp_total - tp_exposed
    cp_repeat = (1.0 + again["cp"])[:, None] * repeat if again["cp"].any() else repeat
    cp_total = per_stage(dense_c.cp_fwd_s, moe_c.cp_fwd_s) * cp_repeat + per_stage(dense_c.cp_bwd_s, moe_c.cp_bwd_s)
    if options.cp_comm_type == "p2p":
        # cp - 1 transfers, each beside one of the cp equal attention blocks (module docstring)
        beside = (plans.cp - 1) / plans.cp
        cp_layer_f = np.maximum(0.0, dense_c.cp_fwd_s - beside * dense_t.attention_forward)
        cp_layer_b = np.maximum(0.0, dense_c.cp_bwd_s - beside * dense_t.attention_backward)
        cp_moe_f = np.maximum(0.0, moe_c.cp_fwd_s - beside * moe_t.attention_forward)
        cp_moe_b = np.maximum(0.0, moe_c.cp_bwd_s - beside * moe_t.attention_backward)
        cp_exposed = per_stage(cp_layer_f, cp_moe_f) * cp_repeat + per_stage(cp_layer_b, cp_moe_b)
    else:
        cp_exposed = cp_total
    cp_hidden = cp_total - cp_exposed
    ep_fwd = moe_c.ep_fwd_s * (1.0 + again["ep"])
    ep_total = Lm * (ep_fwd[:, None] * repeat + moe_c.ep_bwd_s[:, None])
    # EP all-to-all overlap: in merged steps each all-to-all runs beside a block of the other
    # micro-batch; what the recomputed forward sends again stays exposed.
    merged = np.where(ep_overlap_active(model, training, plans)[:, None],
                      merged_share(plans, m, stages.pipeline_rank), 0.0)
    paired = exposed_in_merged_step(
        moe_c.ep_dispatch_fwd_s, moe_c.ep_fwd_s - moe_c.ep_dispatch_fwd_s, moe_c.ep_bwd_s,
        moe_t.attention_block_forward, moe_t.attention_block_backward,
        moe_t.forward - moe_t.attention_block_forward, moe_t.backward - moe_t.attention_block_backward)
    ep_hidden = merged * Lm * (moe_c.ep_fwd_s + moe_c.ep_bwd_s - paired)[:, None]
    ep_exposed = ep_total - ep_hidden

    dp = data_parallel_communication(training, plans, pricer, params.dense, params.expert, stages.layers, m,
                                     options.grad_bucket_elements, model=model,
                                     # ProcessGroupNCCL's per-rank copies after a list all-gather are eager
                                     # copy_ ops the host issues one by one, and DeepSpeed 0.3.x synchronises
                                     # the device around every fetch: each costs the host's issue time.
                                     copy_kernel_s=options.host_kernel_issue_us * 1e-6,
                                     gather_bytes_per_param=gathered_weight_bytes(training, plans),
                                     recomputed_share=share)
    compute_fwd = forward
    compute_bwd = backward + recompute
    layers = np.maximum(stages.layers, 1.0)
    stack = stack_spec(training.stack)
    # An asynchronous ZeRO-2 reduce-scatter (training.async_grad_reduce_scatter) runs on beside the next
    # micro-batch's forward as well; the last micro-batch's has no forward after it (per step, below).
    beside_forward = training.async_grad_reduce_scatter & (plans.zero_stage[:, None] == 2)
    reduce_window = compute_bwd + np.where(beside_forward, compute_fwd, 0.0)
    if stack.fsdp_prefetch:
        zero_exposed = (np.maximum(0.0, dp.per_microbatch_fwd_s - compute_fwd) + dp.per_microbatch_fwd_s / layers
                        + np.maximum(0.0, dp.per_microbatch_bwd_s - reduce_window))
        if stack.collective_fill_exposed:  # each per-layer collective's ring latency stays on the critical path
            zero_exposed = np.minimum(dp.per_microbatch_fwd_s + dp.per_microbatch_bwd_s,
                                      zero_exposed + dp.per_microbatch_fill_s)
    else:  # no prefetch: every ZeRO-3 gather and reduce-scatter waits for, and holds up, the compute
        zero_exposed = dp.per_microbatch_fwd_s + dp.per_microbatch_bwd_s
    # Memory-bound passes around the data-parallel collectives, every micro-batch, at HBM's streaming rate.
    grad_prep_bytes = 0.0
    if stack.unsharded_grad_prep:  # FSDP1's passes over each layer's unsharded gradient
        reduced = (plans.zero_stage[:, None] >= 2) & ((plans.dp * plans.cp)[:, None] > 1)
        grad_prep_bytes = np.where(reduced, unsharded_gradient_bytes(training, params.total), 0.0)
    if stack.per_tensor_collectives:  # DeepSpeed ZeRO-3's buffer fills and copies around its collectives
        sharded = (plans.zero_stage[:, None] >= 3) & ((plans.dp * plans.cp)[:, None] > 1)
        copies = memory_pass_bytes(dp.gather_plan, params.total, share, stack.zero3_gradient_all_reduce)
        grad_prep_bytes = grad_prep_bytes + np.where(sharded, copies, 0.0)
    grad_prep = grad_prep_bytes / (gpu.hbm_GBps * 1e9 * gpu.hbm_efficiency)
    zero_hidden = np.maximum(0.0, dp.per_microbatch_fwd_s + dp.per_microbatch_bwd_s - zero_exposed)
    # Hidden communication is not free: NCCL kernels hold SMs while the GEMMs run beside them.
    contention = options.overlap_sm_fraction * (tp_hidden + cp_hidden + zero_hidden + ep_hidden)

    # Activation offload copies each offloaded layer out during forward and back during backward, on
    # copy engines beside the compute: exposed is what the copies take beyond the compute.
    host_bytes_per_s = (gpu.host_link_GBps or options.pcie_GBps) * 1e9
    copy_s = memory.offloaded_bytes / host_bytes_per_s
    offload_exposed = np.maximum(0.0, copy_s - forward) + np.maximum(0.0, copy_s - (backward + recompute))

    zero_exposed = zero_exposed + grad_prep  # reported with the ZeRO-2/3 traffic it prepares (dp_comm)
    # Pipeline exchanges the stage waits for every micro-batch (blocking sends; schedules.py).
    p2p_s, p2p_bytes = pipeline_p2p(model, training, plans, pricer)
    exchanges = blocking_exchanges_per_microbatch(plans.schedule, plans.pp, stages.chunks if stages.chunks is not None
                                                  else plans.vpp, stack.pipeline_p2p_overlap,
                                                  stack.pipeline_p2p_batched)
    p2p_exposed = exchanges * p2p_s[:, None]
    # What a rank passes on in the fill and drain, where the bubble prices it: its micro-batch step's
    # exchanges, except under DeepSpeed's serial sends (one transfer each way a rank, cost_model.deepspeed_pipe).
    p2p_fill_drain = p2p_exposed
    if stack.pipeline_p2p_serial:
        serial = serial_transfers(model, training, plans, pricer)
        one_f_one_b = (np.asarray(plans.schedule) == ONE_F_ONE_B)[:, None]
        p2p_fill_drain = np.where(one_f_one_b, serial.fill_drain_s, p2p_exposed)
        p2p_exposed = np.where(one_f_one_b, serial.per_microbatch_s, p2p_exposed)
        p2p_bytes = np.where(one_f_one_b[:, 0], serial.bytes_per_microbatch / 2, p2p_bytes)
    # Without gradient_accumulation_fusion each micro-batch's backward adds its weight gradients into the
    # unsharded (ZeRO-0/1) buffer in a pass of its own, at HBM's streaming rate (compute.gradient_accumulation_bytes;
    # read for Megatron's and DeepSpeed's stacks: the FSDP stacks accumulate a reduce-scattered shard).
    accumulate = np.zeros_like(forward)
    if not training.fuses_gradient_accumulation and training.stack in MEGATRON_LINEAR_STACKS:
        accumulate = np.where(plans.zero_stage[:, None] <= 1,
                              gradient_accumulation_bytes(training, params.total, m[:, None]), 0.0
                              ) / (gpu.hbm_GBps * 1e9 * gpu.hbm_efficiency)
    t_mb = (forward + backward + accumulate + recompute + tp_exposed + cp_exposed + ep_exposed + zero_exposed
            + offload_exposed + contention + p2p_exposed)
    t_mb = np.where(stages.exists, t_mb, -np.inf)
    bottleneck = np.argmax(t_mb, axis=1)
    T = _pick(t_mb, bottleneck)

    v = stages.chunks.astype(float) if stages.chunks is not None else plans.vpp.astype(float)
    mf = m.astype(float)
    # The bottleneck rank waits while the first micro-batches' forwards fill the other p - 1 ranks and
    # the last backwards drain through them: the bubble is their passes, not the bottleneck's own (a
    # last rank made heavier by the LM head waits for lighter ranks).

    def others(per_stage_s):
        return other_ranks_mean_s(per_stage_s, stages.exists, plans.pp, _pick(per_stage_s, bottleneck))

    bubble = np.where(plans.pp > 1, bubble_s(plans.schedule, plans.pp, plans.vpp, others(t_mb - p2p_exposed + p2p_fill_drain),
                                             others(backward + recompute), others(weight_grad)),
                      0.0)
    pp_comm = fill_drain_p2p_transfers(plans.schedule, plans.pp, stack.pipeline_p2p_overlap) * p2p_s

    # ---- once per step: data-parallel sync and optimizer ----
    local_params = params.total
    bucket_share = np.minimum(1.0, options.grad_bucket_elements / np.maximum(local_params, 1.0))
    zero = plans.zero_stage[:, None]
    grad_exposed = np.where(training.overlap_grad_reduce,
                            np.maximum(dp.grad_sync_s * bucket_share, dp.grad_sync_s - backward), dp.grad_sync_s)
    # The last micro-batch's asynchronous ZeRO-2 reduce-scatter has no forward after it, only its backward.
    reduce_tail = np.where(beside_forward & stack.fsdp_prefetch,
                           np.maximum(0.0, dp.per_microbatch_bwd_s - compute_bwd)
                           - np.maximum(0.0, dp.per_microbatch_bwd_s - reduce_window), 0.0)
    gather_exposed = np.where(training.overlap_param_gather,
                              np.maximum(dp.param_gather_s * bucket_share, dp.param_gather_s - forward),
                              dp.param_gather_s)
    if stack.fsdp_prefetch and stack.collective_fill_exposed:  # ZeRO-2's per-layer weight gathers, once a step
        gather_exposed = np.minimum(dp.param_gather_s, gather_exposed + dp.per_step_fill_s)
    shard = np.where(zero >= 1, params.dense / (plans.dp * plans.cp)[:, None]
                     + params.expert / plans.expert_data_parallel[:, None], local_params)
    # read and write every state, read the gradient, write the bf16 weight: 30 bytes for fp32 Adam
    grad_buffer = np.where(zero >= 2, shard, local_params)
    on_gpu = optimizer_step_bytes(training, shard, grad_buffer) / (gpu.hbm_GBps * 1e9 * gpu.hbm_efficiency)
    offloaded = (shard * (training.grad_bytes + 2) / host_bytes_per_s
                 + shard / options.cpu_adam_params_per_s)
    if stack.per_tensor_optimizer:  # Composer's DecoupledAdamW: tensor by tensor, eager kernels
        replicas = plans.dp_replicate if plans.dp_replicate is not None else 1
        shard_ranks = np.where(plans.zero_stage >= 1, plans.dp * plans.cp // replicas, 1)
        first = np.zeros(stages.layers.shape, dtype=bool)
        first[:, 0] = True
        on_gpu = per_tensor_optimizer_step_s(model, shard_ranks, stages.layers, first, training.torch_1_13,
                                             options.host_kernel_issue_us * 1e-6,
                                             gpu.hbm_GBps * 1e9 * gpu.hbm_efficiency)
    optimizer_s = np.where(plans.optimizer_offload[:, None], offloaded, on_gpu)
    step_contention = options.overlap_sm_fraction * ((dp.grad_sync_s - grad_exposed) + (dp.param_gather_s - gather_exposed))
    tail = np.where(stages.exists, grad_exposed + gather_exposed + reduce_tail + step_contention + optimizer_s, -np.inf)
    tail_stage = np.argmax(tail, axis=1)
    dp_exposed = _pick(grad_exposed + gather_exposed + reduce_tail, tail_stage)
    optimizer_step = _pick(optimizer_s, tail_stage)
    step_contention = _pick(step_contention, tail_stage)

    pipeline = mf * T + bubble
    step = pipeline + pp_comm + dp_exposed + step_contention + optimizer_step

    def at_bottleneck(values):
        return _pick(values, bottleneck)

    parts = {
        "compute": mf * at_bottleneck(forward + backward + accumulate - host_waits),
        "host_issue": mf * at_bottleneck(host_waits),
        "recompute": mf * at_bottleneck(recompute),
        "tp_comm": mf * at_bottleneck(tp_exposed),
        "cp_comm": mf * at_bottleneck(cp_exposed),
        "ep_comm": mf * at_bottleneck(ep_exposed),
        "pp_bubble": bubble,
        "pp_comm": pp_comm + mf * at_bottleneck(p2p_exposed),
        "dp_comm": dp_exposed + mf * at_bottleneck(zero_exposed),  # ZeRO-2/3 traffic is data-parallel
        "offload": mf * at_bottleneck(offload_exposed),
        "overlap_contention": mf * at_bottleneck(contention) + step_contention,
        "optimizer": optimizer_step,
    }

    # ---- throughput, FLOPs, economics ----
    tokens_per_step = training.global_batch_size * training.seq_length
    tokens_per_s = tokens_per_step / step
    num_gpus = plans.num_gpus.astype(float)
    model_flops = model_flops_per_step(model, training, causal_attention_half=options.mfu_attention_causal)
    hardware_flops = model_flops + recompute_flops_per_step(
        model, training, plans, _pick(share, bottleneck), causal_attention_half=options.mfu_attention_causal)
    peak = gemm_precision_rate(gpu, training.precision)[1] * 1e12
    mfu = model_flops / (step * num_gpus * peak)
    hfu = hardware_flops / (step * num_gpus * peak)

    def sent_per_step(total, forward, again_dense, again_moe):
        """Bytes per step: every layer's forward and backward, plus the recomputed forwards."""
        sent = per_stage(*total) + share * per_stage(*forward)
        if again_dense.any() or again_moe.any():
            sent = sent + per_stage(forward[0] * again_dense, forward[1] * again_moe)
        return mf * at_bottleneck(sent)

    no_dense = np.zeros(len(plans))
    comm = {
        "tp": sent_per_step((dense_c.tp_bytes, moe_c.tp_bytes), (dense_c.tp_fwd_bytes, moe_c.tp_fwd_bytes),
                            again["dense_tp"], again["moe_tp"]),
        "cp": sent_per_step((dense_c.cp_bytes, moe_c.cp_bytes), (dense_c.cp_fwd_bytes, moe_c.cp_fwd_bytes),
                            again["cp"], again["cp"]),
        "ep": sent_per_step((no_dense, moe_c.ep_bytes), (no_dense, moe_c.ep_fwd_bytes), no_dense, again["ep"]),
        "pp": 2 * mf * v * p2p_bytes,
        "dp": at_bottleneck(dp.bytes_per_step),
    }

    if training.train_tokens:
        time_to_train = training.train_tokens / tokens_per_s
    else:
        time_to_train = np.full(len(plans), np.nan)
    gpu_hours = time_to_train * num_gpus / 3600
    price = cluster.economics.price_per_gpu_hour_usd
    cost = gpu_hours * price if price is not None else np.full(len(plans), np.nan)
    # energy from the power of each state of the step (computing, communicating, waiting), not nameplate
    power = plan_power(cluster, parts, step, num_gpus)
    energy = power.power_mw * 1000 * time_to_train / 3600

    return PlanMetrics(
        plans=plans, num_microbatches=m, memory_bytes=memory_bytes, memory_parts_bytes=memory_parts,
        peak_stage=peak_stage, step_time_s=step, step_time_parts_s=parts, bottleneck_stage=bottleneck,
        tokens_per_s=tokens_per_s, model_flops_per_step=model_flops, hardware_flops_per_step=hardware_flops,
        mfu=mfu, hfu=hfu, tflops_per_gpu=model_flops / (step * num_gpus) / 1e12, comm_bytes_per_step=comm,
        time_to_train_s=time_to_train, gpu_hours=gpu_hours, cost_usd=cost, energy_kwh=energy,
        gpu_power_w=power.gpu_w, power_mw=power.power_mw, peak_power_mw=power.peak_power_mw,
        extras={"memory_by_stage": memory, "stages": stages, "step_time_by_stage": t_mb},
        **_goodput_metrics(goodput(training, cluster, plans, params, stages, step, time_to_train, options)),
    )


def _goodput_metrics(result: Goodput) -> dict[str, np.ndarray]:
    """The PlanMetrics fields of :data:`GOODPUT_FIELDS` from a :class:`cost_model.goodput.Goodput`."""
    checkpoint = result.checkpoint
    return {"ettr": result.ettr, "mtbf_s": result.mtbf_s, "checkpoint_bytes_per_rank": checkpoint.bytes_per_rank,
            "checkpoint_bytes_job": checkpoint.job_bytes, "checkpoint_save_s": checkpoint.exposed_s,
            "checkpoint_interval_s": result.checkpoint_interval_s, "restart_s": result.restart_s,
            "lost_work_per_failure_s": result.lost_work_per_failure_s, "spare_gpus": result.spare_gpus,
            "effective_time_to_train_s": result.effective_time_to_train_s,
            "effective_gpu_hours": result.effective_gpu_hours, "effective_cost_usd": result.effective_cost_usd}
