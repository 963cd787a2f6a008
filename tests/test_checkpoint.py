"""Model bundles and training checkpoints: round trips, weights_only loading, damage handling, rotation, RNG."""

from __future__ import annotations

import random
import zipfile

import numpy as np
import pytest
import torch

from probmcl_med.bundle import DatasetSource, load_model_bundle, read_checkpoint, save_model_bundle
from probmcl_med.config import load_config
from probmcl_med.engine.checkpoint import CheckpointManager, capture_rng_state, check_compatible, restore_rng_state
from probmcl_med.errors import CheckpointError
from probmcl_med.models.encoders import get_encoder
from probmcl_med.models.heads import LinearHead
from probmcl_med.operating_point import save_thresholds

NAMES = ["epithelium", "stroma", "fat"]


def _parts(tmp_path):
    torch.manual_seed(0)
    config = load_config(
        overrides=["mode=two-stage", "encoder.name=test_resnet", "dataset.image_size=32", f"output_dir={tmp_path}"]
    )
    encoder = get_encoder("test_resnet")
    head = LinearHead(encoder.num_features, len(NAMES))
    return config, encoder, head


def test_bundle_round_trip_restores_identical_logits(tmp_path):
    config, encoder, head = _parts(tmp_path)
    path = save_model_bundle(
        tmp_path,
        encoder=encoder,
        head=head,
        class_names=NAMES,
        mean=(0.1, 0.2, 0.3),
        std=(0.4, 0.5, 0.6),
        image_size=32,
        encoder_name="test_resnet",
        training_config=config.to_dict(),
        dataset=DatasetSource.from_config_dict(config.to_dict()),
    )
    assert path == tmp_path / "model.pt"
    save_thresholds(path, NAMES, [0.3, 0.5, 0.7], rule="by hand", split="valid")
    # weights_only loading works on the raw file (no arbitrary pickle)
    torch.load(path, weights_only=True)
    bundle = load_model_bundle(tmp_path)
    x = torch.randn(4, 3, 32, 32)
    encoder.eval()
    with torch.no_grad():
        expected = head(torch.nn.functional.normalize(encoder(x), dim=1))  # the head reads unit-norm features
        got = bundle.classifier()(x)
    assert torch.equal(expected, got)
    assert bundle.class_names == NAMES
    assert bundle.mean == (0.1, 0.2, 0.3) and bundle.std == (0.4, 0.5, 0.6)
    assert bundle.image_size == 32 and bundle.thresholds == [0.3, 0.5, 0.7]
    assert bundle.encoder_name == "test_resnet" and bundle.mdn is None
    assert bundle.training_config == config.to_dict() and bundle.dataset.name == config.dataset.name


def test_missing_bundle_in_run_folder_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match=r"has no model\.pt") as err:
        load_model_bundle(tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_checkpoint_one_line_error_and_previous_kept(tmp_path, damage):
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=3)
    first = manager.save({"value": torch.tensor([1.0])}, stage_index=0, stage="contrastive", epoch=0, iteration=2)
    second = manager.save({"value": torch.tensor([2.0])}, stage_index=0, stage="contrastive", epoch=1, iteration=4)
    raw = second.read_bytes()
    if damage == "truncate":
        second.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        second.write_bytes(b"\x00not a checkpoint" * 10)
    else:
        second.write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(second)
    message = str(err.value)
    assert "\n" not in message and str(second) in message
    assert first.is_file()
    with pytest.warns(RuntimeWarning, match="falling back"):
        state, path = manager.load_latest()
    assert path == first and torch.equal(state["value"], torch.tensor([1.0]))
    assert second.is_file()  # left for the user to inspect


