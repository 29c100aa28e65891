"""Pipeline stage split and in-flight activations (cost_model/stages.py), against Megatron-Core 0.16.1 written out.

* The split: Megatron's ``get_num_layers_to_build`` with the embedding and loss accounted as layers
  (``account_for_embedding/loss_in_pipeline_split``) is an uneven split the planner accepts and prices
  with the same layers on every chunk; Llama 3.1 405B at PP16 VP8 (Megatron-Bridge's GB200 layout) is one.
* In flight: the chunk forwards a rank holds at its first backward, from Megatron's schedule table
  (``schedules.get_schedule_table``: groups of pp micro-batches through every chunk) and warm-up count
  (``get_pp_rank_microbatches``: (pp - r - 1) x 2 + (v - 1) x pp, then one forward before the first
  backward), summed over the layers of each held chunk.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from cost_model.model_loader import load_model
from cost_model.plan import PlanArrays
from cost_model.stages import chunk_layers, layers_per_stage, stage_layout, uneven_split_is_valid
from optimizer.plan_rules import split_ok

LLAMA3_405B = load_model("llama3-405b").spec


def megatron_accounted_chunks(num_layers: int, pp: int, vpp: int, embedding: bool, loss: bool) -> list[list[int]] | None:
    """Decoder layers per (rank, chunk) Megatron-Core 0.16.1 builds with the embedding/loss accounted
    (``TransformerConfig.__post_init__`` checks, ``get_num_layers_to_build``), or None where it refuses."""
    units = num_layers + embedding + loss
    if units % pp or (units // pp) % vpp:
        return None
    per_chunk = units // pp // vpp
    chunks = [[per_chunk - (embedding and (r, v) == (0, 0)) - (loss and (r, v) == (pp - 1, vpp - 1))
               for v in range(vpp)] for r in range(pp)]
    return chunks if min(map(min, chunks)) >= 0 else None


def test_llama3_405b_pp16_vp8_is_megatrons_accounted_split():
    """126 + 2 = 128 = 16 x 8: one layer a chunk, rank 0's chunk 0 the embedding alone, rank 15's chunk 7 the
    loss alone: 7 + 14 x 8 + 7, what the planner prices."""
    pp, vpp = np.array([16]), np.array([8])
    assert uneven_split_is_valid(126, pp, vpp)[0] and split_ok(126, pp, vpp, allow_uneven=True)[0]
    assert not split_ok(126, pp, vpp, allow_uneven=False)[0]
    expected = megatron_accounted_chunks(126, 16, 8, True, True)
    first, k, last = (int(x[0]) for x in layers_per_stage(126, pp))
    assert (first, k, last) == (7, 8, 7)
    assert expected[0] == chunk_layers(first, 8, "first") == [0] + [1] * 7
    assert expected[-1] == chunk_layers(last, 8, "last") == [1] * 7 + [0]
    assert all(row == chunk_layers(k, 8, "first") == [1] * 8 for row in expected[1:-1])


def test_megatrons_accounted_splits_are_accepted_and_priced_chunk_for_chunk():
    """Every split Megatron builds with the embedding (and the loss) accounted, for 8..130 layers, pp 2..16,
    vpp 1..8, with every chunk holding a layer or the embedding/loss, is valid here with the same chunks."""
    checked = 0
    for num_layers, pp, vpp in itertools.product(range(8, 131), range(2, 17), range(1, 9)):
        for embedding, loss in ((True, False), (True, True)):
            chunks = megatron_accounted_chunks(num_layers, pp, vpp, embedding, loss)
            if chunks is None or pp > num_layers:
                continue
            inner = [c for r, row in enumerate(chunks) for v, c in enumerate(row)
                     if (r, v) not in ((0, 0), (pp - 1, vpp - 1))]
            if min(inner, default=1) < 1:
                continue
            assert uneven_split_is_valid(num_layers, np.array([pp]), np.array([vpp]))[0], (num_layers, pp, vpp)
            first, k, last = (int(x[0]) for x in layers_per_stage(num_layers, np.array([pp])))
            assert chunk_layers(first, vpp, "first") == chunks[0]
            assert chunk_layers(last, vpp, "last") == chunks[-1]
            assert all(chunk_layers(k, vpp, "first") == row for row in chunks[1:-1])
            checked += 1
    assert checked > 500


def test_a_chunk_may_be_empty_only_where_the_embedding_or_loss_sits():
    """125 layers on 16 stages of 8 chunks: the first stage is 6 layers, two chunks short, one of which
    would hold nothing at all: refused. 16 layers on 8 stages of 4 chunks: 2 a stage, 2 chunks empty."""
    assert not uneven_split_is_valid(125, np.array([16]), np.array([8]))[0]
    assert not uneven_split_is_valid(16, np.array([8]), np.array([4]))[0]
    assert not uneven_split_is_valid(126, np.array([16]), np.array([16]))[0]  # k = 8 is not 16 chunks


def held_layer_sets(stage_chunks: list[int], pp: int, rank: int, m: int) -> int:
    """Layer x micro-batch sets rank ``rank`` holds at its first backward, by Megatron's schedule table."""
    vpp = len(stage_chunks)
    table = []
    for start in range(0, m, pp):
        group = range(start, m) if start + pp >= m else range(start, start + pp)
        table += [(mb, chunk) for chunk in range(vpp) for mb in group]
    held = min((pp - rank - 1) * 2 + (vpp - 1) * pp + 1, m * vpp)
    return sum(stage_chunks[chunk] for _, chunk in table[:held])


