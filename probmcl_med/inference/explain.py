"""Grad-CAM maps of the classifier, one class at a time, as overlay PNGs (the paper's Figure 3).

Grad-CAM (Selvaraju et al., ICCV 2017, the paper's ref. [31]) weights the activation maps A^k of a convolutional
layer by the spatial mean of d y_c / d A^k, sums them and keeps the positive part; the map is upsampled to the input
size and scaled to [0, 1]. The computation is MONAI's ``monai.visualize.GradCAM`` on the inference model
(encoder + linear head); y_c is the class's logit. MONAI's default post-processing maps (min, max) to (1, 0), which
inverts the map; a plain min-max scaling to [0, 1] (:func:`minmax_scale`) is used instead, so 1 marks the regions
that raise the logit most.

Target layer: the encoder's last stage. For a timm backbone that is the module named by the last entry of its
``feature_info`` (``layer4`` of a ResNet, ``stages.3`` of a ConvNeXt, ``body.layer4`` of a TResNet); for any other
encoder, the module that last produces a spatial (B, C, H, W) map (H * W > 1) in a forward pass (its last
convolutional stage).
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
from probmcl_med.data.imageio import read_image
from probmcl_med.devices import resolve_device
from probmcl_med.errors import DataError
from probmcl_med.fileio import atomic_directory
from probmcl_med.inference.inputs import eval_transform
from probmcl_med.inference.loop import predict_batches
from probmcl_med.inference.predict import decision_thresholds
from probmcl_med.inference.writers import OUTPUT_MARKER, check_output_folder, safe_filename


def _module_names(module: nn.Module) -> set[str]:
    return {name for name, _ in module.named_modules()}


def find_target_layer(classifier: nn.Module, image_size: int = 64) -> str:
    """Name (in ``classifier.named_modules()``) of the encoder's last stage, the Grad-CAM target layer.

    Args:
        classifier: encoder + head (:class:`~probmcl_med.models.heads.Classifier`), or any model whose ``encoder``
            attribute is the backbone.
        image_size: input side for the dummy forward used when the encoder declares no ``feature_info``.

    Raises:
        DataError: no module of the encoder produces a 4-D feature map (not a convolutional encoder).
    """
    names = _module_names(classifier)
    encoder_prefix = "encoder" if "encoder" in names else ""
    encoder = classifier.get_submodule(encoder_prefix) if encoder_prefix else classifier
    for owner_name in ("model", ""):
        owner = getattr(encoder, owner_name, None) if owner_name else encoder
        if not isinstance(owner, nn.Module):
            continue
        info = getattr(owner, "feature_info", None)
        module_names = info.module_name() if hasattr(info, "module_name") else None
        if module_names is None and isinstance(info, list) and info and "module" in info[-1]:
            module_names = [entry["module"] for entry in info]
        if module_names:
            full = ".".join(p for p in (encoder_prefix, owner_name, module_names[-1]) if p)
            if full in names:
                return full
    return _last_spatial_module(classifier, encoder, encoder_prefix, image_size)


def _last_spatial_module(classifier: nn.Module, encoder: nn.Module, prefix: str, image_size: int) -> str:
    """The module that finishes last among those returning a (B, C, H, W) map with H * W > 1 (a global pool's
    (B, C, 1, 1) output is not a spatial map) in one forward of the encoder at ``image_size``."""
    order: list[str] = []
    handles = []
    for name, module in encoder.named_modules():
        if not name:
            continue

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1:
                order.append(name)

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
    if not order:
        raise DataError(
            f"Grad-CAM needs a convolutional encoder: no module of {type(encoder).__name__} returns a (B, C, H, W) map"
        )
    return f"{prefix}.{order[-1]}" if prefix else order[-1]


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
    """One class's Grad-CAM: the class, its probability, and the overlay PNG path."""

    name: str
    index: int
    probability: float
    path: Path


def explain_image(
    bundle: ModelBundle,
    image_path: str | Path,
    out_dir: str | Path,
    classes: Sequence[str] | None = None,
    *,
    threshold: float | None = None,
    device: Any = "auto",
    checkpoint: Any = "checkpoint",
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

    Raises:
        DataError: unknown class name (with close matches), unreadable image, an output folder that is not ours.
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    wanted = resolve_class_names(classes, bundle.class_names, checkpoint) if classes else None
    image_path = Path(image_path)
    pixels = read_image(image_path)
    dev = resolve_device(device)
    bundle.to(dev)
    x = eval_transform(bundle)({"image": pixels})["image"].unsqueeze(0).to(dev)
    classifier = bundle.classifier()
    probs = predict_batches(classifier, [{"image": x}], dev).probs[0]
    thresholds = decision_thresholds(bundle, threshold)
    if wanted is None:
        wanted = [int(i) for i in np.flatnonzero(probs >= thresholds)] or [int(np.argmax(probs))]
    layer = find_target_layer(classifier, bundle.image_size)
    maps = grad_cam_maps(classifier, x, wanted, layer)
    results = []
    taken: set[str] = set()
    stem = safe_filename(image_path.stem)
    with atomic_directory(out_dir) as tmp:
        for k, heat in zip(wanted, maps, strict=True):
            name = bundle.class_names[k]
            filename = f"{stem}_{safe_filename(name, taken)}.png"
            Image.fromarray(overlay(pixels, heat)).save(tmp / filename)
            results.append(Explanation(name, k, float(probs[k]), out_dir / filename))
        document = {
            "image": str(image_path),
            "checkpoint": str(checkpoint),
            "target_layer": layer,
            "method": "Grad-CAM (monai.visualize.GradCAM) on the class logit",
            "probabilities": {n: float(p) for n, p in zip(bundle.class_names, probs, strict=True)},
            "thresholds": [float(t) for t in thresholds],
            "explained": [{"class": r.name, "probability": r.probability, "file": r.path.name} for r in results],
        }
        (tmp / "explain.json").write_text(json.dumps(document, indent=2) + "\n")
        (tmp / OUTPUT_MARKER).write_text("written by probmcl_med.inference.explain.explain_image\n")
    return results