def test_truncated_bundle_is_one_line_error(tmp_path):
    _, encoder, head = _parts(tmp_path)
    kwargs = dict(encoder=encoder, head=head, class_names=NAMES, mean=(0, 0, 0), std=(1, 1, 1), image_size=32)
    path = save_model_bundle(tmp_path / "a.pt", encoder_name="test_resnet", **kwargs)
    assert zipfile.is_zipfile(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        load_model_bundle(path)
    assert "\n" not in str(err.value)


def test_rotation_keeps_last_n_in_order_across_stages(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    manager.save({}, stage_index=0, stage="contrastive", epoch=1, iteration=10)
    manager.save({}, stage_index=0, stage="contrastive", epoch=2, iteration=20)
    manager.save({}, stage_index=1, stage="classifier", epoch=0, iteration=3)
    names = [c.path.name for c in manager.list()]
    assert names == ["ckpt-s0-contrastive-e0002-i00000020.pt", "ckpt-s1-classifier-e0000-i00000003.pt"]
    state, path = manager.load_latest()
    assert path.name == names[-1] and state["format"] == "probmcl-med/train-state"


def test_all_damaged_is_an_error(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    path = manager.save({}, stage_index=0, stage="contrastive", epoch=1, iteration=10)
    path.write_bytes(b"broken")
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="no readable checkpoint"):
        manager.load_latest()
    assert CheckpointManager(tmp_path / "none").load_latest() is None


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    manager = CheckpointManager(tmp_path)
    manager.save({"rng": capture_rng_state()}, stage_index=0, stage="contrastive", epoch=0, iteration=1)
    expected = (random.random(), np.random.rand(3), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state, _ = manager.load_latest()
    restore_rng_state(state["rng"])
    got = (random.random(), np.random.rand(3), torch.rand(3))
    assert expected[0] == got[0]
    np.testing.assert_array_equal(expected[1], got[1])
    assert torch.equal(expected[2], got[2])


def test_incompatible_checkpoint_refused(tmp_path):
    state = {"class_names": NAMES, "encoder_name": "test_resnet"}
    check_compatible(state, NAMES, "test_resnet", tmp_path)
    with pytest.raises(CheckpointError, match="other classes"):
        check_compatible(state, [*NAMES, "necrosis"], "test_resnet", tmp_path)
    with pytest.raises(CheckpointError, match="holds encoder 'test_resnet'"):
        check_compatible(state, NAMES, "resnet18", tmp_path)


@pytest.mark.parametrize("options", [{"input_norm": "batch"}, {"mean_directions": True}])
def test_bundle_keeps_an_mdn_with_its_deviations(tmp_path, options):
    from probmcl_med.core.mdn import MixtureDensityNetwork

    _, encoder, head = _parts(tmp_path)
    mdn = MixtureDensityNetwork(encoder.num_features, len(NAMES), hidden=(16, 8), **options)
    mdn(torch.nn.functional.normalize(torch.randn(32, encoder.num_features), dim=1))  # running statistics move
    if mdn.directions is not None:
        with torch.no_grad():
            mdn.directions.add_(0.1 * torch.randn_like(mdn.directions))  # learned away from the diagonal
    mdn.eval()
    parts = {"encoder": encoder, "head": head, "class_names": NAMES, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    save_model_bundle(tmp_path, **parts, image_size=32, encoder_name="test_resnet", mdn=mdn)
    loaded = load_model_bundle(tmp_path).mdn
    h = torch.nn.functional.normalize(torch.randn(5, encoder.num_features), dim=1)
    assert loaded.spec == mdn.spec
    with torch.no_grad():
        torch.testing.assert_close(loaded(h).means, mdn(h).means, rtol=0, atol=0)
        if mdn.directions is not None:
            torch.testing.assert_close(loaded(h).directions, mdn(h).directions, rtol=0, atol=0)


def _save_plain(path, encoder, head, training_config):
    """A bundle with identity normalisation and the given stored training config."""
    return save_model_bundle(
        path,
        encoder=encoder,
        head=head,
        class_names=NAMES,
        mean=(0, 0, 0),
        std=(1, 1, 1),
        image_size=32,
        encoder_name="test_resnet",
        training_config=training_config,
    )


def test_bundle_of_a_plugin_run_loads_without_the_plugin(tmp_path):
    """The stored training config is information, not validated: a similarity only a plugin registered is fine."""
    from probmcl_med import SIMILARITIES

    config, encoder, head = _parts(tmp_path)
    stored = config.to_dict()
    stored["contrastive"]["similarity"] = "similarity_from_a_plugin_not_loaded_here"
    assert stored["contrastive"]["similarity"] not in SIMILARITIES
    _save_plain(tmp_path, encoder, head, stored)
    bundle = load_model_bundle(tmp_path)
    assert bundle.training_config["contrastive"]["similarity"] == "similarity_from_a_plugin_not_loaded_here"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = head(torch.nn.functional.normalize(encoder.eval()(x), dim=1))
        torch.testing.assert_close(bundle.classifier()(x), expected)
