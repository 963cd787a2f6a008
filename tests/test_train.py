"""End-to-end training on the demo data: run folder, bundle logits, frozen encoder in stage 2, CLI options."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
import typer
from typer.testing import CliRunner

from probmcl_med.bundle import load_model_bundle
from probmcl_med.config import TwoStageConfig, load_config
from probmcl_med.engine import train
from probmcl_med.engine.checkpoint import CheckpointManager, read_checkpoint
from probmcl_med.errors import CheckpointError

TINY = [
    "mode=two-stage",
    "encoder.name=test_resnet",
    "dataset.name=demo",
    "dataset.image_size=32",
    "dataset.options={n_train: 16, n_valid: 8, n_test: 8}",
    "dataset.augment.num_ops=1",
    "contrastive.epochs=1",
    "contrastive.batch_size=8",
    "contrastive.mdn_hidden=[32, 16]",
    "contrastive.lr=0.001",
    "classifier.epochs=2",
    "classifier.batch_size=8",
    "classifier.lr=0.01",
    "workers=0",
    "amp=false",
]


ONE_STAGE = {"mode=asl", "mode=joint", "mode=probe"}


def tiny_config(tmp_path, *extra):
    """The tiny two-stage config, or with ``mode=asl|joint|probe`` in ``extra`` the keys of that mode only."""
    mode = next((e for e in extra if e in ONE_STAGE), None)
    sets = TINY
    if mode is not None:
        keep = {"mode=joint": ("contrastive.batch_size", "contrastive.mdn_hidden", "contrastive.lr")}.get(mode, ())
        sets = [
            s for s in TINY if not s.startswith(("mode=", "contrastive.", "classifier.epochs")) or s.startswith(keep)
        ]
        sets += ["classifier.epochs=2"] if mode == "mode=probe" else []
    return load_config(overrides=[*sets, f"output_dir={tmp_path / 'run'}", *extra])


def check_trained_bundle(run, seed, normalize):
    """The stored encoder moved away from its seeded start, and the bundle's logits equal a fresh timm test_resnet
    with the stored weights (its unit-norm features when ``normalize``) times the stored head. Returns the raw file."""
    raw = torch.load(run / "model.pt", weights_only=True)
    assert raw["head"]["normalize_features"] is normalize
    torch.manual_seed(seed)
    initial = timm.create_model("test_resnet", num_classes=0).state_dict()
    trained = {k.removeprefix("model."): v for k, v in raw["encoder"]["state_dict"].items()}
    assert any(not torch.equal(initial[k], trained[k]) for k in initial if initial[k].is_floating_point())
    reference = timm.create_model("test_resnet", num_classes=0).eval()
    reference.load_state_dict(trained)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = F.normalize(reference(x), dim=1) if normalize else reference(x)
        expected = h @ raw["head"]["state_dict"]["weight"].T + raw["head"]["state_dict"]["bias"]
        got = load_model_bundle(run).classifier()(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    return raw


def test_two_stages_write_run_folder_and_bundle_restores_logits(tmp_path):
    config = tiny_config(tmp_path, "classifier.augment=false", "log_every=1")
    result = train(config)
    run = tmp_path / "run"
    for name in ("config.yaml", "class_names.json", "run.json", "metrics.jsonl", "model.pt"):
        assert (run / name).is_file(), name
    assert {p.parent.name for p in (run / "tensorboard").rglob("events.out.tfevents.*")} == {
        "contrastive",
        "classifier",
    }
    assert load_config(run / "config.yaml") == config
    names = json.loads((run / "class_names.json").read_text())
    meta = json.loads((run / "run.json").read_text())
    assert meta["encoder"]["name"] == "test_resnet" and meta["normalization"]["mean"] == [0.5, 0.5, 0.5]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [("contrastive", 1), ("classifier", 1), ("classifier", 2)]
    assert all(r["images_per_s"] > 0 and r["lr"] > 0 for r in records)
    assert {"nll", "pcl"} <= set(records[0]) and 0 <= records[1]["val_mAP"] <= 100
    assert "bce" in records[1] and "asl" not in records[1]  # the head's loss (the default bce) under its own name
    assert result.best_map == max(r["val_mAP"] for r in records[1:])
    # MONAI's TensorBoard handler logged the same epoch numbers as metrics.jsonl (float32 there), one folder per stage
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run / "tensorboard" / "classifier"))
    board.Reload()
    logged = {e.step: e.value for e in board.Scalars("val_mAP")}
    assert logged == pytest.approx({r["epoch"]: r["val_mAP"] for r in records[1:]}, rel=1e-6)
    assert {"iter/loss", "iter/bce", "iter/lr", "loss", "bce", "images_per_s"} <= set(board.Tags()["scalars"])
    assert [e.step for e in board.Scalars("iter/loss")] == list(range(1, records[-1]["iteration"] + 1))

    bundle = load_model_bundle(run)
    assert bundle.class_names == names and bundle.image_size == 32 and bundle.mdn is not None
    # independent reference: a fresh timm model and a plain matrix product on the raw stored tensors
    raw = torch.load(run / "model.pt", weights_only=True)
    best_record = max(records[1:], key=lambda r: r["val_mAP"])
    assert raw["best_val_map"] == best_record["val_mAP"] and raw["best_epoch"] == best_record["epoch"]
    reference = timm.create_model("test_resnet", num_classes=0).eval()
    reference.load_state_dict({k.removeprefix("model."): v for k, v in raw["encoder"]["state_dict"].items()})
    w, b = raw["head"]["state_dict"]["weight"], raw["head"]["state_dict"]["bias"]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = F.normalize(reference(x), dim=1) @ w.T + b
        got = bundle.classifier()(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    # the same run folder again without --resume is refused, not silently mixed with old checkpoints
    with pytest.raises(CheckpointError, match="--resume"):
        train(config)


@pytest.mark.parametrize("encoder_lr", [0.0, 0.01])
def test_classifier_stage_leaves_frozen_encoder_unchanged(tmp_path, encoder_lr):
    config = tiny_config(tmp_path, "classifier.augment=true", f"classifier.encoder_lr={encoder_lr}")
    train(config, stage="contrastive")
    stage1 = CheckpointManager(tmp_path / "run" / "checkpoints").list()[-1]
    assert stage1.stage == "contrastive"
    before = read_checkpoint(stage1.path)["models"]["encoder"]
    train(config, stage="classifier")
    after = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["encoder"]["state_dict"]
    assert before.keys() == after.keys()
    same = all(torch.equal(before[k], after[k]) for k in before)
    # frozen: every weight and every batch-norm statistic identical; fine-tuned: the same check sees a change
    assert same is (encoder_lr == 0.0)


def _cli():
    from probmcl_med.cli.train import register

    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        pass

    return app


def test_cli_print_config_dataset_and_sets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.yaml").write_text(
        "mode: two-stage\nencoder:\n  name: test_resnet\ncontrastive:\n  tau: 0.5\n"
    )
    result = CliRunner().invoke(
        _cli(), ["train", "--dataset", "demo", "--set", "contrastive.tau=0.1", "--output-dir", "x", "--print-config"]
    )
    assert result.exit_code == 0, result.output
    printed = load_config(base=__import__("yaml").safe_load(result.stdout))
    assert printed.dataset.name == "demo" and printed.encoder.name == "test_resnet"
    assert printed.contrastive.tau == 0.1 and printed.output_dir == "x"
    help_text = CliRunner().invoke(_cli(), ["train", "--help"]).output
    assert "probmcl-med train --dataset demo" in help_text


@pytest.mark.parametrize("name", ["demo", "adp", "coco"])
def test_shipped_configs_validate_with_paper_settings(name):
    from pathlib import Path

    config = load_config(Path(__file__).parents[1] / "configs" / f"{name}.yaml")
    assert config.contrastive.tau == 0.2 and config.contrastive.lambda_ == 0.3
    if name != "demo":
        expected = {"adp": ("tresnet_m", 224, 0.5), "coco": ("tresnet_l", 448, 0.6)}[name]
        assert (config.encoder.name, config.dataset.image_size, config.contrastive.alpha) == expected
        assert (config.contrastive.epochs, config.classifier.epochs) == (80, 40)
        assert config.contrastive.batch_size == config.classifier.batch_size == 128
        assert config.contrastive.lr == config.classifier.lr == 1e-4
    else:
        assert config.output_dir == "runs/demo" and config.dataset.name == "demo"


def test_bf16_autocast_keeps_mixture_math_in_fp32():
    from probmcl_med.core.mdn import MixtureDensityNetwork
    from probmcl_med.engine.amp import AmpSettings
    from probmcl_med.engine.contrastive import ContrastiveModel, build_objective
    from probmcl_med.models.encoders import get_encoder

    torch.manual_seed(0)
    encoder = get_encoder("test_resnet")
    model = ContrastiveModel(encoder, MixtureDensityNetwork(encoder.num_features, 4, hidden=(16, 8)))
    amp = AmpSettings("cpu", torch.bfloat16, None)  # what a GPU run uses, exercised on the CPU autocast
    x, y = torch.randn(6, 3, 32, 32), (torch.rand(6, 4) < 0.5).float()
    with amp.autocast():
        h, mixture = model(x)
        assert encoder(x).dtype == torch.bfloat16  # the encoder really ran in bf16
    assert h.dtype == mixture.weights.dtype == mixture.variances.dtype == torch.float32
    out = build_objective(TwoStageConfig().contrastive)(mixture, h, y)
    assert torch.isfinite(out.total)
    out.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_asl_mode_trains_encoder_and_head_end_to_end(tmp_path):
    config = tiny_config(tmp_path, "mode=asl", "epochs=2", "classifier.augment=false", "classifier.loss=focal")
    train(config)
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [("classifier", 1), ("classifier", 2)]  # epochs=2
    assert all(r["focal"] == r["loss"] and "asl" not in r for r in records)  # the loss logged under its name
    raw = check_trained_bundle(run, config.seed, normalize=False)
    assert raw["mdn"] is None
