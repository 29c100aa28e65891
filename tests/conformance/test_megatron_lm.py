"""Megatron-LM core_v0.16.1 accepts every emitted plan of the grid, and refuses what its RULES refuse.

For each case of :func:`tests.conformance.plan_grid.conformance_cases` (``megatron`` rules active) the test
does what ``pretrain_gpt.py`` does with the emitted command before it touches a GPU: ``parse_args()`` on the
emitted flags, ``validate_args(args, {'tokenizer_type': 'GPT2BPETokenizer'})`` (pretrain_gpt's defaults)
with ``WORLD_SIZE``/``RANK`` and the emitted environment set as torchrun sets them, then
``core_transformer_config_from_args`` (Megatron-Core ``TransformerConfig.__post_init__``),
``get_megatron_optimizer_config`` (``OptimizerConfig.__post_init__``) and the tokenizer's vocabulary
padding. It asserts no exception and that the parsed arguments are the priced plan. For each rule of
``optimizer.emit.megatron_lm.RULES`` a plan that breaks it is shown refused by the same code (or, for the
knobs core_v0.16.1 cannot express, by its parser).

Megatron-LM's training code is not in the megatron-core wheel: point ``MEGATRON_LM_ROOT`` at a Megatron-LM
checkout at tag core_v0.16.1 (``megatron/training``, ``megatron/rl``, ... beside the wheel's
``megatron/core``); the test is skipped without it. What is replaced, and why (never a check):

* ``get_device_arch_version`` and ``torch.cuda.get_device_capability`` answer for an H100 (9.0): on Hopper
  ``validate_args`` checks ``CUDA_DEVICE_MAX_CONNECTIONS``, the strictest case;
* Transformer Engine is CUDA-only: ``megatron.core.utils.get_te_version`` answers 2.11.0 (megatron-core
  0.16.1's ``dev`` extra pins TE >= 2.9, < 2.12), the RoPE fusion kernels are present, and TE's ``FusedAdam``
  has TE 2.x's signature (``OptimizerConfig`` inspects it for the precision-aware optimizer).

Run: ``MEGATRON_LM_ROOT=/path/to/Megatron-LM /tmp/confvenv/bin/python -m pytest -q
tests/conformance/test_megatron_lm.py``. Refresh the option list the CI tests check emitted flags against:
``MEGATRON_LM_ROOT=... python -m tests.conformance.test_megatron_lm --refresh``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import types
from pathlib import Path

import pytest

FLAGS_FILE = Path(__file__).parent / "data" / "megatron_lm_flags.txt"
SCRIPT_DEFAULTS = {"tokenizer_type": "GPT2BPETokenizer"}
"""``pretrain_gpt.py``'s ``args_defaults`` (core_v0.16.1)."""
STAND_IN_TE_VERSION = "2.11.0"
HOPPER = (9, 0)


def _megatron_lm_root() -> Path | None:
    root = os.environ.get("MEGATRON_LM_ROOT")
    return Path(root) if root and (Path(root) / "megatron" / "training" / "arguments.py").is_file() else None


def import_megatron_lm() -> types.ModuleType:
    """``megatron.training.arguments`` from ``MEGATRON_LM_ROOT`` beside the installed megatron-core (a
    namespace package: the checkout's ``megatron/`` portion is searched after the wheel's)."""
    root = _megatron_lm_root()
    if root is None:
        raise ImportError("set MEGATRON_LM_ROOT to a Megatron-LM checkout at core_v0.16.1")
    if str(root) not in sys.path:
        sys.path.append(str(root))
    import megatron.core  # noqa: F401  (the wheel's)
    from megatron.training import arguments
    return arguments


def option_table(arguments: types.ModuleType) -> list[str]:
    """One line per option string of Megatron-LM's parser: ``--flag<TAB>kind<TAB>choices`` (kind: ``switch``
    takes no value, ``value`` one, ``values`` one or more)."""
    parser = arguments.add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False))
    lines = []
    for action in parser._actions:
        kind = "switch" if action.nargs == 0 else "values" if action.nargs in ("+", "*") else "value"
        choices = " ".join(str(c) for c in action.choices) if action.choices else ""
        lines += [f"{flag}\t{kind}\t{choices}" for flag in action.option_strings if flag.startswith("--")]
    return sorted(lines)


