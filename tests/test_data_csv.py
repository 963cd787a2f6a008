"""The csv dataset in both label styles, and every kind of bad input as a one-line DataError naming file and row."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from probmcl_med import DATASETS
from probmcl_med.data import MultiLabelDataset, build_eval_transform, collate_skip_none, make_loader, seeded_split
from probmcl_med.errors import DataError, UserError

torch.set_num_threads(1)


def _png(path, seed=0, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _folder(tmp_path, text, images=("a.png", "b.png", "c.png", "d.png")):
    for i, name in enumerate(images):
        _png(tmp_path / "images" / name, seed=i)
    (tmp_path / "labels.csv").write_text(text)
    return tmp_path


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, UserError)
    return message


NAMES_CSV = "image,labels,split\nimages/a.png,tumour|stroma,train\nimages/b.png,,train\nimages/c.png,stroma,valid\nimages/d.png,necrosis,test\n"
FLAGS_CSV = "filename,tumour,stroma,necrosis,split\nimages/a.png,1,1,0,train\nimages/b.png,0,0,0,train\nimages/c.png,0,1,0,val\nimages/d.png,0,0,1,test\n"


def test_names_style(tmp_path):
    root = _folder(tmp_path, NAMES_CSV)
    train = DATASETS.get("csv")(str(root), "train")
    assert train.class_names == ["necrosis", "stroma", "tumour"]  # sorted names seen
    np.testing.assert_array_equal(train.labels, [[0, 1, 1], [0, 0, 0]])
    assert train.items[0]["image"] == str(root / "images" / "a.png")
    assert [it["row"] for it in train.items] == [0, 1]
    valid = DATASETS.get("csv")(str(root), "valid")
    assert len(valid) == 1 and valid.labels.tolist() == [[0, 1, 0]]


def test_flag_style_with_auto_image_column(tmp_path):
    root = _folder(tmp_path, FLAGS_CSV)
    train = DATASETS.get("csv")(str(root), "train")
    assert train.class_names == ["tumour", "stroma", "necrosis"]  # header order
    np.testing.assert_array_equal(train.labels, [[1, 1, 0], [0, 0, 0]])
    assert len(DATASETS.get("csv")(str(root), "valid")) == 1  # "val" accepted
    sub = DATASETS.get("csv")(str(root), "train", classes=["stroma", "tumour"])
    np.testing.assert_array_equal(sub.labels, [[1, 1], [0, 0]])


def test_both_styles_give_the_same_labels(tmp_path):
    a = DATASETS.get("csv")(str(_folder(tmp_path / "a", NAMES_CSV)), "train", classes=["tumour", "stroma", "necrosis"])
    b = DATASETS.get("csv")(str(_folder(tmp_path / "b", FLAGS_CSV)), "train")
    np.testing.assert_array_equal(a.labels, b.labels)


def test_seeded_split_without_split_column(tmp_path):
    images = [f"{i}.png" for i in range(20)]
    text = "path,x\n" + "".join(f"images/{name},{i % 2}\n" for i, name in enumerate(images))
    root = _folder(tmp_path, text, images)
    parts = {s: DATASETS.get("csv")(str(root), s, seed=3) for s in ("train", "valid", "test")}
    rows = {s: {it["row"] for it in d.items} for s, d in parts.items()}
    assert sorted(len(r) for r in rows.values()) == [2, 2, 16]
    assert set().union(*rows.values()) == set(range(20))
    # the partition is numpy's seeded permutation, recomputed here
    perm = np.random.default_rng(3).permutation(20)
    assert rows["test"] == set(perm[:2].tolist()) and rows["valid"] == set(perm[2:4].tolist())
    assert seeded_split(20, "train", 3).tolist() == sorted(perm[4:].tolist())


def test_missing_root(tmp_path):
    with pytest.raises(DataError) as err:
        DATASETS.get("csv")(str(tmp_path / "nope"), "train")
    assert "nope" in _one_line(err) and "does not exist" in str(err.value)


@pytest.mark.parametrize(
    ("text", "options", "fragments"),
    [
        pytest.param(  # missing column: the columns found are named
            "picture,labels\nimages/a.png,x\n",
            {},
            ["labels.csv", "columns found: picture, labels"],
            id="no-image-column",
        ),
        pytest.param(
            "picture,labels\nimages/a.png,x\n", {"image_column": "img"}, ["no image column 'img'"], id="named-column"
        ),
        pytest.param(  # a label that is not 0/1: file, row, column, value
            "image,tumour,stroma\nimages/a.png,1,0\nimages/b.png,0,2\n",
            {},
            ["labels.csv", "row 1 (line 3)", "'stroma'", "'2'"],
            id="not-0-or-1",
        ),
        pytest.param(  # an unknown class name
            "image,labels\nimages/a.png,tumour\nimages/b.png,tumor\n",
            {"classes": ["tumour", "stroma"], "valid_fraction": 0, "test_fraction": 0},
            ["row 1 (line 3)", "'tumor'", "known classes: tumour, stroma"],
            id="unknown-class",
        ),
    ],
)
def test_bad_csv_is_one_line_naming_file_row_column(tmp_path, text, options, fragments):
    root = _folder(tmp_path, text)
    with pytest.raises(DataError) as err:
        DATASETS.get("csv")(str(root), "train", **options)
    message = _one_line(err)
    for fragment in fragments:
        assert fragment in message


def test_image_that_does_not_exist(tmp_path):
    root = _folder(tmp_path, "image,labels,split\nimages/a.png,x,train\nimages/zzz.png,x,train\n")
    with pytest.raises(DataError) as err:
        DATASETS.get("csv")(str(root), "train")
    message = _one_line(err)
    assert "zzz.png" in message and "row 1 (line 3)" in message
    ds = DATASETS.get("csv")(str(root), "train", skip_bad=True)
    assert len(ds) == 1 and ds.num_skipped == 1 and "zzz.png" in ds.skipped[0]


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_truncated_or_corrupt_image(tmp_path, damage, caplog):
    root = _folder(tmp_path, "image,labels,split\nimages/a.png,x,train\nimages/b.png,x,train\n")
    bad = root / "images" / "b.png"
    if damage == "truncated":
        _png(bad, size=64)
        bad.write_bytes(bad.read_bytes()[:-200])
    else:
        bad.write_bytes(b"this is not an image at all" * 10)
    ds = DATASETS.get("csv")(str(root), "train")
    ds.transform = build_eval_transform(16, None, None)
    assert ds[0]["image"].shape == (3, 16, 16)
    with pytest.raises(DataError) as err:
        ds[1]
    message = _one_line(err)
    assert "b.png" in message and "truncated or corrupt" in message and "row 1 (line 3)" in message
    # skip_bad: logged, counted, None; the collate drops it and says how many
    ds.skip_bad = True
    with caplog.at_level(logging.WARNING, logger="probmcl_med.data"):
        assert ds[1] is None
    assert ds.num_skipped == 1 and any("b.png" in r.getMessage() for r in caplog.records)
    batch = next(iter(make_loader(ds, batch_size=2)))
    assert batch["image"].shape == (1, 3, 16, 16) and int(batch["skipped"]) == 1


def test_collate_skip_none_all_bad_and_counts():
    assert collate_skip_none([None, None]) is None
    out = collate_skip_none([{"image": torch.zeros(3), "label": torch.ones(2)}, None])
    assert out["image"].shape == (1, 3) and int(out["skipped"]) == 1


def test_empty_dataset(tmp_path):
    root = _folder(tmp_path, "image,tumour,split\n")
    with pytest.raises(DataError) as err:
        DATASETS.get("csv")(str(root), "train")
    assert "labels.csv" in _one_line(err)
    root2 = _folder(tmp_path / "b", "image,tumour,split\nimages/a.png,1,train\n")
    with pytest.raises(DataError, match="split 'test' has no rows"):
        DATASETS.get("csv")(str(root2), "test")
    with pytest.raises(DataError, match="empty"):
        MultiLabelDataset([], ["a"])


def test_unknown_split_and_option(tmp_path):
    root = _folder(tmp_path, FLAGS_CSV)
    with pytest.raises(DataError, match="unknown split 'dev'"):
        DATASETS.get("csv")(str(root), "dev")
    with pytest.raises(DataError, match="did you mean image_column"):
        DATASETS.get("csv")(str(root), "train", image_colum="x")


def test_build_dataset_passes_skip_bad_and_options(tmp_path):
    from probmcl_med.data.datasets import build_dataset

    root = _folder(tmp_path, "image,labels,split\nimages/a.png,x,train\nimages/zzz.png,y,train\n")
    with pytest.raises(DataError, match=r"zzz.png does not exist"):
        build_dataset("csv", str(root), "train", {})
    ds = build_dataset("csv", str(root), "train", {"classes": ["x", "y"]}, skip_bad=True)
    assert len(ds) == 1 and ds.class_names == ["x", "y"] and ds.num_skipped == 1


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_factory_is_documented(name):
    entry = DATASETS.entry(name)
    assert entry.summary and len(entry.summary) < 120
