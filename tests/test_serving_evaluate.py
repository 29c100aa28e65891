"""Serving metrics of whole plans: hand-derived identities, costs over every GPU, and load properties."""

import math

import numpy as np
import pytest

from cost_model.model_loader import load_model
from cost_model.serving.evaluate import evaluate_serving
from cost_model.serving.plan import InstanceArrays, ServingPlanArrays
from cost_model.serving.step import price_instances
from cost_model.serving.workload import LengthSpec, SLOSpec, SpeculativeSpec, WorkloadSpec, load_workload
from hardware.loader import load_cluster

pytestmark = pytest.mark.usefixtures("serving_priors")  # the physics at the documented priors

PRICE = 2.5


@pytest.fixture(scope="module")
def llama():
    return load_model("llama3-70b").spec


@pytest.fixture(scope="module")
def cluster():
    return load_cluster("h100x64").with_overrides({"economics.price_per_gpu_hour_usd": PRICE})


def _instances(tp, **columns):
    return InstanceArrays.from_columns({"tp": tp, "max_num_seqs": 256, "max_num_batched_tokens": 8192, **columns})


def _fixed(isl, osl, **fields):
    return WorkloadSpec(name="t", input_tokens=LengthSpec(mean_tokens=isl), output_tokens=LengthSpec(mean_tokens=osl),
                        **fields)


def test_cost_counts_every_gpu_of_a_disaggregated_plan(llama, cluster):
    # Same decode fleet (2 x TP8), 3 or 5 prefill instances (TP4), both more than the P:D balance needs: the
    # decode side sets the goodput, so the two extra prefill instances add 8 GPUs of cost and nothing else.
    # $/Mtok = GPUs x $/h / 3600 / (goodput x OSL) x 1e6 with GPUs = 3 x 4 + 2 x 8 = 28 and 5 x 4 + 16 = 36.
    workload = load_workload("chat-1k-1k")
    plans = ServingPlanArrays.disaggregated_plans(_instances([4, 4]), _instances([8, 8]), [3, 5], [2, 2])
    m = evaluate_serving(llama, cluster, workload, plans)
    np.testing.assert_array_equal(m.num_gpus, [28, 36])
    assert m.prefill_decode_ratio[0] * 2 <= 3  # both plans are decode-bound
    assert m.goodput_requests_per_s[1] == pytest.approx(m.goodput_requests_per_s[0])
    expected = m.num_gpus * PRICE / 3600 / (m.goodput_requests_per_s * 1000) * 1e6
    np.testing.assert_allclose(m.cost_usd_per_m_output_tokens, expected)
    np.testing.assert_allclose(m.cost_usd_per_m_input_tokens, expected)  # ISL = OSL = 1000
    assert m.cost_usd_per_m_output_tokens[1] == pytest.approx(m.cost_usd_per_m_output_tokens[0] * 36 / 28)
    # Counting decode GPUs only (as some public claims do) would give the same cost for both plans.
    decode_only = 16 * PRICE / 3600 / (m.goodput_requests_per_s * 1000) * 1e6
    assert np.all(m.cost_usd_per_m_output_tokens > decode_only * 1.7)


def test_more_replicas_never_lower_goodput(llama, cluster):
    workload = load_workload("chat-1k-1k")
    replicas = np.arange(1, 9)
    agg = ServingPlanArrays.aggregated(_instances(np.full(8, 4)), replicas)
    m = evaluate_serving(llama, cluster, workload, agg)
    assert np.all(np.diff(m.goodput_requests_per_s) >= 0) and m.goodput_requests_per_s[0] > 0
    np.testing.assert_allclose(m.goodput_requests_per_s, m.goodput_requests_per_s[0] * replicas)
    dis = ServingPlanArrays.disaggregated_plans(_instances(np.full(8, 4)), _instances(np.full(8, 8)), 2, replicas)
    d = evaluate_serving(llama, cluster, workload, dis)
    # More decode instances raise the goodput until the two prefill instances bind, then it stays.
    assert np.all(np.diff(d.goodput_requests_per_s) >= -1e-9)
    assert d.goodput_requests_per_s[1] > d.goodput_requests_per_s[0]


