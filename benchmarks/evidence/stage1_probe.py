"""What stage 1 does to the encoder, epoch by epoch: the diagnostics of issue 10 item 7 for one run folder.

    python benchmarks/evidence/stage1_probe.py RUN_DIR [--out RUN_DIR/stage1_probe.json]

RUN_DIR is a two-stage (or stage-1-only) run trained with ``checkpoint.keep_last`` at least its contrastive epochs, so
that every epoch's training state is on disk. For the encoder at initialisation (epoch 0: rebuilt from the run's
config and seed, as the run built it) and after every contrastive epoch it measures, on the run's own data with the
evaluation transform:

- ``erank``: the effective rank (Roy & Vetterli 2007) of the centred unit-norm training features h:
  exp(entropy of the normalised singular values); the feature width H is the maximum;
- ``diag_mean``, ``diag_std``: mean and spread over images of h . 1 / sqrt(H), the component of h along the diagonal
  direction that the density's z argument sees (docs/math.md s.2: with means mu_k 1 and unit-norm z, the density
  depends on z only through sum_i z_i);
- ``bn_var``, ``bn_mean``: batch-norm running variance and |running mean|, averaged over channels and layers, and
  ``bn_shift``: their mean relative change from epoch 0;
- ``probe_mAP``: test mAP of a linear head trained on the frozen unit-norm training features (BCE, full-batch LBFGS,
  the same for every epoch): what a frozen-encoder stage 2 can get out of the features;
- ``pi_std``, ``var_mean``, ``sim_pos``, ``sim_neg``, ``pcl``: the MDN's mixture weights' spread over test images,
  its mean variance, the mean similarity (the run's, value form) of positive pairs (Jaccard >= alpha) and of the
  others, and the contrastive loss on a test batch;
- ``tau``, ``logit_gap``: the temperature the run's loss divides by (learned or configured) and the gap its loss
  sees, ``(mean S over positive pairs - mean S over negative pairs) / tau`` with ``S`` the similarity in the run's
  form (value or log; issue 25); ``cos_pos``, ``cos_neg``, ``cos_logit_gap``: the same for the cosine of the
  features h, the cosine control's similarity (``supcon`` runs: its logit gap is this one, at its tau);
- ``grad``: on one batch of two augmented views, the norm of the stage-1 gradient with respect to the encoder's raw
  pooled feature r (before the L2 norm), split by path: ``nll_z`` (the NLL through its argument z = r / |r|, the
  mixture held fixed), ``nll_mdn`` (the NLL through the MDN's parameters, z held fixed), ``pcl`` (lambda times the
  contrastive term, through the MDN); and ``nll_z_off_diag``: the largest relative part of a sample's ``nll_z``
  gradient off the projected diagonal (I - h h^T) 1 (zero up to rounding when the means sit on the diagonal).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
os.environ.setdefault("PROBMCL_MED_PLUGINS", str(HERE / "plugins"))


def effective_rank(features: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values of the centred (N, H) features."""
    s = np.linalg.svd(features - features.mean(0), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def batchnorm_stats(encoder: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer mean running variance and mean |running mean| of every BatchNorm layer."""
    layers = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    var = np.array([float(m.running_var.mean()) for m in layers if m.running_var is not None])
    mean = np.array([float(m.running_mean.abs().mean()) for m in layers if m.running_mean is not None])
    return var, mean


@torch.no_grad()
def features(encoder: torch.nn.Module, dataset, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm features (N, H) and labels (N, C) of a dataset (evaluation transform, eval mode)."""
    encoder.eval()
    hs, ys = [], []
    for start in range(0, len(dataset), batch):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch))]
        hs.append(F.normalize(encoder(torch.stack([it["image"] for it in items])).float(), dim=1))
        ys.append(torch.stack([torch.as_tensor(it["label"]).float() for it in items]))
    return torch.cat(hs), torch.cat(ys)


