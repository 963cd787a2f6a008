"""The embedded demo dataset: deterministic, labels that match scikit-learn's digits, disjoint splits, structure."""

from __future__ import annotations

import csv
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from probmcl_med import DATASETS
from probmcl_med.data import demo

SMALL = {"n_train": 40, "n_valid": 12, "n_test": 12}


def _rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "labels.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_same_seed_same_arrays_other_seed_other_arrays():
    a_img, a_lab, a_cells = demo.generate_split("train", 25, seed=3)
    b_img, b_lab, b_cells = demo.generate_split("train", 25, seed=3)
    c_img, _, _ = demo.generate_split("train", 25, seed=4)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert a_cells == b_cells
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (25, 64, 64, 3) and a_img.dtype == np.uint8


def test_labels_and_pixels_match_sklearn_digits(tmp_path):
    folder = demo.ensure_demo(tmp_path, seed=0, **SMALL)
    digits = load_digits()
    rows = _rows(folder)
    assert len(rows) == sum(SMALL.values())
    for row in rows:
        cells = [None if c == "-" else int(c) for c in row["cells"].split("|")]
        present = {int(digits.target[c]) for c in cells if c is not None}
        assert present, "every mosaic has at least one digit"
        for d in range(10):
            assert float(row[f"digit_{d}"]) == float(d in present)
        assert float(row["loop_digit"]) == float(bool(present & {0, 6, 8, 9}))
        # The pixels: ink (distance from the pink background, green channel) block-averaged back to 8x8 must follow
        # the source digit from scikit-learn; empty cells carry no ink.
        img = np.asarray(Image.open(folder / row["image"])).astype(np.float64)
        ink = (demo.BACKGROUND[1] - img[..., 1]) / (demo.BACKGROUND[1] - demo.INK[1])
        for c, source in enumerate(cells):
            r, col = divmod(c, 2)
            block = ink[r * 32 : r * 32 + 32, col * 32 : col * 32 + 32].reshape(8, 4, 8, 4).mean(axis=(1, 3))
            if source is None:
                assert np.abs(block).max() < 0.25
            else:
                reference = digits.images[source] / 16.0
                assert np.corrcoef(block.ravel(), reference.ravel())[0, 1] > 0.97
                assert np.abs(block - reference).max() < 0.3


def test_source_digits_of_splits_are_disjoint(tmp_path):
    folder = demo.ensure_demo(tmp_path, seed=1, **SMALL)
    used: dict[str, set[int]] = {"train": set(), "valid": set(), "test": set()}
    for row in _rows(folder):
        used[row["split"]] |= {int(c) for c in row["cells"].split("|") if c != "-"}
    assert not used["train"] & used["test"]
    assert not used["train"] & used["valid"]
    assert not used["valid"] & used["test"]
    pools = demo.source_pools(1)
    assert used["train"] <= set(pools["train"].tolist())


def test_co_occurrence_structure():
    _, labels, _ = demo.generate_split("train", 600, seed=0)
    has = labels.astype(bool)
    assert not (has[:, 2] & has[:, 5]).any(), "2 and 5 never co-occur"
    p_7_given_1 = has[has[:, 1], 7].mean()
    p_7_given_not_1 = has[~has[:, 1], 7].mean()
    assert p_7_given_1 > 0.6 > 0.4 > p_7_given_not_1
    cardinality = labels[:, :10].sum(axis=1)
    assert cardinality.min() >= 1 and cardinality.max() <= 4


def test_factory_split_sizes_and_normalisation(tmp_path):
    factory = DATASETS.get("demo")
    train = factory(str(tmp_path), "train", **SMALL)
    valid = factory(str(tmp_path), "valid", **SMALL)
    test = factory(str(tmp_path), "test", **SMALL)
    assert (len(train), len(valid), len(test)) == (40, 12, 12)
    assert train.class_names == [*(f"digit_{d}" for d in range(10)), "loop_digit"]
    assert train.labels.shape == (40, 11) and train.labels.dtype == np.float32
    # The stored mean/std are the train pixels' own, recomputed here from the PNG files.
    pixels = np.concatenate([np.asarray(Image.open(it["image"])).reshape(-1, 3) for it in train.items]) / 255.0
    np.testing.assert_allclose(train.mean, pixels.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(train.std, pixels.std(axis=0), atol=1e-6)


def test_unknown_option_is_one_line_error(tmp_path):
    from probmcl_med.errors import DataError

    with pytest.raises(DataError, match="unknown option"):
        DATASETS.get("demo")(str(tmp_path), "train", n_trian=5)


def _generate(root: str) -> str:
    return str(demo.ensure_demo(root, seed=2, **SMALL))


def test_concurrent_first_use_is_safe(tmp_path):
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        folders = pool.map(_generate, [str(tmp_path)] * 2)
    assert folders[0] == folders[1]
    folder = Path(folders[0])
    assert len(_rows(folder)) == sum(SMALL.values())
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers
