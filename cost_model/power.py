"""Electrical power of a training step, from what the GPU does in each part of it.

A GPU does not draw its nameplate power all the time. Within a step it computes (GEMM-bound kernels
run at the power cap: Patel et al. 2024, "Characterizing Power Management Opportunities for LLMs in
the Cloud", ASPLOS), waits on exposed communication (near idle: Choukse et al. 2025, "Power
Stabilization for AI Training Datacenters", arXiv 2508.14318; the Llama 3 paper, section 3.3.4, saw
the power of 16K GPUs swing by tens of megawatts as they all waited on collectives), or idles in the
pipeline bubble. The step-time breakdown of :func:`cost_model.evaluate.evaluate` says how long each
lasts, so the GPU's average power over a step is

    P_gpu = TDP * (f_compute * t_compute + f_comm * t_comm + f_idle * t_idle) / t_step

with the per-state fractions of the GPU preset (``GPUSpec.power_*_fraction``, cited there), and the
parts of the step sorted into the states by :data:`STATE_OF_PART`.

The rest of the node (CPUs, memory, NICs, fans, its share of the switches) is the economics section's
all-in power per GPU less the GPU's TDP (``power_per_gpu_w - tdp_w``): that figure is the system's
maximum power over its GPUs (e.g. DGX H100 10.2 kW / 8), so the host share is held constant at its
maximum, a deliberate upper bound. The facility multiplies everything by the PUE.

Two cluster figures follow per plan:

* ``power_mw``: the average facility power of the job, N x (P_gpu + host) x PUE; energy is this times
  the time to train;
* ``peak_power_mw``: the power while every GPU computes at once, N x (f_compute x TDP + host) x PUE.
  A synchronous job's compute phases line up across the cluster, so this is what a site's supply must
  carry (Patel et al. 2024: training clusters must provision for peak); a site power cap compares with
  it (:mod:`scenarios.procurement`).

Simplification: every rank is priced as a rank of the bottleneck pipeline stage, whose breakdown the
step time reports. Ranks of lighter stages compute less and wait more, so the compute share (and the
energy) is an upper bound for them. Without ``tdp_w`` the GPU's states are unknown: the all-in
``power_per_gpu_w`` is taken as flat (nameplate x hours), and without either the power is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hardware.schema import ClusterSpec

STATE_OF_PART = {
    "compute": "compute",
    "recompute": "compute",
    "overlap_contention": "compute",  # compute slowed by NCCL kernels running beside it
    "optimizer": "compute",           # the HBM-bound Adam step: priced as compute (an upper bound)
    "tp_comm": "comm",
    "cp_comm": "comm",
    "ep_comm": "comm",
    "pp_comm": "comm",
    "dp_comm": "comm",
    "offload": "comm",                # waiting on copy engines: links busy, SMs idle
    "pp_bubble": "idle",
    "host_issue": "idle",             # waiting for the CPU to issue kernels
}
"""Which power state each part of the step-time breakdown (``cost_model.evaluate.TIME_PARTS``) runs in."""

STATES = ("compute", "comm", "idle")


@dataclass
class PlanPower:
    """Power of N plans; every array has length N."""

    gpu_w: np.ndarray
    """Average board power of one GPU over a step, in watts."""
    host_w: float
    """The rest of the node per GPU (all-in power less TDP), in watts; constant."""
    power_mw: np.ndarray
    """Average facility power of the whole job (GPUs + hosts, x PUE), in megawatts."""
    peak_power_mw: np.ndarray
    """Facility power while every GPU computes at once, in megawatts."""


def host_power_w(cluster: ClusterSpec) -> float:
    """The rest of the node per GPU: the all-in power per GPU less the GPU's TDP (0 when either is
    unknown: the GPU's own power is then all there is)."""
    economics, tdp = cluster.economics, cluster.gpu.tdp_w
    if economics.power_per_gpu_w is None or tdp is None:
        return 0.0
    return max(0.0, economics.power_per_gpu_w - tdp)


def peak_power_per_gpu_w(cluster: ClusterSpec) -> float:
    """Facility power per GPU while every GPU computes: (f_compute x TDP + host) x PUE; without a TDP
    the flat all-in figure x PUE (NaN when neither is known)."""
    gpu, economics = cluster.gpu, cluster.economics
    if gpu.tdp_w is None:
        flat = economics.power_per_gpu_w if economics.power_per_gpu_w is not None else float("nan")
        return flat * economics.pue
    return (gpu.tdp_w * gpu.power_compute_fraction + host_power_w(cluster)) * economics.pue


def idle_power_per_gpu_w(cluster: ClusterSpec) -> float:
    """Facility power of a GPU that waits (a hot spare, powered and ready): (f_idle x TDP + host) x PUE;
    without a TDP the flat all-in figure x PUE."""
    gpu, economics = cluster.gpu, cluster.economics
    if gpu.tdp_w is None:
        return peak_power_per_gpu_w(cluster)
    return (gpu.tdp_w * gpu.power_idle_fraction + host_power_w(cluster)) * economics.pue


def cluster_peak_power_mw(cluster: ClusterSpec) -> float:
    """What the whole cluster draws while a job on all its GPUs computes: what a site must supply."""
    return cluster.num_gpus * peak_power_per_gpu_w(cluster) / 1e6


def state_seconds(parts_s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Seconds per step in each power state, from the step-time breakdown."""
    unknown = set(parts_s) - set(STATE_OF_PART)
    if unknown:  # a new part of the step must be given a state, not silently dropped from the energy
        raise KeyError(f"step-time parts without a power state: {sorted(unknown)}; add them to STATE_OF_PART")
    seconds = {state: 0.0 for state in STATES}
    for part, values in parts_s.items():
        seconds[STATE_OF_PART[part]] = seconds[STATE_OF_PART[part]] + values
    return seconds


def plan_power(cluster: ClusterSpec, parts_s: dict[str, np.ndarray], step_s: np.ndarray,
               num_gpus: np.ndarray) -> PlanPower:
    """Average and peak power of N plans from their step-time breakdowns (module docstring)."""
    gpu, economics = cluster.gpu, cluster.economics
    step_s = np.asarray(step_s, dtype=float)
    num_gpus = np.asarray(num_gpus, dtype=float)
    if gpu.tdp_w is None:
        flat = economics.power_per_gpu_w if economics.power_per_gpu_w is not None else np.nan
        gpu_w = np.full(len(step_s), float(flat))
        cluster_w = num_gpus * gpu_w * economics.pue
        return PlanPower(gpu_w=gpu_w, host_w=0.0, power_mw=cluster_w / 1e6, peak_power_mw=cluster_w / 1e6)
    seconds = state_seconds(parts_s)
    fraction = {"compute": gpu.power_compute_fraction, "comm": gpu.power_comm_fraction,
                "idle": gpu.power_idle_fraction}
    energy_j = sum(gpu.tdp_w * fraction[state] * seconds[state] for state in STATES)
    gpu_w = energy_j / step_s
    host_w = host_power_w(cluster)
    power_mw = num_gpus * (gpu_w + host_w) * economics.pue / 1e6
    peak_mw = num_gpus * peak_power_per_gpu_w(cluster) / 1e6
    return PlanPower(gpu_w=gpu_w, host_w=host_w, power_mw=power_mw, peak_power_mw=peak_mw)