def linear_probe(train_h: torch.Tensor, train_y: torch.Tensor, test_h: torch.Tensor) -> np.ndarray:
    """Sigmoid scores of a linear head fitted with BCE + 1e-4 L2 by full-batch LBFGS (deterministic)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(train_h.shape[1], train_y.shape[1]).double()
    x, y = train_h.double(), train_y.double()
    optimizer = torch.optim.LBFGS(
        head.parameters(), lr=1.0, max_iter=200, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(head(x), y) + 1e-4 * head.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return torch.sigmoid(head(test_h.double())).numpy()


def pair_gap(values: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, tau: float) -> float | None:
    """``(mean of values over positive pairs - mean over negative pairs) / tau``: the logit gap a loss sees."""
    if not (positive.any() and negative.any()):
        return None
    return float((values[positive].double().mean() - values[negative].double().mean()) / tau)


def gradient_paths(encoder, mdn, objective, likelihood, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Norms of the stage-1 gradient w.r.t. the raw pooled feature r, split by path (see the module docstring)."""
    encoder.train()
    mdn.train()
    with torch.no_grad():
        r0 = encoder(images).float()  # the encoder returns raw pooled features
    r = r0.clone().requires_grad_(True)

    def unit() -> torch.Tensor:  # a fresh graph from r for each path
        return F.normalize(r, dim=1)

    def grad(value: torch.Tensor) -> torch.Tensor:  # zero when the term does not depend on r by this path
        if not value.requires_grad:
            return torch.zeros_like(r)
        (g,) = torch.autograd.grad(value, r, allow_unused=True)
        return torch.zeros_like(r) if g is None else g

    frozen_mixture = mdn(unit().detach()).detach()
    g_z = grad(likelihood(frozen_mixture, unit(), labels))
    g_mdn = grad(likelihood(mdn(unit()), unit().detach(), labels))  # supcon ignores the mixture: 0
    g_pcl = grad(objective.lam * objective.contrastive(mdn(unit()), labels))
    out = {"nll_z": float(g_z.norm()), "nll_mdn": float(g_mdn.norm()), "pcl": float(g_pcl.norm())}
    with torch.no_grad():
        hd = unit().double()
        diag = torch.ones_like(hd) - hd * hd.sum(1, keepdim=True)  # (I - h h^T) 1, the projected diagonal
        diag = F.normalize(diag, dim=1)
        g = g_z.double()
        residual = g - (g * diag).sum(1, keepdim=True) * diag
        scale = g.norm(dim=1).clamp_min(1e-300)
        out["nll_z_off_diag"] = float((residual.norm(dim=1) / scale).max())
    return out


