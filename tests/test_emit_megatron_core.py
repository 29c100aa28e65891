"""The Megatron-Core 0.16.1 checks both Megatron emitters share (:mod:`optimizer.emit.megatron_core`).

* Both frameworks' rule tables are the shared table under their prefix, plus their own rules, and their
  ``violations`` agree on every shared rule over the whole conformance grid.
* :data:`SOURCE_CASES`: the plans on which the two emitters' predicates used to disagree, with what
  ``TransformerConfig.__post_init__`` decides; the conformance tests run each through Megatron-LM and
  Megatron-Bridge (``test_core_source_cases``) to show the framework decides the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from cost_model.model_loader import build_training, load_model
from cost_model.plan import FULL, NONE, SELECTIVE, PlanArrays, module_mask
from optimizer.emit import build_knobs, megatron_bridge, megatron_lm
from optimizer.emit import megatron_core as core
from tests.conformance.plan_grid import conformance_cases

PLAN = dict(tp=2, pp=1, dp=4, cp=1, ep=1, etp=1, vpp=1, micro_batch=1, recompute=NONE, recompute_num_layers=-1,
            recompute_modules=module_mask(["core_attn"]), sequence_parallel=True, zero_stage=1,
            optimizer_offload=False, activation_offload_layers=0)
MOE_PLAN = dict(PLAN, tp=1, dp=8, ep=8, sequence_parallel=False)
SETUP = {"seq_length": 4096, "global_batch_size": 256}
PADDED = dict(SETUP, moe_pad_to_capacity=True)

SOURCE_CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any], str | None, str | None]] = {
    # name: (model preset, training, plan, shared rule refusing it or None, TransformerConfig's words)
    "full_recompute_with_full_iteration_and_attn": (
        "llama3-8b", dict(SETUP, cuda_graph_scope=("full_iteration", "attn")), dict(PLAN, recompute=FULL),
        "cuda_graphs_full_recompute_needs_full_iteration",
        "full recompute is only supported with full iteration CUDA graph"),
    "full_recompute_with_full_iteration_alone": (
        "llama3-8b", dict(SETUP, cuda_graph_scope=("full_iteration",)), dict(PLAN, recompute=FULL), None, None),
    "local_graph_pairs_moe_preprocess_with_moe_router": (
        "qwen3-30b-a3b", dict(PADDED, cuda_graph_scope=("full_iteration", "moe_preprocess")), MOE_PLAN, None, None),
    "local_graph_moe_preprocess_brings_moe_router_next_to_moe": (
        "qwen3-30b-a3b", dict(PADDED, cuda_graph_scope=("full_iteration", "moe", "moe_preprocess")), MOE_PLAN,
        "cuda_graph_scope_valid", "must not contain both moe and moe_router"),
    "moe_graph_needs_padded_experts": (
        "qwen3-30b-a3b", dict(SETUP, cuda_graph_scope=("attn", "moe")), MOE_PLAN,
        "cuda_graph_scope_valid", "moe cuda graph is only supported with drop-padding MoE"),
    "moe_graph_with_padded_experts": (
        "qwen3-30b-a3b", dict(PADDED, cuda_graph_scope=("attn", "moe")), MOE_PLAN, None, None),
}
"""Plans where Megatron-LM's and Megatron-Bridge's predicates used to differ, with megatron-core's verdict."""


def source_case(name: str):
    """(model, training, plan) of one of :data:`SOURCE_CASES`. The scope is set past the loader, whose own
    check (``graph_scope_conflict``) already refuses a moe graph over dropless experts: the framework rules
    must hold without it."""
    preset, training, plan, _, _ = SOURCE_CASES[name]
    model = load_model(preset).spec
    scope = training.get("cuda_graph_scope", ())
    setup = build_training({k: v for k, v in training.items() if k != "cuda_graph_scope"}, model=model)
    return model, setup.with_changes(cuda_graph_scope=scope), plan


def _shared_flags(model, training, plan) -> set[str]:
    plans = PlanArrays.from_records([plan])
    return {name for name, mask in core.violations(model, training, plans).items() if mask[0]}


@pytest.mark.parametrize("name", sorted(SOURCE_CASES))
def test_source_cases(name):
    model, training, plan = source_case(name)
    rule = SOURCE_CASES[name][3]
    assert _shared_flags(model, training, plan) == ({rule} if rule else set())


