"""PlanArrays: building plans from records and columns, and the derived counts."""

import numpy as np
import pytest

from cost_model.plan import FULL, NONE, SELECTIVE, PlanArrays


def test_records_with_different_keys_keep_every_knob():
    # Regression: only the first record's keys used to become columns, silently dropping the others.
    plans = PlanArrays.from_records([dict(tp=1), dict(tp=8, sequence_parallel=True, recompute="full"),
                                     dict(tp=4, pp=2, zero_stage=3)])
    np.testing.assert_array_equal(plans.sequence_parallel, [False, True, False])
    np.testing.assert_array_equal(plans.recompute, [NONE, FULL, NONE])
    np.testing.assert_array_equal(plans.pp, [1, 1, 2])
    np.testing.assert_array_equal(plans.zero_stage, [0, 0, 3])
    np.testing.assert_array_equal(plans.recompute_num_layers, [-1, -1, -1])


def test_defaults_and_recompute_names():
    plans = PlanArrays.from_columns({"tp": [2, 4], "recompute": ["selective", 2]})
    assert len(plans) == 2
    np.testing.assert_array_equal(plans.recompute, [SELECTIVE, FULL])
    for name, value in (("pp", 1), ("dp", 1), ("cp", 1), ("ep", 1), ("etp", 1), ("vpp", 1), ("micro_batch", 1)):
        np.testing.assert_array_equal(getattr(plans, name), [value, value])


def test_derived_counts():
    plans = PlanArrays.from_records([dict(tp=8, pp=16, dp=64, cp=1, micro_batch=1),
                                     dict(tp=2, pp=1, dp=32, cp=2, micro_batch=2, ep=8, etp=1)])
    np.testing.assert_array_equal(plans.num_gpus, [8192, 128])
    # Llama 3 405B: 16M tokens of 8192 = 2048 sequences over 64 replicas -> 32 micro-batches
    # and 2048 / (32 replicas x 2 sequences) = 32 as well
    np.testing.assert_array_equal(plans.num_microbatches(2048), [32, 32])
    np.testing.assert_array_equal(plans.num_microbatches(1000), [15, 15])   # floor division
    # Expert data parallel: tp x cp x dp / (etp x ep)
    np.testing.assert_array_equal(plans.expert_data_parallel, [512, 16])


def test_take_and_concatenate_round_trip():
    plans = PlanArrays.from_records([dict(tp=t, pp=p) for t in (1, 2, 4) for p in (1, 2)])
    again = PlanArrays.concatenate([plans.take(slice(0, 2)), plans.take(slice(2, None))])
    for name, column in plans.to_columns().items():
        np.testing.assert_array_equal(column, getattr(again, name))


def test_mismatched_columns_are_rejected():
    with pytest.raises(ValueError):
        PlanArrays(tp=[1, 2], pp=[1], dp=[1, 1], cp=[1, 1], ep=[1, 1], etp=[1, 1], vpp=[1, 1],
                   micro_batch=[1, 1], recompute=[0, 0], recompute_num_layers=[-1, -1], recompute_modules=[1, 1],
                   sequence_parallel=[False, False], zero_stage=[0, 0], optimizer_offload=[False, False],
                   activation_offload_layers=[0, 0])
