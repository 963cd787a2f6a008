"""``make gpu-check``: the GPU paths tested and measured in one run of at most 10 minutes, written to one JSON file.

On a machine with CUDA, in this order, each step in a subprocess with a time limit (a step that fails or runs out of
time is recorded as such and the next one runs):

1. the CUDA-marked tests (``pytest -m cuda``: AMP bf16 and fp16 + GradScaler steps, torch.compile of an encoder, a
   one-process NCCL group and the gathered loss, predict and Grad-CAM, the Triton kernel against torch);
2. ``bench_train.py`` with tresnet_m at 224 px (random weights, 64 images = 128 views per step, AMP): views/s of the
   plain ASL step and of the stage-1 step, and their ratio (target: <= 1.05);
3. ``bench_contrastive.py`` on the GPU: torch vs triton vs dense, 2N in {128, 256, 512}, C in {9, 80} (target: the
   loss at 2N = 256, C = 80 under 1 ms forward + backward with triton);
4. a sweep of the Triton kernel's launch shapes at 2N = 256, C = 80 (forward + backward of the similarity alone), for
   tuning :data:`probmcl_med.core.triton_correlation.DEFAULT_BLOCKS`.

Writes ``--out`` (default ``gpu-check.json``; the card's name, versions, every step's result) and prints a summary.
Exit status 1 when a test failed or a step broke, else 0. Without CUDA it says so in one line and exits 0.

Run from the repository root: ``make gpu-check``, or ``python3 benchmarks/gpu_check.py`` with any Python that has the
project's dependencies (the repository root is put on ``PYTHONPATH``; no install needed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 570.0
"""The whole check ends within this many seconds (each step's limit is cut to what is left)."""
STEP_LIMITS_S = {"tests": 240.0, "train": 150.0, "contrastive": 150.0, "sweep": 90.0}
SWEEP_BLOCKS = [(16, 16, 4, 4), (16, 8, 4, 4), (32, 16, 8, 8), (32, 8, 4, 8), (16, 16, 8, 8)]
"""(rows, components, warps forward, warps backward) of the kernel-shape sweep; the first is the default."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Clock:
    def __init__(self, budget: float) -> None:
        self.deadline = time.monotonic() + budget

    def limit(self, step: str) -> float:
        return max(1.0, min(STEP_LIMITS_S[step], self.deadline - time.monotonic() - 5.0))


def run_step(cmd: list[str], limit: float) -> tuple[str, subprocess.CompletedProcess[str] | None, float]:
    """``(status, process, seconds)``: status ``ok``, ``failed`` (non-zero exit) or ``timed out``."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return "timed out", None, time.perf_counter() - start
    return ("ok" if proc.returncode == 0 else "failed"), proc, time.perf_counter() - start


def _tail(proc: subprocess.CompletedProcess[str] | None, chars: int = 2000) -> str:
    return "" if proc is None else (proc.stdout + proc.stderr)[-chars:]


# ---------------------------------------------------------------------------------------------------- steps
def step_tests(limit: float, tmp: Path) -> dict[str, Any]:
    xml_path = tmp / "cuda-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", f"--junitxml={xml_path}"]
    status, proc, seconds = run_step([*cmd, "tests"], limit)
    result: dict[str, Any] = {"status": status, "seconds": round(seconds, 1), "cases": []}
    if xml_path.is_file():
        for case in ET.parse(xml_path).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    message = (node.get("message") or "").splitlines()[0][:300] if node.get("message") else ""
            result["cases"].append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)),
                                    "message": message})  # fmt: skip
    counts: dict[str, int] = {}
    for case in result["cases"]:
        counts[case["outcome"]] = counts.get(case["outcome"], 0) + 1
    result["counts"] = counts
    if status != "ok" or not result["cases"]:
        result["output_tail"] = _tail(proc)
    return result