def test_rule_tables_are_the_shared_table_under_each_prefix():
    assert {k: v for k, v in megatron_lm.RULES.items() if k not in megatron_lm.OWN_RULES} == \
        core.prefixed("megatron_", core.RULES)
    assert {k: v for k, v in megatron_bridge.RULES.items() if k not in megatron_bridge.OWN_RULES} == \
        core.prefixed("bridge_", core.RULES)
    assert all(name.startswith("megatron_") for name in megatron_lm.OWN_RULES)
    assert all(name.startswith("bridge_") for name in megatron_bridge.OWN_RULES)
    assert not {name.removeprefix("megatron_") for name in megatron_lm.OWN_RULES} & set(core.RULES)
    assert not {name.removeprefix("bridge_") for name in megatron_bridge.OWN_RULES} & set(core.RULES)


def _cases_by_setup():
    """The grid's Megatron-LM cases grouped by (model, training, options), each group's plans as arrays."""
    groups: dict[tuple, list] = {}
    for case in conformance_cases("megatron"):
        groups.setdefault((case.model, case.training, case.cp_comm_type, case.rank_order), []).append(case.plan)
    return groups


def test_both_frameworks_decide_the_shared_rules_alike():
    refused = 0
    for (model, training, cp_comm_type, rank_order), plans in _cases_by_setup().items():
        # Each grid plan, and its neighbours with the recompute and offload knobs the rules look at.
        variants = [dict(p, **change) for p in plans for change in (
            {}, {"recompute": FULL}, {"recompute": SELECTIVE, "recompute_modules": module_mask(["moe", "layernorm"])},
            {"activation_offload_layers": 2}, {"zero_stage": 0, "optimizer_offload": True})]
        arrays = PlanArrays.from_records(variants)
        options = dict(cp_comm_type=cp_comm_type, rank_order=rank_order)
        lm = megatron_lm.violations(model, training, arrays, **options)
        bridge = megatron_bridge.violations(model, training, arrays, **options)
        for rule in core.RULES:
            assert np.array_equal(lm["megatron_" + rule], bridge["bridge_" + rule]), rule
            refused += int(lm["megatron_" + rule].sum())
    assert refused > 0  # the neighbours do break shared rules: the comparison is not vacuous


def test_launches_write_the_shared_translations():
    model = load_model("qwen3-30b-a3b").spec
    training = build_training(dict(PADDED, moe_token_dispatcher="deepep", cuda_graph_scope=("full_iteration",)),
                              model=model)
    plan = dict(MOE_PLAN, recompute=SELECTIVE, recompute_modules=module_mask(["moe_act", "layernorm"]))
    knobs = build_knobs(plan, model, training, rank_order="tp-cp-ep-pp-dp")
    flags = megatron_lm.plan_arguments(knobs)
    assert "--use-tp-pp-dp-mapping" in flags
    assert {"--moe-token-dispatcher-type flex", "--moe-flex-dispatcher-backend deepep", "--moe-grouped-gemm",
            "--moe-pad-expert-input-to-capacity", "--cuda-graph-impl local",
            "--recompute-granularity selective",
            "--recompute-modules " + " ".join(knobs.recompute_modules)} <= set(flags)
    assert set(knobs.recompute_modules) == {"moe_act", "layernorm"}
    overrides = megatron_bridge.override_map(knobs)
    assert overrides["dist.use_tp_pp_dp_mapping"] is True
    assert overrides["model.cuda_graph_impl"] == "local"
    assert (overrides["model.moe_token_dispatcher_type"], overrides["model.moe_flex_dispatcher_backend"]) == (
        "flex", "deepep")
    assert overrides["model.recompute_modules"] == list(knobs.recompute_modules)
    assert overrides["model.recompute_method"] is None


def test_cuda_graph_impl():
    model = load_model("llama3-8b").spec

    def impl(*scope):
        return core.cuda_graph_impl(build_training(dict(SETUP, cuda_graph_scope=scope), model=model))
    assert (impl(), impl("attn"), impl("full_iteration")) == ("none", "transformer_engine", "local")


def test_dense_model_refuses_moe_scopes():
    model = dataclasses.replace(load_model("llama3-8b").spec)
    for scope in (("moe_router",), ("moe_preprocess",), ("full_iteration", "moe_preprocess")):
        training = build_training(dict(SETUP, cuda_graph_scope=scope), model=model)
        assert not core.graph_scope_valid(model, training), scope
