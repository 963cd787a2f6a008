"""QuPath annotations in (issue 21.6): GeoJSON written the way QuPath exports it, on the real CMU slide, becomes a
slides-dataset manifest whose labels match shapely's exact coverage; data check reads it and a short training run
trains on it as is."""

from __future__ import annotations

import csv
import json

import pytest
from shapely.geometry import box, shape
from shapely.ops import unary_union
from slide_files import cmu_slide
from test_inference import cli, error_line

from probmcl_med.data.annotations import annotation_patches, qupath_class
from probmcl_med.data.imageio import SLIDES

MPP, PATCH = 1.0, 64  # the CMU crop is 0.499 um/px: a patch is a 128-pixel level-0 region


def _feature(coordinates, classification, object_type="annotation", kind="Polygon"):
    properties = {"objectType": object_type, "isLocked": False}
    if classification is not None:
        properties["classification"] = classification
    return {"type": "Feature", "id": "7b0c2d52-7a1e-4d3f-9a6c-0f1e2d3c4b5a",
            "geometry": {"type": kind, "coordinates": coordinates}, "properties": properties}  # fmt: skip


def qupath_export(path):
    """A FeatureCollection as QuPath 0.4+ exports it (and one feature in the pre-0.4 class style)."""
    epidermis = [[[700, 300], [1500, 300], [1500, 900], [700, 900], [700, 300]]]
    dermis = [[[600, 800], [2000, 800], [2000, 2000], [600, 2000], [600, 800]],
              [[1000, 1200], [1400, 1200], [1400, 1600], [1000, 1600], [1000, 1200]]]  # a hole  # fmt: skip
    tumour = [[[1600, 1700], [2100, 1750], [2050, 2400], [1650, 2300], [1600, 1700]]]
    features = [
        _feature(epidermis, {"name": "Epidermis", "color": [255, 200, 0]}),
        _feature(dermis, {"name": "Dermis", "color": [0, 150, 0]}),
        _feature(tumour, {"names": ["Tumor", "Positive"], "color": [200, 0, 0]}),  # a derived class, QuPath 0.4+
        _feature(
            [[[[300, 2500], [700, 2500], [700, 2900], [300, 2900], [300, 2500]]]],
            {"name": "Stroma: Inflamed", "colorRGB": -16711936},
            kind="MultiPolygon",
        ),  # pre-0.4 style
        _feature([[[900, 2300], [1200, 2300], [1200, 2600], [900, 2600], [900, 2300]]], None),  # unclassified
        _feature([[[1000, 1000], [1010, 1000], [1010, 1010], [1000, 1000]]], {"name": "Tumor"}, "detection"),
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [5, 5]},
            "properties": {"objectType": "annotation", "classification": {"name": "Epidermis"}},
        },
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=2))
    return features


def test_qupath_derived_classes_are_one_label():
    assert qupath_class({"classification": {"names": ["Tumor", "Positive"]}}) == "Tumor: Positive"
    assert qupath_class({"classification": {"name": "Tumor: Positive"}}) == "Tumor: Positive"
    assert qupath_class({"classification": {"names": ["Tumor", "Positive"]}}, "parent") == "Tumor"
    assert qupath_class({"classification": {"name": "Stroma"}}, "parent") == "Stroma"
    assert qupath_class({}) is None


def test_from_annotations_labels_match_shapely_coverage(tmp_path):
    slide = cmu_slide()
    features = qupath_export(tmp_path / "a.geojson")
    result = annotation_patches(slide, tmp_path / "a.geojson", MPP, PATCH, min_coverage=0.5)
    extent = result.plan.extent
    assert result.plan.read_size == 128 and extent == pytest.approx(128)
    assert result.ignored == {"unclassified": 1, "not an annotation: detection": 1}
    classes = {"Epidermis": [0], "Dermis": [1], "Tumor: Positive": [2], "Stroma: Inflamed": [3]}
    unions = {name: unary_union([shape(features[i]["geometry"]) for i in idx]) for name, idx in classes.items()}
    got = {(r["x"], r["y"]): sorted(r["labels"]) for r in result.rows}
    checked = 0
    for x in range(0, 2220 - 128 + 1, 128):
        for y in range(0, 2967 - 128 + 1, 128):
            cell = box(x, y, x + 128, y + 128)
            cover = {n: u.intersection(cell).area / cell.area for n, u in unions.items()}
            if any(abs(c - 0.5) < 1 / 16 for c in cover.values()):
                continue  # within the sub-grid's resolution of the threshold
            expected = sorted(n for n, c in cover.items() if c >= 0.5)
            assert got.get((x, y), []) == expected, (x, y, cover)
            checked += 1
    assert checked > 100 and any(len(v) == 2 for v in got.values())  # overlapping regions: two labels
    SLIDES.clear()


def test_from_annotations_folder_is_checked_and_trains(tmp_path, capsys):
    slide = cmu_slide()
    qupath_export(tmp_path / "a.geojson")
    out = tmp_path / "annotated"
    assert cli(["data", "from-annotations", str(slide), "--annotations", str(tmp_path / "a.geojson"), "--mpp",
                str(MPP), "--patch-size", str(PATCH), "--min-coverage", "0.5", "--out", str(out)]) == 0  # fmt: skip
    assert "labelled patches of 1 slide(s)" in capsys.readouterr().out
    with (out / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert set(rows[0]) == {"slide", "x", "y", "level", "size", "labels"}
    labels = {name for r in rows for name in r["labels"].split("|")}
    assert labels == {"Epidermis", "Dermis", "Tumor: Positive", "Stroma: Inflamed"}
    summary = json.loads((out / "annotations.json").read_text())
    assert sum(summary["classes"].values()) == sum(len(r["labels"].split("|")) for r in rows)
    assert cli(["data", "check", "--dataset", "slides", "--root", str(out)]) == 0
    # a second run replaces its own folder; a folder of other files is refused
    assert cli(["data", "from-annotations", str(slide), "-a", str(tmp_path / "a.geojson"), "--mpp", "1",
                "--patch-size", "64", "--derived", "parent", "--out", str(out)]) == 0  # fmt: skip
    with (out / "manifest.csv").open() as handle:
        parents = {name for r in csv.DictReader(handle) for name in r["labels"].split("|")}
    assert parents == {"Epidermis", "Dermis", "Tumor", "Stroma"}
    (out / "notes.txt").write_text("which slides I annotated")  # the user's file: refused, then kept
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = ["data", "from-annotations", str(slide), "-a", str(tmp_path / "a.geojson"), "--mpp", "1", "--patch-size",
             "64", "--derived", "parent", "--out", str(out)]  # fmt: skip
    capsys.readouterr()
    assert cli(again) == 1
    refusal = error_line(capsys)
    assert "notes.txt" in refusal and "--overwrite" in refusal
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert cli([*again, "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "which slides I annotated" and (out / "manifest.csv").is_file()
    from test_train import tiny_config

    from probmcl_med.bundle import read_checkpoint
    from probmcl_med.engine import train

    config = tiny_config(tmp_path, "mode=asl", "epochs=1", "dataset.name=slides", f"dataset.root={out}", "dataset.options={}",
                         "classifier.batch_size=8")  # fmt: skip
    train(config)
    assert sorted(read_checkpoint(tmp_path / "run" / "model.pt")["class_names"]) == sorted(parents)
    SLIDES.clear()
