"""Running sweeps: rows per scenario, no-fit and error rows, resume, interruption, backends agree."""

from __future__ import annotations

import pandas as pd
import pytest

import scenarios.runner as runner
from scenarios.runner import run_sweep
from scenarios.store import PartStore
from scenarios.sweep_file import expand, sweep_from_mapping

# 8 scenarios: Llama 3 8B on one and two H100 nodes fits; Llama 3 70B on one or two nodes fits nowhere.
SWEEP = {"name": "unit", "top_k": 2, "axes": {
    "model": ["llama3-8b", "llama3-70b"], "cluster": ["h100x8", "h100x16"], "seq_length": [4096],
    "global_batch_tokens": [1048576, 2097152], "train_tokens": [1e11],
    "overrides": {"economics.price_per_gpu_hour_usd": [2.0]}}}
FITTING = 4  # the llama3-8b scenarios


@pytest.fixture(scope="module")
def sweep():
    return sweep_from_mapping(SWEEP)


@pytest.fixture(scope="module")
def serial_run(sweep, tmp_path_factory):
    return run_sweep(sweep, tmp_path_factory.mktemp("serial"), workers=1, progress=False, csv=True)


def test_table_has_a_row_per_scenario_and_plan(serial_run):
    frame = serial_run.frame
    assert serial_run.scenarios == serial_run.computed == 8 and serial_run.reused == 0
    assert len(frame) == FITTING * 2 + 4  # top 2 plans of each fitting scenario, one row per no-fit scenario
    assert list(frame["scenario_index"]) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7]
    ok = frame[frame["status"] == "ok"]
    assert list(ok["rank"]) == [1, 2] * 4
    best = ok[ok["rank"] == 1].iloc[0]
    assert best["model"] == "llama3-8b" and best["cluster"] == "h100x8" and best["num_gpus"] == 8
    assert best["tp"] * best["pp"] * best["dp"] * best["cp"] == best["plan_num_gpus"] == 8
    # time and cost follow from the throughput, the token budget and the price
    assert best["time_to_train_days"] == pytest.approx(1e11 / best["tokens_per_s"] / 86400, rel=1e-5)
    assert best["cost_usd"] == pytest.approx(best["gpu_hours"] * 2.0, rel=1e-5)
    assert best["gpu_hours"] == pytest.approx(8 * 1e11 / best["tokens_per_s"] / 3600, rel=1e-5)
    assert best["memory_gib"] <= 79.1 * 0.95
    parts = [c for c in frame.columns if c.startswith("memory_breakdown_gib.")]
    assert best[parts].sum() == pytest.approx(best["memory_gib"], rel=1e-4)
    assert set(frame["tool_version"]) == {runner.expand.__globals__["tool_version"]()}
    assert (serial_run.paths[0].name, serial_run.paths[1].name) == ("results.parquet", "results.csv")
    assert pd.read_parquet(serial_run.paths[0]).equals(frame)
    assert (frame["tp"].dtype, frame["tokens_per_s"].dtype, frame["sequence_parallel"].dtype) == (
        "Int64", "float64", "boolean")
    csv = pd.read_csv(serial_run.paths[1])
    assert list(csv.columns) == list(frame.columns) and csv["tokens_per_s"].equals(frame["tokens_per_s"])


def test_scenario_that_fits_nowhere_is_a_row_with_its_reason(serial_run):
    no_fit = serial_run.frame[serial_run.frame["status"] == "no_fit"]
    assert len(no_fit) == 4 and set(no_fit["model"]) == {"llama3-70b"}
    row = no_fit.iloc[0]
    assert row["binding_constraint"] == "memory_per_gpu"
    assert "the plan that needs the least memory needs" in row["reason"] and "GiB short" in row["reason"]
    assert pd.isna(row["rank"]) and pd.isna(row["plan"]) and pd.isna(row["tokens_per_s"])
    assert row["num_candidates"] > 0 and row["num_feasible"] == 0


def test_exceptions_and_bad_combinations_become_error_rows(tmp_path, monkeypatch):
    sweep = sweep_from_mapping({"axes": {"model": ["llama3-8b"], "cluster": ["h100x8"], "seq_length": [3000, 4096],
                                         "global_batch_tokens": [1048576]}})

    def broken(scenario):
        raise RuntimeError("solver exploded\nsecond line")

    monkeypatch.setattr(runner, "search", broken)
    frame = run_sweep(sweep, tmp_path, workers=1, progress=False).frame
    assert list(frame["status"]) == ["error", "error"]
    assert "global_batch_tokens" in frame["reason"][0] and "seq_length 3000" in frame["reason"][0]
    assert frame["reason"][1] == "RuntimeError: solver exploded second line"


def test_rerun_skips_finished_scenarios_and_recomputes_a_missing_part(sweep, serial_run, tmp_path, monkeypatch):
    first = run_sweep(sweep, tmp_path, workers=1, progress=False)
    store = PartStore(tmp_path)
    tasks = expand(sweep)
    mtimes = {t.inputs_hash: store.path(t.inputs_hash).stat().st_mtime_ns for t in tasks}
    victim = tasks[5]
    store.path(victim.inputs_hash).unlink()
    calls = []
    real = runner.run_task
    monkeypatch.setattr(runner, "run_task", lambda task, *limit: calls.append(task.index) or real(task, *limit))
    second = run_sweep(sweep, tmp_path, workers=1, progress=False)
    assert calls == [5]
    assert (second.computed, second.reused) == (1, 7)
    for task in tasks:
        if task is not victim:
            assert store.path(task.inputs_hash).stat().st_mtime_ns == mtimes[task.inputs_hash]
    pd.testing.assert_frame_equal(second.frame, first.frame)
    pd.testing.assert_frame_equal(second.frame, serial_run.frame)


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_run_keeps_every_finished_scenario(sweep, serial_run, tmp_path, monkeypatch, workers):
    real = runner._record
    recorded = []

    def record_then_interrupt(store, task, rows):
        if len(recorded) == 3:
            raise KeyboardInterrupt  # Ctrl-C after three scenarios were written
        real(store, task, rows)
        recorded.append(task.inputs_hash)

    monkeypatch.setattr(runner, "_record", record_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, tmp_path, workers=workers, progress=False)
    store = PartStore(tmp_path)
    assert store.finished() == set(recorded) and len(recorded) == 3
    assert not list(store.parts_dir.glob(".*"))  # no temporary files left behind
    assert not (tmp_path / "results.parquet").exists()

    monkeypatch.setattr(runner, "_record", real)
    resumed = run_sweep(sweep, tmp_path, workers=workers, progress=False)
    assert (resumed.computed, resumed.reused) == (5, 3)
    pd.testing.assert_frame_equal(resumed.frame, serial_run.frame)


def test_process_pool_and_dask_give_the_same_table(sweep, serial_run, tmp_path):
    distributed = pytest.importorskip("distributed")
    pooled = run_sweep(sweep, tmp_path / "pool", workers=2, progress=False)
    assert pooled.backend == "2 local processes"
    pd.testing.assert_frame_equal(pooled.frame, serial_run.frame)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        on_dask = run_sweep(sweep, tmp_path / "dask", dask_scheduler=cluster.scheduler_address, progress=False)
    assert on_dask.backend.startswith("dask ") and on_dask.computed == 8
    pd.testing.assert_frame_equal(on_dask.frame, serial_run.frame)
    assert (tmp_path / "dask" / "results.parquet").read_bytes() == (tmp_path / "pool" / "results.parquet").read_bytes()