def test_goodput_is_max_load_without_slo_and_below_it_with_one(llama, cluster):
    plans = ServingPlanArrays.aggregated(_instances([2, 4, 8], weight_precision="fp8"), 1)
    free = evaluate_serving(llama, cluster, load_workload("fixed-1k-1k"), plans)
    np.testing.assert_allclose(free.goodput_requests_per_s * 1000 / free.num_gpus, free.max_load_output_tokens_per_s_per_gpu)
    bound = evaluate_serving(llama, cluster, load_workload("chat-1k-1k"), plans)
    assert np.all(bound.goodput_requests_per_s <= free.goodput_requests_per_s * (1 + 1e-9))


def test_low_load_latencies_are_one_prefill_and_one_decode_step(llama, cluster):
    # At 0.001 requests/s nobody queues and no chunk shares a decode step: TPOT is the decode step of one
    # request at the mean context (1000 + 200/2 tokens), TTFT one 1000-token prefill (the decode step of one
    # request plus the marginal cost of the prompt: t_dec(1) + t_pf(1000) - t_pf(1)).
    instances = _instances([8])
    plans = ServingPlanArrays.aggregated(instances, 1)
    m = evaluate_serving(llama, cluster, _fixed(1000, 200), plans, target_rate_per_s=0.001)
    pricing = price_instances(llama, cluster, instances)
    t_dec = pricing.decode_step(np.array([1.0]), np.array([1100.0])).total_s[0]
    prefill = pricing.prefill(np.array([1000.0]), np.array([0.0]), np.array([1000.0])).total_s[0]
    one = pricing.prefill(np.array([1.0]), np.array([0.0]), np.array([1.0])).total_s[0]
    assert m.tpot_ms_p50[0] == pytest.approx(t_dec * 1e3, rel=1e-3)
    assert m.ttft_ms_p50[0] == pytest.approx((t_dec + prefill - one) * 1e3, rel=1e-3)


def test_speculative_decoding_divides_tpot_by_tokens_per_step(llama, cluster):
    # k = 3, alpha = 0.5: 1.875 tokens a verification step of 4 tokens per request.
    instances = _instances([8])
    plans = ServingPlanArrays.aggregated(instances, 1)
    spec = _fixed(1000, 200, speculative=SpeculativeSpec(draft_tokens=3, acceptance_rate=0.5))
    m = evaluate_serving(llama, cluster, spec, plans, target_rate_per_s=0.001)
    step = price_instances(llama, cluster, instances).decode_step(np.array([1.0]), np.array([1100.0]), 4).total_s[0]
    # (within 0.2%: the rare step that carries a prompt chunk runs eagerly, its issue added to the GPU's work)
    assert m.tpot_ms_p50[0] == pytest.approx(step / 1.875 * 1e3, rel=2e-3)


def test_littles_law_closes_the_loop(llama, cluster):
    # 4,000 requests in flight on 2 x TP4 (far past what the engines hold): X (TTFT + (OSL - 1) T) = C.
    plans = ServingPlanArrays.aggregated(_instances([4]), 2)
    m = evaluate_serving(llama, cluster, _fixed(1000, 500), plans, target_concurrency=4000)
    step_s = 1.0 / m.tokens_per_s_per_user[0]
    in_flight = m.requests_per_s[0] * (m.ttft_ms_p50[0] / 1e3 + 499 * step_s)
    assert in_flight == pytest.approx(4000, rel=1e-6)
    assert m.bottleneck[0] == "queueing"


def test_tpot_and_ttft_never_fall_as_load_grows(llama, cluster):
    plans = ServingPlanArrays.aggregated(_instances([4], weight_precision="fp8"), 1)
    workload = _fixed(2000, 300)
    free = evaluate_serving(llama, cluster, workload, plans)
    top = free.goodput_requests_per_s[0]
    tpot, ttft = [], []
    for rate in np.linspace(0.02, 0.98, 12) * top:
        m = evaluate_serving(llama, cluster, workload, plans, target_rate_per_s=float(rate))
        tpot.append(m.tpot_ms_p99[0]), ttft.append(m.ttft_ms_p99[0])
        assert m.requests_per_s[0] == pytest.approx(rate)
    assert np.all(np.diff(tpot) >= -1e-9) and np.all(np.diff(ttft) >= -1e-9)
    over = evaluate_serving(llama, cluster, workload, plans, target_rate_per_s=float(top * 1.05))
    # Past the top rate the queue grows without bound and the plan delivers only its top rate.
    assert over.ttft_ms_p99[0] == np.inf and over.requests_per_s[0] == pytest.approx(top)


