"""Shared test set-up: no network, no plugin autoloading from the developer's environment, small thread counts."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["PROBMCL_MED_NO_AUTOLOAD"] = "1"
os.environ.setdefault("PROBMCL_MED_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "test-cache"))

import matplotlib
import pytest

matplotlib.use("Agg")

import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _forget_plugin_failures():
    """A plugin file that failed to import in one test is not named in another test's messages."""
    yield
    from probmcl_med.plugins import clear_plugin_failures

    clear_plugin_failures()
