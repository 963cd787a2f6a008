"""ProbMCL's fair chance (issue 10 item 7): what stage 1 does to the encoder, and which change, if any, makes it help.

    python benchmarks/evidence/stage1_study.py --jobs 2            # after (or beside) defaults_study.py; resumable
    python benchmarks/evidence/stage1_study.py --report            # tables from whatever has finished

Same data, encoders, initialisations, batch and machine as defaults_study.py (realhisto by default; ``--datasets``).
Every arm is the two-stage pipeline: ``E1`` contrastive epochs on two RandAugment (N=2, M=9) views, then a linear BCE
head on the frozen unit-norm features (30 epochs on cached features, lr 0.1), both under the paper's OneCycle. Arms:

    none       no stage 1 (the head on the initial encoder): the pipeline without it, what stage 1 must beat
    paper      NLL (responsibility) + 0.3 PCL (correlation, Jaccard, alpha 0.5, tau 0.2): the paper
    nll        the likelihood term alone (lambda 0)
    pcl        the contrastive term alone (contrastive.nll_weight 0)
    supcon     a control: the same positives, D weights and tau with the cosine similarity of h instead of mixtures
               (benchmarks/evidence/plugins/supcon_features.py), no MDN term
    std        the paper with the MDN reading h standardised over the batch (contrastive.mdn_input: standardized),
               the fix proposed for the identical-mixture start
    paper_bc   the paper with the Bhattacharyya similarity (the reference of the next arm)
    directions the density sees the whole feature: component means along learned class directions
               (contrastive.component_means: learned_directions, docs/math.md s.2b), Bhattacharyya similarity
    paper_lr   (pretrained only) the paper's optimiser for pretrained encoders: Adam at 1e-4, OneCycle
    warm       the paper's stage 1 started from the encoder of the defaults study's ``bce-flip`` run (same seed):
               does stage 1 improve an encoder that ASL training already made good?
and, to test "stage 1 leaves the encoder worse than random for what follows", fine-tuning after stage 1:
    paper_ft   the paper's stage 1, then the whole network fine-tuned for E1 epochs (BCE; stage 2 sees the same
               RandAugment views as stage 1, since the policy is the dataset's)
    std_ft     the same after the standardised-input stage 1
    none_ft    the same fine-tuning from the initial encoder, no stage 1: the reference of the two arms above

Every run keeps all its stage-1 checkpoints, and ``stage1_probe.py`` then measures per epoch the features' effective
rank, their spread along the diagonal, the batch-norm statistics, a linear probe's test mAP, the mixtures' spread and
the stage-1 gradient by path (``stage1_probe.json`` in the run folder). Tables: ``--results``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import defaults_study as base  # noqa: E402
import issue25  # noqa: E402

ARMS = [
    "none",
    "paper",
    "nll",
    "pcl",
    "supcon",
    "std",
    "paper_bc",
    "directions",
    "paper_lr",
    "warm",
    "paper_ft",
    "std_ft",
    "none_ft",
]
FROZEN_HEAD = [
    "lr_schedule=onecycle",  # the paper's schedule, named: the schema's default is constant since the defaults study
    "classifier.loss=bce",
    "classifier.encoder_lr=0",
    "classifier.augment=false",  # features computed once
    f"classifier.epochs={base.FROZEN_HEAD_EPOCHS}",
    f"classifier.lr={base.UNIT_NORM_HEAD_LR}",
]


def arm_sets(arm: str, init: str, epochs: int, warm_from: Path | None) -> list[str] | None:
    """``--set`` overrides of one arm (None: the arm does not apply to this initialisation)."""
    lr = base.INITS[init]["lr"]
    stage1 = [
        "lr_schedule=onecycle",
        "mode=two-stage",
        f"contrastive.epochs={epochs}",
        f"contrastive.lr={lr}",
        # every stage-1 checkpoint survives the head's epochs too, for stage1_probe.py
        f"checkpoint.keep_last={epochs + base.FROZEN_HEAD_EPOCHS + 2}",
        *base.AUGMENTS["ra9"],
    ]
    fine_tune = fine_tune_recipe(init, epochs)
    std = ["contrastive.mdn_input=standardized"]
    bhattacharyya = ["contrastive.similarity=bhattacharyya"]
    table = {
        "none": ["mode=probe", *FROZEN_HEAD],  # the head on the initial encoder, no stage 1
        "paper": [*stage1, *FROZEN_HEAD],
        "nll": [*stage1, "contrastive.lambda=0", *FROZEN_HEAD],
        "pcl": [*stage1, "contrastive.nll_weight=0", *FROZEN_HEAD],
        "supcon": [*stage1, "contrastive.likelihood=supcon_features", "contrastive.lambda=0", *FROZEN_HEAD],
        "std": [*stage1, *std, *FROZEN_HEAD],
        "paper_bc": [*stage1, *bhattacharyya, *FROZEN_HEAD],
        "directions": [*stage1, *bhattacharyya, "contrastive.component_means=learned_directions", *FROZEN_HEAD],
        "paper_lr": [*stage1, "contrastive.lr=0.0001", *FROZEN_HEAD] if init == "pretrained" else None,
        "warm": [*stage1, f"encoder.weights={warm_from}", *FROZEN_HEAD] if warm_from is not None else None,
        "paper_ft": [*stage1, *fine_tune],
        "std_ft": [*stage1, *std, *fine_tune],
        "none_ft": [
            "lr_schedule=onecycle",
            "mode=probe",
            *base.AUGMENTS["ra9"],
            *fine_tune,
        ],
    }
    if arm in table:
        return table[arm]
    return issue25.candidate_sets(arm, stage1, FROZEN_HEAD)


def fine_tune_recipe(init: str, epochs: int) -> list[str]:
    """The fine-tuning stage of the ``_ft`` arms: the whole network, BCE, the stage-1 views, ``epochs`` passes."""
    lr = base.INITS[init]["lr"]
    return [
        "classifier.loss=bce",
        f"classifier.encoder_lr={lr}",
        f"classifier.lr={base.UNIT_NORM_HEAD_LR}",
        "classifier.augment=true",
        f"classifier.epochs={epochs}",
    ]


def issue25_job(dataset: str, init: str, arm: str, seed: int, ctx: dict) -> dict:
    """One run of issue 25's study (``phase`` issue25): a frozen-head arm, or ``X+ft`` from X's frozen run."""
    size = [f"dataset.image_size={issue25.IMAGE_SIZE}"]
    if arm.endswith("+ft"):
        frozen = ctx["out"] / "issue25" / dataset / init / f"{issue25.frozen_of(arm)}__seed{seed}"
        recipe = fine_tune_recipe(init, ctx["epochs"])
        sets = issue25.fine_tune_sets(arm, frozen, recipe, base.AUGMENTS["ra9"])
    else:
        sets = arm_sets(arm, init, ctx["epochs"], None)
    job = base.make_job("issue25", dataset, init, arm, seed, ctx, [*sets, *size])
    job["image_size"] = issue25.IMAGE_SIZE
    return job


def issue25_batches(phase: str, ctx: dict) -> list[list[dict]]:
    """Issue 25's runs in order, as batches that may run in parallel (a fine-tuning batch after its frozen runs)."""
    if phase == "screen":
        dataset, init = issue25.SCREEN_BLOCK
        return [[issue25_job(dataset, init, arm, 0, ctx) for arm in issue25.SCREEN_ARMS]]
    decision = issue25.screen_decision(ctx["out"])
    if decision is None:
        print("confirm: the screen has not finished; run --phase screen first", flush=True)
        return []
    advanced = decision["advanced"]
    batches = []
    if phase == "extend":
        dataset, init = issue25.SCREEN_BLOCK
        extra = issue25.extension_arms(advanced)
        for seed in range(ctx["seeds"]):
            batches.append([issue25_job(dataset, init, arm, seed, ctx) for arm in extra])
            batches.append([issue25_job(dataset, init, f"{arm}+ft", seed, ctx) for arm in extra])
        return batches
    for dataset, init in issue25.BLOCKS:
        if dataset not in ctx["datasets"] or init not in ctx["inits"]:
            continue
        for seed in range(ctx["seeds"]):
            frozen = [*issue25.REFERENCES, *advanced]
            tuned = ["none+ft", *(f"{a}+ft" for a in advanced), "paper+ft", "supcon+ft"]
            batches.append([issue25_job(dataset, init, arm, seed, ctx) for arm in frozen])
            batches.append([issue25_job(dataset, init, arm, seed, ctx) for arm in tuned])
    return batches


