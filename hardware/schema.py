"""Validated descriptions of a GPU, a cluster's network and its economics.

Units are in every field name: ``_gib`` = 2**30 bytes, ``_GBps`` = 1e9 bytes/s, ``_gbps`` = 1e9 bits/s,
``_us`` microseconds, ``_w`` watts, ``_usd`` US dollars. Bandwidths are *per direction* (half of the
"bidirectional" headline that datasheets print for NVLink and xGMI).

All models are frozen pydantic v2 models that refuse unknown fields, so a typo in a cluster file is an
error and not a silently ignored line. Numbers must be finite, must be numbers (``num_nodes: true`` is
refused, not read as one node) and must lie within the physical bounds of :mod:`hardware.bounds`;
switches must be ``true`` or ``false`` (not the string ``"false"``, which pydantic's lax mode would
read). :func:`input_error_from_validation` turns pydantic's multi-line ``ValidationError`` into the
one-line :class:`~hardware.errors.InputError` the command line prints; :func:`warn_implausible` warns
about values no real part has (a Gb/s figure in a GB/s field).
"""

from __future__ import annotations

import copy
import math
import types
import typing
import warnings
from typing import Any, ClassVar, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .bounds import MAX_GPUS, OutOfBounds, check_bound, fmt, plausibility_warning, shown
from .errors import InputError, did_you_mean

# Fraction-of-peak fields: a kernel cannot beat its hardware peak, and 0 would mean "never finishes".
_FRACTION = dict(gt=0.0, le=1.0)


def _scalar_kind(annotation: Any) -> type | None:
    """bool, int or float for a field of that type (optional or not); None for anything else."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    kinds = [option for option in options if option in (bool, int, float)]
    return kinds[0] if len(kinds) == 1 else None


class _Frozen(BaseModel):
    """Base of every section: unknown fields refused, values frozen, scalars strict and bounded.

    ``section`` is the section's name in a cluster file; its fields' bounds are ``section.field`` in
    :data:`hardware.bounds.BOUNDS`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    section: ClassVar[str] = ""

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        """Switches only from true/false, numbers never from true/false, and never NaN or infinity."""
        kind = _scalar_kind(cls.model_fields[info.field_name].annotation)
        if kind is bool and not isinstance(value, bool):
            raise OutOfBounds(info.field_name, f"must be true or false, got {shown(value)}",
                              f"write {info.field_name}: true or {info.field_name}: false, without quotes")
        if kind in (int, float) and isinstance(value, bool):
            raise OutOfBounds(info.field_name, f"must be a number, got {shown(value)}", "write a number, not true/false")
        if kind in (int, float) and isinstance(value, float) and not math.isfinite(value):
            raise OutOfBounds(info.field_name, f"must be a finite number, got {value!r}", "give a finite value")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _within_bounds(cls, value: Any, info: ValidationInfo) -> Any:
        if cls.section and isinstance(value, (int, float)) and not isinstance(value, bool):
            check_bound(f"{cls.section}.{info.field_name}", value, name=info.field_name)
        return value


