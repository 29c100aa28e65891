"""Training plans as a structure of arrays, so that the cost model prices many plans in one numpy call.

A plan is a parallel layout (tp, pp, dp, cp, ep, expert-tp), a pipeline schedule (virtual stages,
micro-batch size) and memory knobs (recompute, sequence parallel, ZeRO stage, optimizer offload).
Names follow Megatron-LM's arguments; :mod:`optimizer.emit` turns a plan into Megatron, torchtitan and
NeMo arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping

import numpy as np

RECOMPUTE_MODES = ("none", "selective", "full")
RECOMPUTE_CODE = {name: code for code, name in enumerate(RECOMPUTE_MODES)}
NONE, SELECTIVE, FULL = 0, 1, 2

RECOMPUTE_MODULES = ("core_attn", "layernorm", "mla_up_proj", "mlp", "moe_act", "moe", "shared_experts")
"""Megatron-LM's ``--recompute-modules`` (with ``--recompute-granularity selective``), one bit each in
``PlanArrays.recompute_modules``. ``core_attn``, ``mlp``, ``moe`` and ``shared_experts`` checkpoint the
submodule (keep its input, rerun it in backward); ``layernorm``, ``moe_act`` and ``mla_up_proj`` discard
their output after the next op consumed it and recompute it before backward (Megatron-LM
``TransformerConfig.recompute_modules``)."""
MODULE_BIT = {name: 1 << i for i, name in enumerate(RECOMPUTE_MODULES)}
CORE_ATTN = MODULE_BIT["core_attn"]


def module_mask(names: Iterable[str]) -> int:
    """Bitmask of recompute module names (unknown names raise ValueError naming the choices)."""
    mask = 0
    for name in names:
        if name not in MODULE_BIT:
            raise ValueError(f"unknown recompute module {name!r}; choose from {', '.join(RECOMPUTE_MODULES)}")
        mask |= MODULE_BIT[name]
    return mask


def module_names(mask: int) -> list[str]:
    """Module names of a bitmask, in Megatron's order."""
    return [name for name in RECOMPUTE_MODULES if int(mask) & MODULE_BIT[name]]

SCHEDULES = ("1f1b", "interleaved", "zb-h1", "zb-h2", "zbv", "dualpipe", "dualpipev")
"""Pipeline schedules, coded by position in ``PlanArrays.schedule`` (:mod:`cost_model.schedules` prices
each: bubble, micro-batches in flight, parameter copies, what communication it hides)."""
SCHEDULE_CODE = {name: code for code, name in enumerate(SCHEDULES)}
BY_VPP = -1
"""A plan record's schedule when it names none: 1F1B, or interleaved when vpp > 1 (what Megatron runs)."""

PLAN_DEFAULTS = {"cp": 1, "ep": 1, "etp": 1, "vpp": 1, "micro_batch": 1, "recompute": NONE,
                 "recompute_num_layers": -1, "recompute_modules": CORE_ATTN, "sequence_parallel": False, "zero_stage": 0,
                 "optimizer_offload": False, "activation_offload_layers": 0, "pp": 1, "dp": 1,
                 "schedule": BY_VPP, "dp_replicate": 1}
"""Neutral value of every knob a plan record or column mapping leaves out (tp is required)."""

INT_COLUMNS = ("tp", "pp", "dp", "cp", "ep", "etp", "vpp", "micro_batch", "recompute", "recompute_num_layers",
               "recompute_modules", "zero_stage", "activation_offload_layers", "schedule", "dp_replicate")
BOOL_COLUMNS = ("sequence_parallel", "optimizer_offload")


