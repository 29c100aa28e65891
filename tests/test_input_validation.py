"""The one validation layer of every input file and flag (issue #20, item 1).

Each test feeds an input that used to be accepted silently, crash or hang, and checks that it is now
refused with one line naming the file, the field and the fix (exit status 2 from the command line),
or accepted with a warning naming the likely unit slip.
"""

from __future__ import annotations

import ast
import json
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import yaml

from cost_model.model_loader import build_training, load_model, model_from_hf
from cost_model.model_spec import ModelSpec
from cost_model.params import ParameterCounts
from cost_model.training_spec import TrainingSpec
from hardware import bounds, yaml_input
from hardware.errors import InputError, read_yaml_mapping
from hardware.loader import load_cluster
from tests.test_cli import run

ROOT = Path(__file__).resolve().parents[1]

LLAMA_LIKE = {"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 512, "num_attention_heads": 8,
              "intermediate_size": 1024, "vocab_size": 1000, "hidden_act": "silu", "rms_norm_eps": 1e-5}


def refused(capsys, *args: str) -> str:
    """Run the command line; assert exit 2 with exactly one error line and nothing else; return it."""
    start = time.perf_counter()
    code, out, err = run(capsys, *args)
    assert time.perf_counter() - start < 10, "an input error must be found before any long work"
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("plan-search: error: "), err
    assert "Traceback" not in err + out and "Warning" not in err
    return lines[0]


def write(tmp_path: Path, text: str, name: str = "input.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(function, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        function(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.fix, f"no fix in: {message}"
    return message


# --- 1. strict booleans ---------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["tie_word_embeddings", "gated_mlp", "qk_norm", "attention_sinks",
                                   "add_bias_linear", "add_qkv_bias", "attention_bias"])
@pytest.mark.parametrize("value", ["false", "true", 0, 1, "no"])
def test_model_switches_take_only_true_or_false(field, value):
    message = error_of(model_from_hf, {**LLAMA_LIKE, field: value}, source="m.yaml")
    assert f"m.yaml: {field}: must be true or false" in message
    assert f"write {field}: true or {field}: false" in message


def test_string_false_no_longer_ties_llama3_8b_embeddings(tmp_path):
    # The defect: bool("false") is True, so the untied Llama 3 8B was counted at 7.51B parameters.
    quoted = write(tmp_path, 'preset: llama3-8b\ntie_word_embeddings: "false"\n')
    assert "tie_word_embeddings: must be true or false, got 'false'" in error_of(load_model, quoted)
    untied = load_model(write(tmp_path, "preset: llama3-8b\ntie_word_embeddings: false\n", "ok.yaml")).spec
    assert ParameterCounts(untied).total == 8_030_261_248


def test_config_json_switches_must_be_json_booleans(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**LLAMA_LIKE, "tie_word_embeddings": "false"}))
    assert "config.json: tie_word_embeddings: must be true or false" in error_of(load_model, path)
    path.write_text(json.dumps({**LLAMA_LIKE, "tie_word_embeddings": False, "rms_norm_eps": 1e-05}))
    assert load_model(path).spec.tie_embeddings is False


@pytest.mark.parametrize("field", ["nvls"])
def test_cluster_switches_take_only_true_or_false(tmp_path, field):
    path = write(tmp_path, f'gpu: h100-sxm\ntopology: {{num_nodes: 2, {field}: "false"}}\n')
    assert f"topology.{field}: must be true or false, got 'false'" in error_of(load_cluster, path)


def test_training_switches_take_only_true_or_false():
    message = error_of(build_training, {"tp_comm_overlap": "false"}, source="m.yaml")
    assert "training.tp_comm_overlap" in message and "must be true or false" in message


@pytest.mark.parametrize("field", ["num_nodes", "gpus_per_node", "nics_per_node"])
def test_cluster_counts_are_not_booleans(tmp_path, field):
    others = "" if field == "num_nodes" else "num_nodes: 2, "
    path = write(tmp_path, f"gpu: h100-sxm\ntopology: {{{others}{field}: true}}\n")
    assert f"topology.{field}: must be a number, got true" in error_of(load_cluster, path)


