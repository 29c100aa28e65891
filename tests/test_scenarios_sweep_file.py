"""Sweep files: validation, expansion order and counts, stable scenario identities."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from hardware.errors import InputError
from optimizer.cli import main
from scenarios.identity import stable_hash
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
                           "train_tokens, precision, objective; cluster fields go under axes.overrides")


def test_bundled_examples_load():
    nightly = load_sweep(EXAMPLES / "nightly.yaml")
    assert nightly.num_scenarios == 5 * 3 * 2 * 2 == 60
    assert len({t.scenario_id for t in expand(nightly)}) == 60
