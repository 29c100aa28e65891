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
    # trtllm_v10 prints only TP for MoE runs: EP 0 = price EP 1 and EP = TP. Its MoE llm_options enable attention
    # DP (placed at the top level in the review of NVIDIA/TensorRT-LLM PR #7848): 'TP8' runs as DEP8.
    run = next(r for r in runs if r.source_group == "trtllm_v10" and r.model == "qwen3-235b-a22b" and r.gpu == "h200-sxm")
    assert run.layout["tp"] == 1 and run.layout["attn_dp"] == 8 and run.layout["ep"] == 0
    assert run.gpus_per_instance == 8 and run.layout_text == "DEP8"
    assert any("EP not published" in a for a in run.assumptions)
    assert any("PR #7848" in a for a in run.assumptions)
    # A single-GPU MoE column and every dense column keep their printed TP.
    scout = next(r for r in runs if r.source_group == "trtllm_v10" and r.model == "llama4-scout" and r.gpu == "b200")
    llama = next(r for r in runs if r.source_group == "trtllm_v10" and r.model == "llama3-405b" and r.gpu == "h200-sxm")
    assert scout.layout["attn_dp"] == 1 and llama.layout["tp"] == 8 and llama.layout["attn_dp"] == 1


def test_gpt_oss_runs_its_mxfp4_checkpoint_on_every_gpu(table):
    runs, _ = table
    # The perf page's H200 'TP1 (FP8)' column of GPT-OSS-120B: no GPT-OSS FP8 checkpoint is listed, and the
    # GPT-OSS llm_options run the MoE on Triton on Hopper: the released MXFP4 weights, priced as fp4 (weight-only
    # on Hopper), with the 'auto' (BF16) KV the page gives Hopper.
    oss = [r for r in runs if r.model.startswith("gpt-oss")]
    assert oss and all(r.weight_precision == "fp4" for r in oss)
    h200 = next(r for r in oss if r.model == "gpt-oss-120b" and r.gpu == "h200-sxm")
    assert h200.kv_dtypes == ("bf16",) and any("read as 'fp4'" in a for a in h200.assumptions)


def test_trtllm_pytorch_rows_reserve_kv_to_completion(table):
    runs, _ = table
    # TensorRT-LLM's default GUARANTEED_NO_EVICT capacity scheduler on the PyTorch-backend perf pages; the
    # Splitwise profile (static batches) and MLPerf's harness are not marked.
    by_source = {}
    for r in runs:
        by_source.setdefault(r.source_group, set()).add(r.kv_reserved_to_completion)
    assert by_source["trtllm_new"] == {True} and by_source["trtllm_v10"] == {True}
    assert by_source["splitwise_profile"] == {False} and by_source["mlperf_v41"] == {False}


def test_mlperf_offline_takes_the_layout_of_the_same_systems_server_run(table):
    runs, _ = table
    offline = next(r for r in runs if r.id == "mlperf_v41-0001")  # DGX-H100 Offline, llama2-70b-99.9
    assert offline.kind == "max_load" and offline.layout["tp"] == 2 and offline.replicas == 4
    assert offline.weight_precision == "fp8"
    assert offline.measured["output_tokens_per_s_per_gpu"] == pytest.approx(3065.61)


# --- the fit ---------------------------------------------------------------------------------------------

import dataclasses  # noqa: E402

import numpy as np  # noqa: E402

from cost_model.calibration import serving_fit as sf  # noqa: E402
from cost_model.calibration.fit import FitProblem, Parameter, fit, leave_one_source_out  # noqa: E402

TRUE = {"step_overhead_per_request_us": 40.0, "hbm.ampere": 0.92, "hbm.hopper": 1.08,
        "gemm.ampere.bf16": 0.8, "gemm.hopper.bf16": 1.15}
"""Serving parameters that generate the synthetic rows, each away from its prior (10 us, 1, 1, 1, 1)."""


