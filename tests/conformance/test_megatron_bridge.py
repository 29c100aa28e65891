"""Megatron-Bridge 0.3.1 runs every emitted plan of the grid: its own recipe, override and validation code.

For each case of :func:`tests.conformance.plan_grid.conformance_cases` (``megatron-bridge`` rules active),
the test does what Bridge's ``scripts/training/run_recipe.py`` (tag v0.3.1) does with the emitted command:
builds the named recipe (``megatron.bridge.recipes``), applies the emitted overrides with
``process_config_with_overrides`` (Hydra), then what ``pretrain`` does before it touches a GPU:
``runtime_config_update`` (mixed-precision setup, data-parallel size, ``ConfigContainer.validate`` with the
``finalize``/``__post_init__`` checks of the DDP, optimizer and ``TransformerConfig`` objects) and the
micro-batch calculator of ``initialize.py``. It then asserts that the resulting config is the priced plan.

What is replaced, and why (never a check):

* ``transformer_engine`` and ``triton`` are CUDA-only packages that Bridge imports at module level; where
  they are not installed a minimal stand-in module is put on the import path (:func:`_stub_cuda_packages`):
  any attribute is an empty class, the version is 2.12.0 (Bridge 0.3.1 requires TE >= 2.10, < 2.13), and
  TE's ``FusedAdam`` has TE 2.x's signature, which ``OptimizerConfig.__post_init__`` inspects for the
  precision-aware optimizer.
* The recipes read the model's ``config.json`` from the Hugging Face Hub (``AutoBridge.from_hf_pretrained``);
  the test serves the same file from plan-search's presets (``cost_model/presets/models.yaml``, copied from
  the published ``config.json``) instead of the network. Bridge's own conversion builds the provider.
* ``WORLD_SIZE`` is set as torchrun sets it; ``torch.cuda.get_device_properties`` (read by the flex
  dispatcher check) answers for an H100 (compute capability 9.0), which DeepEP and HybridEP both accept.

Run: ``/tmp/confvenv/bin/python -m pytest -q tests/conformance/test_megatron_bridge.py``. Refresh the field
lists the CI tests check emitted keys against: ``python -m tests.conformance.test_megatron_bridge --refresh``.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIELDS_FILE = Path(__file__).parent / "data" / "megatron_bridge_fields.json"
PRESETS = ROOT / "cost_model" / "presets" / "models.yaml"

STUB_TE_VERSION = "2.12.0"
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
                    "deepseek_v3": "DeepseekV3ForCausalLM", "gpt_oss": "GptOssForCausalLM",
                    "mixtral": "MixtralForCausalLM"}
"""Hugging Face ``architectures`` entry of each ``model_type`` (what Bridge's AutoBridge dispatches on)."""
PUBLISHED_FIELDS = {
    # https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json: the router and RoPE fields the
    # presets leave out (plan-search does not price them) and Bridge's conversion reads.
    "deepseek-v3": {"scoring_func": "sigmoid", "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5,
                    "norm_topk_prob": True, "rope_theta": 10000,
                    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                                     "type": "yarn"}},
}
"""Fields of a published config.json that the preset does not copy but Bridge's conversion needs."""


