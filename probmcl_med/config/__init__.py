"""The run configuration: one typed model per training mode (:mod:`~probmcl_med.config.schema`, its sections in
:mod:`~probmcl_med.config.sections`) and its loading from YAML with ``--set`` overrides
(:mod:`~probmcl_med.config.loading`).

Example::

    from probmcl_med.config import load_config

    cfg = load_config("configs/adp.yaml", overrides=["contrastive.tau=0.1", "dataset.root=/data/ADP"])
    cfg.mode                    # "two-stage": cfg is a TwoStageConfig, holding only the keys two-stage reads
"""

from __future__ import annotations

from probmcl_med.config.files import available_configs, find_named_config, read_yaml
from probmcl_med.config.loading import ConfigWarning, load_config, parse_override, save_config
from probmcl_med.config.schema import (
    MODE_CONFIGS,
    RESUME_MAY_CHANGE,
    AslConfig,
    JointConfig,
    ProbeConfig,
    RunBase,
    RunConfig,
    TwoStageConfig,
    with_epochs,
)

__all__ = [
    "MODE_CONFIGS",
    "RESUME_MAY_CHANGE",
    "AslConfig",
    "ConfigWarning",
    "JointConfig",
    "ProbeConfig",
    "RunBase",
    "RunConfig",
    "TwoStageConfig",
    "available_configs",
    "find_named_config",
    "load_config",
    "parse_override",
    "read_yaml",
    "save_config",
    "with_epochs",
]
