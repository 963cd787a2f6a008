"""Augmentation policies: RandAugment's operations against PIL's reference implementations, seeding, policies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from probmcl_med.data.augment import POLICIES, AugmentImaged, Sharpness, build_policy, randaugment_ops, seed_pipeline

RNG = np.random.default_rng(0)
# a smooth image with texture: enhancement operations change it visibly but stay away from clipping everywhere
YY, XX = np.mgrid[0:40, 0:40]
PIXELS = np.stack([60 + 2 * XX + 20 * np.sin(YY / 3), 80 + 2 * YY, 120 + 40 * np.cos((XX + YY) / 5)], axis=-1).astype(
    np.uint8
)
PIXELS[10:14, 10:30] = RNG.integers(0, 256, size=(4, 20, 3), dtype=np.uint8)


def _apply(op, pixels=PIXELS, seed=0):
    seed_pipeline(op, seed)
    return op(image=pixels.copy())["image"]


@pytest.mark.parametrize("factor", [0.1, 0.55, 1.0, 1.45, 1.9])
def test_sharpness_matches_pil(factor):
    ours = _apply(Sharpness(factor))
    reference = np.asarray(ImageEnhance.Sharpness(Image.fromarray(PIXELS)).enhance(factor))
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1


# operation index in randaugment_ops -> the PIL reference at the signed factor 1 + v
ENHANCE = {6: ImageEnhance.Brightness, 7: ImageEnhance.Color, 8: ImageEnhance.Contrast, 9: ImageEnhance.Sharpness}


@pytest.mark.parametrize("index", sorted(ENHANCE))
def test_randaugment_enhancements_match_pil_with_either_sign(index):
    magnitude = 15  # factor 1 +- 0.45
    op = randaugment_ops(magnitude)[index]
    expected = {
        sign: np.asarray(ENHANCE[index](Image.fromarray(PIXELS)).enhance(1.0 + sign * 0.9 * magnitude / 30)).astype(int)
        for sign in (+1, -1)
    }
    seen = set()
    for seed in range(12):
        out = _apply(op, seed=seed).astype(int)
        errors = {sign: np.abs(out - ref).mean() for sign, ref in expected.items()}
        sign = min(errors, key=errors.get)
        assert errors[sign] < 1.5, errors  # colour-space conversions differ by rounding only
        seen.add(sign)
    assert seen == {+1, -1}


def test_randaugment_posterize_solarize_equalize_autocontrast_match_pil():
    ops = randaugment_ops(30)
    img = Image.fromarray(PIXELS)
    np.testing.assert_array_equal(_apply(ops[10]), np.asarray(ImageOps.posterize(img, 4)))
    solarized = _apply(ops[11])
    assert np.abs(solarized.astype(int) - np.asarray(ImageOps.solarize(img, 0)).astype(int)).max() <= 1
    stretched = np.abs(_apply(ops[12]).astype(int) - np.asarray(ImageOps.autocontrast(img)).astype(int))
    assert stretched.mean() < 1.5 and stretched.max() <= 8  # the lookup tables round differently
    np.testing.assert_array_equal(_apply(ops[13]), np.asarray(ImageOps.equalize(img)))


def test_randaugment_rotation_is_the_signed_magnitude():
    op = randaugment_ops(30)[5]  # 30 degrees either way; nearest interpolation keeps pixel values
    square = np.zeros((41, 41, 3), dtype=np.uint8)
    square[20, 5:36] = 255  # a horizontal bar through the centre
    angles = set()
    for seed in range(10):
        out = _apply(op, square, seed)[..., 0]
        ys, xs = np.nonzero(out)
        slope = np.polyfit(xs - 20, ys - 20, 1)[0]
        angles.add(round(float(np.degrees(np.arctan(slope)))))
    assert angles <= {-30, -29, 29, 30} and len({a > 0 for a in angles}) == 2


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_is_seeded_and_keeps_shape_and_dtype(policy):
    pipeline = build_policy(policy, num_ops=2, magnitude=9, hflip=True, vflip=True)
    if policy == "none":
        assert pipeline is None
        return
    image = torch.from_numpy(PIXELS.transpose(2, 0, 1).copy())
    a, b = AugmentImaged(pipeline), AugmentImaged(build_policy(policy, 2, 9, True, True))
    a.set_random_state(seed=5)
    b.set_random_state(seed=5)
    outs_a = [a({"image": image})["image"] for _ in range(6)]
    outs_b = [b({"image": image})["image"] for _ in range(6)]
    for x, y in zip(outs_a, outs_b, strict=True):
        assert x.shape == image.shape and x.dtype == torch.uint8
        assert torch.equal(x, y)
    assert any(not torch.equal(outs_a[0], o) for o in outs_a[1:])


def test_pathology_policy_changes_stain_not_only_geometry():
    pipeline = build_policy("pathology")
    sorted_input = np.sort(PIXELS.reshape(-1, 3), axis=0)
    recoloured = 0
    for seed in range(10):
        out = _apply(pipeline, seed=seed)
        # flips and 90-degree rotations permute pixels; anything else changes the colour histogram
        recoloured += not np.array_equal(np.sort(out.reshape(-1, 3), axis=0), sorted_input)
    assert recoloured >= 5


def test_flip_policy_flips_independently():
    pipeline = build_policy("flip", hflip=True, vflip=True)
    candidates = {"none": PIXELS, "h": PIXELS[:, ::-1], "v": PIXELS[::-1], "hv": PIXELS[::-1, ::-1]}
    counts = dict.fromkeys(candidates, 0)
    for seed in range(200):
        out = _apply(pipeline, seed=seed)
        (match,) = [k for k, c in candidates.items() if np.array_equal(out, c)]
        counts[match] += 1
    # two independent fair coins: each outcome a quarter of the time (binomial sd ~6 of 200)
    assert all(30 <= n <= 70 for n in counts.values()), counts


def test_randaugment_draws_operations_uniformly_with_replacement():
    # magnitude 0 leaves 9 of the 14 operations as the identity on this image; count how often the output changes
    pipeline = build_policy("randaugment", num_ops=1, magnitude=30, hflip=False, vflip=False)
    ops = pipeline.transforms[0].transforms
    changed = [not np.array_equal(_apply(op, seed=1), PIXELS) for op in ops]
    assert changed[0] is False and sum(changed) == 13  # identity first, every other operation changes the image
    unchanged = sum(np.array_equal(_apply(pipeline, seed=seed), PIXELS) for seed in range(700))
    assert 25 <= unchanged <= 75  # 700 / 14 = 50 draws of the identity


def test_bad_policy_and_ranges_are_refused():
    with pytest.raises(ValueError, match="policy 'strong'"):
        build_policy("strong")
    with pytest.raises(ValueError, match="magnitude"):
        build_policy("randaugment", magnitude=31)