def test_min_gpus_for_a_target_rate(llama, cluster):
    plans = ServingPlanArrays.aggregated(_instances([4, 8]), 1)
    workload = load_workload("chat-1k-1k")
    m = evaluate_serving(llama, cluster, workload, plans, target_rate_per_s=25.0)
    per_instance = m.goodput_requests_per_s
    np.testing.assert_array_equal(m.min_gpus_for_target, np.ceil(25.0 / per_instance) * [4, 8])


def test_rules_report_what_breaks(llama, cluster):
    a100 = load_cluster("a100x64")
    # A100: an FP8 KV cache needs FP8 tensor cores (refused); FP8 weights run weight-only (FP8 Marlin W8A16).
    plans = ServingPlanArrays.aggregated(_instances([3, 8, 8, 8], weight_precision=["bf16", "bf16", "bf16", "fp8"],
                                                    kv_dtype=["bf16", "fp8", "bf16", "bf16"]), [1, 1, 9, 1])
    m = evaluate_serving(llama, a100, load_workload("fixed-1k-1k"), plans)
    assert m.violations["heads_divisible_by_tp"].tolist() == [True, False, False, False]
    assert m.violations["precision_supported"].tolist() == [False, True, False, False]
    assert m.violations["fits_cluster"].tolist() == [False, False, True, False]
    tight = _fixed(1000, 1000, slo=SLOSpec(ttft_ms=1000, tpot_ms=1.0))
    t = evaluate_serving(llama, cluster, tight, ServingPlanArrays.aggregated(_instances([8]), 1))
    assert t.violations["tpot_slo_met"][0] and t.goodput_requests_per_s[0] == 0
    assert math.isinf(t.cost_usd_per_m_output_tokens[0])


def test_disaggregated_kv_transfer_nvlink_inside_a_domain(llama, cluster):
    # One TP4 prefill + one TP4 decode instance fit one 8-GPU NVLink domain; 4 + 3 x 4 = 16 GPUs do not.
    plans = ServingPlanArrays.disaggregated_plans(_instances([4, 4]), _instances([4, 4]), [1, 1], [1, 3])
    m = evaluate_serving(llama, cluster, _fixed(1000, 200), plans)
    assert 0 < m.kv_transfer_ms[0] < m.kv_transfer_ms[1]
    # Llama 3 70B BF16 KV: 2 x 80 layers x 8 KV heads x 128 x 2 bytes = 327,680 bytes a token.
    topology = cluster.topology
    nvlink = 1000 * 327_680 / 4 / (topology.scaleup_GBps * 1e9 * topology.scaleup_efficiency.send_recv)
    assert m.kv_transfer_ms[0] == pytest.approx((nvlink + topology.scaleup_latency_us * 1e-6) * 1e3, rel=1e-6)
    assert np.all(np.isfinite(m.prefill_decode_ratio)) and np.all(m.prefill_decode_ratio > 0)


def test_percentiles_follow_the_length_distribution(llama, cluster):
    # Prompts lognormal through p50 500 and p99 4,000 tokens: at low load the TTFT percentiles are the
    # prefills of those prompts (one request each, no wait), so p50 < p90 < p99 and p99 is the 4,000-token prefill.
    instances = _instances([8])
    workload = WorkloadSpec(name="t", input_tokens=LengthSpec(p50_tokens=500, p99_tokens=4000),
                            output_tokens=LengthSpec(p50_tokens=200, p99_tokens=1000))
    m = evaluate_serving(llama, cluster, workload, ServingPlanArrays.aggregated(instances, 1), target_rate_per_s=0.001)
    assert m.ttft_ms_p50[0] < m.ttft_ms_p90[0] < m.ttft_ms_p99[0]
    pricing = price_instances(llama, cluster, instances)
    context = workload.input_tokens.mean() + workload.output_tokens.mean() / 2
    t_dec = pricing.decode_step(np.array([1.0]), np.array([context])).total_s[0]
    prefill = pricing.prefill(np.array([4000.0]), np.array([0.0]), np.array([4000.0])).total_s[0]
    one = pricing.prefill(np.array([1.0]), np.array([0.0]), np.array([1.0])).total_s[0]
    assert m.ttft_ms_p99[0] == pytest.approx((t_dec + prefill - one) * 1e3, rel=1e-3)


