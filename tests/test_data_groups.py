"""Grouped splits: a patient's (or slide's) patches all land in one split; data check reports groups and leakage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from probmcl_med import DATASETS
from probmcl_med.cli.main import main
from probmcl_med.data.base import grouped_split
from probmcl_med.data.checks import group_leaks
from probmcl_med.errors import DataError


def _root(tmp_path, patients: int = 40, split_of=None):
    """labels.csv with 2-7 patches per patient, a 'patient' column, optionally a split column from split_of(p)."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "img" / "x.png")
    lines = ["image,patient,tumour,stroma" + (",split" if split_of else "")]
    for p in range(patients):
        for _ in range(int(rng.integers(2, 8))):
            row = f"img/x.png,P{p:03d},{rng.integers(0, 2)},{rng.integers(0, 2)}"
            lines.append(row + (f",{split_of(p)}" if split_of else ""))
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path, len(lines) - 1


def test_grouped_split_keeps_groups_whole_and_covers_every_row():
    groups = [f"g{i % 17}" for i in range(200)]
    parts = {s: set(grouped_split(groups, s, seed=3, valid_fraction=0.2, test_fraction=0.2)) for s in
             ("train", "valid", "test")}  # fmt: skip
    assert set().union(*parts.values()) == set(range(200))
    assert sum(len(p) for p in parts.values()) == 200
    owner = {}
    for split, rows in parts.items():
        for i in rows:
            assert owner.setdefault(groups[i], split) == split  # no group in two splits
    counts = {s: len({groups[i] for i in rows}) for s, rows in parts.items()}
    assert counts == {"train": 17 - 2 * round(17 * 0.2), "valid": round(17 * 0.2), "test": round(17 * 0.2)}


def test_csv_dataset_groups_automatic_split_and_check(tmp_path):
    root, n = _root(tmp_path)
    splits = {s: DATASETS.get("csv")(str(root), s, group_column="patient") for s in ("train", "valid", "test")}
    assert sum(len(d) for d in splits.values()) == n
    assert all(d.class_names == ["tumour", "stroma"] for d in splits.values())  # the group is no class column
    seen = [{item["group"] for item in d.items} for d in splits.values()]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert group_leaks(splits) == []
    with pytest.raises(DataError, match=r"labels.csv: no group column 'patient_id'; columns found: image, patient"):
        DATASETS.get("csv")(str(root), "train", group_column="patient_id")
    text = (root / "labels.csv").read_text().splitlines()
    text[3] = "img/x.png,,1,0"
    (root / "labels.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"row 2 \(line 4\), column 'patient': empty group"):
        DATASETS.get("csv")(str(root), "train", group_column="patient")


def test_data_check_reports_groups_and_fails_on_a_leaking_split_column(tmp_path, capsys):
    (tmp_path / "ok").mkdir()
    ok_root, _ = _root(tmp_path / "ok", 12, split_of=lambda p: ("train", "valid", "test")[p % 3])
    args = ["data", "check", "-d", "csv", "-r", str(ok_root), "--set", "dataset.options.group_column=patient", "--json"]
    assert main(args) == 0
    doc = {r["split"]: r for r in json.loads(capsys.readouterr().out)}
    assert {s: doc[s]["groups"] for s in doc} == {"train": 4, "valid": 4, "test": 4}
    assert all(r["group_leaks"] == [] for r in doc.values())
    # a user split column that puts one of patient P001's patches (all in valid) in test
    (tmp_path / "bad").mkdir()
    bad_root, _ = _root(tmp_path / "bad", 12, split_of=lambda p: ("train", "valid", "test")[p % 3])
    lines = (bad_root / "labels.csv").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if ",P001," in line)
    lines[first] = lines[first].rsplit(",", 1)[0] + ",test"
    (bad_root / "labels.csv").write_text("\n".join(lines) + "\n")
    args[5] = str(bad_root)
    assert main(args) == 1
    doc = {r["split"]: r for r in json.loads(capsys.readouterr().out)}
    leak = [{"group": "P001", "splits": {"valid": sum(",P001," in line for line in lines) - 1, "test": 1}}]
    assert doc["valid"]["group_leaks"] == leak and doc["test"]["group_leaks"] == leak
    assert doc["train"]["group_leaks"] == [] and doc["train"]["ok"] and not doc["test"]["ok"]
    assert main(args[:-1]) == 1
    table = capsys.readouterr().out
    assert "groups in more than one split" in table and "P001" in table and "groups (patients / slides)" in table


def test_slides_manifest_grouped_by_slide(tmp_path):
    from slide_files import write_pyramidal_tiff

    first = write_pyramidal_tiff(tmp_path / "s0.tif", np.full((256, 256, 3), 200, np.uint8), levels=1, tile=128)
    lines = ["slide,x,y,labels"]
    for s in range(10):
        if s:
            (tmp_path / f"s{s}.tif").write_bytes(first.read_bytes())
        lines += [f"s{s}.tif,{16 * k},0,{'a' if k % 2 else 'b'}" for k in range(3 + s % 4)]
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    splits = {
        s: DATASETS.get("slides")(
            str(tmp_path), s, group_column="slide", size=32, valid_fraction=0.2, test_fraction=0.2
        )
        for s in ("train", "valid", "test")
    }
    slides = {s: {Path(item["image"]["path"]).name for item in d.items} for s, d in splits.items()}
    assert [len(v) for v in slides.values()] == [6, 2, 2]
    assert not (
        slides["train"] & slides["valid"] or slides["train"] & slides["test"] or slides["valid"] & slides["test"]
    )
    assert sum(len(d) for d in splits.values()) == len(lines) - 1 and group_leaks(splits) == []
    assert all(item["group"] == Path(item["image"]["path"]).name for d in splits.values() for item in d.items)
