"""``probmcl-med train`` against the plain loop a user writes, on the same data and model: images/s and the ratio.

The baseline is ``benchmarks/evidence/plain_loop.py`` (images preloaded as one normalised tensor, random flips with
``torch.where``, Adam, BCE; nothing from probmcl_med), run with one intra-op thread per core. The project runs
config-free (the schema's defaults: mode asl, BCE, flips, constant lr, batches of 64), with only the encoder, the
image size and the run length set, so the loader workers and torch threads are the ones it chooses from the data.
Each arm runs as its own process, alternated in rounds so that the load of a shared machine falls on all alike; the
ratio to the plain loop is computed per round, and the table gives the median of the rounds. ``--plain-threads 2,1``
runs the plain loop at each thread count; every arm is also compared with the plain loop at its own thread count
(on a machine whose cores other processes keep busy, OpenMP threads waiting for a descheduled sibling make any
2-thread run many times slower, the plain loop's too, so only same-thread ratios mean much there).

Images/s count training iterations only: for the plain loop its timed loop (after the preload); for ``train`` the
per-epoch ``images_per_s`` of ``metrics.jsonl`` (from each epoch's first batch to its last, validation excluded),
summed over the epochs. The whole command's wall time and CPU seconds (user + system of the process and its
children, from ``getrusage``), start-up, preload and validation included, are shown too, with the machine's 1-minute
load average when each run ended: on a shared machine the CPU seconds say what each arm cost, the wall time what else
ran beside it.

    python benchmarks/bench_train_vs_plain.py                       # 4,000 demo mosaics, resnet18 at 64 px, 2 epochs
    python benchmarks/bench_train_vs_plain.py --rounds 2 --arm "no cache:--set dataset.cache_gb=0" --plain-threads 2,1
    nice -n 15 python benchmarks/bench_train_vs_plain.py --images 500 --plain-threads 2,1 \
        --arm "one thread:--set threads=1"                          # the README's table (a few minutes when idle)

The data are the embedded demo's digit mosaics (64 x 64 PNGs), generated on first use under ``--data``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
PLAIN_LOOP = HERE / "evidence" / "plain_loop.py"


def ensure_data(root: Path, images: int) -> Path:
    """The demo folder with ``images`` training mosaics (400 valid, 400 test), generated once under ``root``."""
    from probmcl_med.data.demo import ensure_demo

    return ensure_demo(root, n_train=images, n_valid=400, n_test=400)


def timed(command: list[str]) -> tuple[subprocess.CompletedProcess, dict[str, float]]:
    """Run ``command``; its exit status and output, with its wall and CPU seconds and the load average at its end."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done, {"wall_s": wall, "cpu_s": cpu, "load": os.getloadavg()[0]}


