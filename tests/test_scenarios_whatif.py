"""The procurement what-if on the bundled 405B example: tables, frontier, sensitivity, report and figures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hardware.errors import InputError
from optimizer.cli import main
from scenarios.procurement import load_study, parameter_axis
from tests.test_cli import run as cli

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
    for stem, label in (("pareto", "effective time to train (days; failures, checkpoints and restarts counted)"),
                        ("scaling", "ETTR (share of wall-clock time that trains)"),
                        ("sensitivity", "time to train (days)")):
        assert (report / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        svg = (report / f"{stem}.svg").read_text()
        assert "<svg" in svg and label in svg and "<dc:date>" not in svg


def test_figures_speak_plain_language(report):
    """What a slide needs: the model's name and token budget, each option's GPU count and price, axis
    names with units instead of dotted keys, a legend, and the current value marked."""
    import pandas as pd

    options = pd.read_csv(report / "options.csv")
    pareto = (report / "pareto.svg").read_text()
    assert "Llama 3.1 405B" in pareto and "15T tokens" in pareto and "llama3-405b" not in pareto
    for _, row in options.iterrows():
        assert f"{row['num_gpus']:,} GPUs at ${row['price_per_gpu_hour_usd']:.2f}/GPU-h" in pareto
    assert "Pareto frontier" in pareto
    sensitivity = (report / "sensitivity.svg").read_text()
    for label in ("NIC bandwidth (Gb/s per NIC; one NIC per GPU)", "GPU memory (GiB usable per GPU)",
                  "cluster size (GPUs; 8 per node)", "cost (US$ millions)", "the option's current value",
                  "(current)", "best plan differs from the option's own"):
        assert label in sensitivity, label
    assert "topology.nic_gbps" not in sensitivity


def test_sensitivity_axes_name_the_parameter_its_unit_and_the_current_value():
    study = load_study(EXAMPLE)
    h100 = study.options[0].cluster
    assert parameter_axis("topology.nic_gbps", h100) == (
        "NIC bandwidth", "NIC bandwidth (Gb/s per NIC; one NIC per GPU)", 400.0, 1.0)
    assert parameter_axis("gpu.memory_gib", h100)[1:3] == ("GPU memory (GiB usable per GPU)", h100.gpu.memory_gib)
    name, label, current, scale = parameter_axis("topology.num_nodes", h100)
    assert (current, scale) == (h100.topology.num_nodes, h100.topology.gpus_per_node)
    # a field without a plain-language name is still named by its unit suffix, never as a dotted key
    assert parameter_axis("topology.scaleup_latency_us", h100)[1] == "scaleup latency (µs)"


def test_summary_states_calibration_and_prices_truthfully(report):
    text = (report / "summary.md").read_text()
    assert "upper bounds" not in text
    assert "**Prices are illustrative**" in text  # the example does not say where its prices come from
    trust = text.split("**How far to trust the times.**")[1].split("## Cluster options")[0]
    for gpu in ("H100 SXM5 80GB", "H200 SXM 141GB", "B200 (HGX, 1000 W)", "B200 in GB200 NVL72 (1200 W)"):
        line = next(line for line in trust.splitlines() if line.startswith(f"* **{gpu}**"))
        assert "calibrated" in line and "not calibrated" not in line
        assert "comparable published runs" in line and "each predicted without its source" in line


def test_uncalibrated_gpus_are_flagged_and_stated_prices_are_not_called_illustrative(tmp_path):
    from scenarios.procurement import accuracy_lines, summary_markdown, run_study

    path = tmp_path / "study.yaml"
    path.write_text("model: llama3-8b\nprice_source: our reserved-capacity quote of 2026-11-20\n"
                    "training: {seq_length: 4096, global_batch_tokens: 1048576, train_tokens: 1.0e+11}\n"
                    "options:\n  - {name: MI300X x 64, cluster: mi300xx64, price_per_gpu_hour_usd: 1.2}\n"
                    "  - {name: H100 x 64, cluster: h100x64, price_per_gpu_hour_usd: 2.5}\n")
    study = load_study(path)
    lines = accuracy_lines(study)
    # MI300X's GEMM efficiency is a microbenchmark figure: no published run of its generation was fitted.
    assert any(line.startswith("* **Instinct MI300X") and "**not calibrated**" in line for line in lines)
    assert any(line.startswith("* **H100") and "calibrated (" in line for line in lines)
    text = summary_markdown(run_study(study))
    assert "Prices are illustrative" not in text
    assert "our reserved-capacity quote of 2026-11-20" in text


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
    assert (abs(ok["effective_cost_usd"] / (ok["effective_gpu_hours"] * ok["price_per_gpu_hour_usd"]) - 1) < 1e-6).all()
    assert (ok["energy_mwh"] > 0).all()
    # the frontier, on effective days and cost: no option on it is beaten on both; every other option is
    t, c = ok["effective_time_to_train_days"], ok["effective_cost_usd"]
    for _, row in ok.iterrows():
        beaten = ((t <= row["effective_time_to_train_days"]) & (c <= row["effective_cost_usd"])
                  & ((t < row["effective_time_to_train_days"]) | (c < row["effective_cost_usd"])))
        assert bool(row["pareto"]) == (not beaten.any())
    # ranked by effective days: rank 1 trains soonest
    ranked = ok.sort_values("option_rank")
    assert list(ranked["option_rank"]) == list(range(1, len(ok) + 1))
    assert ranked["effective_time_to_train_days"].is_monotonic_increasing
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


NO_FIT_STUDY = ("model: llama3-405b\ntraining: {seq_length: 8192, global_batch_size: 64, train_tokens: 1.0e+12}\n"
                "options:\n  - {name: one node, cluster: h100x8, price_per_gpu_hour_usd: 2.5}\n")


def test_an_option_that_fits_nowhere_is_a_row_saying_why(tmp_path, capsys):
    import pandas as pd

    path = tmp_path / "study.yaml"
    path.write_text(NO_FIT_STUDY)
    code, out, err = cli(capsys, "whatif", path, "--out", tmp_path / "out")
    assert code == 0, err
    assert "Traceback" not in err
    options = pd.read_csv(tmp_path / "out" / "options.csv")
    assert list(options["status"]) == ["no_fit"]
    reason = options["reason"][0]
    assert "GiB per GPU" in reason and "what would fit" in reason
    text = (tmp_path / "out" / "summary.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| | one node |"))
    assert "**no plan fits**" in row and reason.split("; what would fit")[0] in row
    assert f"* one node: nothing fits: {reason}" in text
    assert "No option has a plan that fits." in text
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 0


def _write(tmp_path, text):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


HEAD = "model: llama3-8b\ntraining: {seq_length: 4096, global_batch_tokens: 1048576, train_tokens: 1.0e+11}\n"


@pytest.mark.parametrize("body, field", [
    ("options: [{overrides: [1]}]\n", "options[0].name"),
    ("options: [{name: a, cluster: h100x8, overrides: [1]}]\n", "options[0].overrides"),
    ("options: [{name: a, cluster: h100x8, price_per_gpu_hour_usd: cheap}]\n", "options[0].price_per_gpu_hour_usd"),
    ("options: [{name: a, cluster: h100x8, price_per_gpu_hour_usd: 2, overrides: {topology.nic_gbsp: 1}}]\n",
     "options[0].overrides.topology.nic_gbsp"),
    ("options: [{name: a, cluster: h100x9x, price_per_gpu_hour_usd: 2}]\n", "options[0].cluster"),
    ("options: [1]\n", "options[0]"),
    ("options: {name: a}\n", "options"),
    ("options: [{name: a, cluster: h100x8, price_per_gpu_hour_usd: 2}]\nsensitivity: {option: a}\n", "sensitivity"),
    ("options: [{name: a, cluster: h100x8, price_per_gpu_hour_usd: 2}]\n"
     "sensitivity: [{option: a, parameter: gpu.memory_gib, values: [64, -5]}]\n", "sensitivity[0].values[1]"),
    ("options: [{name: a, cluster: h100x8, price_per_gpu_hour_usd: 2}]\n"
     "sensitivity: [{option: a, parameter: gpu.memory_gib, values: [64, .inf]}]\n", "sensitivity[0].values[1]"),
    ("options: [{name: a, cluster: h100x8, price_per_gpu_hour_usd: 2}]\n"
     "sensitivity: [{option: a, parameter: [1], values: [64]}]\n", "sensitivity[0].parameter"),
])
def test_study_file_errors_name_the_study_field_before_any_search(tmp_path, capsys, monkeypatch, body, field):
    import scenarios.procurement as procurement

    monkeypatch.setattr(procurement, "run_study", lambda *a, **k: pytest.fail("searched a bad study"))
    path = _write(tmp_path, HEAD + body)
    code, out, err = cli(capsys, "whatif", path, "--out", tmp_path / "out")
    assert code == 2 and out == ""
    assert err.startswith(f"plan-search: error: {path}: {field}: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_model_and_cluster_errors_use_the_study_names_not_sweep_axes(tmp_path):
    path = _write(tmp_path, "model: llama3-8x\ntraining: {train_tokens: 1.0e+12}\n"
                            "options: [{name: a, cluster: h100x8, price_per_gpu_hour_usd: 2}]\n")
    with pytest.raises(InputError) as info:
        load_study(path)
    assert info.value.field == "model" and "axes" not in str(info.value) and "llama3-8b" in str(info.value)
    path = _write(tmp_path, HEAD + "options: [{name: a, cluster: h100x8, price_per_gpu_hour_usd: 2},\n"
                                   "          {name: b, cluster: h10x8, price_per_gpu_hour_usd: 2}]\n")
    with pytest.raises(InputError) as info:
        load_study(path)
    assert info.value.field == "options[1].cluster" and "axes" not in str(info.value)


@pytest.mark.parametrize("package", ["matplotlib", "pyarrow"])
def test_missing_optional_packages_are_reported_before_any_search(tmp_path, capsys, monkeypatch, package):
    import scenarios.procurement as procurement

    monkeypatch.setattr(procurement, "run_study", lambda *a, **k: pytest.fail("searched without the extras"))
    monkeypatch.setitem(sys.modules, package, None)  # import now raises ImportError
    path = _write(tmp_path, HEAD + "options: [{name: a, cluster: h100x8, price_per_gpu_hour_usd: 2}]\n")
    code, out, err = cli(capsys, "whatif", path, "--out", tmp_path / "out")
    assert code == 2 and out == ""
    assert err.strip() == (f"plan-search: error: whatif: needs {package} for its figures and plans.parquet, but it "
                           "is not installed; pip install 'plan-search[sweep]'")


def test_failed_searches_fail_the_study_unless_allowed(tmp_path, capsys, monkeypatch):
    """A search that raises is an error row; the report is written, the failures listed, exit 1 (0 with
    --allow-errors). No-fit rows are answers and do not count."""
    import scenarios.runner as runner

    real = runner.search

    def flaky(scenario):
        if scenario.cluster.num_gpus == 16:
            raise RuntimeError("solver exploded")
        return real(scenario)

    monkeypatch.setattr(runner, "search", flaky)
    path = _write(tmp_path, HEAD + "options:\n  - {name: one node, cluster: h100x8, price_per_gpu_hour_usd: 2}\n"
                                   "  - {name: two nodes, cluster: h100x16, price_per_gpu_hour_usd: 2}\n"
                                   "sensitivity: [{option: one node, parameter: topology.num_nodes, values: [1, 2]}]\n")
    code, out, err = cli(capsys, "whatif", path, "--out", tmp_path / "out")
    assert code == 1
    assert "2 of 4 searches of the study failed" in err
    assert "  two nodes: RuntimeError: solver exploded" in err
    assert "  topology.num_nodes on one node = 2: RuntimeError: solver exploded" in err
    assert "--allow-errors" in err
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "**search failed**: RuntimeError: solver exploded" in text
    code, out, err = cli(capsys, "whatif", path, "--out", tmp_path / "out2", "--allow-errors")
    assert code == 0 and "2 of 4 searches of the study failed" in err
    monkeypatch.setattr(runner, "search", real)
    code, out, err = cli(capsys, "whatif", path, "--out", tmp_path / "out3")
    assert code == 0 and err == ""


def test_rewritten_figures_are_byte_identical(tmp_path):
    """Label placement and the zero-anchored axes must not make reruns differ (figures live in git)."""
    from scenarios.procurement import run_study, write_report

    path = _write(tmp_path, HEAD + "options:\n  - {name: one node, cluster: h100x8, price_per_gpu_hour_usd: 2}\n"
                                   "  - {name: two nodes, cluster: h100x16, price_per_gpu_hour_usd: 2}\n"
                                   "sensitivity: [{option: one node, parameter: topology.nic_gbps, values: [200, 400]}]\n")
    result = run_study(load_study(path))
    first, second = write_report(result, tmp_path / "a"), write_report(result, tmp_path / "b")
    for a, b in zip(first, second):
        if a.suffix in (".png", ".svg", ".md", ".csv"):
            assert a.read_bytes() == b.read_bytes(), a.name


# ---- power, the site's cap, goodput columns and the scaling figure (issue 17) ----

TWO_SIZES = (HEAD + "energy_price_usd_per_mwh: 80\n"
             "options:\n  - {name: one node, cluster: h100x8, price_per_gpu_hour_usd: 2}\n"
             "  - {name: two nodes, cluster: h100x16, price_per_gpu_hour_usd: 2}\n")


def test_site_power_cap_drops_an_option_without_searching_it(tmp_path, capsys, monkeypatch):
    """8 H100 draw 8 x 1,275 W = 0.0102 MW while computing, 16 draw 0.0204 MW: a 0.015 MW site keeps the
    first and drops the second before any search, and every output says so."""
    import pandas as pd

    import scenarios.runner as runner

    real = runner.search

    def guarded(scenario):
        assert scenario.cluster.num_gpus != 16, "searched an option over the site's power cap"
        return real(scenario)

    monkeypatch.setattr(runner, "search", guarded)
    path = _write(tmp_path, TWO_SIZES + "site_power_mw: 0.015\n")
    code, out, err = cli(capsys, "whatif", path, "--out", tmp_path / "out")
    assert code == 0, err
    reason = ("needs 0.0204 MW while every GPU computes (16 GPUs x 1,275 W with host share and PUE 1), over the "
              "site's 0.015 MW (site_power_mw); not searched")
    assert f"dropped two nodes: {reason}" in out
    options = pd.read_csv(tmp_path / "out" / "options.csv")
    assert list(options["status"]) == ["ok", "over_power_cap"]
    assert options["reason"][1] == reason
    assert options["peak_power_mw"].tolist() == pytest.approx([8 * 1275 / 1e6, 16 * 1275 / 1e6])
    assert options["option_rank"][0] == 1 and pd.isna(options["option_rank"][1])
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "**Site power cap** 0.015 MW" in text
    assert f"**dropped, over the site's power cap**: {reason}" in text
    assert "over the site's power cap" in (tmp_path / "out" / "scaling.svg").read_text()
    assert "two nodes (16 GPUs): over the site's power cap" in (tmp_path / "out" / "pareto.svg").read_text()


def test_whatif_reports_power_energy_and_goodput_per_option(tmp_path):
    """Average MW from the plan's own step (below the all-computing peak), MWh over the effective time,
    and its cost at the study's energy price."""
    from scenarios.procurement import OPTION_TABLE, run_study, write_report

    result = run_study(load_study(_write(tmp_path, TWO_SIZES)))
    write_report(result, tmp_path / "out")
    import pandas as pd

    options = pd.read_csv(tmp_path / "out" / "options.csv")
    assert list(options.columns) == list(OPTION_TABLE)
    for column in ("ettr", "effective_time_to_train_days", "effective_gpu_hours", "effective_cost_usd",
                   "gpu_power_w", "power_mw", "peak_power_mw", "effective_energy_mwh", "energy_cost_usd"):
        assert options[column].notna().all(), column
    gpus = options["num_gpus"]
    # (records round to 6 decimals)
    assert options["peak_power_mw"].tolist() == pytest.approx((gpus * 1275 / 1e6).tolist(), abs=1e-6)
    assert options["power_mw"].tolist() == pytest.approx((gpus * (options["gpu_power_w"] + 575) / 1e6).tolist(),
                                                         abs=1e-6)
    assert ((options["gpu_power_w"] > 0.2 * 700) & (options["gpu_power_w"] < 700)).all()
    assert (options["power_mw"] <= options["peak_power_mw"]).all()
    energy = options["power_mw"] * options["effective_time_to_train_days"] * 24
    assert options["effective_energy_mwh"].tolist() == pytest.approx(energy.tolist())
    assert options["energy_cost_usd"].tolist() == pytest.approx((energy * 80).tolist())
    assert ((options["ettr"] > 0) & (options["ettr"] <= 1)).all()
    assert (options["effective_time_to_train_days"] >= options["time_to_train_days"]).all()
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "| rank | option | GPUs |" in text and "| MW | peak MW | MWh | energy $M |" in text
    assert "**Energy** at $80.00/MWh" in text
    assert "## What more GPUs buy" in text and "of the ideal speed-up" in text
    for name in ("scaling.png", "scaling.svg"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_scaling_efficiency_is_the_share_of_the_ideal_speed_up():
    from scenarios.plots import scaling_efficiency

    assert scaling_efficiency(16384, 60.0, 32768, 30.0) == pytest.approx(1.0)   # days halve: ideal
    assert scaling_efficiency(16384, 60.0, 32768, 45.0) == pytest.approx(0.5)   # half the ideal 30 days saved
    assert scaling_efficiency(16384, 60.0, 32768, 60.0) == 0.0                  # no faster
    assert scaling_efficiency(16384, 60.0, 32768, 66.0) == pytest.approx(-0.2)  # slower


@pytest.mark.parametrize("line, field", [("site_power_mw: -5\n", "site_power_mw"),
                                         ("site_power_mw: lots\n", "site_power_mw"),
                                         ("energy_price_usd_per_mwh: 0\n", "energy_price_usd_per_mwh"),
                                         ("site_power_mv: 100\n", "site_power_mv")])
def test_power_fields_of_a_study_are_checked(tmp_path, line, field):
    path = _write(tmp_path, TWO_SIZES + line)
    with pytest.raises(InputError) as info:
        load_study(path)
    assert info.value.field == field
    if field == "site_power_mv":
        assert "did you mean 'site_power_mw'" in str(info.value)


GOODPUT_EXAMPLE = EXAMPLE.parent / "goodput_405b.yaml"


def test_goodput_example_shows_where_more_gpus_stop_paying(tmp_path):
    """405B on 15T tokens at 16K, 32K and 96K H100 and B200 under a 200 MW site: B200 x 96K needs
    98,304 x (1,000 + 787.5) W x PUE 1.2 = 210.9 MW and is dropped; H100 x 96K needs 150.4 MW and stays.
    At Llama 3's fixed 16M-token batch, going from 32K to 96K H100 reaches a smaller share of the ideal
    speed-up than 16K to 32K did, and with the failures of 96K GPUs it takes longer than 32K."""
    from scenarios.plots import scaling_efficiency
    from scenarios.procurement import run_study, write_report

    study = load_study(GOODPUT_EXAMPLE)
    assert study.site_power_mw == 200 and study.energy_price_usd_per_mwh == 80
    assert [o.cluster.num_gpus for o in study.options] == [16384, 32768, 98304] * 2
    result = run_study(study)
    options = result.options.set_index("option")
    assert options.loc["B200 x 96K", "status"] == "over_power_cap"
    assert options.loc["B200 x 96K", "peak_power_mw"] == pytest.approx(98304 * 1787.5 * 1.2 / 1e6)
    assert (options.drop("B200 x 96K")["status"] == "ok").all()
    assert options.loc["H100 x 96K", "peak_power_mw"] == pytest.approx(98304 * 1275 * 1.2 / 1e6)
    h100 = options.loc[["H100 x 16K", "H100 x 32K", "H100 x 96K"]]
    days, gpus = h100["effective_time_to_train_days"].to_numpy(), h100["num_gpus"].to_numpy()
    assert scaling_efficiency(gpus[1], days[1], gpus[2], days[2]) < scaling_efficiency(gpus[0], days[0], gpus[1], days[1])
    assert list(h100["ettr"]) == sorted(h100["ettr"], reverse=True)  # more GPUs, more failures: ETTR never rises
    assert h100["ettr"].iloc[2] < h100["ettr"].iloc[0]
    # where adding GPUs stops paying: 96K trains faster nominally than 32K, but not once failures count
    nominal = h100["time_to_train_days"].to_numpy()
    assert nominal[2] < nominal[1] and days[2] > days[1]
    paths = write_report(result, tmp_path / "out")
    assert tmp_path / "out" / "scaling.png" in paths


def test_hot_spares_draw_idle_power_for_the_whole_effective_time(tmp_path):
    """One spare node per node of the job (hot_spare_nodes_per: 1): 8 spare H100 wait beside 8 working
    ones, each at (0.2 x 700 + 575) W = 715 W, so the energy is (power_mw + 8 x 715 W) x effective hours."""
    from scenarios.procurement import run_study

    text = (HEAD.replace("train_tokens: 1.0e+11}", "train_tokens: 1.0e+11, hot_spare_nodes_per: [1]}")
            + "energy_price_usd_per_mwh: 80\noptions:\n  - {name: one node, cluster: h100x8, price_per_gpu_hour_usd: 2}\n")
    row = run_study(load_study(_write(tmp_path, text))).options.iloc[0]
    assert row["status"] == "ok" and row["spare_gpus"] == 8
    expected = (row["power_mw"] + 8 * 715 / 1e6) * row["effective_time_to_train_days"] * 24
    assert row["effective_energy_mwh"] == pytest.approx(expected)
    assert row["energy_cost_usd"] == pytest.approx(expected * 80)
