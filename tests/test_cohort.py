"""predict over a cohort of slides: a folder with a blank slide and one without mpp, resuming, manifests, fail-fast."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from cohort_common import TISSUE, block_slide, cohort_model, read_rows, without
from test_inference import CLASSES, cli, error_line, hand_probs_of_arrays

from probmcl_med.data.imageio import SLIDES


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cohort")
    encoder, head = cohort_model(root / "run")
    slides = root / "slides"
    image = block_slide(slides / "a.tif", mpp=0.5)
    block_slide(slides / "blank.tif", mpp=0.5, tissue=False)
    block_slide(slides / "nompp.tif", mpp=None, seed=4)
    return {"root": root, "run": root / "run", "slides": slides, "image": image, "encoder": encoder, "head": head}


def predict(cohort: dict, out: Path, *inputs: str, extra: tuple[str, ...] = ()) -> int:
    code = cli(["predict", *inputs, "-c", str(cohort["run"]), "-o", str(out), "--device", "cpu", *extra])
    SLIDES.clear()
    return code


class Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}


def test_three_slides_two_predicted_one_failed_then_resumed(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict(cohort, out, str(cohort["slides"])) == 3
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1].startswith("3 slides: 1 predicted, 1 no tissue, 1 failed")
    failed = read_rows(out / "failed.csv")
    assert [r["id"] for r in failed] == ["nompp"]
    assert "nompp.tif records no microns per pixel" in failed[0]["reason"] and "\n" not in failed[0]["reason"]
    rows = {r["id"]: r for r in read_rows(out / "cohort.csv")}
    assert list(rows) == ["a", "blank", "nompp"]
    assert [rows[k]["status"] for k in rows] == ["predicted", "no tissue", "failed"]
    assert not (out / "nompp").exists()

    # the predicted slide: its patches are the model run by hand on the level-1 crops of the tissue block
    a = rows["a"]
    assert (a["mpp"], a["level"], a["patches"]) == ("1", "1", "64")
    assert float(a["tissue_mm2"]) == pytest.approx(512 * 512 * 0.5**2 / 1e6, rel=0.05)
    patches = read_rows(out / "a" / "patches.csv")
    coords = [(int(r["x"]), int(r["y"])) for r in patches]
    assert set(coords) == {(x, y) for x in range(512, 1024, 64) for y in range(256, 768, 64)}
    level1 = cohort["image"][::2, ::2]
    crops = [level1[y // 2 : y // 2 + 32, x // 2 : x // 2 + 32] for x, y in coords]
    probs = np.array([[float(r[c]) for c in CLASSES] for r in patches])
    np.testing.assert_allclose(probs, hand_probs_of_arrays(cohort["encoder"], cohort["head"], crops), atol=1e-6)
    for k, c in enumerate(CLASSES):  # the summary is the patches' mean and share at or above 0.5
        assert float(a[f"mean_p_{c}"]) == pytest.approx(probs[:, k].mean(), abs=1e-6)
        assert float(a[f"called_{c}"]) == pytest.approx((probs[:, k] >= 0.5).mean(), abs=1e-6)
    assert a["thresholds"].startswith("0.5 for every class") and float(a["seconds"]) > 0
    assert image_tissue_is_the_block(cohort["image"])

    # the blank slide is a result: an empty patches.csv and a record that says so
    blank = rows["blank"]
    assert (blank["patches"], blank["note"], blank["called_stroma"]) == ("0", "no tissue found", "")
    assert read_rows(out / "blank" / "patches.csv") == []
    assert json.loads((out / "blank" / "cohort.json").read_text())["summary"]["status"] == "no tissue"

    # the page: every image it shows exists (thumbnails of both, the top class's heat map of the predicted one)
    parser = Images()
    parser.feed((out / "cohort.html").read_text())
    called = (probs >= 0.5).mean(axis=0) + probs.mean(axis=0) * 1e-9  # ties broken by the mean probability
    top = CLASSES[int(np.argmax(called))]
    assert sorted(parser.sources) == ["a/heatmaps/" + top + ".png", "a/thumbnail.png", "blank/thumbnail.png"]
    assert all((out / s).is_file() for s in parser.sources)

    # rerun: the done slides are not predicted again, the failed one is tried again
    before = {k: stamps(out / k) for k in ("a", "blank")}
    assert predict(cohort, out, str(cohort["slides"])) == 3
    assert "2 done earlier with these settings, 1 to predict" in capsys.readouterr().out
    assert {k: stamps(out / k) for k in ("a", "blank")} == before
    assert without(read_rows(out / "cohort.csv"), "seconds") == without(list(rows.values()), "seconds")

    # a manifest gives the missing resolution: the failed slide is predicted, the others are still done
    manifest = tmp_path / "manifest.csv"
    rel = Path("..") / cohort["slides"].relative_to(cohort["root"].parent)
    manifest.write_text(f"slide,slide_mpp,patient\n{rel}/a.tif,,p1\n{cohort['slides']}/blank.tif,,p2\n"
                        f"{cohort['slides']}/nompp.tif,0.5,p3\n")  # fmt: skip
    assert predict(cohort, out, str(manifest)) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "3 slides: 2 predicted, 1 no tissue, 0 failed (2 done by an earlier run)"
    )
    assert {k: stamps(out / k) for k in ("a", "blank")} == before
    rows = read_rows(out / "cohort.csv")
    assert [(r["id"], r["status"], r["patient"]) for r in rows] == [
        ("a", "predicted", "p1"), ("blank", "no tissue", "p2"), ("nompp", "predicted", "p3")
    ]  # fmt: skip
    assert read_rows(out / "failed.csv") == []

    # other thresholds change every slide's outputs: all are predicted again, and the run says why
    assert predict(cohort, out, str(manifest), extra=("--threshold", "0.3")) == 0
    said = capsys.readouterr().out
    assert "0 done earlier with these settings, 3 to predict" in said
    assert "predicted again, a: thresholds was [0.5, 0.5, 0.5], now [0.3, 0.3, 0.3]" in said
    assert stamps(out / "a") != before["a"]


def image_tissue_is_the_block(image: np.ndarray) -> bool:
    """The test slide's coloured pixels are exactly the block (so the expected grid above is the truth)."""
    coloured = (image.max(axis=2) - image.min(axis=2)) > 20
    expected = np.zeros(coloured.shape, bool)
    expected[TISSUE] = True
    return bool((coloured == expected).mean() > 0.99)


