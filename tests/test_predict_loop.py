"""The one batched loop (inference.loop.predict_batches): images and cached features give the hand-computed
probabilities, and every submodule gets its train/eval mode back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probmcl_med.inference.loop import predict_batches
from probmcl_med.models.encoders import get_encoder
from probmcl_med.models.heads import Classifier, LinearHead


@pytest.mark.parametrize("normalize", [True, False])
def test_images_and_cached_features_give_the_hand_computed_probabilities(normalize: bool) -> None:
    torch.manual_seed(0)
    encoder = get_encoder("test_resnet")
    head = LinearHead(encoder.num_features, 4)
    classifier = Classifier(encoder, head, normalize_features=normalize)
    x, y = torch.randn(6, 3, 32, 32), (torch.rand(6, 4) < 0.5).float()
    batches = [{"image": x[:4], "label": y[:4]}, None, {"image": x[4:], "label": y[4:]}]  # None: a skipped batch
    with torch.no_grad():
        encoder.eval()
        raw = encoder.model(x)  # timm's pooled features, computed outside the package's own code
        h = F.normalize(raw, dim=1) if normalize else raw
        expected = torch.sigmoid(h @ head.weight.T + head.bias).double().numpy()
    classifier.train()
    out = predict_batches(classifier, batches, torch.device("cpu"), keep_features=True)
    np.testing.assert_allclose(out.probs, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out.targets, y.double().numpy())
    np.testing.assert_array_equal(out.indices, np.arange(6))
    torch.testing.assert_close(out.features, h)
    cached = predict_batches(classifier, [{"features": out.features, "label": y}], torch.device("cpu"))
    np.testing.assert_allclose(cached.probs, expected, rtol=1e-6, atol=1e-7)
    assert all(m.training for m in classifier.modules())  # the caller's train mode is back
