"""Macenko stain normalisation against Beer-Lambert images built from known stain vectors (closed forms)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from slide_files import cmu_slide

from probmcl_med.data.stain import (
    StainNormalized,
    StainReference,
    fit_macenko,
    fit_reference,
    normalize_stains,
)
from probmcl_med.errors import DataError

IO = 240.0
# The reference H&E OD vectors of Macenko's published code, and a second, clearly different lab's stains. Every
# component is large enough that the pure-stain pixels pass the OD >= 0.15 tissue filter in all three channels.
MACENKO_HE = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
OTHER_LAB = np.array([[0.70, 0.25], [0.65, 0.90], [0.30, 0.35]])
RUIFROK_H = np.array([0.650, 0.704, 0.286])  # Ruifrok & Johnston's haematoxylin


def _unit(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=0, keepdims=True)


def beer_lambert(matrix: np.ndarray, side: int = 96, scale: tuple[float, float] = (1.0, 1.0), seed: int = 0):
    """An (side, side, 3) uint8 H&E image I = Io exp(-S c): a quarter pure haematoxylin, a quarter pure eosin, the
    rest mixtures, so the 1st/99th percentile angles are exactly the pure stains; plus the concentrations."""
    rng = np.random.default_rng(seed)
    n = side * side
    c = rng.uniform(0.8, 1.6, (n, 2)) * np.asarray(scale)
    c[: n // 4, 1] = 0.0
    c[n // 4 : n // 2, 0] = 0.0
    rng.shuffle(c)
    od = c @ _unit(matrix).T
    rgb = np.clip(np.rint(IO * np.exp(-od)), 0, 255).astype(np.uint8)
    return rgb.reshape(side, side, 3), c


def test_fit_recovers_the_stain_vectors_it_was_built_from():
    for matrix in (MACENKO_HE, OTHER_LAB):
        rgb, c = beer_lambert(matrix)
        fitted, max_c = fit_macenko(rgb, IO)
        np.testing.assert_allclose(fitted, _unit(matrix), atol=0.01)  # uint8 rounding is the only error
        np.testing.assert_allclose(max_c, np.percentile(c, 99, axis=0), rtol=0.03)


def test_normalised_image_has_the_reference_stains_and_maxima():
    reference_rgb, _ = beer_lambert(MACENKO_HE, seed=1)
    s_ref, max_ref = fit_macenko(reference_rgb, IO)
    reference = StainReference(tuple(map(tuple, s_ref)), tuple(max_ref), io=IO)
    # the reference normalised to itself reproduces its own stain matrix and pixels (up to uint8 rounding)
    same = normalize_stains(reference_rgb, reference)
    s_same, max_same = fit_macenko(same, IO)
    np.testing.assert_allclose(s_same, s_ref, atol=0.01)
    np.testing.assert_allclose(max_same, max_ref, rtol=0.02)  # OD = -log((I + 1) / Io): not exactly Beer-Lambert
    assert np.abs(same.astype(int) - reference_rgb.astype(int)).max() <= 2
    # another lab's image, with stronger eosin, ends with the reference's stains and concentration maxima
    source, c_src = beer_lambert(OTHER_LAB, scale=(0.7, 1.6), seed=2)
    out = normalize_stains(source, reference)
    s_out, max_out = fit_macenko(out, IO)
    np.testing.assert_allclose(s_out, s_ref, atol=0.02)
    np.testing.assert_allclose(max_out, max_ref, rtol=0.05)
    # and pixel by pixel it is the closed form Io exp(-S_ref c max_ref / max_src) of the source's concentrations
    expected = IO * np.exp(-(c_src * max_ref / np.percentile(c_src, 99, axis=0)) @ s_ref.T)
    assert np.abs(out.reshape(-1, 3).astype(float) - expected).mean() < 2.0


def test_reference_round_trip_and_transform(tmp_path):
    rgb, _ = beer_lambert(MACENKO_HE)
    Image.fromarray(rgb).save(tmp_path / "ref.png")
    ref = fit_reference(tmp_path / "ref.png", io=IO)
    again = StainReference.from_dict(ref.to_dict())
    assert again == ref and ref.to_dict()["method"] == "macenko"
    np.testing.assert_allclose(ref.matrix, _unit(MACENKO_HE), atol=0.01)
    (tmp_path / "folder").mkdir()
    for i in range(2):
        Image.fromarray(beer_lambert(MACENKO_HE, side=48, seed=i)[0]).save(tmp_path / "folder" / f"{i}.png")
    pooled = fit_reference(tmp_path / "folder", io=IO)
    np.testing.assert_allclose(pooled.matrix, ref.matrix, atol=0.02)
    source, _ = beer_lambert(OTHER_LAB, seed=3)
    out = StainNormalized(ref.to_dict())({"image": source, "label": 1})
    np.testing.assert_array_equal(out["image"], normalize_stains(source, ref))
    assert out["label"] == 1


def test_glass_is_left_alone_and_bad_references_name_the_path(tmp_path):
    ref = StainReference(tuple(map(tuple, _unit(MACENKO_HE))), (1.0, 1.0), io=IO)
    glass = np.full((32, 32, 3), 235, np.uint8)
    np.testing.assert_array_equal(normalize_stains(glass, ref), glass)
    with pytest.raises(DataError, match=r"stain_normalize: .*nothing\.png does not exist"):
        fit_reference(tmp_path / "nothing.png")
    Image.fromarray(glass).save(tmp_path / "glass.png")
    with pytest.raises(DataError, match=r"glass\.png has fewer than 100 stained pixels"):
        fit_reference(tmp_path / "glass.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        fit_reference(tmp_path / "empty")


def test_real_he_stains_are_haematoxylin_then_eosin():
    import openslide

    slide = openslide.OpenSlide(str(cmu_slide()))
    rgb = np.asarray(slide.read_region((1000, 1200), 0, (512, 512)).convert("RGB"))
    matrix, _ = fit_macenko(rgb)
    # haematoxylin absorbs red most of the three, eosin green (the published vectors have the same ordering)
    assert matrix[0, 0] > matrix[0, 1] and np.argmax(matrix[:, 1]) == 1
    assert np.degrees(np.arccos(np.clip(matrix[:, 0] @ RUIFROK_H / np.linalg.norm(RUIFROK_H), -1, 1))) < 25


def test_eval_and_train_pipelines_normalise_right_after_loading():
    import torch

    from probmcl_med.data.transforms import build_eval_transform, build_train_transform

    ref = StainReference(tuple(map(tuple, _unit(MACENKO_HE))), (1.2, 1.1), io=IO)
    source, _ = beer_lambert(OTHER_LAB, side=64, seed=4)
    expected = torch.from_numpy(normalize_stains(source, ref).transpose(2, 0, 1).astype(np.float32) / 255.0)
    got = build_eval_transform(64, None, None, stain=ref)({"image": source})["image"]
    torch.testing.assert_close(got, expected)
    unaugmented = build_train_transform(64, None, None, policy="none", stain=ref.to_dict(), seed=0)
    torch.testing.assert_close(unaugmented({"image": source})["image"], expected)
