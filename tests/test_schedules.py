"""Pipeline schedules (cost_model/schedules.py) against the papers' own tables, and their pricing.

* Zero Bubble (Qi et al. 2024, ICLR, arXiv 2401.10241): section 2's bubbles (p-1)(T_F + T_B - T_W) for
  ZB-H1 and (p-1)(T_F + T_B - 2T_W) for ZB-H2, peak (2p-1) M_B for ZB-H2; the authors' comparison table
  (huggingface.co/spaces/sail/zero-bubble-pipeline-parallellism, description2.md) at T_F = T_B = T_W:
  bubble rate (p-1)/m, (p-1)/3m, 0, 0; activation memory 1x, 1x, 2x, 1x; PP communication 1x, 1x, 1x, 2x
  (1F1B, ZB1P, ZB2P, ZBV).
* DualPipe (DeepSeek-V3 report arXiv 2412.19437 Table 2; github.com/deepseek-ai/DualPipe README, "based on
  the same number of PP stages"): bubble (PP-1)(F+B), (PP-1)(F+B-2W), (PP/2-1)(F&B+B-3W) twice; parameters
  per device 1x, 1x, 2x, 2x; activations per device PP, PP, PP+1, PP+1 (1F1B, ZB1P, DualPipe, DualPipeV
  on PP/2 devices).
* DualPipe's step order (dualpipe.py / dualpipev.py ``step``): the F&B pairs a rank runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from cost_model.calibration.validate import DEFAULT_DATASET, read_runs, validate_row
from cost_model.evaluate import evaluate
from cost_model.model_loader import load_model
from cost_model.options import CostOptions
from cost_model.plan import SCHEDULES, PlanArrays
from cost_model.schedules import (DUALPIPE, DUALPIPEV, INTERLEAVED, ONE_F_ONE_B, ZB_H1, ZB_H2, ZBV, bubble_s,
                                  chunks_per_rank, in_flight_chunk_forwards, paired_chunk_share, parameter_copies)
from cost_model.stages import stage_layout
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster
from optimizer.plan_rules import violations

LLAMA8 = load_model("llama3-8b").spec      # 32 layers
LLAMA70 = load_model("llama3-70b").spec    # 80 layers
RNG = np.random.default_rng(7)


def _bubble(schedule: int, p, v, T, B, W) -> float:
    return float(bubble_s(np.array([schedule]), np.array([p]), np.array([v]), np.array([T], float),
                          np.array([B], float), np.array([W], float))[0])


def _in_flight_layer_sets(schedule: str, pp: int, vpp: int, m: int, model=LLAMA8) -> np.ndarray:
    """Layer x micro-batch activation sets each of the first, middle and last stage holds."""
    plans = PlanArrays.from_records([dict(tp=1, pp=pp, vpp=vpp, schedule=schedule)])
    return stage_layout(model, plans, np.array([m])).in_flight_layers[0]


@pytest.mark.parametrize("p", [4, 8, 16])
def test_zero_bubble_table_at_equal_pass_times(p):
    """T_F = T_B = T_W = 1: T = 3, full backward 2."""
    m = 3 * p
    rate = {s: _bubble(s, p, 2 if s == ZBV else 1, 3.0, 2.0, 1.0) / (m * 3.0) for s in (ONE_F_ONE_B, ZB_H1, ZB_H2, ZBV)}
    assert rate[ONE_F_ONE_B] == pytest.approx((p - 1) / m)
    assert rate[ZB_H1] == pytest.approx((p - 1) / (3 * m))
    assert rate[ZB_H2] == 0.0 and rate[ZBV] == 0.0
    # Activation memory of the most loaded (first) stage, in micro-batches of the rank's layers (M_B).
    layers = LLAMA8.num_layers / p
    held = {s: _in_flight_layer_sets(s, p, 2 if s == "zbv" else 1, m)[0] / layers
            for s in ("1f1b", "zb-h1", "zb-h2", "zbv")}
    assert held == {"1f1b": p, "zb-h1": p, "zb-h2": 2 * p - 1, "zbv": p}  # 1x, 1x, (2p-1)/p -> 2x, 1x
    # ZB-V's peak is balanced: every rank holds p M_B (section 6), the last stage too.
    assert _in_flight_layer_sets("zbv", p, 2, m)[2] / layers == p
    # Pipeline sends per micro-batch follow the chunks a micro-batch crosses on a rank: 1x, 1x, 1x, 2x.
    codes = np.array([ONE_F_ONE_B, ZB_H1, ZB_H2, ZBV])
    assert chunks_per_rank(codes, np.array([1, 1, 1, 2])).tolist() == [1, 1, 1, 2]


def test_zero_bubble_section_2_bubbles_for_any_pass_times():
    for _ in range(50):
        F, B = RNG.uniform(0.5, 2.0, 2)
        W = RNG.uniform(0.2, min(F, B))  # a weight gradient: one GEMM pass, no longer than F or B
        p = int(RNG.integers(2, 33))
        T = F + B + W
        assert _bubble(ZB_H1, p, 1, T, B + W, W) == pytest.approx((p - 1) * (F + B - W))
        assert _bubble(ZB_H2, p, 1, T, B + W, W) == pytest.approx((p - 1) * max(0.0, F + B - 2 * W))
        assert _bubble(ONE_F_ONE_B, p, 1, T, B + W, W) == pytest.approx((p - 1) * T)
        assert _bubble(INTERLEAVED, p, 4, T, B + W, W) == pytest.approx((p - 1) * T / 4)


def test_dualpipe_readme_bubble_column():
    """F, B (full backward), W and F&B of one chunk, in the README's notation."""
    for _ in range(50):
        F = RNG.uniform(0.5, 2.0)
        W = RNG.uniform(0.2, F / 2)
        B = W + RNG.uniform(W, 2.0)  # the full backward: W plus an input-gradient pass at least as long
        FB = RNG.uniform(max(F, B), F + B)  # two overlapped chunks take at least the longer, at most both
        PP = 2 * int(RNG.integers(2, 17))
        assert _bubble(ONE_F_ONE_B, PP, 1, F + B, B, W) == pytest.approx((PP - 1) * (F + B))
        assert _bubble(ZB_H1, PP, 1, F + B, B, W) == pytest.approx((PP - 1) * (F + B - 2 * W))
        assert _bubble(DUALPIPE, PP, 1, FB, B, W) == pytest.approx((PP / 2 - 1) * (FB + B - 3 * W))
        # DualPipeV: the same PP stages on PP/2 devices, two chunks a device (its times are two chunks').
        assert _bubble(DUALPIPEV, PP // 2, 2, 2 * FB, 2 * B, 2 * W) == pytest.approx((PP / 2 - 1) * (FB + B - 3 * W))


@pytest.mark.parametrize("PP", [4, 8, 16])
def test_dualpipe_readme_parameter_and_activation_columns(PP):
    """Per device, in units of one of PP stages (L/PP layers): parameters 1, 1, 2, 2; activations PP, PP,
    PP+1, PP+1. DualPipeV runs the PP stages on PP/2 devices."""
    L = LLAMA8.num_layers
    stage = L / PP
    m = 4 * PP
    cases = {"1f1b": (PP, 1), "zb-h1": (PP, 1), "dualpipe": (PP, 1), "dualpipev": (PP // 2, 2)}
    params, activations = {}, {}
    for name, (devices, vpp) in cases.items():
        plans = PlanArrays.from_records([dict(tp=1, pp=devices, vpp=vpp, schedule=name)])
        layout = stage_layout(LLAMA8, plans, np.array([m]))
        params[name] = float(layout.parameter_copies[0, 0] * layout.layers[0, 1] / stage)
        activations[name] = layout.in_flight_layers[0].max() / stage
    assert params == {"1f1b": 1, "zb-h1": 1, "dualpipe": 2, "dualpipev": 2}
    assert activations == {"1f1b": PP, "zb-h1": PP, "dualpipe": PP + 1, "dualpipev": PP + 1}
    assert parameter_copies(np.array([DUALPIPE, DUALPIPEV])).tolist() == [2.0, 1.0]


def _dualpipe_pairs(num_ranks: int, num_chunks: int, rank: int) -> tuple[int, int]:
    """(F&B pairs, chunk forwards) of one rank, counted from DualPipe.step's loop bounds (dualpipe.py)."""
    half_rank = min(rank, num_ranks - 1 - rank)
    step_4 = num_chunks // 2 - num_ranks + half_rank + 1
    step_5 = num_ranks // 2 - half_rank - 1
    middle = rank in (num_ranks // 2 - 1, num_ranks // 2)  # its first step-4 pair runs unoverlapped
    return 2 * step_4 - middle + step_5, num_chunks


def _dualpipev_pairs(num_ranks: int, num_chunks: int, rank: int) -> tuple[int, int]:
    """(F&B pairs, chunk forwards) of one rank, from DualPipeV.step's loop bounds (dualpipev.py)."""
    step_4 = num_chunks - num_ranks * 2 + rank + 1
    step_5 = num_ranks - rank - 1
    return 2 * step_4 - (rank == num_ranks - 1) + step_5, 2 * num_chunks


@pytest.mark.parametrize("pp,m", [(8, 20), (16, 120), (4, 8)])
def test_paired_share_is_dualpipes_step_order(pp, m):
    ranks = np.array([[0, 1, pp - 1]])
    share = paired_chunk_share(np.array([DUALPIPE]), np.array([pp]), np.array([1]), np.array([m]), ranks)[0]
    for column, rank in enumerate(ranks[0]):
        pairs, forwards = _dualpipe_pairs(pp, m, int(rank))
        assert share[column] * forwards == pytest.approx(pairs)
    half = pp // 2
    share_v = paired_chunk_share(np.array([DUALPIPEV]), np.array([half]), np.array([2]), np.array([m]),
                                 np.array([[0, 1, half - 1]]))[0]
    for column, rank in enumerate((0, 1)):
        pairs, forwards = _dualpipev_pairs(half, m, rank)
        assert share_v[column] * forwards == pytest.approx(pairs)


def _rules(model, training, records) -> dict[str, list[bool]]:
    broken = violations(model, training, PlanArrays.from_records(records), allow_uneven=True)
    return {name: mask.tolist() for name, mask in broken.items() if mask.any()}


def test_schedule_rules():
    training = TrainingSpec(seq_length=4096, global_batch_size=64)
    ok = [dict(tp=1, pp=4, dp=2, schedule="dualpipe"), dict(tp=1, pp=4, dp=2, vpp=2, schedule="zbv"),
          dict(tp=1, pp=4, dp=2, vpp=2, schedule="dualpipev"), dict(tp=1, pp=4, dp=2, schedule="zb-h2")]
    assert _rules(LLAMA8, training, ok) == {}
    bad = {
        "schedule_chunks": dict(tp=1, pp=4, dp=2, schedule="zbv"),                      # a V needs vpp = 2
        "dualpipe_ranks_and_microbatches": dict(tp=1, pp=4, dp=16, schedule="dualpipe"),  # m = 4 < 2 pp
    }
    for rule, plan in bad.items():
        assert rule in _rules(LLAMA8, training, [plan]), rule
    # DualPipe needs an even pp: 80 layers on 5 ranks
    assert "dualpipe_ranks_and_microbatches" in _rules(LLAMA70, training, [dict(tp=1, pp=5, dp=2, schedule="dualpipe")])
    # pp = 1 runs 1F1B only
    assert "schedule_chunks" in _rules(LLAMA8, training, [dict(tp=1, pp=1, dp=8, schedule="zb-h1")])


CLUSTER = load_cluster("h100x1024")
TRAIN70 = TrainingSpec(seq_length=8192, global_batch_size=256)


def _priced(schedule: str, **plan):
    record = dict(tp=8, pp=8, dp=4, micro_batch=1, sequence_parallel=True, zero_stage=1, schedule=schedule) | plan
    return evaluate(LLAMA70, TRAIN70, CLUSTER, PlanArrays.from_records([record]))


def test_weight_gradient_split_prices_the_zero_bubble_bubbles_consistently():
    """One plan under 1F1B, ZB-H1 and ZB-H2: the bubbles (p-1)T, (p-1)(T-2W) and (p-1)max(0, T-3W) share
    one T and one W: those of the ranks the fill and drain pass through, every rank but the bottleneck
    (the first, p - 2 middle ranks, the last: the bottleneck, with the LM head)."""
    p = 8
    one, h1, h2 = (_priced(s) for s in ("1f1b", "zb-h1", "zb-h2"))
    first, middle, last = one.extras["step_time_by_stage"][0]
    assert last > max(first, middle)
    T = (first + (p - 2) * middle) / (p - 1)
    assert one.step_time_parts_s["pp_bubble"][0] == pytest.approx((p - 1) * T)
    W = (one.step_time_parts_s["pp_bubble"][0] - h1.step_time_parts_s["pp_bubble"][0]) / (2 * (p - 1))
    assert 0.1 * T < W < T / 3  # the weight-gradient GEMMs: one of a layer's three GEMM passes
    assert h2.step_time_parts_s["pp_bubble"][0] == pytest.approx(max(0.0, (p - 1) * (T - 3 * W)))
    assert h2.step_time_s[0] < h1.step_time_s[0] < one.step_time_s[0]
    assert h2.memory_bytes[0] > one.memory_bytes[0]  # 2p - 1 micro-batches on the first stage


def test_dualpipe_keeps_two_copies_of_the_layers():
    one, dual = _priced("1f1b", pp=8, dp=4), _priced("dualpipe", pp=8, dp=4)
    middle = 1
    ratio = dual.extras["memory_by_stage"].weights[0, middle] / one.extras["memory_by_stage"].weights[0, middle]
    assert ratio == pytest.approx(2.0)


def test_deferred_weight_gradients_keep_what_recompute_dropped():
    """Without recompute a pending W pass keeps no more than the layer kept (the papers' peaks); under
    full recompute it keeps one chunk pass's recomputed activations beyond the layer inputs."""
    plain = [_priced(s).extras["memory_by_stage"].activations[0, 0] for s in ("1f1b", "zb-h1")]
    assert plain[0] == pytest.approx(plain[1])
    full = [_priced(s, recompute="full").extras["memory_by_stage"].activations[0, 0] for s in ("1f1b", "zb-h1")]
    assert full[1] > full[0]


def test_deepseek_v3_own_run_within_15_percent():
    """DeepSeek-V3's published layout (2048 H800, PP16, EP64, ZeRO-1, DualPipe) against the report's
    180K GPU-hours per trillion tokens; priced as 1F1B it is far too slow."""
    row = next(r for r in read_runs(DEFAULT_DATASET) if r["id"] == "deepseek-v3-2024-2048xh800")
    assert row["plan"]["schedule"] == "dualpipe"
    error = validate_row(row, "published_runs.yaml").tflops_error
    assert abs(error) < 0.15
    as_1f1b = dict(row, plan=dict(row["plan"], schedule="1f1b"))
    assert validate_row(as_1f1b, "published_runs.yaml").tflops_error < error - 0.15


def test_interleaved_zero_bubble_warm_up_is_torchs():
    """torch's ScheduleInterleavedZeroBubble: warm-up (v-1) x (micro-batches a round = p) + (p-1-r) chunk
    forwards (_get_warmup_ops, multiply_factor=1), then a forward before the first backward; Megatron's
    interleaved 1F1B warms up (v-1) p + 2(p-1-r)."""
    p, v, m = 4, 2, 8
    ranks = np.array([[0, 1, 3]])
    zb = in_flight_chunk_forwards(np.array([ZB_H1]), np.array([[p]]), np.array([[v]]), np.array([[m]]), ranks)
    assert zb[0].tolist() == [(v - 1) * p + (p - 1 - r) + 1 for r in (0, 1, 3)] == [8, 7, 5]
    megatron = in_flight_chunk_forwards(np.array([INTERLEAVED]), np.array([[p]]), np.array([[v]]), np.array([[m]]),
                                        ranks)
    assert megatron[0].tolist() == [(v - 1) * p + 2 * (p - 1 - r) + 1 for r in (0, 1, 3)] == [11, 9, 5]


def test_search_tries_the_schedules_the_framework_runs():
    from optimizer.search import Scenario, search
    from optimizer.search_options import SearchOptions

    training = TrainingSpec(seq_length=4096, global_batch_size=64)
    cluster = load_cluster("h100x16")
    found = {}
    for framework, schedules in (("megatron", ()), ("torchtitan", ()), ("torchtitan", ("zbv",))):
        options = SearchOptions(framework=framework, schedules=schedules, top_k=3, pp_values=(2, 4))
        result = search(Scenario(LLAMA8, training, cluster, options), keep_feasible=True)
        found[(framework, schedules)] = {SCHEDULES[code] for code in np.unique(result.feasible_plans.schedule)}
    assert found[("megatron", ())] == {"1f1b", "interleaved"}
    assert found[("torchtitan", ())] == {"1f1b", "interleaved", "zb-h1", "zbv", "dualpipev"}
    assert found[("torchtitan", ("zbv",))] == {"zbv"}
    with pytest.raises(ValueError, match="megatron runs 1f1b, interleaved only"):
        SearchOptions(schedules=("zb-h2",))


def test_the_one_f_one_b_fill_and_drain_run_through_the_other_ranks():
    # Ranks: first 3 s, two middle ranks of 2 s, last (LM head) 5 s, the bottleneck: the others average
    # (3 + 2 x 2) / 3; with pp = 2 the other rank is the first; with one rank there is no other.
    from cost_model.schedules import other_ranks_mean_s
    per_stage = np.array([[3.0, 2.0, 5.0], [3.0, -np.inf, 5.0], [4.0, -np.inf, -np.inf]])
    exists = np.array([[True, True, True], [True, False, True], [True, False, False]])
    mean = other_ranks_mean_s(per_stage, exists, np.array([4, 2, 1]), np.array([5.0, 5.0, 4.0]))
    np.testing.assert_allclose(mean, [7.0 / 3.0, 3.0, 4.0])


def test_a_heavier_last_rank_shrinks_the_bubble_below_its_own_time():
    from cost_model.evaluate import evaluate
    from cost_model.model_loader import load_model
    from cost_model.options import CostOptions
    from cost_model.plan import PlanArrays
    from cost_model.training_spec import TrainingSpec
    from hardware.loader import load_cluster
    model = load_model("llama3-70b").spec
    plans = PlanArrays.from_records([dict(tp=8, pp=8, dp=4, micro_batch=1, sequence_parallel=True)])
    m = evaluate(model, TrainingSpec(seq_length=8192, global_batch_size=128), load_cluster("h100x1024"), plans,
                 CostOptions())
    microbatches = 128 / 4
    per_microbatch = (m.step_time_parts_s["compute"] + m.step_time_parts_s["tp_comm"]) / microbatches
    # The last rank (10 layers + the 128K-vocabulary head) is the bottleneck; the bubble is 7 lighter ranks.
    assert 0 < m.step_time_parts_s["pp_bubble"][0] < 7 * per_microbatch[0]


def test_blocking_exchanges_follow_megatrons_send_calls():
    # 1F1B: send_forward_recv_backward after each forward and send_backward_recv_forward after each
    # backward; the first rank has no previous and the last no next stage, so 1, 2, 1 exchanges a
    # micro-batch (1, -, 1 with two ranks; none with one). Megatron-LM's interleaved schedule before
    # --overlap-p2p-communication: one exchange with both neighbours a chunk pair, 2 transfers, 2v a
    # micro-batch on every rank; none where the sends overlap (their fill and drain are 2(p-1)).
    from cost_model.schedules import blocking_exchanges_per_microbatch, fill_drain_p2p_transfers
    schedule = np.array([ONE_F_ONE_B, ONE_F_ONE_B, ONE_F_ONE_B, INTERLEAVED, DUALPIPE])
    pp, vpp = np.array([4, 2, 1, 8, 8]), np.array([1, 1, 1, 3, 1])
    blocking = blocking_exchanges_per_microbatch(schedule, pp, vpp, overlapped=False)
    np.testing.assert_array_equal(blocking, [[1, 2, 1], [1, 0, 1], [0, 0, 0], [6, 6, 6], [0, 0, 0]])
    overlapped = blocking_exchanges_per_microbatch(schedule, pp, vpp, overlapped=True)
    np.testing.assert_array_equal(overlapped[3], [0, 0, 0])
    np.testing.assert_array_equal(overlapped[:3], blocking[:3])
    # A stack whose sends and receives are separate calls: two transfers a micro-batch on every rank.
    serial = blocking_exchanges_per_microbatch(schedule, pp, vpp, overlapped=False, batched=False)
    np.testing.assert_array_equal(serial[:3], [[2, 2, 2], [2, 0, 2], [0, 0, 0]])
    np.testing.assert_array_equal(fill_drain_p2p_transfers(schedule, pp, overlapped=False), [0, 0, 0, 0, 14])
    np.testing.assert_array_equal(fill_drain_p2p_transfers(schedule, pp, overlapped=True), [0, 0, 0, 14, 14])


@pytest.mark.parametrize("stack, vpp, exchanges", [
    ("megatron-lm-2021", 1, 1.0),    # 1F1B, the LM-head rank the bottleneck: one exchange a micro-batch
    ("megatron-lm-2021", 2, 4.0),    # blocking interleaved: 2 v transfers a micro-batch
    ("megatron-core", 2, 0.0),       # --overlap-p2p-communication: only the fill and drain, 2 (p - 1)
])
def test_pipeline_sends_on_the_critical_path_by_hand(stack, vpp, exchanges):
    from cost_model.communication import CommPricer, pipeline_p2p, place
    from cost_model.model_loader import build_training
    model = load_model("llama3-8b").spec
    training = build_training(dict(seq_length=4096, global_batch_size=64, stack=stack, precision="bf16"),
                              source="test", model=model)  # the stack's own overlaps and kernels
    cluster = load_cluster("h100x1024")
    plans = PlanArrays.from_records([dict(tp=2, pp=4, dp=1, vpp=vpp, micro_batch=1)])
    metrics = evaluate(model, training, cluster, plans, CostOptions())
    p2p_s = pipeline_p2p(model, training, plans, CommPricer(cluster, place(cluster, plans, CostOptions())))[0][0]
    assert metrics.bottleneck_stage[0] == 2
    expected = 64 * exchanges * p2p_s + (2 * 3 * p2p_s if exchanges == 0 else 0.0)
    assert metrics.step_time_parts_s["pp_comm"][0] == pytest.approx(expected, rel=1e-9)