def refresh() -> None:
    """Regenerate :data:`FLAGS_FILE` from the Megatron-LM checkout at ``MEGATRON_LM_ROOT``."""
    from optimizer.emit.megatron_lm import TESTED_VERSION
    lines = option_table(import_megatron_lm())
    FLAGS_FILE.write_text(f"# Megatron-LM argparse options ({TESTED_VERSION}): flag, kind, choices\n"
                          + "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} options to {FLAGS_FILE}")


# --- the framework, as pretrain_gpt runs it ---------------------------------------------------------

class _FusedAdam:
    """Transformer Engine 2.x ``transformer_engine.pytorch.optimizers.FusedAdam`` signature."""

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, master_weights=False, master_weight_dtype=None, exp_avg_dtype=None,
                 exp_avg_sq_dtype=None, use_decoupled_grad=False, store_param_remainders=False, capturable=False):
        pass


@pytest.fixture(scope="module")
def mlm():
    pytest.importorskip("torch")
    if _megatron_lm_root() is None:
        pytest.skip("MEGATRON_LM_ROOT (a Megatron-LM checkout at core_v0.16.1) is not set")
    try:
        return import_megatron_lm()
    except ImportError as exc:
        pytest.skip(f"Megatron-LM training code not importable: {exc}")


@pytest.fixture
def framework(mlm, monkeypatch):
    """Megatron-LM with the GPU and Transformer Engine probes answering for an H100 with TE 2.11."""
    import torch
    from packaging.version import Version
    from megatron.core import utils as core_utils
    from megatron.core.models.common.embeddings import rope_utils

    monkeypatch.setattr(mlm, "get_device_arch_version", lambda: HOPPER[0])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args, **kwargs: HOPPER)
    monkeypatch.setattr(core_utils, "get_te_version", lambda: Version(STAND_IN_TE_VERSION))
    for name in ("fused_apply_rotary_pos_emb", "fused_apply_rotary_pos_emb_thd"):
        monkeypatch.setattr(rope_utils, name, getattr(rope_utils, name, None) or (lambda *args, **kwargs: None))
    te = types.ModuleType("transformer_engine")
    te_pytorch = types.ModuleType("transformer_engine.pytorch")
    te_optimizers = types.ModuleType("transformer_engine.pytorch.optimizers")
    te_optimizers.FusedAdam = _FusedAdam
    te.pytorch, te_pytorch.optimizers = te_pytorch, te_optimizers
    if "transformer_engine" not in sys.modules:
        for name, module in (("transformer_engine", te), ("transformer_engine.pytorch", te_pytorch),
                             ("transformer_engine.pytorch.optimizers", te_optimizers)):
            monkeypatch.setitem(sys.modules, name, module)
    return mlm


def run_megatron(mlm, monkeypatch, argv: tuple[str, ...], env: tuple[tuple[str, str], ...], world_size: int):
    """parse_args, validate_args, TransformerConfig, OptimizerConfig and the tokenizer on one command
    (what pretrain_gpt.py runs before it needs a GPU); returns (args, transformer config)."""
    from megatron.training.tokenizer import build_tokenizer
    from megatron.training.training import get_megatron_optimizer_config

    flags = list(argv[argv.index("pretrain_gpt.py") + 1:])
    monkeypatch.setattr(sys, "argv", ["pretrain_gpt.py", *flags])
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("CUDA_DEVICE_MAX_CONNECTIONS", raising=False)
    for name, value in env:
        monkeypatch.setenv(name, value)
    with contextlib.redirect_stdout(io.StringIO()):
        args = mlm.parse_args()
        mlm.validate_args(args, dict(SCRIPT_DEFAULTS))
        config = mlm.core_transformer_config_from_args(args)
        get_megatron_optimizer_config(args)
        build_tokenizer(args)
    return args, config