class _AnyAttribute(type):
    """A stand-in class whose every attribute is another stand-in class."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _stand_in(name)


def _stand_in(name: str) -> type:
    return _AnyAttribute(name, (object,), {"__init__": lambda self, *args, **kwargs: None})


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = _stand_in(name)
        setattr(self, name, value)
        return value


class _FusedAdam:
    """Transformer Engine 2.x ``transformer_engine.pytorch.optimizers.FusedAdam`` signature."""

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, master_weights=False, master_weight_dtype=None, exp_avg_dtype=None,
                 exp_avg_sq_dtype=None, use_decoupled_grad=False, store_param_remainders=False, capturable=False):
        pass


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, packages: tuple[str, ...]):
        self.packages = packages

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.packages:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        module.__version__ = STUB_TE_VERSION
        if spec.name == "transformer_engine.pytorch.optimizers":
            module.FusedAdam = _FusedAdam
        return module

    def exec_module(self, module):
        pass


def _stub_cuda_packages() -> None:
    """Stand-ins for the CUDA-only packages Bridge imports, where they are not installed."""
    missing = tuple(name for name in ("transformer_engine", "triton") if importlib.util.find_spec(name) is None)
    if missing and not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        # Megatron-Core imported earlier in this session without them (Megatron-LM's conformance tests run
        # first) cached "no Transformer Engine": import it afresh under the stand-ins.
        for name in [n for n in sys.modules if n.split(".")[0] in ("megatron", *missing)]:
            del sys.modules[name]
        sys.meta_path.insert(0, _StubFinder(missing))


def _import_bridge():
    if importlib.util.find_spec("megatron") is None or importlib.util.find_spec("megatron.bridge") is None:
        pytest.skip("megatron-bridge is not installed")
    _stub_cuda_packages()  # before the first megatron import: Megatron-Core caches what TE offers
    return pytest.importorskip("megatron.bridge.recipes")


# ---------------------------------------------------------------------------------------------------------
# Building a config the way run_recipe.py does


def _hf_config(preset: str) -> dict[str, Any]:
    import yaml

    entry = dict(yaml.safe_load(PRESETS.read_text())[preset])
    entry["architectures"] = [HF_ARCHITECTURES[entry["model_type"]]]
    return entry | PUBLISHED_FIELDS.get(preset, {})


def _serve_hub_from_presets(monkeypatch, tmp_path: Path, recipe: str) -> None:
    """``AutoBridge.from_hf_pretrained(hub id)`` reads the recipe's model config.json from the presets."""
    from megatron.bridge.models.conversion.auto_bridge import AutoBridge
    from optimizer.emit.megatron_bridge import RECIPES

    preset = next(name for name, name_recipe in RECIPES.items() if name_recipe == recipe)
    original = AutoBridge.from_hf_pretrained.__func__

    def from_local(cls, path, *args, **kwargs):
        folder = tmp_path / preset
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps(_hf_config(preset)))
        return original(cls, str(folder), *args, **kwargs)

    monkeypatch.setattr(AutoBridge, "from_hf_pretrained", classmethod(from_local))


