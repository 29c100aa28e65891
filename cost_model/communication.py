"""Communication of a plan: bytes each rank sends per dimension, and the time of each collective on the
links its group really spans (priced by :mod:`hardware.collectives`, placed by :mod:`hardware.placement`).

Volumes are "bytes sent per rank" of the ring algorithms (an all-reduce of M bytes over n ranks sends
2M(n-1)/n; all-gather and reduce-scatter M(n-1)/n; all-to-all M(n-1)/n; send/recv M). In elements and
summed over one layer's forward and backward, this is the seeds' 8bsh(t-1)/t for tensor parallelism
(4 all-reduces of b*s*h) and their DP / FSDP / MP table.

Per dimension (Megatron-LM, Narayanan et al. 2021 and Korthikanti et al. 2022):

* TP: 2 all-reduces of the b*s*h activation per layer forward (after attention, after the MLP) and 2
  backward; with sequence parallelism each becomes an all-gather + reduce-scatter of the same buffer.
  A MoE layer's MLP needs the pair only when experts are tensor-parallel (etp > 1) or there are
  shared experts (TP-split like a dense MLP). Recomputed layers repeat their forward collectives.
* CP: ring attention (``p2p``) sends the local K and V chunk cp-1 times forward; backward sends K, V and
  dK, dV (twice forward). ``a2a`` (Ulysses) does 4 all-to-alls of the q/k/v/output activations each way.
* EP: a dispatch and a combine all-to-all per MoE layer forward, two more backward, of one row per
  token-expert pair (Megatron's ``alltoall`` dispatcher) or per token and destination rank (the flex
  dispatcher, :func:`cost_model.activations.dispatched_rows_per_rank`). Across scale-up domains the
  flex dispatcher's DeepEP / HybridEP kernels are hierarchical: a token crosses the network once per
  destination *domain* and is forwarded over NVLink to the ranks there (:func:`ep_network_rows_per_rank`),
  so the network carries tokens x remote domains rows, not tokens x remote ranks.
* PP: the b*s*h activation (split by SP) to the next stage forward, its gradient back, per micro-batch
  per virtual chunk.
* DP: ZeRO-0 all-reduces the gradients once per step; ZeRO-1 (Megatron distributed optimizer)
  reduce-scatters them and all-gathers the updated bf16 weights; ZeRO-2 reduce-scatters every
  micro-batch (the gradient buffer holds only the shard) and all-gathers weights once; ZeRO-3 (FSDP)
  all-gathers weights forward and again backward and reduce-scatters gradients, every micro-batch.
  Dense parameters reduce over dp x cp, experts over the expert-data-parallel ranks. Hybrid sharding
  (HSDP, ``dp_replicate`` > 1) runs the reduce-scatter and all-gathers in the shard group (1/dp_replicate
  of those ranks, the inner ones: inside a node or NVL72 domain where it fits) and all-reduces each
  gradient shard across the dp_replicate copies.

How a stack issues the ZeRO-3 collectives matters at scale, where each collective pays the ring's latency
over all its ranks (:mod:`hardware.collectives`): FSDP and Megatron-FSDP gather a layer's weights as one
flat buffer (one all-gather, one reduce-scatter per layer); DeepSpeed ZeRO-3 of 2021 gathers every
parameter tensor above its persistence threshold on its own through torch.distributed's list all-gather
(:attr:`cost_model.stacks.StackSpec.per_tensor_collectives`), the 4 weight matrices of a GPT layer, each
followed by one host-issued copy per rank; under full recompute it gathers them again for the recomputed
forward; and it all-reduces the gradients in flattened buckets instead of reduce-scattering them
(:attr:`cost_model.stacks.StackSpec.zero3_gradient_all_reduce`; :mod:`cost_model.deepspeed_zero3`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hardware.collectives import Collective, CollectiveCost, two_level_exchange_time_s
from hardware.placement import GroupPlacement, dense_placement, expert_placement, hybrid_placement
from hardware.schema import ClusterSpec

from .activations import ACT_BYTES, dispatched_rows_per_rank, distinct_destination_ranks, routed_pairs_per_rank
from .deepspeed_zero3 import (GatherPlan, gather_passes, gather_plan, gradient_buckets_per_layer,
                              layer_parameter_tensors)
from .model_spec import ModelSpec
from .options import CostOptions
from .plan import PlanArrays
from .stacks import stack_spec
from .training_spec import TrainingSpec

AR, AG, RS, A2A, P2P = (Collective.ALL_REDUCE, Collective.ALL_GATHER, Collective.REDUCE_SCATTER,
                        Collective.ALL_TO_ALL, Collective.SEND_RECV)


def sent_bytes(kind: Collective, n, message_bytes) -> np.ndarray:
    """Bytes one rank sends in the ring/pairwise algorithm (nccl-tests size conventions)."""
    n = np.asarray(n, dtype=float)
    m = np.asarray(message_bytes, dtype=float)
    share = np.where(n > 1, (n - 1) / np.maximum(n, 1), 0.0)
    if kind == AR:
        return 2 * m * share
    if kind in (AG, RS, A2A):
        return m * share
    return np.where(n > 1, m, 0.0)


GROUPS = ("tp", "cp", "pp", "dp_cp", "ep", "edp", "dp_shard", "dp_replica", "edp_shard", "edp_replica")

def parameter_tensors_per_layer(model: ModelSpec) -> int:
    """Parameter tensors of one transformer layer, each its own collective under a per-tensor stack:
    two norms (weight, plus bias for LayerNorm), the fused QKV, output, first (fused gate/up) and second
    MLP projections, and their biases (``qkv_bias``, ``linear_bias``). A GPT-3 layer has 12."""
    norms = 2 * (2 if model.norm_type == "layernorm" else 1)
    biases = int(model.qkv_bias or model.linear_bias) + 3 * int(model.linear_bias)
    return norms + 4 + biases


@dataclass
class Placements:
    """How each parallel group lies on the machine, for the distinct layouts among the plans.

    Many plans share a layout (they differ in schedule and knobs), so groups are placed and their
    collectives' coefficients computed once per distinct layout; ``layout_index`` maps plans to them.
    """

    tp: GroupPlacement
    cp: GroupPlacement
    pp: GroupPlacement
    dp_cp: GroupPlacement
    ep: GroupPlacement
    edp: GroupPlacement
    layout_index: np.ndarray
    dp_shard: GroupPlacement | None = None
    """Hybrid sharding: the dp x cp / dp_replicate ranks that shard the dense states (``dp_cp`` without it)."""
    dp_replica: GroupPlacement | None = None
    """Hybrid sharding: the dp_replicate ranks that hold the same dense shard (size 1 without it)."""
    edp_shard: GroupPlacement | None = None
    """The same for the experts: edp / dp_replicate ranks."""
    edp_replica: GroupPlacement | None = None

    def __post_init__(self) -> None:
        # Without hybrid sharding the shard group is the whole data-parallel group and there is no replica.
        single = GroupPlacement(size=np.ones_like(self.dp_cp.size), stride=np.ones_like(self.dp_cp.size),
                                ranks_per_domain=np.ones_like(self.dp_cp.size),
                                domains_spanned=np.ones_like(self.dp_cp.size))
        self.dp_shard = self.dp_shard or self.dp_cp
        self.edp_shard = self.edp_shard or self.edp
        self.dp_replica = self.dp_replica or single
        self.edp_replica = self.edp_replica or single

    def expanded(self, name: str) -> GroupPlacement:
        """The group of every plan (not only of the distinct layouts)."""
        group = getattr(self, name)
        i = self.layout_index
        return GroupPlacement(size=group.size[i], stride=group.stride[i], ranks_per_domain=group.ranks_per_domain[i],
                              domains_spanned=group.domains_spanned[i])


def _distinct_rows(columns: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Distinct rows of integer columns and each row's index among them.

    The columns are packed into one mixed-radix integer key, which np.unique sorts 50x faster than
    rows (``axis=0``); wide values that would overflow the key fall back to the row sort.
    """
    radices = [int(c.max()) + 1 if len(c) else 1 for c in columns]
    if np.prod([float(r) for r in radices]) < 2.0**62:
        key = np.zeros(len(columns[0]), dtype=np.int64)
        for column, radix in zip(columns, radices):
            key = key * radix + column
        _, first, index = np.unique(key, return_index=True, return_inverse=True)
        return [c[first] for c in columns], np.asarray(index).reshape(-1)
    rows, index = np.unique(np.stack(columns, axis=1), axis=0, return_inverse=True)
    return list(rows.T), np.asarray(index).reshape(-1)


