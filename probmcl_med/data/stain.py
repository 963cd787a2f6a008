"""Stain normalisation of H&E images to a reference: Macenko (stain vectors) or Reinhard (L*a*b* statistics).

**Macenko** (Macenko et al., "A method for normalizing histology slides for quantitative analysis", ISBI 2009, with
the conventions of the authors' reference code that torchstain and HEnorm_python follow). An RGB pixel ``I`` (uint8)
becomes optical density ``OD = -log((I + 1) / Io)`` per channel (Beer-Lambert; ``Io`` the light through glass); an
H&E image obeys ``OD = S c`` with ``S`` (3, 2) the unit-norm haematoxylin and eosin colour vectors and ``c`` the two
stain concentrations of the pixel. The fit (:func:`fit_macenko`):

1. keep the tissue pixels: every channel's OD at least ``beta`` (0.15);
2. the plane of the two largest principal directions of their OD (eigenvectors of the 3x3 covariance);
3. each pixel's angle in that plane; the ``alpha`` and ``100 - alpha`` percentile angles (alpha = 1) give the two
   extreme colour directions, the stain vectors; haematoxylin is the one with the larger red OD (it absorbs red);
4. concentrations ``c`` by least squares of ``OD = S c`` over all pixels; ``max_concentrations`` are their 99th
   percentiles (a robust maximum).
Normalising rescales ``c`` by ``max_ref / max_src`` and rebuilds the pixels with the reference's vectors:
``I' = Io exp(-S_ref c')``.

**Reinhard** (:mod:`probmcl_med.data.reinhard`): the L*a*b* channels' means and standard deviations.

**What the source statistics are fitted on.** A loose patch (an image file) is fitted on itself. A slide's patches
are fitted on the *slide*: once per slide, on up to :data:`SLIDE_FIT_PATCHES` tissue patches spread over it
(:func:`fit_slide`), so a pale patch stays paler than a dense one of the same slide instead of being stretched to
the reference's maxima (per-patch fitting turned pale stroma dark and near-empty patches into speckle). ``predict``
fits on the grid it predicts; the slides dataset, in each process, on first use of each slide.

**The guard.** An image whose tissue (pixels with OD >= beta in every channel) covers less than
:data:`MIN_TISSUE_FRACTION` of it, background or a near-empty patch, is returned unchanged, with either method and
either fit.

The reference is plain data (``to_dict``) stored in ``model.pt``, so training, evaluation and ``predict`` apply the
same one (:class:`StainNormalized`); ``method`` says which (``dataset.stain_method``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from probmcl_med.data.imageio import IMAGE_SUFFIXES, image_files
from probmcl_med.data.reinhard import lab_statistics, reinhard_transfer
from probmcl_med.errors import DataError

STAIN_METHODS = ("macenko", "reinhard")

MIN_TISSUE_PIXELS = 100
"""Fewer tissue pixels than this: the stains cannot be estimated (a reference needs more)."""

MIN_TISSUE_FRACTION = 0.1
"""An image with tissue on less than this fraction of its pixels is left as it is (the guard)."""

SLIDE_FIT_PATCHES = 16
"""Tissue patches, spread over the slide, that a slide's source statistics are fitted on."""

IO, ALPHA, BETA = 240.0, 1.0, 0.15


