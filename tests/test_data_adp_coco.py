"""ADP on a release-shaped folder (CSV + PNGs + splits/*.npy) and COCO on a tiny instances JSON via pycocotools."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from probmcl_med import DATASETS
from probmcl_med.data import ADP_MEAN, ADP_STD
from probmcl_med.errors import DataError

CODES = ["E", "E.M", "E.M.S", "E.M.C", "E.T", "C", "C.D", "C.D.I", "M"]


def _png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)


@pytest.fixture()
def adp_root(tmp_path):
    """tmp/ADP V1.0 Release/{CSV, img_res_1um_bicubic/*.png, splits/*.npy}: 12 patches, hierarchy-consistent labels."""
    release = tmp_path / "ADP V1.0 Release"
    rng = np.random.default_rng(0)
    leaves = rng.integers(0, 2, (12, len(CODES)))
    labels = np.zeros_like(leaves)
    for j, code in enumerate(CODES):  # a code is present when it or any descendant is drawn
        labels[:, j] = leaves[:, [k for k, c in enumerate(CODES) if c == code or c.startswith(code + ".")]].max(1)
    labels[5] = 0  # one patch with no tissue label at all
    labels[7] = 0
    labels[7, CODES.index("M")] = 1  # only an L1 code
    lines = ["Patch Names," + ",".join(CODES)]
    for i in range(12):
        _png(release / "img_res_1um_bicubic" / f"p{i:02d}.png", i)
        lines.append(f"p{i:02d}.png," + ",".join(map(str, labels[i])))
    (release / "ADP_EncodedLabels_Release1_Flat.csv").write_text("\n".join(lines) + "\n")
    (release / "splits").mkdir()
    np.save(release / "splits" / "train.npy", np.arange(0, 8))
    np.save(release / "splits" / "valid.npy", np.array([8, 9]))
    np.save(release / "splits" / "test.npy", np.array([10, 11]))
    return tmp_path, release, labels


def test_adp_levels_keep_parents(adp_root):
    root, release, labels = adp_root
    expected = {"L1": ["E", "C", "M"], "L2": ["E", "E.M", "E.T", "C", "C.D", "M"], "L3": CODES}
    for level, names in expected.items():
        ds = DATASETS.get("adp")(str(root), "train", level=level)  # the parent folder works too
        assert ds.class_names == names
        cols = [CODES.index(n) for n in names]
        np.testing.assert_array_equal(ds.labels, labels[:8][:, cols])
        assert ds.items[3]["image"] == str(release / "img_res_1um_bicubic" / "p03.png")
    assert DATASETS.get("adp")(str(release), "train").mean == ADP_MEAN
    assert DATASETS.get("adp")(str(release), "train").std == ADP_STD


def test_adp_splits_from_npy_and_drop_unlabeled(adp_root):
    _, release, _ = adp_root
    assert [it["row"] for it in DATASETS.get("adp")(str(release), "valid").items] == [8, 9]
    assert [it["row"] for it in DATASETS.get("adp")(str(release), "test").items] == [10, 11]
    kept = DATASETS.get("adp")(str(release), "train", level="L2", drop_unlabeled=True)
    assert 5 not in [it["row"] for it in kept.items] and 7 in [it["row"] for it in kept.items]
    e_only = DATASETS.get("adp")(str(release), "train", classes=["E.M.S"], drop_unlabeled=True)
    assert e_only.labels.min() == 1.0


def test_adp_seeded_split_without_split_files(adp_root):
    _, release, _ = adp_root
    for f in (release / "splits").iterdir():
        f.unlink()
    rows = {
        s: [it["row"] for it in DATASETS.get("adp")(str(release), s, seed=1).items] for s in ("train", "valid", "test")
    }
    assert sorted(r for part in rows.values() for r in part) == list(range(12))
    assert (len(rows["valid"]), len(rows["test"])) == (1, 1)


def test_adp_bad_inputs(adp_root):
    root, release, _ = adp_root
    np.save(release / "splits" / "valid.npy", np.array([3, 40]))
    with pytest.raises(DataError, match=r"valid.npy: row index 40 is outside the CSV's 12 rows"):
        DATASETS.get("adp")(str(release), "valid")
    with pytest.raises(DataError, match="unknown level 'L4'"):
        DATASETS.get("adp")(str(release), "train", level="L4")
    csv = release / "ADP_EncodedLabels_Release1_Flat.csv"
    csv.write_text(csv.read_text().replace("Patch Names", "Patch"))
    with pytest.raises(DataError, match="no image column 'Patch Names'; columns found: Patch, E"):
        DATASETS.get("adp")(str(release), "train")
    with pytest.raises(DataError, match="does not exist") as err:
        DATASETS.get("adp")(str(root / "missing"), "train")
    _says_what_adp_is(str(err.value))


def _says_what_adp_is(message: str) -> None:
    """The pointer every "no ADP here" message carries: what ADP is, the paper, where to request it, the layout."""
    assert "\n" not in message
    for words in ("Atlas of Digital Pathology", "Hosseini et al., CVPR 2019", "http://www.dsp.utoronto.ca/projects/ADP/",
                  "request", "ADP V1.0 Release/", "img_res_1um_bicubic/"):  # fmt: skip
        assert words in message, words


def test_adp_without_root_says_what_adp_is_and_where_to_get_it(tmp_path):
    with pytest.raises(DataError, match="needs a folder") as err:
        DATASETS.get("adp")(None, "train")
    _says_what_adp_is(str(err.value))
    (tmp_path / "notes.txt").write_text("an empty folder")
    with pytest.raises(DataError, match=r"expected ADP_EncodedLabels_Release1_Flat\.csv") as err:
        DATASETS.get("adp")(str(tmp_path), "train")
    _says_what_adp_is(str(err.value))


def test_a_partial_download_is_named_with_its_counts_and_usable_with_skip_bad(adp_root):
    root, release, _ = adp_root
    for i in (1, 4):  # two of the eight train patches never arrived
        (release / "img_res_1um_bicubic" / f"p{i:02d}.png").unlink()
    with pytest.raises(DataError, match=r"2 of the 8 patches of the train split are not in .*p01\.png.*skip_bad"):
        DATASETS.get("adp")(str(root), "train")
    ds = DATASETS.get("adp")(str(root), "train", skip_bad=True)
    assert [it["row"] for it in ds.items] == [0, 2, 3, 5, 6, 7] and ds.num_skipped == 2
    assert len(DATASETS.get("adp")(str(root), "valid")) == 2  # the other splits are complete
    for f in (release / "img_res_1um_bicubic").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="none of the 8 patches of the train split") as err:
        DATASETS.get("adp")(str(root), "train", skip_bad=True)
    _says_what_adp_is(str(err.value))
    (release / "img_res_1um_bicubic").rmdir()
    with pytest.raises(DataError, match="img_res_1um_bicubic does not exist: the download is incomplete"):
        DATASETS.get("adp")(str(root), "train")


# ---------------------------------------------------------------------------------------------------------------------


def _coco_json(images, annotations):
    categories = [{"id": 1, "name": "person"}, {"id": 90, "name": "toothbrush"}, {"id": 3, "name": "car"}]
    return {"images": images, "annotations": annotations, "categories": categories, "info": {}, "licenses": []}


@pytest.fixture()
def coco_root(tmp_path):
    images = [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "width": 8, "height": 8} for i in (5, 2, 9)]
    anns = [
        {"id": 1, "image_id": 5, "category_id": 90, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0},
        {"id": 2, "image_id": 5, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 1},
        {"id": 4, "image_id": 2, "category_id": 3, "bbox": [1, 1, 2, 2], "area": 4, "iscrowd": 0},
    ]  # image 9 has no annotation
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train2014.json").write_text(json.dumps(_coco_json(images, anns)))
    val_images = [{"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "width": 8, "height": 8}]
    val_anns = [{"id": 9, "image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0}]
    (tmp_path / "annotations" / "instances_val2014.json").write_text(json.dumps(_coco_json(val_images, val_anns)))
    for info in images:
        _png(tmp_path / "train2014" / info["file_name"], info["id"])
    _png(tmp_path / "val2014" / val_images[0]["file_name"], 7)
    return tmp_path


def test_coco_labels_ids_in_ascending_order(coco_root):
    from pycocotools.coco import COCO

    ds = DATASETS.get("coco")(str(coco_root), "train")
    assert ds.class_names == ["person", "car", "toothbrush"]  # ids 1, 3, 90
    assert [it["row"] for it in ds.items] == [2, 5]  # image 9 (no annotation) skipped
    np.testing.assert_array_equal(ds.labels, [[0, 1, 0], [1, 0, 1]])
    reference = COCO(str(coco_root / "annotations" / "instances_train2014.json"))  # independent read
    for item, label in zip(ds.items, ds.labels, strict=True):
        cats = {a["category_id"] for a in reference.loadAnns(reference.getAnnIds(imgIds=[item["row"]]))}
        assert {[1, 3, 90][j] for j in np.flatnonzero(label)} == cats
    assert ds.items[0]["image"].endswith("train2014/COCO_train2014_000000000002.jpg")
    assert len(DATASETS.get("coco")(str(coco_root), "train", keep_empty=True)) == 3


def test_coco_valid_and_test_read_val(coco_root):
    for split in ("valid", "test"):
        ds = DATASETS.get("coco")(str(coco_root), split)
        assert [it["row"] for it in ds.items] == [7] and ds.labels.tolist() == [[1, 0, 0]]


def test_coco_file_that_is_not_coco(coco_root):
    path = coco_root / "annotations" / "instances_train2014.json"
    path.write_text(json.dumps([{"not": "coco"}]))
    with pytest.raises(DataError) as err:
        DATASETS.get("coco")(str(coco_root), "train")
    assert "not a COCO instances file" in str(err.value) and "instances_train2014.json" in str(err.value)
    assert "\n" not in str(err.value)
    path.write_text("{ broken")
    with pytest.raises(DataError, match="not valid JSON"):
        DATASETS.get("coco")(str(coco_root), "train")