class GPUSpec(_Frozen):
    """One accelerator: memory, peak compute and the fractions of peak that real kernels reach."""

    section: ClassVar[str] = "gpu"

    name: str = Field(description="Human-readable GPU name, e.g. 'H100 SXM5 80GB'.")
    memory_gib: float = Field(gt=0, description=(
        "HBM a framework can actually allocate, in GiB (2**30 bytes): the capacity the driver reports "
        "(nvidia-smi / rocm-smi) minus the CUDA/HIP context."))
    hbm_GBps: float = Field(gt=0, description="Peak HBM bandwidth in GB/s (1e9 bytes/s), from the datasheet.")
    peak_tflops_bf16: float = Field(gt=0, description=(
        "Peak DENSE BF16 tensor throughput in TFLOP/s (never the 2:4-sparsity figure, which is 2x)."))
    peak_tflops_fp8: float | None = Field(default=None, gt=0, description=(
        "Peak DENSE FP8 tensor throughput in TFLOP/s; None where the GPU has no FP8 tensor cores."))
    peak_tflops_fp4: float | None = Field(default=None, gt=0, description=(
        "Peak DENSE FP4 (NVFP4) tensor throughput in TFLOP/s; None where the GPU has no FP4 tensor cores "
        "(everything before Blackwell). Training with precision fp4 needs it."))
    gemm_efficiency: float = Field(default=0.8, **_FRACTION, description=(
        "Achievable fraction of peak_tflops_bf16 for BF16 GEMMs as training runs them. Large-GEMM "
        "microbenchmarks reach about 0.8 on H100 SXM (~790 of 989 TFLOP/s); calibrated on published "
        "training runs it is lower (0.64 on H100: `plan-search calibrate`)."))
    gemm_efficiency_fp8: float | None = Field(default=None, **_FRACTION, description=(
        "Achievable fraction of peak_tflops_fp8 for FP8 GEMMs as training runs them (Transformer Engine, "
        "scaling and casts included); None = gemm_efficiency. Calibrated from published runs where set."))
    gemm_efficiency_fp4: float | None = Field(default=None, **_FRACTION, description=(
        "Achievable fraction of peak_tflops_fp4 for NVFP4 GEMMs as training runs them (Transformer Engine); "
        "None = not calibrated, priced at gemm_efficiency_fp8 (or gemm_efficiency). Written by "
        "`plan-search calibrate`: gemm.bf16 x family x gemm.fp4_vs_bf16."))
    attention_efficiency: float = Field(default=0.5, **_FRACTION, description=(
        "Achievable fraction of peak for flash-attention kernels, forward+backward average "
        "(FlashAttention-2, Dao 2023; FlashAttention-3, Shah et al. 2024)."))
    hbm_efficiency: float = Field(default=0.85, **_FRACTION, description=(
        "Achievable fraction of hbm_GBps for streaming element-wise kernels (typically 0.8-0.9)."))
    tdp_w: float | None = Field(default=None, gt=0, description="Board power limit (TDP) in watts.")
    power_compute_fraction: float = Field(default=1.0, **_FRACTION, description=(
        "Board power while computing, as a fraction of tdp_w: GEMM-bound training kernels run at the power "
        "cap (Patel et al. 2024, 'Characterizing Power Management Opportunities for LLMs in the Cloud': "
        "training iterations reach or exceed TDP). What cost_model.power prices compute, recompute and "
        "the optimizer step at."))
    power_comm_fraction: float = Field(default=0.3, **_FRACTION, description=(
        "Board power while the GPU only communicates (exposed TP/CP/EP/PP/DP traffic, offload copies), as a "
        "fraction of tdp_w: near idle (Choukse et al. 2025, 'Power Stabilization for AI Training "
        "Datacenters', arXiv 2508.14318: communication phases draw near idle power) plus the NCCL kernels' "
        "few SMs and the HBM/link traffic; at least power_idle_fraction."))
    power_idle_fraction: float = Field(default=0.2, **_FRACTION, description=(
        "Board power while the GPU waits (pipeline bubbles, kernel-issue gaps), clocks up and memory "
        "allocated, as a fraction of tdp_w (H100 SXM: 140-145 W of 700 W at 0% utilisation in P0 with 71 GiB "
        "allocated, nvidia-smi in wilicc/gpu-burn#114); at most power_comm_fraction."))
    host_link_GBps: float | None = Field(default=None, gt=0, description=(
        "Achievable copy bandwidth between this GPU and host memory, per direction, in GB/s (1e9 bytes/s): "
        "what activation and optimizer offload move data at. None = a PCIe Gen5 x16 link "
        "(CostOptions.pcie_GBps)."))
    num_sms: int | None = Field(default=None, gt=0, description=(
        "Streaming multiprocessors (compute units on AMD): GEMM output tiles are scheduled in waves of "
        "this many, so a GEMM with few tiles leaves SMs idle (wave quantization). None = ignore."))

    @model_validator(mode="after")
    def _power_states_ordered(self) -> "GPUSpec":
        """A waiting GPU draws no more than a communicating one, and that no more than a computing one:
        cost_model.power relies on it (more bubble time never raises the average power)."""
        if not self.power_idle_fraction <= self.power_comm_fraction <= self.power_compute_fraction:
            raise OutOfBounds("power_idle_fraction", (
                f"power fractions must satisfy idle <= comm <= compute, got {self.power_idle_fraction:g}, "
                f"{self.power_comm_fraction:g}, {self.power_compute_fraction:g}"),
                "order power_idle_fraction, power_comm_fraction, power_compute_fraction from low to high")
        return self


