"""Property tests (Hypothesis) over random valid models, clusters, training setups and plans.

Models are Hugging Face config mappings passed through the project's loader: dense (Llama, Qwen3,
GPT-2 with learned positions and biases, Gemma-3-style sliding windows, generic), mixture-of-experts
(Mixtral, Qwen2/3-MoE with sparse steps and MLP-only layers, DeepSeek-V3 with dense first layers and
shared experts, GPT-OSS) and multi-head latent attention, with MHA, GQA and MQA. Clusters are presets of
every GPU family at a few node counts (:data:`tests.strategies.CLUSTERS`). Plans obey every rule the
search enforces (:mod:`tests.strategies`).

Properties (issue #20, item 8):

* values finite and positive, MFU <= HFU, the FLOPs the kernels run at most the peak, the breakdowns add up (memory parts to the peak, time
  parts to the step; in PlanMetrics, the frame and the JSON records); evaluate's memory is the screen's;
* memory never rises with the ZeRO stage 0 -> 1 -> 2; ZeRO-3 (FSDP) shards the weights too but holds two
  gathered layers, so its model states never exceed ZeRO-2's and its total by at most those layers;
* memory never rises with more recompute (none, the selective ladder, partial full with more layers,
  full), nor with more selective modules (any set); step time never falls with more recompute;
* more data-parallel replicas (more GPUs at fixed tp, cp, pp, ep, etp) never raise any stage's weights,
  gradients or optimizer states, nor the peak;
* the search: its feasible set is exactly the candidates whose predicted peak is within
  (1 - headroom) x usable memory (``fits`` <=> memory <= limit), every returned plan obeys the rules
  (tp inside the scale-up domain, tp x pp x dp x cp = the GPUs used, heads divisible by tp, ...), the
  ranked plans are in objective order and fit when priced again;
* the same search gives identical output twice, and in fresh interpreters with other PYTHONHASHSEEDs.

Every test is derandomized (the same examples on every run, no example database), so CI is
deterministic; about 2,000 examples in all take some 25 s of CPU. For a deeper hunt, set
``PLAN_SEARCH_PROPERTY_SCALE=20`` (20 times the examples) and ``PLAN_SEARCH_PROPERTY_EXPLORE=1``
(fresh random examples each run).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from cost_model.evaluate import MEMORY_PARTS, TIME_PARTS, evaluate, peak_memory_bytes, predict_memory
from cost_model.flops import model_flops_per_step, recompute_flops_per_step
from cost_model.memory import GIB, WEIGHT_BYTES
from cost_model.plan import FULL, MODULE_BIT, NONE, SELECTIVE, PlanArrays
from cost_model.stages import recomputed_layer_share
from optimizer.layout_model import LayoutModel
from optimizer.plan_rules import available_modules, valid_mask
from optimizer.report import plan_records as report_records
from optimizer.search import (Scenario, candidate_groups, expand_recompute, search, selective_ladder)
from optimizer.ranking import objective_key
from optimizer.search_options import SearchOptions

from . import strategies as S

ROOT = Path(__file__).resolve().parents[1]


SCALE = float(os.environ.get("PLAN_SEARCH_PROPERTY_SCALE", "1"))
"""Multiplies every test's example count (a deeper hunt: ``PLAN_SEARCH_PROPERTY_SCALE=20``)."""
EXPLORE = os.environ.get("PLAN_SEARCH_PROPERTY_EXPLORE") == "1"
"""Fresh random examples on every run instead of the fixed derandomized ones: for hunting, never CI."""


def props(examples: int):
    """Deterministic settings: derandomized examples, no deadline (the first call imports and warms up)."""
    return settings(max_examples=max(1, round(examples * SCALE)), deadline=None, derandomize=not EXPLORE,
                    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                          HealthCheck.filter_too_much])


