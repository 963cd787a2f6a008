"""Model cost: parameter counts and FLOPs/GMAC against closed forms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from probmcl_med.evaluation.complexity import count_flops, count_parameters, model_cost


def _conv_flops(conv: nn.Conv2d, out: torch.Tensor) -> int:
    """2 * B * C_out * H_out * W_out * (C_in / groups) * k_h * k_w (bias not counted)."""
    b, c_out, h, w = out.shape
    kh, kw = conv.kernel_size
    return 2 * b * c_out * h * w * (conv.in_channels // conv.groups) * kh * kw


def _closed_form_flops(modules: list[nn.Module], run: Callable[[], Any]) -> tuple[int, Any]:
    """Sum of the closed forms of every Conv2d and Linear among ``modules`` during ``run()``, read with forward hooks.

    Returns (FLOPs, what ``run`` returned).
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += _conv_flops(module, out)
        else:
            total += 2 * inputs[0].shape[0] * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in modules if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        result = run()
    finally:
        for h in handles:
            h.remove()
    return total, result


def test_linear_flops_closed_form() -> None:
    layer = nn.Linear(13, 7)
    assert count_flops(layer, torch.zeros(5, 13)) == 2 * 5 * 13 * 7


@pytest.mark.parametrize(("groups", "stride", "padding"), [(1, 1, 1), (1, 2, 0), (4, 1, 2)])
def test_conv_flops_closed_form(groups: int, stride: int, padding: int) -> None:
    conv = nn.Conv2d(8, 12, kernel_size=3, stride=stride, padding=padding, groups=groups)
    x = torch.zeros(2, 8, 17, 15)
    out = conv(x)
    assert count_flops(conv, x) == _conv_flops(conv, out)


def test_params_and_gmac_of_a_small_network() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 6, 5), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)
    )
    cost = model_cost(net, 32)
    expected_params = 3 * 6 * 25 + 6 + 6 + 6 + 6 * 4 + 4  # conv w+b, bn w+b, linear w+b (buffers excluded)
    assert cost.params == expected_params
    conv_flops = 2 * 1 * 6 * 28 * 28 * 3 * 25
    linear_flops = 2 * 1 * 6 * 4
    assert cost.flops == conv_flops + linear_flops
    assert cost.macs == (conv_flops + linear_flops) / 2
    assert cost.gmac == pytest.approx((conv_flops + linear_flops) / 2 / 1e9)
    assert cost.input_shape == (1, 3, 32, 32)


def test_shared_parameters_count_once() -> None:
    a = nn.Linear(4, 4)
    net = nn.Sequential(a, nn.ReLU(), a)
    assert count_parameters(net) == 4 * 4 + 4


def test_timm_model_matches_per_layer_closed_forms() -> None:
    """Sum of the closed forms of every Conv2d and Linear (read with forward hooks) equals the counted FLOPs."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("test_resnet", pretrained=False, num_classes=5).eval()
    expected, cost = _closed_form_flops(list(model.modules()), lambda: model_cost(model, 48))
    assert cost.flops == expected > 0
    manual = 0
    seen: set[int] = set()
    for _, p in model.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            manual += p.numel()
    assert cost.params == manual
    assert model.training is False


def test_info_reports_the_inference_model_cost(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """`info --json`: classes, normalisation and the encoder + head cost against per-layer closed forms."""
    import json

    from test_inference import CLASSES, MEAN, SIZE, STD, cli, make_bundle

    encoder, head = make_bundle(tmp_path / "run")
    assert cli(["info", "--checkpoint", str(tmp_path / "run"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["classes"] == CLASSES and info["image_size"] == SIZE
    assert info["normalization"]["mean"] == pytest.approx(MEAN) and info["normalization"]["std"] == pytest.approx(STD)
    assert info["encoder"] == "test_resnet" and info["mdn"] is None and info["best_val_map"] is None
    with torch.no_grad():
        expected_flops, _ = _closed_form_flops(
            [*encoder.modules(), head], lambda: head(encoder(torch.zeros(1, 3, SIZE, SIZE)))
        )
    cost = info["model_cost"]
    assert cost["flops"] == expected_flops
    assert cost["gmac"] == pytest.approx(expected_flops / 2 / 1e9)
    assert cost["params"] == sum(p.numel() for p in encoder.parameters()) + head.weight.numel() + head.bias.numel()
    (tmp_path / "run" / "metrics.jsonl").write_text(
        '{"stage": "classifier", "epoch": 1, "val_mAP": 41.5}\n{"stage": "classifier", "epoch": 2, "val_mAP": 47.25}\n'
        '{"stage": "classifier", "epoch": 3, "val_mAP": 44.0}\n{"torn line'
    )
    assert cli(["info", "--checkpoint", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "GMAC" in out and "47.25" in out


def test_info_says_the_kept_mdn_serves_predict_uncertainty(
    tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.setenv("COLUMNS", "250")  # rich wraps the table to the terminal width
    from test_inference import cli, make_bundle

    _, _, mdn = make_bundle(tmp_path / "run", mdn=True)
    assert cli(["info", "--checkpoint", str(tmp_path / "run"), "--json"]) == 0
    text = capsys.readouterr().out
    info = json.loads(text)
    assert "training-only" not in text
    assert info["mdn"]["params"] == sum(p.numel() for p in mdn.parameters())
    assert "predict --uncertainty" in info["mdn"]["used_by"] and "--uncertainty" in info["model_cost"]["model"]
    assert cli(["info", "--checkpoint", str(tmp_path / "run")]) == 0
    assert "run by predict --uncertainty" in capsys.readouterr().out
