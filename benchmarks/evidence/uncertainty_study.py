"""Issue 25 item 4: does the MDN's spread tell which predictions are wrong better than the classifier's confidence?

    python benchmarks/evidence/uncertainty_study.py [--out runs/evidence_issue25] [--arm paper]

Protocol (benchmarks/evidence/README.md, "Item 4", fixed before the first run): for every block of issue 25's study
where the arm's frozen-head two-stage model has 3 seeds, on the test split, per seed and class, a prediction is
wrong when ``(p >= 0.5) != y``; the doubt scores are ``mdn_var`` (the class-k component's variance), ``mdn_entropy``
(the entropy of the mixture weights), ``confidence`` (``-|p - 0.5|``) and ``ensemble`` (the std of p over the 3
seeds). Per class: the AUROC of each score for "wrong" and the error among the kept predictions at 90 % and 80 %
coverage. The MDN score helps when its AUROC beats ``confidence``'s (paired over class x seed, p < 0.05, positive
mean) and its error at 80 % coverage is lower on average. Writes ``uncertainty.json``, ``uncertainty.md`` and, when
the MDN helps, ``risk_coverage.png`` to the results folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import issue25  # noqa: E402

SCORES = ("mdn_var", "mdn_entropy", "confidence", "ensemble")
COVERAGES = (0.9, 0.8)


def predictions(run_dir: Path) -> dict[str, np.ndarray]:
    """Test-split probabilities, labels and the MDN's (pi, var) of one finished run (its model.pt keeps the MDN)."""
    import torch

    from probmcl_med.bundle import load_model_bundle
    from probmcl_med.data.base import make_loader
    from probmcl_med.evaluation.run_eval import build_split_dataset
    from probmcl_med.inference.loop import run_bundle

    torch.set_num_threads(1)
    bundle = load_model_bundle(run_dir)
    dataset = build_split_dataset(bundle, "test", checkpoint=run_dir)
    out = run_bundle(
        bundle, make_loader(dataset, 64, workers=0, device=torch.device("cpu")), torch.device("cpu"), uncertainty=True
    )
    return {"probs": out.probs, "targets": out.targets, "pi": out.pi, "var": out.var, "classes": bundle.class_names}


def analyse(seeds: list[dict[str, np.ndarray]]) -> dict:
    """Per seed and class: the AUROC of each doubt score for "wrong" and the risk at each coverage."""
    from probmcl_med.evaluation.selective import auroc, risk_at_coverage, weight_entropy

    ensemble = np.stack([s["probs"] for s in seeds]).std(axis=0, ddof=1)
    rows = []
    for seed, s in enumerate(seeds):
        wrong = (s["probs"] >= 0.5) != (s["targets"] >= 0.5)
        doubt = {
            "mdn_var": s["var"],
            "mdn_entropy": np.repeat(weight_entropy(s["pi"])[:, None], s["probs"].shape[1], axis=1),
            "confidence": -np.abs(s["probs"] - 0.5),
            "ensemble": ensemble,
        }
        for k, name in enumerate(s["classes"]):
            row = {"seed": seed, "class": name, "errors": int(wrong[:, k].sum()), "n": len(wrong)}
            for score in SCORES:
                row[f"auroc_{score}"] = auroc(doubt[score][:, k], wrong[:, k])
                for c in COVERAGES:
                    row[f"risk{int(c * 100)}_{score}"] = risk_at_coverage(doubt[score][:, k], wrong[:, k], c)
            rows.append(row)
    return {"rows": rows}


def summarise(rows: list[dict]) -> dict:
    """Means over (class, seed), the paired test of each MDN score's AUROC against ``confidence``'s, the rule."""
    from scipy import stats

    out: dict = {"mean": {}}
    for score in SCORES:
        aurocs = [r[f"auroc_{score}"] for r in rows if not np.isnan(r[f"auroc_{score}"])]
        out["mean"][score] = {
            "auroc": float(np.mean(aurocs)) if aurocs else float("nan"),
            **{
                f"risk{int(c * 100)}": float(np.mean([r[f"risk{int(c * 100)}_{score}"] for r in rows]))
                for c in COVERAGES
            },
        }
    out["error_rate"] = float(np.mean([r["errors"] / r["n"] for r in rows]))
    for score in ("mdn_var", "mdn_entropy"):
        pairs = [
            (r[f"auroc_{score}"], r["auroc_confidence"])
            for r in rows
            if not np.isnan(r[f"auroc_{score}"] + r["auroc_confidence"])
        ]
        a, b = np.array(pairs).T if pairs else (np.array([]), np.array([]))
        p = float(stats.ttest_rel(a, b).pvalue) if len(a) >= 2 else float("nan")
        risk_lower = out["mean"][score]["risk80"] < out["mean"]["confidence"]["risk80"]
        out[f"{score}_vs_confidence"] = {
            "pairs": len(a),
            "auroc_diff": float((a - b).mean()) if len(a) else float("nan"),
            "p": p,
            "helps": bool(len(a) and (a - b).mean() > 0 and p < 0.05 and risk_lower),
        }
    out["mdn_helps"] = any(out[f"{s}_vs_confidence"]["helps"] for s in ("mdn_var", "mdn_entropy"))
    return out