def jobs(seed: int, ctx: dict) -> list[dict]:
    out = []
    for dataset in ctx["datasets"]:
        for init in ctx["inits"]:
            warm = ctx["defaults_out"] / "grid" / dataset / init / f"bce-flip__seed{seed}" / "model.pt"
            for arm in ctx["arms"]:
                sets = arm_sets(arm, init, ctx["epochs"], warm if warm.is_file() else None)
                if sets is None:
                    continue
                # the arm's sets come last, so warm's encoder.weights replaces the pretrained init's ImageNet file
                out.append(base.make_job("stage1", dataset, init, arm, seed, ctx, sets))
    return out


def probe(job: dict, log_dir: Path) -> None:
    """stage1_probe.py on a finished run with a stage 1 (once)."""
    run_dir = Path(job["run_dir"])
    no_stage1 = job["arm"] == "none" or job["arm"].endswith("+ft")
    if no_stage1 or not (run_dir / "result.json").is_file() or (run_dir / "stage1_probe.json").is_file():
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROBMCL_MED_PLUGINS": str(HERE / "plugins")}
    with (log_dir / f"{job['name']}.probe.log").open("a") as handle:
        code = subprocess.call([sys.executable, str(HERE / "stage1_probe.py"), str(run_dir)], stdout=handle,
                               stderr=subprocess.STDOUT, env=env)  # fmt: skip
    print(f"{time.strftime('%H:%M:%S')} {job['name']}: probe {'done' if code == 0 else f'FAILED ({code})'}", flush=True)


