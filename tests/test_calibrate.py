"""The FP8 GEMM efficiency in the presets is what the documented calibration produces, and it predicts
the held-out rows."""

from __future__ import annotations

import pytest

from hardware.loader import load_cluster
from optimizer.calibrate import CALIBRATION_ROWS, calibrate


@pytest.fixture(scope="module")
def results():
    return calibrate()


def test_presets_hold_the_calibrated_values(results):
    assert {(r.gpu, r.precision) for r in results} == set(CALIBRATION_ROWS)
    for result in results:
        preset = load_cluster(result.gpu).gpu
        assert getattr(preset, result.parameter) == pytest.approx(result.value, abs=1e-3)
        for row in result.calibration:
            assert abs(row.tflops_error) < 0.01


def test_held_out_dense_fp8_runs_are_predicted_within_20_percent(results):
    held = [row for result in results if result.precision == "fp8" for row in result.held_out if "llama" in row.id]
    assert len(held) >= 5
    for row in held:
        assert abs(row.tflops_error) < 0.20, row.id
    errors = sorted(abs(row.tflops_error) for row in held)
    assert errors[len(errors) // 2] < 0.10  # median
