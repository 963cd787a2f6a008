"""The run configuration: schema, YAML files, --set overrides, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from probmcl_med.config import AslConfig, TwoStageConfig, find_named_config, load_config, parse_override, save_config
from probmcl_med.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_is_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.dataset.name
    # The YAML mentions only keys the schema knows (no silently ignored settings).
    assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_shipped_configs_exist() -> None:
    assert {"adp", "coco", "demo"} <= {p.stem for p in CONFIGS}


def test_paper_settings_in_adp_and_coco() -> None:
    adp, coco = load_config(REPO / "configs/adp.yaml"), load_config(REPO / "configs/coco.yaml")
    for cfg in (adp, coco):
        assert cfg.contrastive.tau == 0.2 and cfg.contrastive.lambda_ == 0.3 and cfg.contrastive.lr == 1e-4
        assert cfg.contrastive.epochs == 80 and cfg.classifier.epochs == 40
        assert cfg.contrastive.batch_size == 128 and cfg.contrastive.overlap == "jaccard"
    assert adp.encoder.name == "tresnet_m" and adp.dataset.image_size == 224 and adp.contrastive.alpha == 0.5
    assert coco.encoder.name == "tresnet_l" and coco.dataset.image_size == 448 and coco.contrastive.alpha == 0.6


def test_typo_in_a_key_is_one_line_with_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("contrastive:\n  temperture: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "contrastive.temperture" in message and str(path) in message and "\n" not in message


def test_unknown_top_level_key_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError, match="did you mean classifier"):
        load_config(overrides=["clasifier.epochs=3"])


@pytest.mark.parametrize(
    ("override", "key"),
    [("contrastive.alpha=1.5", "contrastive.alpha"), ("contrastive.tau=0", "contrastive.tau"), ("seed=abc", "seed")],
)
def test_bad_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["mode=two-stage", override])
    assert f"'{key}'" in str(info.value)


def test_unregistered_similarity_lists_close_matches() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["mode=two-stage", "contrastive.similarity=corelation"])
    message = str(info.value)
    assert "contrastive.similarity" in message and "correlation" in message and "\n" not in message


def test_set_overrides_apply_in_order_and_parse_types(tmp_path: Path) -> None:
    cfg = load_config(
        overrides=[
            "mode=two-stage",
            "contrastive.tau=0.1",
            "contrastive.lr=1e-3",
            "contrastive.tau=0.05",
            "classifier.augment=false",
        ]
    )
    assert cfg.contrastive.tau == 0.05 and cfg.contrastive.lr == pytest.approx(1e-3)
    assert cfg.classifier.augment is False
    cfg2 = load_config(overrides=["mode=joint", "contrastive.lambda=0.7", "dataset.options.level=L2"])
    assert cfg2.contrastive.lambda_ == 0.7 and cfg2.dataset.options == {"level": "L2"}


@pytest.mark.parametrize(
    ("override", "attribute", "expected"),
    [
        ("output_dir=2024", ("output_dir",), "2024"),
        ("dataset.root=2024", ("dataset", "root"), "2024"),
        ("dataset.root=null", ("dataset", "root"), None),
        ("dataset.train_split=1", ("dataset", "train_split"), "1"),
        ("encoder.name=1e5", ("encoder", "name"), "1e5"),
        ("encoder.weights=yes", ("encoder", "weights"), "yes"),
        ("device='0'", ("device",), "0"),
        ("seed=2024", ("seed",), 2024),
        ("contrastive.tau=1e-1", ("contrastive", "tau"), 0.1),
        ("classifier.augment=no", ("classifier", "augment"), False),
        ("dataset.options.level=2", ("dataset", "options"), {"level": 2}),
    ],
)
def test_set_keeps_text_keys_as_text_and_types_the_others(override: str, attribute: tuple, expected: object) -> None:
    value: object = load_config(overrides=["mode=two-stage", override])
    for name in attribute:
        value = getattr(value, name)
    assert value == expected and type(value) is type(expected)


def test_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("contrastive.tau")
    with pytest.raises(ConfigError, match="key is empty"):
        parse_override("=3")


def test_resolved_config_round_trips_through_yaml(tmp_path: Path) -> None:
    cfg = load_config(overrides=["mode=two-stage", "contrastive.alpha=0.6", "encoder.name=test_resnet"])
    path = save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(path)
    assert again == cfg
    assert "lambda" in yaml.safe_load(path.read_text())["contrastive"]
    # a one-stage run's file holds the keys it reads, and they load back as they were
    asl = load_config(overrides=["mode=asl", "epochs=7", "classifier.lr=0.01"])
    written = yaml.safe_load(save_config(asl, tmp_path / "asl.yaml").read_text())
    assert "contrastive" not in written and written["epochs"] == 7
    assert load_config(tmp_path / "asl.yaml").to_dict() == asl.to_dict()


def test_named_configs_are_found_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    found = find_named_config("adp")
    assert found is not None and found.name == "adp.yaml"
    assert load_config("adp").encoder.name == "tresnet_m"
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_config")


def test_defaults_are_a_valid_config() -> None:
    assert isinstance(load_config(), AslConfig)  # asl is the default mode
    assert TwoStageConfig().contrastive.similarity == "correlation"


def test_loss_and_augmentation_policy_are_named_choices() -> None:
    cfg = load_config(overrides=["classifier.loss=focal", "dataset.augment.policy=pathology"])
    assert cfg.classifier.loss == "focal" and cfg.dataset.augment.policy == "pathology"
    with pytest.raises(ConfigError, match=r"'classifier\.loss'.*'bce', 'focal' or 'asl'"):
        load_config(overrides=["classifier.loss=cross_entropy"])
    with pytest.raises(ConfigError, match=r"'dataset\.augment\.policy'"):
        load_config(overrides=["dataset.augment.policy=strong"])


def test_removed_keys_are_unknown_keys() -> None:
    """No key of a format that never shipped is accepted: ``contrastive.latent_dim`` is a typo like any other."""
    with pytest.raises(ConfigError, match=r"unknown key 'contrastive\.latent_dim'") as info:
        load_config(overrides=["mode=two-stage", "contrastive.latent_dim=null"])
    assert "\n" not in str(info.value)
