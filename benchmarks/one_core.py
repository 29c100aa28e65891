"""Import first in a benchmark: one thread per BLAS/OpenMP pool and the process pinned to one core.

Must run before numpy is imported, which is why the benchmarks import it before anything else.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"
try:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    PINNED = f"pinned to CPU {sorted(os.sched_getaffinity(0))[0]}"
except (AttributeError, OSError):  # not Linux, or not allowed
    PINNED = "not pinned (sched_setaffinity unavailable)"

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
