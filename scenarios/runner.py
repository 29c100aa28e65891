"""Run a sweep: every scenario through the plan search, resumably, on a local pool or a Dask cluster.

:func:`run_task` runs one scenario and returns its rows: a scenario that cannot be built, whose search
fails, whose solver stops before proving its answer (``SearchIncomplete``) or that runs past its time
limit becomes an ``error`` row; one where nothing fits a ``no_fit`` row with its explanation. Ctrl-C
(``KeyboardInterrupt``) is never a row: it propagates, and the scenario it interrupted is not stored.

:func:`run_sweep` counts the scenarios (refusing more than ``max_scenarios`` before building any),
checks the optional packages it will need, expands the sweep, skips the scenarios whose part holds a
finished result (see :mod:`scenarios.store`: ``error`` parts and damaged parts are searched again), runs
the rest on a backend and writes each scenario's part as soon as it arrives, in this process, so that a
crash, Ctrl-C or SIGTERM loses nothing finished and the backend needs no access to the output
directory. Then it combines the parts of exactly this sweep's scenarios into one table, sorted by
scenario and rank, and writes it as Parquet (and CSV).

Backends, all yielding the same rows because the same function runs on the same pickled inputs:

* ``workers == 1``: in this process, one scenario after the other;
* otherwise a local :class:`concurrent.futures.ProcessPoolExecutor` (default: one worker per CPU);
* ``dask_scheduler``: an existing ``dask.distributed`` scheduler, e.g. ``tcp://10.0.0.5:8786``, whose
  workers have plan-search installed.

Interruptions: Ctrl-C raises ``KeyboardInterrupt`` and SIGTERM raises :class:`SweepTerminated` (a
``KeyboardInterrupt``) in the main process; either way the local pool's workers are killed at once
(running scenarios are dropped, not awaited), the parts already written stay, and the exception
propagates (``plan-search`` exits 130 for Ctrl-C, 143 for SIGTERM). Pool workers also die with the main
process if it is killed outright (``kill -9``, the OOM killer): each asks Linux for SIGKILL when its
parent dies (``PR_SET_PDEATHSIG``). A failure of the backend itself (a worker killed, a Dask scheduler
lost) raises :class:`SweepFault`, one line, finished parts kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing
import os
import signal
import threading
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

from .extras import INSTALL, missing
from .rows import empty_result, result_rows, typed_frame
from .serving import is_serving, serving_rows
from .store import DamagedPartError, PartStore, write_results
from .sweep_file import ScenarioTask, SweepSpec, expand

Rows = list[dict[str, Any]]

DEFAULT_MAX_SCENARIOS = 100_000
"""Largest sweep run without ``--max-scenarios``: expanding a scenario takes about 0.07 ms and 2.5 KB,
but searching one takes about 0.1-0.2 s of one core, so 10^5 scenarios are already hours of work on a
small machine; a sweep of 10^9 is a typo, and is refused before anything is built."""

DEFAULT_SCENARIO_TIMEOUT_S = 300.0
"""Per-scenario wall-clock limit in sweeps. A search of the largest bundled cases (DeepSeek-V3 on 16K
GPUs with a GPU-count range) takes seconds; a scenario still running after five minutes is stuck (an
absurd size that slipped through validation) and would otherwise stall its worker for good."""

SECONDS_PER_SCENARIO = 0.1
"""Rough search time of one scenario on one core (benchmarks/sweep_speed.py: 1,000 scenarios of 7-70B
dense and MoE models on 8-64 GPUs, explanations included, take 65 ms of CPU each). Only for the
up-front estimate; larger clusters and models take longer, and the progress bar measures the real rate."""


class ScenarioTimeout(BaseException):
    """Raised inside a running search when its time limit passes. A BaseException, so that no
    ``except Exception`` inside the search can swallow it; :func:`run_task` turns it into an error row."""


class SweepTerminated(KeyboardInterrupt):
    """SIGTERM reached the sweep's main process: stop like Ctrl-C (finished parts kept); exit 143."""


class SweepFault(RuntimeError):
    """The backend failed (a pool worker died, the Dask scheduler was lost): one line; what finished is
    kept on disk and a rerun resumes."""


