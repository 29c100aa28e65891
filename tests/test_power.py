"""Power and energy per plan (cost_model.power): hand-derived cases, the evaluate wiring, and the
property that waiting never raises the average power."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cost_model.evaluate import TIME_PARTS, evaluate
from cost_model.model_loader import load_model
from cost_model.plan import PlanArrays
from cost_model.power import STATE_OF_PART, plan_power, state_seconds
from cost_model.training_spec import TrainingSpec
from hardware.errors import InputError
from hardware.loader import load_cluster

H100 = load_cluster("h100x16384")


def _parts(**seconds: float) -> dict[str, np.ndarray]:
    return {part: np.array([seconds.get(part, 0.0)]) for part in TIME_PARTS}


def test_every_part_of_the_step_has_a_power_state():
    assert set(STATE_OF_PART) == set(TIME_PARTS)
    with pytest.raises(KeyError, match="without a power state"):
        state_seconds({"checkpoint": np.array([1.0])})


def test_hand_derived_energy_of_a_known_breakdown():
    """A 10 s step: 6 s compute + 1 s recompute (compute state), 1.5 s exposed TP and 0.5 s DP traffic
    (communication), 1 s bubble (idle), on 16,384 H100 (TDP 700 W; all-in 1,275 W per GPU, so the rest
    of the node is 575 W), PUE 1.2:

        GPU   = 700 x (1.0 x 7 + 0.3 x 2 + 0.2 x 1) / 10 = 700 x 0.78 = 546 W
        MW    = 16,384 x (546 + 575) x 1.2 / 1e6 = 22.04 MW
        peak  = 16,384 x (700 + 575) x 1.2 / 1e6 = 25.07 MW
    """
    cluster = H100.with_overrides({"economics.pue": 1.2})
    parts = _parts(compute=6.0, recompute=1.0, tp_comm=1.5, dp_comm=0.5, pp_bubble=1.0)
    power = plan_power(cluster, parts, np.array([10.0]), np.array([16384]))
    assert power.gpu_w[0] == pytest.approx(546.0)
    assert power.host_w == pytest.approx(575.0)
    assert power.power_mw[0] == pytest.approx(16384 * 1121 * 1.2 / 1e6)
    assert power.power_mw[0] == pytest.approx(22.04, abs=0.01)
    assert power.peak_power_mw[0] == pytest.approx(16384 * 1275 * 1.2 / 1e6)


def test_a_gpu_without_tdp_draws_its_all_in_figure_flat():
    cluster = H100.with_overrides({"gpu.tdp_w": None})
    power = plan_power(cluster, _parts(compute=1.0, pp_bubble=1.0), np.array([2.0]), np.array([8]))
    assert power.gpu_w[0] == 1275 and power.power_mw[0] == pytest.approx(8 * 1275 / 1e6)


def test_evaluate_prices_energy_from_the_step_breakdown():
    """Llama 3 405B in its published layout (TP8 PP16 DP128, Llama 3 paper table 4) on 16,384 H100 for
    15T tokens: the energy is the average power from the plan's own breakdown times the time to train,
    and it is below nameplate (all-in 1,275 W per GPU for every hour), since bubbles and exposed
    communication draw less than compute."""
    model = load_model("llama3-405b").spec
    training = TrainingSpec(seq_length=8192, global_batch_size=2048, train_tokens=15e12)
    plans = PlanArrays.from_records([dict(tp=8, pp=16, dp=128, vpp=v, micro_batch=1, sequence_parallel=True,
                                          recompute="none", zero_stage=1) for v in (1, 8)])
    metrics = evaluate(model, training, H100, plans)
    parts = metrics.step_time_parts_s
    compute = sum(parts[p] for p in ("compute", "recompute", "overlap_contention", "optimizer"))
    comm = sum(parts[p] for p in ("tp_comm", "cp_comm", "ep_comm", "pp_comm", "dp_comm", "offload"))
    idle = parts["pp_bubble"] + parts["host_issue"]
    gpu_w = 700 * (1.0 * compute + 0.3 * comm + 0.2 * idle) / metrics.step_time_s
    np.testing.assert_allclose(metrics.gpu_power_w, gpu_w, rtol=1e-12)
    energy_mwh = 16384 * (gpu_w + 575) * metrics.time_to_train_s / 3600 / 1e6
    np.testing.assert_allclose(metrics.energy_kwh / 1000, energy_mwh, rtol=1e-12)
    nameplate_mwh = metrics.gpu_hours * 1275 / 1e6
    assert np.all(metrics.energy_kwh / 1000 < nameplate_mwh)
    # the interleaved schedule shrinks the bubble 8x: the GPUs compute a larger share of each step
    assert metrics.gpu_power_w[1] > metrics.gpu_power_w[0]
    assert np.all(metrics.peak_power_mw == pytest.approx(16384 * 1275 / 1e6))
    frame = metrics.to_frame()
    assert {"gpu_power_w", "power_mw", "peak_power_mw"} <= set(frame.columns)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(seconds=st.lists(st.floats(0.0, 100.0), min_size=len(TIME_PARTS), max_size=len(TIME_PARTS)),
       extra_bubble=st.floats(0.0, 100.0), idle=st.floats(0.01, 0.5), comm_above=st.floats(0.0, 0.3),
       compute_above=st.floats(0.0, 0.5))
def test_more_bubble_time_never_raises_the_average_power(seconds, extra_bubble, idle, comm_above, compute_above):
    comm = idle + comm_above
    compute = min(1.0, comm + compute_above)
    cluster = H100.with_overrides({"gpu.power_idle_fraction": idle, "gpu.power_comm_fraction": comm,
                                   "gpu.power_compute_fraction": compute})
    parts = {part: np.array([value]) for part, value in zip(TIME_PARTS, seconds)}
    step = sum(seconds) + 1e-3
    parts["compute"] = parts["compute"] + 1e-3  # a step always computes something
    longer = dict(parts, pp_bubble=parts["pp_bubble"] + extra_bubble)
    before = plan_power(cluster, parts, np.array([step]), np.array([64]))
    after = plan_power(cluster, longer, np.array([step + extra_bubble]), np.array([64]))
    assert after.gpu_w[0] <= before.gpu_w[0] * (1 + 1e-12)
    assert after.power_mw[0] <= before.power_mw[0] * (1 + 1e-12)


def test_power_states_out_of_order_are_an_input_error():
    with pytest.raises(InputError, match="power_idle_fraction.*idle <= comm <= compute"):
        H100.with_overrides({"gpu.power_idle_fraction": 0.5})
