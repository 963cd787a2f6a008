"""Shared set-up of the cohort tests: a model that reads slides at 1 um/px and small pyramidal slides."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from slide_files import write_pyramidal_tiff
from test_inference import make_bundle
from test_predict_pathology import set_bundle_entries

SLIDE_SIDE = 1024
TISSUE = (slice(256, 768), slice(512, 1024))
"""Rows and columns of the tissue block of :func:`block_slide`: 512 x 512 level-0 pixels."""


def cohort_model(run: Path):
    """A test_resnet bundle with 32-px inputs at 1 um/px; returns (encoder, head)."""
    encoder, head = make_bundle(run)
    set_bundle_entries(run, mpp=1.0)
    return encoder, head


def block_slide(path: Path, mpp: float | None, tissue: bool = True, seed: int = 3) -> np.ndarray:
    """A 1024 x 1024, 2-level pyramid: white glass and, with ``tissue``, a noisy pink-purple 512 x 512 block.

    At 0.5 um/px and a model at 1 um/px the patches are read from level 1 (``image[::2, ::2]``), 32 px each,
    64 level-0 pixels apart: the block holds 8 x 8 of them.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = np.full((SLIDE_SIDE, SLIDE_SIDE, 3), 243, np.uint8)
    if tissue:
        block = np.array([200, 95, 165]) + rng.normal(0, 20, (512, 512, 3))
        image[TISSUE] = np.clip(block, 0, 255).astype(np.uint8)
    write_pyramidal_tiff(path, image, levels=2, tile=256, compression="zlib", mpp=mpp)
    return image


def read_rows(path: Path) -> list[dict[str, str]]:
    """A CSV file's rows as dicts (the csv module, not the package's reader)."""
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def without(rows: list[dict[str, str]], *columns: str) -> list[dict[str, str]]:
    """The rows with ``columns`` dropped (the time a slide took differs from run to run)."""
    return [{k: v for k, v in row.items() if k not in columns} for row in rows]
