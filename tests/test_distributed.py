"""DDP on CPU (gloo) under torchrun: the distributed contrastive loss equals the single-process one (math.md s.8)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests_distributed_common import build_model, global_batch, objective

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(nproc: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    )
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}", *args,
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("case", ["paper", "issue25"])
def test_two_process_loss_and_gradients_equal_single_process(tmp_path, monkeypatch, case):
    """``issue25``: block means packed for the gather, the log form, and a learned temperature that lives in the
    MDN and is used in the loss (DDP must average its gradient like any other weight's)."""
    monkeypatch.setenv("DDP_CASE", case)
    out = tmp_path / "ddp.pt"
    done = torchrun(2, str(HERE / "distributed_worker.py"), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)

    model = build_model()
    x, y = global_batch()
    h, mixture = model(x)
    single = objective(distributed=False, model=model)(mixture, h, y)
    single.total.backward()
    if case == "issue25":
        assert mixture.means.ndim == 3 and "mdn.logit_scale.theta" in ddp["grads"]

    torch.testing.assert_close(ddp["total"], single.total.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ddp["nll"], single.nll.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ddp["pcl"], single.pcl.detach(), rtol=1e-5, atol=1e-6)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ddp["grads"].keys() and len(grads) > 10
    for name, g in grads.items():
        torch.testing.assert_close(ddp["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
    # the check has teeth: the PCL gradient is not negligible next to the NLL's
    assert single.pcl.item() > 0.1


@pytest.mark.slow
def test_train_command_under_torchrun_two_processes(tmp_path):
    from test_train_resume import ENTRY, SETTINGS

    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    sets = [a for s in SETTINGS if not s.startswith("deterministic") for a in ("--set", s)]
    run = tmp_path / "run"
    done = torchrun(
        2, str(entry), "train", "--output-dir", str(run), *sets, "--set", "contrastive.epochs=1", timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "model.pt").is_file()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # rank 0 alone writes: 1 contrastive + 2 classifier epochs
