"""The frozen-encoder feature cache: equal to features computed directly, reused (no forward pass), invalidated by
each part of its key, resumed after a killed build, memory-mapped (reading it allocates no (N, H) array)."""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from probmcl_med.data.base import MultiLabelDataset
from probmcl_med.data.transforms import build_eval_transform
from probmcl_med.inference.feature_cache import CachedFeatures, FeatureCache, cache_key
from probmcl_med.inference.features import EncoderIdentity, Preprocessing, cached_features
from probmcl_med.models.encoders import get_encoder
from probmcl_med.models.heads import Classifier, LinearHead

CLASSES = ["a", "b", "c"]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def dataset_of(paths: list[Path], size: int = 32, mean=MEAN, skip_bad: bool = False) -> MultiLabelDataset:
    rng = np.random.default_rng(1)
    items = [
        {"image": str(p), "label": rng.integers(0, 2, 3).astype(np.float32), "row": i} for i, p in enumerate(paths)
    ]
    ds = MultiLabelDataset(items, CLASSES, name="t", source="t.csv", skip_bad=skip_bad)
    ds.transform = build_eval_transform(size, mean, STD)
    return ds


class Counting(torch.nn.Module):
    """An encoder wrapper that counts the images it is run on (the forward passes the cache should save)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.inner = encoder
        self.num_features = encoder.num_features
        self.normalization = encoder.normalization
        self.images = 0
        self.fail_after: int | None = None  # raise (a simulated kill) once this many images were run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.images >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.images += x.shape[0]
        return self.inner(x)


@pytest.fixture()
def classifier() -> Classifier:
    torch.manual_seed(0)
    encoder = Counting(get_encoder("test_resnet"))
    return Classifier(encoder, LinearHead(encoder.num_features, len(CLASSES)))


def features(classifier: Classifier, ds: MultiLabelDataset, root: Path, size: int = 32, mean=MEAN, **kw):
    return cached_features(
        classifier,
        ds,
        encoder=EncoderIdentity("test_resnet", kw.pop("options", {})),
        preprocessing=Preprocessing(size, mean, STD),
        batch_size=kw.pop("batch_size", 4),
        device=torch.device("cpu"),
        root=root,
        **kw,
    )


def direct(classifier: Classifier, ds: MultiLabelDataset) -> np.ndarray:
    """The features computed the plain way: one image at a time through the transform and ``embed``."""
    classifier.eval()
    with torch.no_grad():
        rows = [classifier.embed(ds[i]["image"][None]).numpy()[0] for i in range(len(ds))]
    return np.stack(rows)


def test_cached_features_equal_direct_ones_and_a_second_run_computes_nothing(tmp_path, classifier) -> None:
    ds = dataset_of(write_images(tmp_path / "img", 11))
    root = tmp_path / "cache"
    first = features(classifier, ds, root)
    assert classifier.encoder.images == 11 and len(first) == 11
    expected = direct(classifier, ds)
    got = np.stack([first[j]["features"].numpy() for j in range(len(first))])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.stack([first[j]["label"].numpy() for j in range(11)]), ds.labels)

    classifier.encoder.images = 0
    again = features(classifier, ds, root)
    assert classifier.encoder.images == 0  # read back: no forward pass at all
    assert again.folder == first.folder
    assert isinstance(again.features, np.memmap)
    key = json.loads((first.folder / "key.json").read_text())
    assert key["dataset"]["samples"] == 11 and key["encoder"]["reads"] == "unit-norm"


@pytest.mark.parametrize("change", ["weights", "options", "reads", "image_size", "mean", "file_replaced", "file_added"])
def test_each_part_of_the_key_invalidates_the_cache(tmp_path, classifier, change) -> None:
    paths = write_images(tmp_path / "img", 6)
    root = tmp_path / "cache"
    first = features(classifier, dataset_of(paths), root)
    classifier.encoder.images = 0
    kwargs: dict = {}
    size, mean = 32, MEAN
    if change == "weights":
        with torch.no_grad():
            next(classifier.encoder.parameters()).add_(1e-3)
    elif change == "options":
        kwargs["options"] = {"drop_rate": 0.0}
    elif change == "reads":
        classifier.normalize_features = False
    elif change == "image_size":
        size = 40
    elif change == "mean":
        mean = (0.5, 0.4, 0.31)
    elif change == "file_replaced":
        time.sleep(0.01)
        Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(paths[2])
    elif change == "file_added":
        paths = [*paths, *write_images(tmp_path / "more", 1, seed=5)]
    ds = dataset_of(paths, size=size, mean=mean)
    second = features(classifier, ds, root, size=size, mean=mean, **kwargs)
    assert second.folder != first.folder
    assert classifier.encoder.images == len(paths)  # recomputed from scratch
    np.testing.assert_allclose(
        np.stack([second[j]["features"].numpy() for j in range(len(second))]),
        direct(classifier, ds),
        rtol=1e-5,
        atol=1e-6,
    )


def test_relabelling_reuses_the_features_and_serves_the_new_labels(tmp_path, classifier) -> None:
    paths = write_images(tmp_path / "img", 5)
    root = tmp_path / "cache"
    features(classifier, dataset_of(paths), root)
    ds = dataset_of(paths)
    ds.labels = 1.0 - ds.labels
    classifier.encoder.images = 0
    again = features(classifier, ds, root)
    assert classifier.encoder.images == 0
    np.testing.assert_array_equal(np.stack([again[j]["label"].numpy() for j in range(5)]), ds.labels)


def test_a_killed_build_resumes_from_its_last_complete_chunk(tmp_path, classifier) -> None:
    ds = dataset_of(write_images(tmp_path / "img", 10))
    root = tmp_path / "cache"
    key = cache_key(encoder=classifier.encoder, encoder_name="test_resnet", encoder_options={},
                    normalize_features=True, dataset=ds, image_size=32, mean=MEAN, std=STD, stain_reference=None)  # fmt: skip
    cache = FeatureCache(key, root, chunk=3)  # chunks [0-2] [3-5] [6-8] [9]
    classifier.encoder.fail_after = 6  # batches of 2: dies on the 4th batch, inside chunk 1... after chunk 1 is full
    with pytest.raises(KeyboardInterrupt):
        cache.build(classifier.embed, ds, batch_size=2, device=torch.device("cpu"), module=classifier)
    assert cache.done_chunks() == {0, 1} and not cache.complete()
    classifier.encoder.fail_after, classifier.encoder.images = None, 0
    resumed = cache.build(classifier.embed, ds, batch_size=2, device=torch.device("cpu"), module=classifier)
    assert classifier.encoder.images == 4  # chunks 2 and 3 only
    got = np.stack([resumed[j]["features"].numpy() for j in range(10)])
    np.testing.assert_allclose(got, direct(classifier, ds), rtol=1e-5, atol=1e-6)


def test_a_chunk_not_recorded_is_recomputed_whatever_its_rows_hold(tmp_path, classifier) -> None:
    ds = dataset_of(write_images(tmp_path / "img", 7))
    key = cache_key(encoder=classifier.encoder, encoder_name="test_resnet", encoder_options={},
                    normalize_features=True, dataset=ds, image_size=32, mean=MEAN, std=STD, stain_reference=None)  # fmt: skip
    cache = FeatureCache(key, tmp_path / "cache", chunk=4)
    classifier.encoder.fail_after = 6  # dies in chunk 1 after two of its rows were written, not flushed/recorded
    with pytest.raises(KeyboardInterrupt):
        cache.build(classifier.embed, ds, batch_size=2, device=torch.device("cpu"), module=classifier)
    assert cache.done_chunks() == {0}
    rows = np.load(cache.folder / "features.npy", mmap_mode="r+")
    rows[4:] = np.nan  # whatever a killed process left there
    rows.flush()
    del rows
    classifier.encoder.fail_after, classifier.encoder.images = None, 0
    resumed = cache.build(classifier.embed, ds, batch_size=2, device=torch.device("cpu"), module=classifier)
    assert classifier.encoder.images == 3
    np.testing.assert_allclose(np.stack([resumed[j]["features"].numpy() for j in range(7)]), direct(classifier, ds),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_the_build_keeps_a_frozen_encoder_in_eval_mode_and_its_statistics(tmp_path) -> None:
    torch.manual_seed(1)
    encoder = get_encoder("test_resnet")  # batch norm: train mode would update its running statistics
    classifier = Classifier(encoder, LinearHead(encoder.num_features, 3))
    classifier.train()
    encoder.eval()  # frozen: eval mode while the head trains
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    features(classifier, dataset_of(write_images(tmp_path / "img", 5)), tmp_path / "cache")
    assert not encoder.training and classifier.head.training  # each module's mode is back
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())


def test_unreadable_samples_are_left_out_with_skip_bad(tmp_path, classifier) -> None:
    paths = write_images(tmp_path / "img", 6)
    paths[1].write_bytes(b"not a png")
    paths[4].write_bytes(b"not a png")
    ds = dataset_of(paths, skip_bad=True)
    out = features(classifier, ds, tmp_path / "cache", batch_size=2)
    assert len(out) == 4
    assert [out[j]["index"] for j in range(4)] == [0, 2, 3, 5]
    np.testing.assert_array_equal(np.stack([out[j]["label"].numpy() for j in range(4)]), ds.labels[[0, 2, 3, 5]])


def test_reading_a_large_cache_keeps_memory_flat(tmp_path) -> None:
    """40,000 x 512 float32 rows (82 MB on disk) read through a DataLoader: the Python heap peaks far below the
    array's size (a cache of 100,000 x 1,536 patches is read the same way)."""
    n, width = 40_000, 512
    features = np.lib.format.open_memmap(tmp_path / "features.npy", mode="w+", dtype=np.float32, shape=(n, width))
    for start in range(0, n, 5000):
        features[start : start + 5000] = np.arange(start, start + 5000, dtype=np.float32)[:, None]
    features.flush()
    del features
    labels = np.zeros((n, 3), np.float32)
    tracemalloc.start()
    cached = CachedFeatures(np.load(tmp_path / "features.npy", mmap_mode="r"), np.ones(n, bool), labels, tmp_path)
    loader = torch.utils.data.DataLoader(cached, batch_size=256, shuffle=True)
    total = 0.0
    for batch in loader:
        total += float(batch["features"][:, 0].sum())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total == pytest.approx(n * (n - 1) / 2)
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert os.path.getsize(tmp_path / "features.npy") > 80 * 10**6


