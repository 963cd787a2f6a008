"""docs/architecture.md's worked example, "Adding a mode in one file", run as written: the plugin file registers the
mode, and the mode then behaves like the built-in ones (its keys, its length, training, the bundle)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from probmcl_med.config import load_config, with_epochs
from probmcl_med.config.schema import remove_mode
from probmcl_med.engine import train
from probmcl_med.engine.modes import MODES
from probmcl_med.errors import ConfigError
from probmcl_med.plugins import load_plugin_file

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def example() -> str:
    """The python block of the section "Adding a mode in one file"."""
    section = DOC.read_text(encoding="utf-8").split("## Adding a mode in one file", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None
    return found.group(1)


@pytest.fixture
def raw_probe(tmp_path: Path):
    path = tmp_path / "myplugins" / "raw_probe.py"
    path.parent.mkdir()
    path.write_text(example(), encoding="utf-8")
    load_plugin_file(path)
    yield path
    remove_mode("raw-probe")
    MODES.pop("raw-probe", None)


def test_the_documented_mode_works_as_written(raw_probe: Path, tmp_path: Path) -> None:
    sets = ["mode=raw-probe", "encoder.name=test_resnet", "dataset.image_size=16", "dataset.augment.num_ops=1",
            "dataset.options={n_train: 16, n_valid: 8, n_test: 8}", "classifier.batch_size=8",
            "classifier.augment=false", "workers=0", f"output_dir={tmp_path / 'run'}"]  # fmt: skip
    config = with_epochs(load_config(overrides=sets), 2)
    assert config.mode == "raw-probe" and config.classifier.epochs == 2
    assert "contrastive" not in config.to_dict() and "epochs" not in config.to_dict()
    with pytest.raises(ConfigError, match=r"mode raw-probe does not read 'contrastive' \(read by two-stage, joint\)"):
        load_config(overrides=[*sets, "contrastive.tau=0.1"])
    train(config)
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [("classifier", 1), ("classifier", 2)]
    raw = torch.load(run / "model.pt", weights_only=True)
    assert raw["head"]["normalize_features"] is False and raw["config"]["mode"] == "raw-probe"
    assert yaml.safe_load((run / "config.yaml").read_text())["classifier"]["epochs"] == 2
    # the encoder was frozen (encoder_lr 0): its weights are the initial ones
    assert all(torch.equal(v, raw["encoder"]["state_dict"][k]) for k, v in _initial(config).items())


def _initial(config) -> dict[str, torch.Tensor]:
    """The encoder the run started from: the same seed, built before anything else draws."""
    from probmcl_med.models.encoders import get_encoder

    torch.manual_seed(config.seed)
    return get_encoder(config.encoder.name).state_dict()
