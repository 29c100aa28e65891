"""Serving engines' arguments without the engines installed: every emitted word exists in the pinned engine
(vLLM 0.34.0, SGLang 0.5.23, TensorRT-LLM 1.2.1), the arguments read back give the priced plan, disaggregated
plans give a prefill and a decode command, and each rule refuses what the engine refuses.

The option tables (``tests/conformance/data/{vllm_0.34.0,sglang_0.5.23,trtllm_1.2.1}.json``) come from the
engines' parsers (``python -m tests.conformance.serving_engines --refresh``); the conformance test parses the
same commands with the engines themselves where they import.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from cost_model.model_loader import load_model
from cost_model.serving.plan import InstanceArrays, ServingPlanArrays
from hardware.loader import load_cluster
from optimizer.emit import ENGINES, emit_serving, serving_rules, serving_violations
from optimizer.emit import serving_knobs, sglang, trtllm, vllm

DATA = Path(__file__).parent / "conformance" / "data"
TABLES = {"vllm": json.loads((DATA / "vllm_0.34.0.json").read_text()),
          "sglang": json.loads((DATA / "sglang_0.5.23.json").read_text()),
          "trtllm": json.loads((DATA / "trtllm_1.2.1.json").read_text())}
PREFIX = {"vllm": 3, "sglang": 3, "trtllm": 2}
"""Words before the options: ``vllm serve MODEL``, ``python -m sglang.launch_server``, ``trtllm-serve MODEL``."""

LLAMA = replace(load_model("llama3-70b").spec, checkpoint_weight_format="", checkpoint_quantized_parts=())
DEEPSEEK = replace(load_model("deepseek-v3").spec, checkpoint_weight_format="", checkpoint_quantized_parts=())
QWEN = replace(load_model("qwen3-30b-a3b").spec, checkpoint_weight_format="", checkpoint_quantized_parts=())
H100, B200, MI300X = (load_cluster(name).gpu for name in ("h100x64", "b200x64", "mi300xx64"))


def instances(**columns) -> InstanceArrays:
    return InstanceArrays.from_columns({"max_num_seqs": 64, "max_num_batched_tokens": 8192, **columns})


def parse(engine: str, argv: tuple[str, ...]) -> dict[str, str | bool]:
    """The emitted options as {flag: value or True}, checking each against the engine's table: the flag exists,
    a switch takes no value, a valued option one, and a value is among the option's choices."""
    table = TABLES[engine]["options"]
    words = list(argv[PREFIX[engine]:])
    values: dict[str, str | bool] = {}
    i = 0
    while i < len(words):
        flag = words[i]
        assert flag in table, f"{engine} has no option {flag}"
        if table[flag]["kind"] == "switch":
            values[flag], i = True, i + 1
            continue
        value = words[i + 1]
        assert not value.startswith("--"), (flag, value)
        if table[flag]["choices"] is not None:
            assert value in table[flag]["choices"], (flag, value)
        values[flag], i = value, i + 2
    return values


def layouts() -> list[tuple[object, InstanceArrays]]:
    """Dense and MoE instance layouts across the knobs the plan holds."""
    return [
        (LLAMA, instances(tp=8)),
        (LLAMA, instances(tp=4, pp=2, kv_dtype="fp8", weight_precision="fp8", max_num_seqs=256,
                          max_num_batched_tokens=2048)),
        (LLAMA, instances(tp=2, cuda_graphs=False, weight_precision="fp4", max_num_seqs=16)),
        (DEEPSEEK, instances(tp=1, attn_dp=8, ep=8, kv_dtype="fp8", max_num_seqs=128)),
        (DEEPSEEK, instances(tp=8, ep=8, moe_tp=1, max_num_batched_tokens=16384)),
        (QWEN, instances(tp=2, attn_dp=4, ep=8, moe_tp=1, cuda_graphs=False)),
        (QWEN, instances(tp=4, ep=1, weight_precision="fp8", max_num_seqs=512, max_num_batched_tokens=32768)),
    ]