@pytest.mark.parametrize("num_layers,pp,vpp,m", [(126, 16, 8, 32), (126, 16, 8, 192), (126, 8, 8, 16),
                                                 (126, 16, 4, 96), (80, 3, 3, 12), (80, 6, 2, 6), (80, 7, 2, 14),
                                                 (64, 4, 2, 16), (126, 16, 8, 16), (62, 4, 4, 4)])
def test_in_flight_layers_follow_megatrons_schedule_table(num_layers, pp, vpp, m):
    model = dataclasses.replace(LLAMA3_405B, num_layers=num_layers)
    plans = PlanArrays.from_records([dict(tp=8, pp=pp, vpp=vpp)])
    layout = stage_layout(model, plans, np.array([m]))
    first, k, last = (int(x[0]) for x in layers_per_stage(num_layers, np.array([pp])))
    chunks = {0: chunk_layers(first, vpp, "first"), 1: chunk_layers(k, vpp, "first"),
              pp - 1: chunk_layers(last, vpp, "last")}
    expected = [held_layer_sets(chunks[rank], pp, rank, m) for rank in (0, 1, pp - 1)]
    np.testing.assert_array_equal(layout.in_flight_layers[0], expected)


def test_llama3_405b_pp16_vp8_in_flight_by_hand():
    """Rank 0 runs 2 x 15 + 7 x 16 = 142 warm-up forwards and one more: chunk 0 (embedding only) for micro-
    batches 0-15 and 16-30, chunks 1-7 for 0-15: 7 x 16 = 112 layer sets, not 143 x 7/8 = 125 of equal
    chunks. Rank 1: 141 forwards of one layer. Rank 15: 113 forwards, the last the loss-only chunk: 112."""
    plans = PlanArrays.from_records([dict(tp=8, pp=16, vpp=8)])
    layout = stage_layout(LLAMA3_405B, plans, np.array([192]))
    np.testing.assert_array_equal(layout.layers[0], [7, 8, 7])
    np.testing.assert_array_equal(layout.in_flight_layers[0], [112, 141, 112])
    np.testing.assert_allclose(layout.in_flight_microbatches[0], [16, 141 / 8, 16])


def test_even_split_unchanged():
    """Equal chunks: rank r holds (v-1)p + 2(p-r-1) + 1 chunks of L/(pv) layers (Korthikanti et al. 2022)."""
    model = dataclasses.replace(LLAMA3_405B, num_layers=128)
    layout = stage_layout(model, PlanArrays.from_records([dict(tp=8, pp=16, vpp=8)]), np.array([192]))
    np.testing.assert_array_equal(layout.in_flight_layers[0], [143, 141, 113])