def built_split(config, pp: int, vpp: int) -> list[list[int]]:
    """Decoder layers Megatron-Core builds on each (pipeline rank, virtual chunk)."""
    from megatron.core import parallel_state
    from megatron.core.transformer.enums import LayerType
    from megatron.core.transformer.transformer_block import get_num_layers_to_build

    layout = config.pipeline_model_parallel_layout
    previous = parallel_state._VIRTUAL_PIPELINE_MODEL_PARALLEL_WORLD_SIZE
    parallel_state.set_virtual_pipeline_model_parallel_world_size(vpp if vpp > 1 else None)
    try:
        if layout is not None:
            return [[layout.get_num_layers_to_build(LayerType.decoder, vp_stage=v, pp_rank=r) for v in range(vpp)]
                    for r in range(pp)]
        return [[get_num_layers_to_build(config, vp_stage=v if vpp > 1 else None, pp_rank=r) for v in range(vpp)]
                for r in range(pp)]
    finally:
        parallel_state.set_virtual_pipeline_model_parallel_world_size(previous)


# --- every grid plan runs as priced -----------------------------------------------------------------

def _cases():
    from tests.conformance.plan_grid import conformance_cases
    return conformance_cases("megatron")


def _case_ids():
    try:
        return [case.name for case in _cases()]
    except Exception:  # the grid needs the planner; its own tests report why it cannot build
        return []


@pytest.fixture(scope="module")
def cases():
    return {case.name: case for case in _cases()}


@pytest.mark.parametrize("name", _case_ids())
def test_megatron_accepts_and_runs_the_priced_plan(framework, monkeypatch, cases, name):
    check_runs_as_priced(framework, monkeypatch, cases[name])


@pytest.mark.parametrize("index", range(len(__import__("tests.test_emit_megatron_lm", fromlist=["HAND_BUILT"]).HAND_BUILT)))
def test_hand_built_plans_run_as_priced(framework, monkeypatch, index):
    """The CI test's hand-built plans: uneven and non-divisible interleaved splits, learned positions,
    sliding windows and sinks, Megatron-FSDP with MXFP8 and BF16 moments, FP16 with dropout, a whole-iteration graph."""
    from cost_model.model_loader import build_training, load_model
    from tests.conformance.plan_grid import ConformanceCase
    from tests.test_emit_megatron_lm import HAND_BUILT

    name, settings, plan = HAND_BUILT[index]
    model = load_model(name).spec
    check_runs_as_priced(framework, monkeypatch, ConformanceCase(name=name, plan=plan, model=model,
                                                                 training=build_training(dict(settings), model=model)))


