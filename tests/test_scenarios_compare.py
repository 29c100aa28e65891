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
