"""CSV strictness: cell counts on every row, encodings, paths inside the root, a CSV holding both label formats."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from probmcl_med import DATASETS
from probmcl_med.errors import DataError


def _folder(root, text: str | bytes, images=("a.png", "b.png", "c.png")):
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(images):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(root / "images" / name)
    target = root / "labels.csv"
    target.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return root


def _error(root, **options) -> str:
    with pytest.raises(DataError) as err:
        DATASETS.get("csv")(str(root), "train", **options)
    message = str(err.value)
    assert "\n" not in message and "labels.csv" in message
    return message


@pytest.mark.parametrize(
    ("row", "cells"),
    [("images/b.png,1,train", 3), ("images/b.png,1,0,train,extra", 5), ("images/b.png,1,0", 3)],
    ids=["too-few", "too-many", "split-missing"],
)
def test_every_row_has_the_header_s_number_of_cells(tmp_path, row, cells):
    root = _folder(tmp_path, f"image,tumour,stroma,split\nimages/a.png,1,0,train\n{row}\n")
    message = _error(root)
    assert "row 1 (line 3)" in message and f"{cells} cells" in message
    assert "expected 4 (image, tumour, stroma, split)" in message
    assert "unknown split" not in message


def test_blank_lines_are_not_rows(tmp_path):
    root = _folder(tmp_path, "image,tumour,split\n\nimages/a.png,1,train\n\nimages/b.png,0,train\n\n")
    assert len(DATASETS.get("csv")(str(root), "train")) == 2


def test_duplicate_header_column_is_an_error(tmp_path):
    root = _folder(tmp_path, "image,tumour,tumour,split\nimages/a.png,1,0,train\n")
    assert "column 'tumour' appears twice" in _error(root)


def test_utf8_with_and_without_bom(tmp_path):
    text = "image,tumeur,stróma,split\nimages/a.png,1,0,train\nimages/b.png,0,1,train\n"
    for name, data in (("plain", text.encode("utf-8")), ("bom", b"\xef\xbb\xbf" + text.encode("utf-8"))):
        ds = DATASETS.get("csv")(str(_folder(tmp_path / name, data)), "train")
        assert ds.class_names == ["tumeur", "stróma"]  # the BOM is not part of the first column's name
        np.testing.assert_array_equal(ds.labels, [[1, 0], [0, 1]])


def test_latin1_csv_is_one_line_or_read_with_the_encoding_option(tmp_path):
    data = "image,tumeur,stróma,split\nimages/a.png,1,0,train\nimages/b.png,0,1,train\n".encode("latin-1")
    root = _folder(tmp_path, data)
    message = _error(root)
    assert "not UTF-8" in message and "line 1" in message and "iconv" in message and "encoding=" in message
    ds = DATASETS.get("csv")(str(root), "train", encoding="latin-1")
    assert ds.class_names == ["tumeur", "stróma"]
    assert "not an encoding" in _error(root, encoding="klingon")


@pytest.mark.parametrize(
    "value", ["../outside.png", "images/../../outside.png", "ABSOLUTE"], ids=["dotdot", "nested", "absolute"]
)
def test_paths_must_stay_inside_the_root(tmp_path, value):
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside)
    value = str(outside) if value == "ABSOLUTE" else value
    root = _folder(tmp_path / "data", f"image,tumour,split\nimages/a.png,1,train\n{value},0,train\n")
    message = _error(root)
    assert "row 1 (line 3)" in message and "outside the dataset folder" in message
    assert "allow_outside_root" in message
    ds = DATASETS.get("csv")(str(root), "train", allow_outside_root=True)
    assert len(ds) == 2


def test_paths_that_only_look_like_escaping_are_fine(tmp_path):
    root = _folder(tmp_path, f"image,tumour,split\nimages/../images/a.png,1,train\n{tmp_path}/images/b.png,0,train\n")
    assert len(DATASETS.get("csv")(str(root), "train")) == 2  # normalised inside; absolute but inside


BOTH = "image,labels,tumour,stroma,necrosis,split\n"


def test_both_label_formats_that_agree_use_the_columns_in_header_order(tmp_path, caplog):
    text = (
        BOTH + "images/a.png,tumour|stroma,1,1,0,train\nimages/b.png,,0,0,0,train\nimages/c.png,necrosis,0,0,1,train\n"
    )
    root = _folder(tmp_path, text)
    with caplog.at_level(logging.WARNING, logger="probmcl_med.data"):
        ds = DATASETS.get("csv")(str(root), "train")
    assert ds.class_names == ["tumour", "stroma", "necrosis"]  # header order, not sorted names
    np.testing.assert_array_equal(ds.labels, [[1, 1, 0], [0, 0, 0], [0, 0, 1]])
    notes = [r.getMessage() for r in caplog.records if "0/1" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0] and "'labels'" in notes[0]


def test_both_label_formats_that_disagree_name_the_first_differing_row(tmp_path):
    text = (
        BOTH + "images/a.png,tumour|stroma,1,1,0,train\nimages/b.png,stroma,0,0,1,train\nimages/c.png,x,0,0,1,train\n"
    )
    message = _error(_folder(tmp_path, text))
    assert "row 1 (line 3)" in message and "stroma" in message and "necrosis" in message
    assert "labels_column" in message


def test_an_explicit_labels_column_uses_the_names_only(tmp_path):
    text = BOTH + "images/a.png,tumour|stroma,1,1,0,train\nimages/b.png,stroma,0,0,1,train\n"
    ds = DATASETS.get("csv")(str(_folder(tmp_path, text)), "train", labels_column="labels")
    assert ds.class_names == ["stroma", "tumour"]
    np.testing.assert_array_equal(ds.labels, [[1, 1], [1, 0]])


def test_a_text_column_beside_the_labels_column_is_not_a_class(tmp_path):
    text = "image,labels,patient,notes,split\nimages/a.png,tumour,p1,,train\nimages/b.png,stroma,p2,,train\n"
    ds = DATASETS.get("csv")(str(_folder(tmp_path, text)), "train")
    assert ds.class_names == ["stroma", "tumour"]


def test_a_separator_in_a_class_column_is_refused_naming_it(tmp_path):
    root = _folder(tmp_path, "image,a|x,b,c,split\nimages/a.png,1,0,1,train\n")
    message = _error(root)
    assert "'a|x'" in message and "rename the column" in message and "'a_x'" in message
    root = _folder(tmp_path / "trailing", "image,a,b,\nimages/a.png,1,0,\n")  # a trailing comma: a nameless column
    assert "column 4 of the header has no name" in _error(root)


def test_class_names_round_trip_through_predict_s_labels_csv(tmp_path):
    """Names with commas, quotes, spaces and accents come back from labels.csv as the same classes, row by row."""
    from probmcl_med.inference.predict import Predictions
    from probmcl_med.inference.writers import write_predictions

    names = ['grade 2, "high"', "stróma", "a b"]
    root = _folder(tmp_path / "data", "image,x\nimages/a.png,1\n")
    images = [str(root / "images" / n) for n in ("a.png", "b.png", "c.png")]
    probs = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.1], [0.1, 0.2, 0.3]])
    thresholds = np.array([0.5, 0.5, 0.5])
    predictions = Predictions("images", [{"image": p} for p in images], probs, thresholds, names)
    write_predictions(tmp_path / "out", predictions)
    back = DATASETS.get("csv")(str(tmp_path / "out"), "train", csv="labels.csv", allow_outside_root=True,
                               valid_fraction=0.0, test_fraction=0.0)  # fmt: skip
    expected = {images[0]: {names[0], names[2]}, images[1]: {names[1]}, images[2]: set()}
    got = {item["image"]: {n for n, v in zip(back.class_names, item["label"], strict=True) if v} for item in back.items}
    assert got == expected


def test_a_link_inside_the_root_that_leads_outside_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside / "secret.png")
    root = _folder(tmp_path / "data", "image,tumour,split\nimages/a.png,1,train\nimages/link.png,0,train\n")
    (root / "images" / "link.png").symlink_to(outside / "secret.png")
    message = _error(root)
    assert "row 1 (line 3)" in message and "symbolic link" in message and "secret.png" in message
    assert "allow_outside_root" in message
    assert len(DATASETS.get("csv")(str(root), "train", allow_outside_root=True)) == 2
    (root / "linked").symlink_to(outside, target_is_directory=True)  # a linked folder leads out just the same
    (root / "labels.csv").write_text("image,tumour,split\nlinked/secret.png,1,train\n")
    assert "symbolic link" in _error(root)


def test_links_that_stay_inside_and_a_linked_root_are_fine(tmp_path):
    root = _folder(tmp_path / "data", "image,tumour,split\nimages/a.png,1,train\nimages/alias.png,0,train\n")
    (root / "images" / "alias.png").symlink_to(root / "images" / "b.png")
    (tmp_path / "root_link").symlink_to(root, target_is_directory=True)
    assert len(DATASETS.get("csv")(str(tmp_path / "root_link"), "train")) == 2


def test_backslash_paths_are_named_as_windows_paths(tmp_path):
    root = _folder(tmp_path, "image,tumour,split\nimages\\a.png,1,train\n")
    message = _error(root)
    assert "does not exist" in message and "Windows path" in message and "images/a.png" in message
