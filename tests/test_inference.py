"""predict on images, folders and whole slides: probabilities against a hand-run model, slide tiling, bad input.

Also holds the small builders the other model-running tests import (a tiny bundle, a generated CSV dataset, the CLI
runner): ``from test_inference import make_bundle, ...``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from probmcl_med.config import load_config
from probmcl_med.encoders import get_encoder
from probmcl_med.engine.checkpoint import save_model_bundle
from probmcl_med.heads import LinearHead

CLASSES = ["epithelium", "stroma", "necrosis"]
SIZE = 32
MEAN = (0.6, 0.5, 0.7)
STD = (0.2, 0.25, 0.15)
SLIDE = Path(__file__).resolve().parents[2] / "shared/data/slides/cmu_small_region.svs"


# --------------------------------------------------------------------------------------------------------------------
# Builders shared with test_evaluate_cli.py and test_gradcam.py
# --------------------------------------------------------------------------------------------------------------------


def cli(args: list[str]) -> int:
    """Run ``probmcl-med ARGS`` through ``main`` (registering this helper's commands if the lead has not yet)."""
    from probmcl_med.cli import evaluate, explain, info, predict
    from probmcl_med.cli import main as cli_main

    cli_main._register_commands()
    names = {c.name for c in cli_main.app.registered_commands}
    for name, module in (("evaluate", evaluate), ("predict", predict), ("info", info), ("explain", explain)):
        if name not in names:
            module.register(cli_main.app)
    return cli_main.main(args)


def make_bundle(run: Path, dataset_root: Path | None = None, classes: list[str] | None = None, seed: int = 0):
    """Save an untrained test_resnet + random head bundle into ``run``; returns (encoder, head) in eval mode.

    The head gets large random weights so that the probabilities spread over (0, 1).
    """
    classes = classes or CLASSES
    overrides = ["encoder.name=test_resnet", f"dataset.image_size={SIZE}", "workers=0"]
    if dataset_root is not None:
        overrides += ["dataset.name=csv", f"dataset.root={dataset_root}"]
    config = load_config(overrides=overrides)
    torch.manual_seed(seed)
    encoder = get_encoder("test_resnet").eval()
    head = LinearHead(encoder.num_features, len(classes))
    with torch.no_grad():
        head.weight.normal_(0.0, 8.0)
        head.bias.normal_(0.0, 0.5)
    save_model_bundle(
        run, encoder=encoder, head=head, class_names=classes, mean=MEAN, std=STD, image_size=SIZE, config=config
    )
    return encoder, head.eval()


def write_images(folder: Path, n: int, seed: int = 0, size: tuple[int, int] = (SIZE, SIZE)) -> list[Path]:
    """``n`` random-texture PNGs of ``size`` (H, W); each image has its own brightness and colour cast."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = rng.uniform(40, 215, size=3)
        noise = rng.normal(0, rng.uniform(5, 60), size=(*size, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def make_csv_dataset(root: Path, n_per_split: int = 12, classes: list[str] | None = None, seed: int = 0) -> dict:
    """A csv-dataset folder (images/ + labels.csv with 0/1 columns and a split column); returns rows per split."""
    classes = classes or CLASSES
    paths = write_images(root / "images", 3 * n_per_split, seed=seed)
    rng = np.random.default_rng(seed + 1)
    labels = (rng.random((len(paths), len(classes))) < 0.5).astype(int)
    splits = ["train", "valid", "test"]
    for s in range(3):  # every class has a positive and a negative in every split
        block = labels[s * n_per_split : (s + 1) * n_per_split]
        block[0, :] = 1
        block[1, :] = 0
    rows: dict[str, list] = {s: [] for s in splits}
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *classes, "split"])
        for i, path in enumerate(paths):
            split = splits[i // n_per_split]
            writer.writerow([f"images/{path.name}", *labels[i], split])
            rows[split].append((path, labels[i].astype(np.float64)))
    return rows


def hand_probs(encoder, head, paths: list[Path], mean=MEAN, std=STD) -> np.ndarray:
    """sigmoid(head(normalize(encoder(x)))) with x read by PIL and normalised by hand (images already SIZE x SIZE)."""
    x = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255.0 for p in paths])
    x = (x - np.asarray(mean)) / np.asarray(std)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2)).float()
    with torch.no_grad():
        features = F.normalize(encoder.model(xt).float(), dim=1)
        return torch.sigmoid(head(features)).double().numpy()


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line main() printed (the hint line about --debug excluded)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "--debug" not in line]
    assert len(lines) == 1, lines
    return lines[0]


# --------------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------------


def test_predict_folder_probabilities_equal_the_hand_run_model(tmp_path: Path) -> None:
    encoder, head = make_bundle(tmp_path / "run")
    paths = write_images(tmp_path / "imgs", 5)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    assert cli(["predict", str(tmp_path / "imgs"), "--checkpoint", str(tmp_path / "run"), "--out",
                str(tmp_path / "out"), "--batch-size", "2", "--device", "cpu", "--threshold", "0.5"]) == 0  # fmt: skip
    header, rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert header == ["image", *CLASSES]
    assert [Path(r[0]).name for r in rows] == [p.name for p in paths]
    got = np.array([[float(v) for v in r[1:]] for r in rows])
    expected = hand_probs(encoder, head, paths)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert 0.05 < expected.mean() < 0.95 and expected.std() > 0.05  # the check is not vacuous
    header, rows = read_csv(tmp_path / "out" / "labels.csv")
    assert header == ["image", "labels"]
    for r, probs in zip(rows, expected, strict=True):
        assert set(filter(None, r[1].split("|"))) == {c for c, p in zip(CLASSES, probs, strict=True) if p >= 0.5}
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["thresholds"] == [0.5] * 3 and meta["num_inputs"] == 5


def test_predict_single_image_resized_and_stored_thresholds_used(tmp_path: Path) -> None:
    from probmcl_med.engine.checkpoint import set_bundle_thresholds

    encoder, head = make_bundle(tmp_path / "run")
    set_bundle_thresholds(tmp_path / "run", [0.2, 0.5, 0.9])
    [big] = write_images(tmp_path / "imgs", 1, size=(64, 64))
    assert cli(["predict", str(big), "-c", str(tmp_path / "run"), "--out", str(tmp_path / "out"),
                "--device", "cpu"]) == 0  # fmt: skip
    _, rows = read_csv(tmp_path / "out" / "predictions.csv")
    # by hand: antialiased bilinear resize of the uint8 image to 32 x 32 (torchvision), then the model
    from torchvision.transforms.v2 import functional as tvf

    u8 = torch.from_numpy(np.asarray(Image.open(big).convert("RGB")).transpose(2, 0, 1).copy())
    small = tvf.resize(u8, [SIZE, SIZE], antialias=True).numpy().transpose(1, 2, 0)
    Image.fromarray(small).save(tmp_path / "small.png")
    expected = hand_probs(encoder, head, [tmp_path / "small.png"])[0]
    np.testing.assert_allclose([float(v) for v in rows[0][1:]], expected, rtol=1e-5, atol=1e-6)
    _, labels = read_csv(tmp_path / "out" / "labels.csv")
    wanted = {c for c, p, t in zip(CLASSES, expected, [0.2, 0.5, 0.9], strict=True) if p >= t}
    assert set(filter(None, labels[0][1].split("|"))) == wanted
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["thresholds"] == [0.2, 0.5, 0.9]
