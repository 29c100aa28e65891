"""A Ctrl-C or an early solver stop never turns into data.

CP-SAT catches SIGINT by default and then returns what it has enumerated so far with a status that a
caller who does not check it takes for complete (and it leaves SIGINT at the kernel default). These
tests interrupt the enumeration at a known point, from inside the solver's own solution callback, so
they do not depend on timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cost_model.model_loader import build_training, load_model
from hardware.loader import load_cluster
from optimizer import layout_model
from optimizer.layout_model import LayoutModel, SearchIncomplete
from optimizer.search import Scenario, search
from optimizer.search_options import SearchOptions


def _layout_model() -> LayoutModel:
    model = load_model("deepseek-v3")
    training = build_training({"seq_length": 4096, "global_batch_size": 8192}, model=model.spec)
    cluster = load_cluster("h100x2048")
    counts = (1024, 2048)
    return LayoutModel(model.spec, training, cluster, SearchOptions(gpu_counts=counts), counts)


def test_full_enumeration_is_proved_and_repeatable():
    first, second = _layout_model().enumerate_layouts(), _layout_model().enumerate_layouts()
    assert len(first) > 500  # big enough that the interrupt below lands in the middle
    assert (first == second).all()


def test_sigint_inside_the_enumeration_raises_and_keeps_the_python_handler(monkeypatch):
    seen = []
    original = layout_model._Collector.on_solution_callback

    def interrupt_after_100(self):
        original(self)
        seen.append(1)
        if len(seen) == 100:
            os.kill(os.getpid(), signal.SIGINT)  # what a terminal's Ctrl-C delivers

    monkeypatch.setattr(layout_model._Collector, "on_solution_callback", interrupt_after_100)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        _layout_model().enumerate_layouts()
    assert 100 <= len(seen) < 500  # it stopped near the interrupt instead of finishing quietly
    # CP-SAT's own handler would have left SIGINT at the kernel default: a later Ctrl-C kills uncleanly
    assert signal.getsignal(signal.SIGINT) is handler


def test_a_solve_stopped_by_a_limit_is_an_error_not_a_partial_answer(monkeypatch):
    original = LayoutModel._solver

    def hurried(self):
        solver = original(self)
        solver.parameters.max_time_in_seconds = 1e-9
        return solver

    monkeypatch.setattr(LayoutModel, "_solver", hurried)
    with pytest.raises(SearchIncomplete, match="no result was kept"):
        _layout_model().enumerate_layouts()
    model = load_model("llama3-8b")
    scenario = Scenario(model=model.spec, training=build_training({"seq_length": 8192, "global_batch_size": 512},
                                                                  model=model.spec),
                        cluster=load_cluster("h100x64"))
    with pytest.raises(SearchIncomplete):
        search(scenario)


def test_ctrl_c_during_a_search_exits_130_and_prints_no_plan():
    command = [sys.executable, "-c", "from optimizer.entry import main; main()", "h100x2048", "deepseek-v3",
               "--seq-len", "4096", "--global-batch", "8192", "--gpus", "256-2048"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # wherever it is by then (importing, enumerating, pricing), the outcome is the same
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    if process.returncode == 0:  # finished before the signal on a very fast machine: a complete answer
        assert "Top" in out
        return
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "plan-search: aborted"
    assert "Traceback" not in err and "Top" not in out