def check_runs_as_priced(framework, monkeypatch, case) -> None:
    from cost_model.memory import padded_vocab
    from cost_model.options import CostOptions
    from cost_model.plan import PlanArrays

    knobs = case.knobs()
    emission = case.emission("megatron")
    assert not [d for d in emission.differences if "refuses" in d]
    args, config = run_megatron(framework, monkeypatch, emission.argv, emission.env, knobs.world_size)

    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size,
            args.data_parallel_size) == (knobs.tp, knobs.pp, knobs.cp, knobs.dp)
    assert (args.virtual_pipeline_model_parallel_size or 1) == knobs.vpp
    if case.model.is_moe:
        assert (args.expert_model_parallel_size, args.expert_tensor_parallel_size) == (knobs.ep, knobs.etp)
        dispatcher = "alltoall" if case.training.moe_token_dispatcher == "alltoall" else "flex"
        assert config.moe_token_dispatcher_type == dispatcher and config.moe_grouped_gemm
        if dispatcher == "flex":
            assert config.moe_flex_dispatcher_backend == case.training.moe_token_dispatcher
        assert config.overlap_moe_expert_parallel_comm == knobs.ep_overlap
    assert config.sequence_parallel == knobs.sequence_parallel
    assert (args.micro_batch_size, args.global_batch_size, args.seq_length) == (
        knobs.micro_batch, case.training.global_batch_size, case.training.seq_length)
    assert args.global_batch_size // (args.micro_batch_size * args.data_parallel_size) == knobs.num_microbatches
    split = built_split(config, knobs.pp, knobs.vpp)
    assert [sum(chunks) for chunks in split] == list(knobs.stage_layers)
    assert split == [list(chunks) for chunks in knobs.stage_chunks]  # the priced chunks, embedding/loss ones too
    assert (config.recompute_granularity or "none") == knobs.recompute
    if knobs.recompute == "selective":
        assert list(config.recompute_modules) == list(knobs.recompute_modules)
    if knobs.recompute == "full":
        assert (config.recompute_method, config.recompute_num_layers) == ("block", knobs.recompute_layers_per_chunk)
    assert args.use_distributed_optimizer == (knobs.zero_stage >= 1)
    assert args.use_megatron_fsdp == (knobs.zero_stage >= 2)
    if knobs.zero_stage >= 2:
        assert args.data_parallel_sharding_strategy == ("optim_grads" if knobs.zero_stage == 2 else "optim_grads_params")
    assert args.optimizer_cpu_offload == knobs.optimizer_offload
    assert config.cpu_offloading_num_layers == knobs.activation_offload_layers
    assert config.cpu_offloading == (knobs.activation_offload_layers > 0)
    assert bool(config.fp8) == (case.training.precision == "fp8")
    if config.fp8:
        assert config.fp8_recipe == case.training.fp8_recipe
    from optimizer.emit.megatron_core import low_precision_settings
    low = low_precision_settings(knobs)  # FP8 primary weights and BF16 first/last layers as priced
    assert bool(args.fp8_param_gather) == low["fp8_param_gather"] == bool(config.fp8_param)
    assert bool(config.first_last_layers_bf16) == low["first_last_layers_bf16"]
    if low["first_last_layers_bf16"]:
        assert (config.num_layers_at_start_in_bf16, config.num_layers_at_end_in_bf16) == (
            low["num_layers_at_start_in_bf16"], low["num_layers_at_end_in_bf16"])
    assert not config.fp4_param
    assert args.num_distributed_optimizer_instances == (knobs.dp_replicate if knobs.zero_stage >= 1 else 1)
    assert config.bf16 == (case.training.precision != "fp16")
    grads_in_fp32 = case.training.grad_dtype == "fp32"
    assert args.accumulate_allreduce_grads_in_fp32 == grads_in_fp32
    assert (config.attention_dropout == 0.0) == (not case.training.dropout)
    assert args.cp_comm_type == [case.cp_comm_type]
    assert sorted(scope.name for scope in config.cuda_graph_scope) == sorted(case.training.cuda_graph_scope)
    plans = PlanArrays.from_records([case.plan])
    assert args.padded_vocab_size == int(padded_vocab(case.model, plans, CostOptions())[0])


def test_the_grid_is_large():
    assert len(_case_ids()) >= 200


# --- every rule refuses what Megatron refuses -------------------------------------------------------

def _refusal_cases():
    """(rule, model preset, training, plan): a plan that breaks exactly the rule named (built by the CI
    tests, which check the rule flags it)."""
    from tests.test_emit_megatron_lm import RULE_BREAKERS
    return RULE_BREAKERS


CANNOT_EXPRESS = {
    "megatron_rank_order": ["--rank-order", "tp-dp-cp-ep-pp"],
    "megatron_no_rank_capacity": ["--moe-expert-rank-capacity-factor", "1.5"],
    "megatron_no_fp8_dispatch": ["--moe-dispatch-fp8"],
    "megatron_no_alibi": ["--position-embedding-type", "alibi"],
    "megatron_pipeline_schedule": ["--pipeline-schedule", "dualpipev"],  # no schedule flag: 1F1B or interleaved
}
"""Rules for knobs core_v0.16.1 has no word for: its parser refuses the flag that would say it."""

