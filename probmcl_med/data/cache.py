"""Training images kept in memory, decoded and resized once, when they fit (``dataset.cache_gb``).

Reading, stain normalisation and resizing give the same pixels every epoch (the deterministic prefix of a
:class:`~probmcl_med.data.transforms.Pipeline`). For a dataset whose prepared pixels fit the memory bound, they are
computed once, in threads, before training, as a plain training loop preloads its tensors; every epoch then starts
each item after the prefix. The augmentation draws and the tensors are those of the uncached path, bit for bit
(``tests/test_data_cache.py``). Prepared arrays are read-only, so no transform can change them for a later epoch.

Memory: uint8 pixels take ``S * S * 3`` bytes per image at image size ``S`` (64 px: 12 KiB; 224 px: 147 KiB), float32
deep images four times that. The bound is per process (each torchrun process holds its own copy).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from probmcl_med.data.base import find_data_error
from probmcl_med.errors import DataError
from probmcl_med.threads import available_cores

PREPARED = "prepared"
"""Item key: the item's ``image`` already went through the deterministic prefix of a pipeline; its value is that
pipeline's ``key`` (:class:`~probmcl_med.data.transforms.Pipeline`)."""

AUTO_FRACTION = 0.25
"""Without ``dataset.cache_gb``: at most this share of the memory available when training starts."""

AUTO_CAP_BYTES = 16 * 2**30
"""... and at most this many bytes."""

ARRAY_OVERHEAD = 112
"""Bytes a numpy array object takes besides its pixels (counted against the bound)."""


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``; else physical memory), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def cache_limit(cache_gb: float | None) -> int:
    """The memory bound in bytes: ``cache_gb`` GiB when given (0: never cache); else :data:`AUTO_FRACTION` of the
    available memory, at most :data:`AUTO_CAP_BYTES` (0 when the available memory is unknown)."""
    if cache_gb is not None:
        return int(float(cache_gb) * 2**30)
    available = available_memory()
    return 0 if available is None else int(min(AUTO_FRACTION * available, AUTO_CAP_BYTES))


class PreparedImages:
    """Per item of a dataset, its pixels after a pipeline's deterministic prefix, or None (not prepared: read as
    usual, e.g. a file that failed to read, which then fails or is skipped where it always did).

    Args:
        key: the pipeline key the pixels were prepared for; other pipelines get the items unprepared.
        pixels: one (S, S, 3) uint8 or float32 array (read-only) or None per item.
    """

    def __init__(self, key: Hashable, pixels: Sequence[np.ndarray | None]) -> None:
        self.key = key
        self.pixels = list(pixels)
        self.nbytes = sum(p.nbytes + ARRAY_OVERHEAD for p in self.pixels if p is not None)

    def substitute(self, index: int, item: dict[str, Any], key: Hashable | None) -> dict[str, Any]:
        """``item`` with its prepared pixels and the :data:`PREPARED` mark, when there are some for ``key``."""
        pixels = self.pixels[index] if key == self.key else None
        if pixels is None:
            return item
        item = {k: v for k, v in item.items() if k != "intensity"}  # consumed by the read, which is done
        item["image"] = pixels
        item[PREPARED] = self.key
        return item


def prepare_images(datasets: Sequence[Any], transform: Any, limit: int, threads: int = 1) -> dict[str, int] | None:
    """Prepare every item of ``datasets`` with ``transform``'s deterministic prefix and attach the pixels to each
    dataset (``dataset.prepared``), when all of them fit in ``limit`` bytes.

    The first item's size times the number of items is checked against ``limit`` before anything else is read; the
    running total is checked again while reading (float32 deep images take four times uint8's room). When they do
    not fit, no dataset keeps any (a partial cache would leave the DataLoader's cost unknown).

    Args:
        datasets: :class:`~probmcl_med.data.base.MultiLabelDataset` objects (train, valid).
        transform: a pipeline with ``key`` and ``prepare(item) -> item`` (its deterministic prefix).
        limit: the memory bound in bytes (:func:`cache_limit`); 0 prepares nothing.
        threads: threads decoding at once (decoders and resizing release the GIL).

    Returns:
        ``{"images", "bytes"}`` of what is kept, or None when nothing is.
    """
    prepare: Callable[[Mapping[Hashable, Any]], dict] | None = getattr(transform, "prepare", None)
    total_items = sum(len(ds) for ds in datasets)
    if limit <= 0 or prepare is None or not total_items:
        return None
    jobs = [(ds, i) for ds in datasets for i in range(len(ds))]

    def one(job: tuple[Any, int]) -> np.ndarray | None:
        ds, index = job
        try:
            pixels = np.asarray(prepare(dict(ds.items[index]))["image"])
        except DataError:
            return None
        except Exception as exc:  # MONAI's Compose wraps a transform's DataError in a RuntimeError
            if find_data_error(exc) is not None:
                return None
            raise
        pixels.setflags(write=False)
        return pixels

    first = next((p for p in map(one, jobs[:8]) if p is not None), None)
    if first is None or (first.nbytes + ARRAY_OVERHEAD) * total_items > limit:
        return None
    used = 0
    results: list[np.ndarray | None] = []
    pool = ThreadPoolExecutor(max_workers=max(1, int(threads)))
    try:
        for pixels in pool.map(one, jobs):
            results.append(pixels)
            used += 0 if pixels is None else pixels.nbytes + ARRAY_OVERHEAD
            if used > limit:
                return None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    start = 0
    for ds in datasets:
        ds.prepared = PreparedImages(transform.key, results[start : start + len(ds)])
        start += len(ds)
    return {"images": sum(p is not None for p in results), "bytes": used}


def keep_in_memory(datasets: Sequence[Any], transform: Any, cache_gb: float | None) -> dict[str, int] | None:
    """:func:`prepare_images` of the datasets that exist (None entries skipped) under :func:`cache_limit`, decoding in
    this process's share of the cores (``LOCAL_WORLD_SIZE`` processes share them under torchrun)."""
    threads = max(1, available_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    present = [ds for ds in datasets if ds is not None]
    return prepare_images(present, transform, cache_limit(cache_gb), threads)


def describe_loading(loading: Mapping[str, Any]) -> str:
    """One line: what is kept in memory, where the loading runs, torch's threads (``{"in_memory", "workers",
    "threads"}``)."""
    kept, workers = loading.get("in_memory"), int(loading["workers"])
    held = f"{kept['images']} images kept in memory ({kept['bytes'] / 2**20:.0f} MiB)" if kept else "images read"
    where = "in this process" if workers == 0 else f"in {workers} worker process(es)"
    return f"data: {held}, loaded {where}; {loading['threads']} torch thread(s)"
