"""The search ranks only plans the chosen launcher accepts: ``--framework`` (default Megatron-LM) adds
that framework's start-up rules (:mod:`optimizer.emit`) to every expanded plan, and a search they empty
names the rule."""

from __future__ import annotations

import numpy as np

from cost_model.model_loader import build_training, load_model
from cost_model.plan import FULL, MODULE_BIT, SELECTIVE
from hardware.loader import load_cluster
from optimizer.emit import framework_violations
from optimizer.explain import explain_no_fit
from optimizer.search import Scenario, search
from optimizer.search_options import SearchOptions
from tests.test_cli import run


def _search(model: str, cluster: str, settings: dict, **options):
    spec = load_model(model).spec
    training = build_training(settings, model=spec)
    return search(Scenario(spec, training, load_cluster(cluster), SearchOptions(**options)), keep_timed=True)


def test_no_timed_plan_breaks_the_frameworks_rules():
    # FP8 delayed scaling refuses layernorm/moe_act recompute in Megatron-Core, and torchtitan has
    # neither ZeRO-1 nor Megatron's selective modules: none of those plans is even priced for time.
    settings = {"seq_length": 4096, "global_batch_size": 256, "precision": "fp8", "fp8_recipe": "delayed"}
    bf16 = {"seq_length": 4096, "global_batch_size": 256}  # torchtitan runs no delayed-scaling FP8 at all
    for framework, setup in (("megatron", settings), ("megatron-bridge", settings), ("torchtitan", bf16)):
        result = _search("llama3-8b", "h100x16", setup, framework=framework, top_k=5)
        assert result.found, framework
        spec, training = result.scenario.model, result.scenario.training
        broken = framework_violations(framework, spec, training, result.timed.plans)
        assert not any(mask.any() for mask in broken.values()), framework
    plans = _search("llama3-8b", "h100x16", settings, framework="megatron").timed.plans
    assert not _recomputes_norms(plans).any()
    plans = _search("llama3-8b", "h100x16", bf16, framework="torchtitan").timed.plans
    assert 1 not in plans.zero_stage and SELECTIVE not in plans.recompute


def _recomputes_norms(plans) -> np.ndarray:
    return (plans.recompute == SELECTIVE) & ((plans.recompute_modules & MODULE_BIT["layernorm"]) != 0)


def test_same_search_without_the_rule_ranks_such_plans():
    # The rule is what removes them: with BF16 (no delayed scaling) Megatron's search does time layernorm
    # recompute plans (the test above cannot pass by the grid never holding them).
    result = _search("llama3-8b", "h100x16", {"seq_length": 4096, "global_batch_size": 256}, framework="megatron")
    assert _recomputes_norms(result.timed.plans).any()


def test_full_recompute_is_refused_under_per_layer_graphs():
    settings = {"seq_length": 4096, "global_batch_size": 512, "cuda_graph_scope": ["attn"]}
    result = _search("llama3-70b", "h100x64", settings, framework="megatron", recompute_modes=("none", "full"))
    assert result.found
    assert not (result.timed.plans.recompute == FULL).any()


def test_a_search_the_framework_empties_names_its_rule():
    # GPT-3's learned position table has 2048 rows: Megatron-LM refuses a 4096-token sequence.
    result = _search("gpt3-175b", "h100x256", {"seq_length": 4096, "global_batch_size": 1024})
    assert not result.found
    explanation = explain_no_fit(result)
    assert explanation.binding == "megatron_learned_positions_cover_sequence"
    assert explanation.message.startswith("megatron refuses every plan")
    # torchtitan ships no Qwen2.5 config: every plan is refused for that reason.
    result = _search("qwen2.5-7b", "h100x64", {"seq_length": 4096, "global_batch_size": 256}, framework="torchtitan")
    assert not result.found and explain_no_fit(result).binding == "torchtitan_model_config"


def test_framework_and_emit_must_agree(capsys):
    code, _, err = run(capsys, "h100x16", "llama3-8b", "--emit", "torchtitan", "--framework", "megatron")
    assert code == 2 and "--framework" in err and "differs from --emit torchtitan" in err
    code, out, _ = run(capsys, "h100x16", "llama3-8b", "--emit", "torchtitan", "--top", "1", "--format", "json")
    assert code == 0 and __import__("json").loads(out)["emit"][0]["framework"] == "torchtitan"
