"""Uncertainty bands (issue 14 item 4): the fitted file's ``bands`` section, the fallback from a group to
coarser ones, the ± figure and the band's ends in the table, JSON and CSV (checked by hand against the
residual percentiles), ties within model error, and one-line errors for a malformed file."""

from __future__ import annotations

import csv
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest

from cost_model.calibration.bands import (FITTED_ENV, MIN_BAND_ROWS, Band, band_for, gpu_family, load_bands,
                                          model_class)
from cost_model.model_loader import load_model
from hardware.errors import InputError
from hardware.loader import load_cluster
from optimizer.ranking import objective_goodness, tied_with_leader
from optimizer.report import band_note
from tests.test_cli import run

# The brief's example: residual r = predicted/measured - 1 in [-0.14, 0.07] for 80% of 41 rows.
FITTED = """\
calibration: {note: other sections are the calibration's, not the bands'}
bands:
  - {stack: megatron-core, gpu_family: hopper, model_class: dense, rows: 41, low: -0.14, high: 0.07}
  - {stack: megatron-core, gpu_family: hopper, model_class: moe, rows: 4, low: -0.50, high: 0.50}
  - {stack: megatron-core, gpu_family: hopper, model_class: "*", rows: 45, low: -0.16, high: 0.09}
  - {stack: megatron-core, gpu_family: "*", model_class: "*", rows: 120, low: -0.20, high: 0.10}
  - {stack: torchtitan, gpu_family: "*", model_class: "*", rows: 3, low: -0.30, high: 0.30}
  - {stack: "*", gpu_family: "*", model_class: "*", rows: 300, low: -0.25, high: 0.15}
"""


@pytest.fixture
def fitted(tmp_path, monkeypatch):
    """A fitted file with the brief's hopper dense band, read through PLAN_SEARCH_FITTED."""
    path = tmp_path / "fitted.yaml"
    path.write_text(FITTED)
    monkeypatch.setenv(FITTED_ENV, str(path))
    return path


@pytest.fixture
def no_bands(monkeypatch):
    monkeypatch.setenv(FITTED_ENV, "")


def test_the_exact_group_gives_the_factors_of_its_percentiles(fitted):
    band = band_for(load_bands(), "megatron-core", "hopper", "dense")
    assert band.group == ("megatron-core", "hopper", "dense") and band.rows == 41
    # measured = predicted / (1 + r): at least predicted / 1.07, at most predicted / 0.86
    assert band.low_factor == pytest.approx(0.934579, abs=1e-6)
    assert band.high_factor == pytest.approx(1.162791, abs=1e-6)
    assert band.label == "megatron-core, hopper, dense"


@pytest.mark.parametrize("asked, group, rows", [
    # 4 moe rows are too few for a band of their own: the family's band over both classes
    (("megatron-core", "hopper", "moe"), ("megatron-core", "hopper", "*"), 45),
    # no ampere group: the stack's band over every GPU
    (("megatron-core", "ampere", "dense"), ("megatron-core", "*", "*"), 120),
    # torchtitan has 3 rows: the band over every stack
    (("torchtitan", "hopper", "dense"), ("*", "*", "*"), 300),
    (("composer-fsdp", "cdna3", "moe"), ("*", "*", "*"), 300),
])
def test_a_group_with_too_few_rows_falls_back_to_a_coarser_one(fitted, asked, group, rows):
    band = band_for(load_bands(), *asked)
    assert band.group == group and band.rows == rows and band.requested == asked


def test_the_fallback_is_said_in_the_label(fitted):
    band = band_for(load_bands(), "megatron-core", "cdna3", "dense")
    assert band.label == "megatron-core, any GPU, any model (no band for cdna3 dense)"


def test_no_group_of_enough_rows_is_no_band(tmp_path):
    path = tmp_path / "fitted.yaml"
    path.write_text(f"bands:\n  - {{stack: '*', gpu_family: '*', model_class: '*', rows: {MIN_BAND_ROWS - 1}, "
                    "low: -0.1, high: 0.1}\n")
    assert band_for(load_bands(path), "megatron-core", "hopper", "dense") is None


def test_a_missing_file_or_section_is_no_bands(tmp_path, monkeypatch):
    assert load_bands(tmp_path / "absent.yaml") == {}
    (tmp_path / "fitted.yaml").write_text("calibration: {gemm: 0.7}\n")
    assert load_bands(tmp_path / "fitted.yaml") == {}
    monkeypatch.setenv(FITTED_ENV, "")
    assert load_bands() == {}


def test_an_environment_variable_naming_no_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(FITTED_ENV, str(tmp_path / "typo.yaml"))
    with pytest.raises(InputError, match="PLAN_SEARCH_FITTED: .*typo.yaml does not exist"):
        load_bands()


