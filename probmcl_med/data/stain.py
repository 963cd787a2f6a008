"""Macenko stain normalisation of H&E images: fit a reference, map every image's stains onto it.

Macenko et al., "A method for normalizing histology slides for quantitative analysis", ISBI 2009. An RGB pixel ``I``
(uint8) becomes optical density ``OD = -log(max(I, 1) / Io)`` per channel (Beer-Lambert; ``Io`` the light through
glass); an H&E image obeys ``OD = S c`` with ``S`` (3, 2) the unit-norm haematoxylin and eosin colour vectors and
``c >= 0`` the two stain concentrations of the pixel. The fit (:func:`fit_macenko`):

1. keep the tissue pixels: every channel's OD at least ``beta`` (0.15);
2. the plane of the two largest principal directions of their OD (eigenvectors of the 3x3 scatter matrix ``OD^T OD``
   / n, the uncentred second moment, as in the paper), each made to point into the positive octant;
3. each pixel's angle in that plane; the ``alpha`` and ``100 - alpha`` percentile angles (alpha = 1) give the two
   extreme colour directions, the stain vectors; haematoxylin is the one with the larger red OD (it absorbs red);
4. concentrations ``c`` by least squares of ``OD = S c`` over all pixels; ``max_concentrations`` are their 99th
   percentiles (a robust maximum).

Normalising an image (:func:`normalize_stains`) fits its own ``S`` and ``c``, rescales ``c`` by
``max_ref / max_own`` and rebuilds the pixels with the reference's vectors: ``I' = Io exp(-S_ref c')``. An image
with too few tissue pixels to fit (an empty patch of glass) is returned unchanged.

The reference (:class:`StainReference`) is fitted on one image or on the pooled tissue pixels of every image of a
folder (:func:`fit_reference`); it is plain data (lists of floats) so that it travels in a model bundle
(``model.pt``), and training, evaluation and ``predict`` apply the same one (:class:`StainNormalized`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probmcl_med.data.imageio import IMAGE_SUFFIXES, image_files
from probmcl_med.errors import DataError

MIN_TISSUE_PIXELS = 100
"""Fewer tissue pixels than this: the stains cannot be estimated (the image is left as it is)."""


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
    io: float = 240.0
    source: str = ""

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
            io=float(data.get("io", 240.0)),
            source=str(data.get("source", "")),
        )


def optical_density(rgb: np.ndarray, io: float = 240.0) -> np.ndarray:
    """(..., 3) uint8 -> (..., 3) float64 optical density ``-log(max(I, 1) / Io)``, clipped at 0 (brighter than Io)."""
    return np.maximum(-np.log(np.maximum(rgb.astype(np.float64), 1.0) / io), 0.0)


def _tissue_od(rgb: np.ndarray, io: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
    od = optical_density(rgb.reshape(-1, 3), io)
    return od, od[np.all(od >= beta, axis=1)]


def stain_vectors(tissue_od: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """(3, 2) unit-norm haematoxylin and eosin OD vectors of (n, 3) tissue OD pixels (steps 2-3 of the module doc)."""
    scatter = tissue_od.T @ tissue_od / len(tissue_od)
    _, vectors = np.linalg.eigh(scatter)  # ascending eigenvalues
    plane = vectors[:, [2, 1]]
    plane *= np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # the principal direction points into the positive octant
    projected = tissue_od @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(angles, [alpha, 100.0 - alpha])
    v_lo = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_hi = plane @ np.array([np.cos(hi), np.sin(hi)])
    h, e = (v_lo, v_hi) if v_lo[0] > v_hi[0] else (v_hi, v_lo)
    matrix = np.stack([h, e], axis=1)
    return matrix / np.linalg.norm(matrix, axis=0, keepdims=True)


def concentrations(od: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(n, 2) least-squares stain concentrations of (n, 3) OD pixels for a (3, 2) stain matrix."""
    return np.linalg.lstsq(matrix, od.T, rcond=None)[0].T


def fit_macenko(
    images: np.ndarray | Sequence[np.ndarray], io: float = 240.0, alpha: float = 1.0, beta: float = 0.15
) -> tuple[np.ndarray, np.ndarray] | None:
    """Stain matrix (3, 2) and 99th-percentile concentrations (2,) of one or more (H, W, 3) uint8 images pooled.

    Returns None when fewer than :data:`MIN_TISSUE_PIXELS` pixels are tissue (OD >= ``beta`` in every channel).
    """
    if isinstance(images, np.ndarray):
        images = [images]
    all_od, tissue = [], []
    for image in images:
        od, kept = _tissue_od(np.asarray(image), io, beta)
        all_od.append(od)
        tissue.append(kept)
    tissue_od = np.concatenate(tissue)
    if len(tissue_od) < MIN_TISSUE_PIXELS:
        return None
    matrix = stain_vectors(tissue_od, alpha)
    conc = concentrations(np.concatenate(all_od), matrix)
    return matrix, np.percentile(conc, 99, axis=0)


def normalize_stains(rgb: np.ndarray, reference: StainReference, alpha: float = 1.0, beta: float = 0.15) -> np.ndarray:
    """Macenko-normalise an (H, W, 3) uint8 image to ``reference``; (H, W, 3) uint8 (unchanged without tissue)."""
    fitted = fit_macenko(rgb, reference.io, alpha, beta)
    if fitted is None:
        return rgb
    matrix, max_c = fitted
    od = optical_density(rgb.reshape(-1, 3), reference.io)
    conc = concentrations(od, matrix)
    conc *= np.asarray(reference.max_concentrations) / np.maximum(max_c, 1e-6)
    out = reference.io * np.exp(-conc @ reference.matrix.T)
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


def fit_reference(path: str | Path, io: float = 240.0) -> StainReference:
    """A :class:`StainReference` fitted on an image, or on the pooled pixels of the images of a folder.

    Raises:
        DataError: a missing path, an unreadable image, or too little tissue to estimate two stains.
    """
    from probmcl_med.data.imageio import read_image

    files = reference_images(path)
    fitted = fit_macenko([read_image(f) for f in files], io)
    if fitted is None:
        raise DataError(
            f"dataset.stain_normalize: {path} has fewer than {MIN_TISSUE_PIXELS} stained pixels; give a reference "
            "with tissue in it"
        )
    matrix, max_c = fitted
    return StainReference(
        stain_matrix=tuple((float(a), float(b)) for a, b in matrix),
        max_concentrations=(float(max_c[0]), float(max_c[1])),
        io=float(io),
        source=str(path),
    )


class StainNormalized:
    """MONAI-style dictionary transform: Macenko-normalise ``data["image"]`` ((H, W, 3) uint8) to a reference.

    Deterministic (it draws nothing), so it sits in both the training and the evaluation pipelines, right after
    loading.
    """

    def __init__(self, reference: StainReference | Mapping[str, Any], keys: Sequence[Hashable] = ("image",)) -> None:
        self.reference = reference if isinstance(reference, StainReference) else StainReference.from_dict(reference)
        self.keys = tuple(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            if key in d:
                d[key] = normalize_stains(np.asarray(d[key]), self.reference)
        return d