class CollectiveEfficiency(_Frozen):
    """Fraction of a link's per-direction bandwidth that each collective achieves for large messages.

    Measured as nccl-tests bus bandwidth / line rate. Protocol overhead (headers, flags, flow control)
    costs about 20% on NVLink (370 of 450 GB/s on H100, NVIDIA/nccl-tests#212) and about 5% on
    InfiniBand NDR (46-48 of 50 GB/s, NVIDIA/nccl-tests#290). All-to-all is far lower in practice:
    many small point-to-point transfers, no pipelining, and congestion in the fabric.
    """

    all_reduce: float = Field(default=0.8, **_FRACTION, description="Ring all-reduce busbw / line rate.")
    all_gather: float = Field(default=0.8, **_FRACTION, description="Ring all-gather busbw / line rate.")
    reduce_scatter: float = Field(default=0.8, **_FRACTION, description="Ring reduce-scatter busbw / line rate.")
    all_to_all: float = Field(default=0.5, **_FRACTION, description="All-to-all busbw / line rate.")
    send_recv: float = Field(default=0.8, **_FRACTION, description="Point-to-point send/recv bandwidth / line rate.")


class TopologySpec(_Frozen):
    """How GPUs are wired: nodes, the scale-up (NVLink / xGMI) domain and the scale-out network.

    The scale-up domain must be a whole number of nodes (HGX/DGX: domain 8 = one 8-GPU node; GB200
    NVL72: domain 72 = 18 trays of 4 GPUs) or a whole fraction of one node (e.g. NVLink-bridged pairs
    of PCIe cards: domain 2 in an 8-GPU node). Either way every GPU sits in exactly one domain and
    every domain has the same size, which is what the placement arithmetic needs.
    """

    section: ClassVar[str] = "topology"

    gpus_per_node: int = Field(gt=0, description="GPUs per node (per server, or per compute tray on NVL72).")
    num_nodes: int = Field(gt=0, description="Number of nodes; a whole number.")
    scaleup_domain_gpus: int = Field(gt=0, description=(
        "GPUs reachable over the scale-up fabric without the NIC: 8 on HGX/DGX, 72 on GB200 NVL72."))
    scaleup_kind: Literal["switch", "mesh"] = Field(default="switch", description=(
        "'switch': every GPU reaches the NVSwitch at scaleup_GBps. 'mesh' (MI300X xGMI): one direct "
        "link per peer, so a group of g ranks inside a domain uses g-1 links."))
    scaleup_GBps: float = Field(gt=0, description=(
        "Scale-up bandwidth in GB/s per direction: per GPU for a switch, per link for a mesh."))
    nics_per_node: int = Field(gt=0, description="Compute (east-west) NICs per node; storage NICs excluded.")
    nic_GBps: float = Field(gt=0, description=(
        "Per-NIC bandwidth per direction in GB/s (1e9 bytes/s). Input may instead give nic_gbps in "
        "gigabits/s (1e9 bits/s), converted by /8; exactly one of the two."))
    scaleup_latency_us: float = Field(default=2.0, gt=0, description=(
        "Per-step latency of a collective over the scale-up fabric, microseconds."))
    scaleout_latency_us: float = Field(default=5.0, gt=0, description=(
        "Per-step latency of a collective over the network, microseconds."))
    scaleout_oversubscription: float = Field(default=1.0, ge=1.0, description=(
        "Network oversubscription ratio (1 = non-blocking fat tree; 2 = half bisection bandwidth)."))
    nvls: bool = Field(default=False, description=(
        "NVLink SHARP: the NVSwitch reduces all-reduce data in-network (H100/H200/B200/GB200)."))
    scaleup_efficiency: CollectiveEfficiency = Field(
        default_factory=CollectiveEfficiency, description="Collective efficiencies on the scale-up fabric.")
    scaleout_efficiency: CollectiveEfficiency = Field(
        default_factory=CollectiveEfficiency, description="Collective efficiencies on the network.")
    nvls_efficiency: float = Field(default=0.53, **_FRACTION, description=(
        "NVLink SHARP all-reduce bus bandwidth / (2 x scaleup_GBps) for large messages: the switch "
        "does the reduction, so busbw can exceed the link rate (H100: 480 / (2 x 450) = 0.53, "
        "NVIDIA/nccl-tests#212; H800: 215 / (2 x 200) = 0.54, NVIDIA/nccl#1374)."))

    @model_validator(mode="before")
    @classmethod
    def _nic_units(cls, data: Any) -> Any:
        """Accept nic_gbps (gigabits/s) as input, store nic_GBps (gigabytes/s)."""
        if not isinstance(data, dict):
            return data
        has_bytes, has_bits = "nic_GBps" in data, "nic_gbps" in data
        if has_bytes and has_bits:
            raise ValueError("give nic_GBps (gigabytes/s) or nic_gbps (gigabits/s), not both")
        if has_bits:
            data = dict(data)
            bits = data.pop("nic_gbps")
            try:
                number = float(bits) if not isinstance(bits, bool) else math.nan
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                raise OutOfBounds("nic_gbps", f"must be a finite number of gigabits/s, got {shown(bits)}",
                                  "write the line rate, e.g. nic_gbps: 400")
            check_bound("topology.nic_gbps", number, name="nic_gbps")
            data["nic_GBps"] = number / 8.0
        return data

    @model_validator(mode="after")
    def _consistent_domain(self) -> "TopologySpec":
        if self.num_gpus > MAX_GPUS:
            raise OutOfBounds("num_nodes", f"gives {fmt(self.num_gpus)} GPUs ({self.gpus_per_node} per node x "
                              f"{fmt(self.num_nodes)} nodes), past the bound of {fmt(MAX_GPUS)} GPUs that plan-search "
                              "accepts (the largest clusters have about 10^5)", "use fewer nodes")
        domain, node = self.scaleup_domain_gpus, self.gpus_per_node
        if domain % node and node % domain:
            raise ValueError(
                f"scaleup_domain_gpus ({domain}) must be a multiple of gpus_per_node ({node}) (a domain of "
                f"whole nodes, like NVL72 = 18 x 4) or divide it (several domains per node)")
        if self.scaleup_kind == "mesh" and domain > node:
            raise ValueError("a 'mesh' scale-up fabric (xGMI) cannot span nodes: scaleup_domain_gpus must "
                             "be at most gpus_per_node")
        return self

    @property
    def num_gpus(self) -> int:
        """Total GPUs = gpus_per_node x num_nodes."""
        return self.gpus_per_node * self.num_nodes

    @property
    def domain_gpus(self) -> int:
        """GPUs per scale-up domain the job's groups are placed in (:func:`tiling_domain_gpus`): the physical
        domain, or a whole-node slice of it when the job does not fill whole domains."""
        return tiling_domain_gpus(self.num_gpus, self.scaleup_domain_gpus, self.gpus_per_node)

    @property
    def scaleout_GBps_per_gpu(self) -> float:
        """Network bandwidth per GPU per direction, GB/s: nics_per_node x nic_GBps / gpus_per_node / oversubscription."""
        return self.nics_per_node * self.nic_GBps / self.gpus_per_node / self.scaleout_oversubscription