def place(cluster: ClusterSpec, plans: PlanArrays, options: CostOptions) -> Placements:
    domain = cluster.topology.domain_gpus
    distinct, index = _distinct_rows([plans.tp, plans.cp, plans.dp, plans.pp, plans.etp, plans.ep, plans.dp_replicate])
    tp, cp, dp, pp, etp, ep, replicas = distinct
    dense = dense_placement(tp, cp, dp, pp, domain_gpus=domain, order=options.rank_order)
    edp = (tp * cp * dp) // (etp * ep)
    expert = expert_placement(etp, ep, edp, pp, domain_gpus=domain, order=options.rank_order)
    hybrid = {}
    if (replicas > 1).any():
        # HSDP: the shard groups are the inner part of the data-parallel ranks (hardware.placement.hybrid_placement).
        # A plan whose replicas do not divide its groups is refused by the plan rules; it is placed unsplit.
        ok = (dp % replicas == 0) & (edp % replicas == 0)
        r = np.where(ok, replicas, 1)
        dense_hybrid = hybrid_placement(tp, cp, dp, pp, r, domain_gpus=domain, order=options.rank_order)
        expert_hybrid = hybrid_placement(etp, 1, edp, pp, r, ep=ep, domain_gpus=domain, order=options.rank_order)
        hybrid = dict(dp_shard=dense_hybrid["shard"], dp_replica=dense_hybrid["replicate"],
                      edp_shard=expert_hybrid["shard"], edp_replica=expert_hybrid["replicate"])
    return Placements(tp=dense["tp"], cp=dense["cp"], pp=dense["pp"], dp_cp=dense["dp_cp"], ep=expert["ep"],
                      edp=expert["edp"], layout_index=np.asarray(index).reshape(-1), **hybrid)


