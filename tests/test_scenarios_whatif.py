"""The procurement what-if on the bundled 405B example: tables, frontier, sensitivity, report and figures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hardware.errors import InputError
from optimizer.cli import main
from scenarios.procurement import load_study

EXAMPLE = Path(__file__).resolve().parents[1] / "scenarios" / "examples" / "procurement_405b.yaml"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("whatif")
    argv = sys.argv
    sys.argv = ["plan-search", "whatif", str(EXAMPLE), "--out", str(out)]
    try:
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        sys.argv = argv
    assert info.value.code == 0
    return out


def test_bundled_study_compares_the_four_gpu_generations():
    study = load_study(EXAMPLE)
    gpus = {o.cluster.gpu.name.split(" ")[0] for o in study.options}
    assert gpus == {"H100", "H200", "B200"} and any("GB200" in o.cluster.gpu.name for o in study.options)
    assert study.model.spec.name == "llama3-405b"
    assert all(o.cluster.economics.price_per_gpu_hour_usd > 0 for o in study.options)
    assert [s.parameter for s in study.sensitivities] == ["topology.nic_gbps", "gpu.memory_gib", "topology.num_nodes"]
    assert study.sensitivities[0].values == (200, 400, 800)


def test_report_files_are_written(report):
    for name in ("summary.md", "options.csv", "sensitivity.csv", "plans.parquet"):
        assert (report / name).stat().st_size > 0
    for stem in ("pareto", "sensitivity"):
        assert (report / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        svg = (report / f"{stem}.svg").read_text()
        assert "<svg" in svg and "time to train (days)" in svg and "<dc:date>" not in svg


def test_summary_has_the_options_frontier_and_sensitivity(report):
    import pandas as pd

    text = (report / "summary.md").read_text()
    for heading in ("# What-if study: llama3-405b-15t", "## Cluster options", "## Cost vs time", "## Sensitivity",
                    "### topology.nic_gbps on H100 x 4096", "### gpu.memory_gib on H100 x 4096",
                    "### topology.num_nodes on B200 x 2048", "![cost vs time to train](pareto.png)"):
        assert heading in text
    options = pd.read_csv(report / "options.csv")
    assert list(options["option"]) == ["H100 x 4096", "H100 x 8192", "H200 x 4096", "B200 x 2048", "B200 x 4096",
                                       "GB200 NVL72 x 2016"]
    ok = options[options["status"] == "ok"]
    assert len(ok) == 6
    # the quantities follow from each other: 15T tokens / throughput, GPU-hours x price
    days = 15e12 / ok["tokens_per_s"] / 86400
    assert (abs(ok["time_to_train_days"] / days - 1) < 1e-6).all()
    assert (abs(ok["cost_usd"] / (ok["gpu_hours"] * ok["price_per_gpu_hour_usd"]) - 1) < 1e-6).all()
    assert (ok["energy_mwh"] > 0).all()
    # the frontier: no option on it is beaten on both time and cost; every other option is
    for _, row in ok.iterrows():
        beaten = ((ok["time_to_train_days"] <= row["time_to_train_days"]) & (ok["cost_usd"] <= row["cost_usd"])
                  & ((ok["time_to_train_days"] < row["time_to_train_days"]) | (ok["cost_usd"] < row["cost_usd"])))
        assert bool(row["pareto"]) == (not beaten.any())
    assert ok["pareto"].sum() >= 1
    for _, row in ok[ok["pareto"]].iterrows():
        assert row["option"] in text.split("On the frontier")[1].split("\n")[0]
    sensitivity = pd.read_csv(report / "sensitivity.csv")
    assert len(sensitivity) == 3 + 4 + 4
    nic = sensitivity[sensitivity["sensitivity"] == "topology.nic_gbps on H100 x 4096"]
    # a faster network never slows the best plan down
    assert list(nic["value"]) == [200, 400, 800]
    assert nic["tokens_per_s"].is_monotonic_increasing
    # the 400 Gb/s point is the option itself
    base = options.set_index("option").loc["H100 x 4096"]
    assert nic.iloc[1]["tokens_per_s"] == pytest.approx(base["tokens_per_s"], rel=1e-9)
    assert not nic.iloc[1]["plan_changed"]
    nodes = sensitivity[sensitivity["sensitivity"] == "topology.num_nodes on B200 x 2048"]
    assert nodes["time_to_train_days"].is_monotonic_decreasing


def test_bad_study_files_are_one_line_errors(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("model: llama3-405b\ntraining: {train_tokens: 1.0e+12}\noptions:\n"
                    "  - {name: a, cluster: h100x1024, price_per_gpu_hour_usd: 2}\n"
                    "sensitivity:\n  - {option: b, parameter: topology.nic_gbps, values: [200]}\n")
    with pytest.raises(InputError) as info:
        load_study(path)
    assert str(info.value) == f"{path}: sensitivity[0].option: unknown option 'b'; use one of: a"
    path.write_text("model: llama3-405b\ntraining: {train_tokens: 1.0e+12}\noptions:\n"
                    "  - {name: a, cluster: h100x1024, price_per_gpu_hour_usd: 2}\n"
                    "sensitivity:\n  - {option: a, parameter: topology.nic_gbsp, values: [200]}\n")
    with pytest.raises(InputError) as info:
        load_study(path)
    assert info.value.field == "sensitivity[0].parameter" and "did you mean 'topology.nic_gbps'" in str(info.value)
    path.write_text("model: llama3-405b\noptions:\n  - {name: a, cluster: h100x1024, price_per_gpu_hour_usd: 2}\n")
    with pytest.raises(InputError, match="training.train_tokens: is missing"):
        load_study(path)