def tiling_domain_gpus(num_gpus: int, domain_gpus: int, gpus_per_node: int) -> int:
    """GPUs per scale-up group a job of ``num_gpus`` is laid out in: every GPU in exactly one group of
    equal size, inside one physical domain, which the placement arithmetic needs.

    A job inside one domain is one group (a 64-GPU job in an NVL72 rack); a job of whole domains uses
    them whole. A job of 256 GB200 GPUs fills no whole number of 72-GPU racks: a scheduler gives it 16
    compute trays (64 GPUs) in each of 4 racks, so its groups are 64-GPU slices, the largest whole-node
    size up to the physical domain that divides the job. Nodes smaller than the domain only (a domain
    inside a node, like PCIe pairs) keep the physical domain.
    """
    if num_gpus <= domain_gpus:
        return num_gpus
    if num_gpus % domain_gpus == 0 or domain_gpus < gpus_per_node:
        return domain_gpus
    return max(size for size in range(gpus_per_node, domain_gpus + 1, gpus_per_node) if num_gpus % size == 0)


class EconomicsSpec(_Frozen):
    """What a GPU-hour costs in money and energy (optional; cost outputs are skipped when absent)."""

    section: ClassVar[str] = "economics"

    price_per_gpu_hour_usd: float | None = Field(default=None, gt=0, description=(
        "Price of one GPU for one hour, US dollars (rental or amortised ownership)."))
    power_per_gpu_w: float | None = Field(default=None, gt=0, description=(
        "All-in electrical power per GPU in watts, including its share of host CPUs, memory, NICs and "
        "switches (system power / GPUs per system)."))
    pue: float = Field(default=1.0, ge=1.0, description="Data-centre power usage effectiveness (facility / IT power).")