class CommPricer:
    """Prices collectives on the plan's groups. The alpha-beta coefficients of each (kind, group) are
    computed once and reused for every message size priced on that group."""

    def __init__(self, cluster: ClusterSpec, placements: Placements):
        self.topology = cluster.topology
        self.placements = placements
        self._costs: dict[tuple[Collective, int], CollectiveCost] = {}

    def _cost(self, kind: Collective, group: GroupPlacement) -> CollectiveCost:
        key = (kind, id(group))
        if key not in self._costs:
            size, per_domain = group.size, group.ranks_per_domain
            if kind == P2P:
                # Ring and pipeline neighbours: when the group spans several domains, some hop crosses
                # the network and every step of the ring (or stage of the pipeline) waits for it.
                size = np.where(group.size > 1, 2, 1)
                per_domain = np.where(group.domains_spanned <= 1, 2, 1)
            distinct = CollectiveCost(self.topology, kind, size, per_domain)
            self._costs[key] = distinct.take(self.placements.layout_index)
        return self._costs[key]

    def time(self, kind: Collective, group: GroupPlacement, message_bytes) -> np.ndarray:
        return self._cost(kind, group).time_s(message_bytes)

    def fill_latency(self, kind: Collective, group: GroupPlacement) -> np.ndarray:
        """Per plan: the ring latency of one collective on ``group``, whatever its message
        (:meth:`hardware.collectives.CollectiveCost.fill_latency_s`)."""
        return self._cost(kind, group).fill_latency_s()

    def sent(self, kind: Collective, group: GroupPlacement, message_bytes) -> np.ndarray:
        m = np.asarray(message_bytes, dtype=float)
        size = group.size[self.placements.layout_index]
        size = size[:, None] if m.ndim == 2 else size
        if kind == P2P:
            size = np.where(size > 1, 2, 1)
        return sent_bytes(kind, size, m)


HIERARCHICAL_DISPATCHERS = ("deepep", "hybridep")
"""Flex-dispatcher backends whose normal kernels forward across domains through one RDMA send per
destination domain (DeepEP README "normal kernels"; HybridEP "Hierarchical Communication Design")."""