RUNTIME_ONLY = {
    "megatron_cp_a2a_heads_divisible": "Transformer Engine's AttnFuncWithCPAndQKVOA2A asserts it in the "
                                       "first forward (a CUDA kernel wrapper; not importable here)",
    "megatron_flex_dispatcher_needs_tp_ep": "MoEFlexTokenDispatcher.__init__ asserts it when the model is built",
    "megatron_tp_pp_dp_mapping_expert_dp": "parallel_state.initialize_model_parallel asserts it",
    "megatron_ep_overlap_moe_recompute": "core_v0.16.1 runs the overlap's MoE pieces outside MoELayer.forward, "
                                         "whose checkpoint is the moe recompute",
    "megatron_fsdp_hsdp_dense_only": "Megatron-FSDP's wrapper, built under torch.distributed, sets no expert mesh "
                                     "with HSDP (mcore_fsdp_adapter._init_dist_index)",
}
"""Rules Megatron enforces past start-up; each has its own proof below."""


REFUSALS = {
    "megatron_seq_divisible_by_2cp": "seq-length should be a multiple of 2 \\* context-parallel-size",
    "megatron_fp8_delayed_no_norm_or_moe_act_recompute": "Delayed scaling does not support moe_act and layernorm recompute",
    "megatron_cuda_graphs_full_recompute_needs_full_iteration": "full recompute is only supported with full iteration CUDA graph",
    "megatron_cuda_graphs_moe_recompute_router": "moe recompute is not supported with moe_router CUDA graph",
    "megatron_cuda_graphs_no_activation_offload": "CUDA graphs not supported with CPU offloading",
    "megatron_cuda_graphs_dropout_recompute": "attention dropout is not supported with graphed attention recomputation",
    "megatron_cuda_graph_scope_valid": "moe cuda graph is only supported for MoE",
    "megatron_ep_overlap_cuda_graphs": "CUDA graph scope on moe and mlp is not supported with overlap",
    "megatron_ep_overlap_mtp": "Pipeline model parallel size must be larger than 1 when enabling "
                               "overlap_moe_expert_parallel_comm with MTP",
    "megatron_precision_aware_optimizer": "--use-precision-aware-optimizer only supported with distributed optimizer",
    "megatron_tp_comm_overlap_needs_sequence_parallel": "overlap can happen only when sequence parallelism is enabled",
    "megatron_param_gather_overlap_needs_grad_overlap": "Must use --overlap-param-gather with --overlap-grad-reduce",
    "megatron_deepep_no_pad_to_capacity": "deepep backend does not support moe_pad_expert_input_to_capacity",
    "megatron_moe_bias_needs_etp1": "Bias in Moe is only supported when ETP==1",
    "megatron_learned_positions_cover_sequence": "must be greater than or equal to seq_length",
    "megatron_bf16_layers_within_stage": "must be between 0 and number of layers per pipeline stage",
}
"""Rules Megatron checks at start-up, with the words of its refusal."""


def test_every_rule_is_proven():
    from optimizer.emit.megatron_lm import RULES
    assert set(RULES) == set(REFUSALS) | set(CANNOT_EXPRESS) | set(RUNTIME_ONLY)


@pytest.mark.parametrize("rule", sorted(REFUSALS))
def test_megatron_refuses_what_the_rule_refuses(framework, monkeypatch, rule):
    """The rule's breaker is refused by Megatron with the rule's reason; the mended plan is accepted."""
    from tests.test_emit_megatron_lm import MENDED
    from optimizer.emit import build_knobs
    from optimizer.emit.megatron_lm import emit as emit_megatron

    name, model, training, plan, options = _refusal_cases()[rule]
    knobs = build_knobs(plan, model, training, **options)
    emission = emit_megatron(knobs)
    with pytest.raises((AssertionError, ValueError), match=REFUSALS[rule]):
        run_megatron(framework, monkeypatch, emission.argv, emission.env, knobs.world_size)
    training_changes, plan_changes, option_changes = MENDED[rule]
    knobs = build_knobs(dict(plan, **plan_changes), model, training.with_changes(**training_changes),
                        **dict(options, **option_changes))
    emission = emit_megatron(knobs)
    run_megatron(framework, monkeypatch, emission.argv, emission.env, knobs.world_size)


