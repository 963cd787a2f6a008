"""A hold-out confirmation set of real medical scans (issue 20): ``scanmosaic``.

Built once, never looked at while the defaults were decided (benchmarks/evidence/README.md, "Issue 20"). It differs
from the deciding sets (demo, realmosaic, realhisto) in its pixels (grey-level MR, CT and ultrasound instead of
digits, photographs or H&E), its class count (8), its layout (3 x 3 cells at 84 px), its label cardinality (2.2 labels per image,
4 % of images with none) and its imbalance (prevalence 11-66 %, falling as 1 / rank).

Pixels (real scans that ship inside wheels; nothing downloaded at run time):

================  ===================================================================================================
class             source
================  ===================================================================================================
mr_head           ``matplotlib/mpl-data/sample_data/s1045.ima.gz``: a sagittal MR slice of a head (256 x 256, 16 bit)
ct_head           pydicom 3.0.2 ``pydicom/data/test_files/J2K_pixelrep_mismatch.dcm``: an axial head CT (512 x 512)
ct_spine          pydicom ``CT_small.dcm``: an axial CT through a vertebra (128 x 128)
mr_abdomen        pydicom ``examples_overlay.dcm``: an axial abdominal MR (300 x 484)
us_doppler        pydicom ``examples_jpeg2k.dcm``: a colour Doppler ultrasound of a lymph node (480 x 640, RGB)
us_cine           pydicom ``examples_ybr_color.dcm``: a 30-frame ultrasound cine (240 x 320, RGB)
epi_brain         nibabel 5.4.2 ``nibabel/tests/data/example4d.nii.gz``: an fMRI EPI run (128 x 96, 24 slices, 2 volumes)
fundus            scikit-image 0.26.0 ``skimage/data/microaneurysms.png``: a retinal fundus crop (102 x 102)
================  ===================================================================================================

Grey levels: each scan is scaled to 8 bits by its own 0.5th-99.5th percentiles (a common way to export DICOM to PNG);
grey scans are repeated on the three channels.

Images: a 3 x 3 grid of 28-px cells (84 x 84 RGB). Each cell independently holds a scan with probability 0.3, else
dark scanner noise (grey level 0-20). The scan of an occupied cell is drawn with probability proportional to
``1 / rank`` (ranks in the table's order: mr_head most often, fundus least), so the classes are imbalanced. A cell is
a random square crop of its scan (side 35-90 % of the split region's smaller side, resized to 28, random flips) that
is not mostly empty (its standard deviation above 12 grey levels, up to 20 draws), then jittered: gamma 0.7-1.4,
contrast 0.8-1.2, brightness +-20 levels, Gaussian noise of sigma 0-10 levels.

Labels (8 classes): a class is present when at least one cell shows its scan. No hierarchy, no topic model: the
co-occurrence is only what independent cells give (unlike realmosaic).

Splits share no pixel: a 2-D scan is cut into vertical bands (columns [0, 0.6) of its width for train, [0.6, 0.75)
for valid, [0.75, 1) for test); the EPI run's slices and the cine's frames are dealt to the splits instead (slices
0-13 / 14-17 / 18-23 of both volumes; frames 0-17 / 18-22 / 23-29).
"""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
from csvfolder import ensure_csv_folder
from PIL import Image
from realmosaic import _package_dir

VERSION = 1
CLASS_NAMES = ["mr_head", "ct_head", "ct_spine", "mr_abdomen", "us_doppler", "us_cine", "epi_brain", "fundus"]
SIZES = {"train": 1000, "valid": 300, "test": 600}
BANDS = {"train": (0.0, 0.6), "valid": (0.6, 0.75), "test": (0.75, 1.0)}
STACK_SPLITS = {
    "epi_brain": {"train": (0, 14), "valid": (14, 18), "test": (18, 24)},
    "us_cine": {"train": (0, 18), "valid": (18, 23), "test": (23, 30)},
}
CELL, GRID, OCCUPIED_P = 28, 3, 0.3
CLASS_P = np.array([1.0 / (k + 1) for k in range(len(CLASS_NAMES))])
CLASS_P /= CLASS_P.sum()


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale a scan to uint8 by its own 0.5th-99.5th percentiles; grey images become (H, W, 3)."""
    x = image.astype(np.float64)
    lo, hi = np.percentile(x, [0.5, 99.5])
    out = (np.clip((x - lo) / max(hi - lo, 1e-9), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=-1) if out.ndim == 2 else out


def source_scans() -> dict[str, list[np.ndarray]]:
    """Each class's scan as a list of (H, W, 3) uint8 frames (one frame for a 2-D scan)."""
    import nibabel
    import pydicom

    tests = _package_dir("pydicom") / "data" / "test_files"
    sample = _package_dir("matplotlib") / "mpl-data" / "sample_data"
    with gzip.open(sample / "s1045.ima.gz") as handle:
        mr_head = np.frombuffer(handle.read(), ">u2").reshape(256, 256)
    with warnings.catch_warnings():  # pydicom warns about the file's pixel representation; the pixels are right
        warnings.simplefilter("ignore")
        dicom = {
            name: pydicom.dcmread(tests / f).pixel_array
            for name, f in (
                ("ct_head", "J2K_pixelrep_mismatch.dcm"),
                ("ct_spine", "CT_small.dcm"),
                ("mr_abdomen", "examples_overlay.dcm"),
                ("us_doppler", "examples_jpeg2k.dcm"),
                ("us_cine", "examples_ybr_color.dcm"),
            )
        }
    epi = np.asarray(nibabel.load(_package_dir("nibabel") / "tests" / "data" / "example4d.nii.gz").dataobj)
    fundus = np.asarray(Image.open(_package_dir("skimage") / "data" / "microaneurysms.png"))
    return {
        "mr_head": [to_uint8(mr_head)],
        "ct_head": [to_uint8(dicom["ct_head"])],
        "ct_spine": [to_uint8(dicom["ct_spine"])],
        "mr_abdomen": [to_uint8(dicom["mr_abdomen"])],
        "us_doppler": [to_uint8(dicom["us_doppler"])],
        "us_cine": list(dicom["us_cine"]),  # (30, H, W, 3): pydicom returns the YBR frames as RGB
        "epi_brain": [to_uint8(np.rot90(epi[:, :, z, v])) for v in range(epi.shape[3]) for z in range(epi.shape[2])],
        "fundus": [to_uint8(fundus)],
    }