@dataclass
class PlanArrays:
    """N plans, one array per knob (all of length N)."""

    tp: np.ndarray
    """Tensor-parallel degree (Megatron ``--tensor-model-parallel-size``)."""
    pp: np.ndarray
    """Pipeline stages (``--pipeline-model-parallel-size``)."""
    dp: np.ndarray
    """Data-parallel replicas; world = tp x cp x pp x dp."""
    cp: np.ndarray
    """Context-parallel degree: the sequence is split across cp ranks (``--context-parallel-size``)."""
    ep: np.ndarray
    """Expert-parallel degree (``--expert-model-parallel-size``); 1 for dense models."""
    etp: np.ndarray
    """Expert tensor-parallel degree (``--expert-tensor-parallel-size``)."""
    vpp: np.ndarray
    """Virtual pipeline stages per rank, interleaved schedule (``--virtual-pipeline-model-parallel-size``)."""
    micro_batch: np.ndarray
    """Sequences per micro-batch (``--micro-batch-size``)."""
    recompute: np.ndarray
    """0 none, 1 selective (the submodules in ``recompute_modules``), 2 full (whole layers)."""
    recompute_num_layers: np.ndarray
    """With full recompute: layers recomputed per virtual stage chunk (Megatron ``block`` method);
    -1 = every layer of the chunk."""
    recompute_modules: np.ndarray
    """With selective recompute: bitmask of :data:`RECOMPUTE_MODULES` (Megatron ``--recompute-modules``);
    Megatron's default is core attention alone (Korthikanti et al. 2022). Ignored by other modes."""
    sequence_parallel: np.ndarray
    """Megatron sequence parallelism: norms and dropout split along the sequence across TP ranks."""
    zero_stage: np.ndarray
    """0 plain DDP; 1 optimizer states sharded (Megatron distributed optimizer); 2 + gradients;
    3 + parameters (FSDP). Sharded over the dp x cp ranks (experts: expert-data-parallel ranks)."""
    optimizer_offload: np.ndarray
    """Optimizer states and step on the CPU."""
    activation_offload_layers: np.ndarray
    """Layers whose activations go to host memory during forward and come back for backward
    (Megatron ``--cpu-offloading --cpu-offloading-num-layers``); 0 = none. Megatron allows it only
    without pipeline parallelism and without recompute."""
    schedule: np.ndarray | None = None
    """Pipeline schedule, an index into :data:`SCHEDULES`; None or :data:`BY_VPP` = 1F1B, interleaved
    where vpp > 1 (the schedule Megatron runs for those knobs)."""
    dp_replicate: np.ndarray | None = None
    """Hybrid sharding (HSDP): copies of the ZeRO-sharded model states across the dp x cp ranks, each
    sharded over a group of dp x cp / dp_replicate consecutive ranks (experts: edp / dp_replicate). The
    parameter all-gather and gradient reduce-scatter run inside the shard group and the gradient shards
    are all-reduced across the copies. None or 1 = one shard group over all of dp x cp (plain ZeRO/FSDP).
    Megatron-Core ``--num-distributed-optimizer-instances`` (the distributed optimizer's partial
    instances; Megatron-FSDP's HSDP), torchtitan ``data_parallel_replicate_degree``."""

    def __post_init__(self) -> None:
        if self.schedule is None:
            self.schedule = np.full(np.shape(np.atleast_1d(self.vpp)), BY_VPP)
        if self.dp_replicate is None:
            self.dp_replicate = np.ones(np.shape(np.atleast_1d(self.vpp)), dtype=np.int64)
        n = None
        for f in fields(self):
            value = np.asarray(getattr(self, f.name))
            value = value.astype(bool, copy=False) if f.name in BOOL_COLUMNS else value.astype(np.int64, copy=False)
            value = np.atleast_1d(value)
            setattr(self, f.name, value)
            n = len(value) if n is None else n
            if len(value) != n:
                raise ValueError(f"plan column {f.name} has {len(value)} entries, expected {n}")
        if (self.schedule < 0).any():
            self.schedule = np.where(self.schedule < 0, np.where(self.vpp > 1, SCHEDULE_CODE["interleaved"], 0),
                                     self.schedule)

    def __len__(self) -> int:
        return len(self.tp)

    @property
    def num_gpus(self) -> np.ndarray:
        return self.tp * self.cp * self.pp * self.dp

    def num_microbatches(self, global_batch_size: int) -> np.ndarray:
        """Micro-batches per step per data-parallel replica: global batch / (dp x micro-batch)."""
        return global_batch_size // (self.dp * self.micro_batch)

    @property
    def shard_group(self) -> np.ndarray:
        """Ranks over which ZeRO shards the dense model states: dp x cp / dp_replicate (HSDP)."""
        return (self.dp * self.cp) // self.dp_replicate

    @property
    def expert_shard_group(self) -> np.ndarray:
        """Ranks over which ZeRO shards the experts' states: expert-data-parallel / dp_replicate."""
        return self.expert_data_parallel // self.dp_replicate

    @property
    def expert_data_parallel(self) -> np.ndarray:
        """Megatron 'parallel folding': the tp x cp x dp ranks of a stage regroup as etp x ep x edp."""
        return (self.tp * self.cp * self.dp) // (self.etp * self.ep)

    def take(self, index: np.ndarray | slice) -> "PlanArrays":
        return PlanArrays(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to_columns(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def record(self, index: int) -> dict[str, int | bool]:
        """Plan ``index`` as a mapping of knob to native int or bool (recompute as its code): the form the
        emitters and plan records take."""
        return {f.name: (bool(value[index]) if value.dtype == bool else int(value[index]))
                for f in fields(self) for value in (getattr(self, f.name),)}

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> "PlanArrays":
        """Build from a mapping of columns; missing knobs take their neutral default."""
        n = len(np.atleast_1d(columns["tp"]))
        defaults = PLAN_DEFAULTS
        values = {}
        for f in fields(cls):
            if f.name in columns:
                column = columns[f.name]
                codes = {"recompute": RECOMPUTE_CODE, "schedule": SCHEDULE_CODE}.get(f.name)
                if codes and not (isinstance(column, np.ndarray) and column.dtype.kind in "iu"):
                    # Iterate the given list itself: numpy would turn a mix of names and codes into strings.
                    items = column if isinstance(column, (list, tuple)) else np.atleast_1d(column)
                    column = [(codes[c] if c in codes else int(c)) if isinstance(c, str) else c for c in items]
                values[f.name] = np.broadcast_to(np.asarray(column), (n,)).copy()
            else:
                values[f.name] = np.full(n, defaults[f.name])
        return cls(**values)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> "PlanArrays":
        records = list(records)
        names = {f.name for f in fields(cls)}
        # A knob given in any record is a column; records that leave it out take its neutral default.
        columns = {name: [r.get(name, PLAN_DEFAULTS.get(name)) for r in records]
                   for name in names if any(name in r for r in records)}
        return cls.from_columns(columns)

    @classmethod
    def concatenate(cls, parts: list["PlanArrays"]) -> "PlanArrays":
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})
