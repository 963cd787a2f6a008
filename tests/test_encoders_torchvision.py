"""torchvision encoder families: a torchvision ImageNet-format state dict loads from a local file (no network)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from probmcl_med.errors import CheckpointError, ConfigError
from probmcl_med.models.encoders import get_encoder


def test_torchvision_state_dict_file_reproduces_torchvision_features(tmp_path):
    torch.manual_seed(3)
    reference = torchvision.models.mobilenet_v2(weights=None).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, as in real ImageNet weights
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "mobilenet_v2-test.pth"
    torch.save(reference.state_dict(), path)  # the file layout torchvision publishes, classifier keys included

    encoder = get_encoder("tv_mobilenet_v2", weights=str(path)).eval()
    assert encoder.num_features == 1280
    assert encoder.normalization == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = F.adaptive_avg_pool2d(reference.features(x), 1).flatten(1)  # torchvision's own forward, no head
        torch.testing.assert_close(encoder(x), pooled)


def test_torchvision_weights_of_another_architecture_fail_in_one_line(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit encoder 'tv_mobilenet_v2'"):
        get_encoder("tv_mobilenet_v2", weights=str(path))


def test_torchvision_pretrained_download_is_refused():
    with pytest.raises(ConfigError, match=r"encoder\.weights"):
        get_encoder("tv_mobilenet_v2", pretrained=True)
