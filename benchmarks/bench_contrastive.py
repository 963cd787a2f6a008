"""The contrastive loss with the blockwise correlation kernel against a plain dense implementation, in one run.

Both sides compute the same loss (``ProbContrastiveLoss``, Jaccard, alpha 0.5, tau 0.2) on the same float32 inputs;
only the similarity differs:

* blockwise: ``probmcl_med.core.similarities.correlation_similarity`` (log domain, tiles of about 2^21 component pairs,
  recomputed in backward, upper triangle only);
* dense: what one would write from the formula (tests/mixture_reference.py ``dense_correlation``): the whole
  ``(2N, 2N, C, C)`` tensor of component pairs in float32, differentiated by autograd.

Each measurement (forward + backward) runs in a fresh subprocess; peak memory is the growth of the process's peak
resident set (``resource.getrusage(...).ru_maxrss``, reset just before the loss) over the resident set at that point, time the best of
``--repeats`` runs. On a GPU (``torch.cuda.is_available()``) the same table is measured with
``torch.cuda.max_memory_allocated`` as well. A dense configuration whose estimated peak exceeds 40% of the available
memory (scaled from a dense run with the same C, else 60 bytes per component pair) is skipped and said so.

Run: ``python benchmarks/bench_contrastive.py`` (``--repeats N``; ``--threads T``, default 1, because OpenMP threads
on a busy shared machine make timings erratic; about two minutes on one core).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import torch  # noqa: E402

from probmcl_med.core.losses import ProbContrastiveLoss  # noqa: E402
from probmcl_med.core.mixture import GaussianMixture  # noqa: E402

DIM = 2048
CONFIGS = [(256, 9), (128, 80), (256, 80)]  # (2N, C)


def _inputs(rows: int, comps: int, device: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, comps, generator=g)
    means = 0.02 * torch.randn(rows, comps, generator=g)
    variances = 1 + torch.rand(rows, comps, generator=g)
    labels = (torch.rand(rows // 2, comps, generator=g) < 3 / comps).float().repeat_interleave(2, dim=0)
    return [t.to(device).requires_grad_() for t in (logits, means, variances)], labels.to(device)


def _loss_fn(impl: str) -> ProbContrastiveLoss:
    if impl == "blockwise":
        return ProbContrastiveLoss("correlation", "jaccard", alpha=0.5, tau=0.2)
    from mixture_reference import dense_correlation

    return ProbContrastiveLoss(dense_correlation, "jaccard", alpha=0.5, tau=0.2)


def _step(loss_fn: ProbContrastiveLoss, params: list[torch.Tensor], labels: torch.Tensor) -> float:
    mixture = GaussianMixture(torch.softmax(params[0], 1), params[1], params[2], DIM)
    loss = loss_fn(mixture, labels)
    loss.backward()
    return float(loss.detach())


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def worker(impl: str, rows: int, comps: int, repeats: int, device: str) -> dict[str, float]:
    """One measurement; printed as JSON by the subprocess."""
    loss_fn = _loss_fn(impl)
    small, small_labels = _inputs(8, comps, device)
    _step(loss_fn, small, small_labels)  # warm up kernels and the allocator on a tiny batch
    params, labels = _inputs(rows, comps, device)
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _reset_peak_rss()
    best, value = float("inf"), float("nan")
    for _ in range(repeats):
        for p in params:
            p.grad = None
        start = time.perf_counter()
        value = _step(loss_fn, params, labels)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss()) - base
    return {"time_s": best, "peak_mb": peak / 2**20, "loss": value}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> int:
    """Reset the peak resident set (Linux ``clear_refs`` 5, which ``ru_maxrss`` follows) and return the bytes
    resident now. Where that is not allowed, return the peak so far: growth above an earlier peak is then measured."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_kb("VmRSS") * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _available_mb() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def _measure(impl: str, rows: int, comps: int, repeats: int, threads: int, device: str) -> dict[str, float]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, str(rows), str(comps)]
    cmd += ["--repeats", str(repeats), "--threads", str(threads), "--device", device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(device: str, repeats: int, threads: int) -> list[str]:
    lines = [
        f"device: {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else f", {threads} threads"),
        f"n = {DIM}, float32, forward + backward, best of {repeats}",
        "| 2N | C | blockwise s | dense s | time ratio | blockwise MiB | dense MiB | memory ratio | loss rel. diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    bytes_per_pair: dict[int, float] = {}  # measured dense peak per component pair, by C
    for rows, comps in CONFIGS:
        blk = _measure("blockwise", rows, comps, repeats, threads, device)
        pairs = rows * rows * comps * comps
        # about 15 float32 tensors of (2N, 2N, C, C) are alive at the dense peak (6.0 GB at 2N = 128, C = 80)
        estimate = bytes_per_pair.get(comps, 60.0) * pairs / 2**20
        if device == "cpu" and estimate > 0.4 * _available_mb():
            lines.append(
                f"| {rows} | {comps} | {blk['time_s']:.2f} | skipped | - | {blk['peak_mb']:.0f} | "
                f"~{estimate:.0f} (est., > 40% of free memory) | ~{blk['peak_mb'] / estimate:.3f} | - |"
            )
            continue
        dense = _measure("dense", rows, comps, 1 if pairs > 2e8 else repeats, threads, device)
        bytes_per_pair[comps] = dense["peak_mb"] * 2**20 / pairs
        diff = abs(blk["loss"] - dense["loss"]) / abs(dense["loss"])
        lines.append(
            f"| {rows} | {comps} | {blk['time_s']:.2f} | {dense['time_s']:.2f} | "
            f"{blk['time_s'] / dense['time_s']:.3f} | {blk['peak_mb']:.0f} | {dense['peak_mb']:.0f} | "
            f"{blk['peak_mb'] / dense['peak_mb']:.3f} | {diff:.1e} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: steadier timings on a shared machine)"
    )
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "ROWS", "C"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        impl, rows, comps = args.worker[0], int(args.worker[1]), int(args.worker[2])
        print(json.dumps(worker(impl, rows, comps, args.repeats, args.device)))
        return
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        print("\n".join(_table(device, args.repeats, args.threads)))
        print()


if __name__ == "__main__":
    main()