def step_train(limit: float) -> dict[str, Any]:
    cmd = [sys.executable, "benchmarks/bench_train.py", "--encoder", "tresnet_m", "--image-size", "224", "--batch",
           "64", "--device", "cuda", "--warmup", "3", "--repeats", "10", "--json"]  # fmt: skip
    status, proc, seconds = run_step(cmd, limit)
    result: dict[str, Any] = {"status": status, "seconds": round(seconds, 1)}
    if status == "ok" and proc is not None:
        text = proc.stdout
        result["rows"] = json.loads(text[text.index("[") :])
    else:
        result["output_tail"] = _tail(proc)
    return result


def step_contrastive(limit: float, tmp: Path) -> dict[str, Any]:
    out = tmp / "contrastive.json"
    cmd = [sys.executable, "benchmarks/bench_contrastive.py", "--device", "cuda", "--repeats", "5", "--json", str(out)]
    status, proc, seconds = run_step(cmd, limit)
    result: dict[str, Any] = {"status": status, "seconds": round(seconds, 1)}
    if out.is_file():
        result["rows"] = json.loads(out.read_text())
    if proc is not None:
        result["table"] = proc.stdout.strip()
    if status != "ok":
        result["output_tail"] = _tail(proc)
    return result


def step_sweep(limit: float, tmp: Path) -> dict[str, Any]:
    out = tmp / "sweep.json"
    status, proc, seconds = run_step([sys.executable, __file__, "--sweep-worker", str(out)], limit)
    result: dict[str, Any] = {"status": status, "seconds": round(seconds, 1)}
    if out.is_file():
        result["rows"] = json.loads(out.read_text())
    if status != "ok":
        result["output_tail"] = _tail(proc)
    return result


