"""The CP-SAT search must return exactly the plans an exhaustive enumeration finds, and the same best plan.

The brute force below is written independently of optimizer/: every integer tuple is tried in plain
Python loops and the rules of the issue are checked one by one as ordinary predicates. Memory and time
come from the same cost model (what is tested here is the search, not the cost model). A rule that is
too tight or too loose in the CP-SAT model or the vectorised plan rules makes the sets differ.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cost_model.evaluate import evaluate, predict_memory
from cost_model.model_loader import build_training, model_input_from_mapping
from cost_model.plan import FULL, NONE, SELECTIVE, PlanArrays, module_mask
from cost_model.memory import GIB
from hardware.loader import load_cluster
from optimizer.search import PARTIAL_RECOMPUTE_FRACTIONS, Scenario, search
from optimizer.search_options import SearchOptions

TINY_DENSE = {
    "name": "tiny-dense", "model_type": "llama", "num_hidden_layers": 6, "hidden_size": 2048,
    "intermediate_size": 5632, "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 32000,
    "hidden_act": "silu", "tie_word_embeddings": False,
}
TINY_MOE = {
    "name": "tiny-moe", "model_type": "mixtral", "num_hidden_layers": 4, "hidden_size": 1024,
    "intermediate_size": 2816, "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 32000,
    "num_local_experts": 8, "num_experts_per_tok": 2, "hidden_act": "silu", "tie_word_embeddings": False,
}


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def brute_force(spec, training, cluster, options):
    """Every plan that obeys the rules, as a set of tuples, with its plan columns."""
    L, a, kv = spec.num_layers, spec.num_attention_heads, spec.num_kv_heads
    E = spec.num_experts if spec.is_moe else 1
    N = cluster.num_gpus
    domain = cluster.topology.scaleup_domain_gpus
    gb, seq = training.global_batch_size, training.seq_length
    # Selective recompute: Megatron's modules that exist in the model, added one at a time from the
    # cheapest (core attention only matters without flash attention).
    present = ([] if training.flash_attention else ["core_attn"]) + ["layernorm"]
    present += (["moe_act"] if spec.is_moe else []) + (["mla_up_proj"] if spec.is_mla else [])
    present += (["mlp"] if spec.num_dense_layers else []) + (["moe"] if spec.is_moe else [])
    module_sets = [module_mask(present[:i + 1]) for i in range(len(present))]
    rows = []
    for tp in divisors(N):
        if tp > options.max_tp or domain % tp or a % tp or (kv % tp and tp % kv):
            continue
        for cp in divisors(N // tp):
            if cp > options.max_cp or (cp > 1 and seq % (2 * cp)):
                continue
            if cp > 1 and not training.flash_attention:  # Megatron's CP runs inside fused attention
                continue
            for pp in divisors(N // (tp * cp)):
                if pp > min(options.max_pp, L):
                    continue
                dp = N // (tp * cp * pp)
                for ep in divisors(E):
                    for etp in sorted({1, tp}):
                        if not spec.is_moe and (ep > 1 or etp > 1):
                            continue
                        if (tp * cp * dp) % (ep * etp):
                            continue
                        for vpp in range(1, options.max_vpp + 1):
                            k = math.ceil(L / pp)
                            deficit = pp * k - L
                            first, last = k - (deficit + 1) // 2, k - deficit // 2
                            even = L % (pp * vpp) == 0
                            # every chunk holds a layer, except that the first stage's first chunk may hold
                            # only the embedding and the last stage's last chunk only the loss (Megatron's
                            # account_for_embedding/loss_in_pipeline_split)
                            uneven = pp >= 2 and first >= vpp - 1 and last >= vpp - 1 and (k % vpp == 0 or pp <= 2)
                            if not (even or uneven):
                                continue
                            if vpp > 1 and pp == 1:
                                continue
                            for mbs in options.micro_batch_sizes:
                                if gb % (dp * mbs):
                                    continue
                                m = gb // (dp * mbs)
                                if vpp > 1 and m % pp:
                                    continue
                                for sp in (False, True):
                                    if sp and (tp == 1 or (seq // cp) % tp):
                                        continue
                                    if spec.is_moe and tp > 1 and not sp:
                                        continue
                                    for zero in (0, 1, 2, 3):
                                        if zero and dp * cp == 1:
                                            continue
                                        chunk = math.ceil(k / vpp)
                                        counts_seen = []
                                        recompute = [(NONE, -1, 0)]
                                        recompute += [(SELECTIVE, -1, mask) for mask in module_sets]
                                        for f in PARTIAL_RECOMPUTE_FRACTIONS:
                                            layers = math.ceil(f * chunk)
                                            if 1 <= layers < chunk and layers not in counts_seen:
                                                recompute.append((FULL, layers, 0))
                                            counts_seen.append(layers)
                                        recompute.append((FULL, -1, 0))
                                        # Hybrid sharding: shard groups of 1, 2 or 4 domains' worth of the dp x cp
                                        # ranks (tp-cp-ep-dp-pp order, tp inside a domain: domain / tp of them per
                                        # domain), copies dividing dp and the expert-data-parallel ranks, a shard
                                        # group of 2 or more; Megatron-FSDP's HSDP (ZeRO-2/3) has no MoE.
                                        copies = [1]
                                        per_domain = min(dp * cp, max(domain // tp, 1))
                                        for multiple in (1, 2, 4):
                                            shard = multiple * per_domain
                                            r = dp * cp // shard if (dp * cp) % shard == 0 else 0
                                            if (zero >= 1 and r > 1 and dp % r == 0 and ((tp * cp * dp) // (ep * etp)) % r == 0
                                                    and shard >= 2 and not (spec.is_moe and zero >= 2)):
                                                copies.append(r)
                                        for (mode, layers, mask), r in itertools.product(recompute, copies):
                                            rows.append(dict(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, etp=etp, vpp=vpp,
                                                             micro_batch=mbs, recompute=mode,
                                                             recompute_num_layers=layers, recompute_modules=mask,
                                                             sequence_parallel=sp, zero_stage=zero,
                                                             optimizer_offload=False, dp_replicate=r))
    plans = PlanArrays.from_records(rows)
    memory = predict_memory(spec, training, plans).peak_bytes
    fits = memory <= cluster.gpu.memory_gib * GIB * (1 - options.memory_headroom)
    return plans.take(np.flatnonzero(fits))


def as_set(plans: PlanArrays) -> set[tuple]:
    cols = plans.to_columns()
    names = sorted(cols)
    return {tuple(int(cols[n][i]) for n in names) for i in range(len(plans))}


CASES = [
    ("dense on 2 nodes", TINY_DENSE, "h100x16", {"seq_length": 4096, "global_batch_size": 32}),
    ("dense, small memory GPU binds", TINY_DENSE, "a100x16", {"seq_length": 8192, "global_batch_size": 64}),
    ("dense, unfused attention", TINY_DENSE, "h100x8", {"seq_length": 2048, "global_batch_size": 16,
                                                        "flash_attention": False}),
    ("moe on 2 nodes", TINY_MOE, "h100x16", {"seq_length": 2048, "global_batch_size": 32}),
]


@pytest.mark.parametrize("label,config,cluster_name,training", CASES, ids=[c[0] for c in CASES])
def test_search_equals_brute_force(label, config, cluster_name, training):
    spec = model_input_from_mapping(config).spec
    tr = build_training(training)
    cluster = load_cluster(cluster_name)
    if label.startswith("dense, small memory"):
        cluster = cluster.with_overrides({"gpu.memory_gib": 12.0})
    options = SearchOptions(top_k=5)
    result = search(Scenario(spec, tr, cluster, options), keep_feasible=True)
    expected = brute_force(spec, tr, cluster, options)
    assert len(expected) > 0
    assert as_set(result.feasible_plans) == as_set(expected)
    assert result.num_feasible == len(expected)

    # The best plan: time every feasible plan of the brute force and compare the winner.
    metrics = evaluate(spec, tr, cluster, expected)
    best = int(np.argmax(metrics.tokens_per_s))
    assert result.ranked.tokens_per_s[0] == pytest.approx(metrics.tokens_per_s[best], rel=1e-9)

    # Streamed in chunks of a few plan groups: the same feasible set and the same best plan.
    streamed = search(Scenario(spec, tr, cluster, options), keep_feasible=True, chunk_plans=100)
    assert as_set(streamed.feasible_plans) == as_set(expected)
    assert streamed.ranked.tokens_per_s[0] == pytest.approx(metrics.tokens_per_s[best], rel=1e-9)


def test_memory_binding_case_really_excludes_plans():
    """The small-memory case above only tests something if memory removes plans."""
    spec = model_input_from_mapping(TINY_DENSE).spec
    tr = build_training({"seq_length": 8192, "global_batch_size": 64})
    small = load_cluster("a100x16").with_overrides({"gpu.memory_gib": 12.0})
    large = load_cluster("a100x16")
    n_small = search(Scenario(spec, tr, small, SearchOptions())).num_feasible
    n_large = search(Scenario(spec, tr, large, SearchOptions())).num_feasible
    assert 0 < n_small < n_large