def split_frames(name: str, frames: list[np.ndarray], split: str) -> list[np.ndarray]:
    """The frames (and their region) a split may crop: a vertical band of a 2-D scan, or its share of a stack."""
    if name in STACK_SPLITS:
        lo, hi = STACK_SPLITS[name][split]
        depth = 24 if name == "epi_brain" else len(frames)
        return [f for i, f in enumerate(frames) if lo <= i % depth < hi]
    (image,) = frames
    w = image.shape[1]
    x0, x1 = int(BANDS[split][0] * w), int(BANDS[split][1] * w)
    return [image[:, x0:x1]]


def crop_cell(frames: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A jittered CELL x CELL crop of one of ``frames`` that is not mostly empty (module docstring)."""
    for _ in range(20):
        image = frames[int(rng.integers(len(frames)))]
        h, w = image.shape[:2]
        small = min(h, w)
        side = int(rng.integers(max(8, int(0.35 * small)), max(9, int(0.9 * small)) + 1))
        side = min(side, small)
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        patch = image[y : y + side, x : x + side]
        if patch.std() > 12.0:
            break
    cell = np.asarray(Image.fromarray(patch).resize((CELL, CELL), Image.BILINEAR)).astype(np.float64) / 255.0
    if rng.random() < 0.5:
        cell = cell[:, ::-1]
    if rng.random() < 0.5:
        cell = cell[::-1]
    cell = cell ** rng.uniform(0.7, 1.4)
    cell = (cell - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-20, 20) / 255.0
    cell = cell * 255.0 + rng.normal(0.0, rng.uniform(0.0, 10.0), cell.shape)
    return np.clip(cell, 0, 255).round().astype(np.uint8)


def generate_split(
    split: str, count: int, scans: dict[str, list[np.ndarray]], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(count, 84, 84, 3) uint8 images and (count, 8) 0/1 labels of one split."""
    rng = np.random.default_rng([seed, list(BANDS).index(split), VERSION, 20])
    regions = {name: split_frames(name, frames, split) for name, frames in scans.items()}
    size = GRID * CELL
    images = np.zeros((count, size, size, 3), dtype=np.uint8)
    labels = np.zeros((count, len(CLASS_NAMES)), dtype=np.float32)
    for i in range(count):
        for j in range(GRID * GRID):
            r, c = divmod(j, GRID)
            window = (slice(r * CELL, (r + 1) * CELL), slice(c * CELL, (c + 1) * CELL))
            if rng.random() < OCCUPIED_P:
                k = int(rng.choice(len(CLASS_NAMES), p=CLASS_P))
                images[i][window] = crop_cell(regions[CLASS_NAMES[k]], rng)
                labels[i, k] = 1.0
            else:
                images[i][window] = rng.integers(0, 21, (CELL, CELL, 1), dtype=np.uint8)
    return images, labels


def ensure_scanmosaic(root: str | Path, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write the dataset (PNGs + ``labels.csv`` in the ``csv`` dataset layout) under ``root`` once; return it."""
    sizes = dict(sizes or SIZES)
    counts = "-".join(str(sizes[s]) for s in BANDS)
    folder = Path(root) / f"scanmosaic-v{VERSION}-seed{seed}-n{counts}"
    scans: dict[str, list[np.ndarray]] = {}

    def make_split(split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
        if not scans:
            scans.update(source_scans())
        return generate_split(split, count, scans, seed)

    meta = {
        "version": VERSION,
        "seed": seed,
        "sources": "matplotlib s1045.ima.gz; pydicom 3.0.2 test files; "
        "nibabel 5.4.2 example4d.nii.gz; scikit-image 0.26.0 microaneurysms.png",
    }
    return ensure_csv_folder(folder, CLASS_NAMES, make_split, sizes, meta)


if __name__ == "__main__":
    import sys

    print(ensure_scanmosaic(sys.argv[1] if len(sys.argv) > 1 else "runs/evidence_holdout/data"))
