"""Export a trained model (encoder + head) to ONNX or TorchScript, to run without this package.

The exported graph maps a normalised image batch to per-class probabilities::

    input  "image":         (B, 3, S, S) float32, RGB, (pixel / 255 - mean) / std   (B free; S = input size)
    output "probabilities": (B, C) float32, sigmoid of the logits; class k is predicted when >= thresholds[k]

Everything a deployment needs to prepare inputs and read outputs is written beside it as ``FILE.json``
(:func:`export_metadata`): input size, mean/std, class names, decision thresholds, the microns per pixel the model
was trained at (read slide patches at it), the Macenko stain reference (normalise patches with it first), the encoder.

:func:`export_model` writes both files atomically (``FILE.json`` records the model file's SHA-256, so a later export
to the same path knows it replaces its own file; any other existing file is replaced only with ``overwrite``), then
runs the exported model (onnxruntime on CPU, or
``torch.jit.load``) and the PyTorch model on the same seeded batch and reports the largest absolute difference.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from probmcl_med.errors import UserError
from probmcl_med.fileio import atomic_write_bytes, atomic_write_text, file_sha256

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17


class ExportError(UserError):
    """The model cannot be exported or the exporter is missing (one line, with what to do)."""


class ProbabilityModel(nn.Module):
    """The bundle's classifier with a sigmoid: (B, 3, S, S) normalised images -> (B, C) probabilities."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(image))


def export_metadata(bundle: Any, fmt: str, file_name: str) -> dict[str, Any]:
    """The preprocessing and decoding constants written as ``FILE.json``."""
    num_classes = len(bundle.class_names)
    return {
        "format": fmt,
        "file": file_name,
        "input": {
            "name": "image",
            "shape": ["batch", 3, bundle.image_size, bundle.image_size],
            "dtype": "float32",
            "layout": "NCHW, RGB",
            "preprocessing": "(pixel / 255 - mean) / std per channel",
        },
        "output": {"name": "probabilities", "shape": ["batch", num_classes], "meaning": "sigmoid(logits)"},
        "input_size": int(bundle.image_size),
        "mean": [float(v) for v in bundle.mean],
        "std": [float(v) for v in bundle.std],
        "class_names": list(bundle.class_names),
        "thresholds": [float(t) for t in bundle.thresholds] if bundle.thresholds is not None else [0.5] * num_classes,
        "threshold_rule": "probability >= threshold",
        "mpp": getattr(bundle, "mpp", None),
        "stain_reference": getattr(bundle, "stain_reference", None),
        "encoder": bundle.encoder_name,
        "preprocessing": preprocessing_recipe(bundle),
    }


def preprocessing_recipe(bundle: Any) -> dict[str, Any]:
    """How ``predict`` turns a loose image or a slide patch into the model's input, step by step, with PIL and numpy
    (enough to reproduce its probabilities without this package; ``tests/test_export_recipe.py`` does)."""
    size = int(bundle.image_size)
    stain = getattr(bundle, "stain_reference", None)
    steps = [
        "1. read: 8-bit RGB (grey repeated, alpha dropped; a slide region's transparent pixels composited on white)",
        "2. stain: none" if stain is None else "2. stain: normalise to stain_reference as in 'stain' below",
        f"3. resize: to {size} x {size} (skipped when already that size), 'resize' below",
        "4. scale: float32 pixel / 255, then (x - mean) / std per RGB channel",
        "5. layout: (1, 3, S, S) NCHW; probabilities = model output; class k is called when >= thresholds[k]",
    ]
    recipe: dict[str, Any] = {
        "steps": steps,
        "resize": {
            "size": [size, size],
            "method": "bilinear",
            "antialias": True,
            "pil": "Image.resize((S, S), Image.Resampling.BILINEAR) on the uint8 RGB image (PIL antialiases when it "
            "shrinks); the package uses torchvision's antialiased bilinear resize of uint8 tensors, equal to PIL's "
            "on all but about 0.2 % of pixels, which differ by one level",
        },
        "slide_patches": {
            "mpp": getattr(bundle, "mpp", None),
            "patch_size": size,
            "recipe": "a patch is patch_size pixels at mpp um/px: with the slide's level-0 mpp m0 and level k's "
            "downsample d_k, read level L, the coarsest with m0 * d_L <= mpp * 1.001 (level 0 if none), a region of "
            "round(patch_size * mpp / (m0 * d_L)) pixels at (x, y) in level-0 pixels, then resize it to patch_size "
            "with PIL bilinear (antialiased) before step 2; without an mpp, patch_size pixels of the level read",
            "grid": "x, y step by the patch's level-0 extent from 0; a patch is kept when its tissue fraction (a "
            "thumbnail mask) reaches predict --tissue-threshold; predict's patches.csv lists every location it predicted",
        },
        "stain": None,
    }
    if stain is not None:
        method = stain.get("method", "macenko")
        recipe["stain"] = {
            "method": method,
            "reference": stain,
            "guard": f"leave an image unchanged when fewer than {stain.get('min_tissue_fraction', 0.1)} of its "
            "pixels have OD >= beta in all three channels, OD = -log((I + 1) / io)",
            "fitted_on": "slide patches: the slide, once, pooling up to 16 of its tissue patches evenly spaced in "
            "predict's grid order (the rows of patches.csv); loose images: the image itself",
            "apply": (
                "Macenko (Macenko et al. 2009, reference-code conventions): tissue OD (all channels >= beta); "
                "eigenvectors of their covariance (two largest); angles in that plane, percentiles alpha and "
                "100 - alpha give the stain vectors, haematoxylin the one with the larger red OD, each flipped into "
                "the positive octant and unit-normed; concentrations by least squares over all pixels, maxima their "
                "99th percentiles; out = rint(clip(io * exp(-(c * max_ref / max_src) @ stain_matrix.T), 0, 255))"
                if method == "macenko"
                else "Reinhard: CIE L*a*b* (sRGB companding, D65 white 0.95047, 1, 1.08883) of all pixels; "
                "lab' = (lab - mean_src) / std_src * lab_std + lab_mean; back to sRGB, clip to [0, 1], rint(255 x)"
            ),
        }
    return recipe


