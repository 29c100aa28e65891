"""The nightly comparison: what counts as a change, and the exit status a nightly job gates on."""

from __future__ import annotations


import pandas as pd
import pytest

from tests.test_cli import run as cli
from scenarios.compare import compare_tables
from scenarios.runner import run_sweep
from scenarios.sweep_file import sweep_from_mapping


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    sweep = sweep_from_mapping({"name": "gate", "top_k": 2, "axes": {
        "model": ["llama3-8b"], "cluster": ["h100x8", "h100x16"], "seq_length": [4096],
        "global_batch_tokens": [1048576], "train_tokens": [1e11],
        "overrides": {"economics.price_per_gpu_hour_usd": [2.0]}}})
    out = tmp_path_factory.mktemp("old")
    run_sweep(sweep, out, workers=1, progress=False)
    return out / "results.parquet"




def doctored(path, tmp_path, name, edit):
    frame = pd.read_parquet(path)
    edit(frame)
    target = tmp_path / name
    frame.to_parquet(target, index=False)
    return target


def test_identical_results_pass(results, capsys):
    code, out, _ = cli(capsys, "compare", results, results)
    assert code == 0
    assert out.strip() == "2 scenarios compared, 0 changed beyond 5.0% or in their best plan"


def test_moves_under_the_threshold_pass_and_over_it_fail(results, tmp_path, capsys):
    def slower(percent):
        def edit(frame):
            first = frame.index[(frame["scenario_index"] == 1) & (frame["rank"] == 1)][0]
            frame.loc[first, "tokens_per_s"] *= 1 - percent / 100
        return edit

    small = doctored(results, tmp_path, "small.parquet", slower(4))
    code, out, _ = cli(capsys, "compare", results, small)
    assert code == 0 and "0 changed" in out
    big = doctored(results, tmp_path, "big.parquet", slower(6))
    code, out, _ = cli(capsys, "compare", results, big)
    assert code == 1
    assert "llama3-8b on h100x16" in out and "tokens_per_s -6.0%" in out and "1 changed" in out
    # the same 6% passes a 10% gate
    code, out, _ = cli(capsys, "compare", results, big, "--threshold", "0.10")
    assert code == 0


def test_a_changed_best_plan_or_status_fails(results, tmp_path):
    old = pd.read_parquet(results)
    new = old.copy()
    best = new.index[new["rank"] == 1]
    new.loc[best[0], "plan"] = "tp2 pp1 dp4 cp1 ep1 vpp1 mbs1 none sp zero1"
    new.loc[best[1], "status"] = "no_fit"
    comparison = compare_tables(old, new)
    assert comparison.failed and comparison.compared == 2
    assert [c.what[0].split(" ")[0:2] for c in comparison.changes] == [["best", "plan"], ["status", "ok"]]
    # a plan below the best one does not count
    lower = old.copy()
    lower.loc[lower.index[lower["rank"] == 2][0], "plan"] = "something else"
    assert not compare_tables(old, lower).failed


def test_added_and_removed_scenarios_are_listed_but_not_gated(results):
    old = pd.read_parquet(results)
    new = old[old["scenario_index"] == 0]
    comparison = compare_tables(old, new)
    assert not comparison.failed and comparison.compared == 1 and len(comparison.removed) == 1
    assert "1 scenario(s) removed (not gated): llama3-8b on h100x16" in comparison.text()


def test_bad_input_exits_2(results, tmp_path, capsys):
    broken = doctored(results, tmp_path, "broken.parquet", lambda f: f.pop("plan"))
    code, _, err = cli(capsys, "compare", results, broken)
    assert code == 2 and err.strip() == (f"plan-search: error: {broken}: plan: column is missing; pass a results "
                                         "table written by 'plan-search sweep'")
    code, _, err = cli(capsys, "compare", results, tmp_path / "missing.parquet")
    assert code == 2 and "file not found" in err
    code, _, err = cli(capsys, "compare", results, results, "--threshold", "-0.1")
    assert code == 2 and "--threshold: must be a non-negative fraction" in err


def _slower(frame):
    frame.loc[frame.index[(frame["scenario_index"] == 1) & (frame["rank"] == 1)][0], "tokens_per_s"] *= 0.9


def _inputs_line(out):
    lines = out.splitlines()
    moved = next(i for i, line in enumerate(lines) if "tokens_per_s -10.0%" in line)
    return lines[moved + 1].strip()


