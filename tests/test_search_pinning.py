"""Pinned degrees (``plan-search --tp 8 --pp 4-8 ...``): the search returns only plans with the pinned
values, and exactly the plans the free search ranks, filtered to those values, in the same order."""

from __future__ import annotations

import numpy as np
import pytest

from cost_model.model_loader import build_training, layered_training, load_model
from hardware.loader import load_cluster
from optimizer.explain import explain_no_fit
from optimizer.layout_model import LAYOUT_COLUMNS, LayoutModel
from optimizer.search import Scenario, search
from optimizer.search_options import SearchOptions

PLAN_COLUMNS = ("tp", "pp", "dp", "cp", "ep", "etp", "vpp", "micro_batch", "recompute", "recompute_num_layers",
                "recompute_modules", "sequence_parallel", "zero_stage", "optimizer_offload",
                "activation_offload_layers")


def _scenario(model: str, cluster: str, **options) -> Scenario:
    model_input = load_model(model)
    training = build_training(layered_training(model_input.training_overrides,
                                               {"global_batch_size": 64, "seq_length": 4096}), model=model_input.spec)
    return Scenario(model=model_input.spec, training=training, cluster=load_cluster(cluster),
                    options=SearchOptions(**options))


def _rows(metrics) -> list[tuple]:
    cols = metrics.plans.to_columns()
    return [tuple(int(cols[c][i]) for c in PLAN_COLUMNS) for i in range(len(metrics))]


def _filtered_top(model: str, cluster: str, pins: dict[str, tuple[int, ...]], top_k: int) -> list[tuple]:
    """The free search's ranking (all of it), filtered to the pinned values, cut to top_k."""
    ranked = search(_scenario(model, cluster, top_k=100_000)).ranked
    keep = [row for row in _rows(ranked)
            if all(row[PLAN_COLUMNS.index(name)] in values for name, values in pins.items())]
    return keep[:top_k]


@pytest.mark.parametrize("model,cluster,options,pins", [
    ("llama3-8b", "h100x16", {"tp_values": (2, 4), "pp_values": (2,)}, {"tp": (2, 4), "pp": (2,)}),
    ("llama3-8b", "h100x16", {"dp_values": (4,), "vpp_values": (2,)}, {"dp": (4,), "vpp": (2,)}),
    ("llama3-8b", "h100x16", {"micro_batch_sizes": (2,), "cp_values": (1, 2)}, {"micro_batch": (2,), "cp": (1, 2)}),
    ("mixtral-8x7b", "h100x16", {"ep_values": (4, 8), "etp_values": (1,)}, {"ep": (4, 8), "etp": (1,)}),
])
def test_pinned_search_is_the_free_search_filtered(model, cluster, options, pins):
    top_k = 8
    pinned = search(_scenario(model, cluster, top_k=top_k, **options)).ranked
    rows = _rows(pinned)
    assert rows, "the pinned search found nothing"
    for name, values in pins.items():
        assert {row[PLAN_COLUMNS.index(name)] for row in rows} <= set(values)
    assert rows == _filtered_top(model, cluster, pins, top_k)


def test_pinned_layouts_are_only_the_pinned_values():
    scenario = _scenario("llama3-70b", "h100x64", tp_values=(4, 8), pp_values=(8, 16))
    layouts = LayoutModel(scenario.model, scenario.training, scenario.cluster, scenario.options,
                          scenario.gpu_counts).enumerate_layouts()
    assert len(layouts)
    assert set(layouts[:, LAYOUT_COLUMNS.index("tp")]) <= {4, 8}
    assert set(layouts[:, LAYOUT_COLUMNS.index("pp")]) <= {8, 16}
    free = LayoutModel(scenario.model, scenario.training, scenario.cluster, SearchOptions(),
                       scenario.gpu_counts).enumerate_layouts()
    expected = free[np.isin(free[:, 1], (4, 8)) & np.isin(free[:, 3], (8, 16))]
    assert np.array_equal(layouts, expected)


def test_a_pinned_value_beyond_the_search_bound_is_tried():
    # max_pp bounds the free search; a pin asks for that depth explicitly
    scenario = _scenario("llama3-70b", "h100x64", max_pp=4, pp_values=(8,))
    ranked = search(scenario).ranked
    assert ranked is not None and set(ranked.plans.pp) == {8}


def test_a_pin_that_leaves_no_layout_is_named_as_the_binding_rule():
    # 64 attention heads: tp = 3 divides no GPU count of 64 and no head count
    result = search(_scenario("llama3-70b", "h100x64", tp_values=(3,)))
    assert not result.found and result.num_layouts == 0
    explanation = explain_no_fit(result)
    assert explanation.binding == "tp_pinned"
    assert "pinned with --tp" in explanation.message


def test_pin_values_must_be_positive():
    with pytest.raises(ValueError, match="tp_values"):
        SearchOptions(tp_values=(0,))
