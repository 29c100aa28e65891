"""The serving search: the knob grid, objectives, the Pareto frontier and the search over a cluster."""

from __future__ import annotations

import numpy as np
import pytest

from cost_model.serving.plan import KV_DTYPES, WEIGHT_PRECISIONS, InstanceArrays, ServingPlanArrays
from optimizer.serving.grid import (ServingGrid, aggregated_plans, disaggregated_plans, instance_grid, layouts,
                                    powers_of_two, replica_counts)
from optimizer.serving.ranking import pareto_front, rank_order, row_ids


# --- grid -----------------------------------------------------------------------------------------------

def test_dense_layouts_on_8_gpus_are_tp_times_pp_powers_of_two():
    shape = layouts(ServingGrid(max_gpus=8, num_layers=80))
    pairs = sorted(zip(shape["tp"].tolist(), shape["pp"].tolist()))
    # tp, pp in {1,2,4,8} with tp x pp <= 8: 4 + 3 + 2 + 1 = 10
    assert pairs == [(1, 1), (1, 2), (1, 4), (1, 8), (2, 1), (2, 2), (2, 4), (4, 1), (4, 2), (8, 1)]
    assert set(shape["ep"]) == {1} and set(shape["attn_dp"]) == {1}
    assert (shape["moe_tp"] == shape["tp"]).all()


def test_moe_layouts_regroup_the_same_ranks():
    shape = layouts(ServingGrid(max_gpus=16, is_moe=True, num_experts=8, num_layers=32, pipeline_values=(1,)))
    tp, dp, ep, moe_tp = shape["tp"], shape["attn_dp"], shape["ep"], shape["moe_tp"]
    assert (tp * dp == moe_tp * ep).all()
    assert ep.max() == 8  # never more expert ranks than experts
    assert (tp * dp <= 16).all()
    # tp x attn_dp = 2^k ranks (k = 0..4), ep = 2^j for j <= min(k, 3): 1 + 2*2 + 3*3 + 4*4 + 5*4 = 50
    assert len(tp) == 50
    # the SGLang DeepSeek recipe's tp 1 x attn_dp 8 = moe_tp 1 x ep 8 is among them
    assert ((tp == 1) & (dp == 8) & (ep == 8) & (moe_tp == 1)).any()


def test_instance_grid_counts_and_chunk_at_least_batch():
    grid = ServingGrid(max_gpus=8, num_layers=80, weight_precisions=("bf16", "fp8"), kv_dtypes=("bf16", "fp8"))
    instances = instance_grid(grid)
    assert (instances.max_num_batched_tokens >= instances.max_num_seqs).all()
    # seqs 1..1024 x chunks (2048, 8192, 32768): every seqs fits every chunk (1024 <= 2048) -> 33 pairs
    assert len(instances) == 10 * 2 * 2 * 33 * 2
    assert set(instances.weight_precision) == {WEIGHT_PRECISIONS.index("bf16"), WEIGHT_PRECISIONS.index("fp8")}
    assert set(instances.kv_dtype) == {KV_DTYPES.index("bf16"), KV_DTYPES.index("fp8")}
    assert set(instances.cuda_graphs) == {True, False}
    small = instance_grid(ServingGrid(max_gpus=1, num_layers=4, max_num_seqs_values=(1, 4096),
                                      chunk_token_values=(2048, 8192), cuda_graph_values=(True,)))
    assert sorted(zip(small.max_num_seqs.tolist(), small.max_num_batched_tokens.tolist())) == [(1, 2048), (1, 8192), (4096, 8192)]  # not (4096, 2048)


def test_replica_ladder():
    assert replica_counts(1).tolist() == [1]
    assert replica_counts(8).tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert replica_counts(64).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64]
    assert replica_counts(40).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 40]
    assert powers_of_two(64) == (1, 2, 4, 8, 16, 32, 64) and powers_of_two(12) == (1, 2, 4, 8)


def test_aggregated_plans_stay_within_the_budget():
    grid = ServingGrid(max_gpus=16, min_gpus=8, num_layers=80, max_num_seqs_values=(64,), chunk_token_values=(8192,),
                       cuda_graph_values=(True,))
    plans = aggregated_plans(instance_grid(grid), grid)
    assert ((plans.num_gpus >= 8) & (plans.num_gpus <= 16)).all()
    assert (plans.prefill_instances == plans.decode_instances).all() and not plans.disaggregated.any()
    # TP8 instances: 1 or 2 replicas (8 or 16 GPUs); TP1 PP1: replicas 8, 12, 16
    tp8 = (plans.decode.tp == 8) & (plans.decode.pp == 1)
    assert sorted(plans.decode_instances[tp8].tolist()) == [1, 2]
    single = (plans.decode.tp == 1) & (plans.decode.pp == 1)
    assert sorted(plans.decode_instances[single].tolist()) == [8, 12, 16]


