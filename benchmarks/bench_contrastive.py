"""The contrastive loss with the blockwise correlation kernel (and, on a GPU, the fused Triton kernel) against a
plain dense implementation, in one run.

Every side computes the same loss (``ProbContrastiveLoss``, Jaccard, alpha 0.5, tau 0.2) on the same float32 inputs;
only the similarity differs:

* torch (blockwise): ``probmcl_med.core.similarities.correlation_similarity(..., backend="torch")`` (log domain,
  tiles of about 2^21 component pairs on CPU and 2^24 on a GPU, recomputed in backward, upper triangle only);
* triton (GPU only): ``correlation_similarity(..., backend="triton")``, one fused kernel per direction
  (``probmcl_med.core.triton_correlation``);
* dense: what one would write from the formula (tests/mixture_reference.py ``dense_correlation``): the whole
  ``(2N, 2N, C, C)`` tensor of component pairs in float32, differentiated by autograd.

Each measurement (forward + backward) runs in a fresh subprocess; peak memory is the growth of the process's peak
resident set (``resource.getrusage(...).ru_maxrss``, reset just before the loss) over the resident set at that point
on the CPU, ``torch.cuda.max_memory_allocated`` above the inputs on a GPU; time the best of ``--repeats`` runs. A
dense configuration whose estimated peak exceeds 40% of the available (GPU) memory (scaled from a dense run with the
same C, else 60 bytes per component pair) is skipped and said so. Ratios are to the dense row (time and memory) and
triton's to torch's; the last column is the largest relative difference of the loss from the torch backend's.

Run: ``python benchmarks/bench_contrastive.py`` (``--repeats N``; ``--threads T``, default 1, because OpenMP threads
on a busy shared machine make timings erratic; ``--device cpu|cuda``, default the CPU and CUDA when present;
``--json PATH`` also writes the rows). About two minutes on one core; on a GPU 2N in {128, 256, 512} x C in {9, 80}.
"""

from __future__ import annotations

import argparse
import functools
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
from probmcl_med.core.similarities import correlation_similarity  # noqa: E402

DIM = 2048
CONFIGS = {"cpu": [(256, 9), (128, 80), (256, 80)], "cuda": [(r, c) for c in (9, 80) for r in (128, 256, 512)]}
"""(2N, C) per device."""
IMPLS = {"cpu": ["torch", "dense"], "cuda": ["torch", "triton", "dense"]}


def _inputs(rows: int, comps: int, device: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, comps, generator=g)
    means = 0.02 * torch.randn(rows, comps, generator=g)
    variances = 1 + torch.rand(rows, comps, generator=g)
    labels = (torch.rand(rows // 2, comps, generator=g) < 3 / comps).float().repeat_interleave(2, dim=0)
    return [t.to(device).requires_grad_() for t in (logits, means, variances)], labels.to(device)


def _loss_fn(impl: str) -> ProbContrastiveLoss:
    if impl in ("torch", "triton"):
        return ProbContrastiveLoss(functools.partial(correlation_similarity, backend=impl), "jaccard", 0.5, 0.2)
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
    # warm up kernels and the allocator: on a GPU at the measured shape (Triton compiles per shape class), on the
    # CPU on a tiny batch (a full dense step there takes tens of seconds)
    warm, warm_labels = _inputs(rows if device == "cuda" else 8, comps, device)
    _step(loss_fn, warm, warm_labels)
    del warm, warm_labels
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


def _available_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0] / 2**20
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


def measure_device(device: str, repeats: int, threads: int) -> list[dict[str, object]]:
    """One row per (2N, C) of :data:`CONFIGS`: time (s), peak MiB and loss of every implementation (None where the
    dense one was skipped, with its estimated MiB)."""
    rows_out: list[dict[str, object]] = []
    bytes_per_pair: dict[int, float] = {}  # measured dense peak per component pair, by C
    for rows, comps in CONFIGS[device]:
        pairs = rows * rows * comps * comps
        row: dict[str, object] = {"device": device, "rows": rows, "C": comps}
        for impl in IMPLS[device]:
            if impl == "dense":
                # about 15 float32 tensors of (2N, 2N, C, C) are alive at the dense peak (6.0 GB at 2N = 128, C = 80)
                estimate = bytes_per_pair.get(comps, 60.0) * pairs / 2**20
                if estimate > 0.4 * _available_mb(device):
                    row["dense"], row["dense_estimated_mb"] = None, estimate
                    continue
                row["dense"] = _measure(impl, rows, comps, 1 if pairs > 2e8 else repeats, threads, device)
                bytes_per_pair[comps] = row["dense"]["peak_mb"] * 2**20 / pairs  # type: ignore[index]
            else:
                row[impl] = _measure(impl, rows, comps, repeats, threads, device)
        rows_out.append(row)
    return rows_out


def _table(device: str, rows: list[dict[str, object]], repeats: int, threads: int) -> list[str]:
    unit, scale = ("ms", 1e3) if device == "cuda" else ("s", 1.0)
    impls = IMPLS[device]
    fast = [i for i in impls if i != "dense"]
    head = [f"{i} {unit}" for i in impls] + [f"{i} / dense time" for i in fast]
    head += ["triton / torch time"] if "triton" in impls else []
    head += [f"{i} MiB" for i in impls] + [f"{i} / dense memory" for i in fast] + ["max loss rel. diff"]
    lines = [
        f"device: {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else f", {threads} threads"),
        f"n = {DIM}, float32, forward + backward, best of {repeats}",
        "| 2N | C | " + " | ".join(head) + " |",
        "|---:|---:|" + "---:|" * len(head),
    ]
    for row in rows:
        m = {i: row[i] for i in impls}  # type: ignore[misc]
        dense = m["dense"]
        cells = [f"{m[i]['time_s'] * scale:.3g}" if m[i] else "skipped" for i in impls]
        cells += [f"{m[i]['time_s'] / dense['time_s']:.3f}" if dense else "-" for i in fast]
        cells += [f"{m['triton']['time_s'] / m['torch']['time_s']:.3f}"] if "triton" in impls else []
        est = row.get("dense_estimated_mb")
        cells += [f"{m[i]['peak_mb']:.0f}" if m[i] else f"~{est:.0f} (est., > 40% of free memory)" for i in impls]
        cells += [f"{m[i]['peak_mb'] / (dense['peak_mb'] if dense else est):.3g}" for i in fast]
        ref = m["torch"]["loss"]
        diffs = [abs(m[i]["loss"] - ref) / abs(ref) for i in impls if i != "torch" and m[i]]
        cells.append(f"{max(diffs):.1e}" if diffs else "-")
        lines.append(f"| {row['rows']} | {row['C']} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: steadier timings on a shared machine)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu, and cuda when available)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "ROWS", "C"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        impl, rows, comps = args.worker[0], int(args.worker[1]), int(args.worker[2])
        print(json.dumps(worker(impl, rows, comps, args.repeats, args.device or "cpu")))
        return
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        rows = measure_device(device, args.repeats, args.threads)
        results += rows
        print("\n".join(_table(device, rows, args.repeats, args.threads)))
        print()
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(results, fh, indent=2)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