class ReliabilitySpec(_Frozen):
    """How often a job's hardware and software interrupt it, and how long a restart takes.

    Failures are independent and memoryless (exponential inter-arrival times), the model of Young
    (1974), Daly (2006) and Kokolis et al. 2024 (arXiv:2410.21680, whose MTTF falls as 1/GPUs): a
    job's failure rate is the sum of per-GPU rates times its GPUs and per-node rates times its nodes,
    so its mean time between failures is 1 / that sum. The defaults are the unexpected interruptions
    of Llama 3 405B pre-training (Dubey et al. 2024, "The Llama 3 Herd of Models", section 3.3.4,
    Table 5: 419 in 54 days on 16,384 H100 GPUs in 2,048 nodes), split by the table's root causes;
    a cluster file without this section gets them. Planned interruptions (47 of Llama 3's 466,
    automated maintenance) are not failures and are not counted.
    """

    section: ClassVar[str] = "reliability"

    gpu_failures_per_gpu_hour: float = Field(default=196 / (16_384 * 54 * 24), ge=0.0, le=1.0, description=(
        "Interruptions per GPU-hour caused by the GPU other than its HBM: Llama 3 Table 5 faulty GPU 148 "
        "(NVLink included), GPU SRAM 19, GPU system processor 17, silent data corruption 6, thermal "
        "interface and sensor 6 = 196 in 54 days x 16,384 GPUs = 9.23e-6."))
    hbm_failures_per_gpu_hour: float = Field(default=72 / (16_384 * 54 * 24), ge=0.0, le=1.0, description=(
        "Interruptions per GPU-hour caused by the GPU's HBM: Llama 3 Table 5 GPU HBM3 memory 72 = 3.39e-6."))
    network_failures_per_node_hour: float = Field(default=42 / (2_048 * 54 * 24), ge=0.0, le=1.0, description=(
        "Interruptions per node-hour caused by the network: Llama 3 Table 5 network switch and cable 35, "
        "NIC 7 = 42 in 54 days x 2,048 nodes = 1.58e-5."))
    host_failures_per_node_hour: float = Field(default=109 / (2_048 * 54 * 24), ge=0.0, le=1.0, description=(
        "Interruptions per node-hour caused by the host and software: Llama 3 Table 5 software bug 54, "
        "host maintenance 32, NCCL watchdog timeouts 7, SSD 3, power supply 3, server chassis 2, IO "
        "expansion board 2, dependency 2, CPU 2, system memory 2 = 109 = 4.11e-5."))
    reschedule_s: float = Field(default=300.0, ge=0.0, le=1e6, description=(
        "Seconds from a failure to a healthy set of nodes for the restart: detection (NCCL timeout or a "
        "health check), draining the bad node and waiting for a replacement. A hot spare removes it "
        "(``hot_spare_nodes_per`` in the training settings). 300 s: Kokolis et al. 2024 run health "
        "checks every 5 minutes; not a measured restart time."))
    restart_warmup_s: float = Field(default=300.0, ge=0.0, le=1e6, description=(
        "Seconds from the restart's launch to full-speed steps, beside loading the checkpoint: process "
        "start, NCCL communicator set-up, data-loader and first steps. 300 s is an assumption (Llama 3 "
        "reports reducing job start-up time without a figure); set your own."))
    node_repair_h: float = Field(default=24.0, gt=0.0, le=1e5, description=(
        "Hours a failed node is out of service (diagnosis, repair or swap): with hot spares, the spares "
        "that are not themselves waiting for repair decide whether a restart waits (Little's law, "
        ":mod:`cost_model.goodput`). 24 h is an assumption, not a published figure."))

    def job_failures_per_hour(self, num_gpus, num_nodes):
        """Failures per hour of a job on ``num_gpus`` GPUs in ``num_nodes`` nodes (arrays or numbers)."""
        return ((self.gpu_failures_per_gpu_hour + self.hbm_failures_per_gpu_hour) * num_gpus
                + (self.network_failures_per_node_hour + self.host_failures_per_node_hour) * num_nodes)


