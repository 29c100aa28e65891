"""The Megatron-Bridge emitter without Megatron-Bridge installed (CI).

(a) every key the overrides write is a field of its ``ConfigContainer`` section in megatron-bridge 0.3.1
    (the lists in ``tests/conformance/data/megatron_bridge_fields.json``, regenerated from the installed
    package by ``python -m tests.conformance.test_megatron_bridge --refresh``), and the recipe is one
    ``run_recipe.py`` can load;
(b) the overrides, parsed back with Hydra's value grammar, hold the priced micro-batch, schedule, recompute,
    precision and sharding for every plan of the conformance grid;
(c) each rule refuses a hand-built plan Bridge refuses and accepts its nearest neighbour that Bridge runs
    (the same examples run through Bridge itself in ``tests/conformance/test_megatron_bridge.py``).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cost_model.model_loader import build_training, load_model
from cost_model.plan import FULL, NONE, SELECTIVE, PlanArrays, module_mask
from optimizer.emit import emit, framework_rules, framework_violations
from optimizer.emit import megatron_bridge as bridge
from optimizer.plan_rules import violations as plan_violations
from tests.conformance.plan_grid import conformance_cases
from tests.test_emit_megatron_lm import accounted_split, layout_split

FIELDS = json.loads((Path(__file__).parent / "conformance" / "data" / "megatron_bridge_fields.json").read_text())


# --- Hydra's override value grammar, as far as the emitter uses it ----------------------------------------

def parse_value(text: str) -> Any:
    value, rest = _parse(text.strip())
    assert rest == "", f"trailing {rest!r} in {text!r}"
    return value


def _parse(text: str) -> tuple[Any, str]:
    if text.startswith("["):
        items, text = [], text[1:]
        while not text.startswith("]"):
            item, text = _parse(text)
            items.append(item)
            text = text[1:] if text.startswith(",") else text
        return items, text[1:]
    if text.startswith("{"):
        node, text = {}, text[1:]
        while not text.startswith("}"):
            key, text = text.split(":", 1)
            node[key], text = _parse(text)
            text = text[1:] if text.startswith(",") else text
        return node, text[1:]
    end = min([i for i in (text.find(c) for c in ",]}") if i >= 0] or [len(text)])
    word, rest = text[:end], text[end:]
    scalars = {"null": None, "true": True, "false": False}
    if word in scalars:
        return scalars[word], rest
    for kind in (int, float):
        try:
            return kind(word), rest
        except ValueError:
            pass
    return word, rest


def parsed(emission) -> tuple[str, dict[str, Any]]:
    """The recipe and the overrides (``section.field`` -> value) of an emitted command."""
    argv = list(emission.argv)
    at = argv.index(bridge.RUNNER)
    assert argv[at + 1] == "--recipe"
    out: dict[str, Any] = {}
    for item in argv[at + 3:]:
        if item.startswith("~"):
            out.pop(item[1:], None)
            continue
        key, value = item.split("=", 1)
        out[key.lstrip("+")] = parse_value(value)
    return argv[at + 2], out


def _knobs(case):
    return case.knobs()


CASES = conformance_cases("megatron-bridge")


def test_grid_is_large():
    assert len(CASES) >= 200


# --- (a) field names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_key_is_a_bridge_field(case):
    recipe, overrides = parsed(bridge.emit(_knobs(case)))
    assert recipe in FIELDS["recipes"]
    for key, value in overrides.items():
        section, name = key.split(".", 1) if "." in key else (key, None)
        assert section in FIELDS["container"], key
        if name is not None:
            assert name in FIELDS["sections"][section], key
    mixed = overrides["mixed_precision"]
    assert mixed["_target_"] == "megatron.bridge.training.mixed_precision.MixedPrecisionConfig"
    assert set(mixed) - {"_target_"} <= set(FIELDS["sections"]["mixed_precision"])


def test_model_without_recipe_borrows_its_family_recipe():
    model = load_model("mixtral-8x7b").spec
    training = build_training({"seq_length": 4096, "global_batch_size": 256}, model=model)
    plan = dict(tp=1, pp=1, dp=8, cp=1, ep=8, etp=1, vpp=1, micro_batch=1, zero_stage=1)
    emission = emit("megatron-bridge", plan, model, training)
    recipe, overrides = parsed(emission)
    assert recipe == "qwen3_30b_a3b_pretrain_config" and recipe in FIELDS["recipes"]
    assert overrides["model.qk_layernorm"] is False  # Qwen3 normalises q and k; Mixtral does not
    assert (overrides["model.num_moe_experts"], overrides["model.moe_router_topk"]) == (8, 2)
    assert any("mixtral-8x7b" in line for line in emission.differences)



def test_flash_attention_2_is_named_as_a_difference():
    """A run priced with flash-attn 2 (dgxc-benchmarking's GPT-3 175B: NVTE_FUSED_ATTN=0) launches with the
    recipe's attention backend: the launch says so; the default kernel says nothing."""
    model = load_model("gpt3-175b").spec
    plan = dict(tp=4, pp=8, dp=4, cp=1, ep=1, etp=1, vpp=12, micro_batch=1, zero_stage=1, sequence_parallel=True)
    settings = {"seq_length": 2048, "global_batch_size": 256, "dropout": True}
    fa2 = emit("megatron-bridge", plan, model, build_training({**settings, "flash_attention_2": True}, model=model))
    native = emit("megatron-bridge", plan, model, build_training(settings, model=model))
    assert [line for line in fa2.differences if "flash-attn 2" in line]
    assert not [line for line in native.differences if "flash-attn 2" in line]


# --- (b) the priced plan, read back --------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_overrides_hold_the_priced_plan(case):
    knobs = _knobs(case)
    emission = bridge.emit(knobs)
    _, o = parsed(emission)
    training = case.training
    assert (o["model.tensor_model_parallel_size"], o["model.pipeline_model_parallel_size"],
            o["model.context_parallel_size"]) == (knobs.tp, knobs.pp, knobs.cp)
    launched = int(emission.argv[emission.argv.index("--nnodes") + 1]) * int(
        emission.argv[emission.argv.index("--nproc-per-node") + 1])
    assert launched // (knobs.tp * knobs.pp * knobs.cp) == case.plan["dp"]
    assert (o["model.virtual_pipeline_model_parallel_size"] or 1) == case.plan["vpp"]
    assert (o["train.micro_batch_size"], o["train.global_batch_size"]) == (case.plan["micro_batch"],
                                                                          training.global_batch_size)
    assert o["model.seq_length"] == o["dataset.sequence_length"] == training.seq_length
    first, last = o["model.num_layers_in_first_pipeline_stage"], o["model.num_layers_in_last_pipeline_stage"]
    embedding, loss = o["model.account_for_embedding_in_pipeline_split"], o["model.account_for_loss_in_pipeline_split"]
    layout = o["model.pipeline_model_parallel_layout"]
    ways = (layout is not None) + (embedding or loss) + (first is not None or last is not None)
    assert ways <= 1  # TransformerConfig.__post_init__ refuses two ways together
    if layout is not None:
        split = layout_split(str(layout), case.plan["pp"])
    elif first is None:
        split = accounted_split(case.model.num_layers, case.plan["pp"], case.plan["vpp"], embedding, loss)
    else:
        vpp = case.plan["vpp"]
        middle = (case.model.num_layers - first - last) // max(case.plan["pp"] - 2, 1)
        split = [[layers // vpp] * vpp for layers in [first] + [middle] * (case.plan["pp"] - 2) + [last]]
    assert split == [list(chunks) for chunks in knobs.stage_chunks]
    assert sum(map(sum, split)) == case.model.num_layers
    recompute = case.plan.get("recompute", NONE)
    assert o["model.recompute_granularity"] == {NONE: None, SELECTIVE: "selective", FULL: "full"}[recompute]
    if recompute == SELECTIVE:
        assert module_mask(o["model.recompute_modules"]) == case.plan["recompute_modules"]
    if recompute == FULL:
        assert o["model.recompute_method"] == "block"
        assert 1 <= o["model.recompute_num_layers"] <= max(knobs.stage_layers)
    mixed = o["mixed_precision"]
    assert mixed["bf16"] == (training.precision != "fp16")
    assert mixed.get("fp8_recipe") == (training.fp8_recipe if training.precision == "fp8" else None)
    assert (mixed.get("fp4"), mixed.get("fp4_recipe")) == (("e2m1", training.fp4_recipe) if training.precision == "fp4"
                                                           else (None, None))
    assert mixed["grad_reduce_in_fp32"] == (training.grad_dtype == "fp32")
    zero = case.plan["zero_stage"]
    assert o["ddp.use_distributed_optimizer"] == o["optimizer.use_distributed_optimizer"] == (zero >= 1)
    assert o["ddp.use_megatron_fsdp"] == (zero >= 2)
    assert o["ddp.data_parallel_sharding_strategy"] == {2: "optim_grads", 3: "optim_grads_params"}.get(zero, "no_shard")
    assert o["optimizer.optimizer_cpu_offload"] == bool(case.plan["optimizer_offload"])
    assert o["model.cpu_offloading_num_layers"] == case.plan["activation_offload_layers"]
    if case.model.is_moe:
        dispatcher = training.moe_token_dispatcher
        assert o["model.moe_token_dispatcher_type"] == ("alltoall" if dispatcher == "alltoall" else "flex")
        assert o["model.moe_grouped_gemm"] is True
    assert (o["model.cuda_graph_impl"] != "none") == bool(training.cuda_graph_scope)
    assert o["comm_overlap"] is None  # a recipe's CommOverlapConfig would rewrite the overlaps below
    assert o["model.tp_comm_overlap"] == (training.tp_comm_overlap and case.plan["tp"] > 1)
    assert o["ddp.overlap_grad_reduce"] == training.overlap_grad_reduce
    assert o.get("model.overlap_moe_expert_parallel_comm", False) == knobs.ep_overlap


@pytest.mark.parametrize("case", CASES[:3], ids=[c.name for c in CASES[:3]])
def test_text_is_the_command(case):
    emission = bridge.emit(_knobs(case))
    first, *rest = emission.text.splitlines()
    assert first.startswith("# ") and bridge.TESTED_VERSION in first
    words = shlex.split(" ".join(line.rstrip("\\") for line in rest))
    env = tuple(f"{k}={v}" for k, v in emission.env)
    assert tuple(words[:len(env)]) == env and tuple(words[len(env):]) == emission.argv


def test_each_split_in_one_of_megatrons_ways():
    """405B PP16 VP8: the embedding and loss accounted (the 405B recipe's switches); 70B PP6 VP2 (12 + 4 x 14 +
    12): first/last stage sizes, each 2 chunks of 6; 70B PP7 VP4 (10 + 5 x 12 + 10): no switch says 10 layers
    in 4 chunks, so the layout, as the DeepSeek-V3 recipe sets one: rank 0 runs 2 + 2 + 3 + 3."""
    cases = [("llama3-405b", {"seq_length": 8192, "global_batch_size": 1536}, dict(tp=8, pp=16, dp=8, vpp=8)),
             ("llama3-70b", {"seq_length": 4096, "global_batch_size": 384}, dict(tp=4, pp=6, dp=2, vpp=2)),
             ("llama3-70b", {"seq_length": 4096, "global_batch_size": 448}, dict(tp=8, pp=7, dp=2, vpp=4))]
    found = []
    for name, settings, degrees in cases:
        model = load_model(name).spec
        plan = _plan(**degrees)
        _, o = parsed(emit("megatron-bridge", plan, model, build_training(dict(settings), model=model)))
        found.append((o["model.account_for_embedding_in_pipeline_split"], o["model.account_for_loss_in_pipeline_split"],
                      o["model.num_layers_in_first_pipeline_stage"], o["model.num_layers_in_last_pipeline_stage"],
                      o["model.pipeline_model_parallel_layout"]))
    assert found[0] == (True, True, None, None, None)
    assert found[1] == (False, False, 12, 12, None)
    assert found[2][:4] == (False, False, None, None)
    assert layout_split(str(found[2][4]), 7) == [[2, 2, 3, 3]] + [[3, 3, 3, 3]] * 5 + [[3, 3, 2, 2]]


# --- (c) rules -----------------------------------------------------------------------------------------

def _plan(**changes) -> dict[str, Any]:
    base = dict(tp=2, pp=1, dp=4, cp=1, ep=1, etp=1, vpp=1, micro_batch=1, recompute=NONE, recompute_num_layers=-1,
                recompute_modules=module_mask(["core_attn"]), sequence_parallel=True, zero_stage=1,
                optimizer_offload=False, activation_offload_layers=0)
    return base | changes


MOE = dict(tp=1, dp=8, ep=8, sequence_parallel=False)
QWEN_MOE = "qwen3-30b-a3b"
MOE_SETUP = {"seq_length": 4096, "global_batch_size": 256}
DENSE_SETUP = {"seq_length": 4096, "global_batch_size": 64}
ALIBI = ("llama3-8b", {"position_embedding_type": "alibi"})
RULE_EXAMPLES: dict[str, tuple] = {
    # rule: (model, training, refused plan, accepted neighbour or None, cost options)
    "bridge_pipeline_schedule": ("llama3-8b", DENSE_SETUP, _plan(pp=2, dp=2, schedule="zbv", vpp=2),
                                 _plan(pp=2, dp=2, vpp=2)),
    "bridge_rank_order": ("llama3-8b", DENSE_SETUP, _plan(), None, {"rank_order": "tp-dp-cp-ep-pp"}),
    "bridge_tp_pp_dp_mapping_expert_dp": (
        QWEN_MOE, MOE_SETUP, _plan(**MOE, pp=2), _plan(**MOE), {"rank_order": "tp-cp-ep-pp-dp"}),
    "bridge_fsdp_default_rank_order": (
        "llama3-8b", DENSE_SETUP, _plan(tp=1, dp=8, zero_stage=2, sequence_parallel=False),
        _plan(tp=1, dp=8, zero_stage=1, sequence_parallel=False), {"rank_order": "tp-cp-ep-pp-dp"}),
    "bridge_cp_a2a_heads_divisible": (
        "llama3-8b", {"seq_length": 32768, "global_batch_size": 64}, _plan(cp=8, dp=1), _plan(cp=4, dp=2),
        {"cp_comm_type": "a2a"}),
    "bridge_seq_divisible_by_2cp": (
        "llama3-8b", {"seq_length": 4098, "global_batch_size": 64},
        _plan(tp=1, cp=2, dp=4, sequence_parallel=False), _plan(tp=1, cp=1, dp=8, sequence_parallel=False)),
    "bridge_precision_aware_optimizer": (
        "llama3-8b", DENSE_SETUP | {"optimizer_moments_dtype": "bf16"}, _plan(zero_stage=0), _plan(zero_stage=1)),
    "bridge_no_rank_capacity": (
        QWEN_MOE, MOE_SETUP | {"moe_token_dispatcher": "hybridep", "moe_rank_capacity_factor": 1.5},
        _plan(**MOE), None),
    "bridge_cuda_graphs_no_activation_offload": (
        "llama3-8b", DENSE_SETUP | {"cuda_graph_scope": ("attn",)}, _plan(activation_offload_layers=4), _plan()),
    "bridge_cuda_graphs_full_recompute_needs_full_iteration": (
        "llama3-8b", DENSE_SETUP | {"cuda_graph_scope": ("attn",)}, _plan(recompute=FULL), _plan(recompute=SELECTIVE)),
    "bridge_cuda_graph_scope_valid": (QWEN_MOE, MOE_SETUP | {"cuda_graph_scope": ("mlp",)}, _plan(**MOE), None),
    "bridge_cuda_graphs_moe_recompute_router": (
        QWEN_MOE, MOE_SETUP | {"cuda_graph_scope": ("attn", "moe_router")},
        _plan(**MOE, recompute=SELECTIVE, recompute_modules=module_mask(["moe"])),
        _plan(**MOE, recompute=SELECTIVE, recompute_modules=module_mask(["moe_act"]))),
    "bridge_cuda_graphs_dropout_recompute": (
        "llama3-8b", DENSE_SETUP | {"cuda_graph_scope": ("attn",), "dropout": True},
        _plan(recompute=SELECTIVE, recompute_modules=module_mask(["core_attn"])),
        _plan(recompute=SELECTIVE, recompute_modules=module_mask(["mlp"]))),
    "bridge_fp8_delayed_no_norm_or_moe_act_recompute": (
        "llama3-8b", DENSE_SETUP | {"precision": "fp8", "fp8_recipe": "delayed"},
        _plan(recompute=SELECTIVE, recompute_modules=module_mask(["layernorm"])),
        _plan(recompute=SELECTIVE, recompute_modules=module_mask(["core_attn"]))),
    "bridge_ep_overlap_mtp": (
        "deepseek-v3", MOE_SETUP | {"overlap_moe_expert_parallel_comm": True},
        _plan(tp=1, pp=1, dp=64, ep=64, sequence_parallel=False),
        _plan(tp=1, pp=2, dp=32, ep=32, vpp=1, sequence_parallel=False)),
    "bridge_ep_overlap_cuda_graphs": (
        QWEN_MOE, MOE_SETUP | {"overlap_moe_expert_parallel_comm": True, "cuda_graph_scope": ("full_iteration",),
                               "moe_pad_to_capacity": True},
        _plan(**MOE), None),
    "bridge_ep_overlap_moe_recompute": (
        QWEN_MOE, MOE_SETUP | {"overlap_moe_expert_parallel_comm": True},
        _plan(**MOE, recompute=SELECTIVE, recompute_modules=module_mask(["moe"])),
        _plan(**MOE, recompute=SELECTIVE, recompute_modules=module_mask(["moe_act"]))),
    "bridge_flex_dispatcher_needs_tp_ep": (
        QWEN_MOE, MOE_SETUP | {"moe_token_dispatcher": "deepep"}, _plan(**MOE | {"ep": 1}), _plan(**MOE)),
    "bridge_deepep_no_pad_to_capacity": (
        QWEN_MOE, MOE_SETUP | {"moe_token_dispatcher": "deepep", "moe_pad_to_capacity": True}, _plan(**MOE), None),
    "bridge_moe_bias_needs_etp1": (
        "gpt-oss-120b", MOE_SETUP, _plan(tp=2, dp=4, ep=4, etp=2, sequence_parallel=True),
        _plan(tp=2, dp=4, ep=4, etp=1, sequence_parallel=True)),
    "bridge_tp_comm_overlap_needs_sequence_parallel": (
        "llama3-8b", DENSE_SETUP | {"tp_comm_overlap": True}, _plan(sequence_parallel=False), _plan()),
    "bridge_no_fp8_dispatch": (QWEN_MOE, MOE_SETUP | {"moe_dispatch_fp8": True}, _plan(**MOE), None),
    "bridge_no_alibi": (ALIBI, DENSE_SETUP, _plan(), None),
    "bridge_bf16_layers_within_stage": (
        "llama3-8b", DENSE_SETUP | {"precision": "fp8", "fp8_recipe": "tensorwise", "num_layers_at_end_in_bf16": 9},
        _plan(pp=4, dp=1, zero_stage=0), _plan(pp=2, dp=2)),
    "bridge_fsdp_hsdp_dense_only": (QWEN_MOE, MOE_SETUP, _plan(**MOE | {"ep": 4}, zero_stage=3, dp_replicate=2),
                                    _plan(**MOE | {"ep": 4}, zero_stage=1, dp_replicate=2)),
}


def rule_example(rule: str, which: int):
    """(model, training, plan, cost options) of a rule's refused (which=2) or accepted (which=3) example."""
    example = RULE_EXAMPLES[rule]
    name, changes = example[0] if isinstance(example[0], tuple) else (example[0], {})
    model = dataclasses.replace(load_model(name).spec, **changes)
    options = example[4] if len(example) > 4 else {}
    return model, build_training(dict(example[1]), model=model), example[which], options


def _broken(model, training, plan, options) -> dict[str, bool]:
    plans = PlanArrays.from_columns({k: [v] for k, v in plan.items()})
    return {name: bool(mask[0]) for name, mask in framework_violations("megatron-bridge", model, training,
                                                                         plans, **options).items()}


def test_every_rule_has_an_example():
    assert set(RULE_EXAMPLES) == set(framework_rules("megatron-bridge"))


@pytest.mark.parametrize("rule", sorted(RULE_EXAMPLES))
def test_rule_refuses_its_example(rule):
    model, training, plan, options = rule_example(rule, 2)
    generic = plan_violations(model, training, PlanArrays.from_columns({k: [v] for k, v in plan.items()}),
                              allow_uneven=True)
    assert not any(mask[0] for mask in generic.values()), "the example must break the Bridge rule only"
    broken = _broken(model, training, plan, options)
    assert broken[rule]
    if RULE_EXAMPLES[rule][3] is not None:
        model, training, neighbour, options = rule_example(rule, 3)
        assert not any(_broken(model, training, neighbour, options).values())


def test_rules_are_vectorised():
    model, training, refused, _ = rule_example("bridge_fp8_delayed_no_norm_or_moe_act_recompute", 2)
    _, _, accepted, _ = rule_example("bridge_fp8_delayed_no_norm_or_moe_act_recompute", 3)
    plans = PlanArrays.from_columns({k: [refused[k], accepted[k], refused[k]] for k in refused})
    rule = "bridge_fp8_delayed_no_norm_or_moe_act_recompute"
    mask = framework_violations("megatron-bridge", model, training, plans)[rule]
    assert isinstance(mask, np.ndarray) and mask.tolist() == [True, False, True]