def aggregated(model, layout, replicas=2, **kw):
    return emit_serving(kw.pop("engine"), ServingPlanArrays.aggregated(layout, replicas).record(0), model, "org/model",
                        8192, **kw)


@pytest.mark.parametrize("engine", ENGINES)
def test_every_emitted_word_exists_in_the_pinned_engine(engine):
    for model, layout in layouts():
        for emission in aggregated(model, layout, engine=engine, speculative=2):
            options = parse(engine, emission.argv)
            assert emission.tested_version.split()[-1] == TABLES[engine]["version"]
            if engine == "vllm":
                for flag in ("--speculative-config", "--kv-transfer-config"):
                    if flag in options:
                        schema = TABLES["vllm"]["json_options"][flag]
                        config = json.loads(options[flag])
                        assert set(config) <= set(schema["fields"]), config
                        for key, allowed in schema["choices"].items():
                            assert key not in config or config[key] in allowed, (key, config)
                for flag in ("--kv-cache-dtype", "--quantization"):
                    assert flag not in options or options[flag] in TABLES["vllm"]["value_choices"][flag]


def trtllm_yaml(emission) -> dict:
    """The ``--extra_llm_api_options`` YAML embedded in a TensorRT-LLM emission's text."""
    text = emission.text
    start = text.index("<<'EOF'\n") + len("<<'EOF'\n")
    return yaml.safe_load(text[start:text.index("\nEOF", start)])


def test_trtllm_yaml_fields_exist_in_the_llm_api():
    models = TABLES["trtllm"]["models"]
    sub = {"kv_cache_config": "KvCacheConfig", "cuda_graph_config": "CudaGraphConfig",
           "cache_transceiver_config": "CacheTransceiverConfig"}
    speculative = {"MTP": "MTPDecodingConfig", "Eagle3": "Eagle3DecodingConfig", "NGram": "NGramDecodingConfig"}
    plan = ServingPlanArrays.disaggregated_plans(instances(tp=8), instances(tp=1, attn_dp=8, ep=8, moe_tp=1), 2, 1)
    emissions = [e for model, layout in layouts() for e in aggregated(model, layout, engine="trtllm", speculative=3)]
    emissions += emit_serving("trtllm", plan.record(0), DEEPSEEK, "m", 8192, speculative=3)
    emissions += aggregated(LLAMA, instances(tp=8), engine="trtllm", speculative=3, draft_model="org/eagle3")
    seen = set()
    for emission in emissions:
        options = trtllm_yaml(emission)
        assert set(options) <= set(models["TorchLlmArgs"]), options
        for key, model in sub.items():
            if options.get(key) is not None:
                assert set(options[key]) <= set(models[model]), (key, options[key])
        if "speculative_config" in options:
            kind = options["speculative_config"]["decoding_type"]
            assert set(options["speculative_config"]) <= set(models[speculative[kind]])
            seen.add(kind)
        assert options["kv_cache_config"]["dtype"] in TABLES["trtllm"]["field_choices"]["kv_cache_config.dtype"]
    assert seen == {"MTP", "Eagle3", "NGram"}


