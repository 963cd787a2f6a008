"""The stage-2 linear head and the inference classifier (encoder + head).

The paper's classifier stage (Sec. 3.3) drops the MDN and trains a linear layer on the frozen encoder's features
with the asymmetric loss. The head reads the same L2-normalised features h(x) that stage 1 shaped (math.md s.1),
so what the contrastive stage learned is exactly what the classifier sees; the end-to-end ``asl`` baseline reads
the unnormalised pooled features instead, as the ASL paper's TResNet head does (``normalize_features=False``). The
encoder itself always returns raw pooled features: the normalisation belongs to the model that needs it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class LinearHead(nn.Linear):
    """Logits for C classes from H features: (B, H) -> (B, C). Weights ``weight`` (C, H) and ``bias`` (C,)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__(in_features, num_classes)
        self.num_classes = num_classes


class Classifier(nn.Module):
    """Encoder + linear head: images (B, 3, H, W) -> logits (B, C) (probabilities are ``sigmoid(logits)``).

    Args:
        encoder: a module with ``num_features`` whose ``forward(x)`` returns raw pooled features (see
            probmcl_med.models.encoders).
        head: the linear head.
        normalize_features: feed the head the L2-normalised features (the ProbMCL model, math.md s.1) or the raw
            pooled ones (mode asl).
    """

    def __init__(self, encoder: nn.Module, head: LinearHead, normalize_features: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.normalize_features = normalize_features

    def embed(self, x: Tensor) -> Tensor:
        """The features the head reads, float32: (B, 3, H, W) -> (B, H), unit-norm rows when ``normalize_features``."""
        h = self.encoder(x).float()
        return F.normalize(h, dim=1) if self.normalize_features else h

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, C), float32."""
        return self.head(self.embed(x).to(self.head.weight.dtype)).float()