@pytest.mark.parametrize("setting", ["train_tokens", "moe_capacity_factor", "seq_length", "global_batch_size"])
def test_training_numbers_are_not_booleans(setting):
    assert f"training.{setting}" in error_of(build_training, {setting: True}, source="m.yaml")


# --- 2. explicit zeros and the architecture's divisibility rules ------------------------------------

@pytest.mark.parametrize("field", ["num_key_value_heads", "head_dim"])
@pytest.mark.parametrize("value", [0, -4])
def test_zero_or_negative_heads_are_errors_not_absent(field, value):
    message = error_of(model_from_hf, {**LLAMA_LIKE, field: value}, source="m.yaml")
    assert f"m.yaml: {field}: must be at least 1, got {value}" in message


def test_absent_head_dim_needs_heads_that_divide_the_hidden_size():
    # 60 heads of an 8192-wide model would be 136.53 wide; it used to be priced as 136.
    message = error_of(model_from_hf, {**LLAMA_LIKE, "hidden_size": 8192, "num_attention_heads": 60}, source="m.yaml")
    assert "m.yaml: num_attention_heads: 60 heads do not divide hidden_size 8192 (head_dim would be 136.53)" in message
    assert "set head_dim explicitly" in message
    assert "head_dim must be a positive integer, got 0" not in error_of(
        model_from_hf, {**LLAMA_LIKE, "hidden_size": 4, "num_attention_heads": 8})
    # with head_dim given, the shape is the file's (Gemma-style heads x head_dim != hidden_size)
    spec = model_from_hf({**LLAMA_LIKE, "hidden_size": 8192, "num_attention_heads": 60, "head_dim": 128})
    assert spec.head_dim == 128


def test_kv_heads_must_divide_query_heads():
    message = error_of(model_from_hf, {**LLAMA_LIKE, "num_key_value_heads": 3}, source="m.yaml")
    assert "num_key_value_heads: 3 KV heads do not divide num_attention_heads 8" in message
    assert model_from_hf({**LLAMA_LIKE, "num_key_value_heads": None}).num_kv_heads == 8  # null = absent


@pytest.mark.parametrize("value,needle", [(3, "must be a list of layer indices"),
                                          ([[1]], "must be a list of layer indices"),
                                          ([9], "names layer 9, but the model's layers are 0..3")])
def test_mlp_only_layers_must_list_existing_layers(value, needle):
    moe = {**LLAMA_LIKE, "model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 2,
           "moe_intermediate_size": 64, "mlp_only_layers": value}
    assert needle in error_of(model_from_hf, moe)


def test_moe_pattern_steps_must_be_at_least_one():
    moe = {**LLAMA_LIKE, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64}
    assert "decoder_sparse_step: must be at least 1" in error_of(model_from_hf, {**moe, "decoder_sparse_step": 0})
    assert "num_experts_per_tok: is missing (or 0)" in error_of(model_from_hf, {**moe, "num_experts_per_tok": 0})


@pytest.mark.parametrize("field,value", [("num_hidden_layers", 10**8), ("hidden_size", 10**9),
                                         ("vocab_size", 10**12), ("num_hidden_layers", float("inf")),
                                         ("hidden_size", float("nan")), ("intermediate_size", 2.5)])
def test_model_sizes_are_finite_whole_and_bounded(field, value):
    message = error_of(model_from_hf, {**LLAMA_LIKE, field: value}, source="m.yaml")
    assert message.startswith(f"m.yaml: {field}: ")


def test_model_whose_widths_multiply_past_the_parameter_bound():
    huge = {**LLAMA_LIKE, "hidden_size": 500_000, "num_attention_heads": 500, "intermediate_size": 9_000_000,
            "num_hidden_layers": 9_000}
    assert "parameters, past the bound" in error_of(model_from_hf, huge)


# --- 3 and 4. one YAML reader: duplicate keys, depth, size, aliases ----------------------------------

