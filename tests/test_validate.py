"""``plan-search validate`` prices each published layout as it is and compares in the source's convention."""

from __future__ import annotations


import pytest
import yaml

from cost_model.evaluate import evaluate
from cost_model.model_loader import build_training, load_model
from cost_model.plan import PlanArrays
from hardware.loader import load_cluster
from cost_model.calibration.validate import DEFAULT_DATASET, summary, validate, validate_row


def test_every_bundled_row_is_priced():
    rows = validate(DEFAULT_DATASET)
    data = yaml.safe_load(DEFAULT_DATASET.read_text())
    assert len(rows) == len(data["runs"]) >= 30
    assert all(r.predicted_tflops > 0 for r in rows)
    stats = summary(rows)
    assert stats["all"]["rows"] == len(rows)
    assert stats["verified"]["rows"] == sum(1 for run in data["runs"] if run.get("verified"))


def test_row_prediction_equals_the_cost_model_in_the_rows_convention():
    row = {
        "id": "t", "verified": True,
        "model": {"preset": "llama3-70b"},
        "training": {"seq_length": 8192, "global_batch_size": 128},
        "cluster": {"gpu": "h100-sxm", "num_gpus": 64},
        "plan": {"tp": 8, "pp": 4, "dp": 2, "vpp": 5, "micro_batch": 1, "recompute": "full",
                 "sequence_parallel": True, "zero_stage": 1},
        "measured": {"tflops_per_gpu": 400, "flops_counted": "model"},
    }
    result = validate_row(row, "test")
    metrics = evaluate(load_model("llama3-70b").spec, build_training(row["training"]), load_cluster("h100x64"),
                       PlanArrays.from_records([dict(tp=8, pp=4, dp=2, vpp=5, micro_batch=1, recompute="full",
                                                     sequence_parallel=True, zero_stage=1)]))
    assert result.predicted_tflops == pytest.approx(metrics.tflops_per_gpu[0], rel=1e-12)
    assert result.tflops_error == pytest.approx(metrics.tflops_per_gpu[0] / 400 - 1, rel=1e-12)
    row["measured"]["flops_counted"] = "hardware"
    hardware = validate_row(row, "test").predicted_tflops
    assert hardware == pytest.approx(metrics.hardware_flops_per_step[0] / (metrics.step_time_s[0] * 64) / 1e12)
    assert hardware > result.predicted_tflops  # full recompute adds FLOPs


def test_unpublished_knobs_are_listed_as_assumptions():
    row = {"id": "u", "model": {"preset": "llama3-8b"}, "training": {"seq_length": 4096, "global_batch_size": 64},
           "cluster": {"gpu": "h100-sxm", "num_gpus": 8}, "plan": {"tp": 1, "pp": 1, "dp": 8, "micro_batch": None},
           "measured": {"tflops_per_gpu": None}}
    result = validate_row(row, "test")
    assert "micro_batch=1 (not published)" in result.assumptions
    assert result.tflops_error is None


def test_validate_command_prints_summary(capsys):
    from tests.test_cli import run
    code, out, _ = run(capsys, "validate")
    assert code == 0
    assert "median |error|" in out and "narayanan2021-t1-gpt-1008b" in out
    assert "llmfoundry" in out and "source " in out  # the per-source table


def test_tokens_per_second_are_compared_where_published():
    """Megatron-Bridge publishes both; its TFLOP/s count causal attention at half, so tokens/s decide."""
    row = next(r for r in validate() if r.id == "megatron-bridge-25.11-h100-llama3.1-405b-fp8")
    assert row.measured_tokens_per_gpu == 292 and row.measured_tflops == 737
    assert row.tflops_error == pytest.approx(row.predicted_tokens_per_gpu / 292 - 1, rel=1e-12)


