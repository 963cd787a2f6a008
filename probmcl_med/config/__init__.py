"""The run configuration: the schema (:mod:`~probmcl_med.config.schema`) and its loading from YAML with ``--set``
overrides (:mod:`~probmcl_med.config.loading`).

Example::

    from probmcl_med.config import load_config

    cfg = load_config("configs/adp.yaml", overrides=["contrastive.tau=0.1", "dataset.root=/data/ADP"])
"""

from __future__ import annotations

from probmcl_med.config.loading import (
    available_configs,
    find_named_config,
    load_config,
    parse_override,
    read_yaml,
    save_config,
)
from probmcl_med.config.schema import UNUSED_KEYS, RunConfig, with_run_length

__all__ = [
    "UNUSED_KEYS",
    "RunConfig",
    "available_configs",
    "find_named_config",
    "load_config",
    "parse_override",
    "read_yaml",
    "save_config",
    "with_run_length",
]
