"""MONAI dictionary transforms: load, resize, augment (a named policy), normalise; two views for stage 1.

Training (paper: RandAugment on every view)::

    t = build_train_transform(224, mean, std, policy="randaugment", num_ops=2, magnitude=9)
    views = TwoViews(t)(item)      # {"image": (2, 3, 224, 224) float32, "label": (C,) float32}

Evaluation is deterministic: load, resize, normalise.

Pixels stay channel-last numpy arrays until the normalisation makes them a (3, S, S) float32 tensor: uint8 for 8-bit
images, float32 in [0, 1] for deep ones (16-bit, 12-bit), which keep their precision through resizing, augmentation
and normalisation. The augmentation policies (``none``, ``flip``, ``randaugment``, ``pathology``) are albumentations
pipelines on those pixels, wrapped as a seeded MONAI ``Randomizable`` (:mod:`probmcl_med.data.augment`), so every pipeline is seeded like
any MONAI transform (``Compose`` seeds its members from ``monai.utils.set_determinism``'s seed;
``set_random_state`` reseeds; DataLoader workers are reseeded by :func:`probmcl_med.data.base.seed_worker`) and never
disturbs numpy's or torch's global streams.

Images are resized to a square ``image_size`` x ``image_size`` (patches are square; a non-square image is stretched)
before augmentation, so the augmentation's cost does not depend on the source resolution. Reading, stain
normalisation and resizing are deterministic: a :class:`Pipeline` lets an item whose pixels went through them once
(kept in memory, :mod:`probmcl_med.data.cache`) start after them, with the same result.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, MapTransform, Randomizable
from monai.utils import MAX_SEED
from PIL import Image
from torchvision.transforms.v2 import functional as tvf

from probmcl_med.data.augment import AugmentImaged, build_policy, set_random_state
from probmcl_med.data.cache import PREPARED
from probmcl_med.data.imageio import read_any
from probmcl_med.data.stain import StainNormalized, StainReference

KeysType = str | Sequence[Hashable]


class ReadImaged(MapTransform):
    """Read ``data[key]`` (a path, a slide location dict or an array) into (H, W, 3) RGB pixels: uint8, or float32
    in [0, 1] for images deeper than 8 bits (:func:`~probmcl_med.data.imageio.read_pixels`).

    Not MONAI's ``LoadImaged`` (whose name it must not take): it reads through this package's readers (OpenSlide
    regions, one-line errors naming the file) and returns channel-last pixels, not a channel-first MetaTensor.

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