@pytest.fixture(autouse=True, scope="module")
def _examples_independent_of_loaded_modules():
    """Hypothesis (6.1xx) also draws values among the literals of the project modules loaded at the
    time (``hypothesis.internal.conjecture.providers._get_local_constants``), so the derandomized
    examples of a test would change with the tests that ran before it in the same process, and with any
    edit of any project module: a failure seen in the full suite would not come back when this file
    runs alone. Without those literals the examples depend on this file and tests/strategies.py only.
    (Internal API: where it is missing, Hypothesis runs as it is.)"""
    try:
        from hypothesis.internal.conjecture import providers
        original, empty, cache = providers._get_local_constants, providers.Constants(), providers.CONSTANTS_CACHE
        cache.cache.clear()
    except (ImportError, AttributeError):  # pragma: no cover - another Hypothesis
        yield
        return
    providers._get_local_constants = lambda: empty
    try:
        yield
    finally:
        providers._get_local_constants = original
        cache.cache.clear()


def _close(a, b, rel=1e-9):
    """Equal to a relative tolerance (sums of a dozen parts in another order differ in the last bits)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return bool(np.all(np.abs(a - b) <= rel * np.maximum(np.abs(a), np.abs(b))))


# ---- the cost model on random plans ------------------------------------------------------------


@st.composite
def priced(draw, max_plans: int = 4):
    """A scenario and up to ``max_plans`` valid plans of it."""
    d = draw(S.scenarios())
    options = S.layouts(d.model, d.training, d.cluster)
    assume(options)
    records = [draw(S.plan_records(d.model, d.training, d.cluster)) for _ in range(draw(st.integers(1, max_plans)))]
    return d, records


@props(300)
@given(priced())
def test_values_finite_and_positive_and_breakdowns_add_up(case):
    d, records = case
    plans = PlanArrays.from_records(records)
    assert valid_mask(d.model, d.training, plans, allow_uneven=True).all(), "the strategy drew a plan the rules refuse"
    m = evaluate(d.model, d.training, d.cluster, plans)

    # memory: finite, positive, the parts add up to the peak, and the peak is the most loaded stage
    assert np.all(np.isfinite(m.memory_bytes)) and np.all(m.memory_bytes > 0)
    for part in MEMORY_PARTS:
        assert np.all(np.isfinite(m.memory_parts_bytes[part])) and np.all(m.memory_parts_bytes[part] >= 0), part
    assert _close(sum(m.memory_parts_bytes[p] for p in MEMORY_PARTS), m.memory_bytes, 1e-12)
    by_stage = m.extras["memory_by_stage"].total
    exists = m.extras["stages"].exists
    assert _close(np.max(np.where(exists, by_stage, -np.inf), axis=1), m.memory_bytes, 1e-12)
    # what the search screens with is what evaluate reports
    np.testing.assert_array_equal(peak_memory_bytes(d.model, d.training, plans), m.memory_bytes)

    # time: finite, positive, the parts add up to the step
    assert np.all(np.isfinite(m.step_time_s)) and np.all(m.step_time_s > 0)
    for part in TIME_PARTS:
        assert np.all(np.isfinite(m.step_time_parts_s[part])) and np.all(m.step_time_parts_s[part] >= 0), part
    assert m.step_time_parts_s["compute"].min() > 0
    assert _close(sum(m.step_time_parts_s[p] for p in TIME_PARTS), m.step_time_s)

    # throughput and efficiency: positive, MFU at most HFU, and HFU below 1: both count a causal
    # model's attention with its causal half (cost_model.flops' convention), which is no more than the
    # FLOPs the kernels run, so the GPU is never busier than its peak.
    assert np.all(np.isfinite(m.tokens_per_s)) and np.all(m.tokens_per_s > 0)
    assert np.all(m.mfu > 0) and np.all(m.mfu <= m.hfu * (1 + 1e-12))
    assert np.all(m.tflops_per_gpu > 0)
    share = recomputed_layer_share(plans, m.extras["stages"])[np.arange(len(plans)), m.bottleneck_stage]
    executed = (model_flops_per_step(d.model, d.training, causal_attention_half=True)
                + recompute_flops_per_step(d.model, d.training, plans, share, causal_attention_half=True))
    assert np.all(m.hfu * executed / m.hardware_flops_per_step < 1)
    for dim, sent in m.comm_bytes_per_step.items():
        assert np.all(np.isfinite(sent)) and np.all(sent >= 0), dim
    if d.training.train_tokens:
        assert np.all(np.isfinite(m.time_to_train_s)) and np.all(m.time_to_train_s > 0)
        assert np.all(m.gpu_hours > 0)
        if d.cluster.economics.price_per_gpu_hour_usd is not None:
            assert np.all(np.isfinite(m.cost_usd)) and np.all(m.cost_usd > 0)

    # the same sums in what users read: the frame and the JSON records
    frame = m.to_frame()
    assert _close(frame[[f"memory_{p}_gib" for p in MEMORY_PARTS]].sum(axis=1), frame["memory_gib"], 1e-12)
    assert _close(frame[[f"time_{p}_s" for p in TIME_PARTS]].sum(axis=1), frame["step_time_s"], 1e-9)
    limit = float(np.median(m.memory_bytes))
    for i, record in enumerate(report_records(m, limit)):
        assert math.isclose(sum(record["memory_breakdown_gib"].values()), record["memory_gib"], rel_tol=1e-5, abs_tol=1e-5)
        assert math.isclose(sum(record["step_time_breakdown_s"].values()), record["step_time_s"], rel_tol=1e-5, abs_tol=1e-5)
        assert record["fits"] == bool(m.memory_bytes[i] <= limit)


def _variants(record: dict, **changes) -> list[dict]:
    """Copies of a plan record, one per value of the knob(s) given as lists."""
    (name, values), = changes.items()
    return [{**record, name: value} for value in values]


@props(300)
@given(st.data())
def test_memory_non_increasing_in_zero_stage(data):
    """ZeRO 0 -> 1 -> 2 never adds memory (the peak and every stage). ZeRO-3 shards the weights too
    but gathers a layer and prefetches the next (:mod:`cost_model.memory`): its model states never
    exceed ZeRO-2's, and its total exceeds ZeRO-2's by at most those two gathered layers."""
    d = data.draw(S.scenarios())
    assume(any(o[1] * o[3] > 1 for o in S.layouts(d.model, d.training, d.cluster)))
    record = data.draw(S.plan_records(d.model, d.training, d.cluster, need_dp=True))
    # One shard group: hybrid sharding is refused at ZeRO-0 (tests/test_hsdp.py holds its properties).
    plans = PlanArrays.from_records(_variants(record | {"dp_replicate": 1}, zero_stage=[0, 1, 2, 3]))
    mem = predict_memory(d.model, d.training, plans)
    b = mem.by_stage
    exists = mem.stages.exists[0]
    total = b.total[:, exists]
    states = (b.weights + b.gradients + b.optimizer)[:, exists]
    peak = mem.peak_bytes
    tol = 1e-9
    assert peak[1] <= peak[0] * (1 + tol) and peak[2] <= peak[1] * (1 + tol), peak
    assert np.all(total[1] <= total[0] * (1 + tol)) and np.all(total[2] <= total[1] * (1 + tol))
    assert np.all(np.diff(states, axis=0) <= states[:-1] * tol), states
    # activations do not depend on the ZeRO stage
    assert np.all(b.activations[:, exists] == b.activations[0, exists])
    gathered = 2 * WEIGHT_BYTES * mem.params.largest_layer[3, exists]
    assert np.all(total[3] <= total[2] + gathered * (1 + tol))


def _recompute_variants(model, training, record: dict) -> tuple[list[dict], list[int], list[int]]:
    """none, the selective ladder (each step adds a module), full of 1..chunk-1 layers, full of all.

    Returns the records and the positions of the ladder and of the partial options in them."""
    chunk = S.chunk_layers(model.num_layers, record["pp"], record["vpp"])
    base = {**record, "activation_offload_layers": 0, "recompute_num_layers": -1, "recompute_modules": 0}
    out = [{**base, "recompute": NONE}]
    ladder = []
    for mask in selective_ladder(model, training.flash_attention):
        ladder.append(len(out))
        out.append({**base, "recompute": SELECTIVE, "recompute_modules": mask})
    partial = []
    for layers in range(1, chunk):
        partial.append(len(out))
        out.append({**base, "recompute": FULL, "recompute_num_layers": layers})
    out.append({**base, "recompute": FULL})
    return out, ladder, partial


@props(300)
@given(st.data())
def test_memory_non_increasing_with_recompute(data):
    """none >= every selective set >= ... and every option >= full recompute of every layer; each step of
    the selective ladder and each extra layer of partial full recompute never adds memory. The search's
    memory screen relies on the two ends (:func:`optimizer.search.screen_memory`)."""
    d = data.draw(S.scenarios())
    assume(S.layouts(d.model, d.training, d.cluster))
    record = data.draw(S.plan_records(d.model, d.training, d.cluster))
    records, ladder, partial = _recompute_variants(d.model, d.training, record)
    plans = PlanArrays.from_records(records)
    mem = predict_memory(d.model, d.training, plans)
    exists = mem.stages.exists[0]
    total = mem.by_stage.total[:, exists]
    peak = mem.peak_bytes
    tol = 1 + 1e-9
    assert np.all(peak <= peak[0] * tol), "an option needs more memory than no recompute"
    assert np.all(peak[-1] <= peak * tol), "an option needs less memory than full recompute"
    assert np.all(total <= total[0] * tol) and np.all(total[-1] <= total * tol)
    for chain in (ladder, partial + [len(records) - 1]):
        if len(chain) > 1:
            steps = total[chain]
            assert np.all(steps[1:] <= steps[:-1] * tol), [records[i] for i in chain]


@props(300)
@given(st.data())
def test_more_selective_modules_never_need_more_memory(data):
    """Any set of Megatron --recompute-modules that the model has (not only the search's ladder): adding
    modules to it never adds memory; every set needs at most what no recompute needs and at least what
    full recompute of every layer needs.

    Not under FP8 without ``layernorm`` in the set: a checkpointed MLP or MoE block keeps its bf16 input
    where fc1 saved a 1-byte FP8 copy, which costs more than the block's internals save when the MLP is
    narrow on a rank (F/t < h/5 without sequence parallelism). That is what Megatron does, not a defect;
    the search's ladder always adds ``layernorm`` (which drops that input) before ``mlp`` and ``moe``."""
    d = data.draw(S.scenarios())
    assume(S.layouts(d.model, d.training, d.cluster))
    record = data.draw(S.plan_records(d.model, d.training, d.cluster))
    record = {**record, "activation_offload_layers": 0, "recompute_num_layers": -1}
    bits = [bit for bit in (1 << i for i in range(8)) if bit & available_modules(d.model)]
    subset = sum(b for b in bits if data.draw(st.booleans()))
    superset = subset | sum(b for b in bits if data.draw(st.booleans()))
    assume(subset)
    assume(d.training.precision != "fp8" or subset & MODULE_BIT["layernorm"])
    records = [{**record, "recompute": NONE, "recompute_modules": 0},
               {**record, "recompute": SELECTIVE, "recompute_modules": subset},
               {**record, "recompute": SELECTIVE, "recompute_modules": superset},
               {**record, "recompute": FULL, "recompute_modules": 0}]
    plans = PlanArrays.from_records(records)
    assert valid_mask(d.model, d.training, plans, allow_uneven=True).all()
    mem = predict_memory(d.model, d.training, plans)
    exists = mem.stages.exists[0]
    total = mem.by_stage.total[:, exists]
    tol = 1 + 1e-9
    assert np.all(np.diff(total, axis=0) <= np.abs(total[:-1]) * (tol - 1)), (subset, superset, total)


@props(200)
@given(st.data())
def test_step_time_never_falls_with_more_recompute(data):
    """Recompute only adds work: no recompute is the fastest option, full recompute of every layer the
    slowest, each step of the selective ladder and each extra layer of partial full recompute never
    faster. The search keeps only the least recompute that fits on this ground (optimizer/search.py)."""
    d = data.draw(S.scenarios())
    assume(S.layouts(d.model, d.training, d.cluster))
    record = data.draw(S.plan_records(d.model, d.training, d.cluster))
    records, ladder, partial = _recompute_variants(d.model, d.training, record)
    plans = PlanArrays.from_records(records)
    step = evaluate(d.model, d.training, d.cluster, plans).step_time_s
    tol = 1 + 1e-9
    assert np.all(step[0] <= step * tol), ("an option is faster than no recompute", step)
    assert np.all(step <= step[-1] * tol), ("an option is slower than full recompute", step)
    for chain in (ladder, partial + [len(records) - 1]):
        steps = step[chain]
        assert np.all(steps[:-1] <= steps[1:] * tol), ([records[i] for i in chain], steps)


@props(250)
@given(st.data())
def test_more_data_parallel_never_raises_model_states(data):
    """More GPUs as more data-parallel replicas (tp, cp, pp, ep, etp and every knob fixed) never raise
    the weights, gradients or optimizer states a rank holds, on any stage, nor the peak memory apart
    from NCCL's buffers: a group that grows past one rank (the data-parallel group from one replica to
    two, the expert-data-parallel group once tp x cp x dp exceeds etp x ep) gets a communicator, whose
    buffers are real device memory (NCCL ``src/init.cc`` defaults, 294 MiB)."""
    d = data.draw(S.scenarios())
    gb = d.training.global_batch_size
    options = S.layouts(d.model, d.training, d.cluster)
    assume(options)
    tp, cp, pp, _, ep, etp = data.draw(st.sampled_from(options))
    record = data.draw(S.plan_records(d.model, d.training, d.cluster, layout=(tp, cp, pp, _, ep, etp)))
    mb = record["micro_batch"]
    dps = [dp for dp in S._divisors(gb // mb)
           if (tp * cp * dp) % (ep * etp) == 0 and (record["zero_stage"] == 0 or dp * cp > 1)
           and (record["vpp"] == 1 or (gb // (dp * mb)) % pp == 0)]
    assume(len(dps) > 1)
    # One shard group, so that every dp is a valid plan (tests/test_hsdp.py holds hybrid sharding's properties).
    plans = PlanArrays.from_records(_variants(record | {"dp_replicate": 1}, dp=dps))
    assert valid_mask(d.model, d.training, plans, allow_uneven=True).all()
    mem = predict_memory(d.model, d.training, plans)
    exists = mem.stages.exists[0]
    tol = 1 + 1e-9
    for part in ("weights", "gradients", "optimizer"):
        values = getattr(mem.by_stage, part)[:, exists]
        assert np.all(values[1:] <= values[:-1] * tol), (part, dps, values)
    peak = mem.peak_stage
    buffers = np.take_along_axis(mem.by_stage.communicator_buffers, peak[:, None], axis=1)[:, 0]
    without_buffers = mem.peak_bytes - buffers
    assert np.all(without_buffers[1:] <= without_buffers[:-1] * tol), (dps, mem.peak_bytes, buffers)


# ---- the search ------------------------------------------------------------------------------

PLAUSIBLE_MEMORY_GIB = 1536
"""A GPU memory the cluster loader takes without a warning (hardware/bounds.py)."""

SMALL_CLUSTERS = ("h100x8", "h100x16", "h100x24", "a100x8", "mi300xx16", "gb200x8", "b200x16")


@st.composite
def search_cases(draw):
    # at most 8 layers and 24 GPUs: searches of a few hundredths of a second
    d = draw(S.scenarios(S.model_configs(max_layers=8), st.sampled_from(SMALL_CLUSTERS).map(S.cluster_named),
                         max_seq=8192))
    n, node = d.cluster.num_gpus, d.cluster.topology.gpus_per_node
    gpus = draw(st.sampled_from([(), (n,), (n // 2, n), (n // 4, n // 2, n)]))
    options = SearchOptions(
        gpu_counts=tuple(g for g in gpus if g >= node and g % node == 0),  # whole nodes, as --gpus takes them
        micro_batch_sizes=tuple(draw(st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=3, unique=True))),
        max_vpp=draw(st.sampled_from([1, 2, 4])),
        recompute_modes=tuple(draw(st.lists(st.sampled_from(["none", "selective", "full"]), min_size=1, unique=True))),
        partial_recompute=draw(st.booleans()),
        zero_stages=tuple(draw(st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True))),
        allow_offload=draw(st.booleans()),
        expert_tp=draw(st.sampled_from(["1", "tp", "both"])),
        memory_headroom=draw(st.sampled_from([0.0, 0.05, 0.2])),
        objective=draw(st.sampled_from(["throughput", "cost_per_token", "time_to_train", "mfu", "memory_headroom"])),
        top_k=draw(st.integers(1, 8)),
        best_per_layout=draw(st.booleans()),
    )
    # where the memory limit falls among the candidates' peaks (0: only the least fits; 1: all fit);
    # a negative draw puts it just below the least (nothing fits)
    quantile = max(-1.0, draw(st.floats(-0.2, 1.0)))
    return d, options, quantile


def _all_candidates(scenario: Scenario) -> PlanArrays:
    """Every plan the search expands (all rules but memory), before the memory screen."""
    layouts = LayoutModel(scenario.model, scenario.training, scenario.cluster, scenario.options,
                          scenario.gpu_counts).enumerate_layouts()
    groups = candidate_groups(scenario, layouts)
    plans, valid = expand_recompute(scenario, groups)
    return plans.take(np.flatnonzero(valid.ravel()))


def _rows(plans: PlanArrays) -> set[tuple]:
    cols = plans.to_columns()
    names = sorted(cols)
    return set(zip(*(cols[n].tolist() for n in names)))


def assert_obeys_rules(plans: PlanArrays, scenario: Scenario) -> None:
    """The hardware and framework rules, written out as plain predicates, for every plan."""
    model, training, cluster, o = scenario.model, scenario.training, scenario.cluster, scenario.options
    c = {k: np.asarray(v) for k, v in plans.to_columns().items()}
    tp, cp, pp, dp, ep, etp, vpp, mb = (c[k] for k in ("tp", "cp", "pp", "dp", "ep", "etp", "vpp", "micro_batch"))
    domain = cluster.topology.scaleup_domain_gpus
    heads = model.num_attention_heads
    kv = heads if model.is_mla else model.num_kv_heads
    gb, seq, L = training.global_batch_size, training.seq_length, model.num_layers
    m = gb // (dp * mb)
    rules = {
        "world size is a GPU count asked for": np.isin(tp * cp * pp * dp, scenario.gpu_counts),
        "tp <= scale-up domain, inside it": (tp <= domain) & (domain % tp == 0),
        "degrees within the search bounds": (tp <= o.max_tp) & (cp <= o.max_cp) & (pp <= min(o.max_pp, L))
                                            & (vpp <= o.max_vpp) & np.isin(mb, o.micro_batch_sizes),
        "heads divisible by tp": heads % tp == 0,
        "kv heads divisible by tp or tp by them": (kv % tp == 0) | (tp % kv == 0),
        "sequence divisible by 2 cp, fused attention": (cp == 1) | ((seq % (2 * cp) == 0) & training.flash_attention),
        "global batch = dp x micro-batch x m": gb % (dp * mb) == 0,
        "layers split over pp x vpp": np.array([S.split_ok(L, p, v) for p, v in zip(pp, vpp)], dtype=bool),
        "interleaving needs pp > 1 and m divisible by pp": (vpp == 1) | ((pp > 1) & (m % pp == 0)),
        "sequence parallel needs tp > 1 and seq/cp divisible by tp":
            ~c["sequence_parallel"] | ((tp > 1) & ((seq // cp) % tp == 0)),
        "MoE with tp > 1 needs sequence parallel": ~(model.is_moe & (tp > 1)) | c["sequence_parallel"],
        "ZeRO stage asked for, needs dp x cp > 1": np.isin(c["zero_stage"], o.zero_stages)
                                                 & ((c["zero_stage"] == 0) | (dp * cp > 1)),
        "recompute mode asked for": np.isin(c["recompute"], [["none", "selective", "full"].index(x)
                                                             for x in o.recompute_modes]),
        "partial recompute inside a chunk": (c["recompute"] != FULL) | (c["recompute_num_layers"] == -1) | (
            (c["recompute_num_layers"] >= 1) & o.partial_recompute
            & (c["recompute_num_layers"] < np.array([S.chunk_layers(L, p, v) for p, v in zip(pp, vpp)]))),
        "selective modules exist": (c["recompute"] != SELECTIVE)
                                   | ((c["recompute_modules"] & ~available_modules(model)) == 0),
        "experts: ep divides them, etp in {1, tp}, the expert mesh folds":
            ((ep == 1) & (etp == 1)) if not model.is_moe else
            ((model.num_experts % ep == 0) & ((etp == 1) | (etp == tp)) & ((tp * cp * dp) % (ep * etp) == 0)),
        "offload only when allowed; activations with pp = 1, no recompute, fewer than L layers":
            ((~c["optimizer_offload"] & (c["activation_offload_layers"] == 0)) | o.allow_offload)
            & ((c["activation_offload_layers"] == 0)
               | ((pp == 1) & (c["recompute"] == NONE) & (c["activation_offload_layers"] < L))),
    }
    for name, ok in rules.items():
        assert np.all(ok), f"{name}: broken by {plans.take(np.flatnonzero(~ok)[:3]).to_columns()}"
    assert valid_mask(model, training, plans, o.uneven_pipeline).all()


@props(200)
@given(search_cases())
def test_search_feasible_set_is_exactly_the_plans_within_the_limit(case):
    """fits <=> memory <= (1 - headroom) x usable memory: the search's feasible set is exactly the candidates
    whose predicted peak is within the limit (the limit is put at a random quantile of the candidates'
    memory, so it binds anywhere from nothing to everything fitting, including exact ties), every
    returned plan obeys the rules, and the ranked plans priced again fit."""
    d, options, quantile = case
    scenario = Scenario(d.model, d.training, d.cluster, options)
    candidates = _all_candidates(scenario)
    assume(len(candidates))
    peaks = predict_memory(d.model, d.training, candidates, scenario.costs).peak_bytes
    target = float(np.quantile(peaks, quantile, method="nearest")) if quantile >= 0 else peaks.min() * 0.999
    memory_gib = target / GIB / (1 - options.memory_headroom)
    assume(memory_gib <= PLAUSIBLE_MEMORY_GIB)
    cluster = d.cluster.with_overrides({"gpu.memory_gib": memory_gib})
    scenario = Scenario(d.model, d.training, cluster, options)
    limit = scenario.memory_limit_bytes

    result = search(scenario, keep_feasible=True, keep_timed=True)
    assert result.num_candidates == len(candidates)
    expected = candidates.take(np.flatnonzero(peaks <= limit))
    event("model: " + ("MLA " if d.model.is_mla else "") + ("MoE" if d.model.is_moe else "dense"))
    event("fits: " + ("none" if not len(expected) else "all" if len(expected) == len(candidates) else "some"))
    assert result.num_feasible == len(expected)
    assert _rows(result.feasible_plans) == _rows(expected)
    # The least memory the search reports is exact when nothing fits (what explain.py quotes); when
    # something fits the screen stops pricing a group at its first fitting option, so it is only an
    # upper bound of the least, and at most the limit.
    assert result.min_memory_bytes >= peaks.min() * (1 - 1e-12)
    if len(expected):
        assert result.min_memory_bytes <= limit
    else:
        assert result.min_memory_bytes == pytest.approx(peaks.min(), rel=1e-12)
    assert_obeys_rules(result.feasible_plans, scenario)

    assert result.found == (len(expected) > 0)
    if result.found:
        ranked = result.ranked
        assert len(ranked) <= options.top_k
        assert_obeys_rules(ranked.plans, scenario)
        assert _rows(ranked.plans) <= _rows(expected)
        again = evaluate(d.model, d.training, cluster, ranked.plans, scenario.costs)
        assert np.all(again.memory_bytes <= limit)
        assert all(r["fits"] for r in report_records(ranked, limit))

        # every timed plan: finite positive times, breakdowns that add up
        timed = result.timed
        assert np.all(np.isfinite(timed.step_time_s)) and np.all(timed.step_time_s > 0)
        assert np.all(np.isfinite(timed.memory_bytes)) and np.all(timed.memory_bytes > 0)
        assert _close(sum(timed.step_time_parts_s[p] for p in TIME_PARTS), timed.step_time_s)
        assert _close(sum(timed.memory_parts_bytes[p] for p in MEMORY_PARTS), timed.memory_bytes, 1e-12)
        # ranked best first by the objective (ties within 1e-9 of the largest value), the first one the
        # best of all timed plans; one plan per layout when asked
        keys = objective_key(timed, options.objective)
        tol = 1e-9 * np.max(np.abs(keys)) * 2
        ranked_keys = objective_key(ranked, options.objective)
        assert np.all(np.diff(ranked_keys) >= -tol)
        assert ranked_keys[0] <= keys.min() + tol
        if options.best_per_layout:
            layouts = list(zip(ranked.plans.num_gpus, *(ranked.plans.to_columns()[k] for k in ("tp", "pp", "dp", "cp", "ep", "etp"))))
            assert len(set(layouts)) == len(layouts)


@props(40)
@given(search_cases())
def test_search_output_identical_across_runs(case):
    """The same search twice gives the same plans, metrics and counts (wall-clock fields aside)."""
    d, options, _ = case
    scenario = Scenario(d.model, d.training, d.cluster, options)
    first = search(scenario, keep_feasible=True, keep_timed=True)
    second = search(scenario, keep_feasible=True, keep_timed=True)
    for name in ("num_layouts", "num_candidates", "num_feasible", "num_timed"):
        assert getattr(first, name) == getattr(second, name), name
    assert (first.min_memory_bytes == second.min_memory_bytes
            or (math.isnan(first.min_memory_bytes) and math.isnan(second.min_memory_bytes)))
    pd.testing.assert_frame_equal(first.frame(), second.frame(), check_exact=True)
    for name, column in first.feasible_plans.to_columns().items():
        np.testing.assert_array_equal(column, second.feasible_plans.to_columns()[name], err_msg=name)
    if first.timed is not None:
        pd.testing.assert_frame_equal(first.timed.to_frame(), second.timed.to_frame(), check_exact=True)


FRESH_SCRIPT = r"""
import json, sys
from cost_model.model_loader import build_training, model_input_from_mapping
from hardware.loader import load_cluster
from optimizer.search import Scenario, search
from optimizer.ranking import objective_key
from optimizer.search_options import SearchOptions
config, training, cluster, options = json.loads(sys.argv[1])
model = model_input_from_mapping(config).spec
options["gpu_counts"] = tuple(options["gpu_counts"])
result = search(Scenario(model, build_training(training, model=model), load_cluster(cluster), SearchOptions(**options)))
sys.stdout.write(result.frame().to_csv(index=False))
"""

FRESH_CASE = (
    {"model_type": "deepseek_v3", "num_hidden_layers": 6, "hidden_size": 1024, "num_attention_heads": 8,
     "intermediate_size": 2816, "moe_intermediate_size": 512, "n_routed_experts": 16, "num_experts_per_tok": 4,
     "n_shared_experts": 1, "first_k_dense_replace": 1, "q_lora_rank": 384, "kv_lora_rank": 256,
     "qk_nope_head_dim": 64, "qk_rope_head_dim": 32, "v_head_dim": 64, "vocab_size": 50257,
     "tie_word_embeddings": False},
    {"seq_length": 4096, "global_batch_size": 64, "moe_token_dispatcher": "deepep",
     "overlap_moe_expert_parallel_comm": True, "train_tokens": 1e11},
    "h100x32",
    {"gpu_counts": [8, 16, 32], "top_k": 20, "objective": "cost_per_token"},
)


def test_search_output_identical_in_fresh_processes_with_other_hash_seeds():
    """One search in two fresh interpreters with different PYTHONHASHSEED, and in this one: the same CSV."""
    config, training, cluster, options = FRESH_CASE
    model = S.to_model(config)
    here = search(Scenario(model, S.to_training(training, model), S.cluster_named(cluster),
                           SearchOptions(**{**options, "gpu_counts": tuple(options["gpu_counts"])})))
    assert here.found
    outputs = []
    for seed in ("0", "2718281"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", FRESH_SCRIPT, json.dumps(FRESH_CASE)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert outputs[0] == here.frame().to_csv(index=False)
