"""vLLM 0.34.0 and SGLang 0.5.23 accept every emitted serving command and read back the priced plan; the
checked-in option tables are the engines' current ones.

The engines run here without GPUs, in their own virtual environment (``tests/conformance/serving_engines.py``
says how to make it); the checkpoint is a ``config.json`` written from the priced model's dimensions (no
weights are loaded). For each emitted command:

* vLLM: ``vllm serve``'s parser (``make_arg_parser``), ``EngineArgs.from_cli_args`` and
  ``create_engine_config``, which builds the whole ``VllmConfig`` (``ModelConfig``, ``ParallelConfig``,
  ``CacheConfig``, ``SchedulerConfig``, ``SpeculativeConfig``, ``KVTransferConfig``) and runs their checks,
  ``ModelConfig.verify_with_parallel_config`` among them;
* SGLang: ``prepare_server_args`` (``sglang.launch_server``'s parsing) and ``ServerArgs.resolve_once`` (the
  resolution pipeline every launch runs: data-parallel, MoE, speculative and disaggregation hooks).

What is replaced, and why (never a check):

* vLLM's CPU platform ``check_and_update_config`` (it rewrites the config for x86 CPUs and demands triton-cpu;
  a GPU platform's would run instead);
* SGLang gets ``--device cuda`` (its platform detection finds no accelerator) and ``--skip-tokenizer-init``
  (there is no tokenizer beside the config); ``sglang.srt.multimodal.internvl_utils`` and
  ``sglang.srt.configs.deepseek_ocr`` (vision preprocessing, importing torchvision, whose CPU build is not on
  PyPI) are stubbed.

Run: ``VLLM_TARGET_DEVICE=cpu PYTHONPATH=. /tmp/s4/servevenv/bin/python -m pytest -q
tests/conformance/test_serving_engines.py``. TensorRT-LLM is not importable on a CPU (``serving_engines.py``).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

from cost_model.model_loader import load_model  # noqa: E402
from cost_model.serving.plan import InstanceArrays, ServingPlanArrays  # noqa: E402
from optimizer.emit import emit_serving  # noqa: E402
from tests.conformance import serving_engines  # noqa: E402

LLAMA = replace(load_model("llama3-70b").spec, checkpoint_weight_format="", checkpoint_quantized_parts=())
QWEN = replace(load_model("qwen3-30b-a3b").spec, checkpoint_weight_format="", checkpoint_quantized_parts=())
DEEPSEEK = replace(load_model("deepseek-v3").spec, checkpoint_weight_format="", checkpoint_quantized_parts=())


def hf_config(model) -> dict:
    """A Hugging Face ``config.json`` with the model's dimensions (the architecture the engines dispatch on)."""
    common = {"hidden_size": model.hidden_size, "num_attention_heads": model.num_attention_heads,
              "num_key_value_heads": model.num_kv_heads, "num_hidden_layers": model.num_layers,
              "vocab_size": model.vocab_size, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
              "torch_dtype": "bfloat16", "rope_theta": 500000.0, "tie_word_embeddings": model.tie_embeddings}
    if model.is_mla:
        return {**common, "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
                "intermediate_size": model.ffn_hidden_size, "moe_intermediate_size": model.moe_ffn_hidden_size,
                "n_routed_experts": model.num_experts, "num_experts_per_tok": model.experts_per_token,
                "n_shared_experts": 1, "first_k_dense_replace": model.num_dense_layers, "moe_layer_freq": 1,
                "q_lora_rank": model.q_lora_rank, "kv_lora_rank": model.kv_lora_rank,
                "qk_nope_head_dim": model.qk_nope_head_dim, "qk_rope_head_dim": model.qk_rope_head_dim,
                "v_head_dim": model.v_head_dim, "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5,
                "scoring_func": "sigmoid", "topk_method": "noaux_tc", "norm_topk_prob": True,
                "num_nextn_predict_layers": model.mtp_layers, "rope_scaling": None}
    if model.is_moe:
        return {**common, "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
                "head_dim": model.head_dim, "intermediate_size": model.ffn_hidden_size or 6144,
                "moe_intermediate_size": model.moe_ffn_hidden_size, "num_experts": model.num_experts,
                "num_experts_per_tok": model.experts_per_token, "decoder_sparse_step": 1, "mlp_only_layers": [],
                "norm_topk_prob": True}
    return {**common, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "head_dim": model.head_dim,
            "intermediate_size": model.ffn_hidden_size}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, model in (("llama", LLAMA), ("qwen", QWEN), ("deepseek", DEEPSEEK)):
        folder = tmp_path_factory.mktemp(name)
        (folder / "config.json").write_text(json.dumps(hf_config(model)))
        out[model.name] = folder
    return out


def instances(**columns) -> InstanceArrays:
    return InstanceArrays.from_columns({"max_num_seqs": 64, "max_num_batched_tokens": 8192, **columns})