def run_task(task: ScenarioTask, time_limit_s: float | None = None) -> Rows:
    """The result rows of one scenario (without its scenario columns).

    Never raises for a failure of the scenario itself: an exception, an unproved solve or the time
    limit (``time_limit_s``; None or 0 = none) becomes one ``error`` row, which is stored but searched
    again on resume. ``KeyboardInterrupt`` propagates: an interrupted search is not a result."""
    _tune_process()
    if task.scenario is None:
        return [empty_result("error", task.error)]
    try:
        with _time_limit(time_limit_s):
            if is_serving(task.scenario):  # a serving sweep's scenario (scenarios.serving)
                return serving_rows(task.scenario)
            return result_rows(search(task.scenario), task.explain)
    except ScenarioTimeout:
        return [empty_result("error", f"timed out after {time_limit_s:g} s (--scenario-timeout-s)")]
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

    def errors(self) -> pd.DataFrame:
        """The ``error`` rows (one per failed scenario), in scenario order."""
        return self.frame[self.frame["status"] == "error"]


def check_scenario_count(sweep: SweepSpec, max_scenarios: int = DEFAULT_MAX_SCENARIOS) -> int:
    """The number of scenarios, counted from the axis lengths without building any; InputError when it
    is over ``max_scenarios``."""
    if isinstance(max_scenarios, bool) or not isinstance(max_scenarios, int) or max_scenarios < 1:
        raise InputError("command line", "--max-scenarios", f"must be a positive whole number, got {max_scenarios!r}",
                         f"e.g. --max-scenarios {DEFAULT_MAX_SCENARIOS}")
    count = sweep.num_scenarios
    if count > max_scenarios:
        sizes = " x ".join(str(len(v)) for v in list(sweep.axes.values()) + list(sweep.overrides.values()))
        raise InputError(sweep.source, "axes", f"expands to {count:,} scenarios ({sizes}), more than the limit "
                         f"of {max_scenarios:,}", f"drop axis values, or allow them with --max-scenarios {count}")
    return count


def check_extras(dask_scheduler: str | None = None) -> None:
    """The optional packages a sweep needs, checked before any work (finding out from an ImportError after
    every search ran costs the whole sweep): pyarrow writes results.parquet, dask.distributed runs
    ``--dask-scheduler``. Each is imported, so a broken install fails like a missing one."""
    needed = [("pyarrow", "sweep", "writing results.parquet")]
    if dask_scheduler:
        needed.append(("distributed", "--dask-scheduler", "running on a Dask cluster"))
    for module, flag, purpose in needed:
        if missing((module,)):
            raise InputError("command line", flag, f"needs {module} for {purpose}, but it is not installed", INSTALL)


def expected_seconds(scenarios: int, workers: int) -> float:
    """A rough up-front estimate (see :data:`SECONDS_PER_SCENARIO`)."""
    return scenarios * SECONDS_PER_SCENARIO / max(workers, 1)


def run_sweep(sweep: SweepSpec, out_dir: str | Path, workers: int | None = None, dask_scheduler: str | None = None,
              csv: bool = False, progress: bool = True, max_scenarios: int = DEFAULT_MAX_SCENARIOS,
              scenario_timeout_s: float | None = DEFAULT_SCENARIO_TIMEOUT_S,
              announce: Callable[[str], None] | None = None) -> SweepRun:
    """Run (or resume) a sweep into ``out_dir``; see the module docstring.

    ``announce`` receives one line before the searches start: the scenario count, how many are left,
    the backend and an expected time."""
    start = time.perf_counter()
    check_scenario_count(sweep, max_scenarios)
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise InputError("command line", "--workers", f"must be at least 1, got {workers}", "e.g. --workers 4")
    if scenario_timeout_s is not None and not (math.isfinite(scenario_timeout_s) and scenario_timeout_s >= 0):
        raise InputError("command line", "--scenario-timeout-s", f"must be a number of seconds >= 0, got "
                         f"{scenario_timeout_s}", f"e.g. --scenario-timeout-s {DEFAULT_SCENARIO_TIMEOUT_S:g} (0 = no limit)")
    limit_s = scenario_timeout_s or None
    check_extras(dask_scheduler)
    store = PartStore(out_dir)
    store.remove_stale()
    tasks = expand(sweep)
    finished = store.finished(t.inputs_hash for t in tasks)
    pending: dict[str, ScenarioTask] = {}
    for task in tasks:  # scenarios with equal resolved inputs run once
        if task.inputs_hash not in finished:
            pending.setdefault(task.inputs_hash, task)
    todo = list(pending.values())
    reused = sum(task.inputs_hash in finished for task in tasks)

    with _sigterm_as_interrupt():
        if dask_scheduler:
            count = None
            backend, results = f"dask {dask_scheduler}", _dask(todo, dask_scheduler, limit_s)
        elif (workers or os.cpu_count() or 1) == 1 or len(todo) <= 1:
            count = 1
            backend, results = "serial", _serial(todo, limit_s)
        else:
            count = min(workers or os.cpu_count() or 1, len(todo))
            backend, results = f"{count} local processes", _process_pool(todo, count, limit_s)
        with contextlib.closing(results):  # on any exit, the backend stops (pool workers killed)
            if announce is not None:
                announce(_announcement(sweep.name, len(tasks), len(todo), reused, backend, count))
            with _progress_bar(progress, len(tasks), len(tasks) - len(todo), sweep.name) as advance:
                for task, rows in results:
                    _record(store, task, rows)
                    advance()
        rows = []
        for task in tasks:
            try:
                rows.extend({**task.params, **row} for row in store.read_rows(task.inputs_hash))
            except DamagedPartError as exc:  # changed on disk while this run was combining the table
                raise SweepFault(f"{exc}; rerun to search that scenario again") from None
        paths = write_results(typed_frame(rows, list(tasks[0].params)), out_dir, csv=csv)
    frame = pd.read_parquet(paths[0])  # exactly what is on disk (text columns come back as pandas' str type)
    return SweepRun(frame=frame, scenarios=len(tasks), computed=len(todo), reused=reused,
                    seconds=time.perf_counter() - start, backend=backend, paths=paths)