class ResizeImaged(MapTransform):
    """Resize (H, W, 3) pixels to (size, size, 3), bilinear with antialiasing (skipped when already so).

    uint8 pixels go through PIL's ``Image.resize(..., BILINEAR)`` (antialiased when shrinking), the one resize a
    deployment can reproduce from an export's FILE.json with PIL alone (torchvision's uint8 kernel differs from it
    by one level on about 0.2 % of pixels, enough to move a probability by 5e-4). float32 pixels (deep images) use
    torchvision's antialiased bilinear resize and stay float32, keeping their precision.
    """

    def __init__(self, size: int, keys: KeysType = "image") -> None:
        super().__init__(keys)
        self.size = int(size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = np.asarray(d[key])
            if img.shape[:2] == (self.size, self.size):
                continue
            if img.dtype == np.uint8:
                pixels = Image.fromarray(np.ascontiguousarray(img))
                d[key] = np.asarray(pixels.resize((self.size, self.size), Image.Resampling.BILINEAR))
            else:
                chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
                resized = tvf.resize(chw, [self.size, self.size], antialias=True)
                d[key] = np.ascontiguousarray(resized.permute(1, 2, 0).numpy())
        return d


class NormalizeImaged(MapTransform):
    """(H, W, 3) pixels -> (3, H, W) float32 ``(x - mean) / std`` per channel, x on the 0-1 scale (uint8 divided by
    255, float32 deep images as they are); ``mean``/``std`` None: only x. The one channel-first conversion of the
    pipeline. A (3, H, W) tensor is accepted too."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None, keys: KeysType = "image") -> None:
        super().__init__(keys)
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        # (x / 255 - mean) / std == x * scale - shift: one multiply and one subtract per pixel
        self.mean = tuple(float(m) for m in mean) if mean is not None else None
        self.std = tuple(float(v) for v in std) if std is not None else None
        self.scale = self.unit_scale = self.shift = None
        if mean is not None and std is not None:
            self.scale = torch.tensor([1.0 / (255.0 * v) for v in std], dtype=torch.float32).view(-1, 1, 1)
            self.unit_scale = torch.tensor([1.0 / v for v in std], dtype=torch.float32).view(-1, 1, 1)
            self.shift = torch.tensor([m / v for m, v in zip(mean, std, strict=True)], dtype=torch.float32).view(
                -1, 1, 1
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pixels = d[key]
            if isinstance(pixels, torch.Tensor):
                chw = pixels
            else:
                chw = torch.from_numpy(np.ascontiguousarray(np.asarray(pixels).transpose(2, 0, 1)))
            eight_bit = chw.dtype == torch.uint8
            img = chw.to(torch.float32, copy=True)
            if self.shift is None:
                d[key] = img.div_(255.0) if eight_bit else img
            else:
                d[key] = img.mul_(self.scale if eight_bit else self.unit_scale).sub_(self.shift)
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


class Pipeline(Compose):
    """A MONAI Compose whose first ``prefix`` members are deterministic (read, stain normalisation, resize).

    An item marked ``data[PREPARED] == self.key`` holds pixels that went through them already and starts after them,
    so decoding and resizing can happen once per image (:mod:`probmcl_med.data.cache`) with the same result.

    Args:
        transforms: the members, the deterministic ones first.
        prefix: how many leading members are deterministic.
        key: what the prefix computes (image size, stain reference): prepared pixels are used only by a pipeline of
            the same key.
        seed: seed of the random members (None: MONAI's ``set_determinism`` seed).
    """

    def __init__(self, transforms: list[Callable], prefix: int, key: Hashable, seed: int | None = None) -> None:
        super().__init__(transforms, log_stats=False)
        self.prefix, self.key = int(prefix), key
        if seed is not None:
            self.set_random_state(seed=seed)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Pipeline:
        """MONAI Compose's: reseed this pipeline, then each random member from its stream (in place: see
        :func:`probmcl_med.data.augment.set_random_state`)."""
        set_random_state(self, seed, state)
        for member in self.transforms:
            if isinstance(member, Randomizable):
                member.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def prepare(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """The item after the deterministic prefix, marked as such."""
        return {**super().__call__(dict(data), end=self.prefix), PREPARED: self.key}

    def __call__(self, input_: Any, start: int = 0, end: int | None = None, threading: bool = False, lazy=None) -> Any:
        if start == 0 and isinstance(input_, Mapping) and PREPARED in input_:
            if input_[PREPARED] != self.key:
                raise ValueError(f"pixels prepared for {input_[PREPARED]!r} given to a pipeline of {self.key!r}")
            input_ = {k: v for k, v in input_.items() if k != PREPARED}
            start = self.prefix
        return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)


def pipeline_key(image_size: int, stain: StainReference | Mapping[str, Any] | None) -> tuple:
    """What the deterministic prefix of a pipeline computes: read, the stain reference (or None), the image size."""
    reference = stain.to_dict() if isinstance(stain, StainReference) else stain
    return ("read", None if reference is None else repr(sorted(dict(reference).items())), "resize", int(image_size))


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
) -> Pipeline:
    """Training pipeline: load -> (stain normalisation) -> resize -> augmentation policy -> normalise (the one
    channel-first conversion) -> label. Pixels stay (H, W, 3) until normalised: uint8, or float32 for deep images.

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
        A :class:`Pipeline` (a MONAI Compose): item dict -> ``{"image": (3, S, S) float32, "label": (C,) float32,
        ...}``.
    """
    pipeline = build_policy(policy, num_ops, magnitude, hflip, vflip)
    augment = [AugmentImaged(pipeline)] if pipeline is not None else []
    prefix = [ReadImaged(), *_stain(stain), ResizeImaged(image_size)]
    rest = [*augment, NormalizeImaged(mean, std), LabelToTensord()]
    return Pipeline([*prefix, *rest], len(prefix), pipeline_key(image_size, stain), seed)


def build_eval_transform(
    image_size: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    stain: StainReference | Mapping[str, Any] | None = None,
) -> Pipeline:
    """Deterministic pipeline: load -> (stain normalisation) -> resize -> normalise to (3, S, S) -> label tensor."""
    prefix = [ReadImaged(), *_stain(stain), ResizeImaged(image_size)]
    rest = [NormalizeImaged(mean, std), LabelToTensord()]
    return Pipeline([*prefix, *rest], len(prefix), pipeline_key(image_size, stain))


def _stain(reference: StainReference | Mapping[str, Any] | None) -> list[Callable]:
    return [] if reference is None else [StainNormalized(reference)]


class TwoViews(Randomizable):
    """Two independent augmentations of one image, for the contrastive stage.

    The image is read (and resized) once: when ``transform`` is a :class:`Pipeline`, its deterministic prefix runs
    once (or not at all, for a prepared item) and the rest twice; any other callable is simply called twice on a copy
    of the item.

    Returns (from ``__call__``):
        the first view's dict with ``"image"``: (2, 3, H, W) float32 (the two views stacked) and ``"label"`` (C,).
    """

    def __init__(self, transform: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.transform = transform
        self.pipeline: Pipeline | None = transform if isinstance(transform, Pipeline) else None
        self.key = self.pipeline.key if self.pipeline is not None else None
        self.rest: Callable = transform
        if self.pipeline is not None:
            self.rest = Pipeline(list(self.pipeline.transforms[self.pipeline.prefix :]), 0, self.key)
            self.rest.set_random_state(state=copy.deepcopy(self.pipeline.R))

    def prepare(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """The item after the pipeline's deterministic prefix (see :meth:`Pipeline.prepare`)."""
        if self.pipeline is None:
            raise TypeError("TwoViews of a plain callable has no deterministic prefix")
        return self.pipeline.prepare(data)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> TwoViews:
        set_random_state(self, seed, state)
        if isinstance(self.rest, Randomizable):
            self.rest.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def randomize(self, data: Any = None) -> None:  # the wrapped transforms draw their own randomness
        return None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        base = dict(data)
        if self.pipeline is not None:
            if base.get(PREPARED) is None:
                base = self.pipeline.prepare(base)
            elif base[PREPARED] != self.key:
                raise ValueError(f"pixels prepared for {base[PREPARED]!r} given to a pipeline of {self.key!r}")
            base.pop(PREPARED)
        first = self.rest(dict(base))
        second = self.rest(dict(base))
        out = dict(first)
        out["image"] = torch.stack([first["image"], second["image"]])
        return out
