"""Goodput: the training time that failures, checkpoints and restarts leave, per plan (vectorised).

A plan's nominal time-to-train assumes every step runs. A real job fails every few hours at 16K GPUs
(Llama 3 405B: 419 unexpected interruptions in 54 days, Dubey et al. 2024, section 3.3.4), loses the
work since its last checkpoint, waits for a restart and pays for every checkpoint it writes. This
module prices that for every plan, in four steps:

1. **Checkpoint bytes per rank** (:func:`checkpoint_bytes`): the model states a rank owns, from the
   memory accounting (:func:`cost_model.memory.stage_parameters`, :func:`weight_bytes_per_param`,
   :attr:`TrainingSpec.optimizer_state_bytes`): weights plus fp32 master and moments, never gradients,
   plus its RNG and data-loader state. Parameters are split by TP, PP, EP as the stage holds them;
   the replicas of a shard (dp x cp ranks for dense parameters, the expert-data-parallel ranks for
   experts) each write 1/replicas of it, which is Megatron's fully parallel save
   (``--ckpt-fully-parallel-save``, on by default in Megatron-Core's ``torch_dist`` format) and torch
   DCP's deduplicated save plan: whatever the ZeRO stage, replicated and sharded states both end up
   spread over the data-parallel ranks. The bottleneck rank is that of the pipeline stage holding the
   most; the job's bytes are the sum over ranks.
2. **Checkpoint cost** (:func:`checkpoint_cost`): a node writes its ranks' bytes at
   ``min(storage.node_write_GBps, storage.aggregate_write_GBps / nodes)`` (all nodes write at once and
   share the file system), and reads them back at the read bandwidths. What training waits for
   (``delta``) depends on ``TrainingSpec.checkpoint_mode``: ``sync`` waits for the write; ``async``
   (Megatron ``--async-save``, torch DCP ``async_save``) only for the copy to host memory over the
   GPU's host link, while the write runs behind training; ``in_memory`` (Megatron local checkpoints,
   nvidia-resiliency-ext; Gemini, Wang et al. SOSP 2023) copies to host and then to a peer node over
   the scale-out NICs, and a restart reads it back from the peer. A background write (or peer copy)
   must finish before the next checkpoint starts, and until it has, the last durable checkpoint is the
   previous one: its duration (``lag``) is added to the work a failure loses.
3. **Failures and restarts**: a job on G GPUs in N nodes fails at
   ``lambda = G x (gpu + hbm rates) + N x (network + host rates)`` per hour
   (:meth:`hardware.schema.ReliabilitySpec.job_failures_per_hour`), so its mean time between
   failures is ``M = 1 / lambda`` (independent exponential failures; Kokolis et al. 2024 observe MTTF
   falling as 1/GPUs). A restart takes ``R = reschedule + load + warm-up``; a hot spare that is free
   removes the reschedule wait (below).
4. **Interval and ETTR** (:func:`daly_interval`, :func:`effective_training_time_ratio`): the
   checkpoint interval (training seconds between checkpoints) is Daly's (2006, eq. 37) higher-order
   optimum ``tau = sqrt(2 delta M) [1 + sqrt(delta / 2M) / 3 + (delta / 2M) / 9] - delta`` for
   ``delta < 2M`` (else ``M``), whose first term is Young's (1974) ``sqrt(2 delta M)``; it is rounded
   up to whole steps (checkpoints are taken between steps) and to at least ``lag``. The expected
   wall time per unit of work is Daly's (2006, eq. 12) complete exponential model,
   ``T_wall / T_work = M e^{R/M} (e^{(tau + delta)/M} - 1) / tau``, whose inverse is the effective
   training time ratio (ETTR). Effective time-to-train = nominal / ETTR; effective GPU-hours add the
   spares' GPUs.

Hot spares (``TrainingSpec.hot_spare_nodes_per``): one spare per K job nodes, ``S = ceil(N / K)``. A
failed node is out for ``reliability.node_repair_h``; by Little's law the nodes in repair at any moment
are Poisson with mean ``a = lambda x node_repair_h`` (an M/G/infinity queue), so a restart finds a
spare free with probability ``P(Poisson(a) < S)`` and only otherwise waits ``reschedule_s``. With
several values each plan gets the one with the fewest effective GPU-hours, spares included.

Not modelled: planned maintenance (Llama 3's 47 planned interruptions), failures during a restart
beyond Daly's ``e^{R/M}``, correlated failures that take out a checkpoint's in-memory peer copy, and
the occasional persistent checkpoint an in-memory scheme still writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hardware.schema import ClusterSpec

from .memory import StageParameters, weight_bytes_per_param
from .options import CostOptions
from .plan import PlanArrays
from .stages import StageLayout
from .training_spec import TrainingSpec

RNG_AND_DATA_STATE_BYTES = 16_384
"""Per-rank state beside the model states in a checkpoint, bytes: the Python, NumPy and torch CPU RNG
states (Mersenne Twister: 625 32-bit words each, about 2.5 KB; ``torch.get_rng_state()`` is a 5,056-byte
tensor), the CUDA RNG and Megatron's model-parallel RNG tracker (Philox seed and offset per state) and the
data sampler's position: Megatron's ``rng_state`` entries and ``consumed_train_samples``. Rounded up to
16 KiB; it never matters next to the model states."""


def daly_interval(delta_s: np.ndarray, mtbf_s: np.ndarray) -> np.ndarray:
    """Daly's (2006, eq. 37) optimal compute time between checkpoints for a checkpoint costing
    ``delta_s`` and a mean time between failures ``mtbf_s``: ``sqrt(2 delta M) (1 + sqrt(delta/2M)/3 +
    (delta/2M)/9) - delta`` while ``delta < 2M``, else ``M``. Its first term is Young's (1974)
    ``sqrt(2 delta M)``; the correction matters once ``delta`` is not small against ``M``."""
    delta = np.asarray(delta_s, dtype=float)
    mtbf = np.asarray(mtbf_s, dtype=float)
    x = delta / (2.0 * mtbf)
    tau = np.sqrt(2.0 * delta * mtbf) * (1.0 + np.sqrt(x) / 3.0 + x / 9.0) - delta
    return np.where(delta < 2.0 * mtbf, tau, mtbf)


def effective_training_time_ratio(interval_s: np.ndarray, delta_s: np.ndarray, restart_s: np.ndarray,
                                  mtbf_s: np.ndarray) -> np.ndarray:
    """Useful work / wall time for checkpoints every ``interval_s`` of work that cost ``delta_s``, a
    restart of ``restart_s`` and exponential failures of mean ``mtbf_s``: the inverse of Daly's (2006,
    eq. 12) expected wall time per unit of work, ``M e^{R/M} (e^{(tau + delta)/M} - 1) / tau``."""
    tau = np.asarray(interval_s, dtype=float)
    mtbf = np.asarray(mtbf_s, dtype=float)
    wall = mtbf * np.exp(np.asarray(restart_s, dtype=float) / mtbf) * np.expm1((tau + delta_s) / mtbf)
    return tau / wall


def expected_lost_work_s(interval_s: np.ndarray, delta_s: np.ndarray, mtbf_s: np.ndarray) -> np.ndarray:
    """Expected seconds of a segment (``interval + delta``) done before the failure that ends it, for an
    exponential failure known to fall inside it: ``M - L / (e^{L/M} - 1)``, about ``L / 2`` for short
    segments. That is the work a failure throws away (without the restart itself)."""
    length = np.asarray(interval_s, dtype=float) + delta_s
    mtbf = np.asarray(mtbf_s, dtype=float)
    return mtbf - length / np.expm1(length / mtbf)


def poisson_below(count: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """P(X < count) for X ~ Poisson(mean), element-wise (count whole, >= 0). Summed term by term up to
    where the tail is below 1e-12 (mean + 12 sqrt(mean) + 30 terms), past which it is 1."""
    count = np.asarray(count, dtype=float)
    mean = np.asarray(mean, dtype=float)
    cap = int(np.ceil(np.max(mean, initial=0.0) + 12.0 * np.sqrt(np.max(mean, initial=0.0)) + 30.0))
    terms = min(int(np.max(count, initial=0.0)), cap)
    term = np.exp(-mean)
    total = np.zeros_like(mean)
    for i in range(terms):
        total = total + np.where(i < count, term, 0.0)
        term = term * mean / (i + 1)
    return np.where(count > cap, 1.0, total)


@dataclass
class CheckpointCost:
    """What a checkpoint of each plan costs (arrays over plans)."""

    bytes_per_rank: np.ndarray
    """Bytes the bottleneck rank writes (the stage holding the most)."""
    job_bytes: np.ndarray
    """Bytes all ranks write together."""
    exposed_s: np.ndarray
    """Seconds training stops per checkpoint (``delta``)."""
    lag_s: np.ndarray
    """Seconds after the stop until the checkpoint is durable (background write or peer copy); 0 for sync."""
    load_s: np.ndarray
    """Seconds a restart reads the checkpoint back."""


def checkpoint_bytes(training: TrainingSpec, plans: PlanArrays, params: StageParameters,
                     stages: StageLayout) -> tuple[np.ndarray, np.ndarray]:
    """(bytes of the bottleneck rank, bytes of the whole job) per plan: weights at their stored width and
    the optimizer states (fp32 master and moments) of the parameters a rank holds
    (:func:`cost_model.memory.stage_parameters`), spread over their data-parallel replicas (module
    docstring, step 1), plus :data:`RNG_AND_DATA_STATE_BYTES`."""
    weight_bytes, _ = weight_bytes_per_param(training, plans)
    per_param = weight_bytes[:, None] + float(training.optimizer_state_bytes)
    dense_replicas = (plans.dp * plans.cp)[:, None].astype(float)
    expert_replicas = plans.expert_data_parallel[:, None].astype(float)
    per_rank = per_param * (params.dense / dense_replicas + params.expert / expert_replicas) + RNG_AND_DATA_STATE_BYTES
    per_rank = np.where(stages.exists, per_rank, 0.0)
    pp = plans.pp[:, None]
    # pipeline ranks each stage kind stands for: the first, the pp - 2 middle ones, the last
    ranks = np.where(stages.exists, np.concatenate([np.ones_like(pp), np.maximum(pp - 2, 0), np.ones_like(pp)],
                                                   axis=1), 0)
    ranks_per_stage = (plans.num_gpus // plans.pp).astype(float)
    job = (per_rank * ranks).sum(axis=1) * ranks_per_stage
    return per_rank.max(axis=1), job


def checkpoint_cost(training: TrainingSpec, cluster: ClusterSpec, plans: PlanArrays, params: StageParameters,
                    stages: StageLayout, options: CostOptions) -> CheckpointCost:
    """Bytes, exposed save time, durability lag and load time of each plan's checkpoint (module
    docstring, step 2)."""
    per_rank, job = checkpoint_bytes(training, plans, params, stages)
    topology, storage = cluster.topology, cluster.storage
    per_node = topology.gpus_per_node
    nodes = np.ceil(plans.num_gpus / per_node)
    node_bytes = per_rank * np.minimum(per_node, plans.num_gpus)  # a node's ranks all write at once
    write_Bps = np.minimum(storage.node_write_GBps, storage.aggregate_write_GBps / nodes) * 1e9
    read_Bps = np.minimum(storage.node_read_GBps, storage.aggregate_read_GBps / nodes) * 1e9
    write_s, read_s = node_bytes / write_Bps, node_bytes / read_Bps
    to_host_s = per_rank / ((cluster.gpu.host_link_GBps or options.pcie_GBps) * 1e9)
    to_peer_s = node_bytes / (topology.nics_per_node * topology.nic_GBps * 1e9)
    mode = training.checkpoint_mode
    if mode == "sync":
        exposed, lag, load = write_s, np.zeros_like(write_s), read_s
    elif mode == "async":
        exposed, lag, load = to_host_s, write_s, read_s
    else:  # in_memory: host copy, then a peer node's memory over the network; read back from the peer
        exposed, lag, load = to_host_s, to_peer_s, to_peer_s
    return CheckpointCost(bytes_per_rank=per_rank, job_bytes=job, exposed_s=exposed, lag_s=lag, load_s=load)


@dataclass
class Goodput:
    """Goodput of each plan (arrays over plans); see the module docstring."""

    checkpoint: CheckpointCost
    mtbf_s: np.ndarray
    """Mean time between failures of the job."""
    checkpoint_interval_s: np.ndarray
    """Training seconds between checkpoints (whole steps)."""
    restart_s: np.ndarray
    """Expected seconds from a failure to training again: reschedule (unless a spare is free), load, warm-up."""
    lost_work_per_failure_s: np.ndarray
    """Expected work a failure throws away: the part of the segment done, plus the durability lag."""
    ettr: np.ndarray
    """Effective training time ratio: useful work / wall time."""
    spare_gpus: np.ndarray
    """GPUs of the hot-spare nodes held for the job."""
    hot_spare_nodes_per: np.ndarray
    """The spare setting chosen: one spare per this many job nodes (0 = none)."""
    effective_time_to_train_s: np.ndarray
    effective_gpu_hours: np.ndarray
    """GPU-hours of the job's GPUs and its spares over the effective time."""
    effective_cost_usd: np.ndarray
    expected_failures: np.ndarray
    """Failures expected over the effective time."""


