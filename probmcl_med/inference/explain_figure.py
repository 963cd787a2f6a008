"""The Grad-CAM figure a person reads: the input at a readable size, the overlay, the class, its probability and
threshold, and a colour bar saying what the colours mean.

The raw outputs (the overlay at the image's own size and the map as numbers) are written beside it by
:func:`probmcl_med.inference.explain.explain_image` for scripts; this figure is for eyes. A 64 x 64 patch is drawn
:data:`PANEL_INCHES` inches wide at :data:`DPI` (pixels repeated, not smoothed: the model saw those pixels).
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

CMAP = "jet"
"""The Grad-CAM colour map of the overlay (the paper's Figure 3 and Selvaraju et al. use it): blue low, red high."""
PANEL_INCHES = 4.0
DPI = 100


def explanation_figure(
    image: np.ndarray,
    blended: np.ndarray,
    class_name: str,
    probability: float,
    threshold: float,
    layer: str,
) -> Figure:
    """Input | Grad-CAM overlay with a colour bar, titled with the class, its probability and the threshold.

    Args:
        image: (H, W, 3) uint8, the image as read.
        blended: (H, W, 3) uint8, the Grad-CAM overlay (:func:`probmcl_med.inference.explain.overlay`).
        class_name: the explained class.
        probability: the model's probability of the class for this image, in [0, 1].
        threshold: the class's threshold (called when ``probability >= threshold``).
        layer: the Grad-CAM target layer, with its map size, in words.

    Returns:
        The figure (:data:`PANEL_INCHES` per panel).
    """
    called = probability >= threshold
    fig = Figure(figsize=(2 * PANEL_INCHES + 1.2, PANEL_INCHES + 1.3), dpi=DPI)
    grid = fig.add_gridspec(1, 3, width_ratios=(1, 1, 0.06), wspace=0.08, left=0.03, right=0.9, top=0.8, bottom=0.05)
    ax_in, ax_cam, ax_bar = fig.add_subplot(grid[0]), fig.add_subplot(grid[1]), fig.add_subplot(grid[2])
    ax_in.imshow(image, interpolation="nearest")
    ax_in.set_title(f"input ({image.shape[1]} x {image.shape[0]} px)", fontsize=11)
    ax_cam.imshow(blended, interpolation="nearest")
    ax_cam.set_title(f"Grad-CAM of {class_name!r} over the input", fontsize=11)
    for ax in (ax_in, ax_cam):
        ax.set_axis_off()
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), colormaps[CMAP]), cax=ax_bar)
    bar.set_ticks([0.0, 0.5, 1.0], labels=["low", "", "high"])
    bar.set_label("Grad-CAM: how much the region raises the score", fontsize=10)
    verdict = "called" if called else "not called"
    fig.suptitle(
        f"{class_name}: p = {probability:.3f}, threshold {threshold:.3g}: {verdict}", fontsize=14, fontweight="bold"
    )
    fig.text(0.465, 0.855, f"Grad-CAM layer {layer}", ha="center", fontsize=9, color="#555555")
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes at its own DPI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    return buffer.getvalue()