def ep_network_rows_per_rank(model: ModelSpec, training: TrainingSpec, plans: PlanArrays,
                             domains_spanned: np.ndarray) -> np.ndarray:
    """Token rows one rank sends over the network per dispatch under a hierarchical dispatcher: each
    token goes once to every *other* domain holding one of its k experts. With uniform routing over E
    experts spread over the d domains of the EP group, a given domain holds none of them with
    probability q = C(E - E/d, k) / C(E, k), so a token reaches d (1 - q) domains in expectation, its own
    with probability 1 - q: (d - 1)(1 - q) remote domains (:func:`distinct_destination_ranks` with d
    groups). DeepSeek-V3 on 4 nodes (E 256, k 8): 2.7 remote nodes per token instead of 6 remote
    token-expert pairs."""
    tokens = routed_pairs_per_rank(model, training, plans) / model.experts_per_token / plans.etp
    d = np.asarray(domains_spanned, dtype=float)
    reached = distinct_destination_ranks(model.num_experts, model.experts_per_token, d.astype(int))
    own = np.where(d > 1, reached / np.maximum(d, 1.0), 1.0)  # 1 - q
    return tokens * np.where(d > 1, reached - own, 0.0)


@dataclass
class LayerComm:
    """Per micro-batch, per layer of each kind: seconds and bytes sent, forward and backward."""

    tp_fwd_s: np.ndarray
    tp_bwd_s: np.ndarray
    tp_bytes: np.ndarray          # forward + backward
    cp_fwd_s: np.ndarray
    cp_bwd_s: np.ndarray
    cp_bytes: np.ndarray
    ep_fwd_s: np.ndarray
    ep_bwd_s: np.ndarray
    ep_bytes: np.ndarray
    ep_dispatch_fwd_s: np.ndarray  # the forward dispatch's part of ep_fwd_s (the rest is the combine)
    tp_fwd_bytes: np.ndarray      # the forward part, which recomputed layers send again
    cp_fwd_bytes: np.ndarray
    ep_fwd_bytes: np.ndarray


def _tp_pair(pricer: CommPricer, plans: PlanArrays, activation_bytes: np.ndarray):
    """One TP synchronisation point: all-reduce, or all-gather + reduce-scatter with SP."""
    group = pricer.placements.tp
    sp = plans.sequence_parallel
    t_ar = pricer.time(AR, group, activation_bytes)
    t_sp = pricer.time(AG, group, activation_bytes) + pricer.time(RS, group, activation_bytes)
    b_ar = pricer.sent(AR, group, activation_bytes)
    b_sp = pricer.sent(AG, group, activation_bytes) + pricer.sent(RS, group, activation_bytes)
    return np.where(sp, t_sp, t_ar), np.where(sp, b_sp, b_ar)


