"""The named hard rules of a serving plan, checked for many plans at once.

Each rule has a name and one sentence (as :mod:`optimizer.plan_rules` has for training), so the search,
``serve evaluate``'s ``why_not`` and the "nothing meets the SLO" advice speak one language. A rule is
checked on every instance kind a plan runs (prefill and decode; the same layout when aggregated).

Groups that leave the scale-up domain are not refused: a TP group or an attention-DP x EP group wider
than the NVLink domain is priced on the NIC by the step model (:mod:`hardware.collectives` places
``min(group, domain)`` ranks per domain), and :func:`nic_groups` says which plans that is.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from hardware.schema import ClusterSpec

from ..model_spec import ModelSpec
from .plan import KV_DTYPES, WEIGHT_PRECISIONS, InstanceArrays, ServingPlanArrays

SERVING_RULES: dict[str, str] = {
    "fits_cluster": "the plan's GPUs (every prefill and decode instance) fit in the cluster",
    "heads_divisible_by_tp": "attention heads divisible by tp, and KV heads divisible by tp or tp a multiple "
                             "of the KV heads (then each KV head is replicated on tp / n_kv ranks)",
    "experts_divisible_by_ep": "routed experts divisible by ep (dense models: ep = 1)",
    "moe_groups_consistent": "tp x attn_dp = moe_tp x ep: the MoE layers regroup the attention ranks",
    "pp_within_layers": "no more pipeline stages than layers",
    "precision_supported": "the GPU has tensor cores for the weight and KV precision: FP8 from Hopper / MI300 "
                           "(peak_tflops_fp8), FP4 from Blackwell (peak_tflops_fp4)",
    "weights_fit": "the weights of the heaviest stage fit in gpu_memory_utilization of the GPU with the CUDA "
                   "context, graph pool and communication buffers",
    "kv_fits_one_request": "the KV pool left after weights and workspace holds one max_model_len request",
    "kv_fits_batch": "the KV pool holds the running batch the load needs (max load: max_num_seqs requests of "
                     "the mean context)",
    "prefill_workspace_fits": "the activations of one chunked-prefill step (max_num_batched_tokens) fit beside "
                              "the weights",
    "ttft_slo_met": "time to first token at the SLO percentile within the target, queueing included",
    "tpot_slo_met": "time per output token at the SLO percentile within the target, prefill interference included",
}
"""Rule name -> what it requires."""

NIC_GROUPS: dict[str, str] = {
    "tp": "the tensor-parallel group spans more GPUs than one NVLink domain: its all-reduces are priced on the NIC",
    "attn_dp_x_ep": "the attention-DP x EP group spans more GPUs than one NVLink domain: dispatch and combine "
                    "are priced on the NIC",
}


def rule_sentence(name: str) -> str | None:
    """What serving rule ``name`` requires (None for an unknown name)."""
    return SERVING_RULES.get(name)


def _layout_broken(model: ModelSpec, cluster: ClusterSpec, instances: InstanceArrays) -> dict[str, np.ndarray]:
    tp = instances.tp
    heads, kv_heads = model.num_attention_heads, model.num_kv_heads
    if model.is_mla:  # every rank holds the latent; only the query/output heads split
        heads_ok = heads % tp == 0
    else:
        heads_ok = (heads % tp == 0) & ((kv_heads % tp == 0) | (tp % kv_heads == 0))
    if model.is_moe:
        experts_ok = model.num_experts % np.maximum(instances.ep, 1) == 0
    else:
        experts_ok = instances.ep == 1
    consistent = instances.tp * instances.attn_dp == instances.moe_tp * instances.ep
    gpu = cluster.gpu
    weight_name = np.asarray(WEIGHT_PRECISIONS)[instances.weight_precision]
    kv_name = np.asarray(KV_DTYPES)[instances.kv_dtype]
    fp8_needed = (weight_name == "fp8") | (kv_name == "fp8")
    fp4_needed = weight_name == "fp4"
    supported = ~(fp8_needed & (gpu.peak_tflops_fp8 is None)) & ~(fp4_needed & (gpu.peak_tflops_fp4 is None))
    return {"heads_divisible_by_tp": ~heads_ok, "experts_divisible_by_ep": ~experts_ok,
            "moe_groups_consistent": ~consistent, "pp_within_layers": instances.pp > model.num_layers,
            "precision_supported": ~supported}


def serving_violations(model: ModelSpec, cluster: ClusterSpec, plans: ServingPlanArrays,
                       memory_checks: Mapping[str, np.ndarray] | None = None,
                       load_checks: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """For each rule of :data:`SERVING_RULES`, a boolean array over plans: True where the plan breaks it.

    ``memory_checks``: ``weights_fit``, ``kv_fits_one_request``, ``prefill_workspace_fits`` as booleans
    (True = holds), already combined over the plan's instance kinds; ``load_checks``: ``kv_fits_batch``,
    ``ttft_slo_met``, ``tpot_slo_met`` (True = holds). Rules whose check is not given are reported unbroken
    (the layout rules alone, before pricing)."""
    prefill = _layout_broken(model, cluster, plans.prefill)
    decode = _layout_broken(model, cluster, plans.decode)
    broken = {name: prefill[name] | decode[name] for name in prefill}
    broken["fits_cluster"] = plans.num_gpus > cluster.num_gpus
    n = len(plans)
    for checks in (memory_checks or {}, load_checks or {}):
        for name, holds in checks.items():
            if name not in SERVING_RULES:
                raise KeyError(f"unknown serving rule {name!r}")
            broken[name] = ~np.broadcast_to(np.asarray(holds, dtype=bool), (n,))
    return {name: broken.get(name, np.zeros(n, dtype=bool)) for name in SERVING_RULES}


def nic_groups(cluster: ClusterSpec, plans: ServingPlanArrays) -> dict[str, np.ndarray]:
    """Which plans have a TP group or an attention-DP x EP group wider than the NVLink domain (priced on the
    NIC, not refused): :data:`NIC_GROUPS`."""
    domain = cluster.topology.domain_gpus
    out = {}
    for name, size in (("tp", lambda i: i.tp), ("attn_dp_x_ep", lambda i: i.tp * i.attn_dp)):
        over = size(plans.decode) > domain
        out[name] = over | (plans.disaggregated & (size(plans.prefill) > domain))
    return out


def feasible(violations: Mapping[str, np.ndarray]) -> np.ndarray:
    """Plans that break no rule."""
    masks = list(violations.values())
    return ~np.logical_or.reduce(masks) if masks else np.ones(0, dtype=bool)


def why_not(violations: Mapping[str, np.ndarray], index: int) -> list[str]:
    """'rule: sentence' for each rule plan ``index`` breaks (empty when it breaks none)."""
    return [f"{name}: {SERVING_RULES[name]}" for name, mask in violations.items() if bool(mask[index])]
