"""A hold-out confirmation set of real CT pixels with labels read from Hounsfield units (issue 20): ``ctregions``.

Built once, never looked at while the defaults were decided (benchmarks/evidence/README.md, "Issue 20"). It differs
from the deciding sets in its pixels (grey-level CT, shown the way a radiologist's viewer exports it), its class count
(6), its label cardinality (about 2.1) and its image size (48 px), and from the other confirmation set (scanmosaic) in
being whole crops of one modality, not mosaics, with labels read from the physics of the pixels.

Pixels (nothing downloaded at run time): two real CT slices that ship in the pydicom 3.0.2 wheel,
``pydicom/data/test_files/J2K_pixelrep_mismatch.dcm`` (an axial head CT, 512 x 512, stored in Hounsfield units; -2000
outside the reconstruction circle) and ``CT_small.dcm`` (an axial CT through a vertebra, 128 x 128, HU = pixel -
1024). Each is shown through a wide window (level 0 HU, width 2000 HU: -1000 HU black, +1000 HU white), 8 bits, grey
on three channels.

Images: square crops resized to 48 x 48 (bilinear). Each slice is cut into blocks (64 px for the head slice: 64
blocks; 32 px for the small one: 16 blocks); a seeded shuffle deals each slice's blocks to the splits (60 % train,
15 % valid, 25 % test) and every crop lies inside one block (side 24 px to the block's side, at a random position),
so no pixel is shared between splits. Three crops in four come from the head slice. Crops that are nearly all
outside the field of view are kept with probability 0.05.

Labels (6 classes, CT tissue windows by Hounsfield unit; a class is present when its pixels cover at least its
fraction of the crop):

=============  ==========================================================  ========
class          pixels                                                      fraction
=============  ==========================================================  ========
outside        no data: HU <= -1500 (outside the scanner's field of view)    >= 5 %
air            -1500 < HU < -500 (room air, sinus, airway)                   >= 10 %
fat            -150 <= HU <= -30                                             >= 3 %
soft_tissue    20 <= HU <= 80 (brain, muscle, organs)                        >= 10 %
bone           HU >= 300                                                     >= 3 %
dense_bone     HU >= 700 (cortical bone)                                     >= 10 %
=============  ==========================================================  ========

Partial volume puts the boundary between air and tissue in the fat window, so ``fat`` also marks air-tissue
edges. ``dense_bone`` implies ``bone`` as pixels go (not always as labels: the fractions differ). These are physical
tissue windows, not an anatomist's annotation; the labels are exact for the pixels, so what the set tests is whether
a recipe learns grey-level texture and extent classes on CT without being told the window.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from csvfolder import ensure_csv_folder
from PIL import Image
from realmosaic import _package_dir

VERSION = 1
CLASS_NAMES = ["outside", "air", "fat", "soft_tissue", "bone", "dense_bone"]
SIZES = {"train": 1000, "valid": 300, "test": 600}
SPLIT_SHARES = {"train": 0.6, "valid": 0.15, "test": 0.25}
BLOCKS, MIN_SIDE, OUT = (64, 32), 24, 48
"""Block side of each slice (head, spine), the smallest crop side, the output side (px)."""
WINDOW = (-1000.0, 1000.0)
THRESHOLDS = {"outside": 0.05, "air": 0.10, "fat": 0.03, "soft_tissue": 0.10, "bone": 0.03, "dense_bone": 0.10}


def pixel_classes(hu: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean (H, W) maps of the classes of the module docstring for a slice in Hounsfield units."""
    return {
        "outside": hu <= -1500,
        "air": (hu > -1500) & (hu < -500),
        "fat": (hu >= -150) & (hu <= -30),
        "soft_tissue": (hu >= 20) & (hu <= 80),
        "bone": hu >= 300,
        "dense_bone": hu >= 700,
    }


