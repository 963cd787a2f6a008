"""`data check`: statistics against explicit loops, unreadable files listed with rows, the CLI (tables and --json)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import typer
from PIL import Image
from typer.testing import CliRunner

from probmcl_med import DATASETS
from probmcl_med.cli.data import register
from probmcl_med.data.checks import check_dataset, label_statistics


def _root(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (30, 4))
    lines = ["image,a,b,c,d,split"]
    for i in range(30):
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(path)
        lines.append(f"img/{i}.png," + ",".join(map(str, labels[i])) + ",train")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path, labels.astype(np.float32)


def test_label_statistics_against_loops():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (50, 5))
    names = list("abcde")
    stats = label_statistics(y, names, top_pairs=20)
    assert stats["positives"] == {n: int(sum(row[j] for row in y)) for j, n in enumerate(names)}
    assert stats["label_cardinality"] == sum(sum(row) for row in y) / 50
    assert stats["images_without_label"] == sum(1 for row in y if not any(row))
    counts = {
        (names[i], names[j]): sum(1 for row in y if row[i] and row[j]) for i, j in itertools.combinations(range(5), 2)
    }
    listed = {(p["a"], p["b"]): p["count"] for p in stats["top_pairs"]}
    assert listed == {k: v for k, v in counts.items() if v > 0}
    assert [p["count"] for p in stats["top_pairs"]] == sorted(listed.values(), reverse=True)


def test_check_lists_every_unreadable_file_with_its_row(tmp_path):
    root, labels = _root(tmp_path)
    (root / "img" / "4.png").write_bytes(b"garbage")
    (root / "img" / "9.png").unlink()
    ds = DATASETS.get("csv")(str(root), "train", skip_bad=True)
    result = check_dataset(ds, workers=2)
    assert result["images"] == 29 and result["checked"] == 29 and not result["ok"]
    assert [u["row"] for u in result["unreadable"]] == [4]
    assert "4.png" in result["unreadable"][0]["error"] and "line 6" in result["unreadable"][0]["where"]
    assert len(result["skipped_at_load"]) == 1 and "9.png" in result["skipped_at_load"][0]
    assert result["image_sizes"] == {"min_height": 12, "max_height": 12, "min_width": 10, "max_width": 10}
    kept = np.delete(labels, 9, axis=0)
    assert result["positives"] == {c: int(kept[:, j].sum()) for j, c in enumerate("abcd")}
    sampled = check_dataset(ds, sample=5)
    assert sampled["checked"] == 5 and sampled["sampled"]


def _app():
    app = typer.Typer()

    @app.callback()
    def _root_cb() -> None:
        """test app"""

    register(app)
    return app


def test_cli_json_and_exit_codes(tmp_path):
    root, _ = _root(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(_app(), ["data", "check", "--dataset", "csv", "--root", str(root), "--split", "train", "--json"])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.output)
    assert doc[0]["images"] == 30 and doc[0]["split"] == "train" and doc[0]["unreadable"] == []
    (root / "img" / "2.png").write_bytes(b"garbage")
    bad = runner.invoke(_app(), ["data", "check", "-d", "csv", "-r", str(root), "--split", "train"])
    assert bad.exit_code == 1
    assert "unreadable files (1)" in bad.output and "positives per class" in bad.output
    opts = runner.invoke(
        _app(),
        [
            "data",
            "check",
            "-d",
            "csv",
            "-r",
            str(root),
            "--split",
            "train",
            "--set",
            "dataset.options.classes=[a, b]",
            "--json",
        ],
    )
    assert json.loads(opts.output)[0]["class_names"] == ["a", "b"]
    helptext = runner.invoke(_app(), ["data", "check", "--help"])
    assert "Examples: probmcl-med data check" in helptext.output


def _retag(root, splits):
    """Rewrite the split column of labels.csv row by row from ``splits`` (a function of the row index)."""
    lines = (root / "labels.csv").read_text().splitlines()
    body = [line.rsplit(",", 1)[0] + "," + splits(i) for i, line in enumerate(lines[1:])]
    (root / "labels.csv").write_text("\n".join([lines[0], *body]) + "\n")


def test_an_empty_split_is_reported_as_training_treats_it(tmp_path):
    import warnings

    import torch

    from probmcl_med.config import load_config
    from probmcl_med.engine.inputs import RunInputs

    root, _ = _root(tmp_path)
    _retag(root, lambda i: "test" if i % 3 == 0 else "train")  # train and test rows only
    result = CliRunner().invoke(_app(), ["data", "check", "-d", "csv", "-r", str(root), "--json"])
    assert result.exit_code == 0, result.output
    by_split = {r["split"]: r for r in json.loads(result.output)}
    assert by_split["train"]["images"] == 20 and by_split["test"]["images"] == 10
    assert by_split["valid"]["empty"] and by_split["valid"]["ok"] and by_split["valid"]["images"] == 0
    assert "without validation" in by_split["valid"]["consequence"]
    # what training does with the same file: a warning, no validation set, and it goes on
    config = load_config(overrides=["dataset.name=csv", f"dataset.root={root}", "encoder.name=test_resnet"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inputs = RunInputs.build(config, torch.device("cpu"))
    assert inputs.val_ds is None and len(inputs.train_ds) == 20
    said = [str(w.message) for w in caught if "no validation split" in str(w.message)]
    assert len(said) == 1 and "\n" not in said[0]
    for cost in ("no best epoch", "no calibration", "no tuned thresholds", "dataset.options.valid_fraction"):
        assert cost in said[0]
    table = CliRunner().invoke(_app(), ["data", "check", "-d", "csv", "-r", str(root)])
    assert table.exit_code == 0 and "csv / valid: empty" in table.output


def test_an_empty_training_split_is_an_error(tmp_path):
    root, _ = _root(tmp_path)
    _retag(root, lambda i: "test")
    result = CliRunner().invoke(_app(), ["data", "check", "-d", "csv", "-r", str(root), "--json"])
    assert result.exit_code == 1
    by_split = {r["split"]: r for r in json.loads(result.output)}
    assert by_split["train"]["empty"] and not by_split["train"]["ok"] and by_split["test"]["images"] == 30


def test_a_class_without_training_positives_fails_the_check_and_warns_in_train(tmp_path, caplog):
    """The only group holding class 'd' lands in valid: data check exits 1 naming it; train warns in one line."""
    from probmcl_med.config import load_config
    from probmcl_med.engine import train

    root = tmp_path
    lines = ["image,a,b,c,d,patient"]
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        patient = f"p{i % 10}"
        d = int(patient == "p3" and i < 20)  # two images of one patient hold the class; no other image does
        lines.append(f"img/{i}.png,{i % 2},{(i // 2) % 2},1,{d},{patient}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    options = ["--set", "dataset.options.group_column=patient"]
    from probmcl_med.data.base import grouped_split

    groups = [f"p{i % 10}" for i in range(40)]
    seed = next(s for s in range(100) if 3 in grouped_split(groups, "valid", seed=s))  # the group lands in valid
    options += ["--set", f"dataset.options.seed={seed}"]
    result = CliRunner().invoke(_app(), ["data", "check", "-d", "csv", "-r", str(root), *options, "--json"])
    assert result.exit_code == 1, result.output
    by_split = {r["split"]: r for r in json.loads(result.output)}
    assert by_split["train"]["classes_without_positives"] == ["d"] and not by_split["train"]["ok"]
    assert "'d' has no positive image in the train split" in by_split["train"]["missing_classes"]
    assert by_split["test"]["missing_classes"] is not None and by_split["test"]["ok"]  # a warning there, not a fail
    assert by_split["valid"]["missing_classes"] is None
    table = CliRunner().invoke(_app(), ["data", "check", "-d", "csv", "-r", str(root), *options])
    assert table.exit_code == 1 and "no positive image in the train split" in " ".join(table.output.split())

    run = ["dataset.image_size=16", "epochs=1", "device=cpu", f"output_dir={tmp_path / 'run'}"]
    config = load_config(
        overrides=["dataset.name=csv", f"dataset.root={root}", "encoder.name=test_resnet", *options[1::2], *run]
    )
    with caplog.at_level("WARNING", logger="probmcl_med.data"):
        train(config)  # it warns and trains
    lines = [r.getMessage() for r in caplog.records if "no positive image" in r.getMessage()]
    assert len(lines) == 1 and "'d'" in lines[0] and "train split" in lines[0] and "\n" not in lines[0]
