"""Out of distribution: the statistics against scikit-learn and scipy, the calibrated flag rate on known
distributions, the bundle round trip, and the digit demo model on H&E tissue."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.distance import mahalanobis
from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

from probmcl_med.core.ood import OodStatistics, assess, fit_statistics, ledoit_wolf


@pytest.mark.parametrize(("n", "h"), [(300, 12), (20, 40)])  # more samples than features, and fewer
def test_ledoit_wolf_equals_sklearn(n: int, h: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, h)) @ rng.normal(size=(h, h)) + 3.0
    mean, shrunk, shrinkage = ledoit_wolf(x)
    want, want_shrinkage = sklearn_ledoit_wolf(x)
    np.testing.assert_allclose(mean, x.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(shrunk, want, rtol=1e-9, atol=1e-12)
    assert shrinkage == pytest.approx(want_shrinkage, abs=1e-12)


def test_distances_are_scipy_mahalanobis_under_the_shrunk_covariance() -> None:
    rng = np.random.default_rng(1)
    train, probe = rng.normal(size=(200, 8)) * [1, 2, 3, 4, 1, 1, 0.5, 2], rng.normal(size=(30, 8)) * 2
    stats = fit_statistics(train, train[:50], "valid")
    inverse = np.linalg.inv(sklearn_ledoit_wolf(train)[0])
    want = [mahalanobis(p, train.mean(axis=0), inverse) for p in probe]
    got = stats.distances(torch.as_tensor(probe, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_the_flag_rate_is_about_one_percent_in_distribution_and_high_after_a_shift() -> None:
    rng = np.random.default_rng(2)
    mix = rng.normal(size=(16, 16))

    def draw(n: int, shift: float = 0.0) -> np.ndarray:
        return (rng.normal(size=(n, 16)) + shift) @ mix

    stats = fit_statistics(draw(3000), draw(2000), "valid")
    fresh = assess(stats, stats.distances(torch.as_tensor(draw(5000), dtype=torch.float32)).numpy())
    assert 0.004 <= fresh.share <= 0.02  # 1 % by design (binomial sd 0.14 %; the threshold itself varies too)
    assert fresh.summary(slide=True)["slide_out_of_distribution"] is False
    shifted = assess(stats, stats.distances(torch.as_tensor(draw(500, shift=1.5), dtype=torch.float32)).numpy())
    assert shifted.share > 0.9 and shifted.summary(slide=True)["slide_out_of_distribution"] is True
    assert np.all((fresh.percentile >= 0) & (fresh.percentile <= 100))
    assert np.mean(fresh.percentile <= 50) == pytest.approx(0.5, abs=0.03)  # the calibration median


def test_statistics_survive_the_bundle_round_trip(tmp_path: Path) -> None:
    from test_inference import make_bundle

    from probmcl_med.bundle import add_ood_statistics, load_model_bundle

    make_bundle(tmp_path / "run")
    assert load_model_bundle(tmp_path / "run").ood is None  # a model saved without them
    rng = np.random.default_rng(3)
    stats = fit_statistics(rng.normal(size=(100, 6)), rng.normal(size=(40, 6)), "valid")
    add_ood_statistics(tmp_path / "run", stats)
    loaded = load_model_bundle(tmp_path / "run").ood
    assert isinstance(loaded, OodStatistics) and loaded.calibrated_on == "valid" and loaded.train_images == 100
    np.testing.assert_allclose(loaded.whitening, stats.whitening, rtol=1e-6, atol=1e-7)  # stored as float32
    assert loaded.threshold == stats.threshold
    torch.load(tmp_path / "run" / "model.pt", weights_only=True)  # still plain data


def _he_patches(folder: Path, count: int = 24, side: int = 64) -> list[Path]:
    """H&E-like tissue: eosin-pink stroma with haematoxylin-purple nuclei, a generated stand-in for the real slide."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(4)
    paths = []
    for i in range(count):
        image = np.empty((side, side, 3), np.float64)
        image[:] = (230, 150, 185)
        image += rng.normal(0, 12, image.shape)
        for _ in range(rng.integers(8, 20)):
            (y, x), r = rng.integers(0, side, 2).tolist(), int(rng.integers(2, 6))
            yy, xx = np.ogrid[:side, :side]
            image[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = (110, 60, 150)
        path = folder / f"tissue_{i:02d}.png"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def test_the_digit_demo_model_flags_h_and_e_tissue_and_not_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_inference import cli
    from test_train import tiny_config

    from probmcl_med.engine import train

    config = tiny_config(
        tmp_path, "mode=asl", "epochs=1", "dataset.options={n_train: 160, n_valid: 60, n_test: 30}",
        "classifier.batch_size=32",
    )  # fmt: skip
    train(config)
    run = tmp_path / "run"
    raw = torch.load(run / "model.pt", weights_only=True)
    assert raw["ood"]["calibrated_on"] == "valid" and raw["ood"]["train_images"] == 160
    _he_patches(tmp_path / "tissue")
    assert cli(["predict", str(tmp_path / "tissue"), "-c", str(run), "--out", str(tmp_path / "p_he"), "--device",
                "cpu"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "warning:" in err and "lie far from the training images" in " ".join(err.split())
    meta = json.loads((tmp_path / "p_he" / "meta.json").read_text())
    assert meta["ood"]["share"] >= 0.9
    with (tmp_path / "p_he" / "ood.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and sum(int(r["out_of_distribution"]) for r in rows) == meta["ood"]["flagged"]
    # the demo's own test digits (the folder the run trained from): about 1 % flagged, at most a few of 30
    from probmcl_med.data.demo import ensure_demo

    folder = ensure_demo(config.dataset.root, seed=0, n_train=160, n_valid=60, n_test=30)
    digits = sorted(Path(folder).glob("images/test/*.png"))
    assert len(digits) == 30
    assert cli(["predict", str(digits[0].parent), "-c", str(run), "--out", str(tmp_path / "p_digits"), "--device",
                "cpu"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "p_digits" / "meta.json").read_text())["ood"]["share"] <= 0.1
