"""The frozen-encoder feature cache on disk: every image's features computed once, memory-mapped, shared by runs.

A frozen encoder (a pathology foundation model, ImageNet weights, a finished stage 1) maps each image to the same
features in every epoch of every run that uses it, so the classifier stage can train its head on features computed
once. The cache keeps them on disk, keyed by everything they depend on::

    key = sha256({encoder: name, options, sha256 of its state (every tensor's bytes), what the head reads,
                           the forward pass's precision (float32, or the bfloat16/float16 of training's AMP)},
                 {preprocessing: image size, mean, std, stain reference, sha256 of a probe image through the transform},
                 {dataset: sha256 of its sample list (each file's path, size and mtime; each array's bytes)})

so a later run, a sweep point or ``evaluate`` with the same key reads the features instead of running the encoder,
and any change of weights, options, pooling, preprocessing or files gives another key (another folder): a cache is
never served stale. Labels are not cached (they come from the dataset each time), so relabelling reuses the features.

Layout of ``$PROBMCL_MED_CACHE/features/<key>/`` (default ``~/.cache/probmcl-med/features``)::

    key.json        the key's document (what it was computed from), written first
    features.npy    (N, H) float32, a NumPy memory map (100,000 x 1,536 features: 614 MB on disk, not in RAM)
    valid.npy       (N,) uint8: 1 where the sample was readable (``dataset.skip_bad`` may skip some)
    progress.json   the chunks of ``CHUNK`` samples whose rows are on disk (written after the rows are flushed)

The build is resumable: rows are written chunk by chunk, each chunk flushed to disk before it is recorded in
``progress.json`` (atomically), so a build killed at any point continues from its last complete chunk. A lock file
(``fcntl.flock``) makes a second process that wants the same cache wait for the first and then read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from probmcl_med.data.base import image_path_of, make_loader
from probmcl_med.errors import DataError
from probmcl_med.fileio import atomic_write_text
from probmcl_med.inference.loop import ProgressHook, _worker_errors, eval_mode

CACHE_FORMAT = "probmcl-med/feature-cache"
CACHE_VERSION = 1
CHUNK = 1024
"""Samples per resumable chunk: a killed build loses at most this many samples' work."""