def probe_run(run_dir: Path) -> dict:
    from probmcl_med.config import load_config
    from probmcl_med.core.losses import similarity_in_form
    from probmcl_med.core.metrics import multilabel_metrics
    from probmcl_med.core.overlaps import jaccard as jaccard_overlap
    from probmcl_med.data.datasets import build_dataset
    from probmcl_med.data.transforms import TwoViews, build_eval_transform, build_train_transform
    from probmcl_med.engine.contrastive import build_mdn, build_objective, stack_views
    from probmcl_med.engine.run import seed_everything
    from probmcl_med.models.encoders import get_encoder
    from probmcl_med.plugins import load_plugins
    from probmcl_med.registry import LIKELIHOODS, SIMILARITIES

    load_plugins()
    torch.set_num_threads(1)
    cfg = load_config(run_dir / "config.yaml")
    meta = json.loads((run_dir / "run.json").read_text())
    norm = meta["normalization"]
    d, e, c = cfg.dataset, cfg.encoder, cfg.contrastive
    eval_t = build_eval_transform(d.image_size, norm["mean"], norm["std"])
    train_ds = build_dataset(d.name, d.root, d.train_split, d.options)
    test_ds = build_dataset(d.name, d.root, d.test_split, d.options)
    train_ds.transform = test_ds.transform = eval_t
    view_ds = build_dataset(d.name, d.root, d.train_split, d.options)
    view_ds.transform = TwoViews(
        build_train_transform(d.image_size, norm["mean"], norm["std"], **d.augment.model_dump(), seed=0)
    )
    batch = [view_ds[i] for i in range(min(64, len(view_ds)))]
    views, view_labels = stack_views(torch.stack([b["image"] for b in batch]), torch.stack([b["label"] for b in batch]))
    class_names = list(train_ds.class_names)
    likelihood = LIKELIHOODS.get(c.likelihood)
    similarity = SIMILARITIES.get(c.similarity)
    in_form = similarity_in_form(similarity, c.similarity_form)
    supcon_tau = float(os.environ.get("SUPCON_TAU", "0.2"))

    seed_everything(cfg.seed, False)
    encoder = get_encoder(e.name, pretrained=e.pretrained, weights=e.weights, **dict(e.options))
    torch.manual_seed(cfg.seed)
    mdn = build_mdn(c, encoder.num_features, len(class_names))
    objective = build_objective(cfg.contrastive, mdn=mdn)
    states = [(0, None)]
    for path in sorted((run_dir / "checkpoints").glob("ckpt-s0-contrastive-e*.pt")):
        states.append((int(path.name.split("-e")[1][:4]), path))
    bn_var0, _ = batchnorm_stats(encoder)
    rows = []
    for epoch, path in states:
        if path is not None:
            state = torch.load(path, map_location="cpu", weights_only=True)
            encoder.load_state_dict(state["models"]["encoder"])
            mdn.load_state_dict(state["models"]["mdn"])
        train_h, train_y = features(encoder, train_ds)
        test_h, test_y = features(encoder, test_ds)
        scores = linear_probe(train_h, train_y, test_h)
        probe = multilabel_metrics(scores, test_y.numpy(), threshold=0.5, class_names=class_names)["summary"]["mAP"]
        diag = (train_h.double().sum(1) / np.sqrt(train_h.shape[1])).numpy()
        bn_var, bn_mean = batchnorm_stats(encoder)
        shift = float(np.mean(np.abs(bn_var - bn_var0) / np.maximum(bn_var0, 1e-12))) if len(bn_var) else float("nan")
        mdn.eval()
        with torch.no_grad():
            mixture = mdn(test_h[:256])
            sim = similarity(mixture, mixture)
            formed = in_form(mixture, mixture)
            cos = test_h[:256] @ test_h[:256].T
            overlap = jaccard_overlap(test_y[:256], test_y[:256])
            off = ~torch.eye(len(sim), dtype=torch.bool)
            positive = (overlap >= c.alpha) & off
            negative = off & ~positive
            pcl = objective.contrastive(mixture, test_y[:256])
            tau = float(objective.contrastive.current_tau())

        row = {
            "epoch": epoch,
            "erank": effective_rank(train_h.double().numpy()),
            "width": int(train_h.shape[1]),
            "diag_mean": float(diag.mean()),
            "diag_std": float(diag.std()),
            "bn_var": float(bn_var.mean()) if len(bn_var) else None,
            "bn_mean": float(bn_mean.mean()) if len(bn_mean) else None,
            "bn_shift": shift,
            "probe_mAP": probe,
            "pi_std": float(mixture.weights.std(0).mean()),
            "var_mean": float(mixture.variances.mean()),
            "sim_pos": float(sim[positive].mean()) if positive.any() else None,
            "sim_neg": float(sim[negative].mean()) if negative.any() else None,
            "tau": tau,
            "logit_gap": pair_gap(formed, positive, negative, tau),
            "cos_pos": float(cos[positive].mean()) if positive.any() else None,
            "cos_neg": float(cos[negative].mean()) if negative.any() else None,
            "cos_logit_gap": pair_gap(cos, positive, negative, supcon_tau),
            "pcl": float(pcl),
            "grad": gradient_paths(encoder, mdn, objective, likelihood, views, view_labels),
        }
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return {"run": str(run_dir), "epochs": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    result = probe_run(run_dir)
    out = Path(args.out) if args.out else run_dir / "stage1_probe.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