def sweep_worker(out: Path) -> None:
    """Median forward + backward time of ``correlation_similarity`` (triton) at 2N = 256, C = 80, n = 2048 for each
    launch shape of :data:`SWEEP_BLOCKS`, against the torch backend (largest value and gradient differences)."""
    import torch

    import probmcl_med.core.triton_correlation as tc
    from probmcl_med.core.mixture import GaussianMixture
    from probmcl_med.core.similarities import correlation_similarity

    g = torch.Generator().manual_seed(0)
    leaves = [
        torch.randn(256, 80, generator=g),
        0.02 * torch.randn(256, 80, generator=g),
        1 + torch.rand(256, 80, generator=g),
    ]
    leaves = [t.cuda().requires_grad_() for t in leaves]
    upstream = torch.randn(256, 256, generator=g).cuda()

    def run(backend: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logw = torch.log_softmax(leaves[0], 1)
        m = GaussianMixture(logw.exp(), leaves[1], leaves[2], 2048, logw)
        s = correlation_similarity(m, m, backend=backend)
        return s.detach(), list(torch.autograd.grad((s * upstream).sum(), leaves))

    ref, ref_grads = run("torch")
    rows = []
    for rows_, comps, wf, wb in SWEEP_BLOCKS:
        tc.DEFAULT_BLOCKS = tc.Blocks(rows_, comps, wf, wb)
        value, grads = run("triton")  # compiles
        times = []
        for _ in range(20):
            torch.cuda.synchronize()
            start = time.perf_counter()
            run("triton")
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        rows.append({
            "rows": rows_, "components": comps, "warps_forward": wf, "warps_backward": wb,
            "ms": 1e3 * statistics.median(times),
            "max_value_diff": float((value - ref).abs().max()),
            "max_grad_rel_diff": max(
                float((x - y).abs().max() / y.abs().max()) for x, y in zip(grads, ref_grads, strict=True)
            ),
        })  # fmt: skip
        out.write_text(json.dumps(rows, indent=2))  # what is done survives a timeout


# ---------------------------------------------------------------------------------------------------- report
def summary(report: dict[str, Any]) -> list[str]:
    lines = [f"gpu-check on {report['device']} (torch {report['torch']}, triton {report['triton']})"]
    tests = report["steps"]["tests"]
    counts = ", ".join(f"{n} {k}" for k, n in sorted(tests.get("counts", {}).items())) or "no results"
    lines.append(f"- CUDA tests: {tests['status']} in {tests['seconds']} s: {counts}")
    for case in tests.get("cases", []):
        if case["outcome"] in ("failed", "error"):
            lines.append(f"    {case['outcome']}: {case['name']}: {case['message']}")
    steps = report["steps"]

    def train_row(r: dict[str, Any]) -> str:
        return (
            f"plain {r['plain_views_per_s']:.0f} views/s, stage-1 {r['stage1_views_per_s']:.0f} views/s, ratio "
            f"{r['cost_ratio']:.3f} (target <= 1.05), peak {r['plain_peak_gib']:.1f} / {r['stage1_peak_gib']:.1f} GiB"
        )

    def contrastive_row(r: dict[str, Any]) -> str:
        cells = [f"{1e3 * r[i]['time_s']:.3f}" if r.get(i) else "skipped" for i in ("torch", "triton", "dense")]
        ratio = r["triton"]["time_s"] / r["torch"]["time_s"] if r.get("triton") and r.get("torch") else float("nan")
        return f"| {r['rows']} | {r['C']} | " + " | ".join(cells) + f" | {ratio:.3f} |"

    def sweep_row(r: dict[str, Any]) -> str:
        return (
            f"rows {r['rows']}, components {r['components']}, warps {r['warps_forward']}/{r['warps_backward']}: "
            f"{r['ms']:.3f} ms (value diff {r['max_value_diff']:.1e}, gradient rel. diff {r['max_grad_rel_diff']:.1e})"
        )

    for title, step, header, row in (
        ("stage-1 vs plain ASL step (tresnet_m, 224 px, 128 views, AMP)", steps["train"], None, train_row),
        (
            "contrastive loss, forward + backward, n = 2048 (target: triton < 1 ms at 2N = 256, C = 80)",
            steps["contrastive"],
            "| 2N | C | torch ms | triton ms | dense ms | triton / torch |",
            contrastive_row,
        ),
        ("Triton launch shapes at 2N = 256, C = 80 (similarity only)", steps["sweep"], None, sweep_row),
    ):
        lines.append(f"- {title}: {step['status']} in {step['seconds']} s")
        lines += [f"    {line}" for line in ([header] if header else []) + [row(r) for r in step.get("rows", [])]]
    lines.append(f"written: {report['out']} ({report['seconds']:.0f} s in all)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check.json", help="the JSON report (default gpu-check.json)")
    parser.add_argument("--sweep-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sweep_worker:
        sweep_worker(Path(args.sweep_worker))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine; nothing to check (run it where a GPU is)")
        return 0
    try:
        import triton

        import probmcl_med.engine  # noqa: F401  (the project and its dependencies import)
    except ImportError as exc:
        print(f"gpu-check: {exc}; install the project's dependencies (or carry them as wheels) and run again")
        return 2
    start = time.perf_counter()
    clock = Clock(BUDGET_S)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "steps": {},
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, fn in (
            ("tests", lambda limit: step_tests(limit, tmp)),
            ("train", step_train),
            ("contrastive", lambda limit: step_contrastive(limit, tmp)),
            ("sweep", lambda limit: step_sweep(limit, tmp)),
        ):
            print(f"gpu-check: {name} ...", flush=True)
            report["steps"][name] = fn(clock.limit(name))
    report["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    report["out"] = str(out)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(json.dumps(report, indent=2))
    os.replace(tmp_out, out)
    print("\n".join(summary(report)))
    broken = any(s["status"] != "ok" for s in report["steps"].values())
    failed = any(c["outcome"] in ("failed", "error") for c in report["steps"]["tests"].get("cases", []))
    return 1 if broken or failed else 0


if __name__ == "__main__":
    sys.exit(main())
