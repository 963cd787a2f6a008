"""MONAI dictionary transforms: load, resize, augment (a named policy), normalise; two views for stage 1.

Training (paper: RandAugment on every view)::

    t = build_train_transform(224, mean, std, policy="randaugment", num_ops=2, magnitude=9)
    views = TwoViews(t)(item)      # {"image": (2, 3, 224, 224) float32, "label": (C,) float32}

Evaluation is deterministic: load, resize, normalise.

The augmentation policies (``none``, ``flip``, ``randaugment``, ``pathology``) are albumentations pipelines on uint8
pixels, wrapped as a seeded MONAI ``Randomizable`` (:mod:`probmcl_med.data.augment`), so every pipeline is seeded like
any MONAI transform (``Compose`` seeds its members from ``monai.utils.set_determinism``'s seed;
``set_random_state`` reseeds; DataLoader workers are reseeded by :func:`probmcl_med.data.base.seed_worker`) and never
disturbs numpy's or torch's global streams.

Images are resized to a square ``image_size`` x ``image_size`` (patches are square; a non-square image is stretched)
before augmentation, so the augmentation's cost does not depend on the source resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, MapTransform, Randomizable
from monai.utils import MAX_SEED
from PIL import Image
from torchvision.transforms.v2 import functional as tvf

from probmcl_med.data.augment import AugmentImaged, build_policy
from probmcl_med.data.imageio import read_any
from probmcl_med.data.stain import StainNormalized, StainReference

KeysType = str | Sequence[Hashable]


class ReadImaged(MapTransform):
    """Read ``data[key]`` (a path, a slide location dict or an array) into an (H, W, 3) uint8 RGB array.

    Not MONAI's ``LoadImaged`` (whose name it must not take): it reads through this package's readers (OpenSlide
    regions, one-line errors naming the file) and returns channel-last uint8 pixels, not a channel-first MetaTensor.

    An item's ``intensity`` (``dtype`` or ``minmax``, see :func:`~probmcl_med.data.imageio.read_image`) is consumed
    here, so it never reaches a batch.

    Raises:
        DataError: missing, truncated or corrupt image; unreadable slide; location outside the slide.
    """

    def __init__(self, keys: KeysType = "image") -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        intensity = d.pop("intensity", "dtype")
        for key in self.key_iterator(d):
            d[key] = read_any(d[key], intensity)
        return d


class ToTensorImaged(MapTransform):
    """(H, W, 3) uint8 array -> (3, H, W) uint8 tensor."""

    def __init__(self, keys: KeysType = "image") -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = torch.from_numpy(np.ascontiguousarray(np.asarray(d[key]).transpose(2, 0, 1)))
        return d


class ResizeImaged(MapTransform):
    """Resize a (3, H, W) uint8 tensor to (3, size, size), bilinear with antialiasing (skipped when already so).

    uint8 images go through PIL's ``Image.resize(..., BILINEAR)`` (antialiased when shrinking), the one resize a
    deployment can reproduce from an export's FILE.json with PIL alone (torchvision's uint8 kernel differs from it
    by one level on about 0.2 % of pixels, enough to move a probability by 5e-4); other dtypes use torchvision's
    antialiased bilinear resize.
    """

    def __init__(self, size: int, keys: KeysType = "image") -> None:
        super().__init__(keys)
        self.size = int(size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if tuple(img.shape[-2:]) == (self.size, self.size):
                continue
            if img.dtype == torch.uint8 and img.shape[0] == 3:
                pixels = Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy()))
                small = np.asarray(pixels.resize((self.size, self.size), Image.Resampling.BILINEAR))
                d[key] = torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1)))
            else:
                d[key] = tvf.resize(img, [self.size, self.size], antialias=True)
        return d


class NormalizeImaged(MapTransform):
    """(3, H, W) uint8 -> float32 ``(x / 255 - mean) / std`` per channel (``mean``/``std`` None: only ``x / 255``)."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None, keys: KeysType = "image") -> None:
        super().__init__(keys)
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        # (x / 255 - mean) / std == x * scale - shift: one multiply and one subtract per pixel
        self.mean = tuple(float(m) for m in mean) if mean is not None else None
        self.std = tuple(float(v) for v in std) if std is not None else None
        self.scale = self.shift = None
        if mean is not None and std is not None:
            self.scale = torch.tensor([1.0 / (255.0 * v) for v in std], dtype=torch.float32).view(-1, 1, 1)
            self.shift = torch.tensor([m / v for m, v in zip(mean, std, strict=True)], dtype=torch.float32).view(
                -1, 1, 1
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key].to(torch.float32)
            d[key] = img.div_(255.0) if self.scale is None else img.mul_(self.scale).sub_(self.shift)
        return d