def layer_communication(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, pricer: CommPricer,
                        options: CostOptions) -> tuple[LayerComm, LayerComm]:
    """Communication of one dense layer and one MoE layer per micro-batch."""
    tokens = plans.micro_batch * training.seq_length / plans.cp
    activation = stage_activation_bytes(model, training, plans)
    pair_s, pair_b = _tp_pair(pricer, plans, activation)

    # Context parallelism.
    t = plans.tp.astype(float)
    kv_heads = np.maximum((model.num_attention_heads if model.is_mla else model.num_kv_heads) / t, 1.0)
    q_heads = model.num_attention_heads / t
    cp_group = pricer.placements.cp
    if options.cp_comm_type == "p2p":
        kv_chunk = ACT_BYTES * tokens * kv_heads * (model.q_head_dim + model.v_dim)
        steps = plans.cp - 1
        cp_fwd = steps * pricer.time(P2P, cp_group, kv_chunk)
        cp_bwd = 2 * cp_fwd
        cp_bytes = 3 * steps * kv_chunk
        cp_fwd_bytes = steps * kv_chunk
    else:
        widths = (q_heads * model.q_head_dim, kv_heads * model.q_head_dim, kv_heads * model.v_dim,
                  q_heads * model.v_dim)
        cp_fwd = sum(pricer.time(A2A, cp_group, ACT_BYTES * tokens * w) for w in widths)
        cp_bwd = cp_fwd
        cp_fwd_bytes = sum(pricer.sent(A2A, cp_group, ACT_BYTES * tokens * w) for w in widths)
        cp_bytes = 2 * cp_fwd_bytes

    # Sequence parallelism saves the sharded input of each column-parallel GEMM and all-gathers it again
    # in backward for the weight gradient (Megatron-Core LinearWithGradAccumulationAndAsyncCommunication
    # .backward and Transformer Engine's LayerNormLinear with sequence_parallel; Korthikanti et al. 2022
    # section 4.2.2; Calculon's seq_par_ag_redo): one more all-gather per synchronisation pair.
    regather_s = np.where(plans.sequence_parallel, pricer.time(AG, pricer.placements.tp, activation), 0.0)
    regather_b = np.where(plans.sequence_parallel, pricer.sent(AG, pricer.placements.tp, activation), 0.0)
    zero = np.zeros(len(plans))
    dense = LayerComm(tp_fwd_s=2 * pair_s, tp_bwd_s=2 * (pair_s + regather_s), tp_bytes=4 * pair_b + 2 * regather_b,
                      cp_fwd_s=cp_fwd,
                      cp_bwd_s=cp_bwd, cp_bytes=cp_bytes, ep_fwd_s=zero, ep_bwd_s=zero, ep_bytes=zero,
                      ep_dispatch_fwd_s=zero, tp_fwd_bytes=2 * pair_b, cp_fwd_bytes=cp_fwd_bytes, ep_fwd_bytes=zero)
    if not model.is_moe:
        return dense, dense

    mlp_pairs = np.where((plans.etp > 1) | bool(model.shared_expert_ffn_hidden_size), 1.0, 0.0)
    rows = dispatched_rows_per_rank(model, training, plans) / plans.etp  # token rows a rank sends out
    dispatch_row_bytes = (1 if training.moe_dispatch_fp8 else ACT_BYTES) * model.hidden_size
    combine_row_bytes = ACT_BYTES * model.hidden_size
    dispatch_bytes = dispatch_row_bytes * rows
    combine_bytes = combine_row_bytes * rows
    ep_group = pricer.placements.ep
    dispatch_fwd = pricer.time(A2A, ep_group, dispatch_bytes)
    combine = pricer.time(A2A, ep_group, combine_bytes)
    if training.moe_token_dispatcher in HIERARCHICAL_DISPATCHERS:
        # Across domains: network rows once per remote domain, every token-rank row over NVLink once.
        placed = pricer.placements.expanded("ep")
        network_rows = ep_network_rows_per_rank(model, training, plans, placed.domains_spanned)
        nvlink_rows = rows * (placed.size - 1) / np.maximum(placed.size, 1)

        def two_level(bytes_per_row):
            return two_level_exchange_time_s(pricer.topology, placed.ranks_per_domain, placed.domains_spanned,
                                             nvlink_rows * bytes_per_row, network_rows * bytes_per_row)

        across = placed.domains_spanned > 1
        dispatch_fwd = np.where(across, two_level(dispatch_row_bytes), dispatch_fwd)
        combine = np.where(across, two_level(combine_row_bytes), combine)
    ep_fwd = dispatch_fwd + combine
    ep_bwd = 2 * combine
    ep_fwd_bytes = pricer.sent(A2A, ep_group, dispatch_bytes) + pricer.sent(A2A, ep_group, combine_bytes)
    ep_bytes = ep_fwd_bytes + 2 * pricer.sent(A2A, ep_group, combine_bytes)
    moe = LayerComm(tp_fwd_s=(1 + mlp_pairs) * pair_s, tp_bwd_s=(1 + mlp_pairs) * (pair_s + regather_s),
                    tp_bytes=(1 + mlp_pairs) * (2 * pair_b + regather_b), cp_fwd_s=cp_fwd, cp_bwd_s=cp_bwd, cp_bytes=cp_bytes,
                    ep_fwd_s=ep_fwd, ep_bwd_s=ep_bwd, ep_bytes=ep_bytes, ep_dispatch_fwd_s=dispatch_fwd,
                    tp_fwd_bytes=(1 + mlp_pairs) * pair_b, cp_fwd_bytes=cp_fwd_bytes, ep_fwd_bytes=ep_fwd_bytes)
    return dense, moe


def stage_activation_bytes(model: ModelSpec, training: TrainingSpec, plans: PlanArrays) -> np.ndarray:
    """Bytes of one stage's whole output activation (or its gradient) for one micro-batch: tokens x hidden."""
    return ACT_BYTES * plans.micro_batch * training.seq_length / plans.cp * model.hidden_size


