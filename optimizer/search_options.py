"""What the search explores and how it ranks: the knob grid, the search bounds and the objective."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from cost_model.memory import MEMORY_HEADROOM
from cost_model.plan import SCHEDULES

from .emit import FRAMEWORKS, framework_schedules

PINNABLE_DEGREES = ("tp", "pp", "dp", "cp", "ep", "etp")
"""Layout degrees a search can pin to given values (``SearchOptions.<degree>_values``)."""

OBJECTIVES = ("throughput", "cost_per_token", "time_to_train", "mfu", "memory_headroom")


@dataclass(frozen=True)
class SearchOptions:
    gpu_counts: tuple[int, ...] = ()
    """GPU counts to consider; empty = every GPU of the cluster."""

    max_tp: int = 64
    """Largest tensor-parallel degree tried (the scale-up-domain rule usually binds first)."""

    max_cp: int = 64
    """Largest context-parallel degree tried."""

    max_pp: int = 128
    """Largest pipeline depth tried (never more than the layers)."""

    max_vpp: int = 8
    """Largest number of virtual pipeline stages (interleaving) tried (unless ``vpp_values`` is given)."""

    tp_values: tuple[int, ...] = ()
    """Pinned tensor-parallel degrees (``--tp``): the layout model allows only these (rule ``tp_pinned``);
    empty = any. A pinned value above ``max_tp`` is tried too. Likewise the next five."""

    pp_values: tuple[int, ...] = ()
    """Pinned pipeline depths (``--pp``, rule ``pp_pinned``); empty = any."""

    dp_values: tuple[int, ...] = ()
    """Pinned data-parallel degrees (``--dp``, rule ``dp_pinned``); empty = any."""

    cp_values: tuple[int, ...] = ()
    """Pinned context-parallel degrees (``--cp``, rule ``cp_pinned``); empty = any."""

    ep_values: tuple[int, ...] = ()
    """Pinned expert-parallel degrees (``--ep``, rule ``ep_pinned``); empty = any."""

    etp_values: tuple[int, ...] = ()
    """Pinned expert-tensor-parallel degrees (``--etp``, rule ``etp_pinned``); empty = any."""

    vpp_values: tuple[int, ...] = ()
    """Pinned virtual pipeline stages (``--vpp``): the schedule grid uses these instead of 1..max_vpp."""

    schedules: tuple[str, ...] = ()
    """Pipeline schedules tried (``--schedule``, names of :data:`cost_model.plan.SCHEDULES`); empty = every
    schedule the chosen ``framework`` runs (:func:`optimizer.emit.framework_schedules`). A schedule the
    framework cannot run is still refused by its rules."""

    micro_batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    """Micro-batch sizes tried (``--micro-batch`` replaces them)."""

    recompute_modes: tuple[str, ...] = ("none", "selective", "full")
    """Activation recompute modes tried."""

    partial_recompute: bool = True
    """Also try full recompute of 1/4, 1/2 and 3/4 of each chunk's layers (Megatron 'block')."""

    sequence_parallel: tuple[bool, ...] = (False, True)
    """Sequence-parallel settings tried (only with tp > 1)."""

    zero_stages: tuple[int, ...] = (0, 1, 2, 3)
    """ZeRO stages tried (only with dp x cp > 1)."""

    dp_replicate_values: tuple[int, ...] = tuple(2**k for k in range(12))
    """Hybrid sharding (HSDP) copies tried with ZeRO >= 1 (``--dp-replicate``): the ZeRO states shard over
    dp x cp / dp_replicate ranks. Powers of two from 1 to 2,048; of these the search prices, per layout,
    the ones whose shard group is one, two or four scale-up domains' worth of data-parallel ranks
    (:func:`optimizer.search.hybrid_sharding_replicas`), the plan rules keep those that divide dp and the
    expert-data-parallel ranks, and the framework rules those its launcher runs. ``(1,)`` turns it off."""

    allow_offload: bool = False
    """Also try optimizer states on the CPU, and (without pipeline parallelism) activations of half or of
    all but one of the layers on the CPU."""

    expert_tp: Literal["1", "tp", "both"] = "both"
    """Expert tensor parallelism tried for MoE models: 1, equal to tp, or both."""

    uneven_pipeline: bool = True
    """Allow first/last pipeline stages with fewer layers when layers do not divide evenly."""

    tp_inside_scaleup: bool = True
    """Hard rule: tensor-parallel groups stay inside one NVLink (scale-up) domain."""

    cp_inside_scaleup: bool = False
    """Optional rule: context-parallel groups (with TP) stay inside one scale-up domain."""

    ep_inside_scaleup: bool = False
    """Optional rule: expert-parallel groups (with expert-TP) stay inside one scale-up domain."""

    rank_order: str = "tp-cp-ep-dp-pp"
    """Megatron ``--rank-order``-style placement of the parallel dimensions, innermost first."""

    memory_headroom: float = MEMORY_HEADROOM
    """Fraction of usable GPU memory kept free: a plan fits when memory <= (1 - headroom) x usable
    (:func:`cost_model.memory.fits_in_memory`; default none, see ``MEMORY_HEADROOM``)."""

    objective: str = "throughput"
    """Ranking objective: throughput, cost_per_token, time_to_train, mfu or memory_headroom.
    ``time_to_train`` and ``cost_per_token`` rank by effective values, failures, checkpoints, restarts
    and hot spares counted (:mod:`cost_model.goodput`, :mod:`optimizer.ranking`); ``throughput`` by
    the nominal tokens/s. The hot-spare choices the search picks among per plan are a training setting,
    ``hot_spare_nodes_per`` (CLI ``--spares``), because the cost model prices them."""

    top_k: int = 10
    """Plans returned."""

    best_per_layout: bool = False
    """Return only the best plan of each layout (tp, pp, dp, cp, ep, etp and GPUs): a top-K of layouts."""

    framework: str = "megatron"
    """The launcher the plans are for (``megatron``, ``megatron-bridge`` or ``torchtitan``): the search
    ranks only plans that framework accepts at start-up and can express (:mod:`optimizer.emit`)."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not 0 <= self.memory_headroom < 1:
            raise ValueError(f"memory_headroom must be in [0, 1), got {self.memory_headroom}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        for name in ("max_tp", "max_cp", "max_pp", "max_vpp"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in (*(f"{degree}_values" for degree in PINNABLE_DEGREES), "vpp_values"):
            if any(int(value) < 1 for value in getattr(self, name)):
                raise ValueError(f"{name} must be positive integers, got {getattr(self, name)}")
        if not self.micro_batch_sizes or min(self.micro_batch_sizes) < 1:
            raise ValueError("micro_batch_sizes must be positive integers")
        bad = set(self.recompute_modes) - {"none", "selective", "full"}
        if bad or not self.recompute_modes:
            raise ValueError(f"recompute_modes must be drawn from none, selective, full; got {sorted(bad)}")
        if not self.zero_stages or set(self.zero_stages) - {0, 1, 2, 3}:
            raise ValueError("zero_stages must be drawn from 0, 1, 2, 3")
        if not self.dp_replicate_values or min(self.dp_replicate_values) < 1:
            raise ValueError(f"dp_replicate_values must be positive integers, got {self.dp_replicate_values}")
        if self.framework not in FRAMEWORKS:
            raise ValueError(f"framework must be one of {', '.join(FRAMEWORKS)}, got {self.framework!r}")
        unknown = [name for name in self.schedules if name not in SCHEDULES]
        if unknown:
            raise ValueError(f"schedules must be drawn from {', '.join(SCHEDULES)}; got {', '.join(unknown)}")
        runs = framework_schedules(self.framework)
        if self.schedules and not set(self.schedules) & set(runs):
            raise ValueError(f"schedules {', '.join(self.schedules)}: {self.framework} runs {', '.join(runs)} only "
                             "(torchtitan also runs zb-h1, zbv and dualpipev; no framework here runs zb-h2 or "
                             "dualpipe: price those with evaluate)")

    def pinned(self, degree: str) -> tuple[int, ...]:
        """The values ``degree`` (tp, pp, dp, cp, ep or etp) is pinned to; empty when it is free."""
        return getattr(self, f"{degree}_values")

    @property
    def vpp_choices(self) -> tuple[int, ...]:
        """Virtual pipeline stage counts of the schedule grid: the pinned ones, else 1..max_vpp."""
        return tuple(sorted(set(self.vpp_values))) or tuple(range(1, self.max_vpp + 1))

    @property
    def schedule_choices(self) -> tuple[int, ...]:
        """Schedule codes of the schedule grid: the asked ones, else those the framework runs."""
        names = self.schedules or framework_schedules(self.framework)
        return tuple(sorted({SCHEDULES.index(name) for name in names}))

    def with_changes(self, **changes: Any) -> "SearchOptions":
        return replace(self, **changes)
