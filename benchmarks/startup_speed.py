"""Start-up and end-to-end wall time of the ``plan-search`` command, as a ratio to ``python -c "import numpy"``.

Run:  python benchmarks/startup_speed.py [--runs 7]

Each command runs ``--runs`` times as a fresh process (the installed ``plan-search`` script next to this
Python); the best time is reported (on a shared machine the best is the least disturbed), with the median
beside it. The baseline is a bare interpreter importing numpy: what any numpy tool pays before it does
anything. Commands:

* ``--help`` and ``hardware list``: should cost little more than the baseline (no OR-Tools, no search);
* a small real search (the bundled example: Llama 3 8B on 128 H100);
* Llama 3 405B on 16,384 H100 (seq 8192, global batch 2048): target under 0.5 s end to end.

Peak RSS of each command's child process is printed too (``resource.getrusage(RUSAGE_CHILDREN)`` after
each run, so it is the largest over the runs).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("plan-search")

COMMANDS = [
    ("python -c 'import numpy'", [sys.executable, "-c", "import numpy"]),
    ("plan-search --help", [str(SCRIPT), "--help"]),
    ("plan-search hardware list", [str(SCRIPT), "hardware", "list"]),
    ("search: example (8B / 128 H100)", [str(SCRIPT), str(ROOT / "examples/cluster.yaml"),
                                         str(ROOT / "examples/model.yaml")]),
    ("search: Llama 3 405B / 16,384 H100", [str(SCRIPT), "h100x16384", "llama3-405b", "--seq-len", "8192",
                                            "--global-batch", "2048"]),
]
TARGET_405B_S = 0.5


def run(command: list[str], runs: int) -> tuple[float, float, float]:
    """(best seconds, median seconds, peak RSS MiB of the children so far)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        times.append(time.perf_counter() - start)
        if done.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return min(times), statistics.median(times), rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    if not SCRIPT.exists():
        raise SystemExit(f"no plan-search script next to {sys.executable}: pip install -e . first")
    print(f"plan-search start-up benchmark  python {sys.version.split()[0]}  {os.cpu_count()} CPUs, "
          f"best and median of {args.runs} runs")
    baseline = None
    print(f"{'command':<38}{'best s':>8}{'median s':>10}{'x numpy':>9}{'peak MiB':>10}")
    for label, command in COMMANDS:
        best, median, rss = run(command, args.runs)
        baseline = baseline or best
        print(f"{label:<38}{best:>8.3f}{median:>10.3f}{best / baseline:>9.1f}{rss:>10.0f}", flush=True)
        if "405B" in label:
            verdict = "MET" if best < TARGET_405B_S else "MISSED"
            print(f"  target < {TARGET_405B_S} s end to end: {verdict}")


if __name__ == "__main__":
    main()
