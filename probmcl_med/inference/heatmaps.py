"""Slide heat maps that stand apart from the stain: one class's probability per patch over the slide thumbnail.

H&E is pink (eosin) and purple-blue (haematoxylin): a semi-transparent purple-to-orange map over it blends into the
stain. Here the thumbnail is drawn in grey (its luminance, lightened), the probabilities in :data:`CMAP` (cividis:
dark blue to yellow, no pink, purple or red, perceptually uniform and readable with colour-blindness; Nuñez, Anderton
& Renslow, PLoS ONE 2018), and the region of the patches the model *calls* (probability >= the class's threshold)
is outlined in :data:`CALLED_COLOR` red. Glass and tissue without a prediction stay grey. A colour bar and a legend
say all three.

:func:`heatmap_rgb` composes the picture as an array (tested pixel by pixel); :func:`heatmap_figure` adds the title,
colour bar and legend; :func:`slide_heatmap_png` is the one call for a :class:`~probmcl_med.inference.predict.
Predictions` of a slide and a class (what ``predict`` writes to ``heatmaps/<class>.png`` and a cohort page embeds).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image
from scipy import ndimage

CMAP = "cividis"
"""Colour map of the probability (0 to 1): dark blue to yellow, apart from H&E's pinks and purples."""
CALLED_COLOR = "#e41a1c"
"""Outline of the called region (probability >= threshold)."""
ALPHA = 0.75
"""Weight of the colour over the grey thumbnail inside predicted patches."""
GREY_LIFT = 0.35
"""The grey thumbnail is lightened towards white by this fraction so the colours read on top of it."""


def heat_grid(grid: Any, ids: Sequence[dict[str, Any]], values: np.ndarray) -> np.ndarray:
    """Per-patch values painted at thumbnail resolution: (h, w) float64, NaN where no patch was predicted.

    Each patch covers ``[x, x + size * downsample)`` x ``[y, y + size * downsample)`` in level-0 pixels; overlapping
    patches (a stride below the patch size) are averaged.

    Args:
        grid: the :class:`~probmcl_med.data.tiling.SlideGrid` (thumbnail size and level-0 -> thumbnail scale).
        ids: per patch ``{"x", "y", "size", ...}``.
        values: (N,) one value per patch (a class's probabilities, or 0/1 calls).
    """
    h, w = grid.mask.shape
    total = np.zeros((h, w))
    count = np.zeros((h, w))
    for row, value in zip(ids, values, strict=True):
        extent = float(row["size"]) * grid.level_downsample
        x0, y0 = grid.to_thumbnail(row["x"], row["y"])
        x1, y1 = grid.to_thumbnail(row["x"] + extent, row["y"] + extent)
        c0, r0 = int(np.floor(x0)), int(np.floor(y0))
        c1, r1 = max(int(np.ceil(x1)), c0 + 1), max(int(np.ceil(y1)), r0 + 1)
        total[r0:r1, c0:c1] += value
        count[r0:r1, c0:c1] += 1
    return np.divide(total, count, out=np.full((h, w), np.nan), where=count > 0)


def grey_background(thumbnail: np.ndarray) -> np.ndarray:
    """(h, w) float in [0, 1]: the thumbnail's luminance (ITU-R BT.601 weights), lightened by :data:`GREY_LIFT`."""
    rgb = thumbnail[..., :3].astype(np.float64) / 255.0
    luminance = rgb @ np.array([0.299, 0.587, 0.114])
    return GREY_LIFT + (1.0 - GREY_LIFT) * luminance


def outline(mask: np.ndarray, width: int) -> np.ndarray:
    """(h, w) bool: the pixels of ``mask`` within ``width`` pixels of its edge (the inside of the border)."""
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    return mask & ~inner


def outline_width(shape: tuple[int, ...]) -> int:
    """Outline thickness in thumbnail pixels: 2, or more on a large thumbnail (a 1024 px one gets 3)."""
    return max(2, round(max(shape[:2]) / 350))