def pipeline_p2p(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, pricer: CommPricer):
    """Seconds and bytes of one activation (or gradient) transfer between neighbouring stages."""
    # Sequence parallelism leaves each TP rank 1/tp of the activation to send; so does Megatron-LM's
    # scatter/gather optimisation without it, whose receiver then all-gathers the 1/tp pieces over the
    # tensor-parallel group before the next compute: megatron/p2p_communication.py ``_communicate``
    # (NVIDIA/Megatron-LM 6985e58938, Aug 2021, and d898a8991d, May 2022) calls
    # ``mpu.gather_split_1d_tensor`` on every received tensor after ``torch.cuda.synchronize()``, unless
    # ``args.sequence_parallel`` (the sequence shard is what the next stage runs on: no gather).
    gathered = stack_spec(training.stack).pipeline_scatter_gather & ~np.asarray(plans.sequence_parallel, bool)
    scattered = plans.sequence_parallel | gathered
    sp_div = np.where(scattered, plans.tp, 1)
    whole = stage_activation_bytes(model, training, plans)
    message = np.where(plans.pp > 1, whole / sp_div, 0.0)
    regather = np.where(gathered & (plans.pp > 1) & (plans.tp > 1),
                        pricer.time(AG, pricer.placements.tp, whole), 0.0)
    return (pricer.time(P2P, pricer.placements.pp, message) + regather,
            pricer.sent(P2P, pricer.placements.pp, message))


@dataclass
class DataParallelComm:
    """Per stage (plans, 3): seconds and bytes of the data-parallel traffic."""

    grad_sync_s: np.ndarray
    """Once per step: all-reduce (ZeRO-0) or reduce-scatter (ZeRO-1) of the gradients."""
    param_gather_s: np.ndarray
    """Once per step: all-gather of updated weights (ZeRO-1/2)."""
    per_microbatch_fwd_s: np.ndarray
    """Every micro-batch, during the forward pass: ZeRO-3 weight all-gather."""
    per_microbatch_bwd_s: np.ndarray
    """Every micro-batch, during the backward pass: ZeRO-3 all-gather (again for a recomputed forward under
    DeepSpeed) + reduce-scatter (or DeepSpeed's all-reduce), ZeRO-2 reduce-scatter."""
    bytes_per_step: np.ndarray
    per_microbatch_fill_s: np.ndarray | float = 0.0
    """Every micro-batch: the ring latency alone of the per-layer collectives above (ZeRO-3: two
    all-gathers and a reduce-scatter per layer, ZeRO-2: a reduce-scatter, with HSDP's all-reduce of the
    shard), the part a stack with ``collective_fill_exposed`` cannot hide (:mod:`cost_model.evaluate`)."""
    per_step_fill_s: np.ndarray | float = 0.0
    """Once per step: the ring latency alone of ZeRO-2's per-layer weight all-gathers."""
    gather_plan: GatherPlan | None = None
    """What DeepSpeed's ZeRO-3 coordinator gathers of a layer, where the stack gathers per tensor and the
    layer's tensors are listed (:func:`cost_model.deepspeed_zero3.gather_plan`); None otherwise."""


