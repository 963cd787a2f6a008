"""Public pathology foundation models as registered encoders: the architecture, preprocessing and pooling of each
model card, built with random weights that ``encoder.weights`` (the user's download) replaces.

Each preset is a timm VisionTransformer built from the options its model card (or the authors' loading code) gives,
with the card's normalisation and input size (carried into ``model.pt`` like any encoder's) and its recommended
embedding. The weights are gated on Hugging Face: the user accepts the model's terms there, downloads the file and
sets ``encoder.weights``; a preset without its file is a one-line error naming the card and the file. Nothing is ever
downloaded here (``encoder.pretrained: true`` is refused the same way).

=============  ==============================  ======================================  ======  =====================
preset         card                            architecture (timm)                     input   embedding
=============  ==============================  ======================================  ======  =====================
uni            MahmoodLab/UNI                  ViT-L/16, LayerScale                    224     class token, 1024
uni2_h         MahmoodLab/UNI2-h               ViT-H/14 1536 wide, SwiGLU, 8 registers  224     class token, 1536
phikon         owkin/phikon                    ViT-B/16 (transformers ViTModel keys)   224     class token, 768
phikon_v2      owkin/phikon-v2                 ViT-L/16 (transformers Dinov2 keys)     224     class token, 1024
h_optimus_0    bioptimus/H-optimus-0           ViT-g/14, SwiGLU, 4 registers           224     class token, 1536
virchow2       paige-ai/Virchow2               ViT-H/14, SwiGLU, 4 registers           224     class + mean, 2560
gigapath       prov-gigapath/prov-gigapath     ViT-g/16 (DINOv2 giant, patch 16)       224     class token, 1536
=============  ==============================  ======================================  ======  =====================

Sources: the cards' ``timm.create_model`` calls and ``config.json`` files (UNI, UNI2-h, H-optimus-0, Virchow2,
Prov-GigaPath: timm layouts, loaded with ``strict=True`` in the cards), the Phikon cards' ``transformers`` usage
(converted by :mod:`probmcl_med.models.hf_layouts`). Options given in ``encoder.options`` override the preset's
(``img_size``, ``pool``, ``depth`` for a test ...). Left out: CONCH (its image embedding is an open_clip attentional
pooler over the timm trunk, not a timm model) and CTransPath (a modified timm Swin, ``timm_ctp``, not in timm).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from probmcl_med.errors import ConfigError
from probmcl_med.models.encoders import TimmEncoder, _named_factory
from probmcl_med.models.hf_layouts import hf_vit_to_timm
from probmcl_med.models.timm_options import create_model
from probmcl_med.registry import ENCODERS

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))


@dataclass(frozen=True)
class Preset:
    """One model card, as this package builds it.

    Attributes:
        name: the ENCODERS name.
        card: the Hugging Face repository (``https://huggingface.co/<card>``).
        file: the weights file the card publishes (what ``encoder.weights`` points to).
        licence: the licence the card states.
        architecture: the timm architecture the options modify.
        options: ``timm.create_model`` keyword arguments (layer classes by name, see timm_options).
        normalization: (mean, std) of the card's preprocessing.
        input_size: side of the card's input, pixels.
        features: the documented embedding width.
        pool: token pooling of the embedding (None: the model's class token).
        layout: ``timm`` or ``transformers`` (keys converted on load).
    """

    name: str
    card: str
    file: str
    licence: str
    architecture: str
    options: dict[str, Any]
    normalization: tuple[tuple[float, ...], tuple[float, ...]]
    input_size: int
    features: int
    pool: str | None = None
    layout: str = "timm"
    internal: dict[str, Any] = field(default_factory=dict)  # options that are not plain data (never stored)

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.card}"

    def needs_weights(self) -> str:
        return (
            f"encoder {self.name!r} needs its weights: accept the terms of {self.url} ({self.licence}), download "
            f"{self.file} and set encoder.weights to that file (nothing is downloaded here)"
        )


SWIGLU = {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("uni", "MahmoodLab/UNI", "pytorch_model.bin", "CC-BY-NC-ND-4.0, gated", "vit_large_patch16_224",
               {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True}, IMAGENET, 224, 1024),
        Preset("uni2_h", "MahmoodLab/UNI2-h", "pytorch_model.bin", "CC-BY-NC-ND-4.0, gated", "vit_giant_patch14_224",
               {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "reg_tokens": 8,
                "dynamic_img_size": True, **SWIGLU}, IMAGENET, 224, 1536),
        Preset("phikon", "owkin/phikon", "pytorch_model.bin", "the card's terms", "vit_base_patch16_224",
               {"img_size": 224}, IMAGENET, 224, 768, layout="transformers",
               internal={"norm_layer": functools.partial(nn.LayerNorm, eps=1e-12)}),
        Preset("phikon_v2", "owkin/phikon-v2", "model.safetensors", "the card's terms", "vit_large_patch16_224",
               {"img_size": 224, "init_values": 1.0}, IMAGENET, 224, 1024, layout="transformers"),
        Preset("h_optimus_0", "bioptimus/H-optimus-0", "pytorch_model.bin", "Apache-2.0, gated",
               "vit_giant_patch14_reg4_dinov2", {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True},
               HOPTIMUS, 224, 1536),
        Preset("virchow2", "paige-ai/Virchow2", "pytorch_model.bin", "CC-BY-NC-ND-4.0, gated", "vit_huge_patch14_224",
               {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "reg_tokens": 4, "global_pool": "",
                "dynamic_img_size": True, **SWIGLU}, IMAGENET, 224, 2560, pool="cls+mean"),
        Preset("gigapath", "prov-gigapath/prov-gigapath", "pytorch_model.bin", "Apache-2.0, gated",
               "vit_giant_patch14_dinov2", {"img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40,
                "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334, "dynamic_img_size": True},
               IMAGENET, 224, 1536),
    )
}  # fmt: skip
"""The presets, by ENCODERS name (see the module docstring's table)."""


class PresetEncoder(TimmEncoder):
    """A :class:`TimmEncoder` that carries its model card: normalisation, input size, the weights it needs, and the
    conversion of a ``transformers``-layout file into its keys."""

    def __init__(self, preset: Preset, model: nn.Module, pool: str | None) -> None:
        super().__init__(model, preset.name, pool=pool)
        self.preset = preset
        self.normalization = preset.normalization
        self.input_size = (3, preset.input_size, preset.input_size)
        self.weights_hint = f"expected {preset.file} of {preset.url}"

    def convert_state(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The published layout in this model's keys; a position embedding of another grid is resampled to it."""
        out = hf_vit_to_timm(state) if self.preset.layout == "transformers" else dict(state)
        target = getattr(self.model, "pos_embed", None)
        if isinstance(target, Tensor) and "pos_embed" in out and out["pos_embed"].shape != target.shape:
            prefix = 0 if getattr(self.model, "no_embed_class", False) else int(self.model.num_prefix_tokens)
            grid = self.model.patch_embed.grid_size
            out["pos_embed"] = resample_abs_pos_embed(out["pos_embed"], list(grid), num_prefix_tokens=prefix)
        return out


def build_preset(name: str, pretrained: bool = False, **options: Any) -> PresetEncoder:
    """The preset's architecture with random weights (``encoder.weights`` then loads the card's file).

    Args:
        name: a key of :data:`PRESETS`.
        pretrained: refused: gated weights are downloaded by the user, under the model's terms.
        **options: overrides of the preset's timm options; ``pool`` is ours.
    """
    preset = PRESETS[name]
    if pretrained:
        raise ConfigError(f"{preset.needs_weights()}; set encoder.pretrained=false")
    pool = options.pop("pool", preset.pool)
    merged = {**preset.options, **options}
    model = create_model(preset.architecture, {**merged, **preset.internal})
    return PresetEncoder(preset, model, pool=pool)


for _name, _preset in PRESETS.items():
    _doc = f"{_preset.url}: {_preset.features} features (local weights only; probmcl_med.models.presets)."
    _factory = _named_factory(_name, build_preset, _doc)
    _factory.requires_weights = _preset.needs_weights()  # get_encoder refuses before building without weights
    ENCODERS.register(_name, _factory, source="probmcl_med.models.presets")