CASES = [
    ("llama-tp8", LLAMA, ServingPlanArrays.aggregated(instances(tp=8), 2), 0),
    ("llama-tp4-pp2-fp8", LLAMA, ServingPlanArrays.aggregated(
        instances(tp=4, pp=2, kv_dtype="fp8", weight_precision="fp8", max_num_seqs=256, max_num_batched_tokens=2048), 1), 0),
    ("llama-tp2-eager-ngram", LLAMA, ServingPlanArrays.aggregated(instances(tp=2, cuda_graphs=False, max_num_seqs=16), 4), 3),
    ("llama-tp2-dp4", LLAMA, ServingPlanArrays.aggregated(instances(tp=2, attn_dp=4), 1), 0),
    ("qwen-dp4-ep8", QWEN, ServingPlanArrays.aggregated(instances(tp=2, attn_dp=4, ep=8, moe_tp=1, kv_dtype="fp8"), 1), 0),
    ("qwen-tp4", QWEN, ServingPlanArrays.aggregated(instances(tp=4, max_num_seqs=512, max_num_batched_tokens=32768), 2), 0),
    ("deepseek-dep8-mtp", DEEPSEEK, ServingPlanArrays.aggregated(instances(tp=1, attn_dp=8, ep=8, moe_tp=1, kv_dtype="fp8",
                                                                           max_num_seqs=128), 1), 2),
    ("llama-disagg", LLAMA, ServingPlanArrays.disaggregated_plans(
        instances(tp=4, max_num_seqs=8, max_num_batched_tokens=16384), instances(tp=8, kv_dtype="fp8", max_num_seqs=256), 3, 2), 0),
    ("qwen-disagg", QWEN, ServingPlanArrays.disaggregated_plans(
        instances(tp=4, max_num_seqs=8, max_num_batched_tokens=16384),
        instances(tp=1, attn_dp=8, ep=8, moe_tp=1, max_num_seqs=128), 2, 1), 0),
]


def emissions(engine, model, plans, speculative, checkpoints):
    return emit_serving(engine, plans.record(0), model, str(checkpoints[model.name]), 8192, speculative=speculative)


# --- vLLM -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm_engine():
    pytest.importorskip("vllm")
    from vllm.platforms import current_platform
    type(current_platform).check_and_update_config = classmethod(lambda cls, config: None)
    from vllm.engine.arg_utils import EngineArgs
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    def build(argv):
        assert argv[:2] == ("vllm", "serve")
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(list(argv[2:]) + ["--skip-tokenizer-init"])
        args.model = args.model_tag
        return EngineArgs.from_cli_args(args).create_engine_config()

    return build


def _instance_rows(record, aggregated_role):
    """(role, layout row) of each command plan 1 emits: prefill then decode for a disaggregated plan, one
    instance named ``aggregated_role`` (the engine's own word for it) otherwise."""
    if record["mode"] == "disagg":
        return [("prefill", record["prefill"]), ("decode", record["decode"])]
    return [(aggregated_role, record["decode"])]


def test_vllm_tables_are_current(vllm_engine):
    assert serving_engines.vllm_tables() == json.loads(serving_engines.VLLM_FILE.read_text())


@pytest.mark.parametrize("name,model,plans,speculative", CASES, ids=[c[0] for c in CASES])
def test_vllm_accepts_every_emitted_plan(name, model, plans, speculative, checkpoints, vllm_engine):
    record = plans.record(0)
    kinds = _instance_rows(record, "aggregated")
    for emission, (role, row) in zip(emissions("vllm", model, plans, speculative, checkpoints), kinds, strict=True):
        drafting = bool(speculative) and role != "prefill"  # a prefill instance emits one token: nothing to draft
        config = vllm_engine(emission.argv)
        parallel, scheduler, cache = config.parallel_config, config.scheduler_config, config.cache_config
        assert (parallel.tensor_parallel_size, parallel.pipeline_parallel_size, parallel.data_parallel_size) == (
            row["tp"], row["pp"], row["attn_dp"])
        assert parallel.enable_expert_parallel == (row["ep"] > 1)
        assert (scheduler.max_num_seqs, scheduler.max_num_batched_tokens) == (row["max_num_seqs"],
                                                                              row["max_num_batched_tokens"])
        assert scheduler.enable_chunked_prefill
        assert cache.cache_dtype == ("fp8" if row["kv_dtype"] == "fp8" else "auto")  # auto: the model's bf16
        assert config.model_config.enforce_eager == (not row["cuda_graphs"])
        if row["cuda_graphs"]:  # the tokens of the largest decode step
            assert config.compilation_config.max_cudagraph_capture_size == min(
                row["max_num_seqs"] * (1 + (speculative if drafting else 0)), row["max_num_batched_tokens"])
        assert (config.model_config.quantization == "fp8") == (row["weight_precision"] == "fp8")
        assert config.model_config.max_model_len == 8192 and cache.gpu_memory_utilization == pytest.approx(0.9)
        assert (config.speculative_config is not None) == drafting
        if drafting:
            assert config.speculative_config.num_speculative_tokens == speculative
        transfer = config.kv_transfer_config
        assert (transfer is not None) == (record["mode"] == "disagg")
        if transfer is not None:
            assert (transfer.kv_connector, transfer.kv_role) == ("NixlConnector", "kv_both")