class StorageSpec(_Frozen):
    """The file system checkpoints are written to and read from (bandwidths in GB/s = 1e9 bytes/s).

    A node writes at the smaller of its own link and its share of the file system's aggregate
    (:func:`cost_model.goodput.checkpoint_cost`). Defaults: Llama 3's Tectonic storage (Dubey et al.
    2024, section 3.3.1: "a sustainable throughput of 2 TB/s and a peak throughput of 7 TB/s") and a
    DGX H100 node's two storage NICs (2 x 200 Gb/s = 50 GB/s; DGX H100 user guide: ConnectX-7 ports for
    storage beside the eight compute NICs).
    """

    section: ClassVar[str] = "storage"

    node_write_GBps: float = Field(default=50.0, gt=0.0, le=1e5, description=(
        "Checkpoint write bandwidth of one node to the file system, GB/s (its storage NICs)."))
    node_read_GBps: float = Field(default=50.0, gt=0.0, le=1e5, description=(
        "Checkpoint read bandwidth of one node from the file system, GB/s."))
    aggregate_write_GBps: float = Field(default=2_000.0, gt=0.0, le=1e7, description=(
        "Sustained write bandwidth of the whole file system, GB/s, shared by the job's nodes "
        "(Llama 3: 2 TB/s sustained)."))
    aggregate_read_GBps: float = Field(default=7_000.0, gt=0.0, le=1e7, description=(
        "Read bandwidth of the whole file system, GB/s (Llama 3: 7 TB/s peak)."))


class ClusterSpec(_Frozen):
    """A whole cluster: one GPU type, its topology and (optionally) its economics, reliability and storage."""

    name: str = Field(description="Cluster name, shown in reports.")
    gpu: GPUSpec = Field(description="The accelerator every node holds.")
    topology: TopologySpec = Field(description="Node count and network.")
    economics: EconomicsSpec = Field(default_factory=EconomicsSpec, description="Price and power; may be empty.")
    reliability: ReliabilitySpec = Field(default_factory=ReliabilitySpec, description=(
        "Failure rates and restart times (goodput); absent = Llama 3's published rates."))
    storage: StorageSpec = Field(default_factory=StorageSpec, description=(
        "Checkpoint file-system bandwidths (goodput); absent = Llama 3's storage."))

    @property
    def num_gpus(self) -> int:
        """Total GPUs in the cluster."""
        return self.topology.num_gpus

    def with_overrides(self, overrides: dict[str, Any], *, source: str = "overrides") -> "ClusterSpec":
        """Return a re-validated copy with dotted-key overrides applied.

        ``{"topology.num_nodes": 64, "topology.nic_gbps": 200, "gpu.memory_gib": 75}``. A key naming
        ``nic_gbps`` replaces ``nic_GBps`` (and vice versa). Unknown keys raise :class:`InputError` with
        a did-you-mean suggestion; invalid values raise it with the offending field.
        """
        data = self.model_dump()
        for key, value in overrides.items():
            _set_dotted(data, key, value, ClusterSpec, source)
        return validate_cluster(data, source, warn_fields=overrides)


# Input-only names accepted by the models beyond their fields (converted by validators).
_INPUT_ALIASES: dict[type[BaseModel], dict[str, str]] = {TopologySpec: {"nic_gbps": "nic_GBps"}}


def _set_dotted(data: dict[str, Any], key: str, value: Any, model: type[BaseModel], source: str) -> None:
    """Set ``data[a][b][c] = value`` for ``key = 'a.b.c'``, checking each part against the model's fields."""
    parts = key.split(".")
    node, current = data, model
    for depth, part in enumerate(parts):
        aliases = _INPUT_ALIASES.get(current, {})
        names = set(current.model_fields) | set(aliases)
        if part not in names:
            prefix = ".".join(parts[:depth])
            choices = [f"{prefix}.{n}" if prefix else n for n in names]
            raise InputError(source, key, f"unknown field{did_you_mean(key, choices)}",
                             f"valid names here: {', '.join(sorted(names))}")
        last = depth == len(parts) - 1
        if last:
            # nic_gbps and nic_GBps describe the same quantity: the new one replaces the old.
            canonical = aliases.get(part, part)
            for other, target in aliases.items():
                if target == canonical:
                    node.pop(other, None)
            node.pop(canonical, None)
            node[part] = value
            return
        annotation = current.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise InputError(source, key, f"'{part}' is a value, not a section", f"use '{'.'.join(parts[:depth + 1])}'")
        child = node.get(part)
        node[part] = child = copy.deepcopy(child) if isinstance(child, dict) else {}
        node, current = child, annotation