def test_past_saturation_ttft_grows_by_little(llama):
    # Llama 3 70B FP8 on 2 H100 (TP2, FP8 KV), 5,000-token prompts and 500-token answers, as NVIDIA NIM's
    # published concurrency sweep: past what the KV pool holds the engine runs at its top rate X and every
    # further request waits outside, so TTFT(250) - TTFT(150) = 100 / X and the throughput stays.
    h100 = load_cluster("h100x8")
    plans = ServingPlanArrays.aggregated(_instances([2], weight_precision="fp8", kv_dtype="fp8"), 1)
    workload = _fixed(5000, 500)
    low, high = (evaluate_serving(llama, h100, workload, plans, target_concurrency=c) for c in (150, 250))
    assert high.requests_per_s[0] == pytest.approx(low.requests_per_s[0])
    assert (high.ttft_ms_p50[0] - low.ttft_ms_p50[0]) / 1e3 == pytest.approx(100 / low.requests_per_s[0], rel=1e-6)
    assert high.bottleneck[0] == "kv_capacity" and high.decode_batch[0] == pytest.approx(high.max_decode_batch[0])
    one = evaluate_serving(llama, h100, workload, plans, target_concurrency=1)
    assert one.ttft_ms_p50[0] < low.ttft_ms_p50[0] / 10 and one.decode_batch[0] == pytest.approx(1.0, rel=0.05)


def test_goodput_is_where_the_slo_check_flips(llama, cluster):
    # Just below the goodput both SLOs hold at the SLO percentile; just above, one of them breaks.
    plans = ServingPlanArrays.aggregated(_instances([2, 4, 8], weight_precision="fp8"), 1)
    workload = load_workload("chat-1k-1k")
    good = evaluate_serving(llama, cluster, workload, plans).goodput_requests_per_s
    assert np.all(good > 0)
    for i, rate in enumerate(good):
        below = evaluate_serving(llama, cluster, workload, plans.take(np.array([i])), target_rate_per_s=float(rate) * 0.99)
        above = evaluate_serving(llama, cluster, workload, plans.take(np.array([i])), target_rate_per_s=float(rate) * 1.01)
        assert not (below.violations["ttft_slo_met"][0] or below.violations["tpot_slo_met"][0])
        assert above.violations["ttft_slo_met"][0] or above.violations["tpot_slo_met"][0]


def test_nvls_buffers_lower_the_kv_pool_of_tp_groups_only(llama):
    # NCCL's NVLS buffers (1.49 GiB a GPU, ServingOptions.nvls_buffer_gib) exist for TP groups on an NVLink
    # SHARP domain: the KV pool of a TP2 rank loses 1.49 GiB per GPU x 2 GPUs / 327,680 B a token (BF16
    # Llama 3 70B, whole model) = 9,773 tokens (rounded to pages); TP1 has no TP group and loses nothing.
    nvls = load_cluster("h100x8")
    plain = nvls.with_overrides({"topology.nvls": False})
    plans = ServingPlanArrays.aggregated(_instances([1, 2], weight_precision="fp8"), 1)
    with_nvls, without = (evaluate_serving(llama, c, _fixed(1000, 100), plans) for c in (nvls, plain))
    lost = without.kv_capacity_tokens - with_nvls.kv_capacity_tokens
    assert lost[0] == 0
    assert lost[1] == pytest.approx(1.49 * 2 ** 30 / (327_680 / 2), abs=16)
    assert with_nvls.memory_gib["decode"]["comm_buffers"][1] - without.memory_gib["decode"]["comm_buffers"][1] \
        == pytest.approx(1.49)


