"""One study run in a fresh subprocess with one thread, its output appended to a log, its cost measured.

The studies (defaults_study.py, holdout_study.py, issue25.py) isolate every run in its own process so that a crash,
a leak or torch's thread pool of one run cannot touch the next, and they charge each run the CPU seconds of its own
process (user + system from ``wait4``), not the machine's.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
"""Environment of every child: one BLAS thread, albumentations' update check off."""


def run_logged(cmd: list[str], log: Path) -> tuple[int, float, float]:
    """Run ``cmd`` (environment: this one plus :data:`ONE_THREAD`), appending its stdout and stderr to ``log``.

    Returns:
        (exit code, CPU seconds of the child: user + system, wall seconds).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("a") as handle:
        child = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **ONE_THREAD})
        _, status, usage = os.wait4(child.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, time.perf_counter() - started