def test_vllm_refuses_what_its_rules_refuse(checkpoints, vllm_engine):
    # vllm_tp_divides_heads: 64 heads over 3 ranks (ModelConfig.verify_with_parallel_config)
    (emission,) = emissions("vllm", LLAMA, ServingPlanArrays.aggregated(instances(tp=3), 1), 0, checkpoints)
    with pytest.raises(Exception, match="divisible by tensor parallel size"):
        vllm_engine(emission.argv)
    # vllm_expert_parallel_degree: EP over half of tp x dp cannot be said; --enable-expert-parallel spans all 8
    (emission,) = emissions("vllm", QWEN, ServingPlanArrays.aggregated(instances(tp=2, attn_dp=4, ep=4, moe_tp=2), 1), 0,
                            checkpoints)
    parallel = vllm_engine(emission.argv).parallel_config
    assert parallel.enable_expert_parallel and parallel.tensor_parallel_size * parallel.data_parallel_size == 8 != 4


# --- SGLang -----------------------------------------------------------------------------------------------------

def _stub(name: str) -> None:
    class Meta(type):
        def __getattr__(cls, attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return Meta(attr, (), {})

        def __call__(cls, *args, **kwargs):
            return cls

    class Stub(types.ModuleType):
        def __getattr__(self, attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return Meta(attr, (), {})

    module = Stub(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules.setdefault(name, module)


@pytest.fixture(scope="module")
def sglang_engine():
    pytest.importorskip("sglang")
    if importlib.util.find_spec("torchvision") is None:
        for name in ("sglang.srt.multimodal.internvl_utils", "sglang.srt.configs.deepseek_ocr"):
            _stub(name)
    from sglang.srt.server_args import prepare_server_args

    def build(argv):
        assert argv[:3] == ("python", "-m", "sglang.launch_server")
        args = prepare_server_args(list(argv[3:]) + ["--device", "cuda", "--skip-tokenizer-init"])
        args.resolve_once()
        return args.resolved_dict()

    return build


def test_sglang_tables_are_current(sglang_engine):
    assert serving_engines.sglang_tables() == json.loads(serving_engines.SGLANG_FILE.read_text())


@pytest.mark.parametrize("name,model,plans,speculative", CASES, ids=[c[0] for c in CASES])
def test_sglang_accepts_every_emitted_plan(name, model, plans, speculative, checkpoints, sglang_engine):
    record = plans.record(0)
    kinds = _instance_rows(record, "null")
    for emission, (mode, row) in zip(emissions("sglang", model, plans, speculative, checkpoints), kinds, strict=True):
        resolved = sglang_engine(emission.argv)
        width = row["tp"] * row["attn_dp"]
        assert (resolved["tp_size"], resolved["pp_size"], resolved["attn_dp_size"]) == (width, row["pp"], row["attn_dp"])
        assert resolved["ep_size"] == row["ep"] and width // resolved["ep_size"] == row["moe_tp"]
        # after resolution: the chunk is per attention rank, requests split evenly over the ranks
        assert resolved["chunked_prefill_size"] == row["max_num_batched_tokens"]
        assert resolved["max_running_requests"] // row["attn_dp"] == row["max_num_seqs"]
        assert resolved["kv_cache_dtype"] == ("fp8_e4m3" if row["kv_dtype"] == "fp8" else "auto")
        assert resolved["quantization"] == ("fp8" if row["weight_precision"] == "fp8" else None)
        decode_graph = resolved["cuda_graph_config"]["decode"]
        # a prefill server runs no decode steps: SGLang turns their graphs off whatever the plan says
        assert (decode_graph["backend"] == "disabled") == (not row["cuda_graphs"] or mode == "prefill")
        if row["cuda_graphs"] and mode != "prefill":
            assert decode_graph["max_bs"] == row["max_num_seqs"]
        assert resolved["disaggregation_mode"] == mode
        assert resolved["context_length"] == 8192 and resolved["mem_fraction_static"] == pytest.approx(0.9)
        drafting = speculative and mode != "prefill"
        assert (resolved["speculative_algorithm"] is not None) == bool(drafting)
        if drafting:
            assert resolved["speculative_num_steps"] == speculative
            assert resolved["speculative_num_draft_tokens"] == speculative + 1