def read_slices() -> list[np.ndarray]:
    """The two CT slices in Hounsfield units, float64."""
    import pydicom

    tests = _package_dir("pydicom") / "data" / "test_files"
    with warnings.catch_warnings():  # the J2K file's pixel representation warning; its values are HU as stored
        warnings.simplefilter("ignore")
        head = pydicom.dcmread(tests / "J2K_pixelrep_mismatch.dcm").pixel_array.astype(np.float64)
        spine = pydicom.dcmread(tests / "CT_small.dcm")
    spine_hu = spine.pixel_array * float(spine.RescaleSlope) + float(spine.RescaleIntercept)
    return [head, spine_hu]


def windowed(hu: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the wide window, -1000 HU black to +1000 HU white."""
    lo, hi = WINDOW
    grey = (np.clip((hu - lo) / (hi - lo), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def split_blocks(shape: tuple[int, int], block: int, seed: int, index: int) -> dict[str, list[tuple[int, int]]]:
    """Top-left corners of slice ``index``'s ``block``-px blocks, shuffled with ``seed`` and dealt to the splits."""
    corners = [(y, x) for y in range(0, shape[0] - block + 1, block) for x in range(0, shape[1] - block + 1, block)]
    order = np.random.default_rng([seed, VERSION, index]).permutation(len(corners))
    out: dict[str, list[tuple[int, int]]] = {}
    start = 0
    for i, (split, share) in enumerate(SPLIT_SHARES.items()):
        stop = len(corners) if i == len(SPLIT_SHARES) - 1 else start + round(share * len(corners))
        out[split] = [corners[j] for j in order[start:stop]]
        start = stop
    return out


def generate_split(split: str, count: int, slices: list[np.ndarray], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(count, 48, 48, 3) uint8 crops inside the split's blocks and their (count, 6) 0/1 labels."""
    rng = np.random.default_rng([seed, list(SPLIT_SHARES).index(split), VERSION, 20])
    blocks = [split_blocks(s.shape, BLOCKS[k], seed, k)[split] for k, s in enumerate(slices)]
    maps = [pixel_classes(s) for s in slices]
    shown = [windowed(s) for s in slices]
    images = np.zeros((count, OUT, OUT, 3), dtype=np.uint8)
    labels = np.zeros((count, len(CLASS_NAMES)), dtype=np.float32)
    i = 0
    while i < count:
        k = 0 if rng.random() < 0.75 else 1
        by, bx = blocks[k][int(rng.integers(len(blocks[k])))]
        side = int(rng.integers(MIN_SIDE, BLOCKS[k] + 1))
        y, x = by + int(rng.integers(0, BLOCKS[k] - side + 1)), bx + int(rng.integers(0, BLOCKS[k] - side + 1))
        window = (slice(y, y + side), slice(x, x + side))
        fractions = {name: float(maps[k][name][window].mean()) for name in CLASS_NAMES}
        if fractions["outside"] > 0.95 and rng.random() > 0.05:
            continue
        images[i] = np.asarray(Image.fromarray(shown[k][window]).resize((OUT, OUT), Image.BILINEAR))
        labels[i] = [float(fractions[name] >= THRESHOLDS[name]) for name in CLASS_NAMES]
        i += 1
    return images, labels


def ensure_ctregions(root: str | Path, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write the dataset (PNGs + ``labels.csv`` in the ``csv`` dataset layout) under ``root`` once; return it."""
    sizes = dict(sizes or SIZES)
    counts = "-".join(str(sizes[s]) for s in SPLIT_SHARES)
    folder = Path(root) / f"ctregions-v{VERSION}-seed{seed}-n{counts}"
    slices: list[np.ndarray] = []

    def make_split(split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
        if not slices:
            slices.extend(read_slices())
        return generate_split(split, count, slices, seed)

    meta = {"version": VERSION, "seed": seed, "sources": "pydicom 3.0.2: J2K_pixelrep_mismatch.dcm, CT_small.dcm"}
    return ensure_csv_folder(folder, CLASS_NAMES, make_split, sizes, meta)


if __name__ == "__main__":
    import sys

    print(ensure_ctregions(sys.argv[1] if len(sys.argv) > 1 else "runs/evidence_holdout/data"))