def test_sliding_window_model_holds_twice_the_requests():
    # GPT-OSS-120B: 18 of its 36 layers slide over 128 tokens, so a 32K-context request holds about half the
    # KV the pool's per-token capacity (every layer) assumes: the largest decode batch is the exact request
    # count (memory.kv_requests_per_rank), about twice kv_capacity_tokens / context.
    model = load_model("gpt-oss-120b").spec
    h200 = load_cluster("h200x8")
    plans = ServingPlanArrays.aggregated(_instances([2], weight_precision="fp4", max_num_seqs=1024), 1)
    m = evaluate_serving(model, h200, _fixed(30_000, 5_000), plans)
    context = 30_000 + 5_000 / 2
    naive = m.kv_capacity_tokens[0] / context
    assert 1.9 * naive <= m.max_decode_batch[0] <= 2.0 * naive + 1


def test_closed_loop_ttft_against_nim_llama33_70b_tp2_sweep(llama):
    # NVIDIA NIM LLM benchmarking, "Performance", Llama-3.3-70b-instruct NIM 1.8.0, 2 x H100 80G, fp8 TP2,
    # 5000 input / 500 output tokens (docs.nvidia.com/nim/benchmarking/llm/1.0.0/performance, retrieved
    # 2026-12): average TTFT 546.7 / 688.69 / 834.51 ms at concurrency 5 / 25 / 50. A closed loop's requests
    # are not Poisson: with the mean-value analysis wait the mean TTFT rises with C as published (an open-loop
    # M/G/1 wait at the same rate gave 368 / 374 / 493 ms at p50, 33-46% low).
    h100 = load_cluster("h100x8")
    plans = ServingPlanArrays.aggregated(_instances([2], weight_precision="fp8", kv_dtype="fp8"), 1)
    published = {5: 546.7, 25: 688.69, 50: 834.51}
    means = {}
    for c, ttft_ms in published.items():
        m = evaluate_serving(llama, h100, _fixed(5000, 500), plans, target_concurrency=c)
        means[c] = m.ttft_ms_mean[0]
        assert means[c] == pytest.approx(ttft_ms, rel=0.25)
    one = evaluate_serving(llama, h100, _fixed(5000, 500), plans, target_concurrency=1)
    assert one.ttft_ms_mean[0] == pytest.approx(one.ttft_ms_p50[0], rel=1e-3)  # one user never queues
    assert one.ttft_ms_mean[0] < means[5] < means[25] < means[50]


def test_disaggregated_closed_loop_waits_by_mean_value_analysis(llama, cluster):
    # One TP4 prefill and one TP4 decode instance, 2,000-token prompts: one user never waits (TTFT = its
    # prefill and KV transfer); with more users the prefill rank's wait is u rho S / (1 - u rho), u = (C - 1)/C,
    # the decode batch is what the prefill phase does not hold, and Little's law closes the loop:
    # C = X (TTFT_mean + n_dec T) below saturation and past it.
    plans = ServingPlanArrays.disaggregated_plans(_instances([4]), _instances([4]), [1], [1])
    workload = _fixed(2000, 200)
    alone = evaluate_serving(llama, cluster, workload, plans, target_concurrency=1)
    assert alone.ttft_ms_mean[0] == pytest.approx(alone.ttft_ms_p50[0], rel=1e-6)
    means = [alone.ttft_ms_mean[0]]
    for c in (8, 32, 128):
        m = evaluate_serving(llama, cluster, workload, plans, target_concurrency=c)
        means.append(m.ttft_ms_mean[0])
        step_s = 1.0 / m.tokens_per_s_per_user[0]
        assert m.requests_per_s[0] * (m.ttft_ms_mean[0] / 1e3 + 199 * step_s) == pytest.approx(c, rel=0.01)  # grid interpolation
    assert means[0] < means[1] < means[2] < means[3]


