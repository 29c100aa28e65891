"""Fixtures shared by test modules."""

import pytest


@pytest.fixture
def serving_priors(monkeypatch):
    """Serving options at their documented priors, whatever ``plan-search calibrate --serving --write``
    stored: the hand-derived serving examples check the physics at known constants, not at a fit that moves
    with every refit (the calibration's own tests check what the stored fit does)."""
    import cost_model.serving.options as options

    stored = options.serving_fitted_parameters
    monkeypatch.setattr(options, "serving_fitted_parameters",
                        lambda path=options.SERVING_FITTED_FILE: {} if path == options.SERVING_FITTED_FILE else stored(path))