def _onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise ExportError("--format onnx needs the onnx package: pip install 'probmcl-med[export]'") from None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer warnings
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=ONNX_OPSET,
        )
    return buffer.getvalue()


def _torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings; torch.jit's deprecation notice
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def run_exported(path: str | Path, fmt: str, batch: np.ndarray) -> np.ndarray:
    """Probabilities of the exported model at ``path`` for a (B, 3, S, S) float32 batch, on CPU."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError("checking an ONNX export needs onnxruntime: pip install 'probmcl-med[export]'") from None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(["probabilities"], {"image": batch})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return module(torch.from_numpy(batch)).numpy()


def check_export_target(out: Path, overwrite: bool = False) -> None:
    """Refuse to replace an existing ``out`` or ``out.json`` that is not an earlier export (``out.json`` names ``out``
    and records its SHA-256), unless ``overwrite``.

    Raises:
        ExportError: naming the file and the two ways out.
    """
    meta = out.with_name(out.name + ".json")
    present = [p for p in (out, meta) if p.exists() or p.is_symlink()]
    if not present or overwrite:
        return
    try:
        recorded = json.loads(meta.read_text(encoding="utf-8"))
        ours = recorded["file"] == out.name and recorded["sha256"] == file_sha256(out)
    except (OSError, ValueError, KeyError, TypeError):
        ours = False
    if not ours:
        raise ExportError(
            f"{present[0]} exists and is not an earlier probmcl-med export; pass --overwrite to replace it, or give "
            "another --out"
        )


def export_model(
    bundle: Any, out: str | Path, fmt: str = "onnx", check_batch: int = 4, seed: int = 0, overwrite: bool = False
) -> dict[str, Any]:
    """Write the bundle's encoder + head to ``out`` (and ``out.json``), then compare it with PyTorch.

    Args:
        bundle: a loaded model bundle (on any device; exported from a CPU copy in eval mode).
        out: the model file (``.onnx`` / ``.pt``); ``out`` + ``.json`` receives :func:`export_metadata`.
        fmt: ``onnx`` or ``torchscript``.
        check_batch: images in the comparison batch (standard normal, seeded: the normalised-input scale).
        seed: seed of the comparison batch.
        overwrite: replace existing files at ``out`` / ``out.json`` that an earlier export did not write.

    Returns:
        ``{"file", "metadata", "format", "max_abs_difference", "batch"}``.

    Raises:
        ExportError: unknown format, missing exporter, or a model the exporter cannot trace.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: use onnx or torchscript")
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder; give a file name, e.g. {out / ('model.' + fmt[:4])}")
    check_export_target(out, overwrite)
    bundle.to("cpu")
    model = ProbabilityModel(bundle.classifier()).eval()
    size = int(bundle.image_size)
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(2, 3, size, size, generator=generator)
    try:
        data = _onnx_bytes(model, example) if fmt == "onnx" else _torchscript_bytes(model, example)
    except ExportError:
        raise
    except Exception as exc:  # tracer/exporter failures: unsupported operators, data-dependent control flow
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ExportError(f"exporting encoder {bundle.encoder_name} to {fmt} failed ({text})") from None
    atomic_write_bytes(out, data)
    meta_path = out.with_name(out.name + ".json")
    metadata = {**export_metadata(bundle, fmt, out.name), "sha256": file_sha256(out)}
    atomic_write_text(meta_path, json.dumps(metadata, indent=2) + "\n")
    batch = torch.randn(check_batch, 3, size, size, generator=generator)
    with torch.inference_mode():
        expected = model(batch).numpy()
    got = run_exported(out, fmt, batch.numpy())
    return {
        "file": str(out),
        "metadata": str(meta_path),
        "format": fmt,
        "batch": int(check_batch),
        "max_abs_difference": float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max()),
    }
