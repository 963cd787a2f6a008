"""Stain normalisation against torchstain (an independent implementation of Macenko and Reinhard), fitted per image
for loose patches and once per slide for slide patches; the guard leaves background and near-empty patches alone."""

from __future__ import annotations

import numpy as np
import pytest
import torchstain
from slide_files import cmu_slide

from probmcl_med.data.imageio import SLIDES, read_slide_region
from probmcl_med.data.stain import (
    MIN_TISSUE_FRACTION,
    ReinhardReference,
    StainNormalized,
    StainReference,
    fit_locations,
    fit_macenko,
    normalize_stains,
    reference_from_dict,
    tissue_fraction,
)
from probmcl_med.data.tiling import tile_slide


@pytest.fixture(scope="module")
def slide_patches():
    """The CMU slide's tissue grid (224 px, level 0) and 16 patches spread over it, with their locations."""
    path = str(cmu_slide())
    grid = tile_slide(path, 224, tissue_threshold=0.5)
    picks = np.unique(np.linspace(0, len(grid.locations) - 1, 16).round().astype(int))
    locations = [{**{k: grid.locations[i][k] for k in ("x", "y", "level", "size")}, "path": path} for i in picks]
    yield grid, locations, [np.asarray(read_slide_region(loc)) for loc in locations]
    SLIDES.clear()


def _torchstain_macenko(target: np.ndarray):
    normalizer = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    normalizer.fit(target)
    return normalizer


def test_macenko_per_image_equals_torchstain(slide_patches):
    _, _, patches = slide_patches
    target, image = patches[3], patches[11]
    oracle = _torchstain_macenko(target)
    matrix, max_c = fit_macenko(target)
    np.testing.assert_allclose(matrix, oracle.HERef, atol=1e-6)
    np.testing.assert_allclose(max_c, oracle.maxCRef, rtol=1e-6)
    reference = StainReference(tuple(map(tuple, matrix)), tuple(max_c))
    expected, _, _ = oracle.normalize(image, stains=False)
    got = normalize_stains(image, reference)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # torchstain truncates, we round


def test_macenko_per_slide_equals_torchstain_on_the_pooled_patches(slide_patches):
    _, locations, patches = slide_patches
    reference_image = patches[0]
    oracle = _torchstain_macenko(reference_image)
    reference = StainReference(tuple(map(tuple, oracle.HERef)), tuple(oracle.maxCRef))
    # torchstain normalises the mosaic of the slide's sampled patches as one image: stain vectors and maxima of the
    # whole; each patch's part of its output is what the per-slide fit must give for that patch alone
    mosaic = np.concatenate(patches, axis=0)
    expected, _, _ = oracle.normalize(mosaic, stains=False)
    source, used = fit_locations(locations, reference)
    assert used == len(patches)
    step = StainNormalized(reference.to_dict(), sources={locations[0]["path"]: (source, used)})
    for k in (2, 7, 13):
        patch = read_slide_region(locations[k])  # carries its location: the slide's statistics are used
        got = step({"image": patch})["image"]
        part = expected[224 * k : 224 * (k + 1)]
        assert np.abs(got.astype(int) - part.astype(int)).max() <= 1
    # and it differs from the per-patch fit, which stretches each patch to the reference's maxima
    alone = normalize_stains(np.asarray(patches[7]), reference)
    assert np.abs(alone.astype(int) - step({"image": read_slide_region(locations[7])})["image"].astype(int)).max() > 5


def test_slide_statistics_are_fitted_once_on_first_use(slide_patches, monkeypatch):
    grid, locations, patches = slide_patches
    import probmcl_med.data.stain as stain

    reference = StainReference(tuple(map(tuple, fit_macenko(patches[0])[0])), tuple(fit_macenko(patches[0])[1]))
    calls = []
    real = stain.fit_slide
    monkeypatch.setattr(stain, "fit_slide", lambda loc, ref: calls.append(loc["path"]) or real(loc, ref))
    step = StainNormalized(reference)
    first = step({"image": read_slide_region(locations[5])})["image"]
    step({"image": read_slide_region(locations[6])})
    assert calls == [locations[0]["path"]]
    source, _ = fit_locations([{**loc, "path": grid.path} for loc in grid.locations], reference)
    np.testing.assert_array_equal(first, normalize_stains(patches[5], reference, source))


def test_reinhard_per_image_equals_torchstain(slide_patches):
    _, _, patches = slide_patches
    target, image = patches[4], patches[9]
    oracle = torchstain.normalizers.ReinhardNormalizer(backend="numpy")
    oracle.fit(target)
    from probmcl_med.data.reinhard import lab_statistics

    mean, std = lab_statistics([target])
    np.testing.assert_allclose(mean, oracle.target_means, rtol=1e-4)
    np.testing.assert_allclose(std, oracle.target_stds, rtol=1e-4)
    reference = reference_from_dict(ReinhardReference(tuple(mean), tuple(std)).to_dict())
    got = normalize_stains(image, reference)
    expected = oracle.normalize(image)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # float32 and truncation there


def test_the_guard_leaves_background_and_near_empty_patches_alone(slide_patches):
    _, _, patches = slide_patches
    reference = StainReference(tuple(map(tuple, fit_macenko(patches[0])[0])), tuple(fit_macenko(patches[0])[1]))
    reinhard = ReinhardReference((70.0, 20.0, -10.0), (15.0, 8.0, 6.0))
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(238, 3, (224, 224, 3)), 0, 255).astype(np.uint8)
    near_empty = glass.copy()
    near_empty[:40, :40] = patches[0][:40, :40]  # 3 % tissue: above the old guard of 100 pixels
    assert tissue_fraction(near_empty) < MIN_TISSUE_FRACTION < tissue_fraction(patches[0])
    for ref in (reference, reinhard):
        for image in (glass, near_empty):
            np.testing.assert_array_equal(normalize_stains(image, ref), image)
        assert not np.array_equal(normalize_stains(patches[0], ref), patches[0])