def test_a_moved_metric_from_changed_code_names_the_code_fingerprint(results, tmp_path, capsys):
    """A cost-model edit changes tool_version's code fingerprint, which compare names as the input that moved."""
    old_version = pd.read_parquet(results)["tool_version"].iloc[0]
    assert "+code." in old_version

    def new_code(frame):
        _slower(frame)
        frame["tool_version"] = old_version.split("+")[0] + "+code.000000000000"

    code, out, _ = cli(capsys, "compare", results, doctored(results, tmp_path, "new_code.parquet", new_code))
    assert code == 1
    assert _inputs_line(out) == f"inputs: tool_version {old_version} -> {old_version.split('+')[0]}+code.000000000000"


def test_a_moved_metric_with_identical_inputs_and_code_blames_the_environment(results, tmp_path, capsys):
    code, out, _ = cli(capsys, "compare", results, doctored(results, tmp_path, "slower.parquet", _slower))
    assert code == 1
    assert _inputs_line(out) == ("inputs: none changed (same inputs_hash, same code): a dependency (ortools, numpy, "
                                 "...) or the machine changed")


def test_tables_without_a_code_fingerprint_blame_the_code(results, tmp_path, capsys):
    def unfingerprinted(frame):
        frame["tool_version"] = "0.1.0"

    old = doctored(results, tmp_path, "old.parquet", unfingerprinted)
    new = doctored(old, tmp_path, "slower.parquet", _slower)
    code, out, _ = cli(capsys, "compare", old, new)
    assert code == 1
    assert _inputs_line(out) == "inputs: none changed (same inputs_hash): the code or its cost model changed"


def test_changed_inputs_are_named_with_old_and_new_values(tmp_path, capsys):
    """End to end: the same sweep file, its cluster file's price and NIC speed edited between two nights.
    The scenario keeps its identity (the file name did not change), its cost moves, and compare names the
    resolved inputs that moved, with their values."""
    cluster = tmp_path / "cluster.yaml"
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("name: gate\ntop_k: 1\naxes:\n  model: [llama3-8b]\n  cluster: [cluster.yaml]\n"
                          "  seq_length: [4096]\n  global_batch_tokens: [1048576]\n  train_tokens: [1.0e+11]\n")
    nights = []
    for night, (price, nic) in enumerate(((2.0, 400), (3.0, 200))):
        cluster.write_text(f"gpu: h100-sxm\ntopology: {{num_nodes: 2, nic_gbps: {nic}}}\n"
                           f"economics: {{price_per_gpu_hour_usd: {price}}}\n")
        out = tmp_path / f"night{night}"
        code, _, err = cli(capsys, "sweep", sweep_file, "--out", out, "--workers", "1", "--no-progress")
        assert code == 0, err
        nights.append(out)
    code, out, _ = cli(capsys, "compare", *nights)
    assert code == 1
    inputs = next(line for line in out.splitlines() if "inputs:" in line).split("inputs: ")[1]
    assert inputs.split("; ") == ["nic_gbps 400 -> 200", "price_per_gpu_hour_usd 2 -> 3"]
    assert "cost_usd +" in out


def test_inputs_that_differ_only_outside_the_table_are_told_apart(results):
    old = pd.read_parquet(results)
    new = old.copy()
    new.loc[new["scenario_index"] == 0, "inputs_hash"] = "0" * 16
    new.loc[new.index[(new["scenario_index"] == 0) & (new["rank"] == 1)][0], "memory_gib"] *= 1.5
    change = compare_tables(old, new).changes[0]
    assert change.what[-1] == ("inputs: no recorded input column changed, but inputs_hash did: a model or "
                               "cluster field the table does not show changed")


def test_parquet_without_pyarrow_says_so(results, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    code, out, err = cli(capsys, "compare", results, results)
    assert code == 2 and out == ""
    assert err.strip() == (f"plan-search: error: {results}: is Parquet, and reading Parquet needs pyarrow, which is "
                           "not installed; pip install 'plan-search[sweep]', or compare the results.csv files "
                           "(sweep --csv)")
    # a sweep directory holding results.parquet is Parquet too
    code, _, err = cli(capsys, "compare", results.parent, results.parent)
    assert code == 2 and "reading Parquet needs pyarrow" in err