def _source_case_names():
    from tests.test_emit_megatron_core import SOURCE_CASES
    return sorted(SOURCE_CASES)


@pytest.mark.parametrize("name", _source_case_names())
def test_core_source_cases(framework, monkeypatch, name):
    """Where Megatron-LM's and Megatron-Bridge's predicates used to differ, Megatron decides as the shared
    rule does: it refuses with TransformerConfig's words exactly the plans the rule refuses."""
    from optimizer.emit import build_knobs
    from optimizer.emit.megatron_lm import emit as emit_megatron
    from tests.test_emit_megatron_core import SOURCE_CASES, source_case

    model, training, plan = source_case(name)
    knobs = build_knobs(plan, model, training)
    emission = emit_megatron(knobs)
    words = SOURCE_CASES[name][4]
    if words:
        with pytest.raises((AssertionError, ValueError), match=words):
            run_megatron(framework, monkeypatch, emission.argv, emission.env, knobs.world_size)
    else:
        run_megatron(framework, monkeypatch, emission.argv, emission.env, knobs.world_size)


@pytest.mark.parametrize("rule", sorted(CANNOT_EXPRESS))
def test_megatron_has_no_flag_for(framework, monkeypatch, rule):
    monkeypatch.setattr(sys, "argv", ["pretrain_gpt.py", "--num-layers", "2", *CANNOT_EXPRESS[rule]])
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        framework.parse_args()


def test_tp_pp_dp_mapping_needs_equal_expert_data_parallel(framework):
    """initialize_model_parallel's check, on a fake process group of 16 ranks."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from megatron.core import parallel_state

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=16)
    try:
        with pytest.raises(AssertionError, match="data parallel size of the attention and moe layers"):
            parallel_state.initialize_model_parallel(tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
                                                     expert_model_parallel_size=4, expert_tensor_parallel_size=1,
                                                     order="tp-cp-ep-pp-dp", create_gloo_process_groups=False)
        parallel_state.destroy_model_parallel()
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
                                                 expert_model_parallel_size=2, expert_tensor_parallel_size=1,
                                                 order="tp-cp-ep-pp-dp", create_gloo_process_groups=False)
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def test_flex_dispatcher_needs_tp_times_ep(framework):
    import inspect
    from megatron.core.transformer.moe.token_dispatcher import MoEFlexTokenDispatcher

    assert 'assert self.tp_size * self.ep_size > 1, "Flex token dispatcher requires TPxEP > 1"' in \
        inspect.getsource(MoEFlexTokenDispatcher.__init__)


def test_ep_overlap_bypasses_the_moe_checkpoint(framework):
    """The overlap's callables run the router, dispatch, experts and combine themselves; MoELayer.forward,
    the only place that checkpoints the MoE block (``moe_layer_recompute``), is not among them."""
    import inspect
    from megatron.core.models.gpt import fine_grained_callables
    from megatron.core.transformer.moe import moe_layer

    assert "moe_layer_recompute" in inspect.getsource(moe_layer.MoELayer.forward)
    source = inspect.getsource(fine_grained_callables)
    assert "moe_layer_recompute" not in source and ".mlp(" not in source


def test_megatron_fsdp_hsdp_builds_no_expert_mesh(framework):
    """With num_distributed_optimizer_instances > 1 the adapter takes its HSDP branch, which passes no
    ``expt_device_mesh``: only the other branch builds one."""
    import inspect
    from megatron.core.distributed.fsdp import mcore_fsdp_adapter

    source = inspect.getsource(mcore_fsdp_adapter.FullyShardedDataParallel._init_dist_index)
    hsdp, _, plain = source.partition("if enable_hsdp:\n            mesh = _get_hsdp_tp_mesh")
    assert "enable_hsdp = self.ddp_config.num_distributed_optimizer_instances > 1" in hsdp
    body, _, rest = plain.partition("        else:\n")
    assert "expt_device_mesh" not in body and "expt_device_mesh=expt_device_mesh" in rest


if __name__ == "__main__":
    if "--refresh" in sys.argv:
        refresh()
    else:
        print(__doc__)