@dataclass(frozen=True)
class StainReference:
    """The target stains of Macenko normalisation.

    Attributes:
        stain_matrix: ((3, 2) as 3 rows of 2) unit-norm OD colour vectors, columns haematoxylin then eosin.
        max_concentrations: (2,) 99th-percentile concentrations of haematoxylin and eosin.
        io: transmitted light intensity ``Io`` (uint8 scale).
        source: where the reference was fitted (file or folder), for the record.
    """

    stain_matrix: tuple[tuple[float, float], ...]
    max_concentrations: tuple[float, float]
    io: float = IO
    source: str = ""
    method = "macenko"

    @property
    def matrix(self) -> np.ndarray:
        """(3, 2) float64 stain matrix."""
        return np.asarray(self.stain_matrix, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """Plain, ``torch.load(weights_only=True)``- and JSON-safe form."""
        return {
            "method": "macenko",
            "stain_matrix": [list(map(float, row)) for row in self.stain_matrix],
            "max_concentrations": [float(v) for v in self.max_concentrations],
            "io": float(self.io),
            "alpha": ALPHA,
            "beta": BETA,
            "min_tissue_fraction": MIN_TISSUE_FRACTION,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StainReference:
        """Inverse of :meth:`to_dict`."""
        matrix = np.asarray(data["stain_matrix"], dtype=np.float64)
        if matrix.shape != (3, 2) or len(data["max_concentrations"]) != 2:
            raise DataError(f"stain reference: expected a 3x2 stain matrix and 2 maxima, got {matrix.shape}")
        return cls(
            stain_matrix=tuple((float(a), float(b)) for a, b in matrix),
            max_concentrations=(float(data["max_concentrations"][0]), float(data["max_concentrations"][1])),
            io=float(data.get("io", IO)),
            source=str(data.get("source", "")),
        )


@dataclass(frozen=True)
class ReinhardReference:
    """The target L*a*b* statistics of Reinhard normalisation: (3,) means and (3,) standard deviations."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str = ""
    method = "reinhard"

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-safe form."""
        return {"method": "reinhard", "lab_mean": [float(v) for v in self.mean],
                "lab_std": [float(v) for v in self.std], "colour_space": "CIE L*a*b*, sRGB, D65",
                "min_tissue_fraction": MIN_TISSUE_FRACTION, "io": IO, "beta": BETA, "source": self.source}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReinhardReference:
        """Inverse of :meth:`to_dict`."""
        mean, std = data["lab_mean"], data["lab_std"]
        return cls(tuple(map(float, mean)), tuple(map(float, std)), str(data.get("source", "")))  # type: ignore[arg-type]


Reference = Union[StainReference, ReinhardReference]


def reference_from_dict(data: Mapping[str, Any] | Reference) -> Reference:
    """A reference from its ``to_dict`` form (``method`` macenko, the default, or reinhard)."""
    if isinstance(data, (StainReference, ReinhardReference)):
        return data
    method = data.get("method", "macenko")
    if method == "reinhard":
        return ReinhardReference.from_dict(data)
    if method != "macenko":
        raise DataError(f"stain reference: method {method!r} is not one of {', '.join(STAIN_METHODS)}")
    return StainReference.from_dict(data)


def optical_density(rgb: np.ndarray, io: float = IO) -> np.ndarray:
    """(..., 3) uint8 -> (..., 3) float64 optical density ``-log((I + 1) / Io)``."""
    return -np.log((rgb.astype(np.float64) + 1.0) / io)


def tissue_fraction(rgb: np.ndarray, io: float = IO, beta: float = BETA) -> float:
    """Fraction of the pixels of an (H, W, 3) uint8 image whose OD is at least ``beta`` in every channel."""
    od = optical_density(np.asarray(rgb).reshape(-1, 3), io)
    return float(np.all(od >= beta, axis=1).mean()) if len(od) else 0.0


def stain_vectors(tissue_od: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """(3, 2) unit-norm haematoxylin and eosin OD vectors of (n, 3) tissue OD pixels (steps 2-3 of the module doc)."""
    _, vectors = np.linalg.eigh(np.cov(tissue_od.T))  # ascending eigenvalues
    plane = vectors[:, 1:3]
    projected = tissue_od @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(angles, [alpha, 100.0 - alpha])
    v_lo = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_hi = plane @ np.array([np.cos(hi), np.sin(hi)])
    h, e = (v_lo, v_hi) if v_lo[0] > v_hi[0] else (v_hi, v_lo)
    matrix = np.stack([h, e], axis=1)
    matrix *= np.where(matrix.sum(axis=0) < 0, -1.0, 1.0)  # absorbing vectors point into the positive octant
    return matrix / np.linalg.norm(matrix, axis=0, keepdims=True)


def concentrations(od: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(n, 2) least-squares stain concentrations of (n, 3) OD pixels for a (3, 2) stain matrix."""
    return np.linalg.lstsq(matrix, od.T, rcond=None)[0].T


def fit_macenko(
    images: np.ndarray | Sequence[np.ndarray], io: float = IO, alpha: float = ALPHA, beta: float = BETA
) -> tuple[np.ndarray, np.ndarray] | None:
    """Stain matrix (3, 2) and 99th-percentile concentrations (2,) of one or more (H, W, 3) uint8 images pooled.

    Returns None when fewer than :data:`MIN_TISSUE_PIXELS` pixels are tissue (OD >= ``beta`` in every channel).
    """
    if isinstance(images, np.ndarray):
        images = [images]
    od = np.concatenate([optical_density(np.asarray(image).reshape(-1, 3), io) for image in images])
    tissue_od = od[np.all(od >= beta, axis=1)]
    if len(tissue_od) < MIN_TISSUE_PIXELS:
        return None
    matrix = stain_vectors(tissue_od, alpha)
    return matrix, np.percentile(concentrations(od, matrix), 99, axis=0)


Source = tuple[np.ndarray, np.ndarray]
"""An image's or a slide's own statistics: Macenko (stain matrix (3, 2), maxima (2,)); Reinhard (mean, std)."""


def fit_source(images: np.ndarray | Sequence[np.ndarray], reference: Reference) -> Source | None:
    """The source statistics of ``images`` pooled for the reference's method; None when they hold too little tissue."""
    if isinstance(images, np.ndarray):
        images = [images]
    if isinstance(reference, ReinhardReference):
        pixels = sum(np.asarray(i).shape[0] * np.asarray(i).shape[1] for i in images)
        return lab_statistics(list(images)) if pixels else None
    return fit_macenko(images, reference.io)


def normalize_stains(rgb: np.ndarray, reference: Reference, source: Source | None = None) -> np.ndarray:
    """Normalise an (H, W, 3) uint8 image to ``reference``; (H, W, 3) uint8.

    Args:
        rgb: the image.
        reference: the target (:class:`StainReference` or :class:`ReinhardReference`).
        source: the statistics to map from (a slide's, :func:`fit_slide`); None fits them on ``rgb`` itself.

    The guard: an image with tissue on less than :data:`MIN_TISSUE_FRACTION` of its pixels is returned unchanged.
    """
    io = getattr(reference, "io", IO)
    if tissue_fraction(rgb, io) < MIN_TISSUE_FRACTION:
        return rgb
    if source is None:
        source = fit_source(rgb, reference)
        if source is None:
            return rgb
    if isinstance(reference, ReinhardReference):
        return reinhard_transfer(rgb, source, (np.asarray(reference.mean), np.asarray(reference.std)))
    matrix, max_c = source
    od = optical_density(rgb.reshape(-1, 3), io)
    conc = concentrations(od, matrix) * (np.asarray(reference.max_concentrations) / np.maximum(max_c, 1e-6))
    out = io * np.exp(-conc @ reference.matrix.T)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(rgb.shape)


def reference_images(path: str | Path) -> list[Path]:
    """The image file ``path``, or the image files directly in the folder ``path`` (sorted)."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise DataError(
                f"dataset.stain_normalize: folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}); give an "
                "H&E image or a folder of them"
            )
        return files
    if not path.is_file():
        raise DataError(f"dataset.stain_normalize: {path} does not exist; give an H&E reference image or a folder")
    return [path]


def fit_reference(path: str | Path, io: float = IO, method: str = "macenko") -> Reference:
    """A reference fitted on an image, or on the pooled pixels of the images of a folder, for ``method``.

    Raises:
        DataError: an unknown method, a missing path, an unreadable image, or too little tissue.
    """
    from probmcl_med.data.imageio import read_image

    if method not in STAIN_METHODS:
        raise DataError(f"dataset.stain_method: {method!r} is not one of {', '.join(STAIN_METHODS)}")
    images = [read_image(f) for f in reference_images(path)]
    tissue = sum(int(tissue_fraction(i, io) * i.shape[0] * i.shape[1]) for i in images)
    if tissue < MIN_TISSUE_PIXELS:
        raise DataError(
            f"dataset.stain_normalize: {path} has fewer than {MIN_TISSUE_PIXELS} stained pixels; give a reference "
            "with tissue in it"
        )
    if method == "reinhard":
        mean, std = lab_statistics(images)
        return ReinhardReference(tuple(map(float, mean)), tuple(map(float, std)), str(path))  # type: ignore[arg-type]
    matrix, max_c = fit_macenko(images, io)  # type: ignore[misc]
    return StainReference(
        stain_matrix=tuple((float(a), float(b)) for a, b in matrix),
        max_concentrations=(float(max_c[0]), float(max_c[1])),
        io=float(io),
        source=str(path),
    )


def fit_slide(location: Mapping[str, Any], reference: Reference) -> tuple[Source | None, int]:
    """A slide's source statistics, fitted once on up to :data:`SLIDE_FIT_PATCHES` of its tissue patches.

    The patches are those of the slide's tissue grid at the geometry of ``location`` (its level and region size, and
    ``out_size`` when it has one), every k-th in reading order so that they spread over the slide.

    Returns:
        (source, patches used); (None, 0) when the slide shows no tissue (its patches are then fitted one by one).
    """
    from probmcl_med.data.tiling import tile_slide

    size = int(location["size"]) if not isinstance(location["size"], (list, tuple)) else int(location["size"][0])
    grid = tile_slide(location["path"], size, level=int(location.get("level", 0)), tissue_threshold=0.5)
    extra = {"out_size": location["out_size"]} if location.get("out_size") is not None else {}
    return fit_locations([{**loc, **extra, "path": location["path"]} for loc in grid.locations], reference)


def fit_locations(locations: Sequence[Mapping[str, Any]], reference: Reference) -> tuple[Source | None, int]:
    """Source statistics pooled over up to :data:`SLIDE_FIT_PATCHES` of the patch ``locations``, evenly spaced."""
    from probmcl_med.data.imageio import read_slide_region

    if not locations:
        return None, 0
    picks = np.unique(np.linspace(0, len(locations) - 1, min(SLIDE_FIT_PATCHES, len(locations))).round().astype(int))
    keys = ("path", "x", "y", "level", "size", "out_size")
    patches = [read_slide_region({k: locations[i][k] for k in keys if k in locations[i]}) for i in picks]
    return fit_source(patches, reference), len(patches)


class StainNormalized:
    """MONAI-style dictionary transform: normalise ``data["image"]`` ((H, W, 3) uint8) to a reference.

    A patch read from a slide (it carries its location, :class:`~probmcl_med.data.imageio.SlidePatch`) is mapped
    with its slide's statistics, fitted once per slide and process (:func:`fit_slide`, or given in ``sources``);
    any other image with its own. Deterministic, so it sits in both the training and the evaluation pipelines,
    right after loading.

    Args:
        reference: the target, or its ``to_dict`` form.
        keys: the image keys.
        sources: slide path -> (source statistics or None, patches used), fitted beforehand (``predict``).
    """

    def __init__(
        self,
        reference: Reference | Mapping[str, Any],
        keys: Sequence[Hashable] = ("image",),
        sources: Mapping[str, tuple[Source | None, int]] | None = None,
    ) -> None:
        self.reference = reference_from_dict(reference)
        self.keys = tuple(keys)
        self.sources: dict[str, tuple[Source | None, int]] = dict(sources or {})

    def source_for(self, location: Mapping[str, Any]) -> Source | None:
        """The statistics of the slide ``location`` belongs to (fitted on first use)."""
        path = str(location["path"])
        if path not in self.sources:
            self.sources[path] = fit_slide(location, self.reference)
        return self.sources[path][0]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            if key in d:
                image = d[key]
                location = getattr(image, "location", None)
                source = self.source_for(location) if location is not None else None
                d[key] = normalize_stains(np.asarray(image), self.reference, source)
        return d