def _instances(tp, seqs=64):
    return InstanceArrays.from_columns({"tp": np.asarray(tp), "max_num_seqs": seqs, "max_num_batched_tokens": 8192})


def test_disaggregated_counts_follow_the_phase_capacities():
    grid = ServingGrid(max_gpus=64, num_layers=80)
    prefill, decode = _instances([4]), _instances([8])
    # a prefill instance serves 3 req/s, a decode instance 7 req/s: d decode instances need ceil(7d/3)
    plans = disaggregated_plans(prefill, decode, np.asarray([3.0]), np.asarray([7.0]), grid)
    for p, d, gpus in zip(plans.prefill_instances, plans.decode_instances, plans.num_gpus):
        assert p == -(-7 * d // 3)
        assert gpus == 4 * p + 8 * d <= 64
    # d = 1..4 fit (d = 4: p = 10, 40 + 32 = 72 > 64 does not)
    assert plans.decode_instances.tolist() == [1, 2, 3]
    assert plans.disaggregated.all()
    none = disaggregated_plans(prefill, decode, np.asarray([0.0]), np.asarray([7.0]), grid)
    assert len(none) == 0  # a prefill instance that serves nothing pairs with nothing


# --- ranking and Pareto --------------------------------------------------------------------------------

def test_pareto_front_is_the_undominated_set():
    rng = np.random.default_rng(7)
    per_gpu, per_user = rng.uniform(0, 100, 400), rng.uniform(0, 100, 400)
    per_gpu[:20] = per_gpu[20:40]  # some ties on one axis
    front = pareto_front(per_gpu, per_user)
    on = np.zeros(len(per_gpu), dtype=bool)
    on[front] = True
    dominated = ((per_gpu[None, :] >= per_gpu[:, None]) & (per_user[None, :] >= per_user[:, None])
                 & ((per_gpu[None, :] > per_gpu[:, None]) | (per_user[None, :] > per_user[:, None]))).any(axis=1)
    assert (on == ~dominated).all()
    assert (np.diff(per_gpu[front]) <= 0).all() and (np.diff(per_user[front]) > 0).all()
    assert pareto_front(np.asarray([np.nan, 1.0]), np.asarray([5.0, 1.0])).tolist() == [1]


def test_rank_order_breaks_ties_towards_fewer_gpus_and_simpler_plans():
    instances = _instances([8, 4, 4, 2])
    plans = ServingPlanArrays.aggregated(instances, [1, 2, 1, 1])
    key = np.asarray([-1.0, -1.0, -1.0, -0.5])
    # equal keys: 4 GPUs (tp4 x1) before 8 GPUs; tp4 x2 and tp8 x1 both 8 GPUs: smaller tp first
    assert rank_order(plans, key).tolist() == [2, 1, 0, 3]
    assert rank_order(plans, np.asarray([-1.0, -1.0 - 1e-12, -1.0, -0.5])).tolist() == [2, 1, 0, 3]


# --- the search --------------------------------------------------------------------------------------------

def _scenario(**changes):
    from cost_model.model_loader import load_model
    from cost_model.serving.workload import load_workload
    from hardware.loader import load_cluster
    from optimizer.serving.search import ServingScenario

    model = load_model("llama3-70b").spec
    grid = ServingGrid(max_gpus=8, num_layers=model.num_layers, weight_precisions=("bf16", "fp8"),
                       modes=("agg", "disagg"))
    return ServingScenario(model=model, cluster=load_cluster("h100x8"), workload=load_workload("chat-1k-1k"),
                           grid=grid, **changes)


def test_coarse_to_fine_finds_what_the_exhaustive_search_finds(monkeypatch):
    """The coarse pass (one chunk budget, CUDA graphs on, every other max_num_seqs) and the fine pass over
    the leading layouts return the exhaustive search's top plans and nearly its whole frontier."""
    from optimizer.serving import search as serving_search
    from optimizer.serving.report import plan_records

    scenario = _scenario(top_k=5)
    exhaustive = serving_search.search_serving(scenario)
    monkeypatch.setattr(serving_search, "EXHAUSTIVE_UP_TO", 0)
    staged = serving_search.search_serving(scenario)
    assert staged.candidates < exhaustive.candidates
    top = lambda result: [(r["plan"], r["instances"][-1]["weight_precision"], r["goodput_requests_per_s_per_gpu"])
                          for r in plan_records(result.ranked, scenario)]
    assert top(staged) == top(exhaustive)
    front = lambda result: {r["plan"] for r in plan_records(result.pareto, scenario)}
    assert len(front(staged) & front(exhaustive)) >= 0.8 * len(front(exhaustive))


def test_more_replicas_never_lower_goodput():
    """At a target rate, each replica count of one layout serves at least the goodput of fewer (the
    fleet's largest rate within the SLO grows with the instances)."""
    from optimizer.serving.search import evaluate

    scenario = _scenario(target_rate_per_s=4.0)
    instances = InstanceArrays.from_columns({"tp": np.asarray([4, 8]), "max_num_seqs": 128,
                                             "max_num_batched_tokens": 8192})
    for i in range(len(instances)):
        one = instances.take(np.full(4, i))
        metrics = evaluate(scenario, ServingPlanArrays.aggregated(one, np.arange(1, 5) if i == 0 else [1, 1, 1, 1]))
        goodput = metrics.goodput_requests_per_s
        assert (np.diff(goodput) >= -1e-9 * goodput.max()).all()
    metrics = evaluate(scenario, ServingPlanArrays.aggregated(instances.take(np.zeros(2, dtype=int)), [1, 2]))
    assert metrics.goodput_requests_per_s[1] == pytest.approx(2 * metrics.goodput_requests_per_s[0], rel=1e-6)


def test_at_max_load_multiples_of_a_count_pair_are_one_plan():
    grid = ServingGrid(max_gpus=64, min_gpus=20, num_layers=80)
    prefill, decode = _instances([4]), _instances([8])
    plans = disaggregated_plans(prefill, decode, np.asarray([3.0]), np.asarray([7.0]), grid, fewest_replicas=True)
    pairs = list(zip(plans.prefill_instances.tolist(), plans.decode_instances.tolist()))
    # d = 1, 2, 3 need p = 3, 5, 7 (coprime already); each scaled to reach 20 GPUs: (3,1) is 20 GPUs
    assert pairs == [(3, 1), (5, 2), (7, 3)]
    many = disaggregated_plans(prefill, decode, np.asarray([1.0]), np.asarray([1.0]), grid, fewest_replicas=True)
    # p = d for every d: one pair, 1:1, doubled to reach 20 GPUs (12 x 2 = 24)
    assert list(zip(many.prefill_instances.tolist(), many.decode_instances.tolist())) == [(2, 2)]


def test_row_ids_are_equal_exactly_when_rows_are_equal():
    """The mixed-radix row id (and its fallback past 62 bits) groups rows as np.unique(axis=0) does."""
    rng = np.random.default_rng(7)
    small = rng.integers(0, 4, size=(2000, 6)) * np.array([1, 2, 8, 64, 3, 1])
    wide = rng.integers(0, 2, size=(500, 70)) * 9  # 2^70 combinations: the byte-string fallback
    for keys in (small, wide):
        ids = row_ids(keys)
        _, expected = np.unique(keys, axis=0, return_inverse=True)
        expected = expected.reshape(-1)
        same_id = ids[:, None] == ids[None, :]
        assert np.array_equal(same_id, expected[:, None] == expected[None, :])


def test_each_engine_prices_its_own_runtime():
    """--emit ENGINE prices what that engine runs by default: vLLM 0.34 and SGLang 0.5.23 overlap the
    scheduler with the GPU and allocate KV pages on demand; TensorRT-LLM overlaps except on disaggregated
    context servers and reserves each request's KV to completion."""
    from cost_model.serving.options import ServingOptions

    base = ServingOptions()
    assert base.for_engine(None) is base and not base.overlap_scheduler
    for engine in ("vllm", "sglang"):
        options = base.for_engine(engine)
        assert options.overlap_scheduler and not options.kv_reserved_to_completion
        assert options.for_prefill_instances().overlap_scheduler
    trtllm = base.for_engine("trtllm")
    assert trtllm.overlap_scheduler and trtllm.kv_reserved_to_completion
    assert not trtllm.for_prefill_instances().overlap_scheduler
    assert trtllm.for_prefill_instances().kv_reserved_to_completion


def test_an_overlapped_scheduler_never_slows_a_plan_and_reserving_kv_never_grows_the_batch():
    """The same plans priced for SGLang (host work beside the GPU: a step is the longer of the two, never
    their sum) serve at least the defaults' max-load throughput; TensorRT-LLM's reservation to completion
    never admits a larger decode batch than pages on demand, and a smaller one where KV binds."""
    from optimizer.serving.search import evaluate

    instances = InstanceArrays.from_columns({"tp": np.asarray([2, 4, 8]), "max_num_seqs": 256,
                                             "max_num_batched_tokens": 8192})
    plans = ServingPlanArrays.aggregated(instances, [1, 1, 1])
    default = evaluate(_scenario(), plans)
    sglang = evaluate(_scenario(engine="sglang"), plans)
    trtllm = evaluate(_scenario(engine="trtllm"), plans)
    faster = sglang.max_load_output_tokens_per_s_per_gpu / default.max_load_output_tokens_per_s_per_gpu
    assert (faster >= 1 - 1e-12).all() and (faster > 1.01).any()
    assert (trtllm.max_decode_batch <= sglang.max_decode_batch).all()
    assert (trtllm.max_decode_batch < sglang.max_decode_batch).any()  # TP2: 1 request to completion, 2 on demand
