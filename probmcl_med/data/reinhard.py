"""Reinhard colour transfer in CIE L*a*b* (Reinhard et al., "Color transfer between images", IEEE CG&A 2001).

Each of the three L*a*b* channels of an image is standardised by its own mean and standard deviation and given the
reference's: ``lab' = (lab - mean_src) / std_src * std_ref + mean_ref``, then back to RGB (clipped). The conversion
is sRGB (IEC 61966-2-1 companding) to CIE XYZ with the D65 white (0.95047, 1, 1.08883), then to L*a*b* (CIE 1976;
the linear segment below (6/29)^3), as scikit-image and torchstain compute it. Statistics are plain means and
standard deviations over the pixels given (a patch, or the tissue patches sampled from a slide).
"""

from __future__ import annotations

import numpy as np

_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE = np.array([0.95047, 1.0, 1.08883])
_EPSILON = 0.008856  # (6/29)^3
_KAPPA = 7.787  # (29/6)^2 / 3


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> (..., 3) float64 CIE L*a*b* (L in 0-100)."""
    linear = rgb.astype(np.float64) / 255.0
    linear = np.where(linear > 0.04045, ((linear + 0.055) / 1.055) ** 2.4, linear / 12.92)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > _EPSILON, np.cbrt(xyz), _KAPPA * xyz + 16.0 / 116.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """(..., 3) CIE L*a*b* -> (..., 3) uint8 sRGB (out-of-gamut values clipped, then rounded)."""
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([lab[..., 1] / 500.0 + fy, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f > 0.2068966, f**3, (f - 16.0 / 116.0) / _KAPPA) * _WHITE
    linear = xyz @ _XYZ_TO_RGB.T
    srgb = np.where(linear > 0.0031308, 1.055 * np.maximum(linear, 0.0) ** (1 / 2.4) - 0.055, linear * 12.92)
    return np.clip(np.rint(np.clip(srgb, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)


def lab_statistics(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(3,) mean and (3,) standard deviation of the L*a*b* channels over all pixels of the (H, W, 3) images."""
    lab = np.concatenate([rgb_to_lab(np.asarray(image)).reshape(-1, 3) for image in images])
    return lab.mean(axis=0), lab.std(axis=0)


def reinhard_transfer(
    rgb: np.ndarray, source: tuple[np.ndarray, np.ndarray], target: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """(H, W, 3) uint8 with the L*a*b* statistics ``source`` (mean, std) moved to ``target``; (H, W, 3) uint8."""
    mean_s, std_s = (np.asarray(v, dtype=np.float64) for v in source)
    mean_t, std_t = (np.asarray(v, dtype=np.float64) for v in target)
    lab = rgb_to_lab(rgb)
    return lab_to_rgb((lab - mean_s) / np.maximum(std_s, 1e-6) * std_t + mean_t)
