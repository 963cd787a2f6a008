"""One rule for device settings (probmcl_med.devices), shared by training (config `device`) and inference (`--device`)."""

from __future__ import annotations

import pytest
import torch

from probmcl_med.devices import resolve_device
from probmcl_med.errors import ConfigError


def test_auto_and_none_pick_cuda_only_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_bad_names_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="'gpu0' is not a torch device") as info:
        resolve_device("gpu0")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_says_what_to_use() -> None:
    with pytest.raises(ConfigError, match="CUDA is not available here; use auto or cpu"):
        resolve_device("cuda:1")
