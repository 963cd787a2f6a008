"""Each mode's keys: --print-config shows what the mode reads, --epochs is the run's length in passes whatever the
mode, --stage is refused where it means nothing, and an old one-stage config's stage epochs are not silently dropped."""

from __future__ import annotations

import pytest
import yaml

from probmcl_med.cli.main import main
from probmcl_med.config import load_config, with_run_length
from probmcl_med.engine import train
from probmcl_med.errors import ConfigError


def _train_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``probmcl-med train ARGS`` through the real entry point: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["train", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("mode", "shown", "hidden"),
    [
        (
            "two-stage",
            ["contrastive.epochs", "contrastive.tau", "classifier.epochs", "classifier.cache_features", "threads"],
            ["epochs"],
        ),
        ("asl", ["epochs", "classifier.lr", "classifier.augment", "classifier.encoder_lr", "threads"], ["contrastive"]),
        (
            "joint",
            ["epochs", "contrastive.batch_size", "contrastive.tau", "contrastive.lr", "classifier.lr", "threads"],
            ["contrastive.epochs", "classifier.epochs", "classifier.augment", "classifier.cache_features"],
        ),
    ],
)
def test_print_config_shows_the_keys_the_mode_reads(
    capsys: pytest.CaptureFixture[str], mode: str, shown: list[str], hidden: list[str]
) -> None:
    code, out, _ = _train_cli(capsys, "--set", f"mode={mode}", "--print-config")
    assert code == 0
    doc = yaml.safe_load(out)

    def has(dotted: str) -> bool:
        node = doc
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    assert all(has(k) for k in shown), [k for k in shown if not has(k)]
    assert not any(has(k) for k in hidden), [k for k in hidden if has(k)]
    assert load_config(base=doc).mode == mode  # what is printed loads back


@pytest.mark.parametrize(
    ("sets", "epochs", "expected"),
    [
        (["mode=two-stage"], 12, (8, 4, None)),  # the paper's 80 : 40
        (["mode=two-stage", "contrastive.epochs=3", "classifier.epochs=30"], 10, (1, 9, None)),
        (["mode=two-stage", "contrastive.epochs=1", "classifier.epochs=1"], 5, (3, 2, None)),  # 2.5 rounds up
        (["mode=two-stage", "contrastive.epochs=0", "classifier.epochs=7"], 4, (0, 4, None)),
        (["mode=asl"], 8, (None, None, 8)),
        (["mode=joint"], 3, (None, None, 3)),
    ],
)
def test_epochs_is_the_runs_length_in_passes_whatever_the_mode(
    capsys: pytest.CaptureFixture[str], sets: list[str], epochs: int, expected: tuple
) -> None:
    config = with_run_length(load_config(overrides=sets), epochs)
    c, k, total = expected
    if total is None:
        assert (config.contrastive.epochs, config.classifier.epochs) == (c, k) and c + k == epochs
    else:
        assert config.epochs == total
    code, out, _ = _train_cli(
        capsys, *(a for s in sets for a in ("--set", s)), "--epochs", str(epochs), "--print-config"
    )
    doc = yaml.safe_load(out)
    assert code == 0
    if total is None:
        assert (doc["contrastive"]["epochs"], doc["classifier"]["epochs"]) == (c, k)
    else:
        assert doc["epochs"] == total


def test_epochs_without_a_ratio_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match=r"classifier\.epochs=0"):  # a config file cannot say it (test_config_strict)
        load_config(overrides=["mode=two-stage", "contrastive.epochs=0", "classifier.epochs=0"])
    config = load_config(overrides=["mode=two-stage", "contrastive.epochs=0", "classifier.epochs=1"])
    zero = config.model_copy(update={"classifier": config.classifier.model_copy(update={"epochs": 0})})
    with pytest.raises(ConfigError, match="both are 0"):  # a config built in code can
        with_run_length(zero, 4)


@pytest.mark.parametrize("mode", ["asl", "joint"])
@pytest.mark.parametrize("stage", ["contrastive", "classifier"])
def test_stage_is_refused_in_the_one_stage_modes(
    tmp_path, capsys: pytest.CaptureFixture[str], mode: str, stage: str
) -> None:
    config = load_config(overrides=[f"mode={mode}", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=f"mode {mode} trains in one stage") as info:
        train(config, stage=stage)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # refused before anything was built or written
    code, _, err = _train_cli(
        capsys, "--dataset", "demo", "--set", f"mode={mode}", "--stage", stage, "--output-dir", str(tmp_path / "cli")
    )
    assert code == 1 and "trains in one stage" in err


def test_stage_typo_is_refused() -> None:
    with pytest.raises(ConfigError, match="use contrastive, classifier or all"):
        train(load_config(overrides=["mode=two-stage"]), stage="classifer")


@pytest.mark.parametrize("mode", ["asl", "joint"])
def test_a_one_stage_config_with_stage_epochs_but_no_epochs_is_refused(mode: str) -> None:
    with pytest.raises(
        ConfigError, match=r"of mode two-stage, which mode .* does not read; its length is 'epochs'"
    ) as info:
        load_config(overrides=[f"mode={mode}", "contrastive.epochs=3", "classifier.epochs=5"])
    assert "epochs: 8" in str(info.value) and "\n" not in str(info.value)
    assert load_config(overrides=[f"mode={mode}", "classifier.epochs=5", "epochs=8"]).epochs == 8
    assert load_config(overrides=["mode=two-stage", "classifier.epochs=5"]).classifier.epochs == 5


@pytest.mark.parametrize("name", ["adp", "coco", "demo"])
def test_shipped_configs_keep_their_one_stage_length(name: str) -> None:
    """Switched to a one-stage mode, a shipped config trains the two stages' budget, as it did before `epochs`."""
    config = load_config(name, overrides=["mode=asl"])
    two_stage = load_config(name)
    assert config.epochs == two_stage.contrastive.epochs + two_stage.classifier.epochs
