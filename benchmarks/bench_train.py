"""Cost of a ProbMCL stage-1 step per image view, against a plain supervised ASL step, in the same process.

Stage 1 (two views per image -> encoder -> MDN -> NLL + lambda * PCL over all 2N x 2N mixture pairs) and the plain
step (encoder -> linear head -> ASL, the ASL paper's training) run on the same encoder, input size, device and number
of views per step, on synthetic tensors (no data loading), alternating so that machine load affects both alike. The
claim checked: stage-1 time per view <= 1.15x the plain step's at C = 80 classes (MS-COCO).

    python benchmarks/bench_train.py          # CPU (1 thread): test_resnet at 64 px, resnet18 at 112 px; GPU too when present
    python benchmarks/bench_train.py --encoder tresnet_m --image-size 224 --batch 64 --device cuda

``--threads-sweep`` measures instead what the ``threads`` config key decides on the CPU: the plain ASL step fed by a
real DataLoader (``--workers`` worker processes running the training transform, RandAugment, on in-memory images),
once per intra-op thread setting -- torch's default (one per core), the project's default (the cores left after the
workers, :func:`probmcl_med.threads.auto_threads`) and 1 -- in interleaved rounds in one process, as images/s and
the ratio to torch's default:

    python benchmarks/bench_train.py --threads-sweep --encoder resnet18 --image-size 112 --batch 32 --workers 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from probmcl_med.config import load_config
from probmcl_med.core.classification import AsymmetricLoss
from probmcl_med.core.mdn import MixtureDensityNetwork
from probmcl_med.engine.amp import amp_settings, backward, optimizer_step
from probmcl_med.engine.contrastive import ContrastiveModel, build_objective, stack_views
from probmcl_med.models.encoders import get_encoder
from probmcl_med.models.heads import Classifier, LinearHead


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_steps(encoder_name: str, image_size: int, images: int, classes: int, device: torch.device, amp: bool) -> Any:
    """Two step functions on the same inputs: stage 1 on ``images`` x 2 views, plain ASL on 2 x ``images`` images."""
    settings = amp_settings(device, amp)
    config = load_config(overrides=["mode=two-stage", f"encoder.name={encoder_name}"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(images, 2, 3, image_size, image_size, generator=g).to(device)
    y = (torch.rand(images, classes, generator=g) < 0.05).float()
    y[torch.arange(images), torch.randint(0, classes, (images,), generator=g)] = 1.0  # >= 1 label per image
    y = y.to(device)

    enc1 = get_encoder(encoder_name).to(device)
    mdn = MixtureDensityNetwork(enc1.num_features, classes, hidden=tuple(config.contrastive.mdn_hidden)).to(device)
    model = ContrastiveModel(enc1, mdn).train()
    objective = build_objective(config.contrastive)
    opt1 = torch.optim.Adam(model.parameters(), lr=1e-4)

    plain_step = make_plain_step(encoder_name, classes, device, settings)
    views, view_labels = stack_views(x, y)

    def stage1() -> None:
        opt1.zero_grad(set_to_none=True)
        with settings.autocast():
            h, mixture = model(views)
        loss = objective(mixture, h, view_labels).total
        backward(loss, settings)
        optimizer_step(opt1, settings)

    def supervised() -> None:
        plain_step(views, view_labels)

    return stage1, supervised, settings.name


def make_plain_step(encoder_name: str, classes: int, device: torch.device, settings: Any) -> Any:
    """One plain supervised step (encoder -> linear head -> ASL -> Adam) on a batch ``(images, labels)``."""
    encoder = get_encoder(encoder_name).to(device)
    plain = Classifier(encoder, LinearHead(encoder.num_features, classes).to(device), normalize_features=False).train()
    asl = AsymmetricLoss()
    opt = torch.optim.Adam(plain.parameters(), lr=1e-4)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        with settings.autocast():
            logits = plain(images)
        loss = asl(logits, labels)
        backward(loss, settings)
        optimizer_step(opt, settings)

    return step


def time_steps(steps: dict[str, Callable[[], None]], device: torch.device, warmup: int, repeats: int) -> dict[str, Any]:
    """Median seconds per step of each function, interleaved; peak GPU memory per function."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    peaks: dict[str, float | None] = {}
    for name, step in steps.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            step()
        _sync(device)
        peaks[name] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    for _ in range(repeats):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: {"seconds": statistics.median(t), "peak_gib": peaks[name]} for name, t in times.items()}


def bench(
    encoder: str, image_size: int, images: int, classes: int, device: str, amp: bool, warmup: int, repeats: int
) -> dict[str, Any]:
    dev = torch.device(device)
    stage1, supervised, amp_name = make_steps(encoder, image_size, images, classes, dev, amp)
    result = time_steps({"plain ASL step": supervised, "stage-1 step": stage1}, dev, warmup, repeats)
    views = 2 * images
    plain, probmcl = result["plain ASL step"], result["stage-1 step"]
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "encoder": encoder,
        "image_size": image_size,
        "views_per_step": views,
        "classes": classes,
        "amp": amp_name,
        "plain_views_per_s": views / plain["seconds"],
        "stage1_views_per_s": views / probmcl["seconds"],
        "plain_peak_gib": plain["peak_gib"],
        "stage1_peak_gib": probmcl["peak_gib"],
        "cost_ratio": probmcl["seconds"] / plain["seconds"],
    }


