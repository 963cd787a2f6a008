"""How fast a wrong command is refused, against the time to import the libraries a run needs.

Run: ``python benchmarks/bench_refusal.py`` (options: ``--repeats``).

Each row is a fresh process (``python -m probmcl_med.cli ...``, the console script's code), timed by wall clock from
start to exit, interleaved with the baseline ``python -c "import torch, monai, timm"`` in the same run; the table
shows the median of ``--repeats`` runs and the ratio to the baseline's median. Every refusal row must end with exit
code 1 or 2 and a one-line ``error:`` (checked). Target (issue 23.7): every ratio well under 0.5.

The refusals are the mistakes a new user makes first: training on ADP without its folder, a CSV root that does not
exist, a key that does not exist, no data named at all, a checkpoint that does not exist, an image that does not
exist. They run in an empty temporary folder (no ./plugins to load).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = [sys.executable, "-c", "import torch, monai, timm"]


def refusals(tmp: Path) -> list[tuple[str, list[str]]]:
    cli = [sys.executable, "-m", "probmcl_med.cli"]
    return [
        ("train --dataset adp (no --root)", [*cli, "train", "--dataset", "adp"]),
        ("train --dataset csv --root MISSING", [*cli, "train", "--dataset", "csv", "--root", str(tmp / "missing")]),
        (
            "train --set classifier.lrr=0.1 (no such key)",
            [*cli, "train", "--dataset", "demo", "--set", "classifier.lrr=0.1"],
        ),
        ("train (no data named)", [*cli, "train"]),
        ("data check --dataset adp (no --root)", [*cli, "data", "check", "--dataset", "adp"]),
        ("evaluate --checkpoint MISSING", [*cli, "evaluate", "--checkpoint", str(tmp / "no_run")]),
        (
            "predict MISSING --checkpoint MISSING",
            [*cli, "predict", str(tmp / "x.png"), "--checkpoint", str(tmp / "no_run"), "--out", str(tmp / "out")],
        ),
    ]


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    return time.perf_counter() - start, done.returncode, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", "PROBMCL_MED_NO_AUTOLOAD": "1"}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        rows = refusals(tmp)
        times: dict[str, list[float]] = {"baseline": [], **{label: [] for label, _ in rows}}
        for _ in range(args.repeats):  # interleaved: load on the machine hits every row alike
            times["baseline"].append(timed(BASELINE, env, tmp)[0])
            for label, command in rows:
                seconds, code, err = timed(command, env, tmp)
                lines = [line for line in err.splitlines() if line.strip()]
                if code not in (1, 2) or not any(line.startswith("error:") for line in lines):
                    raise SystemExit(f"{label}: expected a one-line refusal, got exit {code}: {err[-400:]}")
                times[label].append(seconds)
    base = statistics.median(times["baseline"])
    print(f"median of {args.repeats} fresh processes each, wall seconds; baseline measured in the same run")
    print(f"{'command':<48} {'seconds':>8} {'ratio':>7}")
    print(f"{'python -c import torch, monai, timm (baseline)':<48} {base:>8.2f} {1.0:>7.2f}")
    for label, _ in rows:
        seconds = statistics.median(times[label])
        print(f"{label:<48} {seconds:>8.2f} {seconds / base:>7.2f}")


if __name__ == "__main__":
    main()
