"""The model, batch and objective shared by tests/test_distributed.py and the torchrun worker it starts."""

from __future__ import annotations

import os

import torch

from probmcl_med.config import load_config
from probmcl_med.core.mdn import MixtureDensityNetwork
from probmcl_med.engine.contrastive import ContrastiveModel, build_mdn, build_objective
from probmcl_med.models.encoders import get_encoder

GLOBAL_VIEWS = 12  # 2 ranks x 6 views
NUM_CLASSES = 5
ISSUE25 = ["contrastive.similarity=bhattacharyya", "contrastive.similarity_form=log", "contrastive.mean_dim=2",
           "contrastive.tau_learnable=true", "contrastive.tau_gain=10", "contrastive.variance_floor=0.1",
           "contrastive.variance_scale=0.1"]  # fmt: skip
"""``DDP_CASE=issue25``: the contrast options of issue 25 (block means gathered, a learned temperature in the MDN)."""


def case_sets() -> list[str]:
    return ISSUE25 if os.environ.get("DDP_CASE") == "issue25" else []


def build_model() -> ContrastiveModel:
    """test_resnet + MDN, identical on every rank (fixed seed); BN in eval mode (per-rank batch statistics would
    differ from the global batch's, which is a property of BN, not of the loss)."""
    torch.manual_seed(0)
    encoder = get_encoder("test_resnet").eval()
    if not case_sets():
        return ContrastiveModel(encoder, MixtureDensityNetwork(encoder.num_features, NUM_CLASSES, hidden=(32, 16)))
    config = load_config(overrides=["mode=two-stage", *case_sets(), "contrastive.mdn_hidden=[32, 16]"])
    return ContrastiveModel(encoder, build_mdn(config.contrastive, encoder.num_features, NUM_CLASSES))


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """(12, 3, 32, 32) views and (12, 5) multi-hot labels with overlapping label sets."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(GLOBAL_VIEWS, 3, 32, 32, generator=g)
    y = (torch.rand(GLOBAL_VIEWS, NUM_CLASSES, generator=g) < 0.4).float()
    y[0] = 0.0  # an image without labels: an anchor with no positive, left out of the mean
    return x, y


def objective(distributed: bool, model: ContrastiveModel | None = None) -> torch.nn.Module:
    sets = ["mode=two-stage", "contrastive.alpha=0.3", "contrastive.tau=0.2", "contrastive.lambda=0.3", *case_sets()]
    config = load_config(overrides=sets)
    return build_objective(config.contrastive, distributed=distributed, mdn=None if model is None else model.mdn)