class _SyntheticImages(torch.utils.data.Dataset):
    """``size`` items of random 256 x 256 uint8 RGB images (16 distinct) with random labels, through ``transform``."""

    def __init__(self, size: int, classes: int, transform: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (16, 256, 256, 3), dtype=np.uint8)
        self.labels = (rng.random((size, classes)) < 0.05).astype(np.float32)
        self.size, self.transform = size, transform

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.transform({"image": self.images[index % 16], "label": self.labels[index]})


def threads_sweep(
    encoder: str, image_size: int, batch: int, classes: int, workers: int, steps: int, rounds: int
) -> list[dict[str, Any]]:
    """Images/s of the plain step fed by a ``workers``-process DataLoader, per intra-op thread setting (see the
    module docstring); median over ``rounds`` interleaved rounds of ``steps`` steps, after one warm-up round."""
    from probmcl_med.data import make_loader
    from probmcl_med.data.transforms import build_train_transform
    from probmcl_med.threads import auto_threads, available_cores

    device = torch.device("cpu")
    step = make_plain_step(encoder, classes, device, amp_settings(device, False))
    transform = build_train_transform(image_size, (0.5,) * 3, (0.25,) * 3, policy="randaugment", seed=0)
    loader = make_loader(_SyntheticImages(10**6, classes, transform), batch, shuffle=False, workers=workers)
    batches = iter(loader)
    cores = available_cores()
    settings = {
        f"torch default ({cores} = cores)": cores,
        f"auto ({cores} cores - {workers} workers)": auto_threads(workers),
    }
    if 1 not in settings.values():
        settings["1"] = 1
    times: dict[str, list[float]] = {name: [] for name in settings}
    for round_index in range(rounds + 1):
        for name, count in settings.items():
            torch.set_num_threads(count)
            start = time.perf_counter()
            for _ in range(steps):
                b = next(batches)
                step(b["image"], b["label"])
            if round_index:  # round 0 warms up the workers, the allocator and every thread pool
                times[name].append(time.perf_counter() - start)
    baseline = statistics.median(next(iter(times.values())))
    return [
        {
            "setting": name,
            "threads": settings[name],
            "images_per_s": steps * batch / statistics.median(t),
            "ratio": baseline / statistics.median(t),
        }
        for name, t in times.items()
    ]


def print_threads_sweep(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"plain ASL step + DataLoader ({args.workers} workers, RandAugment), {args.encoder} at {args.image_size} px, "
        f"{args.batch} images per step, CPU; median of {args.repeats} rounds of {args.steps} steps"
    )
    table = Table()
    for column in ("intra-op threads", "n", "images/s", "vs torch default"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["setting"], str(r["threads"]), f"{r['images_per_s']:.1f}", f"{r['ratio']:.2f}x")
    Console(width=200).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=None, help="one encoder (default: test_resnet on CPU, tresnet_m on GPU)")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None, help="images per step (views = 2x)")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu, plus cuda when available)")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (default 1: on a busy machine OpenMP threads that wait for each other make multi-thread "
        "timings swing by 10x and more)",
    )
    parser.add_argument("--threads-sweep", action="store_true", help="time the thread settings (see the docstring)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of --threads-sweep")
    parser.add_argument("--steps", type=int, default=4, help="steps per round of --threads-sweep")
    args = parser.parse_args()
    if args.threads_sweep:
        args.encoder, args.image_size, args.batch = args.encoder or "resnet18", args.image_size or 112, args.batch or 32
        rows = threads_sweep(
            args.encoder, args.image_size, args.batch, args.classes, args.workers, args.steps, args.repeats
        )
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print_threads_sweep(rows, args)
        return
    torch.set_num_threads(args.threads)

    runs = []
    devices = [args.device] if args.device else ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    for device in devices:
        gpu = device.startswith("cuda")
        # Defaults: tresnet_m at 224 on a GPU (the paper's); on a CPU a tiny and a small encoder, to show how the
        # fixed cost of the mixture similarity (2N x 2N x C x C terms) weighs against the encoder's.
        default = [("tresnet_m", 224)] if gpu else [("test_resnet", 64), ("resnet18", 112)]
        cases = [(args.encoder, args.image_size or default[0][1])] if args.encoder else default
        for encoder, size in cases:
            size = args.image_size or size
            batch = args.batch or (64 if gpu else 32)
            runs.append(bench(encoder, size, batch, args.classes, device, not args.no_amp, args.warmup, args.repeats))
    if args.json:
        print(json.dumps(runs, indent=2))
        return
    table = Table(title=f"stage-1 step vs plain ASL step, per image view (C = {args.classes}; target ratio <= 1.15)")
    for column in (
        "device",
        "encoder",
        "px",
        "views/step",
        "amp",
        "plain views/s",
        "stage-1 views/s",
        "ratio",
        "peak GiB plain / stage-1",
    ):
        table.add_column(column, justify="right")
    for r in runs:
        peak = "n/a (CPU)" if r["plain_peak_gib"] is None else f"{r['plain_peak_gib']:.2f} / {r['stage1_peak_gib']:.2f}"
        table.add_row(
            r["device"], r["encoder"], str(r["image_size"]), str(r["views_per_step"]), r["amp"],
            f"{r['plain_views_per_s']:.1f}", f"{r['stage1_views_per_s']:.1f}", f"{r['cost_ratio']:.2f}x", peak,
        )  # fmt: skip
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
