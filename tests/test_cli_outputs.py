"""What ``plan-search`` prints: tables and help that fit 80 columns, ``--wide``, ``--version``, CSV with readable
recompute names, ``--emit-plan``, per-stage memory in JSON, pinned degrees on the command line, and a
progress bar that never reaches captured output."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from cost_model.model_loader import load_model
from cost_model.plan import MODULE_BIT
from hardware.loader import load_cluster
from optimizer.emit import FRAMEWORK_MODULES
from optimizer.search import Scenario, search
from optimizer.search_options import SearchOptions
from tests.test_cli import run

ALL_COLUMNS = ("#", "TP", "PP", "DP", "CP", "EP", "VPP", "MBS", "recompute", "SP", "ZeRO", "reserved GiB", "step s",
               "tok/s/GPU", "TFLOP/s/GPU", "MFU", "days", "cost $M")


@pytest.fixture
def columns_80(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")


def _table_header(out: str) -> str:
    return next(line for line in out.splitlines() if line.strip().startswith("# "))


@pytest.mark.parametrize("model", ["llama3-70b", "qwen3-30b-a3b"])
def test_every_line_fits_80_columns(capsys, columns_80, model):
    code, out, err = run(capsys, "h100x64", model, "--train-tokens", "1e12", "--price", "2")
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80
    header = _table_header(out).split()
    for kept in ("TP", "PP", "DP", "recompute", "ZeRO", "tok/s/GPU"):
        assert kept in header
    assert "TFLOP/s/GPU" not in header  # the first column a narrow terminal loses
    assert len(out.splitlines()) > 20  # the table has its 10 rows: nothing was cut instead of wrapped


def test_no_fit_explanation_is_wrapped_to_80_columns(capsys, columns_80):
    code, out, _ = run(capsys, "h100x8", "llama3-405b", "--seq-len", "8192", "--global-batch", "64")
    assert code == 1
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "No plan fits:" in out and "what would fit:" in out


def test_wide_shows_every_column(capsys, columns_80):
    code, out, _ = run(capsys, "h100x64", "llama3-70b", "--wide", "--top", "3")
    assert code == 0
    header = _table_header(out)
    for column in ALL_COLUMNS:
        assert re.search(rf"(^|\s){re.escape(column)}(\s|$)", header), column
    assert max(len(line) for line in out.splitlines()) > 80


def test_a_wide_terminal_shows_every_column(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(capsys, "h100x64", "llama3-70b", "--top", "3", "--train-tokens", "1e12", "--price", "2")
    assert code == 0
    assert all(column in _table_header(out) for column in ALL_COLUMNS)


def test_help_names_every_option_in_full_at_80_columns(capsys, columns_80):
    from optimizer.cli import search_command
    import inspect

    code, out, _ = run(capsys, "search", "--help")
    assert code == 0
    names = []
    for parameter in inspect.signature(search_command).parameters.values():
        for declaration in getattr(parameter.default, "param_decls", None) or ():
            names += [name for name in declaration.split("/") if name.startswith("--")]
    assert "--global-batch-tokens" in names and "--no-overlap-moe-expert-parallel-comm" in names
    for name in names:
        assert re.search(rf"{re.escape(name)}(\W|$)", out), name
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_version_names_the_package_and_the_tested_framework_releases(capsys):
    from importlib.metadata import version

    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.splitlines()[0] == f"plan-search {version('plan-search')}"
    for name, module in FRAMEWORK_MODULES.items():
        assert f"{name}: {module.TESTED_VERSION}" in out


def test_csv_names_recompute_and_modules_and_says_whether_a_plan_fits(capsys):
    code, out, _ = run(capsys, "h100x64", "llama3-70b", "--format", "csv", "--top", "10", "--recompute", "selective",
                       "--recompute", "full", "--seq-len", "8192")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows
    for row in rows:
        assert row["recompute"] in ("selective", "full")
        assert row["fits"] == "True"
        if row["recompute"] == "selective":
            assert row["recompute_modules"] and set(row["recompute_modules"].split("+")) <= set(MODULE_BIT)
        else:
            assert row["recompute_modules"] == ""


def test_evaluate_csv_carries_the_rule_verdict_in_fits(capsys):
    code, out, _ = run(capsys, "evaluate", "h100x64", "llama3-70b", "--tp", "3", "--format", "csv")
    assert code == 1
    [row] = list(csv.DictReader(io.StringIO(out)))
    assert row["fits"] == "False" and row["recompute"] == "none"


@pytest.mark.parametrize("command", [("h100x16", "llama3-8b"), ("evaluate", "h100x16", "llama3-8b", "--tp", "2")])
def test_emit_with_csv_is_one_line_and_exit_2(capsys, command):
    code, out, err = run(capsys, *command, "--format", "csv", "--emit", "megatron")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--emit" in err and "CSV" in err


def test_emit_plan_n_in_json_is_that_plans_launch(capsys):
    code, out, _ = run(capsys, "h100x32", "llama3-70b", "--top", "4", "--format", "json", "--emit", "megatron",
                       "--emit-plan", "3")
    assert code == 0
    document = json.loads(out)
    [emission] = document["emit"]
    plan = document["plans"][2]
    assert set(emission) == {"plan", "framework", "tested_version", "argv", "env", "differences", "text"}
    assert emission["plan"] == 3 and emission["framework"] == "megatron"
    assert emission["tested_version"] == FRAMEWORK_MODULES["megatron"].TESTED_VERSION
    argv = emission["argv"]
    assert isinstance(argv, list) and isinstance(emission["env"], dict)
    assert argv[argv.index("--tensor-model-parallel-size") + 1] == str(plan["tp"])
    assert argv[argv.index("--pipeline-model-parallel-size") + 1] == str(plan["pp"])
    assert argv[argv.index("--micro-batch-size") + 1] == str(plan["micro_batch"])


def test_emit_plan_all_emits_every_shown_plan_in_order(capsys):
    code, out, _ = run(capsys, "h100x32", "llama3-70b", "--top", "3", "--format", "json", "--emit", "torchtitan",
                       "--emit-plan", "all")
    assert code == 0
    document = json.loads(out)
    assert [e["plan"] for e in document["emit"]] == [1, 2, 3]
    for emission, plan in zip(document["emit"], document["plans"]):
        argv = emission["argv"]
        assert argv[argv.index("--parallelism.tensor_parallel_degree") + 1] == str(plan["tp"])


def test_table_emission_header_names_rank_and_tested_version(capsys):
    code, out, _ = run(capsys, "h100x32", "llama3-70b", "--top", "2", "--emit", "megatron", "--emit-plan", "all")
    assert code == 0
    version = FRAMEWORK_MODULES["megatron"].TESTED_VERSION
    assert f"megatron launch of plan 1 (tested with {version}):" in out
    assert f"megatron launch of plan 2 (tested with {version}):" in out


@pytest.mark.parametrize("value,needle", [("0", "must be a rank from 1"), ("11", "must be a rank from 1 to --top 10"),
                                          ("best", "is not a plan rank")])
def test_bad_emit_plan_is_one_line(capsys, value, needle):
    code, out, err = run(capsys, "h100x16", "llama3-8b", "--emit", "megatron", "--emit-plan", value)
    assert code == 2 and out == ""
    assert needle in err and "--emit-plan" in err and err.count("\n") == 1


def test_emit_plan_without_emit_is_one_line(capsys):
    code, out, err = run(capsys, "h100x16", "llama3-8b", "--emit-plan", "2")
    assert code == 2 and out == "" and "--emit is not given" in err and err.count("\n") == 1


def test_json_plans_carry_per_stage_memory(capsys):
    code, out, _ = run(capsys, "h100x64", "llama3-70b", "--pp", "4", "--top", "3", "--format", "json")
    assert code == 0
    for plan in json.loads(out)["plans"]:
        stages = plan["stages"]
        assert [s["stage"] for s in stages] == ["first", "middle", "last"]
        assert stages[0]["embedding"] and stages[-1]["lm_head"]
        for stage in stages:
            parts = sum(stage[f"{p}_gib"] for p in ("weights", "gradients", "optimizer", "activations", "other"))
            assert parts == pytest.approx(stage["total_gib"], rel=1e-6)
        peak = max(stages, key=lambda s: s["total_gib"])
        assert peak["stage"] == plan["peak_stage"]
        assert peak["total_gib"] == pytest.approx(plan["memory_gib"], rel=1e-6)
        # the middle entry is one rank of a middle stage: the layers of 4 stages add up to 80 with 2 middles
        assert stages[0]["layers"] + 2 * stages[1]["layers"] + stages[2]["layers"] == 80


def test_json_without_pipeline_has_one_stage(capsys):
    code, out, _ = run(capsys, "h100x16", "llama3-8b", "--pp", "1", "--top", "1", "--format", "json")
    assert code == 0
    [stage] = json.loads(out)["plans"][0]["stages"]
    assert stage["stage"] == "first" and stage["layers"] == 32 and stage["embedding"] and stage["lm_head"]


def test_pinned_flags_keep_only_those_values(capsys):
    code, out, _ = run(capsys, "h100x64", "llama3-70b", "--tp", "4-8", "--pp", "2,4", "--micro-batch", "1",
                       "--vpp", "1-2", "--top", "20", "--format", "json")
    assert code == 0
    document = json.loads(out)
    plans = document["plans"]
    assert plans
    assert document["scenario"]["pinned"] == {"tp": [4, 5, 6, 7, 8], "pp": [2, 4], "vpp": [1, 2], "micro_batch": [1]}
    assert {p["tp"] for p in plans} <= {4, 8} and {p["pp"] for p in plans} <= {2, 4}
    assert {p["micro_batch"] for p in plans} == {1} and {p["vpp"] for p in plans} <= {1, 2}


def test_a_pin_that_leaves_no_layout_is_explained(capsys):
    code, out, _ = run(capsys, "h100x64", "llama3-70b", "--tp", "3", "--format", "json")
    assert code == 1
    explanation = json.loads(out)["explanation"]
    assert explanation["binding_constraint"] == "tp_pinned"


@pytest.mark.parametrize("flag,value,needle", [
    ("--tp", "0", "must be at least 1, got 0"),
    ("--pp", "-2", "must be at least 1, got -2"),
    ("--cp", "two", "is not a number, list or range"),
    ("--ep", "8-4", "the range 8-4 runs downward"),
    ("--dp", "4,", "is not a number, list or range"),
    ("--etp", "128", "128 is more than the cluster's 64 GPUs"),
    ("--vpp", "81", "81 is more than the model's 80 layers"),
    ("--micro-batch", "0-2", "must be at least 1, got 0"),
])
def test_bad_pins_are_one_line_naming_the_flag(capsys, flag, value, needle):
    code, out, err = run(capsys, "h100x64", "llama3-70b", f"{flag}={value}")
    assert code == 2 and out == ""
    assert err.startswith(f"plan-search: error: command line: {flag}: ") and needle in err
    assert err.count("\n") == 1


def test_search_reports_progress_per_block_of_layouts():
    model = load_model("llama3-70b")
    scenario = Scenario(model=model.spec, training=_training(model), cluster=load_cluster("h100x1024"),
                        options=SearchOptions(gpu_counts=(256, 512, 1024)))
    calls: list[tuple[int, int]] = []
    result = search(scenario, chunk_plans=1 << 12, progress=lambda done, total: calls.append((done, total)))
    assert len(calls) > 1
    assert all(total == result.num_layouts for _, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert calls[-1][0] == result.num_layouts


def test_no_progress_bar_in_captured_output(capsys, monkeypatch):
    import optimizer.cli as cli

    monkeypatch.setattr(cli, "PROGRESS_AFTER_S", 0.0)  # would draw at once on a terminal
    code, out, err = run(capsys, "h100x1024", "llama3-70b", "--gpus", "256-1024")
    assert code == 0 and err == ""
    assert "searching layouts" not in out


def test_progress_bar_is_drawn_on_a_terminal_and_erased(monkeypatch):
    import optimizer.cli as cli

    monkeypatch.setattr(cli, "PROGRESS_AFTER_S", 0.0)
    monkeypatch.setattr(cli.sys.stderr, "isatty", lambda: True, raising=False)
    with cli._progress_bar(enabled=True) as progress:
        assert progress is not None
        progress(1, 4)
        progress(4, 4)
    with cli._progress_bar(enabled=False) as progress:  # JSON and CSV output
        assert progress is None


def _training(model_input):
    from cost_model.model_loader import build_training, layered_training

    return build_training(layered_training(model_input.training_overrides, {}), model=model_input.spec)


def test_python_api_gives_the_cli_answer(capsys):
    from optimizer import SearchOptions, emit_launch, evaluate_plan, make_scenario, search_plans

    scenario = make_scenario("h100x64", "llama3-70b", SearchOptions(tp_values=(4, 8), top_k=3),
                             seq_length=8192, global_batch_size=128)
    best = search_plans(scenario).ranked
    code, out, _ = run(capsys, "h100x64", "llama3-70b", "--tp", "4,8", "--top", "3", "--seq-len", "8192",
                       "--global-batch", "128", "--format", "json", "--emit", "megatron")
    document = json.loads(out)
    assert code == 0
    assert [int(t) for t in best.plans.tp] == [p["tp"] for p in document["plans"]]
    assert [round(float(m), 6) for m in best.memory_gib] == [p["memory_gib"] for p in document["plans"]]
    assert list(emit_launch(scenario, best, 0).argv) == document["emit"][0]["argv"]
    plan = document["plans"][0]
    mine = evaluate_plan(scenario, **{k: plan[k] for k in ("tp", "pp", "dp", "cp", "vpp", "micro_batch",
                                                            "recompute", "sequence_parallel", "zero_stage")},
                         recompute_modules=plan["recompute_modules"] or ["core_attn"])
    assert float(mine.step_time_s[0]) == pytest.approx(plan["step_time_s"], rel=1e-6)


def test_importing_the_package_loads_nothing():
    import subprocess
    import sys

    code = ("import sys, optimizer; heavy = [m for m in ('numpy', 'optimizer.search', 'cost_model', 'rich') "
            "if m in sys.modules]; assert not heavy, heavy; import optimizer.search as s; "
            "assert type(s).__name__ == 'module'; assert optimizer.search_plans is s.search")
    subprocess.run([sys.executable, "-c", code], check=True)
