"""Faults during real sweeps, in a subprocess: Ctrl-C at random moments never stores a wrong row, the
pool stops at once on Ctrl-C and SIGTERM, and pool workers die with a main process killed outright.

The interrupt times are drawn from a fixed seed, so the set of delays is the same on every run; where
each one lands (expanding, searching, writing a part, writing the table) depends on the machine's
speed, which is the point: every landing spot must give exit 130 or a finished sweep, and never a part
that differs from an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from scenarios.runner import run_sweep
from scenarios.store import PartStore
from scenarios.sweep_file import sweep_from_mapping

# 12 scenarios, a few tenths of a second each: dense and MoE, fitting and not (explanations included).
SWEEP = {"name": "faults", "top_k": 2, "axes": {
    "model": ["llama3-8b", "mixtral-8x7b"], "cluster": ["h100x8", "h100x16"], "seq_length": [2048, 4096, 8192],
    "global_batch_tokens": [2097152], "train_tokens": [1e11]}}
# A sweep long enough that the pool is busy when the signal comes.
LONG = {"name": "long", "top_k": 2, "axes": {
    "model": ["llama3-8b", "mixtral-8x7b", "llama3-70b"], "cluster": ["h100x8", "h100x16", "h100x32", "h100x64"],
    "seq_length": [2048, 4096, 8192, 16384], "global_batch_tokens": [2097152, 4194304], "train_tokens": [1e11]}}
SEED = 20
INTERRUPTS = 4
ENTRY = "from optimizer.entry import main; main()"


def _start(sweep_path: Path, out: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", ENTRY, "sweep", str(sweep_path), "--out", str(out), "--no-progress",
                             *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])


def _write(tmp_path: Path, sweep: dict) -> Path:
    path = tmp_path / f"{sweep['name']}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _temporaries(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.tmp"))


def _alive(pid: str) -> bool:
    """A process that exists and is not a zombie waiting for its new parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for_parts(out: Path, count: int, timeout_s: float = 60) -> None:
    """Until the sweep has written ``count`` parts (so its pool is running), without timing anything."""
    deadline = time.monotonic() + timeout_s
    while len(list((out / "parts").glob("*.json"))) < count:
        assert time.monotonic() < deadline, "the sweep never started writing parts"
        time.sleep(0.05)


def test_sigint_at_random_moments_never_stores_a_wrong_row(tmp_path):
    reference_dir = tmp_path / "reference"
    reference = run_sweep(sweep_from_mapping(SWEEP, source="faults.yaml"), reference_dir, workers=1, progress=False)
    expected_parts = {p.name: json.loads(p.read_text())["rows"] for p in (reference_dir / "parts").glob("*.json")}
    path = _write(tmp_path, SWEEP)
    out = tmp_path / "out"
    rng = random.Random(SEED)
    # the first interrupt counts from the moment the run has created its output directory (it lands in
    # the expansion or the first search), the others from the moment the run has written a part (they
    # land in searches and part writes). Interrupts during the interpreter's imports, before the sweep
    # exists, are the entry point's business (tests of optimizer/entry.py).
    delays = [("start", rng.uniform(0.0, 0.3))] + [("part", rng.uniform(0.0, 0.4)) for _ in range(INTERRUPTS - 1)]
    codes = []
    for anchor, delay in delays:
        before = _parts(out)
        process = _start(path, out, "--workers", "1")
        while process.poll() is None and not (out / "parts").is_dir():
            time.sleep(0.01)
        if anchor == "part":
            while _parts(out) == before and process.poll() is None:
                time.sleep(0.01)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        codes.append(process.returncode)
        # 130: interrupted; 0: it had finished; -SIGINT (a shell's 130): the signal came while Python was
        # shutting down, when the kernel's default action applies
        assert process.returncode in (0, 130, -signal.SIGINT), (anchor, delay, process.returncode, err)
        assert "Traceback" not in err, (anchor, delay, err)
        if process.returncode == 130:
            assert err.strip().endswith("plan-search: aborted")
        # every part on disk is exactly the uninterrupted run's: nothing partial, nothing wrong
        for part in (out / "parts").glob("*.json") if out.exists() else []:
            assert json.loads(part.read_text())["rows"] == expected_parts[part.name], part.name
        assert not (out.exists() and _temporaries(out))
    assert codes[0] == 130 and codes.count(130) >= 2, codes  # interrupts landed before the sweep could finish
    final = _start(path, out, "--workers", "1")
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), reference.frame)
    assert not _temporaries(out)


def _parts(out: Path) -> int:
    return len(list((out / "parts").glob("*.json"))) if (out / "parts").exists() else 0


def test_pool_stops_at_once_on_ctrl_c_and_sigterm_and_leaves_no_worker(tmp_path):
    path = _write(tmp_path, LONG)
    for sig, code, last in ((signal.SIGINT, 130, "plan-search: aborted"), (signal.SIGTERM, 143, "rerun the same command to resume")):
        out = tmp_path / f"out-{sig.name}"
        process = _start(path, out, "--workers", "2")
        _wait_for_parts(out, 2)
        workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2
        process.send_signal(sig)
        _, err = process.communicate(timeout=30)
        assert process.returncode == code, err
        assert err.strip().splitlines()[-1].endswith(last) and "Traceback" not in err and "BrokenProcessPool" not in err
        assert not [pid for pid in workers if _alive(pid)]
        assert not _temporaries(out)
        store = PartStore(out)
        assert 2 <= len(store.finished()) < 96  # what finished is kept, and it stopped early


def test_pool_workers_die_with_a_main_process_killed_outright(tmp_path):
    path = _write(tmp_path, LONG)
    out = tmp_path / "out"
    process = _start(path, out, "--workers", "2")
    _wait_for_parts(out, 1)
    workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    process.kill()
    process.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)], "pool workers outlived their parent"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_the_stale_check_keeps_a_live_writers_temporary_file(tmp_path):
    store = PartStore(tmp_path)
    live = store.parts_dir / f".{'a' * 16}.{os.getppid()}.cafe.tmp"  # a live process (our parent)
    dead = store.parts_dir / f".{'b' * 16}.{2**22 + 12345}.beef.tmp"  # above the default pid_max: never alive
    old_style = store.parts_dir / f".{'c' * 16}.k2j_3x9q.tmp"  # mkstemp's name, before pids were in it
    table = tmp_path / f".results.parquet.{2**22 + 12345}.tmp"
    for stale in (live, dead, old_style, table):
        stale.write_text("{")
    removed = store.remove_stale()
    assert sorted(removed) == sorted([dead, old_style, table])
    assert live.exists() and not dead.exists() and not old_style.exists() and not table.exists()
