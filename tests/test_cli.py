"""End-to-end tests of the ``plan-search`` command line on the bundled examples."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from optimizer.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run(capsys, *args: str) -> tuple[int, str, str]:
    argv = sys.argv
    sys.argv = ["plan-search", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_search_on_bundled_example_prints_ranked_table(capsys):
    code, out, err = run(capsys, str(EXAMPLES / "cluster.yaml"), str(EXAMPLES / "model.yaml"), "--top", "3")
    assert code == 0, err
    assert out.startswith("llama3-8b on h100-128: 128 x H100 SXM5 80GB")
    assert "seq 8192, global batch 512 (4.2M tokens)" in out
    assert "Top 3 plans by throughput" in out
    assert "reserved GiB" in out and "tok/s/GPU" in out
    assert "Best plan:" in out and "memory per GPU" in out


def test_json_schema_fields(capsys):
    code, out, _ = run(capsys, "h100x64", "llama3-70b", "--top", "4", "--seq-len", "8192", "--global-batch", "128",
                       "--format", "json", "--train-tokens", "1e12", "--price", "2")
    assert code == 0
    document = json.loads(out)
    assert document["scenario"]["seq_length"] == 8192
    assert document["scenario"]["global_batch_size"] == 128
    assert document["search"]["feasible"] > 0
    plans = document["plans"]
    assert len(plans) == 4
    required = {"tp", "pp", "dp", "cp", "ep", "vpp", "micro_batch", "num_microbatches", "recompute",
                "sequence_parallel", "zero_stage", "memory_gib", "memory_breakdown_gib", "step_time_s",
                "step_time_breakdown_s", "tokens_per_s", "mfu", "fits"}
    for plan in plans:
        assert required <= set(plan)
        assert set(plan["memory_breakdown_gib"]) == {"weights", "gradients", "optimizer", "activations", "other"}
        assert plan["fits"] is True
        assert plan["tp"] * plan["pp"] * plan["dp"] * plan["cp"] == 64
        assert plan["num_microbatches"] * plan["dp"] * plan["micro_batch"] == 128
        assert sum(plan["memory_breakdown_gib"].values()) == pytest.approx(plan["memory_gib"], rel=1e-6)
        assert sum(plan["step_time_breakdown_s"].values()) == pytest.approx(plan["step_time_s"], rel=1e-6)
        assert plan["memory_gib"] <= document["scenario"]["memory_limit_gib"]
        # cost = GPU-hours x price; GPU-hours = GPUs x tokens / (tokens/s) / 3600
        hours = 64 * 1e12 / plan["tokens_per_s"] / 3600
        assert plan["gpu_hours"] == pytest.approx(hours, rel=1e-6)
        assert plan["cost_usd"] == pytest.approx(2 * hours, rel=1e-6)
    throughputs = [p["tokens_per_s"] for p in plans]
    assert throughputs == sorted(throughputs, reverse=True)


def test_output_is_deterministic(capsys):
    args = ("h100x16", "llama3-8b", "--format", "json", "--global-batch", "64")
    first = json.loads(run(capsys, *args)[1])
    second = json.loads(run(capsys, *args)[1])
    first["search"].pop("seconds")
    second["search"].pop("seconds")
    assert first == second


def test_csv_output_has_one_row_per_plan(capsys):
    code, out, _ = run(capsys, "h100x16", "llama3-8b", "--format", "csv", "--top", "3")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("tp,pp,dp,cp,ep,etp,vpp,micro_batch")


@pytest.mark.parametrize("emitter,expected", [
    ("megatron", ["--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--micro-batch-size",
                  "--global-batch-size 256", "--seq-length 8192"]),
    ("torchtitan", ["--module llama3 --config llama3_70b", "--parallelism.tensor_parallel_degree",
                    "--parallelism.data_parallel_shard_degree", "activation_checkpoint:"]),
    ("megatron-bridge", ["model.tensor_model_parallel_size=", "train.global_batch_size=256"]),
])
def test_emit_prints_launcher_arguments(capsys, emitter, expected):
    code, out, _ = run(capsys, "h100x32", "llama3-70b", "--seq-len", "8192", "--global-batch", "256",
                       "--top", "1", "--emit", emitter)
    assert code == 0
    for text in expected:
        assert text in out


def test_emit_megatron_matches_best_plan(capsys):
    code, out, _ = run(capsys, "h100x32", "llama3-70b", "--seq-len", "8192", "--global-batch", "256",
                       "--top", "1", "--format", "json", "--emit", "megatron")
    document = json.loads(out)
    best = document["plans"][0]
    [emission] = document["emit"]
    assert emission["plan"] == 1 and emission["framework"] == "megatron"
    flags = emission["text"]
    assert f"--tensor-model-parallel-size {best['tp']}" in flags
    assert f"--pipeline-model-parallel-size {best['pp']}" in flags
    assert f"--context-parallel-size {best['cp']}" in flags
    assert ("--sequence-parallel" in flags) == best["sequence_parallel"]
    assert ("--use-distributed-optimizer" in flags) == (best["zero_stage"] >= 1)


def test_nothing_fits_exits_1_with_explanation(capsys):
    code, out, _ = run(capsys, "h100x8", "llama3-405b", "--seq-len", "8192", "--global-batch", "64")
    assert code == 1
    assert "No plan fits: the plan that needs the least memory needs" in out
    assert "the H100 SXM5 80GB has 79.1 GiB usable" in out
    assert "what would fit:" in out and "nodes" in out


def test_nothing_fits_json_names_binding_constraint(capsys):
    code, out, _ = run(capsys, "h100x8", "llama3-405b", "--format", "json")
    assert code == 1
    document = json.loads(out)
    assert document["plans"] == []
    explanation = document["explanation"]
    assert explanation["binding_constraint"] == "memory_per_gpu"
    assert explanation["needed_gib"] > explanation["available_gib"]


def test_evaluate_llama3_405b_published_layout_fits(capsys):
    code, out, err = run(capsys, "evaluate", "h100x8192", str(EXAMPLES / "llama3-405b-8k.yaml"), "--tp", "8",
                         "--pp", "16", "--dp", "64", "--vpp", "4", "--recompute", "full", "--sequence-parallel",
                         "--zero-stage", "1", "--format", "json")
    assert code == 0, err
    plan = json.loads(out)["plan"]
    assert plan["fits"] is True and plan["why_not"] == []
    assert plan["num_microbatches"] == 32


def test_evaluate_reports_broken_rules_and_memory(capsys):
    code, out, _ = run(capsys, "evaluate", "h100x64", "llama3-70b", "--tp", "16", "--pp", "1", "--dp", "4",
                       "--format", "json")
    assert code == 1
    plan = json.loads(out)["plan"]
    assert plan["fits"] is False
    reasons = " ".join(plan["why_not"])
    assert "tp_inside_scaleup_domain" in reasons
    code, out, _ = run(capsys, "evaluate", "h100x8", "llama3-70b", "--tp", "8", "--format", "json")
    plan = json.loads(out)["plan"]
    assert code == 1 and plan["fits"] is False
    assert any(r.startswith("memory_per_gpu: needs") for r in plan["why_not"])
    code, out, _ = run(capsys, "evaluate", "h100x8", "qwen3-30b-a3b", "--ep", "3", "--format", "json")
    reasons = json.loads(out)["plan"]["why_not"]
    assert code == 1 and "ep=3 is not a divisor of the GPU count or is beyond the search bounds" in reasons  # said once
    assert "expert_degrees_valid: ep divides the experts and etp x ep divides tp x cp x dp" in reasons


def test_gpu_range_considers_fewer_nodes(capsys):
    code, out, _ = run(capsys, "h100x64", "llama3-8b", "--gpus", "16-64", "--format", "json", "--top", "50")
    assert code == 0
    document = json.loads(out)
    assert document["scenario"]["gpus"] == [16, 32, 64]


def test_pareto_plans_trade_time_for_cost(capsys):
    code, out, _ = run(capsys, "h100x64", "llama3-8b", "--gpus", "8-64", "--pareto", "--format", "json",
                       "--price", "2", "--train-tokens", "1e11")
    assert code == 0
    plans = json.loads(out)["plans"]
    assert plans
    times = [p["time_to_train_days"] for p in plans]
    costs = [p["cost_usd"] for p in plans]
    assert times == sorted(times)
    assert costs == sorted(costs, reverse=True)  # each slower plan on the front is cheaper


@pytest.mark.parametrize("args,needle", [
    (["examples/nope.yaml", "llama3-8b"], "file not found"),
    (["h100x16", "llama3-8x"], "unknown model preset 'llama3-8x' (did you mean"),
    (["h100x12", "llama3-8b"], "not a whole number of 8-GPU"),
    (["h100x16", "llama3-8b", "--gpus", "12"], "--gpus"),
    (["h100x16", "llama3-8b", "--objective", "speed"], "objective must be one of"),
    (["h100x16", "llama3-8b", "--seq-len", "0"], "seq_length must be a positive integer"),
    (["evaluate", "h100x16", "llama3-8b", "--tp", "0"], "--tp: must be at least 1"),
    (["h100x16", "llama3-8b", "--bogus"], "No such option: --bogus"),
    (["evaluate", "h100x64", "llama3-8b", "--pp", "64"], "--pp: 64 pipeline stages for 32 layers"),
    (["h100x16", "llama3-8b", "--top", "many"], "Invalid value for '--top'"),
])
def test_bad_inputs_exit_2_with_one_line(capsys, args, needle, tmp_path):
    code, out, err = run(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("plan-search: error: ")
    assert needle in lines[0]
    assert "Traceback" not in err + out


def test_bad_model_file_exits_2(capsys, tmp_path):
    bad = tmp_path / "model.yaml"
    bad.write_text("- just\n- a list\n")
    code, _, err = run(capsys, "h100x16", str(bad))
    assert code == 2
    assert "must be a mapping" in err and str(bad) in err
    missing = tmp_path / "missing-heads.yaml"
    missing.write_text("num_hidden_layers: 4\nhidden_size: 256\nvocab_size: 1000\n")
    code, _, err = run(capsys, "h100x16", str(missing))
    assert code == 2 and "num_attention_heads: is missing" in err
    training = tmp_path / "bad-training.yaml"
    training.write_text("preset: llama3-8b\ntraining:\n  seq_lenght: 4096\n")
    code, _, err = run(capsys, "h100x16", str(training))
    assert code == 2 and "training.seq_lenght" in err and "did you mean 'seq_length'" in err
    graphed = tmp_path / "graphed-moe.yaml"
    graphed.write_text("preset: qwen3-30b-a3b\ntraining:\n  cuda_graph_scope: [full_iteration]\n")
    code, _, err = run(capsys, "b200x8", str(graphed))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(graphed) in err and "training.cuda_graph_scope" in err and "token-dropless" in err
    not_a_flag = tmp_path / "not-a-flag.yaml"
    not_a_flag.write_text("preset: qwen3-30b-a3b\ntraining:\n  moe_pad_to_capacity: yes-please\n")
    code, _, err = run(capsys, "b200x8", str(not_a_flag))
    assert code == 2 and "training.moe_pad_to_capacity" in err and "must be true or false" in err


def test_models_lists_presets_with_counts(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert "llama3-405b" in out and "405.85B total" in out
    assert "deepseek-v3" in out and "37.55B active" in out


def test_hardware_subcommand_is_mounted(capsys):
    code, out, _ = run(capsys, "hardware", "show", "h100x16")
    assert code == 0
    assert "GiB" in out and "GB/s" in out


def test_training_settings_from_the_command_line(capsys):
    base = json.loads(run(capsys, "evaluate", "h100x8", "llama3-8b", "--tp", "8", "--format", "json")[1])["plan"]
    unfused = json.loads(run(capsys, "evaluate", "h100x8", "llama3-8b", "--tp", "8", "--format", "json",
                             "--no-flash-attention", "--dropout")[1])["plan"]
    assert unfused["memory_breakdown_gib"]["activations"] > base["memory_breakdown_gib"]["activations"]
    bf16 = json.loads(run(capsys, "evaluate", "h100x8", "llama3-8b", "--tp", "8", "--format", "json",
                          "--grad-dtype", "bf16")[1])["plan"]
    assert bf16["memory_breakdown_gib"]["gradients"] == pytest.approx(base["memory_breakdown_gib"]["gradients"] / 2)
    ring = json.loads(run(capsys, "evaluate", "h100x16", "llama3-8b", "--tp", "8", "--cp", "2", "--format", "json")[1])
    ulysses = json.loads(run(capsys, "evaluate", "h100x16", "llama3-8b", "--tp", "8", "--cp", "2", "--format", "json",
                             "--cp-comm", "a2a")[1])
    assert ring["plan"]["comm_gb_per_step"]["cp"] != ulysses["plan"]["comm_gb_per_step"]["cp"]


def test_calibrate_command_cross_validates_a_dataset(capsys, tmp_path):
    """``calibrate RUNS.yaml``: the parameter table, each source's fitted and held-out error, and the
    overall leave-one-source-out line, on three sources of the packaged runs."""
    import yaml
    from cost_model.calibration.validate import DEFAULT_DATASET
    runs = yaml.safe_load(DEFAULT_DATASET.read_text())["runs"]
    chosen = [r for r in runs if r["source_group"] in ("sc21_t1", "korthikanti2022", "dgxc_nemo")]
    path = tmp_path / "runs.yaml"
    path.write_text(yaml.safe_dump({"runs": chosen}))
    code, out, _ = run(capsys, "calibrate", str(path))
    assert code == 0
    assert "gemm.bf16" in out and "stack.megatron-lm-2021" in out
    for group in ("sc21_t1", "korthikanti2022", "dgxc_nemo"):
        assert next(line for line in out.splitlines() if line.startswith(group))
    assert f"all {len(chosen)} rows: fitted median |error|" in out and "leave-one-source-out" in out


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGPIPE"), reason="POSIX pipes")
def test_closed_pipe_ends_like_a_unix_tool():
    """`plan-search ... | head -1` must not exit 1, which means 'nothing fits'. (3,000 rows are more than
    a pipe buffer holds, so the writer meets the closed pipe whatever the timing.)"""
    import signal
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "from optimizer.cli import main; main()", "h100x64",
                                "llama3-70b", "--top", "3000", "--format", "csv"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline().startswith(b"tp,pp,")
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGPIPE, (process.returncode, err)
    assert err == b""


def test_per_layout_lists_distinct_layouts_in_rank_order(capsys):
    args = ("h100x64", "llama3-70b", "--seq-len", "8192", "--global-batch", "128", "--format", "json")
    _, out, _ = run(capsys, *args, "--top", "100000")
    every = json.loads(out)["plans"]
    code, out, _ = run(capsys, *args, "--top", "10", "--per-layout")
    assert code == 0
    layouts = json.loads(out)["plans"]
    key = lambda p: (p["tp"], p["pp"], p["dp"], p["cp"], p["ep"], p["etp"], p["num_gpus"])
    assert len(layouts) == 10 and len({key(p) for p in layouts}) == 10
    # each is the best plan of its layout, and they come in the order of the full ranking
    first_of_layout = {}
    for p in every:
        first_of_layout.setdefault(key(p), p)
    assert layouts == [first_of_layout[k] for k in list(first_of_layout)[:10]]


def test_fp8_recipe_from_the_command_line(capsys):
    """Current scaling issues four host calls per quantized tensor: with 16 experts per GPU at micro-batch 1
    the host floor binds, so tensorwise is slower than delayed scaling on the same plan."""
    args = ("evaluate", "b200x8", "qwen3-30b-a3b", "--ep", "8", "--precision", "fp8", "--format", "json")
    step = {recipe: json.loads(run(capsys, *args, "--fp8-recipe", recipe)[1])["plan"]["step_time_s"]
            for recipe in ("delayed", "tensorwise")}
    assert step["tensorwise"] > 1.2 * step["delayed"]
    code, _, err = run(capsys, *args, "--fp8-recipe", "mx")
    assert code == 2 and "fp8_recipe must be one of tensorwise, delayed, mxfp8, blockwise" in err


def test_bad_command_line_training_value_names_the_flag_not_the_model(capsys, tmp_path):
    """A value given on the command line is reported against its flag; one from the model file against the file."""
    code, _, err = run(capsys, "evaluate", "h100x8", "llama3-8b", "--seq-len", "0")
    assert code == 2
    assert err.strip() == ("plan-search: error: command line: --seq-len: seq_length must be a positive integer, "
                           "got 0; fix the option's value")
    code, _, err = run(capsys, "evaluate", "h100x8", "llama3-8b", "--fp8-recipe", "mx")
    assert code == 2 and "command line: --fp8-recipe: fp8_recipe must be one of" in err
    model = tmp_path / "model.yaml"
    model.write_text("preset: llama3-8b\ntraining: {fp8_recipe: mx}\n")
    code, _, err = run(capsys, "evaluate", "h100x8", str(model))
    assert code == 2 and f"{model}: training.fp8_recipe: fp8_recipe must be one of" in err
    # the file's bad value is the file's fault even when the command line sets something else
    code, _, err = run(capsys, "evaluate", "h100x8", str(model), "--seq-len", "4096")
    assert code == 2 and f"{model}: training.fp8_recipe" in err


def test_a_defect_of_the_tool_is_one_line_and_status_70_not_a_traceback(capsys, monkeypatch):
    import optimizer.cli as cli

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero\nin a multi-line message")

    monkeypatch.setattr(cli, "search", broken)
    monkeypatch.delenv("PLAN_SEARCH_DEBUG", raising=False)
    code, out, err = run(capsys, "h100x64", "llama3-8b")
    assert code == cli.INTERNAL_ERROR == 70
    (line,) = err.strip().splitlines()
    assert line.startswith("plan-search: internal error at test_cli.py:")
    assert "ZeroDivisionError: division by zero in a multi-line message" in line and "PLAN_SEARCH_DEBUG=1" in line
    monkeypatch.setenv("PLAN_SEARCH_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        run(capsys, "h100x64", "llama3-8b")


def test_a_warning_repeated_by_many_scenarios_is_printed_once(capsys, monkeypatch):
    import warnings

    import optimizer.cli as cli

    real = cli.search

    def noisy(*args, **kwargs):
        for _ in range(3):
            warnings.warn("h100x64: gpu.memory_gib = 1e4 looks like MiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "search", noisy)
    code, _, err = run(capsys, "h100x64", "llama3-8b", "--top", "1")
    assert code == 0
    assert err.count("plan-search: warning: h100x64: gpu.memory_gib = 1e4 looks like MiB") == 1


def test_evaluate_defaults_expert_tp_to_tp_for_moe_as_megatron(capsys):
    """Megatron's --expert-tensor-parallel-size defaults to the TP size; a dense model has no experts (1)."""
    args = ("evaluate", "h100x64", "mixtral-8x7b", "--tp", "8", "--ep", "1", "--format", "json")
    default = json.loads(run(capsys, *args)[1])["plan"]
    explicit = json.loads(run(capsys, *args, "--etp", "8")[1])["plan"]
    assert default["etp"] == 8 and default == explicit
    assert json.loads(run(capsys, *args, "--etp", "1")[1])["plan"]["memory_gib"] > 5 * default["memory_gib"]
    dense = json.loads(run(capsys, "evaluate", "h100x64", "llama3-8b", "--tp", "8", "--format", "json")[1])["plan"]
    assert dense["etp"] == 1


def test_fp4_on_hopper_is_refused_in_one_line_and_runs_on_blackwell(capsys):
    code, _, err = run(capsys, "search", "h100x8", "llama3-8b", "--precision", "fp4")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("plan-search: error: training: training.precision: precision fp4 needs FP4 tensor cores")
    assert "H100 SXM5 80GB preset has no peak_tflops_fp4" in err and "use --precision fp8 or bf16" in err
    code, out, err = run(capsys, "search", "b200x8", "llama3-8b", "--precision", "fp4", "--top", "1",
                         "--emit", "megatron")
    assert code == 0, err
    assert "--fp4-format e2m1" in out and "--fp4-recipe nvfp4" in out and "--fp8-format" not in out
