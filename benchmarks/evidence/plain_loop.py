"""The line every default must clear: the plain multi-label training loop a user writes in an hour.

Binary cross-entropy on the logits, random horizontal flips, Adam, the encoder's own classification layer replaced by
a linear one, the last epoch's weights evaluated. ``--schedule``: the learning rate over the run, stepped per
iteration, the way a user writes it with torch's own schedulers and their default settings: ``constant``,
``onecycle`` (``OneCycleLR(max_lr=lr, total_steps=T)``: 30 % warm-up, cosine annealing, beta1 cycled) or ``cosine``
(``CosineAnnealingLR(T_max=T)``, no warm-up). Nothing from probmcl_med but the
metrics (``probmcl_med.evaluation.multilabel_metrics``, exact to scikit-learn), so that the baseline shares none of
the project's data, augmentation, training or model code.

    python benchmarks/evidence/plain_loop.py DATA_FOLDER --encoder resnet18 --image-size 64 --epochs 8 \\
        --lr 1e-3 --schedule onecycle --seed 0 --out result.json --scores scores.npz

DATA_FOLDER holds ``labels.csv`` (``image``, one 0/1 column per class, ``split`` in train/valid/test) and the
images, the layout of the ``csv`` dataset. ``--encoder``: a timm model name (random initialisation) or
``tv_mobilenet_v2`` (torchvision's MobileNetV2; ``--weights FILE`` loads its ImageNet state dict). Inputs are scaled to
[0, 1] and normalised with the ImageNet mean and std, resized to ``--image-size`` (bilinear, antialiased).
``--scores FILE.npz`` also keeps the raw logits and labels of the valid and test splits (paired tests, calibration).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def read_split(folder: Path, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(N, 3, size, size) float32 normalised images, (N, C) float32 labels and the class names of one split."""
    with (folder / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    classes = [c for c in rows[0] if c not in ("image", "split", "cells")]
    rows = [r for r in rows if r["split"] == split]
    images = np.stack([np.asarray(Image.open(folder / r["image"]).convert("RGB")) for r in rows])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    labels = torch.tensor([[float(r[c]) for c in classes] for r in rows])
    return (x - mean) / std, labels, classes


def build_model(name: str, num_classes: int, weights: str | None) -> nn.Module:
    """A timm model with a fresh head, or torchvision's MobileNetV2 (optionally with ImageNet weights)."""
    if name == "tv_mobilenet_v2":
        import torchvision

        model = torchvision.models.mobilenet_v2()
        if weights:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        model.classifier[1] = nn.Linear(model.classifier[1].in_features, num_classes)
        return model
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    """(N, C) float64 logits in eval mode."""
    model.eval()
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]).double().numpy()


def make_scheduler(kind: str, optimizer: torch.optim.Optimizer, lr: float, total_steps: int) -> object:
    """torch's own scheduler for ``--schedule``, with its default settings, stepped once per iteration."""
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    folder = Path(args.data)
    x, y, classes = read_split(folder, "train", args.image_size)
    model = build_model(args.encoder, len(classes), args.weights)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = (len(x) + args.batch_size - 1) // args.batch_size
    scheduler = make_scheduler(args.schedule, optimizer, args.lr, max(1, args.epochs * steps_per_epoch))
    start = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), args.batch_size):
            idx = order[i : i + args.batch_size]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            loss = F.binary_cross_entropy_with_logits(model(xb), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    seconds = time.perf_counter() - start
    from probmcl_med.evaluation import multilabel_metrics

    out: dict = {
        "seconds": seconds,
        "epochs": args.epochs,
        "encoder": args.encoder,
        "lr": args.lr,
        "schedule": args.schedule,
    }
    kept: dict[str, np.ndarray] = {}
    for split in ("valid", "test"):
        xs, ys, _ = read_split(folder, split, args.image_size)
        logits = predict_logits(model, xs)
        kept[f"{split}_logits"], kept[f"{split}_targets"] = logits, ys.numpy().astype(np.float64)
        probs = 1.0 / (1.0 + np.exp(-logits))
        metrics = multilabel_metrics(probs, ys.numpy(), threshold=0.5, class_names=classes)
        summary = metrics["summary"]
        recalls = [c["recall"] for c in metrics["per_class"] if c.get("recall") is not None]
        out[split] = {
            "mAP": summary["mAP"],
            "CF1": summary["CF1"],
            "OF1": summary["OF1"],
            "CP": summary["CP"],
            "CR": summary["CR"],
            "mean_recall": float(np.mean(recalls)) if recalls else None,
        }
    if args.scores:
        np.savez_compressed(args.scores, **kept)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", choices=["constant", "onecycle", "cosine"], default="constant")
    parser.add_argument("--scores", default=None, help="also save valid/test logits and labels here (.npz)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = train(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(json.dumps(result["test"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