def test_cuda_graphs_never_lose_at_equal_batch(llama):
    # Llama 3 70B TP8 on H100, 512 requests, 2,048-token chunks; a mixed step of 512 + 1,536 tokens runs eagerly
    # either way (past the 512 captured tokens). Without an overlap scheduler a step's host work and its GPU work
    # add (cost_model.serving.step.step_total_s), so the eager engine pays its ~1,100-kernel issue (22.5 ms at
    # the 20 us prior) on top of every decode step, the graphed one a 30 us graph launch: graphs win at every
    # batch, the top one included (before, the GPU-bound top batch hid the eager issue and both were equal).
    cluster = load_cluster("h100x8")
    instances = _instances([8, 8], max_num_seqs=[512, 512], max_num_batched_tokens=2048, cuda_graphs=[True, False])
    m = evaluate_serving(llama, cluster, load_workload("chat-1k-1k"), ServingPlanArrays.aggregated(instances, 1))
    assert m.max_decode_batch[0] == m.max_decode_batch[1] == 512  # max_num_seqs binds, not the KV pool
    assert m.max_load_output_tokens_per_s_per_gpu[0] > 1.1 * m.max_load_output_tokens_per_s_per_gpu[1]
    assert m.goodput_requests_per_s_per_gpu[0] > m.goodput_requests_per_s_per_gpu[1]
    for rate in (0.5, 2.0, 8.0):
        at = evaluate_serving(llama, cluster, load_workload("chat-1k-1k"), ServingPlanArrays.aggregated(instances, 1),
                              target_rate_per_s=rate)
        assert at.tpot_ms_p50[0] <= at.tpot_ms_p50[1] + 1e-9 and at.ttft_ms_p50[0] <= at.ttft_ms_p50[1] + 1e-9


def test_without_a_load_an_slo_reports_latencies_at_each_plans_goodput(llama):
    # chat-1k-1k: SLO p99 TTFT 450 ms, TPOT 40 ms, no rate. Before, the latencies were those of full engines
    # (Llama 3 70B TP8 bf16: TPOT p99 47.4 ms) beside "meets the SLO at its goodput". Now each plan is at its
    # goodput: latencies within the SLO, the binding one at it; full engines under max_load_*.
    cluster = load_cluster("h100x8")
    workload = load_workload("chat-1k-1k")
    slo = workload.slo
    plans = ServingPlanArrays.aggregated(_instances([2, 4, 8], max_num_seqs=512, max_num_batched_tokens=2048), 1)
    m = evaluate_serving(llama, cluster, workload, plans)
    assert m.load == "at goodput"
    meets = m.goodput_requests_per_s > 0
    assert meets.all()
    assert not (m.violations["ttft_slo_met"] | m.violations["tpot_slo_met"]).any()
    assert np.all(m.ttft_ms_p99 <= slo.ttft_ms * (1 + 1e-6)) and np.all(m.tpot_ms_p99 <= slo.tpot_ms * (1 + 1e-6))
    # An SLO binds (TP4: the latency at it), or the engine's top rate does (TP2: 3 requests fill its KV pool),
    # or a peak of the capacity before the SLO's crossing does (TP8: its decode GEMMs are compute bound past
    # ~240 requests, and 298 requests need a third 128-row tile, so the step grows faster than the batch and
    # the rate the engine carries dips before TPOT reaches 40 ms; the goodput stays at the peak, below the SLO).
    binding = np.maximum(m.ttft_ms_p99 / slo.ttft_ms, m.tpot_ms_p99 / slo.tpot_ms)
    at_top = m.output_tokens_per_s_per_gpu >= m.max_load_output_tokens_per_s_per_gpu * (1 - 1e-9)
    assert at_top.tolist() == [True, False, False]
    assert binding[1] == pytest.approx(1.0, rel=0.01)
    assert 0.7 < binding[2] < 0.99
    np.testing.assert_allclose(m.output_tokens_per_s_per_gpu, m.goodput_requests_per_s * 1000 / m.num_gpus)
    # The same plans at max load: more throughput, latencies past the SLO (every engine full).
    assert np.all(m.max_load_output_tokens_per_s_per_gpu >= m.output_tokens_per_s_per_gpu)
    assert m.max_load_tpot_ms_p99[2] > slo.tpot_ms and m.max_load_decode_batch[2] == pytest.approx(512)
    # At an explicit rate equal to the goodput the figures are the same open-loop ones.
    at = evaluate_serving(llama, cluster, workload, plans.take(np.array([2])),
                          target_rate_per_s=float(m.goodput_requests_per_s[2]))
    assert at.tpot_ms_p99[0] == pytest.approx(m.tpot_ms_p99[2], rel=1e-9)
    assert at.ttft_ms_p99[0] == pytest.approx(m.ttft_ms_p99[2], rel=1e-9)


