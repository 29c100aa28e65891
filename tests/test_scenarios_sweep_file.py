"""Sweep files: validation, expansion order and counts, stable scenario identities."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from hardware.errors import InputError
from optimizer.cli import main
from scenarios.identity import stable_hash
from tests.test_cli import run as run_cli
from scenarios.sweep_file import expand, load_sweep, sweep_from_mapping

EXAMPLES = Path(__file__).resolve().parents[1] / "scenarios" / "examples"

SMALL = {"name": "small", "axes": {
    "model": ["llama3-8b", "qwen2.5-7b"], "cluster": ["h100x8", "h100x16"], "seq_length": [4096, 8192],
    "global_batch_tokens": [1048576], "train_tokens": ["1.0e12"],
    "overrides": {"topology.nic_gbps": [200, 400], "economics.price_per_gpu_hour_usd": [2.5]}}}


def test_expansion_is_the_cartesian_product_in_a_fixed_order():
    sweep = sweep_from_mapping(SMALL)
    tasks = expand(sweep)
    assert sweep.num_scenarios == len(tasks) == 2 * 2 * 2 * 2
    assert [t.index for t in tasks] == list(range(16))
    # model varies slowest, then cluster, then the overrides, then the training axes
    assert [t.params["model"] for t in tasks[:8]] == ["llama3-8b"] * 8
    assert [t.params["cluster"] for t in tasks[:4]] == ["h100x8"] * 4
    assert [(t.params["topology.nic_gbps"], t.params["seq_length"]) for t in tasks[:4]] == [
        (200, 4096), (200, 8192), (400, 4096), (400, 8192)]
    first = tasks[0]
    assert first.error is None
    assert first.params["num_gpus"] == 8 and first.params["nic_gbps"] == 200
    assert first.params["global_batch_size"] == 1048576 // 4096 == 256
    assert first.params["train_tokens"] == 1e12
    assert first.scenario.cluster.economics.price_per_gpu_hour_usd == 2.5
    assert first.scenario.options.top_k == 3  # the default


def test_scenario_ids_are_stable_unique_and_independent_of_spelling():
    ids = [t.scenario_id for t in expand(sweep_from_mapping(SMALL))]
    assert len(set(ids)) == len(ids) == 16
    assert ids == [t.scenario_id for t in expand(sweep_from_mapping(SMALL))]
    respelled = yaml.safe_load(yaml.safe_dump(SMALL))
    respelled["axes"]["train_tokens"] = [1e12]  # the same number written as a float
    assert ids == [t.scenario_id for t in expand(sweep_from_mapping(respelled))]
    assert stable_hash({"a": 4096, "b": [1, 2]}) == stable_hash({"b": (1, 2), "a": 4096.0})
    # a different value is a different scenario
    other = yaml.safe_load(yaml.safe_dump(SMALL))
    other["axes"]["seq_length"] = [2048, 8192]
    assert ids[1] == [t.scenario_id for t in expand(sweep_from_mapping(other))][1]
    assert ids[0] != [t.scenario_id for t in expand(sweep_from_mapping(other))][0]


def test_inputs_hash_follows_the_resolved_inputs():
    tasks = expand(sweep_from_mapping(SMALL))
    # 200 and 400 Gb/s: different clusters, so different inputs
    assert tasks[0].inputs_hash != tasks[2].inputs_hash
    assert len({t.inputs_hash for t in tasks}) == 16
    # the same scenario written with a cluster file equal to the preset: another label, the same inputs
    twin = sweep_from_mapping({"axes": {"model": ["llama3-8b"], "cluster": ["h100x8"], "seq_length": [4096],
                                        "global_batch_tokens": [1048576], "train_tokens": [1e12],
                                        "overrides": {"topology.nic_gbps": [200],
                                                      "economics.price_per_gpu_hour_usd": [2.5]}}})
    assert expand(twin)[0].inputs_hash == tasks[0].inputs_hash


@pytest.mark.parametrize("change, field, words", [
    ({"axes": {"model": ["llama3-8b"], "clustr": ["h100x8"]}}, "axes.clustr", "did you mean 'cluster'"),
    ({"axes": {"model": ["llama3-8b"], "cluster": ["h100x8"], "seq_length": []}}, "axes.seq_length", "is empty"),
    ({"axes": {}}, "axes", "no scenarios"),
    ({"axes": {"model": ["llama3-8b"]}}, "axes.cluster", "is missing"),
    ({"axes": {"model": ["llama3-8x"], "cluster": ["h100x8"]}}, "axes.model[0]", "did you mean 'llama3-8b'"),
    ({"axes": {"model": ["llama3-8b"], "cluster": ["h100x8"], "overrides": {"topology.nic_gpbs": [200]}}},
     "axes.overrides.topology.nic_gpbs", "did you mean 'topology.nic_gbps'"),
    ({"axes": {"model": ["llama3-8b"], "cluster": ["h100x8"], "seq_length": ["long"]}}, "axes.seq_length[0]",
     "must be a number"),
    ({"objective": "speed", "axes": {"model": ["llama3-8b"], "cluster": ["h100x8"]}}, "objective", "unknown objective"),
    ({"search": {"zero_stage": [1]}, "axes": {"model": ["llama3-8b"], "cluster": ["h100x8"]}}, "search.zero_stage",
     "did you mean 'zero_stages'"),
    ({"axis": {"model": ["llama3-8b"]}}, "axis", "did you mean 'axes'"),
])
def test_bad_sweep_files_are_one_line_input_errors(change, field, words):
    with pytest.raises(InputError) as info:
        sweep_from_mapping(change, source="bad.yaml")
    message = str(info.value)
    assert info.value.field == field
    assert message.startswith(f"bad.yaml: {field}: ") and words in message and "\n" not in message


def test_combination_that_cannot_be_built_becomes_an_error_task():
    sweep = sweep_from_mapping({"axes": {"model": ["llama3-8b"], "cluster": ["h100x8"], "seq_length": [3000, 4096],
                                         "global_batch_tokens": [1048576]}})
    bad, good = expand(sweep)
    assert bad.scenario is None and "not a positive multiple of seq_length 3000" in bad.error
    assert good.error is None and good.scenario.training.global_batch_size == 256


def test_cli_exits_2_with_one_line_on_a_bad_sweep_file(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\naxes:\n  model: [llama3-8b]\n  cluster: [h100x8]\n  seq_len: [4096]\n")
    argv = sys.argv
    sys.argv = ["plan-search", "sweep", str(path), "--out", str(tmp_path / "out")]
    try:
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        sys.argv = argv
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.strip() == (f"plan-search: error: {path}: axes.seq_len: unknown axis (did you mean 'seq_length'?); "
                           "known axes: model, cluster, overrides, seq_length, global_batch_tokens, global_batch_size, "
                           "train_tokens, precision, workload, objective; cluster fields go under axes.overrides")


def test_bundled_examples_load():
    nightly = load_sweep(EXAMPLES / "nightly.yaml")
    assert nightly.num_scenarios == 5 * 3 * 2 * 2 == 60
    assert len({t.scenario_id for t in expand(nightly)}) == 60


AXES = {"model": ["llama3-8b", "mixtral-8x7b"], "cluster": ["h100x8"]}


@pytest.mark.parametrize("search, field, message", [
    ({"micro_batch_sizes": 4}, "search.micro_batch_sizes",
     "must be a list of whole numbers, got 4; write a list, e.g. micro_batch_sizes: [4]"),
    ({"micro_batch_sizes": [1, "2"]}, "search.micro_batch_sizes",
     "must be a list of whole numbers, got '2' in [1, '2']; e.g. micro_batch_sizes: [1, 2, 4, 8] (the default)"),
    ({"zero_stages": [1, True]}, "search.zero_stages", "must be a list of whole numbers, got True in [1, True]"),
    ({"recompute_modes": []}, "search.recompute_modes", "is empty: nothing would be searched"),
    ({"recompute_modes": ["none", "half"]}, "search.recompute_modes", "must be drawn from none, selective, full"),
    ({"sequence_parallel": "yes"}, "search.sequence_parallel", "must be a list of true/false values, got 'yes'"),
    ({"memory_headroom": "5%"}, "search.memory_headroom", "must be a number, got '5%'"),
    ({"memory_headroom": 1.5}, "search.memory_headroom", "memory_headroom must be in [0, 1), got 1.5"),
    ({"allow_offload": "no"}, "search.allow_offload", "must be true or false, got 'no'"),
    ({"max_tp": 2.5}, "search.max_tp", "must be a whole number, got 2.5"),
    ({"expert_tp": "all"}, "search.expert_tp", "must be one of 1, tp, both, got 'all'"),
])
def test_malformed_search_options_name_the_field_and_the_fix(search, field, message):
    with pytest.raises(InputError) as info:
        sweep_from_mapping({"search": search, "axes": AXES}, source="s.yaml")
    assert info.value.field == field and message in str(info.value) and "\n" not in str(info.value)
    assert "not iterable" not in str(info.value) and "not supported" not in str(info.value)


def test_search_options_of_the_right_types_are_taken():
    sweep = sweep_from_mapping({"search": {"micro_batch_sizes": [1, 2], "expert_tp": 1, "memory_headroom": 0,
                                           "sequence_parallel": [True]}, "axes": AXES})
    assert sweep.options.micro_batch_sizes == (1, 2) and sweep.options.expert_tp == "1"
    assert sweep.options.memory_headroom == 0 and sweep.options.sequence_parallel == (True,)


@pytest.mark.parametrize("training, field, words", [
    ({"precision": "fp7"}, "training.precision", "precision must be one of"),
    ({"dropout": "yes"}, "training.dropout", "dropout must be true or false"),
    ({"moe_rank_capacity_factor": 2.0}, "training.moe_rank_capacity_factor", "needs moe_token_dispatcher: hybridep"),
    ({"cuda_graph_scope": ["moe"]}, "training.cuda_graph_scope", "(with model mixtral-8x7b)"),
    ({"global_batch_tokens": 1000}, "training.global_batch_tokens", "is not a positive multiple of seq_length"),
])
def test_a_fixed_training_section_no_scenario_can_take_is_a_file_error(training, field, words):
    with pytest.raises(InputError) as info:
        sweep_from_mapping({"training": training, "axes": AXES}, source="s.yaml")
    assert info.value.field == field and words in str(info.value)
    assert str(info.value).startswith(f"s.yaml: {field}: ")


def test_a_fixed_setting_that_only_some_axis_values_reject_stays_a_row():
    # 3,000,000 tokens are whole sequences of 3000 but not of 4096: the 4096 combination is an error row
    sweep = sweep_from_mapping({"training": {"global_batch_tokens": 3_000_000},
                                "axes": {"model": ["llama3-8b"], "cluster": ["h100x8"], "seq_length": [3000, 4096]}})
    good, bad = expand(sweep)
    assert good.error is None and bad.scenario is None and "not a positive multiple of seq_length 4096" in bad.error


def _cli(argv, capsys):
    return run_cli(capsys, *argv)


def test_cli_refuses_a_bad_fixed_training_section_before_any_search(tmp_path, capsys, monkeypatch):
    import scenarios.runner as runner

    monkeypatch.setattr(runner, "run_task", lambda *args: pytest.fail("searched"))
    path = tmp_path / "bad.yaml"
    path.write_text("training: {precision: fp7}\naxes: {model: [llama3-8b], cluster: [h100x8]}\n")
    code, out, err = _cli(["sweep", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and out == ""
    assert err.strip() == (f"plan-search: error: {path}: training.precision: precision must be one of bf16, fp16, "
                           "fp8, fp4, got 'fp7'; fix the training setting")


def test_cli_refuses_more_scenarios_than_the_limit_naming_the_flag(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text("axes: {model: [llama3-8b], cluster: [h100x8], seq_length: [1024, 2048, 4096]}\n")
    code, _, err = _cli(["sweep", str(path), "--out", str(tmp_path / "out"), "--max-scenarios", "2"], capsys)
    assert code == 2 and err.strip() == (f"plan-search: error: {path}: axes: expands to 3 scenarios (1 x 1 x 3), "
                                         "more than the limit of 2; drop axis values, or allow them with "
                                         "--max-scenarios 3")


def test_cli_exits_1_with_a_summary_when_scenarios_fail_unless_allowed(tmp_path, capsys):
    path = tmp_path / "errors.yaml"
    path.write_text("axes: {model: [llama3-8b], cluster: [h100x8], seq_length: [3000, 4096], "
                    "global_batch_tokens: [1048576]}\n")
    out_dir = tmp_path / "out"
    code, out, err = _cli(["sweep", str(path), "--out", str(out_dir), "--workers", "1", "--no-progress"], capsys)
    assert code == 1 and "2 scenarios (1 ok, 0 no_fit, 1 error)" in out and (out_dir / "results.parquet").exists()
    assert err.splitlines()[0].startswith("sweep errors: 2 scenarios, 2 to search on serial; expected about")
    assert err.splitlines()[-1].startswith(
        "plan-search: error: 1 of 2 scenarios failed (#0 llama3-8b on h100x8: ") and "seq_length 3000" in err
    assert "--allow-errors exits 0 anyway" in err
    code, out, err = _cli(["sweep", str(path), "--out", str(out_dir), "--workers", "1", "--no-progress",
                           "--allow-errors"], capsys)
    assert code == 0 and "1 searched on serial, 1 reused" in out  # the error row was searched again


def test_cli_bad_timeout_and_workers_are_one_line_errors(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("axes: {model: [llama3-8b], cluster: [h100x8]}\n")
    code, _, err = _cli(["sweep", str(path), "--out", str(tmp_path / "o"), "--scenario-timeout-s", "-1"], capsys)
    assert code == 2 and err.startswith("plan-search: error: command line: --scenario-timeout-s: must be a number")
    code, _, err = _cli(["sweep", str(path), "--out", str(tmp_path / "o"), "--workers", "0"], capsys)
    assert code == 2 and err.startswith("plan-search: error: command line: --workers: must be at least 1")


def test_shared_expansion_builds_the_same_tasks_as_one_by_one():
    from scenarios import sweep_file

    sweep = sweep_from_mapping({**SMALL, "axes": {**SMALL["axes"], "seq_length": [3000, 4096],
                                                  "objective": ["throughput", "mfu"]}})
    tasks = expand(sweep)
    alone = []
    for task in tasks:  # each rebuilt with nothing shared
        p = task.params
        overrides = {k: p[k] for k in sweep.overrides}
        settings = {a: p[a] for a in sweep.axes if a not in ("model", "cluster")}
        settings["global_batch_tokens"] = SMALL["axes"]["global_batch_tokens"][0]
        settings["train_tokens"] = 1e12
        alone.append(sweep_file._task(sweep, task.index, p["model"], p["cluster"], overrides, settings))
    assert [t.params for t in tasks] == [t.params for t in alone]
    assert [t.error for t in tasks] == [t.error for t in alone] and sum(t.error is not None for t in tasks) == 16
    assert [t.scenario for t in tasks] == [t.scenario for t in alone]


def test_layered_training_keeps_only_the_batch_the_latest_layer_gave():
    from cost_model.model_loader import layered_training

    model_file = {"seq_length": 8192, "global_batch_tokens": 4194304}
    assert layered_training(model_file, {"global_batch_size": 64}) == {"seq_length": 8192, "global_batch_size": 64}
    assert layered_training(model_file, {"seq_length": 4096}, {}) == {"seq_length": 4096,
                                                                      "global_batch_tokens": 4194304}
    assert layered_training({"global_batch_size": 64}, {"global_batch_tokens": 1048576}, {"train_tokens": 1e12}) == {
        "global_batch_tokens": 1048576, "train_tokens": 1e12}


def test_a_sweep_training_batch_replaces_the_model_files_other_batch_field(tmp_path):
    (tmp_path / "model.yaml").write_text("preset: llama3-8b\ntraining:\n  seq_length: 4096\n"
                                         "  global_batch_tokens: 4194304\n")
    sweep = sweep_from_mapping({"name": "layers", "training": {"global_batch_size": 64},
                                "axes": {"model": ["model.yaml"], "cluster": ["h100x8"]}},
                               source=str(tmp_path / "s.yaml"), base_dir=tmp_path)
    (task,) = expand(sweep)
    # the sweep's 64 sequences, not the model file's 1,024 (4,194,304 tokens / 4,096): never both, one winning
    assert task.error is None and task.scenario.training.global_batch_size == 64


def test_a_model_label_too_long_for_a_file_name_is_an_input_error(tmp_path):
    label = "m" * 300 + ".yaml"
    with pytest.raises(InputError) as caught:
        sweep_from_mapping({"name": "long", "axes": {"model": [label], "cluster": ["h100x8"]}},
                           source="s.yaml", base_dir=tmp_path)
    assert "axes.model[0]" in str(caught.value) and len(str(caught.value)) < 1000
