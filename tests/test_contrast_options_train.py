"""Issue 25's contrast options end to end: a tiny two-stage run with each of them trains, keeps the learned
temperature in its checkpoints and bundle (and resumes it exactly), and the config refuses what cannot combine."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from probmcl_med.bundle import load_model_bundle
from probmcl_med.config import load_config
from probmcl_med.engine import train
from probmcl_med.engine.checkpoint import read_checkpoint
from probmcl_med.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from test_train import TINY, tiny_config

torch.set_num_threads(1)

OPTIONS = [
    "contrastive.similarity=bhattacharyya",
    "contrastive.similarity_form=log",
    "contrastive.tau_learnable=true",
    "contrastive.tau_gain=100",
    "contrastive.variance_floor=0.1",
    "contrastive.variance_scale=0.1",
    "contrastive.mean_dim=2",
]


def test_every_option_trains_and_the_bundle_keeps_the_learned_temperature(tmp_path: Path) -> None:
    config = load_config(overrides=[*TINY, "contrastive.epochs=2", f"output_dir={tmp_path / 'run'}", *OPTIONS])
    train(config)
    bundle = load_model_bundle(tmp_path / "run")
    spec = bundle.mdn.spec
    assert (spec["mean_dim"], spec["variance_floor"], spec["variance_scale"]) == (2, 0.1, 0.1)
    learned = bundle.mdn.logit_scale.tau
    assert learned != pytest.approx(0.2, rel=1e-3) and 0.01 <= learned <= 1.0  # it moved, within its bounds
    h = torch.nn.functional.normalize(torch.randn(3, bundle.mdn.in_features), dim=1)
    mixture = bundle.mdn(h)
    assert mixture.means.shape == (3, spec["num_classes"], 2) and (mixture.variances >= 0.1).all()


def test_every_checkpoint_keeps_the_temperature_it_reached(tmp_path: Path) -> None:
    """A resume restores the MDN's state dict (tests/test_train_resume.py): the temperature is part of it."""
    run = tmp_path / "run"
    train(
        load_config(overrides=[*TINY, "contrastive.epochs=2", f"output_dir={run}", *OPTIONS, "checkpoint.keep_last=10"])
    )
    thetas = []
    for path in sorted((run / "checkpoints").glob("ckpt-s0-contrastive-e*.pt")):
        thetas.append(float(read_checkpoint(path)["models"]["mdn"]["logit_scale.theta"]))
    final = float(load_model_bundle(run).mdn.logit_scale.theta.detach())
    assert len(thetas) == 2 and thetas[-1] == final and thetas[0] != final


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["contrastive.mean_dim=2"], "needs a similarity that supports block means"),
        (["contrastive.tau_min=0.05"], "tau_min changed but tau_learnable is false"),
        (["contrastive.tau_learnable=true", "contrastive.tau=0.005"], "needs tau_min < tau < tau_max"),
        (
            [
                "contrastive.mean_dim=2",
                "contrastive.similarity=bhattacharyya",
                "contrastive.component_means=learned_directions",
            ],
            "do not combine",
        ),
    ],
)
def test_config_refuses_what_cannot_combine(sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[*TINY, *sets])


def test_learned_temperature_starts_at_tau() -> None:
    from probmcl_med.engine.contrastive import build_mdn, build_objective

    config = load_config(overrides=[*TINY, "contrastive.tau_learnable=true", "contrastive.tau=0.3"])
    mdn = build_mdn(config.contrastive, 16, 4)
    objective = build_objective(config.contrastive, mdn=mdn)
    assert float(objective.contrastive.current_tau()) == pytest.approx(0.3, rel=1e-6)
    assert math.isclose(mdn.logit_scale.tau, 0.3, rel_tol=1e-6)


def test_joint_mode_learns_the_temperature_it_holds(tmp_path: Path) -> None:
    """mode: joint builds its objective from the MDN it trains (engine/joint.py): the temperature moves, the bundle
    keeps the moved value and the block means."""
    train(tiny_config(tmp_path, "mode=joint", "epochs=2", *OPTIONS))
    mdn = load_model_bundle(tmp_path / "run").mdn
    assert mdn.spec["mean_dim"] == 2 and mdn.spec["temperature"]["tau"] == 0.2
    assert mdn.logit_scale.tau != pytest.approx(0.2, rel=1e-3) and 0.01 <= mdn.logit_scale.tau <= 1.0
