"""Hugging Face ``transformers`` ViT and DINOv2 checkpoints as timm VisionTransformer state dicts.

Owkin's Phikon (``ViTModel``, ViT-B/16) and Phikon-v2 (``Dinov2Model``, ViT-L/16) publish their weights in the
``transformers`` layout; the same networks are timm ``VisionTransformer`` s with other parameter names and a fused
query-key-value projection. The mapping, per block ``i`` (``transformers`` -> timm):

=============================================================  ==========================================
``embeddings.cls_token`` / ``embeddings.position_embeddings``  ``cls_token`` / ``pos_embed``
``embeddings.patch_embeddings.projection.{weight,bias}``       ``patch_embed.proj.{weight,bias}``
``encoder.layer.i.{layernorm_before | norm1}``                 ``blocks.i.norm1``
``encoder.layer.i.attention.attention.{query,key,value}``      ``blocks.i.attn.qkv`` (concatenated, q k v)
``encoder.layer.i.attention.output.dense``                     ``blocks.i.attn.proj``
``encoder.layer.i.{layernorm_after | norm2}``                  ``blocks.i.norm2``
``encoder.layer.i.{intermediate.dense | mlp.fc1}``             ``blocks.i.mlp.fc1``
``encoder.layer.i.{output.dense | mlp.fc2}``                   ``blocks.i.mlp.fc2``
``encoder.layer.i.layer_scale{1,2}.lambda1`` (DINOv2)          ``blocks.i.ls{1,2}.gamma``
``layernorm``                                                  ``norm``
=============================================================  ==========================================

``embeddings.mask_token`` (DINOv2's masked-image token, unused at inference) and ``pooler.*`` are dropped; a
``vit.``/``dinov2.`` prefix is removed. A state dict without ``embeddings.*`` keys is returned unchanged (a file
already in timm's layout loads as it is). Checked against ``transformers``' own forward pass in
tests/test_presets.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

_BLOCK = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_BLOCK_NAMES = {
    "layernorm_before": "norm1",
    "norm1": "norm1",
    "layernorm_after": "norm2",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc2": "mlp.fc2",
}
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_DROPPED = ("embeddings.mask_token", "pooler.")


def is_hf_layout(state: Mapping[str, Tensor]) -> bool:
    """True when the keys are ``transformers``' (``embeddings.*``, ``encoder.layer.*``), after a model prefix."""
    return any(k.split(".", 1)[-1].startswith("embeddings.") or k.startswith("embeddings.") for k in state)


def hf_vit_to_timm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A ``transformers`` ViT / DINOv2 state dict in timm VisionTransformer keys (see the module docstring)."""
    if not is_hf_layout(state):
        return dict(state)
    plain = {re.sub(r"^(vit|dinov2)\.", "", k): v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in plain.items():
        if key.startswith(_DROPPED):
            continue
        if key in _TOP:
            out[_TOP[key]] = value
            continue
        match = _BLOCK.match(key)
        if match is None:
            out[key] = value  # left for load_weights to report as unexpected
            continue
        index, rest = int(match.group(1)), match.group(2)
        part = re.match(r"^attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
        if part is not None:
            qkv.setdefault((index, part.group(2)), {})[part.group(1)] = value
            continue
        scale = re.match(r"^layer_scale([12])\.lambda1$", rest)
        if scale is not None:
            out[f"blocks.{index}.ls{scale.group(1)}.gamma"] = value
            continue
        module, _, leaf = rest.rpartition(".")
        out[f"blocks.{index}.{_BLOCK_NAMES.get(module, module)}.{leaf}"] = value
    for (index, leaf), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            out[f"blocks.{index}.attn.qkv.{leaf}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
        else:  # incomplete: keep what there is under its own name, reported as unexpected
            out.update({f"blocks.{index}.attn.{name}.{leaf}": v for name, v in parts.items()})
    return out
