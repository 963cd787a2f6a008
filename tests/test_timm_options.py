"""Any timm architecture by name (``timm:NAME``) with its options: layer classes by name, token pooling computed from
timm's own tokens, one-line errors naming a bad option and the architecture, and a saved model that rebuilds."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import SwiGLUPacked
from torch import nn

from probmcl_med.bundle import load_model_bundle, save_model_bundle
from probmcl_med.errors import ConfigError
from probmcl_med.models.encoders import TimmEncoder, get_encoder
from probmcl_med.models.heads import LinearHead


def test_layer_options_by_name_build_what_the_classes_build() -> None:
    torch.manual_seed(0)
    by_name = get_encoder("timm:test_vit", mlp_layer="SwiGLUPacked", act_layer="SiLU", reg_tokens=2)
    torch.manual_seed(0)
    reference = timm.create_model("test_vit", num_classes=0, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, reg_tokens=2)
    assert isinstance(by_name, TimmEncoder)
    assert [tuple(v.shape) for v in by_name.model.state_dict().values()] == [
        tuple(v.shape) for v in reference.state_dict().values()
    ]
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(by_name.eval()(x), reference.eval()(x))


@pytest.mark.parametrize("spelling", ["torch.nn.SiLU", "silu", "SiLU"])
def test_an_activation_by_any_of_its_names(spelling: str) -> None:
    encoder = get_encoder("timm:test_vit", act_layer=spelling)
    assert isinstance(encoder.model.blocks[0].mlp.act, nn.SiLU)


@pytest.mark.parametrize("pool", ["cls", "mean", "cls+mean"])
def test_pooling_matches_timms_tokens(pool: str) -> None:
    torch.manual_seed(0)
    encoder = get_encoder("timm:test_vit", reg_tokens=3, pool=pool).eval()
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        tokens = encoder.model.forward_features(x)  # (2, 1 + 3 + patches, D) after the final norm
        cls, patches = tokens[:, 0], tokens[:, 4:].mean(1)
        expected = {"cls": cls, "mean": patches, "cls+mean": torch.cat([cls, patches], 1)}[pool]
        got = encoder(x)
    torch.testing.assert_close(got, expected)
    width = encoder.model.embed_dim
    assert encoder.num_features == (2 * width if pool == "cls+mean" else width) == got.shape[1]


def test_mean_pooling_of_a_cnn_is_the_spatial_mean_and_cls_is_refused() -> None:
    encoder = get_encoder("timm:test_resnet", pool="mean").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), encoder.model.forward_features(x).mean(dim=(2, 3)))
    with pytest.raises(ConfigError, match="no class token"):
        get_encoder("timm:test_resnet", pool="cls")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"init_valuez": 1e-5}, r"encoder\.options\.init_valuez: timm's test_vit \(VisionTransformer\).*init_values"),
        ({"mlp_layer": "SwiGluPacked"}, r"encoder\.options\.mlp_layer='SwiGluPacked' for test_vit.*SwiGLUPacked"),
        ({"pool": "max"}, r"encoder\.options\.pool='max'.*cls, mean, cls\+mean"),
    ],
)
def test_a_bad_option_is_one_line_naming_it_and_the_architecture(options: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as err:
        get_encoder("timm:test_vit", **options)
    assert "\n" not in str(err.value)


def test_an_unknown_architecture_lists_close_timm_names() -> None:
    with pytest.raises(ConfigError, match="vit_large_patch16_224") as err:
        get_encoder("timm:vit_larg_patch16_224")
    assert "\n" not in str(err.value)


def test_a_saved_model_with_string_options_rebuilds_from_plain_data(tmp_path) -> None:
    torch.manual_seed(0)
    options = {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU", "reg_tokens": 2, "pool": "cls+mean"}
    encoder = get_encoder("timm:test_vit", **options).eval()
    head = LinearHead(encoder.num_features, 3)
    path = save_model_bundle(tmp_path / "model.pt", encoder=encoder, head=head, class_names=["a", "b", "c"],
                             mean=(0.5,) * 3, std=(0.5,) * 3, image_size=160, encoder_name="timm:test_vit",
                             encoder_options=options)  # fmt: skip
    bundle = load_model_bundle(path)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(bundle.encoder(x), encoder(x))
    assert bundle.encoder_options == options  # strings in model.pt, never pickled classes