class LabelToTensord(MapTransform):
    """``label`` -> (C,) float32 tensor (items without a label, e.g. slide tiles to predict, pass through)."""

    def __init__(self, keys: KeysType = "label") -> None:
        super().__init__(keys, allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = torch.as_tensor(np.asarray(d[key], dtype=np.float32))
        return d


def _compose(transforms: list[Callable], seed: int | None) -> Compose:
    pipeline = Compose(transforms, log_stats=False)
    if seed is not None:
        pipeline.set_random_state(seed=seed)
    return pipeline


def build_train_transform(
    image_size: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    policy: str = "randaugment",
    num_ops: int = 2,
    magnitude: int = 9,
    hflip: bool = True,
    vflip: bool = False,
    *,
    seed: int | None = None,
    stain: StainReference | Mapping[str, Any] | None = None,
) -> Compose:
    """Training pipeline: load -> (stain normalisation) -> (3, H, W) uint8 -> resize -> augmentation policy ->
    normalise -> label.

    Args:
        image_size: side of the square output, pixels.
        mean, std: per-channel normalisation on the 0-1 scale (None: 0-1 pixels only).
        policy: ``none``, ``flip``, ``randaugment`` or ``pathology`` (:mod:`probmcl_med.data.augment`).
        num_ops, magnitude: RandAugment's N and M (``randaugment`` only).
        hflip, vflip: random flips of the ``flip`` and ``randaugment`` policies, probability 0.5 each.
        seed: seed of the random parts (None: MONAI's ``set_determinism`` seed, as every MONAI Compose).
        stain: a Macenko stain reference (:class:`~probmcl_med.data.stain.StainReference` or its dict) applied to
            every image right after loading, or None.

    Returns:
        A MONAI Compose: item dict -> ``{"image": (3, S, S) float32, "label": (C,) float32, ...}``.
    """
    pipeline = build_policy(policy, num_ops, magnitude, hflip, vflip)
    augment = [AugmentImaged(pipeline)] if pipeline is not None else []
    return _compose(
        [
            ReadImaged(),
            *_stain(stain),
            ToTensorImaged(),
            ResizeImaged(image_size),
            *augment,
            NormalizeImaged(mean, std),
            LabelToTensord(),
        ],
        seed,
    )


def build_eval_transform(
    image_size: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    stain: StainReference | Mapping[str, Any] | None = None,
) -> Compose:
    """Deterministic pipeline: load -> (stain normalisation) -> resize to (3, S, S) -> normalise -> label tensor."""
    return _compose(
        [
            ReadImaged(),
            *_stain(stain),
            ToTensorImaged(),
            ResizeImaged(image_size),
            NormalizeImaged(mean, std),
            LabelToTensord(),
        ],
        None,
    )


def _stain(reference: StainReference | Mapping[str, Any] | None) -> list[Callable]:
    return [] if reference is None else [StainNormalized(reference)]


class TwoViews(Randomizable):
    """Two independent augmentations of one image, for the contrastive stage.

    The image is read once: when ``transform`` is a Compose starting with :class:`ReadImaged`, the load runs once and
    the rest of the pipeline twice; any other callable is simply called twice on a copy of the item.

    Returns (from ``__call__``):
        the first view's dict with ``"image"``: (2, 3, H, W) float32 (the two views stacked) and ``"label"`` (C,).
    """

    def __init__(self, transform: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.transform = transform
        self.load: Callable | None = None
        self.rest: Callable = transform
        if isinstance(transform, Compose) and transform.transforms and isinstance(transform.transforms[0], ReadImaged):
            self.load = transform.transforms[0]
            self.rest = Compose(list(transform.transforms[1:]), log_stats=False)
            self.rest.set_random_state(state=transform.R)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> TwoViews:
        super().set_random_state(seed=seed, state=state)
        target = self.rest if self.load is not None else self.transform
        if isinstance(target, Randomizable):
            target.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def randomize(self, data: Any = None) -> None:  # the wrapped transforms draw their own randomness
        return None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        base = self.load(dict(data)) if self.load is not None else dict(data)
        first = self.rest(dict(base))
        second = self.rest(dict(base))
        out = dict(first)
        out["image"] = torch.stack([first["image"], second["image"]])
        return out
