"""The search finds Megatron's embedding/loss-accounted pipeline split (issue 14 item 6): Llama 3.1 405B's 126
layers at PP16 VP8 (126 + 2 = 128 = 16 stages x 8 chunks), the layout Megatron-Bridge runs on GB200, was
refused as ``layers_split_over_stages_and_chunks`` because the first and last stages' 7 layers do not fill
8 chunks; with the embedding and the loss each a chunk of their own they do."""

from __future__ import annotations

import pytest

from cost_model.model_loader import build_training, layered_training, load_model
from hardware.loader import load_cluster
from optimizer.emit import build_knobs
from optimizer.search import Scenario, search
from optimizer.search_options import SearchOptions


def _scenario(cluster: str, training: dict, **options) -> Scenario:
    model_input = load_model("llama3-405b")
    spec = model_input.spec
    return Scenario(model=spec, training=build_training(layered_training(model_input.training_overrides, training),
                                                        model=spec),
                    cluster=load_cluster(cluster), options=SearchOptions(**options))


@pytest.mark.filterwarnings("ignore:preset gb200x256")
@pytest.mark.parametrize("cluster,training,tp,framework", [
    ("h100x1024", {"seq_length": 8192, "global_batch_size": 1536}, 8, "megatron"),
    ("h100x1024", {"seq_length": 8192, "global_batch_size": 1536}, 8, "megatron-bridge"),
    ("gb200x256", {"seq_length": 8192, "global_batch_size": 1536, "precision": "fp8"}, 4, "megatron-bridge"),
])
def test_pp16_vp8_plans_for_llama3_405b(cluster, training, tp, framework):
    result = search(_scenario(cluster, training, tp_values=(tp,), pp_values=(16,), vpp_values=(8,),
                              framework=framework))
    ranked = result.ranked
    assert len(ranked) > 0
    cols = ranked.plans.to_columns()
    assert set(cols["pp"].tolist()) == {16} and set(cols["vpp"].tolist()) == {8} and set(cols["tp"].tolist()) == {tp}
    best = {name: int(values[0]) for name, values in cols.items()}
    knobs = build_knobs(best, result.scenario.model, result.scenario.training)
    assert knobs.stage_layers == (7,) + (8,) * 14 + (7,)  # 126 layers
    assert knobs.stage_chunks[0] == (0,) + (1,) * 7 and knobs.stage_chunks[-1] == (1,) * 7 + (0,)
    assert knobs.accounted_ends == (True, True)


def test_free_search_ranks_pp16_vp8_among_its_plans():
    """Without pins the layout is a candidate like any other (it is no longer filtered out before pricing)."""
    ranked = search(_scenario("h100x1024", {"seq_length": 8192, "global_batch_size": 1536}, top_k=100_000,
                              tp_values=(8,), pp_values=(16,))).ranked
    cols = ranked.plans.to_columns()
    assert 8 in set(cols["vpp"].tolist())