def data_parallel_communication(training: TrainingSpec, plans: PlanArrays, pricer: CommPricer,
                                dense_params: np.ndarray, expert_params: np.ndarray, layers: np.ndarray,
                                num_microbatches: np.ndarray, bucket_elements: float,
                                model: ModelSpec | None = None, copy_kernel_s: float = 0.0,
                                gather_bytes_per_param: np.ndarray | float = 2.0,
                                recomputed_share: np.ndarray | float = 0.0) -> DataParallelComm:
    """Data-parallel traffic per stage. Collectives run per bucket (ZeRO-0/1/2: Megatron's 40M-element
    buckets) or per layer (ZeRO-3 gathers and reduces layer by layer, and so does ZeRO-2 under an
    FSDP-style stack, whose flat parameters are the wrapped layers: PyTorch FSDP ``SHARD_GRAD_OP``), so
    each pays its latency.

    Under a per-tensor stack (:attr:`cost_model.stacks.StackSpec.per_tensor_collectives`) ZeRO-3 runs
    :func:`parameter_tensors_per_layer` collectives per layer, and each also runs one copy kernel per rank
    of the group, ``copy_kernel_s`` each (the fixed cost of a small kernel: the pieces are M/n bytes).

    Hybrid sharding (``plans.dp_replicate`` > 1, ZeRO >= 1): the reduce-scatter and the all-gathers run in
    the shard group (:attr:`Placements.dp_shard`), and each rank's reduced gradient shard, 1/shard of
    the chunk, is then all-reduced across the replicas (:attr:`Placements.dp_replica`): Megatron-Core's
    partial distributed optimizer reduce-scatters in the intra-instance group and all-reduces the shard
    in the inter-instance group (``param_and_grad_buffer._ParamAndGradBucketGroup.start_grad_sync``);
    FSDP2's HSDP reduce-scatters over ``dp_shard`` and all-reduces over ``dp_replicate`` in each
    backward (``torch.distributed.fsdp`` ``foreach_reduce``). ZeRO-1 does it once per step; ZeRO-2/3, whose
    gradient buffer holds only the shard, with every micro-batch's reduce-scatter.

    ``gather_bytes_per_param`` (per plan): bytes of a gathered weight, 2 for bf16, 1 where the weights
    themselves are per-tensor FP8 (``fp8_param_gather``, :func:`cost_model.memory.gathered_weight_bytes`).

    DeepSpeed's ZeRO-3 coordinator (per-tensor stacks, :mod:`cost_model.deepspeed_zero3`) gathers only
    the tensors above its persistence threshold, one collective each, and for the ``recomputed_share``
    of the layers (plans, 3; :func:`cost_model.stages.recomputed_layer_share`) gathers them once more
    for the recomputed forward, the backward then re-gathering all but the layer's last tensor, which
    stayed gathered. A stack with ``zero3_gradient_all_reduce`` all-reduces the gradients over the whole
    group, one flattened bucket at a time (:func:`cost_model.deepspeed_zero3.gradient_buckets_per_layer`),
    instead of reduce-scattering them."""
    zero = plans.zero_stage[:, None]
    placements = pricer.placements
    groups = ((placements.dp_cp, placements.dp_shard, placements.dp_replica, dense_params),
              (placements.edp, placements.edp_shard, placements.edp_replica, expert_params))
    shape = dense_params.shape
    grad_sync = np.zeros(shape)
    gather = np.zeros(shape)
    fwd = np.zeros(shape)
    bwd = np.zeros(shape)
    sent = np.zeros(shape)
    m = num_microbatches[:, None].astype(float)
    gather_bytes = np.asarray(gather_bytes_per_param, dtype=float)
    gather_bytes = gather_bytes[:, None] if gather_bytes.ndim == 1 else gather_bytes
    stack = stack_spec(training.stack)
    per_tensor = stack.per_tensor_collectives and model is not None
    layer_count = np.maximum(layers, 1.0)
    per_layer = layer_count * (parameter_tensors_per_layer(model) if per_tensor else 1)
    # DeepSpeed's coordinator: the share of the bytes it gathers (persistent tensors stay whole on every
    # rank) and of those the backward finds still gathered after a recomputed forward.
    coordinator = gather_plan(model, plans.tp) if per_tensor else None
    gathered_share, kept_share = 1.0, 0.0
    regathered_share = recomputed_share if per_tensor else 0.0
    if coordinator is not None:
        gathered_share, kept_share = coordinator.gathered_share[:, None], coordinator.kept_share[:, None]
        per_layer = layer_count * coordinator.collectives[:, None]
    # Gradient all-reduces per stage: DeepSpeed's buckets (one a layer where its tensors are not listed),
    # walked once per distinct tp.
    bucket_rate = 1.0
    if coordinator is not None and stack.zero3_gradient_all_reduce:
        tp_values, tp_index = np.unique(plans.tp, return_inverse=True)
        bucket_rate = gradient_buckets_per_layer(layer_parameter_tensors(model, tp_values))[tp_index][:, None]
    all_reduce_chunks = np.maximum(1.0, np.round(layer_count * bucket_rate))
    # FSDP-style stacks shard by wrapped layer whatever the stage: ZeRO-2 (FSDP SHARD_GRAD_OP) reduce-scatters
    # and gathers one flat parameter per layer, like ZeRO-3, not Megatron's 40M-element buckets.
    layer_units = stack.fsdp_prefetch and not per_tensor
    fill_mb = np.zeros(shape)
    fill_step = np.zeros(shape)
    for whole, shard, replica, params in groups:
        if not params.any():  # no routed experts in a dense model: nothing to reduce over that group
            continue
        buckets = np.maximum(1.0, np.ceil(params / bucket_elements))
        chunks = np.where((zero >= 3) | ((zero == 2) & layer_units), per_layer, buckets)
        ranks = shard.size[placements.layout_index][:, None].astype(float)
        copies = np.where((zero >= 3) & (ranks > 1), chunks * ranks * copy_kernel_s, 0.0) if per_tensor else 0.0

        def priced(kind, group, message):
            return chunks * pricer.time(kind, group, message / chunks), pricer.sent(kind, group, message)

        ar_s, ar_b = priced(AR, whole, params * training.grad_bytes)
        rs_s, rs_b = priced(RS, shard, params * training.grad_bytes)
        ag_s, ag_b = priced(AG, shard, params * gather_bytes)
        # HSDP: the rank's gradient shard across the replicas (nothing where dp_replicate is 1).
        rep_s, rep_b = priced(AR, replica, params * training.grad_bytes / ranks)
        # ZeRO-3's gathers: under DeepSpeed's coordinator only the non-persistent tensors, one collective
        # and one copy kernel per rank each; a recomputed forward gathers the layer again, then the
        # backward all but its last tensor.
        ag3_s, ag3_b = priced(AG, shard, params * gathered_share * gather_bytes)
        ag3_s = ag3_s + copies
        if per_tensor:
            kept_s = layer_count * (pricer.time(AG, shard, params * gathered_share * kept_share * gather_bytes / layer_count)
                                    + np.where(ranks > 1, ranks * copy_kernel_s, 0.0))
        else:
            kept_s = 0.0
        bwd_ag3_s = ag3_s + regathered_share * (ag3_s - kept_s)
        bwd_ag3_b = ag3_b * (gather_passes(coordinator, regathered_share) - 1.0)
        # ZeRO-3's gradient reduction: a reduce-scatter (with list copies under a per-tensor stack), or
        # flattened buckets all-reduced over the whole group.
        if stack.zero3_gradient_all_reduce:
            rs3_s = all_reduce_chunks * pricer.time(AR, whole, params * training.grad_bytes / all_reduce_chunks)
            rs3_b = ar_b
        else:
            rs3_s, rs3_b = rs_s + copies, rs_b
        fill_ag = chunks * pricer.fill_latency(AG, shard)[:, None]
        fill_rs = chunks * (pricer.fill_latency(RS, shard) + pricer.fill_latency(AR, replica))[:, None]
        fill_mb += np.select([zero == 2, zero == 3], [fill_rs, 2 * fill_ag + fill_rs], 0.0)
        fill_step += np.where(zero == 2, fill_ag, 0.0)
        # ZeRO-1 under DeepSpeed all-reduces the whole gradient (StackSpec.zero1_gradient_all_reduce).
        zero1_s, zero1_b = (ar_s, ar_b) if stack.zero1_gradient_all_reduce else (rs_s + rep_s, rs_b + rep_b)
        grad_sync += np.select([zero == 0, zero == 1], [ar_s, zero1_s], 0.0)
        gather += np.where((zero == 1) | (zero == 2), ag_s, 0.0)
        fwd += np.where(zero == 3, ag3_s, 0.0)
        bwd += np.select([zero == 2, zero == 3], [rs_s + rep_s, bwd_ag3_s + rs3_s + rep_s], 0.0)
        sent += np.select([zero == 0, zero == 1, zero == 2, zero == 3],
                          [ar_b, zero1_b + ag_b, m * (rs_b + rep_b) + ag_b, m * (ag3_b + bwd_ag3_b + rs3_b + rep_b)])
    return DataParallelComm(grad_sync_s=grad_sync, param_gather_s=gather, per_microbatch_fwd_s=fwd,
                            per_microbatch_bwd_s=bwd, bytes_per_step=sent, per_microbatch_fill_s=fill_mb,
                            per_step_fill_s=fill_step, gather_plan=coordinator)
