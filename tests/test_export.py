"""export: ONNX run by onnxruntime and TorchScript run by torch.jit against the PyTorch model; the metadata file."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from test_inference import CLASSES, MEAN, SIZE, STD, cli, make_bundle

from probmcl_med.bundle import load_model_bundle
from probmcl_med.inference.export import export_model


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_model_matches_pytorch(tmp_path, fmt, capsys):
    encoder, head = make_bundle(tmp_path / "run")[:2]
    out = tmp_path / f"model.{fmt}"
    assert cli(["export", "--checkpoint", str(tmp_path / "run"), "--format", fmt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "largest difference from PyTorch" in printed and out.is_file()
    meta = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    assert meta["class_names"] == CLASSES and meta["input_size"] == SIZE
    assert meta["mean"] == pytest.approx(MEAN) and meta["std"] == pytest.approx(STD)
    assert meta["thresholds"] == [0.5] * 3 and meta["format"] == fmt
    # an independent run: the runtime on a batch of another size than the export's example, vs the hand-run model
    x = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = torch.sigmoid(head(torch.nn.functional.normalize(encoder(x), dim=1))).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(["probabilities"], {"image": x.numpy()})[0]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            got = torch.jit.load(str(out)).eval()(x).detach().numpy()
    assert got.shape == (5, 3) and np.abs(got - expected).max() < 1e-4
    report = export_model(load_model_bundle(tmp_path / "run"), tmp_path / "again", fmt)
    assert report["max_abs_difference"] < 1e-4
    assert meta["mpp"] is None and meta["stain_reference"] is None


def test_metadata_carries_the_models_mpp_and_stain_reference(tmp_path):
    from test_predict_pathology import set_bundle_entries

    make_bundle(tmp_path / "run")
    stain = {"method": "macenko", "stain_matrix": [[0.6, 0.2], [0.7, 0.8], [0.4, 0.6]],
             "max_concentrations": [1.9, 1.0], "io": 240.0, "source": "ref.png"}  # fmt: skip
    set_bundle_entries(tmp_path / "run", mpp=0.5, stain_reference=stain)
    from probmcl_med.operating_point import save_thresholds

    save_thresholds(tmp_path / "run" / "model.pt", CLASSES, [0.3, 0.5, 0.7], rule="by hand", split="valid")
    export_model(load_model_bundle(tmp_path / "run"), tmp_path / "m.pt", "torchscript", check_batch=1)
    meta = json.loads((tmp_path / "m.pt.json").read_text())
    assert meta["mpp"] == 0.5 and meta["stain_reference"] == stain and meta["thresholds"] == [0.3, 0.5, 0.7]


def test_bad_export_requests_are_one_line_errors(tmp_path, capsys):
    make_bundle(tmp_path / "run")
    assert cli(["export", "-c", str(tmp_path / "run"), "--format", "tflite", "--out", str(tmp_path / "m")]) == 1
    assert "--format 'tflite': use onnx or torchscript" in capsys.readouterr().err
    assert cli(["export", "-c", str(tmp_path / "run"), "--out", str(tmp_path)]) == 1
    assert "is a folder; give a file name" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))
