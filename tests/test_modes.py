"""Each mode's config holds the keys that mode reads: a key of another mode is an error with --set and one warning
line from a file, a mode switch names what it dropped, --epochs never gives a stage 0 epochs, and --stage is refused
where it means nothing."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from probmcl_med.cli.main import main
from probmcl_med.config import ConfigWarning, load_config, with_epochs
from probmcl_med.engine import train
from probmcl_med.errors import ConfigError

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"

NEVER_READ = {
    "asl": ["contrastive", "classifier.epochs"],
    "two-stage": ["epochs"],
    "probe": ["epochs", "contrastive"],
    "joint": ["contrastive.epochs", "contrastive.weight_decay", "classifier.epochs", "classifier.augment"],
}
"""Per mode, keys its training has no use for (written out here from the modes' documented behaviour)."""

READERS = {
    "contrastive": "two-stage, joint",
    "contrastive.epochs": "two-stage",
    "contrastive.weight_decay": "two-stage",
    "classifier.epochs": "two-stage, probe",
    "classifier.augment": "asl, two-stage, probe",
    "epochs": "asl, joint",
}

READ = {
    "asl": ["epochs", "classifier.lr", "classifier.augment", "classifier.encoder_lr", "threads", "lr_schedule"],
    "two-stage": ["contrastive.epochs", "contrastive.tau", "classifier.epochs", "classifier.encoder_lr", "threads"],
    "probe": ["classifier.epochs", "classifier.encoder_lr", "classifier.augment", "dataset.image_size"],
    "joint": ["epochs", "contrastive.batch_size", "contrastive.tau", "contrastive.lr", "classifier.lr", "threads"],
}


def _train_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``probmcl-med train ARGS`` through the real entry point: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["train", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _has(doc: dict, dotted: str) -> bool:
    node = doc
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("mode", sorted(NEVER_READ))
def test_print_config_holds_what_the_mode_reads_and_loads_back(capsys: pytest.CaptureFixture[str], mode: str) -> None:
    code, out, _ = _train_cli(capsys, "--set", f"mode={mode}", "--print-config")
    assert code == 0
    doc = yaml.safe_load(out)
    assert all(_has(doc, k) for k in READ[mode]), [k for k in READ[mode] if not _has(doc, k)]
    assert not any(_has(doc, k) for k in NEVER_READ[mode]), [k for k in NEVER_READ[mode] if _has(doc, k)]
    assert load_config(base=doc).to_dict() == doc  # what is printed is the typed model, and loads back as it was


@pytest.mark.parametrize(("mode", "key"), [(m, k) for m, keys in NEVER_READ.items() for k in keys])
def test_a_set_key_the_mode_does_not_read_is_an_error_naming_the_mode_and_its_readers(mode: str, key: str) -> None:
    value = "{}" if key == "contrastive" else "3"
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[f"mode={mode}", f"{key}={value}"])
    message = str(info.value)
    assert f"mode {mode} does not read '{key}'" in message and "\n" not in message
    assert f"(read by {READERS[key]})" in message


def test_set_epochs_in_two_stage_names_the_stage_lengths(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _train_cli(capsys, "--config", str(DEMO), "--set", "epochs=1", "--print-config")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1, err
    assert "mode two-stage's length is contrastive.epochs and classifier.epochs" in lines[0]


def test_a_file_key_the_mode_does_not_read_is_one_warning_line_and_dropped(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text("mode: two-stage\nepochs: 33\nclassifier:\n  epochs: 5\n")
    with pytest.warns(ConfigWarning) as caught:
        config = load_config(path)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert str(path) in message and "mode two-stage does not read epochs (read by asl, joint)" in message
    assert "\n" not in message and not hasattr(config, "epochs") and config.classifier.epochs == 5


def test_the_cli_prints_a_warning_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "asl.yaml"
    path.write_text("mode: asl\ncontrastive:\n  tau: 0.1\n")
    code, out, err = _train_cli(capsys, "--config", str(path), "--print-config")
    assert code == 0 and "contrastive" not in yaml.safe_load(out)
    assert [line for line in err.splitlines() if line.strip()] == [
        f"warning: {path}: mode asl does not read contrastive (read by two-stage, joint); ignored"
    ]


def test_switching_mode_says_which_keys_it_dropped() -> None:
    with pytest.warns(ConfigWarning) as caught:
        config = load_config(DEMO, overrides=["mode=asl"])
    message = str(caught[0].message)
    assert message.startswith("--set mode=asl: dropped the keys of mode two-stage")
    # classifier.encoder_lr is 0 (frozen) in two-stage and null ("the head's lr") in asl: not carried over
    for key in ("contrastive", "classifier.epochs", "classifier.encoder_lr"):
        assert key in message
    assert config.classifier.lr == 0.02 and config.classifier.loss == "asl"  # keys of the same meaning are kept
    assert config.classifier.encoder_lr is None and config.epochs == 120


def test_a_typo_is_an_error_even_inside_a_section_the_mode_does_not_read(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("mode: asl\ncontrastive:\n  temperture: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'contrastive\.temperture'; did you mean contrastive\.tau"):
        load_config(path)


def test_an_empty_config_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="the config file is empty"):
        load_config(path)
    code, _, err = _train_cli(capsys, "--config", str(path), "--output-dir", str(tmp_path / "run"))
    assert code == 1 and "is empty" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("sets", "epochs", "stage", "expected"),
    [
        (["mode=two-stage"], 12, "all", (8, 4)),  # the paper's 80 : 40
        (["mode=two-stage", "contrastive.epochs=3", "classifier.epochs=30"], 2, "all", (1, 1)),  # never a 0 stage
        (["mode=two-stage", "contrastive.epochs=3", "classifier.epochs=30"], 3, "all", (1, 2)),
        (["mode=two-stage", "contrastive.epochs=30", "classifier.epochs=3"], 3, "all", (2, 1)),
        (["mode=two-stage", "contrastive.epochs=1", "classifier.epochs=1"], 5, "all", (3, 2)),  # 2.5 rounds up
        (["mode=two-stage", "contrastive.epochs=3", "classifier.epochs=30"], 3, "contrastive", (3, 30)),
        (["mode=two-stage", "contrastive.epochs=3", "classifier.epochs=30"], 4, "classifier", (3, 4)),
        (["mode=asl"], 8, "all", 8),
        (["mode=joint"], 3, "all", 3),
        (["mode=probe"], 5, "all", 5),
    ],
)
def test_epochs_is_the_length_of_what_the_command_trains(sets: list[str], epochs: int, stage: str, expected) -> None:
    config = with_epochs(load_config(overrides=sets), epochs, stage)
    if config.mode == "two-stage":
        assert (config.contrastive.epochs, config.classifier.epochs) == expected
        assert min(expected) >= 1
    elif config.mode == "probe":
        assert config.classifier.epochs == expected
    else:
        assert config.epochs == expected


def test_epochs_one_in_two_stage_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _train_cli(capsys, "--config", str(DEMO), "--epochs", "1", "--print-config")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "--epochs 2 or more" in lines[0], err


DEMO_SMALL = [
    "dataset.options={n_train: 16, n_valid: 8, n_test: 8}",
    "contrastive.batch_size=8",
    "contrastive.mdn_hidden=[16, 8]",
    "classifier.batch_size=8",
    "workers=0",
]


def test_the_demo_config_with_epochs_2_trains_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's bar: the demo's 3 : 30 ratio with --epochs 2 trains 1 + 1 epochs (never a stage of 0)."""
    run = tmp_path / "run"
    sets = [a for s in DEMO_SMALL for a in ("--set", s)]
    code, _, err = _train_cli(capsys, "--config", str(DEMO), *sets, "--epochs", "2", "--output-dir", str(run))
    assert code == 0, err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [("contrastive", 1), ("classifier", 1)]
    assert {"nll", "pcl"} <= set(records[0]) and "asl" in records[1]  # the demo's head loss, by its name
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert (written["contrastive"]["epochs"], written["classifier"]["epochs"]) == (1, 1) and "epochs" not in written


def test_stage_contrastive_with_epochs_trains_that_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--stage contrastive --epochs 1`` on the demo config trains the contrastive stage for 1 epoch (it created
    nothing and exited 0 when --epochs split the 3 : 30 ratio instead)."""
    run = tmp_path / "run"
    sets = [a for s in DEMO_SMALL for a in ("--set", s)]
    code, _, err = _train_cli(capsys, "--config", str(DEMO), *sets, "--stage", "contrastive", "--epochs", "1",
                                "--output-dir", str(run))  # fmt: skip
    assert code == 0, err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [("contrastive", 1)]
    assert any(p.name.startswith("ckpt-s0-contrastive") for p in (run / "checkpoints").iterdir())


@pytest.mark.parametrize("mode", ["asl", "joint", "probe"])
@pytest.mark.parametrize("stage", ["contrastive", "classifier"])
def test_stage_is_refused_in_the_one_stage_modes(
    tmp_path, capsys: pytest.CaptureFixture[str], mode: str, stage: str
) -> None:
    config = load_config(overrides=[f"mode={mode}", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=f"mode {mode} trains in one stage") as info:
        train(config, stage=stage)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # refused before anything was built or written
    code, _, err = _train_cli(capsys, "--set", f"mode={mode}", "--stage", stage, "--output-dir", str(tmp_path / "cli"))
    assert code == 1 and "trains in one stage" in err


def test_stage_typo_is_refused() -> None:
    with pytest.raises(ConfigError, match="use contrastive, classifier or all"):
        train(load_config(overrides=["mode=two-stage"]), stage="classifer")


def test_shipped_configs_hold_only_their_modes_keys() -> None:
    for path in sorted(DEMO.parent.glob("*.yaml")):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConfigWarning)  # no key the mode would drop
            load_config(path)
