"""mode: joint: ASL + NLL + lambda * PCL in one stage, on the demo data; run folder, logged terms, bundle."""

from __future__ import annotations

import json

import pytest
import torch
from test_train import check_trained_bundle, tiny_config

from probmcl_med.config import load_config
from probmcl_med.core.classification import AsymmetricLoss
from probmcl_med.engine import train
from probmcl_med.engine.checkpoint import CheckpointManager
from probmcl_med.engine.joint import JointObjective


@pytest.mark.parametrize("lam", [0.3, 2.0])
def test_joint_trains_one_stage_and_logs_every_term(tmp_path, lam):
    config = tiny_config(tmp_path, "mode=joint", f"contrastive.lambda={lam}", "epochs=2")
    result = train(config)
    run = tmp_path / "run"
    for name in ("config.yaml", "class_names.json", "run.json", "metrics.jsonl", "model.pt"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # epochs=2 passes of the joint stage, with validation; the head's loss (the default bce) under its name
    assert [(r["stage"], r["epoch"]) for r in records] == [("joint", 1), ("joint", 2)]
    for r in records:
        assert {"bce", "nll", "pcl", "val_mAP"} <= set(r) and "asl" not in r
        # epoch means of a per-batch sum are the sum of the epoch means
        assert r["loss"] == pytest.approx(r["bce"] + r["nll"] + lam * r["pcl"], rel=1e-4, abs=1e-5)
    assert result.best_map == max(r["val_mAP"] for r in records)
    saved = CheckpointManager(run / "checkpoints").list()
    assert saved and all(c.stage == "joint" for c in saved)

    raw = check_trained_bundle(run, config.seed, normalize=True)
    assert raw["mdn"] is not None


def test_joint_objective_adds_asl_to_the_contrastive_objective():
    class _Fixed(torch.nn.Module):  # a stand-in contrastive objective with known terms
        def forward(self, mixture, h, labels):
            from types import SimpleNamespace

            nll, pcl = h.sum() * 0 + 1.5, h.sum() * 0 + 2.0
            return SimpleNamespace(total=nll + 0.3 * pcl, nll=nll, pcl=pcl, valid_anchors=4)

    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    terms = JointObjective(AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0), _Fixed())(
        logits, None, torch.zeros(2, 3), labels
    )
    # with gamma = 0 and clip = 0 ASL is the binary cross-entropy (mean over the 2 x 2 logits)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    torch.testing.assert_close(terms["asl"], bce.detach())
    torch.testing.assert_close(terms["loss"], bce + 1.5 + 0.3 * 2.0)
    terms["loss"].backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_joint_mode_validates_in_config():
    assert load_config(overrides=["mode=joint"]).mode == "joint"


def test_mdn_input_gain_scales_only_the_first_layer_initialisation(tmp_path):
    from probmcl_med.core.mdn import MixtureDensityNetwork
    from probmcl_med.engine.contrastive import build_mdn

    gain = 36.0
    config = tiny_config(tmp_path, f"contrastive.mdn_input_gain={gain}")
    torch.manual_seed(7)
    mdn = build_mdn(config.contrastive, 24, 5)
    torch.manual_seed(7)  # the same draws, built directly
    reference = MixtureDensityNetwork(24, 5, hidden=(32, 16))
    got, ref = mdn.state_dict(), reference.state_dict()
    torch.testing.assert_close(got["hidden.0.weight"], gain * ref["hidden.0.weight"])
    assert all(torch.equal(got[k], ref[k]) for k in ref if k != "hidden.0.weight")
