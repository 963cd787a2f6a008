"""Grad-CAM: maps equal a hand-computed Grad-CAM, overlays have the image's size, target layers, class-name typos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_inference import CLASSES, cli, error_line, hand_probs, make_bundle, write_images
from torch import nn

from probmcl_med.inference.explain import (
    choose_target_layer,
    explain_image,
    find_target_layer,
    grad_cam_maps,
    minmax_scale,
    overlay,
)
from probmcl_med.models.encoders import get_encoder
from probmcl_med.models.heads import Classifier, LinearHead


def _hand_grad_cam(classifier: nn.Module, layer: nn.Module, x: torch.Tensor, c: int) -> np.ndarray:
    """Selvaraju et al.: w_k = mean_ij d y_c / d A^k_ij; ReLU(sum_k w_k A^k); bilinear to the input; min-max."""
    store = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    with torch.enable_grad():
        logits = classifier(x)
        activation = store["a"]
        (grad,) = torch.autograd.grad(logits[0, c], activation)
    handle.remove()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0].detach().numpy()
    return (cam - cam.min()) / (cam.max() - cam.min())


def test_maps_equal_a_hand_computed_grad_cam() -> None:
    torch.manual_seed(0)
    encoder = get_encoder("test_resnet").eval()
    head = LinearHead(encoder.num_features, 3)
    classifier = Classifier(encoder, head).eval()
    x = torch.randn(1, 3, 64, 64)
    layer_name = find_target_layer(classifier)
    assert layer_name == "encoder.model.layer4"
    maps = grad_cam_maps(classifier, x, [0, 2], layer_name)
    assert maps.shape == (2, 64, 64)
    for i, c in enumerate([0, 2]):
        expected = _hand_grad_cam(classifier, encoder.model.layer4, x, c)
        np.testing.assert_allclose(maps[i], expected, atol=1e-5)
        assert maps[i].max() == pytest.approx(1.0) and maps[i].min() == pytest.approx(0.0)


def test_target_layer_for_other_timm_models_and_plain_modules() -> None:
    for name, expected in (
        ("test_convnext3", "encoder.model.stages.3"),
        ("test_efficientnet", "encoder.model.blocks.4"),
    ):
        encoder = get_encoder(name)
        assert find_target_layer(Classifier(encoder, LinearHead(encoder.num_features, 2))) == expected

    class Plain(nn.Module):  # no feature_info: the last module returning a spatial map (the pool's 1x1 is not one)
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            self.stage = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.num_features = 8

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pool(self.stage(self.stem(x))).flatten(1)

    assert find_target_layer(Classifier(Plain(), LinearHead(8, 2))) == "encoder.stage"


def test_minmax_scale_and_overlay() -> None:
    cam = torch.tensor([[[[1.0, 3.0], [2.0, 5.0]]], [[[2.0, 2.0], [2.0, 2.0]]]])
    scaled = minmax_scale(cam)
    np.testing.assert_allclose(scaled[0, 0].numpy(), [[0.0, 0.5], [0.25, 1.0]])
    assert torch.equal(scaled[1], torch.zeros(1, 2, 2))
    image = np.full((7, 5, 3), 100, np.uint8)
    blended = overlay(image, np.zeros((3, 3), np.float32), alpha=0.5)
    assert blended.shape == (7, 5, 3)
    from matplotlib import colormaps

    low = np.array(colormaps["jet"](0.0)[:3]) * 255
    np.testing.assert_array_equal(blended[3, 2], np.rint(0.5 * 100 + 0.5 * low).astype(np.uint8))


def test_explain_writes_overlays_of_the_image_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    encoder, head = make_bundle(tmp_path / "run")
    [image] = write_images(tmp_path / "imgs", 1, size=(48, 40))
    out = tmp_path / "cams"
    assert cli(["explain", str(image), "-c", str(tmp_path / "run"), "--class", "stroma", "--class", "Necrosis",
                "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == [f"img_000_{c}{kind}.png" for c in ("necrosis", "stroma") for kind in ("", "_figure")]
    for name in ("img_000_necrosis.png", "img_000_stroma.png"):
        with Image.open(out / name) as img:
            assert img.size == (40, 48)  # the raw overlay: (width, height) of the input image
        cam = np.load(out / name.replace(".png", "_cam.npy"))
        assert cam.shape == (48, 40) and cam.dtype == np.float32 and cam.min() >= 0 and cam.max() <= 1
    for name in ("img_000_necrosis_figure.png", "img_000_stroma_figure.png"):
        with Image.open(out / name) as img:
            assert img.size[0] >= 800 and img.size[1] >= 400  # readable, not 40 x 48
    doc = json.loads((out / "explain.json").read_text())
    assert [e["class"] for e in doc["explained"]] == ["stroma", "necrosis"]
    assert all(e["threshold"] == 0.5 and e["called"] == (e["probability"] >= 0.5) for e in doc["explained"])
    assert doc["target_layer"] == "encoder.model.layer1"  # 8 x 8 at 32 px (strides 4); layer2 would be 4 x 4
    # default: the predicted classes (p >= 0.5) of a SIZE x SIZE image, by hand
    [small] = write_images(tmp_path / "small", 1, seed=5)
    probs = hand_probs(encoder, head, [small])[0]
    predicted = [c for c, p in zip(CLASSES, probs, strict=True) if p >= 0.5] or [CLASSES[int(np.argmax(probs))]]
    out2 = tmp_path / "cams2"
    assert cli(["explain", str(small), "-c", str(tmp_path / "run"), "--out", str(out2), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out2.glob("*_figure.png")) == sorted(f"img_000_{c}_figure.png" for c in predicted)
    for entry in json.loads((out2 / "explain.json").read_text())["explained"]:
        k = CLASSES.index(entry["class"])
        assert entry["probability"] == pytest.approx(probs[k], abs=1e-5) and entry["called"] == (probs[k] >= 0.5)


def test_the_figure_names_the_class_probability_threshold_and_has_a_colour_bar() -> None:
    from probmcl_med.inference.explain_figure import explanation_figure

    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    fig = explanation_figure(image, overlay(image, np.eye(4, dtype=np.float32)), "stroma", 0.8734, 0.62, "layer1")
    assert fig._suptitle.get_text() == "stroma: p = 0.873, threshold 0.62: called"
    titles = [ax.get_title() for ax in fig.axes]
    assert "input (32 x 32 px)" in titles and "Grad-CAM of 'stroma' over the input" in titles
    bars = [ax for ax in fig.axes if ax.get_ylabel().startswith("Grad-CAM")]
    assert len(bars) == 1 and [t.get_text() for t in bars[0].get_yticklabels()] == ["low", "", "high"]
    width_px = fig.get_figwidth() * fig.dpi
    assert width_px >= 800  # each panel 4 inches: a 32 px input is drawn 12x, pixels repeated
    assert explanation_figure(image, image, "fat", 0.2, 0.5, "x")._suptitle.get_text().endswith("not called")


def test_class_typo_suggests_the_close_match(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_bundle(tmp_path / "run")
    [image] = write_images(tmp_path / "imgs", 1)
    code = cli(["explain", str(image), "-c", str(tmp_path / "run"), "--class", "strom", "--out", str(tmp_path / "o")])
    assert code == 1
    line = error_line(capsys)
    assert "'strom'" in line and "did you mean 'stroma'" in line and str(tmp_path / "run") in line
    assert not (tmp_path / "o").exists()


RESNET_STRIDES = {"act1": 2, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
"""A ResNet's stage outputs: input side / stride (timm's test_resnet: stem stride 2, max-pool 2, then 1, 2, 2, 2)."""


@pytest.mark.parametrize("size", [32, 64, 96, 128, 224, 256])
def test_the_target_layer_is_the_deepest_at_least_7x7(size: int) -> None:
    encoder = get_encoder("test_resnet")
    layer = choose_target_layer(Classifier(encoder, LinearHead(encoder.num_features, 2)), size)
    expected = [name for name, stride in RESNET_STRIDES.items() if size // stride >= 7][-1]
    assert layer.name == f"encoder.model.{expected}" and layer.warning is None
    assert (layer.height, layer.width) == (size // RESNET_STRIDES[expected],) * 2


def test_no_layer_of_7x7_takes_the_largest_with_a_warning() -> None:
    class Strided(nn.Module):  # 32 px -> 8 x 8 -> 4 x 4 -> pooled
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Conv2d(3, 4, 4, stride=4)
            self.deeper = nn.Conv2d(4, 8, 2, stride=2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.num_features = 8

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pool(self.deeper(self.down(x))).flatten(1)

    classifier = Classifier(Strided(), LinearHead(8, 2))
    at64 = choose_target_layer(classifier, 64)  # down 16 x 16, deeper 8 x 8: the deepest >= 7
    assert (at64.name, at64.height, at64.warning) == ("encoder.deeper", 8, None)
    assert choose_target_layer(classifier, 32).name == "encoder.down"  # 8 x 8 and 4 x 4
    layer = choose_target_layer(classifier, 24)  # 6 x 6 and 3 x 3: none reaches 7
    assert (layer.name, layer.height, layer.width) == ("encoder.down", 6, 6)
    assert "encoder.down" in layer.warning and "6x6" in layer.warning


def test_at_32px_the_maps_differ_where_the_last_stage_gives_identical_ones(tmp_path: Path) -> None:
    make_bundle(tmp_path / "run")  # test_resnet at 32 px: layer4 is 1 x 1
    from test_inference import SIZE

    from probmcl_med.bundle import load_model_bundle

    bundle = load_model_bundle(tmp_path / "run")
    [image] = write_images(tmp_path / "imgs", 1, seed=3)
    results = explain_image(bundle, image, tmp_path / "cams", CLASSES, device="cpu")
    doc = json.loads((tmp_path / "cams" / "explain.json").read_text())
    assert doc["target_layer"] == "encoder.model.layer1" and doc["target_layer_size"] == [SIZE // 4, SIZE // 4]
    assert doc["target_layer_warning"] is None and results[0].layer.name == "encoder.model.layer1"
    pictures = [np.asarray(Image.open(r.path)) for r in results]
    assert all(not np.array_equal(a, b) for i, a in enumerate(pictures) for b in pictures[i + 1 :])
    # what the last stage gives at this size: one constant map, the same for every class
    classifier = bundle.classifier().eval()
    from probmcl_med.data.imageio import read_image
    from probmcl_med.inference.inputs import eval_transform

    x = eval_transform(bundle)({"image": read_image(image)})["image"].unsqueeze(0)
    last = grad_cam_maps(classifier, x, [0, 1, 2], "encoder.model.layer4")
    assert all(np.ptp(m) == 0 for m in last) and np.array_equal(last[0], last[1])
    chosen = grad_cam_maps(classifier, x, [0, 1, 2], "encoder.model.layer1")
    assert all(np.ptp(m) > 0 for m in chosen)


def test_explain_needs_out_and_writes_nothing_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_bundle(tmp_path / "run")
    [image] = write_images(tmp_path / "imgs", 1)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert cli(["explain", str(image), "-c", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert "--out" in capsys.readouterr().err
    assert list(work.iterdir()) == []