def input_error_from_validation(exc: ValidationError, source: str, prefix: str = "") -> InputError:
    """One-line InputError from a pydantic ValidationError: first problem, its dotted field and a fix."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(str(p) for p in first.get("loc", ()))
    kind = first.get("type", "")
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, OutOfBounds):
        # Our own validators say what is wrong and what to do; a model-level one names its field itself.
        if not loc or loc[-1] != cause.field:
            loc += (cause.field,)
        message, fix = cause.problem, cause.fix
    else:
        message, fix = _pydantic_message(first, kind, loc)
    field = ".".join(([prefix] if prefix else []) + list(loc))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return InputError(source, field, message, fix)


_FIXES = {
    "greater_than": "bandwidths, latencies, memory and counts must be positive; efficiencies lie in (0, 1]",
    "finite_number": "give a finite value",
    "literal_error": "use one of the values listed",
    "string_type": "give a name in quotes",
}


def _pydantic_message(error: dict[str, Any], kind: str, loc: tuple[str, ...]) -> tuple[str, str]:
    """(problem, fix) for one of pydantic's own errors, in this tool's words."""
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = message.replace("Input should be", "must be")
    if kind == "missing":
        return "is required but missing", "add it"
    if kind == "extra_forbidden":
        message = f"unknown field{did_you_mean(loc[-1], _known_names(loc[:-1]))}" if loc else "unknown field"
        return message, "remove it or correct the spelling"
    if kind.startswith(("greater_than", "less_than")):
        fix = _FIXES["greater_than"]
    elif kind.startswith("int_"):
        fix = "give a whole number"
    elif kind.startswith("float_"):
        fix = "give a number"
    elif kind.startswith("model_"):
        fix = "write 'field: value' lines under it"
    else:
        fix = _FIXES.get(kind, "fix the value")
    if "input" in error and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    return message, fix


def _known_names(loc: tuple[str, ...]) -> list[str]:
    """Field names valid at a location inside ClusterSpec (for did-you-mean on unknown fields)."""
    model: type[BaseModel] = ClusterSpec
    for part in loc:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields) + list(_INPUT_ALIASES.get(model, {}))


def validate_cluster(data: dict[str, Any], source: str, *, warn_fields: Iterable[str] | None = None) -> ClusterSpec:
    """Build a ClusterSpec, turning any validation failure into one InputError line naming ``source``.

    Then warn about implausible values (:func:`warn_implausible`): of every field, or only of
    ``warn_fields`` (the fields just overridden, so a sweep does not repeat a file's warnings)."""
    try:
        spec = ClusterSpec.model_validate(data)
    except ValidationError as exc:
        raise input_error_from_validation(exc, source) from None
    warn_implausible(spec, source, warn_fields)
    _warn_partial_domains(spec.topology, source)
    return spec


def _warn_partial_domains(topology: TopologySpec, source: str) -> None:
    """Say when the job does not fill whole scale-up domains, and the slices its groups are kept in."""
    physical, used = topology.scaleup_domain_gpus, topology.domain_gpus
    if topology.num_gpus > physical and used != physical:
        warnings.warn(f"{source}: {topology.num_gpus:,} GPUs do not fill whole {physical}-GPU scale-up domains; "
                      f"TP, CP and EP groups are kept inside {used}-GPU slices ({used // topology.gpus_per_node} "
                      f"nodes of each domain), as a scheduler places such a job", UserWarning, stacklevel=3)


def warn_implausible(spec: ClusterSpec, source: str, fields: Iterable[str] | None = None) -> None:
    """A warning for each value past what any real part has (:func:`hardware.bounds.plausibility_warning`):
    accepted, because a future part may have it, but named with the unit slip it more likely is."""
    wanted = None if fields is None else {_INPUT_ALIASES[TopologySpec].get(key.rsplit(".", 1)[-1], key.rsplit(".", 1)[-1])
                                          for key in fields}
    for section in ("gpu", "topology", "economics"):
        part = getattr(spec, section)
        for name in type(part).model_fields:
            value = getattr(part, name)
            if (wanted is not None and name not in wanted) or not isinstance(value, (int, float)):
                continue
            message = plausibility_warning(f"{section}.{name}", value)
            if message:
                warnings.warn(f"{source}: {message}", UserWarning, stacklevel=3)
