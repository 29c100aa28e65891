"""Where each parallel group's ranks land: inside one scale-up domain (NVLink) or across the network.

Ranks are numbered as in Megatron-LM's ``RankGenerator`` (``megatron/core/parallel_state.py``): the
order string lists dimensions innermost (fastest varying) first, and each dimension's *stride* is the
product of the sizes of the dimensions listed before it. The default ``tp-cp-ep-dp-pp`` keeps
tensor-parallel ranks adjacent, so TP groups fill NVLink domains first. Consecutive ranks fill scale-up
domains in order (GPUs 0..D-1 are domain 0, D..2D-1 domain 1, ...), as launchers assign local ranks.

Group of a dimension = the ranks that differ only in that dimension: ``size`` members spaced ``stride``
apart. For a domain of ``D`` GPUs, the members of one group that share a domain number

    e = size                          if the whole job fits in one domain (world <= D)
    e = gcd(size * stride, D) / stride   if stride divides D
    e = 1                             otherwise (stride > D, or stride does not divide D).

This is exact whenever strides and domain sizes divide each other -- powers of two on 8-GPU nodes, and
72-GPU NVL72 domains with strides dividing 72 -- because the domain boundaries then fall on group
boundaries. Otherwise some groups straddle a domain boundary and the formula gives the count every group
is guaranteed (the worst-placed group, which sets the collective's time), so it errs towards "network".

A group over several dimensions (``dp_cp``) has ``size`` = product of sizes, ``ranks_per_domain`` =
product of each dimension's ``e`` (a domain is an inner block of dimensions, a partial range of one
dimension and fixed outer coordinates), and ``stride`` = the stride of its innermost dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

DEFAULT_RANK_ORDER = "tp-cp-ep-dp-pp"  # Megatron-LM order, innermost (fastest varying) first
_DIMENSIONS = ("tp", "cp", "ep", "dp", "pp")


@dataclass(frozen=True)
class GroupPlacement:
    """Placement of one kind of parallel group; every field is an int array broadcast over the inputs."""

    size: np.ndarray  # ranks in the group
    stride: np.ndarray  # rank distance between consecutive members (innermost dimension for multi-dim groups)
    ranks_per_domain: np.ndarray  # members sharing one scale-up domain (1 = all on the network)
    domains_spanned: np.ndarray  # scale-up domains the group touches = ceil(size / ranks_per_domain)


def parse_rank_order(order: str) -> tuple[str, ...]:
    """'tp-cp-ep-dp-pp' -> ('tp', 'cp', 'ep', 'dp', 'pp'); anything but a permutation of the five -> InputError."""
    if not isinstance(order, str):
        raise InputError("rank order", "order", f"must be a string like '{DEFAULT_RANK_ORDER}', got {order!r}",
                         f"list each of the five once, innermost first, e.g. '{DEFAULT_RANK_ORDER}'")
    parts = tuple(p.strip().lower() for p in order.replace("_", "-").split("-"))
    unknown = [p for p in parts if p not in _DIMENSIONS]
    repeated = sorted({p for p in parts if parts.count(p) > 1})
    missing = [d for d in _DIMENSIONS if d not in parts]
    if unknown or repeated or missing:
        problems = ([f"unknown {', '.join(repr(p) for p in unknown)}"] if unknown else []) + \
                   ([f"repeated {', '.join(repeated)}"] if repeated else []) + \
                   ([f"missing {', '.join(missing)}"] if missing else [])
        raise InputError("rank order", "order", f"'{order}' is not an order of tp, cp, ep, dp, pp ({'; '.join(problems)})",
                         f"list each of the five once, innermost first, e.g. '{DEFAULT_RANK_ORDER}'")
    return parts


def _as_int_arrays(**sizes) -> dict[str, np.ndarray]:
    arrays = dict(zip(sizes, np.broadcast_arrays(*(np.asarray(v, dtype=np.int64) for v in sizes.values()))))
    for name, value in arrays.items():
        if np.any(value < 1):
            raise InputError("placement", name, "parallel sizes must be whole numbers >= 1",
                             "give every parallel degree as a whole number of at least 1")
    return arrays


def _place(sizes: dict[str, np.ndarray], order: str, domain_gpus: int,
           names: tuple[str, ...] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per dimension: (stride, ranks of one group sharing a domain), by the rule in the module docstring.
    ``names`` replaces the order's dimensions (innermost first) when a dimension is split in two."""
    if int(domain_gpus) < 1:
        raise InputError("placement", "domain_gpus", "must be >= 1", "the scale-up domain holds at least one GPU")
    domain = np.int64(domain_gpus)
    world = np.ones_like(next(iter(sizes.values())))
    for size in sizes.values():
        world = world * size
    stride = np.ones_like(world)
    placed = {}
    for dim in names or parse_rank_order(order):
        size = sizes[dim]
        span = np.gcd(size * stride, domain)
        divides = (domain % stride == 0) & (span % stride == 0)
        per_domain = np.where(divides, span // np.where(divides, stride, 1), 1)
        per_domain = np.where(world <= domain, size, per_domain)
        placed[dim] = (stride, per_domain)
        stride = stride * size
    return placed


def _group(placed: dict[str, tuple[np.ndarray, np.ndarray]], sizes: dict[str, np.ndarray], dims: tuple[str, ...],
           order: tuple[str, ...]) -> GroupPlacement:
    size = np.ones_like(sizes[dims[0]])
    per_domain = np.ones_like(size)
    for dim in dims:
        size = size * sizes[dim]
        per_domain = per_domain * placed[dim][1]
    innermost = min(dims, key=order.index)
    return GroupPlacement(size=np.asarray(size), stride=np.asarray(placed[innermost][0]),
                          ranks_per_domain=np.asarray(per_domain), domains_spanned=np.asarray(-(-size // per_domain)))


def dense_placement(tp, cp, dp, pp, *, domain_gpus: int, order: str = DEFAULT_RANK_ORDER) -> dict[str, GroupPlacement]:
    """Placement of the dense (attention) mesh: keys 'tp', 'cp', 'dp', 'pp' and 'dp_cp'.

    ``dp_cp`` is the data-parallel x context-parallel group over which Megatron-LM reduces gradients.
    Expert parallelism is folded into its own mesh (:func:`expert_placement`), so ep = 1 here.
    """
    sizes = _as_int_arrays(tp=tp, cp=cp, ep=1, dp=dp, pp=pp)
    names = parse_rank_order(order)
    placed = _place(sizes, order, domain_gpus)
    result = {dim: _group(placed, sizes, (dim,), names) for dim in ("tp", "cp", "dp", "pp")}
    result["dp_cp"] = _group(placed, sizes, ("dp", "cp"), names)
    return result


def expert_placement(etp, ep, edp, pp, *, domain_gpus: int, order: str = DEFAULT_RANK_ORDER) -> dict[str, GroupPlacement]:
    """Placement of the MoE expert mesh (Megatron-Core "parallel folding"): keys 'etp', 'ep', 'edp'.

    The same order string is used with tp -> etp, cp -> 1, dp -> edp (Megatron-LM
    ``parallel_state.initialize_model_parallel``, expert ``RankGenerator``), so expert groups can be laid
    out differently from the attention groups on the same GPUs.
    """
    sizes = _as_int_arrays(tp=etp, cp=1, ep=ep, dp=edp, pp=pp)
    names = parse_rank_order(order)
    placed = _place(sizes, order, domain_gpus)
    return {new: _group(placed, sizes, (old,), names) for new, old in (("etp", "tp"), ("ep", "ep"), ("edp", "dp"))}


def _split_dp(order: str) -> tuple[str, ...]:
    """The order with data parallelism split into its shard part (``dp``) and, right outside it, the
    replicas (``dpr``)."""
    names = parse_rank_order(order)
    at = names.index("dp") + 1
    return names[:at] + ("dpr",) + names[at:]


def hybrid_placement(tp, cp, dp, pp, dp_replicate, *, domain_gpus: int, order: str = DEFAULT_RANK_ORDER,
                     ep=1) -> dict[str, GroupPlacement]:
    """Placement of the two groups of hybrid sharding (HSDP): keys ``shard`` (the dp/dp_replicate x cp ranks
    that shard the model states between them) and ``replicate`` (the dp_replicate ranks, one per shard
    group, that hold the same shard).

    The shard group is the inner, consecutive part of the data-parallel ranks and the replicas the outer
    part: Megatron-Core cuts its dp x cp ranks into ``num_distributed_optimizer_instances`` consecutive
    slices (``parallel_state.initialize_model_parallel``, intra-partial data-parallel groups; Megatron-FSDP's
    mesh ``[outer_fsdp_dp, dp_cp, tp]``), torchtitan's mesh is ``[dp_replicate, dp_shard, cp, tp]``
    outermost first (``ParallelDims.build_mesh``). So a shard group fills a scale-up domain before the
    replicas leave it. The expert mesh is the same call with tp -> etp, cp -> 1, dp -> edp and ``ep``.
    """
    sizes = _as_int_arrays(tp=tp, cp=cp, ep=ep, dp=dp, pp=pp, dpr=dp_replicate)
    if np.any(sizes["dp"] % sizes["dpr"] != 0):
        raise InputError("placement", "dp_replicate", "must divide dp", "choose a dp_replicate that divides dp")
    sizes["dp"] = sizes["dp"] // sizes["dpr"]
    names = _split_dp(order)
    placed = _place(sizes, order, domain_gpus, names)
    return {"shard": _group(placed, sizes, ("dp", "cp"), names), "replicate": _group(placed, sizes, ("dpr",), names)}