@pytest.mark.parametrize("engine", ENGINES)
def test_emitted_arguments_read_back_as_the_priced_plan(engine):
    for model, layout in layouts():
        row = layout.record(0)
        (emission,) = aggregated(model, layout, engine=engine)
        got = parse(engine, emission.argv)
        tp, pp, dp, ep = row["tp"], row["pp"], row["attn_dp"], row["ep"]
        seqs, chunk, kv, graphs = row["max_num_seqs"], row["max_num_batched_tokens"], row["kv_dtype"], row["cuda_graphs"]
        online = None if row["weight_precision"] == "bf16" else row["weight_precision"]
        if engine == "vllm":
            assert (int(got["--tensor-parallel-size"]), int(got["--pipeline-parallel-size"]),
                    int(got["--data-parallel-size"])) == (tp, pp, dp)
            # vLLM's EP spans all tp x dp ranks: the switch is the plan's ep only where ep = tp x attn_dp
            assert got.get("--enable-expert-parallel", False) == (ep > 1)
            assert ep == 1 or ep == tp * dp
            assert (int(got["--max-num-seqs"]), int(got["--max-num-batched-tokens"])) == (seqs, chunk)
            assert got["--kv-cache-dtype"] == {"bf16": "auto", "fp8": "fp8"}[kv]
            assert got.get("--quantization") == {None: None, "fp8": "fp8", "fp4": "nvfp4_per_token"}[online]
            assert got.get("--enforce-eager", False) == (not graphs)
            assert graphs == (got.get("--max-cudagraph-capture-size") == str(min(seqs, chunk)))
        elif engine == "sglang":
            # tp_size is the instance's width; per-rank batch and chunk counted over the attn_dp ranks
            assert int(got["--tp-size"]) == tp * dp and int(got["--pp-size"]) == pp
            assert int(got.get("--attn-dp-size", 1)) == dp
            assert int(got.get("--ep-size", 1)) == ep
            assert int(got["--tp-size"]) // int(got.get("--ep-size", 1)) == row["moe_tp"]
            assert int(got["--max-running-requests"]) == seqs * dp
            assert int(got["--chunked-prefill-size"]) == chunk * dp
            assert int(got["--max-prefill-tokens"]) == chunk  # one scheduler's, not divided
            assert got["--kv-cache-dtype"] == {"bf16": "auto", "fp8": "fp8_e4m3"}[kv]
            assert got.get("--quantization") == {None: None, "fp8": "fp8", "fp4": "nvfp4_online"}[online]
            assert (got.get("--cuda-graph-backend-decode") == "disabled") == (not graphs)
            assert graphs == (got.get("--cuda-graph-max-bs-decode") == str(seqs))
        else:
            options = trtllm_yaml(emission)
            assert int(got["--tp_size"]) == tp * dp and int(got["--pp_size"]) == pp
            assert options["enable_attention_dp"] == (dp > 1)
            assert int(got.get("--ep_size", 1)) == ep
            assert (int(got["--max_batch_size"]), int(got["--max_num_tokens"])) == (seqs, chunk)
            assert options["kv_cache_config"]["dtype"] == {"bf16": "auto", "fp8": "fp8"}[kv]
            assert (options["cuda_graph_config"] is not None) == graphs
            assert not graphs or options["cuda_graph_config"]["max_batch_size"] == seqs
            assert got["--extra_llm_api_options"] == "extra-llm-api-aggregated.yaml"
            assert got["--backend"] == "pytorch"


