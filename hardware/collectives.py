"""Alpha-beta time model of NCCL/RCCL collectives on a two-level (scale-up / scale-out) network.

All functions take numpy arrays (or scalars) and broadcast them, so the optimizer can price thousands of
layouts in one call.

Conventions (nccl-tests, ``doc/PERFORMANCE.md`` in github.com/NVIDIA/nccl-tests): ``message_bytes`` is
the all-reduce buffer, the all-gather *output*, the reduce-scatter *input*, the all-to-all send buffer per
rank, or the bytes sent by send/recv. A group of ``n`` ranks has ``g`` ranks in each scale-up domain it
touches (``ranks_per_domain``) and spans ``d = n / g`` domains.

Bandwidth per rank
    * scale-up, switch (NVSwitch): ``scaleup_GBps`` per GPU, whatever the group size.
    * scale-up, mesh (MI300X xGMI): one link per peer, so a group with ``g`` ranks in the domain uses
      ``g - 1`` links: ``(g - 1) * scaleup_GBps``.
    * scale-out: the node's NICs shared by all its GPUs, ``nics_per_node * nic_GBps / gpus_per_node /
      oversubscription``. Every GPU of a node runs a sibling copy of the same collective at the same time
      (the data-parallel all-reduce of each tensor-parallel shard, for instance), so a rank gets its 1/G
      share of the node's NICs, not the whole node.

Hierarchical data volumes per rank (g ranks per domain, d domains, n = g d)
    * reduce-scatter / all-gather: ``(g-1)/g * M`` over scale-up (within the domain) and
      ``(d-1)/d * M/g`` over scale-out: after the intra-domain step each rank owns 1/g of the data, so
      only 1/g of the inter-domain traffic passes through each rank's NIC share.
    * all-reduce = reduce-scatter + all-gather: twice both volumes.
    * all-to-all: of its ``M`` bytes a rank keeps ``1/n``, sends ``(g-1)/n`` to peers in its domain and
      ``(n-g)/n`` across domains.
    The two stages are pipelined (NCCL streams chunks through NVLink and NIC hops concurrently), so the
    bandwidth time is the *slower* stage, not the sum -- the same rule NCCL's own tuning model applies
    (``src/graph/tuning.cc``: ring bandwidth = min(intra, inter) bandwidth). Latencies do add.

Algorithms (NCCL picks the fastest; we take the minimum of the ones that apply)
    * ring: one flat ring through all ``n`` ranks, so ``n - 1`` steps for all-gather / reduce-scatter
      (``2(n - 1)`` for all-reduce), of which ``d - 1`` (``2(d - 1)``) cross the network and the other
      ``n - d`` hop over NVLink: the latency grows with the number of *ranks*, not only of nodes, as in
      NCCL's tuning model (``src/graph/tuning.cc``, ``ncclTopoTuneModel``: ring latency
      ``(nsteps - nInterSteps) * intraLat + nInterSteps * interLat`` with ``nsteps = 2(nRanks - 1)``
      and ``nInterSteps = 2(nNodes - 1)`` for all-reduce, ``nRanks - 1`` and ``nNodes - 1`` for
      all-gather / reduce-scatter). A 1,536-rank all-gather on 8-GPU nodes thus pays 1,344 NVLink
      steps and 191 network steps of latency, not 7 and 191.
    * tree (all-reduce only): a chain through the ``g`` ranks of each domain and a binary tree across
      the ``d`` domains, up and down: ``2((g - 1) * intraLat + log2(d) * interLat)`` (same file, tree
      latency), but it moves the whole buffer up and down, ``n/(n-1)`` times the ring's bytes (Sanders
      et al., "Two-tree algorithms for full bandwidth broadcast, reduction and scan", 2009; NCCL 2.4
      double binary trees).
    * NVLS (all-reduce in one switch domain with ``nvls`` set): the NVSwitch reduces in-network;
      bus bandwidth is ``nvls_efficiency * 2 * scaleup_GBps`` (H100: 480 GB/s, NVIDIA/nccl-tests#212),
      i.e. ``time = (g-1)/g * M / (nvls_efficiency * scaleup_GBps)``, plus two latency steps.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

from .errors import InputError
from .schema import TopologySpec

_GB = 1e9  # bytes per GB; all bandwidths here are GB/s = 1e9 bytes/s
_US = 1e-6  # seconds per microsecond


class Collective(str, Enum):
    """Collective kinds priced by :func:`collective_time_s`."""

    ALL_REDUCE = "all_reduce"
    ALL_GATHER = "all_gather"
    REDUCE_SCATTER = "reduce_scatter"
    ALL_TO_ALL = "all_to_all"
    SEND_RECV = "send_recv"


def _kind(kind: Collective | str) -> Collective:
    try:
        return Collective(kind.value if isinstance(kind, Collective) else str(kind).lower())
    except ValueError:
        names = ", ".join(c.value for c in Collective)
        raise InputError("collective", "kind", f"unknown collective {kind!r}", f"use one of {names}") from None


def _efficiencies(topology: TopologySpec, kind: Collective) -> tuple[float, float]:
    return getattr(topology.scaleup_efficiency, kind.value), getattr(topology.scaleout_efficiency, kind.value)


def collective_time_s(topology: TopologySpec, kind: Collective | str, group_size, message_bytes,
                      ranks_per_domain) -> np.ndarray:
    """Seconds for one collective of ``message_bytes`` over ``group_size`` ranks (arrays broadcast).

    ``ranks_per_domain``: ranks of the group sharing one scale-up domain (= group_size when the group
    is inside one domain, 1 when every rank is in a different domain). For SEND_RECV pass
    ``group_size=2`` and ``ranks_per_domain`` 2 (same domain) or 1 (crossing the network).
    See the module docstring for the derivation of every term.
    """
    kind = _kind(kind)
    n, m, g = np.broadcast_arrays(np.asarray(group_size, dtype=np.float64),
                                  np.asarray(message_bytes, dtype=np.float64),
                                  np.asarray(ranks_per_domain, dtype=np.float64))
    _check(topology, kind, n, m, g)
    return CollectiveCost(topology, kind, n, g).time_s(m)


class CollectiveCost:
    """The alpha-beta coefficients of one collective kind on given groups, for any message size.

    Every algorithm's time is ``alpha + beta * message_bytes``; the collective takes the fastest
    algorithm that applies. Computing the coefficients once per group and reusing them for many
    messages is what lets the cost model price millions of plans (the coefficients depend on the
    group's size and placement only). Inputs are not checked here: :func:`collective_time_s` does.
    """

    def __init__(self, topology: TopologySpec, kind: Collective | str, group_size, ranks_per_domain):
        kind = _kind(kind)
        n = np.asarray(group_size, dtype=np.float64)
        g = np.asarray(ranks_per_domain, dtype=np.float64)
        n, g = np.broadcast_arrays(n, g)
        self.active = n > 1
        d = np.ceil(n / g)  # domains spanned
        eff_up, eff_out = _efficiencies(topology, kind)
        up_GBps = (np.maximum(g - 1.0, 1.0) if topology.scaleup_kind == "mesh" else 1.0) * topology.scaleup_GBps
        bw_up = up_GBps * _GB * eff_up  # bytes/s per rank actually achieved
        bw_out = topology.scaleout_GBps_per_gpu * _GB * eff_out
        a_up, a_out = topology.scaleup_latency_us * _US, topology.scaleout_latency_us * _US
        self.terms: list[tuple[np.ndarray, np.ndarray]] = []  # (alpha_s, beta_s_per_byte) per algorithm
        with np.errstate(divide="ignore", invalid="ignore"):
            if kind is Collective.SEND_RECV:
                inside = g >= 2
                self.terms.append((np.where(inside, a_up, a_out), np.where(inside, 1 / bw_up, 1 / bw_out)))
            elif kind is Collective.ALL_TO_ALL:
                intra = (g - 1.0) / n / bw_up
                inter = (n - g) / n / bw_out
                latency = np.where(d > 1, a_out, a_up)  # all peers exchange at once: one round
                self.terms.append((latency, np.maximum(intra, inter)))
            else:
                passes = 2.0 if kind is Collective.ALL_REDUCE else 1.0
                intra = passes * (g - 1.0) / g / bw_up
                inter = passes * (d - 1.0) / d / g / bw_out
                beta = np.maximum(intra, inter)
                self.terms.append((passes * ((n - d) * a_up + (d - 1.0) * a_out), beta))  # flat ring
                if kind is Collective.ALL_REDUCE:
                    tree_latency = 2.0 * ((g - 1.0) * a_up + np.log2(np.maximum(d, 1.0)) * a_out)
                    self.terms.append((tree_latency, beta * n / np.maximum(n - 1.0, 1.0)))  # double binary tree
                    if topology.nvls and topology.scaleup_kind == "switch":
                        nvls_bw = topology.scaleup_GBps * _GB * topology.nvls_efficiency
                        inside = d <= 1
                        self.terms.append((np.where(inside, 2.0 * a_up, np.inf),
                                           np.where(inside, (g - 1.0) / g / nvls_bw, np.inf)))

    def fill_latency_s(self) -> np.ndarray:
        """Seconds of the first algorithm's latency alone (the flat ring's ``(n - d)`` NVLink and ``d - 1``
        network steps for all-gather / reduce-scatter / all-reduce; see the module docstring): the time
        before the ring's pipeline delivers its first chunk everywhere, whatever the message. Zero for a
        group of one."""
        return np.where(self.active, self.terms[0][0], 0.0)

    def take(self, index: np.ndarray) -> "CollectiveCost":
        """The coefficients of the groups at ``index`` (to price many plans that share few groups)."""
        taken = object.__new__(CollectiveCost)
        taken.active = self.active[index]
        taken.terms = [(alpha[index], beta[index]) for alpha, beta in self.terms]
        return taken

    def time_s(self, message_bytes) -> np.ndarray:
        """Seconds for messages of the given size (broadcast against the groups)."""
        m = np.asarray(message_bytes, dtype=np.float64)
        active = self.active
        if m.ndim > active.ndim:  # per-stage messages (plans, stages) against per-plan groups
            active = active[..., None]
        time = None
        with np.errstate(invalid="ignore"):  # inf * 0 for an algorithm that does not apply
            for alpha, beta in self.terms:
                if m.ndim > alpha.ndim:
                    alpha, beta = alpha[..., None], beta[..., None]
                candidate = alpha + beta * m
                time = candidate if time is None else np.minimum(time, candidate)
        return np.where(active & (m > 0), time, 0.0)


def two_level_exchange_time_s(topology: TopologySpec, ranks_per_domain, domains_spanned, scaleup_bytes,
                              scaleout_bytes) -> np.ndarray:
    """Seconds for a hierarchical exchange whose bytes per rank over NVLink and over the network are
    known separately (arrays broadcast): DeepEP's and HybridEP's normal dispatch / combine, which send a
    token once over RDMA to each destination node and forward it over NVLink to the ranks there
    (DeepEP README, "normal kernels ... forwarding data from NVLink domain to RDMA domain"; HybridEP
    design note, "Hierarchical Communication Design"). The two stages are pipelined, so the slower one
    sets the time (as :class:`CollectiveCost`), at the all-to-all efficiencies of each level, plus one
    network (or NVLink) latency."""
    g, d, up, out = np.broadcast_arrays(np.asarray(ranks_per_domain, dtype=np.float64),
                                        np.asarray(domains_spanned, dtype=np.float64),
                                        np.asarray(scaleup_bytes, dtype=np.float64),
                                        np.asarray(scaleout_bytes, dtype=np.float64))
    eff_up, eff_out = _efficiencies(topology, Collective.ALL_TO_ALL)
    links = np.maximum(g - 1.0, 1.0) if topology.scaleup_kind == "mesh" else 1.0
    bw_up = links * topology.scaleup_GBps * _GB * eff_up
    bw_out = topology.scaleout_GBps_per_gpu * _GB * eff_out
    latency = np.where(d > 1, topology.scaleout_latency_us, topology.scaleup_latency_us) * _US
    busy = up + out > 0
    return np.where(busy, latency + np.maximum(up / bw_up, out / bw_out), 0.0)


_CALLER_BUG = "a plan-search bug in the code that priced the collective: please report it with the command line"


def _check(topology: TopologySpec, kind: Collective, n: np.ndarray, m: np.ndarray, g: np.ndarray) -> None:
    """Reject impossible inputs loudly: they are programming errors upstream, not slow collectives."""
    if np.any(n < 1) or np.any(n != np.round(n)):
        raise InputError("collective_time_s", "group_size", "must be a whole number >= 1", _CALLER_BUG)
    if np.any(g < 1) or np.any(g > n) or np.any(g != np.round(g)):
        raise InputError("collective_time_s", "ranks_per_domain", "must be a whole number in [1, group_size]",
                         _CALLER_BUG)
    if np.any(g > topology.scaleup_domain_gpus):
        raise InputError("collective_time_s", "ranks_per_domain",
                         f"exceeds the {topology.scaleup_domain_gpus}-GPU scale-up domain", _CALLER_BUG)
    if np.any(m < 0):
        raise InputError("collective_time_s", "message_bytes", "must be >= 0", _CALLER_BUG)
    if kind is Collective.SEND_RECV and np.any(n > 2):
        raise InputError("collective_time_s", "group_size", "send_recv is between 2 ranks: pass group_size=2", _CALLER_BUG)


# nccl-tests bus-bandwidth factors (doc/PERFORMANCE.md): busbw = algbw * factor(n).
def _bus_factor(kind: Collective, n: np.ndarray) -> np.ndarray:
    if kind is Collective.ALL_REDUCE:
        return 2.0 * (n - 1.0) / n
    if kind is Collective.SEND_RECV:
        return np.ones_like(n)
    return (n - 1.0) / n  # all-gather, reduce-scatter, all-to-all


def bus_bandwidth_GBps(kind: Collective | str, group_size, message_bytes, time_s) -> np.ndarray:
    """nccl-tests bus bandwidth in GB/s: ``message_bytes / time_s / 1e9 * factor``.

    factor = 2(n-1)/n for all-reduce, (n-1)/n for all-gather / reduce-scatter / all-to-all, 1 for
    send/recv (github.com/NVIDIA/nccl-tests, doc/PERFORMANCE.md). Zero time gives 0.
    """
    kind = _kind(kind)
    n, m, t = np.broadcast_arrays(np.asarray(group_size, dtype=np.float64),
                                  np.asarray(message_bytes, dtype=np.float64),
                                  np.asarray(time_s, dtype=np.float64))
    algbw = np.divide(m, t * _GB, out=np.zeros_like(m), where=t > 0)
    return algbw * _bus_factor(kind, n)
