"""``probmcl-med train`` against the plain loop a user writes, on the same data and model: images/s and the ratio.

The baseline is ``benchmarks/evidence/plain_loop.py`` (images preloaded as one normalised tensor, random flips with
``torch.where``, Adam, BCE; nothing from probmcl_med), run with one intra-op thread per core. The project runs
config-free (the schema's defaults: mode asl, BCE, flips, constant lr, batches of 64), with only the encoder, the
image size and the run length set, so the loader workers and torch threads are the ones it chooses from the data.
Each arm runs as its own process, alternated in rounds so that the load of a shared machine falls on all alike; the
ratio to the plain loop is computed per round, and the table gives the median of the rounds.

Images/s count training iterations only: for the plain loop its timed loop (after the preload); for ``train`` the
per-epoch ``images_per_s`` of ``metrics.jsonl`` (from each epoch's first batch to its last, validation excluded),
summed over the epochs. The whole command's wall time, start-up, preload and validation included, is shown too.

    python benchmarks/bench_train_vs_plain.py                       # 4,000 demo mosaics, resnet18 at 64 px, 2 epochs
    python benchmarks/bench_train_vs_plain.py --rounds 2 --arm "no cache=--set dataset.cache_gb=0" --plain-threads 2,1

The data are the embedded demo's digit mosaics (64 x 64 PNGs), generated on first use under ``--data``.
"""

from __future__ import annotations

import argparse
import json
import os
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


def run_plain(data: Path, args: argparse.Namespace, work: Path, threads: int) -> dict[str, float]:
    """One plain-loop run: images/s of its training loop and the command's wall seconds."""
    out = work / "plain.json"
    command = [
        sys.executable, str(PLAIN_LOOP), str(data), "--encoder", args.encoder, "--image-size", str(args.image_size),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch), "--threads", str(threads), "--out", str(out),
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    result = json.loads(out.read_text())
    return {"images_per_s": args.images * args.epochs / result["seconds"], "wall_s": wall}


def run_train(data: Path, args: argparse.Namespace, work: Path, extra: list[str], name: str) -> dict[str, Any]:
    """One ``probmcl-med train`` run: images/s over its training iterations, its wall seconds, and what it chose."""
    out = work / f"run-{len(list(work.iterdir()))}"
    command = [
        sys.executable, "-m", "probmcl_med.cli", "train", "--set", "dataset.name=demo", "--root", str(data.parent),
        "--set", f"dataset.options.n_train={args.images}", "--set", f"encoder.name={args.encoder}",
        "--set", f"dataset.image_size={args.image_size}", "--epochs", str(args.epochs), "--output-dir", str(out),
        "--set", "device=cpu", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
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
        "wall_s": wall,
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
        metavar="NAME=ARGS",
        help='another train arm, e.g. "workers=0=--set workers=0" (NAME=ARGS, ARGS split on spaces; repeatable)',
    )
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
        name, _, extra = spec.partition("=")
        arms[f"train, {name}"] = extra.split()
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in [*plains, *arms]}
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for _ in range(args.rounds):
            for name, threads in plains.items():
                rows[name].append(run_plain(data, args, work, threads))
            for name, extra in arms.items():
                rows[name].append(run_train(data, args, work, extra, name))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    report(rows, args, cores, plains)


def report(rows: dict[str, list[dict[str, Any]]], args: argparse.Namespace, cores: int, plains: dict) -> None:
    """The table: per arm, median images/s, median per-round ratio to the first plain loop, wall time, the loading."""
    plain = rows[next(iter(plains))]
    table = Table(
        title=f"{args.images} demo mosaics, {args.encoder} at {args.image_size} px, batch {args.batch}, {args.epochs} "
        f"epochs, {cores} cores; median of {args.rounds} round(s), arms alternated in one run"
    )
    for column in ("arm", "images/s", "vs plain loop", "per epoch images/s", "wall s", "loading"):
        table.add_column(column, justify="left" if column in ("arm", "loading") else "right")
    for name, runs in rows.items():
        ratios = [r["images_per_s"] / p["images_per_s"] for r, p in zip(runs, plain, strict=True)]
        epochs = " / ".join(f"{v:.1f}" for v in runs[-1].get("per_epoch", []))
        loading = runs[-1].get("loading")
        table.add_row(
            name,
            f"{statistics.median(r['images_per_s'] for r in runs):.1f}",
            f"{statistics.median(ratios):.2f}x",
            epochs or "-",
            f"{statistics.median(r['wall_s'] for r in runs):.0f}",
            f"preloaded tensor, {plains.get(name)} thread(s)" if loading is None else _loading(loading),
        )
    Console(width=200).print(table)


def _loading(loading: dict[str, Any]) -> str:
    kept = loading.get("in_memory")
    memory = f"in memory ({kept['bytes'] / 2**20:.0f} MiB)" if kept else "read each epoch"
    return f"{memory}, {loading.get('workers')} workers, {loading.get('threads')} threads"


if __name__ == "__main__":
    main()