def test_disaggregated_plans_give_a_prefill_and_a_decode_command():
    prefill = instances(tp=4, max_num_seqs=8, max_num_batched_tokens=16384)
    decode = instances(tp=1, attn_dp=8, ep=8, moe_tp=1, kv_dtype="fp8", max_num_seqs=256)
    plan = ServingPlanArrays.disaggregated_plans(prefill, decode, 3, 2)
    assert plan.num_gpus[0] == 3 * 4 + 2 * 8
    for engine in ENGINES:
        first, second = emit_serving(engine, plan.record(0), DEEPSEEK, "deepseek-ai/DeepSeek-V3", 16384, speculative=1)
        assert first.text.startswith(f"# {first.tested_version}: 3 x prefill instance of 4 GPU(s)")
        assert second.text.startswith(f"# {second.tested_version}: 2 x decode instance of 8 GPU(s)")
        p, d = parse(engine, first.argv), parse(engine, second.argv)
        if engine == "vllm":
            for got in (p, d):
                assert json.loads(got["--kv-transfer-config"]) == {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
            assert "--speculative-config" not in p and "--speculative-config" in d  # a prefill emits one token
            assert (p["--tensor-parallel-size"], d["--data-parallel-size"]) == ("4", "8")
        elif engine == "sglang":
            assert (p["--disaggregation-mode"], d["--disaggregation-mode"]) == ("prefill", "decode")
            assert p["--disaggregation-transfer-backend"] == d["--disaggregation-transfer-backend"] == "nixl"
            assert (p["--tp-size"], d["--tp-size"], d["--max-running-requests"]) == ("4", "8", str(256 * 8))
            assert "--cuda-graph-max-bs-decode" not in p and d["--cuda-graph-max-bs-decode"] == "256"
        else:
            p_yaml, d_yaml = trtllm_yaml(first), trtllm_yaml(second)
            for options in (p_yaml, d_yaml):
                assert options["cache_transceiver_config"] == {"backend": "DEFAULT", "max_tokens_in_buffer": 16384}
            assert p_yaml.get("disable_overlap_scheduler") is True and "disable_overlap_scheduler" not in d_yaml
            assert (p["--extra_llm_api_options"], d["--extra_llm_api_options"]) == (
                "extra-llm-api-prefill.yaml", "extra-llm-api-decode.yaml")
            router = yaml.safe_load(second.text.split("cat > disagg.yaml <<'EOF'\n")[1].split("\nEOF")[0])
            assert router["context_servers"]["num_instances"] == 3 and len(router["context_servers"]["urls"]) == 3
            assert router["generation_servers"]["num_instances"] == 2
            assert second.text.endswith("trtllm-serve disaggregated -c disagg.yaml")
    # an aggregated plan is one command, the replicas counted in its header
    (single,) = aggregated(LLAMA, instances(tp=8), replicas=5, engine="vllm")
    assert single.text.startswith("# vLLM 0.34.0: 5 x aggregated instance of 8 GPU(s)")
    assert "--kv-transfer-config" not in single.argv


def test_vllm_captures_graphs_for_the_largest_decode_step():
    # 64 requests x (1 + 3 drafted) tokens = 256 tokens a step; 512 x 4 = 2048 is cut to the 1024-token budget
    got = parse("vllm", aggregated(LLAMA, instances(tp=8), engine="vllm", speculative=3)[0].argv)
    assert got["--max-cudagraph-capture-size"] == "256"
    big = instances(tp=8, max_num_seqs=512, max_num_batched_tokens=1024)
    assert parse("vllm", aggregated(LLAMA, big, engine="vllm", speculative=3)[0].argv)["--max-cudagraph-capture-size"] == "1024"


def test_speculative_decoding_method_follows_the_model():
    dense = parse("vllm", aggregated(LLAMA, instances(tp=8), engine="vllm", speculative=4)[0].argv)
    assert json.loads(dense["--speculative-config"]) == {"method": "ngram", "num_speculative_tokens": 4}
    eagle = parse("vllm", aggregated(LLAMA, instances(tp=8), engine="vllm", speculative=4, draft_model="org/e3")[0].argv)
    assert json.loads(eagle["--speculative-config"]) == {"method": "eagle3", "num_speculative_tokens": 4, "model": "org/e3"}
    mtp = parse("sglang", aggregated(DEEPSEEK, instances(tp=8, ep=8, moe_tp=1), engine="sglang", speculative=3)[0].argv)
    # a chain of 3 drafts verifies 4 tokens (the bonus token included)
    assert (mtp["--speculative-algorithm"], mtp["--speculative-num-steps"], mtp["--speculative-num-draft-tokens"]) == (
        "NEXTN", "3", "4")
    none = parse("vllm", aggregated(LLAMA, instances(tp=8), engine="vllm", speculative=0)[0].argv)
    assert "--speculative-config" not in none


def test_an_instance_larger_than_a_node_spans_nodes():
    wide = instances(tp=8, pp=2)
    text = aggregated(LLAMA, wide, engine="vllm", gpus_per_node=8)[0]
    got = parse("vllm", text.argv)
    assert (got["--nnodes"], got["--node-rank"], got["--master-addr"]) == ("2", "$NODE_RANK", "$MASTER_ADDR")
    spread = parse("vllm", aggregated(DEEPSEEK, instances(tp=2, attn_dp=8, ep=16, moe_tp=1), engine="vllm")[0].argv)
    assert spread["--data-parallel-size-local"] == "4"  # 8 GPUs a node / tp 2
    sg = parse("sglang", aggregated(LLAMA, wide, engine="sglang")[0].argv)
    assert (sg["--nnodes"], sg["--dist-init-addr"]) == ("2", "$MASTER_ADDR:5000")
    assert "--nnodes" not in parse("sglang", aggregated(LLAMA, instances(tp=8), engine="sglang")[0].argv)


def single(model, gpu=None, **columns):
    """{engine: {rule: refused?}} of one aggregated plan."""
    plan = ServingPlanArrays.aggregated(instances(**columns), 1)
    return {e: {name: bool(mask[0]) for name, mask in serving_violations(e, plan, model, gpu=gpu).items()}
            for e in ENGINES}


def broken(model, gpu=None, **columns) -> set[str]:
    return {name for rules in single(model, gpu, **columns).values() for name, hit in rules.items() if hit}


def test_rules_refuse_what_the_engines_refuse():
    # a plan every engine runs
    assert broken(LLAMA, H100, tp=8) == set()
    assert broken(DEEPSEEK, H100, tp=1, attn_dp=8, ep=8, moe_tp=1) == set()
    # 64 query heads do not split over 3 ranks (vLLM config/model.py, SGLang, TensorRT-LLM alike)
    assert broken(LLAMA, H100, tp=3) == {"vllm_tp_divides_heads", "sglang_tp_divides_heads", "trtllm_tp_divides_heads"}
    # MoE EP over half of the tp x dp ranks: only vLLM cannot (its EP spans all of them);
    # attention TP 2 inside attention DP: only TensorRT-LLM cannot
    assert broken(DEEPSEEK, H100, tp=2, attn_dp=4, ep=4, moe_tp=2) == {"vllm_expert_parallel_degree",
                                                                       "trtllm_attention_dp_tp"}
    # a dense model's data-parallel ranks are whole replicas in vLLM
    assert broken(LLAMA, H100, tp=1, attn_dp=8) == {"vllm_dense_data_parallel"}
    # online FP8 from a BF16 checkpoint: vLLM and SGLang quantize on load, TensorRT-LLM needs ModelOpt first
    assert broken(LLAMA, H100, tp=8, weight_precision="fp8") == {"trtllm_prequantized_checkpoint"}
    # online NVFP4 needs Blackwell everywhere; an NVFP4 checkpoint runs on Hopper in vLLM and SGLang only
    assert broken(LLAMA, H100, tp=8, weight_precision="fp4") == {"vllm_online_fp4", "sglang_online_fp4",
                                                                  "trtllm_prequantized_checkpoint", "trtllm_fp4_blackwell"}
    assert broken(LLAMA, B200, tp=8, weight_precision="fp4") == {"trtllm_prequantized_checkpoint"}
    nvfp4 = replace(LLAMA, checkpoint_weight_format="nvfp4", checkpoint_quantized_parts=("attention", "dense_mlp"))
    assert broken(nvfp4, H100, tp=8, weight_precision="fp4") == {"trtllm_fp4_blackwell"}
    assert broken(nvfp4, B200, tp=8, weight_precision="fp4") == set()
    # a quantized checkpoint runs as stored in every engine
    fp8 = replace(DEEPSEEK, checkpoint_weight_format="fp8_block", checkpoint_quantized_parts=("experts",))
    assert broken(fp8, H100, tp=8, ep=8, moe_tp=1) == {"vllm_checkpoint_precision", "sglang_checkpoint_precision",
                                                        "trtllm_prequantized_checkpoint"}
    assert broken(fp8, H100, tp=8, ep=8, moe_tp=1, weight_precision="fp8") == set()
    # TensorRT-LLM is NVIDIA's
    assert broken(LLAMA, MI300X, tp=8) == {"trtllm_nvidia_only"}
    # without the GPU, the GPU rules hold back
    assert broken(LLAMA, None, tp=8, weight_precision="fp4") == {"trtllm_prequantized_checkpoint"}


def test_rules_are_vectorised_and_cover_both_phases():
    layouts_ = InstanceArrays.from_columns({"tp": [8, 3, 1, 2], "attn_dp": [1, 1, 8, 4], "max_num_seqs": 32,
                                            "max_num_batched_tokens": 4096})
    plans = ServingPlanArrays.aggregated(layouts_, 1)
    found = serving_violations("vllm", plans, LLAMA, gpu=H100)
    assert found["vllm_tp_divides_heads"].tolist() == [False, True, False, False]
    assert found["vllm_dense_data_parallel"].tolist() == [False, False, True, True]
    tr = serving_violations("trtllm", plans, LLAMA)
    assert tr["trtllm_attention_dp_tp"].tolist() == [False, False, False, True]
    # a disaggregated plan is refused where either phase is
    good, bad = instances(tp=8), instances(tp=3)
    dis = ServingPlanArrays.disaggregated_plans(InstanceArrays.from_columns({**{k: np.r_[good.record(0)[k], bad.record(0)[k]]
                                                                               for k in ("tp", "pp", "ep", "attn_dp", "moe_tp",
                                                                                         "max_num_seqs", "max_num_batched_tokens")}}),
                                                instances(tp=[8, 8]), 1, 1)
    assert serving_violations("sglang", dis, LLAMA)["sglang_tp_divides_heads"].tolist() == [False, True]
    for engine in ENGINES:
        assert set(serving_violations(engine, plans, LLAMA)) == set(serving_rules(engine))


def test_differences_name_the_rules_a_plan_breaks():
    (emission,) = aggregated(LLAMA, instances(tp=8, weight_precision="fp8"), engine="trtllm")
    assert emission.differences[0] == "cannot run as priced: " + trtllm.RULES["trtllm_prequantized_checkpoint"]
    (clean,) = aggregated(LLAMA, instances(tp=8), engine="vllm")
    assert clean.differences == ()
    (h100,) = aggregated(LLAMA, instances(tp=8, weight_precision="fp4"), engine="vllm", gpu=H100)
    assert h100.differences == ("cannot run as priced: " + vllm.RULES["vllm_online_fp4"],)
    (sg,) = aggregated(LLAMA, instances(tp=4, pp=2), engine="sglang")
    assert any("pipeline micro-batches" in note for note in sg.differences)


def test_inputs_are_checked():
    plan = ServingPlanArrays.aggregated(instances(tp=8), 1).record(0)
    with pytest.raises(ValueError, match="unknown serving engine 'tgi'"):
        emit_serving("tgi", plan, LLAMA, "m", 4096)
    with pytest.raises(ValueError, match="max_model_len"):
        emit_serving("vllm", plan, LLAMA, "m", 0)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        emit_serving("vllm", plan, LLAMA, "m", 4096, gpu_memory_utilization=1.5)
    assert serving_knobs.checkpoint_precision(replace(LLAMA, checkpoint_weight_format="mxfp4",
                                                      checkpoint_quantized_parts=("dense_mlp",))) == "fp4"
    # a loader's ModelInput is accepted as well as its ModelSpec
    assert emit_serving("sglang", plan, load_model("llama3-70b"), "m", 4096)[0].argv == \
        emit_serving("sglang", plan, load_model("llama3-70b").spec, "m", 4096)[0].argv


def test_module_rule_tables_match_their_masks():
    for module in (vllm, sglang, trtllm):
        plan = ServingPlanArrays.aggregated(instances(tp=8), 1)
        assert set(module.violations(LLAMA, plan, H100)) == set(module.RULES)


def test_prefix_caching_switch():
    for engine, flag in (("vllm", "--disable-prefix-caching"), ("sglang", "--disable-radix-cache")):
        off = parse(engine, aggregated(LLAMA, instances(tp=8), engine=engine, enable_prefix_caching=False)[0].argv)
        on = parse(engine, aggregated(LLAMA, instances(tp=8), engine=engine)[0].argv)
        assert off.get(flag) is True and flag not in on
    off = trtllm_yaml(aggregated(LLAMA, instances(tp=8), engine="trtllm", enable_prefix_caching=False)[0])
    assert off["kv_cache_config"]["enable_block_reuse"] is False


def test_trtllm_refresh_reads_options_and_fields_from_source(tmp_path):
    """The TensorRT-LLM table's regeneration reads click options and pydantic fields from source, unimported."""
    from tests.conformance.serving_engines import trtllm_tables
    root = tmp_path / "tensorrt_llm"
    (root / "commands").mkdir(parents=True)
    (root / "llmapi").mkdir()
    (root / "version.py").write_text('__version__ = "1.2.1"\n')
    (root / "commands" / "serve.py").write_text('''
import click
@click.command("serve")
@click.argument("model", type=str)
@click.option("--tensor_parallel_size", "--tp_size", type=int, default=1)
@click.option("--backend", type=ChoiceWithAlias(["pytorch", "tensorrt"], {"trt": "tensorrt"}), default="pytorch")
@click.option("--enable_chunked_prefill", is_flag=True, default=False)
def serve(model, tensor_parallel_size, backend, enable_chunked_prefill):
    pass

@click.command("disaggregated")
@click.option("-c", "--config_file", type=str, default=None)
def disaggregated(config_file):
    pass
''')
    (root / "llmapi" / "llm_args.py").write_text('''
class KvCacheConfig(StrictBaseModel):
    dtype: str = Field(default="auto")
    _private: int = 0
class BaseLlmArgs(StrictBaseModel):
    tensor_parallel_size: int = Field(default=1)
    kv_cache_config: KvCacheConfig = Field(default_factory=KvCacheConfig)
class TorchLlmArgs(BaseLlmArgs):
    decoding_type: ClassVar[str] = "x"
    cuda_graph_config: Optional[CudaGraphConfig] = None
''')
    table = trtllm_tables(tmp_path)
    assert table["version"] == "1.2.1"
    assert table["options"] == {"--backend": {"kind": "value", "choices": ["pytorch", "tensorrt"]},
                                "--enable_chunked_prefill": {"kind": "switch", "choices": None},
                                "--tensor_parallel_size": {"kind": "value", "choices": None},
                                "--tp_size": {"kind": "value", "choices": None}}
    assert table["disaggregated_options"] == {"--config_file": {"kind": "value", "choices": None}}
    assert table["models"]["TorchLlmArgs"] == ["cuda_graph_config", "kv_cache_config", "tensor_parallel_size"]
    assert table["models"]["KvCacheConfig"] == ["dtype"]


def test_moe_exchange_difference_is_named():
    """vLLM's and SGLang's default expert-parallel exchange is all-gather/reduce-scatter, not the priced all-to-all;
    the difference says so and names the flag, and only for plans with expert parallelism."""
    dep = instances(tp=1, attn_dp=8, ep=8, moe_tp=1)
    for engine, flag in (("vllm", "--all2all-backend"), ("sglang", "--moe-a2a-backend")):
        (moe,) = aggregated(DEEPSEEK, dep, engine=engine)
        assert any(flag in note and "all-to-all" in note for note in moe.differences)
        assert flag in TABLES[engine]["options"]
        (tensor,) = aggregated(DEEPSEEK, instances(tp=8, ep=1), engine=engine)
        assert not any(flag in note for note in tensor.differences)