def test_several_images_are_predicted_as_images_and_an_image_among_slides_fails(cohort, tmp_path, capsys):
    from test_inference import write_images

    a, b = write_images(tmp_path / "images", 2)
    assert predict(cohort, tmp_path / "imgs", str(a), str(b)) == 0
    assert [r["image"] for r in read_rows(tmp_path / "imgs" / "predictions.csv")] == [str(a), str(b)]
    assert predict(cohort, tmp_path / "mixed", str(a), str(cohort["slides"] / "blank.tif")) == 3
    (failed,) = read_rows(tmp_path / "mixed" / "failed.csv")
    assert failed["reason"] == f"{a} is an image, not a slide; predict images in a run of their own"
    capsys.readouterr()


def test_fail_fast_stops_at_the_failed_slide_with_its_line(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    nompp = cohort["slides"] / "nompp.tif"
    assert predict(cohort, out, str(nompp), str(cohort["slides"] / "a.tif"), extra=("--fail-fast",)) == 1
    line = error_line(capsys)
    assert "nompp.tif records no microns per pixel" in line
    assert not (out / "cohort.csv").exists() and not (out / "a").exists()


def test_a_folder_of_other_files_is_refused_and_left_alone(cohort, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert predict(cohort, out, str(cohort["slides"])) == 1
    assert "holds files that are not a probmcl-med cohort output" in error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_fail_fast_without_a_cohort_is_refused(cohort, tmp_path, capsys):
    out = tmp_path / "one"
    assert predict(cohort, out, str(cohort["slides"] / "a.tif"), extra=("--fail-fast",)) == 1
    assert "--fail-fast is for cohorts" in error_line(capsys)
    assert not out.exists()


def test_torchrun_two_processes_write_the_cohort_csv_of_one(cohort, tmp_path, capsys):
    from test_distributed import torchrun

    block_slide(cohort["slides"].parent / "more" / "b.tif", mpp=0.5, seed=7)
    inputs = [str(cohort["slides"]), str(cohort["slides"].parent / "more" / "b.tif")]
    one, two = tmp_path / "one", tmp_path / "two"
    assert predict(cohort, one, *inputs) == 3
    capsys.readouterr()
    done = torchrun(2, "-m", "probmcl_med.cli", "predict", *inputs, "-c", str(cohort["run"]), "-o", str(two),
                    "--device", "cpu", timeout=600)  # fmt: skip
    # rank 0 exits 3 (a slide failed), which torchrun reports as a failed worker and exits 1
    assert done.returncode == 1 and "exitcode  : 3" in done.stderr, done.stderr[-3000:]
    assert "4 slides: 2 predicted, 1 no tissue, 1 failed" in done.stderr
    ranks = {json.loads((two / s / "meta.json").read_text())["rank"] for s in ("a", "b", "blank")}
    assert ranks == {0, 1}  # both processes predicted slides
    assert without(read_rows(two / "cohort.csv"), "seconds") == without(read_rows(one / "cohort.csv"), "seconds")
    assert (two / "failed.csv").read_bytes() == (one / "failed.csv").read_bytes()
    for s in ("a", "b", "blank"):
        assert (two / s / "patches.csv").read_bytes() == (one / s / "patches.csv").read_bytes()


def test_background_writer_writes_what_the_serial_path_writes_and_records_its_failures(cohort, tmp_path):
    from probmcl_med.bundle import load_model_bundle
    from probmcl_med.inference.cohort import FAILED, PREDICTED, predict_cohort
    from probmcl_med.inference.cohort_inputs import collect_slides
    from probmcl_med.inference.cohort_state import SlideOptions, common_settings

    block_slide(cohort["slides"].parent / "more" / "c.tif", mpp=0.5, seed=8)
    slides = collect_slides([cohort["slides"] / "a.tif", cohort["slides"].parent / "more" / "c.tif"])
    bundle = load_model_bundle(cohort["run"] / "model.pt")
    options = SlideOptions(device="cpu", workers=0)
    common = common_settings(bundle, "0" * 64, options)
    outs = {}
    for background in (False, True):
        out = outs[background] = tmp_path / f"bg{background}"
        out.mkdir()
        (out / "c").write_text("a file where slide c's folder goes: its write fails")
        results = predict_cohort(bundle, slides, out, options, common, {}, background=background)
        SLIDES.clear()
        assert {r.slide.id: r.status for r in results} == {"a": PREDICTED, "c": FAILED}  # a is written while c runs
        failed = next(r for r in results if r.status == FAILED)
        assert "output path" in failed.reason and str(out / "c") in failed.reason
        assert all(r.seconds > 0 for r in results if r.status == PREDICTED)
    for file in ("patches.csv", "predictions.geojson", "cohort.json", "heatmaps/necrosis.png"):
        serial, background = (json_or_text(outs[flag] / "a" / file) for flag in (False, True))
        assert serial == background, file


def json_or_text(path: Path):
    """A file's bytes, or its JSON without the time it took (which differs from run to run)."""
    if path.suffix != ".json":
        return path.read_bytes()
    data = json.loads(path.read_text())
    data.pop("seconds", None)
    return data


def square_geojson(x0: int, y0: int, x1: int, y1: int) -> str:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {}}
    return json.dumps({"type": "FeatureCollection", "features": [feature]})


def test_a_manifest_mask_restricts_its_slide_and_a_changed_mask_predicts_it_again(cohort, tmp_path, capsys):
    (tmp_path / "a.geojson").write_text(square_geojson(512, 256, 768, 768))  # the left half of a's tissue block
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide,mask\n{cohort['slides']}/a.tif,a.geojson\n{cohort['slides']}/blank.tif,\n")
    out = tmp_path / "out"
    assert predict(cohort, out, str(manifest)) == 0
    coords = {(int(r["x"]), int(r["y"])) for r in read_rows(out / "a" / "patches.csv")}
    assert coords == {(x, y) for x in range(512, 768, 64) for y in range(256, 768, 64)}
    (tmp_path / "a.geojson").write_text(square_geojson(768, 256, 1024, 768))  # the right half
    capsys.readouterr()
    assert predict(cohort, out, str(manifest)) == 0
    said = capsys.readouterr().out
    assert "1 done earlier with these settings, 1 to predict" in said and "predicted again, a: mask was" in said
    coords = {(int(r["x"]), int(r["y"])) for r in read_rows(out / "a" / "patches.csv")}
    assert coords == {(x, y) for x in range(768, 1024, 64) for y in range(256, 768, 64)}


def test_the_page_lists_tied_classes_by_mean_probability_as_the_top_class_is_chosen():
    from probmcl_med.inference.cohort_report import top_classes

    row = {"called_tumour": 1.0, "mean_p_tumour": 0.6, "called_stroma": 0.2, "mean_p_stroma": 0.9,
           "called_necrosis": 1.0, "mean_p_necrosis": 0.8, "called_mucosa": 1.0, "mean_p_mucosa": 0.7}  # fmt: skip
    listed = top_classes(row, ["tumour", "stroma", "necrosis", "mucosa"]).split("<br>")
    assert listed == ["necrosis 100%", "mucosa 100%", "tumour 100%"]


def test_the_cohort_table_flags_a_slide_far_from_the_training_images(cohort, tmp_path):
    """Statistics whose threshold lies below every distance (-1) flag every patch: the slide's ood_share is 1 and the
    slide is flagged, in cohort.csv and on the page; a slide without patches (blank) leaves both columns empty."""
    import dataclasses
    import shutil

    from probmcl_med.bundle import add_ood_statistics
    from probmcl_med.core.ood import fit_statistics

    run = tmp_path / "run"
    shutil.copytree(cohort["run"], run)
    width = int(cohort["head"].in_features)
    rng = np.random.default_rng(0)
    stats = fit_statistics(rng.normal(size=(50, width)), rng.normal(size=(20, width)), "valid")
    add_ood_statistics(run, dataclasses.replace(stats, threshold=-1.0))
    out = tmp_path / "out"
    slides = [str(cohort["slides"] / name) for name in ("a.tif", "blank.tif")]
    code = cli(["predict", *slides, "-c", str(run), "-o", str(out), "--device", "cpu"])
    SLIDES.clear()
    assert code == 0
    rows = {r["id"]: r for r in read_rows(out / "cohort.csv")}
    assert float(rows["a"]["ood_share"]) == 1.0 and rows["a"]["out_of_distribution"] == "yes"
    assert rows["blank"]["ood_share"] == "" and rows["blank"]["out_of_distribution"] == ""
    assert "far from the training images: 100 % of patches" in (out / "cohort.html").read_text(encoding="utf-8")