def run_plain(data: Path, args: argparse.Namespace, work: Path, threads: int) -> dict[str, float]:
    """One plain-loop run: images/s of its training loop, the command's wall and CPU seconds, the load."""
    out = work / "plain.json"
    command = [
        sys.executable, str(PLAIN_LOOP), str(data), "--encoder", args.encoder, "--image-size", str(args.image_size),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch), "--threads", str(threads), "--out", str(out),
    ]  # fmt: skip
    done, cost = timed(command)
    if done.returncode != 0:
        raise SystemExit(f"the plain loop failed:\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    return {"images_per_s": args.images * args.epochs / result["seconds"], **cost}


def run_train(data: Path, args: argparse.Namespace, work: Path, extra: list[str], name: str) -> dict[str, Any]:
    """One ``probmcl-med train`` run: images/s over its training iterations, its wall and CPU seconds, the load, and
    the loading it chose."""
    out = work / f"run-{len(list(work.iterdir()))}"
    command = [
        sys.executable, "-m", "probmcl_med.cli", "train", "--set", "dataset.name=demo", "--root", str(data.parent),
        "--set", f"dataset.options.n_train={args.images}", "--set", f"encoder.name={args.encoder}",
        "--set", f"dataset.image_size={args.image_size}", "--epochs", str(args.epochs), "--output-dir", str(out),
        "--set", "device=cpu", *extra,
    ]  # fmt: skip
    done, cost = timed(command)
    if done.returncode != 0:
        raise SystemExit(f"train ({name}) failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [r for r in records if r.get("images_per_s")]
    images = sum(r["images_per_s"] * r["seconds"] for r in epochs)
    seconds = sum(r["seconds"] for r in epochs)
    loading = json.loads((out / "run.json").read_text()).get("loading", {})
    return {
        "images_per_s": images / seconds,
        "per_epoch": [r["images_per_s"] for r in epochs],
        **cost,
        "loading": loading,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/bench-data", help="folder for the generated demo mosaics")
    parser.add_argument("--images", type=int, default=4000, help="training images")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64, help="the plain loop's batch (train's default is 64)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of all arms, alternated")
    parser.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME:ARGS",
        help='another train arm, e.g. "one thread:--set threads=1" (NAME:ARGS, ARGS split on spaces; repeatable)',
    )
    parser.add_argument("--out", default=None, help="also write the raw results here (JSON, after every run)")
    parser.add_argument(
        "--plain-threads",
        default="",
        help="the plain loop's intra-op threads, comma-separated (default: one per core); the first is the baseline",
    )
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    args = parser.parse_args()
    from probmcl_med.threads import available_cores

    cores = available_cores()
    data = ensure_data(Path(args.data), args.images)
    plain_threads = [int(t) for t in args.plain_threads.split(",") if t] or [cores]
    plains = {f"plain loop, {t} thread(s)": t for t in plain_threads}
    arms: dict[str, list[str]] = {"train, defaults": []}
    for spec in args.arm:
        name, _, extra = spec.partition(":")
        arms[f"train, {name}"] = extra.split()
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in [*plains, *arms]}
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for _ in range(args.rounds):
            for name, threads in plains.items():
                rows[name].append(run_plain(data, args, work, threads))
                save(rows, args.out)
            for name, extra in arms.items():
                rows[name].append(run_train(data, args, work, extra, name))
                save(rows, args.out)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    report(rows, args, cores, plains)


def save(rows: dict[str, list[dict[str, Any]]], out: str | None) -> None:
    """Write the results so far to ``out`` (a long run keeps what it measured if it is stopped)."""
    if out:
        Path(out).write_text(json.dumps(rows, indent=2) + "\n")


def report(rows: dict[str, list[dict[str, Any]]], args: argparse.Namespace, cores: int, plains: dict) -> None:
    """The table: per arm, median images/s, median per-round ratio to the first plain loop, wall time, the loading."""
    plain = rows[next(iter(plains))]
    table = Table(
        title=f"{args.images} demo mosaics, {args.encoder} at {args.image_size} px, batch {args.batch}, {args.epochs} "
        f"epochs, {cores} cores; median of {args.rounds} round(s), arms alternated in one run"
    )
    same_threads = {threads: rows[name] for name, threads in plains.items()}
    columns = (
        "arm", "images/s", "vs plain loop", "vs plain loop, same threads", "per epoch images/s", "wall s", "CPU s",
        "load",
    )  # fmt: skip
    for column in (*columns, "loading"):
        table.add_column(column, justify="left" if column in ("arm", "loading") else "right")
    for name, runs in rows.items():
        ratios = [r["images_per_s"] / p["images_per_s"] for r, p in zip(runs, plain, strict=True)]
        threads = plains.get(name) or runs[-1].get("loading", {}).get("threads")
        twin = same_threads.get(threads)
        same = [r["images_per_s"] / p["images_per_s"] for r, p in zip(runs, twin, strict=True)] if twin else None
        epochs = " / ".join(f"{v:.1f}" for v in runs[-1].get("per_epoch", []))
        loading = runs[-1].get("loading")
        table.add_row(
            name,
            f"{statistics.median(r['images_per_s'] for r in runs):.1f}",
            f"{statistics.median(ratios):.2f}x",
            f"{statistics.median(same):.2f}x" if same else "-",
            epochs or "-",
            f"{statistics.median(r['wall_s'] for r in runs):.0f}",
            f"{statistics.median(r['cpu_s'] for r in runs):.0f}",
            " / ".join(f"{r['load']:.1f}" for r in runs),
            f"preloaded tensor, {plains.get(name)} thread(s)" if loading is None else _loading(loading),
        )
    Console(width=200).print(table)


def _loading(loading: dict[str, Any]) -> str:
    kept = loading.get("in_memory")
    memory = f"in memory ({kept['bytes'] / 2**20:.0f} MiB)" if kept else "read each epoch"
    return f"{memory}, {loading.get('workers')} workers, {loading.get('threads')} threads"


if __name__ == "__main__":
    main()
