"""Per class, the model's most confident mistakes, each with its Grad-CAM: what a pathologist looks at to trust a
number.

For class c at threshold t_c:

- **missed** (false negatives): images that have c but score under t_c, lowest score first (the model was most
  sure the class was absent);
- **false alarms** (false positives): images without c that score at or above t_c, highest score first.

Each example is shown as the image the model saw (the evaluation transform, de-normalised) beside its Grad-CAM
overlay for class c (:mod:`probmcl_med.inference.explain`: ``find_target_layer``, ``grad_cam_maps``, ``overlay``),
as one PNG thumbnail.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from probmcl_med.data.base import image_path_of
from probmcl_med.inference.explain import find_target_layer, grad_cam_maps, overlay

DEFAULT_PER_KIND = 3
THUMBNAIL_SIDE = 120  # pixels: each half of a thumbnail (image | Grad-CAM)
KINDS = ("missed", "false alarm")


@dataclass
class Mistakes:
    """The gallery: the examples, and the Grad-CAM target layer with the (H, W) of its output at the model's input
    size (a 1 x 1 map is flat: it cannot show where the class is)."""

    examples: list[Example]
    target_layer: str = ""
    layer_size: tuple[int, int] = (0, 0)

    @property
    def flat(self) -> bool:
        return self.layer_size[0] * self.layer_size[1] <= 1


@dataclass
class Example:
    """One confident mistake: row in the evaluated split, class, kind (``missed`` / ``false alarm``), score."""

    row: int
    class_index: int
    kind: str
    score: float
    threshold: float
    label: str = ""
    png: bytes = b""

    @property
    def caption(self) -> str:
        truth = "has" if self.kind == "missed" else "lacks"
        return f"{self.label}: p = {self.score:.2f} (threshold {self.threshold:.2f}), {truth} the class"


def select_mistakes(
    scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, per_kind: int
) -> dict[int, dict[str, list[int]]]:
    """Rows of the most confident mistakes per class.

    Args:
        scores: (N, C) probabilities.
        targets: (N, C) 0/1 labels.
        thresholds: (C,) thresholds (``score >= threshold`` is a call).
        per_kind: at most this many rows per class and kind.

    Returns:
        ``{c: {"missed": rows, "false alarm": rows}}``: missed = positives under the threshold by ascending score,
        false alarms = negatives at or above it by descending score (ties by row, so the choice is deterministic).
    """
    out = {}
    for c in range(scores.shape[1]):
        s, y, t = scores[:, c], targets[:, c], thresholds[c]
        missed = np.flatnonzero((y == 1) & (s < t))
        alarms = np.flatnonzero((y == 0) & (s >= t))
        out[c] = {
            "missed": missed[np.lexsort((missed, s[missed]))][:per_kind].tolist(),
            "false alarm": alarms[np.lexsort((alarms, -s[alarms]))][:per_kind].tolist(),
        }
    return out


def item_label(item: dict[str, Any]) -> str:
    """A short name for a dataset item: its file name, plus the location for a slide patch."""
    image = item.get("image")
    path = image_path_of(image)
    if path is None:
        return f"row {item.get('row', '?')}"
    name = Path(path).name
    if isinstance(image, dict) and "x" in image:
        return f"{name} x={image['x']} y={image['y']}"
    return name


def _thumbnail(pixels: np.ndarray, cam: np.ndarray) -> bytes:
    """PNG of [image | Grad-CAM overlay], each half resized to THUMBNAIL_SIDE pixels high."""
    halves = [Image.fromarray(pixels), Image.fromarray(cam)]
    scale = THUMBNAIL_SIDE / pixels.shape[0]
    size = (max(1, round(pixels.shape[1] * scale)), THUMBNAIL_SIDE)
    halves = [h.resize(size, Image.BILINEAR) for h in halves]
    gap = 4
    canvas = Image.new("RGB", (2 * size[0] + gap, size[1]), "white")
    canvas.paste(halves[0], (0, 0))
    canvas.paste(halves[1], (size[0] + gap, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def layer_output_size(classifier: torch.nn.Module, layer: str, x: torch.Tensor) -> tuple[int, int]:
    """(H, W) of ``layer``'s output for the input batch ``x`` (one forward pass, no grad)."""
    size: list[tuple[int, int]] = []
    handle = classifier.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: size.append(tuple(out.shape[-2:]) if isinstance(out, torch.Tensor) else (0, 0))
    )
    try:
        with torch.no_grad():
            classifier(x)
    finally:
        handle.remove()
    return size[0] if size else (0, 0)


def model_input_pixels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(3, H, W) normalised input -> (H, W, 3) uint8: what the model saw, de-normalised."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device)[:, None, None]
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device)[:, None, None]
    rgb = (x * s + m).clamp(0, 1).permute(1, 2, 0).detach().cpu().numpy()
    return np.rint(rgb * 255.0).astype(np.uint8)


def build_gallery(
    bundle: Any,
    dataset: Any,
    dataset_indices: np.ndarray,
    scores: np.ndarray,
    targets: np.ndarray,
    thresholds: np.ndarray,
    per_kind: int = DEFAULT_PER_KIND,
) -> Mistakes:
    """The most confident mistakes of every class, each with its [image | Grad-CAM] thumbnail.

    Args:
        bundle: the :class:`~probmcl_med.bundle.ModelBundle` that produced ``scores``.
        dataset: the evaluated split with the bundle's evaluation transform (items ``{"image": (3, S, S)}``).
        dataset_indices: (N,) dataset index of each row of ``scores`` (samples a skip_bad dataset dropped are
            absent).
        scores: (N, C) probabilities.
        targets: (N, C) labels.
        thresholds: (C,) thresholds.
        per_kind: examples per class and kind (0: none).

    Returns:
        :class:`Mistakes`: examples in class order, missed before false alarms, each with ``label`` and ``png``
        filled in; the Grad-CAM layer and its output size.
    """
    if per_kind <= 0:
        return Mistakes([])
    chosen = select_mistakes(scores, targets, thresholds, per_kind)
    examples = [
        Example(row, c, kind, float(scores[row, c]), float(thresholds[c]))
        for c in range(scores.shape[1])
        for kind in KINDS
        for row in chosen[c][kind]
    ]
    if not examples:
        return Mistakes([])
    classifier = bundle.classifier()
    device = next(classifier.parameters()).device  # Grad-CAM runs where the model is
    layer = find_target_layer(classifier, bundle.image_size)
    inputs: dict[int, torch.Tensor] = {}
    for ex in examples:
        index = int(dataset_indices[ex.row])
        if ex.row not in inputs:
            inputs[ex.row] = dataset[index]["image"].to(device)
        x = inputs[ex.row]
        [heat] = grad_cam_maps(classifier, x[None], [ex.class_index], layer)
        pixels = model_input_pixels(x, bundle.mean, bundle.std)
        ex.png = _thumbnail(pixels, overlay(pixels, heat))
        ex.label = item_label(dataset.items[index])
    first = next(iter(inputs.values()))[None]
    return Mistakes(examples, layer, layer_output_size(classifier, layer, first))
