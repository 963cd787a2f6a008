"""Training augmentation policies, built with albumentations on (H, W, 3) arrays and seeded through MONAI.

Pixels are uint8 (8-bit images) or float32 in [0, 1] (deep images, which keep their precision: the operations that
albumentations or PIL define on 8-bit levels have float versions here, :class:`Sharpness`, :class:`Equalize`,
:class:`AutoContrast`; posterize and JPEG artefacts quantise by their nature).

A policy is named by ``dataset.augment.policy``:

``none``
    nothing (the training views equal the evaluation input).
``flip``
    random horizontal (``hflip``) and vertical (``vflip``) flips, probability 0.5 each.
``randaugment``
    the flips, then RandAugment (Cubuk et al., 2020): ``num_ops`` operations drawn uniformly, with replacement,
    from the standard list of 14 (identity, shear x/y, translate x/y, rotate, brightness, colour, contrast,
    sharpness, posterize, solarize, autocontrast, equalize), each at the fixed strength ``magnitude`` on the
    0-30 scale, signed operations with a random sign. The magnitude mapping is torchvision's ``RandAugment``
    (31 bins): shear up to 0.3 (16.7 degrees), translation up to 150/331 of the side, rotation up to 30 degrees,
    enhancement factors 1 +- 0.9 m / 30, posterize 8 down to 4 bits, solarize threshold 255 (1 - m / 30). Areas
    uncovered by a geometric operation are black, as in torchvision.
``pathology``
    for H&E patches: both flips and 90-degree rotations (tissue has no up), H&E stain augmentation
    (albumentations' ``HEStain``: the image is unmixed into haematoxylin and eosin, whose concentrations are
    rescaled and shifted), mild brightness / contrast / gamma, occasional blur and JPEG artefacts.

Every pipeline is an ``albumentations.Compose``; :class:`AugmentImaged` wraps it as a MONAI ``Randomizable``: each
call draws a seed from the transform's own ``self.R`` and seeds the one random stream that every member of the
Compose draws from (:func:`seed_pipeline`), so the augmentations are seeded like every MONAI transform (``set_random_state``, MONAI's ``set_determinism``, per-sample seeds of the
resumable sampler) and never touch numpy's or torch's global random streams.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Mapping
from typing import Any

import albumentations as A  # probmcl_med/__init__ sets NO_ALBUMENTATIONS_UPDATE (no update check on import)
import cv2
import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable
from monai.utils import MAX_SEED

POLICIES = ("none", "flip", "randaugment", "pathology")
"""The names ``dataset.augment.policy`` accepts."""

MAGNITUDE_MAX = 30
"""RandAugment's magnitude scale: 0 (nothing) to 30 (strongest), torchvision's 31 bins."""


class Sharpness(A.ImageOnlyTransform):
    """PIL's ``ImageEnhance.Sharpness``: ``smooth + factor * (image - smooth)`` with PIL's 3x3 smoothing kernel.

    ``factor`` 1 is the identity, above 1 sharpens, below 1 blurs (RandAugment's sharpness operation). The border
    pixels are kept, as PIL keeps them. uint8 is rounded and clipped to 0-255; float32 (deep images) clipped to [0, 1].
    """

    KERNEL = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0

    def __init__(self, factor: float = 1.0, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.factor = float(factor)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        image = img.astype(np.float32)
        smooth = cv2.filter2D(image, -1, self.KERNEL, borderType=cv2.BORDER_REPLICATE)
        smooth[0, :], smooth[-1, :], smooth[:, 0], smooth[:, -1] = image[0, :], image[-1, :], image[:, 0], image[:, -1]
        out = smooth + self.factor * (image - smooth)
        if img.dtype != np.uint8:
            return np.clip(out, 0.0, 1.0).astype(img.dtype)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("factor",)


class Equalize(A.ImageOnlyTransform):
    """PIL's ``ImageOps.equalize`` (and torchvision's): per channel, a lookup table from the cumulative histogram.

    With ``h`` the channel's histogram and ``step = (N - h[last non-empty bin]) // 255``, value ``i`` maps to
    ``(cumsum(h)[i - 1] + step // 2) // step``; a channel with ``step == 0`` is left as it is. (albumentations'
    own ``Equalize`` differs from PIL by several grey levels.) Float32 pixels in [0, 1] (deep images) are binned into
    the same 256 levels (``rint(255 x)``) and mapped through the same table, to ``table / 255``.
    """

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        levels = img if img.dtype == np.uint8 else np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
        out = np.empty_like(img)
        for c in range(img.shape[-1]):
            channel = levels[..., c]
            hist = np.bincount(channel.ravel(), minlength=256)
            step = (hist.sum() - hist[np.flatnonzero(hist)[-1]]) // 255
            if step == 0:
                out[..., c] = img[..., c]
                continue
            lut = np.clip((np.concatenate([[0], np.cumsum(hist)[:-1]]) + step // 2) // step, 0, 255)
            out[..., c] = lut.astype(np.uint8)[channel] if img.dtype == np.uint8 else lut[channel] / 255.0
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()


class AutoContrast(A.ImageOnlyTransform):
    """PIL's ``ImageOps.autocontrast`` (no cutoff): each channel's minimum-maximum stretched to the full range.

    uint8 goes through albumentations' ``AutoContrast(method="pil")``; float32 (deep images) is stretched exactly,
    ``(x - min) / (max - min)`` per channel (a constant channel is left as it is), without 8-bit levels.
    """

    def __init__(self, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.pil = A.AutoContrast(method="pil", p=1.0)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        if img.dtype == np.uint8:
            return self.pil.apply(img, **params)
        lo, hi = img.min(axis=(0, 1), keepdims=True), img.max(axis=(0, 1), keepdims=True)
        span = np.where(hi > lo, hi - lo, 1.0)
        return np.where(hi > lo, (img - lo) / span, img).astype(img.dtype)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()


def _signed(make: Any, value: float) -> A.BasicTransform:
    """``make(+value)`` or ``make(-value)`` with probability 1/2 each (RandAugment's random sign)."""
    if value == 0:
        return make(0.0)
    return A.OneOf([make(value), make(-value)], p=1.0)


def randaugment_ops(magnitude: int) -> list[A.BasicTransform]:
    """The 14 operations of RandAugment at ``magnitude`` (0-30), each applied with probability 1 when drawn."""
    m = float(magnitude) / MAGNITUDE_MAX
    shear_deg = math.degrees(math.atan(0.3 * m))
    translate = 150.0 / 331.0 * m
    enhance = 0.9 * m
    bits = int(8 - round(m * 4))

    def affine(**kwargs: Any) -> A.BasicTransform:
        return A.Affine(**kwargs, interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)

    def jitter(name: str) -> Any:
        return lambda v: A.ColorJitter(
            **{k: (1.0, 1.0) for k in ("brightness", "contrast", "saturation")} | {name: (1.0 + v, 1.0 + v)},
            hue=(0.0, 0.0),
            p=1.0,
        )

    return [
        A.NoOp(p=1.0),
        _signed(lambda v: affine(shear={"x": (v, v), "y": (0.0, 0.0)}), shear_deg),
        _signed(lambda v: affine(shear={"x": (0.0, 0.0), "y": (v, v)}), shear_deg),
        _signed(lambda v: affine(translate_percent={"x": (v, v), "y": (0.0, 0.0)}), translate),
        _signed(lambda v: affine(translate_percent={"x": (0.0, 0.0), "y": (v, v)}), translate),
        _signed(lambda v: affine(rotate=(v, v)), 30.0 * m),
        _signed(jitter("brightness"), enhance),
        _signed(jitter("saturation"), enhance),
        _signed(jitter("contrast"), enhance),
        _signed(lambda v: Sharpness(1.0 + v), enhance),
        A.Posterize(num_bits=(bits, bits), p=1.0),
        A.Solarize(threshold_range=(1.0 - m, 1.0 - m), p=1.0),
        AutoContrast(p=1.0),
        Equalize(p=1.0),
    ]


def flip_ops(hflip: bool, vflip: bool) -> list[A.BasicTransform]:
    """Horizontal and/or vertical flips, probability 0.5 each."""
    ops: list[A.BasicTransform] = []
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if vflip:
        ops.append(A.VerticalFlip(p=0.5))
    return ops


def pathology_ops() -> list[A.BasicTransform]:
    """Flips, 90-degree rotations, H&E stain jitter, mild intensity changes, blur and JPEG artefacts."""
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.HEStain(method="random_preset", intensity_scale_range=(0.8, 1.2), intensity_shift_range=(-0.1, 0.1), p=0.8),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        A.RandomGamma(gamma_limit=(90, 110), p=0.3),
        A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.1, 1.0), p=0.2),
        A.ImageCompression(quality_range=(60, 95), p=0.2),
    ]