@pytest.fixture(scope="module")
def synthetic(table):
    """Splitwise's Llama 2 70B layouts and batches at OSL 128, their prompt and token times replaced by the
    serving model's own predictions at TRUE: the data a fit should read TRUE back from."""
    runs, _ = table
    truth = {**sf.priors(), **TRUE}
    out = []
    for run in runs:
        if run.kind == "static_batch" and run.model == "llama2-70b" and run.osl == 128:
            predicted = sf.predict(run, truth)
            out.append(dataclasses.replace(run, measured={q: predicted[q] for q in ("ttft_ms", "tpot_ms")},
                                           source_group=f"synthetic-{run.gpu}"))
    return out


def test_the_fit_recovers_the_parameters_that_generated_the_rows(synthetic):
    rows = sf.observations(synthetic)
    assert len(rows) == 152  # 38 configurations on each of two GPUs, a prompt and a token time each
    # Wide priors: recovery is the data's doing, not the priors'.
    wide = dataclasses.replace(sf.SERVING, parameters=tuple(dataclasses.replace(p, prior_log_sd=5.0)
                                                             for p in sf.PARAMETERS))
    result = fit(rows, problem=wide, max_iterations=20, tolerance=1e-4)
    for name, value in TRUE.items():
        # The per-request time is 40 us x at most 64 requests, 2.6 ms of 40-70 ms steps, and without an overlap
        # scheduler it adds to the GPU's work, whose KV reads and fixed kernel times grow with the batch as well:
        # nearly collinear here, read within 35% (28 us, the residuals below 0.1%); the max-load tables, hundreds
        # to thousands of requests a step, are what pin it in the real fit.
        assert result.values[name] == pytest.approx(value, rel=0.35 if name == "step_overhead_per_request_us"
                                                    else 0.03), name
    assert np.median(np.abs(result.residuals)) < 0.005
    # No H100/A100 FP8 or Blackwell row: those parameters stay at their priors.
    assert result.values["gemm.hopper.fp8"] == 1.0 and result.values["hbm.blackwell"] == 1.0
    assert result.touched["gemm.blackwell.fp4"] == 0


class _Row:
    def __init__(self, source_group: str, x: float, measured: float):
        self.source_group, self.x, self.measured = source_group, x, measured


class _Priced:
    def __init__(self, row: _Row, predicted: float):
        self.row, self.predicted = row, predicted


def test_leave_one_source_out_fits_without_the_held_out_source():
    # y = rate * x; sources a and b measure rate 2, source c measures rate 5. The fold without c must find
    # 2 (c's rows play no part in it) and price c's rows 60% low; the folds without a or b see c.
    problem = FitProblem(
        parameters=(Parameter("rate", 1.0, 5.0, 0.1, 10.0, "slope", "test"),),
        row_parameters=lambda row: ["rate"],
        price=lambda row, values: _Priced(row, values["rate"] * row.x),
        error=lambda priced: (priced.predicted - priced.row.measured) / priced.row.measured)
    rows = ([_Row("a", x, 2 * x) for x in (1, 2, 3)] + [_Row("b", x, 2 * x) for x in (4, 5)]
            + [_Row("c", x, 5 * x) for x in (1, 2)])
    full = fit(rows, problem=problem, max_iterations=30, tolerance=1e-6)
    assert 2.0 < full.values["rate"] < 5.0
    folds = {f.source_group: f for f in leave_one_source_out(full, max_iterations=30, tolerance=1e-6)}
    assert folds["c"].values["rate"] == pytest.approx(2.0, rel=1e-3)
    assert [p.row for p in folds["c"].held_out] == rows[5:]
    assert [problem.error(p) for p in folds["c"].held_out] == pytest.approx([-0.6, -0.6], rel=1e-3)
    assert folds["a"].values["rate"] > 2.05 and len(folds["a"].held_out) == 3


def _priced(run_id: str, gpu: str, measured: float, predicted: float, quantity: str = sf.MAX_LOAD):
    run = sf.ServingRun(id=run_id, source_group="s", run_ids=(run_id,), kind="max_load", model="m", gpu=gpu,
                        num_gpus=1, layout={"tp": 1, "pp": 1, "ep": 1, "attn_dp": 1, "moe_tp": 1},
                        weight_precision="fp8", kv_dtypes=("fp8",), replicas=1, isl=1000, osl=1000)
    return sf.PricedObservation(sf.Observation(run, quantity, measured), predicted, True, "TP1")


