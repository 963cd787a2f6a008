"""The feature cache across runs: a second training run on the same frozen encoder computes no feature, evaluate
reads the training run's features (and gives the scores the images give), and a preset's own normalisation reaches
model.pt. A tiny timm ViT (test_vit, class token + mean pooling) stands in for a foundation model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from probmcl_med.bundle import load_model_bundle
from probmcl_med.config import load_config
from probmcl_med.engine import train
from probmcl_med.evaluation.run_eval import score_split
from probmcl_med.inference.feature_cache import FeatureCache
from probmcl_med.models.encoders import get_encoder
from probmcl_med.models.presets import PRESETS

FROZEN = [
    "mode=probe",
    "dataset.name=demo",
    "dataset.image_size=32",
    "dataset.options={n_train: 16, n_valid: 8, n_test: 8}",
    "classifier.epochs=2",
    "classifier.batch_size=8",
    "classifier.encoder_lr=0",
    "classifier.augment=false",
    "workers=0",
    "amp=false",
]


@pytest.fixture()
def computed(monkeypatch, tmp_path) -> list[int]:
    """Isolated cache folder; records the number of samples each cache build computes."""
    monkeypatch.setenv("PROBMCL_MED_CACHE", str(tmp_path / "cache"))
    calls: list[int] = []
    original = FeatureCache._compute

    def counting(self, embed, dataset, done, *args, **kwargs):
        calls.append(self.samples - sum(len(self._chunk_rows(c)) for c in done))
        return original(self, embed, dataset, done, *args, **kwargs)

    monkeypatch.setattr(FeatureCache, "_compute", counting)
    return calls


def test_a_second_run_and_evaluate_reuse_the_frozen_features(tmp_path, computed) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "vit.pt"  # the user's downloaded foundation-model weights, in miniature
    torch.save(get_encoder("timm:test_vit").model.state_dict(), weights)
    encoder = ["encoder.name=timm:test_vit", f"encoder.weights={weights}", "encoder.options={pool: cls+mean}"]
    train(load_config(overrides=[*FROZEN, *encoder, "seed=1", f"output_dir={tmp_path / 'a'}"]))
    assert computed == [16, 8]  # train and valid splits, once
    train(load_config(overrides=[*FROZEN, *encoder, "seed=2", "classifier.lr=0.1", f"output_dir={tmp_path / 'b'}"]))
    assert computed == [16, 8]  # another seed and head lr: nothing computed

    bundle = load_model_bundle(tmp_path / "b")
    assert bundle.feature_cache and bundle.encoder_options == {"pool": "cls+mean"}
    cached = score_split(bundle, "valid", checkpoint=tmp_path / "b", device="cpu")
    assert computed == [16, 8]  # the training run's valid features
    images = score_split(dataclasses.replace(bundle, feature_cache=False), "valid", device="cpu")
    np.testing.assert_allclose(cached.scores, images.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(cached.targets, images.targets)
    np.testing.assert_array_equal(cached.indices, images.indices)

    score_split(bundle, "test", device="cpu")
    score_split(bundle, "test", device="cpu")
    assert computed == [16, 8, 8]  # the test split: computed by the first evaluation only


def test_a_preset_carries_its_normalisation_into_model_pt(tmp_path, computed) -> None:
    torch.manual_seed(0)
    small = (
        "{depth: 1, embed_dim: 48, num_heads: 2}"  # H-optimus-0 in miniature; 28 px: a multiple of its 14-px patches
    )
    weights = tmp_path / "h0.pt"
    torch.save(get_encoder("h_optimus_0", depth=1, embed_dim=48, num_heads=2, require_weights=False).model.state_dict(),
               weights)  # fmt: skip
    config = [*FROZEN, "dataset.image_size=28", "encoder.name=h_optimus_0", f"encoder.weights={weights}",
              f"encoder.options={small}"]  # fmt: skip
    train(load_config(overrides=[*config, "classifier.epochs=1", f"output_dir={tmp_path / 'run'}"]))
    raw = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    mean, std = PRESETS["h_optimus_0"].normalization
    assert raw["mean"] == pytest.approx(list(mean)) and raw["std"] == pytest.approx(list(std))
    assert raw["encoder"]["name"] == "h_optimus_0" and raw["encoder"]["num_features"] == 48
    bundle = load_model_bundle(tmp_path / "run")  # rebuilt without the weights file: its state is in model.pt
    assert type(bundle.encoder).__name__ == "PresetEncoder"
