"""When nothing fits, the search says which named rule binds and what would make it fit."""

from __future__ import annotations

from cost_model.model_loader import build_training, model_input_from_mapping, load_model
from hardware.loader import load_cluster
from optimizer.explain import explain_no_fit
from optimizer.layout_model import LayoutModel
from optimizer.search import Scenario, search
from optimizer.search_options import SearchOptions

# 6 heads allow tp in {1, 2, 3, 6}; inside an 8-GPU node only {1, 2}. 3 layers allow pp in {1, 2 (uneven), 3}.
# A 2-token sequence forbids CP, and a global batch of 1 forces dp = 1: at most 2 x 1 x 2 = 4 of 16 GPUs.
IMPOSSIBLE = {"name": "impossible", "model_type": "llama", "num_hidden_layers": 3, "hidden_size": 384,
              "intermediate_size": 1024, "num_attention_heads": 6, "num_key_value_heads": 6,
              "vocab_size": 1000, "tie_word_embeddings": False}


def test_layout_conflict_names_the_rules():
    spec = model_input_from_mapping(IMPOSSIBLE).spec
    training = build_training({"seq_length": 2, "global_batch_size": 1})
    cluster = load_cluster("h100x16")
    result = search(Scenario(spec, training, cluster, SearchOptions()))
    assert result.num_layouts == 0 and not result.found
    explanation = explain_no_fit(result)
    assert "world_size" in explanation.message
    core = LayoutModel(spec, training, cluster, SearchOptions(), (16,)).conflicting_rules()
    assert "world_size" in core and "global_batch_divisible" in core
    # The core is minimal: these rules alone admit no layout, and without any one of them some exist.
    assert len(LayoutModel(spec, training, cluster, SearchOptions(), (16,)).enumerate_layouts(set(core))) == 0
    for rule in core:
        rows = LayoutModel(spec, training, cluster, SearchOptions(), (16,)).enumerate_layouts(set(core) - {rule})
        assert len(rows) > 0, rule


def test_broken_rules_of_a_given_layout():
    spec = load_model("llama3-70b").spec
    training = build_training({"seq_length": 8192, "global_batch_size": 128})
    model = LayoutModel(spec, training, load_cluster("h100x64"), SearchOptions(), (64,))
    assert model.broken_rules(dict(num_gpus=64, tp=8, cp=1, pp=2, dp=4, ep=1, etp=1)) == []
    broken = model.broken_rules(dict(num_gpus=64, tp=16, cp=1, pp=1, dp=4, ep=1, etp=1))
    assert broken == ["tp_inside_scaleup_domain"]
    broken = model.broken_rules(dict(num_gpus=64, tp=8, cp=1, pp=1, dp=3, ep=1, etp=1))
    assert broken == ["dp=3 is not a divisor of the GPU count or is beyond the search bounds"]


def test_memory_explanation_quantifies_the_gap_and_finds_a_fix():
    spec = load_model("llama3-70b").spec
    training = build_training({"seq_length": 16384, "global_batch_size": 64})
    options = SearchOptions(recompute_modes=("none",), max_cp=1)
    result = search(Scenario(spec, training, load_cluster("h100x32"), options))
    assert not result.found
    explanation = explain_no_fit(result)
    assert explanation.binding == "memory_per_gpu"
    assert explanation.needed_gib > explanation.available_gib
    assert abs(explanation.available_gib - 79.1) < 1e-9  # no headroom by default (MEMORY_HEADROOM)
    assert any(s.startswith("enable full recompute") for s in explanation.suggestions)