KILLED_BUILD = """
import sys, time, torch
sys.path.insert(0, {tests!r})
from test_feature_cache import dataset_of, MEAN, STD
from pathlib import Path
from probmcl_med.inference.feature_cache import FeatureCache, cache_key
from probmcl_med.models.encoders import get_encoder
from probmcl_med.models.heads import Classifier, LinearHead
torch.manual_seed(0)
encoder = get_encoder("test_resnet")
classifier = Classifier(encoder, LinearHead(encoder.num_features, 3))
ds = dataset_of(sorted(Path({images!r}).glob("*.png")))
key = cache_key(encoder=encoder, encoder_name="test_resnet", encoder_options={{}}, normalize_features=True,
                dataset=ds, image_size=32, mean=MEAN, std=STD, stain_reference=None)
def slow(x):
    time.sleep(0.5)
    return classifier.embed(x)
FeatureCache(key, Path({root!r}), chunk=2).build(slow, ds, batch_size=1, device=torch.device("cpu"), module=classifier)
"""


@pytest.mark.slow  # a subprocess that imports torch: minutes on a busy 2-core machine; the raise-based twin above runs
def test_a_build_killed_with_sigkill_resumes_from_its_last_complete_chunk(tmp_path) -> None:
    import signal
    import subprocess
    import sys

    write_images(tmp_path / "img", 12)
    root = tmp_path / "cache"
    script = KILLED_BUILD.format(tests=str(Path(__file__).parent), images=str(tmp_path / "img"), root=str(root))
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until at least two chunks are recorded, then kill -9 mid-chunk
            progress = list(root.glob("*/progress.json"))
            if progress and len(json.loads(progress[0].read_text())["done"]) >= 2:
                break
            assert process.poll() is None, "the build ended before it could be killed"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        process.kill()
    torch.manual_seed(0)
    encoder = Counting(get_encoder("test_resnet"))
    classifier = Classifier(encoder, LinearHead(encoder.num_features, 3))
    ds = dataset_of(sorted((tmp_path / "img").glob("*.png")))
    key = cache_key(encoder=encoder.inner, encoder_name="test_resnet", encoder_options={}, normalize_features=True,
                    dataset=ds, image_size=32, mean=MEAN, std=STD, stain_reference=None)  # fmt: skip
    cache = FeatureCache(key, root, chunk=2)
    done = cache.done_chunks()
    assert 2 <= len(done) < 6
    resumed = cache.build(classifier.embed, ds, batch_size=1, device=torch.device("cpu"), module=classifier)
    assert encoder.images == 12 - 2 * len(done)  # only the chunks not recorded
    np.testing.assert_allclose(np.stack([resumed[j]["features"].numpy() for j in range(12)]), direct(classifier, ds),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
