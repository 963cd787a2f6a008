"""Resolution sanity (issue 21.1): implausible declared mpp refused in one line, --slide-mpp never ignored, the
resolution recorded in meta.json, huge grids refused before reading; the vectorised grid fractions against a loop."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from slide_files import write_pyramidal_tiff
from test_inference import cli, error_line, make_bundle
from test_predict_pathology import set_bundle_entries

from probmcl_med.data.imageio import SLIDES
from probmcl_med.data.tiling import grid_fractions


def inch_slide(path: Path, pixels_per_inch: float = 28.35) -> Path:
    """A 1024 x 1024 two-level tiled TIFF whose resolution tag says ``pixels_per_inch`` (28.35: 896 um/px)."""
    image = np.full((1024, 1024, 3), 240, np.uint8)
    image[256:768, 256:768] = (200, 90, 160)
    with tifffile.TiffWriter(path) as tw:
        for k in range(2):
            tw.write(np.ascontiguousarray(image[:: 2**k, :: 2**k]), tile=(256, 256), photometric="rgb",
                     subfiletype=1 if k else 0, resolution=(pixels_per_inch / 2**k,) * 2, resolutionunit="INCH",
                     metadata=None)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("res") / "run"
    make_bundle(folder)
    return folder


def test_896_um_per_px_tiff_is_refused_in_one_line_quickly(tmp_path, run, capsys):
    slide = inch_slide(tmp_path / "slip.tif")
    start = time.monotonic()
    code = cli(["predict", str(slide), "-c", str(run), "-o", str(tmp_path / "out"), "--mpp", "0.5", "--device", "cpu"])
    elapsed = time.monotonic() - start
    assert code == 1 and elapsed < 60 and not (tmp_path / "out").exists()
    line = error_line(capsys)
    assert "896" in line and "openslide.mpp-x" in line and "TIFF resolution tag, 28.35 px per inch" in line
    assert "--slide-mpp" in line
    # the model's recorded mpp plans patches too: the same refusal
    model = tmp_path / "mpp-run"
    make_bundle(model)
    set_bundle_entries(model, mpp=1.0)
    assert cli(["predict", str(slide), "-c", str(model), "-o", str(tmp_path / "o2"), "--device", "cpu"]) == 1
    assert "896" in error_line(capsys)
    # --slide-mpp overrides it; meta.json keeps what the file declared beside what was used
    assert cli(["predict", str(slide), "-c", str(run), "-o", str(tmp_path / "ok"), "--mpp", "1", "--slide-mpp",
                "0.5", "--tissue-threshold", "0", "--device", "cpu"]) == 0  # fmt: skip
    resolution = json.loads((tmp_path / "ok" / "meta.json").read_text())["slide"]["resolution"]
    assert resolution["declared_mpp"] == pytest.approx(25400 / 28.35, rel=1e-4)
    assert "28.35 px per inch" in resolution["declared_source"]
    assert (resolution["slide_mpp"], resolution["slide_mpp_source"]) == (0.5, "--slide-mpp")
    assert (resolution["mpp"], resolution["mpp_source"], resolution["level"]) == (1.0, "--mpp", 1)
    # an implausible override is refused as well
    assert cli(["predict", str(slide), "-c", str(run), "-o", str(tmp_path / "o3"), "--mpp", "1", "--slide-mpp",
                "500", "--device", "cpu"]) == 1  # fmt: skip
    assert "--slide-mpp" in error_line(capsys)
    SLIDES.clear()


def test_slide_mpp_is_never_silently_ignored(tmp_path, run, capsys):
    slide = write_pyramidal_tiff(tmp_path / "s.tif", np.full((512, 512, 3), 200, np.uint8), levels=2, mpp=None)
    args = ["predict", str(slide), "-c", str(run), "--device", "cpu", "--tissue-threshold", "0"]
    assert cli([*args, "-o", str(tmp_path / "a"), "--slide-mpp", "0.5"]) == 1  # no mpp to plan: refused
    line = error_line(capsys)
    assert "--slide-mpp 0.5 would be ignored" in line and "--mpp" in line
    assert cli([*args, "-o", str(tmp_path / "b"), "--slide-mpp", "0.5", "--level", "1"]) == 1
    assert "--level 1 reads level pixels" in error_line(capsys)
    assert cli([*args, "-o", str(tmp_path / "c"), "--slide-mpp", "0.25", "--mpp", "0.5"]) == 0  # used: level 1
    resolution = json.loads((tmp_path / "c" / "meta.json").read_text())["slide"]["resolution"]
    assert (resolution["declared_mpp"], resolution["slide_mpp"], resolution["level"]) == (None, 0.25, 1)
    image = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(image)
    assert cli(["predict", str(image), "-c", str(run), "-o", str(tmp_path / "d"), "--slide-mpp", "0.5"]) == 1
    assert "--slide-mpp and --mask are for whole slides" in error_line(capsys)
    SLIDES.clear()


def test_model_without_mpp_records_the_declared_resolution(tmp_path, run, capsys):
    image = np.full((512, 512, 3), 240, np.uint8)
    image[128:384, 128:384] = (200, 90, 160)  # tissue: a blank slide would be a 'no tissue' result
    slide = write_pyramidal_tiff(tmp_path / "s.tif", image, levels=2, mpp=0.499)
    assert cli(["predict", str(slide), "-c", str(run), "-o", str(tmp_path / "out"), "--tissue-threshold", "0",
                "--patch-size", "128", "--device", "cpu"]) == 0  # fmt: skip
    assert "the slide declares 0.499 um/px" in capsys.readouterr().out
    resolution = json.loads((tmp_path / "out" / "meta.json").read_text())["slide"]["resolution"]
    assert resolution["declared_mpp"] == pytest.approx(0.499)
    assert resolution["declared_source"].startswith("openslide.mpp-x")
    assert (resolution["slide_mpp"], resolution["mpp"], resolution["mpp_source"], resolution["level"]) == (
        None, None, None, 0)  # fmt: skip
    SLIDES.clear()


def test_a_huge_grid_is_refused_before_anything_is_read(tmp_path, run, capsys, monkeypatch):
    import probmcl_med.data.tiling as tiling

    slide = write_pyramidal_tiff(tmp_path / "s.tif", np.full((1024, 1024, 3), 200, np.uint8), levels=1, mpp=0.5)

    def no_reading(*args, **kwargs):
        raise AssertionError("the thumbnail was read")

    monkeypatch.setattr(tiling, "slide_thumbnail", no_reading)
    monkeypatch.setattr(tiling, "MAX_GRID_PATCHES", 1000)
    assert cli(["predict", str(slide), "-c", str(run), "-o", str(tmp_path / "out"), "--patch-size", "16",
                "--stride", "8", "--device", "cpu"]) == 1  # fmt: skip
    line = error_line(capsys)
    assert "1.61e+04 candidate patches (127 x 127" in line and "1e+03 limit" in line and "--stride" in line
    SLIDES.clear()


def test_grid_fractions_equal_an_explicit_loop():
    rng = np.random.default_rng(3)
    mask = rng.random((37, 53)) < 0.4
    x0, y0 = np.arange(0, 48, 3.7), np.arange(0, 33, 2.9)
    width, height = 5.3, 4.1
    got = grid_fractions(mask, x0, y0, width, height)
    for j, y in enumerate(y0):
        for i, x in enumerate(x0):
            c0, r0 = int(np.floor(x)), int(np.floor(y))
            c1 = min(max(int(np.ceil(x + width)), c0 + 1), 53)
            r1 = min(max(int(np.ceil(y + height)), r0 + 1), 37)
            assert got[j, i] == pytest.approx(mask[r0:r1, c0:c1].mean())
