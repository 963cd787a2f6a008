"""Running a saved model: inputs, the one batched loop, feature caching, predictions, Grad-CAM, writers.

- :mod:`~probmcl_med.inference.inputs`: folders, images and whole slides, their items and loader.
- :mod:`~probmcl_med.inference.loop`: :func:`predict_batches`, the only forward pass over a loader (predict,
  evaluate, Grad-CAM's probabilities, training's validation and feature cache all use it).
- :mod:`~probmcl_med.inference.features`: the frozen-encoder feature cache.
- :mod:`~probmcl_med.inference.predict`: probabilities for images and slides (:class:`Predictions`).
- :mod:`~probmcl_med.inference.writers`: prediction folders (CSV, heat maps), whole or not at all.
- :mod:`~probmcl_med.inference.explain`: Grad-CAM overlays (the paper's Figure 3).
- :mod:`~probmcl_med.inference.geojson`: slide predictions as QuPath GeoJSON.
- :mod:`~probmcl_med.inference.export`: the model as ONNX or TorchScript, checked against PyTorch.

It reads :mod:`probmcl_med.bundle`, :mod:`probmcl_med.data` and :mod:`probmcl_med.models`, never the engine.
"""

from __future__ import annotations

from probmcl_med.inference.explain import Explanation, explain_image
from probmcl_med.inference.inputs import input_kind, list_images
from probmcl_med.inference.loop import BatchOutputs, predict_batches, run_bundle
from probmcl_med.inference.predict import (
    Predictions,
    decision_thresholds,
    describe_thresholds,
    predict_images,
    predict_slide,
)
from probmcl_med.inference.writers import write_predictions

__all__ = [
    "BatchOutputs",
    "Explanation",
    "Predictions",
    "decision_thresholds",
    "describe_thresholds",
    "explain_image",
    "input_kind",
    "list_images",
    "predict_batches",
    "predict_images",
    "predict_slide",
    "run_bundle",
    "write_predictions",
]