def test_gpu_generation_pairs_by_hand():
    # Three GPUs on one model and workload: H100 1000, H200 1500, B200 3000 measured. Predicted H100 1100,
    # H200 1050 (wrongly below H100), B200 2500: of the 3 pairs, H100-B200 and H200-B200 are ordered right.
    priced = [_priced("1", "h100-sxm", 1000, 1100), _priced("2", "h200-sxm", 1500, 1050),
              _priced("3", "b200", 3000, 2500)]
    assert sf.generation_pairs(priced) == (2, 3)
    # A GB200 at 3050 (predicted 100): its pair with the B200 is a tie within 2% and not counted; its pairs
    # with the H100 and H200 are both ordered wrong.
    assert sf.generation_pairs(priced + [_priced("4", "gb200-nvl72", 3050, 100)]) == (2, 5)


def test_family_departures_reach_the_gpu_the_step_prices():
    from cost_model.serving.options import ServingOptions
    from cost_model.serving.plan import InstanceArrays
    from cost_model.serving.step import price_instances
    from cost_model.model_loader import load_model
    from hardware.loader import load_cluster

    h100, a100 = load_cluster("h100-sxm"), load_cluster("a100-sxm-80gb")
    values = {"hbm.hopper": 0.9, "gemm.hopper.fp8": 1.1, "gemm.ampere.bf16": 2.0}
    # H100: HBM 0.85 x 0.9; FP8 GEMMs the preset's training-fitted share x 1.1; its BF16 share untouched.
    assert sf.serving_gpu_overrides(h100.gpu, values) == pytest.approx(
        {"hbm_efficiency": 0.85 * 0.9, "gemm_efficiency_fp8": h100.gpu.gemm_efficiency_fp8 * 1.1})
    # A100: a departure never lifts an efficiency past 0.98.
    assert sf.serving_gpu_overrides(a100.gpu, values) == {"gemm_efficiency": 0.98}
    # The step pricing applies what the options carry: a 10% slower HBM stretches a weight-bound step.
    model = load_model("llama3-70b").spec
    instances = InstanceArrays.from_columns({"tp": [2], "max_num_seqs": [1], "max_num_batched_tokens": [2048]})
    base = ServingOptions(gpu_departures=())
    slow = base.with_changes(gpu_departures=(("hbm.hopper", 0.9),))
    hbm = [price_instances(model, h100, instances, o).decode_step(1, 1000).hbm_s[0] for o in (base, slow)]
    assert hbm[1] == pytest.approx(hbm[0] / 0.9)


def test_validate_serving_prints_one_source_and_refuses_an_unknown_one(capsys):
    import json

    from tests.test_cli import run

    code, out, err = run(capsys, "validate", "--serving", "--source", "mlperf_v41", "--format", "json")
    assert code == 0
    document = json.loads(out)
    # 2 Offline runs (throughput) and 2 Server runs (throughput, TTFT and TPOT p50/p99): 12 quantities.
    assert len(document["rows"]) == 12 and {r["source_group"] for r in document["rows"]} == {"mlperf_v41"}
    code, out, err = run(capsys, "validate", "--serving", "--source", "mlperf")
    assert code == 2 and "is not a source group of the serving runs" in err and "mlperf_v41" in err


def test_mlperf_runs_priced_through_a_prompt_bound_are_reported_not_fitted():
    """MLPerf's OpenOrca workload presets take the 1,024-token prompt cut (the mean is unpublished): their
    Offline and Server runs stay out of the fit and the targets, every other run is in."""
    runs, _ = load_serving_runs()
    fitted_ids = {id(r) for r in sf.fitted_runs(runs)}
    mlperf = [r for r in runs if r.source_group == "mlperf_v41"]
    assert {r.kind for r in mlperf} == {"max_load", "mlperf_server"}
    assert all(r.workload in sf.PROMPT_BOUND_WORKLOADS and id(r) not in fitted_ids for r in mlperf)
    assert len(fitted_ids) == len(runs) - len(mlperf)