def heatmap_rgb(thumbnail: np.ndarray, heat: np.ndarray, called: np.ndarray) -> np.ndarray:
    """The heat map as an (h, w, 3) uint8 picture.

    Args:
        thumbnail: (h, w, 3) uint8 slide thumbnail.
        heat: (h, w) probability per thumbnail pixel, NaN where no patch was predicted (:func:`heat_grid`).
        called: (h, w) bool, True inside the patches the model calls.

    Returns:
        Grey thumbnail (:func:`grey_background`) everywhere; inside predicted patches ``(1 - ALPHA) * grey + ALPHA *
        CMAP(p)``; on the inner border of the called region (:func:`outline`) :data:`CALLED_COLOR`.
    """
    grey = grey_background(thumbnail)[..., None].repeat(3, axis=2)
    predicted = np.isfinite(heat)
    colours = colormaps[CMAP](np.clip(np.nan_to_num(heat), 0.0, 1.0))[..., :3]
    picture = np.where(predicted[..., None], (1.0 - ALPHA) * grey + ALPHA * colours, grey)
    border = outline(called & predicted, outline_width(heat.shape))
    picture[border] = to_rgb(CALLED_COLOR)
    return np.clip(np.rint(picture * 255.0), 0, 255).astype(np.uint8)


def heatmap_figure(
    thumbnail: np.ndarray, heat: np.ndarray, called: np.ndarray, class_name: str, threshold: float
) -> Figure:
    """:func:`heatmap_rgb` with a title, a probability colour bar and a legend for the called outline and grey."""
    h, w = heat.shape
    fig = Figure(figsize=(8.0, 8.0 * h / w + 1.0), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(heatmap_rgb(thumbnail, heat, called), interpolation="nearest")
    ax.set_axis_off()
    share = 100.0 * called[np.isfinite(heat)].mean() if np.isfinite(heat).any() else 0.0
    ax.set_title(f"{class_name}: probability per patch; called where p >= {threshold:.3g} ({share:.0f} % of the "
                 "predicted area)", fontsize=11)  # fmt: skip
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), colormaps[CMAP]), ax=ax, fraction=0.04, pad=0.02)
    bar.set_label(f"probability of {class_name}", fontsize=10)
    bar.ax.axhline(threshold, color=CALLED_COLOR, linewidth=2)
    handles = [
        Patch(facecolor="none", edgecolor=CALLED_COLOR, linewidth=2, label=f"called (p >= {threshold:.3g})"),
        Patch(facecolor=(0.75, 0.75, 0.75), edgecolor="none", label="not predicted (glass, little tissue)"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, fontsize=10, frameon=False)
    fig.tight_layout()
    return fig


def slide_heatmap_png(predictions: Any, class_index: int) -> bytes:
    """PNG bytes of one class's heat map for the slide predictions of :func:`~probmcl_med.inference.predict.
    predict_slide` (its ``slide["grid"]``, ids, probabilities and thresholds)."""
    grid = predictions.slide["grid"]
    k = int(class_index)
    heat = heat_grid(grid, predictions.ids, predictions.probs[:, k])
    called = heat_grid(grid, predictions.ids, predictions.predicted[:, k].astype(np.float64)) >= 0.5
    fig = heatmap_figure(grid.thumbnail, heat, called, predictions.class_names[k], float(predictions.thresholds[k]))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.15)
    return buffer.getvalue()


def write_heatmaps(folder: Path, predictions: Any, filenames: Sequence[str]) -> list[Path]:
    """``thumbnail.png`` and ``heatmaps/<filename>`` per class (:func:`slide_heatmap_png`), into ``folder``."""
    Image.fromarray(predictions.slide["grid"].thumbnail).save(folder / "thumbnail.png")
    (folder / "heatmaps").mkdir()
    written = []
    for k, name in enumerate(filenames):
        path = folder / "heatmaps" / name
        path.write_bytes(slide_heatmap_png(predictions, k))
        written.append(path)
    return written
