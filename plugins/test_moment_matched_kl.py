"""The example plugin's own test: what a plugin author writes next to a plugin (run it with `pytest plugins/`).

Files named ``test_*.py`` in a plugins folder are not loaded as plugins; pytest collects them. The checks of
``probmcl_med.testing`` are the ones training runs on every configured component before it starts, so a plugin that
passes here is not refused there.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from probmcl_med import SIMILARITIES
from probmcl_med.testing import ContractError, check_similarity

PLUGIN = Path(__file__).with_name("moment_matched_kl.py")


@pytest.fixture(scope="module")
def moment_kl():
    """The plugin's similarity, imported from its file, unregistered again afterwards."""
    spec = importlib.util.spec_from_file_location("moment_matched_kl_under_test", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module.moment_kl_similarity
    SIMILARITIES.unregister("moment_kl")


@pytest.mark.parametrize(("components", "dim"), [(3, 16), (9, 2048)])
def test_moment_kl_meets_the_similarity_contract(moment_kl, components: int, dim: int) -> None:
    values = check_similarity(moment_kl, components=components, dim=dim)
    assert values.shape == (4, 3)


def test_a_broken_variant_is_refused(moment_kl) -> None:
    def doubled(a, b):
        return 2.0 * moment_kl(a, b) + 0.5  # leaves [0, 1]

    with pytest.raises(ContractError, match=r"outside|must lie in \[0, 1\]"):
        check_similarity(doubled)

    def detached(a, b):
        return moment_kl(a, b).detach()

    with pytest.raises(ContractError, match="not differentiable"):
        check_similarity(detached)
    assert torch.is_tensor(check_similarity(moment_kl))
