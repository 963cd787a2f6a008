"""Pathology foundation-model presets: the documented architecture (built on the meta device: no memory, no time),
features of the documented size, a state dict saved from the preset loads back, the Phikon presets read the
``transformers`` layout exactly as ``transformers`` runs it, and a preset without its file says which file."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from probmcl_med.errors import CheckpointError, ConfigError
from probmcl_med.models.encoders import get_encoder
from probmcl_med.models.presets import PRESETS

# What the model cards and papers document, written out independently of the presets' options:
# (width, depth, patch, register tokens, MLP hidden width of fc1's output, position-embedding length, embedding,
#  parameters in millions as published: UNI ViT-L 303M, UNI2-h 681M, Phikon ViT-B 86M, Phikon-v2 ViT-L 303M,
#  H-optimus-0 1.1B, Virchow2 632M, Prov-GigaPath 1.1B)
DOCUMENTED = {
    "uni": (1024, 24, 16, 0, 4096, 197, 1024, 303),
    "uni2_h": (1536, 24, 14, 8, 8192, 256, 1536, 681),
    "phikon": (768, 12, 16, 0, 3072, 197, 768, 86),
    "phikon_v2": (1024, 24, 16, 0, 4096, 197, 1024, 303),
    "h_optimus_0": (1536, 40, 14, 4, 8192, 256, 1536, 1134),
    "virchow2": (1280, 32, 14, 4, 6832, 261, 2560, 632),
    "gigapath": (1536, 40, 16, 0, 8192, 197, 1536, 1135),
}


def test_every_preset_is_documented_here() -> None:
    assert set(PRESETS) == set(DOCUMENTED)


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_preset_builds_the_documented_architecture_on_meta(name: str) -> None:
    width, depth, patch, regs, hidden, positions, features, millions = DOCUMENTED[name]
    with torch.device("meta"):
        encoder = get_encoder(name, require_weights=False)
    state = encoder.model.state_dict()
    assert state["patch_embed.proj.weight"].shape == (width, 3, patch, patch)
    assert state["pos_embed"].shape == (1, positions, width)
    assert state["cls_token"].shape == (1, 1, width)
    assert (state["reg_token"].shape == (1, regs, width)) if regs else "reg_token" not in state
    assert f"blocks.{depth - 1}.attn.qkv.weight" in state and f"blocks.{depth}.attn.qkv.weight" not in state
    assert state[f"blocks.{depth - 1}.mlp.fc1.weight"].shape == (hidden, width)
    assert state["norm.weight"].shape == (width,)
    total = sum(v.numel() for v in state.values()) / 1e6
    assert total == pytest.approx(millions, rel=0.005)
    assert encoder.num_features == features  # measured by a forward pass on the meta device
    assert encoder.input_size == (3, 224, 224)
    assert encoder.normalization == PRESETS[name].normalization


def test_h_optimus_carries_its_own_normalisation() -> None:
    assert PRESETS["h_optimus_0"].normalization == ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))


@pytest.mark.parametrize("name", ["uni", "uni2_h", "virchow2", "h_optimus_0", "gigapath"])
def test_a_state_dict_saved_from_the_preset_loads_back_and_gives_the_documented_size(tmp_path, name: str) -> None:
    """One block of the real architecture (every other key as published): save, load by file, same features."""
    torch.manual_seed(0)
    source = get_encoder(name, depth=1, require_weights=False).eval()
    path = tmp_path / ("w.safetensors" if name == "uni" else "w.bin")
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    save_file(state, str(path)) if path.suffix == ".safetensors" else torch.save(state, path)
    torch.manual_seed(1)
    loaded = get_encoder(name, depth=1, weights=path).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = source(x), loaded(x)
    assert got.shape == (2, DOCUMENTED[name][6])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_virchow2_embedding_is_class_token_and_mean_of_patch_tokens_without_registers() -> None:
    torch.manual_seed(0)
    encoder = get_encoder("virchow2", depth=1, require_weights=False).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens = encoder.model.forward_features(x)  # (1, 1 + 4 + 256, 1280), the card's model(x) output
        expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)  # the card's recipe
        got = encoder(x)
    assert tokens.shape == (1, 261, 1280)
    torch.testing.assert_close(got, expected)


def test_a_preset_without_its_weights_names_the_card_and_the_file() -> None:
    with pytest.raises(ConfigError) as err:
        get_encoder("virchow2")
    message = str(err.value)
    assert "\n" not in message
    assert "https://huggingface.co/paige-ai/Virchow2" in message and "pytorch_model.bin" in message
    with pytest.raises(ConfigError, match="MahmoodLab/UNI2-h"):
        get_encoder("uni2_h", pretrained=True)


def test_a_wrong_file_names_what_the_preset_expected(tmp_path) -> None:
    torch.save(get_encoder("timm:test_vit").model.state_dict(), tmp_path / "other.pt")
    with pytest.raises(CheckpointError) as err:
        get_encoder("uni", depth=1, weights=tmp_path / "other.pt")
    message = str(err.value)
    assert "\n" not in message and "other.pt" in message
    assert "expected pytorch_model.bin of https://huggingface.co/MahmoodLab/UNI" in message


@pytest.mark.parametrize("name", ["phikon", "phikon_v2"])
def test_phikon_reads_the_transformers_layout_as_transformers_runs_it(tmp_path, name: str) -> None:
    """The card's own recipe, ``model(pixel_values).last_hidden_state[:, 0]``, run by transformers on a random
    one-block model of the card's width, against the preset loaded from the file ``save_pretrained`` wrote (the
    layout the hub holds: ``encoder.layer.i.attention.attention.query`` ...)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if name == "phikon":
        config = transformers.ViTConfig(hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                                        intermediate_size=3072, image_size=224, patch_size=16, layer_norm_eps=1e-12)  # fmt: skip
        reference = transformers.ViTModel(config)  # with its pooler: dropped on load
    else:
        config = transformers.Dinov2Config(hidden_size=1024, num_hidden_layers=1, num_attention_heads=16,
                                           mlp_ratio=4, image_size=224, patch_size=16, layer_norm_eps=1e-6)  # fmt: skip
        reference = transformers.Dinov2Model(config)
    with torch.no_grad():
        for p in reference.parameters():  # no parameter left at an initial constant (layer scale, norms, biases)
            p.normal_(0, 0.05)
    reference.eval()
    reference.save_pretrained(tmp_path / "hub")  # transformers writes the layout the hub holds
    encoder = get_encoder(name, depth=1, weights=tmp_path / "hub" / "model.safetensors").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(pixel_values=x).last_hidden_state[:, 0]
        got = encoder(x)
    assert got.shape == (2, DOCUMENTED[name][6])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