def test_every_yaml_reader_is_the_strict_one():
    """No module reads YAML by itself: they all go through hardware.yaml_input."""
    packages = ("hardware", "cost_model", "optimizer", "scenarios")
    offenders = [str(path.relative_to(ROOT)) for package in packages for path in (ROOT / package).rglob("*.py")
                 if path.name != "yaml_input.py"
                 and any(call in path.read_text() for call in ("yaml.safe_load(", "yaml.load(", "yaml.full_load("))]
    assert not offenders, offenders


def test_duplicate_keys_are_refused_in_every_kind_of_file(tmp_path):
    cluster = write(tmp_path, "gpu: h100-sxm\ntopology: {num_nodes: 2}\ntopology: {num_nodes: 4}\n", "c.yaml")
    assert "c.yaml: topology: is given twice at line 3" in error_of(load_cluster, cluster)
    model = write(tmp_path, "preset: llama3-8b\ntraining:\n  seq_length: 4096\n  seq_length: 8192\n", "m.yaml")
    assert "m.yaml: seq_length: is given twice at line 4" in error_of(load_model, model)
    config = tmp_path / "config.json"
    config.write_text('{"num_hidden_layers": 4, "num_hidden_layers": 8}')
    assert "config.json: num_hidden_layers: is given twice" in error_of(load_model, config)
    # a merge key is not a duplicate: the key spelled out overrides the merged one, as YAML intends
    merged = write(tmp_path, "base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n", "merge.yaml")
    assert read_yaml_mapping(merged)["use"] == {"x": 1, "y": 3}


@pytest.fixture(params=["c", "python"])
def yaml_parser(request, monkeypatch):
    """Run a test with libyaml's C parser and with the pure-Python one (the fallback)."""
    if request.param == "c":
        if not hasattr(yaml, "CSafeLoader"):
            pytest.skip("PyYAML built without libyaml")
        assert yaml_input.StrictLoader.__mro__[1] is yaml.CSafeLoader  # the C loader is the one used
        return
    monkeypatch.setattr(yaml_input, "_YAML_LOADER", yaml.SafeLoader)
    monkeypatch.setattr(yaml_input, "StrictLoader", yaml_input.strict_loader(yaml.SafeLoader))


@pytest.mark.parametrize("text", ["a: " + "[" * 20_000 + "]" * 20_000,
                                  "a: " + "{b: " * 5_000 + "1" + "}" * 5_000,
                                  "- " * 20_000 + "x",
                                  "".join(" " * i + f"k{i}:\n" for i in range(300)) + " " * 300 + "v\n"])
def test_deep_nesting_is_one_line_not_a_recursion_error(yaml_parser, tmp_path, text):
    path = write(tmp_path, "placeholder")
    path.write_text(text)
    assert f"nests more than {yaml_input.MAX_NESTING_DEPTH} levels deep" in error_of(read_yaml_mapping, path)


def test_deep_json_is_one_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert "nests more than" in error_of(read_yaml_mapping, path)


def test_billion_laughs_and_alias_floods_are_refused(yaml_parser, tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(9)]
    laughs = write(tmp_path, "\n".join(lines) + "\n", "laughs.yaml")
    start = time.perf_counter()
    assert "expands to more than 1,000,000 values" in error_of(read_yaml_mapping, laughs)
    assert time.perf_counter() - start < 2
    flood = write(tmp_path, "a: &a 1\nb: [" + ", ".join(["*a"] * 2_000) + "]\n", "flood.yaml")
    assert "uses more than 1,000 aliases" in error_of(read_yaml_mapping, flood)
    # a few aliases are fine
    assert read_yaml_mapping(write(tmp_path, "a: &a {x: 1}\nb: *a\n", "ok.yaml"))["b"] == {"x": 1}


