"""Training images kept in memory give the tensors of the uncached path, bit for bit (issue 22 item 5).

Every comparison runs the same items with the same per-sample seeds twice: once read from the files through the
whole pipeline, once from the prepared pixels (decoded and resized once); the augmentation draws and the output must
be equal, for every policy, two views, deep images and a DataLoader with a worker process.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from probmcl_med import DATASETS
from probmcl_med.data.base import make_loader
from probmcl_med.data.cache import PREPARED, cache_limit, keep_in_memory, prepare_images
from probmcl_med.data.transforms import TwoViews, build_eval_transform, build_train_transform
from probmcl_med.engine.data import ResumableSampler, SeededItems
from probmcl_med.threads import choose_workers

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    """A csv dataset: 8-bit PNGs of three sizes, one 12-bit PNG (sBIT), one corrupt file."""
    root = tmp_path_factory.mktemp("cache")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    lines = ["image,a,b,split"]
    for i in range(11):
        size = (24, 24) if i % 3 == 0 else (40, 30) if i % 3 == 1 else (16, 16)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        lines.append(f"images/{i}.png,{i % 2},{(i // 2) % 2},train")
    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([12]))
    Image.fromarray(rng.integers(0, 4096, (20, 20), dtype=np.uint16)).save(root / "images" / "deep.png", pnginfo=info)
    (root / "images" / "bad.png").write_bytes(b"not a png")
    lines += ["images/deep.png,1,1,train", "images/bad.png,0,1,train", "images/0.png,1,0,valid"]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def dataset(folder, **options):
    return DATASETS.get("csv")(str(folder), "train", skip_bad=True, **options)


def outputs(ds, transform, seeds) -> list:
    ds.transform = transform
    items = SeededItems(ds)
    return [items[(i, seed)] for seed in seeds for i in range(len(ds))]


def same(a: list, b: list) -> bool:
    for x, y in zip(a, b, strict=True):
        if (x is None) != (y is None):
            return False
        if x is not None and not (torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])):
            return False
    return True


@pytest.mark.parametrize("policy", ["none", "flip", "randaugment", "pathology"])
@pytest.mark.parametrize("views", [1, 2])
def test_prepared_pixels_give_the_uncached_tensors(folder, policy, views):
    def transform():
        t = build_train_transform(32, MEAN, STD, policy=policy, vflip=True, seed=1)
        return TwoViews(t) if views == 2 else t

    plain, cached = dataset(folder), dataset(folder)
    kept = prepare_images([cached], build_eval_transform(32, MEAN, STD), limit=2**30)
    assert kept is not None and kept["images"] == len(cached) - 1  # all but the corrupt file
    assert cached.prepared.pixels[-1] is None and not cached.prepared.pixels[0].flags.writeable
    seeds = [3, 11, 2**31 + 7]
    expected, got = outputs(plain, transform(), seeds), outputs(cached, transform(), seeds)
    assert same(expected, got)
    assert sum(x is None for x in got) == len(seeds)  # the corrupt file is skipped as before, not cached
    deep = next(i for i, item in enumerate(cached.items) if item["image"].endswith("deep.png"))
    assert cached.prepared.pixels[deep].dtype == np.float32  # a deep image is kept deep


def test_a_dataloader_with_a_worker_sees_the_same_batches(folder):
    def batches(ds, workers):
        ds.transform = build_train_transform(32, MEAN, STD, policy="randaugment", seed=0)
        sampler = ResumableSampler(ds, seed=5, shuffle=True)
        loader = make_loader(SeededItems(ds), 4, sampler=sampler, workers=workers)
        return [b["image"] for b in loader]

    plain, cached = dataset(folder), dataset(folder)
    prepare_images([cached], build_eval_transform(32, MEAN, STD), limit=2**30)
    expected = batches(plain, 0)
    for workers in (0, 1):
        got = batches(cached, workers)
        assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_pixels_prepared_for_another_size_are_not_used(folder):
    ds = dataset(folder)
    prepare_images([ds], build_eval_transform(32, MEAN, STD), limit=2**30)
    item = ds.prepared.substitute(0, dict(ds.items[0]), build_eval_transform(48, MEAN, STD).key)
    assert PREPARED not in item and isinstance(item["image"], str)
    ds.transform = build_eval_transform(48, MEAN, STD)
    assert ds[0]["image"].shape == (3, 48, 48)


def test_the_memory_bound_is_all_or_nothing(folder):
    ds = dataset(folder)
    one = 32 * 32 * 3
    assert prepare_images([ds], build_eval_transform(32, MEAN, STD), limit=one * 5) is None
    assert ds.prepared is None
    assert prepare_images([ds], build_eval_transform(32, MEAN, STD), limit=0) is None
    assert cache_limit(0) == 0 and cache_limit(1.5) == int(1.5 * 2**30) and cache_limit(None) > 0


def test_training_set_and_validation_set_kept_together(folder):
    train, valid = dataset(folder), DATASETS.get("csv")(str(folder), "valid")
    kept = keep_in_memory([train, None, valid], build_eval_transform(16, MEAN, STD), cache_gb=1)
    assert kept == {"images": len(train) - 1 + len(valid), "bytes": kept["bytes"]}
    assert train.prepared is not None and valid.prepared is not None


def test_workers_follow_the_data_unless_the_config_sets_them():
    assert choose_workers(2, explicit=False, in_memory=True, device_type="cpu") == 0
    assert choose_workers(2, explicit=False, in_memory=False, device_type="cpu") == 2
    assert choose_workers(2, explicit=False, in_memory=True, device_type="cuda") == 2
    assert choose_workers(3, explicit=True, in_memory=True, device_type="cpu") == 3


def test_training_chooses_from_the_data(tmp_path, monkeypatch):
    from test_inference import make_csv_dataset

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the share of the cores, uncapped (tests/test_threads.py)

    from probmcl_med.config import load_config, with_epochs
    from probmcl_med.engine.distributed import setup_distributed
    from probmcl_med.engine.inputs import RunInputs
    from probmcl_med.engine.session import Session
    from probmcl_med.threads import available_cores

    make_csv_dataset(tmp_path / "data", n_per_split=6)
    base = [
        "dataset.name=csv",
        f"dataset.root={tmp_path / 'data'}",
        "encoder.name=test_resnet",
        "dataset.image_size=32",
    ]
    for sets, workers, in_memory in (
        (base, 0, 12),
        ([*base, "workers=1"], 1, 12),
        ([*base, "dataset.cache_gb=0"], 2, None),
    ):
        config = load_config(overrides=sets)
        for given in (config, with_epochs(config, 3)):  # --epochs N, as train's command line gives it
            session = Session(given, setup_distributed("cpu"))
            session.prepare_loading(RunInputs.build(given, torch.device("cpu")))
            kept = session.loading["in_memory"]
            assert session.loading["workers"] == workers and (kept["images"] if kept else None) == in_memory
            assert session.loading["threads"] == max(1, available_cores() - workers)