@pytest.mark.parametrize("entry, field, words", [
    ("{stack: megatron-core, gpu_family: hoper, model_class: dense, rows: 9, low: -0.1, high: 0.1}",
     "bands[0].gpu_family", "did you mean 'hopper'"),
    ("{stack: megatron-core, gpu_family: hopper, model_class: sparse, rows: 9, low: -0.1, high: 0.1}",
     "bands[0].model_class", "is not one of dense, moe"),
    ("{stack: megatron-core, gpu_family: hopper, model_class: dense, rows: 0, low: -0.1, high: 0.1}",
     "bands[0].rows", "positive whole number"),
    ("{stack: megatron-core, gpu_family: hopper, model_class: dense, rows: 9, low: 0.1, high: -0.1}",
     "bands[0].low", "is above high"),
    ("{stack: megatron-core, gpu_family: hopper, model_class: dense, rows: 9, low: -14, high: 7}",
     "bands[0].low", "not a percentage"),
    ("{stack: megatron-core, gpu_family: hopper, model_class: dense, rows: 9, low: '-0.1', high: 0.1}",
     "bands[0].low", "must be a number"),
    ("{stack: megatron-core, gpu_family: hopper, model_class: dense, rows: 9, low: -0.1}",
     "bands[0].high", "is missing"),
    ("{stack: megatron-core, gpu_family: hopper, model_class: dense, rows: 9, low: -0.1, high: 0.1, hi: 1}",
     "bands[0].hi", "is not a band field"),
])
def test_a_malformed_entry_is_one_line_naming_file_and_field(tmp_path, entry, field, words):
    path = tmp_path / "fitted.yaml"
    path.write_text(f"bands:\n  - {entry}\n")
    with pytest.raises(InputError) as error:
        load_bands(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and field in message and words in message
    assert error.value.fix  # and says what to do


def test_a_group_given_twice_and_a_section_that_is_no_list_are_errors(tmp_path):
    path = tmp_path / "fitted.yaml"
    entry = "  - {stack: '*', gpu_family: '*', model_class: '*', rows: 9, low: -0.1, high: 0.1}\n"
    path.write_text("bands:\n" + entry + entry)
    with pytest.raises(InputError, match=r"bands\[1\]: repeats the group \*/\*/\*"):
        load_bands(path)
    path.write_text("bands: {stack: megatron-core}\n")
    with pytest.raises(InputError, match="bands: must be a list"):
        load_bands(path)


def test_a_malformed_file_stops_a_search_with_one_line(capsys, tmp_path, monkeypatch):
    path = tmp_path / "fitted.yaml"
    path.write_text("bands:\n  - {stack: megatron-core, gpu_family: volta, model_class: dense, rows: 9, "
                    "low: -0.1, high: 0.1}\n")
    monkeypatch.setenv(FITTED_ENV, str(path))
    code, out, err = run(capsys, "h100x8", "llama3-8b", "--top", "1")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "bands[0].gpu_family" in err


@pytest.mark.parametrize("cluster, family", [
    ("a100x8", "ampere"), ("h100x8", "hopper"), ("h200x8", "hopper"), ("h800x8", "hopper"),
    ("b200x8", "blackwell"), ("b300x8", "blackwell"), ("gb200x72", "blackwell"), ("gb300x72", "blackwell"),
    ("mi300xx8", "cdna3"),
])
def test_the_gpu_family_of_every_preset(cluster, family):
    assert gpu_family(load_cluster(cluster).gpu) == family


@pytest.mark.parametrize("name, family", [
    ("NVIDIA H100 80GB HBM3", "hopper"), ("GH200 480GB", "hopper"), ("A800-SXM4-80GB", "ampere"),
    ("Instinct MI325X", "cdna3"), ("Tesla V100-SXM2-32GB", "other"), ("L40S 48GB", "other"),
])
def test_the_gpu_family_of_names_users_write(name, family):
    assert gpu_family(SimpleNamespace(name=name)) == family


def test_model_class():
    assert model_class(load_model("llama3-70b").spec) == "dense"
    assert model_class(load_model("qwen3-30b-a3b").spec) == "moe"


@pytest.mark.parametrize("low, high, text, plus_minus", [
    (-0.14, 0.07, "\u00b111%", (1 / 0.86 - 1 / 1.07) / 2),   # 0.11411
    (-0.08, 0.10, "\u00b19%", (1 / 0.92 - 1 / 1.10) / 2),    # 0.08893
    (0.02, 0.06, "\u00b12%", (1 / 1.02 - 1 / 1.06) / 2),     # 0.01850: a model that is always too fast
])
def test_the_plus_minus_figure_is_half_the_band_width(low, high, text, plus_minus):
    band = band_for({("*",) * 3: _entry(low, high)}, "megatron-core", "hopper", "dense")
    assert band.plus_minus == pytest.approx(plus_minus, rel=1e-12)
    assert band.percent_text == text


def _entry(low: float, high: float):
    from cost_model.calibration.bands import BandEntry
    return BandEntry(group=("*", "*", "*"), rows=20, low=low, high=high)


def test_the_table_shows_the_plus_minus_and_still_fits_80_columns(capsys, fitted, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run(capsys, "h100x64", "llama3-70b", "--top", "3", "--train-tokens", "1e12", "--price", "2")
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80
    rows = [line for line in out.splitlines() if line.strip()[:1] in "123" and "\u00b1" in line]
    assert len(rows) == 3 and all(" \u00b111% " in row for row in rows)
    note = " ".join(out.split())
    assert "41 comparable published runs (megatron-core, hopper, dense) measured 0.93x to 1.16x" in note


def test_json_and_csv_carry_the_band_ends(capsys, fitted):
    code, out, err = run(capsys, "h100x64", "llama3-70b", "--top", "3", "--train-tokens", "1e12", "--price", "2",
                         "--format", "json")
    assert code == 0, err
    document = json.loads(out)
    uncertainty = document["uncertainty"]
    assert (uncertainty["stack"], uncertainty["gpu_family"], uncertainty["model_class"], uncertainty["rows"]) == (
        "megatron-core", "hopper", "dense", 41)
    assert uncertainty["residual_low"] == -0.14 and uncertainty["residual_high"] == 0.07
    for plan in document["plans"]:
        rate = plan["tokens_per_s_per_gpu"]
        assert plan["tokens_per_s_per_gpu_low"] == pytest.approx(rate / 1.07, rel=1e-6)
        assert plan["tokens_per_s_per_gpu_high"] == pytest.approx(rate / 0.86, rel=1e-6)
        # a slower run takes longer and costs more: time and cost scale by 1 + r
        for name in ("time_to_train_days", "gpu_hours", "cost_usd"):
            assert plan[f"{name}_low"] == pytest.approx(plan[name] * 0.86, rel=1e-6)
            assert plan[f"{name}_high"] == pytest.approx(plan[name] * 1.07, rel=1e-6)
    code, out, _ = run(capsys, "h100x64", "llama3-70b", "--top", "3", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    for row in rows:
        rate = float(row["tokens_per_s_per_gpu"])
        assert float(row["tokens_per_s_per_gpu_low"]) == pytest.approx(rate / 1.07, rel=1e-9)
        assert float(row["tokens_per_s_per_gpu_high"]) == pytest.approx(rate / 0.86, rel=1e-9)
        assert row["cost_usd_low"] == ""  # no price: no cost, and no band of it


def test_evaluate_shows_the_band(capsys, fitted, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run(capsys, "evaluate", "h100x64", "llama3-70b", "--tp", "8", "--pp", "2", "--format", "json")
    plan = json.loads(out)["plan"]
    assert plan["tokens_per_s_per_gpu_low"] == pytest.approx(plan["tokens_per_s_per_gpu"] / 1.07, rel=1e-6)
    run(capsys, "evaluate", "h100x64", "llama3-70b", "--tp", "8", "--pp", "2")
    code, out, _ = run(capsys, "evaluate", "h100x64", "llama3-70b", "--tp", "8", "--pp", "2")
    low, high = plan["tokens_per_s_per_gpu_low"], plan["tokens_per_s_per_gpu_high"]
    assert f"80% band: {low:,.0f}-{high:,.0f} tok/s/GPU" in out and " \u00b111% " in out


def test_without_bands_the_outputs_are_as_before(capsys, no_bands):
    code, out, _ = run(capsys, "h100x64", "llama3-70b", "--top", "3")
    assert "\u00b1" not in out and "band" not in out
    code, out, _ = run(capsys, "h100x64", "llama3-70b", "--top", "3", "--format", "json")
    document = json.loads(out)
    assert "uncertainty" not in document and not any(k.endswith("_low") for k in document["plans"][0])
    code, out, _ = run(capsys, "h100x64", "llama3-70b", "--top", "3", "--format", "csv")
    assert "_low" not in out.splitlines()[0]


def test_ties_are_the_leading_plans_inside_the_leaders_band():
    # ±11.4%: plan 1's band reaches down to 88.59
    values = np.array([100.0, 95.0, 90.0, 88.5, 95.0])
    assert tied_with_leader(values, 0.1141) == 3  # 88.5 is outside; the later 95 does not rejoin the run
    assert tied_with_leader(values, 0.12) == 5
    assert tied_with_leader(values, 0.04) == 1
    assert tied_with_leader(np.array([]), 0.1) == 0


def test_ties_compare_the_objective_the_plans_were_ranked_by():
    # 1,000 tok/s on 8 GPUs and 1,900 on 16 (no failures: ETTR 1, no spares): plan 2 is 95% of plan 1 per
    # GPU (cost per token), 190% in total
    metrics = SimpleNamespace(tokens_per_s=np.array([1000.0, 1900.0]), mfu=np.array([0.5, 0.475]),
                              ettr=np.array([1.0, 1.0]), spare_gpus=np.array([0, 0]),
                              plans=SimpleNamespace(num_gpus=np.array([8, 16])))
    per_gpu = objective_goodness(metrics, "cost_per_token")
    assert per_gpu == pytest.approx([125.0, 118.75])
    # Failures count: at ETTR 0.9 for plan 2 (its larger job fails more often) it falls to 106.9 tokens per
    # GPU-second, out of plan 1's 6% band.
    metrics.ettr = np.array([1.0, 0.9])
    assert objective_goodness(metrics, "cost_per_token") == pytest.approx([125.0, 106.875])
    assert tied_with_leader(objective_goodness(metrics, "cost_per_token"), 0.06) == 1
    metrics.ettr = np.array([1.0, 1.0])
    assert tied_with_leader(per_gpu, 0.06) == 2 and tied_with_leader(per_gpu, 0.04) == 1
    assert objective_goodness(metrics, "mfu") == pytest.approx([0.5, 0.475])
    assert objective_goodness(metrics, "memory_headroom") is None  # the band is not a memory band


def test_the_tie_sentence():
    band = Band(low_factor=1 / 1.07, high_factor=1 / 0.86, rows=41, group=("megatron-core", "hopper", "dense"),
                requested=("megatron-core", "hopper", "dense"))
    text = " ".join(band_note(band, tied_plans=3, shown=10, width=200).split())
    assert ("Plans 1-3 are tied within the model's \u00b111% error band (leave-one-source-out, 41 comparable "
            "runs)") in text
    assert "Plans 1 and 2 are tied" in band_note(band, tied_plans=2, shown=10, width=200)
    assert "Plans 1-10 (every plan shown) are tied" in band_note(band, tied_plans=10, shown=10, width=200)
    assert "tied" not in band_note(band, tied_plans=1, shown=10, width=200)


def test_a_search_reports_its_tied_plans(capsys, fitted):
    code, out, _ = run(capsys, "h100x64", "llama3-70b", "--top", "5", "--format", "json")
    document = json.loads(out)
    rates = np.array([plan["tokens_per_s"] for plan in document["plans"]])
    expected = int(np.sum(np.cumprod(rates >= rates[0] * (1 - document["uncertainty"]["plus_minus"]))))
    assert document["uncertainty"]["tied_plans"] == expected >= 1


def test_the_calibration_writes_a_section_the_loader_reads(tmp_path):
    import yaml

    from cost_model.calibration.bands import bands_section

    # five megatron-core hopper dense rows with residuals -0.2..0.2: the 10th percentile sits 0.4 of the
    # way from the 1st to the 2nd value (-0.16), the 90th 0.6 of the way from the 4th to the 5th (0.16)
    stacks = ["megatron-core"] * 5 + ["torchtitan"] * 2
    families = ["hopper"] * 5 + ["ampere"] * 2
    section = bands_section(stacks, families, ["dense"] * 7, [-0.2, -0.1, 0.0, 0.1, 0.2, 0.5, 0.6])
    path = tmp_path / "fitted.yaml"
    path.write_text(yaml.safe_dump({"bands": section}))
    table = load_bands(path)
    assert set(table) == {("megatron-core", "hopper", "dense"), ("megatron-core", "hopper", "*"),
                          ("megatron-core", "*", "*"), ("torchtitan", "ampere", "dense"),
                          ("torchtitan", "ampere", "*"), ("torchtitan", "*", "*"), ("*", "*", "*")}
    exact = table[("megatron-core", "hopper", "dense")]
    assert (exact.rows, exact.low, exact.high) == (5, pytest.approx(-0.16), pytest.approx(0.16))
    assert table[("*", "*", "*")].rows == 7
    # torchtitan's 2 rows are written but give no band: its prediction takes the all-rows band
    assert band_for(table, "torchtitan", "ampere", "dense").group == ("*", "*", "*")
    with pytest.raises(ValueError, match="above -1"):
        bands_section(["megatron-core"], ["hopper"], ["dense"], [-1.0])
