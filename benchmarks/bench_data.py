"""Data-layer throughput: slide patches through the dataset + DataLoader vs a bare OpenSlide loop; augmentation speed.

Run: ``python benchmarks/bench_data.py`` (options: ``--patches``, ``--size``, ``--workers``, ``--repeats``).

1. Slide patches per second, same patch list for every row:
   - bare: ``OpenSlide.read_region`` in a loop in this process (the floor any loader pays);
   - in process: the ``slides`` dataset (manifest -> items -> ReadImaged -> uint8 tensor -> label), indexed in a loop
     here (the data layer's own overhead over the bare loop);
   - DataLoader: the same dataset through a DataLoader with ``--workers`` workers (persistent; one warm-up pass);
   - DataLoader, normalised: the full evaluation transform (float32, normalised: 4x the bytes between processes).
   Rows are timed interleaved, best of ``--repeats``.
   Target: the dataset row at >= 0.8x the bare loop.
2. Augmented images per second at 224 px from in-memory uint8 images (no decoding), one process, one torch thread:
   the training transform (flips + RandAugment N=2, M=9 + normalise) and the two-view wrapper (images, not pairs).

The slide is ../shared/data/slides/cmu_small_region.svs when present, else a generated 4096 x 4096 JPEG-tiled
pyramidal TIFF.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from probmcl_med import DATASETS
from probmcl_med.data import TwoViews, build_eval_transform, build_train_transform, make_loader
from probmcl_med.data.imageio import SLIDES
from probmcl_med.data.transforms import Compose, LabelToTensord, ReadImaged, ToTensorImaged

REAL_SLIDE = Path(__file__).resolve().parents[2] / "shared/data/slides/cmu_small_region.svs"


def _slide(tmp: Path) -> tuple[Path, str]:
    if REAL_SLIDE.is_file():
        return REAL_SLIDE, "cmu_small_region.svs (real, Aperio SVS, JPEG tiles)"
    from probmcl_med.data.slides import write_pyramidal_tiff

    y, x = np.mgrid[0:4096, 0:4096]
    image = np.stack([(x // 8) % 256, (y // 8) % 256, ((x + y) // 16) % 256], -1).astype(np.uint8)
    return write_pyramidal_tiff(tmp / "bench.tif", image, levels=3, compression="jpeg"), "generated 4096^2 TIFF"


def _timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=600)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--aug-images", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        path, what = _slide(tmp)
        import openslide

        slide = openslide.OpenSlide(str(path))
        width, height = slide.dimensions
        rng = np.random.default_rng(0)
        xs = rng.integers(0, width - args.size, args.patches)
        ys = rng.integers(0, height - args.size, args.patches)
        lines = ["slide,x,y,level,size,labels"] + [
            f"{path},{x},{y},0,{args.size},{'a' if i % 2 else 'b'}" for i, (x, y) in enumerate(zip(xs, ys, strict=True))
        ]
        (tmp / "manifest.csv").write_text("\n".join(lines) + "\n")

        def bare() -> None:
            for x, y in zip(xs, ys, strict=True):
                slide.read_region((int(x), int(y)), 0, (args.size, args.size))

        ds = DATASETS.get("slides")(str(tmp), "train", valid_fraction=0, test_fraction=0)
        raw = Compose([ReadImaged(), ToTensorImaged(), LabelToTensord()])
        normalised = build_eval_transform(args.size, (0.5,) * 3, (0.25,) * 3)

        def in_process() -> None:
            ds.transform = raw
            for i in range(len(ds)):
                ds[i]

        loaders = {}
        for name, transform in (("uint8", raw), ("normalised", normalised)):
            ds.transform = transform
            loaders[name] = make_loader(ds, batch_size=32, workers=args.workers)  # workers copy the transform now
            sum(len(b["label"]) for b in loaders[name])  # warm-up: workers start, each opens the slide once
        cases = {
            "bare": bare,
            "in_process": in_process,
            "uint8": lambda: sum(len(b["label"]) for b in loaders["uint8"]),
            "normalised": lambda: sum(len(b["label"]) for b in loaders["normalised"]),
        }
        bare()
        in_process()
        best = dict.fromkeys(cases, float("inf"))
        for _ in range(args.repeats):  # interleaved, so a busy moment on a shared machine hits every row alike
            for name, fn in cases.items():
                best[name] = min(best[name], _timed(fn, 1))
        labels = {
            "bare": "bare OpenSlide.read_region loop (1 process)",
            "in_process": "slides dataset, in process (0 workers), uint8",
            "uint8": f"slides dataset + DataLoader ({args.workers} workers), uint8",
            "normalised": f"slides dataset + DataLoader ({args.workers} workers), float normalised",
        }
        for name, t in best.items():
            rows.append((labels[name], args.patches / t, f"{best['bare'] / t:.2f}x"))
        loaders.clear()
        SLIDES.clear()

    images = np.random.default_rng(1).integers(0, 256, (16, 224, 224, 3), dtype=np.uint8)
    items = [{"image": images[i % 16], "label": np.array([1, 0], np.float32)} for i in range(args.aug_images)]
    train = build_train_transform(224, (0.5,) * 3, (0.25,) * 3, seed=0)
    views = TwoViews(build_train_transform(224, (0.5,) * 3, (0.25,) * 3, seed=0))
    t_train = _timed(lambda: [train(it) for it in items], args.repeats)
    t_views = _timed(lambda: [views(it) for it in items], args.repeats)
    rows.append(("train transform 224 px (RandAugment 2/9, flips)", args.aug_images / t_train, "images/s"))
    rows.append(("two-view wrapper 224 px (2 augmented images each)", 2 * args.aug_images / t_views, "images/s"))

    print(f"slide: {what}; {args.patches} patches of {args.size} px at level 0; best of {args.repeats}")
    print(f"{'what':<62} {'per second':>11}  {'vs bare':>9}")
    print("-" * 86)
    for name, rate, ratio in rows:
        print(f"{name:<62} {rate:>11.1f}  {ratio:>9}")


if __name__ == "__main__":
    main()
