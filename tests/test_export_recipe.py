"""FILE.json of an export is enough to reproduce predict's probabilities (issue 21.7): the inputs are prepared here
with PIL and numpy from FILE.json alone (its mpp, slide-patch recipe, resize, stain reference and method), run with
onnxruntime, and compared with predict's patches.csv and predictions.csv."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import openslide
from PIL import Image
from test_data_stain import MACENKO_HE, OTHER_LAB, beer_lambert
from test_inference import cli, make_bundle, read_csv
from test_predict_pathology import set_bundle_entries, tissue_slide

from probmcl_med.data.imageio import SLIDES
from probmcl_med.data.stain import fit_reference


def _macenko_fit(images: list[np.ndarray], io: float, alpha: float, beta: float):
    """Stain matrix and 99th-percentile concentrations, written from FILE.json's words with numpy."""
    od = np.concatenate([-np.log((i.reshape(-1, 3).astype(np.float64) + 1) / io) for i in images])
    tissue = od[(od >= beta).all(axis=1)]
    _, vectors = np.linalg.eigh(np.cov(tissue.T))
    plane = vectors[:, 1:3]
    phi = np.arctan2(*(tissue @ plane).T[::-1])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    a, b = plane @ [np.cos(lo), np.sin(lo)], plane @ [np.cos(hi), np.sin(hi)]
    m = np.stack([a, b] if a[0] > b[0] else [b, a], axis=1)
    m *= np.where(m.sum(axis=0) < 0, -1.0, 1.0)
    m /= np.linalg.norm(m, axis=0)
    c = np.linalg.lstsq(m, od.T, rcond=None)[0].T
    return m, np.percentile(c, 99, axis=0)


def _prepare(rgb: np.ndarray, meta: dict, source) -> np.ndarray:
    """Steps 2-5 of FILE.json's preprocessing for one (H, W, 3) uint8 image; (3, S, S) float32."""
    stain = meta["preprocessing"]["stain"]["reference"]
    io, beta = stain["io"], stain["beta"]
    od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1) / io)
    if (od >= beta).all(axis=1).mean() >= stain["min_tissue_fraction"]:
        matrix, max_c = source if source is not None else _macenko_fit([rgb], io, stain["alpha"], beta)
        c = np.linalg.lstsq(matrix, od.T, rcond=None)[0].T * (np.asarray(stain["max_concentrations"]) / max_c)
        out = io * np.exp(-c @ np.asarray(stain["stain_matrix"]).T)
        rgb = np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(rgb.shape)
    size = tuple(meta["preprocessing"]["resize"]["size"])
    if rgb.shape[:2] != size:
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    x = (rgb.astype(np.float32) / 255.0 - np.asarray(meta["mean"], np.float32)) / np.asarray(meta["std"], np.float32)
    return x.transpose(2, 0, 1).astype(np.float32)


def test_file_json_reproduces_predict_on_slide_patches_and_loose_images(tmp_path):
    run = tmp_path / "run"
    make_bundle(run)
    Image.fromarray(beer_lambert(MACENKO_HE, side=64, seed=1)[0]).save(tmp_path / "reference.png")
    set_bundle_entries(run, mpp=1.0, stain_reference=fit_reference(tmp_path / "reference.png").to_dict())
    assert cli(["export", "-c", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])

    # slide patches at the model's mpp, with the slide's stain statistics
    tissue_slide(tmp_path / "slide.tif", mpp=0.25)
    assert cli(["predict", str(tmp_path / "slide.tif"), "-c", str(run), "-o", str(tmp_path / "s"), "--device",
                "cpu"]) == 0  # fmt: skip
    header, rows = read_csv(tmp_path / "s" / "patches.csv")
    slide = openslide.OpenSlide(str(tmp_path / "slide.tif"))
    m0 = float(slide.properties["openslide.mpp-x"])
    recipe, size = meta["preprocessing"]["slide_patches"], meta["input_size"]
    mpp = recipe["mpp"]
    level = max(k for k, d in enumerate(slide.level_downsamples) if m0 * d <= mpp * 1.001)
    read = round(size * mpp / (m0 * slide.level_downsamples[level]))
    patches = []
    for r in rows:
        region = slide.read_region((int(r[0]), int(r[1])), level, (read, read)).convert("RGB")
        patches.append(np.asarray(region.resize((size, size), Image.Resampling.BILINEAR)))
    picks = np.unique(np.linspace(0, len(patches) - 1, min(16, len(patches))).round().astype(int))
    stain = meta["preprocessing"]["stain"]["reference"]
    source = _macenko_fit([patches[i] for i in picks], stain["io"], stain["alpha"], stain["beta"])
    batch = np.stack([_prepare(p, meta, source) for p in patches])
    got = session.run(["probabilities"], {"image": batch})[0]
    expected = np.array([[float(v) for v in r[5 : 5 + len(meta["class_names"])]] for r in rows])
    assert header[5 : 5 + len(meta["class_names"])] == meta["class_names"]
    assert np.abs(got - expected).max() < 1e-4

    # loose images of other sizes, each fitted on itself (and a near-empty one the guard leaves alone)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (h, w) in enumerate([(100, 120), (64, 64), (32, 32), (150, 90)]):
        image = np.asarray(Image.fromarray(beer_lambert(OTHER_LAB, side=160, seed=i)[0]).resize((w, h)))
        if i == 3:
            image = np.full((h, w, 3), 236, np.uint8)
            image[:6, :6] = (120, 60, 130)
        Image.fromarray(image).save(folder / f"{i}.png")
    assert cli(["predict", str(folder), "-c", str(run), "-o", str(tmp_path / "i"), "--device", "cpu"]) == 0
    _, rows = read_csv(tmp_path / "i" / "predictions.csv")
    batch = np.stack([_prepare(np.asarray(Image.open(r[0]).convert("RGB")), meta, None) for r in rows])
    got = session.run(["probabilities"], {"image": batch})[0]
    assert np.abs(got - np.array([[float(v) for v in r[1:]] for r in rows])).max() < 1e-4
    SLIDES.clear()
