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


@pytest.fixture(autouse=True, scope="session")
def terminal_sigint():
    """SIGINT as a terminal's Ctrl-C finds it: Python's KeyboardInterrupt handler here, the default action
    in the processes the tests start (they install Python's handler in turn).

    A suite started as a background job of a shell without job control (``pytest ... &`` in a script)
    inherits SIGINT ignored: POSIX shells ignore it for asynchronous commands, Python keeps an ignored
    SIGINT ignored, and so does every process started from it. That is right for the tool (a Ctrl-C at
    the terminal is not meant for a background job; SIGTERM still stops a sweep resumably), but the
    interrupt tests would then send signals nobody receives and see searches and sweeps finish as if no
    Ctrl-C had come."""
    import signal

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