def build_policy(
    policy: str, num_ops: int = 2, magnitude: int = 9, hflip: bool = True, vflip: bool = False
) -> A.Compose | None:
    """The albumentations pipeline of a policy (None for ``none`` or when nothing would change the image).

    Args:
        policy: one of :data:`POLICIES`.
        num_ops: RandAugment's N (``randaugment`` only); 0 keeps only the flips.
        magnitude: RandAugment's M on the 0-30 scale (``randaugment`` only).
        hflip, vflip: flips of the ``flip`` and ``randaugment`` policies (``pathology`` always flips both ways).

    Raises:
        ValueError: an unknown policy, or N / M out of range.
    """
    if policy not in POLICIES:
        raise ValueError(f"augmentation policy {policy!r}: use one of {', '.join(POLICIES)}")
    if not 0 <= int(magnitude) <= MAGNITUDE_MAX or int(num_ops) < 0:
        raise ValueError(f"RandAugment needs num_ops >= 0 and 0 <= magnitude <= {MAGNITUDE_MAX}")
    ops: list[A.BasicTransform] = []
    if policy in ("flip", "randaugment"):
        ops += flip_ops(hflip, vflip)
    if policy == "randaugment" and num_ops > 0:
        ops.append(A.SomeOf(randaugment_ops(magnitude), n=int(num_ops), replace=True, p=1.0))
    if policy == "pathology":
        ops += pathology_ops()
    return A.Compose(ops, p=1.0) if ops else None


