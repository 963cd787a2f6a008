"""Grad-CAM maps of the classifier, one class at a time, as overlay PNGs (the paper's Figure 3).

Grad-CAM (Selvaraju et al., ICCV 2017, the paper's ref. [31]) weights the activation maps A^k of a convolutional
layer by the spatial mean of d y_c / d A^k, sums them and keeps the positive part; the map is upsampled to the input
size and scaled to [0, 1]. The computation is MONAI's ``monai.visualize.GradCAM`` on the inference model
(encoder + linear head); y_c is the class's logit. MONAI's default post-processing maps (min, max) to (1, 0), which
inverts the map; a plain min-max scaling to [0, 1] (:func:`minmax_scale`) is used instead, so 1 marks the regions
that raise the logit most.

Target layer: the deepest layer whose output map is at least 7 x 7 (:data:`MIN_MAP_SIDE`) at the model's input size.
The sides are measured in one forward pass at that size. The candidates of a timm backbone are the stages of its
``feature_info`` (``act1``, ``layer1`` .. ``layer4`` of a ResNet, ``stages.0`` .. ``stages.3`` of a ConvNeXt); of any
other encoder, every module that returns a (B, C, H, W) map. The map of a layer whose output is 1 x 1 is one number
per channel, so every class gets the same constant map (the demo model's ``layer4`` at 32 px): a deeper layer is
only worth having while it still has room for a picture. At 224 px a ResNet's ``layer4`` is 7 x 7 and is chosen, as
in the paper's Figure 3; at 32 px ``layer1`` (8 x 8). When no candidate reaches 7 x 7 the largest map is used, and the
choice carries a warning naming the layer and its size. ``explain.json`` records the layer and its size.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from monai.visualize import GradCAM
from PIL import Image
from torch import nn

from probmcl_med.bundle import ModelBundle
from probmcl_med.calibration_file import describe_probabilities
from probmcl_med.data.imageio import read_image
from probmcl_med.devices import resolve_device
from probmcl_med.errors import DataError
from probmcl_med.fileio import atomic_directory
from probmcl_med.inference.inputs import eval_transform
from probmcl_med.inference.loop import run_bundle
from probmcl_med.inference.predict import decision_thresholds
from probmcl_med.inference.writers import OUTPUT_MARKER, check_output_folder, safe_filename


def _module_names(module: nn.Module) -> set[str]:
    return {name for name, _ in module.named_modules()}


MIN_MAP_SIDE = 7
"""The smallest side (pixels of the layer's output) a Grad-CAM target layer should have."""


@dataclass(frozen=True)
class TargetLayer:
    """The Grad-CAM target layer: its module name, its output size (H, W) at the input size, and a warning (None
    when it reaches :data:`MIN_MAP_SIDE`)."""

    name: str
    height: int
    width: int
    input_size: int
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": [self.height, self.width], "input_size": self.input_size}


def _encoder_of(classifier: nn.Module) -> tuple[nn.Module, str]:
    names = _module_names(classifier)
    prefix = "encoder" if "encoder" in names else ""
    return (classifier.get_submodule(prefix) if prefix else classifier), prefix


def _feature_info_modules(encoder: nn.Module) -> tuple[nn.Module, list[str]] | None:
    """(owner, stage module names in depth order) from a timm ``feature_info``, None when there is none."""
    for owner_name in ("model", ""):
        owner = getattr(encoder, owner_name, None) if owner_name else encoder
        if not isinstance(owner, nn.Module):
            continue
        info = getattr(owner, "feature_info", None)
        module_names = info.module_name() if hasattr(info, "module_name") else None
        if module_names is None and isinstance(info, list) and info and "module" in info[-1]:
            module_names = [entry["module"] for entry in info]
        if module_names:
            owned = _module_names(owner)
            present = [m for m in module_names if m in owned]
            if present:
                return owner, present
    return None


def layer_output_sizes(
    encoder: nn.Module, image_size: int, only: list[str] | None = None
) -> list[tuple[str, int, int]]:
    """``(name, H, W)`` of every module of ``encoder`` (or the ``only`` names) that returns a (B, C, H, W) map, in
    the order their forward passes finish, for one (1, 3, image_size, image_size) input (no gradient, eval mode)."""
    seen: list[tuple[str, int, int]] = []
    handles = []
    wanted = set(only) if only is not None else None
    for name, module in encoder.named_modules():
        if not name or (wanted is not None and name not in wanted):
            continue

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == 4:
                seen.append((name, int(out.shape[-2]), int(out.shape[-1])))

        handles.append(module.register_forward_hook(hook))
    param = next(encoder.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = encoder.training
    try:
        encoder.eval()
        with torch.no_grad():
            encoder(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        encoder.train(was_training)
        for h in handles:
            h.remove()
    return seen


def choose_target_layer(classifier: nn.Module, image_size: int) -> TargetLayer:
    """The deepest layer whose output is at least 7 x 7 at ``image_size`` (see the module docstring); else the
    largest, with a warning.

    Args:
        classifier: encoder + head (:class:`~probmcl_med.models.heads.Classifier`), or any model whose ``encoder``
            attribute is the backbone.
        image_size: the model's input side in pixels (the bundle's ``image_size``).

    Raises:
        DataError: no module of the encoder produces a 4-D feature map (not a convolutional encoder).
    """
    encoder, prefix = _encoder_of(classifier)
    stages = _feature_info_modules(encoder)
    if stages is not None:
        owner, names = stages
        owner_prefix = next(n for n, m in encoder.named_modules() if m is owner)
        sizes = [
            (".".join(p for p in (owner_prefix, n) if p), h, w)
            for n, h, w in layer_output_sizes(owner, image_size, names)
        ]
    else:
        sizes = [s for s in layer_output_sizes(encoder, image_size) if s[1] * s[2] > 1]
    if not sizes:
        raise DataError(
            f"Grad-CAM needs a convolutional encoder: no module of {type(encoder).__name__} returns a (B, C, H, W) map"
        )
    full = [(f"{prefix}.{n}" if prefix else n, h, w) for n, h, w in sizes]
    large = [s for s in full if min(s[1], s[2]) >= MIN_MAP_SIDE]
    if large:
        name, h, w = large[-1]
        return TargetLayer(name, h, w, image_size)
    name, h, w = max(full, key=lambda s: (s[1] * s[2], full.index(s)))  # the largest; the deepest of equals
    warning = (
        f"no layer of the encoder keeps a {MIN_MAP_SIDE}x{MIN_MAP_SIDE} map at {image_size} px; Grad-CAM uses the "
        f"largest, {name} ({h}x{w}), so the maps are coarse"
    )
    return TargetLayer(name, h, w, image_size, warning)


def find_target_layer(classifier: nn.Module, image_size: int = 224) -> str:
    """The name of :func:`choose_target_layer`'s layer (in ``classifier.named_modules()``)."""
    return choose_target_layer(classifier, image_size).name


def resolve_class_names(wanted: Sequence[str], class_names: Sequence[str], checkpoint: Any) -> list[int]:
    """Indices of ``wanted`` class names; an unknown one is a one-line DataError with the close matches."""
    lookup = {name: i for i, name in enumerate(class_names)}
    folded = {name.lower(): i for i, name in enumerate(class_names)}
    indices = []
    for name in wanted:
        if name in lookup:
            indices.append(lookup[name])
        elif name.lower() in folded:
            indices.append(folded[name.lower()])
        else:
            close = difflib.get_close_matches(name, list(class_names), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            shown = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
            raise DataError(f"--class {name!r} is not a class of checkpoint {checkpoint}; {hint}classes: {shown}")
    return indices


def minmax_scale(cam: torch.Tensor) -> torch.Tensor:
    """Scale each map of a (B, 1, H, W) batch to [0, 1] (min -> 0, max -> 1); a constant map becomes all zeros.

    Used instead of MONAI's ``default_normalizer``, which maps (min, max) to (1, 0) and so inverts the map (its
    docstring: "This will flip magnitudes").
    """
    flat = cam.flatten(1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    span = (hi - lo).clamp_min(torch.finfo(cam.dtype).tiny)
    scaled = (flat - lo[:, None]) / span[:, None]
    return torch.where((hi > lo)[:, None], scaled, torch.zeros_like(scaled)).view_as(cam)


def grad_cam_maps(
    classifier: nn.Module, x: torch.Tensor, class_indices: Sequence[int], target_layer: str
) -> np.ndarray:
    """Grad-CAM of each class in turn for one input.

    Args:
        classifier: images (1, 3, S, S) -> logits (1, C).
        x: (1, 3, S, S) normalised input.
        class_indices: the classes to explain, one backward pass each.
        target_layer: module name from :func:`find_target_layer`.

    Returns:
        (K, S, S) float32 maps in [0, 1]: ReLU(sum_k w_k A^k) bilinearly upsampled to the input size (MONAI), then
        :func:`minmax_scale` (high values = regions that raise the class logit).
    """
    cam = GradCAM(nn_module=classifier, target_layers=target_layer, postprocessing=minmax_scale)
    maps = []
    with torch.enable_grad():
        for c in class_indices:
            inp = x.detach().clone().requires_grad_(True)
            maps.append(cam(inp, class_idx=int(c))[0, 0].detach().float().cpu().numpy())
    return np.stack(maps).astype(np.float32)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """Blend a [0, 1] map (resized bilinearly to the image) over an (H, W, 3) uint8 image -> (H, W, 3) uint8."""
    h, w = image.shape[:2]
    resized = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    colours = colormaps[cmap](np.clip(resized, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float64) + alpha * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


@dataclass
class Explanation:
    """One class's Grad-CAM: the class, its probability, the overlay PNG path and the target layer."""

    name: str
    index: int
    probability: float
    path: Path
    layer: TargetLayer


def explain_image(
    bundle: ModelBundle,
    image_path: str | Path,
    out_dir: str | Path,
    classes: Sequence[str] | None = None,
    *,
    threshold: float | None = None,
    device: Any = "auto",
    checkpoint: Any = "checkpoint",
    overwrite: bool = False,
) -> list[Explanation]:
    """Write a Grad-CAM overlay PNG (the image's own size) per class into ``out_dir``, whole or not at all.

    Args:
        bundle: the loaded model bundle.
        image_path: the image to explain (read and preprocessed exactly as ``predict`` does).
        out_dir: output folder (``<image stem>_<class>.png`` per class and ``explain.json``).
        classes: class names to explain; None explains the predicted ones (``prob >= threshold``), or the most
            probable class when none is predicted.
        threshold: decision threshold for every class; None uses the checkpoint's tuned ones, else 0.5.
        device: auto, cpu, cuda:N.
        checkpoint: named in error messages.
        overwrite: write into a folder holding files this package did not write (only its own files replaced).

    Raises:
        DataError: unknown class name (with close matches), unreadable image, an output folder holding files of
            anyone else (without ``overwrite``).
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir, overwrite)
    wanted = resolve_class_names(classes, bundle.class_names, checkpoint) if classes else None
    image_path = Path(image_path)
    pixels = read_image(image_path)
    dev = resolve_device(device)
    bundle.to(dev)
    x = eval_transform(bundle)({"image": pixels})["image"].unsqueeze(0).to(dev)
    classifier = bundle.classifier()
    probs = run_bundle(bundle, [{"image": x}], dev).probs[0]  # calibrated when the run has a calibration.json
    thresholds = decision_thresholds(bundle, threshold)
    if wanted is None:
        wanted = [int(i) for i in np.flatnonzero(probs >= thresholds)] or [int(np.argmax(probs))]
    layer = choose_target_layer(classifier, bundle.image_size)
    maps = grad_cam_maps(classifier, x, wanted, layer.name)
    results = []
    taken: set[str] = set()
    stem = safe_filename(image_path.stem)
    written_by = "probmcl_med.inference.explain.explain_image"
    with atomic_directory(out_dir, OUTPUT_MARKER, overwrite=overwrite, written_by=written_by) as tmp:
        for k, heat in zip(wanted, maps, strict=True):
            name = bundle.class_names[k]
            filename = f"{stem}_{safe_filename(name, taken)}.png"
            Image.fromarray(overlay(pixels, heat)).save(tmp / filename)
            results.append(Explanation(name, k, float(probs[k]), out_dir / filename, layer))
        document = {
            "image": str(image_path),
            "checkpoint": str(checkpoint),
            "target_layer": layer.name,
            "target_layer_size": [layer.height, layer.width],
            "input_size": layer.input_size,
            "target_layer_warning": layer.warning,
            "method": "Grad-CAM (monai.visualize.GradCAM) on the class logit",
            "probabilities": {n: float(p) for n, p in zip(bundle.class_names, probs, strict=True)},
            "probabilities_source": describe_probabilities(bundle.calibration),
            "thresholds": [float(t) for t in thresholds],
            "explained": [{"class": r.name, "probability": r.probability, "file": r.path.name} for r in results],
        }
        (tmp / "explain.json").write_text(json.dumps(document, indent=2) + "\n")
    return results
