"""Transforms: eval is deterministic and equals the closed form; training views are random, seeded, and distinct."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.utils import set_determinism
from PIL import Image

from probmcl_med.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiLabelDataset,
    TwoViews,
    build_eval_transform,
    build_train_transform,
    make_loader,
)
from probmcl_med.data import transforms as T

torch.set_num_threads(1)
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture()
def item(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    path = tmp_path / "patch.png"
    Image.fromarray(pixels).save(path)
    return {"image": str(path), "label": np.array([1, 0, 1], dtype=np.float32)}, pixels


def test_eval_transform_is_the_closed_form_and_deterministic(item):
    data, pixels = item
    t = build_eval_transform(48, MEAN, STD)
    a, b = t(dict(data)), t(dict(data))
    expected = (pixels.astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(a["image"].numpy(), expected.transpose(2, 0, 1), atol=1e-5)
    assert a["image"].dtype == torch.float32 and a["label"].dtype == torch.float32
    torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)
    assert a["label"].tolist() == [1.0, 0.0, 1.0]


def test_eval_transform_resizes_like_pil(item):
    data, pixels = item
    from PIL import Image

    out = build_eval_transform(32, None, None)(dict(data))["image"]
    small = np.asarray(Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR))
    ref = torch.from_numpy(small.transpose(2, 0, 1).copy()).float() / 255.0
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(out, ref)


def test_train_without_augmentation_equals_eval(item):
    data, _ = item
    plain = build_train_transform(40, MEAN, STD, policy="none")(dict(data))
    ref = build_eval_transform(40, MEAN, STD)(dict(data))
    torch.testing.assert_close(plain["image"], ref["image"])


def test_flips_are_flips(item):
    data, pixels = item
    t = build_train_transform(48, None, None, policy="flip", hflip=True, vflip=True, seed=0)
    seen = set()
    base = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0
    candidates = {
        "none": base,
        "h": base.flip(-1),
        "v": base.flip(-2),
        "hv": base.flip(-1).flip(-2),
    }
    for _ in range(40):
        out = t(dict(data))["image"]
        match = [k for k, v in candidates.items() if torch.equal(out, v)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == set(candidates)


def test_train_transform_random_and_seeded(item):
    data, _ = item
    t1 = build_train_transform(48, MEAN, STD, seed=7)
    t2 = build_train_transform(48, MEAN, STD, seed=7)
    outs1 = [t1(dict(data))["image"] for _ in range(4)]
    outs2 = [t2(dict(data))["image"] for _ in range(4)]
    for a, b in zip(outs1, outs2, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert any(not torch.equal(outs1[0], o) for o in outs1[1:])
    # MONAI's set_determinism seeds a freshly built pipeline the same way.
    set_determinism(11)
    a = build_train_transform(48, MEAN, STD)(dict(data))["image"]
    set_determinism(11)
    b = build_train_transform(48, MEAN, STD)(dict(data))["image"]
    set_determinism(None)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("policy", ["randaugment", "pathology"])
def test_augmentation_leaves_global_rngs_alone(item, policy):
    data, _ = item
    t = build_train_transform(48, MEAN, STD, policy=policy, seed=1)
    torch.manual_seed(123)
    np.random.seed(123)
    expected, expected_np = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    t(dict(data))
    torch.testing.assert_close(torch.rand(3), expected)
    np.testing.assert_array_equal(np.random.rand(3), expected_np)


def test_two_views_shapes_differ_and_load_once(item, monkeypatch):
    data, _ = item
    calls = []
    original = T.read_any
    monkeypatch.setattr(T, "read_any", lambda image, *rest: calls.append(image) or original(image, *rest))
    views = TwoViews(build_train_transform(32, IMAGENET_MEAN, IMAGENET_STD, seed=3))
    out = views(dict(data))
    assert out["image"].shape == (2, 3, 32, 32) and out["image"].dtype == torch.float32
    assert out["label"].shape == (3,) and out["label"].dtype == torch.float32
    assert not torch.equal(out["image"][0], out["image"][1])
    assert len(calls) == 1


def test_two_views_of_a_plain_callable():
    def t(d):
        return {"image": torch.rand(3, 4, 4), "label": torch.zeros(2)}

    out = TwoViews(t)({"image": None, "label": None})
    assert out["image"].shape == (2, 3, 4, 4)


def test_workers_get_different_augmentations(item):
    data, _ = item
    ds = MultiLabelDataset([dict(data) for _ in range(4)], ["a", "b", "c"])
    ds.transform = build_train_transform(32, MEAN, STD, seed=5)
    torch.manual_seed(0)
    batches = list(make_loader(ds, batch_size=1, workers=2))
    images = [b["image"][0] for b in batches]
    # items 0 and 1 go to different workers, each starting from its own seed
    assert not torch.equal(images[0], images[1])
    assert all(int(b["skipped"]) == 0 for b in batches)


def test_compute_mean_std_and_resolution(tmp_path):
    from probmcl_med.data import ADP_MEAN, Normalization, compute_mean_std, resolve_normalization

    items = []
    for i, colour in enumerate([(255, 0, 51), (0, 102, 51)]):  # two flat images: per channel, two values
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((4, 4, 3), colour, dtype=np.uint8)).save(path)
        items.append({"image": str(path), "label": [1.0]})
    ds = MultiLabelDataset(items, ["x"], mean=ADP_MEAN, std=(0.1, 0.1, 0.1), name="adp")
    mean, std = compute_mean_std(ds)
    np.testing.assert_allclose(mean, [0.5, 0.2, 0.2], atol=1e-9)  # mean of the two values
    np.testing.assert_allclose(std, [0.5, 0.2, 0.0], atol=1e-9)  # half their difference
    assert resolve_normalization("dataset", dataset=ds).mean == ADP_MEAN
    assert resolve_normalization("dataset", dataset=ds).source == "dataset:adp"
    assert resolve_normalization("encoder", (0.1, 0.2, 0.3), (1, 1, 1), dataset=ds).mean == (0.1, 0.2, 0.3)
    assert resolve_normalization("encoder").mean == IMAGENET_MEAN
    none = resolve_normalization("none")
    assert none.mean is None and Normalization.from_dict(none.to_dict()) == none


def test_no_transform_of_ours_takes_a_monai_transform_name() -> None:
    """A name MONAI uses means MONAI's behaviour to a reader; ours differ (ReadImaged returns HWC uint8 pixels)."""
    import inspect

    import monai.transforms

    from probmcl_med.data import augment, transforms

    ours = {
        name
        for module in (transforms, augment)
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and obj.__module__ == module.__name__
    }
    assert "ReadImaged" in ours and not ours & set(dir(monai.transforms)), sorted(ours & set(dir(monai.transforms)))
