"""Slide heat maps: grey tissue, a colour map apart from H&E's hues, the called patches outlined, a legend."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import pytest
from matplotlib import colormaps

from probmcl_med.inference import heatmaps
from probmcl_med.inference.heatmaps import heat_grid, heatmap_figure, heatmap_rgb


@dataclass
class _Grid:
    """The slide grid's thumbnail geometry: level-0 = 4 x thumbnail pixels."""

    mask: np.ndarray
    level_downsample: float = 1.0

    def to_thumbnail(self, x: float, y: float) -> tuple[float, float]:
        return x / 4.0, y / 4.0


def _he_thumbnail(h: int = 60, w: int = 80) -> np.ndarray:
    """Pink eosin with purple haematoxylin blobs, white glass at the right."""
    rng = np.random.default_rng(0)
    image = np.empty((h, w, 3), np.uint8)
    image[:] = (233, 150, 190)  # eosin pink
    blobs = rng.random((h, w)) < 0.3
    image[blobs] = (120, 70, 160)  # haematoxylin purple
    image[:, 60:] = (245, 245, 245)
    return image


def _hue_degrees(rgb: np.ndarray) -> tuple[float, float]:
    h, s, _ = colorsys.rgb_to_hsv(*(np.asarray(rgb, float)[:3]))
    return 360.0 * h, s


def _in_he_band(rgb: np.ndarray) -> bool:
    """H&E's hues: haematoxylin purple-blue to eosin pink, about 250 to 360 degrees (and red just past 0)."""
    hue, saturation = _hue_degrees(rgb)
    return saturation > 0.15 and (hue >= 250.0 or hue < 10.0)


def test_the_colour_map_stays_out_of_h_and_e_hues() -> None:
    assert _in_he_band(np.array([233, 150, 190]) / 255.0) and _in_he_band(np.array([120, 70, 160]) / 255.0)
    for p in np.linspace(0, 1, 21):
        assert not _in_he_band(np.array(colormaps[heatmaps.CMAP](p))), p
    # the map used before (inferno) runs through purple and red: this test would have caught it
    assert any(_in_he_band(np.array(colormaps["inferno"](p))) for p in np.linspace(0, 1, 21))


def test_heatmap_pixels_grey_background_colour_per_patch_and_called_outline() -> None:
    thumb = _he_thumbnail()
    grid = _Grid(mask=np.zeros(thumb.shape[:2], bool))
    # four 40x40 level-0 patches (10x10 thumbnail pixels) in a row, probabilities rising; threshold 0.5
    ids = [{"x": 40 * i, "y": 40, "size": 40} for i in range(4)]
    probs = np.array([0.1, 0.4, 0.7, 0.95])
    heat = heat_grid(grid, ids, probs)
    called = heat_grid(grid, ids, (probs >= 0.5).astype(float)) >= 0.5
    picture = heatmap_rgb(thumb, heat, called).astype(float) / 255.0
    lum = (thumb.astype(float) / 255.0) @ np.array([0.299, 0.587, 0.114])
    grey = heatmaps.GREY_LIFT + (1 - heatmaps.GREY_LIFT) * lum
    # outside the patches: grey, the stain's colour gone (R = G = B)
    assert np.allclose(picture[0, :, 0], picture[0, :, 1], atol=1 / 255) and np.allclose(
        picture[0, :, 1], picture[0, :, 2], atol=1 / 255
    )
    np.testing.assert_allclose(picture[0, :, 0], grey[0], atol=1 / 255)
    # inside patch i (its centre, away from any outline): the blend of grey and the colour map at p_i
    for i, p in enumerate(probs):
        r, c = 15, 10 * i + 5
        want = (1 - heatmaps.ALPHA) * grey[r, c] + heatmaps.ALPHA * np.array(colormaps[heatmaps.CMAP](p)[:3])
        np.testing.assert_allclose(picture[r, c], want, atol=1 / 255)
    # the called region (patches 2 and 3, x in [20, 40)) is outlined in red on its inner border; nothing else is red
    red = np.all(np.abs(picture - np.array([0xE4, 0x1A, 0x1C]) / 255.0) < 1 / 255, axis=2)
    assert red[10, 20:40].all() and red[19, 20:40].all() and red[10:20, 20].all() and red[10:20, 39].all()
    assert not red[:, :20].any() and not red[:, 40:].any() and not red[12:18, 23:37].any()


def test_the_figure_has_a_colour_bar_with_the_threshold_and_a_legend() -> None:
    thumb = _he_thumbnail()
    grid = _Grid(mask=np.zeros(thumb.shape[:2], bool))
    ids = [{"x": 0, "y": 0, "size": 40}, {"x": 40, "y": 0, "size": 40}]
    heat = heat_grid(grid, ids, np.array([0.2, 0.9]))
    fig = heatmap_figure(thumb, heat, heat >= 0.6, "stroma", 0.6)
    [ax, bar] = fig.axes
    assert ax.get_title().startswith("stroma: probability per patch; called where p >= 0.6")
    assert bar.get_ylabel() == "probability of stroma"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "called (p >= 0.6)",
        "not predicted (glass, little tissue)",
    ]


@pytest.mark.parametrize("shape", [(60, 80), (1024, 700)])
def test_outline_is_visible_at_the_thumbnail_size(shape: tuple[int, int]) -> None:
    assert heatmaps.outline_width(shape) >= 2
    mask = np.zeros(shape, bool)
    mask[10:40, 10:50] = True
    border = heatmaps.outline(mask, heatmaps.outline_width(shape))
    assert border[10, 10:50].all() and not border[25, 25] and not border[~mask].any()
