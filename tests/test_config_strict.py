"""Config values that used to validate and then crash a run (or be silently dropped) fail at validation, one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from probmcl_med.config import load_config
from probmcl_med.errors import ConfigError


def _message(*overrides: str, path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=["mode=two-stage", *overrides] if path is None else list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_duplicate_key_names_the_key_and_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("seed: 1\ncontrastive:\n  tau: 0.1\n  lr: 0.01\n  tau: 0.5\n")
    message = _message(path=path)
    assert str(path) in message and "'tau'" in message and "lines 3 and 5" in message


def test_duplicate_top_level_section(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("classifier:\n  epochs: 3\nseed: 0\nclassifier:\n  lr: 0.1\n")
    assert "'classifier'" in _message(path=path) and "lines 1 and 4" in _message(path=path)


def test_duplicate_key_in_a_set_value() -> None:
    assert "'n_train'" in _message("dataset.options={n_train: 4, n_train: 8}")


def test_yaml_anchors_and_merges_still_work(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("dataset:\n  options: &o {seed: 3}\n  augment: {policy: flip}\nencoder:\n  options: {<<: *o}\n")
    assert load_config(path).encoder.options == {"seed": 3}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("contrastive.tau=inf", "contrastive.tau"),
        ("contrastive.tau=.nan", "contrastive.tau"),
        ("classifier.lr=inf", "classifier.lr"),
        ("contrastive.lambda=.inf", "contrastive.lambda"),
        ("classifier.gamma_neg=inf", "classifier.gamma_neg"),
        ("contrastive.mdn_input_gain=nan", "contrastive.mdn_input_gain"),
    ],
)
def test_non_finite_floats_fail(override: str, key: str) -> None:
    message = _message(override)
    assert f"'{key}'" in message and "finite" in message


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("classifier.epochs=1e23", "classifier.epochs"),
        ("contrastive.epochs=10000000", "contrastive.epochs"),
        ("contrastive.batch_size=1e12", "contrastive.batch_size"),
        ("classifier.batch_size=100000000", "classifier.batch_size"),
        ("contrastive.mdn_hidden=[0, 0]", "contrastive.mdn_hidden.0"),
        ("contrastive.mdn_hidden=[16, 10000000]", "contrastive.mdn_hidden.1"),
        ("contrastive.mdn_hidden=[]", "contrastive.mdn_hidden"),
        ("workers=-1", "workers"),
        ("workers=100000", "workers"),
        ("seed=-1", "seed"),
        ("seed=1e30", "seed"),
        ("checkpoint.keep_last=1e9", "checkpoint.keep_last"),
    ],
)
def test_absurd_sizes_fail(override: str, key: str) -> None:
    assert f"'{key}" in _message(override)


@pytest.mark.parametrize("mode", ["two-stage"])
def test_zero_classifier_epochs_fail_where_the_mode_trains_a_classifier(mode: str) -> None:
    message = _message(f"mode={mode}", "classifier.epochs=0")
    assert "classifier.epochs" in message and mode in message


@pytest.mark.parametrize("mode", ["asl", "joint"])
def test_zero_epochs_fail_in_one_stage_modes(mode: str) -> None:
    message = _message(f"mode={mode}", "epochs=0")
    assert "'epochs'" in message and mode in message
    assert load_config(overrides=[f"mode={mode}", "epochs=2"]).epochs == 2


@pytest.mark.parametrize(
    ("sets", "epochs", "fragment"),
    [
        (["mode=asl"], 0, "1 to 100000"),
        (["mode=two-stage", "contrastive.epochs=80", "classifier.epochs=40"], 1, "give --epochs 2 or more"),
        (["mode=asl"], 10**9, "1 to 100000"),
    ],
)
def test_epochs_option_is_checked_like_the_config(sets: list[str], epochs: int, fragment: str) -> None:
    from probmcl_med.config import with_epochs

    with pytest.raises(ConfigError) as info:
        with_epochs(load_config(overrides=sets), epochs)
    assert fragment in str(info.value) and f"--epochs {epochs}" in str(info.value)


def test_epochs_is_bounded() -> None:
    assert "'epochs'" in _message("epochs=1e23")


def test_zero_contrastive_epochs_are_refused_naming_mode_probe() -> None:
    """A stage of 0 epochs would record its settings without using them: the head alone is mode probe."""
    message = _message("contrastive.epochs=0")
    assert "'contrastive.epochs'" in message and "mode probe" in message


def test_non_utf8_config_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes("output_dir: runs/caf\xe9\n".encode("latin-1"))
    message = _message(path=path)
    assert str(path) in message and "UTF-8" in message