def test_oversized_file_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "huge.yaml"
    with path.open("w") as handle:
        handle.write("a: [")
        handle.write("1, " * (yaml_input.MAX_FILE_BYTES // 3 + 10))
        handle.write("1]\n")
    assert "is larger than 16 MiB" in error_of(read_yaml_mapping, path)


def test_not_utf8_and_syntax_errors_are_one_line(tmp_path):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"a: \xff\xfe\n")
    assert "is not UTF-8 text" in error_of(read_yaml_mapping, binary)
    assert "is not valid YAML at line 3" in error_of(read_yaml_mapping, write(tmp_path, "a: 1\nb: [\n"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": 1,}')
    assert "is not valid JSON at line 1" in error_of(read_yaml_mapping, broken)


# --- 5. paths and preset names --------------------------------------------------------------------

@pytest.mark.parametrize("argument,needle", [
    ("", "the model name is empty"),
    ("x" * 300, "unknown model preset"),
    ("x" * 300 + ".yaml", "is 305 bytes long, more than the 255 a file name may have"),
    ("dir/" + "x" * 100_000, "the path is 100,004 bytes long"),
    ("model\0.yaml", "the path contains a NUL byte"),
    ("   ", "the model name is empty"),
])
def test_model_argument_that_no_file_system_accepts(argument, needle):
    assert needle in error_of(load_model, argument)


@pytest.mark.parametrize("argument,needle", [
    ("", "the cluster name is empty"),
    ("h" * 300, "unknown hardware preset"),
    ("h" * 300 + ".yaml", "more than the 255 a file name may have"),
    ("h100\0x8", "unknown hardware preset"),
])
def test_cluster_argument_that_no_file_system_accepts(argument, needle):
    assert needle in error_of(load_cluster, argument)


def test_empty_model_on_the_command_line_is_not_a_directory(capsys):
    line = refused(capsys, "h100x64", "")
    assert "is a directory" not in line and "the model name is empty" in line
    assert "a name in the path is" in refused(capsys, "h100x64", "m" * 400 + ".json")
    assert "the cluster name is empty" in refused(capsys, "", "llama3-8b")


def test_a_directory_and_a_missing_file_are_named(tmp_path):
    assert "is a directory" in error_of(read_yaml_mapping, tmp_path)
    assert "file not found" in error_of(read_yaml_mapping, tmp_path / "nope.yaml")


# --- 6. finite, positive, physically bounded numbers ------------------------------------------------

@pytest.mark.parametrize("section,field,value,needle", [
    ("gpu", "memory_gib", ".inf", "must be a finite number"),
    ("gpu", "memory_gib", ".nan", "must be a finite number"),
    ("gpu", "hbm_GBps", "-.inf", "must be a finite number"),
    ("topology", "nic_gbps", ".inf", "must be a finite number of gigabits/s"),
    ("topology", "nic_gbps", "1.0e+9", "past the bound of 80,000 Gb/s"),
    ("topology", "num_nodes", "1000000000000", "past the bound of 1,000,000 nodes"),
    ("topology", "gpus_per_node", "1.0e+9", "past the bound of 10,000 GPUs"),
    ("economics", "price_per_gpu_hour_usd", ".inf", "must be a finite number"),
    ("economics", "pue", "100", "past the bound of 10"),
])
def test_cluster_numbers_are_finite_and_bounded(tmp_path, section, field, value, needle):
    body = {"gpu": "gpu: {preset: h100-sxm, %s}\ntopology: {num_nodes: 2}\n",
            "topology": "gpu: h100-sxm\ntopology: {num_nodes: 2, %s}\n",
            "economics": "gpu: h100-sxm\ntopology: {num_nodes: 2}\neconomics: {%s}\n"}[section]
    if field == "num_nodes":
        body = "gpu: h100-sxm\ntopology: {%s}\n"
    path = write(tmp_path, body % f"{field}: {value}", "c.yaml")
    message = error_of(load_cluster, path)
    assert f"c.yaml: {section}.{field}: " in message and needle in message


def test_gpu_count_bound_holds_for_the_product_of_nodes_and_gpus_per_node(tmp_path):
    path = write(tmp_path, "gpu: h100-sxm\ntopology: {num_nodes: 1000000, gpus_per_node: 1000, "
                           "scaleup_domain_gpus: 1000}\n")
    assert "topology.num_nodes: gives 1,000,000,000 GPUs" in error_of(load_cluster, path)


@pytest.mark.parametrize("settings,needle", [
    ({"train_tokens": float("inf")}, "train_tokens must be a finite number"),
    ({"train_tokens": 1e23}, "train_tokens 1e+23 tokens is past the bound of 1e+16 tokens"),
    ({"moe_capacity_factor": float("inf")}, "moe_capacity_factor must be a finite number"),
    ({"moe_capacity_factor": float("nan")}, "moe_capacity_factor must be a finite number"),
    ({"seq_length": 10**23}, "seq_length 1e+23 tokens is past the bound of 10,000,000 tokens"),
    ({"global_batch_size": 2 * 10**9}, "past the bound of 1,000,000,000 sequences"),
    ({"global_batch_size": 10**9, "seq_length": 10**6}, "tokens per step is past the bound"),
    ({"global_batch_tokens": float("inf")}, "global_batch_tokens must be a finite number"),
    ({"seq_length": "1.0e30"}, "seq_length 1e+30 tokens is past the bound"),
])
def test_training_numbers_are_finite_and_bounded(settings, needle):
    message = error_of(build_training, settings, source="m.yaml")
    assert needle in message


def test_spec_bounds_hold_however_the_spec_is_built():
    with pytest.raises(bounds.OutOfBounds, match="seq_length"):
        TrainingSpec(seq_length=10**8)
    with pytest.raises(bounds.OutOfBounds, match="num_hidden_layers"):
        ModelSpec(name="x", num_layers=10**5, hidden_size=64, num_attention_heads=1, num_kv_heads=1, head_dim=64,
                  ffn_hidden_size=64, vocab_size=10)


@pytest.mark.parametrize("args,needle", [
    (("h100x8", "llama3-8b", "--train-tokens", "inf"), "command line: --train-tokens: train_tokens must be a finite"),
    (("h100x8", "llama3-8b", "--price", "inf"), "command line: --price: must be a finite number"),
    (("h100x8", "llama3-8b", "--price", "nan"), "command line: --price: must be a finite number"),
    (("h100x8", "llama3-8b", "--seq-len", str(10**23)), "--seq-len: seq_length 1e+23 tokens is past the bound"),
    (("h100x8", "llama3-8b", "--global-batch", str(10**18 + 3)), "--global-batch: global_batch_size"),
    (("h100x1000000000000", "llama3-8b"), "topology.num_nodes: 125,000,000,000 nodes is past the bound"),
    (("h100x8", "llama3-8b", "--headroom", "nan"), "command line: --headroom: memory_headroom"),
    (("h100x8", "llama3-8b", "--top", "0"), "command line: --top: top_k must be at least 1"),
])
def test_flags_that_used_to_hang_or_be_accepted(capsys, args, needle):
    assert needle in refused(capsys, *args)


def test_infinite_capacity_factor_is_one_line_not_numpy_warnings(capsys, tmp_path):
    model = write(tmp_path, "preset: mixtral-8x7b\ntraining: {moe_capacity_factor: .inf}\n", "m.yaml")
    line = refused(capsys, "h100x8", str(model))
    assert "training.moe_capacity_factor: moe_capacity_factor must be a finite number" in line


# --- 7. plausibility warnings naming the unit slip ---------------------------------------------------

@pytest.mark.parametrize("gpu,topology,needle", [
    ("", "scaleup_GBps: 7200", "topology.scaleup_GBps = 7,200 GB/s is past anything real"),
    ("hbm_GBps: 26800", "", "gpu.hbm_GBps = 26,800 GB/s is past anything real"),
    ("memory_gib: 81559", "", "if it is in MiB, write 79.65"),
    ("", "nic_GBps: 400", "write nic_gbps: 400 (= 50 GB/s)"),
    ("", "scaleout_latency_us: 5000", "if it is in nanoseconds, write 5"),
])
def test_unit_slips_draw_a_warning_naming_the_slip(tmp_path, gpu, topology, needle):
    path = write(tmp_path, f"gpu: {{preset: h100-sxm{', ' + gpu if gpu else ''}}}\n"
                           f"topology: {{num_nodes: 2{', ' + topology if topology else ''}}}\n", "c.yaml")
    with pytest.warns(UserWarning) as caught:
        load_cluster(path)
    messages = [str(w.message) for w in caught]
    assert any(needle in m and m.startswith(f"{path}: ") for m in messages), messages


def test_memory_in_bytes_is_refused_with_the_conversion(tmp_path):
    path = write(tmp_path, "gpu: {preset: h100-sxm, memory_gib: 1e12}\ntopology: {num_nodes: 2}\n", "c.yaml")
    message = error_of(load_cluster, path)
    assert "gpu.memory_gib: 1,000,000,000,000 GiB is past the bound of 100,000 GiB" in message
    assert "if it is in bytes, write 931.3" in message


def test_real_hardware_draws_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("h100x1024", "gb300x72", "b300x64", "mi300xx64", "a100x16", "h800x16", "h200x16"):
            load_cluster(name)


def test_override_warns_only_about_what_it_changes():
    base = load_cluster("h100x64")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        base.with_overrides({"topology.num_nodes": 4})
    with pytest.warns(UserWarning, match="economics.price_per_gpu_hour_usd = 5,000"):
        base.with_overrides({"economics.price_per_gpu_hour_usd": 5000}, source="command line")


# --- 8. command-line flags ----------------------------------------------------------------------------

def test_both_batch_flags_are_refused_but_a_flag_overrides_the_files_other_field(capsys, tmp_path):
    line = refused(capsys, "h100x8", "llama3-8b", "--global-batch", "512", "--global-batch-tokens", "4194304")
    assert "--global-batch-tokens: is given together with --global-batch" in line
    both = write(tmp_path, "preset: llama3-8b\ntraining: {global_batch_size: 512, global_batch_tokens: 4194304}\n",
                 "both.yaml")
    assert f"{both}: training.global_batch_tokens: is given together with global_batch_size" in refused(
        capsys, "h100x8", str(both))
    tokens = write(tmp_path, "preset: llama3-8b\ntraining: {seq_length: 4096, global_batch_tokens: 4194304}\n",
                   "tokens.yaml")
    code, out, err = run(capsys, "h100x8", str(tokens), "--global-batch", "256", "--format", "json", "--top", "1")
    assert code == 0, err
    assert json.loads(out)["scenario"]["global_batch_size"] == 256


@pytest.mark.parametrize("gpus,needle", [("64-8", "the range 64-8 runs downward; write the smaller count first: "
                                                  "--gpus 8-64"),
                                         ("8-", "is not a GPU count, list or range"),
                                         ("", "is not a GPU count, list or range"),
                                         ("1" * 5000, "is not a GPU count")])
def test_gpus_ranges_run_upward(capsys, gpus, needle):
    assert needle in refused(capsys, "h100x64", "llama3-8b", "--gpus", gpus)


@pytest.mark.parametrize("flags,needle", [
    (("--tp", "99999999999"), "--tp: 99,999,999,999 is more than the cluster's 64 GPUs"),
    (("--pp", "100000"), "--pp: 100,000 is more than the cluster's 64 GPUs"),
    (("--ep", "1000"), "--ep: 1,000 is more than the cluster's 64 GPUs"),
    (("--dp", "0"), "--dp: must be at least 1"),
    (("--tp", "8", "--pp", "4", "--cp", "4"), "--tp x --pp x --cp: 8 x 4 x 4 = 128 GPUs is more than the cluster's 64"),
    (("--recompute", "full", "--recompute-num-layers", "-5"), "--recompute-num-layers: must be -1"),
    (("--recompute", "full", "--recompute-num-layers", "0"), "--recompute-num-layers: must be -1"),
    (("--recompute", "full", "--recompute-num-layers", "33"), "1..32 (the model's layers), got 33"),
    (("--micro-batch", str(10**20)), "--micro-batch: 100,000,000,000,000,000,000 is more than the global batch"),
    (("--vpp", "1000"), "--vpp: 1,000 is more than the model's 32 layers"),
    (("--activation-offload-layers", "-3"), "--activation-offload-layers: must be 0..32"),
])
def test_evaluate_names_the_flag_that_is_wrong(capsys, flags, needle):
    assert needle in refused(capsys, "evaluate", "h100x64", "llama3-8b", *flags)


def test_evaluate_accepts_valid_recompute_layers(capsys):
    code, _, err = run(capsys, "evaluate", "h100x64", "llama3-8b", "--recompute", "full",
                       "--recompute-num-layers", "4", "--format", "json")
    assert code in (0, 1) and "error" not in err


# --- 9. messages ----------------------------------------------------------------------------------------

def test_echoed_values_are_cut_to_a_sane_length(capsys, tmp_path):
    long_value = "v" * 100_000
    error = InputError("c.yaml", "gpu.name", f"unknown thing {long_value!r} here", f"did you mean {long_value}")
    text = str(error)
    assert len(text) < 400 and "100,002 characters" in text and "\u2026" in text
    assert text.startswith("c.yaml: gpu.name: unknown thing 'vvv") and "here; did you mean" in text
    path = write(tmp_path, f"preset: {long_value}\n", "m.yaml")
    assert len(refused(capsys, "h100x8", str(path))) < 600
    short = InputError("command line", "--tp", "must be at least 1, got 0", "fix the value")
    assert str(short) == "command line: --tp: must be at least 1, got 0; fix the value"


def test_a_long_path_keeps_its_file_name():
    path = "/data/" + "d" * 120 + "/cluster.yaml"
    assert path in str(InputError(path, "topology", "is missing", "add it"))
    cut = str(InputError("/x/" + "d" * 1000 + "/cluster.yaml", "", "file not found", "check the path"))
    assert "cluster.yaml" in cut and len(cut) < 400


PACKAGE_MODULES = sorted(str(p.relative_to(ROOT)) for package in ("hardware", "cost_model", "optimizer", "scenarios")
                         for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("module", PACKAGE_MODULES)
def test_every_input_error_says_how_to_fix_it(module):
    tree = ast.parse((ROOT / module).read_text())
    missing = [node.lineno for node in ast.walk(tree)
               if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "InputError"
               and len(node.args) < 4 and not any(k.arg == "fix" for k in node.keywords)]
    assert not missing, f"{module}: InputError without a fix at lines {missing}"


@pytest.mark.parametrize("key,value,needle", [
    ("topology.num_nodes", True, "topology.num_nodes: must be a number, got true"),
    ("topology.nic_gbps", float("inf"), "topology.nic_gbps: must be a finite number of gigabits/s"),
    ("topology.nic_gbps", True, "topology.nic_gbps: must be a finite number of gigabits/s, got true"),
    ("gpu.memory_gib", float("nan"), "gpu.memory_gib: must be a finite number"),
    ("topology.nvls", 1, "topology.nvls: must be true or false, got 1"),
])
def test_overrides_are_held_to_the_same_rules(key, value, needle):
    """Sweep and study overrides go through ClusterSpec.with_overrides: the same checks as a file."""
    assert needle in error_of(load_cluster("h100x64").with_overrides, {key: value}, source="sweep.yaml")


def test_a_top_level_moe_capacity_factor_is_a_checked_training_setting_not_dropped():
    from cost_model.model_loader import model_input_from_mapping

    model = model_input_from_mapping({"preset": "mixtral-8x7b", "moe_capacity_factor": 1.25}, source="m.yaml")
    assert model.training_overrides["moe_capacity_factor"] == 1.25
    with pytest.raises(InputError, match="moe_capacity_factor must be a finite number"):
        build_training(model_input_from_mapping({"preset": "mixtral-8x7b", "moe_capacity_factor": float("inf")},
                                                source="m.yaml").training_overrides, source="m.yaml")
    with pytest.raises(InputError, match="both at the top level and under training"):
        model_input_from_mapping({"preset": "mixtral-8x7b", "moe_capacity_factor": 1.25,
                                  "training": {"moe_capacity_factor": 1.5}}, source="m.yaml")
