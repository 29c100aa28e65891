"""Running sweeps: rows per scenario, no-fit and error rows, resume, interruption, backends agree."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from hardware.errors import InputError

import scenarios.runner as runner
from scenarios.runner import run_sweep
from scenarios.store import PartStore
from scenarios.sweep_file import expand, sweep_from_mapping

# 8 scenarios: Llama 3 8B on one and two H100 nodes fits; Llama 3 70B on one or two nodes fits nowhere
# with 5% of memory kept free (without, its best two-node plan needs 79.1 of 79.1 GiB: on the edge).
SWEEP = {"name": "unit", "top_k": 2, "search": {"memory_headroom": 0.05}, "axes": {
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


# --- faults and limits --------------------------------------------------------------------------------

TINY = {"name": "tiny", "axes": {"model": ["llama3-8b"], "cluster": ["h100x8"], "seq_length": [4096, 8192],
                                 "global_batch_tokens": [1048576]}}


def test_error_rows_are_stored_but_searched_again_on_resume(tmp_path, monkeypatch):
    sweep = sweep_from_mapping(TINY)
    real = runner.search
    monkeypatch.setattr(runner, "search", lambda scenario: (_ for _ in ()).throw(RuntimeError("machine fault")))
    failed = run_sweep(sweep, tmp_path, workers=1, progress=False)
    assert list(failed.frame["status"]) == ["error", "error"] and len(failed.errors()) == 2
    assert len(list(PartStore(tmp_path).parts_dir.glob("*.json"))) == 2  # listed in the table...
    assert PartStore(tmp_path).finished() == set()  # ...but not a finished result
    monkeypatch.setattr(runner, "search", real)
    retried = run_sweep(sweep, tmp_path, workers=1, progress=False)
    assert (retried.computed, retried.reused) == (2, 0)
    assert set(retried.frame["status"]) == {"ok"} and retried.errors().empty


def test_an_unproved_solve_is_an_error_row_never_data(tmp_path, monkeypatch):
    from optimizer.layout_model import SearchIncomplete

    def stopped(scenario):
        raise SearchIncomplete("the layout solver stopped before finishing enumerating the layouts")

    monkeypatch.setattr(runner, "search", stopped)
    frame = run_sweep(sweep_from_mapping(TINY), tmp_path, workers=1, progress=False).frame
    assert set(frame["status"]) == {"error"} and frame["reason"][0].startswith("SearchIncomplete: ")
    assert PartStore(tmp_path).finished() == set()


def test_ctrl_c_inside_a_search_stores_nothing_for_that_scenario(sweep, serial_run, tmp_path, monkeypatch):
    real = runner.search
    seen = []

    def interrupted_third(scenario):
        seen.append(scenario)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(scenario)

    monkeypatch.setattr(runner, "search", interrupted_third)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, tmp_path, workers=1, progress=False)
    tasks = expand(sweep)
    store = PartStore(tmp_path)
    assert store.finished() == {tasks[0].inputs_hash, tasks[1].inputs_hash}
    assert not store.path(tasks[2].inputs_hash).exists() and not list(store.parts_dir.glob(".*"))
    monkeypatch.setattr(runner, "search", real)
    pd.testing.assert_frame_equal(run_sweep(sweep, tmp_path, workers=1, progress=False).frame, serial_run.frame)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_scenario_past_its_time_limit_is_an_error_row(tmp_path, monkeypatch, workers):
    def stuck(scenario):  # a pure-Python loop, like _divisors(n, n) on an absurd size
        while True:
            pass

    monkeypatch.setattr(runner, "search", stuck)  # the pool's workers are forked after this
    run = run_sweep(sweep_from_mapping(TINY), tmp_path, workers=workers, progress=False, scenario_timeout_s=0.3)
    assert list(run.frame["status"]) == ["error", "error"]
    assert set(run.frame["reason"]) == {"timed out after 0.3 s (--scenario-timeout-s)"}
    assert PartStore(tmp_path).finished() == set()  # retried on resume, like any error


def test_the_time_limit_is_withdrawn_when_the_search_ends(monkeypatch):
    import time

    with runner._time_limit(0.05):
        pass
    time.sleep(0.15)  # a timer that was not cancelled would raise ScenarioTimeout here
    with pytest.raises(runner.ScenarioTimeout):
        with runner._time_limit(0.05):
            while True:
                pass


@pytest.mark.parametrize("damage", ["", '{"params": {}, "rows": [{"status": "ok"', '{"rows": []}', "[1, 2]",
                                    '{"params": {}, "rows": [{"tp": 1}]}'])
def test_a_damaged_part_is_recomputed_with_a_warning(sweep, serial_run, tmp_path, damage):
    shutil.copytree(serial_run.paths[0].parent / "parts", tmp_path / "parts")
    victim = expand(sweep)[3]
    PartStore(tmp_path).path(victim.inputs_hash).write_text(damage)
    with pytest.warns(UserWarning, match=f"{victim.inputs_hash}.json: .*searched again"):
        resumed = run_sweep(sweep, tmp_path, workers=1, progress=False)
    assert (resumed.computed, resumed.reused) == (1, 7)
    pd.testing.assert_frame_equal(resumed.frame, serial_run.frame)


def test_stale_temporary_files_are_removed_when_a_run_starts(tmp_path):
    store = PartStore(tmp_path)
    dead_pid = 2**22 + 7  # above Linux's largest pid_max: no such process
    stale = [store.parts_dir / f".{'0' * 16}.{dead_pid}.1a2b.tmp", store.parts_dir / f".{'1' * 16}.x8_kq2ab.tmp",
             tmp_path / f".results.parquet.{dead_pid}.tmp", tmp_path / f".results.csv.{dead_pid}.tmp"]
    for path in stale:
        path.write_text("half a file")
    run_sweep(sweep_from_mapping(TINY), tmp_path, workers=1, progress=False)
    assert not [p for p in stale if p.exists()] and not list(tmp_path.rglob("*.tmp"))


def test_parts_and_tables_are_fsynced_before_and_after_the_rename(sweep, tmp_path, monkeypatch):
    import os

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", Path(b).name)) or real_replace(a, b))
    run_sweep(sweep_from_mapping(TINY), tmp_path, workers=1, progress=False)
    renames = [i for i, e in enumerate(events) if e[0] == "replace"]
    assert [events[i][1] for i in renames][-1] == "results.parquet" and len(renames) == 3
    for i in renames:  # the file's data before its name, the directory's entry after it
        assert events[i - 1] == ("fsync", False) and events[i + 1] == ("fsync", True)


def test_too_many_scenarios_are_refused_before_any_is_built(tmp_path, monkeypatch):
    huge = sweep_from_mapping({"name": "huge", "axes": {
        "model": ["llama3-8b"], "cluster": ["h100x8"], "seq_length": list(range(1024, 1024 + 1000)),
        "train_tokens": [float(10**i) for i in range(9, 14)],
        "overrides": {"topology.nic_gbps": list(range(100, 140)), "economics.price_per_gpu_hour_usd": [1.0, 2.0]}}},
        source="huge.yaml")
    monkeypatch.setattr(runner, "expand", lambda sweep: pytest.fail("expanded before counting"))
    with pytest.raises(InputError) as info:
        run_sweep(huge, tmp_path, workers=1, progress=False)
    assert str(info.value) == ("huge.yaml: axes: expands to 400,000 scenarios (1 x 1 x 1000 x 5 x 40 x 2), more than "
                               "the limit of 100,000; drop axis values, or allow them with --max-scenarios 400000")
    with pytest.raises(InputError, match="--max-scenarios: must be a positive whole number"):
        run_sweep(huge, tmp_path, max_scenarios=0, progress=False)


def test_optional_packages_are_checked_before_any_search(sweep, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run_task", lambda *args: pytest.fail("searched before checking pyarrow"))
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    with pytest.raises(InputError) as info:
        run_sweep(sweep, tmp_path, workers=1, progress=False)
    assert str(info.value) == ("command line: sweep: needs pyarrow for writing results.parquet, but it is not "
                               "installed; pip install 'plan-search[sweep]'")
    monkeypatch.delitem(sys.modules, "pyarrow")
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(InputError, match="--dask-scheduler: needs distributed .* pip install 'plan-search"):
        run_sweep(sweep, tmp_path, dask_scheduler="tcp://127.0.0.1:1", progress=False)


def test_each_process_tunes_its_allocator_once_dask_workers_included(monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "_keep_freed_memory", lambda: calls.append(1))
    monkeypatch.setattr(runner, "_TUNED_PID", None)
    task = expand(sweep_from_mapping({"axes": {"model": ["llama3-8b"], "cluster": ["h100x8"], "seq_length": [3000],
                                               "global_batch_tokens": [1048576]}}))[0]  # an error task: no search
    runner.run_task(task)
    runner.run_task(task)
    assert calls == [1]


def test_a_dask_scheduler_lost_mid_sweep_is_one_line_and_keeps_finished_parts(sweep, tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
    real = runner._record
    recorded = []

    def record_then_lose_the_scheduler(store, task, rows):
        real(store, task, rows)
        recorded.append(task.inputs_hash)
        if len(recorded) == 2:
            cluster.close()

    monkeypatch.setattr(runner, "_record", record_then_lose_the_scheduler)
    try:
        with pytest.raises(runner.SweepFault) as info:
            run_sweep(sweep, tmp_path, dask_scheduler=cluster.scheduler_address, progress=False)
    finally:
        cluster.close()
    assert str(info.value).startswith(f"the Dask scheduler at {cluster.scheduler_address} failed mid-sweep (")
    assert "\n" not in str(info.value) and "rerun to resume" in str(info.value)
    assert set(recorded) <= PartStore(tmp_path).finished() and len(recorded) >= 2


def _worker_probe(parent_pid, queue):
    import ctypes

    runner._init_worker(parent_pid)
    signal_number = ctypes.c_int()
    ctypes.CDLL("libc.so.6").prctl(2, ctypes.byref(signal_number), 0, 0, 0)  # PR_GET_PDEATHSIG
    queue.put(signal_number.value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_pool_worker_asks_to_die_with_its_parent_and_exits_if_it_already_has():
    import multiprocessing
    import os
    import signal

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    worker = context.Process(target=_worker_probe, args=(os.getpid(), queue))
    worker.start()
    worker.join(30)
    assert worker.exitcode == 0 and queue.get(timeout=5) == signal.SIGKILL
    orphan = context.Process(target=_worker_probe, args=(2**22 + 3, queue))  # "forked by" a process now gone
    orphan.start()
    orphan.join(30)
    assert orphan.exitcode == 1 and queue.empty()


def test_rows_carry_the_power_and_goodput_columns(serial_run):
    """The nightly table tracks what the run draws and what it trains, not only its nominal speed: power
    from the plan's own step (8 H100 draw 8 x 1,275 W = 0.0102 MW while computing), energy = average
    power x time, and the effective time = nominal / ETTR."""
    frame = serial_run.frame
    for column in ("gpu_power_w", "power_mw", "peak_power_mw", "ettr", "mtbf_h", "checkpoint_interval_s",
                   "spare_gpus", "effective_time_to_train_days", "effective_gpu_hours", "effective_cost_usd"):
        assert frame[column].dtype == "float64", column
    ok = frame[frame["status"] == "ok"]
    for column in ("gpu_power_w", "power_mw", "ettr", "effective_time_to_train_days", "effective_cost_usd"):
        assert ok[column].notna().all(), column
    assert ok["peak_power_mw"].tolist() == pytest.approx((ok["num_gpus"] * 1275 / 1e6).tolist(), abs=1e-6)
    assert (ok["power_mw"] <= ok["peak_power_mw"]).all()
    assert ok["energy_mwh"].tolist() == pytest.approx((ok["power_mw"] * ok["time_to_train_days"] * 24).tolist(),
                                                      rel=1e-3)
    assert ((ok["ettr"] > 0) & (ok["ettr"] <= 1)).all()
    assert ok["effective_time_to_train_days"].tolist() == pytest.approx(
        (ok["time_to_train_days"] / ok["ettr"]).tolist(), rel=1e-4)
    no_fit = frame[frame["status"] == "no_fit"]
    assert no_fit["power_mw"].isna().all() and no_fit["ettr"].isna().all()