def test_measured_memory_rows():
    """torchtitan's published peak memory (reserved, max over GPUs) on H100 96GB, full recompute."""
    rows = [r for r in validate(DEFAULT_DATASET) if r.measured_memory_gib]
    assert len(rows) >= 12
    stats = summary(rows)["all"]
    assert stats["memory_rows"] == len(rows)
    assert stats["worst_abs_memory_error"] < 0.25
    # FSDP-only 8B rows (the loss's logits dominate at 32K tokens per GPU): within 5%
    small = [r for r in rows if "llama3.1-8b" in r.id]
    assert len(small) == 4 and all(abs(r.memory_error) < 0.05 for r in small)


def test_row_cluster_overrides_apply():
    bloom = next(r for r in validate() if r.id == "bloom-176b-tr11-jeanzay")
    data = yaml.safe_load(DEFAULT_DATASET.read_text())
    row = dict(next(r for r in data["runs"] if r["id"] == "bloom-176b-tr11-jeanzay"))
    row["cluster"] = {k: v for k, v in row["cluster"].items() if k != "overrides"}
    faster_network = validate_row(row, "test")
    assert faster_network.predicted_tflops > bloom.predicted_tflops  # 8 HDR NICs beat 4 Omni-Path links


def test_summary_reports_each_source_apart():
    """Per source group: its rows, and counts within 10% and beyond 25% that are those of its errors."""
    rows = validate(DEFAULT_DATASET)
    stats = summary(rows)
    assert set(stats["sources"]) == {r.source_group for r in rows}
    assert sum(s["rows"] for s in stats["sources"].values()) == stats["all"]["rows"] == len(rows)
    sc21 = [r for r in rows if r.source_group == "sc21_t1"]
    errors = [r.tflops_error for r in sc21]
    assert stats["sources"]["sc21_t1"]["throughput_rows_beyond_25pct"] == sum(abs(e) > 0.25 for e in errors)
    assert stats["sources"]["sc21_t1"]["throughput_rows_within_10pct"] == sum(abs(e) <= 0.10 for e in errors)
    assert stats["sources"]["sc21_t1"]["median_signed_throughput_error"] == pytest.approx(sorted(errors)[4:6][0] / 2
                                                                                          + sorted(errors)[4:6][1] / 2)


def test_both_packaged_datasets_are_validated_by_default():
    from cost_model.calibration.training_runs import load_all_rows
    rows = validate()
    expected, _ = load_all_rows()
    assert len(rows) == len(expected) > 400
    assert {"llmfoundry", "mbridge", "sc21_t2", "torchtitan", "sc21_t1"} <= {r.source_group for r in rows}


def test_unpublished_memory_settings_take_the_fastest_that_fits():
    """A source that does not publish recompute or ZeRO: the row is priced with each combination and keeps
    the fastest predicted to fit, and says so in its assumptions."""
    import itertools
    from cost_model.calibration.validate import UNPUBLISHED_MEMORY_CHOICES
    row = {"id": "t", "verified": False, "model": {"preset": "llama3-70b"},
           "training": {"seq_length": 8192, "global_batch_size": 256},
           "cluster": {"gpu": "h100-sxm", "num_gpus": 64},
           "plan": {"tp": 8, "pp": 2, "dp": 4, "micro_batch": 1, "sequence_parallel": True},
           "measured": {"tflops_per_gpu": 400, "flops_counted": "model"}}
    result = validate_row(row, "test")
    explicit = {}
    for recompute, zero in itertools.product(UNPUBLISHED_MEMORY_CHOICES["recompute"], UNPUBLISHED_MEMORY_CHOICES["zero_stage"]):
        priced = validate_row({**row, "plan": {**row["plan"], "recompute": recompute, "zero_stage": zero}}, "test")
        explicit[(recompute, zero)] = priced
    fitting = {k: v for k, v in explicit.items() if v.fits}
    assert fitting and not all(v.fits for v in explicit.values())  # the choice matters for this layout
    best = max(fitting, key=lambda k: fitting[k].predicted_tflops)
    assert result.predicted_tflops == pytest.approx(fitting[best].predicted_tflops, rel=1e-12)
    assert result.fits and f"recompute={best[0]}, zero_stage={best[1]}" in " ".join(result.assumptions)
