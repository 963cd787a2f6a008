"""Training engines: the contrastive and classifier stages on MONAI trainers, checkpoints, handlers, orchestration.

The public entry points::

    from probmcl_med.engine import train, load_model_bundle, save_model_bundle, ModelBundle
"""

from __future__ import annotations

from probmcl_med.engine.checkpoint import ModelBundle, load_model_bundle, save_model_bundle, set_bundle_thresholds

__all__ = ["ModelBundle", "RunResult", "load_model_bundle", "save_model_bundle", "set_bundle_thresholds", "train"]


def __getattr__(name: str):  # the orchestration imports MONAI and timm: load it only when asked for
    if name in ("train", "RunResult"):
        from probmcl_med.engine import run

        return getattr(run, name)
    raise AttributeError(f"module 'probmcl_med.engine' has no attribute {name!r}")
