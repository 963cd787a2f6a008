"""dataset.skip_bad with every image of a split unreadable: one line naming the CSV, not a traceback or a silent
untrained model."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_inference import CLASSES, cli, make_csv_dataset

TRAIN = ["encoder.name=test_resnet", "dataset.name=csv", "dataset.image_size=32", "dataset.skip_bad=true",
         "classifier.batch_size=4", "workers=0", "amp=false"]  # fmt: skip
LENGTH = {"asl": ["epochs=1"], "two-stage": ["contrastive.epochs=1", "classifier.epochs=1", "contrastive.batch_size=4",
                                             "contrastive.mdn_hidden=[16, 8]"]}  # fmt: skip


def _break(rows: dict, split: str) -> None:
    for path, _ in rows[split]:
        path.write_bytes(b"not an image")


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err and "terminating" not in err, err
    return lines[0]


@pytest.mark.parametrize(("mode", "split"), [("asl", "train"), ("two-stage", "train"), ("asl", "valid")])
def test_train_with_every_image_of_a_split_bad(tmp_path: Path, capsys, mode: str, split: str) -> None:
    rows = make_csv_dataset(tmp_path / "data", n_per_split=4)
    _break(rows, split)
    sets = [
        *TRAIN,
        *LENGTH[mode],
        f"mode={mode}",
        f"dataset.root={tmp_path / 'data'}",
        f"output_dir={tmp_path / 'run'}",
    ]
    assert cli(["train", *(a for s in sets for a in ("--set", s))]) == 1
    line = _error(capsys)
    assert str(tmp_path / "data" / "labels.csv") in line and "every sample" in line and "skip_bad" in line
    assert not (tmp_path / "run" / "model.pt").exists()


def test_evaluate_with_every_image_of_the_split_bad(tmp_path: Path, capsys) -> None:
    from probmcl_med.bundle import DatasetSource, save_model_bundle
    from probmcl_med.config import load_config
    from probmcl_med.models.encoders import get_encoder
    from probmcl_med.models.heads import LinearHead

    rows = make_csv_dataset(tmp_path / "data", n_per_split=4)
    config = load_config(overrides=[*TRAIN, f"dataset.root={tmp_path / 'data'}"]).to_dict()
    encoder = get_encoder("test_resnet").eval()
    head = LinearHead(encoder.num_features, 3)
    save_model_bundle(tmp_path / "run", encoder=encoder, head=head, class_names=CLASSES, mean=(0.5,) * 3,
                      std=(0.25,) * 3, image_size=32, encoder_name="test_resnet",
                      dataset=DatasetSource.from_config_dict(config), training_config=config)  # fmt: skip
    _break(rows, "test")
    assert cli(["evaluate", "-c", str(tmp_path / "run"), "--split", "test", "--device", "cpu"]) == 1
    line = _error(capsys)
    assert str(tmp_path / "data" / "labels.csv") in line and "every sample" in line