def _announcement(name: str, total: int, todo: int, reused: int, backend: str, workers: int | None) -> str:
    line = f"sweep {name}: {total:,} scenarios, {todo:,} to search on {backend}"
    if reused:
        line += f", {reused:,} finished in an earlier run"
    if todo and workers:
        line += (f"; expected about {_duration(expected_seconds(todo, workers))} "
                 f"(at ~{SECONDS_PER_SCENARIO:g} s per scenario and worker; the progress bar measures the real rate)")
    return line


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_tasks(tasks: list[ScenarioTask], workers: int | None = None,
              time_limit_s: float | None = None) -> Iterator[tuple[ScenarioTask, Rows]]:
    """Run tasks without a part store (what-if studies): in this process, or on a local pool.

    The caller should exhaust or close the iterator (``contextlib.closing``): closing it early kills the
    pool's workers."""
    count = min(workers or 1, len(tasks))
    return _serial(tasks, time_limit_s) if count <= 1 else _process_pool(tasks, count, time_limit_s)


def _record(store: PartStore, task: ScenarioTask, rows: Rows) -> None:
    """Keep one finished scenario (the only place results reach the disk before the end)."""
    store.write(task.inputs_hash, task.params, rows)


def _serial(tasks: list[ScenarioTask], time_limit_s: float | None = None) -> Iterator[tuple[ScenarioTask, Rows]]:
    for task in tasks:
        yield task, run_task(task, time_limit_s)


# --- per-process setup -------------------------------------------------------------------------------

_TUNED_PID: int | None = None


def _tune_process() -> None:
    """Once per process (local pool workers, Dask workers, this process when serial): keep freed memory
    instead of returning it to the OS after every numpy temporary. glibc maps blocks over its mmap
    threshold afresh each time, so every search page-faults its arrays back in (about a seventh of a
    sweep's time went to the kernel, and Dask workers ran 2.2x slower than the local pool without it;
    see benchmarks/README.md). Linux/glibc only; elsewhere this is skipped."""
    global _TUNED_PID
    if _TUNED_PID == os.getpid():
        return
    _TUNED_PID = os.getpid()
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
    libc.mallopt(m_mmap_threshold, 64 * 2**20)
    libc.mallopt(m_trim_threshold, 1024 * 2**20)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _init_worker(parent_pid: int | None) -> None:
    """A local pool worker: dies with the main process, leaves Ctrl-C and SIGTERM handling to it.

    * ``PR_SET_PDEATHSIG``: Linux sends the worker SIGKILL when the main process dies, however it dies
      (kill -9, the OOM killer); otherwise workers would search on, orphaned, for good. If the parent
      died before the request took effect (the race this leaves), the worker sees another parent
      process and exits at once.
    * SIGINT ignored: Ctrl-C reaches the whole process group, and the main process decides (it kills
      the workers); SIGTERM back to its default, since the main process's handler is inherited.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the main process still kills its workers on Ctrl-C, SIGTERM and errors
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the main process died before PR_SET_PDEATHSIG took effect
    _tune_process()


# --- the per-scenario time limit ---------------------------------------------------------------------

_set_async_exc = ctypes.pythonapi["PyThreadState_SetAsyncExc"]  # a function object of our own: argtypes are ours
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)
_set_async_exc.restype = ctypes.c_int
_clear_async_exc = ctypes.pythonapi["PyThreadState_SetAsyncExc"]
_clear_async_exc.argtypes = (ctypes.c_ulong, ctypes.c_void_p)  # None passes NULL: withdraw a pending exception
_clear_async_exc.restype = ctypes.c_int


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`ScenarioTimeout` in this thread once ``seconds`` have passed.

    A timer thread asks the interpreter to raise the exception in this thread
    (``PyThreadState_SetAsyncExc``); it is raised at the next Python bytecode, which works in a pool
    worker, in a Dask worker's thread and in the main process alike (SIGALRM would only reach a main
    thread). A search inside one long C call (a CP-SAT solve without callbacks) is stopped when the call
    returns. If the timer fires as the search ends, the pending exception is withdrawn."""
    if not seconds:
        yield
        return
    thread_id = threading.get_ident()
    lock = threading.Lock()
    state = {"running": True, "fired": False}

    def fire() -> None:
        with lock:
            if state["running"]:
                state["fired"] = True
                _set_async_exc(thread_id, ScenarioTimeout)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            state["running"] = False
            timer.cancel()
            if state["fired"]:
                _clear_async_exc(thread_id, None)  # withdraw it if it has not been raised yet


