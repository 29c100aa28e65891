"""The serving calibration: serving_runs.csv read into runs, and the fit on them (serving_fit.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from cost_model.calibration.serving_runs import SUSPECT, UNPRICED_GPUS, load_serving_runs, skip_counts


@pytest.fixture(scope="module")
def table():
    return load_serving_runs()


def test_every_row_is_a_run_or_skipped_with_its_reason(table):
    runs, skipped = table
    assert sum(len(r.run_ids) for r in runs) + len(skipped) == 1750
    assert len({i for r in runs for i in r.run_ids}) == 1750 - len(skipped)  # no row in two runs
    kinds = Counter((r.source_group, r.kind) for r in runs)
    # 1,260 Splitwise rows: 420 power-capped skipped, the other 840 are 152 configurations (5 repeats each,
    # the 512/128 batch-1 point shared by three sweeps), 2 of them suspect.
    assert kinds[("splitwise_profile", "static_batch")] == 150
    assert kinds[("trtllm_v10", "max_load")] == 328 - 118  # 118 RTX PRO 6000 rows of the v1.0 page
    assert kinds[("trtllm_new", "max_load")] == 150 - 27   # 27 RTX PRO 6000 rows of the new page
    assert kinds[("mlperf_v41", "max_load")] == 2 and kinds[("mlperf_v41", "mlperf_server")] == 2
    reasons = skip_counts(skipped)
    assert reasons[UNPRICED_GPUS["H100 SXM 80GB (DGX-H100), power-capped"]] == 420
    assert reasons[UNPRICED_GPUS["RTX PRO 6000 Blackwell Server"]] == 145
    assert reasons[SUSPECT] == 10  # A100 and H100, 5 repeats each
    assert sum(reasons.values()) == 583


def test_a_dep_row_by_hand(table):
    runs, _ = table
    # trtllm_new-0001: 'Deepseek R1 0528', 1000/1000, 'B200 DEP4 (FP4)', 6463 tokens/s/GPU, KV fp8.
    run = next(r for r in runs if r.id == "trtllm_new-0001")
    assert (run.model, run.gpu, run.num_gpus, run.kind) == ("deepseek-v3", "b200", 4, "max_load")
    assert run.layout == {"tp": 1, "pp": 1, "ep": 4, "attn_dp": 4, "moe_tp": 1}
    assert (run.weight_precision, run.kv_dtypes, run.isl, run.osl) == ("fp4", ("fp8",), 1000, 1000)
    assert run.measured == {"output_tokens_per_s_per_gpu": 6463}
    assert run.gpus_per_instance == 4 and run.is_moe


def test_a_splitwise_configuration_collapses_to_the_median_of_its_repeats(table):
    runs, _ = table
    run = next(r for r in runs if r.id == "splitwise:llama2-70b|h100-80gb|4|1|512|128")
    # Rows 0216-0220 (repeated as 0306-0310 and 0356-0360): prompt times 59.2527 59.5557 59.6194 59.717
    # 59.7487, token times 29.2666 29.544 29.7181 29.7387 29.7623 -> medians 59.6194 and 29.7181.
    assert len(run.run_ids) == 15
    assert run.measured == {"ttft_ms": 59.6194, "tpot_ms": 29.7181}
    assert (run.model, run.gpu, run.layout["tp"], run.batch, run.weight_precision) == ("llama2-70b", "h100-sxm", 4, 1, "bf16")
    assert not run.cuda_graphs


def test_unpublished_moe_expert_parallelism_is_left_open(table):
    runs, _ = table
    # trtllm_v10 prints only TP for MoE runs: EP 0 = price EP 1 and EP = TP.
    run = next(r for r in runs if r.source_group == "trtllm_v10" and r.model == "qwen3-235b-a22b" and r.gpu == "h200-sxm")
    assert run.layout["tp"] == 8 and run.layout["ep"] == 0
    assert any("EP not published" in a for a in run.assumptions)


def test_mlperf_offline_takes_the_layout_of_the_same_systems_server_run(table):
    runs, _ = table
    offline = next(r for r in runs if r.id == "mlperf_v41-0001")  # DGX-H100 Offline, llama2-70b-99.9
    assert offline.kind == "max_load" and offline.layout["tp"] == 2 and offline.replicas == 4
    assert offline.weight_precision == "fp8"
    assert offline.measured["output_tokens_per_s_per_gpu"] == pytest.approx(3065.61)