def report(out: Path, results: Path) -> str:
    """Test mAP per arm (mean +- std over seeds, Welch p against ``none``) and the per-epoch probe trajectories."""
    rows = base.load_results(out)
    results.mkdir(parents=True, exist_ok=True)
    probes = {}
    for path in sorted(out.glob("stage1/*/*/*/stage1_probe.json")):
        probes["/".join(path.parts[-4:-1])] = json.loads(path.read_text())["epochs"]
    (results / "runs.json").write_text(json.dumps(rows, indent=2) + "\n")
    (results / "probes.json").write_text(json.dumps(probes, indent=2) + "\n")
    lines = ["Test split mAP (percent), mean ± sample std over seeds (n); p: Welch's t-test against `none`.\n"]
    for dataset in base.DATASETS:
        for init in base.INITS:
            block = [r for r in rows if r["dataset"] == dataset and r["init"] == init]
            if not block:
                continue
            ref = [r["test"]["mAP"] for r in block if r["arm"] == "none"]
            lines += [
                f"\n### {dataset}, {init}\n",
                "| arm | n | mAP | CF1 | Δ vs none | p |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for arm in ARMS:
                maps = [r["test"]["mAP"] for r in block if r["arm"] == arm]
                if not maps:
                    continue
                cf1 = [r["test"]["CF1"] for r in block if r["arm"] == arm]
                delta = f"{np.mean(maps) - np.mean(ref):+.1f}" if ref and arm != "none" else ""
                p = base.welch_p(maps, ref) if arm != "none" else float("nan")
                p_text = "" if np.isnan(p) else f"{p:.3f}"
                lines.append(
                    f"| {arm} | {len(maps)} | {base.mean_sd(maps)} | {np.mean(cf1):.1f} | {delta} | {p_text} |"
                )
            keys = ("erank", "diag_std", "bn_shift", "probe_mAP", "pi_std", "sim_pos", "sim_neg")
            for arm in ARMS:
                runs = [v for k, v in probes.items() if k.startswith(f"{dataset}/{init}/{arm}__")]
                if not runs:
                    continue
                lines.append(f"\n{dataset}, {init}, `{arm}`: per stage-1 epoch, mean over {len(runs)} seed(s)\n")
                lines.append("| epoch | " + " | ".join(keys) + " | grad nll_z | grad nll_mdn | grad pcl |")
                lines.append("|---:|" + "---:|" * (len(keys) + 3))
                for i in range(min(len(r) for r in runs)):

                    def mean(key: str, i: int = i, runs: list = runs) -> str:
                        values = [r[i][key] for r in runs if r[i].get(key) is not None]
                        return f"{np.mean(values):.3g}" if values else "-"

                    grads = [np.mean([r[i]["grad"][k] for r in runs]) for k in ("nll_z", "nll_mdn", "pcl")]
                    cells = " | ".join(mean(k) for k in keys)
                    lines.append(f"| {runs[0][i]['epoch']} | {cells} | " + " | ".join(f"{g:.3g}" for g in grads) + " |")
    text = "\n".join(lines) + "\n"
    (results / "tables.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--datasets", default=None, help="default: realhisto (stage1), both datasets (issue25)")
    parser.add_argument("--inits", default=",".join(base.INITS))
    parser.add_argument("--arms", default=",".join(ARMS), help="a comma-separated subset of the arms (default: all)")
    parser.add_argument("--out", default=None, help="default: runs/evidence_stage1 (issue25: runs/evidence_issue25)")
    parser.add_argument("--defaults-out", default="runs/evidence_defaults", help="defaults_study.py's --out (warm)")
    parser.add_argument("--results", default=None, help="default: results_stage1/ (issue25: results_issue25/)")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--study", choices=["stage1", "issue25"], default="stage1", help="issue25: issue25.py")
    parser.add_argument(
        "--phase",
        choices=["all", "screen", "confirm", "probe", "extend"],
        default="all",
        help="issue25 only; extend: the arms the screen did not advance, 3 seeds frozen and fine-tuned on its block",
    )
    parser.add_argument("--gpu-commands", action="store_true", help="issue25: the paper-scale commands of the best arm")
    args = parser.parse_args(argv)
    if args.study == "issue25":
        return main_issue25(args)
    out = Path(args.out or "runs/evidence_stage1")
    results = Path(args.results or HERE / "results_stage1")
    if args.report:
        print(report(out, results))
        return 0
    datasets = (args.datasets or "realhisto").split(",")
    unknown = set(args.arms.split(",")) - set(ARMS)
    if unknown:
        parser.error(f"--arms: unknown {', '.join(sorted(unknown))}; the arms are {', '.join(ARMS)}")
    ctx = {
        "out": out,
        "defaults_out": Path(args.defaults_out),
        "sizes": dict(base.SIZES),
        "epochs": base.EPOCHS,
        "datasets": datasets,
        "inits": args.inits.split(","),
        "arms": [arm for arm in ARMS if arm in args.arms.split(",")],
        "weights": base.weights_file(),
        "folders": {d: base.dataset_folder(d, Path(args.defaults_out) / "data", dict(base.SIZES)) for d in datasets},
    }
    os.environ["PROBMCL_MED_PLUGINS"] = str(HERE / "plugins")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for seed in range(args.seeds):
            batch = jobs(seed, ctx)
            print(f"{time.strftime('%H:%M:%S')} seed {seed}: {len(batch)} runs", flush=True)
            list(pool.map(lambda job: (base.run_job(job, out / "logs"), probe(job, out / "logs")), batch))
            report(out, results)
    print(report(out, results))
    return 0


def main_issue25(args: argparse.Namespace) -> int:
    """``--study issue25``: screen (each run probed per epoch right after it), confirm, ``--phase probe`` (the
    seed-0 runs not probed yet), report."""
    import issue25_report

    out = Path(args.out or "runs/evidence_issue25")
    results = Path(args.results or HERE / "results_issue25")
    if args.report:
        print(issue25_report.report(out, results))
        return 0
    if args.gpu_commands:
        screen = issue25.screen_decision(out, save=False)
        best = screen["advanced"][0] if screen else "log"
        print(f"# best arm: {best} ({'the screen' if screen else 'the screen has not finished: an example'})")
        print("\n".join(issue25.gpu_commands(best)))
        return 0
    datasets = (args.datasets or ",".join(sorted({d for d, _ in issue25.BLOCKS}))).split(",")
    ctx = {
        "out": out,
        "sizes": dict(base.SIZES),
        "epochs": base.EPOCHS,
        "datasets": datasets,
        "inits": args.inits.split(","),
        "seeds": min(args.seeds, issue25.SEEDS),
        "weights": base.weights_file(),
        "folders": {d: base.dataset_folder(d, Path(args.defaults_out) / "data", dict(base.SIZES)) for d in datasets},
    }
    os.environ["PROBMCL_MED_PLUGINS"] = str(HERE / "plugins")
    logs = out / "logs"

    def train_and_probe(job: dict) -> None:
        issue25.run_timed(job, logs)
        probe(job, logs)

    phases = ["screen", "confirm"] if args.phase == "all" else [args.phase]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for phase in phases:
            if phase == "probe":
                runs = [j for p in ("screen", "confirm") for b in issue25_batches(p, ctx) for j in b if j["seed"] == 0]
                list(pool.map(lambda job: probe(job, logs), runs))
                continue
            for batch in issue25_batches(phase, ctx):
                first = batch[0]
                print(f"{time.strftime('%H:%M:%S')} {phase}: {first['dataset']}/{first['init']} seed {first['seed']}, "
                      f"{len(batch)} runs", flush=True)  # fmt: skip
                list(
                    pool.map(train_and_probe if phase == "screen" else lambda job: issue25.run_timed(job, logs), batch)
                )
                issue25_report.report(out, results)
    print(issue25_report.report(out, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
