"""Why the contrastive term barely moves: similarities of trained ProbMCL mixtures on the test split.

    python benchmarks/evidence/diagnose_pcl.py RUN_DIR [RUN_DIR ...] [--out results/pcl_diagnostic.json]

For each finished run folder (with an MDN in its model.pt) it takes 128 test images, computes the encoder's
unit-norm features, the MDN's mixtures and the configured similarity between every pair, and reports:

- the similarity of positive pairs (overlap >= alpha) and of negative pairs, mean and spread;
- the PCL of that batch against its value when every similarity is equal (the PCL's value at initialisation: then
  the log-softmax is uniform and the loss is ``mean over anchors of sum_j D_ij log(M - 1) / |A(i)|``);
- the spread of the mixtures themselves: std over samples of pi, mu and var (0 means one mixture for every image).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch


def diagnose(run_dir: Path, n: int = 128) -> dict:
    from probmcl_med.bundle import load_model_bundle
    from probmcl_med.core.losses import ProbContrastiveLoss
    from probmcl_med.inference.splits import build_split_dataset
    from probmcl_med.registry import OVERLAPS, SIMILARITIES

    bundle = load_model_bundle(run_dir)
    if bundle.mdn is None:
        return {"run": run_dir.name, "error": "no MDN in this run"}
    c = SimpleNamespace(**bundle.training_config["contrastive"])
    dataset = build_split_dataset(bundle, "test", checkpoint=run_dir)
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    x = torch.stack([it["image"] for it in items])
    y = torch.stack([torch.as_tensor(it["label"]).float() for it in items])
    with torch.no_grad():
        h = bundle.encoder.eval()(x).float()
        mixture = bundle.mdn.eval()(h)
        sim = SIMILARITIES.get(c.similarity)(mixture, mixture)
        overlap = OVERLAPS.get(c.overlap)(y, y)
        loss = ProbContrastiveLoss(similarity=c.similarity, overlap=c.overlap, alpha=c.alpha, tau=c.tau)
        pcl = float(loss(mixture, y))
        flat = type(mixture)(
            mixture.weights, torch.zeros_like(mixture.means), torch.ones_like(mixture.variances), mixture.dim
        )
        pcl_equal = float(loss(flat, y))  # identical components: every similarity is 1
    off = ~torch.eye(len(items), dtype=torch.bool)
    pos = off & (overlap >= c.alpha)
    neg = off & (overlap < c.alpha)
    return {
        "run": run_dir.name,
        "similarity": c.similarity,
        "mdn_input_gain": getattr(c, "mdn_input_gain", 1.0),
        "sim_pos_mean": float(sim[pos].mean()),
        "sim_neg_mean": float(sim[neg].mean()),
        "sim_all_std": float(sim[off].std()),
        "sim_min": float(sim[off].min()),
        "pcl": pcl,
        "pcl_all_similarities_equal": pcl_equal,
        "pi_std_over_samples": float(mixture.weights.std(0).mean()),
        "mu_std_over_samples": float(mixture.means.std(0).mean()),
        "mu_std_over_classes": float(mixture.means.std(1).mean()),
        "var_mean": float(mixture.variances.mean()),
        "var_std_over_classes": float(mixture.variances.std(1).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pcl_diagnostic.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [diagnose(r) for r in args.runs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    json.dump(rows, sys.stdout, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