def _no_gpu(monkeypatch, world_size: int) -> None:
    import torch

    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("RANK", "0")
    h100 = types.SimpleNamespace(major=9, minor=0, name="NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *args, **kwargs: h100)


def run_emitted(emission, monkeypatch, tmp_path: Path):
    """The emitted command through Bridge's own code, up to the first GPU call: the validated config."""
    recipes = _import_bridge()
    from megatron.bridge.training.config import runtime_config_update
    from megatron.bridge.training.utils.omegaconf_utils import process_config_with_overrides
    from megatron.core import num_microbatches_calculator as calculator

    argv = list(emission.argv)
    runner = argv.index("scripts/training/run_recipe.py")
    assert argv[runner + 1] == "--recipe"
    recipe, overrides = argv[runner + 2], argv[runner + 3:]
    world = int(argv[argv.index("--nnodes") + 1]) * int(argv[argv.index("--nproc-per-node") + 1])
    _serve_hub_from_presets(monkeypatch, tmp_path, recipe)
    _no_gpu(monkeypatch, world)
    cfg = getattr(recipes, recipe)()
    cfg = process_config_with_overrides(cfg, cli_overrides=overrides)
    runtime_config_update(cfg)
    calculator.destroy_num_microbatches_calculator()
    calculator.init_num_microbatches_calculator(0, cfg.train.rampup_batch_size, cfg.train.global_batch_size,
                                                cfg.train.micro_batch_size, cfg.data_parallel_size,
                                                cfg.train.decrease_batch_size_if_needed)
    num_microbatches = calculator.get_num_microbatches()
    calculator.destroy_num_microbatches_calculator()
    return cfg, num_microbatches


# ---------------------------------------------------------------------------------------------------------
# The priced plan, read back from the validated config


def assert_priced_plan(cfg, num_microbatches: int, knobs) -> None:
    import torch

    model, training = cfg.model, knobs.training
    assert (model.tensor_model_parallel_size, model.pipeline_model_parallel_size, model.context_parallel_size,
            cfg.data_parallel_size) == (knobs.tp, knobs.pp, knobs.cp, knobs.dp)
    assert (model.virtual_pipeline_model_parallel_size or 1) == knobs.vpp
    assert model.sequence_parallel == (knobs.sequence_parallel and knobs.tp > 1)
    if knobs.model.is_moe:
        assert (model.expert_model_parallel_size, model.expert_tensor_parallel_size) == (knobs.ep, knobs.etp)
        assert model.moe_grouped_gemm
        flex = training.moe_token_dispatcher != "alltoall"
        assert model.moe_token_dispatcher_type == ("flex" if flex else "alltoall")
        if flex:
            assert model.moe_flex_dispatcher_backend == training.moe_token_dispatcher
        assert model.overlap_moe_expert_parallel_comm == knobs.ep_overlap
        assert bool(model.moe_pad_expert_input_to_capacity) == training.moe_pad_to_capacity
    assert (model.num_layers, model.hidden_size, model.num_attention_heads) == (
        knobs.model.num_layers, knobs.model.hidden_size, knobs.model.num_attention_heads)
    assert (model.mtp_num_layers or 0) == knobs.model.mtp_layers
    if knobs.model.is_moe:
        assert (model.num_moe_experts, model.moe_router_topk) == (knobs.model.num_experts,
                                                                  knobs.model.experts_per_token)
    from optimizer.emit.megatron_bridge import RECIPES

    if knobs.model.name not in RECIPES:  # the borrowed recipe's architecture switches, overridden
        assert model.normalization == ("LayerNorm" if knobs.model.norm_type == "layernorm" else "RMSNorm")
        assert (model.gated_linear_unit, model.qk_layernorm) == (knobs.model.gated_mlp, knobs.model.qk_norm)
    # The pipeline split and schedule.
    from optimizer.emit.megatron_bridge import split_settings
    from tests.conformance.test_megatron_lm import built_split

    said = split_settings(knobs)  # the one way the split is said (the others cleared), as Bridge holds it
    assert (model.account_for_embedding_in_pipeline_split, model.account_for_loss_in_pipeline_split,
            model.num_layers_in_first_pipeline_stage, model.num_layers_in_last_pipeline_stage) == (
        said["account_for_embedding_in_pipeline_split"], said["account_for_loss_in_pipeline_split"],
        said["num_layers_in_first_pipeline_stage"], said["num_layers_in_last_pipeline_stage"])
    assert (model.pipeline_model_parallel_layout is None) == (said["pipeline_model_parallel_layout"] is None)

    assert built_split(model, knobs.pp, knobs.vpp) == [list(chunks) for chunks in knobs.stage_chunks]
    assert (cfg.train.micro_batch_size, cfg.train.global_batch_size) == (knobs.micro_batch,
                                                                        training.global_batch_size)
    assert num_microbatches == knobs.num_microbatches
    assert cfg.model.seq_length == cfg.dataset.seq_length == training.seq_length
    # Recompute and offload.
    granularity = {"none": None, "selective": "selective", "full": "full"}[knobs.recompute]
    assert model.recompute_granularity == granularity
    if knobs.recompute == "selective":
        assert list(model.recompute_modules) == list(knobs.recompute_modules)
    if knobs.recompute == "full":
        assert (model.recompute_method, model.recompute_num_layers) == ("block", knobs.recompute_layers_per_chunk)
    assert model.cpu_offloading == (knobs.activation_offload_layers > 0)
    if model.cpu_offloading:
        assert model.cpu_offloading_num_layers == knobs.activation_offload_layers
    # Precision: what mixed-precision setup left on the model, optimizer and DDP configs.
    half = torch.float16 if training.precision == "fp16" else torch.bfloat16
    assert (model.bf16, model.fp16, model.params_dtype) == (half == torch.bfloat16, half == torch.float16, half)
    if knobs.cp > 1:
        assert model.cp_comm_type == knobs.cp_comm_type
    assert cfg.dist.use_tp_pp_dp_mapping == (knobs.rank_order.replace("_", "-") == "tp-cp-ep-pp-dp")
    if training.precision == "fp8":
        # Transformer Engine's formats as Bridge's own FP8 recipes set them: E4M3 for MXFP8, hybrid otherwise.
        assert model.fp8 == ("e4m3" if training.fp8_recipe == "mxfp8" else "hybrid")
        assert model.fp8_recipe == training.fp8_recipe
    else:
        assert model.fp8 is None
    # FP8 primary weights and BF16 first/last layers as priced (megatron_core.low_precision_settings).
    from optimizer.emit.megatron_core import low_precision_settings
    low = low_precision_settings(knobs)
    assert bool(model.fp8_param) == low["fp8_param_gather"]
    assert bool(model.first_last_layers_bf16) == low["first_last_layers_bf16"]
    if low["first_last_layers_bf16"]:
        assert (model.num_layers_at_start_in_bf16, model.num_layers_at_end_in_bf16) == (
            low["num_layers_at_start_in_bf16"], low["num_layers_at_end_in_bf16"])
    assert not getattr(model, "fp4_param", False)
    assert cfg.ddp.num_distributed_optimizer_instances == (knobs.dp_replicate if knobs.zero_stage >= 1 else 1)
    assert cfg.ddp.grad_reduce_in_fp32 == (training.grad_dtype == "fp32")
    assert (model.hidden_dropout, model.attention_dropout) == ((0.1, 0.1) if training.dropout else (0.0, 0.0))
    # ZeRO / Megatron-FSDP, optimizer offload, moments.
    assert cfg.ddp.use_distributed_optimizer == cfg.optimizer.use_distributed_optimizer == (knobs.zero_stage >= 1)
    assert cfg.ddp.use_megatron_fsdp == (knobs.zero_stage >= 2)
    if knobs.zero_stage >= 2:
        expected = {2: "optim_grads", 3: "optim_grads_params"}[knobs.zero_stage]
        assert cfg.ddp.data_parallel_sharding_strategy == expected
    assert cfg.optimizer.optimizer_cpu_offload == knobs.optimizer_offload
    moments = torch.bfloat16 if training.optimizer_moments_dtype == "bf16" else torch.float32
    assert (cfg.optimizer.exp_avg_dtype, cfg.optimizer.exp_avg_sq_dtype) == (moments, moments)
    # Overlaps (what a recipe's CommOverlapConfig would rewrite).
    assert model.tp_comm_overlap == (training.tp_comm_overlap and knobs.tp > 1)
    assert cfg.ddp.overlap_grad_reduce == training.overlap_grad_reduce
    assert cfg.ddp.overlap_param_gather == (training.overlap_param_gather and knobs.zero_stage >= 1)
    assert model.overlap_moe_expert_parallel_comm == knobs.ep_overlap
    # CUDA graphs.
    scopes = sorted(scope.name for scope in model.cuda_graph_scope)
    if training.cuda_graph_scope:
        assert model.cuda_graph_impl != "none"
        assert set(training.cuda_graph_scope) <= set(scopes)
    else:
        assert model.cuda_graph_impl == "none"


def _case_ids():
    from tests.conformance.plan_grid import conformance_cases

    return conformance_cases("megatron-bridge")


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = _case_ids()
        metafunc.parametrize("case", cases, ids=[case.name for case in cases])


def test_bridge_accepts_the_priced_plan(case, monkeypatch, tmp_path):
    from optimizer.emit.megatron_bridge import emit

    knobs = case.knobs()
    cfg, num_microbatches = run_emitted(emit(knobs), monkeypatch, tmp_path)
    assert_priced_plan(cfg, num_microbatches, knobs)


def _rule_names():
    from optimizer.emit.megatron_bridge import RULES

    return sorted(RULES)


REFUSALS = {
    "bridge_seq_divisible_by_2cp": "divisible by 2 \\* context parallel size",
    "bridge_cuda_graphs_dropout_recompute": "dropout is not supported with graphed",
    "bridge_cuda_graphs_moe_recompute_router": "moe recompute is not supported with moe_router",
    "bridge_cuda_graph_scope_valid": "cuda graph is only supported",
    "bridge_cuda_graphs_full_recompute_needs_full_iteration": "full recompute is only supported with full iteration",
    "bridge_cuda_graphs_no_activation_offload": "CUDA graphs not supported with CPU offloading",
    "bridge_fp8_delayed_no_norm_or_moe_act_recompute": "Delayed scaling does not support moe_act and layernorm",
    "bridge_precision_aware_optimizer": "only supported with distributed optimizer",
    "bridge_ep_overlap_mtp": "larger than 1 when enabling overlap_moe_expert_parallel_comm with MTP",
    "bridge_ep_overlap_cuda_graphs": "not supported with overlap_moe_expert_parallel_comm",
    "bridge_fsdp_default_rank_order": "use_tp_pp_dp_mapping is not supported with Megatron FSDP",
    "bridge_deepep_no_pad_to_capacity": "deepep backend does not support moe_pad_expert_input_to_capacity",
    "bridge_bf16_layers_within_stage": "must be between 0 and number of layers per pipeline stage",
    "bridge_moe_bias_needs_etp1": "Bias in Moe is only supported when ETP==1",
}
"""Rules Bridge's start-up checks on CPU: what it says when it refuses the rule's example (a message fragment)."""

NOT_CHECKED_AT_START_UP = {
    "bridge_rank_order": "no Bridge setting builds another order (dist.use_tp_pp_dp_mapping is the only switch)",
    "bridge_tp_pp_dp_mapping_expert_dp": "parallel_state.initialize_model_parallel, under torch.distributed",
    "bridge_cp_a2a_heads_divisible": "Transformer Engine's attention, on the GPU",
    "bridge_ep_overlap_moe_recompute": "megatron-core 0.16.1 accepts it and skips the recompute",
    "bridge_flex_dispatcher_needs_tp_ep": "MoEFlexTokenDispatcher, when the model is built",
    "bridge_tp_comm_overlap_needs_sequence_parallel": "Transformer Engine userbuffers, on the GPU",
    "bridge_no_fp8_dispatch": "no setting exists",
    "bridge_no_alibi": "no setting exists",
    "bridge_no_rank_capacity": "no setting exists",
    "bridge_fsdp_hsdp_dense_only": "Megatron-FSDP's wrapper, under torch.distributed (no expert mesh with HSDP)",
    "bridge_pipeline_schedule": "no setting exists (megatron-core 0.16.1 runs 1F1B and interleaved only)",
}
"""Rules whose refusal happens past the CPU start-up (or is a knob with no setting): the example's accepted
neighbour still runs through Bridge, and a missing setting is checked as an absent field."""

MISSING_FIELDS = {"bridge_no_rank_capacity": ("moe_expert_rank_capacity_factor", "moe_paged_stash"),
                  "bridge_no_fp8_dispatch": ("moe_dispatch_fp8",)}


def test_every_rule_is_classified():
    assert set(REFUSALS) | set(NOT_CHECKED_AT_START_UP) == set(_rule_names())
    assert not set(REFUSALS) & set(NOT_CHECKED_AT_START_UP)


@pytest.mark.parametrize("rule", _rule_names())
def test_bridge_refuses_what_the_rule_refuses(rule, monkeypatch, tmp_path):
    """Each rule's refused example (tests/test_emit_megatron_bridge.py) fails Bridge's own start-up, with the
    expected message; its accepted neighbour runs."""
    from optimizer.emit import emit
    from tests.test_emit_megatron_bridge import RULE_EXAMPLES, rule_example

    _import_bridge()
    from megatron.bridge.models.gpt_provider import GPTModelProvider

    names = {f.name for f in dataclasses.fields(GPTModelProvider)}
    assert not names & set(MISSING_FIELDS.get(rule, ()))
    if rule in REFUSALS:
        model, training, plan, options = rule_example(rule, 2)
        with pytest.raises((AssertionError, ValueError), match=REFUSALS[rule]):
            run_emitted(emit("megatron-bridge", plan, model, training, **options), monkeypatch, tmp_path)
    if RULE_EXAMPLES[rule][3] is not None:
        model, training, plan, options = rule_example(rule, 3)
        run_emitted(emit("megatron-bridge", plan, model, training, **options), monkeypatch, tmp_path)


def _source_case_names():
    from tests.test_emit_megatron_core import SOURCE_CASES
    return sorted(SOURCE_CASES)


@pytest.mark.parametrize("name", _source_case_names())
def test_core_source_cases(name, monkeypatch, tmp_path):
    """Where Megatron-LM's and Megatron-Bridge's predicates used to differ, Bridge decides as the shared rule
    does: it refuses with TransformerConfig's words exactly the plans the rule refuses."""
    from optimizer.emit import build_knobs
    from optimizer.emit.megatron_bridge import emit
    from tests.test_emit_megatron_core import SOURCE_CASES, source_case

    model, training, plan = source_case(name)
    emission = emit(build_knobs(plan, model, training))
    words = SOURCE_CASES[name][4]
    if words:
        with pytest.raises((AssertionError, ValueError), match=words):
            run_emitted(emission, monkeypatch, tmp_path)
    else:
        run_emitted(emission, monkeypatch, tmp_path)


# ---------------------------------------------------------------------------------------------------------
# Field lists for the CI tests (tests/test_emit_megatron_bridge.py)


def field_lists() -> dict[str, Any]:
    """Field names of every ``ConfigContainer`` section the emitter writes, from the installed packages."""
    recipes = _import_bridge()
    from importlib.metadata import version

    from megatron.bridge.models.gpt_provider import GPTModelProvider
    from megatron.bridge.models.mla_provider import MLAModelProvider
    from megatron.bridge.training import config as bridge_config
    from megatron.bridge.training.mixed_precision import MIXED_PRECISION_RECIPES, MixedPrecisionConfig

    def names(cls) -> list[str]:
        return sorted(f.name for f in dataclasses.fields(cls))

    return {
        "versions": {"megatron-bridge": version("megatron-bridge"), "megatron-core": version("megatron-core")},
        "sections": {
            "model": sorted(set(names(GPTModelProvider)) | set(names(MLAModelProvider))),
            "train": names(bridge_config.TrainingConfig),
            "dataset": names(bridge_config.GPTDatasetConfig),
            "ddp": names(bridge_config.DistributedDataParallelConfig),
            "optimizer": names(bridge_config.OptimizerConfig),
            "checkpoint": names(bridge_config.CheckpointConfig),
            "rerun_state_machine": names(bridge_config.RerunStateMachineConfig),
            "dist": names(bridge_config.DistributedInitConfig),
            "mixed_precision": names(MixedPrecisionConfig),
        },
        "container": names(bridge_config.ConfigContainer),
        "recipes": sorted(name for name in dir(recipes) if name.endswith("_config")),
        "mixed_precision_recipes": sorted(MIXED_PRECISION_RECIPES),
    }


def test_field_lists_are_current():
    """The checked-in field lists are those of the installed (pinned) packages."""
    assert json.loads(FIELDS_FILE.read_text()) == field_lists()


def refresh() -> None:
    FIELDS_FILE.write_text(json.dumps(field_lists(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIELDS_FILE}")


if __name__ == "__main__":
    if "--refresh" in sys.argv[1:]:
        refresh()
    else:
        print(__doc__)