def markdown(block: str, summary: dict, rows: list[dict]) -> list[str]:
    lines = [
        f"\n### {block}: which predictions are wrong (test split, mean over classes and 3 seeds; error rate "
        f"{100 * summary['error_rate']:.1f} %)\n",
        "| doubt score | AUROC for wrong | error at 90 % coverage | error at 80 % coverage |",
        "|---|---:|---:|---:|",
    ]
    for score in SCORES:
        m = summary["mean"][score]
        lines.append(f"| {score} | {m['auroc']:.3f} | {100 * m['risk90']:.2f} % | {100 * m['risk80']:.2f} % |")
    for score in ("mdn_var", "mdn_entropy"):
        c = summary[f"{score}_vs_confidence"]
        lines.append(
            f"\n`{score}` against `confidence`: AUROC {c['auroc_diff']:+.3f} over {c['pairs']} class x seed pairs "
            f"(paired t-test p {c['p']:.3g}): {'helps' if c['helps'] else 'does not help'}."
        )
    lines += [
        "\nPer class (mean over seeds), AUROC: " + ", ".join(SCORES) + "\n",
        "| class | errors / images | " + " | ".join(SCORES) + " |",
        "|---|---:|" + "---:|" * len(SCORES),
    ]
    for name in dict.fromkeys(r["class"] for r in rows):
        mine = [r for r in rows if r["class"] == name]
        cells = [
            f"{np.nanmean([r[f'auroc_{s}'] for r in mine]):.3f}"
            if not all(np.isnan(r[f"auroc_{s}"]) for r in mine)
            else "-"
            for s in SCORES
        ]
        lines.append(
            f"| {name} | {sum(r['errors'] for r in mine)} / {sum(r['n'] for r in mine)} | " + " | ".join(cells) + " |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/evidence_issue25")
    parser.add_argument("--arm", default="paper")
    parser.add_argument("--results", default=str(HERE / "results_issue25"))
    args = parser.parse_args(argv)
    out, results = Path(args.out), Path(args.results)
    report: dict = {"arm": args.arm, "blocks": {}}
    lines = [f"Issue 25 item 4 (protocol: benchmarks/evidence/README.md, 'Item 4'); arm `{args.arm}`."]
    for dataset, init in issue25.BLOCKS:
        runs = [out / "issue25" / dataset / init / f"{args.arm}__seed{s}" for s in range(issue25.SEEDS)]
        finished = sum((r / "result.json").is_file() for r in runs)
        if finished < issue25.SEEDS:
            lines.append(
                f"\n{dataset}, {init}: not run ({finished} of {issue25.SEEDS} seeds of `{args.arm}` finished)."
            )
            continue
        seeds = [predictions(r) for r in runs]
        rows = analyse(seeds)["rows"]
        summary = summarise(rows)
        report["blocks"][f"{dataset}/{init}"] = {"summary": summary, "rows": rows}
        lines += markdown(f"{dataset}, {init}", summary, rows)
    if not report["blocks"]:
        lines.append("\nNo block has 3 finished seeds of this arm yet: nothing is measured, nothing is decided.")
    # None: not measured (no complete block), never a 'does not help' the data did not show
    blocks = report["blocks"].values()
    report["mdn_helps"] = any(b["summary"]["mdn_helps"] for b in blocks) if report["blocks"] else None
    results.mkdir(parents=True, exist_ok=True)
    (results / "uncertainty.json").write_text(json.dumps(report, indent=2) + "\n")
    text = "\n".join(lines) + "\n"
    (results / "uncertainty.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