def test_max_load_is_the_largest_sustainable_batch_whatever_the_slo(llama):
    # trtllm-bench's max-load throughput has no latency bound: the same with or without an SLO, and it is the
    # engine at its largest batch (max_num_seqs or what the KV pool holds), chunk budget permitting.
    cluster = load_cluster("h100x8")
    plans = ServingPlanArrays.aggregated(_instances([8, 8, 8], max_num_seqs=[64, 256, 4096],
                                                    max_num_batched_tokens=8192), 1)
    free = evaluate_serving(llama, cluster, load_workload("fixed-1k-1k"), plans)
    bound = evaluate_serving(llama, cluster, load_workload("chat-1k-1k"), plans)
    np.testing.assert_allclose(free.max_load_output_tokens_per_s_per_gpu, bound.max_load_output_tokens_per_s_per_gpu)
    np.testing.assert_allclose(free.max_load_decode_batch, bound.max_load_decode_batch)
    # max_num_seqs binds the first two, the KV pool the third (4,096 requests of ~1,500 tokens do not fit).
    assert free.max_decode_batch.tolist()[:2] == [64, 256] and free.max_decode_batch[2] < 4096
    assert np.all(np.diff(free.max_load_output_tokens_per_s_per_gpu) > 0)
    # Closed form at batch 64 (the chunk budget leaves c = 8192 - 64 prompt tokens a step): the engine runs
    # B / (n_dec T) requests/s with T the mean step, and the prompt phase keeps up, so the decode batch is B.
    assert free.max_load_decode_batch[0] == pytest.approx(64, rel=1e-6)
    step_s = 1.0 / free.max_load_tokens_per_s_per_user[0]
    expected = 64 / (999 * step_s) * 1000 / 8
    assert free.max_load_output_tokens_per_s_per_gpu[0] == pytest.approx(expected, rel=1e-6)


def test_kv_reserved_to_completion_holds_whole_requests(llama):
    # Llama 3 70B FP8 on 2 H100 (TP2, FP8 KV), 1,024-token prompts and 8,192-token answers, KV-bound. An engine
    # that pages KV on demand holds requests of the mean context, 1,024 + 8,192 / 2 = 5,120 tokens; TensorRT-LLM's
    # GUARANTEED_NO_EVICT reserves each to completion, 1,024 + 8,192 = 9,216 tokens: 5,120 / 9,216 = 0.556 of
    # the batch (each count floored to whole requests of whole 16-token pages: 320 and 576 pages).
    from cost_model.serving.options import ServingOptions

    h100 = load_cluster("h100x8")
    plans = ServingPlanArrays.aggregated(_instances([2], weight_precision="fp8", kv_dtype="fp8", max_num_seqs=4096), 1)
    paged = evaluate_serving(llama, h100, _fixed(1024, 8192), plans)
    reserved = evaluate_serving(llama, h100, _fixed(1024, 8192), plans,
                                ServingOptions(kv_reserved_to_completion=True))
    assert paged.kv_capacity_tokens[0] == reserved.kv_capacity_tokens[0]
    pool = paged.kv_capacity_tokens[0]
    assert paged.max_decode_batch[0] == math.floor(pool / 5120)
    assert reserved.max_decode_batch[0] == math.floor(pool / 9216)
    assert reserved.max_decode_batch[0] / paged.max_decode_batch[0] == pytest.approx(5120 / 9216, abs=0.01)
    assert reserved.max_load_output_tokens_per_s_per_gpu[0] < paged.max_load_output_tokens_per_s_per_gpu[0]
