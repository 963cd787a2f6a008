"""A multi-label dataset of real photographs that a CPU trains on in minutes: ``realmosaic``.

Pixels: crops of real photographs and micrographs that ship inside installed wheels, nothing downloaded at run time:

- scikit-image 0.26.0 (``skimage/data``, BSD/CC0/public-domain images listed in its README): brick, grass, gravel
  (texture photographs), ihc (immunohistochemistry micrograph), retina (fundus photograph), hubble_deep_field,
  moon, coffee, chelsea (a cat), coins; distractors: astronaut, rocket, camera, page, text, motorcycle_left;
- scikit-learn (``sklearn/datasets/images``): china (a temple), flower.

Each image is a 2x2 grid of 32-px cells (64 x 64 RGB). A labelled class occupies one cell with a random square crop
of its source photograph (side 48-128 px of the source, resized to 32, random flips); cells without a class show a
crop of a distractor photograph (unlabelled background, like stroma around the tissue of interest).

Splits do not share pixels: every source image is cut into vertical bands, columns [0, 0.6) of its width for train
crops, [0.6, 0.75) for valid, [0.75, 1) for test.

Labels (16 classes): the 12 leaf classes above minus the distractors, plus 4 parent classes that are present exactly
when one of their children is (the ADP hierarchy: an L1 code is present when any of its L2 codes is):
``texture`` (brick, grass, gravel), ``microscopy`` (ihc, retina), ``sky`` (hubble, moon), ``tabletop`` (coffee,
chelsea, coins); china and flower have no parent.

Label statistics are synthetic but structured, from a documented topic model (the kind of co-occurrence a tissue
atlas has: tissues come in typical combinations): an image first draws a scene (``SCENES``, probabilities
``SCENE_P``), then 1-4 leaf classes (P = 0.25, 0.35, 0.25, 0.15) without replacement, each from the scene's own
classes with probability 0.85 and from all leaves otherwise. So leaves of one scene co-occur often, the parents
co-occur with their children always, and a few cross-scene pairs are rare: positive pairs at the Jaccard
threshold are meaningful, and some classes are rare (the scene probabilities are unequal).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from csvfolder import ensure_csv_folder
from PIL import Image

VERSION = 2
LEAVES = [
    "brick",
    "grass",
    "gravel",
    "ihc",
    "retina",
    "hubble",
    "moon",
    "coffee",
    "chelsea",
    "coins",
    "china",
    "flower",
]
PARENTS = {
    "texture": ["brick", "grass", "gravel"],
    "microscopy": ["ihc", "retina"],
    "sky": ["hubble", "moon"],
    "tabletop": ["coffee", "chelsea", "coins"],
}
CLASS_NAMES = [*LEAVES, *PARENTS]
SCENES = {
    "outdoor": ["brick", "grass", "gravel", "china", "flower"],
    "lab": ["ihc", "retina", "coins"],
    "night": ["hubble", "moon", "gravel"],
    "kitchen": ["coffee", "chelsea", "flower", "brick"],
}
SCENE_P = [0.4, 0.25, 0.15, 0.2]
COUNT_P = [0.25, 0.35, 0.25, 0.15]
IN_SCENE_P = 0.85
DISTRACTORS = ["astronaut", "rocket", "camera", "page", "text", "motorcycle_left"]
BANDS = {"train": (0.0, 0.6), "valid": (0.6, 0.75), "test": (0.75, 1.0)}
SIZES = {"train": 800, "valid": 200, "test": 400}
CELL, GRID = 32, 2
SKIMAGE_FILES = {
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "ihc": "ihc.png",
    "retina": "retina.jpg",
    "hubble": "hubble_deep_field.jpg",
    "moon": "moon.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "coins": "coins.png",
    "astronaut": "astronaut.png",
    "rocket": "rocket.jpg",
    "camera": "camera.png",
    "page": "page.png",
    "text": "text.png",
    "motorcycle_left": "motorcycle_left.png",
}
SKLEARN_FILES = {"china": "china.jpg", "flower": "flower.jpg"}


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # locates the package without importing it (skimage needs no deps here)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"package {name!r} not found: pip install --no-deps scikit-image==0.26.0 (see benchmarks/evidence/README.md)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def source_images() -> dict[str, np.ndarray]:
    """Every source photograph as (H, W, 3) uint8, by name."""
    skimage_data = _package_dir("skimage") / "data"
    sklearn_images = _package_dir("sklearn") / "datasets" / "images"
    paths = {k: skimage_data / v for k, v in SKIMAGE_FILES.items()}
    paths.update({k: sklearn_images / v for k, v in SKLEARN_FILES.items()})
    return {name: np.asarray(Image.open(path).convert("RGB")) for name, path in paths.items()}


def draw_leaves(rng: np.random.Generator) -> list[str]:
    """The leaf classes of one image (topic model of the module docstring)."""
    scene = list(SCENES)[rng.choice(len(SCENES), p=SCENE_P)]
    count = int(rng.choice(len(COUNT_P), p=COUNT_P)) + 1
    chosen: list[str] = []
    while len(chosen) < count:
        pool = SCENES[scene] if rng.random() < IN_SCENE_P else LEAVES
        options = [c for c in pool if c not in chosen]
        if not options:
            options = [c for c in LEAVES if c not in chosen]
        chosen.append(options[int(rng.integers(len(options)))])
    return chosen


def crop(image: np.ndarray, band: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """A random square crop inside the split's vertical band, resized to a CELL x CELL cell, random flips."""
    h, w = image.shape[:2]
    x0, x1 = int(band[0] * w), int(band[1] * w)
    side_max = min(128, x1 - x0, h)
    side = int(rng.integers(min(48, side_max), side_max + 1))
    x = int(rng.integers(x0, x1 - side + 1))
    y = int(rng.integers(0, h - side + 1))
    cell = Image.fromarray(image[y : y + side, x : x + side]).resize((CELL, CELL), Image.BILINEAR)
    out = np.asarray(cell)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    return out


