"""predict talks: a table of each image's predicted classes (checked against the hand-run model) for up to 20 images,
and --skip-bad predicts the readable images and lists the others."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from test_inference import CLASSES, cli, hand_probs, make_bundle, read_csv, write_images


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    run = tmp_path_factory.mktemp("predict-cli") / "run"
    encoder, head = make_bundle(run)
    return run, encoder, head


def _table_rows(out: str) -> dict[str, str]:
    """``{image name: predicted cell}`` from the printed table (plain text: the test's output is not a terminal)."""
    return {m[1]: m[2].strip() for m in re.finditer(r"^(img_\d+\.png)\s{2,}(.+)$", out, flags=re.MULTILINE)}


def test_a_few_images_get_a_table_of_their_predicted_classes(model, tmp_path: Path, capsys) -> None:
    run, encoder, head = model
    paths = write_images(tmp_path / "imgs", 5, seed=11)
    assert (
        cli(["predict", str(tmp_path / "imgs"), "-c", str(run), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    )
    rows = _table_rows(capsys.readouterr().out)
    probs = hand_probs(encoder, head, paths)
    assert sorted(rows) == [p.name for p in paths]
    for path, p in zip(paths, probs, strict=True):
        order = np.argsort(-p, kind="stable")
        chosen = [k for k in order if p[k] >= 0.5]
        if chosen:
            expected = ", ".join(f"{CLASSES[k]} {p[k]:.2f}" for k in chosen)
        else:
            expected = f"none (highest: {CLASSES[order[0]]} {p[order[0]]:.2f})"
        assert rows[path.name] == expected


def test_more_than_twenty_images_get_no_table(model, tmp_path: Path, capsys) -> None:
    run, _, _ = model
    write_images(tmp_path / "many", 21)
    assert (
        cli(["predict", str(tmp_path / "many"), "-c", str(run), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    )
    out = capsys.readouterr().out
    assert _table_rows(out) == {} and "21 image(s) predicted" in out


@pytest.mark.parametrize("workers", ["0", "1"])
def test_skip_bad_predicts_the_rest_and_lists_what_it_skipped(model, tmp_path: Path, capsys, workers: str) -> None:
    run, encoder, head = model
    paths = write_images(tmp_path / "imgs", 4, seed=2)
    paths[1].write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    paths[3].write_bytes(b"not an image at all")
    args = ["predict", str(tmp_path / "imgs"), "-c", str(run), "--device", "cpu", "--workers", workers]
    assert cli([*args, "--out", str(tmp_path / "strict")]) == 1
    assert "--skip-bad" in capsys.readouterr().err and not (tmp_path / "strict").exists()
    assert cli([*args, "--out", str(tmp_path / "o"), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    header, rows = read_csv(tmp_path / "o" / "predictions.csv")
    assert header == ["image", *CLASSES]
    assert [r[0] for r in rows] == [str(paths[0]), str(paths[2])]
    expected = hand_probs(encoder, head, [paths[0], paths[2]])
    np.testing.assert_allclose(np.array([[float(v) for v in r[1:]] for r in rows]), expected, rtol=1e-5, atol=1e-6)
    assert "skipped 2 unreadable input(s)" in captured.err
    assert str(paths[1]) in captured.err and str(paths[3]) in captured.err
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert [s["image"] for s in meta["skipped"]] == [str(paths[1]), str(paths[3])]
    assert all("truncated or corrupt" in s["error"] for s in meta["skipped"])


def test_skip_bad_with_nothing_readable_is_one_line(model, tmp_path: Path, capsys) -> None:
    run, _, _ = model
    [path] = write_images(tmp_path / "imgs", 1)
    path.write_bytes(b"broken")
    args = ["predict", str(tmp_path / "imgs"), "-c", str(run), "--out", str(tmp_path / "o"), "--skip-bad"]
    assert cli([*args, "--device", "cpu"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "none of the 1 images could be read" in errors[0]
    assert not (tmp_path / "o").exists()
