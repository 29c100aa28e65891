"""Run a sweep: every scenario through the plan search, resumably, on a local pool or a Dask cluster.

:func:`run_task` runs one scenario and never raises: a scenario that cannot be built or whose search
fails becomes an ``error`` row, one where nothing fits a ``no_fit`` row with its explanation.

:func:`run_sweep` expands the sweep, skips the scenarios whose part file already exists (see
:mod:`scenarios.store`), runs the rest on a backend and writes each scenario's part as soon as it
arrives, in this process, so that a crash or Ctrl-C loses nothing finished and the backend needs no
access to the output directory. Then it combines the parts of exactly this sweep's scenarios into one
table, sorted by scenario and rank, and writes it as Parquet (and CSV).

Backends, all yielding the same rows because the same function runs on the same pickled inputs:

* ``workers == 1``: in this process, one scenario after the other;
* otherwise a local :class:`concurrent.futures.ProcessPoolExecutor` (default: one worker per CPU);
* ``dask_scheduler``: an existing ``dask.distributed`` scheduler, e.g. ``tcp://10.0.0.5:8786``, whose
  workers have plan-search installed.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hardware.errors import InputError
from optimizer.search import search

from .rows import empty_result, result_rows, typed_frame
from .store import PartStore, write_results
from .sweep_file import ScenarioTask, SweepSpec, expand

Rows = list[dict[str, Any]]


def run_task(task: ScenarioTask) -> Rows:
    """The result rows of one scenario (without its scenario columns); never raises."""
    if task.scenario is None:
        return [empty_result("error", task.error)]
    try:
        return result_rows(search(task.scenario), task.explain)
    except Exception as exc:  # one scenario's failure must never stop the sweep
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        return [empty_result("error", message)]


@dataclass
class SweepRun:
    """What a sweep did and produced."""

    frame: pd.DataFrame
    scenarios: int
    computed: int
    """Scenarios searched in this run."""
    reused: int
    """Scenarios whose part file from an earlier run was reused."""
    seconds: float
    backend: str
    paths: list[Path] = field(default_factory=list)

    @property
    def scenarios_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")


def run_sweep(sweep: SweepSpec, out_dir: str | Path, workers: int | None = None, dask_scheduler: str | None = None,
              csv: bool = False, progress: bool = True) -> SweepRun:
    """Run (or resume) a sweep into ``out_dir``; see the module docstring."""
    start = time.perf_counter()
    tasks = expand(sweep)
    store = PartStore(out_dir)
    finished = store.finished()
    pending: dict[str, ScenarioTask] = {}
    for task in tasks:  # scenarios with equal resolved inputs run once
        if task.inputs_hash not in finished:
            pending.setdefault(task.inputs_hash, task)
    todo = list(pending.values())
    if workers is not None and workers < 1:
        raise InputError("command line", "--workers", f"must be at least 1, got {workers}", "e.g. --workers 4")
    if dask_scheduler:
        backend, results = f"dask {dask_scheduler}", _dask(todo, dask_scheduler)
    elif (workers or os.cpu_count() or 1) == 1 or len(todo) <= 1:
        backend, results = "serial", _serial(todo)
    else:
        count = min(workers or os.cpu_count() or 1, len(todo))
        backend, results = f"{count} local processes", _process_pool(todo, count)

    with _progress_bar(progress, len(tasks), len(tasks) - len(todo), sweep.name) as advance:
        for task, rows in results:
            _record(store, task, rows)
            advance()
    rows = []
    for task in tasks:
        rows.extend({**task.params, **row} for row in store.read_rows(task.inputs_hash))
    paths = write_results(typed_frame(rows, list(tasks[0].params)), out_dir, csv=csv)
    frame = pd.read_parquet(paths[0])  # exactly what is on disk (text columns come back as pandas' str type)
    return SweepRun(frame=frame, scenarios=len(tasks), computed=len(todo), reused=len(tasks) - len(todo),
                    seconds=time.perf_counter() - start, backend=backend, paths=paths)


def run_tasks(tasks: list[ScenarioTask], workers: int | None = None) -> Iterator[tuple[ScenarioTask, Rows]]:
    """Run tasks without a part store (what-if studies): in this process, or on a local pool."""
    count = min(workers or 1, len(tasks))
    return _serial(tasks) if count <= 1 else _process_pool(tasks, count)


def _record(store: PartStore, task: ScenarioTask, rows: Rows) -> None:
    """Keep one finished scenario (the only place results reach the disk before the end)."""
    store.write(task.inputs_hash, task.params, rows)


def _serial(tasks: list[ScenarioTask]) -> Iterator[tuple[ScenarioTask, Rows]]:
    for task in tasks:
        yield task, run_task(task)


def _init_worker() -> None:
    """Workers leave Ctrl-C to the parent, which cancels what has not started and keeps what finished.

    They also keep freed memory instead of returning it to the OS after every numpy temporary: glibc
    maps blocks over its mmap threshold afresh each time, so every search page-faults its arrays back in
    (about a seventh of a sweep's time went to the kernel; see benchmarks/README.md). Linux/glibc only;
    elsewhere this is skipped.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
    libc.mallopt(m_mmap_threshold, 64 * 2**20)
    libc.mallopt(m_trim_threshold, 1024 * 2**20)


def _process_pool(tasks: list[ScenarioTask], workers: int) -> Iterator[tuple[ScenarioTask, Rows]]:
    """Submit every task now (the workers are forked here, before any progress-bar thread starts) and
    return an iterator over the results as they finish."""
    executor = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker)
    futures: dict[Future, ScenarioTask] = {executor.submit(run_task, t): t for t in tasks}

    def drain() -> Iterator[tuple[ScenarioTask, Rows]]:
        try:
            remaining = set(futures)
            while remaining:
                done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: futures[f].index):
                    yield futures[future], future.result()
        finally:  # on Ctrl-C or an error here: drop what has not started, let running scenarios end
            executor.shutdown(wait=True, cancel_futures=True)

    return drain()


def _dask(tasks: list[ScenarioTask], address: str) -> Iterator[tuple[ScenarioTask, Rows]]:
    """Connect now (a bad address is an input error before anything runs), submit every task, and
    return an iterator over the results as they finish."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise InputError("command line", "--dask-scheduler", "dask.distributed is not installed",
                         "pip install 'plan-search[sweep]'") from None
    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError("command line", "--dask-scheduler", f"cannot connect to {address!r} "
                         f"({exc.__class__.__name__})", "start a scheduler there or fix the address") from None
    futures = {client.submit(run_task, t, key=f"plan-search-{t.inputs_hash}", pure=False): t for t in tasks}

    def drain() -> Iterator[tuple[ScenarioTask, Rows]]:
        try:
            for future in as_completed(list(futures)):
                yield futures[future], future.result()
        finally:
            for future in futures:
                future.cancel()
            client.close()

    return drain()


class _progress_bar:
    """A rich progress bar on stderr (scenarios done / total, rate, time left); a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, already: int, name: str):
        self.enabled, self.total, self.already, self.name = enabled, total, already, name
        self.progress: Progress | None = None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=False)
        self.progress.start()
        started = time.perf_counter()
        task_id = self.progress.add_task(f"sweep {self.name}", total=self.total, completed=self.already, rate="")
        done = [0]

        def advance() -> None:
            done[0] += 1
            rate = done[0] / max(time.perf_counter() - started, 1e-9)
            self.progress.update(task_id, advance=1, rate=f"{rate:.1f} scen/s")

        return advance

    def __exit__(self, *exc_info: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