def goodput(training: TrainingSpec, cluster: ClusterSpec, plans: PlanArrays, params: StageParameters,
            stages: StageLayout, step_time_s: np.ndarray, time_to_train_s: np.ndarray,
            options: CostOptions) -> Goodput:
    """Checkpoint interval, ETTR and effective time, GPU-hours and cost of every plan (module docstring)."""
    checkpoint = checkpoint_cost(training, cluster, plans, params, stages, options)
    reliability = cluster.reliability
    per_node = cluster.topology.gpus_per_node
    gpus = plans.num_gpus.astype(float)
    nodes = np.ceil(gpus / per_node)
    failures_per_h = reliability.job_failures_per_hour(gpus, nodes)
    mtbf = np.where(failures_per_h > 0, 3600.0 / np.maximum(failures_per_h, 1e-300), np.inf)
    delta = checkpoint.exposed_s
    if training.checkpoint_interval_s is not None:
        tau = np.full(len(plans), float(training.checkpoint_interval_s))
    else:
        tau = np.where(np.isfinite(mtbf), daly_interval(delta, np.where(np.isfinite(mtbf), mtbf, 1.0)), np.inf)
    step = np.maximum(step_time_s, 1e-12)
    tau = np.maximum(tau, checkpoint.lag_s)
    tau = np.where(np.isfinite(tau), np.maximum(np.ceil(tau / step - 1e-9), 1.0) * step, tau)
    finite = np.isfinite(mtbf)
    safe_mtbf = np.where(finite, mtbf, 1.0)
    lost = np.where(finite, expected_lost_work_s(np.where(finite, tau, 1.0), delta, safe_mtbf), 0.0) + checkpoint.lag_s
    price = cluster.economics.price_per_gpu_hour_usd
    in_repair = failures_per_h * reliability.node_repair_h  # Little's law: mean nodes out for repair

    best = None
    for per in training.hot_spare_nodes_per:
        spares = np.ceil(nodes / per) if per > 0 else np.zeros_like(nodes)
        covered = poisson_below(spares, in_repair) if per > 0 else np.zeros_like(nodes)
        restart = reliability.restart_warmup_s + checkpoint.load_s + (1.0 - covered) * reliability.reschedule_s
        ettr = np.where(finite, effective_training_time_ratio(np.where(finite, tau, 1.0), delta,
                                                              restart + checkpoint.lag_s, safe_mtbf),
                        # no failures: only the checkpoints' stops cost time
                        np.where(np.isfinite(tau), tau / (tau + delta), 1.0))
        effective = time_to_train_s / ettr
        gpu_hours = effective * (gpus + spares * per_node) / 3600.0
        choice = dict(restart=restart, ettr=ettr, effective=effective, gpu_hours=gpu_hours, spares=spares * per_node,
                      per=np.full(len(plans), per))
        if best is None:
            best = choice
        else:  # the fewest effective GPU-hours; without a token budget the highest ETTR per GPU held
            score_new = np.where(np.isnan(gpu_hours), -ettr * gpus / (gpus + choice["spares"]), gpu_hours)
            old = best
            score_old = np.where(np.isnan(old["gpu_hours"]), -old["ettr"] * gpus / (gpus + old["spares"]),
                                 old["gpu_hours"])
            better = score_new < score_old
            best = {key: np.where(better, choice[key], old[key]) for key in old}
    cost = best["gpu_hours"] * price if price is not None else np.full(len(plans), np.nan)
    return Goodput(checkpoint=checkpoint, mtbf_s=mtbf, checkpoint_interval_s=tau, restart_s=best["restart"],
                   lost_work_per_failure_s=lost, ettr=best["ettr"], spare_gpus=best["spares"],
                   hot_spare_nodes_per=best["per"], effective_time_to_train_s=best["effective"],
                   effective_gpu_hours=best["gpu_hours"], effective_cost_usd=cost,
                   expected_failures=best["effective"] / mtbf)