def cache_root() -> Path:
    """``$PROBMCL_MED_CACHE/features``, else ``~/.cache/probmcl-med/features`` (the demo data's cache beside it)."""
    base = os.environ.get("PROBMCL_MED_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "probmcl-med") / "features"


# --------------------------------------------------------------------------------------------------------------------
# The key
# --------------------------------------------------------------------------------------------------------------------


def state_sha256(module: nn.Module) -> str:
    """sha256 of a module's state: every entry's name, dtype, shape and bytes, in ``state_dict`` order.

    Hashes the weights the encoder really holds (a weights file, a finished stage 1 or a seeded random init alike);
    ~1 s per GB of weights.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(memoryview(t.view(torch.uint8).numpy()))
    return digest.hexdigest()


def _file_identity(path: str) -> list[Any]:
    try:
        stat = Path(path).stat()
    except OSError:
        return [path, None, None]
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def samples_sha256(items: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of a dataset's sample list, in order: each file's resolved path, size and mtime (a slide location's
    coordinates too), each in-memory array's shape and bytes. A renamed, replaced, added or removed file changes it."""
    digest = hashlib.sha256()
    for item in items:
        image = item["image"]
        if isinstance(image, np.ndarray):
            array = np.ascontiguousarray(image)
            digest.update(f"array|{array.dtype}|{array.shape}|".encode())
            digest.update(memoryview(array).cast("B"))
            continue
        record: list[Any] = _file_identity(str(image_path_of(image)))
        if isinstance(image, Mapping):
            record.append({k: v for k, v in sorted(image.items()) if k != "path"})
        if item.get("intensity") is not None:
            record.append(item["intensity"])
        digest.update((json.dumps(record, default=str) + "\n").encode())
    return digest.hexdigest()


def _probe_image() -> np.ndarray:
    """A fixed 61 x 47 RGB image in H&E-like pinks and purples (a smooth pattern: stain normalisation accepts it)."""
    yy, xx = np.mgrid[0:61, 0:47].astype(np.float64)
    wave = 0.5 + 0.5 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    rgb = np.stack([200 - 60 * wave, 120 - 70 * wave, 190 - 40 * wave], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def transform_sha256(transform: Callable[[dict[str, Any]], Any] | None, num_classes: int) -> str | None:
    """sha256 of a probe image after the deterministic transform (None when the transform cannot take it).

    Catches any change in the preprocessing code (resize, interpolation, normalisation) that the settings alone
    would not show.
    """
    if transform is None:
        return None
    try:
        out = transform({"image": _probe_image(), "label": np.zeros(num_classes, dtype=np.float32)})
        pixels = torch.as_tensor(out["image"]).float().contiguous().numpy()
    except Exception:  # a transform that reads only files, or a stain fit that rejects the probe
        return None
    return hashlib.sha256(np.round(pixels, 5).tobytes()).hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """What a dataset's cached features depend on (see the module docstring); ``digest`` names the folder.

    Attributes:
        encoder: ``{name, options, state_sha256, reads, precision}``: ``reads`` is ``unit-norm`` or ``raw``
            features, ``precision`` the dtype the forward pass ran in (``float32``, or AMP's ``bfloat16``/``float16``).
        preprocessing: ``{image_size, mean, std, stain_reference, transform_sha256}``.
        dataset: ``{samples_sha256, samples}`` (and ``source``, for people; not hashed).
    """

    encoder: dict[str, Any]
    preprocessing: dict[str, Any]
    dataset: dict[str, Any]

    def document(self) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "encoder": self.encoder,
            "preprocessing": self.preprocessing,
            "dataset": self.dataset,
        }

    @property
    def digest(self) -> str:
        hashed = self.document()
        hashed["dataset"] = {k: v for k, v in self.dataset.items() if k != "source"}
        return hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()


def cache_key(
    *,
    encoder: nn.Module,
    encoder_name: str,
    encoder_options: Mapping[str, Any],
    normalize_features: bool,
    dataset: Any,
    image_size: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    stain_reference: Mapping[str, Any] | None,
    precision: str = "float32",
) -> CacheKey:
    """The key of ``dataset``'s features under ``encoder`` with this preprocessing (``dataset.transform`` is probed)."""
    return CacheKey(
        encoder={
            "name": encoder_name,
            "options": dict(encoder_options),
            "state_sha256": state_sha256(encoder),
            "reads": "unit-norm" if normalize_features else "raw",
            "precision": precision,
        },
        preprocessing={
            "image_size": int(image_size),
            "mean": None if mean is None else [float(v) for v in mean],
            "std": None if std is None else [float(v) for v in std],
            "stain_reference": None if stain_reference is None else dict(stain_reference),
            "transform_sha256": transform_sha256(dataset.transform, len(dataset.class_names)),
        },
        dataset={
            "samples_sha256": samples_sha256(dataset.items),
            "samples": len(dataset),
            "source": str(getattr(dataset, "source", "")),
        },
    )


# --------------------------------------------------------------------------------------------------------------------
# Serving cached features
# --------------------------------------------------------------------------------------------------------------------


class CachedFeatures(Dataset):
    """Cached features as a dataset: item ``j`` is ``{"features": (H,) float32, "label": (C,), "index": i}`` for
    the j-th readable sample ``i``. Rows are read from the memory map one at a time (RAM holds no (N, H) array).

    Args:
        features: the (N, H) float32 memory map.
        valid: (N,) bool, the samples that were readable.
        labels: (N, C) float32, the dataset's labels (read from the dataset, not the cache).
        folder: where the cache lives (for messages).
    """

    transform = None

    def __init__(self, features: np.ndarray, valid: np.ndarray, labels: np.ndarray, folder: Path) -> None:
        self.features = features
        self.rows = np.flatnonzero(valid)
        self.labels = np.asarray(labels, dtype=np.float32)
        self.folder = folder
        self.source = str(folder)

    @property
    def num_features(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, j: int) -> dict[str, Any]:
        i = int(self.rows[j])
        return {
            "features": torch.from_numpy(np.array(self.features[i], dtype=np.float32)),
            "label": torch.from_numpy(self.labels[i].copy()),
            "index": i,
        }


# --------------------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------------------


class _Indexed(Dataset):
    """A dataset's items with their index added (None, a skipped sample, passes through)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        if item is None:
            return None
        return {"image": item["image"], "index": index}


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class FeatureCache:
    """One dataset's features under one key, in ``root / key.digest``.

    Args:
        key: what the features depend on.
        root: the cache folder (default :func:`cache_root`).
        chunk: samples per resumable chunk.
    """

    def __init__(self, key: CacheKey, root: Path | None = None, chunk: int = CHUNK) -> None:
        self.key = key
        self.folder = (root if root is not None else cache_root()) / key.digest
        self.chunk = max(1, int(chunk))
        self.samples = int(key.dataset["samples"])

    @property
    def num_chunks(self) -> int:
        return -(-self.samples // self.chunk)

    def done_chunks(self) -> set[int]:
        """The chunks whose rows are on disk (empty when there is no usable progress record)."""
        path = self.folder / "progress.json"
        if not path.is_file() or not (self.folder / "features.npy").is_file():
            return set()
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return set()
        if record.get("key") != self.key.digest or int(record.get("chunk", -1)) != self.chunk:
            return set()
        return {int(c) for c in record.get("done", [])}

    def complete(self) -> bool:
        return len(self.done_chunks()) == self.num_chunks

    def open(self, labels: np.ndarray) -> CachedFeatures:
        """The complete cache as a dataset (features memory-mapped read-only)."""
        features = np.load(self.folder / "features.npy", mmap_mode="r")
        valid = np.load(self.folder / "valid.npy").astype(bool)
        if features.shape[0] != self.samples or valid.shape != (self.samples,):
            raise DataError(f"feature cache {self.folder} is damaged (shape {features.shape}); delete the folder")
        return CachedFeatures(features, valid, labels, self.folder)

    def _record(self, done: set[int]) -> None:
        progress = {"key": self.key.digest, "chunk": self.chunk, "done": sorted(done), "chunks": self.num_chunks}
        atomic_write_text(self.folder / "progress.json", json.dumps(progress) + "\n")

    def build(
        self,
        embed: Callable[[torch.Tensor], torch.Tensor],
        dataset: Any,
        *,
        batch_size: int,
        device: torch.device,
        workers: int = 0,
        autocast: Callable[[], AbstractContextManager[Any]] | None = None,
        progress: ProgressHook | None = None,
        module: nn.Module | None = None,
    ) -> CachedFeatures:
        """Compute the missing chunks' features (all of them for a new key) and return the complete cache.

        Args:
            embed: images (B, 3, S, S) on ``device`` -> features (B, H), the head's input.
            dataset: the split, with its deterministic transform set, ``items`` and ``labels``.
            batch_size: images per forward pass.
            device: where ``embed`` runs.
            workers: DataLoader workers.
            autocast: the AMP context of the forward pass, or None.
            progress: told the number of samples still to compute, then each batch's size.
            module: put in eval mode during the build (its submodules' modes restored after).

        Raises:
            DataError: every sample was unreadable (``skip_bad``).
        """
        with _locked(self.folder):
            done = self.done_chunks()
            if len(done) < self.num_chunks:
                self._compute(embed, dataset, done, batch_size, device, workers, autocast, progress, module)
            return self.open(dataset.labels)

    def _compute(
        self,
        embed: Callable[[torch.Tensor], torch.Tensor],
        dataset: Any,
        done: set[int],
        batch_size: int,
        device: torch.device,
        workers: int,
        autocast: Callable[[], AbstractContextManager[Any]] | None,
        progress: ProgressHook | None,
        module: nn.Module | None,
    ) -> None:
        if not done:  # a new build: the key document first, then the arrays from scratch
            atomic_write_text(self.folder / "key.json", json.dumps(self.key.document(), indent=2, default=str) + "\n")
            for name in ("features.npy", "valid.npy", "progress.json"):
                (self.folder / name).unlink(missing_ok=True)
        pending = [i for c in range(self.num_chunks) if c not in done for i in self._chunk_rows(c)]
        remaining = {c: len(self._chunk_rows(c)) for c in range(self.num_chunks) if c not in done}
        loader = make_loader(Subset(_Indexed(dataset), pending), batch_size, workers=workers)
        features = np.load(self.folder / "features.npy", mmap_mode="r+") if done else None
        valid = np.load(self.folder / "valid.npy", mmap_mode="r+") if done else None
        context = autocast or contextlib.nullcontext
        if progress is not None:
            progress.start("caching features", len(pending))
        position = 0
        self._deferred: list[int] = []
        with eval_mode(module or nn.Identity()), torch.no_grad(), _worker_errors():
            for batch in loader:
                covered = pending[position : position + batch_size]
                position += len(covered)
                if batch is not None:
                    with context():
                        h = embed(batch["image"].to(device, non_blocking=True)).float().cpu().numpy()
                    if features is None:
                        features, valid = self._create(h.shape[1])
                    rows = np.asarray(batch["index"], dtype=np.int64)
                    features[rows] = h
                    valid[rows] = 1
                for c in {i // self.chunk for i in covered}:
                    remaining[c] -= sum(1 for i in covered if i // self.chunk == c)
                    if remaining[c] == 0:
                        self._commit(features, valid, done, c)
                if progress is not None:
                    progress.advance(len(covered))
        if features is None or not np.load(self.folder / "valid.npy", mmap_mode="r").any():
            raise DataError(
                f"{getattr(dataset, 'source', 'dataset')}: every sample was unreadable and skipped (dataset.skip_bad); "
                "no features to cache"
            )

    def _chunk_rows(self, c: int) -> range:
        return range(c * self.chunk, min(self.samples, (c + 1) * self.chunk))

    def _create(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        features = np.lib.format.open_memmap(self.folder / "features.npy", mode="w+", dtype=np.float32,
                                             shape=(self.samples, width))  # fmt: skip
        valid = np.lib.format.open_memmap(self.folder / "valid.npy", mode="w+", dtype=np.uint8, shape=(self.samples,))
        return features, valid

    def _commit(self, features: np.ndarray | None, valid: np.ndarray | None, done: set[int], c: int) -> None:
        """Flush the rows to disk, then record chunk ``c`` (and earlier all-skipped ones) as done.

        Until the first readable sample there are no arrays (their width is the encoder's output): a chunk whose
        samples were all skipped waits in ``self._deferred`` and is recorded with the next one.
        """
        self._deferred.append(c)
        if features is None or valid is None:
            return
        features.flush()
        valid.flush()
        done.update(self._deferred)
        self._deferred.clear()
        self._record(done)