# --- backends ----------------------------------------------------------------------------------------

def _process_pool(tasks: list[ScenarioTask], workers: int,
                  time_limit_s: float | None = None) -> Iterator[tuple[ScenarioTask, Rows]]:
    """Submit every task now (the workers are forked here, before any progress-bar thread starts) and
    return an iterator over the results as they finish. Closing the iterator early, or an exception
    while it waits (Ctrl-C, SIGTERM), kills the workers: running scenarios are dropped, not awaited."""
    # fork explicitly (Python 3.14 makes forkserver the default): the workers start from this process's
    # imported modules, and their parent is this process, which _init_worker checks
    forking = "fork" in multiprocessing.get_all_start_methods()
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork") if forking else None,
                                   initializer=_init_worker, initargs=(os.getpid() if forking else None,))
    try:
        futures: dict[Future, ScenarioTask] = {executor.submit(run_task, t, time_limit_s): t for t in tasks}
    except BaseException:
        _kill_pool(executor)
        raise

    def drain() -> Iterator[tuple[ScenarioTask, Rows]]:
        completed = False
        try:
            remaining = set(futures)
            while remaining:
                done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: futures[f].index):
                    yield futures[future], _pool_result(future, futures[future])
            completed = True
        finally:
            if completed:
                executor.shutdown(wait=True)
            else:
                _kill_pool(executor)

    return drain()


def _pool_result(future: Future, task: ScenarioTask) -> Rows:
    try:
        return future.result()
    except Exception as exc:  # BrokenProcessPool: a worker was killed (the OOM killer, a signal)
        raise SweepFault(f"the local pool failed while searching scenario {task.index} ({task.params['model']} on "
                         f"{task.params['cluster']}): {type(exc).__name__}: {' '.join(str(exc).split())}; finished "
                         "scenarios are kept, rerun to resume (with fewer --workers if memory ran out)") from None


def _kill_pool(executor: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel what has not started, SIGKILL the workers, reap them.

    SIGPIPE is ignored from here on: the pool's feeder thread may still be writing a task into the pipe
    of a worker just killed, and with the default action (which ``main()`` sets so that ``| head`` ends
    quietly) that write would kill this process by SIGPIPE instead of letting it exit 130 or 143."""
    if hasattr(signal, "SIGPIPE"):
        with contextlib.suppress(ValueError):  # not the main thread: nothing to change there
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.kill()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(timeout=5)


def _dask(tasks: list[ScenarioTask], address: str,
          time_limit_s: float | None = None) -> Iterator[tuple[ScenarioTask, Rows]]:
    """Connect now (a bad address is an input error before anything runs), submit every task, and
    return an iterator over the results as they finish. A scheduler or worker lost mid-sweep raises
    :class:`SweepFault` (finished parts are already on disk)."""
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
    futures = {client.submit(run_task, t, time_limit_s, key=f"plan-search-{t.inputs_hash}", pure=False): t
               for t in tasks}

    def drain() -> Iterator[tuple[ScenarioTask, Rows]]:
        try:
            try:
                for future in as_completed(list(futures)):
                    rows = future.result()
                    yield futures[future], rows
            except Exception as exc:  # CancelledError/FutureCancelledError, CommClosedError, a lost worker...
                raise SweepFault(f"the Dask scheduler at {address} failed mid-sweep ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:200]}); finished scenarios are kept, rerun to "
                                 "resume once the scheduler is back") from None
        finally:
            with contextlib.suppress(Exception):
                for future in futures:
                    future.cancel()
            with contextlib.suppress(Exception):
                client.close(timeout=5)

    return drain()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`SweepTerminated` in the main thread while the sweep runs, so that a
    scheduler stopping the job ends it as cleanly as Ctrl-C (workers killed, finished parts kept)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        raise SweepTerminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
