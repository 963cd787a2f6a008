"""Encoders: real pooled widths, unit-norm output, local weights, unknown names and offline pretrained loading."""

from __future__ import annotations

import time

import pytest
import timm
import torch

from probmcl_med.errors import CheckpointError, ConfigError
from probmcl_med.models.encoders import BUILTIN_TIMM, TimmEncoder, get_encoder
from probmcl_med.registry import ENCODERS


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_convnext3", "resnet18"])
def test_num_features_matches_real_pooled_output(name):
    encoder = get_encoder(name).eval()
    # independent reference: timm's own model with its classifier (the encoder's weights), the input of that classifier
    reference = timm.create_model(name).eval()
    reference.load_state_dict({**reference.state_dict(), **encoder.model.state_dict()})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = reference.forward_head(reference.forward_features(x), pre_logits=True)
        out = encoder(x)
    assert encoder.num_features == pooled.shape[1] == out.shape[1]
    # raw pooled features: the encoder does not normalise (the models that need unit-norm rows do)
    torch.testing.assert_close(out, pooled)


def test_builtin_names_registered_and_normalisation_from_timm():
    assert set(BUILTIN_TIMM) <= set(ENCODERS.names())
    enc = get_encoder("test_efficientnet")
    assert enc.normalization == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert enc.input_size == (3, 160, 160)


def test_tresnet_normalisation_is_identity():
    # tresnet expects raw [0, 1] pixels (mean 0, std 1) per its timm pretrained_cfg; check without building the net
    cfg = timm.get_pretrained_cfg("tresnet_m")
    assert tuple(cfg.mean) == (0.0, 0.0, 0.0) and tuple(cfg.std) == (1.0, 1.0, 1.0)


def test_any_timm_name_works_without_registration():
    assert "mobilenetv3_small_050" not in ENCODERS
    enc = get_encoder("mobilenetv3_small_050")
    assert isinstance(enc, TimmEncoder) and enc.num_features == enc(torch.randn(2, 3, 64, 64)).shape[1]


@pytest.mark.parametrize("wrap", ["plain", "module_prefix", "nested_state_dict", "with_head"])
def test_local_weights_load_reproduces_outputs(tmp_path, wrap):
    torch.manual_seed(1)
    source = timm.create_model("test_resnet").eval()  # with its classifier head
    state = source.state_dict()
    if wrap == "plain":
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    elif wrap == "module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "nested_state_dict":
        state = {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}
    path = tmp_path / "w.pth"
    torch.save(state, path)
    torch.manual_seed(2)
    encoder = get_encoder("test_resnet", weights=path).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = source.forward_head(source.forward_features(x), pre_logits=True)
        torch.testing.assert_close(encoder(x), expected, rtol=0, atol=0)


def test_bad_weights_one_line_error(tmp_path):
    state = timm.create_model("test_efficientnet").state_dict()
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="does not fit encoder 'test_resnet'") as err:
        get_encoder("test_resnet", weights=path)
    assert "\n" not in str(err.value) and "missing" in str(err.value)
    with pytest.raises(CheckpointError, match="not found"):
        get_encoder("test_resnet", weights=tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="corrupt"):
        get_encoder("test_resnet", weights=tmp_path / "junk.pt")


def test_unknown_name_lists_close_matches_from_registry_and_timm():
    with pytest.raises(ConfigError) as err:
        get_encoder("tresnet_mm")
    message = str(err.value)
    assert "\n" not in message
    assert "'tresnet_m'" in message and "plugins" in message
    with pytest.raises(ConfigError, match="resnet50"):
        get_encoder("resnet_50")


def test_pretrained_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"encoder\.weights") as err:
        get_encoder("test_resnet", pretrained=True)
    assert time.perf_counter() - start < 5
    assert "\n" not in str(err.value)


def test_pretrained_unreachable_hub_fails_fast(monkeypatch):
    import probmcl_med.models.encoders as encoders

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(encoders, "HUB_HOST", "hub.invalid")  # resolves nowhere: like a machine without network
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="offline"):
        get_encoder("test_resnet", pretrained=True)
    assert time.perf_counter() - start < 5