def seed_pipeline(transform: A.BasicTransform | A.BaseCompose, seed: int) -> None:
    """Give a whole albumentations tree one numpy and one Python random stream, both seeded from ``seed``.

    albumentations' own ``set_random_seed`` hands the same seed to every member of a Compose, so members draw
    identical numbers: a horizontal and a vertical flip at p = 0.5 would always fire together. Here every member
    shares the same two generator objects (``set_random_state`` propagates them down the tree), so the members draw
    successive numbers of one stream: independent of each other, and the same sequence for the same seed. Two
    generators are built per call, not two per member (seeding every member was most of the pipeline's cost at
    224 px: benchmarks/bench_data.py).
    """
    transform.set_random_state(np.random.default_rng(int(seed)), random.Random(int(seed)))


def set_random_state(
    randomizable: Randomizable, seed: int | None = None, state: np.random.RandomState | None = None
) -> None:
    """MONAI's ``Randomizable.set_random_state``, but an integer ``seed`` reseeds the object's own ``RandomState`` in
    place: the same stream as the new ``RandomState(seed % MAX_SEED)`` MONAI builds (numpy's legacy seeding either
    way), without numpy's constructor, which cost about 100 times the reseed here and, once per sample for the
    per-sample seeds of the resumable sampler, most of the augmentation pipeline's time."""
    own = randomizable.__dict__.get("R")
    if seed is not None and state is None and isinstance(own, np.random.RandomState) and isinstance(seed, int):
        own.seed(seed % MAX_SEED)
    else:
        Randomizable.set_random_state(randomizable, seed=seed, state=state)


class AugmentImaged(Randomizable, MapTransform):
    """An albumentations pipeline on (H, W, 3) pixels (uint8, or float32 in [0, 1]), seeded through MONAI's ``self.R``.

    A (3, H, W) tensor is accepted too (and returned as one).

    Args:
        pipeline: the ``albumentations.Compose`` (see :func:`build_policy`).
        keys: the image key(s).
    """

    def __init__(self, pipeline: A.Compose, keys: Any = "image") -> None:
        MapTransform.__init__(self, keys)
        self.pipeline = pipeline
        self._seed = 0

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> AugmentImaged:
        set_random_state(self, seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self._seed = int(self.R.randint(MAX_SEED, dtype="uint32"))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.randomize()
            seed_pipeline(self.pipeline, self._seed)
            pixels = d[key]
            if isinstance(pixels, torch.Tensor):  # a (3, H, W) tensor (pipelines built before the pixels stayed HWC)
                out = self.pipeline(image=np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()))["image"]
                d[key] = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))
            else:
                d[key] = self.pipeline(image=np.ascontiguousarray(pixels))["image"]
        return d