def generate_split(
    split: str, count: int, sources: dict[str, np.ndarray], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(count, 64, 64, 3) uint8 images and (count, 16) 0/1 labels of one split."""
    rng = np.random.default_rng([seed, list(BANDS).index(split), VERSION])
    band = BANDS[split]
    images = np.zeros((count, GRID * CELL, GRID * CELL, 3), dtype=np.uint8)
    labels = np.zeros((count, len(CLASS_NAMES)), dtype=np.float32)
    for i in range(count):
        leaves = draw_leaves(rng)
        cells = [*leaves, *[None] * (GRID * GRID - len(leaves))]
        rng.shuffle(cells)
        for j, name in enumerate(cells):
            src = name if name is not None else DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
            r, c = divmod(j, GRID)
            images[i, r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = crop(sources[src], band, rng)
        for leaf in leaves:
            labels[i, CLASS_NAMES.index(leaf)] = 1.0
        for parent, children in PARENTS.items():
            labels[i, CLASS_NAMES.index(parent)] = float(any(c in leaves for c in children))
    return images, labels


def ensure_realmosaic(root: str | Path, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write the dataset (PNGs + ``labels.csv`` in the ``csv`` dataset layout) under ``root`` once; return it.

    ``sizes`` (images per split, default :data:`SIZES`) other than the default are part of the folder's name.
    """
    sizes = dict(sizes or SIZES)
    suffix = "" if sizes == SIZES else "-n" + "-".join(str(sizes[s]) for s in BANDS)
    folder = Path(root) / f"realmosaic-v{VERSION}-seed{seed}{suffix}"
    sources: dict[str, np.ndarray] = {}

    def make_split(split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
        if not sources:
            sources.update(source_images())
        return generate_split(split, count, sources, seed)

    return ensure_csv_folder(folder, CLASS_NAMES, make_split, sizes, {"version": VERSION, "seed": seed})


if __name__ == "__main__":
    import sys

    print(ensure_realmosaic(sys.argv[1] if len(sys.argv) > 1 else "runs/evidence/data"))
