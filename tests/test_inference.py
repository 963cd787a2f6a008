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

from probmcl_med.bundle import DatasetSource, save_model_bundle
from probmcl_med.config import load_config
from probmcl_med.models.encoders import get_encoder
from probmcl_med.models.heads import LinearHead

CLASSES = ["epithelium", "stroma", "necrosis"]
SIZE = 32
MEAN = (0.6, 0.5, 0.7)
STD = (0.2, 0.25, 0.15)


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


def make_bundle(
    run: Path, dataset_root: Path | None = None, classes: list[str] | None = None, seed: int = 0, mdn: bool = False
):
    """Save an untrained test_resnet + random head bundle into ``run``; returns (encoder, head) in eval mode.

    The head gets large random weights so that the probabilities spread over (0, 1). With ``mdn`` the bundle also
    keeps a small random MixtureDensityNetwork, returned third.
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
    network = None
    if mdn:
        from probmcl_med.core.mdn import MixtureDensityNetwork

        network = MixtureDensityNetwork(encoder.num_features, len(classes), hidden=(16, 8)).eval()
        with torch.no_grad():
            network.out.weight.normal_(0.0, 1.0)  # spread the weights and variances
    save_model_bundle(
        run,
        encoder=encoder,
        head=head,
        mdn=network,
        class_names=classes,
        mean=MEAN,
        std=STD,
        image_size=SIZE,
        encoder_name="test_resnet",
        dataset=DatasetSource.from_config_dict(config.to_dict()),
        training_config=config.to_dict(),
    )
    return (encoder, head.eval(), network) if mdn else (encoder, head.eval())


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
    return hand_probs_of_arrays(encoder, head, [np.asarray(Image.open(p).convert("RGB")) for p in paths], mean, std)


def hand_probs_of_arrays(encoder, head, arrays: list[np.ndarray], mean=MEAN, std=STD) -> np.ndarray:
    """As :func:`hand_probs`, for (SIZE, SIZE, 3) uint8 arrays."""
    x = np.stack([a.astype(np.float64) / 255.0 for a in arrays])
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
    from probmcl_med.operating_point import save_thresholds

    encoder, head = make_bundle(tmp_path / "run")
    save_thresholds(tmp_path / "run" / "model.pt", CLASSES, [0.2, 0.5, 0.9], rule="by hand", split="valid")
    [big] = write_images(tmp_path / "imgs", 1, size=(64, 64))
    assert cli(["predict", str(big), "-c", str(tmp_path / "run"), "--out", str(tmp_path / "out"),
                "--device", "cpu"]) == 0  # fmt: skip
    _, rows = read_csv(tmp_path / "out" / "predictions.csv")
    # by hand: antialiased bilinear resize of the uint8 image to 32 x 32 (PIL), then the model
    Image.open(big).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR).save(tmp_path / "small.png")
    expected = hand_probs(encoder, head, [tmp_path / "small.png"])[0]
    np.testing.assert_allclose([float(v) for v in rows[0][1:]], expected, rtol=1e-5, atol=1e-6)
    _, labels = read_csv(tmp_path / "out" / "labels.csv")
    wanted = {c for c, p, t in zip(CLASSES, expected, [0.2, 0.5, 0.9], strict=True) if p >= t}
    assert set(filter(None, labels[0][1].split("|"))) == wanted
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["thresholds"] == [0.2, 0.5, 0.9]


def test_plain_tiff_is_an_image_and_tiled_tiff_a_slide(tmp_path: Path) -> None:
    from probmcl_med.inference.inputs import input_kind

    encoder, head = make_bundle(tmp_path / "run")
    [png] = write_images(tmp_path / "imgs", 1)
    plain = tmp_path / "plain.tif"
    Image.open(png).save(plain)  # an untiled TIFF: OpenSlide does not detect it, so it is an image
    write_pyramid(tmp_path / "pyramid.tif")
    assert (input_kind(plain), input_kind(tmp_path / "pyramid.tif"), input_kind(png)) == ("image", "slide", "image")
    assert (
        cli(["predict", str(plain), "-c", str(tmp_path / "run"), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    )
    _, rows = read_csv(tmp_path / "o" / "predictions.csv")
    np.testing.assert_allclose([float(v) for v in rows[0][1:]], hand_probs(encoder, head, [png])[0], rtol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# Slides
# --------------------------------------------------------------------------------------------------------------------


def write_pyramid(path: Path) -> np.ndarray:
    """A 1024 x 1024 two-level tiled TIFF (one page per level): pink "tissue" in x 256-767, y 0-511, white elsewhere.

    Returns the level-1 pixels (512 x 512 x 3), exactly as stored (lossless zlib tiles).
    """
    import tifffile

    rng = np.random.default_rng(3)
    img = np.full((1024, 1024, 3), 245, np.uint8)
    tissue = np.array([200, 90, 170]) + rng.normal(0, 25, (512, 512, 3))
    img[0:512, 256:768] = np.clip(tissue, 0, 255).astype(np.uint8)
    level1 = np.ascontiguousarray(img[::2, ::2])
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, tile=(256, 256), photometric="rgb", compression="zlib")
        tif.write(level1, tile=(256, 256), photometric="rgb", compression="zlib", subfiletype=1)
    return level1


def test_predict_tiled_tiff_slide(tmp_path: Path) -> None:
    from probmcl_med.data.tiling import tile_slide
    from probmcl_med.inference.heatmaps import heat_grid

    encoder, head = make_bundle(tmp_path / "run")
    level1 = write_pyramid(tmp_path / "slide.tif")
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "slide.tif"), "-c", str(tmp_path / "run"), "--out", str(out),
            "--patch-size", "32", "--level", "1", "--batch-size", "16", "--device", "cpu"]  # fmt: skip
    assert cli(args) == 0
    header, rows = read_csv(out / "patches.csv")
    assert header == ["x", "y", "level", "size", "tissue_fraction", *CLASSES, "labels"]
    coords = [(int(r[0]), int(r[1])) for r in rows]
    # tissue: level-0 x in [256, 768), y in [0, 512); a 32-px level-1 patch spans 64 level-0 px
    expected = {(x, y) for x in range(256, 768, 64) for y in range(0, 512, 64)}
    assert set(coords) == expected and len(coords) == len(expected)
    assert all(r[2] == "1" and r[3] == "32" for r in rows)
    crops = [level1[y // 2 : y // 2 + 32, x // 2 : x // 2 + 32] for x, y in coords]
    probs = np.array([[float(v) for v in r[5:8]] for r in rows])
    np.testing.assert_allclose(probs, hand_probs_of_arrays(encoder, head, crops), rtol=1e-5, atol=1e-6)
    for name in CLASSES:
        assert (out / "heatmaps" / f"{name}.png").is_file()
    assert (out / "thumbnail.png").is_file()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["slide"]["patches_on_tissue"] == 64 and meta["slide"]["patches_in_grid"] == 256
    # the painted heat map: a patch's probability over its footprint, NaN on the background
    grid = tile_slide(tmp_path / "slide.tif", 32, level=1)
    ids = [{"x": x, "y": y, "size": 32} for x, y in coords]
    heat = heat_grid(grid, ids, probs[:, 0])
    sx, sy = grid.downsample
    k = coords.index((320, 64))
    assert heat[int(100 / sy), int(350 / sx)] == pytest.approx(probs[k, 0])
    assert np.isnan(heat[int(700 / sy), int(100 / sx)])
    assert np.isfinite(heat).mean() == pytest.approx(0.25, abs=0.01)


def test_predict_real_slide_keeps_tissue_and_skips_glass(tmp_path: Path) -> None:
    from slide_files import cmu_slide

    from probmcl_med.data.imageio import read_slide_region

    SLIDE = cmu_slide()

    make_bundle(tmp_path / "run")
    out = tmp_path / "out"
    assert cli(["predict", str(SLIDE), "-c", str(tmp_path / "run"), "--out", str(out), "--patch-size", "224",
                "--batch-size", "32", "--device", "cpu"]) == 0  # fmt: skip
    _, rows = read_csv(out / "patches.csv")
    kept = {(int(r[0]), int(r[1])) for r in rows}
    # independent tissue measure: fraction of pixels with HSV saturation above 0.1, read straight from OpenSlide
    coloured = {}
    for y in range(0, 2967 - 224 + 1, 224):
        for x in range(0, 2220 - 224 + 1, 224):
            rgb = read_slide_region({"path": str(SLIDE), "x": x, "y": y, "level": 0, "size": 224}).astype(float)
            hi, lo = rgb.max(axis=2), rgb.min(axis=2)
            coloured[(x, y)] = float((((hi - lo) / np.maximum(hi, 1)) > 0.1).mean())
    assert kept <= set(coloured)
    assert 10 < len(kept) < len(coloured)
    assert {c for c, f in coloured.items() if f >= 0.9} <= kept  # solid tissue is predicted
    assert not {c for c, f in coloured.items() if f < 0.3} & kept  # glass and faint edges are skipped
    assert sum(f < 0.05 for f in coloured.values()) > 10  # the slide does have background to skip
    for name in CLASSES:
        assert (out / "heatmaps" / f"{name}.png").is_file()


def test_uncertainty_equals_the_mdn_run_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    encoder, head, mdn = make_bundle(tmp_path / "run", mdn=True)
    paths = write_images(tmp_path / "imgs", 4)
    out = tmp_path / "out"
    assert cli(["predict", str(tmp_path / "imgs"), "-c", str(tmp_path / "run"), "--out", str(out), "--uncertainty",
                "--device", "cpu"]) == 0  # fmt: skip
    header, rows = read_csv(out / "uncertainty.csv")
    assert header == ["image"] + [f"pi_{c}" for c in CLASSES] + [f"var_{c}" for c in CLASSES]
    got = np.array([[float(v) for v in r[1:]] for r in rows])
    x = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255.0 for p in paths])
    xt = torch.from_numpy(((x - np.asarray(MEAN)) / np.asarray(STD)).transpose(0, 3, 1, 2)).float()
    with torch.no_grad():
        h = F.normalize(encoder.model(xt).float(), dim=1)
        a_pi, _, a_var = mdn.out(mdn.hidden(h)).split(len(CLASSES), dim=1)
        pi, var = torch.softmax(a_pi, dim=1), F.elu(a_var) + 2.0  # math.md s.1, written out
    np.testing.assert_allclose(got[:, :3], pi.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got[:, 3:], var.numpy(), rtol=1e-5, atol=1e-6)
    assert np.all(got[:, 3:] >= 1.0) and got[:, 3:].std() > 0.01
    meta = json.loads((out / "meta.json").read_text())
    assert "not a calibrated probability" in meta["uncertainty"]
    # what was measured (issue 25 item 4) is said where the numbers are read, with the numbers
    assert (
        "does not tell which predictions are wrong" in meta["uncertainty"] and "AUROC 0.45-0.48" in meta["uncertainty"]
    )
    assert "var_k was measured, and it does not tell which predictions are wrong" in capsys.readouterr().out
    # the probabilities are unchanged by --uncertainty
    _, prob_rows = read_csv(out / "predictions.csv")
    np.testing.assert_allclose([[float(v) for v in r[1:]] for r in prob_rows], hand_probs(encoder, head, paths),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert cli(["predict", "--help"]) == 0
    assert "calibrated" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the file, exit code 1, output folders whole or not at all
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("bad") / "run"
    make_bundle(run)
    return run


def test_unreadable_image_in_a_folder(tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_images(tmp_path / "imgs", 3)
    broken = tmp_path / "imgs" / "img_001.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for workers in ("0", "1"):
        code = cli(["predict", str(tmp_path / "imgs"), "-c", str(run_dir), "--out", str(tmp_path / "out"),
                    "--device", "cpu", "--workers", workers])  # fmt: skip
        assert code == 1
        line = error_line(capsys)
        assert str(broken) in line and "Caught" not in line
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folder left behind


def test_failed_predict_keeps_the_previous_output(tmp_path: Path, run_dir: Path, capsys) -> None:
    [image] = write_images(tmp_path / "imgs", 1)
    out = tmp_path / "out"
    assert cli(["predict", str(image), "-c", str(run_dir), "--out", str(out), "--device", "cpu"]) == 0
    before = (out / "predictions.csv").read_text()
    image.write_bytes(b"not an image")
    assert cli(["predict", str(image), "-c", str(run_dir), "--out", str(out), "--device", "cpu"]) == 1
    assert str(image) in error_line(capsys)
    assert (out / "predictions.csv").read_text() == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    write_images(tmp_path / "ok", 1)
    assert cli(["predict", str(tmp_path / "ok"), "-c", str(run_dir), "--out", str(foreign), "--device", "cpu"]) == 1
    assert str(foreign) in error_line(capsys)
    assert (foreign / "thesis.docx").read_text() == "precious"


def test_bad_slide_empty_folder_missing_checkpoint_no_mdn(tmp_path: Path, run_dir: Path, capsys) -> None:
    bad = tmp_path / "scan.svs"
    bad.write_bytes(b"II*\x00 this is no slide")
    assert cli(["predict", str(bad), "-c", str(run_dir), "--out", str(tmp_path / "o1"), "--device", "cpu"]) == 1
    assert str(bad) in error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert cli(["predict", str(tmp_path / "empty"), "-c", str(run_dir), "--out", str(tmp_path / "o2")]) == 1
    assert str(tmp_path / "empty") in error_line(capsys)
    [image] = write_images(tmp_path / "imgs", 1)
    assert cli(["predict", str(image), "-c", str(tmp_path / "missing"), "--out", str(tmp_path / "o3")]) == 1
    assert str(tmp_path / "missing") in error_line(capsys)
    code = cli(["predict", str(image), "-c", str(run_dir), "--out", str(tmp_path / "o4"), "--uncertainty"])
    assert code == 1
    line = error_line(capsys)
    assert str(run_dir / "model.pt") in line and "MDN" in line
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))
