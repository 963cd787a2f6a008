"""The embedded demo dataset: multi-label mosaics of real handwritten digits, generated on first use (no download).

Pixels come from scikit-learn's bundled 8x8 handwritten digits (``sklearn.datasets.load_digits``: 1,797 images that
ship inside the scikit-learn wheel). Each demo image is a 2x2 grid of 32-pixel cells (a 64x64 RGB image) coloured
like an H&E patch (pink background, purple ink); 1 to 4 cells hold a digit (upscaled 4x), the others are empty.

Labels (11 classes) have structure, like tissue types:

- ``digit_0`` ... ``digit_9``: the digits present;
- ``loop_digit``: a parent class, present exactly when a digit with a closed loop (0, 6, 8, 9) is present, the way an
  ADP L1 code is present when any of its L2 children is;
- co-occurrence: 1 & 7, 3 & 8 and 4 & 9 come in pairs (when one is drawn, its partner joins with probability 0.75
  while a cell is free); 2 and 5 never appear together.

Splits: the 1,797 source digits are split once (seeded) into disjoint pools, 60% train, 20% valid, 20% test, and each
split's mosaics draw only from its own pool, so no source digit is shared between train and test. Sizes: 2,000
train, 400 valid and 400 test mosaics by default, small enough that both ProbMCL stages train in minutes on two CPU
cores at 64 px with a tiny timm encoder (one epoch of two views is 4,000 64-px forward passes), large enough that
every class has well over a hundred training positives.

The images are written as PNGs plus a ``labels.csv`` (the layout of the ``csv`` dataset, which reads them) into
``$PROBMCL_MED_CACHE/demo/<version-and-parameters>`` (default ``~/.cache/probmcl-med/demo/...``), or under ``root``
when given. Generation writes to a temporary folder and renames it into place, so two processes generating at once
both end with the same complete folder. The CSV's ``cells`` column records, per cell, the index of the source digit
in ``load_digits()`` (``-`` for an empty cell), so the labels can be checked against scikit-learn independently.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from probmcl_med.data.base import SPLITS, MultiLabelDataset, normalize_split
from probmcl_med.data.csv_dataset import load_csv_dataset
from probmcl_med.errors import DataError

VERSION = 1
DIGIT_CLASSES = [f"digit_{d}" for d in range(10)]
LOOP_DIGITS = (0, 6, 8, 9)
CLASS_NAMES = [*DIGIT_CLASSES, "loop_digit"]
PARTNERS = {1: 7, 7: 1, 3: 8, 8: 3, 4: 9, 9: 4}
EXCLUSIVE = {2: 5, 5: 2}
PARTNER_PROB = 0.75
DIGITS_PER_IMAGE_P = (0.3, 0.35, 0.25, 0.1)  # P(1), P(2), P(3), P(4) digits in a mosaic
POOL_FRACTIONS = {"train": 0.6, "valid": 0.2, "test": 0.2}
BACKGROUND = np.array([242.0, 205.0, 228.0])  # eosin-pink
INK = np.array([88.0, 40.0, 132.0])  # haematoxylin-purple
GRID = 2


def default_cache_dir() -> Path:
    """``$PROBMCL_MED_CACHE/demo`` or ``~/.cache/probmcl-med/demo``."""
    base = os.environ.get("PROBMCL_MED_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "probmcl-med") / "demo"


def source_pools(seed: int) -> dict[str, np.ndarray]:
    """Disjoint index pools into ``load_digits()`` per split (60/20/20, seeded permutation)."""
    # scikit-learn here, not at the top: only building the demo cache needs it, and every config validation imports
    # this module (DATASETS registry); `import sklearn.datasets` measured 0.8 s on the idle 2-core dev machine
    from sklearn.datasets import load_digits

    n = len(load_digits().target)
    perm = np.random.default_rng(seed).permutation(n)
    n_train = round(n * POOL_FRACTIONS["train"])
    n_valid = round(n * POOL_FRACTIONS["valid"])
    return {"train": perm[:n_train], "valid": perm[n_train : n_train + n_valid], "test": perm[n_train + n_valid :]}


def _draw_classes(rng: np.random.Generator) -> list[int]:
    """Digit classes of one mosaic (repeats allowed), following the co-occurrence rules."""
    k = int(rng.choice(4, p=DIGITS_PER_IMAGE_P)) + 1
    drawn: list[int] = []
    while len(drawn) < k:
        d = int(rng.integers(10))
        if EXCLUSIVE.get(d) in drawn:
            continue
        drawn.append(d)
        partner = PARTNERS.get(d)
        if partner is not None and partner not in drawn and len(drawn) < GRID * GRID and rng.random() < PARTNER_PROB:
            drawn.append(partner)
    return drawn


def render_mosaic(cells: list[int | None], digit_images: np.ndarray, rng: np.random.Generator, tile: int) -> np.ndarray:
    """A (GRID*tile, GRID*tile, 3) uint8 mosaic; ``cells`` holds a source digit index or None per cell (row-major)."""
    scale = tile // 8
    side = GRID * tile
    ink = np.zeros((side, side), dtype=np.float64)
    for c, index in enumerate(cells):
        if index is None:
            continue
        r, col = divmod(c, GRID)
        digit = np.kron(digit_images[index] / 16.0, np.ones((scale, scale)))
        ink[r * tile : r * tile + 8 * scale, col * tile : col * tile + 8 * scale] = digit
    stain = 1.0 + rng.normal(0.0, 0.04, size=3)  # per-image stain variation
    rgb = BACKGROUND * (1.0 - ink[..., None]) + (INK * stain) * ink[..., None]
    rgb += rng.normal(0.0, 5.0, size=rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def generate_split(
    split: str, count: int, seed: int, tile: int = 32
) -> tuple[np.ndarray, np.ndarray, list[list[int | None]]]:
    """The mosaics of one split, deterministically from ``seed``.

    Returns:
        images (count, GRID*tile, GRID*tile, 3) uint8, labels (count, 11) float32, and per image the source digit
        index of each cell (None for an empty cell).
    """
    from sklearn.datasets import load_digits  # only to build the cache (see source_pools)

    digits = load_digits()
    pool = source_pools(seed)[split]
    by_class = {d: pool[digits.target[pool] == d] for d in range(10)}
    rng = np.random.default_rng([seed, SPLITS.index(split), VERSION])
    images = np.zeros((count, GRID * tile, GRID * tile, 3), dtype=np.uint8)
    labels = np.zeros((count, len(CLASS_NAMES)), dtype=np.float32)
    all_cells: list[list[int | None]] = []
    for i in range(count):
        classes = _draw_classes(rng)
        sources = [int(rng.choice(by_class[d])) for d in classes]
        positions = rng.permutation(GRID * GRID)[: len(sources)]
        cells: list[int | None] = [None] * (GRID * GRID)
        for pos, src in zip(positions, sources, strict=True):
            cells[int(pos)] = src
        images[i] = render_mosaic(cells, digits.images, rng, tile)
        present = {int(digits.target[s]) for s in sources}
        for d in present:
            labels[i, d] = 1.0
        labels[i, 10] = float(any(d in present for d in LOOP_DIGITS))
        all_cells.append(cells)
    return images, labels, all_cells


def _write_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def ensure_demo(
    root: str | Path | None = None,
    seed: int = 0,
    n_train: int = 2000,
    n_valid: int = 400,
    n_test: int = 400,
    tile: int = 32,
) -> Path:
    """The demo folder for these parameters, generated on first use (atomically: temp folder + rename).

    Returns:
        The folder holding ``labels.csv``, ``meta.json`` and ``images/``.
    """
    if tile % 8 or tile < 8:
        raise DataError(f"demo dataset: tile {tile} must be a positive multiple of 8 (digits are 8x8 pixels)")
    base = Path(root).expanduser() if root is not None else default_cache_dir()
    key = f"v{VERSION}-seed{seed}-n{n_train}-{n_valid}-{n_test}-tile{tile}"
    folder = base / key
    if (folder / "meta.json").is_file():
        return folder
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=base))
    try:
        counts = {"train": n_train, "valid": n_valid, "test": n_test}
        lines = ["image," + ",".join(CLASS_NAMES) + ",split,cells"]
        mean = std = None
        for split in SPLITS:
            images, labels, cells = generate_split(split, counts[split], seed, tile)
            (tmp / "images" / split).mkdir(parents=True)
            for i in range(len(images)):
                rel = f"images/{split}/{i:05d}.png"
                _write_png(tmp / rel, images[i])
                flags = ",".join(str(int(v)) for v in labels[i])
                cell_text = "|".join("-" if c is None else str(c) for c in cells[i])
                lines.append(f"{rel},{flags},{split},{cell_text}")
            if split == "train":
                pixels = images.reshape(-1, 3).astype(np.float64) / 255.0
                mean, std = pixels.mean(axis=0).tolist(), pixels.std(axis=0).tolist()
        (tmp / "labels.csv").write_text("\n".join(lines) + "\n")
        meta = {"version": VERSION, "seed": seed, "counts": counts, "tile": tile, "grid": GRID,
                "classes": CLASS_NAMES, "mean": mean, "std": std, "source": "sklearn.datasets.load_digits"}  # fmt: skip
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first: its folder is identical
            if not (folder / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_demo(
    root: str | Path | None = None,
    split: str = "train",
    *,
    seed: int = 0,
    n_train: int = 2000,
    n_valid: int = 400,
    n_test: int = 400,
    tile: int = 32,
    skip_bad: bool = False,
) -> MultiLabelDataset:
    """The demo split as a :class:`MultiLabelDataset`, generated on first use (see the module docstring).

    Args:
        root: cache folder (None: :func:`default_cache_dir`).
        split: train, valid or test.
        seed: seed of the source-digit pools and the mosaics.
        n_train, n_valid, n_test: mosaics per split.
        tile: pixels per grid cell (a multiple of 8); the image side is 2 * tile.
        skip_bad: skip unreadable files (cannot happen with a complete cache folder).
    """
    split = normalize_split(split, "demo dataset")
    folder = ensure_demo(root, seed=seed, n_train=n_train, n_valid=n_valid, n_test=n_test, tile=tile)
    meta = json.loads((folder / "meta.json").read_text())
    return load_csv_dataset(
        folder,
        split,
        classes=CLASS_NAMES,
        name="demo",
        mean=meta["mean"],
        std=meta["std"],
        skip_bad=skip_bad,
    )
